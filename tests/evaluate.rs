//! `ccm-twin evaluate --quick` on the shipped dam-break experts (the fastest family): the small
//! protocol of CI, 2 generated test trajectories per regime, every method scored after the
//! K-frame prefix. It must show what the evaluation is for:
//!
//! * CCM-Prefix, reading α from each trajectory's first K frames with `p` unknown, cuts the mean
//!   OOD error of the anchor by at least 30 % (measured: 0.392 → 0.073, −81 %);
//! * the control, the best α in hindsight along a random direction of the same per-tensor norms
//!   as `d`, gains at most a quarter of what CCM-Prefix gains (measured: −6 % vs −81 %): the gain
//!   comes from the physical direction, not from moving the weights at all.
//!
//! The whole run takes about 3–4 minutes on 2 cores in the dev profile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ccm-twin"))
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// The results CSV as `method → column → value`.
fn read_csv(path: &Path) -> HashMap<String, HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{l}");
            let row = header
                .iter()
                .zip(&cells)
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect();
            (cells[0].to_string(), row)
        })
        .collect()
}

#[test]
fn quick_protocol_on_dam_break() {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .args(["evaluate", "--family", "dam_break", "--quick", "--models"])
        .arg(models())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    eprintln!("{log}");
    assert!(run.status.success(), "evaluate failed:\n{log}");

    for f in [
        "dam_break.md",
        "dam_break.csv",
        "dam_break_steps.csv",
        "summary.md",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    for f in [
        "dam_break_alpha.png",
        "dam_break_growth.png",
        "dam_break_forecast.png",
    ] {
        let bytes = std::fs::read(out.path().join(f)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{f} is not a PNG");
        assert!(bytes.len() < 200_000, "{f}: {} bytes", bytes.len());
    }

    let table = read_csv(&out.path().join("dam_break.csv"));
    let value = |method: &str, column: &str| -> f64 {
        table[method][column]
            .parse()
            .unwrap_or_else(|e| panic!("{method} {column}: {e}"))
    };
    for method in [
        "anchor",
        "static_average",
        "nearest_endpoint",
        "ccm_coord",
        "ccm_scale",
        "ccm_calibrated",
        "ccm_prefix",
        "random_direction",
        "ccm_hindsight",
    ] {
        assert_eq!(table[method]["status"], "scored", "{method}");
        assert!(value(method, "mean_ood").is_finite(), "{method}");
    }
    for method in ["conditioned_fno", "conditioned_fno_prefix", "oracle"] {
        assert_eq!(table[method]["status"], "not_run", "{method}");
    }
    let summary = format!(
        "OOD error: anchor {:.4}, CCM-Prefix {:.4} ({:+.1} %), random direction {:.4} ({:+.1} %), \
         best α in hindsight {:.4}",
        value("anchor", "mean_ood"),
        value("ccm_prefix", "mean_ood"),
        value("ccm_prefix", "ood_reduction_pct"),
        value("random_direction", "mean_ood"),
        value("random_direction", "ood_reduction_pct"),
        value("ccm_hindsight", "mean_ood"),
    );
    eprintln!("{summary}");
    let prefix = value("ccm_prefix", "ood_reduction_pct");
    let random = value("random_direction", "ood_reduction_pct");
    assert!(
        prefix >= 30.0,
        "CCM-Prefix must cut the OOD error by 30 %: {summary}"
    );
    assert!(
        random <= 0.25 * prefix,
        "the random direction must gain at most a quarter of CCM-Prefix's reduction: {summary}"
    );
    let md = std::fs::read_to_string(out.path().join("dam_break.md")).unwrap();
    assert!(
        md.contains("ccm-twin evaluate --family dam_break --quick"),
        "{md}"
    );
    let summary_md = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(summary_md.contains("| dam_break |"), "{summary_md}");

    // Adding the oracle row to the finished evaluation: `--reuse` keeps every row scored above
    // and computes only the oracle's. Stand-in oracles carry the anchor's weights, so their row
    // must equal the anchor's exactly.
    let oracles = out.path().join("oracles");
    write_anchor_as_oracles(&oracles, 1.0);
    let again = reuse_with_oracles(out.path(), &oracles);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "evaluate --reuse failed:\n{log}");
    assert!(log.contains("4 oracle expert(s)"), "{log}");
    assert!(log.contains("keeping the rows scored"), "{log}");
    let after = read_csv(&out.path().join("dam_break.csv"));
    assert_eq!(after["oracle"]["status"], "scored");
    for column in ["mean_id", "mean_ood"] {
        assert_eq!(after["oracle"][column], table["anchor"][column], "{column}");
    }
    for (method, row) in &table {
        if method != "oracle" {
            assert_eq!(&after[method], row, "{method} changed under --reuse");
        }
    }
    assert!(std::fs::read_to_string(out.path().join("dam_break.json")).is_ok());

    // other oracles under the same flags: their row is computed again, the rest still kept
    write_anchor_as_oracles(&oracles, 1.01);
    let third = reuse_with_oracles(out.path(), &oracles);
    let log = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "evaluate --reuse failed:\n{log}");
    let last = read_csv(&out.path().join("dam_break.csv"));
    assert_ne!(
        last["oracle"]["mean_ood"], after["oracle"]["mean_ood"],
        "the changed oracles were not scored again"
    );
    assert_eq!(last["ccm_prefix"], after["ccm_prefix"]);

    // a new calibration of the same experts: only the rows that read it are computed again
    let root = out.path().join("recalibrated");
    let (shipped, bundle) = (models().join("dam_break"), root.join("dam_break"));
    std::fs::create_dir_all(&bundle).unwrap();
    for f in ["anchor.onnx", "low.onnx", "high.onnx"] {
        std::fs::copy(shipped.join(f), bundle.join(f)).unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped.join("manifest.json")).unwrap()).unwrap();
    let gain = &mut manifest["calibration"]["prefix"]["gain"];
    *gain = serde_json::json!(gain.as_f64().unwrap() * 1.2);
    std::fs::write(
        bundle.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let fourth = reuse_with(out.path(), &oracles, &root);
    let log = String::from_utf8_lossy(&fourth.stderr);
    assert!(fourth.status.success(), "evaluate --reuse failed:\n{log}");
    let recalibrated = read_csv(&out.path().join("dam_break.csv"));
    assert_ne!(
        recalibrated["ccm_prefix"]["mean_ood"], last["ccm_prefix"]["mean_ood"],
        "CCM-Prefix was not scored again under the new gain"
    );
    for method in [
        "anchor",
        "ccm_coord",
        "ccm_hindsight",
        "random_direction",
        "oracle",
    ] {
        assert_eq!(
            recalibrated[method], last[method],
            "{method} was recomputed"
        );
    }
}

