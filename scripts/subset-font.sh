#!/bin/sh
# Makes src/eval/fonts/DejaVuSans-subset.ttf, the font the evaluation plots are labelled with
# (embedded in the binary so the plots do not depend on the machine's fonts): DejaVu Sans cut
# down to printable ASCII and the few symbols the labels use (± ² · × α γ θ ν Δ − ≈ – — →).
# Needs fonttools (`pip install fonttools`) and the DejaVu fonts (Debian: fonts-dejavu-core).
set -eu
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
out=$(dirname "$0")/../src/eval/fonts/DejaVuSans-subset.ttf
pyftsubset "$src" \
    --unicodes="U+0020-007E,U+00B1,U+00B2,U+00B7,U+00D7,U+03B1,U+03B3,U+03B8,U+03BD,U+0394,U+2212,U+2248,U+2013,U+2014,U+2192" \
    --layout-features='' --no-hinting --desubroutinize --output-file="$out"
