//! `ccm-twin evaluate`: glue around `ccm_twin::eval::report`.

use std::path::PathBuf;

use anyhow::Result;
use ccm_twin::config::Family;

/// `ccm-twin evaluate`.
#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// Family: navier_stokes, reaction_diffusion, dam_break, or `all`.
    #[arg(long)]
    family: String,
    /// Directory holding the model bundles (`<models>/<family>/`).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Directory holding the datasets: the test split is `<data>/<family>/test`.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Directory the tables, the summary and the plots are written to.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// The small protocol (CI, a few minutes): instead of reading the test split, generate one
    /// of 2 trajectories per regime (as `generate --split test --count 2` does) into a
    /// temporary directory, removed afterwards.
    #[arg(long)]
    quick: bool,
    /// Trajectories per regime: the first N of the test split (with --quick: how many to
    /// generate).
    #[arg(long)]
    trajectories: Option<usize>,
    /// Oracle experts (`train --role oracle`), searched for under this directory (three
    /// levels deep, e.g. `<dir>/<family>/oracle/<p>/`); scored as the "oracle expert" row.
    #[arg(long)]
    oracle: Option<PathBuf>,
    /// The parameter-conditioned baseline (`train --role conditioned`): its expert directory,
    /// or a directory holding `<family>/conditioned/`; scored with the true p and with p read
    /// out of the prefix.
    #[arg(long)]
    conditioned: Option<PathBuf>,
    /// Keep the rows already scored in `<out>/<family>.json` by an earlier run of the same
    /// protocol and compute only the missing ones (how the oracle rows are added to a finished
    /// evaluation without redoing it).
    #[arg(long)]
    reuse: bool,
    /// With --reuse: rows to compute again even though the earlier run scored them (CSV keys,
    /// comma-separated: e.g. `conditioned_fno,conditioned_fno_prefix,oracle`).
    #[arg(long, value_delimiter = ',', requires = "reuse")]
    rerun: Vec<String>,
}

impl EvaluateArgs {
    fn families(&self) -> Result<Vec<Family>> {
        Ok(if self.family.trim() == "all" {
            Family::ALL.to_vec()
        } else {
            vec![self.family.parse()?]
        })
    }
}

