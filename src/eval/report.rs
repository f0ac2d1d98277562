//! The paper-style evaluation behind `ccm-twin evaluate`: every method of the protocol scored on
//! the same frames of the same held-out trajectories, the tables (Markdown and CSV), the summary
//! beside the paper's numbers, and the plots.
//!
//! For each test regime every method starts from the first `T_in` frames and rolls the horizon
//! `H`; all of them are scored after the `K`-frame prefix (`skip = K − T_in` predicted frames
//! left out), because CCM-Prefix has seen those frames. Per trajectory nRMSE =
//! ‖prediction − truth‖₂ / ‖truth‖₂ over all scored frames, cells and channels; a regime
//! reports the mean ± sample standard deviation over its trajectories, and the mean relative
//! error of each predicted frame (the per-step curve).
//!
//! The methods ([`Method`]) are points of the CCM line chosen by different readouts, plus the
//! anchor, the endpoints, a random-direction control and the ceiling of the line (the best α in
//! hindsight). Rows that need models this bundle does not have (an oracle expert per regime, a
//! parameter-conditioned FNO) are kept in the table as "not run" with the reason; a
//! [`Forecaster`] fills them once the models exist.
//!
//! Reductions are relative to the anchor, of the mean error over a group of regimes (ID or OOD):
//! `100·(1 − mean_method / mean_anchor)`, as in the paper's "OOD nRMSE anchor → CCM".
//!
//! ```
//! use ccm_twin::eval::report::{mean_std, reduction_pct};
//! let (mean, std) = mean_std(&[0.1, 0.3]);
//! assert!((mean - 0.2).abs() < 1e-12 && (std - 0.1414).abs() < 1e-4);
//! assert!((reduction_pct(0.06, 0.2) - 70.0).abs() < 1e-9);
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{
    EvalError, HindsightSearch, Scorer, TrajectoryScore, groups, read_alphas, score_at_alphas,
};
use crate::ccm::decompose::random_direction;
use crate::ccm::{Interval, Line, WeightSet};
use crate::config::{Family, FamilyConfig};
use crate::dataset::Dataset;
use crate::fno::FnoConfig;
use crate::models::FamilyModels;

/// Seed of the random direction of the control row (fixed, so the control is the same in every
/// run; any other seed is a different control draw).
pub const RANDOM_DIRECTION_SEED: u64 = 20_260_514;

/// The paper's OOD error reduction of CCM relative to the family anchor, in %.
pub fn paper_ood_reduction(family: Family) -> f64 {
    match family {
        Family::ReactionDiffusion => 54.2,
        Family::NavierStokes => 42.8,
        Family::DamBreak => 13.8,
    }
}

/// JSON has no infinity or NaN (serde_json writes them as `null`, which does not read back):
/// these write a non-finite number as the string `"inf"`, `"-inf"` or `"nan"` and read either
/// form, so a report with a diverged rollout in it reads back as written.
mod lossless {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Num {
        Finite(f64),
        Text(String),
    }

    fn to(x: f64) -> Num {
        if x.is_finite() {
            Num::Finite(x)
        } else if x.is_nan() {
            Num::Text("nan".into())
        } else if x > 0.0 {
            Num::Text("inf".into())
        } else {
            Num::Text("-inf".into())
        }
    }

    fn from<E: serde::de::Error>(n: Num) -> Result<f64, E> {
        match n {
            Num::Finite(x) => Ok(x),
            Num::Text(t) => match t.as_str() {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::custom(format!("not a number: {other:?}"))),
            },
        }
    }

    pub mod vec {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|x| to(*x)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Vec::<Num>::deserialize(d)?.into_iter().map(from).collect()
        }
    }

    pub mod vec32 {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|x| to(f64::from(*x))))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
            Vec::<Num>::deserialize(d)?
                .into_iter()
                .map(|n| from(n).map(|x: f64| x as f32))
                .collect()
        }
    }

    pub mod pairs {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[(f64, f64)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(a, b)| (to(*a), to(*b))))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
            Vec::<(Num, Num)>::deserialize(d)?
                .into_iter()
                .map(|(a, b)| Ok((from(a)?, from(b)?)))
                .collect()
        }
    }
}

/// A row of the results table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The family anchor `θ_A`.
    Anchor,
    /// The static average `θ(0)`.
    StaticAverage,
    /// The endpoint on the target's side: `θ_L` if `s(p) < 0`, else `θ_H`.
    NearestEndpoint,
    /// CCM-Coord: `α = clip(s(p))`.
    Coord,
    /// CCM-Scale: `α = clip(γ·s(p))`.
    Scale,
    /// CCM-calibrated: the calibrated map at `s(p)`.
    Calibrated,
    /// CCM-Prefix: `α` read out of each trajectory's first `K` frames (`p` unknown).
    Prefix,
    /// Control: the best α in hindsight along a random direction of the same norm as `d`.
    RandomDirection,
    /// Baseline: an FNO trained on the anchor data with `p`'s coordinate as an input channel,
    /// told the true `p`.
    Conditioned,
    /// The same baseline with `p`'s coordinate read out of the `K`-frame prefix.
    ConditionedPrefix,
    /// The best α in hindsight along the CCM line (the ceiling of the line).
    Hindsight,
    /// An expert fine-tuned on the target regime.
    Oracle,
}

impl Method {
    /// Every row, in table order.
    pub const ALL: [Method; 12] = [
        Method::Anchor,
        Method::StaticAverage,
        Method::NearestEndpoint,
        Method::Coord,
        Method::Scale,
        Method::Calibrated,
        Method::Prefix,
        Method::RandomDirection,
        Method::Conditioned,
        Method::ConditionedPrefix,
        Method::Hindsight,
        Method::Oracle,
    ];

    /// The readouts that take the known parameter (metadata).
    pub const METADATA: [Method; 3] = [Method::Coord, Method::Scale, Method::Calibrated];

    /// Name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Method::Anchor => "anchor θ_A",
            Method::StaticAverage => "static average (α = 0)",
            Method::NearestEndpoint => "nearest endpoint",
            Method::Coord => "CCM-Coord",
            Method::Scale => "CCM-Scale",
            Method::Calibrated => "CCM-calibrated",
            Method::Prefix => "CCM-Prefix",
            Method::RandomDirection => "control: random direction",
            Method::Conditioned => "conditioned FNO, true p",
            Method::ConditionedPrefix => "conditioned FNO, p from prefix",
            Method::Hindsight => "best α in hindsight",
            Method::Oracle => "oracle expert",
        }
    }

    /// Identifier in the CSV files.
    pub fn key(self) -> &'static str {
        match self {
            Method::Anchor => "anchor",
            Method::StaticAverage => "static_average",
            Method::NearestEndpoint => "nearest_endpoint",
            Method::Coord => "ccm_coord",
            Method::Scale => "ccm_scale",
            Method::Calibrated => "ccm_calibrated",
            Method::Prefix => "ccm_prefix",
            Method::RandomDirection => "random_direction",
            Method::Conditioned => "conditioned_fno",
            Method::ConditionedPrefix => "conditioned_fno_prefix",
            Method::Hindsight => "ccm_hindsight",
            Method::Oracle => "oracle",
        }
    }
}

