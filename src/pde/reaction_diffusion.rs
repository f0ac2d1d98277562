//! 2-D FitzHugh–Nagumo reaction–diffusion with no-flux walls.
//!
//! `u_t = D_u Δu + u − u³ − k − v`, `v_t = D_v Δv + u − v` on `[−L, L]²`.
//!
//! Finite volumes on a cell-centred grid: the five-point Laplacian with the wall neighbour
//! replaced by the cell itself is exactly a zero flux through the wall, so with the reaction off
//! the total of `u` changes only by round-off. Time: classical RK4 with a fixed step (at most
//! `dt_max`, and inside RK4's stability limit for the diffusion). Stored frames are block
//! averages of the solver grid, so they keep the totals.

use super::{SolveError, Solver, block_average, random_field, split_interval};
use crate::config::ReactionDiffusionConfig;

const FAMILY: &str = "reaction_diffusion";

/// Physical coefficients of the FitzHugh–Nagumo system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// Activator diffusivity `D_u`.
    pub du: f64,
    /// Inhibitor diffusivity `D_v`.
    pub dv: f64,
    /// Reaction constant `k`.
    pub k: f64,
    /// Whether the reaction terms are on.
    pub reaction: bool,
}

impl Coefficients {
    /// The reaction part of the right-hand side at one point.
    pub fn reaction(&self, u: f64, v: f64) -> (f64, f64) {
        if self.reaction {
            (u - u * u * u - self.k - v, u - v)
        } else {
            (0.0, 0.0)
        }
    }
}

/// Reaction–diffusion solver state.
pub struct ReactionDiffusion {
    n: usize,
    store_n: usize,
    dx: f64,
    coef: Coefficients,
    dt_max: f64,
    /// `u` then `v`, each `n²`.
    state: Vec<f64>,
    k: [Vec<f64>; 4],
    stage: Vec<f64>,
    t: f64,
}

impl ReactionDiffusion {
    /// A solver on an `n × n` grid over `[−half_width, half_width]²` from the given fields.
    pub fn new(
        n: usize,
        store_n: usize,
        half_width: f64,
        coef: Coefficients,
        dt_max: f64,
        u0: &[f64],
        v0: &[f64],
    ) -> Result<Self, SolveError> {
        for (name, value) in [("D_u", coef.du), ("D_v", coef.dv)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(SolveError::BadParameter {
                    family: FAMILY,
                    name: if name == "D_u" { "D_u" } else { "D_v" },
                    value,
                    reason: "diffusivities must be finite and ≥ 0",
                });
            }
        }
        assert!(
            store_n > 0 && n.is_multiple_of(store_n),
            "store grid must divide the solve grid"
        );
        assert_eq!(u0.len(), n * n, "u0 size");
        assert_eq!(v0.len(), n * n, "v0 size");
        let dx = 2.0 * half_width / n as f64;
        // RK4 is stable on the negative real axis down to −2.785; the Laplacian's most negative
        // eigenvalue is −8D/dx².
        let d_max = coef.du.max(coef.dv);
        let dt_stable = if d_max > 0.0 {
            2.5 * dx * dx / (8.0 * d_max)
        } else {
            f64::INFINITY
        };
        let mut state = u0.to_vec();
        state.extend_from_slice(v0);
        let len = 2 * n * n;
        Ok(ReactionDiffusion {
            n,
            store_n,
            dx,
            coef,
            dt_max: dt_max.min(dt_stable),
            state,
            k: std::array::from_fn(|_| vec![0.0; len]),
            stage: vec![0.0; len],
            t: 0.0,
        })
    }

    /// The family's solver at `D_u = du` with the smooth random start of `seed`.
    pub fn from_config(
        c: &ReactionDiffusionConfig,
        store_n: usize,
        solve_n: usize,
        du: f64,
        seed: u64,
    ) -> Result<Self, SolveError> {
        if !(du > 0.0 && du.is_finite()) {
            return Err(SolveError::BadParameter {
                family: FAMILY,
                name: "D_u",
                value: du,
                reason: "the family's activator diffusivity must be a positive number",
            });
        }
        // Drawn on the stored grid and interpolated to the solver's, so a seed gives the same
        // initial condition at every solver resolution.
        let mut rng = random_field::rng(seed);
        let dx = 2.0 * c.half_width / store_n as f64;
        let u0 = random_field::smooth_noise(&mut rng, store_n, c.init_length / dx);
        let v0 = random_field::smooth_noise(&mut rng, store_n, c.init_length / dx);
        let u0 = random_field::upsample_bilinear(&u0, store_n, solve_n);
        let v0 = random_field::upsample_bilinear(&v0, store_n, solve_n);
        let coef = Coefficients {
            du,
            dv: c.dv,
            k: c.k,
            reaction: c.reaction,
        };
        Self::new(solve_n, store_n, c.half_width, coef, c.dt_max, &u0, &v0)
    }

    /// The activator field on the solver grid.
    pub fn u(&self) -> &[f64] {
        &self.state[..self.n * self.n]
    }

    /// The inhibitor field on the solver grid.
    pub fn v(&self) -> &[f64] {
        &self.state[self.n * self.n..]
    }

    /// Cell width.
    pub fn dx(&self) -> f64 {
        self.dx
    }

    /// The internal step the solver uses (at most `dt_max`, inside the stability limit).
    pub fn dt_max(&self) -> f64 {
        self.dt_max
    }

    /// One RK4 step of length `dt`.
    pub fn step(&mut self, dt: f64) {
        let [k1, k2, k3, k4] = &mut self.k;
        let (n, dx, coef) = (self.n, self.dx, self.coef);
        rhs(n, dx, &coef, &self.state, k1);
        axpy(&mut self.stage, &self.state, 0.5 * dt, k1);
        rhs(n, dx, &coef, &self.stage, k2);
        axpy(&mut self.stage, &self.state, 0.5 * dt, k2);
        rhs(n, dx, &coef, &self.stage, k3);
        axpy(&mut self.stage, &self.state, dt, k3);
        rhs(n, dx, &coef, &self.stage, k4);
        for i in 0..self.state.len() {
            self.state[i] += dt / 6.0 * (k1[i] + 2.0 * (k2[i] + k3[i]) + k4[i]);
        }
        self.t += dt;
    }
}

