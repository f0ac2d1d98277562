//! Shared test helpers: the small FNO of `tests/reference/fno_reference.py`.
#![allow(dead_code)]

use std::path::PathBuf;

use ccm_twin::ccm::WeightSet;
use ccm_twin::fno::{FnoConfig, Normalization};
use ndarray::{ArrayD, IxDyn};

/// Directory of the numpy reference model.
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/fno_small")
}

fn npy(name: &str) -> ArrayD<f32> {
    let path = reference_dir().join(format!("{name}.npy"));
    ndarray_npy::read_npy::<_, ArrayD<f32>>(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn npy_f64(name: &str) -> ArrayD<f64> {
    let path = reference_dir().join(format!("{name}.npy"));
    ndarray_npy::read_npy::<_, ArrayD<f64>>(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference model: config, weights (canonical order), normalisation, input, and numpy's
/// output (f64).
pub struct ReferenceModel {
    pub cfg: FnoConfig,
    pub weights: WeightSet,
    pub norm: Normalization,
    pub input: Vec<f32>,
    pub output: Vec<f64>,
}

pub fn reference_model() -> ReferenceModel {
    let text = std::fs::read_to_string(reference_dir().join("config.json")).unwrap();
    let cfg: FnoConfig = serde_json::from_str(&text).unwrap();
    let weights = WeightSet::from_tensors(cfg.param_shapes().into_iter().map(|(name, shape)| {
        let a = npy(&name);
        assert_eq!(a.shape(), shape.as_slice(), "{name}");
        (name, shape, a.iter().copied().collect())
    }))
    .unwrap();
    let norm = Normalization {
        mean: npy("norm_mean").iter().copied().collect(),
        std: npy("norm_std").iter().copied().collect(),
    };
    let input = npy("input").iter().copied().collect();
    let output = npy_f64("output").iter().copied().collect();
    let _ = IxDyn(&[0]);
    ReferenceModel {
        cfg,
        weights,
        norm,
        input,
        output,
    }
}

/// Relative L2 distance of `a` from `b`.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}
