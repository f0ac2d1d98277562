//! CCM-Prefix: reading `α` out of the first `K` observed frames, with a stability guard and an
//! optional calibrated prior.
//!
//! For each candidate `α` the merged model `θ(α)` is rolled forward from the first `T_in`
//! observed frames through the rest of the prefix, and its error against the observed frames is
//! recorded (over observed cells only, when a sensor mask is given). The search is a coarse scan
//! of the interval followed by a golden-section refinement around the best coarse point, so a
//! non-convex error curve cannot trap it at a far local minimum.
//!
//! The prefix error is a biased proxy for the long-horizon error: merges far along the line can
//! fit the first frames slightly better and then drift or blow up. Two remedies, both ours:
//! * **guard** — each candidate is rolled `guard_steps` further than the prefix; a candidate whose
//!   state becomes non-finite is rejected, and so is one whose growth past the prefix (largest
//!   norm after it over largest norm within it) exceeds `max_growth` times the growth of the
//!   trusted merges, those between the endpoints (`|α| ≤ 1`, their median). The reference is
//!   relative because the physics itself may grow: a forced flow gains energy from a weak
//!   initial field, and all merges, good ones included, follow it;
//! * **prior** — among the candidates within `tolerance` of the best prefix error (evidence that
//!   cannot tell them apart), the one closest to the calibrated prior is taken, instead of trusting
//!   either the prefix or the prior alone.
//!
//! The guard is evaluated lazily: every candidate is rolled through the prefix, but only those
//! whose stability can change the outcome are rolled on past it (the trusted merges of the coarse
//! scan, which set the reference, then candidates in order of prefix error until one passes, the
//! pairs the refinement compares, the confidence band and the span the gain moves over), from
//! the state each candidate reached at the end of the prefix. The choice is the one an eager
//! guard over every candidate gives (a unit test compares the two); the steps saved are most of
//! the guard's.
//!
//! The readout needs rollouts but stays free of any runtime: it asks for the small [`Rollout`]
//! trait, which the inference layer implements.

use serde::{Deserialize, Serialize};

use super::line::Line;
use super::readout::Interval;
use super::weights::{LayoutMismatch, WeightSet};

/// What the prefix readout needs from a runtime.
pub trait Rollout {
    /// The runtime's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Deploys `theta` and rolls forward `steps` steps from `initial` (the first `T_in` frames,
    /// oldest first), writing the predicted frames into `out` (`steps × frame_len`).
    fn rollout(
        &mut self,
        theta: &WeightSet,
        initial: &[f32],
        steps: usize,
        out: &mut [f32],
    ) -> Result<(), Self::Error>;
}

/// The observed prefix.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// `K` frames, oldest first (`K × frame_len`). Unobserved cells may hold anything finite
    /// when a mask is given; the first `T_in` frames must be complete (they start the rollout).
    pub frames: &'a [f32],
    /// Values per frame.
    pub frame_len: usize,
    /// Frames the model takes in.
    pub t_in: usize,
    /// `frame_len` flags: which cells are observed (all, when `None`).
    pub mask: Option<&'a [bool]>,
}

impl Observation<'_> {
    /// Number of frames `K`.
    pub fn len(&self) -> usize {
        self.frames.len() / self.frame_len
    }

    /// Whether the prefix holds no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Settings of the prefix readout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrefixConfig {
    /// Interval searched.
    pub interval: Interval,
    /// Points of the coarse scan (ends included).
    pub coarse: usize,
    /// Golden-section iterations after the scan.
    pub refine: usize,
    /// Steps rolled past the prefix for the guard (0 switches the guard off).
    pub guard_steps: usize,
    /// Largest allowed growth past the prefix (largest guard-frame norm over largest prefix-frame
    /// norm), relative to the median growth of the trusted merges (`|α| ≤ 1`).
    pub max_growth: f64,
    /// Relative prefix-error tolerance within which the prior decides.
    pub tolerance: f64,
    /// Relative error band that defines the reported confidence interval.
    pub confidence_band: f64,
    /// Debiasing gain: the prefix error's minimum lies closer to the centre of the line than the
    /// long-horizon best α does (the error floor of the first frames hides how far the regime
    /// is), so the chosen `α` is multiplied by this gain, fitted once on the `calib` split
    /// (`ccm-twin calibrate`), and kept inside the stable candidates around the choice.
    #[serde(default = "unit_gain")]
    pub gain: f64,
}

fn unit_gain() -> f64 {
    1.0
}

impl Default for PrefixConfig {
    fn default() -> Self {
        PrefixConfig {
            interval: Interval::DEFAULT,
            coarse: 17,
            refine: 8,
            guard_steps: 4,
            max_growth: 1.5,
            tolerance: 0.05,
            confidence_band: 0.10,
            gain: 1.0,
        }
    }
}

impl PrefixConfig {
    /// The default settings searching `interval`, with the coarse scan's spacing at 0.25 (the
    /// default's on `[−2, 2]`) and at most 33 points (spacing 0.4 on `[−6.4, 6.4]`).
    pub fn over(interval: Interval) -> Self {
        let d = PrefixConfig::default();
        let spacing = (d.interval.hi - d.interval.lo) / (d.coarse - 1) as f64;
        let points = ((interval.hi - interval.lo) / spacing).ceil() as usize + 1;
        PrefixConfig {
            interval,
            coarse: points.clamp(d.coarse, 33),
            ..d
        }
    }
}

/// Why a candidate was rejected by the guard.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Rejection {
    /// The rollout produced NaN or infinite values.
    NonFinite,
    /// The state grew past the prefix much faster than the trusted merges' state did.
    Growth {
        /// This candidate's growth over the trusted merges' median growth.
        ratio: f64,
    },
}

/// One evaluated coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Coordinate.
    pub alpha: f64,
    /// Relative L2 error on the prefix (observed cells, frames after the first `T_in`).
    pub error: f64,
    /// Growth past the prefix: the largest norm of a guard frame over the largest norm within
    /// the prefix (1 when the guard is off); `None` when the guard was not needed for it.
    pub growth: Option<f64>,
    /// Set when the guard rejected it.
    pub rejected: Option<Rejection>,
}

