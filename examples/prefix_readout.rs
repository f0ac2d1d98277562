//! CCM-Prefix on a shipped bundle, per test regime: the α read out of the first K frames of each
//! held-out trajectory (tract runs the candidates; `p` unknown, so no prior), next to the best α
//! in hindsight, with the rollout errors after the prefix and the anchor's on the same frames.
//!
//! cargo run --example prefix_readout -- models/dam_break data/dam_break/test

use std::path::PathBuf;

use ccm_twin::config::FamilyConfig;
use ccm_twin::eval::check_prefix;
use ccm_twin::models::FamilyModels;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(
        args.len() == 2,
        "usage: prefix_readout <bundle dir> <test dataset dir>"
    );
    let bundle = FamilyModels::load(&args[0])?;
    let data = ccm_twin::dataset::load(&args[1])?;
    let family = FamilyConfig::builtin(bundle.manifest.family);
    println!(
        "{:>11} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>6}",
        bundle.manifest.parameter.name,
        "best α",
        "prefix",
        "±",
        "e(best)",
        "e(prefix)",
        "e(anchor)",
        "lands"
    );
    check_prefix(
        &bundle,
        &data,
        family.time.prefix,
        &bundle.prefix_config(),
        &mut |c| {
            let spread = (c
                .alphas
                .iter()
                .map(|a| (a - c.mean_alpha()).powi(2))
                .sum::<f64>()
                / c.alphas.len() as f64)
                .sqrt();
            println!(
                "{:>11.4e} {:>+7.2} {:>+7.2} {spread:>6.2} {:>9.4} {:>9.4} {:>9.4} {:>6}",
                c.p,
                c.best_alpha,
                c.mean_alpha(),
                c.best_error,
                c.mean_error(),
                c.anchor_error,
                c.lands(0.25, 0.05)
            );
        },
    )?;
    Ok(())
}
