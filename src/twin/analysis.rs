//! A full state from sparse sensors: optimal interpolation (OI).
//!
//! A station with a few sensors sees the field at some grid cells only, but the model steps a
//! whole field. The analysis starts from a background field `x_b` (the last forecast for that
//! time, or the family's mean state before there is one) and corrects it at the sensors, spreading
//! each correction to the cells around it by the background-error covariance:
//!
//! `x_a = x_b + B Hᵀ (H B Hᵀ + R)⁻¹ (y − H x_b)`
//!
//! per channel, with `H` picking the sensor cells, a Gaussian covariance
//! `B_ij = σ_b² exp(−d_ij² / 2L²)` over the grid distance `d` in cells (periodic when the
//! family's domain is), and independent sensor errors `R = σ_o² I`. Only the ratio
//! `σ_o² / σ_b²` matters. The `m × m` system (`m` sensors) is solved by Cholesky.
//!
//! The covariance has no cross-channel terms, so a channel no sensor measures keeps its
//! background. For shallow water, whose stations mostly measure depth alone, [`MassBalance`]
//! then corrects the background's momentum by mass conservation: the depth increment of the
//! analysis is what the background's flux got wrong over the step that led to it. Between
//! sparse sensors that holds only where they determine the depth ([`Analyser::coverage`]).

use nalgebra::{DMatrix, DVector};

/// Settings of the analysis.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OiConfig {
    /// Correlation length of the background error, in grid cells.
    pub length_cells: f64,
    /// Sensor error variance over background error variance (`σ_o² / σ_b²`), > 0.
    pub obs_to_background: f64,
    /// Whether distances wrap around the grid (a periodic domain).
    pub periodic: bool,
    /// Correct unmeasured momentum from the depth increment by mass conservation
    /// ([`MassBalance`]), where the family has it (shallow water).
    #[serde(default = "yes")]
    pub mass_balance: bool,
}

fn yes() -> bool {
    true
}

impl Default for OiConfig {
    fn default() -> Self {
        OiConfig {
            length_cells: 4.0,
            obs_to_background: 0.01,
            periodic: false,
            mass_balance: true,
        }
    }
}

/// Why an analysis cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    /// The inputs do not fit together.
    #[error("sparse analysis: {0}")]
    Shape(String),
    /// The sensor covariance is not positive definite (two sensors on one cell with no
    /// sensor error, for instance).
    #[error(
        "sparse analysis: the sensors' covariance is singular (sensors on the same cell?); raise obs_to_background above 0"
    )]
    Singular,
}

/// The analysis for one sensor layout: the factorised sensor covariance is kept, so each frame
/// of a station whose sensors stay put costs one triangular solve and one pass over the grid per
/// channel.
#[derive(Debug, Clone)]
pub struct Analyser {
    cfg: OiConfig,
    channels: usize,
    n: usize,
    points: Vec<(usize, usize)>,
    /// `exp(−d² / 2L²)` for grid distances `d = 0..n`: the correlation is separable by axis.
    table: Vec<f64>,
    chol: Option<nalgebra::Cholesky<f64, nalgebra::Dyn>>,
    /// A lower bound of the share of the background's error variance the sensors explain at
    /// the worst cell ([`Analyser::coverage`]).
    coverage: f64,
}

/// Sensors per cell in [`Analyser::coverage`]'s bound.
const COVERAGE_NEAREST: usize = 4;

