//! The parameter-conditioned FNO baseline: what a practitioner would train first when `p` is
//! known. The same FNO, trained on the same anchor data, with the regime coordinate `s(p)` as one
//! more input channel (`ccm-twin train --role conditioned`). Scored two ways:
//!
//! * with the true `p` (the metadata case), and
//! * with `p` read out of the same `K`-frame prefix CCM-Prefix sees: the coordinate whose
//!   rollout over the prefix fits it best, found by a scan over the coordinates of the family's
//!   service range (every `0.1`), then a finer scan (every `0.01`) around the best point. Each
//!   scan is one batched rollout of all its candidates.

use std::path::Path;

use burn::tensor::Device;

use super::report::{Forecast, Forecaster};
use super::{EvalError, Scorer};
use crate::config::ParameterConfig;
use crate::fno::expert::{Expert, Role};
use crate::fno::model::{Fno, rollout_conditioned};

/// How the conditioned model is told the regime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coordinate {
    /// The true `s(p)`.
    Known,
    /// Read out of each trajectory's first `k` frames (`p` unknown).
    Prefix {
        /// Observed frames.
        k: usize,
    },
}

/// A trained parameter-conditioned FNO, as one row of the evaluation.
pub struct ConditionedFno {
    model: Fno,
    parameter: ParameterConfig,
    coordinate: Coordinate,
}

impl std::fmt::Debug for ConditionedFno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConditionedFno")
            .field("config", self.model.config())
            .field("coordinate", &self.coordinate)
            .finish()
    }
}

/// Spacing of the coarse and the fine coordinate scans of the prefix readout.
const COARSE: f64 = 0.1;
const FINE: f64 = 0.01;

impl ConditionedFno {
    /// Loads the conditioned expert in `dir` (it must be of `family`'s bundle architecture plus
    /// one conditioning channel) for `parameter`'s coordinate.
    pub fn load(
        dir: &Path,
        parameter: &ParameterConfig,
        bundle: &crate::fno::FnoConfig,
        coordinate: Coordinate,
    ) -> Result<Self, EvalError> {
        let expert =
            Expert::load(dir).map_err(|e| EvalError::Setup(format!("conditioned expert: {e}")))?;
        let m = &expert.meta;
        if m.role != Role::Conditioned || m.config.conditioning != 1 {
            return Err(EvalError::Setup(format!(
                "{} is a {} expert with {} conditioning channel(s), not a conditioned baseline \
                 (`ccm-twin train --role conditioned`)",
                dir.display(),
                m.role,
                m.config.conditioning
            )));
        }
        let plain = crate::fno::FnoConfig {
            conditioning: 0,
            ..m.config
        };
        if plain != *bundle || m.parameter != parameter.name {
            return Err(EvalError::Setup(format!(
                "the conditioned expert {} ({:?}, parameter {}) does not fit the bundle ({:?}, \
                 parameter {})",
                dir.display(),
                plain,
                m.parameter,
                bundle,
                parameter.name
            )));
        }
        let model = Fno::from_weights(
            &m.config,
            &m.normalization,
            &expert.weights,
            &Device::flex(),
        )
        .map_err(|e| EvalError::Setup(format!("conditioned expert {}: {e}", dir.display())))?;
        Ok(ConditionedFno {
            model,
            parameter: parameter.clone(),
            coordinate,
        })
    }

    /// A conditioned model already in memory.
    ///
    /// # Panics
    /// If `model` has no conditioning channel.
    pub fn new(model: Fno, parameter: ParameterConfig, coordinate: Coordinate) -> Self {
        assert_eq!(model.config().conditioning, 1, "a conditioned model");
        ConditionedFno {
            model,
            parameter,
            coordinate,
        }
    }

    /// The coordinate whose rollout from frame `T_in − 1` best reproduces frames `T_in..k` of
    /// the trajectory `index` (relative L2 over those frames), and that error.
    pub fn read_coordinate(&self, scorer: &Scorer<'_>, index: usize, k: usize) -> (f64, f64) {
        let [a, b] = self
            .parameter
            .service_range()
            .map(|p| self.parameter.coordinate(p));
        let (lo, hi) = (a.min(b), a.max(b));
        let grid = |lo: f64, hi: f64, step: f64| -> Vec<f64> {
            let n = ((hi - lo) / step).round().max(1.0) as usize;
            (0..=n)
                .map(|i| lo + (hi - lo) * i as f64 / n as f64)
                .collect()
        };
        let coarse = self.prefix_errors(scorer, index, k, &grid(lo, hi, COARSE));
        let (c0, e0) = best(&coarse);
        if !e0.is_finite() {
            // every candidate diverged over the prefix: no evidence; the centre of the range
            let centre = 0.5 * (lo + hi);
            return (centre, f64::INFINITY);
        }
        let fine = self.prefix_errors(
            scorer,
            index,
            k,
            &grid((c0 - COARSE).max(lo), (c0 + COARSE).min(hi), FINE),
        );
        best(&fine)
    }

