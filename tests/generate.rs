//! `ccm-twin generate` and the dataset layer: determinism, every family and split, and clear
//! errors that leave nothing half-written.

use std::path::Path;
use std::process::Command;

use ccm_twin::config::{Family, FamilyConfig, SolverConfig};
use ccm_twin::dataset::{self, DatasetError, GenerateOptions, Split};

/// A family config shrunk to test size: 16×16, 3 frames.
fn tiny(family: Family) -> FamilyConfig {
    let mut cfg = FamilyConfig::builtin(family);
    cfg.grid.n = 16;
    cfg.grid.solve_n = Some(if family == Family::ReactionDiffusion {
        32
    } else {
        16
    });
    cfg.time.frames = 3;
    cfg.time.horizon = 2;
    cfg.time.prefix = 2;
    cfg
}

fn no_progress() {}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_family_and_split_generates_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    for family in Family::ALL {
        let cfg = tiny(family);
        for split in Split::ALL {
            let out = tmp.path().join(family.name()).join(split.name());
            let opts = GenerateOptions {
                count: Some(1),
                force: false,
            };
            let m = dataset::generate(&cfg, split, &out, &opts, &no_progress).unwrap();
            let ds = dataset::load(&out).unwrap();
            assert_eq!(ds.trajectories.shape(), m.shape);
            assert_eq!(m.shape[1..], [3, cfg.channels().len(), 16, 16]);
            assert_eq!(ds.params.len(), m.shape[0]);
            assert!(ds.trajectories.iter().all(|x| x.is_finite()));
            // frames change over time
            let t0 = ds.trajectories.index_axis(ndarray::Axis(1), 0).to_owned();
            let t2 = ds.trajectories.index_axis(ndarray::Axis(1), 2).to_owned();
            assert!(
                (&t0 - &t2).iter().any(|d| d.abs() > 1e-4),
                "{family} {split} is frozen"
            );
        }
    }
}

#[test]
fn same_config_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(Family::NavierStokes);
    let opts = GenerateOptions {
        count: Some(3),
        force: false,
    };
    for name in ["a", "b"] {
        dataset::generate(
            &cfg,
            Split::Anchor,
            &tmp.path().join(name),
            &opts,
            &no_progress,
        )
        .unwrap();
    }
    for file in ["trajectories.npy", "params.npy", "seeds.npy"] {
        let a = std::fs::read(tmp.path().join("a").join(file)).unwrap();
        let b = std::fs::read(tmp.path().join("b").join(file)).unwrap();
        assert_eq!(a, b, "{file} differs between two runs");
    }
    // another master seed, other data
    let mut other = cfg.clone();
    other.seed += 1;
    dataset::generate(
        &other,
        Split::Anchor,
        &tmp.path().join("c"),
        &opts,
        &no_progress,
    )
    .unwrap();
    let a = std::fs::read(tmp.path().join("a/trajectories.npy")).unwrap();
    let c = std::fs::read(tmp.path().join("c/trajectories.npy")).unwrap();
    assert_ne!(a, c);
}

#[test]
fn a_solver_failure_leaves_no_partial_dataset() {
    // An RK4 step far past the reaction's stability limit blows the run up mid-way.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny(Family::ReactionDiffusion);
    cfg.grid.solve_n = Some(16);
    cfg.solver = match cfg.solver {
        SolverConfig::ReactionDiffusion(mut c) => {
            c.dt_max = 10.0;
            c.dv = 0.0;
            SolverConfig::ReactionDiffusion(c)
        }
        _ => unreachable!(),
    };
    cfg.time.frame_dt = 5.0;
    let out = tmp.path().join("rd");
    let opts = GenerateOptions {
        count: Some(2),
        force: false,
    };
    let err = dataset::generate(&cfg, Split::Low, &out, &opts, &no_progress).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::Solve { .. }), "{msg}");
    assert!(msg.contains("blew up"), "{msg}");
    assert!(!out.exists());
    assert!(
        leftovers(tmp.path()).is_empty(),
        "left behind: {:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn an_existing_dataset_is_kept_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(Family::DamBreak);
    let out = tmp.path().join("db");
    let opts = GenerateOptions {
        count: Some(1),
        force: false,
    };
    dataset::generate(&cfg, Split::Val, &out, &opts, &no_progress).unwrap();
    let err = dataset::generate(&cfg, Split::Val, &out, &opts, &no_progress).unwrap_err();
    assert!(err.to_string().contains("pass --force"), "{err}");
    let forced = GenerateOptions {
        count: Some(1),
        force: true,
    };
    dataset::generate(&cfg, Split::Test, &out, &forced, &no_progress).unwrap();
    assert_eq!(dataset::read_manifest(&out).unwrap().split, Split::Test);
    assert_eq!(leftovers(tmp.path()), vec!["db".to_string()]);
}

