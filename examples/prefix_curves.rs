//! Per-step error curves along a family's CCM line, for studying the prefix readout's bias: for
//! each trajectory of a dataset (at most `per_regime` per regime) and each α of a grid, the free
//! rollout from frame 0 (every predicted frame's squared error and the truth's energy) and the
//! one-step predictions from each observed prefix frame (teacher forced), as JSON lines.
//!
//! ```text
//! cargo run --release --example prefix_curves -- models/navier_stokes data/navier_stokes/test \
//!     8 0.2 > ns_curves.jsonl        (trajectories per regime, α spacing)
//! ```

use std::io::Write;
use std::path::PathBuf;

use ccm_twin::ccm::Line;
use ccm_twin::config::FamilyConfig;
use ccm_twin::eval::groups;
use ccm_twin::infer::{OrtOptions, Runtime};
use ccm_twin::models::FamilyModels;

fn sums(pred: &[f32], truth: &[f32]) -> [f64; 2] {
    let (mut num, mut den) = (0.0, 0.0);
    for (p, t) in pred.iter().zip(truth) {
        let p = if p.is_finite() {
            *p as f64
        } else {
            f64::INFINITY
        };
        num += (p - *t as f64).powi(2);
        den += (*t as f64).powi(2);
    }
    [num, den]
}

/// `sums` of the forward-difference gradients (x and y, per channel, no wrap) of `pred` and
/// `truth` on `channels × n × n` frames: the error in the H¹ semi-norm, which weighs the small
/// scales where a dissipative parameter acts first.
fn grad_sums(pred: &[f32], truth: &[f32], n: usize) -> [f64; 2] {
    let (mut num, mut den) = (0.0, 0.0);
    for (p, t) in pred.chunks(n * n).zip(truth.chunks(n * n)) {
        for i in 0..n {
            for j in 0..n {
                let c = i * n + j;
                for o in [(i + 1 < n).then(|| c + n), (j + 1 < n).then(|| c + 1)]
                    .into_iter()
                    .flatten()
                {
                    let dp = p[o] as f64 - p[c] as f64;
                    let dt = t[o] as f64 - t[c] as f64;
                    let dp = if dp.is_finite() { dp } else { f64::INFINITY };
                    num += (dp - dt).powi(2);
                    den += dt * dt;
                }
            }
        }
    }
    [num, den]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: prefix_curves <bundle dir> <dataset dir> <trajectories per regime> <α spacing>"
    );
    let models = FamilyModels::load(&PathBuf::from(&args[0]))?;
    let data = ccm_twin::dataset::load(&PathBuf::from(&args[1]))?;
    let per_regime: usize = args[2].parse()?;
    let spacing: f64 = args[3].parse()?;
    let family = FamilyConfig::builtin(models.manifest.family);
    let k = family.time.prefix;
    let interval = models.prefix_config().interval;
    let line = Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut backend = models.backend(Runtime::Native, &OrtOptions::default())?;
    let shape = backend.shape();
    let (fl, t_in) = (shape.frame_len(), shape.t_in);
    anyhow::ensure!(t_in == 1, "one-step curves assume T_in = 1");
    let frames = data.manifest.shape[1];
    let side = data.manifest.shape[3];
    let horizon = frames - t_in;
    let n = ((interval.hi - interval.lo) / spacing).round() as usize + 1;
    let alphas: Vec<f64> = (0..n)
        .map(|i| interval.lo + (interval.hi - interval.lo) * i as f64 / (n - 1) as f64)
        .collect();
    let mut pred = vec![0.0f32; horizon * fl];
    let mut one = vec![0.0f32; fl];
    let out = std::io::stdout();
    let mut out = out.lock();
    for (p, idx) in groups(&data) {
        for &i in idx.iter().take(per_regime) {
            let traj: Vec<f32> = data
                .trajectories
                .index_axis(ndarray::Axis(0), i)
                .iter()
                .copied()
                .collect();
            for &a in &alphas {
                line.merge_into(a as f32, &mut buffer)?;
                backend.deploy(&buffer)?;
                backend.roll(&traj[..fl], horizon, &mut pred)?;
                let free: Vec<[f64; 2]> = (0..horizon)
                    .map(|s| sums(&pred[s * fl..][..fl], &traj[(s + 1) * fl..][..fl]))
                    .collect();
                let gfree: Vec<[f64; 2]> = (0..horizon)
                    .map(|s| grad_sums(&pred[s * fl..][..fl], &traj[(s + 1) * fl..][..fl], side))
                    .collect();
                let mut forced = Vec::new();
                let mut gforced = Vec::new();
                for s in 0..k - 1 {
                    backend.step(&traj[s * fl..][..fl], &mut one)?;
                    forced.push(sums(&one, &traj[(s + 1) * fl..][..fl]));
                    gforced.push(grad_sums(&one, &traj[(s + 1) * fl..][..fl], side));
                }
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"p": p, "traj": i, "alpha": a, "k": k,
                        "free": free, "forced": forced,
                        "gfree": gfree, "gforced": gforced})
                )?;
            }
            eprintln!("p = {p:e}, trajectory {i}: {n} merges");
        }
    }
    Ok(())
}
