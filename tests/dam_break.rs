//! Physics checks of the shallow-water solver: mass, lake at rest, Stoker and Ritter dam
//! breaks, and Manning friction decay.

use ccm_twin::config::{Family, FamilyConfig, SolverConfig, Walls};
use ccm_twin::pde::Solver;
use ccm_twin::pde::dam_break::{Params, ShallowWater, exact};

const G: f64 = 9.81;

fn params(nx: usize, ny: usize, dx: f64, manning: f64, walls: Walls) -> Params {
    Params {
        nx,
        ny,
        dx,
        dy: dx,
        g: G,
        manning,
        cfl: 0.4,
        h_dry: 1e-8,
        walls,
    }
}

#[test]
fn mass_is_conserved_with_closed_walls_wet_and_dry() {
    for h_out in [0.1, 0.0] {
        let mut cfg = FamilyConfig::builtin(Family::DamBreak);
        cfg.grid.n = 32;
        let SolverConfig::DamBreak(c) = &mut cfg.solver else {
            unreachable!()
        };
        c.walls = Walls::Closed;
        c.h_out = h_out;
        c.bed_slope = [0.01, -0.005];
        let mut s = ShallowWater::from_config(c, 32, 32, 0.03, 11).unwrap();
        let v0 = s.volume();
        let mut min_depth = f64::INFINITY;
        for _ in 0..10 {
            // 20 s: the flood reaches and reflects off the walls
            s.advance(2.0).unwrap();
            min_depth = min_depth.min(s.depth().into_iter().fold(f64::INFINITY, f64::min));
        }
        let drift = ((s.volume() - v0) / v0).abs();
        eprintln!(
            "h_out = {h_out}: {} steps, volume drift {drift:.2e}, min depth {min_depth:.2e}",
            s.steps()
        );
        assert!(drift <= 1e-10, "volume drifted by {drift:e}");
        assert!(min_depth >= 0.0, "negative depth {min_depth}");
    }
}

#[test]
fn a_lake_at_rest_over_an_uneven_bed_stays_at_rest() {
    // Bed with a submerged mound and an island that sticks out of the water (a wet–dry edge).
    let (n, dx) = (40, 0.25);
    let level = 1.0;
    let mut bed = vec![0.0; n * n];
    let mut h = vec![0.0; n * n];
    for j in 0..n {
        for i in 0..n {
            let (x, y) = ((i as f64 + 0.5) * dx, (j as f64 + 0.5) * dx);
            let mound = 0.6 * (-((x - 3.0).powi(2) + (y - 6.0).powi(2)) / 2.0).exp();
            let island = 1.5 * (-((x - 7.0).powi(2) + (y - 4.0).powi(2)) / 1.5).exp();
            let b = mound + island + 0.05 * (1.3 * x).sin() * (0.7 * y).cos();
            bed[j * n + i] = b;
            h[j * n + i] = (level - b).max(0.0);
        }
    }
    assert!(h.contains(&0.0), "the island must be dry");
    let zeros = vec![0.0; n * n];
    for walls in [Walls::Closed, Walls::Open] {
        let mut s =
            ShallowWater::new(params(n, n, dx, 0.03, walls), n, &h, &zeros, &zeros, &bed).unwrap();
        s.advance(10.0).unwrap();
        let (hh, hu, hv) = (s.depth(), s.momentum_x(), s.momentum_y());
        let max_momentum = hu.iter().chain(&hv).map(|x| x.abs()).fold(0.0, f64::max);
        let max_level_err = hh
            .iter()
            .zip(&bed)
            .filter(|(d, _)| **d > 0.0)
            .map(|(d, b)| (d + b - level).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{walls:?}: {} steps, max |hu|,|hv| = {max_momentum:.2e}, max |η − 1| = {max_level_err:.2e}",
            s.steps()
        );
        assert!(s.steps() > 100);
        assert!(
            max_momentum <= 1e-12,
            "lake started moving: {max_momentum:e}"
        );
        assert!(max_level_err <= 1e-12, "surface moved: {max_level_err:e}");
    }
}

