//! The forecasting core of the runtime, free of MQTT: frames in, forecasts out.
//!
//! [`Forecaster`] takes a station's decoded frames in any order, puts them back in sequence
//! order within a small window, and keeps the last `K` consecutive ones. Once `K` are there it
//! reads the coordinate `α` (CCM-Prefix from those frames, or the calibrated map when the station's
//! `p` is known), merges `θ(α)` in place into one weight buffer, deploys it, and rolls `H` steps
//! forward from the latest frame. Every later frame re-anchors the rollout on itself (a nowcast);
//! the deployed `α` is re-read when its fit on the latest `K` frames grows past a bound (the regime
//! drifted). The first step of each forecast is handed to a lead sink ([`Forecaster::on_lead`])
//! as soon as it is computed, before the rest of the horizon is rolled.
//!
//! Sparse sensors ([`Forecaster::push_points`]): the model steps whole fields, so a frame that
//! sees only some cells is first made whole by optimal interpolation
//! ([`crate::twin::analysis`]). Its background is the forecast for that frame when there is one
//! (the previous forecast covers it), else the deployed model (the anchor before the first
//! readout) rolled from the latest frame held, else the family's mean state. The readout then
//! counts the prefix error at the observed cells only (those observed in every frame it
//! compares). A mean-state analysis is too rough to start a prefix from (its error is several
//! times a model background's): the first readout waits until the window holds none.
//!
//! A shallow-water station that measures the depth but no momentum
//! ([`Forecaster::push_partial`]) has its background's momentum corrected from the depth by mass
//! conservation ([`crate::twin::analysis::MassBalance`]; `OiConfig::mass_balance`): without it a
//! momentum that started wrong (the anchor's while the first prefix fills) is never corrected.
//! Sparse gauges get it only when they determine the depth at every cell
//! ([`crate::twin::analysis::Analyser::coverage`]).
//!
//! Gaps: a frame that is more than `reorder_window` sequence numbers ahead of the one awaited
//! gives up on the missing ones (counted as lost) and restarts the prefix at the earliest frame
//! held, because the model needs consecutive frames. Duplicates and frames older than the one
//! awaited are refused and counted; a frame of the wrong size or with non-finite values is refused
//! with a clear error, and the forecaster keeps serving on what it had.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::analysis::{Analyser, AnalysisError, BALANCE_MIN_COVERAGE, MassBalance, OiConfig};

use crate::ccm::prefix::{
    Helper, Observation, PrefixConfig, PrefixError, Prescan, prescan, read_prefix_prescanned,
};
use crate::ccm::{Interval, Line, WeightSet};
use crate::infer::{Backend, InferError, StepShape};
use crate::models::FamilyModels;

/// How the coordinate is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadoutMode {
    /// From the observed prefix (the regime is unknown).
    Prefix,
    /// From the calibrated map at a known `p` (the coordinate `s(p)` when the bundle has no
    /// calibration).
    Known {
        /// The station's regime parameter.
        p: f64,
    },
}

/// Settings of a [`Forecaster`].
#[derive(Debug, Clone, PartialEq)]
pub struct ForecasterOptions {
    /// How `α` is read.
    pub readout: ReadoutMode,
    /// Frames in the prefix (`K`).
    pub prefix: usize,
    /// Forecast steps (`H`).
    pub horizon: usize,
    /// Frames may arrive this many sequence numbers early before the missing ones are given up.
    pub reorder_window: u32,
    /// Re-read `α` when the deployed merge's fit error on the latest `K` frames exceeds this
    /// factor times its fit error at the readout (and `drift_floor`).
    pub drift_factor: f64,
    /// Fit errors below this never count as drift.
    pub drift_floor: f64,
    /// The prefix readout's settings.
    pub prefix_config: PrefixConfig,
    /// A forecast value further than this many training standard deviations from the
    /// channel's training mean is unphysical: the merge blew up.
    pub range_std: f64,
    /// What to do with frames given up as missing.
    pub gap_policy: GapPolicy,
}

/// What happens when frames are given up as missing (more than `reorder_window` sequence
/// numbers behind the newest, which at a steady frame rate is a time-out of that many frame
/// intervals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GapPolicy {
    /// Restart the prefix at the first frame after the gap (the deployed α stays; forecasts go
    /// on from the next frame).
    #[default]
    Restart,
    /// Fill the missing frames with the forecast made for them, when the last forecast covers
    /// them, so the window stays continuous (a filled frame is never compared with a merge:
    /// no drift check runs while one is in the window); restart otherwise.
    Fill,
}

impl ForecasterOptions {
    /// The family's defaults for `models`: `K` and `H` from the family config, the prefix
    /// readout the bundle calibrated.
    pub fn for_bundle(models: &FamilyModels, readout: ReadoutMode) -> Self {
        let family = crate::config::FamilyConfig::builtin(models.manifest.family);
        ForecasterOptions {
            readout,
            prefix: family.time.prefix,
            horizon: family.time.horizon,
            reorder_window: 4,
            drift_factor: 2.0,
            drift_floor: 0.02,
            prefix_config: models.prefix_config(),
            range_std: 20.0,
            gap_policy: GapPolicy::Restart,
        }
    }
}

/// Why a frame was refused or a forecast could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// The frame does not fit the model.
    #[error("frame {seq}: {reason}")]
    BadFrame {
        /// Its sequence number.
        seq: u32,
        /// What is wrong, for the person on duty.
        reason: String,
    },
    /// The frame was seen already or comes after the forecaster moved past it.
    #[error("frame {seq}: {kind} (awaiting {awaited})")]
    OutOfOrder {
        /// Its sequence number.
        seq: u32,
        /// The sequence number awaited.
        awaited: u32,
        /// `duplicate` or `late`.
        kind: &'static str,
    },
    /// The runtime failed.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// The readout failed (every candidate unstable, for instance).
    #[error(transparent)]
    Readout(#[from] PrefixError<InferError>),
    /// A sparse frame could not be made whole.
    #[error("frame {seq}: {source}")]
    Analysis {
        /// Its sequence number.
        seq: u32,
        /// Why.
        source: AnalysisError,
    },
    /// The bundle's experts do not share a layout.
    #[error(transparent)]
    Layout(#[from] crate::ccm::LayoutMismatch),
    /// A frame holds a value that is not a number.
    #[error("frame {seq}: value {index} is not finite ({value})")]
    NonFinite {
        /// Its sequence number.
        seq: u32,
        /// Index of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The forecast of the merge and the anchor's both went non-finite or unphysical: withheld.
    #[error(
        "the rollout from frame {seq} went non-finite or out of the physical range at step \
         {step}, with the merge at α = {alpha:+.2} and with the family anchor; forecast withheld"
    )]
    Unstable {
        /// The frame the rollout started from.
        seq: u32,
        /// First bad step (0-based).
        step: usize,
        /// The α in use.
        alpha: f64,
    },
}