#[test]
fn a_corrupted_array_is_detected_on_load() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ns");
    let opts = GenerateOptions {
        count: Some(1),
        force: false,
    };
    dataset::generate(
        &tiny(Family::NavierStokes),
        Split::Calib,
        &out,
        &opts,
        &no_progress,
    )
    .unwrap();
    let path = out.join("trajectories.npy");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let err = dataset::load(&out).unwrap_err().to_string();
    assert!(
        err.contains("does not match the manifest") && err.contains("corrupt"),
        "{err}"
    );
}

// ---- the command line -------------------------------------------------------------------

fn ccm_twin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ccm-twin"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// The built-in config text shrunk to test size.
fn tiny_toml(family: Family) -> String {
    family
        .builtin_toml()
        .replace("\nn = 64", "\nn = 16")
        .replace("solve_n = 64", "solve_n = 16")
        .replace("solve_n = 128", "solve_n = 32")
        .replace("frames = 21", "frames = 3")
        .replace("horizon = 20", "horizon = 2")
        .replace("prefix = 4", "prefix = 2")
}

#[test]
fn cli_generates_all_splits_and_describes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "db.toml", &tiny_toml(Family::DamBreak));
    let out = tmp.path().join("data");
    let (code, _, err) = ccm_twin(&[
        "generate",
        "--family",
        "dam_break",
        "--split",
        "all",
        "--count",
        "1",
        "--config",
        &cfg,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for s in Split::ALL {
        assert!(
            out.join(s.name()).join("manifest.json").exists(),
            "{s} missing"
        );
    }
    assert!(err.contains("trajectories/s"), "{err}");
    let (code, stdout, err) = ccm_twin(&["info", out.join("test").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("dam_break / split test"), "{stdout}");
    assert!(stdout.contains("checksums OK"), "{stdout}");
    assert!(stdout.contains("hu"), "{stdout}");
}

#[test]
fn cli_rejects_bad_configs_with_clear_messages_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let cases = [
        (
            tiny_toml(Family::NavierStokes).replace("lo = 1.0e-3", "lo = -1.0e-3"),
            "navier_stokes",
            "parameter.lo: must be a positive number (got -0.001)",
        ),
        (
            tiny_toml(Family::NavierStokes).replace("dt_max = 0.02", "dt_max = -0.02"),
            "navier_stokes",
            "solver.dt_max: must be a positive number",
        ),
        (
            tiny_toml(Family::ReactionDiffusion).replace("\nn = 16", "\nn = 0"),
            "reaction_diffusion",
            "grid.n: must be at least 8 (got 0)",
        ),
        (
            tiny_toml(Family::DamBreak)
                .replace("ood_test = [0.0125, 0.1]", "ood_test = [0.015, 0.1]"),
            "dam_break",
            "parameter.ood_test[0]: manning_n = 0.015 is not clearly extrapolative",
        ),
    ];
    for (i, (text, family, expected)) in cases.iter().enumerate() {
        let cfg = write_config(tmp.path(), &format!("bad{i}.toml"), text);
        let (code, _, err) = ccm_twin(&[
            "generate", "--family", family, "--split", "test", "--config", &cfg, "--out", out_s,
        ]);
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(
            err.contains(expected),
            "case {i}: expected «{expected}» in «{err}»"
        );
        assert!(!out.exists(), "case {i} left output behind");
    }
    let (code, _, err) = ccm_twin(&[
        "generate", "--family", "heat", "--split", "test", "--out", out_s,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown family 'heat'"), "{err}");
    let (code, _, err) = ccm_twin(&[
        "generate",
        "--family",
        "dam_break",
        "--split",
        "train",
        "--out",
        out_s,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown split 'train'"), "{err}");
    assert!(!out.exists());
}

#[test]
fn cli_reports_an_unwritable_output() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a_file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = blocker.join("dataset");
    let cfg = write_config(tmp.path(), "rd.toml", &tiny_toml(Family::ReactionDiffusion));
    let (code, _, err) = ccm_twin(&[
        "generate",
        "--family",
        "reaction_diffusion",
        "--split",
        "val",
        "--count",
        "1",
        "--config",
        &cfg,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot create output directory"), "{err}");
    assert_eq!(
        leftovers(tmp.path()).len(),
        2,
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn cli_prints_the_commented_config() {
    let (code, stdout, _) = ccm_twin(&["config", "reaction_diffusion"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("# Reaction–diffusion family"));
    assert!(FamilyConfig::from_toml(&stdout).is_ok());
}