/// The outcome of a prefix readout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixReadout {
    /// The chosen coordinate.
    pub alpha: f64,
    /// The prefix error of the choice before the gain (`raw_alpha`).
    pub error: f64,
    /// The choice before the debiasing gain (prior and guard applied).
    pub raw_alpha: f64,
    /// The coordinate with the smallest prefix error, guard and prior ignored.
    pub unguarded_alpha: f64,
    /// Coordinates whose (accepted) prefix error is within `confidence_band` of the best:
    /// `[lo, hi]`. A narrow interval is a confident readout.
    pub confidence: Interval,
    /// Every evaluated candidate, sorted by `α`.
    pub curve: Vec<Candidate>,
    /// The prior the choice was shrunk towards, if any.
    pub prior: Option<f64>,
}

impl PrefixReadout {
    /// Whether the chosen merge extrapolates past the endpoints (`|α| > 1`).
    pub fn extrapolates(&self) -> bool {
        self.alpha.abs() > 1.0
    }
}

/// Why the readout failed.
#[derive(Debug, thiserror::Error)]
pub enum PrefixError<E: std::error::Error + 'static> {
    /// The runtime failed.
    #[error("rollout failed: {0}")]
    Rollout(#[source] E),
    /// The weight buffer does not match the line.
    #[error("weight buffer does not match the experts: {0}")]
    Layout(#[from] LayoutMismatch),
    /// The prefix is too short or malformed.
    #[error("bad prefix: {0}")]
    BadPrefix(String),
    /// Every candidate was rejected by the guard.
    #[error(
        "every candidate α in [{lo}, {hi}] went unstable past the prefix; no merge is safe to deploy"
    )]
    AllRejected {
        /// Interval searched.
        lo: f64,
        /// Interval searched.
        hi: f64,
    },
}

/// Where a candidate's rollout stood at the end of the prefix, for its guard.
#[derive(Debug, Clone)]
struct Tail {
    /// The last `T_in` frames (observed start and predicted frames together).
    frames: Vec<f32>,
    /// The largest norm within the prefix (the last observed start frame included).
    inside: f64,
}

fn norm(f: &[f32]) -> f64 {
    f.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Merges `alpha` into `buffer`, rolls it through the prefix and scores it; the guard comes later
/// ([`guard`]), from the returned tail.
fn candidate<R: Rollout>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    obs: Observation<'_>,
    scratch: &mut [f32],
    alpha: f64,
) -> Result<(Candidate, Tail), PrefixError<R::Error>> {
    let (fl, t_in) = (obs.frame_len, obs.t_in);
    let steps = obs.len() - t_in;
    line.merge_into(alpha as f32, buffer)?;
    model
        .rollout(buffer, &obs.frames[..t_in * fl], steps, scratch)
        .map_err(PrefixError::Rollout)?;
    Ok(assess(obs, &scratch[..steps * fl], alpha))
}

/// Scores the frames `predicted` for the prefix after its first `T_in` against the observed
/// ones, and keeps where they end for the guard.
fn assess(obs: Observation<'_>, predicted: &[f32], alpha: f64) -> (Candidate, Tail) {
    let (fl, t_in) = (obs.frame_len, obs.t_in);
    let observed = &obs.frames[t_in * fl..];
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (p, o)) in predicted.iter().zip(observed).enumerate() {
        if obs.mask.is_none_or(|m| m[i % fl]) {
            num += (*p as f64 - *o as f64).powi(2);
            den += (*o as f64).powi(2);
        }
    }
    let error = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    let non_finite = predicted.iter().any(|x| !x.is_finite()) || !error.is_finite();
    (
        Candidate {
            alpha,
            error: if error.is_finite() {
                error
            } else {
                f64::INFINITY
            },
            growth: non_finite.then_some(f64::INFINITY),
            rejected: non_finite.then_some(Rejection::NonFinite),
        },
        tail_of(&obs.frames[..t_in * fl], predicted, fl),
    )
}

/// Where a rollout from `initial` (`T_in` frames) that predicted `predicted` stands.
fn tail_of(initial: &[f32], predicted: &[f32], fl: usize) -> Tail {
    let (t_in, steps) = (initial.len() / fl, predicted.len() / fl);
    // the last T_in frames of initial ++ predicted
    let mut frames = Vec::with_capacity(t_in * fl);
    let from_start = t_in.saturating_sub(steps);
    frames.extend_from_slice(&initial[(t_in - from_start) * fl..]);
    frames.extend_from_slice(&predicted[(steps - (t_in - from_start)) * fl..]);
    let inside = predicted
        .chunks(fl)
        .map(norm)
        .fold(0.0, f64::max)
        .max(norm(&initial[(t_in - 1) * fl..]));
    Tail { frames, inside }
}

/// Rolls `alpha`'s merge `guard_steps` on from the end of its prefix: its growth (infinite when
/// the state turns non-finite).
#[allow(clippy::too_many_arguments)]
fn guard<R: Rollout>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    tail: &Tail,
    guard_steps: usize,
    fl: usize,
    scratch: &mut [f32],
    alpha: f64,
) -> Result<f64, PrefixError<R::Error>> {
    line.merge_into(alpha as f32, buffer)?;
    let out = &mut scratch[..guard_steps * fl];
    model
        .rollout(buffer, &tail.frames, guard_steps, out)
        .map_err(PrefixError::Rollout)?;
    if out.iter().any(|x| !x.is_finite()) {
        return Ok(f64::INFINITY);
    }
    let past = out.chunks(fl).map(norm).fold(0.0, f64::max);
    Ok(past / tail.inside.max(f64::MIN_POSITIVE))
}

/// A second runtime (with its own merge buffer, the line's layout) that takes a share of the
/// coarse scan in its own thread: [`read_prefix_parallel`].
pub struct Helper<R> {
    /// The runtime.
    pub model: R,
    /// Its merge buffer.
    pub buffer: WeightSet,
}

