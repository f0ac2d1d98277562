//! Reading the coordinate `α` out of what is known about the target regime: the metadata
//! coordinate (CCM-Coord), its scaled form (CCM-Scale), and the calibrated map.
//!
//! All three take the parameter through its *coordinate* `s(p)` (linear on the parameter's
//! scale, endpoints' band centres at ±1; see `FamilyConfig::coordinate`), so they do not depend
//! on units. The prefix readout, which needs rollouts, is in [`super::prefix`].

use serde::{Deserialize, Serialize};

/// A closed interval of coordinates the readouts may choose from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

impl Interval {
    /// The default readout interval `[−2, 2]`: wider than `[−1, 1]` so that it can extrapolate.
    pub const DEFAULT: Interval = Interval { lo: -2.0, hi: 2.0 };

    /// Clips `x` into the interval.
    pub fn clip(&self, x: f64) -> f64 {
        x.clamp(self.lo, self.hi)
    }
}

/// CCM-Coord: `α = clip(s(p))`.
pub fn coord(coordinate: f64, interval: Interval) -> f64 {
    interval.clip(coordinate)
}

/// CCM-Scale: `α = clip(γ·s(p))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// The fitted factor γ.
    pub gamma: f64,
}

impl Scale {
    /// Fits γ by least squares through the origin on `(s(p), best α)` pairs from validation
    /// regimes: `γ = Σ sα / Σ s²`. Pairs with `s = 0` carry no information about γ.
    pub fn fit(pairs: &[(f64, f64)]) -> Option<Scale> {
        let ss: f64 = pairs.iter().map(|(s, _)| s * s).sum();
        if ss <= 0.0 {
            return None;
        }
        let sa: f64 = pairs.iter().map(|(s, a)| s * a).sum();
        Some(Scale { gamma: sa / ss })
    }

    /// The readout.
    pub fn alpha(&self, coordinate: f64, interval: Interval) -> f64 {
        interval.clip(self.gamma * coordinate)
    }
}

/// The calibrated map `s(p) → α`: monotone (non-decreasing) through the calibration points,
/// piecewise linear between them, and linear beyond the outermost points with the slope of a
/// least-squares line through all of them (one noisy end point cannot tilt the extrapolation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedMap {
    /// `(s(p), α)` knots after the monotone fit, sorted by coordinate.
    pub knots: Vec<(f64, f64)>,
    /// Slope used beyond the knots.
    pub slope: f64,
}

/// Why a calibrated map could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    /// Fewer than two distinct calibration regimes.
    #[error("a calibrated map needs at least two distinct calibration regimes, got {0}")]
    TooFewPoints(usize),
    /// A value is not finite.
    #[error("calibration point ({0}, {1}) is not finite")]
    NonFinite(f64, f64),
}

