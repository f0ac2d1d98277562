//! The runtime's forecasting core on the shipped dam-break experts and frames from the solver:
//! prefix → readout → forecast, nowcasts, ordering, gaps, bad frames.

use std::path::Path;

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::infer::{Backend, TractBackend};
use ccm_twin::models::FamilyModels;
use ccm_twin::twin::forecaster::{
    ForecastError, Forecaster, ForecasterOptions, Progress, ReadoutMode,
};

/// Manning n below the trained range (0.02–0.06): the runtime must extrapolate.
const P_OOD: f64 = 0.0125;

fn truth(p: f64, seed: u64) -> (FamilyConfig, Vec<f32>) {
    let cfg = FamilyConfig::builtin(Family::DamBreak);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let mut out = vec![0.0; fl * cfg.time.frames];
    ccm_twin::pde::simulate(&cfg, p, seed, &mut out).unwrap();
    (cfg, out)
}

fn setup(mode: ReadoutMode) -> (FamilyModels, Forecaster<TractBackend>) {
    let models = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let backend = TractBackend::new(models.anchor.clone()).unwrap();
    let opts = ForecasterOptions::for_bundle(&models, mode);
    let f = Forecaster::new(&models, backend, opts).unwrap();
    (models, f)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// The same reservoir (seed 21) under smooth and then rough bed friction: frames `0..K` from
/// n = 0.0125, frames `K..3K` from n = 0.1, as if the flood reached a vegetated floodplain.
fn regime_change() -> (FamilyConfig, Vec<f32>) {
    let (cfg, smooth) = truth(P_OOD, 21);
    let (_, rough) = truth(0.1, 21);
    let split = cfg.time.prefix * 3 * cfg.grid.n * cfg.grid.n;
    let frames = [&smooth[..split], &rough[split..]].concat();
    (cfg, frames)
}

/// The depth error (channel 0, relative L2) of a forecast from frame `s` of `frames`, over the
/// steps the trajectory covers.
fn depth_error(cfg: &FamilyConfig, frames: &[f32], forecast: &[f32], s: usize) -> f64 {
    let cells = cfg.grid.n * cfg.grid.n;
    let fl = 3 * cells;
    let steps = cfg.time.frames - 1 - s;
    let pick = |v: &[f32]| -> Vec<f32> {
        v.chunks(fl)
            .take(steps)
            .flat_map(|f| f[..cells].to_vec())
            .collect()
    };
    rel_l2(&pick(forecast), &pick(&frames[(s + 1) * fl..]))
}

/// A forecaster on the native runtime, and the analysis settings with the mass balance on
/// (the default) and off.
fn native_with_balance_on_off(
    models: &FamilyModels,
) -> (
    impl Fn() -> Forecaster<Box<dyn Backend + Send>> + '_,
    ccm_twin::twin::analysis::OiConfig,
    ccm_twin::twin::analysis::OiConfig,
) {
    use ccm_twin::infer::{OrtOptions, Runtime};
    let opts = ForecasterOptions::for_bundle(models, ReadoutMode::Prefix);
    let mk = move || {
        let backend = models
            .backend(Runtime::Native, &OrtOptions::default())
            .unwrap();
        Forecaster::new(models, backend, opts.clone()).unwrap()
    };
    let on = ccm_twin::twin::analysis::OiConfig::default();
    let off = ccm_twin::twin::analysis::OiConfig {
        mass_balance: false,
        ..on
    };
    (mk, on, off)
}

#[test]
fn prefix_then_forecast_beats_the_anchor_out_of_distribution() {
    let (cfg, frames) = truth(P_OOD, 11);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let (models, mut f) = setup(ReadoutMode::Prefix);
    let k = cfg.time.prefix;
    for s in 0..k - 1 {
        match f.push(s as u32, s as u64 * 500_000, &frames[s * fl..(s + 1) * fl]) {
            Ok(Progress::Filling { have, need }) => assert_eq!((have, need), (s + 1, k)),
            other => panic!("frame {s}: {other:?}"),
        }
    }
    let last = k - 1;
    let (alpha, forecast) = match f
        .push(last as u32, 0, &frames[last * fl..(last + 1) * fl])
        .unwrap()
    {
        Progress::Forecast(v) => {
            assert_eq!(v.based_on_seq, last as u32);
            assert!(v.new_readout);
            assert!(v.deployment.extrapolates(), "{:?}", v.deployment);
            assert!(v.timings.readout_ms > 0.0 && v.timings.rollout_ms > 0.0);
            (v.deployment.alpha, v.frames.to_vec())
        }
        other => panic!("{other:?}"),
    };
    // best α for this regime is near −1.4 (tests/prefix_readout.rs)
    assert!(alpha < -1.0, "α = {alpha}");
    // compare the steps the truth covers with the anchor rolled from the same frame
    let steps = cfg.time.frames - 1 - last;
    let truth = &frames[(last + 1) * fl..];
    let mut anchor = TractBackend::with_template_weights(models.anchor.clone()).unwrap();
    let mut anchor_out = vec![0.0; steps * fl];
    anchor
        .roll(&frames[last * fl..(last + 1) * fl], steps, &mut anchor_out)
        .unwrap();
    let e_ccm = rel_l2(&forecast[..steps * fl], truth);
    let e_anchor = rel_l2(&anchor_out, truth);
    assert!(
        e_ccm < 0.6 * e_anchor,
        "CCM forecast error {e_ccm:.4} vs anchor {e_anchor:.4}"
    );

    // the next frame gives a nowcast with the same α, no new readout
    match f.push(k as u32, 0, &frames[k * fl..(k + 1) * fl]).unwrap() {
        Progress::Forecast(v) => {
            assert_eq!(v.based_on_seq, k as u32);
            assert!(!v.new_readout);
            assert_eq!(v.deployment.alpha, alpha);
            assert_eq!(v.timings.readout_ms, 0.0);
        }
        other => panic!("{other:?}"),
    }
    let c = f.counters();
    assert_eq!((c.accepted, c.forecasts, c.lost), (k as u64 + 1, 2, 0));
    // the coarse scan was rolled when the first frame came, and the readout is the one made
    // from the whole prefix at once
    assert_eq!(c.prescanned, 1);
    let opts = ForecasterOptions::for_bundle(&models, ReadoutMode::Prefix);
    let line = ccm_twin::ccm::Line::through_endpoints(
        models.low.weights.clone(),
        models.high.weights.clone(),
    )
    .unwrap();
    let mut backend = TractBackend::new(models.anchor.clone()).unwrap();
    let obs = ccm_twin::ccm::prefix::Observation {
        frames: &frames[..k * fl],
        frame_len: fl,
        t_in: 1,
        mask: None,
    };
    let at_once = ccm_twin::ccm::prefix::read_prefix(
        &line,
        &mut line.buffer(),
        &mut backend,
        obs,
        None,
        &opts.prefix_config,
    )
    .unwrap();
    assert_eq!(alpha, at_once.alpha);
}

#[test]
fn frames_are_reordered_deduplicated_and_checked() {
    let (cfg, frames) = truth(0.04, 12);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let frame = |s: usize| &frames[s * fl..(s + 1) * fl];
    let (_, mut f) = setup(ReadoutMode::Known { p: 0.04 });
    assert!(matches!(
        f.push(0, 0, frame(0)),
        Ok(Progress::Filling { have: 1, .. })
    ));
    // 2 arrives before 1: held, then both go in when 1 comes
    assert!(matches!(f.push(2, 0, frame(2)), Ok(Progress::Held)));
    assert!(matches!(
        f.push(1, 0, frame(1)),
        Ok(Progress::Filling { have: 3, .. })
    ));
    // a duplicate is refused and counted
    let err = f.push(1, 0, frame(1)).unwrap_err();
    assert!(
        matches!(
            err,
            ForecastError::OutOfOrder {
                kind: "duplicate",
                ..
            }
        ),
        "{err}"
    );
    // wrong size and NaN: refused with a clear message; the forecaster goes on
    let err = f.push(3, 0, &frame(3)[..fl - 1]).unwrap_err();
    assert!(err.to_string().contains("the model takes 12288"), "{err}");
    let mut bad = frame(3).to_vec();
    bad[17] = f32::NAN;
    let err = f.push(3, 0, &bad).unwrap_err();
    assert!(err.to_string().contains("value 17 is not finite"), "{err}");
    match f.push(3, 0, frame(3)).unwrap() {
        Progress::Forecast(v) => {
            assert!(!v.new_readout || v.deployment.fit_error.is_none());
            assert!(
                v.deployment.confidence.is_none(),
                "known p: no prefix readout"
            );
        }
        other => panic!("{other:?}"),
    }
    let c = f.counters();
    assert_eq!((c.accepted, c.duplicate, c.bad, c.forecasts), (4, 1, 2, 1));
}

#[test]
fn a_gap_past_the_reorder_window_restarts_the_prefix() {
    let (cfg, frames) = truth(0.03, 13);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let frame = |s: usize| &frames[s * fl..(s + 1) * fl];
    let (_, mut f) = setup(ReadoutMode::Known { p: 0.03 });
    f.push(0, 0, frame(0)).unwrap();
    f.push(1, 0, frame(1)).unwrap();
    // frames 2..=7 never arrive; 8 is past the window of 4: 2..=7 are given up
    assert!(matches!(
        f.push(8, 0, frame(8)),
        Ok(Progress::Filling { have: 1, .. })
    ));
    let c = f.counters();
    assert_eq!((c.lost, c.restarts), (6, 1));
    // a straggler from before the gap is late now
    let err = f.push(3, 0, frame(3)).unwrap_err();
    assert!(
        matches!(err, ForecastError::OutOfOrder { kind: "late", .. }),
        "{err}"
    );
    for s in 9..12 {
        f.push(s as u32, 0, frame(s)).unwrap();
    }
    assert_eq!(
        f.counters().forecasts,
        1,
        "a forecast once K frames follow the gap"
    );
}

/// Gap policy `fill`: frames lost mid-stream are filled from the forecast made for them, the
/// window stays continuous (no restart, the next forecast comes from the first frame after the
/// gap) and no drift check compares a merge with a filled frame; a gap the forecast does not
/// cover (longer than the horizon) restarts the prefix as `restart` does.
#[test]
fn gap_policy_fill_keeps_the_window_with_forecast_frames() {
    use ccm_twin::twin::forecaster::GapPolicy;
    let (cfg, frames) = truth(0.03, 13);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let frame = |s: usize| &frames[s * fl..(s + 1) * fl];
    let models = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let mut opts = ForecasterOptions::for_bundle(&models, ReadoutMode::Known { p: 0.03 });
    opts.gap_policy = GapPolicy::Fill;
    let mut f = Forecaster::new(
        &models,
        TractBackend::new(models.anchor.clone()).unwrap(),
        opts,
    )
    .unwrap();
    for s in 0..4 {
        f.push(s as u32, s as u64 * 500_000, frame(s)).unwrap();
    }
    assert_eq!(f.counters().forecasts, 1);
    // frames 4 and 5 never arrive; 6..=8 wait in the reorder window (4 ahead of the awaited
    // frame at most), 9 gives them up
    for s in 6..9 {
        assert!(matches!(f.push(s as u32, 0, frame(s)), Ok(Progress::Held)));
    }
    match f.push(9, 0, frame(9)).unwrap() {
        Progress::Forecast(v) => assert_eq!(v.based_on_seq, 9),
        other => panic!("{other:?}"),
    }
    let c = f.counters();
    assert_eq!((c.lost, c.filled, c.restarts), (2, 2, 0), "{c:?}");
    // a gap longer than the horizon (20 frames) cannot be filled: restart
    f.push(10, 0, frame(10)).unwrap();
    for s in 40..44 {
        let _ = f.push(s as u32, 0, frame(s % 21));
    }
    let _ = f.push(45, 0, frame(3));
    let c = f.counters();
    assert_eq!((c.filled, c.restarts), (2, 1), "{c:?}");
}

#[test]
fn a_regime_change_mid_stream_is_read_again() {
    let (cfg, frames) = regime_change();
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let k = cfg.time.prefix;
    let (_, mut f) = setup(ReadoutMode::Prefix);
    let mut alphas = Vec::new();
    for s in 0..3 * k {
        let progress = f.push(s as u32, 0, &frames[s * fl..(s + 1) * fl]).unwrap();
        if let Progress::Forecast(v) = progress
            && v.new_readout
        {
            alphas.push((s, v.deployment.alpha, v.deployment.readouts));
        }
    }
    eprintln!("readouts (frame, α, count): {alphas:?}");
    assert_eq!(alphas[0].0, k - 1);
    assert!(alphas[0].1 < -1.0, "{alphas:?}");
    assert!(alphas.len() >= 2, "the drift was not noticed: {alphas:?}");
    let last = alphas.last().unwrap();
    assert!(last.1 > 0.0, "re-read towards the rough regime: {alphas:?}");
    assert_eq!(last.2 as usize, alphas.len());
}

/// A station that sees one cell in four: every frame is made whole by optimal interpolation,
/// its background first the family's mean state, then a step of the anchor from the previous
/// frame (while the prefix fills), then the forecast. Both beat the mean state; the first prefix
/// starts after the mean-state analysis; α is read at the sensors only and extrapolates; over
/// the run the forecasts beat the anchor's from the same analysed states. (The state's error,
/// about 5 % here, is most of the forecast's: the merge's gain over the anchor is far smaller
/// than with whole fields.)
#[test]
fn sparse_sensors_are_analysed_read_and_forecast() {
    use ccm_twin::twin::analysis::OiConfig;
    use ccm_twin::twin::forecaster::Background;
    let (cfg, frames) = truth(P_OOD, 11);
    let n = cfg.grid.n;
    let cells = n * n;
    let fl = 3 * cells;
    let points: Vec<(usize, usize)> = ccm_twin::twin::simulator::random_points(n, cells / 4, 5)
        .unwrap()
        .iter()
        .map(|g| (usize::from(g.row), usize::from(g.col)))
        .collect();
    let oi = OiConfig {
        length_cells: 3.0,
        obs_to_background: 0.01,
        periodic: false,
        mass_balance: true,
    };
    let (models, mut f) = setup(ReadoutMode::Prefix);
    let mut anchor = TractBackend::with_template_weights(models.anchor.clone()).unwrap();
    let k = cfg.time.prefix;
    let mut by_background: Vec<(Background, f64)> = Vec::new();
    let (mut e_ccm, mut e_anchor, mut e_anchor_truth) = (Vec::new(), Vec::new(), Vec::new());
    let mut alpha = None;
    let mut readouts = Vec::new();
    for s in 0..cfg.time.frames - 4 {
        let frame = &frames[s * fl..(s + 1) * fl];
        let observed: Vec<f32> = (0..3)
            .flat_map(|c| points.iter().map(move |&(r, col)| c * cells + r * n + col))
            .map(|i| frame[i])
            .collect();
        let progress = f
            .push_points(s as u32, s as u64 * 500_000, &points, &observed, &oi)
            .unwrap();
        let forecast = match progress {
            Progress::Forecast(v) => {
                readouts.push((s, v.new_readout, v.deployment.alpha));
                alpha = Some(v.deployment.alpha);
                Some(v.frames.to_vec())
            }
            _ => None,
        };
        if let Some(forecast) = forecast {
            // the anchor from the same analysed state, and from the true field
            let steps = cfg.time.frames - 1 - s;
            let truth = &frames[(s + 1) * fl..];
            let mut anchor_out = vec![0.0; steps * fl];
            anchor
                .roll(f.latest_state().unwrap(), steps, &mut anchor_out)
                .unwrap();
            e_anchor.push(rel_l2(&anchor_out, truth));
            anchor.roll(frame, steps, &mut anchor_out).unwrap();
            e_anchor_truth.push(rel_l2(&anchor_out, truth));
            e_ccm.push(rel_l2(&forecast[..steps * fl], truth));
        }
        let state = f.latest_state().unwrap();
        by_background.push((f.last_background().unwrap(), rel_l2(state, frame)));
    }
    eprintln!("analysis error by background: {by_background:?}");
    eprintln!(
        "forecast errors {e_ccm:?}\nanchor from the analysis {e_anchor:?}\nanchor from the true \
         field {e_anchor_truth:?}"
    );
    let kinds: Vec<Background> = by_background.iter().map(|b| b.0).collect();
    assert_eq!(kinds[0], Background::MeanState);
    // a step of the anchor until the first forecast (from frame K) covers the next frame
    assert!(
        kinds[1..=k].iter().all(|b| *b == Background::Model),
        "{kinds:?}"
    );
    assert!(
        kinds[k + 1..].iter().all(|b| *b == Background::Forecast),
        "{kinds:?}"
    );
    let mean = |kind: Background| {
        let v: Vec<f64> = by_background
            .iter()
            .filter(|b| b.0 == kind)
            .map(|b| b.1)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (e_mean, e_persist, e_fc) = (
        mean(Background::MeanState),
        mean(Background::Model),
        mean(Background::Forecast),
    );
    assert!(
        e_fc < e_mean && e_persist < e_mean,
        "analysis errors: from the forecast {e_fc:.4}, a model step {e_persist:.4}, mean state {e_mean:.4}"
    );
    let alpha = alpha.expect("a forecast");
    eprintln!("(frame, new readout, α): {readouts:?}");
    // the mean-state analysis does not start a prefix: the first readout comes a frame later
    assert_eq!(readouts[0].0, k, "{readouts:?}");
    assert!(alpha < -1.0, "α read at the sensors: {alpha}");
    assert_eq!(f.counters().analysed as usize, by_background.len());
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean_of(&e_ccm) < mean_of(&e_anchor),
        "mean forecast error {:.4} vs the anchor's {:.4} from the same analyses",
        mean_of(&e_ccm),
        mean_of(&e_anchor)
    );
}

/// A runtime whose merges blow up on demand (NaN from the second step of a roll), while the
/// family anchor runs clean: the fault a far extrapolation can cause.
struct Explosive {
    inner: TractBackend,
    anchor: Vec<f32>,
    anchor_deployed: bool,
    poison: bool,
    steps: usize,
}

impl Backend for Explosive {
    fn name(&self) -> &'static str {
        "explosive"
    }
    fn shape(&self) -> ccm_twin::infer::StepShape {
        self.inner.shape()
    }
    fn deploy(
        &mut self,
        weights: &ccm_twin::ccm::WeightSet,
    ) -> Result<(), ccm_twin::infer::InferError> {
        self.anchor_deployed = weights.data() == self.anchor.as_slice();
        self.steps = 0;
        self.inner.deploy(weights)
    }
    fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), ccm_twin::infer::InferError> {
        self.inner.step(state, out)?;
        self.steps += 1;
        if self.poison && !self.anchor_deployed && self.steps >= 2 {
            out[0] = f32::NAN;
        }
        Ok(())
    }
}