/// The quick protocol again into `out`, keeping its rows and adding the oracles in `oracles`.
fn reuse_with_oracles(out: &Path, oracles: &Path) -> std::process::Output {
    reuse_with(out, oracles, &models())
}

/// [`reuse_with_oracles`] on the bundle in `models`.
fn reuse_with(out: &Path, oracles: &Path, models: &Path) -> std::process::Output {
    bin()
        .args(["evaluate", "--family", "dam_break", "--quick", "--reuse"])
        .arg("--models")
        .arg(models)
        .arg("--out")
        .arg(out)
        .arg("--oracle")
        .arg(oracles)
        .output()
        .unwrap()
}

/// One stand-in oracle expert per dam-break test regime under `dir`, each holding the shipped
/// anchor's weights times `scale` (replacing what is there).
fn write_anchor_as_oracles(dir: &Path, scale: f32) {
    use ccm_twin::config::{Family, FamilyConfig};
    use ccm_twin::fno::expert::{Expert, ExpertMeta};
    use ccm_twin::models::FamilyModels;

    let bundle = FamilyModels::load(&models().join("dam_break")).unwrap();
    let m = &bundle.manifest;
    let names: Vec<String> = m.model.param_shapes().into_iter().map(|(n, _)| n).collect();
    let weights = bundle
        .anchor
        .weights
        .select(names.iter().map(String::as_str))
        .unwrap();
    for p in FamilyConfig::builtin(Family::DamBreak)
        .parameter
        .test_values()
    {
        let meta: ExpertMeta = serde_json::from_value(serde_json::json!({
            "format_version": 1,
            "generator": "tests/evaluate.rs",
            "family": "dam_break",
            "role": "oracle",
            "parameter": m.parameter.name,
            "p_range": [p, p],
            "config": m.model,
            "normalization": m.normalization,
            "data": {
                "dir": "none", "split": "oracle", "trajectories": 0, "seeds": [],
                "sha256": {}, "p_filter": p
            },
            "training": {
                "epochs": 0, "unroll_epochs": 0, "steps": 0, "batch": 1, "lr": 0.0,
                "warmup_steps": 0, "seed": 0, "final_train_loss": 0.0, "epoch_losses": [],
                "seconds": 0.0, "from": null
            },
            "weights_sha256": ""
        }))
        .unwrap();
        let mut w = weights.clone();
        w.data_mut().iter_mut().for_each(|x| *x *= scale);
        let mut expert = Expert { meta, weights: w };
        expert
            .save(&dir.join("dam_break/oracle").join(p.to_string()))
            .unwrap();
    }
}

#[test]
fn a_missing_test_split_names_the_path_and_the_command_that_makes_it() {
    let data = tempfile::tempdir().unwrap();
    let run = bin()
        .args(["evaluate", "--family", "dam_break", "--models"])
        .arg(models())
        .arg("--data")
        .arg(data.path())
        .arg("--out")
        .arg(data.path().join("results"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    let expected = data.path().join("dam_break").join("test");
    assert!(err.contains(&expected.display().to_string()), "{err}");
    assert!(
        err.contains("ccm-twin generate --family dam_break --split test --out"),
        "{err}"
    );
}

#[test]
fn an_unknown_family_is_bad_input() {
    let run = bin()
        .args(["evaluate", "--family", "lava_flow", "--quick"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown family 'lava_flow'"), "{err}");
}
