//! Scoring merges along the line on datasets: the error-vs-α scans behind the calibrated map,
//! CCM-Scale's γ, and the best α in hindsight.
//!
//! Rollouts run batched in the training framework's forward (burn), which matches the ONNX
//! runtimes to ~1e-5 (the parity tests); the numbers are the protocol's: for each trajectory,
//! the model starts from the first `T_in` frames, rolls `H` steps, and nRMSE =
//! ‖prediction − truth‖₂ / ‖truth‖₂ over the scored frames (after `skip` predicted frames: the
//! prefix), all cells and channels together; reported as the mean over trajectories.

use burn::tensor::Device;

use crate::ccm::{CalibratedMap, Interval, Line, Scale, WeightSet};
use crate::dataset::Dataset;
use crate::fno::model::{Fno, rollout};
use crate::fno::{FnoConfig, Normalization};
use crate::models::{Calibration, FamilyModels};

pub mod conditioned;
pub mod plot;
pub mod report;

/// Scores weight sets on (part of) a dataset.
pub struct Scorer<'a> {
    cfg: FnoConfig,
    norm: Normalization,
    data: &'a Dataset,
    /// Predicted frames rolled out.
    pub horizon: usize,
    /// Predicted frames left out of the score at the start.
    pub skip: usize,
    device: Device,
}

impl<'a> Scorer<'a> {
    /// A scorer for experts of `cfg` on `data`, rolling `horizon` frames and scoring after `skip`.
    pub fn new(
        cfg: FnoConfig,
        norm: Normalization,
        data: &'a Dataset,
        horizon: usize,
        skip: usize,
    ) -> Self {
        let frames = data.manifest.shape[1];
        let horizon = horizon.min(frames - cfg.t_in);
        Scorer {
            cfg,
            norm,
            data,
            horizon,
            skip: skip.min(horizon - 1),
            device: Device::flex(),
        }
    }

    /// Values per frame (`channels × n × n`).
    pub fn frame_len(&self) -> usize {
        self.cfg.channels * self.cfg.n * self.cfg.n
    }

