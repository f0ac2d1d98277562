//! Peak resident memory of a forecasting process for one family: load the bundle, read α out
//! of a K-frame prefix (the default search), merge, and roll the horizon, on the chosen runtime;
//! prints the process's peak resident set (`VmHWM`) after each stage.
//!
//! ```text
//! cargo run --example rollout_memory -- models/dam_break native 2   (runtime, readout threads)
//! ```

use std::path::PathBuf;
use std::time::Instant;

use ccm_twin::ccm::Line;
use ccm_twin::ccm::prefix::{Helper, Observation, read_prefix_parallel};
use ccm_twin::infer::{OrtOptions, Runtime};
use ccm_twin::models::FamilyModels;

/// `VmHWM` and `VmRSS` of this process in MiB (Linux).
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn report(stage: &str) {
    let (peak, now) = memory();
    println!("{stage:<40} peak {peak:6.1} MiB, now {now:6.1} MiB");
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models/dam_break"));
    let runtime: Runtime = args
        .next()
        .map(|r| r.parse().map_err(anyhow::Error::msg))
        .transpose()?
        .unwrap_or_default();
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    report("start");
    let bundle = FamilyModels::load(&dir)?;
    report("bundle loaded (3 experts)");
    let line = Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut backend = bundle.backend(runtime, &OrtOptions::default())?;
    let mut helpers = (1..threads.max(1))
        .map(|_| {
            Ok(Helper {
                model: bundle.backend(runtime, &OrtOptions::default())?,
                buffer: line.buffer(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    report(&format!("{runtime} runtime built (×{})", helpers.len() + 1));

    let family = ccm_twin::config::FamilyConfig::builtin(bundle.manifest.family);
    let p = family.parameter.ood_test[0];
    let mut solver = ccm_twin::pde::new_solver(&family, p, 5)?;
    let fl = solver.frame_len();
    let k = family.time.prefix;
    let mut prefix = vec![0.0; k * fl];
    for (i, frame) in prefix.chunks_exact_mut(fl).enumerate() {
        if i > 0 {
            solver.advance(family.time.frame_dt)?;
        }
        solver.write_frame(frame);
    }
    let obs = Observation {
        frames: &prefix,
        frame_len: fl,
        t_in: bundle.manifest.model.t_in,
        mask: None,
    };
    let t = Instant::now();
    let r = read_prefix_parallel(
        &line,
        &mut buffer,
        &mut backend,
        &mut helpers,
        obs,
        None,
        &bundle.prefix_config(),
    )?;
    let readout = t.elapsed();
    report(&format!("prefix readout (α = {:+.2})", r.alpha));
    let t = Instant::now();
    line.merge_into(r.alpha as f32, &mut buffer)?;
    backend.deploy(&buffer)?;
    let horizon = family.time.horizon;
    let mut out = vec![0.0; horizon * fl];
    backend.roll(&prefix[(k - 1) * fl..], horizon, &mut out)?;
    let roll = t.elapsed();
    report(&format!("merge + {horizon}-step rollout"));
    println!(
        "readout {:.0} ms ({threads} thread(s)), merge + deploy + {horizon} steps {:.0} ms ({runtime})",
        readout.as_secs_f64() * 1e3,
        roll.as_secs_f64() * 1e3
    );
    Ok(())
}
