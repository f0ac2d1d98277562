//! 2-D shallow water over a bed, with Manning bed friction: the radial dam-break family.
//!
//! State `(h, hu, hv)` on a cell-centred grid. Space: finite volumes with a MUSCL (minmod)
//! reconstruction of depth `h`, surface `η = h + b` and velocity, the hydrostatic reconstruction
//! of Audusse et al. at every face (so a lake at rest stays at rest, also next to dry land, and
//! depths stay ≥ 0), and the HLL flux with the dry-front wave speeds. Time: SSP-RK2 with a CFL
//! step. Friction: after each step the momentum is divided by `1 + Δt g n² |u| / h^(4/3)`, which
//! is the exact solution of `du/dt = −g n² u|u| / h^(4/3)` over the step at fixed depth, and is
//! unconditionally stable on shallow wet fronts.
//!
//! Walls are reflective ([`Walls::Closed`], mass is conserved to round-off) or transmissive
//! ([`Walls::Open`]). Two ghost layers carry the boundary condition.

use rand::Rng;

use super::{SolveError, Solver, block_average, random_field};
use crate::config::{DamBreakConfig, Walls};

const FAMILY: &str = "dam_break";
const G: usize = 2;

/// Grid and physics of a shallow-water run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Cells along x.
    pub nx: usize,
    /// Cells along y.
    pub ny: usize,
    /// Cell width (m).
    pub dx: f64,
    /// Cell height (m).
    pub dy: f64,
    /// Gravity (m/s²).
    pub g: f64,
    /// Manning roughness `n` (s/m^(1/3)); 0 switches friction off.
    pub manning: f64,
    /// Courant number (sum over both directions).
    pub cfl: f64,
    /// Depth below which a cell is dry.
    pub h_dry: f64,
    /// Boundary condition.
    pub walls: Walls,
}

/// Shallow-water solver state.
pub struct ShallowWater {
    p: Params,
    store_n: usize,
    w: usize,
    h: Vec<f64>,
    hu: Vec<f64>,
    hv: Vec<f64>,
    b: Vec<f64>,
    h0: Vec<f64>,
    hu0: Vec<f64>,
    hv0: Vec<f64>,
    dh: Vec<f64>,
    dhu: Vec<f64>,
    dhv: Vec<f64>,
    // primitives and their limited slopes, padded layout
    eta: Vec<f64>,
    u: Vec<f64>,
    v: Vec<f64>,
    slope: [Vec<f64>; 4],
    t: f64,
    steps: u64,
}

fn minmod(a: f64, b: f64) -> f64 {
    if a * b <= 0.0 {
        0.0
    } else if a.abs() < b.abs() {
        a
    } else {
        b
    }
}

/// HLL flux normal to a face, for the states left and right of it: `(h, normal velocity,
/// tangential velocity)`. Returns `[mass, normal momentum, tangential momentum]` fluxes.
fn hll(hl: f64, ul: f64, vl: f64, hr: f64, ur: f64, vr: f64, g: f64) -> [f64; 3] {
    if hl <= 0.0 && hr <= 0.0 {
        return [0.0; 3];
    }
    let cl = (g * hl).sqrt();
    let cr = (g * hr).sqrt();
    let (sl, sr) = if hl <= 0.0 {
        (ur - 2.0 * cr, ur + cr)
    } else if hr <= 0.0 {
        (ul - cl, ul + 2.0 * cl)
    } else {
        ((ul - cl).min(ur - cr), (ul + cl).max(ur + cr))
    };
    let fl = [hl * ul, hl * ul * ul + 0.5 * g * hl * hl, hl * ul * vl];
    let fr = [hr * ur, hr * ur * ur + 0.5 * g * hr * hr, hr * ur * vr];
    if sl >= 0.0 {
        return fl;
    }
    if sr <= 0.0 {
        return fr;
    }
    let ql = [hl, hl * ul, hl * vl];
    let qr = [hr, hr * ur, hr * vr];
    let inv = 1.0 / (sr - sl);
    std::array::from_fn(|k| (sr * fl[k] - sl * fr[k] + sl * sr * (qr[k] - ql[k])) * inv)
}

