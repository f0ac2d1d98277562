//! The `ccm-twin` command line: argument parsing and glue only; the work lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use ccm_twin::config::{ConfigError, Family, FamilyConfig};
use ccm_twin::dataset::{self, DatasetError, GenerateOptions, Split};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod ccm_cli;
mod eval_cli;
mod twin_cli;
// Training allocates and frees many multi-MB tensors per step: glibc malloc hands them back to
// the kernel and faults fresh pages in every time, mimalloc keeps them. A batch-8 step of the
// default FNO took ~205–245 ms with glibc and ~105–115 ms with mimalloc on the 2-core machine.
#[cfg(feature = "train")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ccm-twin",
    version,
    about = "Digital twins from merged neural PDE experts (CCM)"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a family's PDE and write one dataset split (or all of them).
    Generate {
        /// Family: navier_stokes, reaction_diffusion or dam_break.
        #[arg(long)]
        family: Family,
        /// Split: anchor, low, high, val, calib, oracle, test, or `all` (then OUT gets one
        /// directory per split).
        #[arg(long)]
        split: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A config file to use instead of the built-in one (see `ccm-twin config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the split size (trajectories, or trajectories per regime value).
        #[arg(long)]
        count: Option<usize>,
        /// Replace an existing output directory.
        #[arg(long)]
        force: bool,
    },
    /// Describe a dataset directory: shapes, regimes, value ranges; verifies checksums.
    Info {
        /// Dataset directory (written by `generate`).
        dir: PathBuf,
    },
    /// Print a family's built-in config, with its comments.
    Config {
        /// Family.
        family: Family,
    },
    /// Simulate a sensor station: run a family's solver and publish its frames on MQTT.
    Simulate(twin_cli::SimulateArgs),
    /// Forward COBS-framed sensor frames from stdin, UDP or a serial device to MQTT.
    Bridge(twin_cli::BridgeArgs),
    /// Serve a station: frames in over MQTT, CCM readout, forecasts, status and alerts out.
    Serve(twin_cli::ServeArgs),
    /// Signed model updates: make a signing key, pack a bundle as a signed package, verify one.
    #[command(subcommand)]
    Bundle(twin_cli::BundleCmd),
    /// The whole system in one process: broker, a simulated station outside the trained range,
    /// the runtime, and the forecasts scored against the truth as it arrives.
    Demo(twin_cli::DemoArgs),
    /// Train an FNO expert: the family anchor from scratch, or an endpoint / oracle expert
    /// fine-tuned from the anchor.
    Train(TrainArgs),
    /// Export trained experts (anchor, low, high) as an ONNX model bundle with its manifest.
    Export(ccm_cli::ExportArgs),
    /// Show a bundle's decomposition: norms of the updates, shared part vs physical direction.
    Inspect(ccm_cli::InspectArgs),
    /// Write the merged checkpoint θ(α) of a bundle as ONNX.
    Merge(ccm_cli::MergeArgs),
    /// Fit the calibrated map p → α (on the calib split) and CCM-Scale's γ (on val) of a bundle.
    Calibrate(ccm_cli::CalibrateArgs),
    /// Run the evaluation protocol on the test split: every method's rollout error after the
    /// prefix, the results tables (Markdown, CSV), a summary beside the paper's numbers, plots.
    Evaluate(eval_cli::EvaluateArgs),
    /// Score an expert on a dataset: rollout, one-step and persistence errors.
    Score {
        /// Expert directory (written by `train`).
        #[arg(long)]
        expert: PathBuf,
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Frames to roll out (default: the dataset's horizon).
        #[arg(long)]
        horizon: Option<usize>,
        /// Predicted frames left out of the scores at the start (e.g. a prefix K).
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Print the full report (per trajectory) as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Family: navier_stokes, reaction_diffusion or dam_break.
    #[arg(long)]
    family: Family,
    /// Role: anchor, low, high, oracle, or conditioned (the parameter-conditioned baseline of
    /// the evaluation, fine-tuned from the anchor on the anchor split with p as an input)
    #[arg(long)]
    role: ccm_twin::fno::expert::Role,
    /// Dataset directory of the role's split (anchor, low, high or oracle; conditioned: anchor)
    #[arg(long)]
    data: PathBuf,
    /// Expert directory to write.
    #[arg(long)]
    out: PathBuf,
    /// The anchor expert a low/high/oracle expert is fine-tuned from.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Oracle: train only on the trajectories at this parameter value.
    #[arg(long)]
    p: Option<f64>,
    /// Epochs (default: 40 for an anchor, 15 for a fine-tune).
    #[arg(long)]
    epochs: Option<usize>,
    /// Of the epochs, the last ones trained with the two-step unrolled loss.
    #[arg(long, default_value_t = 0)]
    unroll_epochs: usize,
    /// Peak learning rate (default: 1e-3 for an anchor, 3e-4 for a fine-tune).
    #[arg(long)]
    lr: Option<f64>,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Channel width of the Fourier layers (anchor; default 20).
    #[arg(long)]
    width: Option<usize>,
    /// Kept Fourier modes per axis (anchor; default 12).
    #[arg(long)]
    modes: Option<usize>,
    /// Fourier layers (anchor; default 4).
    #[arg(long)]
    layers: Option<usize>,
    /// Hidden width of the projection (anchor; default 64).
    #[arg(long)]
    hidden: Option<usize>,
    /// Seed of the initialisation and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue an interrupted run from OUT/checkpoint (the same options; more epochs allowed).
    #[arg(long)]
    resume: bool,
    /// Replace an expert or checkpoint already in OUT.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            let bad_input = err.chain().any(|e| {
                e.downcast_ref::<ConfigError>().is_some()
                    || matches!(
                        e.downcast_ref::<DatasetError>(),
                        Some(DatasetError::Config(_))
                    )
                    || twin_cli::is_bad_input(e)
                    || train_cmd::is_bad_request(e)
                    || eval_cli::is_bad_request(e)
            });
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

fn init_logging(verbose: u8) {
    // The embedded broker (rumqttd) logs an ERROR for every clean disconnect: its logs show only
    // with -vv or RUST_LOG.
    let default = match verbose {
        0 => "warn,rumqttd=off",
        1 => "info,rumqttd=off",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            family,
            split,
            out,
            config,
            count,
            force,
        } => {
            let cfg = match &config {
                Some(path) => FamilyConfig::load(path)?,
                None => FamilyConfig::builtin(family),
            };
            anyhow::ensure!(
                cfg.family == family,
                "config {} is for family {}, not {family}",
                config.as_deref().unwrap_or(Path::new("?")).display(),
                cfg.family
            );
            let splits: Vec<(Split, PathBuf)> = if split == "all" {
                Split::ALL
                    .iter()
                    .map(|&s| (s, out.join(s.name())))
                    .collect()
            } else {
                let s: Split = split.parse().map_err(anyhow::Error::msg)?;
                vec![(s, out.clone())]
            };
            let opts = GenerateOptions { count, force };
            for (s, dir) in splits {
                generate_one(&cfg, s, &dir, &opts)?;
            }
            Ok(())
        }
        Command::Info { dir } => info(&dir),
        Command::Config { family } => {
            print!("{}", family.builtin_toml());
            Ok(())
        }
        Command::Simulate(args) => twin_cli::simulate(args),
        Command::Bridge(args) => twin_cli::bridge(args),
        Command::Serve(args) => twin_cli::serve(args),
        Command::Demo(args) => twin_cli::demo(args),
        Command::Bundle(cmd) => twin_cli::bundle(cmd),
        Command::Train(args) => train_cmd::train(args),
        Command::Export(args) => ccm_cli::export(args),
        Command::Inspect(args) => ccm_cli::inspect(args),
        Command::Merge(args) => ccm_cli::merge(args),
        Command::Calibrate(args) => ccm_cli::calibrate(args),
        Command::Evaluate(args) => eval_cli::evaluate(args),
        Command::Score {
            expert,
            data,
            horizon,
            skip,
            json,
        } => train_cmd::score(&expert, &data, horizon, skip, json),
    }
}

/// `train` and `score`, which need the trainer (cargo feature `train`).
#[cfg(feature = "train")]
mod train_cmd {
    use std::path::Path;

    use anyhow::{Context, Result};
    use ccm_twin::dataset;
    use ccm_twin::fno::expert::Expert;
    use ccm_twin::fno::train::{self, Architecture, Progress, ScoreOptions, TrainOptions};
    use indicatif::{ProgressBar, ProgressStyle};

    use super::TrainArgs;

    /// Whether an error is a request that does not fit together (exit code 2).
    pub fn is_bad_request(e: &(dyn std::error::Error + 'static)) -> bool {
        matches!(
            e.downcast_ref::<train::TrainError>(),
            Some(train::TrainError::Request(_))
        )
    }

    pub fn train(a: TrainArgs) -> Result<()> {
        let data = dataset::load(&a.data)
            .with_context(|| format!("reading dataset {}", a.data.display()))?;
        let from = match &a.from {
            Some(dir) => Some((
                dir.as_path(),
                Expert::load(dir).with_context(|| format!("reading anchor {}", dir.display()))?,
            )),
            None => None,
        };
        let mut options = TrainOptions::for_role(a.role);
        options.epochs = a.epochs.unwrap_or(options.epochs);
        options.unroll_epochs = a.unroll_epochs;
        options.lr = a.lr.unwrap_or(options.lr);
        options.batch = a.batch;
        options.seed = a.seed;
        let sizes = [a.width, a.modes, a.layers, a.hidden];
        let architecture = sizes.iter().any(Option::is_some).then(|| {
            let d = Architecture::default();
            Architecture {
                width: a.width.unwrap_or(d.width),
                modes: a.modes.unwrap_or(d.modes),
                layers: a.layers.unwrap_or(d.layers),
                hidden: a.hidden.unwrap_or(d.hidden),
            }
        });
        let req = train::TrainRequest {
            family: a.family,
            role: a.role,
            data_dir: &a.data,
            data: &data,
            p_filter: a.p,
            from: from.as_ref().map(|(d, e)| (*d, e)),
            architecture,
            options,
            out: &a.out,
            resume: a.resume,
            force: a.force,
        };
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>24} [{bar:30}] {pos}/{len} steps  {msg}  {per_sec}  eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} {}", a.family, a.role));
        let mut ema: Option<f64> = None;
        let mut report = |p: Progress| match p {
            Progress::Start {
                total_steps,
                done_steps,
                ..
            } => {
                bar.set_length(total_steps as u64);
                bar.set_position(done_steps as u64);
                bar.reset_eta();
            }
            Progress::Step { epoch, loss, .. } => {
                let e = ema.map_or(loss, |e| 0.95 * e + 0.05 * loss);
                ema = Some(e);
                bar.set_message(format!("epoch {epoch}  loss {e:.4}"));
                bar.inc(1);
            }
            Progress::Epoch {
                epoch,
                loss,
                unrolled,
            } => {
                // suspend + eprintln rather than println: the line must reach a log file too,
                // where the bar itself is hidden
                bar.suspend(|| {
                    eprintln!(
                        "epoch {epoch:>3}  mean loss {loss:.5}{}",
                        if unrolled { "  (2-step unrolled)" } else { "" }
                    )
                });
            }
        };
        let expert = train::train(&req, &mut report)
            .with_context(|| format!("training the {} {} expert", a.family, a.role))?;
        bar.finish_and_clear();
        let t = &expert.meta.training;
        eprintln!(
            "{} {} expert: {} parameters, {} epochs / {} steps in {:.1} s, final train loss {:.5} -> {}",
            a.family,
            a.role,
            expert.weights.len(),
            t.epochs,
            t.steps,
            t.seconds,
            t.final_train_loss,
            a.out.display()
        );
        Ok(())
    }

    pub fn score(
        expert: &Path,
        data: &Path,
        horizon: Option<usize>,
        skip: usize,
        json: bool,
    ) -> Result<()> {
        let e =
            Expert::load(expert).with_context(|| format!("reading expert {}", expert.display()))?;
        let ds =
            dataset::load(data).with_context(|| format!("reading dataset {}", data.display()))?;
        let opts = ScoreOptions {
            horizon,
            skip,
            ..ScoreOptions::default()
        };
        let r = train::score(&e, &ds, &opts)
            .with_context(|| format!("scoring {} on {}", expert.display(), data.display()))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(());
        }
        println!(
            "expert {} ({} {}) on {} ({} split), {} frames rolled out, {} skipped",
            expert.display(),
            e.meta.family,
            e.meta.role,
            data.display(),
            ds.manifest.split,
            r.horizon,
            r.skip
        );
        println!(
            "{:>14} {:>6} {:>10} {:>10} {:>12}",
            ds.manifest.parameter, "traj", "rollout", "one-step", "persistence"
        );
        for g in r.groups.iter().chain(std::iter::once(&r.all)) {
            let p = g.p.map_or("all".to_string(), |p| format!("{p:.4e}"));
            println!(
                "{p:>14} {:>6} {:>10.4} {:>10.4} {:>12.4}",
                g.count, g.rollout, g.one_step, g.persistence
            );
        }
        Ok(())
    }
}

/// Without the trainer: the commands exist and say how to get them.
#[cfg(not(feature = "train"))]
mod train_cmd {
    use std::path::Path;

    use anyhow::{Result, bail};

    use super::TrainArgs;

    pub fn is_bad_request(_: &(dyn std::error::Error + 'static)) -> bool {
        false
    }

    const MISSING: &str =
        "this build of ccm-twin has no trainer: rebuild with the `train` feature (on by default)";

    pub fn train(_: TrainArgs) -> Result<()> {
        bail!(MISSING)
    }

    pub fn score(_: &Path, _: &Path, _: Option<usize>, _: usize, _: bool) -> Result<()> {
        bail!(MISSING)
    }
}

fn generate_one(
    cfg: &FamilyConfig,
    split: Split,
    dir: &Path,
    opts: &GenerateOptions,
) -> Result<()> {
    let total = dataset::plan(cfg, split, opts.count).len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>28} [{bar:30}] {pos}/{len} trajectories  {per_sec}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {}", cfg.family, split));
    let manifest = dataset::generate(cfg, split, dir, opts, &|| bar.inc(1)).with_context(|| {
        format!(
            "generating {} split '{split}' into {}",
            cfg.family,
            dir.display()
        )
    })?;
    bar.finish_and_clear();
    let n = manifest.shape[0];
    eprintln!(
        "{} {split}: {n} trajectories × {} frames × {}×{}×{} in {:.1} s ({:.2} trajectories/s) -> {}",
        cfg.family,
        manifest.shape[1],
        manifest.shape[2],
        manifest.shape[3],
        manifest.shape[4],
        manifest.seconds,
        n as f64 / manifest.seconds.max(1e-9),
        dir.display()
    );
    Ok(())
}

fn info(dir: &Path) -> Result<()> {
    let ds = dataset::load(dir).with_context(|| format!("reading dataset {}", dir.display()))?;
    let m = &ds.manifest;
    println!("dataset   {}", dir.display());
    println!("family    {} / split {}", m.family, m.split);
    println!(
        "shape     {} trajectories × {} frames × {} channels × {}×{}  (frame dt {})",
        m.shape[0], m.shape[1], m.shape[2], m.shape[3], m.shape[4], m.frame_dt
    );
    println!("parameter {} ∈ {:?}", m.parameter, m.parameter_values);
    println!(
        "generated {} in {:.1} s; checksums OK",
        m.generator, m.seconds
    );
    println!(
        "{:<10} {:>11} {:>11} {:>11} {:>11}",
        "channel", "min", "max", "mean", "std"
    );
    for (c, name) in m.channels.iter().enumerate() {
        let view = ds.trajectories.index_axis(ndarray::Axis(2), c);
        let (mut lo, mut hi, mut sum, mut sq) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0);
        for &x in view.iter() {
            let x = x as f64;
            lo = lo.min(x);
            hi = hi.max(x);
            sum += x;
            sq += x * x;
        }
        let count = view.len() as f64;
        let mean = sum / count;
        println!(
            "{name:<10} {lo:>11.4e} {hi:>11.4e} {mean:>11.4e} {:>11.4e}",
            (sq / count - mean * mean).max(0.0).sqrt()
        );
    }
    // How much the field moves: the error of persistence (repeating the first frame) per regime.
    let mut groups: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for (i, p) in ds.params.iter().enumerate() {
        let traj = ds.trajectories.index_axis(ndarray::Axis(0), i);
        let first = traj.index_axis(ndarray::Axis(0), 0);
        let (mut num, mut den) = (0.0, 0.0);
        for t in 1..traj.shape()[0] {
            let f = traj.index_axis(ndarray::Axis(0), t);
            num += f
                .iter()
                .zip(first.iter())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            den += f.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        }
        let key = if m.parameter_values.len() > 2
            || matches!(
                m.split,
                Split::Val | Split::Calib | Split::Oracle | Split::Test
            ) {
            format!("{p:.4e}")
        } else {
            "all".to_string()
        };
        let e = groups.entry(key).or_default();
        e.0 += (num / den.max(1e-300)).sqrt();
        e.1 += 1;
    }
    println!("relative change from the first frame (mean over trajectories):");
    for (k, (sum, n)) in groups {
        println!(
            "  {} = {k}: {:.3} ({n} trajectories)",
            m.parameter,
            sum / n as f64
        );
    }
    Ok(())
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already ends with (our error types print their source inline, as `path: cause`).
fn error_text(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
