//! CCM-Prefix on a shipped bundle, per test regime: the α read out of the first K frames of each
//! held-out trajectory (tract runs the candidates), next to the best α in hindsight and the
//! calibrated map's α, with the rollout errors after the prefix.
//!
//! cargo run --release --example prefix_readout -- models/dam_break data/dam_break/test

use std::path::PathBuf;

use ccm_twin::ccm::prefix::{Observation, PrefixConfig, read_prefix};
use ccm_twin::ccm::{Interval, Line};
use ccm_twin::config::FamilyConfig;
use ccm_twin::eval::{Scorer, groups};
use ccm_twin::infer::{Backend, TractBackend};
use ccm_twin::models::FamilyModels;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(
        args.len() == 2,
        "usage: prefix_readout <bundle dir> <test dataset dir>"
    );
    let bundle = FamilyModels::load(&args[0])?;
    let data = ccm_twin::dataset::load(&args[1])?;
    let m = &bundle.manifest;
    let family = FamilyConfig::builtin(m.family);
    let (k, t_in) = (family.time.prefix, m.model.t_in);
    let line = Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut backend = TractBackend::new(bundle.anchor.clone())?;
    let frame_len = backend.shape().frame_len();
    let scorer = Scorer::new(
        m.model,
        m.normalization.clone(),
        &data,
        usize::MAX,
        k - t_in,
    );
    let cfg = PrefixConfig::default();
    println!(
        "{:>11} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
        m.parameter.name,
        "best α",
        "prefix",
        "calib",
        "e(best)",
        "e(prefix)",
        "e(calib)",
        "e(anchor)"
    );
    for (p, idx) in groups(&data) {
        let (best, e_best, _) =
            scorer.best_alpha(&line, Interval { lo: -3.0, hi: 3.0 }, 25, 6, &idx);
        let prior = m
            .calibration
            .as_ref()
            .map(|c| c.map.alpha(m.parameter.coordinate(p), cfg.interval));
        let mut e_prefix = 0.0;
        let mut alphas = Vec::new();
        for &i in &idx {
            let traj = data.trajectories.index_axis(ndarray::Axis(0), i);
            let frames: Vec<f32> = traj.iter().take(k * frame_len).copied().collect();
            let obs = Observation {
                frames: &frames,
                frame_len,
                t_in,
                mask: None,
            };
            let r = read_prefix(&line, &mut buffer, &mut backend, obs, prior, &cfg)?;
            line.merge_into(r.alpha as f32, &mut buffer)?;
            e_prefix += scorer.errors(&buffer, &[i])[0];
            alphas.push(r.alpha);
        }
        let n = idx.len() as f64;
        let mean_alpha = alphas.iter().sum::<f64>() / n;
        let e_calib = prior.map(|a| {
            line.merge_into(a as f32, &mut buffer).unwrap();
            scorer.mean_error(&buffer, &idx)
        });
        let e_anchor = scorer.mean_error(&bundle.anchor.weights, &idx);
        println!(
            "{p:>11.4e} {best:>+7.2} {mean_alpha:>+7.2} {:>+7.2} {e_best:>9.4} {:>9.4} {:>9.4} {e_anchor:>9.4}",
            prior.unwrap_or(f64::NAN),
            e_prefix / n,
            e_calib.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