    /// The dataset scored.
    pub fn data(&self) -> &'a Dataset {
        self.data
    }

    /// Frames the model takes in (`T_in`).
    pub fn t_in(&self) -> usize {
        self.cfg.t_in
    }

    /// The rollouts of the trajectories `indices` under `weights`, each started from its first
    /// `T_in` frames: `indices.len() × horizon × frame_len` values, trajectory-major (the
    /// trainable tensors are picked out by name, so the full initializer set of an ONNX expert
    /// works too).
    pub fn predict(&self, weights: &WeightSet, indices: &[usize]) -> Vec<f32> {
        let shapes = self.cfg.param_shapes();
        let params = weights
            .select(shapes.iter().map(|(n, _)| n.as_str()))
            .expect("an FNO expert holds every canonical tensor");
        let model = Fno::from_weights(&self.cfg, &self.norm, &params, &self.device)
            .expect("canonical weights");
        rollout(
            &model,
            &self.frames(indices, 0, self.cfg.t_in),
            indices.len(),
            self.horizon,
        )
    }

    /// Frames `from..from + count` of each trajectory in `indices`, trajectory-major
    /// (`indices.len() × count × frame_len` values).
    pub fn frames(&self, indices: &[usize], from: usize, count: usize) -> Vec<f32> {
        let traj = &self.data.trajectories;
        let mut out = Vec::with_capacity(indices.len() * count * self.frame_len());
        for &i in indices {
            for t in from..from + count {
                out.extend(
                    traj.index_axis(ndarray::Axis(0), i)
                        .index_axis(ndarray::Axis(0), t)
                        .iter(),
                );
            }
        }
        out
    }

    /// Scores rollouts (`pred` as [`Scorer::predict`] returns them) of the trajectories
    /// `indices` against the truth. A non-finite prediction makes the error infinite.
    pub fn score(&self, pred: &[f32], indices: &[usize]) -> Vec<TrajectoryScore> {
        let (frame, t_in) = (self.frame_len(), self.cfg.t_in);
        assert_eq!(
            pred.len(),
            indices.len() * self.horizon * frame,
            "rollout size"
        );
        let traj = &self.data.trajectories;
        indices
            .iter()
            .enumerate()
            .map(|(b, &i)| {
                let truth = traj.index_axis(ndarray::Axis(0), i);
                let sums: Vec<(f64, f64)> = (0..self.horizon)
                    .map(|s| {
                        let truth = truth.index_axis(ndarray::Axis(0), t_in + s);
                        let p = &pred[(b * self.horizon + s) * frame..][..frame];
                        let (mut num, mut den) = (0.0f64, 0.0f64);
                        for (x, y) in p.iter().zip(truth.iter()) {
                            let x = if x.is_finite() {
                                *x as f64
                            } else {
                                f64::INFINITY
                            };
                            num += (x - *y as f64).powi(2);
                            den += (*y as f64).powi(2);
                        }
                        (num, den)
                    })
                    .collect();
                let ratio = |num: f64, den: f64| {
                    let e = (num / den.max(f64::MIN_POSITIVE)).sqrt();
                    if e.is_finite() { e } else { f64::INFINITY }
                };
                let (num, den) = sums[self.skip..]
                    .iter()
                    .fold((0.0, 0.0), |(a, b), (n, d)| (a + n, b + d));
                TrajectoryScore {
                    error: ratio(num, den),
                    per_step: sums.iter().map(|&(n, d)| ratio(n, d)).collect(),
                }
            })
            .collect()
    }

    /// Rolls out and scores the trajectories `indices` under `weights`.
    pub fn scores(&self, weights: &WeightSet, indices: &[usize]) -> Vec<TrajectoryScore> {
        self.score(&self.predict(weights, indices), indices)
    }

    /// nRMSE of each trajectory in `indices` under `weights`.
    pub fn errors(&self, weights: &WeightSet, indices: &[usize]) -> Vec<f64> {
        self.scores(weights, indices)
            .into_iter()
            .map(|s| s.error)
            .collect()
    }

    /// Mean nRMSE over `indices`.
    pub fn mean_error(&self, weights: &WeightSet, indices: &[usize]) -> f64 {
        let e = self.errors(weights, indices);
        e.iter().sum::<f64>() / e.len() as f64
    }

    /// The α of smallest mean error along `line` (coarse scan, then golden-section refinement);
    /// returns it, its error and the scanned curve.
    pub fn best_alpha(
        &self,
        line: &Line,
        interval: Interval,
        coarse: usize,
        refine: usize,
        indices: &[usize],
    ) -> (f64, f64, Vec<(f64, f64)>) {
        self.best_alpha_traced(line, interval, coarse, refine, indices, &mut |_, _| {})
    }

    /// [`Scorer::best_alpha`], calling `on_point(α, error)` after each merge it scores.
    pub fn best_alpha_traced(
        &self,
        line: &Line,
        interval: Interval,
        coarse: usize,
        refine: usize,
        indices: &[usize],
        on_point: &mut dyn FnMut(f64, f64),
    ) -> (f64, f64, Vec<(f64, f64)>) {
        let mut buf = line.buffer();
        let mut curve: Vec<(f64, f64)> = Vec::new();
        let mut eval = |a: f64, curve: &mut Vec<(f64, f64)>| -> f64 {
            if let Some(&(_, e)) = curve.iter().find(|(x, _)| *x == a) {
                return e;
            }
            line.merge_into(a as f32, &mut buf).expect("line layout");
            let e = self.mean_error(&buf, indices);
            curve.push((a, e));
            on_point(a, e);
            e
        };
        let grid: Vec<f64> = (0..coarse)
            .map(|i| interval.lo + (interval.hi - interval.lo) * i as f64 / (coarse - 1) as f64)
            .collect();
        let errs: Vec<f64> = grid.iter().map(|&a| eval(a, &mut curve)).collect();
        let best = (0..coarse)
            .min_by(|&i, &j| errs[i].total_cmp(&errs[j]))
            .unwrap();
        let (mut a, mut b) = (
            grid[best.saturating_sub(1)],
            grid[(best + 1).min(coarse - 1)],
        );
        let phi = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..refine {
            let (x1, x2) = (b - phi * (b - a), a + phi * (b - a));
            if eval(x1, &mut curve) <= eval(x2, &mut curve) {
                b = x2;
            } else {
                a = x1;
            }
        }
        curve.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (alpha, err) = *curve.iter().min_by(|x, y| x.1.total_cmp(&y.1)).unwrap();
        (alpha, err, curve)
    }
}

