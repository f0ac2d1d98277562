#!/usr/bin/env bash
# Rebuilds the shipped experts in models/<family>/ from scratch: data, anchor, endpoint experts,
# ONNX export with manifest, calibration. Usage:
#
#   scripts/rebuild-models.sh [family ...]        (default: all three families)
#
# Environment: DATA (default data/), EXPERTS (default experts/), ANCHOR_EPOCHS (12),
# ENDPOINT_EPOCHS (10), BIN (default: builds target/release/ccm-twin).
# The two endpoint experts train in parallel (burn uses about one core each).
set -euo pipefail
cd "$(dirname "$0")/.."
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(dam_break reaction_diffusion navier_stokes)
DATA=${DATA:-data}
EXPERTS=${EXPERTS:-experts}
ANCHOR_EPOCHS=${ANCHOR_EPOCHS:-12}
ENDPOINT_EPOCHS=${ENDPOINT_EPOCHS:-10}
if [ -z "${BIN:-}" ]; then
  cargo build --release
  BIN=target/release/ccm-twin
fi

for f in "${families[@]}"; do
  echo "== $f: data"
  [ -f "$DATA/$f/test/manifest.json" ] || "$BIN" generate --family "$f" --split all --out "$DATA/$f" --force
  echo "== $f: anchor ($ANCHOR_EPOCHS epochs)"
  [ -f "$EXPERTS/$f/anchor/expert.json" ] || "$BIN" train --family "$f" --role anchor \
    --data "$DATA/$f/anchor" --out "$EXPERTS/$f/anchor" --epochs "$ANCHOR_EPOCHS"
  echo "== $f: endpoint experts ($ENDPOINT_EPOCHS epochs each, in parallel)"
  for role in low high; do
    [ -f "$EXPERTS/$f/$role/expert.json" ] || "$BIN" train --family "$f" --role "$role" \
      --from "$EXPERTS/$f/anchor" --data "$DATA/$f/$role" --out "$EXPERTS/$f/$role" \
      --epochs "$ENDPOINT_EPOCHS" &
  done
  wait
  echo "== $f: export and calibrate"
  "$BIN" export --family "$f" --anchor "$EXPERTS/$f/anchor" --low "$EXPERTS/$f/low" \
    --high "$EXPERTS/$f/high" --out "models/$f"
  "$BIN" calibrate "models/$f" --calib "$DATA/$f/calib" --val "$DATA/$f/val"
  "$BIN" inspect "models/$f"
done
