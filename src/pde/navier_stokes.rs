//! 2-D incompressible Navier–Stokes in vorticity form on the unit torus.
//!
//! `ω_t + u·∇ω = ν Δω + f`, `u = (ψ_y, −ψ_x)`, `−Δψ = ω`, with the forcing
//! `f = A (sin 2π(x+y) + cos 2π(x+y))`.
//!
//! Pseudo-spectral in space with the 2/3 rule: the advection product is formed on the grid and
//! every mode beyond `n/3` on either axis is dropped, which makes the semi-discrete system a
//! Galerkin truncation that conserves energy and enstrophy when `ν = 0`, `f = 0`. In time, the
//! viscous term is integrated exactly with an integrating factor and the rest with classical RK4
//! (Lawson's IF-RK4): unconditionally stable in `ν`, fourth order, and exact for the linear decay
//! of a Taylor–Green vortex. The step is the smaller of `dt_max` and the advective CFL limit.
//! Two real fields share one complex inverse FFT (`u + iv`, `ω_x + iω_y`), so one right-hand side
//! costs three FFTs.

use num_complex::Complex64 as C;

use super::random_field;
use super::spectral::{Fft2, wavenumber};
use super::{SolveError, Solver};
use crate::config::NavierStokesConfig;

const FAMILY: &str = "navier_stokes";

struct Operators {
    kx: Vec<f64>,
    ky: Vec<f64>,
    k2: Vec<f64>,
    /// 1/|k|² (0 at k = 0): ψ̂ = ω̂ / |k|².
    inv_k2: Vec<f64>,
    /// 1 for kept modes, 0 for modes removed by the 2/3 rule.
    mask: Vec<f64>,
    forcing: Vec<C>,
}

struct Scratch {
    fft: Fft2,
    z1: Vec<C>,
    z2: Vec<C>,
}

/// Navier–Stokes solver state.
pub struct NavierStokes {
    n: usize,
    store_n: usize,
    nu: f64,
    dt_max: f64,
    cfl: f64,
    ops: Operators,
    scratch: Scratch,
    w: Vec<C>,
    a: Vec<C>,
    b: Vec<C>,
    c: Vec<C>,
    d: Vec<C>,
    stage: Vec<C>,
    e_full: Vec<f64>,
    e_half: Vec<f64>,
    cached_dt: f64,
    omega: Vec<f64>,
    t: f64,
    steps: u64,
}

impl NavierStokes {
    /// A solver on an `n × n` grid from the physical initial vorticity `omega0` (`n²` values),
    /// storing frames on `store_n × store_n` (`n` a multiple of `store_n`).
    pub fn new(
        n: usize,
        store_n: usize,
        nu: f64,
        forcing_amplitude: f64,
        dt_max: f64,
        cfl: f64,
        omega0: &[f64],
    ) -> Result<Self, SolveError> {
        if !(nu.is_finite() && nu >= 0.0) {
            return Err(SolveError::BadParameter {
                family: FAMILY,
                name: "nu",
                value: nu,
                reason: "the viscosity must be a finite number ≥ 0",
            });
        }
        assert!(n >= 4 && n.is_multiple_of(2), "grid must be even");
        assert!(
            store_n > 0 && n.is_multiple_of(store_n),
            "store grid must divide the solve grid"
        );
        assert_eq!(omega0.len(), n * n, "initial vorticity size");
        let two_pi = 2.0 * std::f64::consts::PI;
        let cut = (n / 3) as i64;
        let len = n * n;
        let mut ops = Operators {
            kx: vec![0.0; len],
            ky: vec![0.0; len],
            k2: vec![0.0; len],
            inv_k2: vec![0.0; len],
            mask: vec![0.0; len],
            forcing: vec![C::default(); len],
        };
        for iy in 0..n {
            let my = wavenumber(iy, n);
            for ix in 0..n {
                let mx = wavenumber(ix, n);
                let i = iy * n + ix;
                ops.kx[i] = two_pi * mx as f64;
                ops.ky[i] = two_pi * my as f64;
                ops.k2[i] = ops.kx[i].powi(2) + ops.ky[i].powi(2);
                ops.inv_k2[i] = if i == 0 { 0.0 } else { 1.0 / ops.k2[i] };
                ops.mask[i] = if mx.abs() <= cut && my.abs() <= cut {
                    1.0
                } else {
                    0.0
                };
            }
        }
        let mut fft = Fft2::new(n);
        for iy in 0..n {
            for ix in 0..n {
                let s = two_pi * (ix as f64 + iy as f64) / n as f64;
                ops.forcing[iy * n + ix] = C::new(forcing_amplitude * (s.sin() + s.cos()), 0.0);
            }
        }
        fft.forward(&mut ops.forcing);
        let mut w: Vec<C> = omega0.iter().map(|&x| C::new(x, 0.0)).collect();
        fft.forward(&mut w);
        for (z, m) in w.iter_mut().zip(&ops.mask) {
            *z *= m;
        }
        let zeros = vec![C::default(); len];
        let mut solver = NavierStokes {
            n,
            store_n,
            nu,
            dt_max,
            cfl,
            ops,
            scratch: Scratch {
                fft,
                z1: zeros.clone(),
                z2: zeros.clone(),
            },
            w,
            a: zeros.clone(),
            b: zeros.clone(),
            c: zeros.clone(),
            d: zeros.clone(),
            stage: zeros,
            e_full: vec![1.0; len],
            e_half: vec![1.0; len],
            cached_dt: f64::NAN,
            omega: vec![0.0; len],
            t: 0.0,
            steps: 0,
        };
        solver.refresh_physical();
        Ok(solver)
    }

