//! Dam-break stations that measure depth and not momentum: how far their forecasts fall behind
//! a station that measures every channel, with and without the mass balance that corrects the
//! background's momentum from the depth ([`ccm_twin::twin::analysis::MassBalance`]).
//!
//! For each regime and simulated trajectory, forecasters are fed the same frames: every channel;
//! the depth on every cell; the depth at a few gauges (random cells). Each forecast's depth
//! error (relative L2 over the horizon) is averaged over the forecasts from frames `K..12`. The
//! balance applies between gauges only when they cover the grid (see the forecaster).
//! The depth-only forecast is also rolled from the true state with its own α, which splits its
//! error into the part due to the read α and the part due to the analysed state.
//!
//! For the gauges it also prints the analysed state's depth error and the forecasts from that
//! state with the every-channel station's α and with the anchor's: which of the state and the α
//! holds them back. `GAUGES=<count>` sets how many (default 64), `GAUGE_LENGTH=<cells>` their
//! analysis's correlation length.
//!
//! With `--png PATH` it draws the depth 5 s ahead in the first forecast (first regime, first
//! trajectory) of each station next to the truth.
//!
//! ```text
//! cargo run --release --example depth_only -- models/dam_break 4 0.0125 0.028 0.04 0.1 \
//!     --png docs/results/dam_break_depth_only.png
//! ```

use std::path::PathBuf;

use ccm_twin::ccm::Line;
use ccm_twin::config::FamilyConfig;
use ccm_twin::infer::{Backend, OrtOptions, Runtime};
use ccm_twin::models::FamilyModels;
use ccm_twin::twin::analysis::{MassBalance, OiConfig};
use ccm_twin::twin::forecaster::{Forecaster, ForecasterOptions, Progress, ReadoutMode};
use ccm_twin::twin::simulator::{SimulatorOptions, StationSimulator, random_points};

/// Relative L2 error of the depth (channel 0) of a forecast from frame `from`.
fn depth_error(pred: &[f32], truth: &[Vec<f32>], from: usize, cells: usize, fl: usize) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (s, step) in pred.chunks(fl).enumerate() {
        let Some(t) = truth.get(from + 1 + s) else {
            break;
        };
        for (x, y) in step[..cells].iter().zip(&t[..cells]) {
            num += f64::from(x - y).powi(2);
            den += f64::from(*y).powi(2);
        }
    }
    (num / den).sqrt()
}

/// Relative L2 error of the momentum channels of `state`.
fn momentum_error(state: &[f32], truth: &[f32], cells: usize) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in state[cells..].iter().zip(&truth[cells..]) {
        num += f64::from(x - y).powi(2);
        den += f64::from(*y).powi(2);
    }
    (num / den).sqrt()
}