    /// `(coordinate, prefix error)` of each candidate, from one batched rollout.
    fn prefix_errors(
        &self,
        scorer: &Scorer<'_>,
        index: usize,
        k: usize,
        candidates: &[f64],
    ) -> Vec<(f64, f64)> {
        let t_in = scorer.t_in();
        let steps = k - t_in;
        let frame = scorer.frame_len();
        let init = scorer.frames(&[index], 0, t_in);
        let truth = scorer.frames(&[index], t_in, steps);
        let batch = candidates.len();
        let inits: Vec<f32> = (0..batch).flat_map(|_| init.iter().copied()).collect();
        let cond: Vec<f32> = candidates.iter().map(|&c| c as f32).collect();
        let pred = rollout_conditioned(&self.model, &inits, Some(&cond), batch, steps);
        candidates
            .iter()
            .enumerate()
            .map(|(b, &c)| {
                let p = &pred[b * steps * frame..(b + 1) * steps * frame];
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for (x, y) in p.iter().zip(&truth) {
                    num += (*x as f64 - *y as f64).powi(2);
                    den += (*y as f64).powi(2);
                }
                let e = (num / den.max(f64::MIN_POSITIVE)).sqrt();
                (c, if e.is_finite() { e } else { f64::INFINITY })
            })
            .collect()
    }
}

/// The point of smallest error (the first on ties).
fn best(points: &[(f64, f64)]) -> (f64, f64) {
    points.iter().copied().fold(
        (f64::NAN, f64::INFINITY),
        |acc, p| if p.1 < acc.1 { p } else { acc },
    )
}

impl Forecaster for ConditionedFno {
    fn forecast(
        &mut self,
        scorer: &Scorer<'_>,
        p: f64,
        indices: &[usize],
    ) -> Result<Option<Forecast>, EvalError> {
        let coordinates: Vec<f64> = match self.coordinate {
            Coordinate::Known => vec![self.parameter.coordinate(p); indices.len()],
            Coordinate::Prefix { k } => indices
                .iter()
                .map(|&i| self.read_coordinate(scorer, i, k).0)
                .collect(),
        };
        let init = scorer.frames(indices, 0, scorer.t_in());
        let cond: Vec<f32> = coordinates.iter().map(|&c| c as f32).collect();
        let pred = rollout_conditioned(
            &self.model,
            &init,
            Some(&cond),
            indices.len(),
            scorer.horizon,
        );
        Ok(Some(Forecast { pred, coordinates }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Family, FamilyConfig};
    use crate::dataset::{self, GenerateOptions, Split};
    use crate::fno::model::init_weights;
    use crate::fno::{FnoConfig, Normalization};

    /// A trajectory the conditioned model itself rolled out at a coordinate: the prefix readout
    /// finds that coordinate, and the forecasts run at the coordinates it read.
    #[test]
    fn the_prefix_readout_recovers_the_coordinate_of_its_own_rollout() {
        let mut fam = FamilyConfig::builtin(Family::ReactionDiffusion);
        fam.grid.n = 16;
        fam.grid.solve_n = Some(32);
        fam.time.frames = 6;
        fam.time.horizon = 5;
        let tmp = tempfile::tempdir().unwrap();
        let opts = GenerateOptions {
            count: Some(1),
            force: false,
        };
        let dir = tmp.path().join("test");
        dataset::generate(&fam, Split::Test, &dir, &opts, &|| ()).unwrap();
        let mut data = dataset::load(&dir).unwrap();

        let cfg = FnoConfig {
            channels: 2,
            t_in: 1,
            n: 16,
            width: 6,
            modes: 3,
            layers: 2,
            hidden: 8,
            conditioning: 1,
        };
        let norm = Normalization {
            mean: vec![0.5, 0.25],
            std: vec![0.3, 0.2],
        };
        let mut w = init_weights(&cfg, 11);
        // a clear dependence on the coordinate, and steps large enough to tell it apart
        let inputs = cfg.in_channels();
        for row in w.get_mut("lift.weight").unwrap().chunks_mut(inputs) {
            row[inputs - 1] *= 4.0;
        }
        w.get_mut("proj2.weight")
            .unwrap()
            .iter_mut()
            .for_each(|x| *x *= 20.0);
        let model = Fno::from_weights(&cfg, &norm, &w, &Device::flex()).unwrap();

        // trajectory 0 becomes the model's own rollout at c* from its first frame
        let truth_c = 0.37f32;
        let frame = cfg.channels * cfg.n * cfg.n;
        let first: Vec<f32> = data
            .trajectories
            .index_axis(ndarray::Axis(0), 0)
            .index_axis(ndarray::Axis(0), 0)
            .iter()
            .copied()
            .collect();
        let rolled = rollout_conditioned(&model, &first, Some(&[truth_c]), 1, 5);
        for s in 0..5 {
            let mut f = data
                .trajectories
                .index_axis_mut(ndarray::Axis(0), 0)
                .into_shape_with_order((6, frame))
                .unwrap();
            f.row_mut(s + 1)
                .iter_mut()
                .zip(&rolled[s * frame..(s + 1) * frame])
                .for_each(|(d, v)| *d = *v);
        }
        let bundle = FnoConfig {
            conditioning: 0,
            ..cfg
        };
        let scorer = Scorer::new(bundle, norm.clone(), &data, 5, 3);
        let mut read =
            ConditionedFno::new(model, fam.parameter.clone(), Coordinate::Prefix { k: 4 });
        let (c, e) = read.read_coordinate(&scorer, 0, 4);
        assert!(
            (c - truth_c as f64).abs() <= 0.011,
            "read {c}, truth {truth_c}"
        );
        assert!(e < 0.05, "prefix error {e}");
        // the forecast runs at the coordinate read, and reproduces the trajectory
        let f = read
            .forecast(&scorer, data.params[0], &[0])
            .unwrap()
            .unwrap();
        assert_eq!(f.coordinates, vec![c]);
        let score = scorer.score(&f.pred, &[0]);
        assert!(score[0].error < 0.05, "{:?}", score[0]);
    }
}