struct Search<'a, R: Rollout> {
    line: &'a Line,
    buffer: &'a mut WeightSet,
    model: &'a mut R,
    obs: Observation<'a>,
    cfg: &'a PrefixConfig,
    scratch: Vec<f32>,
    evaluated: Vec<Candidate>,
    /// Per candidate, where its prefix rollout ended.
    tails: Vec<Tail>,
    /// Largest accepted growth, once the coarse scan has set the reference.
    growth_limit: f64,
    /// The trusted merges' median growth (the reference of `growth_limit`).
    reference: f64,
    /// Guard every candidate as it is evaluated (the reference behaviour the lazy guard must
    /// reproduce; tests only).
    eager: bool,
}

impl<R: Rollout> Search<'_, R> {
    /// The index of `alpha`'s candidate, rolled through the prefix if it was not yet.
    fn evaluate(&mut self, alpha: f64) -> Result<usize, PrefixError<R::Error>> {
        if let Some(i) = self.evaluated.iter().position(|c| c.alpha == alpha) {
            return Ok(i);
        }
        let (c, tail) = candidate(
            self.line,
            self.buffer,
            self.model,
            self.obs,
            &mut self.scratch,
            alpha,
        )?;
        self.push(c, tail)
    }

    fn push(&mut self, c: Candidate, tail: Tail) -> Result<usize, PrefixError<R::Error>> {
        self.evaluated.push(c);
        self.tails.push(tail);
        let i = self.evaluated.len() - 1;
        if self.eager {
            self.accepted(i)?;
        }
        Ok(i)
    }

    /// Whether candidate `i` passes the guard, rolling it past the prefix if that was not
    /// needed before. Before the limit is set only its growth is measured.
    fn accepted(&mut self, i: usize) -> Result<bool, PrefixError<R::Error>> {
        if self.evaluated[i].growth.is_none() {
            let g = if self.cfg.guard_steps == 0 {
                1.0
            } else {
                let fl = self.obs.frame_len;
                guard(
                    self.line,
                    self.buffer,
                    self.model,
                    &self.tails[i],
                    self.cfg.guard_steps,
                    fl,
                    &mut self.scratch,
                    self.evaluated[i].alpha,
                )?
            };
            let c = &mut self.evaluated[i];
            c.growth = Some(g);
            if !g.is_finite() {
                c.rejected = Some(Rejection::NonFinite);
            }
        }
        let (limit, reference) = (self.growth_limit, self.reference);
        let c = &mut self.evaluated[i];
        let g = c.growth.expect("measured above");
        if c.rejected.is_none() && g > limit {
            c.rejected = Some(Rejection::Growth {
                ratio: g / reference,
            });
        }
        Ok(c.rejected.is_none())
    }

    /// Whether `i` scores no worse than `j` (a score is the prefix error, or infinity when the
    /// guard rejects the candidate), rolling past the prefix only what decides it.
    fn no_worse(&mut self, i: usize, j: usize) -> Result<bool, PrefixError<R::Error>> {
        let (ei, ej) = (self.evaluated[i].error, self.evaluated[j].error);
        Ok(if ei <= ej {
            self.accepted(i)? || !self.accepted(j)?
        } else {
            !self.accepted(j)?
        })
    }

    /// Sets the guard's limit from the trusted merges evaluated so far (the coarse scan's):
    /// `max_growth` times their median growth (1 when there are none; no limit when the guard
    /// is off), and marks the rejections among the candidates already guarded.
    fn set_growth_limit(&mut self) -> Result<(), PrefixError<R::Error>> {
        if self.cfg.guard_steps == 0 {
            return Ok(());
        }
        let trusted: Vec<usize> = (0..self.evaluated.len())
            .filter(|&i| self.evaluated[i].alpha.abs() <= 1.0)
            .collect();
        for &i in &trusted {
            self.accepted(i)?; // measures the growth (no limit yet)
        }
        let mut growths: Vec<f64> = trusted
            .iter()
            .filter_map(|&i| self.evaluated[i].growth)
            .filter(|g| g.is_finite())
            .collect();
        growths.sort_by(f64::total_cmp);
        self.reference = match growths.len() {
            0 => 1.0,
            n if n % 2 == 1 => growths[n / 2],
            n => 0.5 * (growths[n / 2 - 1] + growths[n / 2]),
        };
        self.growth_limit = self.cfg.max_growth * self.reference;
        for i in 0..self.evaluated.len() {
            if self.evaluated[i].growth.is_some() {
                self.accepted(i)?;
            }
        }
        Ok(())
    }

    /// The accepted candidate with the smallest prefix error among `among` (lowest position in
    /// it on ties), guarding in order of error until one passes.
    fn best_of(&mut self, among: &[usize]) -> Result<Option<usize>, PrefixError<R::Error>> {
        let mut order = among.to_vec();
        order.sort_by(|&a, &b| {
            let (ea, eb) = (self.evaluated[a].error, self.evaluated[b].error);
            ea.total_cmp(&eb)
        });
        for i in order {
            if self.evaluated[i].error.is_finite() && self.accepted(i)? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

/// Reads `α` out of an observed prefix. `buffer` receives the merges (it ends holding the last
/// candidate evaluated, not the choice: merge the returned `α` to deploy it).
pub fn read_prefix<R: Rollout>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    obs: Observation<'_>,
    prior: Option<f64>,
    cfg: &PrefixConfig,
) -> Result<PrefixReadout, PrefixError<R::Error>> {
    search(
        line,
        buffer,
        model,
        &mut [],
        obs,
        prior,
        cfg,
        &mut |_, _, _, _, _| unreachable!("no helpers"),
        false,
        None,
    )
}

/// [`read_prefix`] with the coarse scan shared out: `helpers` each evaluate every
/// `(helpers + 1)`-th point of the grid in a thread of their own, the caller's `model` the rest.
/// The result is the one [`read_prefix`] gives (the same candidates, merged and scored the same
/// way), in about `1/(helpers + 1)` of the coarse scan's time on as many free cores.
pub fn read_prefix_parallel<R: Rollout + Send>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    helpers: &mut [Helper<R>],
    obs: Observation<'_>,
    prior: Option<f64>,
    cfg: &PrefixConfig,
) -> Result<PrefixReadout, PrefixError<R::Error>> {
    read_prefix_prescanned(line, buffer, model, helpers, obs, prior, cfg, None)
}