/// A merge whose rollout blows up: the forecast falls back to the anchor's from the same frame
/// and says so; with the anchor blowing up too (a physical range no forecast can meet), the
/// forecast is withheld with a clear error; and the runtime goes on serving afterwards.
#[test]
fn a_merge_that_blows_up_falls_back_to_the_anchor() {
    let (cfg, frames) = truth(P_OOD, 11);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let models = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let backend = Explosive {
        inner: TractBackend::new(models.anchor.clone()).unwrap(),
        anchor: models.anchor.weights.data().to_vec(),
        anchor_deployed: false,
        poison: true,
        steps: 0,
    };
    // a known p: no prefix readout, so the fault shows in the forecast itself
    let opts = ForecasterOptions::for_bundle(&models, ReadoutMode::Known { p: P_OOD });
    let mut f = Forecaster::new(&models, backend, opts.clone()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    f.on_lead(move |v| tx.send(v.based_on_seq).unwrap());
    let k = cfg.time.prefix;
    let mut fallback = None;
    for s in 0..k {
        if let Progress::Forecast(v) = f.push(s as u32, 0, &frames[s * fl..(s + 1) * fl]).unwrap() {
            assert!(v.frames.iter().all(|x| x.is_finite()));
            fallback = v.fallback.clone();
        }
    }
    let why = fallback.expect("the forecast fell back to the anchor");
    assert!(why.contains("blew up") && why.contains("anchor"), "{why}");
    assert_eq!((f.counters().fallbacks, f.counters().withheld), (1, 0));
    // the merge's first step was sound: it went out as the lead, which the anchor's forecast
    // supersedes
    assert_eq!(rx.try_recv().ok(), Some(k as u32 - 1));
    assert_eq!(f.counters().leads, 1);

    // the same rollout against the anchor alone, from the same frame: identical
    let mut anchor = TractBackend::with_template_weights(models.anchor.clone()).unwrap();
    let mut expected = vec![0.0; cfg.time.horizon * fl];
    anchor
        .roll(
            &frames[(k - 1) * fl..k * fl],
            cfg.time.horizon,
            &mut expected,
        )
        .unwrap();
    let mut f2 = Forecaster::new(
        &models,
        Explosive {
            inner: TractBackend::new(models.anchor.clone()).unwrap(),
            anchor: models.anchor.weights.data().to_vec(),
            anchor_deployed: false,
            poison: true,
            steps: 0,
        },
        opts.clone(),
    )
    .unwrap();
    for s in 0..k - 1 {
        f2.push(s as u32, 0, &frames[s * fl..(s + 1) * fl]).unwrap();
    }
    match f2
        .push(k as u32 - 1, 0, &frames[(k - 1) * fl..k * fl])
        .unwrap()
    {
        Progress::Forecast(v) => assert_eq!(v.frames, expected.as_slice()),
        other => panic!("{other:?}"),
    }

    // a physical range nothing meets: withheld, named, and the next frame is still taken
    let strict = ForecasterOptions {
        range_std: 1e-6,
        ..opts
    };
    let mut f3 = Forecaster::new(
        &models,
        TractBackend::new(models.anchor.clone()).unwrap(),
        strict,
    )
    .unwrap();
    for s in 0..k - 1 {
        f3.push(s as u32, 0, &frames[s * fl..(s + 1) * fl]).unwrap();
    }
    let e = f3
        .push(k as u32 - 1, 0, &frames[(k - 1) * fl..k * fl])
        .unwrap_err();
    assert!(matches!(e, ForecastError::Unstable { .. }), "{e}");
    assert_eq!(e.counter(), "forecast_withheld");
    assert!(e.to_string().contains("withheld"), "{e}");
    assert!(f3.push(k as u32, 0, &frames[k * fl..(k + 1) * fl]).is_err());
    assert_eq!(f3.counters().withheld, 2);
}

/// A tract runtime instrumented for tests: it counts the steps it takes (shared, so a lead sink
/// can read the count) and refuses one given deployment once (a session that cannot be built
/// for a moment).
struct Instrumented {
    inner: TractBackend,
    steps: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    fail_once: std::sync::Arc<std::sync::Mutex<Option<Vec<f32>>>>,
}

impl Instrumented {
    fn new(models: &FamilyModels) -> Self {
        Instrumented {
            inner: TractBackend::new(models.anchor.clone()).unwrap(),
            steps: Default::default(),
            fail_once: Default::default(),
        }
    }
}

impl Backend for Instrumented {
    fn name(&self) -> &'static str {
        "instrumented"
    }
    fn shape(&self) -> ccm_twin::infer::StepShape {
        self.inner.shape()
    }
    fn deploy(
        &mut self,
        weights: &ccm_twin::ccm::WeightSet,
    ) -> Result<(), ccm_twin::infer::InferError> {
        let mut target = self.fail_once.lock().unwrap();
        if target.as_deref() == Some(weights.data()) {
            *target = None;
            return Err(ccm_twin::infer::InferError::Runtime(
                "the session cannot be built just now".into(),
            ));
        }
        self.inner.deploy(weights)
    }
    fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), ccm_twin::infer::InferError> {
        self.steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.step(state, out)
    }
}