impl Analyser {
    /// The analysis of `channels × n × n` fields from sensors at `points` (`(row, col)` cells).
    pub fn new(
        channels: usize,
        n: usize,
        points: &[(usize, usize)],
        cfg: &OiConfig,
    ) -> Result<Self, AnalysisError> {
        if let Some(&(r, c)) = points.iter().find(|&&(r, c)| r >= n || c >= n) {
            return Err(AnalysisError::Shape(format!(
                "sensor at ({r}, {c}) lies outside the {n} × {n} grid"
            )));
        }
        if !(cfg.length_cells > 0.0 && cfg.obs_to_background >= 0.0) {
            return Err(AnalysisError::Shape(format!(
                "length_cells must be positive and obs_to_background not negative: {cfg:?}"
            )));
        }
        let table: Vec<f64> = (0..n)
            .map(|d| (-((d * d) as f64) / (2.0 * cfg.length_cells * cfg.length_cells)).exp())
            .collect();
        let mut a = Analyser {
            cfg: *cfg,
            channels,
            n,
            points: points.to_vec(),
            table,
            chol: None,
            coverage: 0.0,
        };
        let m = points.len();
        if m > 0 {
            // H B Hᵀ + R, the same for every channel
            let mut s = DMatrix::<f64>::from_fn(m, m, |i, j| a.corr(points[i], points[j]));
            for i in 0..m {
                s[(i, i)] += cfg.obs_to_background;
            }
            a.chol = Some(s.cholesky().ok_or(AnalysisError::Singular)?);
            a.coverage = a.coverage_bound();
        }
        Ok(a)
    }

    /// How well the sensors determine the field everywhere: a lower bound, over the cells, of
    /// the share of the background's error variance the analysis explains (1 − the analysis
    /// error variance over the background's). Each cell's share is computed from its
    /// `COVERAGE_NEAREST` nearest sensors; more sensors never explain less, so it is a bound.
    /// Near 1: every cell has sensors within its correlation length; near 0: some cells are
    /// only interpolated across.
    pub fn coverage(&self) -> f64 {
        self.coverage
    }

    fn coverage_bound(&self) -> f64 {
        let (n, m) = (self.n, self.points.len());
        let k = COVERAGE_NEAREST.min(m);
        if k == 0 {
            return 0.0;
        }
        let mut near: Vec<(usize, usize)> = Vec::with_capacity(m);
        let mut worst = 1.0f64;
        for r in 0..n {
            for c in 0..n {
                near.clear();
                near.extend(self.points.iter().enumerate().map(|(j, &(pr, pc))| {
                    let (dr, dc) = (self.dist(r, pr), self.dist(c, pc));
                    (dr * dr + dc * dc, j)
                }));
                near.select_nth_unstable(k - 1);
                let idx = &near[..k];
                let s = DMatrix::<f64>::from_fn(k, k, |a, b| {
                    let diag = if a == b {
                        self.cfg.obs_to_background
                    } else {
                        0.0
                    };
                    self.corr(self.points[idx[a].1], self.points[idx[b].1]) + diag
                });
                let kv =
                    DVector::<f64>::from_fn(k, |a, _| self.corr((r, c), self.points[idx[a].1]));
                let explained = s.cholesky().map_or(0.0, |ch| kv.dot(&ch.solve(&kv)));
                worst = worst.min(explained);
            }
        }
        worst.max(0.0)
    }

    /// The sensor cells.
    pub fn points(&self) -> &[(usize, usize)] {
        &self.points
    }

    fn dist(&self, a: usize, b: usize) -> usize {
        let x = a.abs_diff(b);
        if self.cfg.periodic {
            x.min(self.n - x)
        } else {
            x
        }
    }

    fn corr(&self, (r1, c1): (usize, usize), (r2, c2): (usize, usize)) -> f64 {
        self.table[self.dist(r1, r2)] * self.table[self.dist(c1, c2)]
    }

    /// `background` corrected at the sensors: `observed[c * points + j]` is channel `c` at point
    /// `j`. Returns the analysed field.
    pub fn analyse(&self, background: &[f32], observed: &[f32]) -> Result<Vec<f32>, AnalysisError> {
        let all: Vec<usize> = (0..self.channels).collect();
        self.analyse_channels(background, &all, observed)
    }