impl ShallowWater {
    /// A solver from interior fields (`nx·ny` values each, row-major, `y` slowest) and a bed.
    /// Frames are stored on `store_n × store_n` (requires `nx = ny`, a multiple of `store_n`).
    pub fn new(
        p: Params,
        store_n: usize,
        h: &[f64],
        hu: &[f64],
        hv: &[f64],
        bed: &[f64],
    ) -> Result<Self, SolveError> {
        if !(p.manning.is_finite() && p.manning >= 0.0) {
            return Err(SolveError::BadParameter {
                family: FAMILY,
                name: "manning_n",
                value: p.manning,
                reason: "Manning's n must be a finite number ≥ 0",
            });
        }
        let interior = p.nx * p.ny;
        assert!(p.nx >= 2 && p.ny >= 2, "grid too small");
        for f in [h, hu, hv, bed] {
            assert_eq!(f.len(), interior, "field size");
        }
        if h.iter().any(|x| x.is_nan() || *x < 0.0) {
            return Err(SolveError::BadParameter {
                family: FAMILY,
                name: "h",
                value: h.iter().copied().fold(f64::INFINITY, f64::min),
                reason: "initial depths must be ≥ 0",
            });
        }
        let w = p.nx + 2 * G;
        let padded = w * (p.ny + 2 * G);
        let z = vec![0.0; padded];
        let mut s = ShallowWater {
            p,
            store_n,
            w,
            h: z.clone(),
            hu: z.clone(),
            hv: z.clone(),
            b: z.clone(),
            h0: z.clone(),
            hu0: z.clone(),
            hv0: z.clone(),
            dh: z.clone(),
            dhu: z.clone(),
            dhv: z.clone(),
            eta: z.clone(),
            u: z.clone(),
            v: z.clone(),
            slope: std::array::from_fn(|_| z.clone()),
            t: 0.0,
            steps: 0,
        };
        for j in 0..p.ny {
            for i in 0..p.nx {
                let k = s.idx(i, j);
                let src = j * p.nx + i;
                s.h[k] = h[src];
                s.hu[k] = hu[src];
                s.hv[k] = hv[src];
                s.b[k] = bed[src];
            }
        }
        // The bed's ghosts never change: mirror it (a zero-gradient bed at the wall).
        let mut b = std::mem::take(&mut s.b);
        s.fill_ghost(&mut b, None);
        s.b = b;
        Ok(s)
    }

    /// The family's solver: a disc of radius and centre drawn from `seed`, Manning `n = manning`.
    pub fn from_config(
        c: &DamBreakConfig,
        store_n: usize,
        solve_n: usize,
        manning: f64,
        seed: u64,
    ) -> Result<Self, SolveError> {
        if !(manning > 0.0 && manning.is_finite()) {
            return Err(SolveError::BadParameter {
                family: FAMILY,
                name: "manning_n",
                value: manning,
                reason: "the family's Manning n must be a positive number",
            });
        }
        let mut rng = random_field::rng(seed);
        let radius = rng.random_range(c.radius[0]..=c.radius[1]);
        let cx = rng.random_range(-c.centre_spread..=c.centre_spread);
        let cy = rng.random_range(-c.centre_spread..=c.centre_spread);
        let n = solve_n;
        let dx = c.domain / n as f64;
        let mut h = vec![0.0; n * n];
        let mut bed = vec![0.0; n * n];
        // Cell-averaged disc indicator (4×4 sub-samples per cell): a round dam, not a staircase.
        const SUB: usize = 4;
        for j in 0..n {
            for i in 0..n {
                let mut inside = 0usize;
                for sj in 0..SUB {
                    for si in 0..SUB {
                        let x = -0.5 * c.domain + (i as f64 + (si as f64 + 0.5) / SUB as f64) * dx;
                        let y = -0.5 * c.domain + (j as f64 + (sj as f64 + 0.5) / SUB as f64) * dx;
                        if (x - cx).powi(2) + (y - cy).powi(2) < radius * radius {
                            inside += 1;
                        }
                    }
                }
                let frac = inside as f64 / (SUB * SUB) as f64;
                h[j * n + i] = c.h_out + frac * (c.h_in - c.h_out);
                let (x, y) = (
                    -0.5 * c.domain + (i as f64 + 0.5) * dx,
                    -0.5 * c.domain + (j as f64 + 0.5) * dx,
                );
                bed[j * n + i] = c.bed_slope[0] * x + c.bed_slope[1] * y;
            }
        }
        let zeros = vec![0.0; n * n];
        let p = Params {
            nx: n,
            ny: n,
            dx,
            dy: dx,
            g: c.g,
            manning,
            cfl: c.cfl,
            h_dry: c.h_dry,
            walls: c.walls,
        };
        Self::new(p, store_n, &h, &zeros, &zeros, &bed)
    }

    #[inline]
    fn idx(&self, i: usize, j: usize) -> usize {
        (j + G) * self.w + i + G
    }