/// The deployed merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The coordinate.
    pub alpha: f64,
    /// Interval of `α` within 10 % of the best prefix error (the readout's confidence), when
    /// read from a prefix.
    pub confidence: Option<Interval>,
    /// Relative L2 error of the merge on the prefix it was read from (`None` for a known `p`).
    pub fit_error: Option<f64>,
    /// Sequence number of the last frame of that prefix.
    pub read_at_seq: u32,
    /// How many times `α` has been read (1 for the first readout).
    pub readouts: u32,
}

impl Deployment {
    /// `|α| > 1`: the merge extrapolates past the endpoint experts.
    pub fn extrapolates(&self) -> bool {
        self.alpha.abs() > 1.0
    }

    /// The confidence as a number in (0, 1]: 1 / (1 + width of the confidence interval).
    pub fn confidence_score(&self) -> Option<f64> {
        self.confidence.map(|c| 1.0 / (1.0 + (c.hi - c.lo)))
    }
}

/// Durations of the last cycle, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CycleTimings {
    /// The readout (0 when `α` was not re-read).
    pub readout_ms: f64,
    /// Merge and deploy.
    pub merge_ms: f64,
    /// The `H`-step rollout (with handing its first step to the lead sink).
    pub rollout_ms: f64,
    /// From the frame's arrival to the forecast's first step (0 when none was handed to a lead
    /// sink).
    pub lead_ms: f64,
    /// From the frame's arrival to the forecast.
    pub total_ms: f64,
}

/// The first step of a forecast, handed to the lead sink ([`Forecaster::on_lead`]) before the
/// rest of the horizon is rolled. Only a step inside the physical range is handed over; the
/// whole forecast that follows supersedes it (it may be the anchor's, should a later step of the
/// merge blow up). Should the anchor blow up too, no forecast follows: it is withheld
/// ([`ForecastError::Unstable`]).
#[derive(Debug)]
pub struct LeadView<'a> {
    /// Sequence number of the frame it starts from.
    pub based_on_seq: u32,
    /// Timestamp of that frame.
    pub based_on_us: u64,
    /// The predicted frame (`frame_len` values).
    pub frame: &'a [f32],
    /// The coordinate of the merge that made it.
    pub alpha: f64,
    /// From the frame's arrival to this step, in milliseconds.
    pub ms: f64,
}

/// Where lead frames go ([`Forecaster::on_lead`]).
pub type LeadSink = Box<dyn FnMut(LeadView<'_>) + Send>;

/// A forecast, borrowed from the forecaster's buffer.
#[derive(Debug)]
pub struct ForecastView<'a> {
    /// Sequence number of the frame it starts from.
    pub based_on_seq: u32,
    /// Timestamp of that frame.
    pub based_on_us: u64,
    /// `H × frame_len` values, step-major.
    pub frames: &'a [f32],
    /// The merge that made it.
    pub deployment: &'a Deployment,
    /// Whether `α` was (re-)read for this forecast.
    pub new_readout: bool,
    /// Durations of the cycle.
    pub timings: CycleTimings,
    /// Set when the merge's rollout blew up (non-finite, or out of the physical range) and this
    /// forecast is the family anchor's from the same frame: why.
    pub fallback: Option<String>,
}

impl ForecastError {
    /// A short name for the counters (`duplicate`, `late`, `non_finite`, `bad_frame`,
    /// `forecast_withheld`, `runtime_error`).
    pub fn counter(&self) -> &'static str {
        match self {
            ForecastError::OutOfOrder { kind, .. } => kind,
            ForecastError::NonFinite { .. } => "non_finite",
            ForecastError::BadFrame { .. } | ForecastError::Analysis { .. } => "bad_frame",
            ForecastError::Unstable { .. } => "forecast_withheld",
            ForecastError::Infer(_) | ForecastError::Readout(_) | ForecastError::Layout(_) => {
                "runtime_error"
            }
        }
    }
}

/// Counters since the forecaster started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForecasterCounters {
    /// Frames accepted in sequence.
    pub accepted: u64,
    /// Duplicates refused.
    pub duplicate: u64,
    /// Frames older than the one awaited, refused.
    pub late: u64,
    /// Frames refused for their content (size, non-finite values).
    pub bad: u64,
    /// Sequence numbers given up as missing.
    pub lost: u64,
    /// Missing frames filled from the forecast (policy `fill`).
    pub filled: u64,
    /// Prefix restarts after a gap.
    pub restarts: u64,
    /// Forecasts made.
    pub forecasts: u64,
    /// First steps handed to the lead sink ahead of the rest of their forecast (a forecast
    /// withheld afterwards, merge and anchor both blown up, follows none of them).
    pub leads: u64,
    /// Forecasts withheld (the merge's and the anchor's rollouts both blew up).
    pub withheld: u64,
    /// Forecasts that fell back to the anchor (the merge's rollout blew up).
    pub fallbacks: u64,
    /// Sparse frames made whole by the analysis.
    pub analysed: u64,
    /// Prefix readouts whose coarse scan was rolled when the prefix started
    /// ([`crate::ccm::prefix::Prescan`]).
    pub prescanned: u64,
    /// Coarse scans rolled ahead of a drift check, because the frames of its window already
    /// drifted from the deployed merge ([`Forecaster::prepare`]).
    pub early_scans: u64,
}

/// Where the background of a sparse frame's analysis came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// The forecast for that frame.
    Forecast,
    /// The deployed model (the anchor before the first readout) rolled from the latest frame
    /// held, when no forecast covers the frame.
    Model,
    /// The family's mean state (nothing held yet).
    MeanState,
}

