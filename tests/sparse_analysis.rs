//! A full state from sparse sensors on a real flood: the dam-break solver's field a frame after
//! the previous one, seen at a few random cells. The analysis (optimal interpolation, starting
//! from the previous frame as the background, the way the runtime starts from its last
//! forecast) must beat the background everywhere, and do better the more sensors there are.

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::twin::analysis::{OiConfig, analyse};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn more_sensors_give_a_better_state_and_every_analysis_beats_its_background() {
    let cfg = FamilyConfig::builtin(Family::DamBreak);
    let n = cfg.grid.n;
    let mut solver = ccm_twin::pde::new_solver(&cfg, 0.03, 21).unwrap();
    let fl = solver.frame_len();
    let channels = fl / (n * n);
    let mut background = vec![0.0; fl];
    let mut truth = vec![0.0; fl];
    solver.advance(2.0 * cfg.time.frame_dt).unwrap();
    solver.write_frame(&mut background);
    solver.advance(cfg.time.frame_dt).unwrap();
    solver.write_frame(&mut truth);
    let e_background = rel_l2(&background, &truth);

    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let oi = OiConfig {
        length_cells: 3.0,
        obs_to_background: 0.01,
        periodic: false,
        mass_balance: true,
    };
    let mut errors = Vec::new();
    for sensors in [16, 64, 256, 1024] {
        let points: Vec<(usize, usize)> = (0..sensors)
            .map(|_| (rng.random_range(0..n), rng.random_range(0..n)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let observed: Vec<f32> = (0..channels)
            .flat_map(|c| points.iter().map(move |&(r, col)| (c, r, col)))
            .map(|(c, r, col)| truth[c * n * n + r * n + col])
            .collect();
        let a = analyse(&background, channels, n, &points, &observed, &oi).unwrap();
        let e = rel_l2(&a, &truth);
        eprintln!(
            "{} sensors: analysis error {e:.4} (background {e_background:.4})",
            points.len()
        );
        errors.push(e);
    }
    assert!(e_background > 1e-3, "the flood moved: {e_background}");
    assert!(
        errors.iter().all(|e| *e < e_background),
        "{errors:?} vs {e_background}"
    );
    assert!(
        errors.windows(2).all(|w| w[1] < w[0]),
        "more sensors, smaller error: {errors:?}"
    );
    assert!(
        errors[3] < 0.5 * e_background,
        "a dense network recovers most of the change: {errors:?} vs {e_background}"
    );
}
