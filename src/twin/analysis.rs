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
}

impl Default for OiConfig {
    fn default() -> Self {
        OiConfig {
            length_cells: 4.0,
            obs_to_background: 0.01,
            periodic: false,
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
}

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
        };
        let m = points.len();
        if m > 0 {
            // H B Hᵀ + R, the same for every channel
            let mut s = DMatrix::<f64>::from_fn(m, m, |i, j| a.corr(points[i], points[j]));
            for i in 0..m {
                s[(i, i)] += cfg.obs_to_background;
            }
            a.chol = Some(s.cholesky().ok_or(AnalysisError::Singular)?);
        }
        Ok(a)
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
}