    /// The family's solver at viscosity `nu` with the Gaussian-random-field start of `seed`.
    pub fn from_config(
        c: &NavierStokesConfig,
        store_n: usize,
        solve_n: usize,
        nu: f64,
        seed: u64,
    ) -> Result<Self, SolveError> {
        if !(nu > 0.0 && nu.is_finite()) {
            return Err(SolveError::BadParameter {
                family: FAMILY,
                name: "nu",
                value: nu,
                reason: "the family's viscosity must be a positive number",
            });
        }
        // The random field is drawn on the stored grid and zero-padded in Fourier space to the
        // solver's, so a seed gives the same initial condition at every solver resolution.
        let mut rng = random_field::rng(seed);
        let coarse = random_field::periodic_grf_spectrum(
            &mut rng,
            &mut Fft2::new(store_n),
            c.init_alpha,
            c.init_tau,
            c.init_sigma,
        );
        let mut spec = vec![C::default(); solve_n * solve_n];
        let scale = (solve_n * solve_n) as f64 / (store_n * store_n) as f64;
        for iy in 0..store_n {
            let my = wavenumber(iy, store_n).rem_euclid(solve_n as i64) as usize;
            for ix in 0..store_n {
                let mx = wavenumber(ix, store_n).rem_euclid(solve_n as i64) as usize;
                spec[my * solve_n + mx] = coarse[iy * store_n + ix] * scale;
            }
        }
        Fft2::new(solve_n).inverse(&mut spec);
        let omega0: Vec<f64> = spec.iter().map(|z| z.re).collect();
        Self::new(
            solve_n,
            store_n,
            nu,
            c.forcing_amplitude,
            c.dt_max,
            c.cfl,
            &omega0,
        )
    }

    /// Physical vorticity on the solver grid.
    pub fn vorticity(&self) -> &[f64] {
        &self.omega
    }

    /// Kinetic energy `½⟨|u|²⟩` (mean over the torus).
    pub fn energy(&self) -> f64 {
        let n4 = (self.n * self.n) as f64 * (self.n * self.n) as f64;
        0.5 * self
            .w
            .iter()
            .zip(&self.ops.inv_k2)
            .map(|(z, ik)| z.norm_sqr() * ik)
            .sum::<f64>()
            / n4
    }

    /// Enstrophy `½⟨ω²⟩`.
    pub fn enstrophy(&self) -> f64 {
        let n4 = (self.n * self.n) as f64 * (self.n * self.n) as f64;
        0.5 * self.w.iter().map(|z| z.norm_sqr()).sum::<f64>() / n4
    }

