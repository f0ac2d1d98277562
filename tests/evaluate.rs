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
    for method in ["conditioned_fno", "oracle"] {
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
