//! The ONNX export, run in tract and in ONNX Runtime, against numpy's forward of the same model.

mod common;

use ccm_twin::fno::onnx::{self, ExpertMeta};
use tract_onnx::prelude::*;

fn run_tract(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract parses the export")
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimises the export")
        .into_runnable()
        .unwrap();
    let x = tract_ndarray::Array4::from_shape_vec(shape, input.to_vec()).unwrap();
    let out = model.run(tvec!(Tensor::from(x).into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn tract_runs_the_export_like_numpy() {
    let m = common::reference_model();
    let bytes = onnx::export_bytes(&m.cfg, &m.norm, &m.weights).unwrap();
    let (c_in, n) = (m.cfg.t_in * m.cfg.channels, m.cfg.n);
    let y = run_tract(&bytes, &m.input, [1, c_in, n, n]);
    let err = common::rel_l2(&y, &m.output);
    eprintln!("tract vs numpy: relative L2 {err:.2e}");
    assert!(err <= 1e-5, "relative L2 {err:e}");
}

#[test]
fn onnx_runtime_runs_the_export_like_numpy() {
    let Some(library) = common::ort_library("onnx_runtime_runs_the_export_like_numpy") else {
        return;
    };
    use ccm_twin::infer::{Backend, OnnxExpert, ort::OrtBackend, ort::OrtOptions};
    let m = common::reference_model();
    let bytes = onnx::export_bytes(&m.cfg, &m.norm, &m.weights).unwrap();
    let expert = OnnxExpert::from_bytes(&bytes, std::path::Path::new("reference.onnx")).unwrap();
    let weights = expert.weights.clone();
    let opts = OrtOptions {
        library: Some(library),
        ..OrtOptions::default()
    };
    let mut ort = OrtBackend::new(expert, &opts).unwrap();
    ort.deploy(&weights).unwrap();
    let mut y = vec![0.0; m.output.len()];
    ort.step(&m.input, &mut y).unwrap();
    let err = common::rel_l2(&y, &m.output);
    eprintln!("ONNX Runtime vs numpy: relative L2 {err:.2e}");
    assert!(err <= 1e-5, "relative L2 {err:e}");
}

#[test]
fn a_batch_is_the_samples_one_by_one() {
    let m = common::reference_model();
    let bytes = onnx::export_bytes(&m.cfg, &m.norm, &m.weights).unwrap();
    let (c_in, n) = (m.cfg.t_in * m.cfg.channels, m.cfg.n);
    let other: Vec<f32> = m.input.iter().map(|x| 0.5 * x + 0.1).collect();
    let batch = [m.input.clone(), other.clone()].concat();
    let y = run_tract(&bytes, &batch, [2, c_in, n, n]);
    let y0 = run_tract(&bytes, &m.input, [1, c_in, n, n]);
    let y1 = run_tract(&bytes, &other, [1, c_in, n, n]);
    let half = y.len() / 2;
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(diff(&y[..half], &y0) < 1e-5);
    assert!(diff(&y[half..], &y1) < 1e-5);
}

#[test]
fn the_export_carries_its_config_and_canonical_initializers() {
    let m = common::reference_model();
    let model = onnx::export(&m.cfg, &m.norm, &m.weights).unwrap();
    let meta = model
        .metadata_props
        .iter()
        .find(|p| p.key == onnx::META_KEY)
        .unwrap();
    let meta: ExpertMeta = serde_json::from_str(&meta.value).unwrap();
    assert_eq!(meta.config, m.cfg);
    assert_eq!(meta.normalization, m.norm);
    let graph = model.graph.unwrap();
    for (name, shape) in m.cfg.param_shapes() {
        let t = graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        assert_eq!(dims, shape, "{name}");
    }
}

#[test]
fn bad_normalisation_is_refused() {
    let m = common::reference_model();
    let mut norm = m.norm.clone();
    norm.std[1] = 0.0;
    let err = onnx::export(&m.cfg, &norm, &m.weights)
        .unwrap_err()
        .to_string();
    assert!(err.contains("std must be positive"), "{err}");
}