/// One trajectory's score.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryScore {
    /// nRMSE over the scored frames (after `skip`), all cells and channels together.
    pub error: f64,
    /// Relative L2 error of each predicted frame, all `horizon` of them (the prefix's too).
    pub per_step: Vec<f64>,
}

/// Indices of the trajectories of each distinct parameter value, in order of appearance.
pub fn groups(data: &Dataset) -> Vec<(f64, Vec<usize>)> {
    let mut out: Vec<(f64, Vec<usize>)> = Vec::new();
    for (i, &p) in data.params.iter().enumerate() {
        match out
            .iter_mut()
            .find(|(q, _)| (q - p).abs() <= 1e-12 * p.abs())
        {
            Some(g) => g.1.push(i),
            None => out.push((p, vec![i])),
        }
    }
    out
}

/// Fits the calibrated map on `calib` (best α per regime) and CCM-Scale's γ on `val`.
pub fn calibrate(
    models: &FamilyModels,
    calib: &Dataset,
    val: Option<&Dataset>,
    interval: Interval,
    skip: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Calibration, crate::ccm::readout::CalibrationError> {
    let m = &models.manifest;
    let line = Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())
        .expect("checked bundle");
    let best_per_regime = |data: &Dataset, progress: &mut dyn FnMut(&str)| -> Vec<[f64; 4]> {
        let scorer = Scorer::new(m.model, m.normalization.clone(), data, usize::MAX, skip);
        groups(data)
            .into_iter()
            .map(|(p, idx)| {
                let (a, e, _) = scorer.best_alpha(&line, interval, 17, 6, &idx);
                progress(&format!(
                    "{} = {p:.4e}: best α = {a:+.3} (error {e:.4})",
                    m.parameter.name
                ));
                [p, m.parameter.coordinate(p), a, e]
            })
            .collect()
    };
    let points = best_per_regime(calib, progress);
    let map = CalibratedMap::fit(&points.iter().map(|r| (r[1], r[2])).collect::<Vec<_>>())?;
    let scale = val.and_then(|v| {
        let pts = best_per_regime(v, progress);
        Scale::fit(&pts.iter().map(|r| (r[1], r[2])).collect::<Vec<_>>())
    });
    let horizon = calib.manifest.shape[1] - m.model.t_in;
    Ok(Calibration {
        map,
        scale,
        points,
        interval,
        horizon,
        prefix: None,
    })
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The request does not fit the models or data.
    #[error("{0}")]
    Setup(String),
    /// The experts do not share a layout.
    #[error(transparent)]
    Layout(#[from] crate::ccm::LayoutMismatch),
    /// The runtime failed.
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    /// A prefix readout failed.
    #[error(transparent)]
    Prefix(#[from] crate::ccm::prefix::PrefixError<crate::infer::InferError>),
    /// The test split to evaluate on is not there.
    #[error(
        "no {family} test split at {}: make it with `ccm-twin generate --family {family} --split test --out {}`",
        path.display(),
        path.display()
    )]
    MissingData {
        /// The family.
        family: crate::config::Family,
        /// Where it was looked for.
        path: std::path::PathBuf,
    },
    /// A dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    /// A model bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] crate::models::BundleError),
    /// A result file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("plot {}: {reason}", path.display())]
    Plot {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
}

/// CCM-Prefix on the trajectories of one regime, next to the best α in hindsight.
#[derive(Debug, Clone)]
pub struct PrefixCheck {
    /// The regime's parameter.
    pub p: f64,
    /// Best α in hindsight on these trajectories (error after the prefix).
    pub best_alpha: f64,
    /// Mean error at the best α.
    pub best_error: f64,
    /// The α read out of each trajectory's prefix.
    pub alphas: Vec<f64>,
    /// Each trajectory's error (after the prefix) at its read-out α.
    pub errors: Vec<f64>,
    /// Mean error of the anchor on the same frames.
    pub anchor_error: f64,
}

impl PrefixCheck {
    /// Mean read-out α.
    pub fn mean_alpha(&self) -> f64 {
        self.alphas.iter().sum::<f64>() / self.alphas.len() as f64
    }

    /// Mean error at the read-out α's.
    pub fn mean_error(&self) -> f64 {
        self.errors.iter().sum::<f64>() / self.errors.len() as f64
    }

    /// The readout's target: the mean read-out α within `alpha_tol` of the best α in hindsight,
    /// or the mean error within `rel_tol` of the error at the best α.
    pub fn lands(&self, alpha_tol: f64, rel_tol: f64) -> bool {
        (self.mean_alpha() - self.best_alpha).abs() <= alpha_tol
            || self.mean_error() <= (1.0 + rel_tol) * self.best_error
    }
}

/// Runs CCM-Prefix (tract evaluates the candidates, no prior: `p` is unknown) on the first `k`
/// frames of every trajectory of `data`, per regime, and scores each chosen merge after the
/// prefix next to the best α in hindsight (searched 1 past the readout's interval on each side)
/// and the anchor.
pub fn check_prefix(
    models: &FamilyModels,
    data: &Dataset,
    k: usize,
    cfg: &crate::ccm::prefix::PrefixConfig,
    progress: &mut dyn FnMut(&PrefixCheck),
) -> Result<Vec<PrefixCheck>, EvalError> {
    let m = &models.manifest;
    let t_in = m.model.t_in;
    if k <= t_in {
        return Err(EvalError::Setup(format!(
            "a prefix of {k} frames is not longer than T_in = {t_in}"
        )));
    }
    let line = Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut backend = models.tract_backend()?;
    let scorer = Scorer::new(m.model, m.normalization.clone(), data, usize::MAX, k - t_in);
    let search = HindsightSearch::around(cfg.interval, 0.4);
    let mut out = Vec::new();
    for (p, idx) in groups(data) {
        let (best_alpha, best_error, _) = search.run(&scorer, &line, &idx, &mut |_, _| {});
        let alphas = read_alphas(&line, &mut buffer, &mut backend, data, &idx, k, cfg)?;
        let errors = score_at_alphas(&scorer, &line, &mut buffer, &idx, &alphas)?
            .into_iter()
            .map(|s| s.error)
            .collect();
        let check = PrefixCheck {
            p,
            best_alpha,
            best_error,
            alphas,
            errors,
            anchor_error: scorer.mean_error(&models.anchor.weights, &idx),
        };
        progress(&check);
        out.push(check);
    }
    Ok(out)
}

/// The search for the best α in hindsight: the readout's interval widened by 1 on each side (so
/// the ceiling is not cut off where the readout is), a coarse scan, then golden-section steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HindsightSearch {
    /// Interval scanned.
    pub interval: Interval,
    /// Points of the coarse scan (ends included).
    pub coarse: usize,
    /// Golden-section iterations after it.
    pub refine: usize,
}