/// Evaluates `grid` with the caller's runtime and the helpers, each point once, in grid order.
type CoarseScan<'h, R> = dyn FnMut(
        &Line,
        &mut Search<'_, R>,
        &mut [Helper<R>],
        Observation<'_>,
        &[f64],
    ) -> Result<(), PrefixError<<R as Rollout>::Error>>
    + 'h;

/// What [`share_grid`] runs per point: a runtime, its merge buffer, scratch space, the `α`.
type GridWork<'w, R, T> = dyn Fn(&mut WeightSet, &mut R, &mut [f32], f64) -> Result<T, PrefixError<<R as Rollout>::Error>>
    + Sync
    + 'w;

/// `work` on every point of `grid`, results in grid order: the caller's runtime takes every
/// `(helpers + 1)`-th point from the first, each helper the ones after its turn, in a thread of
/// its own.
fn share_grid<R: Rollout + Send, T: Send>(
    (buffer, model): (&mut WeightSet, &mut R),
    helpers: &mut [Helper<R>],
    grid: &[f64],
    scratch_len: usize,
    work: &GridWork<'_, R, T>,
) -> Result<Vec<T>, PrefixError<R::Error>> {
    let workers = helpers.len() + 1;
    let shares: Vec<Vec<Result<T, PrefixError<R::Error>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = helpers
            .iter_mut()
            .enumerate()
            .map(|(h, helper)| {
                scope.spawn(move || {
                    let mut scratch = vec![0.0f32; scratch_len];
                    grid.iter()
                        .skip(h + 1)
                        .step_by(workers)
                        .map(|&a| work(&mut helper.buffer, &mut helper.model, &mut scratch, a))
                        .collect()
                })
            })
            .collect();
        let mut scratch = vec![0.0f32; scratch_len];
        let mine: Vec<_> = grid
            .iter()
            .step_by(workers)
            .map(|&a| work(buffer, model, &mut scratch, a))
            .collect();
        let mut all = vec![mine];
        all.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("a readout helper panicked")),
        );
        all
    });
    let mut iters: Vec<_> = shares.into_iter().map(|v| v.into_iter()).collect();
    (0..grid.len())
        .map(|i| {
            iters[i % workers]
                .next()
                .expect("one result per grid point")
        })
        .collect()
}

fn scan_shared<R: Rollout + Send>(
    line: &Line,
    s: &mut Search<'_, R>,
    helpers: &mut [Helper<R>],
    obs: Observation<'_>,
    grid: &[f64],
) -> Result<(), PrefixError<R::Error>> {
    // the trusted merges' guards too (the set_growth_limit would roll them one by one after
    // the scan): the same growths, measured in parallel
    let guard_steps = s.cfg.guard_steps;
    let scored = share_grid(
        (&mut *s.buffer, &mut *s.model),
        helpers,
        grid,
        s.scratch.len(),
        &|buffer, model, scratch, a| {
            let (mut c, tail) = candidate(line, buffer, model, obs, scratch, a)?;
            if c.rejected.is_none() && a.abs() <= 1.0 && guard_steps > 0 {
                let fl = obs.frame_len;
                let g = guard(line, buffer, model, &tail, guard_steps, fl, scratch, a)?;
                c.growth = Some(g);
                if !g.is_finite() {
                    c.rejected = Some(Rejection::NonFinite);
                }
            }
            Ok((c, tail))
        },
    )?;
    for (c, tail) in scored {
        s.push(c, tail)?;
    }
    Ok(())
}

/// The part of a prefix readout that needs only the prefix's first `T_in` frames: the coarse
/// scan's rollouts through the prefix, and the guards of its trusted merges (`|α| ≤ 1`). A
/// candidate's prediction does not depend on the frames it is scored against, so a runtime can
/// make this as soon as a prefix starts and keep only the scoring, the refinement and the other
/// guards for when its last frame arrives ([`read_prefix_prescanned`]: the same readout).
#[derive(Debug, Clone)]
pub struct Prescan {
    initial: Vec<f32>,
    frame_len: usize,
    steps: usize,
    guard_steps: usize,
    grid: Vec<f64>,
    /// Per grid point, its predicted frames.
    predicted: Vec<Vec<f32>>,
    /// Per grid point, the growth of a trusted merge.
    growth: Vec<Option<f64>>,
}

impl Prescan {
    /// Whether it was made for this prefix (its first frames, its length) and search.
    pub fn fits(&self, obs: Observation<'_>, cfg: &PrefixConfig) -> bool {
        self.matches(obs, &coarse_grid(cfg), cfg)
    }

    fn matches(&self, obs: Observation<'_>, grid: &[f64], cfg: &PrefixConfig) -> bool {
        let fl = obs.frame_len;
        self.frame_len == fl
            && self.steps + obs.t_in == obs.len()
            && self.guard_steps == cfg.guard_steps
            && self.grid == grid
            && self.initial == obs.frames[..obs.t_in * fl]
    }
}

/// The coarse grid of `cfg`.
fn coarse_grid(cfg: &PrefixConfig) -> Vec<f64> {
    let (lo, hi) = (cfg.interval.lo, cfg.interval.hi);
    let n = cfg.coarse.max(2);
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect()
}