    /// [`analyse`](Self::analyse) when the sensors measure only the channels `measured`:
    /// `observed[k * points + j]` is channel `measured[k]` at point `j`; the other channels keep
    /// the background (the covariance has no cross-channel terms).
    pub fn analyse_channels(
        &self,
        background: &[f32],
        measured: &[usize],
        observed: &[f32],
    ) -> Result<Vec<f32>, AnalysisError> {
        let (n, channels) = (self.n, self.channels);
        let cells = n * n;
        let m = self.points.len();
        if background.len() != channels * cells {
            return Err(AnalysisError::Shape(format!(
                "background of {} values for {channels} × {n} × {n}",
                background.len()
            )));
        }
        if let Some(c) = measured.iter().find(|&&c| c >= channels) {
            return Err(AnalysisError::Shape(format!(
                "channel {c} measured, the field has {channels}"
            )));
        }
        if observed.len() != measured.len() * m {
            return Err(AnalysisError::Shape(format!(
                "{} observed values for {} channel(s) at {m} point(s)",
                observed.len(),
                measured.len()
            )));
        }
        let mut out = background.to_vec();
        let Some(chol) = &self.chol else {
            return Ok(out);
        };
        // the correction spreads along rows and columns separately: weights per sensor, then
        // for each cell the sum over sensors of table[dr]·table[dc]·w
        let mut rows = vec![0.0f64; n];
        for (k, &ch) in measured.iter().enumerate() {
            let innovation = DVector::<f64>::from_fn(m, |j, _| {
                let (r, c) = self.points[j];
                observed[k * m + j] as f64 - background[ch * cells + r * n + c] as f64
            });
            let w = chol.solve(&innovation);
            let field = &mut out[ch * cells..(ch + 1) * cells];
            for col in 0..n {
                rows.iter_mut().for_each(|x| *x = 0.0);
                for (&(r, c), wj) in self.points.iter().zip(w.iter()) {
                    let g = self.table[self.dist(col, c)] * wj;
                    if g == 0.0 {
                        continue;
                    }
                    for (row, x) in rows.iter_mut().enumerate() {
                        *x += self.table[self.dist(row, r)] * g;
                    }
                }
                for (row, x) in rows.iter().enumerate() {
                    field[row * n + col] += *x as f32;
                }
            }
        }
        Ok(out)
    }
}

/// A field of `channels × n × n` (row-major, `[c][row][col]`) analysed from observations at
/// `points` (`(row, col)` cells): `observed[c * points.len() + j]` is channel `c` at point `j`.
/// [`Analyser`] keeps the factorisation for a station's next frames.
pub fn analyse(
    background: &[f32],
    channels: usize,
    n: usize,
    points: &[(usize, usize)],
    observed: &[f32],
    cfg: &OiConfig,
) -> Result<Vec<f32>, AnalysisError> {
    Analyser::new(channels, n, points, cfg)?.analyse(background, observed)
}

/// The [`Analyser::coverage`] sparse sensors need for the [`MassBalance`]: at every cell the
/// analysis explains at least half of the background's error variance. (Measured on the dam
/// break with random depth gauges and the default analysis: one gauge in four cells gives 0.73,
/// and the balance cut the forecasts' error 1.3–3.4×; one in sixteen gives 0.15, and forced on
/// there the balance sent rollouts out of range.)
pub const BALANCE_MIN_COVERAGE: f64 = 0.5;