const FRAMES: usize = 12;
/// The forecast step drawn by `--png` (0-based: 5 s ahead at 0.5 s per step).
const AHEAD: usize = 9;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let png = match args.iter().position(|a| a == "--png") {
        Some(i) if i + 1 < args.len() => Some(PathBuf::from(args.drain(i..i + 2).nth(1).unwrap())),
        Some(_) => anyhow::bail!("--png needs a path"),
        None => None,
    };
    anyhow::ensure!(
        args.len() >= 3,
        "usage: depth_only <bundle> <trajectories per regime> <p>... [--png PATH]"
    );
    // the depth `AHEAD` steps into the first forecast of each station, and the truth's
    let mut snapshot: Option<(f64, Vec<f32>, Vec<Vec<f32>>)> = None;
    let models = FamilyModels::load(&PathBuf::from(&args[0]))?;
    let count: u64 = args[1].parse()?;
    let family = FamilyConfig::builtin(models.manifest.family);
    let h = family.time.horizon;
    let line = Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut roller = models.backend(Runtime::Native, &OrtOptions::default())?;
    let shape = roller.shape();
    let (fl, n) = (shape.frame_len(), shape.n);
    let cells = n * n;
    let opts = ForecasterOptions::for_bundle(&models, ReadoutMode::Prefix);
    let on = OiConfig::default();
    let off = OiConfig {
        mass_balance: false,
        ..on
    };
    // the gauges' correlation length (cells), from GAUGE_LENGTH
    let gauge_oi = OiConfig {
        length_cells: std::env::var("GAUGE_LENGTH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(on.length_cells),
        ..on
    };
    // how many depth gauges, from GAUGES (default 64)
    let count_gauges: usize = std::env::var("GAUGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let gauges: Vec<(usize, usize)> = random_points(n, count_gauges, 7)?
        .iter()
        .map(|g| (usize::from(g.row), usize::from(g.col)))
        .collect();
    let coverage =
        ccm_twin::twin::analysis::Analyser::new(shape.channels, n, &gauges, &gauge_oi)?.coverage();
    println!(
        "{count_gauges} gauges: coverage {coverage:.3} (the balance between them needs {})",
        ccm_twin::twin::analysis::BALANCE_MIN_COVERAGE
    );
    let mut out = vec![0.0f32; h * fl];
    // what the balance costs per frame
    let ccm_twin::config::SolverConfig::DamBreak(solver) = &family.solver else {
        anyhow::bail!("a shallow-water (dam-break) bundle is needed");
    };
    let closed = solver.walls == ccm_twin::config::Walls::Closed;
    let balance = MassBalance::new(n, solver.domain / n as f64, closed, solver.h_dry)?;
    let depth = vec![1.0f32; cells];
    let increment: Vec<f32> = (0..cells)
        .map(|k| ((k % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let (mut qx, mut qy) = (vec![0.0f32; cells], vec![0.0f32; cells]);
    let t = std::time::Instant::now();
    for _ in 0..100 {
        balance.correct(&depth, &increment, family.time.frame_dt, &mut qx, &mut qy)?;
    }
    println!(
        "mass balance on {n} × {n}: {:.3} ms per frame",
        t.elapsed().as_secs_f64() * 10.0
    );
    println!(
        "p, every channel | depth on every cell: balance off, on (true state with its α; momentum error off, on) | {count_gauges} depth gauges"
    );
    for p in &args[2..] {
        let p: f64 = p.parse()?;
        // every channel, depth off/on, true state with the depth-on α, q error off/on, gauges
        let mut sums = [0.0f64; 10];
        let mut m = 0usize;
        let mut withheld = 0usize;
        let mut mg = 0usize;
        let mut gauge_alpha = Vec::new();
        for seed in 0..count {
            let mut sim =
                StationSimulator::new(&family, SimulatorOptions::new("s", p, 100 + seed))?;
            let truth: Vec<Vec<f32>> = (0..FRAMES + h + 1)
                .map(|_| sim.next_frame().map(|f| f.truth))
                .collect::<Result<_, _>>()?;
            let mk = || -> anyhow::Result<_> {
                Ok(Forecaster::new(
                    &models,
                    models.backend(Runtime::Native, &OrtOptions::default())?,
                    opts.clone(),
                )?)
            };
            let (mut full, mut d_off, mut d_on, mut gauged) = (mk()?, mk()?, mk()?, mk()?);
            for (i, t) in truth.iter().enumerate().take(FRAMES) {
                let seq = i as u32;
                let at_gauges: Vec<f32> = gauges.iter().map(|&(r, c)| t[r * n + c]).collect();
                let mut e = [None; 4];
                let mut alpha_on = 0.0;
                let mut alpha_full = 0.0;
                let mut gauge_state = None;
                let mut q = [0.0; 2];
                let first = snapshot.is_none() && i == family.time.prefix;
                let mut shots = Vec::new();
                let depth_at = |frames: &[f32]| frames[AHEAD * fl..AHEAD * fl + cells].to_vec();
                if let Progress::Forecast(v) = full.push(seq, 0, t)? {
                    e[0] = Some(depth_error(v.frames, &truth, i, cells, fl));
                    alpha_full = v.deployment.alpha;
                    shots.push(depth_at(v.frames));
                }
                for (k, (f, oi)) in [(&mut d_off, &off), (&mut d_on, &on)]
                    .into_iter()
                    .enumerate()
                {
                    if let Progress::Forecast(v) =
                        f.push_partial(seq, 0, None, &[0], &t[..cells], oi)?
                    {
                        e[1 + k] = Some(depth_error(v.frames, &truth, i, cells, fl));
                        shots.push(depth_at(v.frames));
                        if k == 1 {
                            alpha_on = v.deployment.alpha;
                        }
                        q[k] = momentum_error(f.latest_state().expect("a frame"), t, cells);
                    }
                }
                match gauged.push_partial(seq, 0, Some(&gauges), &[0], &at_gauges, &gauge_oi) {
                    Ok(Progress::Forecast(v)) => {
                        e[3] = Some(depth_error(v.frames, &truth, i, cells, fl));
                        shots.push(depth_at(v.frames));
                        gauge_alpha.push(v.deployment.alpha);
                        gauge_state = gauged.latest_state().map(<[f32]>::to_vec);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        withheld += 1;
                        eprintln!("gauges: {err}");
                        e[3] = Some(f64::NAN);
                    }
                }
                if first && shots.len() == 4 {
                    let t_ahead = truth[i + 1 + AHEAD][..cells].to_vec();
                    snapshot = Some((p, t_ahead, shots));
                }
                let Some(e) = e.into_iter().collect::<Option<Vec<f64>>>() else {
                    continue;
                };
                line.merge_into(alpha_on as f32, &mut buffer)?;
                roller.deploy(&buffer)?;
                roller.roll(t, h, &mut out)?;
                let own_alpha = depth_error(&out, &truth, i, cells, fl);
                // the gauges' analysed state: its depth error, and forecasts from it with the
                // every-channel station's α and with the anchor's
                let mut g = [f64::NAN; 3];
                if let Some(state) = &gauge_state {
                    let (mut num, mut den) = (0.0f64, 0.0f64);
                    for (x, y) in state[..cells].iter().zip(&t[..cells]) {
                        num += f64::from(x - y).powi(2);
                        den += f64::from(*y).powi(2);
                    }
                    g[0] = (num / den).sqrt();
                    for (j, alpha) in [alpha_full, 0.0].into_iter().enumerate() {
                        line.merge_into(alpha as f32, &mut buffer)?;
                        roller.deploy(&buffer)?;
                        g[1 + j] = match roller.roll(state, h, &mut out) {
                            Ok(()) => depth_error(&out, &truth, i, cells, fl),
                            Err(_) => f64::NAN,
                        };
                    }
                }
                for (s, v) in sums
                    .iter_mut()
                    .zip([e[0], e[1], e[2], own_alpha, q[0], q[1]])
                {
                    *s += v;
                }
                m += 1;
                // a withheld gauge forecast is counted apart, not averaged
                if e[3].is_finite() {
                    for (s, v) in sums[6..].iter_mut().zip([e[3], g[0], g[1], g[2]]) {
                        *s += v;
                    }
                    mg += 1;
                }
            }
        }
        let a = |k: usize| sums[k] / if k < 6 { m } else { mg } as f64;
        println!(
            "{p}, {:.4} | {:.4}, {:.4} ({:.4}; {:.3}, {:.3}) | {:.4} (state {:.3}; from it with the every-channel α {:.4}, the anchor {:.4})   ({m} forecasts; gauges: {withheld} withheld, α {:+.2} … {:+.2})",
            a(0),
            a(1),
            a(2),
            a(3),
            a(4),
            a(5),
            a(6),
            a(7),
            a(8),
            a(9),
            gauge_alpha.iter().copied().fold(f64::INFINITY, f64::min),
            gauge_alpha
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max)
        );
    }
    if let (Some(path), Some((p, truth, shots))) = (png, snapshot) {
        let labels = [
            "every channel",
            "depth only, no balance",
            "depth only, mass balance",
            "depth gauges",
        ];
        let forecasts: Vec<(&str, &[f32])> = labels
            .iter()
            .zip(&shots)
            .map(|(l, s)| (*l, s.as_slice()))
            .collect();
        ccm_twin::eval::plot::field_png(
            &path,
            &format!(
                "dam break at n = {p}: depth {} s ahead, forecast from frame {}",
                (AHEAD + 1) as f64 * family.time.frame_dt,
                family.time.prefix
            ),
            n,
            &truth,
            &forecasts,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
