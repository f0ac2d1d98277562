//! The `ccm-twin` command line: argument parsing and glue only; the work lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use ccm_twin::config::{ConfigError, Family, FamilyConfig};
use ccm_twin::dataset::{self, DatasetError, GenerateOptions, Split};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod twin_cli;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let bad_input = err.chain().any(|e| {
                e.downcast_ref::<ConfigError>().is_some()
                    || matches!(
                        e.downcast_ref::<DatasetError>(),
                        Some(DatasetError::Config(_))
                    )
                    || twin_cli::is_bad_input(e)
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
