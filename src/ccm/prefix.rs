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
    /// the prefix (1 when the guard is off).
    pub growth: f64,
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

/// Merges `alpha` into `buffer`, rolls it through the prefix and `guard_steps` past it, and
/// scores it (unguarded: the growth limit is applied later, over all candidates).
fn candidate<R: Rollout>(
    line: &Line,
    buffer: &mut WeightSet,
    model: &mut R,
    obs: Observation<'_>,
    cfg: &PrefixConfig,
    scratch: &mut [f32],
    alpha: f64,
) -> Result<Candidate, PrefixError<R::Error>> {
    let (fl, t_in) = (obs.frame_len, obs.t_in);
    let k = obs.len();
    let prefix_steps = k - t_in;
    let steps = prefix_steps + cfg.guard_steps;
    line.merge_into(alpha as f32, buffer)?;
    model
        .rollout(buffer, &obs.frames[..t_in * fl], steps, scratch)
        .map_err(PrefixError::Rollout)?;
    let predicted = &scratch[..steps * fl];
    let observed = &obs.frames[t_in * fl..];
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (p, o)) in predicted[..prefix_steps * fl]
        .iter()
        .zip(observed)
        .enumerate()
    {
        if obs.mask.is_none_or(|m| m[i % fl]) {
            num += (*p as f64 - *o as f64).powi(2);
            den += (*o as f64).powi(2);
        }
    }
    let error = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    let norm = |f: &[f32]| f.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let non_finite = predicted.iter().any(|x| !x.is_finite()) || !error.is_finite();
    let growth = if cfg.guard_steps > 0 && !non_finite {
        let inside = predicted[..prefix_steps * fl]
            .chunks(fl)
            .map(norm)
            .fold(0.0, f64::max)
            .max(norm(&obs.frames[(t_in - 1) * fl..t_in * fl]));
        let past = predicted[prefix_steps * fl..]
            .chunks(fl)
            .map(norm)
            .fold(0.0, f64::max);
        past / inside.max(f64::MIN_POSITIVE)
    } else if non_finite {
        f64::INFINITY
    } else {
        1.0
    };
    Ok(Candidate {
        alpha,
        error: if error.is_finite() {
            error
        } else {
            f64::INFINITY
        },
        growth,
        rejected: non_finite.then_some(Rejection::NonFinite),
    })
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
    /// Largest accepted growth, once the coarse scan has set the reference.
    growth_limit: f64,
}

impl<R: Rollout> Search<'_, R> {
    fn evaluate(&mut self, alpha: f64) -> Result<Candidate, PrefixError<R::Error>> {
        if let Some(c) = self.evaluated.iter().find(|c| c.alpha == alpha) {
            return Ok(*c);
        }
        let c = candidate(
            self.line,
            self.buffer,
            self.model,
            self.obs,
            self.cfg,
            &mut self.scratch,
            alpha,
        )?;
        self.evaluated.push(c);
        Ok(c)
    }

    fn score(&self, c: &Candidate) -> f64 {
        if c.rejected.is_some() || c.growth > self.growth_limit {
            f64::INFINITY
        } else {
            c.error
        }
    }

    /// Sets the guard's limit from the trusted merges of the coarse scan: `max_growth` times
    /// their median growth (1 when the scan has none, or the guard is off).
    /// Later calls keep the limit and only mark the candidates evaluated since.
    fn set_growth_limit(&mut self) {
        if self.cfg.guard_steps == 0 {
            return;
        }
        if self.growth_limit.is_finite() {
            return self.mark_growth(self.growth_limit / self.cfg.max_growth);
        }
        let mut trusted: Vec<f64> = self
            .evaluated
            .iter()
            .filter(|c| c.alpha.abs() <= 1.0 && c.growth.is_finite())
            .map(|c| c.growth)
            .collect();
        trusted.sort_by(f64::total_cmp);
        let reference = match trusted.len() {
            0 => 1.0,
            n if n % 2 == 1 => trusted[n / 2],
            n => 0.5 * (trusted[n / 2 - 1] + trusted[n / 2]),
        };
        self.growth_limit = self.cfg.max_growth * reference;
        self.mark_growth(reference);
    }

    fn mark_growth(&mut self, reference: f64) {
        let limit = self.growth_limit;
        for c in &mut self.evaluated {
            if c.rejected.is_none() && c.growth > limit {
                c.rejected = Some(Rejection::Growth {
                    ratio: c.growth / reference,
                });
            }
        }
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
        &mut |_, _, _, _, _, _| unreachable!("no helpers"),
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
    search(
        line,
        buffer,
        model,
        helpers,
        obs,
        prior,
        cfg,
        &mut scan_shared,
    )
}

/// Evaluates `grid` with the caller's runtime and the helpers, each point once, in grid order.
type CoarseScan<'h, R> = dyn FnMut(
        &Line,
        &mut Search<'_, R>,
        &mut [Helper<R>],
        Observation<'_>,
        &PrefixConfig,
        &[f64],
    ) -> Result<(), PrefixError<<R as Rollout>::Error>>
    + 'h;

