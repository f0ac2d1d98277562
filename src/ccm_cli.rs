//! The model-bundle subcommands: `export`, `inspect`, `merge`. Glue only.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::infer::OnnxExpert;
use ccm_twin::models::{self, FamilyModels};

/// `ccm-twin export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Family the experts belong to (its config supplies the parameter range and bands).
    #[arg(long)]
    family: Family,
    /// Trained anchor expert directory.
    #[arg(long)]
    anchor: PathBuf,
    /// Trained low endpoint expert directory.
    #[arg(long)]
    low: PathBuf,
    /// Trained high endpoint expert directory.
    #[arg(long)]
    high: PathBuf,
    /// Bundle directory to write (e.g. models/dam_break).
    #[arg(long)]
    out: PathBuf,
    /// Family config the experts were trained for (default: the built-in one).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// `ccm-twin inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Bundle directory (models/<family>).
    dir: PathBuf,
    /// Print the diagnostics as JSON.
    #[arg(long)]
    json: bool,
}

/// `ccm-twin merge`.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// Bundle directory (models/<family>).
    dir: PathBuf,
    /// Coordinate along the line: −1 is the low expert, +1 the high one, |α| > 1 extrapolates.
    #[arg(long, allow_hyphen_values = true)]
    alpha: f32,
    /// ONNX file to write.
    #[arg(long)]
    out: PathBuf,
}

/// `ccm-twin calibrate`.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Bundle directory (models/<family>); its manifest receives the calibration.
    dir: PathBuf,
    /// The family's `calib` split (fits the calibrated map).
    #[arg(long)]
    calib: PathBuf,
    /// The family's `val` split (fits CCM-Scale's γ).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Interval searched for the best α of each regime.
    #[arg(long, default_value_t = 3.0)]
    reach: f64,
    /// Keep the manifest's map and γ; refit only CCM-Prefix's debiasing gain on `--calib`.
    #[arg(long)]
    prefix_only: bool,
}

#[cfg(feature = "train")]
pub fn calibrate(args: CalibrateArgs) -> Result<()> {
    use ccm_twin::ccm::Interval;
    let mut bundle =
        FamilyModels::load(&args.dir).with_context(|| format!("loading {}", args.dir.display()))?;
    let calib = ccm_twin::dataset::load(&args.calib)
        .with_context(|| format!("reading {}", args.calib.display()))?;
    let val = match &args.val {
        Some(v) => {
            Some(ccm_twin::dataset::load(v).with_context(|| format!("reading {}", v.display()))?)
        }
        None => None,
    };
    let family_cfg = FamilyConfig::builtin(bundle.manifest.family);
    let skip = family_cfg
        .time
        .prefix
        .saturating_sub(bundle.manifest.model.t_in);
    let interval = Interval {
        lo: -args.reach,
        hi: args.reach,
    };
    let mut cal = match (&bundle.manifest.calibration, args.prefix_only) {
        (Some(c), true) => c.clone(),
        (None, true) => anyhow::bail!(
            "{} has no calibration to keep; run `ccm-twin calibrate` without --prefix-only",
            args.dir.display()
        ),
        (_, false) => {
            ccm_twin::eval::calibrate(&bundle, &calib, val.as_ref(), interval, skip, &mut |m| {
                eprintln!("  {m}")
            })?
        }
    };
    cal.prefix = ccm_twin::eval::calibrate_prefix(
        &bundle,
        &cal,
        &calib,
        family_cfg.time.prefix,
        &mut |m| eprintln!("  {m}"),
    )?;
    eprintln!("{}", describe(&cal));
    bundle.manifest.calibration = Some(cal);
    models::write_manifest(&bundle.manifest, &args.dir)?;
    Ok(())
}

#[cfg(not(feature = "train"))]
pub fn calibrate(_: CalibrateArgs) -> Result<()> {
    anyhow::bail!(
        "calibration rolls experts out with the trainer's forward; rebuild with the `train` feature"
    )
}

pub fn export(args: ExportArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => FamilyConfig::load(p)?,
        None => FamilyConfig::builtin(args.family),
    };
    let manifest = models::export_bundle(
        &cfg.parameter,
        [
            ("anchor", &args.anchor),
            ("low", &args.low),
            ("high", &args.high),
        ],
        &args.out,
    )
    .with_context(|| {
        format!(
            "exporting the {} bundle to {}",
            args.family,
            args.out.display()
        )
    })?;
    // read it back: what we ship must load and share one graph
    FamilyModels::load(&args.out).context("checking the written bundle")?;
    eprintln!(
        "wrote {} experts ({} parameters each) and manifest.json to {}",
        manifest.experts.len(),
        manifest.model.num_params(),
        args.out.display()
    );
    Ok(())
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let bundle =
        FamilyModels::load(&args.dir).with_context(|| format!("loading {}", args.dir.display()))?;
    let diag = bundle.experts().diagnostics();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diag)?);
        return Ok(());
    }
    let m = &bundle.manifest;
    println!("bundle    {}  ({})", args.dir.display(), m.family);
    println!(
        "model     FNO width {}, {} modes, {} layers, hidden {}, {}×{} grid, {} channels, T_in {} ({} parameters)",
        m.model.width,
        m.model.modes,
        m.model.layers,
        m.model.hidden,
        m.model.n,
        m.model.n,
        m.model.channels,
        m.model.t_in,
        m.model.num_params()
    );
    println!(
        "parameter {} in [{}, {}]; low band {:?}, high band {:?}",
        m.parameter.name,
        m.parameter.lo,
        m.parameter.hi,
        m.parameter.low_band,
        m.parameter.high_band
    );
    match &m.calibration {
        Some(c) => println!("{}", describe(c)),
        None => println!("calibrated map: none yet (run `ccm-twin calibrate`)"),
    }
    println!();
    print!("{}", diag.table());
    Ok(())
}

pub fn merge(args: MergeArgs) -> Result<()> {
    let bundle =
        FamilyModels::load(&args.dir).with_context(|| format!("loading {}", args.dir.display()))?;
    let line = ccm_twin::ccm::Line::through_endpoints(
        bundle.low.weights.clone(),
        bundle.high.weights.clone(),
    )?;
    let mut merged = line.buffer();
    line.merge_into(args.alpha, &mut merged)?;
    let proto = bundle.anchor.with_weights(&merged)?;
    OnnxExpert::save(&proto, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote θ(α = {}) = {:.3}·θ_L + {:.3}·θ_H to {}{}",
        args.alpha,
        0.5 * (1.0 - args.alpha),
        0.5 * (1.0 + args.alpha),
        args.out.display(),
        if args.alpha.abs() > 1.0 {
            " (extrapolates past the endpoints)"
        } else {
            ""
        }
    );
    Ok(())
}

/// One line describing a bundle's calibration.
fn describe(c: &ccm_twin::models::Calibration) -> String {
    let knots: Vec<String> = c
        .map
        .knots
        .iter()
        .map(|(s, a)| format!("({s:+.2}, {a:+.2})"))
        .collect();
    format!(
        "calibrated map s(p) → α: knots {}; slope beyond {:.3}; CCM-Scale γ {}; CCM-Prefix gain {}",
        knots.join(" "),
        c.map.slope,
        c.scale
            .map(|s| format!("{:.3}", s.gamma))
            .unwrap_or_else(|| "not fitted".into()),
        c.prefix
            .as_ref()
            .map(|p| format!("{:.3}", p.gain))
            .unwrap_or_else(|| "not fitted".into())
    )
}
