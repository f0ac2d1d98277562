//! Physics checks of the FitzHugh–Nagumo solver: conservation, heat-kernel spreading, the
//! reaction ODE, and fourth order in time.

use ccm_twin::pde::Solver;
use ccm_twin::pde::reaction_diffusion::{Coefficients, ReactionDiffusion};

fn coef(du: f64, reaction: bool) -> Coefficients {
    Coefficients {
        du,
        dv: 5e-3,
        k: 5e-3,
        reaction,
    }
}

fn bumpy(n: usize, phase: f64) -> Vec<f64> {
    (0..n * n)
        .map(|k| {
            let (i, j) = ((k % n) as f64, (k / n) as f64);
            1.0 + 0.5 * (0.4 * i + phase).sin() * (0.3 * j).cos() + 0.2 * (0.9 * i - 0.7 * j).cos()
        })
        .collect()
}

#[test]
fn without_reaction_the_total_of_u_is_conserved() {
    let n = 32;
    let (u0, v0) = (bumpy(n, 0.0), bumpy(n, 1.0));
    let mut s = ReactionDiffusion::new(n, n, 1.0, coef(2e-3, false), 0.01, &u0, &v0).unwrap();
    let m0: f64 = u0.iter().sum();
    s.advance(5.0).unwrap();
    let m1: f64 = s.u().iter().sum();
    let moved: f64 = s
        .u()
        .iter()
        .zip(&u0)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / m0;
    let drift = ((m1 - m0) / m0).abs();
    eprintln!("no reaction: field moved {moved:.3e} (relative L1), total drift {drift:.3e}");
    assert!(moved > 1e-2, "diffusion must change the field");
    assert!(drift <= 1e-10, "total of u drifted by {drift:e}");
}

#[test]
fn a_gaussian_spreads_at_the_heat_kernel_rate() {
    // Continuous: variance per axis grows as σ² + 2Dt and the peak falls as σ²/(σ² + 2Dt).
    // For the five-point Laplacian the second moment grows at exactly 2D per axis, so the
    // variance is checked tightly and the peak to the spatial discretisation error.
    let (n, half, du, t, sigma) = (128, 1.0, 2e-3, 2.0, 0.1);
    let dx = 2.0 * half / n as f64;
    let x = |i: usize| -half + (i as f64 + 0.5) * dx;
    let u0: Vec<f64> = (0..n * n)
        .map(|k| {
            let (xi, yj) = (x(k % n), x(k / n));
            (-(xi * xi + yj * yj) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let zeros = vec![0.0; n * n];
    let mut s = ReactionDiffusion::new(n, n, half, coef(du, false), 0.005, &u0, &zeros).unwrap();
    let moments = |u: &[f64]| {
        let m: f64 = u.iter().sum();
        let vx: f64 = u
            .iter()
            .enumerate()
            .map(|(k, v)| v * x(k % n).powi(2))
            .sum::<f64>()
            / m;
        let vy: f64 = u
            .iter()
            .enumerate()
            .map(|(k, v)| v * x(k / n).powi(2))
            .sum::<f64>()
            / m;
        (vx, vy)
    };
    let (vx0, vy0) = moments(&u0);
    s.advance(t).unwrap();
    let (vx, vy) = moments(s.u());
    for (v0, v1) in [(vx0, vx), (vy0, vy)] {
        let expected = v0 + 2.0 * du * t;
        let err = ((v1 - expected) / expected).abs();
        eprintln!(
            "variance {v0:.6} -> {v1:.6} (heat kernel {expected:.6}), relative error {err:.2e}"
        );
        assert!(err <= 1e-9, "variance growth off by {err:e}");
    }
    let peak = s.u().iter().copied().fold(0.0, f64::max);
    let continuous_peak = sigma * sigma / (sigma * sigma + 2.0 * du * t);
    let err = (peak - continuous_peak).abs() / continuous_peak;
    eprintln!("peak {peak:.5} vs heat kernel {continuous_peak:.5}: {err:.2e}");
    assert!(err <= 5e-3, "peak off the heat kernel by {err:e}");
}

/// The reaction ODE with a fine-step RK4 of its own.
fn reaction_ode(u: f64, v: f64, t: f64, dt: f64) -> (f64, f64) {
    let c = coef(0.0, true);
    let f = |u: f64, v: f64| c.reaction(u, v);
    let (mut u, mut v) = (u, v);
    let steps = (t / dt).round() as usize;
    for _ in 0..steps {
        let k1 = f(u, v);
        let k2 = f(u + 0.5 * dt * k1.0, v + 0.5 * dt * k1.1);
        let k3 = f(u + 0.5 * dt * k2.0, v + 0.5 * dt * k2.1);
        let k4 = f(u + dt * k3.0, v + dt * k3.1);
        u += dt / 6.0 * (k1.0 + 2.0 * k2.0 + 2.0 * k3.0 + k4.0);
        v += dt / 6.0 * (k1.1 + 2.0 * k2.1 + 2.0 * k3.1 + k4.1);
    }
    (u, v)
}

#[test]
fn a_uniform_start_follows_the_reaction_ode() {
    let n = 16;
    let (u0, v0) = (1.7, -0.4);
    let mut s = ReactionDiffusion::new(
        n,
        n,
        1.0,
        coef(1e-3, true),
        0.005,
        &vec![u0; n * n],
        &vec![v0; n * n],
    )
    .unwrap();
    s.advance(5.0).unwrap();
    let (u, v) = reaction_ode(u0, v0, 5.0, 1e-5);
    let err_u = s.u().iter().map(|x| (x - u).abs()).fold(0.0, f64::max);
    let err_v = s.v().iter().map(|x| (x - v).abs()).fold(0.0, f64::max);
    eprintln!("ODE at t = 5: u = {u:.8}, v = {v:.8}; solver errors {err_u:.2e}, {err_v:.2e}");
    assert!((u - u0).abs() > 0.1, "the reaction must move the state");
    assert!(
        err_u <= 1e-6 && err_v <= 1e-6,
        "errors {err_u:e}, {err_v:e}"
    );
}

#[test]
fn halving_the_step_shows_fourth_order() {
    let n = 32;
    let run = |dt: f64| {
        let (u0, v0) = (bumpy(n, 0.3), bumpy(n, 2.0));
        let mut s = ReactionDiffusion::new(n, n, 1.0, coef(1e-3, true), dt, &u0, &v0).unwrap();
        for _ in 0..((1.0 / dt).round() as usize) {
            s.step(dt);
        }
        [s.u().to_vec(), s.v().to_vec()].concat()
    };
    let reference = run(0.05 / 32.0);
    let err = |a: &[f64]| {
        a.iter()
            .zip(&reference)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
            / reference.iter().map(|y| y * y).sum::<f64>().sqrt()
    };
    let errs: Vec<f64> = [0.05, 0.025, 0.0125]
        .iter()
        .map(|&dt| err(&run(dt)))
        .collect();
    eprintln!("RK4 errors at dt = 0.05, 0.025, 0.0125: {errs:?}");
    for w in errs.windows(2) {
        let order = (w[0] / w[1]).log2();
        assert!(
            (3.5..4.7).contains(&order),
            "observed order {order:.2} ({errs:?})"
        );
    }
}

#[test]
fn negative_diffusivity_is_refused() {
    let z = vec![0.0; 64];
    let err = ReactionDiffusion::new(8, 8, 1.0, coef(-1e-3, true), 0.01, &z, &z)
        .err()
        .unwrap();
    assert!(err.to_string().contains("D_u = -0.001"), "{err}");
}