    /// The run's parameters.
    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Internal steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn interior(&self, f: &[f64]) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.p.nx * self.p.ny);
        for j in 0..self.p.ny {
            let k = self.idx(0, j);
            out.extend_from_slice(&f[k..k + self.p.nx]);
        }
        out
    }

    /// Depth on the interior cells.
    pub fn depth(&self) -> Vec<f64> {
        self.interior(&self.h)
    }

    /// x-momentum on the interior cells.
    pub fn momentum_x(&self) -> Vec<f64> {
        self.interior(&self.hu)
    }

    /// y-momentum on the interior cells.
    pub fn momentum_y(&self) -> Vec<f64> {
        self.interior(&self.hv)
    }

    /// Total water volume `Σ h dx dy`.
    pub fn volume(&self) -> f64 {
        self.depth().iter().sum::<f64>() * self.p.dx * self.p.dy
    }

    /// Fills the two ghost layers of `f`; `normal` = `Some(0)` negates across x-walls (x-momentum),
    /// `Some(1)` across y-walls (y-momentum) when the walls are closed.
    fn fill_ghost(&self, f: &mut [f64], normal: Option<usize>) {
        let (nx, ny, w) = (self.p.nx, self.p.ny, self.w);
        let closed = self.p.walls == Walls::Closed;
        for j in 0..ny {
            let row = (j + G) * w;
            for g in 1..=G {
                let (src_l, src_r) = if closed { (g - 1, nx - g) } else { (0, nx - 1) };
                let sign = if closed && normal == Some(0) {
                    -1.0
                } else {
                    1.0
                };
                f[row + G - g] = sign * f[row + G + src_l];
                f[row + G + nx - 1 + g] = sign * f[row + G + src_r];
            }
        }
        for g in 1..=G {
            let (src_b, src_t) = if closed { (g - 1, ny - g) } else { (0, ny - 1) };
            let sign = if closed && normal == Some(1) {
                -1.0
            } else {
                1.0
            };
            for i in 0..w {
                f[(G - g) * w + i] = sign * f[(G + src_b) * w + i];
                f[(G + ny - 1 + g) * w + i] = sign * f[(G + src_t) * w + i];
            }
        }
    }

    /// The time derivative of the interior state into `dh, dhu, dhv`.
    fn rhs(&mut self) {
        let mut h = std::mem::take(&mut self.h);
        let mut hu = std::mem::take(&mut self.hu);
        let mut hv = std::mem::take(&mut self.hv);
        self.fill_ghost(&mut h, None);
        self.fill_ghost(&mut hu, Some(0));
        self.fill_ghost(&mut hv, Some(1));
        self.h = h;
        self.hu = hu;
        self.hv = hv;
        let h_dry = self.p.h_dry;
        for k in 0..self.h.len() {
            let h = self.h[k];
            self.eta[k] = h + self.b[k];
            if h > h_dry {
                self.u[k] = self.hu[k] / h;
                self.v[k] = self.hv[k] / h;
            } else {
                self.u[k] = 0.0;
                self.v[k] = 0.0;
            }
        }
        self.dh.iter_mut().for_each(|x| *x = 0.0);
        self.dhu.iter_mut().for_each(|x| *x = 0.0);
        self.dhv.iter_mut().for_each(|x| *x = 0.0);
        self.sweep(1, self.p.dx, false);
        self.sweep(self.w, self.p.dy, true);
    }

    /// Fluxes and bed source along one direction: `stride` 1 for x, `w` for y. Along y the
    /// roles of the two momenta swap.
    fn sweep(&mut self, stride: usize, dx: f64, along_y: bool) {
        let (nx, ny, g) = (self.p.nx, self.p.ny, self.p.g);
        let (nn, nt) = if along_y { (ny, nx) } else { (nx, ny) };
        // cell index of (position a along the sweep, b across it), a in -2..nn+2
        let cell = |a: isize, b: usize| -> usize {
            let (i, j) = if along_y {
                (b as isize, a)
            } else {
                (a, b as isize)
            };
            ((j + G as isize) as usize) * self.w + (i + G as isize) as usize
        };
        let (un, ut) = if along_y {
            (&self.v, &self.u)
        } else {
            (&self.u, &self.v)
        };
        let [s_h, s_eta, s_un, s_ut] = &mut self.slope;
        // limited slopes for cells -1..=nn
        for bidx in 0..nt {
            for a in -1..=(nn as isize) {
                let k = cell(a, bidx);
                let (km, kp) = (k - stride, k + stride);
                s_h[k] = minmod(self.h[k] - self.h[km], self.h[kp] - self.h[k]);
                s_eta[k] = minmod(self.eta[k] - self.eta[km], self.eta[kp] - self.eta[k]);
                s_un[k] = minmod(un[k] - un[km], un[kp] - un[k]);
                s_ut[k] = minmod(ut[k] - ut[km], ut[kp] - ut[k]);
            }
        }
        let (dmn, dmt) = if along_y {
            (&mut self.dhv, &mut self.dhu)
        } else {
            (&mut self.dhu, &mut self.dhv)
        };
        let inv = 1.0 / dx;
        for bidx in 0..nt {
            for a in 0..=(nn as isize) {
                let l = cell(a - 1, bidx);
                let r = cell(a, bidx);
                let hl = self.h[l] + 0.5 * s_h[l];
                let el = self.eta[l] + 0.5 * s_eta[l];
                let hr = self.h[r] - 0.5 * s_h[r];
                let er = self.eta[r] - 0.5 * s_eta[r];
                let bl = el - hl;
                let br = er - hr;
                let bs = bl.max(br);
                let hls = (el - bs).max(0.0);
                let hrs = (er - bs).max(0.0);
                let f = hll(
                    hls,
                    un[l] + 0.5 * s_un[l],
                    ut[l] + 0.5 * s_ut[l],
                    hrs,
                    un[r] - 0.5 * s_un[r],
                    ut[r] - 0.5 * s_ut[r],
                    g,
                );
                if a >= 1 {
                    self.dh[l] -= f[0] * inv;
                    dmn[l] -= (f[1] + 0.5 * g * (hl * hl - hls * hls)) * inv;
                    dmt[l] -= f[2] * inv;
                }
                if a < nn as isize {
                    self.dh[r] += f[0] * inv;
                    dmn[r] += (f[1] + 0.5 * g * (hr * hr - hrs * hrs)) * inv;
                    dmt[r] += f[2] * inv;
                }
            }
            // centred bed source −g h ∂b: (b₊ − b₋) = s_eta − s_h inside the cell
            for a in 0..nn as isize {
                let k = cell(a, bidx);
                dmn[k] -= g * self.h[k] * (s_eta[k] - s_h[k]) * inv;
            }
        }
    }

    fn stable_dt(&self) -> f64 {
        let mut rate = 0.0f64;
        for j in 0..self.p.ny {
            for i in 0..self.p.nx {
                let k = self.idx(i, j);
                let h = self.h[k];
                if h > self.p.h_dry {
                    let c = (self.p.g * h).sqrt();
                    let (u, v) = (self.hu[k] / h, self.hv[k] / h);
                    rate = rate.max((u.abs() + c) / self.p.dx + (v.abs() + c) / self.p.dy);
                }
            }
        }
        if rate > 0.0 {
            self.p.cfl / rate
        } else {
            f64::INFINITY
        }
    }

    /// Zeroes momentum in dry cells and clips round-off negatives of the depth.
    fn fix_dry(&mut self) {
        for j in 0..self.p.ny {
            for i in 0..self.p.nx {
                let k = self.idx(i, j);
                if self.h[k] <= self.p.h_dry {
                    self.h[k] = self.h[k].max(0.0);
                    self.hu[k] = 0.0;
                    self.hv[k] = 0.0;
                }
            }
        }
    }

    fn friction(&mut self, dt: f64) {
        if self.p.manning == 0.0 {
            return;
        }
        let c = self.p.g * self.p.manning * self.p.manning * dt;
        for j in 0..self.p.ny {
            for i in 0..self.p.nx {
                let k = self.idx(i, j);
                let h = self.h[k];
                if h > self.p.h_dry {
                    let speed = self.hu[k].hypot(self.hv[k]) / h;
                    let factor = 1.0 / (1.0 + c * speed / h.powf(4.0 / 3.0));
                    self.hu[k] *= factor;
                    self.hv[k] *= factor;
                }
            }
        }
    }

    /// One SSP-RK2 step (plus the friction step) of at most `dt_cap`; returns its length.
    pub fn step(&mut self, dt_cap: f64) -> Result<f64, SolveError> {
        let dt = self.stable_dt().min(dt_cap);
        if !dt.is_finite() || dt <= 0.0 {
            return Err(SolveError::NonFinite {
                family: FAMILY,
                time: self.t,
                what: "time step",
            });
        }
        self.h0.copy_from_slice(&self.h);
        self.hu0.copy_from_slice(&self.hu);
        self.hv0.copy_from_slice(&self.hv);
        self.rhs();
        for k in 0..self.h.len() {
            self.h[k] += dt * self.dh[k];
            self.hu[k] += dt * self.dhu[k];
            self.hv[k] += dt * self.dhv[k];
        }
        self.fix_dry();
        self.rhs();
        for k in 0..self.h.len() {
            self.h[k] = 0.5 * (self.h0[k] + self.h[k] + dt * self.dh[k]);
            self.hu[k] = 0.5 * (self.hu0[k] + self.hu[k] + dt * self.dhu[k]);
            self.hv[k] = 0.5 * (self.hv0[k] + self.hv[k] + dt * self.dhv[k]);
        }
        self.fix_dry();
        self.friction(dt);
        self.t += dt;
        self.steps += 1;
        Ok(dt)
    }
}