impl Background {
    /// A short name for logs and the status.
    pub fn name(self) -> &'static str {
        match self {
            Background::Forecast => "forecast",
            Background::Model => "model step",
            Background::MeanState => "mean state",
        }
    }
}

/// A family's mass balance and the channels it ties together (depth, x and y momentum).
struct Balance {
    balance: MassBalance,
    depth: usize,
    flux: [usize; 2],
}

impl Balance {
    /// The balance of a shallow-water family (channels `h`, `hu`, `hv`) on the model's grid.
    fn for_family(family: &crate::config::FamilyConfig, n: usize) -> Option<Self> {
        let crate::config::SolverConfig::DamBreak(c) = &family.solver else {
            return None;
        };
        let channels = family.channels();
        let at = |name: &str| channels.iter().position(|c| *c == name);
        let closed = c.walls == crate::config::Walls::Closed;
        Some(Balance {
            balance: MassBalance::new(n, c.domain / n as f64, closed, c.h_dry).ok()?,
            depth: at("h")?,
            flux: [at("hu")?, at("hv")?],
        })
    }

    /// Corrects the momentum of the analysed `values` from the depth increment over
    /// the background, when the depth was measured and neither momentum was (a station that
    /// measures one momentum component is left as it is).
    fn apply(
        &self,
        measured: &[usize],
        values: &mut [f32],
        background: &[f32],
        cells: usize,
        dt: f64,
    ) -> Result<(), AnalysisError> {
        if !measured.contains(&self.depth) || self.flux.iter().any(|c| measured.contains(c)) {
            return Ok(());
        }
        let d = self.depth * cells..(self.depth + 1) * cells;
        let increment: Vec<f32> = values[d.clone()]
            .iter()
            .zip(&background[d])
            .map(|(a, b)| a - b)
            .collect();
        let [x, y] = self.flux.map(|c| c * cells..(c + 1) * cells);
        let (mut qx, mut qy) = (values[x.clone()].to_vec(), values[y.clone()].to_vec());
        let depth = &values[self.depth * cells..(self.depth + 1) * cells];
        self.balance
            .correct(depth, &increment, dt, &mut qx, &mut qy)?;
        values[x].copy_from_slice(&qx);
        values[y].copy_from_slice(&qy);
        Ok(())
    }
}

/// A frame held: sequence number, timestamp, the whole field, and which of its values were
/// observed (`None`: all of them).
struct Held {
    seq: u32,
    ts: u64,
    values: Vec<f32>,
    mask: Option<Arc<[bool]>>,
    /// For a sparse frame, its analysis's background.
    background: Option<Background>,
    /// A stand-in from the forecast for a frame that never came.
    filled: bool,
}

/// What a frame led to.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The frame is held until the ones before it arrive.
    Held,
    /// The prefix is filling: `have` of `need` consecutive frames.
    Filling {
        /// Consecutive frames held.
        have: usize,
        /// Frames the prefix needs.
        need: usize,
    },
    /// A forecast from the latest frame.
    Forecast(ForecastView<'a>),
}

/// The forecasting core (see the module docs).
pub struct Forecaster<B: Backend> {
    opts: ForecasterOptions,
    backend: B,
    shape: StepShape,
    line: Line,
    coordinate: Box<dyn Fn(f64) -> f64 + Send>,
    buffer: WeightSet,
    /// Last `K` consecutive frames.
    window: VecDeque<Held>,
    /// Frames ahead of the awaited one.
    pending: BTreeMap<u32, Held>,
    awaited: Option<u32>,
    deployment: Option<Deployment>,
    forecast: Vec<f32>,
    /// The frame the forecast in `forecast` starts from, while it is intact.
    forecast_base: Option<u32>,
    prefix_frames: Vec<f32>,
    /// Cells the readout compares (observed in every frame after the first `T_in`).
    mask: Vec<bool>,
    /// The family's mean state, the background of last resort.
    mean_state: Vec<f32>,
    /// The family anchor, the fallback when a merge blows up.
    anchor: WeightSet,
    /// Per channel: the training mean and standard deviation (the physical range check).
    channel_stats: Vec<(f32, f32)>,
    /// The analysis of the last sensor layout seen.
    analyser: Option<(OiConfig, Analyser)>,
    /// Shallow water: the mass balance that corrects unmeasured momentum from the depth.
    balance: Option<Balance>,
    last_background: Option<Background>,
    /// The background of the analysis being made.
    background_buf: Vec<f32>,
    /// The caller dropped frames: the next gap is final at once.
    gap_expected: bool,
    /// The coarse scan of the first readout, rolled as soon as its prefix started.
    prescan: Option<Prescan>,

    frame_dt_us: u64,
    counters: ForecasterCounters,
    /// More runtimes that share the readout's coarse scan, each in a thread.
    helpers: Vec<Helper<B>>,
    /// Where each forecast's first step goes as soon as it is computed.
    lead: Option<LeadSink>,
    /// The deployed merge's prediction of the next drift window's frames after its first `T_in`
    /// (its forecast from that window's start), and the seq it starts from.
    drift_pred: Vec<f32>,
    drift_base: Option<u32>,
    /// The drift window's frames already drifted: its readout's coarse scan is due
    /// ([`Forecaster::prepare`]).
    scan_due: bool,
    /// A scan used the backend and putting the deployed model (the anchor before the first
    /// readout) back failed: it is deployed again before the backend's next use.
    stale: bool,
    /// The window the rollout continues from after its first step (`T_in` frames).
    continuation: Vec<f32>,
}

impl<B: Backend + Send> Forecaster<B> {
    /// Adds runtimes (of the same experts) that take a share of each prefix readout's coarse
    /// scan in threads of their own: on a 2-core box one helper halves that scan.
    pub fn with_helpers(mut self, backends: Vec<B>) -> Self {
        self.helpers = backends
            .into_iter()
            .map(|model| Helper {
                model,
                buffer: self.line.buffer(),
            })
            .collect();
        self
    }

