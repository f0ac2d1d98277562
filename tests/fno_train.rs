//! `ccm-twin train` / `score` end to end on tiny generated datasets: an anchor, a fine-tuned
//! endpoint that inherits the anchor's normalisation, expert directories that read back and
//! refuse corruption, requests that do not fit together, and the CLI.
#![cfg(feature = "train")]

use std::path::Path;
use std::process::Command;

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::dataset::{self, Dataset, GenerateOptions, Split};
use ccm_twin::fno::expert::{Expert, ExpertError, Role};
use ccm_twin::fno::train::{
    self, Architecture, Progress, ScoreOptions, TrainError, TrainOptions, TrainRequest,
};

/// Reaction–diffusion at 16×16, 5 frames.
fn tiny_config() -> FamilyConfig {
    let mut cfg = FamilyConfig::builtin(Family::ReactionDiffusion);
    cfg.grid.n = 16;
    cfg.grid.solve_n = Some(32);
    cfg.time.frames = 5;
    cfg.time.horizon = 4;
    cfg.time.prefix = 2;
    cfg
}

fn make(root: &Path, split: Split, count: usize) -> (std::path::PathBuf, Dataset) {
    let dir = root.join(split.name());
    let opts = GenerateOptions {
        count: Some(count),
        force: false,
    };
    dataset::generate(&tiny_config(), split, &dir, &opts, &|| ()).unwrap();
    let ds = dataset::load(&dir).unwrap();
    (dir, ds)
}

const ARCH: Architecture = Architecture {
    width: 4,
    modes: 3,
    layers: 2,
    hidden: 8,
};

fn opts(role: Role) -> TrainOptions {
    TrainOptions {
        epochs: 2,
        batch: 4,
        seed: 5,
        ..TrainOptions::for_role(role)
    }
}

fn request<'a>(
    role: Role,
    dir: &'a Path,
    data: &'a Dataset,
    out: &'a Path,
    from: Option<(&'a Path, &'a Expert)>,
) -> TrainRequest<'a> {
    TrainRequest {
        family: Family::ReactionDiffusion,
        role,
        data_dir: dir,
        data,
        p_filter: None,
        from,
        architecture: (role == Role::Anchor).then_some(ARCH),
        options: opts(role),
        out,
        resume: false,
        force: false,
    }
}

#[test]
fn anchor_then_endpoint_then_score() {
    let tmp = tempfile::tempdir().unwrap();
    let (anchor_dir, anchor_data) = make(tmp.path(), Split::Anchor, 4);
    let (low_dir, low_data) = make(tmp.path(), Split::Low, 2);
    let (test_dir, test_data) = make(tmp.path(), Split::Test, 1);
    let _ = test_dir;

    let out_a = tmp.path().join("experts/anchor");
    let mut events = Vec::new();
    let anchor = train::train(
        &request(Role::Anchor, &anchor_dir, &anchor_data, &out_a, None),
        &mut |p| events.push(p),
    )
    .unwrap();
    // 4 trajectories × 4 pairs = 16 pairs, batch 4: 4 steps per epoch
    assert_eq!(
        events[0],
        Progress::Start {
            epochs: 2,
            total_steps: 8,
            done_steps: 0
        }
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Progress::Step { .. }))
            .count(),
        8
    );
    let m = &anchor.meta;
    assert_eq!(m.training.steps, 8);
    assert_eq!(m.data.seeds.len(), 4);
    assert_eq!(m.data.sha256, anchor_data.manifest.sha256);
    assert_eq!(m.config.channels, 2);
    assert_eq!(m.normalization.mean.len(), 2);
    assert!(m.training.final_train_loss.is_finite());

    // it reads back exactly
    let loaded = Expert::load(&out_a).unwrap();
    assert_eq!(loaded, anchor);

    // an endpoint inherits the anchor's architecture and normalisation
    let out_l = tmp.path().join("experts/low");
    let low = train::train(
        &request(
            Role::Low,
            &low_dir,
            &low_data,
            &out_l,
            Some((&out_a, &loaded)),
        ),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(low.meta.normalization, anchor.meta.normalization);
    assert_eq!(low.meta.config, anchor.meta.config);
    assert_eq!(
        low.meta.training.from.as_ref().unwrap().weights_sha256,
        anchor.meta.weights_sha256
    );
    assert_eq!(low.weights.same_layout(&anchor.weights), Ok(()));
    assert_ne!(low.weights, anchor.weights);

    // scores: one group per test value, and persistence is a real baseline
    let r = train::score(&low, &test_data, &ScoreOptions::default()).unwrap();
    let values = tiny_config().parameter.test_values();
    assert_eq!(r.groups.len(), values.len());
    assert_eq!(r.horizon, 4);
    assert_eq!(r.trajectories.len(), values.len());
    for t in &r.trajectories {
        assert!(t.rollout.is_finite() && t.persistence > 0.0 && t.one_step > 0.0);
    }
    // the first predicted frame is the one-step prediction: scoring one frame makes them agree
    let one = ScoreOptions {
        horizon: Some(1),
        ..ScoreOptions::default()
    };
    let r1 = train::score(&low, &test_data, &one).unwrap();
    for t in &r1.trajectories {
        assert!((t.rollout - t.one_step).abs() < 1e-9 * t.rollout.max(1.0));
    }
}