impl CalibratedMap {
    /// Fits the map to `(s(p), best α)` points (several points at one coordinate are averaged).
    pub fn fit(points: &[(f64, f64)]) -> Result<Self, CalibrationError> {
        if let Some(&(s, a)) = points
            .iter()
            .find(|(s, a)| !(s.is_finite() && a.is_finite()))
        {
            return Err(CalibrationError::NonFinite(s, a));
        }
        let mut sorted = points.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        // group equal coordinates: (coordinate, mean α, weight)
        let mut groups: Vec<(f64, f64, f64)> = Vec::new();
        for (s, a) in sorted {
            match groups.last_mut() {
                Some(g) if (g.0 - s).abs() <= 1e-12 * s.abs().max(1.0) => {
                    g.1 = (g.1 * g.2 + a) / (g.2 + 1.0);
                    g.2 += 1.0;
                }
                _ => groups.push((s, a, 1.0)),
            }
        }
        if groups.len() < 2 {
            return Err(CalibrationError::TooFewPoints(groups.len()));
        }
        // pool adjacent violators: blocks of (sum of weighted α, weight, first index, last index)
        let mut blocks: Vec<(f64, f64, usize, usize)> = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            blocks.push((g.1 * g.2, g.2, i, i));
            while blocks.len() >= 2 {
                let n = blocks.len();
                let (a, b) = (blocks[n - 2], blocks[n - 1]);
                if a.0 / a.1 <= b.0 / b.1 {
                    break;
                }
                blocks.truncate(n - 2);
                blocks.push((a.0 + b.0, a.1 + b.1, a.2, b.3));
            }
        }
        let mut knots = Vec::with_capacity(groups.len());
        for b in &blocks {
            for g in &groups[b.2..=b.3] {
                knots.push((g.0, b.0 / b.1));
            }
        }
        // least-squares slope of the monotone knots, never negative
        let n = knots.len() as f64;
        let (ms, ma) = (
            knots.iter().map(|k| k.0).sum::<f64>() / n,
            knots.iter().map(|k| k.1).sum::<f64>() / n,
        );
        let sxx: f64 = knots.iter().map(|k| (k.0 - ms).powi(2)).sum();
        let sxy: f64 = knots.iter().map(|k| (k.0 - ms) * (k.1 - ma)).sum();
        let slope = (sxy / sxx).max(0.0);
        Ok(CalibratedMap { knots, slope })
    }

    /// `α` at coordinate `s`, clipped to `interval`.
    pub fn alpha(&self, coordinate: f64, interval: Interval) -> f64 {
        let k = &self.knots;
        let (first, last) = (k[0], k[k.len() - 1]);
        let raw = if coordinate <= first.0 {
            first.1 + self.slope * (coordinate - first.0)
        } else if coordinate >= last.0 {
            last.1 + self.slope * (coordinate - last.0)
        } else {
            let i = k.partition_point(|p| p.0 <= coordinate);
            let (a, b) = (k[i - 1], k[i]);
            a.1 + (b.1 - a.1) * (coordinate - a.0) / (b.0 - a.0)
        };
        interval.clip(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: Interval = Interval {
        lo: -10.0,
        hi: 10.0,
    };

    #[test]
    fn coord_clips() {
        assert_eq!(coord(2.7, Interval::DEFAULT), 2.0);
        assert_eq!(coord(-0.3, Interval::DEFAULT), -0.3);
    }

    #[test]
    fn scale_fits_through_the_origin() {
        let s = Scale::fit(&[(1.0, 1.5), (-1.0, -1.5), (0.5, 0.75), (0.0, 3.0)]).unwrap();
        assert!((s.gamma - 1.5).abs() < 1e-12);
        assert_eq!(s.alpha(2.0, Interval::DEFAULT), 2.0);
        assert!(Scale::fit(&[(0.0, 1.0)]).is_none());
    }

    #[test]
    fn calibrated_map_is_monotone_interpolates_and_extrapolates_linearly() {
        // a violation at 0.5 is pooled with its neighbour
        let pts = [
            (-1.0, -1.2),
            (-0.5, -0.4),
            (0.0, 0.1),
            (0.5, 0.6),
            (0.6, 0.4),
            (1.0, 1.1),
        ];
        let m = CalibratedMap::fit(&pts).unwrap();
        for w in m.knots.windows(2) {
            assert!(w[0].1 <= w[1].1, "{:?}", m.knots);
        }
        assert!((m.alpha(0.5, WIDE) - 0.5).abs() < 1e-12, "pooled value");
        assert!(
            (m.alpha(-0.75, WIDE) - (-0.8)).abs() < 1e-12,
            "interpolated"
        );
        assert!(m.slope > 0.0);
        let beyond = m.alpha(2.0, WIDE);
        assert!((beyond - (1.1 + m.slope)).abs() < 1e-12);
        assert!((m.alpha(-2.0, WIDE) - (-1.2 - m.slope)).abs() < 1e-12);
        assert_eq!(m.alpha(100.0, Interval::DEFAULT), 2.0);
    }

    #[test]
    fn calibrated_map_needs_two_regimes() {
        assert_eq!(
            CalibratedMap::fit(&[(0.3, 1.0), (0.3, 2.0)]).unwrap_err(),
            CalibrationError::TooFewPoints(1)
        );
        assert!(CalibratedMap::fit(&[(0.3, f64::NAN), (0.5, 1.0)]).is_err());
    }
}