    /// Hands the first step of every forecast to `sink` as soon as it is computed, before the
    /// rest of the horizon is rolled (the runtime publishes it on the station's `lead` topic). A
    /// first step outside the physical range is not handed over.
    pub fn on_lead(&mut self, sink: impl FnMut(LeadView<'_>) + Send + 'static) {
        self.lead = Some(Box::new(sink));
    }

    /// A forecaster for `models` running on `backend` (whose template must be one of them).
    /// The anchor is deployed until the first readout (it steps the backgrounds of sparse
    /// frames).
    pub fn new(
        models: &FamilyModels,
        mut backend: B,
        opts: ForecasterOptions,
    ) -> Result<Self, ForecastError> {
        backend.deploy(&models.anchor.weights)?;
        let shape = backend.shape();
        if opts.prefix <= shape.t_in || opts.horizon == 0 {
            return Err(ForecastError::BadFrame {
                seq: 0,
                reason: format!(
                    "settings: the prefix ({}) must be longer than T_in ({}) and the horizon ({}) positive",
                    opts.prefix, shape.t_in, opts.horizon
                ),
            });
        }
        let line =
            Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone())?;
        let buffer = line.buffer();
        let m = &models.manifest;
        let parameter = m.parameter.clone();
        let calibration = m.calibration.clone();
        let interval = opts.prefix_config.interval;
        let coordinate: Box<dyn Fn(f64) -> f64 + Send> = Box::new(move |p| {
            let s = parameter.coordinate(p);
            match &calibration {
                Some(c) => c.map.alpha(s, interval),
                None => interval.clip(s),
            }
        });
        let family = crate::config::FamilyConfig::builtin(m.family);
        let frame_dt_us = (family.time.frame_dt * 1e6).round() as u64;
        let cells = shape.n * shape.n;
        let mean_state = (0..shape.channels)
            .flat_map(|c| {
                let v = m.normalization.mean.get(c).copied().unwrap_or(0.0);
                std::iter::repeat_n(v, cells)
            })
            .collect();
        Ok(Forecaster {
            forecast: vec![0.0; opts.horizon * shape.frame_len()],
            forecast_base: None,
            mask: Vec::new(),
            mean_state,
            anchor: models.anchor.weights.clone(),
            channel_stats: (0..shape.channels)
                .map(|c| {
                    let n = &models.manifest.normalization;
                    (
                        n.mean.get(c).copied().unwrap_or(0.0),
                        n.std.get(c).copied().unwrap_or(1.0),
                    )
                })
                .collect(),
            analyser: None,
            balance: Balance::for_family(&family, shape.n),
            last_background: None,
            background_buf: Vec::new(),
            gap_expected: false,
            prescan: None,
            prefix_frames: Vec::with_capacity(opts.prefix * shape.frame_len()),
            opts,
            backend,
            shape,
            line,
            coordinate,
            buffer,
            window: VecDeque::new(),
            pending: BTreeMap::new(),
            awaited: None,
            deployment: None,
            frame_dt_us,
            counters: ForecasterCounters::default(),
            helpers: Vec::new(),
            lead: None,
            drift_pred: Vec::new(),
            drift_base: None,
            scan_due: false,
            stale: false,
            continuation: Vec::with_capacity(shape.t_in * shape.frame_len()),
        })
    }

    /// The step shape of the model.
    pub fn shape(&self) -> StepShape {
        self.shape
    }

    /// The deployed merge, if any.
    pub fn deployment(&self) -> Option<&Deployment> {
        self.deployment.as_ref()
    }

    /// Counters since the start.
    pub fn counters(&self) -> ForecasterCounters {
        self.counters
    }

    /// Time between frames, µs.
    pub fn frame_dt_us(&self) -> u64 {
        self.frame_dt_us
    }

    /// The latest frame in sequence as the model sees it (for a sparse frame, its analysis).
    pub fn latest_state(&self) -> Option<&[f32]> {
        self.window.back().map(|h| h.values.as_slice())
    }

    /// Tells the forecaster that frames were dropped before reaching it (the runtime shed a
    /// backlog): the next gap in the sequence is given up at once instead of waiting for the
    /// reorder window, so the frames after it are forecast without delay.
    pub fn expect_gap(&mut self) {
        self.gap_expected = true;
    }

    /// Where the last sparse frame's background came from.
    pub fn last_background(&self) -> Option<Background> {
        self.last_background
    }