/// Makes the [`Prescan`] of a `prefix_len`-frame prefix that starts with `initial` (its first
/// `T_in` frames), sharing the work with `helpers` as [`read_prefix_parallel`] does.
#[allow(clippy::too_many_arguments)]
pub fn prescan<R: Rollout + Send>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    helpers: &mut [Helper<R>],
    initial: &[f32],
    frame_len: usize,
    prefix_len: usize,
    cfg: &PrefixConfig,
) -> Result<Prescan, PrefixError<R::Error>> {
    let fl = frame_len;
    if fl == 0 || initial.is_empty() || !initial.len().is_multiple_of(fl) {
        return Err(PrefixError::BadPrefix(format!(
            "{} starting values is not a whole number of {fl}-value frames",
            initial.len()
        )));
    }
    let t_in = initial.len() / fl;
    if prefix_len <= t_in {
        return Err(PrefixError::BadPrefix(format!(
            "a prefix of {prefix_len} frames, need more than T_in = {t_in}"
        )));
    }
    let steps = prefix_len - t_in;
    let grid = coarse_grid(cfg);
    let guard_steps = cfg.guard_steps;
    let rolled = share_grid(
        (buffer, model),
        helpers,
        &grid,
        steps.max(guard_steps) * fl,
        &|buffer, model, scratch, a| {
            line.merge_into(a as f32, buffer)?;
            model
                .rollout(buffer, initial, steps, scratch)
                .map_err(PrefixError::Rollout)?;
            let predicted = scratch[..steps * fl].to_vec();
            let finite = predicted.iter().all(|x| x.is_finite());
            let growth = if a.abs() <= 1.0 && guard_steps > 0 && finite {
                let tail = tail_of(initial, &predicted, fl);
                Some(guard(
                    line,
                    buffer,
                    model,
                    &tail,
                    guard_steps,
                    fl,
                    scratch,
                    a,
                )?)
            } else {
                None
            };
            Ok((predicted, growth))
        },
    )?;
    let (predicted, growth) = rolled.into_iter().unzip();
    Ok(Prescan {
        initial: initial.to_vec(),
        frame_len: fl,
        steps,
        guard_steps,
        grid,
        predicted,
        growth,
    })
}

/// [`read_prefix_parallel`] on a prefix whose coarse scan `pre` already rolled: the same
/// readout, with only the scoring, the refinement and the guards the choice needs left to do.
/// Without a `pre`, or with one made for another start, length or search, the readout does it
/// all.
#[allow(clippy::too_many_arguments)]
pub fn read_prefix_prescanned<R: Rollout + Send>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    helpers: &mut [Helper<R>],
    obs: Observation<'_>,
    prior: Option<f64>,
    cfg: &PrefixConfig,
    pre: Option<&Prescan>,
) -> Result<PrefixReadout, PrefixError<R::Error>> {
    search(
        line,
        buffer,
        model,
        helpers,
        obs,
        prior,
        cfg,
        &mut scan_shared,
        false,
        pre,
    )
}

