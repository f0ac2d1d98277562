//! The burn FNO against the contract: the same forward as the independent `f64` reference,
//! exact weight-set round trips, and training that learns and is reproducible.
#![cfg(feature = "train")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use ccm_twin::fno::model::{Fno, init_weights, rollout};
use ccm_twin::fno::train::{Samples, TrainOptions, Trainer, compute_normalization};
use ccm_twin::fno::{FnoConfig, Normalization, reference};
use common::{random_weights, rel_l2_f32 as rel_l2, tiny_fno as tiny};
use ndarray::Array5;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn check_against_reference(cfg: FnoConfig, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    let weights = random_weights(&cfg, seed);
    let norm = Normalization {
        mean: (0..cfg.channels)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        std: (0..cfg.channels)
            .map(|_| rng.random_range(0.5..2.0))
            .collect(),
    };
    let batch = 3;
    let sample = cfg.t_in * cfg.channels * cfg.n * cfg.n;
    let input: Vec<f32> = (0..batch * sample)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let device = Device::flex();
    let model = Fno::from_weights(&cfg, &norm, &weights, &device).unwrap();
    let x = Tensor::<4>::from_data(
        TensorData::new(
            input.clone(),
            [batch, cfg.t_in * cfg.channels, cfg.n, cfg.n],
        ),
        &device,
    );
    let y = model
        .forward(x)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 output");
    let out = cfg.channels * cfg.n * cfg.n;
    for b in 0..batch {
        let want = reference::forward(&cfg, &weights, &norm, &input[b * sample..(b + 1) * sample])
            .unwrap();
        let got = &y[b * out..(b + 1) * out];
        // the residual hides errors in q: compare the update y − x_last as well
        let last = &input[b * sample + (cfg.t_in - 1) * out..(b + 1) * sample];
        let dq: Vec<f32> = got.iter().zip(last).map(|(g, l)| g - l).collect();
        let wq: Vec<f32> = want.iter().zip(last).map(|(w, l)| w - l).collect();
        let e = rel_l2(got, &want);
        let eq = rel_l2(&dq, &wq);
        assert!(
            e <= 1e-5,
            "sample {b}: relative L2 {e:e} against the reference"
        );
        assert!(eq <= 1e-5, "sample {b}: update relative L2 {eq:e}");
    }
}

#[test]
fn forward_matches_the_f64_reference() {
    check_against_reference(tiny(2, 1), 1);
}

#[test]
fn forward_matches_the_f64_reference_with_two_input_frames() {
    check_against_reference(tiny(1, 2), 2);
}

#[test]
fn weight_set_round_trip_is_exact() {
    let cfg = tiny(2, 1);
    let w = random_weights(&cfg, 3);
    let norm = Normalization {
        mean: vec![0.1, -0.2],
        std: vec![1.5, 0.7],
    };
    for device in [Device::flex(), Device::flex().autodiff()] {
        let model = Fno::from_weights(&cfg, &norm, &w, &device).unwrap();
        let back = model.to_weights();
        assert_eq!(back, w);
        assert_eq!(back.same_layout(&w), Ok(()));
    }
}

#[test]
fn wrong_layouts_and_normalisations_are_refused() {
    let cfg = tiny(2, 1);
    let norm = Normalization {
        mean: vec![0.0, 0.0],
        std: vec![1.0, 1.0],
    };
    let other = init_weights(&FnoConfig { width: 5, ..cfg }, 0);
    let err = Fno::from_weights(&cfg, &norm, &other, &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("lift.weight"), "{err}");
    let bad = Normalization {
        mean: vec![0.0, 0.0],
        std: vec![1.0, 0.0],
    };
    let err = Fno::from_weights(&cfg, &bad, &init_weights(&cfg, 0), &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("not a positive number"), "{err}");
}