impl Solver for ShallowWater {
    fn channels(&self) -> usize {
        3
    }
    fn frame_n(&self) -> usize {
        self.store_n
    }
    fn time(&self) -> f64 {
        self.t
    }
    fn advance(&mut self, duration: f64) -> Result<(), SolveError> {
        let t_end = self.t + duration;
        let tol = 1e-12 * duration.max(1.0);
        while t_end - self.t > tol {
            let remaining = t_end - self.t;
            let dt = self.step(remaining)?;
            if dt < 1e-10 * duration && remaining > 1e-9 * duration {
                return Err(SolveError::StepCollapsed {
                    family: FAMILY,
                    time: self.t,
                    dt,
                });
            }
        }
        self.t = t_end;
        if self
            .h
            .iter()
            .chain(&self.hu)
            .chain(&self.hv)
            .any(|x| !x.is_finite())
        {
            return Err(SolveError::NonFinite {
                family: FAMILY,
                time: self.t,
                what: "depth or momentum",
            });
        }
        Ok(())
    }
    fn write_frame(&self, out: &mut [f32]) {
        assert_eq!(self.p.nx, self.p.ny, "stored frames need a square grid");
        let m = self.store_n * self.store_n;
        for (c, f) in [&self.h, &self.hu, &self.hv].into_iter().enumerate() {
            block_average(
                &self.interior(f),
                self.p.nx,
                self.store_n,
                &mut out[c * m..(c + 1) * m],
            );
        }
    }
}

