//! Physics checks of the Navier–Stokes solver: exact decay, inviscid invariants, order of
//! accuracy in time, and agreement with an independent numpy reference.

use std::f64::consts::PI;

use ccm_twin::pde::Solver;
use ccm_twin::pde::navier_stokes::NavierStokes;

fn grid(n: usize, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    (0..n * n)
        .map(|k| f((k % n) as f64 / n as f64, (k / n) as f64 / n as f64))
        .collect()
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// A smooth random-looking start built from a few modes (no RNG needed).
fn smooth_start(n: usize) -> Vec<f64> {
    grid(n, |x, y| {
        (2.0 * PI * x).sin() * (4.0 * PI * y).cos()
            + 0.5 * (2.0 * PI * (3.0 * x + y)).cos()
            + 0.3 * (2.0 * PI * (x - 2.0 * y)).sin()
            + 0.2 * (2.0 * PI * (4.0 * x + 3.0 * y)).sin()
    })
}

#[test]
fn taylor_green_vortex_decays_at_the_exact_rate() {
    // ψ = sin(2πmx) sin(2πmy) gives ω = 2(2πm)² ψ: the advection vanishes identically and
    // ω(t) = ω(0) exp(−2ν(2πm)² t).
    let (n, m, nu) = (32, 2.0, 0.01);
    let k = 2.0 * PI * m;
    let w0 = grid(n, |x, y| 2.0 * k * k * (k * x).sin() * (k * y).sin());
    let mut s = NavierStokes::new(n, n, nu, 0.0, 0.01, 0.5, &w0).unwrap();
    s.advance(1.0).unwrap();
    let decay = (-2.0 * nu * k * k * 1.0).exp();
    let exact: Vec<f64> = w0.iter().map(|w| w * decay).collect();
    let err = rel_l2(s.vorticity(), &exact);
    eprintln!("Taylor–Green: decay factor {decay:.3e}, relative error {err:.3e}");
    assert!(decay < 0.1, "the test must see real decay ({decay})");
    assert!(err <= 1e-6, "relative error {err:e} after one time unit");
}

#[test]
fn inviscid_unforced_flow_conserves_energy_and_enstrophy() {
    let n = 32;
    let w0 = smooth_start(n);
    let mut s = NavierStokes::new(n, n, 0.0, 0.0, 0.01, 0.5, &w0).unwrap();
    let (e0, z0) = (s.energy(), s.enstrophy());
    s.advance(1.0).unwrap();
    let moved = rel_l2(s.vorticity(), &w0);
    assert!(
        moved > 0.05,
        "the flow must actually evolve (moved {moved})"
    );
    let de = ((s.energy() - e0) / e0).abs();
    let dz = ((s.enstrophy() - z0) / z0).abs();
    eprintln!("inviscid: moved {moved:.3}, energy drift {de:.3e}, enstrophy drift {dz:.3e}");
    assert!(de <= 1e-6, "energy drifted by {de:e}");
    assert!(dz <= 1e-6, "enstrophy drifted by {dz:e}");
}

fn run_fixed_dt(dt: f64, t: f64) -> Vec<f64> {
    let n = 32;
    // cfl huge: the step is dt_max exactly
    let mut s = NavierStokes::new(n, n, 1e-3, 0.1, dt, 1e9, &smooth_start(n)).unwrap();
    s.advance(t).unwrap();
    s.vorticity().to_vec()
}

#[test]
fn halving_the_step_shows_fourth_order() {
    let t = 1.0;
    let reference = run_fixed_dt(0.1 / 32.0, t);
    let errs: Vec<f64> = [0.1, 0.05, 0.025]
        .iter()
        .map(|&dt| rel_l2(&run_fixed_dt(dt, t), &reference))
        .collect();
    eprintln!("IF-RK4 errors at dt = 0.1, 0.05, 0.025: {errs:?}");
    for w in errs.windows(2) {
        let order = (w[0] / w[1]).log2();
        assert!(
            (3.5..4.7).contains(&order),
            "observed order {order:.2} (errors {errs:?})"
        );
    }
}

#[test]
fn agrees_with_the_independent_numpy_reference() {
    // tests/reference/ns_reference.py: same equations, numpy rfft2, explicit RK4 with dt = 1e-3.
    let reference: ndarray::Array3<f64> = ndarray_npy::read_npy(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/ns_reference.npy"
    ))
    .unwrap();
    let n = 32;
    let mut s = NavierStokes::new(n, n, 1e-3, 0.1, 0.005, 0.5, &smooth_start_reference(n)).unwrap();
    let mut t = 0.0;
    for (i, &t_frame) in [0.5, 1.0, 2.0].iter().enumerate() {
        s.advance(t_frame - t).unwrap();
        t = t_frame;
        let r = reference.index_axis(ndarray::Axis(0), i);
        let err = rel_l2(s.vorticity(), r.as_slice().unwrap());
        eprintln!("numpy reference, t = {t_frame}: relative L2 {err:.3e}");
        assert!(err <= 1e-6, "frame t = {t_frame}: relative L2 {err:e}");
    }
}

fn smooth_start_reference(n: usize) -> Vec<f64> {
    grid(n, |x, y| {
        (2.0 * PI * x).sin() * (4.0 * PI * y).cos()
            + 0.5 * (2.0 * PI * (3.0 * x + y)).cos()
            + 0.3 * (2.0 * PI * (x - 2.0 * y)).sin()
    })
}

#[test]
fn stored_frames_sample_the_solver_grid() {
    let w0 = smooth_start(32);
    let s = NavierStokes::new(32, 16, 1e-3, 0.0, 0.01, 0.5, &w0).unwrap();
    let mut frame = vec![0.0f32; s.frame_len()];
    s.write_frame(&mut frame);
    for j in 0..16 {
        for i in 0..16 {
            assert_eq!(frame[j * 16 + i], w0[(2 * j) * 32 + 2 * i] as f32);
        }
    }
}

#[test]
fn negative_viscosity_is_refused() {
    let err = NavierStokes::new(16, 16, -1e-3, 0.0, 0.01, 0.5, &vec![0.0; 256])
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("viscosity must be a finite number ≥ 0"),
        "{err}"
    );
}
