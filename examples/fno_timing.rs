//! Times the burn FNO on this machine: the median training step (batch 8, Adam) and the median
//! forward pass at batch 1 and 8, at the default size (width 20, 12 modes, 4 layers, hidden 64,
//! 64×64, one channel).
//!
//! ```text
//! cargo run --release --example fno_timing [-- WIDTH MODES LAYERS HIDDEN N BATCH]
//! ```

use std::time::Instant;

use ccm_twin::fno::model::{Fno, init_weights, rollout};
use ccm_twin::fno::train::{Samples, TrainOptions, Trainer};
use ccm_twin::fno::{FnoConfig, Normalization};
use ndarray::Array5;

// The allocator the `ccm-twin` binary uses (with glibc malloc a step takes about twice as long).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are integers"))
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let cfg = FnoConfig {
        channels: 1,
        t_in: 1,
        width: arg(0, 20),
        modes: arg(1, 12),
        layers: arg(2, 4),
        hidden: arg(3, 64),
        conditioning: 0,
        n: arg(4, 64),
    };
    let batch = arg(5, 8);
    let n = cfg.n;
    let traj = Array5::from_shape_fn((batch, 2, 1, n, n), |(i, t, _, h, w)| {
        ((i + 1) as f32 * 0.3 + t as f32 * 0.1 + (h * n + w) as f32 * 1e-3).sin()
    });
    let norm = Normalization {
        mean: vec![0.0],
        std: vec![1.0],
    };
    let weights = init_weights(&cfg, 1);
    let samples = Samples::new(traj.view(), 1).expect("samples");
    let options = TrainOptions {
        batch,
        ..TrainOptions::for_role(ccm_twin::fno::expert::Role::Anchor)
    };
    let mut trainer = Trainer::new(&cfg, &norm, &weights, options).expect("trainer");
    let idx: Vec<usize> = (0..batch).collect();
    let mut steps = Vec::new();
    for i in 0..23 {
        let t = Instant::now();
        let loss = trainer.step(&samples, &idx, false, 1e-3);
        let dt = t.elapsed().as_secs_f64();
        assert!(loss.is_finite());
        if i >= 3 {
            steps.push(dt);
        }
    }
    let model =
        Fno::from_weights(&cfg, &norm, &weights, &burn::tensor::Device::flex()).expect("model");
    let frame = n * n;
    let x: Vec<f32> = traj
        .iter()
        .copied()
        .step_by(2)
        .take(batch * frame)
        .collect();
    let mut fwd1 = Vec::new();
    let mut fwdb = Vec::new();
    for i in 0..33 {
        let t = Instant::now();
        let _ = rollout(&model, &x[..frame], 1, 1);
        let d1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = rollout(&model, &x, batch, 1);
        let db = t.elapsed().as_secs_f64();
        if i >= 3 {
            fwd1.push(d1);
            fwdb.push(db);
        }
    }
    println!(
        "FNO width {} modes {} layers {} hidden {} n {} ({} parameters, {:.1} MMAC/sample)",
        cfg.width,
        cfg.modes,
        cfg.layers,
        cfg.hidden,
        cfg.n,
        cfg.num_params(),
        cfg.forward_macs() as f64 / 1e6
    );
    println!(
        "train step, batch {batch}: median {:.1} ms (min {:.1}, max {:.1})",
        median(steps.clone()) * 1e3,
        steps.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
        steps.iter().copied().fold(0.0, f64::max) * 1e3
    );
    println!("forward, batch 1: median {:.2} ms", median(fwd1) * 1e3);
    println!(
        "forward, batch {batch}: median {:.2} ms",
        median(fwdb) * 1e3
    );
}
