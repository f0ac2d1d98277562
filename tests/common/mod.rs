//! Shared test helpers: the small FNO of `tests/reference/fno_reference.py`, and the rule for
//! tests that need ONNX Runtime.
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

/// The tiny FNO architecture of the tests (16×16 grid, width 4, 3 modes, 2 layers).
pub fn tiny_fno(channels: usize, t_in: usize) -> FnoConfig {
    FnoConfig {
        channels,
        t_in,
        n: 16,
        width: 4,
        modes: 3,
        layers: 2,
        hidden: 8,
        conditioning: 0,
    }
}

/// Every weight uniform in ±0.5 (the spectral ones too, so every mode matters).
pub fn random_weights(cfg: &FnoConfig, seed: u64) -> WeightSet {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut w = WeightSet::zeros(&cfg.param_shapes()).unwrap();
    w.data_mut()
        .iter_mut()
        .for_each(|x| *x = rng.random_range(-0.5..0.5));
    w
}

/// Relative L2 distance of `a` from `b` (both `f32`, accumulated in `f64`).
pub fn rel_l2_f32(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The ONNX Runtime library for a test that needs it, from `ORT_DYLIB_PATH`.
///
/// Unset (or empty): the test prints a `skipped` line and should return — unless
/// `CCM_TWIN_REQUIRE_ORT=1` (CI sets it), where a missing library fails the test instead, so CI
/// cannot pass by skipping. A path that is set but wrong is not skipped: the backend's own error
/// fails the test.
pub fn ort_library(test: &str) -> Option<PathBuf> {
    let required = std::env::var("CCM_TWIN_REQUIRE_ORT").is_ok_and(|v| v == "1");
    let missing = if !cfg!(feature = "ort") {
        "this build has no `ort` feature (rebuild with --features ort)"
    } else {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => return Some(PathBuf::from(p)),
            _ => "set ORT_DYLIB_PATH to libonnxruntime.so.1.32.0 to run it",
        }
    };
    assert!(
        !required,
        "{test}: CCM_TWIN_REQUIRE_ORT=1 but ONNX Runtime cannot be tested: {missing}; install it \
         with `python3 -m pip install --no-deps --target DIR onnxruntime==1.32.0` (as .ci/run \
         does) and set ORT_DYLIB_PATH=DIR/onnxruntime/capi/libonnxruntime.so.1.32.0"
    );
    // straight to stderr, past the test harness's capture, so the skip shows in the log
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: {missing} (CCM_TWIN_REQUIRE_ORT=1 turns this skip into a failure)"
    );
    None
}