#[test]
fn requests_that_do_not_fit_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (anchor_dir, anchor_data) = make(tmp.path(), Split::Anchor, 2);
    let (oracle_dir, oracle_data) = make(tmp.path(), Split::Oracle, 1);
    let out = tmp.path().join("e");
    let msg = |r: Result<Expert, TrainError>| r.unwrap_err().to_string();

    // the wrong split for the role
    let e = msg(train::train(
        &request(Role::Low, &anchor_dir, &anchor_data, &out, None),
        &mut |_| {},
    ));
    assert!(e.contains("trains on the 'low' split"), "{e}");
    // a fine-tune without an anchor
    let e = msg(train::train(
        &request(Role::Oracle, &oracle_dir, &oracle_data, &out, None),
        &mut |_| {},
    ));
    assert!(e.contains("needs --p"), "{e}");
    let mut r = request(Role::Oracle, &oracle_dir, &oracle_data, &out, None);
    r.p_filter = Some(123.0);
    let e = msg(train::train(&r, &mut |_| {}));
    assert!(e.contains("no trajectory at D_u = 123"), "{e}");
    r.p_filter = Some(oracle_data.params[0]);
    let e = msg(train::train(&r, &mut |_| {}));
    assert!(e.contains("pass --from"), "{e}");
    // the wrong family
    let mut r = request(Role::Anchor, &anchor_dir, &anchor_data, &out, None);
    r.family = Family::DamBreak;
    let e = msg(train::train(&r, &mut |_| {}));
    assert!(
        e.contains("family reaction_diffusion, not dam_break"),
        "{e}"
    );
    // nothing to resume
    let mut r = request(Role::Anchor, &anchor_dir, &anchor_data, &out, None);
    r.resume = true;
    let e = msg(train::train(&r, &mut |_| {}));
    assert!(e.contains("nothing to resume"), "{e}");
    assert!(!out.join("expert.json").exists());
}

#[test]
fn oracle_trains_on_its_regime_only_and_corruption_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (anchor_dir, anchor_data) = make(tmp.path(), Split::Anchor, 2);
    let (oracle_dir, oracle_data) = make(tmp.path(), Split::Oracle, 2);
    let out_a = tmp.path().join("a");
    let mut ra = request(Role::Anchor, &anchor_dir, &anchor_data, &out_a, None);
    ra.options.epochs = 1;
    let anchor = train::train(&ra, &mut |_| {}).unwrap();
    let p = oracle_data.params[oracle_data.params.len() - 1];
    let out_o = tmp.path().join("o");
    let mut ro = request(
        Role::Oracle,
        &oracle_dir,
        &oracle_data,
        &out_o,
        Some((&out_a, &anchor)),
    );
    ro.p_filter = Some(p);
    ro.options.epochs = 1;
    let oracle = train::train(&ro, &mut |_| {}).unwrap();
    assert_eq!(oracle.meta.data.trajectories, 2);
    assert_eq!(oracle.meta.p_range, [p, p]);
    assert_eq!(oracle.meta.data.p_filter, Some(p));

    // flip one byte of the weights: the checksum catches it
    let w = out_o.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    assert!(matches!(
        Expert::load(&out_o),
        Err(ExpertError::Checksum { .. })
    ));
}