/// Exact solutions of the 1-D dam break on a flat frictionless bed (the Riemann problem with
/// water at rest on both sides), used to check the solver.
pub mod exact {
    /// Depth and velocity at `ξ = x/t` for a dam at `x = 0` holding depth `hl` on the left against
    /// `hr` on the right (`hl > hr ≥ 0`): Stoker's solution (rarefaction, plateau, bore) when the
    /// bed is wet, Ritter's (a rarefaction into dry land) when `hr = 0`.
    pub fn dam_break(hl: f64, hr: f64, g: f64, xi: f64) -> (f64, f64) {
        assert!(hl > hr && hr >= 0.0, "need hl > hr ≥ 0");
        let cl = (g * hl).sqrt();
        if xi <= -cl {
            return (hl, 0.0);
        }
        let fan = |xi: f64| ((2.0 * cl - xi).powi(2) / (9.0 * g), 2.0 * (xi + cl) / 3.0);
        if hr == 0.0 {
            return if xi < 2.0 * cl { fan(xi) } else { (0.0, 0.0) };
        }
        let hm = stoker_plateau(hl, hr, g);
        let cm = (g * hm).sqrt();
        let um = 2.0 * (cl - cm);
        let shock = hm * um / (hm - hr);
        if xi <= um - cm {
            fan(xi)
        } else if xi <= shock {
            (hm, um)
        } else {
            (hr, 0.0)
        }
    }

    /// Depth of the plateau between rarefaction and bore: the root of
    /// `2(c_l − c_m) = (h_m − h_r) √(g (h_m + h_r) / (2 h_m h_r))`, by bisection.
    pub fn stoker_plateau(hl: f64, hr: f64, g: f64) -> f64 {
        let cl = (g * hl).sqrt();
        let f = |hm: f64| {
            2.0 * (cl - (g * hm).sqrt()) - (hm - hr) * (g * (hm + hr) / (2.0 * hm * hr)).sqrt()
        };
        let (mut a, mut b) = (hr, hl);
        for _ in 0..200 {
            let m = 0.5 * (a + b);
            if f(m) > 0.0 {
                a = m;
            } else {
                b = m;
            }
        }
        0.5 * (a + b)
    }
}