/// A model scored beside the merges that is not a point of the CCM line: the oracle experts and
/// the parameter-conditioned FNO plug in here.
pub trait Forecaster {
    /// Rollouts of the trajectories `indices` of the scorer's dataset (all of regime `p`), or
    /// `None` when there is no model for `p`.
    fn forecast(
        &mut self,
        scorer: &Scorer<'_>,
        p: f64,
        indices: &[usize],
    ) -> Result<Option<Forecast>, EvalError>;
}

/// What a [`Forecaster`] rolled out.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// The rollouts, laid out as [`Scorer::predict`] returns them.
    pub pred: Vec<f32>,
    /// Per trajectory, the coordinate the model was run at (the conditioned baseline's `s(p)`;
    /// empty for a model that takes none).
    pub coordinates: Vec<f64>,
}

/// One weight set of the bundle's architecture per regime (the oracle experts, fine-tuned from
/// the anchor, share it).
#[derive(Debug, Clone, Default)]
pub struct PerRegimeWeights(pub Vec<(f64, WeightSet)>);

impl Forecaster for PerRegimeWeights {
    fn forecast(
        &mut self,
        scorer: &Scorer<'_>,
        p: f64,
        indices: &[usize],
    ) -> Result<Option<Forecast>, EvalError> {
        Ok(self
            .0
            .iter()
            .find(|(q, _)| same_p(*q, p))
            .map(|(_, w)| Forecast {
                pred: scorer.predict(w, indices),
                coordinates: Vec::new(),
            }))
    }
}

impl PerRegimeWeights {
    /// The oracle experts of `family` found under `dir` (searched three levels deep, as
    /// `ccm-twin train --role oracle --out <dir>/<family>/oracle/<p>` lays them out): each
    /// must have the bundle's architecture `cfg`. Experts of other roles or families are
    /// passed over; two oracles of one regime are refused.
    /// Also returns a checksum of the set (over each expert's regime and weights checksum).
    pub fn load_oracles(
        dir: &Path,
        family: Family,
        cfg: &FnoConfig,
    ) -> Result<(Self, String), EvalError> {
        let mut found = Vec::new();
        find_experts(dir, 3, &mut found)?;
        found.sort();
        let mut out: Vec<(f64, WeightSet, PathBuf)> = Vec::new();
        let mut ids = Vec::new();
        for path in found {
            let meta = crate::fno::expert::read_meta(&path)
                .map_err(|e| EvalError::Setup(format!("oracle expert: {e}")))?;
            if meta.role != crate::fno::expert::Role::Oracle || meta.family != family {
                continue;
            }
            let Some(p) = meta.data.p_filter else {
                return Err(EvalError::Setup(format!(
                    "{} is an oracle expert without the regime it was trained on",
                    path.display()
                )));
            };
            if meta.config != *cfg {
                return Err(EvalError::Setup(format!(
                    "the oracle expert {} has the architecture {:?}, the bundle {:?}",
                    path.display(),
                    meta.config,
                    cfg
                )));
            }
            if let Some((_, _, other)) = out.iter().find(|(q, _, _)| same_p(*q, p)) {
                return Err(EvalError::Setup(format!(
                    "two oracle experts of {} = {p:e}: {} and {}; keep one",
                    meta.parameter,
                    other.display(),
                    path.display()
                )));
            }
            let expert = crate::fno::expert::Expert::load(&path)
                .map_err(|e| EvalError::Setup(format!("oracle expert: {e}")))?;
            ids.push(format!("{p:e}:{}", meta.weights_sha256));
            out.push((p, expert.weights, path));
        }
        ids.sort();
        let id = crate::fno::expert::sha256_hex(ids.join(",").as_bytes());
        Ok((
            PerRegimeWeights(out.into_iter().map(|(p, w, _)| (p, w)).collect()),
            id,
        ))
    }
}

fn same_p(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Directories under `dir` (itself included, `depth` levels down) holding an `expert.json`.
fn find_experts(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    if dir.join(crate::fno::expert::META_FILE).is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if depth == 0 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Setup(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_experts(&entry.path(), depth - 1, out)?;
        }
    }
    Ok(())
}

/// Why a planned row is empty when no model is given for it.
fn not_run_reason(method: Method) -> &'static str {
    match method {
        Method::Conditioned | Method::ConditionedPrefix => {
            "needs an FNO trained on the anchor data with the coordinate of p as an extra input \
             channel (`ccm-twin train --role conditioned`, then `evaluate --conditioned DIR`)"
        }
        Method::Oracle => {
            "needs an expert fine-tuned on each test regime (`ccm-twin train --role oracle` on \
             the oracle split, then `evaluate --oracle DIR`)"
        }
        _ => "not run",
    }
}

/// Settings of [`evaluate`].
pub struct EvalOptions {
    /// Observed prefix `K` in frames; scoring starts after it.
    pub k: usize,
    /// Frames rolled out (capped by the data).
    pub horizon: usize,
    /// Trajectories per regime: the first N of each (all when `None`).
    pub per_regime: Option<usize>,
    /// Spacing of the coarse scan of the best-α-in-hindsight searches (both lines).
    pub scan_spacing: f64,
    /// Seed of the random direction.
    pub random_seed: u64,
    /// Oracle experts, when trained.
    pub oracle: Option<Box<dyn Forecaster>>,
    /// The parameter-conditioned FNO told the true `p`, when trained.
    pub conditioned: Option<Box<dyn Forecaster>>,
    /// The parameter-conditioned FNO with `p` read out of the prefix, when trained.
    pub conditioned_prefix: Option<Box<dyn Forecaster>>,
    /// A previous run's report of the same protocol: its scored rows (and their curves and
    /// forecast snapshot) are kept, and only the rows it did not run are computed. How the
    /// oracle or conditioned rows are added to a finished evaluation without redoing it.
    pub reuse: Option<FamilyReport>,
    /// Checksums of the models plugged in from outside (oracle experts, conditioned FNO), by
    /// row key: a kept row whose model has changed since is computed again.
    pub plugged: std::collections::BTreeMap<String, String>,
}

impl EvalOptions {
    /// The protocol for a family: its `K` and `H`, every trajectory, hindsight scans every 0.5
    /// in α (the error-vs-α curves are smooth and unimodal; the golden-section steps after the
    /// scan find the minimum between grid points).
    pub fn for_family(cfg: &FamilyConfig) -> Self {
        EvalOptions {
            k: cfg.time.prefix,
            horizon: cfg.time.horizon,
            per_regime: None,
            scan_spacing: 0.5,
            random_seed: RANDOM_DIRECTION_SEED,
            oracle: None,
            conditioned: None,
            conditioned_prefix: None,
            reuse: None,
            plugged: Default::default(),
        }
    }
}

/// A test regime.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Regime {
    /// The parameter.
    pub p: f64,
    /// Its metadata coordinate `s(p)`.
    pub coordinate: f64,
    /// Outside the trained range `[lo, hi]`.
    pub ood: bool,
    /// Its trajectories in the dataset.
    pub indices: Vec<usize>,
}