#[test]
fn initial_model_is_close_to_persistence() {
    let cfg = tiny(1, 1);
    let norm = Normalization {
        mean: vec![0.0],
        std: vec![1.0],
    };
    let model = Fno::from_weights(&cfg, &norm, &init_weights(&cfg, 5), &Device::flex()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f32> = (0..256).map(|_| rng.random_range(-1.0..1.0)).collect();
    let y = rollout(&model, &x, 1, 1);
    let e = rel_l2(&y, &x);
    assert!(e < 0.2, "initial step moves the field by {e}");
}

/// Smooth travelling waves: frame t of trajectory i is a sum of two sines shifted by t.
fn synthetic(trajectories: usize, frames: usize, n: usize) -> Array5<f32> {
    Array5::from_shape_fn((trajectories, frames, 1, n, n), |(i, t, _, h, w)| {
        let (x, y) = (w as f32 / n as f32, h as f32 / n as f32);
        let phase = 0.7 * i as f32 + 0.05 * t as f32;
        let tau = std::f32::consts::TAU;
        (tau * (x + phase)).sin() + 0.5 * (tau * (2.0 * y - phase)).cos() + 0.2 * i as f32
    })
}

fn options(seed: u64) -> TrainOptions {
    TrainOptions {
        epochs: 1,
        unroll_epochs: 0,
        lr: 1e-2,
        batch: 4,
        warmup_steps: Some(3),
        min_lr_factor: 0.1,
        seed,
    }
}

fn tiny_trainer(seed: u64, traj: &Array5<f32>, epochs: usize) -> (Trainer, Samples) {
    let cfg = tiny(1, 1);
    let norm = compute_normalization(traj.view());
    let samples = Samples::new(traj.view(), cfg.t_in).unwrap();
    let opts = TrainOptions {
        epochs,
        ..options(seed)
    };
    let trainer = Trainer::new(&cfg, &norm, &init_weights(&cfg, seed), opts).unwrap();
    (trainer, samples)
}

#[test]
fn thirty_steps_lower_the_loss() {
    // 8 trajectories × 15 pairs = 120 pairs = 30 batches of 4: one epoch is 30 steps
    let traj = synthetic(8, 16, 16);
    let (mut trainer, samples) = tiny_trainer(11, &traj, 1);
    assert_eq!(trainer.total_steps(&samples), 30);
    let mut losses = Vec::new();
    trainer
        .run_epoch(&samples, &mut |p| {
            if let ccm_twin::fno::train::Progress::Step { loss, .. } = p {
                losses.push(loss)
            }
        })
        .unwrap();
    assert_eq!(losses.len(), 30);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "loss did not fall: first steps {first:.4}, last steps {last:.4}"
    );
    assert!(losses.iter().all(|l| l.is_finite()));
}

#[test]
fn one_step_moves_every_trainable_tensor() {
    let traj = synthetic(2, 3, 16);
    let (mut trainer, samples) = tiny_trainer(4, &traj, 1);
    let before = trainer.weights();
    trainer.step(&samples, &[0, 1, 2], false, 1e-3);
    let after = trainer.weights();
    for t in before.tensors() {
        let (a, b) = (before.get(&t.name).unwrap(), after.get(&t.name).unwrap());
        assert!(a != b, "{} did not move: no gradient reaches it", t.name);
    }
}

#[test]
fn the_same_seed_gives_identical_weights() {
    let traj = synthetic(4, 6, 16);
    let run = |seed| {
        let (mut trainer, samples) = tiny_trainer(seed, &traj, 2);
        for _ in 0..2 {
            trainer.run_epoch(&samples, &mut |_| {}).unwrap();
        }
        trainer.weights()
    };
    let a = run(21);
    let b = run(21);
    assert_eq!(a, b, "same seed, different weights");
    let c = run(22);
    assert_ne!(a, c, "a different seed should give different weights");
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let traj = synthetic(4, 6, 16);
    let dir = tempfile::tempdir().unwrap();
    // uninterrupted: 2 epochs, the last one unrolled over two steps
    let opts = TrainOptions {
        epochs: 2,
        unroll_epochs: 1,
        ..options(31)
    };
    let cfg = tiny(1, 1);
    let norm = compute_normalization(traj.view());
    let samples = Samples::new(traj.view(), 1).unwrap();
    let start = init_weights(&cfg, 31);
    let mut full = Trainer::new(&cfg, &norm, &start, opts.clone()).unwrap();
    full.run_epoch(&samples, &mut |_| {}).unwrap();
    full.run_epoch(&samples, &mut |_| {}).unwrap();
    // interrupted after the first epoch, resumed from the checkpoint
    let mut first = Trainer::new(&cfg, &norm, &start, opts.clone()).unwrap();
    first.run_epoch(&samples, &mut |_| {}).unwrap();
    first.save_checkpoint(dir.path(), 1.0).unwrap();
    drop(first);
    let (mut resumed, seconds) = Trainer::resume(dir.path(), opts).unwrap();
    assert_eq!(seconds, 1.0);
    assert_eq!(resumed.epochs_done(), 1);
    resumed.run_epoch(&samples, &mut |_| {}).unwrap();
    assert_eq!(resumed.weights(), full.weights());
    assert_eq!(resumed.epoch_losses(), full.epoch_losses());
}