/// Mass-consistent momentum for shallow water (`h_t + ∇·q = 0`, `q = (hu, hv)`).
///
/// A station that measures depth but not momentum gets its momentum from the background (the
/// model's forecast for that frame). Where the analysed depth differs from the background's,
/// the background's flux over the step that led to it was wrong by `δq` with
/// `∇·δq = −(h_a − h_b) / Δt`. [`MassBalance::correct`] adds the smallest such correction, an
/// irrotational one, `δq = ∇ψ` with `∇²ψ = −(h_a − h_b) / Δt`, to the background's momentum.
/// Without it a background that started wrong (the anchor's, before the first readout, out of
/// its range) keeps its momentum error, which the depth alone never corrects.
///
/// Between sparse sensors the depth increment is partly the analysis's own interpolation, which
/// the balance would turn into converging flows; the forecaster applies it to sparse frames only
/// when [`Analyser::coverage`] is at least [`BALANCE_MIN_COVERAGE`].
///
/// The correction is made where there is water: a dry cell (depth at or below `h_dry`) gets
/// none, as the solver gives dry cells no momentum. The divergence of the central-difference
/// gradient is the wide-stencil Laplacian, which agrees with the 5-point one for smooth
/// increments; grid-scale content (sensor noise, a sharp front) is under-corrected, never
/// over-corrected.
///
/// `ψ` is solved on the cell grid with the 5-point Laplacian and the walls' condition: `ψ = 0`
/// on the faces of an open boundary (the correction may carry water out), `∂ψ/∂n = 0` at
/// closed walls (no flow through them; a net gain or loss of water over the whole domain, which
/// no flux can carry, is left out). The 1-D second difference is diagonalised once
/// (`T = V Λ Vᵀ`); each frame costs four `n × n` products.
#[derive(Debug, Clone)]
pub struct MassBalance {
    n: usize,
    dx: f64,
    closed: bool,
    h_dry: f32,
    v: DMatrix<f64>,
    lambda: Vec<f64>,
}

impl MassBalance {
    /// The balance on an `n × n` grid of cells `dx` wide, with walls `closed` (else open);
    /// cells at most `h_dry` deep are dry.
    pub fn new(n: usize, dx: f64, closed: bool, h_dry: f64) -> Result<Self, AnalysisError> {
        if n < 2 || !(dx > 0.0 && dx.is_finite()) || !(h_dry >= 0.0 && h_dry.is_finite()) {
            return Err(AnalysisError::Shape(format!(
                "mass balance on a {n} × {n} grid of cells {dx} wide, dry below {h_dry}"
            )));
        }
        let edge = if closed { -1.0 } else { -3.0 };
        let t = DMatrix::<f64>::from_fn(n, n, |i, j| {
            if i == j {
                if i == 0 || i == n - 1 { edge } else { -2.0 }
            } else if i.abs_diff(j) == 1 {
                1.0
            } else {
                0.0
            }
        }) / (dx * dx);
        let eig = t.symmetric_eigen();
        Ok(MassBalance {
            n,
            dx,
            closed,
            h_dry: h_dry as f32,
            v: eig.eigenvectors,
            lambda: eig.eigenvalues.iter().copied().collect(),
        })
    }

    /// `ψ` with `∇²ψ = f` (row-major `n × n`); the null mode of closed walls is left out.
    pub fn solve(&self, f: &[f64]) -> Vec<f64> {
        let n = self.n;
        let fm = DMatrix::<f64>::from_row_slice(n, n, f);
        let mut hat = self.v.transpose() * fm * &self.v;
        let tiny = 1e-9 * self.lambda.iter().fold(0.0f64, |m, l| m.max(l.abs()));
        for a in 0..n {
            for b in 0..n {
                let l = self.lambda[a] + self.lambda[b];
                hat[(a, b)] = if l.abs() > tiny { hat[(a, b)] / l } else { 0.0 };
            }
        }
        let psi = &self.v * hat * self.v.transpose();
        // row-major out
        (0..n * n).map(|k| psi[(k / n, k % n)]).collect()
    }

    /// The central-difference gradient of `psi` (`∂/∂x` along a row, `∂/∂y` down a column), with
    /// the walls' ghost values.
    pub fn gradient(&self, psi: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let n = self.n;
        let sign = if self.closed { 1.0 } else { -1.0 };
        let at = |r: usize, c: isize, along_row: bool| -> f64 {
            let (idx, ghost) = if c < 0 {
                (0, true)
            } else if c >= n as isize {
                (n - 1, true)
            } else {
                (c as usize, false)
            };
            let v = if along_row {
                psi[r * n + idx]
            } else {
                psi[idx * n + r]
            };
            if ghost { sign * v } else { v }
        };
        let (mut gx, mut gy) = (vec![0.0; n * n], vec![0.0; n * n]);
        let h2 = 2.0 * self.dx;
        for r in 0..n {
            for c in 0..n as isize {
                gx[r * n + c as usize] = (at(r, c + 1, true) - at(r, c - 1, true)) / h2;
                gy[c as usize * n + r] = (at(r, c + 1, false) - at(r, c - 1, false)) / h2;
            }
        }
        (gx, gy)
    }