    /// Takes one frame (`values`: the whole field, `channels × n × n`, in the model's units).
    pub fn push(
        &mut self,
        seq: u32,
        timestamp_us: u64,
        values: &[f32],
    ) -> Result<Progress<'_>, ForecastError> {
        self.check_values(seq, values)?;
        self.accept(
            Instant::now(),
            Held {
                seq,
                ts: timestamp_us,
                values: values.to_vec(),
                mask: None,
                background: None,
                filled: false,
            },
        )
    }

    /// Takes one frame of sparse sensors: `observed[c * points.len() + j]` is channel `c` at the
    /// cell `points[j]` (`(row, col)`), in the model's units. The frame is made whole by optimal
    /// interpolation (`oi`; see the module docs for its background) and joins the window with
    /// its sensor mask.
    pub fn push_points(
        &mut self,
        seq: u32,
        timestamp_us: u64,
        points: &[(usize, usize)],
        observed: &[f32],
        oi: &OiConfig,
    ) -> Result<Progress<'_>, ForecastError> {
        let all: Vec<usize> = (0..self.shape.channels).collect();
        self.push_partial(seq, timestamp_us, Some(points), &all, observed, oi)
    }

    /// Takes one frame that measured only the channels `measured` (model channel indices), at
    /// the cells `points` or, with `None`, at every cell: `observed[k * cells + j]` is channel
    /// `measured[k]` at the `j`-th cell (of `points`, or of the grid in row-major order), in the
    /// model's units. What was not measured comes from the background (see the module docs):
    /// by optimal interpolation between sensor points, as is for unmeasured channels. The frame
    /// joins the window with the mask of what was measured.
    pub fn push_partial(
        &mut self,
        seq: u32,
        timestamp_us: u64,
        points: Option<&[(usize, usize)]>,
        measured: &[usize],
        observed: &[f32],
        oi: &OiConfig,
    ) -> Result<Progress<'_>, ForecastError> {
        let arrived = Instant::now();
        let (channels, n) = (self.shape.channels, self.shape.n);
        let cells = n * n;
        let every = measured.len() == channels && measured.iter().enumerate().all(|(i, c)| i == *c);
        if points.is_none() && every {
            return self.push(seq, timestamp_us, observed);
        }
        if let Some(i) = observed.iter().position(|v| !v.is_finite()) {
            self.counters.bad += 1;
            return Err(ForecastError::NonFinite {
                seq,
                index: i,
                value: observed[i],
            });
        }
        let per_channel = points.map_or(cells, <[_]>::len);
        if measured.iter().any(|&c| c >= channels) || observed.len() != measured.len() * per_channel
        {
            self.counters.bad += 1;
            return Err(ForecastError::BadFrame {
                seq,
                reason: format!(
                    "{} values for channels {measured:?} at {per_channel} cell(s); the model has \
                     {channels} channel(s)",
                    observed.len()
                ),
            });
        }
        if let Some(points) = points {
            let reuse = matches!(&self.analyser, Some((c, a)) if c == oi && a.points() == points);
            if !reuse {
                let a = Analyser::new(channels, n, points, oi).map_err(|source| {
                    self.counters.bad += 1;
                    ForecastError::Analysis { seq, source }
                })?;
                self.analyser = Some((*oi, a));
            }
        }
        let (kind, lead) = self.background(seq)?;
        let mut mask = vec![false; channels * cells];
        let mut values = match points {
            Some(points) => {
                let (_, analyser) = self.analyser.as_ref().expect("set above");
                for &c in measured {
                    for &(r, col) in points {
                        mask[c * cells + r * n + col] = true;
                    }
                }
                analyser
                    .analyse_channels(&self.background_buf, measured, observed)
                    .map_err(|source| ForecastError::Analysis { seq, source })?
            }
            None => {
                let mut v = self.background_buf.clone();
                for (k, &c) in measured.iter().enumerate() {
                    v[c * cells..(c + 1) * cells]
                        .copy_from_slice(&observed[k * cells..(k + 1) * cells]);
                    mask[c * cells..(c + 1) * cells].fill(true);
                }
                v
            }
        };
        // sparse sensors only where they determine the depth at every cell: elsewhere the
        // increment is partly the analysis's own interpolation, and momentum made from it sent
        // rollouts out of range (docs/RESULTS.md)
        let determined = points.is_none()
            || self
                .analyser
                .as_ref()
                .is_some_and(|(_, a)| a.coverage() >= BALANCE_MIN_COVERAGE);
        if let (Some(b), true, true, true) = (
            &self.balance,
            oi.mass_balance,
            kind != Background::MeanState,
            determined,
        ) {
            let dt = lead as f64 * self.frame_dt_us as f64 * 1e-6;
            b.apply(measured, &mut values, &self.background_buf, cells, dt)
                .map_err(|source| ForecastError::Analysis { seq, source })?;
        }
        self.last_background = Some(kind);
        self.counters.analysed += 1;
        self.accept(
            arrived,
            Held {
                seq,
                ts: timestamp_us,
                values,
                mask: Some(mask.into()),
                background: Some(kind),
                filled: false,
            },
        )
    }

    /// Fills the frames `from..to` from the forecast of the latest frame in the window, when it
    /// covers them; `false` (nothing changed) when it does not.
    fn fill(&mut self, from: u32, to: u32) -> bool {
        let (Some(base), Some(last)) = (self.forecast_base, self.window.back()) else {
            return false;
        };
        let lead_last = to.wrapping_sub(1).wrapping_sub(base) as usize;
        if last.seq != base || from.wrapping_sub(base) != 1 || lead_last > self.opts.horizon {
            return false;
        }
        let (fl, ts) = (self.shape.frame_len(), last.ts);
        for seq in from..to {
            let lead = seq.wrapping_sub(base) as usize;
            if self.window.len() == self.opts.prefix {
                self.window.pop_front();
            }
            self.window.push_back(Held {
                seq,
                ts: ts + lead as u64 * self.frame_dt_us,
                values: self.forecast[(lead - 1) * fl..lead * fl].to_vec(),
                mask: None,
                background: None,
                filled: true,
            });
        }
        self.counters.filled += u64::from(to - from);
        true
    }

    /// Writes the background for frame `seq` into `background_buf`: the forecast for it, else
    /// the deployed model rolled from the latest frames held, else the mean state. Returns its
    /// kind and the model steps it is ahead of the frame it was rolled from (0 for the mean
    /// state).
    fn background(&mut self, seq: u32) -> Result<(Background, usize), ForecastError> {
        let fl = self.shape.frame_len();
        let t_in = self.shape.t_in;
        self.background_buf.clear();
        if let Some(base) = self.forecast_base {
            let lead = seq.wrapping_sub(base) as usize;
            if (1..=self.opts.horizon).contains(&lead) {
                self.background_buf
                    .extend_from_slice(&self.forecast[(lead - 1) * fl..lead * fl]);
                return Ok((Background::Forecast, lead));
            }
        }
        let lead = self
            .window
            .back()
            .map_or(0, |h| seq.wrapping_sub(h.seq) as usize);
        if self.window.len() >= t_in && (1..=self.opts.horizon).contains(&lead) {
            self.ensure_deployed()?;
            self.prefix_frames.clear();
            for h in self.window.iter().skip(self.window.len() - t_in) {
                self.prefix_frames.extend_from_slice(&h.values);
            }
            // the forecast buffer serves as scratch: no forecast covers this frame
            self.forecast_base = None;
            self.backend
                .roll(&self.prefix_frames, lead, &mut self.forecast)?;
            let last = &self.forecast[(lead - 1) * fl..lead * fl];
            if last.iter().all(|x| x.is_finite()) {
                self.background_buf.extend_from_slice(last);
                return Ok((Background::Model, lead));
            }
        }
        self.background_buf.extend_from_slice(&self.mean_state);
        Ok((Background::MeanState, 0))
    }

    fn check_values(&mut self, seq: u32, values: &[f32]) -> Result<(), ForecastError> {
        let fl = self.shape.frame_len();
        if values.len() != fl {
            self.counters.bad += 1;
            return Err(ForecastError::BadFrame {
                seq,
                reason: format!(
                    "{} values, the model takes {fl} ({} channel(s) × {n} × {n})",
                    values.len(),
                    self.shape.channels,
                    n = self.shape.n
                ),
            });
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            self.counters.bad += 1;
            return Err(ForecastError::NonFinite {
                seq,
                index: i,
                value: values[i],
            });
        }
        Ok(())
    }

    /// Puts a checked frame in sequence, and forecasts when the window allows.
    fn accept(&mut self, arrived: Instant, held: Held) -> Result<Progress<'_>, ForecastError> {
        let seq = held.seq;
        let awaited = *self.awaited.get_or_insert(seq);
        if seq < awaited {
            let dup = self.window.iter().any(|f| f.seq == seq);
            let kind = if dup { "duplicate" } else { "late" };
            if dup {
                self.counters.duplicate += 1;
            } else {
                self.counters.late += 1;
            }
            return Err(ForecastError::OutOfOrder { seq, awaited, kind });
        }
        if seq > awaited {
            if self.pending.contains_key(&seq) {
                self.counters.duplicate += 1;
                return Err(ForecastError::OutOfOrder {
                    seq,
                    awaited,
                    kind: "duplicate",
                });
            }
            self.pending.insert(seq, held);
            if seq - awaited <= self.opts.reorder_window && !self.gap_expected {
                return Ok(Progress::Held);
            }
            self.gap_expected = false;
            // give up on the missing frames: fill them from the forecast (policy `fill`, when
            // it covers them), or restart the prefix at the earliest held frame
            let first = *self.pending.keys().next().expect("just inserted");
            self.counters.lost += u64::from(first - awaited);
            if !(self.opts.gap_policy == GapPolicy::Fill && self.fill(awaited, first)) {
                self.counters.restarts += 1;
                self.window.clear();
            }
            self.awaited = Some(first);
        } else {
            self.pending.insert(seq, held);
        }
        // move every consecutive frame from `pending` into the window
        let mut latest = false;
        while let Some(h) = self.awaited.and_then(|a| self.pending.remove(&a)) {
            if self.window.len() == self.opts.prefix {
                self.window.pop_front();
            }
            self.awaited = Some(h.seq.wrapping_add(1));
            self.window.push_back(h);
            self.counters.accepted += 1;
            latest = true;
        }
        if !latest {
            return Ok(Progress::Held);
        }
        let (need, have) = match self.deployment {
            // the first prefix starts after the last mean-state analysis
            None => (
                self.opts.prefix,
                self.window
                    .iter()
                    .rev()
                    .take_while(|h| h.background != Some(Background::MeanState))
                    .count(),
            ),
            // a nowcast needs only the model's input frames
            Some(_) => (self.shape.t_in, self.window.len()),
        };
        if have < need {
            if self.deployment.is_none()
                && have == self.shape.t_in
                && matches!(self.opts.readout, ReadoutMode::Prefix)
            {
                self.start_prescan()?;
            }
            return Ok(Progress::Filling {
                have,
                need: self.opts.prefix,
            });
        }
        self.cycle(arrived)
    }

    /// Rolls the first readout's coarse scan from the frames that start its prefix (the last
    /// `T_in` held), while the rest of the prefix is still to come; the anchor is deployed again
    /// afterwards (it steps the sparse frames' backgrounds until the first readout).
    fn start_prescan(&mut self) -> Result<(), ForecastError> {
        self.stale = true;
        self.prescan_from(self.window.len() - self.shape.t_in)?;
        // a failed redeployment leaves the backend marked stale: its next use deploys again
        let _ = self.redeploy();
        Ok(())
    }

    /// Deploys the deployed model again (the merge in the buffer, or the anchor before the first
    /// readout), after a scan used the backend; until it succeeds the backend is marked stale
    /// and every use of it tries again first.
    fn redeploy(&mut self) -> Result<(), ForecastError> {
        match &self.deployment {
            Some(d) => {
                self.line.merge_into(d.alpha as f32, &mut self.buffer)?;
                self.backend.deploy(&self.buffer)?;
            }
            None => self.backend.deploy(&self.anchor)?,
        }
        self.stale = false;
        Ok(())
    }

    /// [`Forecaster::redeploy`] if a scan left the backend holding another model.
    fn ensure_deployed(&mut self) -> Result<(), ForecastError> {
        if self.stale {
            self.redeploy()?;
        }
        Ok(())
    }

    /// Rolls the coarse scan of the prefix whose first `T_in` frames start at window position
    /// `first`. The merge buffer is left holding the scan's last merge, and the backend too.
    fn prescan_from(&mut self, first: usize) -> Result<(), ForecastError> {
        let t_in = self.shape.t_in;
        self.prefix_frames.clear();
        for h in self.window.iter().skip(first).take(t_in) {
            self.prefix_frames.extend_from_slice(&h.values);
        }
        let pre = prescan(
            &self.line,
            &mut self.buffer,
            &mut self.backend,
            &mut self.helpers,
            &self.prefix_frames,
            self.shape.frame_len(),
            self.opts.prefix,
            &self.opts.prefix_config,
        );
        // a failed prescan costs nothing but time: the readout then rolls the scan itself
        self.prescan = pre.ok();
        Ok(())
    }

    /// Whether [`Forecaster::prepare`] has work to do.
    pub fn work_due(&self) -> bool {
        self.scan_due
    }

    /// Work that can wait until the latest forecast is out (the runtime calls it between
    /// frames): when the frames of the current drift window have already drifted from the
    /// deployed merge, rolls the coarse scan of the re-read the window's drift check will
    /// call for, so that the re-read has only its scoring, refinement and guards left. The
    /// re-read is the same with or without it. Returns whether it rolled a scan.
    pub fn prepare(&mut self) -> Result<bool, ForecastError> {
        if !std::mem::take(&mut self.scan_due) {
            return Ok(false);
        }
        let (Some(base), Some(_)) = (self.drift_base, self.deployment.as_ref()) else {
            return Ok(false);
        };
        let t_in = self.shape.t_in as u32;
        let Some(first) = self
            .window
            .iter()
            .position(|h| h.seq == base.wrapping_sub(t_in - 1))
        else {
            return Ok(false);
        };
        self.stale = true;
        self.prescan_from(first)?;
        self.counters.early_scans += 1;
        // the deployed merge back in the buffer and the backend; should that fail, the backend
        // stays marked stale and its next use deploys again
        let _ = self.redeploy();
        Ok(true)
    }

    /// After a forecast from `seq` by the deployed merge: keeps its first steps when `seq`
    /// starts the next drift window, and compares the window's later frames with them as they
    /// arrive; once they have drifted as far as the drift check would call a re-read, the
    /// re-read's coarse scan is due ([`Forecaster::prepare`]).
    fn watch_drift(&mut self, seq: u32) {
        let (Some(d), ReadoutMode::Prefix) = (&self.deployment, self.opts.readout) else {
            return;
        };
        let Some(fit) = d.fit_error else { return };
        let t_in = self.shape.t_in;
        // the window's frames after its first T_in that the forecast covers
        let steps = (self.opts.prefix - t_in).min(self.opts.horizon);
        let fl = self.shape.frame_len();
        if seq == d.read_at_seq.wrapping_add(t_in as u32) {
            self.drift_pred.clear();
            self.drift_pred
                .extend_from_slice(&self.forecast[..steps * fl]);
            self.drift_base = Some(seq);
            self.scan_due = false;
            // a scan of an earlier window that no re-read used
            self.prescan = None;
            return;
        }
        let Some(base) = self.drift_base else { return };
        let j = seq.wrapping_sub(base) as usize; // frames of the window past its start
        if self.scan_due || self.prescan.is_some() || j == 0 || j >= steps {
            // the last frame's drift check decides on its own (and a prescan is there already)
            return;
        }
        if self.window.iter().rev().take(j).any(|h| h.filled) {
            return; // no drift check runs on filled frames either
        }
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for h in self.window.iter().rev().take(j) {
            let k = h.seq.wrapping_sub(base) as usize;
            let pred = &self.drift_pred[(k - 1) * fl..k * fl];
            for (i, (p, o)) in pred.iter().zip(&h.values).enumerate() {
                if h.mask.as_ref().is_none_or(|m| m[i]) {
                    num += (f64::from(*p) - f64::from(*o)).powi(2);
                    den += f64::from(*o).powi(2);
                }
            }
        }
        let err = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        self.scan_due =
            !err.is_finite() || (err > self.opts.drift_factor * fit && err > self.opts.drift_floor);
    }

    /// Readout (when due), merge, deploy and roll forward from the latest frame.
    fn cycle(&mut self, arrived: Instant) -> Result<Progress<'_>, ForecastError> {
        self.ensure_deployed()?;
        let mut timings = CycleTimings::default();
        let due = match &self.deployment {
            None => true,
            Some(d) => {
                self.window.len() == self.opts.prefix
                    && !self.window.iter().any(|h| h.filled)
                    && self.drifted(d.clone())?
            }
        };
        if due {
            // the readout's candidates use the backend: until the choice is deployed, the model
            // deployed before is to be put back should anything fail
            self.stale = true;
            let t = Instant::now();
            let d = self.read()?;
            timings.readout_ms = ms(t);
            let t = Instant::now();
            self.line.merge_into(d.alpha as f32, &mut self.buffer)?;
            self.backend.deploy(&self.buffer)?;
            self.stale = false;
            timings.merge_ms = ms(t);
            self.deployment = Some(d);
        }
        let t = Instant::now();
        let t_in = self.shape.t_in;
        self.prefix_frames.clear();
        for h in self.window.iter().skip(self.window.len() - t_in) {
            self.prefix_frames.extend_from_slice(&h.values);
        }
        self.forecast_base = None;
        let last = self.window.back().expect("a frame");
        let (seq, ts) = (last.seq, last.ts);
        timings.lead_ms = self.roll_forecast(seq, ts, arrived)?;
        timings.rollout_ms = ms(t);
        timings.total_ms = ms(arrived);
        let mut fallback = None;
        if let Some(step) = self.unphysical() {
            // the merge blew up: the family anchor from the same frames, then the merge back
            let alpha = self.deployment.as_ref().map_or(0.0, |d| d.alpha);
            self.stale = true;
            self.backend.deploy(&self.anchor)?;
            let rolled =
                self.backend
                    .roll(&self.prefix_frames, self.opts.horizon, &mut self.forecast);
            self.backend.deploy(&self.buffer)?;
            self.stale = false;
            rolled?;
            if self.unphysical().is_some() {
                self.counters.withheld += 1;
                return Err(ForecastError::Unstable { seq, step, alpha });
            }
            self.counters.fallbacks += 1;
            fallback = Some(format!(
                "the merge at α = {alpha:+.2} blew up at step {step} (non-finite or beyond {} \
                 training standard deviations); this forecast is the family anchor's",
                self.opts.range_std
            ));
        }
        if fallback.is_none() {
            self.watch_drift(seq);
        }
        let deployment = self.deployment.as_ref().expect("deployed above");
        self.counters.forecasts += 1;
        self.forecast_base = Some(seq);
        Ok(Progress::Forecast(ForecastView {
            based_on_seq: seq,
            based_on_us: ts,
            frames: &self.forecast,
            deployment,
            new_readout: due,
            timings,
            fallback,
        }))
    }

    /// Reads `α` from the window (or the known `p`).
    fn read(&mut self) -> Result<Deployment, ForecastError> {
        let last = self.window.back().map_or(0, |f| f.seq);
        let readouts = self.deployment.as_ref().map_or(0, |d| d.readouts) + 1;
        match self.opts.readout {
            ReadoutMode::Known { p } => Ok(Deployment {
                alpha: (self.coordinate)(p),
                confidence: None,
                fit_error: None,
                read_at_seq: last,
                readouts,
            }),
            ReadoutMode::Prefix => {
                self.prefix_frames.clear();
                for h in &self.window {
                    self.prefix_frames.extend_from_slice(&h.values);
                }
                let masked = self.observed_cells(last)?;
                let obs = Observation {
                    frames: &self.prefix_frames,
                    frame_len: self.shape.frame_len(),
                    t_in: self.shape.t_in,
                    mask: masked.then_some(self.mask.as_slice()),
                };
                let cfg = &self.opts.prefix_config;
                let pre = self.prescan.take().filter(|p| p.fits(obs, cfg));
                self.counters.prescanned += u64::from(pre.is_some());
                let r = read_prefix_prescanned(
                    &self.line,
                    &mut self.buffer,
                    &mut self.backend,
                    &mut self.helpers,
                    obs,
                    None,
                    cfg,
                    pre.as_ref(),
                )?;
                Ok(Deployment {
                    alpha: r.alpha,
                    confidence: Some(r.confidence),
                    fit_error: Some(r.error),
                    read_at_seq: last,
                    readouts,
                })
            }
        }
    }

    /// Whether the deployed merge fits the latest `K` frames much worse than it fitted its
    /// prefix (checked once per `K` new frames).
    fn drifted(&mut self, d: Deployment) -> Result<bool, ForecastError> {
        let (Some(fit), ReadoutMode::Prefix) = (d.fit_error, self.opts.readout) else {
            return Ok(false);
        };
        let last = self.window.back().map_or(0, |f| f.seq);
        if last.wrapping_sub(d.read_at_seq) < self.opts.prefix as u32 {
            return Ok(false);
        }
        let fl = self.shape.frame_len();
        let t_in = self.shape.t_in;
        self.prefix_frames.clear();
        for h in self.window.iter().take(t_in) {
            self.prefix_frames.extend_from_slice(&h.values);
        }
        let masked = self.observed_cells(last)?;
        let steps = self.opts.prefix - t_in;
        self.forecast_base = None; // the check overwrites the forecast
        self.backend
            .roll(&self.prefix_frames, steps, &mut self.forecast)?;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (k, h) in self.window.iter().skip(t_in).enumerate() {
            let pred = &self.forecast[k * fl..(k + 1) * fl];
            for (i, (p, o)) in pred.iter().zip(&h.values).enumerate() {
                if !masked || self.mask[i] {
                    num += (f64::from(*p) - f64::from(*o)).powi(2);
                    den += f64::from(*o).powi(2);
                }
            }
        }
        let err = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        let drifted =
            !err.is_finite() || (err > self.opts.drift_factor * fit && err > self.opts.drift_floor);
        if !drifted {
            // the check counts as a fresh look: next one after K more frames
            if let Some(dep) = self.deployment.as_mut() {
                dep.read_at_seq = last;
            }
        }
        Ok(drifted)
    }
}