#[test]
fn cli_trains_resumes_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let (anchor_dir, _) = make(tmp.path(), Split::Anchor, 2);
    let (test_dir, _) = make(tmp.path(), Split::Test, 1);
    let out = tmp.path().join("anchor");
    let bin = env!("CARGO_BIN_EXE_ccm-twin");
    let train = |epochs: &str, resume: bool| {
        let mut c = Command::new(bin);
        c.args([
            "train",
            "--family",
            "reaction_diffusion",
            "--role",
            "anchor",
        ])
        .arg("--data")
        .arg(&anchor_dir)
        .arg("--out")
        .arg(&out)
        .args(["--epochs", epochs, "--batch", "4", "--seed", "3"])
        .args([
            "--width", "4", "--modes", "3", "--layers", "1", "--hidden", "4",
        ]);
        if resume {
            c.arg("--resume");
        }
        c.output().unwrap()
    };
    let o = train("1", false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // the directory is taken: neither --resume nor --force is refused
    let o = train("1", false);
    assert_eq!(o.status.code(), Some(2), "a bad request is a usage error");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pass --resume to continue it"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = train("2", true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = Expert::load(&out).unwrap();
    assert_eq!(e.meta.training.epoch_losses.len(), 2);
    assert_eq!(e.meta.config.layers, 1);

    let o = Command::new(bin)
        .args(["score", "--expert"])
        .arg(&out)
        .arg("--data")
        .arg(&test_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("rollout") && text.contains("persistence") && text.contains("all"),
        "{text}"
    );

    // a bad role is a usage error that names the choices
    let o = Command::new(bin)
        .args([
            "train",
            "--family",
            "reaction_diffusion",
            "--role",
            "middle",
        ])
        .args(["--data", "x", "--out", "y"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("expected anchor, low, high, oracle or conditioned")
    );
}

#[test]
fn the_conditioned_baseline_starts_as_the_anchor_and_learns_to_use_p() {
    use burn::tensor::{Device, Tensor, TensorData};
    use ccm_twin::fno::model::Fno;

    let tmp = tempfile::tempdir().unwrap();
    let (anchor_dir, anchor_data) = make(tmp.path(), Split::Anchor, 4);
    let out_a = tmp.path().join("a");
    let anchor = train::train(
        &request(Role::Anchor, &anchor_dir, &anchor_data, &out_a, None),
        &mut |_| {},
    )
    .unwrap();
    let out_c = tmp.path().join("c");
    let cond = train::train(
        &request(
            Role::Conditioned,
            &anchor_dir,
            &anchor_data,
            &out_c,
            Some((&out_a, &anchor)),
        ),
        &mut |_| {},
    )
    .unwrap();
    let cfg = cond.meta.config;
    assert_eq!(cfg.conditioning, 1);
    assert_eq!(cfg.in_channels(), anchor.meta.config.in_channels() + 1);
    assert_eq!(cond.meta.data.split, Split::Anchor);
    assert_eq!(Expert::load(&out_c).unwrap(), cond);
    // the coordinate's lifting column started at zero and was trained
    let lift = cond.weights.get("lift.weight").unwrap();
    let column: Vec<f32> = lift
        .chunks(cfg.in_channels())
        .map(|row| row[cfg.in_channels() - 1])
        .collect();
    assert!(column.iter().any(|&w| w != 0.0), "{column:?}");

    // the trained model's next frame depends on the coordinate it is given
    let device = Device::flex();
    let model = Fno::from_weights(&cfg, &cond.meta.normalization, &cond.weights, &device).unwrap();
    let frame: Vec<f32> = anchor_data
        .trajectories
        .index_axis(ndarray::Axis(0), 0)
        .index_axis(ndarray::Axis(0), 0)
        .iter()
        .copied()
        .collect();
    let n = cfg.n;
    let step = |s: f32| -> Vec<f32> {
        let x = Tensor::<4>::from_data(
            TensorData::new(frame.clone(), [1, cfg.channels, n, n]),
            &device,
        );
        let c = Tensor::<2>::from_data(TensorData::new(vec![s], [1, 1]), &device);
        model
            .forward_conditioned(x, Some(c))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let (a, b) = (step(-1.0), step(1.0));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-6, "the coordinate changes nothing: {diff}");

    // it is an evaluation baseline, never a CCM expert: the exporter refuses it
    let e = ccm_twin::fno::onnx::export(&cfg, &cond.meta.normalization, &cond.weights).unwrap_err();
    assert!(e.to_string().contains("conditioned"), "{e}");

    // and it cannot start from another conditioned model
    let out_cc = tmp.path().join("cc");
    let e = train::train(
        &request(
            Role::Conditioned,
            &anchor_dir,
            &anchor_data,
            &out_cc,
            Some((&out_c, &cond)),
        ),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("anchor"), "{e}");
}