#[allow(clippy::too_many_arguments)]
fn search<R: Rollout>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    helpers: &mut [Helper<R>],
    obs: Observation<'_>,
    prior: Option<f64>,
    cfg: &PrefixConfig,
    scan: &mut CoarseScan<'_, R>,
    eager: bool,
    pre: Option<&Prescan>,
) -> Result<PrefixReadout, PrefixError<R::Error>> {
    let fl = obs.frame_len;
    if fl == 0 || !obs.frames.len().is_multiple_of(fl) {
        return Err(PrefixError::BadPrefix(format!(
            "{} values is not a whole number of {fl}-value frames",
            obs.frames.len()
        )));
    }
    if obs.len() <= obs.t_in {
        return Err(PrefixError::BadPrefix(format!(
            "{} frames observed, need more than T_in = {}",
            obs.len(),
            obs.t_in
        )));
    }
    if obs.mask.is_some_and(|m| m.len() != fl) {
        return Err(PrefixError::BadPrefix(
            "mask length differs from the frame length".into(),
        ));
    }
    let steps = (obs.len() - obs.t_in).max(cfg.guard_steps);
    let mut s = Search {
        line,
        buffer,
        model,
        obs,
        cfg,
        scratch: vec![0.0; steps * fl],
        evaluated: Vec::new(),
        tails: Vec::new(),
        growth_limit: f64::INFINITY,
        reference: 1.0,
        eager,
    };
    let (lo, hi) = (cfg.interval.lo, cfg.interval.hi);
    let grid = coarse_grid(cfg);
    let n = grid.len();
    if let Some(pre) = pre.filter(|p| p.matches(obs, &grid, cfg)) {
        for (i, &a) in grid.iter().enumerate() {
            let (mut c, tail) = assess(obs, &pre.predicted[i], a);
            if let (None, Some(g)) = (c.rejected, pre.growth[i]) {
                c.growth = Some(g);
                if !g.is_finite() {
                    c.rejected = Some(Rejection::NonFinite);
                }
            }
            s.push(c, tail)?;
        }
    } else if helpers.is_empty() {
        for &a in &grid {
            s.evaluate(a)?;
        }
    } else {
        scan(line, &mut s, helpers, obs, &grid)?;
    }
    s.set_growth_limit()?;
    let coarse: Vec<usize> = (0..n).collect();
    let Some(best) = s.best_of(&coarse)? else {
        return Err(PrefixError::AllRejected { lo, hi });
    };
    // golden-section refinement in the bracket around the best coarse point
    let (mut a, mut b) = (grid[best.saturating_sub(1)], grid[(best + 1).min(n - 1)]);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (b - phi * (b - a), a + phi * (b - a));
    let (mut i1, mut i2) = (s.evaluate(x1)?, s.evaluate(x2)?);
    for _ in 0..cfg.refine {
        if s.no_worse(i1, i2)? {
            b = x2;
            x2 = x1;
            i2 = i1;
            x1 = b - phi * (b - a);
            i1 = s.evaluate(x1)?;
        } else {
            a = x1;
            x1 = x2;
            i1 = i2;
            x2 = a + phi * (b - a);
            i2 = s.evaluate(x2)?;
        }
    }
    // every candidate, in order of α (ties are broken towards the smaller α, as on the curve)
    let mut all: Vec<usize> = (0..s.evaluated.len()).collect();
    all.sort_by(|&x, &y| s.evaluated[x].alpha.total_cmp(&s.evaluated[y].alpha));
    let best = s.best_of(&all)?.expect("a coarse candidate was accepted");
    let best_error = s.evaluated[best].error;
    // the band and the prior's tolerance: every candidate in them is guarded
    let widest = cfg.confidence_band.max(cfg.tolerance);
    let near: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| s.evaluated[i].error <= best_error * (1.0 + widest))
        .collect();
    let mut accepted_near = Vec::new();
    for &i in &near {
        if s.accepted(i)? {
            accepted_near.push(i);
        }
    }
    let within =
        |s: &Search<'_, R>, i: usize, tol: f64| s.evaluated[i].error <= best_error * (1.0 + tol);
    let band: Vec<f64> = accepted_near
        .iter()
        .filter(|&&i| within(&s, i, cfg.confidence_band))
        .map(|&i| s.evaluated[i].alpha)
        .collect();
    let confidence = Interval {
        lo: band.iter().copied().fold(f64::INFINITY, f64::min),
        hi: band.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    };
    let chosen = match prior {
        Some(p) => {
            let p = cfg.interval.clip(p);
            accepted_near
                .iter()
                .copied()
                .filter(|&i| within(&s, i, cfg.tolerance))
                .min_by(|&x, &y| {
                    let d = |i: usize| (s.evaluated[i].alpha - p).abs();
                    d(x).total_cmp(&d(y))
                })
                .unwrap_or(best)
        }
        None => best,
    };
    let unguarded = all
        .iter()
        .map(|&i| s.evaluated[i])
        .min_by(|x, y| x.error.total_cmp(&y.error))
        .expect("non-empty curve")
        .alpha;
    // the gain moves the choice along the line, but not past a rejected candidate: walk from
    // the choice towards its target, guarding each candidate passed, up to the last stable one
    let chosen_alpha = s.evaluated[chosen].alpha;
    let target = cfg.gain * chosen_alpha;
    let order = &all;
    let at = order
        .iter()
        .position(|&i| i == chosen)
        .expect("the choice is on the curve");
    let mut bound = chosen_alpha;
    let path: Vec<usize> = if target == chosen_alpha {
        Vec::new()
    } else if target > chosen_alpha {
        order[at + 1..].to_vec()
    } else {
        order[..at].iter().rev().copied().collect()
    };
    for i in path {
        if !s.accepted(i)? {
            break;
        }
        bound = s.evaluated[i].alpha;
        if (target >= chosen_alpha && bound >= target) || (target < chosen_alpha && bound <= target)
        {
            break;
        }
    }
    let alpha = if target >= chosen_alpha {
        target.min(bound)
    } else {
        target.max(bound)
    };
    let error = s.evaluated[chosen].error;
    let mut curve = s.evaluated;
    curve.sort_by(|x, y| x.alpha.total_cmp(&y.alpha));
    Ok(PrefixReadout {
        alpha,
        error,
        raw_alpha: chosen_alpha,
        unguarded_alpha: unguarded,
        confidence,
        curve,
        prior,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scalar "model": the single weight `g` is a growth factor, `x_{k+1} = g·x_k`.
    struct Growth;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Rollout for Growth {
        type Error = Never;
        fn rollout(
            &mut self,
            theta: &WeightSet,
            initial: &[f32],
            steps: usize,
            out: &mut [f32],
        ) -> Result<(), Never> {
            let g = theta.data()[0];
            let mut x = initial[0];
            for o in out.iter_mut().take(steps) {
                x *= g;
                *o = x;
            }
            Ok(())
        }
    }

    fn line(g_low: f32, g_high: f32) -> Line {
        let w = |g: f32| WeightSet::from_tensors([("g".to_string(), vec![1], vec![g])]).unwrap();
        Line::through_endpoints(w(g_low), w(g_high)).unwrap()
    }

    /// A prefix of one-value frames, `T_in = 1`, every cell observed.
    fn scalar(frames: &[f32]) -> Observation<'_> {
        Observation {
            frames,
            frame_len: 1,
            t_in: 1,
            mask: None,
        }
    }

    fn frames(g: f64, k: usize) -> Vec<f32> {
        (0..k).map(|i| g.powi(i as i32) as f32).collect()
    }

    #[test]
    fn recovers_the_coordinate_of_a_clean_prefix() {
        // g(α) = 1.0 + 0.05·(α + 1): α = 0.6 ↔ g = 1.08; no guard needed at this growth
        let l = line(1.0, 1.1);
        let mut buf = l.buffer();
        let obs_frames = frames(1.08, 4);
        let obs = scalar(&obs_frames);
        let cfg = PrefixConfig {
            max_growth: 10.0,
            ..Default::default()
        };
        let r = read_prefix(&l, &mut buf, &mut Growth, obs, None, &cfg).unwrap();
        assert!((r.alpha - 0.6).abs() < 0.02, "{r:?}");
        assert!(r.error < 1e-3);
        assert!(r.confidence.lo <= r.alpha && r.alpha <= r.confidence.hi);
        assert!(!r.extrapolates());
        assert!(r.curve.windows(2).all(|w| w[0].alpha < w[1].alpha));
    }

    #[test]
    fn the_guard_rejects_a_diverging_merge_the_unguarded_readout_picks() {
        // g(α) = 1 + 0.12α. The noisy prefix fits best at α ≈ 1.8 (g ≈ 1.22), whose norm more
        // than doubles within four steps past the prefix; the guard keeps α where growth ≤ 1.5.
        let l = line(0.88, 1.12);
        let mut buf = l.buffer();
        let obs_frames = [1.0, 1.26, 1.5, 1.8];
        let obs = scalar(&obs_frames);
        let unguarded = PrefixConfig {
            guard_steps: 0,
            ..Default::default()
        };
        let r0 = read_prefix(&l, &mut buf, &mut Growth, obs, None, &unguarded).unwrap();
        let r1 = read_prefix(
            &l,
            &mut buf,
            &mut Growth,
            obs,
            None,
            &PrefixConfig::default(),
        )
        .unwrap();
        assert!(
            r0.alpha > 1.6,
            "unguarded picks the diverging merge: {}",
            r0.alpha
        );
        assert_eq!(
            r1.unguarded_alpha,
            r1.curve
                .iter()
                .min_by(|a, b| a.error.total_cmp(&b.error))
                .unwrap()
                .alpha
        );
        assert!(r1.unguarded_alpha > 1.6);
        let g = 1.0 + 0.12 * r1.alpha;
        assert!(
            g.powi(4) <= 1.5 + 1e-9,
            "guarded choice must be stable: α = {}",
            r1.alpha
        );
        assert!(
            r1.alpha > 0.8,
            "and still the best stable fit: α = {}",
            r1.alpha
        );
        assert!(
            r1.curve
                .iter()
                .any(|c| matches!(c.rejected, Some(Rejection::Growth { .. })))
        );
    }

    #[test]
    fn helpers_in_threads_read_what_one_runtime_reads() {
        // the guard case: rejections, a refinement and a gain all take part
        let l = line(0.88, 1.12);
        let obs_frames = [1.0, 1.26, 1.5, 1.8];
        let cfg = PrefixConfig {
            gain: 1.1,
            ..Default::default()
        };
        let mut buf = l.buffer();
        let one = read_prefix(&l, &mut buf, &mut Growth, scalar(&obs_frames), None, &cfg).unwrap();
        for helpers in 1..=3 {
            let mut pool: Vec<Helper<Growth>> = (0..helpers)
                .map(|_| Helper {
                    model: Growth,
                    buffer: l.buffer(),
                })
                .collect();
            let mut buf = l.buffer();
            let many = read_prefix_parallel(
                &l,
                &mut buf,
                &mut Growth,
                &mut pool,
                scalar(&obs_frames),
                None,
                &cfg,
            )
            .unwrap();
            assert_eq!(many.alpha, one.alpha, "{helpers} helper(s)");
            assert_eq!(many.curve, one.curve, "{helpers} helper(s)");
            assert_eq!(many.confidence, one.confidence, "{helpers} helper(s)");
        }
    }

    #[test]
    fn the_guard_follows_physics_that_grows() {
        // g(α) = 1.16 + 0.04α: every merge between the endpoints, the right one too, grows by
        // 1.5–2.1 in the four guard steps (a forced flow gaining energy). An absolute limit of
        // 1.5 would reject them all; relative to the trusted merges' growth, none is rejected
        // and the fit is found.
        let l = line(1.12, 1.2);
        let mut buf = l.buffer();
        let obs_frames = frames(1.136, 4);
        let obs = scalar(&obs_frames);
        let r = read_prefix(
            &l,
            &mut buf,
            &mut Growth,
            obs,
            None,
            &PrefixConfig::default(),
        )
        .unwrap();
        assert!((r.alpha + 0.6).abs() < 0.02, "{r:?}");
        assert!(r.curve.iter().all(|c| c.rejected.is_none()), "{r:?}");
        // the coarse scan's trusted merges (every 0.25 in [−1, 1]) set the reference
        let mut trusted = r
            .curve
            .iter()
            .filter(|c| c.alpha.abs() <= 1.0 && (4.0 * c.alpha).fract() == 0.0);
        assert!(
            trusted.clone().count() >= 9 && trusted.all(|c| c.growth.is_some_and(|g| g > 1.5)),
            "{r:?}"
        );
    }

    #[test]
    fn the_gain_scales_the_choice_but_not_past_an_unstable_merge() {
        // clean prefix at α = 0.6; a gain of 1.5 moves it to 0.9
        let l = line(1.0, 1.1);
        let mut buf = l.buffer();
        let obs_frames = frames(1.08, 4);
        let obs = scalar(&obs_frames);
        let cfg = PrefixConfig {
            max_growth: 10.0,
            gain: 1.5,
            ..Default::default()
        };
        let r = read_prefix(&l, &mut buf, &mut Growth, obs, None, &cfg).unwrap();
        assert!((r.raw_alpha - 0.6).abs() < 0.02, "{r:?}");
        assert!((r.alpha - 1.5 * r.raw_alpha).abs() < 1e-12, "{r:?}");
        // the diverging case of the guard test: a gain of 3 would land past the stable region
        let l = line(0.88, 1.12);
        let obs_frames = [1.0, 1.26, 1.5, 1.8];
        let obs = scalar(&obs_frames);
        let cfg = PrefixConfig {
            gain: 3.0,
            ..Default::default()
        };
        let r = read_prefix(&l, &mut buf, &mut Growth, obs, None, &cfg).unwrap();
        let first_rejected = r
            .curve
            .iter()
            .filter(|c| c.alpha > r.raw_alpha && c.rejected.is_some())
            .map(|c| c.alpha)
            .fold(f64::INFINITY, f64::min);
        assert!(
            3.0 * r.raw_alpha > first_rejected,
            "the gain alone would overshoot"
        );
        assert!(r.alpha >= r.raw_alpha && r.alpha < first_rejected, "{r:?}");
        assert!(
            r.curve
                .iter()
                .any(|c| c.alpha == r.alpha && c.rejected.is_none())
        );
    }

    #[test]
    fn the_prior_decides_among_indistinguishable_candidates() {
        // a flat error curve: x stays put whatever g is when the start is 0
        let l = line(0.9, 1.1);
        let mut buf = l.buffer();
        let obs_frames = [0.0, 0.0, 0.0, 0.0, 1e-30];
        let obs = scalar(&obs_frames);
        let cfg = PrefixConfig {
            guard_steps: 0,
            ..Default::default()
        };
        let r = read_prefix(&l, &mut buf, &mut Growth, obs, Some(-0.7), &cfg).unwrap();
        assert!((r.alpha - (-0.7)).abs() <= 0.25 + 1e-9, "{}", r.alpha);
        assert_eq!(r.prior, Some(-0.7));
    }

    #[test]
    fn a_mask_limits_the_error_to_observed_cells() {
        // two cells; the second is unobserved garbage
        struct Pair;
        impl Rollout for Pair {
            type Error = Never;
            fn rollout(
                &mut self,
                theta: &WeightSet,
                initial: &[f32],
                steps: usize,
                out: &mut [f32],
            ) -> Result<(), Never> {
                let g = theta.data()[0];
                let (mut x, y) = (initial[0], initial[1]);
                for k in 0..steps {
                    x *= g;
                    out[2 * k] = x;
                    out[2 * k + 1] = y;
                }
                Ok(())
            }
        }
        let l = line(1.0, 1.1);
        let mut buf = l.buffer();
        let obs_frames = [1.0, 5.0, 1.08, -40.0, 1.1664, 77.0];
        let mask = [true, false];
        let obs = Observation {
            frames: &obs_frames,
            frame_len: 2,
            t_in: 1,
            mask: Some(&mask),
        };
        let cfg = PrefixConfig {
            max_growth: 100.0,
            ..Default::default()
        };
        let r = read_prefix(&l, &mut buf, &mut Pair, obs, None, &cfg).unwrap();
        assert!((r.alpha - 0.6).abs() < 0.02, "{}", r.alpha);
    }

    /// [`Growth`] that counts the steps it rolls.
    struct Counted(usize);

    impl Rollout for Counted {
        type Error = Never;
        fn rollout(
            &mut self,
            theta: &WeightSet,
            initial: &[f32],
            steps: usize,
            out: &mut [f32],
        ) -> Result<(), Never> {
            self.0 += steps;
            Growth.rollout(theta, initial, steps, out)
        }
    }

    #[test]
    fn the_lazy_guard_chooses_what_an_eager_one_does_in_fewer_steps() {
        let cases: Vec<(Line, Vec<f32>, Option<f64>, PrefixConfig)> = vec![
            // diverging fits, with a gain that runs into them and one that does not
            (
                line(0.88, 1.12),
                vec![1.0, 1.26, 1.5, 1.8],
                None,
                PrefixConfig {
                    gain: 3.0,
                    ..Default::default()
                },
            ),
            (
                line(0.88, 1.12),
                vec![1.0, 1.26, 1.5, 1.8],
                Some(0.5),
                PrefixConfig {
                    gain: 0.8,
                    ..Default::default()
                },
            ),
            // physics that grows, a clean fit, a wide interval
            (
                line(1.12, 1.2),
                frames(1.136, 4),
                None,
                PrefixConfig::over(Interval { lo: -6.0, hi: 6.0 }),
            ),
            (
                line(1.0, 1.1),
                frames(1.08, 4),
                Some(0.0),
                PrefixConfig::default(),
            ),
            // a longer prefix and a longer guard
            (
                line(0.9, 1.1),
                frames(1.13, 6),
                None,
                PrefixConfig {
                    guard_steps: 8,
                    gain: 1.2,
                    ..Default::default()
                },
            ),
        ];
        for (k, (l, obs_frames, prior, cfg)) in cases.iter().enumerate() {
            let run = |eager: bool| {
                let mut buf = l.buffer();
                let mut model = Counted(0);
                let r = search(
                    l,
                    &mut buf,
                    &mut model,
                    &mut [],
                    scalar(obs_frames),
                    *prior,
                    cfg,
                    &mut |_, _, _, _, _| unreachable!("no helpers"),
                    eager,
                    None,
                )
                .unwrap();
                (r, model.0)
            };
            let ((lazy, lazy_steps), (eager, eager_steps)) = (run(false), run(true));
            assert_eq!(lazy.alpha, eager.alpha, "case {k}");
            assert_eq!(lazy.raw_alpha, eager.raw_alpha, "case {k}");
            assert_eq!(lazy.error, eager.error, "case {k}");
            assert_eq!(lazy.unguarded_alpha, eager.unguarded_alpha, "case {k}");
            assert_eq!(lazy.confidence, eager.confidence, "case {k}");
            assert_eq!(lazy.curve.len(), eager.curve.len(), "case {k}");
            for (a, b) in lazy.curve.iter().zip(&eager.curve) {
                assert_eq!((a.alpha, a.error), (b.alpha, b.error), "case {k}");
                if a.growth.is_some() {
                    assert_eq!(a, b, "case {k}: a guarded candidate is judged alike");
                }
            }
            assert!(
                lazy_steps < eager_steps,
                "case {k}: {lazy_steps} steps lazily, {eager_steps} eagerly"
            );
        }
    }

    #[test]
    fn a_prescanned_readout_is_the_readout() {
        let cases: Vec<(Line, Vec<f32>, PrefixConfig)> = vec![
            (
                line(0.88, 1.12),
                vec![1.0, 1.26, 1.5, 1.8],
                PrefixConfig {
                    gain: 1.1,
                    ..Default::default()
                },
            ),
            (
                line(1.12, 1.2),
                frames(1.136, 4),
                PrefixConfig::over(Interval { lo: -6.0, hi: 6.0 }),
            ),
            (line(1.0, 1.1), frames(1.08, 6), PrefixConfig::default()),
        ];
        for (k, (l, obs_frames, cfg)) in cases.iter().enumerate() {
            let obs = scalar(obs_frames);
            let mut buf = l.buffer();
            let plain = read_prefix(l, &mut buf, &mut Growth, obs, None, cfg).unwrap();
            for helpers in 0..=1 {
                let mut pool: Vec<Helper<Growth>> = (0..helpers)
                    .map(|_| Helper {
                        model: Growth,
                        buffer: l.buffer(),
                    })
                    .collect();
                // a prescan from `start` (none: the readout does it all), then the readout
                let mut read_after = |start: Option<&[f32]>| {
                    let pre = start.map(|st| {
                        prescan(
                            l,
                            &mut buf,
                            &mut Growth,
                            &mut pool,
                            st,
                            1,
                            obs_frames.len(),
                            cfg,
                        )
                        .unwrap()
                    });
                    read_prefix_prescanned(
                        l,
                        &mut buf,
                        &mut Growth,
                        &mut pool,
                        obs,
                        None,
                        cfg,
                        pre.as_ref(),
                    )
                    .unwrap()
                };
                // scored when the prefix is complete: the frames after the first were not
                // needed before
                let r = read_after(Some(&obs_frames[..1]));
                assert_eq!(r, plain, "case {k}, {helpers} helper(s)");
                // a prescan of another start is not used
                assert_eq!(read_after(Some(&[2.0])), plain, "case {k}: a stale prescan");
                assert_eq!(read_after(None), plain, "case {k}: no prescan");
            }
        }
    }

    #[test]
    fn short_prefixes_are_refused() {
        let l = line(1.0, 1.1);
        let mut buf = l.buffer();
        let obs = scalar(&[1.0]);
        let err = read_prefix(
            &l,
            &mut buf,
            &mut Growth,
            obs,
            None,
            &PrefixConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("need more than T_in = 1"), "{err}");
    }
}