impl<B: Backend> Forecaster<B> {
    /// Rolls the forecast from `prefix_frames`: its first step, handed to the lead sink if there
    /// is one and the step is inside the physical range, then the rest of the horizon from the
    /// window that step ends (the same frames as one `H`-step roll). Returns the milliseconds
    /// from `arrived` to the lead (0 when none was handed over).
    fn roll_forecast(&mut self, seq: u32, ts: u64, arrived: Instant) -> Result<f64, InferError> {
        let horizon = self.opts.horizon;
        let Some(sink) = self.lead.as_mut() else {
            return self
                .backend
                .roll(&self.prefix_frames, horizon, &mut self.forecast)
                .map(|()| 0.0);
        };
        let fl = self.shape.frame_len();
        self.backend
            .roll(&self.prefix_frames, 1, &mut self.forecast[..fl])?;
        let (first, rest) = self.forecast.split_at_mut(fl);
        if first.iter().any(|x| !x.is_finite()) {
            rest.fill(f32::NAN);
            return Ok(0.0);
        }
        let mut lead_ms = 0.0;
        if !unphysical_frame(first, &self.channel_stats, self.opts.range_std) {
            lead_ms = ms(arrived);
            sink(LeadView {
                based_on_seq: seq,
                based_on_us: ts,
                frame: first,
                alpha: self.deployment.as_ref().map_or(0.0, |d| d.alpha),
                ms: lead_ms,
            });
            self.counters.leads += 1;
        }
        if horizon > 1 {
            // the window after one step: the prefix's last T_in − 1 frames, then the step
            self.continuation.clear();
            self.continuation
                .extend_from_slice(&self.prefix_frames[fl..]);
            self.continuation.extend_from_slice(first);
            self.backend.roll(&self.continuation, horizon - 1, rest)?;
        }
        Ok(lead_ms)
    }