impl HindsightSearch {
    /// The search around a readout's `interval`, its coarse scan spaced at most `spacing` apart,
    /// refined 6 times.
    pub fn around(interval: Interval, spacing: f64) -> Self {
        let interval = Interval {
            lo: interval.lo - 1.0,
            hi: interval.hi + 1.0,
        };
        HindsightSearch {
            interval,
            coarse: ((interval.hi - interval.lo) / spacing).ceil() as usize + 1,
            refine: 6,
        }
    }

    /// The merges it scores at most (each refinement scores up to two).
    pub fn max_points(&self) -> usize {
        self.coarse + 2 * self.refine
    }

    /// Runs it on the trajectories `indices` along `line`: `(best α, its mean error, the scanned
    /// curve)`; `on_point(α, error)` after each merge scored.
    pub fn run(
        &self,
        scorer: &Scorer<'_>,
        line: &Line,
        indices: &[usize],
        on_point: &mut dyn FnMut(f64, f64),
    ) -> (f64, f64, Vec<(f64, f64)>) {
        scorer.best_alpha_traced(
            line,
            self.interval,
            self.coarse,
            self.refine,
            indices,
            on_point,
        )
    }
}

/// Scores each trajectory of `indices` under its own merge `θ(alphas[j])` of `line` (written
/// into `buffer`).
pub fn score_at_alphas(
    scorer: &Scorer<'_>,
    line: &Line,
    buffer: &mut WeightSet,
    indices: &[usize],
    alphas: &[f64],
) -> Result<Vec<TrajectoryScore>, EvalError> {
    let mut out = Vec::with_capacity(indices.len());
    for (&i, &a) in indices.iter().zip(alphas) {
        line.merge_into(a as f32, buffer)?;
        out.extend(scorer.scores(buffer, &[i]));
    }
    Ok(out)
}

