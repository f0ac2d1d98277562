//! Model bundles end to end: tiny trained experts → `ccm-twin export` → `inspect` → `merge`,
//! the merged ONNX in tract, and bundles that must be refused.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::process::Command;

use ccm_twin::ccm::Line;
use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::dataset::{self, GenerateOptions, Split};
use ccm_twin::fno::expert::{Expert, Role};
use ccm_twin::fno::train::{self, Architecture, TrainOptions, TrainRequest};
use ccm_twin::infer::{Backend, OnnxExpert, TractBackend};
use ccm_twin::models::FamilyModels;

fn tiny_config() -> FamilyConfig {
    let mut cfg = FamilyConfig::builtin(Family::DamBreak);
    cfg.grid.n = 16;
    cfg.time.frames = 4;
    cfg.time.horizon = 3;
    cfg.time.prefix = 2;
    cfg
}

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

/// Trains a tiny anchor and two endpoints; returns their directories and the config file.
fn tiny_experts(root: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let cfg = tiny_config();
    let cfg_path = root.join("db.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let mut dirs = Vec::new();
    let mut anchor: Option<(PathBuf, Expert)> = None;
    for (split, role) in [
        (Split::Anchor, Role::Anchor),
        (Split::Low, Role::Low),
        (Split::High, Role::High),
    ] {
        let data_dir = root.join("data").join(split.name());
        let opts = GenerateOptions {
            count: Some(2),
            force: false,
        };
        dataset::generate(&cfg, split, &data_dir, &opts, &|| ()).unwrap();
        let data = dataset::load(&data_dir).unwrap();
        let out = root.join("experts").join(role.name());
        let req = TrainRequest {
            family: Family::DamBreak,
            role,
            data_dir: &data_dir,
            data: &data,
            p_filter: None,
            from: anchor.as_ref().map(|(d, e)| (d.as_path(), e)),
            architecture: (role == Role::Anchor).then_some(Architecture {
                width: 4,
                modes: 3,
                layers: 2,
                hidden: 8,
            }),
            options: TrainOptions {
                epochs: 1,
                batch: 2,
                seed: 1,
                ..TrainOptions::for_role(role)
            },
            out: &out,
            resume: false,
            force: false,
        };
        let expert = train::train(&req, &mut |_| ()).unwrap();
        if role == Role::Anchor {
            anchor = Some((out.clone(), expert));
        }
        dirs.push(out);
    }
    (dirs[0].clone(), dirs[1].clone(), dirs[2].clone(), cfg_path)
}

/// `ccm-twin export` of the three experts into `bundle`.
fn export(a: &Path, l: &Path, h: &Path, cfg: &Path, bundle: &Path) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (code, _, err) = ccm_twin(&[
        "export",
        "--family",
        "dam_break",
        "--anchor",
        &s(a),
        "--low",
        &s(l),
        "--high",
        &s(h),
        "--out",
        &s(bundle),
        "--config",
        &s(cfg),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn export_inspect_merge_and_run_in_tract() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, l, h, cfg) = tiny_experts(tmp.path());
    let bundle = tmp.path().join("models/dam_break");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    export(&a, &l, &h, &cfg, &bundle);
    let (code, out, err) = ccm_twin(&["inspect", &s(&bundle)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("total") && out.contains("d share"), "{out}");
    assert!(
        out.contains("tensors identical in all three experts"),
        "{out}"
    );

    let models = FamilyModels::load(&bundle).unwrap();
    // the merged file at α = −1 is the low expert, in tract too
    let merged_path = tmp.path().join("merged.onnx");
    let (code, _, err) = ccm_twin(&[
        "merge",
        &s(&bundle),
        "--alpha",
        "-1",
        "--out",
        &s(&merged_path),
    ]);
    assert_eq!(code, 0, "{err}");
    let merged = OnnxExpert::load(&merged_path).unwrap();
    assert_eq!(merged.weights, models.low.weights);
    models.anchor.same_graph(&merged).unwrap();

    let mut low = TractBackend::with_template_weights(models.low.clone()).unwrap();
    let mut via_merge = TractBackend::with_template_weights(merged).unwrap();
    let shape = low.shape();
    let state: Vec<f32> = (0..shape.input_len())
        .map(|i| 0.1 + (i % 7) as f32 * 0.01)
        .collect();
    let (mut y1, mut y2) = (vec![0.0; shape.frame_len()], vec![0.0; shape.frame_len()]);
    low.step(&state, &mut y1).unwrap();
    via_merge.step(&state, &mut y2).unwrap();
    assert_eq!(y1, y2);
    // a rollout is steps fed back (T_in = 1 here)
    let mut rolled = vec![0.0; 2 * shape.frame_len()];
    low.roll(&state, 2, &mut rolled).unwrap();
    let mut y_next = vec![0.0; shape.frame_len()];
    low.step(&y1, &mut y_next).unwrap();
    assert_eq!(&rolled[..shape.frame_len()], y1.as_slice());
    assert_eq!(&rolled[shape.frame_len()..], y_next.as_slice());

    // calibration writes the map into the manifest
    let calib = tmp.path().join("data/calib");
    dataset::generate(
        &tiny_config(),
        Split::Calib,
        &calib,
        &GenerateOptions {
            count: Some(1),
            force: false,
        },
        &|| (),
    )
    .unwrap();
    let (code, _, err) = ccm_twin(&["calibrate", &s(&bundle), "--calib", &s(&calib)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("calibrated map s(p) → α: knots"), "{err}");
    let cal = FamilyModels::load(&bundle)
        .unwrap()
        .manifest
        .calibration
        .expect("calibration saved");
    assert_eq!(cal.points.len(), tiny_config().parameter.calib.len());
    assert!(cal.map.knots.windows(2).all(|w| w[0].1 <= w[1].1));
    for p in &cal.points {
        assert!(p[2] >= -3.0 && p[2] <= 3.0 && p[3].is_finite());
    }

    // the in-place merge at α = 0.5 is the affine combination ¼·θ_L + ¾·θ_H
    let line =
        Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone()).unwrap();
    let mut w = line.buffer();
    line.merge_into(0.5, &mut w).unwrap();
    for ((m, lo), hi) in w
        .data()
        .iter()
        .zip(models.low.weights.data())
        .zip(models.high.weights.data())
    {
        assert!((m - (0.25 * lo + 0.75 * hi)).abs() <= 1e-6 * (1.0 + lo.abs() + hi.abs()));
    }
}

#[test]
fn corrupt_or_mismatched_bundles_are_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, l, h, cfg) = tiny_experts(tmp.path());
    let bundle = tmp.path().join("bundle");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    export(&a, &l, &h, &cfg, &bundle);
    let high = bundle.join("high.onnx");
    let good = std::fs::read(&high).unwrap();

    // truncated file
    std::fs::write(&high, &good[..good.len() / 2]).unwrap();
    let (code, _, err) = ccm_twin(&["inspect", &s(&bundle)]);
    assert_ne!(code, 0);
    assert!(
        err.contains("high.onnx") && err.contains("does not match the manifest"),
        "{err}"
    );

    // a file that is not ONNX at all, loaded directly
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let e = OnnxExpert::load(&junk).unwrap_err().to_string();
    assert!(
        e.contains("junk.onnx") && e.contains("corrupt or truncated"),
        "{e}"
    );

    // a high expert of another architecture, with a matching checksum: different graphs
    std::fs::write(&high, &good).unwrap();
    let mut other = OnnxExpert::load(&high).unwrap();
    let g = other.proto.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "proj1.bias")
        .unwrap();
    t.dims = vec![4, 2];
    let bytes = prost::Message::encode_to_vec(&other.proto);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    std::fs::write(&high, &bytes).unwrap();
    manifest["experts"]["high"]["sha256"] =
        serde_json::Value::String(ccm_twin::fno::expert::sha256_hex(&bytes));
    std::fs::write(bundle.join("manifest.json"), manifest.to_string()).unwrap();
    let e = FamilyModels::load(&bundle).unwrap_err().to_string();
    assert!(
        e.contains("do not share one graph") && e.contains("proj1.bias"),
        "{e}"
    );
}