/// What one method scored on one regime.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegimeScore {
    /// nRMSE of each trajectory.
    #[serde(with = "lossless::vec")]
    pub errors: Vec<f64>,
    /// The α each trajectory was rolled with (empty when the method is not a point on a line).
    #[serde(with = "lossless::vec")]
    pub alphas: Vec<f64>,
    /// Mean over trajectories of each predicted frame's relative error (all `H` frames).
    #[serde(with = "lossless::vec")]
    pub per_step: Vec<f64>,
}

impl RegimeScore {
    /// From per-trajectory scores and the α's used.
    pub fn new(scores: &[TrajectoryScore], alphas: Vec<f64>) -> Self {
        let steps = scores.first().map_or(0, |s| s.per_step.len());
        let per_step = (0..steps)
            .map(|t| scores.iter().map(|s| s.per_step[t]).sum::<f64>() / scores.len() as f64)
            .collect();
        RegimeScore {
            errors: scores.iter().map(|s| s.error).collect(),
            alphas,
            per_step,
        }
    }

    /// Mean error over the trajectories.
    pub fn mean(&self) -> f64 {
        mean_std(&self.errors).0
    }

    /// Sample standard deviation of the error over the trajectories.
    pub fn std(&self) -> f64 {
        mean_std(&self.errors).1
    }
}

/// A row's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// One score per regime, in the report's regime order.
    Scored(Vec<RegimeScore>),
    /// Not run, and why.
    NotRun(String),
}

/// A row of the table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The method.
    pub method: Method,
    /// What it scored.
    pub outcome: Outcome,
}

/// The error-vs-α curves of one regime, from the hindsight searches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scan {
    /// The regime's parameter.
    pub p: f64,
    /// `(α, mean error)` along the CCM line, sorted by α.
    #[serde(with = "lossless::pairs")]
    pub ccm: Vec<(f64, f64)>,
    /// `(α, mean error)` along the random direction, sorted by α.
    #[serde(with = "lossless::pairs")]
    pub random: Vec<(f64, f64)>,
}

/// One forecast frame next to the truth (first channel).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The regime's parameter.
    pub p: f64,
    /// Trajectory index in the dataset.
    pub trajectory: usize,
    /// Frame index in the trajectory.
    pub frame: usize,
    /// Grid size (`n × n` values per field, `y` slowest).
    pub n: usize,
    /// The true field.
    #[serde(with = "lossless::vec32")]
    pub truth: Vec<f32>,
    /// The anchor's forecast.
    #[serde(with = "lossless::vec32")]
    pub anchor: Vec<f32>,
    /// CCM-Prefix's forecast.
    #[serde(with = "lossless::vec32")]
    pub prefix: Vec<f32>,
    /// The α CCM-Prefix read out for this trajectory.
    pub prefix_alpha: f64,
}

/// The evaluation of one family.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FamilyReport {
    /// The family.
    pub family: Family,
    /// Name of its parameter.
    pub parameter: String,
    /// The test regimes, in dataset order.
    pub regimes: Vec<Regime>,
    /// Every method, in [`Method::ALL`] order.
    pub rows: Vec<Row>,
    /// Error-vs-α curves per regime.
    pub scans: Vec<Scan>,
    /// A forecast frame of an OOD trajectory.
    pub snapshot: Option<Snapshot>,
    /// Frames the model takes in.
    pub t_in: usize,
    /// Observed prefix in frames.
    pub k: usize,
    /// Predicted frames rolled out.
    pub horizon: usize,
    /// Predicted frames left out of the score (`K − T_in`).
    pub skip: usize,
    /// The interval the readouts choose from.
    pub interval: Interval,
    /// The interval the hindsight searches scan.
    pub hindsight: Interval,
    /// CCM-Prefix's debiasing gain (1 when the bundle has none).
    pub prefix_gain: f64,

    /// Seed of the random direction.
    pub random_seed: u64,
    /// Wall time in seconds (set by the caller, who owns the clock).
    pub seconds: f64,
    /// The command that made this report (set by the caller).
    #[serde(default)]
    pub command: String,
    /// sha256 of the model bundle's manifest without its calibration ([`bundle_checksum`]: every
    /// expert's checksum, the architecture, the training record): rows of other experts are not
    /// reused.
    #[serde(default)]
    pub bundle_sha256: String,
    /// sha256 over the test data's file checksums: rows scored on other data are not reused.
    #[serde(default)]
    pub data_sha256: String,
    /// Checksums of what rows depend on beyond the experts, by row key ([`row_inputs`]): the
    /// outside models behind the oracle and conditioned rows, the calibration behind CCM-Scale,
    /// CCM-calibrated and CCM-Prefix.
    #[serde(default)]
    pub plugged: std::collections::BTreeMap<String, String>,
    /// The earlier commands whose rows this report kept (`--reuse`), oldest first.
    #[serde(default)]
    pub earlier_commands: Vec<String>,
}

/// Progress of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// About this many steps follow (an upper bound).
    Plan(usize),
    /// One step done.
    Step(String),
    /// A finished regime, one line.
    Regime(String),
}