fn scan_shared<R: Rollout + Send>(
    line: &Line,
    s: &mut Search<'_, R>,
    helpers: &mut [Helper<R>],
    obs: Observation<'_>,
    cfg: &PrefixConfig,
    grid: &[f64],
) -> Result<(), PrefixError<R::Error>> {
    let workers = helpers.len() + 1;
    let scratch_len = s.scratch.len();
    let shares: Vec<Vec<Result<Candidate, PrefixError<R::Error>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = helpers
            .iter_mut()
            .enumerate()
            .map(|(h, helper)| {
                scope.spawn(move || {
                    let mut scratch = vec![0.0f32; scratch_len];
                    grid.iter()
                        .skip(h + 1)
                        .step_by(workers)
                        .map(|&a| {
                            candidate(
                                line,
                                &mut helper.buffer,
                                &mut helper.model,
                                obs,
                                cfg,
                                &mut scratch,
                                a,
                            )
                        })
                        .collect()
                })
            })
            .collect();
        let mine: Vec<_> = grid
            .iter()
            .step_by(workers)
            .map(|&a| candidate(line, s.buffer, s.model, obs, cfg, &mut s.scratch, a))
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
    for i in 0..grid.len() {
        let c = iters[i % workers]
            .next()
            .expect("one result per grid point")?;
        s.evaluated.push(c);
    }
    Ok(())
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
    let steps = obs.len() - obs.t_in + cfg.guard_steps;
    let mut s = Search {
        line,
        buffer,
        model,
        obs,
        cfg,
        scratch: vec![0.0; steps * fl],
        evaluated: Vec::new(),
        growth_limit: f64::INFINITY,
    };
    let (lo, hi) = (cfg.interval.lo, cfg.interval.hi);
    let n = cfg.coarse.max(2);
    let grid: Vec<f64> = (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect();
    if helpers.is_empty() {
        for &a in &grid {
            s.evaluate(a)?;
        }
    } else {
        scan(line, &mut s, helpers, obs, cfg, &grid)?;
    }
    s.set_growth_limit();
    let mut best = 0;
    for i in 1..n {
        if s.score(&s.evaluated[i]) < s.score(&s.evaluated[best]) {
            best = i;
        }
    }
    if s.evaluated.iter().all(|c| c.rejected.is_some()) {
        return Err(PrefixError::AllRejected { lo, hi });
    }
    // golden-section refinement in the bracket around the best coarse point
    let (mut a, mut b) = (grid[best.saturating_sub(1)], grid[(best + 1).min(n - 1)]);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (b - phi * (b - a), a + phi * (b - a));
    let score_at = |s: &mut Search<'_, R>, x: f64| -> Result<f64, PrefixError<R::Error>> {
        let c = s.evaluate(x)?;
        Ok(s.score(&c))
    };
    let (mut f1, mut f2) = (score_at(&mut s, x1)?, score_at(&mut s, x2)?);
    for _ in 0..cfg.refine {
        if f1 <= f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - phi * (b - a);
            f1 = score_at(&mut s, x1)?;
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + phi * (b - a);
            f2 = score_at(&mut s, x2)?;
        }
    }
    s.set_growth_limit(); // marks the refinement's rejections too
    let mut curve = s.evaluated;
    curve.sort_by(|x, y| x.alpha.total_cmp(&y.alpha));
    let accepted: Vec<&Candidate> = curve.iter().filter(|c| c.rejected.is_none()).collect();
    let best = accepted
        .iter()
        .min_by(|x, y| x.error.total_cmp(&y.error))
        .copied()
        .expect("at least one accepted candidate");
    let unguarded = curve
        .iter()
        .min_by(|x, y| x.error.total_cmp(&y.error))
        .expect("non-empty curve");
    let band: Vec<&&Candidate> = accepted
        .iter()
        .filter(|c| c.error <= best.error * (1.0 + cfg.confidence_band))
        .collect();
    let confidence = Interval {
        lo: band.iter().map(|c| c.alpha).fold(f64::INFINITY, f64::min),
        hi: band
            .iter()
            .map(|c| c.alpha)
            .fold(f64::NEG_INFINITY, f64::max),
    };
    let chosen = match prior {
        Some(p) => {
            let p = cfg.interval.clip(p);
            accepted
                .iter()
                .filter(|c| c.error <= best.error * (1.0 + cfg.tolerance))
                .min_by(|x, y| (x.alpha - p).abs().total_cmp(&(y.alpha - p).abs()))
                .copied()
                .unwrap_or(best)
        }
        None => best,
    };
    // the gain moves the choice along the line, but not past a rejected candidate
    let at = curve
        .iter()
        .position(|c| c.alpha == chosen.alpha)
        .expect("the choice is on the curve");
    let stable = |i: &usize| curve[*i].rejected.is_none();
    let lo = (0..=at).rev().take_while(stable).last().unwrap_or(at);
    let hi = (at..curve.len()).take_while(stable).last().unwrap_or(at);
    let alpha = (cfg.gain * chosen.alpha).clamp(curve[lo].alpha, curve[hi].alpha);
    Ok(PrefixReadout {
        alpha,
        error: chosen.error,
        raw_alpha: chosen.alpha,
        unguarded_alpha: unguarded.alpha,
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
        let mut trusted = r.curve.iter().filter(|c| c.alpha.abs() <= 1.0);
        assert!(
            trusted.clone().count() >= 9 && trusted.all(|c| c.growth > 1.5),
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