    /// The first step of the forecast holding a non-finite value or one beyond `range_std`
    /// training standard deviations of its channel's mean.
    fn unphysical(&self) -> Option<usize> {
        let fl = self.shape.frame_len();
        self.forecast
            .chunks(fl)
            .position(|frame| unphysical_frame(frame, &self.channel_stats, self.opts.range_std))
    }

    /// Sets `mask` to the values observed in every frame of the window after the first `T_in`
    /// (those the readout compares); `false` when all of them are whole observed fields.
    fn observed_cells(&mut self, last: u32) -> Result<bool, ForecastError> {
        let t_in = self.shape.t_in;
        let masks: Vec<&Arc<[bool]>> = self
            .window
            .iter()
            .skip(t_in)
            .filter_map(|h| h.mask.as_ref())
            .collect();
        if masks.is_empty() {
            return Ok(false);
        }
        self.mask.clear();
        self.mask.resize(self.shape.frame_len(), true);
        for m in masks {
            for (a, b) in self.mask.iter_mut().zip(m.iter()) {
                *a &= *b;
            }
        }
        if !self.mask.iter().any(|x| *x) {
            return Err(ForecastError::BadFrame {
                seq: last,
                reason: "the prefix's sparse frames share no observed cell, so no merge can be \
                         compared with them; keep the station's sensors in place"
                    .into(),
            });
        }
        Ok(true)
    }
}

/// Whether `frame` holds a non-finite value or one beyond `range_std` standard deviations of its
/// channel's mean (`stats`: per channel, mean and standard deviation).
fn unphysical_frame(frame: &[f32], stats: &[(f32, f32)], range_std: f64) -> bool {
    let k = range_std as f32;
    let cells = frame.len() / stats.len().max(1);
    frame.chunks(cells).zip(stats).any(|(ch, &(mean, std))| {
        ch.iter()
            .any(|x| !x.is_finite() || (x - mean).abs() > k * std)
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