/// Mean and sample standard deviation (`n − 1`; 0 for a single value). Infinite values give an
/// infinite mean (a diverged rollout is not averaged away).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if !mean.is_finite() || xs.len() == 1 {
        return (mean, if mean.is_finite() { 0.0 } else { f64::NAN });
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Reduction of `error` relative to `anchor`, in %: `100·(1 − error/anchor)` (negative when
/// worse than the anchor).
pub fn reduction_pct(error: f64, anchor: f64) -> f64 {
    100.0 * (1.0 - error / anchor)
}

impl FamilyReport {
    /// The row of `method`.
    pub fn row(&self, method: Method) -> Option<&Row> {
        self.rows.iter().find(|r| r.method == method)
    }

    /// The per-regime scores of `method`, if it ran.
    pub fn scores(&self, method: Method) -> Option<&[RegimeScore]> {
        match &self.row(method)?.outcome {
            Outcome::Scored(s) => Some(s),
            Outcome::NotRun(_) => None,
        }
    }

    /// Mean over the OOD (`ood = true`) or ID regimes of the method's per-regime mean error.
    pub fn mean_error(&self, method: Method, ood: bool) -> Option<f64> {
        let scores = self.scores(method)?;
        let means: Vec<f64> = self
            .regimes
            .iter()
            .zip(scores)
            .filter(|(r, _)| r.ood == ood)
            .map(|(_, s)| s.mean())
            .collect();
        (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64)
    }

    /// Reduction of the method's mean OOD (or ID) error relative to the anchor's, in %.
    pub fn reduction(&self, method: Method, ood: bool) -> Option<f64> {
        Some(reduction_pct(
            self.mean_error(method, ood)?,
            self.mean_error(Method::Anchor, ood)?,
        ))
    }

    /// The metadata readout (Coord, Scale or calibrated) with the smallest mean OOD error.
    pub fn best_metadata(&self) -> Option<Method> {
        Method::METADATA
            .into_iter()
            .filter_map(|m| Some((m, self.mean_error(m, true)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(m, _)| m)
    }

    /// The OOD regime the plots show: the one where the anchor errs most (the last regime when
    /// there is no OOD regime).
    pub fn focus_ood(&self) -> usize {
        let anchor = self.scores(Method::Anchor);
        (0..self.regimes.len())
            .filter(|&i| self.regimes[i].ood)
            .max_by(|&i, &j| {
                let e = |r: usize| anchor.map_or(0.0, |s| s[r].mean());
                e(i).total_cmp(&e(j))
            })
            .unwrap_or(self.regimes.len().saturating_sub(1))
    }

    /// The ID regime the α plot shows: the first.
    pub fn focus_id(&self) -> usize {
        self.regimes.iter().position(|r| !r.ood).unwrap_or(0)
    }

    fn regime_header(&self, r: &Regime) -> String {
        format!(
            "{} = {:.3e} ({}, s = {:+.2})",
            self.parameter,
            r.p,
            if r.ood { "OOD" } else { "ID" },
            r.coordinate
        )
    }

    /// The results table, the α's used and the plots, as Markdown. `command` is the command
    /// line that produced it.
    pub fn to_markdown(&self, command: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# {}: CCM evaluation\n", self.family);
        if !self.earlier_commands.is_empty() {
            let _ = writeln!(
                md,
                "Rows kept from earlier runs of the same protocol: {}  ",
                self.earlier_commands
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", then ")
            );
        }
        let n_traj: Vec<usize> = self.regimes.iter().map(|r| r.indices.len()).collect();
        let _ = writeln!(
            md,
            "Command: `{command}`  \nWall time: {:.0} s. Trajectories per regime: {:?}. \
             T_in = {}, K = {}, H = {}: every method rolls out from frame {} and is scored on \
             frames {}–{} of each trajectory (frame 0 is the initial state; frames 0–{} are the \
             prefix CCM-Prefix reads). nRMSE per trajectory over all scored frames, cells and \
             channels; mean ± std (sample) over trajectories. Readouts choose α in \
             [{:+.2}, {:+.2}]; the hindsight searches scan [{:+.2}, {:+.2}]. CCM-Prefix gain \
             {:.3}. Random direction: seed {}, per-tensor norms of d.\n",
            self.seconds,
            n_traj,
            self.t_in,
            self.k,
            self.horizon,
            self.t_in - 1,
            self.t_in + self.skip,
            self.t_in + self.horizon - 1,
            self.t_in + self.skip - 1,
            self.interval.lo,
            self.interval.hi,
            self.hindsight.lo,
            self.hindsight.hi,
            self.prefix_gain,
            self.random_seed
        );
        let mut header = vec!["method".to_string()];
        header.extend(self.regimes.iter().map(|r| self.regime_header(r)));
        header.extend(["mean ID", "mean OOD", "ID vs anchor", "OOD vs anchor"].map(String::from));
        let mut rows = Vec::new();
        for row in &self.rows {
            let mut cells = vec![row.method.label().to_string()];
            match &row.outcome {
                Outcome::Scored(scores) => {
                    cells.extend(
                        scores
                            .iter()
                            .map(|s| format!("{} ± {}", num(s.mean()), num(s.std()))),
                    );
                    for ood in [false, true] {
                        cells.push(self.mean_error(row.method, ood).map_or("–".into(), num));
                    }
                    for ood in [false, true] {
                        cells.push(self.reduction(row.method, ood).map_or("–".into(), pct));
                    }
                }
                Outcome::NotRun(why) => {
                    cells.push(format!("not run: {why}"));
                    cells.extend(std::iter::repeat_n(String::new(), self.regimes.len() + 3));
                }
            }
            rows.push(cells);
        }
        md.push_str(&md_table(&header, &rows));
        let _ = writeln!(
            md,
            "\nReductions are `100·(1 − mean error / anchor's mean error)` over the ID or OOD \
             regimes; negative is worse than the anchor.\n"
        );
        let _ = writeln!(md, "## α used per regime\n");
        let mut header = vec!["method".to_string()];
        header.extend(self.regimes.iter().map(|r| self.regime_header(r)));
        let mut rows = Vec::new();
        for row in &self.rows {
            let Outcome::Scored(scores) = &row.outcome else {
                continue;
            };
            if scores.iter().all(|s| s.alphas.is_empty()) {
                continue;
            }
            let mut cells = vec![row.method.label().to_string()];
            cells.extend(scores.iter().map(|s| alpha_cell(&s.alphas)));
            rows.push(cells);
        }
        md.push_str(&md_table(&header, &rows));
        let _ = writeln!(
            md,
            "\nCCM-Prefix: mean (min … max) over the trajectories; the random direction's α is \
             along r, not d; the conditioned FNO's rows give the coordinate s(p) it was run at \
             (true, or read out of the prefix), not an α.\n"
        );
        let f = self.family.name();
        let (id, ood) = (
            &self.regimes[self.focus_id()],
            &self.regimes[self.focus_ood()],
        );
        let _ = writeln!(md, "## Plots\n");
        let _ = writeln!(
            md,
            "Error vs α along the CCM line and the random direction ({} = {:.3e} and {:.3e}):\n\n\
             ![error vs alpha]({f}_alpha.png)\n\n\
             Error of each predicted frame over the rollout ({} = {:.3e}; the per-step means \
             are in `{f}_steps.csv`):\n\n![error growth]({f}_growth.png)\n\n\
             Last frame, first channel, of one {} = {:.3e} trajectory:\n\n\
             ![forecast]({f}_forecast.png)",
            self.parameter, id.p, ood.p, self.parameter, ood.p, self.parameter, ood.p
        );
        md
    }

    /// The results table as CSV: one row per method; per regime its mean and std, then the
    /// mean ID and OOD errors and their reductions relative to the anchor (%).
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("method,status");
        for r in &self.regimes {
            let tag = format!(
                "{}={:e} {}",
                self.parameter,
                r.p,
                if r.ood { "OOD" } else { "ID" }
            );
            let _ = write!(csv, ",{tag} mean,{tag} std");
        }
        csv.push_str(",mean_id,mean_ood,id_reduction_pct,ood_reduction_pct\n");
        for row in &self.rows {
            let _ = write!(csv, "{}", row.method.key());
            match &row.outcome {
                Outcome::Scored(scores) => {
                    csv.push_str(",scored");
                    for s in scores {
                        let _ = write!(csv, ",{},{}", s.mean(), s.std());
                    }
                    let cell = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
                    let _ = writeln!(
                        csv,
                        ",{},{},{},{}",
                        cell(self.mean_error(row.method, false)),
                        cell(self.mean_error(row.method, true)),
                        cell(self.reduction(row.method, false)),
                        cell(self.reduction(row.method, true))
                    );
                }
                Outcome::NotRun(_) => {
                    csv.push_str(",not_run");
                    csv.push_str(&",".repeat(2 * self.regimes.len() + 4));
                    csv.push('\n');
                }
            }
        }
        csv
    }

    /// The per-step curves as CSV: method, regime, predicted frame, whether it is scored, mean
    /// relative error of that frame.
    pub fn steps_csv(&self) -> String {
        let mut csv = String::from("method,p,regime,step,scored,error\n");
        for row in &self.rows {
            let Outcome::Scored(scores) = &row.outcome else {
                continue;
            };
            for (r, s) in self.regimes.iter().zip(scores) {
                for (t, e) in s.per_step.iter().enumerate() {
                    let _ = writeln!(
                        csv,
                        "{},{:e},{},{},{},{e}",
                        row.method.key(),
                        r.p,
                        if r.ood { "OOD" } else { "ID" },
                        t + 1,
                        t >= self.skip
                    );
                }
            }
        }
        csv
    }
}

/// The summary over families: per family the OOD reduction relative to the anchor of each kind
/// of readout, beside the paper's number.
pub fn summary_markdown(reports: &[FamilyReport], command: &str, seconds: f64) -> String {
    let mut md = String::from("# CCM evaluation: summary\n\n");
    let _ = writeln!(
        md,
        "Command: `{command}`  \nWall time: {seconds:.0} s in all ({}).\n\n\
         OOD error reduction relative to the family anchor, of the mean nRMSE over the OOD \
         regimes (the mean ID reduction in brackets). Best metadata readout: the best of \
         CCM-Coord, CCM-Scale and CCM-calibrated on the OOD regimes.\n",
        reports
            .iter()
            .map(|r| format!("{} {:.0} s", r.family.name(), r.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let header: Vec<String> = [
        "family",
        "anchor OOD nRMSE",
        "static average",
        "CCM-Prefix",
        "best metadata readout",
        "best α in hindsight",
        "random direction",
        "oracle expert",
        "conditioned FNO (true p)",
        "conditioned FNO (p from the prefix)",
        "paper (CCM)",
        "CCM reaches the paper",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    for r in reports {
        let cell = |m: Method| match (r.reduction(m, true), r.reduction(m, false)) {
            (Some(ood), Some(id)) => format!("{} ({})", pct(ood), pct(id)),
            (Some(ood), None) => pct(ood),
            _ => "not run".into(),
        };
        let paper = paper_ood_reduction(r.family);
        let best_meta = r.best_metadata();
        let meta = best_meta.map_or("not run".into(), |m| format!("{} ({})", cell(m), m.label()));
        let reached: Vec<&str> = [(Method::Prefix, "Prefix")]
            .into_iter()
            .chain(best_meta.map(|m| (m, "metadata")))
            .filter(|(m, _)| r.reduction(*m, true).is_some_and(|x| x >= paper))
            .map(|(_, name)| name)
            .collect();
        rows.push(vec![
            r.family.name().to_string(),
            r.mean_error(Method::Anchor, true).map_or("–".into(), num),
            cell(Method::StaticAverage),
            cell(Method::Prefix),
            meta,
            cell(Method::Hindsight),
            cell(Method::RandomDirection),
            cell(Method::Oracle),
            cell(Method::Conditioned),
            cell(Method::ConditionedPrefix),
            format!("{paper:.1} %"),
            if reached.is_empty() {
                "no".into()
            } else {
                format!("yes ({})", reached.join(", "))
            },
        ]);
    }
    md.push_str(&md_table(&header, &rows));
    md.push_str("\nPer-family tables and plots: `<family>.md` beside this file.\n");
    md
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "diverged".into()
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.1} %")
    } else {
        "diverged".into()
    }
}

fn alpha_cell(alphas: &[f64]) -> String {
    let (mean, _) = mean_std(alphas);
    let lo = alphas.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = alphas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi - lo < 1e-9 {
        format!("{mean:+.2}")
    } else {
        format!("{mean:+.2} ({lo:+.2} … {hi:+.2})")
    }
}

fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// Runs the protocol for one bundle on one test split.
pub fn evaluate(
    models: &FamilyModels,
    data: &Dataset,
    opts: &mut EvalOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<FamilyReport, EvalError> {
    let m = &models.manifest;
    let (t_in, k) = (m.model.t_in, opts.k);
    let shape = data.manifest.shape;
    if data.manifest.family != m.family.name()
        || shape[2] != m.model.channels
        || shape[3] != m.model.n
    {
        return Err(EvalError::Setup(format!(
            "the dataset ({} trajectories of {}, {} channels, {}×{}) does not fit the {} bundle \
             ({} channels, {}×{})",
            shape[0],
            data.manifest.family,
            shape[2],
            shape[3],
            shape[4],
            m.family,
            m.model.channels,
            m.model.n,
            m.model.n
        )));
    }
    if k <= t_in || shape[1] <= k + 1 {
        return Err(EvalError::Setup(format!(
            "a prefix of K = {k} frames needs T_in = {t_in} < K and trajectories longer than \
             K + 1 frames (these have {})",
            shape[1]
        )));
    }
    let scorer = Scorer::new(
        m.model,
        m.normalization.clone(),
        data,
        opts.horizon,
        k - t_in,
    );
    let regimes: Vec<Regime> = groups(data)
        .into_iter()
        .map(|(p, mut indices)| {
            indices.truncate(opts.per_regime.unwrap_or(usize::MAX).max(1));
            Regime {
                p,
                coordinate: m.parameter.coordinate(p),
                ood: !(m.parameter.lo..=m.parameter.hi).contains(&p),
                indices,
            }
        })
        .collect();
    let prefix_cfg = models.prefix_config();
    let interval = prefix_cfg.interval;
    let search = HindsightSearch::around(interval, opts.scan_spacing);
    let line = Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut backend = models.tract_backend()?;
    let (_, d) = models.experts().shared_and_direction();
    let random = Line::from_base_direction(line.buffer(), random_direction(&d, opts.random_seed))?;
    let mut report = FamilyReport {
        family: m.family,
        parameter: m.parameter.name.clone(),
        regimes,
        rows: Vec::new(),
        scans: Vec::new(),
        snapshot: None,
        t_in,
        k,
        horizon: scorer.horizon,
        skip: scorer.skip,
        interval,
        hindsight: search.interval,
        prefix_gain: prefix_cfg.gain,
        random_seed: opts.random_seed,
        seconds: 0.0,
        command: String::new(),
        bundle_sha256: bundle_checksum(&models.manifest),
        data_sha256: crate::fno::expert::sha256_hex(
            &serde_json::to_vec(&data.manifest.sha256).expect("checksums serialise"),
        ),
        earlier_commands: Vec::new(),
        plugged: row_inputs(&opts.plugged, &models.manifest),
    };
    let inputs = report.plugged.clone();
    let mut prior = opts.reuse.take();
    if let Some(p) = prior.as_mut() {
        // a report from before the calibration had its own checksum: its bundle checksum
        // covered the whole manifest, so a match means these experts and this calibration
        let legacy = crate::fno::expert::sha256_hex(
            &serde_json::to_vec(&models.manifest).expect("a manifest serialises"),
        );
        if p.bundle_sha256 == legacy {
            p.bundle_sha256 = report.bundle_sha256.clone();
            for (k, v) in &inputs {
                p.plugged.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    if let Some(p) = &prior {
        for (k, v) in &p.plugged {
            report.plugged.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if let Some(why) = prior.as_ref().and_then(|p| protocol_mismatch(p, &report)) {
        return Err(EvalError::Setup(format!(
            "the previous {} report differs from this run in: {why}; run without reusing it",
            m.family
        )));
    }
    // a kept row must be scored, and its outside model (if any) the one given now
    let reused = |method: Method| -> Option<&Row> {
        let p = prior.as_ref()?;
        let key = method.key();
        let changed = matches!(
            (p.plugged.get(key), inputs.get(key)),
            (Some(a), Some(b)) if a != b
        );
        p.row(method)
            .filter(|r| matches!(r.outcome, Outcome::Scored(_)) && !changed)
    };
    let regimes = std::mem::take(&mut report.regimes);

    // the metadata readouts' α per regime, or why the row cannot run
    let calibration = m.calibration.as_ref();
    let metadata_alpha = |method: Method, s: f64| -> Result<f64, String> {
        let none = || "the bundle has no calibration: run `ccm-twin calibrate`".to_string();
        match method {
            Method::Coord => Ok(crate::ccm::readout::coord(s, interval)),
            Method::Scale => calibration
                .ok_or_else(none)?
                .scale
                .map(|sc| sc.alpha(s, interval))
                .ok_or_else(|| "the calibration has no CCM-Scale γ (fitted with --val)".into()),
            Method::Calibrated => Ok(calibration.ok_or_else(none)?.map.alpha(s, interval)),
            _ => unreachable!("metadata readouts only"),
        }
    };

    let per_regime: usize = regimes.iter().map(|r| r.indices.len()).sum();
    progress(Progress::Plan(
        regimes.len() * (7 + 2 * (search.max_points() + 1)) + per_regime,
    ));
    let mut results: Vec<(Method, Result<Vec<RegimeScore>, String>)> = Method::ALL
        .into_iter()
        .map(|m| (m, Ok(Vec::new())))
        .collect();
    let average = line.buffer();
    let mut scans = Vec::new();
    let mut prefix_alphas = Vec::new();
    for regime in &regimes {
        let (idx, s) = (&regime.indices, regime.coordinate);
        let name = format!("{} = {:.3e}", m.parameter.name, regime.p);
        let mut step = |what: &str| progress(Progress::Step(format!("{name}: {what}")));
        // fixed weight sets
        let fixed: [(Method, &WeightSet, Vec<f64>); 3] = [
            (Method::Anchor, &models.anchor.weights, vec![]),
            (Method::StaticAverage, &average, vec![0.0; idx.len()]),
            if s < 0.0 {
                (
                    Method::NearestEndpoint,
                    &models.low.weights,
                    vec![-1.0; idx.len()],
                )
            } else {
                (
                    Method::NearestEndpoint,
                    &models.high.weights,
                    vec![1.0; idx.len()],
                )
            },
        ];
        for (method, weights, alphas) in fixed {
            if reused(method).is_some() {
                continue;
            }
            record(
                &mut results,
                method,
                Ok(RegimeScore::new(&scorer.scores(weights, idx), alphas)),
            );
            step(method.label());
        }
        for method in Method::METADATA {
            if reused(method).is_some() {
                continue;
            }
            let score = metadata_alpha(method, s).map(|a| {
                line.merge_into(a as f32, &mut buffer)
                    .expect("the buffer has the line's layout");
                RegimeScore::new(&scorer.scores(&buffer, idx), vec![a; idx.len()])
            });
            record(&mut results, method, score);
            step(method.label());
        }
        // CCM-Prefix: α per trajectory from its own first K frames, p unknown
        let mut alphas = Vec::with_capacity(idx.len());
        for &i in idx.iter().filter(|_| reused(Method::Prefix).is_none()) {
            alphas.extend(read_alphas(
                &line,
                &mut buffer,
                &mut backend,
                data,
                &[i],
                k,
                &prefix_cfg,
            )?);
            step("CCM-Prefix readout");
        }
        if reused(Method::Prefix).is_none() {
            let scores = score_at_alphas(&scorer, &line, &mut buffer, idx, &alphas)?;
            record(
                &mut results,
                Method::Prefix,
                Ok(RegimeScore::new(&scores, alphas.clone())),
            );
            step("CCM-Prefix");
        }
        prefix_alphas.push(alphas);
        // the ceiling of the line and the control: the same search along d and along r
        let searched = [Method::Hindsight, Method::RandomDirection];
        if let (true, Some(scan)) = (
            searched.iter().all(|&m| reused(m).is_some()),
            prior
                .as_ref()
                .and_then(|p| p.scans.iter().find(|c| c.p == regime.p)),
        ) {
            scans.push(scan.clone());
        } else {
            let mut curves = Vec::new();
            for (method, l) in [
                (Method::Hindsight, &line),
                (Method::RandomDirection, &random),
            ] {
                let (a, _, curve) = search.run(&scorer, l, idx, &mut |a, e| {
                    step(&format!(
                        "{} scan α = {a:+.2} (error {e:.4})",
                        method.label()
                    ))
                });
                l.merge_into(a as f32, &mut buffer)?;
                record(
                    &mut results,
                    method,
                    Ok(RegimeScore::new(
                        &scorer.scores(&buffer, idx),
                        vec![a; idx.len()],
                    )),
                );
                step(method.label());
                curves.push(curve);
            }
            let random_curve = curves.pop().unwrap_or_default();
            scans.push(Scan {
                p: regime.p,
                ccm: curves.pop().unwrap_or_default(),
                random: random_curve,
            });
        }
        // rows whose models are plugged in from outside
        for (method, extra) in [
            (Method::Conditioned, opts.conditioned.as_mut()),
            (Method::ConditionedPrefix, opts.conditioned_prefix.as_mut()),
            (Method::Oracle, opts.oracle.as_mut()),
        ] {
            if reused(method).is_some() {
                continue;
            }
            let score = match extra {
                None => Err(not_run_reason(method).to_string()),
                Some(f) => match f.forecast(&scorer, regime.p, idx)? {
                    Some(f) => Ok(RegimeScore::new(&scorer.score(&f.pred, idx), f.coordinates)),
                    None => Err(format!("no model for {name}")),
                },
            };
            record(&mut results, method, score);
        }
        progress(Progress::Regime(regime_line(&name, regime.ood, &results)));
    }
    report.rows = results
        .into_iter()
        .map(|(method, r)| match reused(method) {
            Some(row) => row.clone(),
            None => Row {
                method,
                outcome: match r {
                    Ok(scores) => Outcome::Scored(scores),
                    Err(why) => Outcome::NotRun(why),
                },
            },
        })
        .collect();
    report.regimes = regimes;
    report.scans = scans;
    // one forecast next to the truth: the first trajectory of the OOD regime the plots show
    let r = report.focus_ood();
    if reused(Method::Prefix).is_some() {
        report.snapshot = prior.as_ref().and_then(|p| p.snapshot.clone());
    } else if let (Some(&i), Some(&alpha)) =
        (report.regimes[r].indices.first(), prefix_alphas[r].first())
    {
        let n = m.model.n;
        let last =
            |pred: Vec<f32>| pred[(scorer.horizon - 1) * scorer.frame_len()..][..n * n].to_vec();
        line.merge_into(alpha as f32, &mut buffer)?;
        let frame = t_in + scorer.horizon - 1;
        let truth = data.trajectories.index_axis(ndarray::Axis(0), i);
        let truth = truth.index_axis(ndarray::Axis(0), frame);
        report.snapshot = Some(Snapshot {
            p: report.regimes[r].p,
            trajectory: i,
            frame,
            n,
            truth: truth.iter().take(n * n).copied().collect(),
            anchor: last(scorer.predict(&models.anchor.weights, &[i])),
            prefix: last(scorer.predict(&buffer, &[i])),
            prefix_alpha: alpha,
        });
    }
    Ok(report)
}

/// Appends a regime's score to a method's row; an error turns the whole row into "not run".
fn record(
    results: &mut [(Method, Result<Vec<RegimeScore>, String>)],
    method: Method,
    score: Result<RegimeScore, String>,
) {
    let Some((_, slot)) = results.iter_mut().find(|(m, _)| *m == method) else {
        return;
    };
    match (slot.as_mut(), score) {
        (Ok(v), Ok(s)) => v.push(s),
        (Ok(_), Err(why)) => *slot = Err(why),
        (Err(_), _) => {}
    }
}

/// One line for a finished regime: the anchor, the CCM readouts (mean α), the control, the
/// ceiling and the baselines that ran.
fn regime_line(
    name: &str,
    ood: bool,
    results: &[(Method, Result<Vec<RegimeScore>, String>)],
) -> String {
    let last = |m: Method| {
        results
            .iter()
            .find(|(x, _)| *x == m)
            .and_then(|(_, r)| r.as_ref().ok())
            .and_then(|v| v.last())
    };
    let mut line = format!("{name} ({})", if ood { "OOD" } else { "ID" });
    for m in [
        Method::Anchor,
        Method::Calibrated,
        Method::Prefix,
        Method::RandomDirection,
        Method::Hindsight,
        Method::Conditioned,
        Method::ConditionedPrefix,
        Method::Oracle,
    ] {
        if let Some(s) = last(m) {
            let _ = write!(line, "  {} {}", m.key(), num(s.mean()));
            if !s.alphas.is_empty() {
                let _ = write!(line, " (α {:+.2})", mean_std(&s.alphas).0);
            }
        }
    }
    line
}

/// Writes a family's `<family>.md`, `<family>.csv`, `<family>_steps.csv` and its three plots
/// into `out`; returns the paths written.
pub fn write_family(
    report: &FamilyReport,
    out: &Path,
    command: &str,
) -> Result<Vec<PathBuf>, EvalError> {
    std::fs::create_dir_all(out).map_err(|source| EvalError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let f = report.family.name();
    let mut written = Vec::new();
    let json = serde_json::to_string_pretty(report).expect("a report serialises");
    for (name, text) in [
        (format!("{f}.json"), json),
        (format!("{f}.md"), report.to_markdown(command)),
        (format!("{f}.csv"), report.to_csv()),
        (format!("{f}_steps.csv"), report.steps_csv()),
    ] {
        written.push(write_text(&out.join(name), &text)?);
    }
    written.extend(super::plot::family_plots(report, out)?);
    Ok(written)
}

/// The report a previous run wrote to `<out>/<family>.json`, if there is one.
pub fn load_report(out: &Path, family: Family) -> Result<Option<FamilyReport>, EvalError> {
    let path = out.join(format!("{}.json", family.name()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EvalError::Setup(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        EvalError::Setup(format!(
            "{} is not a report this version can read ({e}); remove it or write elsewhere",
            path.display()
        ))
    })
}

/// The checksum of a bundle's experts as a report records it: its manifest without the
/// calibration (the rows that use the calibration record it in [`row_inputs`]), so that a new
/// calibration recomputes only those rows.
pub fn bundle_checksum(manifest: &crate::models::Manifest) -> String {
    let experts = crate::models::Manifest {
        calibration: None,
        ..manifest.clone()
    };
    crate::fno::expert::sha256_hex(&serde_json::to_vec(&experts).expect("a manifest serialises"))
}

/// The checksums of what each row depends on beyond the bundle's experts, by row key: the
/// outside models in `plugged`, and the bundle's calibration for the rows that read it
/// (CCM-Scale, CCM-calibrated, CCM-Prefix).
pub fn row_inputs(
    plugged: &std::collections::BTreeMap<String, String>,
    manifest: &crate::models::Manifest,
) -> std::collections::BTreeMap<String, String> {
    let mut out = plugged.clone();
    if let Some(c) = &manifest.calibration {
        let sha = crate::fno::expert::sha256_hex(
            &serde_json::to_vec(c).expect("a calibration serialises"),
        );
        for m in [Method::Scale, Method::Calibrated, Method::Prefix] {
            out.insert(m.key().into(), sha.clone());
        }
    }
    out
}

/// Why a previous report cannot lend its rows to a run of `now`'s protocol, or `None` when
/// it can: the same family, experts, data, regimes, trajectories, prefix, horizon, intervals and
/// random seed. (A changed calibration only recomputes the rows that read it.)
pub fn protocol_mismatch(old: &FamilyReport, now: &FamilyReport) -> Option<String> {
    let regimes = |r: &FamilyReport| -> Vec<(f64, Vec<usize>)> {
        r.regimes.iter().map(|g| (g.p, g.indices.clone())).collect()
    };
    // an empty checksum: a report from before they were recorded
    let same = |a: &str, b: &str| a.is_empty() || b.is_empty() || a == b;
    let checks: [(&str, bool); 9] = [
        ("family", old.family == now.family),
        ("model bundle", same(&old.bundle_sha256, &now.bundle_sha256)),
        ("test data", same(&old.data_sha256, &now.data_sha256)),
        ("regimes or trajectories", regimes(old) == regimes(now)),
        ("prefix K or T_in", (old.k, old.t_in) == (now.k, now.t_in)),
        (
            "horizon",
            (old.horizon, old.skip) == (now.horizon, now.skip),
        ),
        ("readout interval", old.interval == now.interval),
        ("hindsight interval", old.hindsight == now.hindsight),
        ("random direction seed", old.random_seed == now.random_seed),
    ];
    let differ: Vec<&str> = checks
        .iter()
        .filter(|(_, same)| !same)
        .map(|(what, _)| *what)
        .collect();
    (!differ.is_empty()).then(|| differ.join(", "))
}

/// Writes `summary.md` into `out`.
pub fn write_summary(
    reports: &[FamilyReport],
    out: &Path,
    command: &str,
    seconds: f64,
) -> Result<PathBuf, EvalError> {
    write_text(
        &out.join("summary.md"),
        &summary_markdown(reports, command, seconds),
    )
}

fn write_text(path: &Path, text: &str) -> Result<PathBuf, EvalError> {
    std::fs::write(path, text).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(errors: &[f64]) -> RegimeScore {
        RegimeScore {
            errors: errors.to_vec(),
            alphas: vec![],
            per_step: vec![],
        }
    }

    fn regime(p: f64, ood: bool) -> Regime {
        Regime {
            p,
            coordinate: 0.0,
            ood,
            indices: vec![0, 1],
        }
    }

    /// Two ID and two OOD regimes; the anchor errs 0.1/0.1 ID and 0.2/0.6 OOD.
    fn report() -> FamilyReport {
        let row = |method, errs: [[f64; 2]; 4]| Row {
            method,
            outcome: Outcome::Scored(errs.iter().map(|e| score(e)).collect()),
        };
        FamilyReport {
            family: Family::DamBreak,
            parameter: "manning_n".into(),
            regimes: vec![
                regime(0.028, false),
                regime(0.04, false),
                regime(0.0125, true),
                regime(0.1, true),
            ],
            rows: vec![
                row(
                    Method::Anchor,
                    [[0.1, 0.1], [0.05, 0.15], [0.2, 0.2], [0.5, 0.7]],
                ),
                row(
                    Method::Coord,
                    [[0.1, 0.1], [0.1, 0.1], [0.1, 0.1], [0.3, 0.3]],
                ),
                row(
                    Method::Calibrated,
                    [[0.05, 0.05], [0.05, 0.05], [0.05, 0.05], [0.15, 0.15]],
                ),
                row(
                    Method::Prefix,
                    [[0.1, 0.1], [0.1, 0.1], [0.06, 0.06], [0.08, 0.08]],
                ),
                Row {
                    method: Method::Oracle,
                    outcome: Outcome::NotRun("not trained".into()),
                },
            ],
            scans: vec![],
            snapshot: None,
            t_in: 1,
            k: 4,
            horizon: 20,
            skip: 3,
            interval: Interval::DEFAULT,
            hindsight: Interval::DEFAULT,
            prefix_gain: 1.0,
            random_seed: RANDOM_DIRECTION_SEED,
            seconds: 12.0,
            command: String::new(),
            bundle_sha256: String::new(),
            data_sha256: String::new(),
            plugged: Default::default(),
            earlier_commands: Vec::new(),
        }
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[0.3]), (0.3, 0.0));
        assert_eq!(mean_std(&[1.0, f64::INFINITY]).0, f64::INFINITY);
        assert!(mean_std(&[]).0.is_nan());
    }

    #[test]
    fn reductions_relative_to_the_anchor() {
        assert!((reduction_pct(0.07, 0.4) - 82.5).abs() < 1e-9);
        assert!(
            (reduction_pct(0.5, 0.4) + 25.0).abs() < 1e-9,
            "worse is negative"
        );
        let r = report();
        // anchor: ID (0.1 + 0.1)/2 = 0.1, OOD (0.2 + 0.6)/2 = 0.4
        assert!((r.mean_error(Method::Anchor, false).unwrap() - 0.1).abs() < 1e-12);
        assert!((r.mean_error(Method::Anchor, true).unwrap() - 0.4).abs() < 1e-12);
        // prefix OOD (0.06 + 0.08)/2 = 0.07: 82.5 % less; ID 0.1: no change
        assert!((r.reduction(Method::Prefix, true).unwrap() - 82.5).abs() < 1e-9);
        assert!(r.reduction(Method::Prefix, false).unwrap().abs() < 1e-9);
        assert!((r.reduction(Method::Coord, true).unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(r.best_metadata(), Some(Method::Calibrated));
        assert_eq!(r.reduction(Method::Oracle, true), None);
        assert_eq!(r.reduction(Method::Scale, true), None, "absent row");
        // the plots show the OOD regime where the anchor errs most, and the first ID one
        assert_eq!((r.focus_id(), r.focus_ood()), (0, 3));
    }

    #[test]
    fn tables_show_mean_std_and_reductions() {
        let r = report();
        let md = r.to_markdown("ccm-twin evaluate --family dam_break");
        let anchor = md.lines().find(|l| l.starts_with("| anchor θ_A")).unwrap();
        assert!(
            anchor.contains("| 0.1000 ± 0.0707 |") && anchor.contains("| 0.6000 ± 0.1414 |"),
            "{anchor}"
        );
        let prefix = md.lines().find(|l| l.starts_with("| CCM-Prefix")).unwrap();
        assert!(
            prefix.ends_with("| 0.1000 | 0.0700 | +0.0 % | +82.5 % |"),
            "{prefix}"
        );
        assert!(md.contains("| oracle expert | not run: not trained |"));
        assert!(md.contains("`ccm-twin evaluate --family dam_break`"));
        let csv = r.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        let width = lines[0].split(',').count();
        assert_eq!(width, 2 + 2 * 4 + 4);
        assert!(lines.iter().all(|l| l.split(',').count() == width), "{csv}");
        let prefix: Vec<&str> = lines[4].split(',').collect();
        assert_eq!(&prefix[..2], ["ccm_prefix", "scored"]);
        assert!((prefix[11].parse::<f64>().unwrap() - 0.07).abs() < 1e-12);
        assert!((prefix[13].parse::<f64>().unwrap() - 82.5).abs() < 1e-9);
        assert!(lines[5].starts_with("oracle,not_run,"));
    }

    #[test]
    fn a_report_with_diverged_rollouts_reads_back_as_written() {
        let mut r = report();
        if let Outcome::Scored(scores) = &mut r.rows[0].outcome {
            scores[0].errors[0] = f64::INFINITY;
            scores[0].per_step = vec![f64::NAN, 0.5];
        }
        r.scans.push(Scan {
            p: 1.0,
            ccm: vec![(0.5, f64::NEG_INFINITY)],
            random: vec![],
        });
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            text.contains("\"inf\"") && text.contains("\"nan\""),
            "{text}"
        );
        let back: FamilyReport = serde_json::from_str(&text).unwrap();
        let Outcome::Scored(scores) = &back.rows[0].outcome else {
            panic!("scored")
        };
        assert_eq!(scores[0].errors[0], f64::INFINITY);
        assert!(scores[0].per_step[0].is_nan());
        assert_eq!(back.scans.last().unwrap().ccm[0].1, f64::NEG_INFINITY);
        // and a report of another bundle does not lend its rows
        let mut other = back.clone();
        other.bundle_sha256 = "a".into();
        let mut now = back;
        now.bundle_sha256 = "b".into();
        assert_eq!(
            protocol_mismatch(&other, &now).as_deref(),
            Some("model bundle")
        );
    }

    #[test]
    fn the_summary_sets_the_readouts_beside_the_paper() {
        let md = summary_markdown(&[report()], "ccm-twin evaluate --family all", 60.0);
        let row = md.lines().find(|l| l.starts_with("| dam_break")).unwrap();
        // CCM-Prefix −82.5 % OOD (0.0 % ID); best metadata: calibrated, OOD 0.1 vs 0.4
        assert!(row.contains("| +82.5 % (+0.0 %) |"), "{row}");
        assert!(row.contains("+75.0 % (+50.0 %) (CCM-calibrated)"), "{row}");
        assert!(row.contains("| 13.8 % | yes (Prefix, metadata) |"), "{row}");
        assert!(
            row.contains("| not run |"),
            "rows that did not run say so: {row}"
        );
    }
}