/// Each forecast's first step reaches the lead sink before the rest of the horizon is rolled
/// (`H − 1` steps are still to come when it does), it is the forecast's first step bit for bit,
/// and the forecasts are those of a forecaster without a sink.
#[test]
fn the_first_step_is_handed_over_before_the_rest_of_the_horizon() {
    use std::sync::atomic::Ordering;
    let (cfg, frames) = truth(P_OOD, 11);
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let (k, h) = (cfg.time.prefix, cfg.time.horizon);
    let models = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let backend = Instrumented::new(&models);
    let steps = backend.steps.clone();
    let opts = ForecasterOptions::for_bundle(&models, ReadoutMode::Known { p: P_OOD });
    let mut with = Forecaster::new(&models, backend, opts.clone()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = steps.clone();
    with.on_lead(move |v| {
        tx.send((
            v.based_on_seq,
            v.frame.to_vec(),
            v.alpha,
            seen.load(Ordering::SeqCst),
        ))
        .unwrap()
    });
    let (_, mut without) = setup(ReadoutMode::Known { p: P_OOD });
    let mut forecasts = 0;
    for s in 0..k + 3 {
        let frame = &frames[s * fl..(s + 1) * fl];
        let expected = match without.push(s as u32, 0, frame).unwrap() {
            Progress::Forecast(v) => Some(v.frames.to_vec()),
            _ => None,
        };
        let got = match with.push(s as u32, 0, frame).unwrap() {
            Progress::Forecast(v) => Some((v.frames.to_vec(), v.deployment.alpha)),
            _ => None,
        };
        let after = steps.load(Ordering::SeqCst);
        let lead = rx.try_recv().ok();
        match (expected, got, lead) {
            (None, None, None) => {}
            (Some(expected), Some((got, alpha)), Some((seq, first, lead_alpha, at))) => {
                forecasts += 1;
                assert_eq!(got, expected, "frame {s}: the forecast with a lead sink");
                assert_eq!(seq, s as u32);
                assert_eq!(first.as_slice(), &got[..fl], "frame {s}: the lead");
                assert_eq!(lead_alpha, alpha);
                assert_eq!(after - at, h - 1, "frame {s}: steps rolled after the lead");
            }
            (e, g, l) => panic!(
                "frame {s}: forecast {} / {}, lead {}",
                e.is_some(),
                g.is_some(),
                l.is_some()
            ),
        }
    }
    assert_eq!(forecasts, 4);
    assert_eq!(with.counters().leads, 4);

    // a first step outside the physical range is not handed over
    let strict = ForecasterOptions {
        range_std: 1e-6,
        ..opts
    };
    let mut f = Forecaster::new(
        &models,
        TractBackend::new(models.anchor.clone()).unwrap(),
        strict,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    f.on_lead(move |v| tx.send(v.based_on_seq).unwrap());
    for s in 0..k {
        let _ = f.push(s as u32, 0, &frames[s * fl..(s + 1) * fl]);
    }
    assert!(rx.try_recv().is_err());
    assert_eq!(f.counters().leads, 0);
}

/// The regime changes mid-stream: the frames of the drift window already drift from the
/// deployed merge before the window's last frame, so `prepare` rolls the re-read's coarse scan
/// between frames; the re-read at the window's last frame is the one a forecaster that never
/// prepares makes.
#[test]
fn a_drift_seen_early_has_its_scan_rolled_between_frames() {
    let (cfg, frames) = regime_change();
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let k = cfg.time.prefix;
    let (_, mut plain) = setup(ReadoutMode::Prefix);
    let (_, mut prepared) = setup(ReadoutMode::Prefix);
    let mut reads = (Vec::new(), Vec::new());
    let mut scans_before = Vec::new();
    for s in 0..3 * k {
        let frame = &frames[s * fl..(s + 1) * fl];
        if let Progress::Forecast(v) = plain.push(s as u32, 0, frame).unwrap()
            && v.new_readout
        {
            reads.0.push((s, v.deployment.alpha));
            eprintln!("frame {s}: readout {:.0} ms", v.timings.readout_ms);
        }
        if let Progress::Forecast(v) = prepared.push(s as u32, 0, frame).unwrap()
            && v.new_readout
        {
            reads.1.push((s, v.deployment.alpha));
            let ms = v.timings.readout_ms;
            scans_before.push(prepared.counters().early_scans);
            eprintln!("frame {s}: readout {ms:.0} ms after an early scan");
        }
        prepared.prepare().unwrap();
    }
    eprintln!(
        "re-reads (frame, α): {:?}; early scans {scans_before:?}",
        reads.1
    );
    assert!(reads.0.len() >= 2, "the drift was re-read: {:?}", reads.0);
    assert_eq!(reads.0, reads.1, "the same readouts, bit for bit");
    // the first re-read had its scan rolled ahead and used it
    assert_eq!(scans_before[1], 1, "{scans_before:?}");
    assert_eq!(prepared.counters().prescanned, 2);
}

/// A scan between frames that cannot put the deployed merge back (that deployment fails once):
/// the next forecast deploys it again first, and every forecast is the one a forecaster that
/// never prepares makes.
#[test]
fn a_failed_redeployment_after_a_scan_is_made_good_before_the_next_forecast() {
    let (cfg, frames) = regime_change();
    let fl = 3 * cfg.grid.n * cfg.grid.n;
    let k = cfg.time.prefix;
    let (models, mut plain) = setup(ReadoutMode::Prefix);
    let backend = Instrumented::new(&models);
    let fail_once = backend.fail_once.clone();
    let opts = ForecasterOptions::for_bundle(&models, ReadoutMode::Prefix);
    let mut flaky = Forecaster::new(&models, backend, opts).unwrap();
    let line = ccm_twin::ccm::Line::through_endpoints(
        models.low.weights.clone(),
        models.high.weights.clone(),
    )
    .unwrap();
    let mut merged = line.buffer();
    let (mut failed, mut forecasts) = (0, 0);
    for s in 0..3 * k {
        let frame = &frames[s * fl..(s + 1) * fl];
        let expected = match plain.push(s as u32, 0, frame).unwrap() {
            Progress::Forecast(v) => Some(v.frames.to_vec()),
            _ => None,
        };
        let got = match flaky.push(s as u32, 0, frame).unwrap() {
            Progress::Forecast(v) => Some(v.frames.to_vec()),
            _ => None,
        };
        forecasts += usize::from(got.is_some());
        assert!(got == expected, "frame {s}: the forecasts differ");
        if flaky.work_due() {
            let alpha = flaky.deployment().unwrap().alpha;
            line.merge_into(alpha as f32, &mut merged).unwrap();
            *fail_once.lock().unwrap() = Some(merged.data().to_vec());
            assert!(flaky.prepare().unwrap());
            assert!(
                fail_once.lock().unwrap().is_none(),
                "the redeployment was tried"
            );
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "one scan between frames");
    assert_eq!(forecasts, 3 * k - (k - 1));
}

/// A dam-break station that measures the depth on every cell and no momentum: the momentum
/// comes from the background (a step of the anchor while the first prefix fills, then the
/// forecast). Out of the anchor's range its momentum starts wrong, and the depth alone never
/// corrects it; the mass balance does (the depth increment is what the background's flux got
/// wrong). With it the forecasts' depth error comes within reach of a station that measures
/// every channel; without it, it does not.
#[test]
fn a_depth_only_station_gets_its_momentum_from_the_mass_balance() {
    let (cfg, frames) = truth(P_OOD, 11);
    let cells = cfg.grid.n * cfg.grid.n;
    let fl = 3 * cells;
    let models = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let (mk, on, off) = native_with_balance_on_off(&models);
    assert!(on.mass_balance, "on by default");
    let depth_error = |forecast: &[f32], s: usize| depth_error(&cfg, &frames, forecast, s);
    let (mut every, mut without, mut with) = (mk(), mk(), mk());
    // per forecaster: depth errors of the forecasts from frames K.. (the depth-only stations'
    // first prefix starts after the mean-state frame 0), momentum errors of the analysed states
    let k = cfg.time.prefix;
    let mut e = [Vec::new(), Vec::new(), Vec::new()];
    let mut q = [Vec::new(), Vec::new()];
    for s in 0..12 {
        let frame = &frames[s * fl..(s + 1) * fl];
        let ts = s as u64 * 500_000;
        if let Progress::Forecast(v) = every.push(s as u32, ts, frame).unwrap()
            && s >= k
        {
            e[0].push(depth_error(v.frames, s));
        }
        for (j, (f, oi)) in [(&mut without, &off), (&mut with, &on)]
            .into_iter()
            .enumerate()
        {
            if let Progress::Forecast(v) = f
                .push_partial(s as u32, ts, None, &[0], &frame[..cells], oi)
                .unwrap()
            {
                e[1 + j].push(depth_error(v.frames, s));
            }
            let state = f.latest_state().unwrap();
            if s > 0 {
                q[j].push(rel_l2(&state[cells..], &frame[cells..]));
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let [e_every, e_without, e_with] = e.each_ref().map(|v| mean(v));
    let [q_without, q_with] = q.each_ref().map(|v| mean(v));
    eprintln!(
        "depth error of the forecasts: every channel {e_every:.4}, depth only {e_without:.4} \
         without the balance, {e_with:.4} with it; momentum error of the analysed frames \
         {q_without:.3} without, {q_with:.3} with"
    );
    assert!(e.iter().all(|v| v.len() == 12 - k), "{e:?}");
    assert!(
        q_with < 0.5 * q_without,
        "momentum {q_with:.3} vs {q_without:.3}"
    );
    assert!(e_with < 0.5 * e_without, "{e_with:.4} vs {e_without:.4}");
    assert!(
        e_with < 1.5 * e_every,
        "{e_with:.4} vs every channel {e_every:.4}"
    );
    assert!(e_without > 2.0 * e_every, "the case the balance is for");
}

/// Depth gauges and no momentum: the mass balance is applied between the gauges only when they
/// determine the depth at every cell (`Analyser::coverage`). With one gauge in four cells it is,
/// and the forecasts are much better for it; with one in 64 it is not, and the forecasts are
/// bit for bit those without the balance (where it would turn the interpolation's bumps into
/// converging flows).
#[test]
fn depth_gauges_get_the_mass_balance_only_where_they_cover_the_grid() {
    use ccm_twin::twin::analysis::{Analyser, BALANCE_MIN_COVERAGE, OiConfig};
    let (cfg, frames) = truth(P_OOD, 11);
    let n = cfg.grid.n;
    let cells = n * n;
    let fl = 3 * cells;
    let models = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let (mk, on, off) = native_with_balance_on_off(&models);
    let run = |points: &[(usize, usize)], oi: &OiConfig| -> Vec<(usize, f64, Vec<f32>)> {
        let mut f = mk();
        let mut out = Vec::new();
        for s in 0..10 {
            let frame = &frames[s * fl..(s + 1) * fl];
            let depth: Vec<f32> = points.iter().map(|&(r, c)| frame[r * n + c]).collect();
            if let Progress::Forecast(v) = f
                .push_partial(s as u32, s as u64 * 500_000, Some(points), &[0], &depth, oi)
                .unwrap()
            {
                let e = depth_error(&cfg, &frames, v.frames, s);
                out.push((s, e, v.frames.to_vec()));
            }
        }
        out
    };
    let mean = |v: &[(usize, f64, Vec<f32>)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    let layout = |count: usize| -> Vec<(usize, usize)> {
        ccm_twin::twin::simulator::random_points(n, count, 7)
            .unwrap()
            .iter()
            .map(|g| (usize::from(g.row), usize::from(g.col)))
            .collect()
    };

    let dense = layout(cells / 4);
    let coverage = Analyser::new(3, n, &dense, &on).unwrap().coverage();
    assert!(coverage >= BALANCE_MIN_COVERAGE, "{coverage}");
    let (with, without) = (run(&dense, &on), run(&dense, &off));
    let (e_with, e_without) = (mean(&with), mean(&without));
    eprintln!(
        "{} gauges (coverage {coverage:.3}): depth error {e_with:.4} with the balance, \
         {e_without:.4} without",
        dense.len()
    );
    assert_eq!(with.len(), without.len());
    // measured: 0.151 against 0.245 on this trajectory
    assert!(e_with < 0.75 * e_without, "{e_with:.4} vs {e_without:.4}");

    let few = layout(cells / 64);
    let coverage = Analyser::new(3, n, &few, &on).unwrap().coverage();
    assert!(coverage < BALANCE_MIN_COVERAGE, "{coverage}");
    let (with, without) = (run(&few, &on), run(&few, &off));
    eprintln!(
        "{} gauges (coverage {coverage:.3}): depth error {:.4} either way",
        few.len(),
        mean(&with)
    );
    assert!(!with.is_empty());
    assert!(
        with.iter()
            .zip(&without)
            .all(|(a, b)| a.0 == b.0 && a.2 == b.2),
        "no balance below the coverage it needs"
    );
}
