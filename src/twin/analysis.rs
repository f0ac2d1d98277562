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

/// A field of `channels × n × n` (row-major, `[c][row][col]`) analysed from observations at
/// `points` (`(row, col)` cells): `observed[c * points.len() + j]` is channel `c` at point `j`.
pub fn analyse(
    background: &[f32],
    channels: usize,
    n: usize,
    points: &[(usize, usize)],
    observed: &[f32],
    cfg: &OiConfig,
) -> Result<Vec<f32>, AnalysisError> {
    let cells = n * n;
    let m = points.len();
    if background.len() != channels * cells {
        return Err(AnalysisError::Shape(format!(
            "background of {} values for {channels} × {n} × {n}",
            background.len()
        )));
    }
    if observed.len() != channels * m {
        return Err(AnalysisError::Shape(format!(
            "{} observed values for {channels} channel(s) at {m} point(s)",
            observed.len()
        )));
    }
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
    let mut out = background.to_vec();
    if m == 0 {
        return Ok(out);
    }
    let d = |a: usize, b: usize| {
        let x = a.abs_diff(b);
        if cfg.periodic { x.min(n - x) } else { x }
    };
    let corr = |(r1, c1): (usize, usize), (r2, c2): (usize, usize)| {
        let (dr, dc) = (d(r1, r2) as f64, d(c1, c2) as f64);
        (-(dr * dr + dc * dc) / (2.0 * cfg.length_cells * cfg.length_cells)).exp()
    };
    // H B Hᵀ + R, the same for every channel
    let mut s = DMatrix::<f64>::from_fn(m, m, |i, j| corr(points[i], points[j]));
    for i in 0..m {
        s[(i, i)] += cfg.obs_to_background;
    }
    let chol = s.cholesky().ok_or(AnalysisError::Singular)?;
    for ch in 0..channels {
        let field = &mut out[ch * cells..(ch + 1) * cells];
        let innovation = DVector::<f64>::from_fn(m, |j, _| {
            let (r, c) = points[j];
            observed[ch * m + j] as f64 - background[ch * cells + r * n + c] as f64
        });
        let w = chol.solve(&innovation);
        for (cell, v) in field.iter_mut().enumerate() {
            let here = (cell / n, cell % n);
            let gain: f64 = points
                .iter()
                .zip(w.iter())
                .map(|(&p, wj)| corr(here, p) * wj)
                .sum();
            *v += gain as f32;
        }
    }
    Ok(out)
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