    /// Adds to the fluxes `flux_x` (`hu`) and `flux_y` (`hv`) the irrotational correction that
    /// accounts for the depth `increment` (analysis minus background) over `dt` seconds, at the
    /// wet cells of the analysed `depth`.
    pub fn correct(
        &self,
        depth: &[f32],
        increment: &[f32],
        dt: f64,
        flux_x: &mut [f32],
        flux_y: &mut [f32],
    ) -> Result<(), AnalysisError> {
        let cells = self.n * self.n;
        if depth.len() != cells
            || increment.len() != cells
            || flux_x.len() != cells
            || flux_y.len() != cells
        {
            return Err(AnalysisError::Shape(format!(
                "mass balance on {} × {}: depth {}, increment {}, fluxes {} and {}",
                self.n,
                self.n,
                depth.len(),
                increment.len(),
                flux_x.len(),
                flux_y.len()
            )));
        }
        if !(dt > 0.0 && dt.is_finite()) {
            return Err(AnalysisError::Shape(format!("mass balance over {dt} s")));
        }
        let f: Vec<f64> = increment.iter().map(|d| -f64::from(*d) / dt).collect();
        let (gx, gy) = self.gradient(&self.solve(&f));
        for (k, h) in depth.iter().enumerate() {
            if *h > self.h_dry {
                flux_x[k] += gx[k] as f32;
                flux_y[k] += gy[k] as f32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_does_not_fit() {
        let bg = vec![0.0; 16];
        let cfg = OiConfig::default();
        assert!(analyse(&bg, 1, 4, &[(4, 0)], &[1.0], &cfg).is_err());
        assert!(analyse(&bg, 1, 4, &[(1, 1)], &[1.0, 2.0], &cfg).is_err());
        assert!(analyse(&bg[1..], 1, 4, &[], &[], &cfg).is_err());
        let exact = OiConfig {
            obs_to_background: 0.0,
            ..cfg
        };
        assert_eq!(
            analyse(&bg, 1, 4, &[(1, 1), (1, 1)], &[1.0, 2.0], &exact),
            Err(AnalysisError::Singular)
        );
        // no sensors: the background unchanged
        assert_eq!(analyse(&bg, 1, 4, &[], &[], &cfg).unwrap(), bg);
    }

    #[test]
    fn exact_sensors_are_matched_and_the_correction_fades_with_distance() {
        let n = 16;
        let bg = vec![1.0f32; n * n];
        let cfg = OiConfig {
            obs_to_background: 1e-9,
            length_cells: 2.0,
            periodic: false,
            mass_balance: false,
        };
        let a = analyse(&bg, 1, n, &[(8, 8)], &[3.0], &cfg).unwrap();
        assert!((a[8 * n + 8] - 3.0).abs() < 1e-4);
        let at = |r: usize, c: usize| a[r * n + c] - 1.0;
        assert!(at(8, 9) < at(8, 8) && at(8, 11) < at(8, 9) && at(8, 15) < 0.01);
        // periodic distances reach across the edge
        let wrap = OiConfig {
            periodic: true,
            ..cfg
        };
        let b = analyse(&bg, 1, n, &[(0, 0)], &[3.0], &wrap).unwrap();
        assert!((b[(n - 1) * n + (n - 1)] - b[n + 1]).abs() < 1e-5);
    }

    /// The central-difference divergence of `(qx, qy)` at interior cells.
    fn divergence(qx: &[f64], qy: &[f64], n: usize, dx: f64, r: usize, c: usize) -> f64 {
        (qx[r * n + c + 1] - qx[r * n + c - 1] + qy[(r + 1) * n + c] - qy[(r - 1) * n + c])
            / (2.0 * dx)
    }

    #[test]
    fn the_mass_balance_makes_the_flux_carry_the_depth_increment() {
        let (n, dx, dt) = (48, 0.625, 0.5);
        // a smooth rise and a fall of the depth, away from the boundary
        let bump = |r: f64, c: f64, r0: f64, c0: f64, w: f64| {
            (-((r - r0).powi(2) + (c - c0).powi(2)) / (2.0 * w * w)).exp()
        };
        let increment: Vec<f32> = (0..n * n)
            .map(|k| {
                let (r, c) = ((k / n) as f64, (k % n) as f64);
                (0.05 * bump(r, c, 20.0, 18.0, 4.0) - 0.03 * bump(r, c, 28.0, 30.0, 3.0)) as f32
            })
            .collect();
        let wet = vec![1.0f32; n * n];
        for closed in [false, true] {
            let b = MassBalance::new(n, dx, closed, 1e-6).unwrap();
            let (mut qx, mut qy) = (vec![0.5f32; n * n], vec![-0.25f32; n * n]);
            b.correct(&wet, &increment, dt, &mut qx, &mut qy).unwrap();
            let dqx: Vec<f64> = qx.iter().map(|q| f64::from(*q) - 0.5).collect();
            let dqy: Vec<f64> = qy.iter().map(|q| f64::from(*q) + 0.25).collect();
            // ∇·δq = −Δh/Δt where the depth changed (the central differences of the 5-point
            // solve agree to the grid's truncation error on this smooth field); closed walls
            // let no water in or out, so there the increment's mean is left out
            let mean = if closed {
                increment.iter().map(|x| f64::from(*x)).sum::<f64>() / (n * n) as f64
            } else {
                0.0
            };
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for r in 8..n - 8 {
                for c in 8..n - 8 {
                    let want = -(f64::from(increment[r * n + c]) - mean) / dt;
                    num += (divergence(&dqx, &dqy, n, dx, r, c) - want).powi(2);
                    den += want * want;
                }
            }
            let rel = (num / den).sqrt();
            assert!(rel < 0.05, "closed {closed}: divergence off by {rel:.3}");
        }
        // no increment, no correction
        let b = MassBalance::new(n, dx, false, 1e-6).unwrap();
        let (mut qx, mut qy) = (vec![0.5f32; n * n], vec![-0.25f32; n * n]);
        b.correct(&wet, &vec![0.0; n * n], dt, &mut qx, &mut qy)
            .unwrap();
        assert!(qx.iter().all(|q| *q == 0.5) && qy.iter().all(|q| *q == -0.25));
        // dry cells get none
        let mut depth = wet.clone();
        depth[20 * n + 18] = 0.0;
        b.correct(&depth, &increment, dt, &mut qx, &mut qy).unwrap();
        assert_eq!((qx[20 * n + 18], qy[20 * n + 18]), (0.5, -0.25));
        assert!(qx[20 * n + 22] != 0.5, "wet cells next to it do");
    }

    /// On every cell, walls included: the solve inverts the 5-point Laplacian with the walls'
    /// ghost values (odd: `ψ = 0` on the boundary faces; even: no flow through them), and the
    /// gradient at the edge cells uses the same ghosts.
    #[test]
    fn the_mass_balance_solves_the_walls_condition_on_every_cell() {
        let (n, dx) = (8, 0.5);
        let f: Vec<f64> = (0..n * n)
            .map(|k| ((k * 37 % 11) as f64 - 5.0) * 0.1 + (k / n) as f64 * 0.02)
            .collect();
        for closed in [false, true] {
            let b = MassBalance::new(n, dx, closed, 0.0).unwrap();
            let psi = b.solve(&f);
            let sign = if closed { 1.0 } else { -1.0 };
            let at = |r: isize, c: isize| -> f64 {
                let clamp = |x: isize| x.clamp(0, n as isize - 1) as usize;
                let v = psi[clamp(r) * n + clamp(c)];
                let outside = r < 0 || c < 0 || r >= n as isize || c >= n as isize;
                if outside { sign * v } else { v }
            };
            let mean = if closed {
                f.iter().sum::<f64>() / (n * n) as f64
            } else {
                0.0
            };
            for r in 0..n as isize {
                for c in 0..n as isize {
                    let lap = (at(r - 1, c) + at(r + 1, c) + at(r, c - 1) + at(r, c + 1)
                        - 4.0 * at(r, c))
                        / (dx * dx);
                    let want = f[r as usize * n + c as usize] - mean;
                    assert!(
                        (lap - want).abs() < 1e-9,
                        "closed {closed}, cell ({r}, {c}): {lap} vs {want}"
                    );
                }
            }
            let (gx, gy) = b.gradient(&psi);
            for k in 0..n as isize {
                let edge = [(k, 0), (k, n as isize - 1), (0, k), (n as isize - 1, k)];
                for (r, c) in edge {
                    let i = r as usize * n + c as usize;
                    let want_x = (at(r, c + 1) - at(r, c - 1)) / (2.0 * dx);
                    let want_y = (at(r + 1, c) - at(r - 1, c)) / (2.0 * dx);
                    assert!((gx[i] - want_x).abs() < 1e-12 && (gy[i] - want_y).abs() < 1e-12);
                }
            }
        }
    }

    /// The coverage bound: 0 with a cell far from every sensor, near 1 with a sensor on every
    /// cell, never lower for more sensors, and never above the exact share at any cell.
    #[test]
    fn coverage_says_whether_the_sensors_determine_every_cell() {
        let n = 24;
        let cfg = OiConfig::default();
        let all: Vec<(usize, usize)> = (0..n * n).map(|k| (k / n, k % n)).collect();
        let every = Analyser::new(1, n, &all, &cfg).unwrap().coverage();
        assert!(every > 0.98, "{every}");
        let one = Analyser::new(1, n, &[(0, 0)], &cfg).unwrap().coverage();
        assert!(one < 1e-6, "{one}");
        // nested layouts: every 4th, every 2nd, every cell of a lattice
        let mut last = 0.0;
        for step in [6, 3, 2, 1] {
            let pts: Vec<(usize, usize)> = all
                .iter()
                .copied()
                .filter(|&(r, c)| r % step == 0 && c % step == 0)
                .collect();
            let a = Analyser::new(1, n, &pts, &cfg).unwrap();
            let cov = a.coverage();
            assert!(cov >= last - 1e-12, "step {step}: {cov} after {last}");
            last = cov;
            // the exact share at the cell farthest from the lattice is at least the bound
            let far = (step / 2, step / 2);
            let chol = a.chol.as_ref().unwrap();
            let k = DVector::<f64>::from_fn(pts.len(), |j, _| a.corr(far, pts[j]));
            let exact = k.dot(&chol.solve(&k));
            assert!(
                cov <= exact + 1e-9,
                "step {step}: bound {cov} above exact {exact}"
            );
        }
        assert!(Analyser::new(1, n, &[], &cfg).unwrap().coverage() == 0.0);
    }

    #[test]
    fn the_mass_balance_refuses_what_does_not_fit() {
        assert!(MassBalance::new(1, 1.0, false, 0.0).is_err());
        assert!(MassBalance::new(8, 0.0, false, 0.0).is_err());
        assert!(MassBalance::new(8, 1.0, false, -1.0).is_err());
        let b = MassBalance::new(8, 1.0, true, 0.0).unwrap();
        let (mut qx, mut qy) = (vec![0.0f32; 64], vec![0.0f32; 64]);
        let d = [1.0f32; 64];
        assert!(b.correct(&d, &[0.0; 63], 0.5, &mut qx, &mut qy).is_err());
        assert!(b.correct(&d, &[0.0; 64], 0.0, &mut qx, &mut qy).is_err());
        assert!(
            b.correct(&d, &[0.0; 64], 0.5, &mut qx[..8], &mut qy)
                .is_err()
        );
        assert!(
            b.correct(&d[..8], &[0.0; 64], 0.5, &mut qx, &mut qy)
                .is_err()
        );
    }
}