    /// Internal steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn refresh_physical(&mut self) {
        let z = &mut self.scratch.z1;
        z.copy_from_slice(&self.w);
        self.scratch.fft.inverse(z);
        for (o, v) in self.omega.iter_mut().zip(z.iter()) {
            *o = v.re;
        }
    }

    fn set_dt(&mut self, dt: f64) {
        if dt == self.cached_dt {
            return;
        }
        for ((ef, eh), k2) in self
            .e_full
            .iter_mut()
            .zip(&mut self.e_half)
            .zip(&self.ops.k2)
        {
            *ef = (-self.nu * k2 * dt).exp();
            *eh = (-self.nu * k2 * dt * 0.5).exp();
        }
        self.cached_dt = dt;
    }

    /// One IF-RK4 step of at most `dt_cap`; returns the step taken.
    fn step(&mut self, dt_cap: f64) -> Result<f64, SolveError> {
        let umax = rhs(&self.ops, &mut self.scratch, &self.w, &mut self.a);
        if !umax.is_finite() {
            return Err(SolveError::NonFinite {
                family: FAMILY,
                time: self.t,
                what: "velocity",
            });
        }
        let dx = 1.0 / self.n as f64;
        let mut dt = dt_cap.min(self.dt_max);
        if umax > 0.0 {
            dt = dt.min(self.cfl * dx / umax);
        }
        if dt < 1e-9 * self.dt_max {
            return Err(SolveError::StepCollapsed {
                family: FAMILY,
                time: self.t,
                dt,
            });
        }
        self.set_dt(dt);
        let (ef, eh) = (&self.e_full, &self.e_half);
        for i in 0..self.w.len() {
            self.stage[i] = eh[i] * (self.w[i] + 0.5 * dt * self.a[i]);
        }
        rhs(&self.ops, &mut self.scratch, &self.stage, &mut self.b);
        for i in 0..self.w.len() {
            self.stage[i] = eh[i] * self.w[i] + 0.5 * dt * self.b[i];
        }
        rhs(&self.ops, &mut self.scratch, &self.stage, &mut self.c);
        for i in 0..self.w.len() {
            self.stage[i] = ef[i] * self.w[i] + dt * eh[i] * self.c[i];
        }
        rhs(&self.ops, &mut self.scratch, &self.stage, &mut self.d);
        for i in 0..self.w.len() {
            self.w[i] = ef[i] * self.w[i]
                + dt / 6.0
                    * (ef[i] * self.a[i] + 2.0 * eh[i] * (self.b[i] + self.c[i]) + self.d[i]);
        }
        self.t += dt;
        self.steps += 1;
        Ok(dt)
    }
}

/// The non-viscous right-hand side `−u·∇ω + f` in spectral space (dealiased); returns
/// `max(|u| + |v|)` on the grid.
fn rhs(ops: &Operators, s: &mut Scratch, w: &[C], out: &mut [C]) -> f64 {
    let i = C::i();
    for k in 0..w.len() {
        let psi = w[k] * ops.inv_k2[k];
        // û = i k_y ψ̂, v̂ = −i k_x ψ̂: z1 = û + i v̂ = i k_y ψ̂ + k_x ψ̂.
        s.z1[k] = i * ops.ky[k] * psi + ops.kx[k] * psi;
        // ω̂_x = i k_x ω̂, ω̂_y = i k_y ω̂: z2 = ω̂_x + i ω̂_y = i k_x ω̂ − k_y ω̂.
        s.z2[k] = i * ops.kx[k] * w[k] - ops.ky[k] * w[k];
    }
    s.fft.inverse(&mut s.z1);
    s.fft.inverse(&mut s.z2);
    let mut umax = 0.0f64;
    let mut finite = true;
    for k in 0..w.len() {
        let (u, v) = (s.z1[k].re, s.z1[k].im);
        let (wx, wy) = (s.z2[k].re, s.z2[k].im);
        let speed = u.abs() + v.abs();
        finite &= speed.is_finite();
        umax = umax.max(speed);
        out[k] = C::new(-(u * wx + v * wy), 0.0);
    }
    s.fft.forward(out);
    for k in 0..w.len() {
        out[k] = out[k] * ops.mask[k] + ops.forcing[k];
    }
    if finite { umax } else { f64::NAN }
}

impl Solver for NavierStokes {
    fn channels(&self) -> usize {
        1
    }
    fn frame_n(&self) -> usize {
        self.store_n
    }
    fn time(&self) -> f64 {
        self.t
    }
    fn advance(&mut self, duration: f64) -> Result<(), SolveError> {
        let t_end = self.t + duration;
        while t_end - self.t > 1e-12 * duration.max(1.0) {
            self.step(t_end - self.t)?;
        }
        self.t = t_end;
        self.refresh_physical();
        if self.omega.iter().any(|x| !x.is_finite()) {
            return Err(SolveError::NonFinite {
                family: FAMILY,
                time: self.t,
                what: "vorticity",
            });
        }
        Ok(())
    }
    fn write_frame(&self, out: &mut [f32]) {
        let (n, m) = (self.n, self.store_n);
        let s = n / m;
        for j in 0..m {
            for i in 0..m {
                out[j * m + i] = self.omega[(j * s) * n + i * s] as f32;
            }
        }
    }
}