/// The α CCM-Prefix reads out of the first `k` frames of each trajectory `idx` of `data`
/// (`backend` rolls the candidates; `buffer` receives them).
pub fn read_alphas(
    line: &Line,
    buffer: &mut WeightSet,
    backend: &mut crate::infer::TractBackend,
    data: &Dataset,
    idx: &[usize],
    k: usize,
    cfg: &crate::ccm::prefix::PrefixConfig,
) -> Result<Vec<f64>, EvalError> {
    use crate::ccm::prefix::{Observation, read_prefix};
    use crate::infer::Backend as _;
    let shape = backend.shape();
    let frame_len = shape.frame_len();
    idx.iter()
        .map(|&i| {
            let traj = data.trajectories.index_axis(ndarray::Axis(0), i);
            let frames: Vec<f32> = traj.iter().take(k * frame_len).copied().collect();
            let obs = Observation {
                frames: &frames,
                frame_len,
                t_in: shape.t_in,
                mask: None,
            };
            Ok(read_prefix(line, buffer, backend, obs, None, cfg)?.alpha)
        })
        .collect()
}

/// Fits CCM-Prefix's debiasing gain on `calib`: per regime, the mean α read out of the first
/// `k` frames (gain 1) against the best α the calibration found for it (`calibration.points`).
pub fn calibrate_prefix(
    models: &FamilyModels,
    calibration: &Calibration,
    calib: &Dataset,
    k: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<crate::models::PrefixCalibration>, EvalError> {
    let cfg = crate::ccm::prefix::PrefixConfig {
        gain: 1.0,
        ..models.prefix_config()
    };
    let line = Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())?;
    let mut buffer = line.buffer();
    let mut backend = models.tract_backend()?;
    let mut points = Vec::new();
    for (p, idx) in groups(calib) {
        let Some(best) = calibration
            .points
            .iter()
            .find(|r| (r[0] - p).abs() <= 1e-9 * p.abs())
        else {
            return Err(EvalError::Setup(format!(
                "{} = {p:e} of the calib split has no calibration point; run the whole \
                 `ccm-twin calibrate` on this split first",
                models.manifest.parameter.name
            )));
        };
        let alphas = read_alphas(&line, &mut buffer, &mut backend, calib, &idx, k, &cfg)?;
        let read = alphas.iter().sum::<f64>() / alphas.len() as f64;
        progress(&format!(
            "{} = {p:.4e}: prefix α = {read:+.3} (best {:+.3})",
            models.manifest.parameter.name, best[2]
        ));
        points.push([p, read, best[2]]);
    }
    Ok(crate::models::PrefixCalibration::fit(points))
}