/// Whether an error is a request that cannot run as given (exit code 2).
#[cfg(feature = "train")]
pub fn is_bad_request(e: &(dyn std::error::Error + 'static)) -> bool {
    use ccm_twin::eval::EvalError;
    matches!(
        e.downcast_ref::<EvalError>(),
        Some(EvalError::MissingData { .. } | EvalError::Setup(_))
    )
}

/// Without the trainer there is no evaluation, so no bad request either.
#[cfg(not(feature = "train"))]
pub fn is_bad_request(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

#[cfg(not(feature = "train"))]
pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    args.families()?;
    anyhow::bail!(
        "the evaluation rolls experts out with the trainer's forward; rebuild with the `train` \
         feature (on by default)"
    )
}

/// Removes the quick protocol's generated test splits when dropped.
#[cfg(feature = "train")]
struct ScratchDir(PathBuf);

#[cfg(feature = "train")]
impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(feature = "train")]
pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    use std::time::Instant;

    use anyhow::Context;
    use ccm_twin::config::FamilyConfig;
    use ccm_twin::dataset::{self, GenerateOptions, Split};
    use ccm_twin::eval::EvalError;
    use ccm_twin::eval::report::{self, EvalOptions, PerRegimeWeights, Progress};
    use ccm_twin::models::FamilyModels;
    use indicatif::{ProgressBar, ProgressStyle};

    let families = args.families()?;
    let command = command_line();
    let started = Instant::now();
    let scratch = args.quick.then(|| {
        ScratchDir(std::env::temp_dir().join(format!("ccm-twin-evaluate-{}", std::process::id())))
    });
    let mut reports = Vec::new();
    for family in families {
        let family_started = Instant::now();
        let cfg = FamilyConfig::builtin(family);
        let bundle_dir = args.models.join(family.name());
        let models = FamilyModels::load(&bundle_dir)
            .with_context(|| format!("loading the model bundle {}", bundle_dir.display()))?;
        let test_dir = match &scratch {
            Some(ScratchDir(root)) => {
                let dir = root.join(family.name()).join("test");
                let opts = GenerateOptions {
                    count: Some(args.trajectories.unwrap_or(2)),
                    force: true,
                };
                super::generate_one(&cfg, Split::Test, &dir, &opts)?;
                dir
            }
            None => args.data.join(family.name()).join("test"),
        };
        if !test_dir.join("manifest.json").is_file() {
            return Err(EvalError::MissingData {
                family,
                path: test_dir,
            }
            .into());
        }
        let data = dataset::load(&test_dir)
            .with_context(|| format!("reading the test split {}", test_dir.display()))?;
        let mut opts = EvalOptions::for_family(&cfg);
        opts.per_regime = args.trajectories;
        if let Some(dir) = &args.oracle {
            let (oracles, id) =
                PerRegimeWeights::load_oracles(dir, family, &models.manifest.model)?;
            opts.plugged.insert(report::Method::Oracle.key().into(), id);
            eprintln!(
                "{family}: {} oracle expert(s) under {}",
                oracles.0.len(),
                dir.display()
            );
            opts.oracle = Some(Box::new(oracles));
        }
        if let Some(dir) = &args.conditioned {
            use ccm_twin::eval::conditioned::{ConditionedFno, Coordinate};
            let candidates = [
                dir.join(family.name()).join("conditioned"),
                dir.join(family.name()),
                dir.clone(),
            ];
            let found = candidates.iter().find(|d| {
                ccm_twin::fno::expert::read_meta(d).is_ok_and(|m| {
                    m.family == family && m.role == ccm_twin::fno::expert::Role::Conditioned
                })
            });
            let Some(found) = found else {
                anyhow::bail!(
                    "no conditioned {family} expert in {}, {} or {} (train one with `ccm-twin \
                     train --family {family} --role conditioned --from <anchor> --data \
                     <anchor split>`)",
                    candidates[0].display(),
                    candidates[1].display(),
                    candidates[2].display()
                );
            };
            // the family's own parameter settings (its service range bounds the coordinate
            // readout, as the readout interval bounds CCM-Prefix's), not the bundle's copy
            let load = |c| ConditionedFno::load(found, &cfg.parameter, &models.manifest.model, c);
            let id = ccm_twin::fno::expert::read_meta(found)?.weights_sha256;
            for m in [
                report::Method::Conditioned,
                report::Method::ConditionedPrefix,
            ] {
                opts.plugged.insert(m.key().into(), id.clone());
            }
            opts.conditioned = Some(Box::new(load(Coordinate::Known)?));
            opts.conditioned_prefix = Some(Box::new(load(Coordinate::Prefix { k: opts.k })?));
            eprintln!("{family}: conditioned baseline {}", found.display());
        }
        if args.reuse {
            opts.reuse = report::load_report(&args.out, family)?;
            if let Some(prior) = opts.reuse.as_mut() {
                for key in &args.rerun {
                    let row = prior
                        .rows
                        .iter_mut()
                        .find(|r| r.method.key() == key.trim())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--rerun {key}: no such row (rows: {})",
                                report::Method::ALL.map(|m| m.key()).join(", ")
                            )
                        })?;
                    row.outcome = report::Outcome::NotRun("to be computed again".into());
                }
            }
            if opts.reuse.is_some() {
                eprintln!(
                    "{family}: keeping the rows scored in {}",
                    args.out.join(format!("{}.json", family.name())).display()
                );
            }
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>20} [{bar:30}] {pos}/{len}  {elapsed_precise}  {wide_msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("evaluate {family}"));
        let seconds_before = opts.reuse.as_ref().map_or(0.0, |r| r.seconds);
        let earlier = opts.reuse.as_ref().map_or_else(Vec::new, |r| {
            let mut v = r.earlier_commands.clone();
            v.extend((!r.command.is_empty()).then(|| r.command.clone()));
            v
        });
        let mut report = report::evaluate(&models, &data, &mut opts, &mut |p| match p {
            Progress::Plan(total) => bar.set_length(total as u64),
            Progress::Step(what) => {
                bar.set_message(what);
                bar.inc(1);
            }
            // suspend + eprintln: the line must reach a log file too, where the bar is hidden
            Progress::Regime(line) => bar.suspend(|| {
                eprintln!("[{:>5.0} s] {line}", family_started.elapsed().as_secs_f64())
            }),
        })
        .with_context(|| format!("evaluating {family} on {}", test_dir.display()))?;
        bar.finish_and_clear();
        // the rows kept from an earlier run cost that run's time
        report.seconds = seconds_before + family_started.elapsed().as_secs_f64();
        report.command = command.clone();
        report.earlier_commands = earlier;
        let written = report::write_family(&report, &args.out, &command)
            .with_context(|| format!("writing the {family} results"))?;
        eprintln!(
            "{family}: OOD error vs the anchor: CCM-Prefix {}, best metadata readout {}, random \
             direction {} ({:.0} s) -> {}",
            reduction(&report, report::Method::Prefix),
            report.best_metadata().map_or("not run".into(), |m| format!(
                "{} {}",
                m.label(),
                reduction(&report, m)
            )),
            reduction(&report, report::Method::RandomDirection),
            report.seconds,
            written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        reports.push(report);
        // after every family, so an interrupted run keeps the summary of what finished; the
        // families this run leaves out come from their reports in `out`, when there
        let mut all = Vec::new();
        for f in Family::ALL {
            match reports.iter().find(|r| r.family == f) {
                Some(r) => all.push(r.clone()),
                None => match report::load_report(&args.out, f) {
                    Ok(r) => all.extend(r),
                    Err(e) => eprintln!("summary: {f} left out: {e}"),
                },
            }
        }
        let seconds: f64 = all.iter().map(|r| r.seconds).sum();
        let summary = report::write_summary(&all, &args.out, &command, seconds)?;
        eprintln!("summary -> {}", summary.display());
    }
    eprintln!(
        "evaluation done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "train")]
fn reduction(
    report: &ccm_twin::eval::report::FamilyReport,
    m: ccm_twin::eval::report::Method,
) -> String {
    report
        .reduction(m, true)
        .map_or("not run".into(), |r| format!("{r:+.1} %"))
}

/// The command line as run (`ccm-twin` and the arguments, quoted where needed).
#[cfg(feature = "train")]
fn command_line() -> String {
    let mut words = vec!["ccm-twin".to_string()];
    words.extend(std::env::args().skip(1).map(|a| {
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a
        }
    }));
    words.join(" ")
}