fn axpy(out: &mut [f64], x: &[f64], a: f64, y: &[f64]) {
    for ((o, x), y) in out.iter_mut().zip(x).zip(y) {
        *o = x + a * y;
    }
}

/// Five-point Laplacian with zero-flux walls (the missing neighbour is the cell itself).
fn laplacian_add(n: usize, dx: f64, d: f64, f: &[f64], out: &mut [f64]) {
    let c = d / (dx * dx);
    for j in 0..n {
        let up = if j + 1 < n { j + 1 } else { j };
        let down = if j > 0 { j - 1 } else { j };
        for i in 0..n {
            let right = if i + 1 < n { i + 1 } else { i };
            let left = if i > 0 { i - 1 } else { i };
            let centre = f[j * n + i];
            // Sum of differences: each term is one face's flux, so the total telescopes to zero.
            let lap = (f[j * n + right] - centre)
                + (f[j * n + left] - centre)
                + (f[up * n + i] - centre)
                + (f[down * n + i] - centre);
            out[j * n + i] += c * lap;
        }
    }
}

fn rhs(n: usize, dx: f64, coef: &Coefficients, state: &[f64], out: &mut [f64]) {
    let (u, v) = state.split_at(n * n);
    let (du, dv) = out.split_at_mut(n * n);
    for i in 0..n * n {
        let (ru, rv) = coef.reaction(u[i], v[i]);
        du[i] = ru;
        dv[i] = rv;
    }
    laplacian_add(n, dx, coef.du, u, du);
    laplacian_add(n, dx, coef.dv, v, dv);
}

impl Solver for ReactionDiffusion {
    fn channels(&self) -> usize {
        2
    }
    fn frame_n(&self) -> usize {
        self.store_n
    }
    fn time(&self) -> f64 {
        self.t
    }
    fn advance(&mut self, duration: f64) -> Result<(), SolveError> {
        let t_end = self.t + duration;
        let (steps, dt) = split_interval(duration, self.dt_max);
        for _ in 0..steps {
            self.step(dt);
        }
        self.t = t_end;
        if self.state.iter().any(|x| !x.is_finite()) {
            return Err(SolveError::NonFinite {
                family: FAMILY,
                time: self.t,
                what: "u or v",
            });
        }
        Ok(())
    }
    fn write_frame(&self, out: &mut [f32]) {
        let m = self.store_n * self.store_n;
        block_average(self.u(), self.n, self.store_n, &mut out[..m]);
        block_average(self.v(), self.n, self.store_n, &mut out[m..2 * m]);
    }
}
