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