/// L1 error (per unit length) of the depth against the exact 1-D dam break at time `t`.
fn dam_break_l1(nx: usize, hl: f64, hr: f64, t: f64) -> (f64, f64) {
    let (len, ny) = (40.0, 2);
    let dx = len / nx as f64;
    let x = |i: usize| -0.5 * len + (i as f64 + 0.5) * dx;
    let mut h = vec![0.0; nx * ny];
    for j in 0..ny {
        for i in 0..nx {
            h[j * nx + i] = if x(i) < 0.0 { hl } else { hr };
        }
    }
    let zeros = vec![0.0; nx * ny];
    let mut s = ShallowWater::new(
        params(nx, ny, dx, 0.0, Walls::Open),
        1,
        &h,
        &zeros,
        &zeros,
        &zeros,
    )
    .unwrap();
    let mut min_depth = f64::INFINITY;
    let steps = 10;
    for _ in 0..steps {
        s.advance(t / steps as f64).unwrap();
        min_depth = min_depth.min(s.depth().into_iter().fold(f64::INFINITY, f64::min));
    }
    let depth = s.depth();
    let err: f64 = (0..nx)
        .map(|i| (depth[i] - exact::dam_break(hl, hr, G, x(i) / t).0).abs() * dx)
        .sum();
    (err / len, min_depth)
}

#[test]
fn wet_bed_dam_break_converges_to_stoker() {
    let (hl, hr, t) = (2.0, 0.5, 2.0);
    let hm = exact::stoker_plateau(hl, hr, G);
    assert!(hm > hr && hm < hl);
    let errs: Vec<f64> = [100, 200, 400]
        .iter()
        .map(|&nx| dam_break_l1(nx, hl, hr, t).0)
        .collect();
    eprintln!("Stoker (plateau {hm:.4} m) L1 errors at 100/200/400 cells: {errs:?}");
    assert!(
        errs[1] < 0.75 * errs[0] && errs[2] < 0.75 * errs[1],
        "{errs:?}"
    );
    assert!(errs[2] < 5e-3, "{errs:?}");
}

#[test]
fn dry_bed_dam_break_converges_to_ritter_and_stays_non_negative() {
    let (hl, t) = (1.0, 2.0);
    let runs: Vec<(f64, f64)> = [100, 200, 400]
        .iter()
        .map(|&nx| dam_break_l1(nx, hl, 0.0, t))
        .collect();
    eprintln!("Ritter L1 errors / min depths at 100/200/400 cells: {runs:?}");
    for (_, min_depth) in &runs {
        assert!(*min_depth >= 0.0, "negative depth {min_depth}");
    }
    assert!(
        runs[1].0 < 0.8 * runs[0].0 && runs[2].0 < 0.8 * runs[1].0,
        "{runs:?}"
    );
}

#[test]
fn uniform_flow_decays_under_manning_friction_exactly() {
    // du/dt = −g n² u² / h^(4/3): 1/u − 1/u₀ = g n² t / h^(4/3).
    let (n, h0, u0, manning, t) = (8, 0.5, 1.5, 0.05, 20.0);
    let h = vec![h0; n * n];
    let hu = vec![h0 * u0; n * n];
    let zeros = vec![0.0; n * n];
    let mut s = ShallowWater::new(
        params(n, n, 1.0, manning, Walls::Open),
        n,
        &h,
        &hu,
        &zeros,
        &zeros,
    )
    .unwrap();
    s.advance(t).unwrap();
    let u_exact = 1.0 / (1.0 / u0 + G * manning * manning * t / h0.powf(4.0 / 3.0));
    let u = s.momentum_x()[n * n / 2 + 3] / s.depth()[n * n / 2 + 3];
    let err = ((u - u_exact) / u_exact).abs();
    eprintln!(
        "friction: u(t) = {u:.10} vs exact {u_exact:.10} ({} steps), relative error {err:.2e}",
        s.steps()
    );
    assert!(u_exact < 0.5 * u0, "friction must matter in this test");
    assert!(err <= 1e-10, "relative error {err:e}");
}

#[test]
fn frames_hold_depth_and_momenta_block_averaged() {
    let cfg = FamilyConfig::builtin(Family::DamBreak);
    let SolverConfig::DamBreak(c) = &cfg.solver else {
        unreachable!()
    };
    let s = ShallowWater::from_config(c, 16, 32, 0.03, 5).unwrap();
    let mut frame = vec![0.0f32; s.frame_len()];
    s.write_frame(&mut frame);
    let fine_total: f64 = s.depth().iter().sum::<f64>() / 4.0;
    let coarse_total: f64 = frame[..256].iter().map(|&x| x as f64).sum();
    assert!((fine_total - coarse_total).abs() < 1e-4 * fine_total);
    assert!(frame[256..].iter().all(|&x| x == 0.0), "starts at rest");
}

#[test]
fn negative_friction_is_refused() {
    let z = vec![0.0; 16];
    let err = ShallowWater::new(params(4, 4, 1.0, -0.1, Walls::Open), 4, &z, &z, &z, &z)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("Manning's n must be a finite number ≥ 0"),
        "{err}"
    );
}
