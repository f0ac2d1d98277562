//! The runtimes against each other: burn's forward (the trainer's), tract and ONNX Runtime on a
//! shipped trained expert and a merge, from a state the dam-break solver made; the `Backend`
//! contract (sliding-window roll, shape and NaN checks, `NotDeployed`); and the errors a field
//! engineer sees when ONNX Runtime is missing.
//!
//! Tests that need ONNX Runtime read `ORT_DYLIB_PATH` through `common::ort_library`: unset, they
//! say `skipped` and pass, unless `CCM_TWIN_REQUIRE_ORT=1` (CI), where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ccm_twin::ccm::prefix::Rollout;
use ccm_twin::ccm::{Line, WeightSet};
use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::fno::{FnoConfig, Normalization, onnx};
use ccm_twin::infer::{
    Backend, InferError, NativeBackend, OnnxExpert, OrtBackend, OrtOptions, StepShape, TractBackend,
};
use ccm_twin::models::FamilyModels;
use common::{ort_library, rel_l2_f32};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Agreement required between runtimes, relative L2, on a step and over a rollout.
const TOLERANCE: f64 = 1e-4;
/// Steps of the parity rollouts.
const STEPS: usize = 10;

fn ort_options(library: PathBuf) -> OrtOptions {
    OrtOptions {
        library: Some(library),
        ..OrtOptions::default()
    }
}

// --- the shipped dam-break expert -------------------------------------------------------------

/// The shipped dam-break bundle, a state from the solver, and the weight sets compared: the
/// anchor and the merge at α = 1.5 (extrapolated past the high endpoint).
struct Shipped {
    bundle: FamilyModels,
    state: Vec<f32>,
    cases: Vec<(&'static str, WeightSet)>,
}

fn shipped() -> &'static Shipped {
    static SHIPPED: OnceLock<Shipped> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dam_break");
        let bundle = FamilyModels::load(&dir).unwrap();
        // a real flood: the reservoir released, one frame interval after the dam broke
        let cfg = FamilyConfig::builtin(Family::DamBreak);
        assert_eq!(cfg.grid.n, bundle.manifest.model.n);
        let mut solver = ccm_twin::pde::new_solver(&cfg, 0.035, 11).unwrap();
        solver.advance(cfg.time.frame_dt).unwrap();
        let mut state = vec![0.0; solver.frame_len()];
        solver.write_frame(&mut state);
        assert_eq!(bundle.manifest.model.t_in, 1);
        let line = Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone())
            .unwrap();
        let mut merged = line.buffer();
        line.merge_into(1.5, &mut merged).unwrap();
        let cases = vec![
            ("anchor", bundle.anchor.weights.clone()),
            ("merge α=1.5", merged),
        ];
        Shipped {
            bundle,
            state,
            cases,
        }
    })
}

/// One step and a `STEPS`-step rollout of every case.
type Outputs = Vec<(Vec<f32>, Vec<f32>)>;

fn run_backend(backend: &mut dyn Backend, s: &Shipped) -> Outputs {
    let fl = backend.shape().frame_len();
    s.cases
        .iter()
        .map(|(_, w)| {
            backend.deploy(w).unwrap();
            let mut one = vec![0.0; fl];
            backend.step(&s.state, &mut one).unwrap();
            let mut rolled = vec![0.0; STEPS * fl];
            backend.roll(&s.state, STEPS, &mut rolled).unwrap();
            assert!(rolled.iter().all(|x| x.is_finite()), "{}", backend.name());
            (one, rolled)
        })
        .collect()
}

fn tract_outputs() -> &'static Outputs {
    static OUT: OnceLock<Outputs> = OnceLock::new();
    OUT.get_or_init(|| {
        let s = shipped();
        let mut tract = TractBackend::new(s.bundle.anchor.clone()).unwrap();
        run_backend(&mut tract, s)
    })
}

/// burn's forward of the same weights (the trainer's model, a different code path entirely).
#[cfg(feature = "train")]
fn burn_outputs() -> &'static Outputs {
    use burn::tensor::Device;
    use ccm_twin::fno::model::{Fno, rollout};
    static OUT: OnceLock<Outputs> = OnceLock::new();
    OUT.get_or_init(|| {
        let s = shipped();
        let m = &s.bundle.manifest;
        let names: Vec<String> = m.model.param_shapes().into_iter().map(|(n, _)| n).collect();
        s.cases
            .iter()
            .map(|(_, w)| {
                let params = w.select(names.iter().map(String::as_str)).unwrap();
                let model = Fno::from_weights(&m.model, &m.normalization, &params, &Device::flex())
                    .unwrap();
                let fl = m.model.channels * m.model.n * m.model.n;
                let rolled = rollout(&model, &s.state, 1, STEPS);
                (rolled[..fl].to_vec(), rolled)
            })
            .collect()
    })
}

fn assert_agree(name: &str, got: &Outputs, reference_name: &str, reference: &Outputs) {
    let x = &shipped().state;
    // the step's update y − x too: the state itself is dominated by the still water
    let update = |y: &[f32]| -> Vec<f32> { y.iter().zip(x).map(|(y, x)| y - x).collect() };
    for (((label, _), (step, roll)), (ref_step, ref_roll)) in
        shipped().cases.iter().zip(got).zip(reference)
    {
        let e1 = rel_l2_f32(step, ref_step);
        let e_update = rel_l2_f32(&update(step), &update(ref_step));
        let e10 = rel_l2_f32(roll, ref_roll);
        eprintln!(
            "{label}: {name} vs {reference_name}: relative L2 one step {e1:.2e} (update \
             {e_update:.2e}), {STEPS} steps {e10:.2e}"
        );
        assert!(
            e1 <= TOLERANCE && e_update <= TOLERANCE && e10 <= TOLERANCE,
            "{label}: {name} vs {reference_name}: relative L2 {e1:e} (one step), {e_update:e} \
             (its update), {e10:e} ({STEPS} steps)"
        );
    }
}

#[test]
fn tract_rolls_the_shipped_expert_like_its_steps() {
    let s = shipped();
    let fl = s.state.len();
    for (one, rolled) in tract_outputs() {
        // the first frame of a rollout is the step, bit for bit; the rollout moves the flood
        assert_eq!(&rolled[..fl], one.as_slice());
        assert!(rel_l2_f32(&rolled[(STEPS - 1) * fl..], &s.state) > 1e-3);
    }
    // the anchor and the merge are different models
    let (a, m) = (&tract_outputs()[0].1, &tract_outputs()[1].1);
    assert!(rel_l2_f32(a, m) > 1e-4, "the merge changes the forecast");
}

#[cfg(feature = "train")]
#[test]
fn tract_agrees_with_burn_on_the_shipped_anchor_and_a_merge() {
    assert_agree("tract", tract_outputs(), "burn", burn_outputs());
}

#[test]
fn the_native_runtime_agrees_with_tract_and_burn_on_the_shipped_anchor_and_a_merge() {
    let s = shipped();
    let mut native = NativeBackend::new(&s.bundle.anchor).unwrap();
    assert_eq!(native.name(), "native");
    let got = run_backend(&mut native, s);
    assert_agree("native", &got, "tract", tract_outputs());
    #[cfg(feature = "train")]
    assert_agree("native", &got, "burn", burn_outputs());
}

/// tract runs our exporter's graph in the stacked layout (4 products and 1 einsum per Fourier
/// layer instead of 12 and 4): the same model as the file's graph, which it runs as it is when
/// the graph is not exactly ours (here the same model with one `Add`'s operands swapped). The
/// other runtimes' tests compare them with this stacked tract.
#[test]
fn tract_runs_our_graph_stacked_and_any_other_as_it_is() {
    let s = shipped();
    assert!(
        TractBackend::new(s.bundle.anchor.clone())
            .unwrap()
            .stacked()
    );
    let mut foreign = s.bundle.anchor.clone();
    let graph = foreign.proto.graph.as_mut().unwrap();
    let add = graph.node.iter_mut().find(|n| n.op_type == "Add").unwrap();
    add.input.swap(0, 1);
    let mut as_is = TractBackend::new(foreign).unwrap();
    assert!(!as_is.stacked());
    let got = run_backend(&mut as_is, s);
    assert_agree(
        "tract, the file's graph",
        &got,
        "tract, stacked",
        tract_outputs(),
    );
    // a weight set whose fixed tensors differ from the metadata's runs in the file's graph
    let mut odd = s.bundle.anchor.weights.clone();
    let std_out = odd.get_mut("norm.std_out").unwrap();
    std_out.iter_mut().for_each(|x| *x *= 1.1);
    let fl = s.state.len();
    let (mut a, mut b) = (vec![0.0; fl], vec![0.0; fl]);
    let mut stacked = TractBackend::new(s.bundle.anchor.clone()).unwrap();
    stacked.deploy(&odd).unwrap();
    stacked.step(&s.state, &mut a).unwrap();
    let mut file = TractBackend::with_file_graph(s.bundle.anchor.clone()).unwrap();
    file.deploy(&odd).unwrap();
    file.step(&s.state, &mut b).unwrap();
    assert_eq!(a, b, "the changed normalisation is the file graph's");
    // a swappable backend runs the file's graph
    let varying = s.bundle.experts().varying();
    let swapped = TractBackend::swappable(s.bundle.anchor.clone(), &varying).unwrap();
    assert!(!swapped.stacked());
}

#[test]
fn tract_with_swapped_weights_agrees_with_tract_rebuilt_per_merge() {
    let s = shipped();
    let mut swap = s.bundle.tract_backend().unwrap();
    let got = run_backend(&mut swap, s);
    assert_agree("tract (swapped weights)", &got, "tract", tract_outputs());
    // a weight set that changes a tensor the plan holds as a constant is refused, and the
    // deployed merge keeps serving
    let mut odd = s.bundle.anchor.weights.clone();
    let fixed = s
        .bundle
        .anchor
        .weights
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .find(|n| !s.bundle.experts().varying().contains(n))
        .expect("the DFT bases are the same in every expert");
    odd.get_mut(&fixed).unwrap()[0] += 1.0;
    let e = swap.deploy(&odd).unwrap_err();
    assert!(e.to_string().contains(&fixed), "{e}");
    let mut y = vec![0.0; s.state.len()];
    swap.step(&s.state, &mut y).unwrap();
    assert_eq!(y, got[1].0, "the last good merge still runs");
}

#[test]
fn ort_agrees_with_tract_and_burn_on_the_shipped_anchor_and_a_merge() {
    let Some(lib) = ort_library("ort_agrees_with_tract_and_burn_on_the_shipped_anchor_and_a_merge")
    else {
        return;
    };
    let s = shipped();
    let mut ort = OrtBackend::new(s.bundle.anchor.clone(), &ort_options(lib))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ort.name(), "ort");
    assert!(
        ort.stacked(),
        "ONNX Runtime runs our graph's stacked layout"
    );
    let got = run_backend(&mut ort, s);
    assert_agree("ort", &got, "tract", tract_outputs());
    #[cfg(feature = "train")]
    assert_agree("ort", &got, "burn", burn_outputs());
    // and the file's graph as it is
    let lib = ort_library("ort_agrees_with_tract_and_burn_on_the_shipped_anchor_and_a_merge")
        .expect("found above");
    let mut as_is = OrtBackend::with_file_graph(s.bundle.anchor.clone(), &ort_options(lib))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!as_is.stacked());
    let got = run_backend(&mut as_is, s);
    assert_agree("ort, the file's graph", &got, "tract", tract_outputs());
}

// --- a tiny random model with two input frames ------------------------------------------------

/// The tiny architecture with two channels.
fn tiny_config(t_in: usize) -> FnoConfig {
    common::tiny_fno(2, t_in)
}

/// Normalisation constants that differ per channel, so a runtime that indexes them wrongly
/// (by frame instead of by channel, say) cannot agree with the others.
fn tiny_norm(channels: usize) -> Normalization {
    Normalization {
        mean: (0..channels).map(|c| 0.1 + 0.35 * c as f32).collect(),
        std: (0..channels).map(|c| 0.8 + 0.55 * c as f32).collect(),
    }
}

/// A tiny exported expert with random weights (times `scale`).
fn tiny_expert(cfg: &FnoConfig, seed: u64, scale: f32) -> OnnxExpert {
    let mut w = common::random_weights(cfg, seed);
    w.data_mut().iter_mut().for_each(|x| *x *= scale);
    let norm = tiny_norm(cfg.channels);
    let bytes = onnx::export_bytes(cfg, &norm, &w).unwrap();
    OnnxExpert::from_bytes(&bytes, Path::new("tiny.onnx")).unwrap()
}

fn tiny_state(shape: StepShape, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..shape.input_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

/// Every backend this run can build over `template` (ONNX Runtime when it is available).
fn backends(template: &OnnxExpert, test: &str) -> Vec<Box<dyn Backend>> {
    let trainable: Vec<String> = template
        .meta()
        .unwrap()
        .config
        .param_shapes()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut all: Vec<Box<dyn Backend>> = vec![
        Box::new(TractBackend::new(template.clone()).unwrap()),
        Box::new(TractBackend::swappable(template.clone(), &trainable).unwrap()),
        Box::new(NativeBackend::new(template).unwrap()),
    ];
    if let Some(lib) = ort_library(test) {
        all.push(Box::new(
            OrtBackend::new(template.clone(), &ort_options(lib)).unwrap_or_else(|e| panic!("{e}")),
        ));
    }
    all
}

/// A rollout with `T_in = 2` is the steps fed back through a sliding window, in every backend.
#[test]
fn a_rollout_slides_a_two_frame_window() {
    let expert = tiny_expert(&tiny_config(2), 1, 1.0);
    let mut outputs = Vec::new();
    for mut b in backends(&expert, "a_rollout_slides_a_two_frame_window") {
        b.deploy(&expert.weights).unwrap();
        let shape = b.shape();
        let fl = shape.frame_len();
        let x = tiny_state(shape, 2);
        let mut rolled = vec![0.0; 3 * fl];
        b.roll(&x, 3, &mut rolled).unwrap();
        // by hand: [x0, x1] → y0; [x1, y0] → y1; [y0, y1] → y2
        let mut window = x.clone();
        for k in 0..3 {
            let mut y = vec![0.0; fl];
            b.step(&window, &mut y).unwrap();
            assert_eq!(
                &rolled[k * fl..(k + 1) * fl],
                y.as_slice(),
                "{} step {k}",
                b.name()
            );
            window = [&window[fl..], &y[..]].concat();
        }
        // the Rollout the CCM readouts use is deploy + roll
        let mut via_rollout = vec![0.0; 3 * fl];
        b.rollout(&expert.weights, &x, 3, &mut via_rollout).unwrap();
        assert_eq!(via_rollout, rolled, "{}", b.name());
        outputs.push((b.name(), rolled));
    }
    #[cfg(feature = "train")]
    {
        use burn::tensor::Device;
        use ccm_twin::fno::model::{Fno, rollout};
        let cfg = tiny_config(2);
        let norm = tiny_norm(2);
        let names: Vec<String> = cfg.param_shapes().into_iter().map(|(n, _)| n).collect();
        let params = expert
            .weights
            .select(names.iter().map(String::as_str))
            .unwrap();
        let model = Fno::from_weights(&cfg, &norm, &params, &Device::flex()).unwrap();
        let x = tiny_state(StepShape::of(&expert).unwrap(), 2);
        outputs.push(("burn", rollout(&model, &x, 1, 3)));
    }
    for (name, y) in &outputs[1..] {
        let e = rel_l2_f32(y, &outputs[0].1);
        assert!(
            e <= TOLERANCE,
            "{name} vs {}: relative L2 {e:e}",
            outputs[0].0
        );
    }
}

/// A merge that diverges is data for the prefix guard, not an error: the roll returns, with the
/// non-finite prediction written and NaN after it.
#[test]
fn a_diverging_rollout_ends_in_nan_instead_of_failing() {
    let expert = tiny_expert(&tiny_config(1), 3, 1e6);
    for mut b in backends(
        &expert,
        "a_diverging_rollout_ends_in_nan_instead_of_failing",
    ) {
        b.deploy(&expert.weights).unwrap();
        let shape = b.shape();
        let fl = shape.frame_len();
        let x = tiny_state(shape, 4);
        let steps = 8;
        let mut rolled = vec![0.0; steps * fl];
        b.roll(&x, steps, &mut rolled)
            .unwrap_or_else(|e| panic!("{}: {e}", b.name()));
        let first_bad = rolled
            .chunks(fl)
            .position(|f| f.iter().any(|v| !v.is_finite()))
            .unwrap_or_else(|| panic!("{}: weights ×1e6 should overflow f32", b.name()));
        assert!(first_bad < steps - 1, "{}: diverged too late", b.name());
        assert!(
            rolled[(first_bad + 1) * fl..].iter().all(|v| v.is_nan()),
            "{}",
            b.name()
        );
    }
}

// --- errors -----------------------------------------------------------------------------------

#[test]
fn bad_input_is_refused_with_a_clear_error_by_every_backend() {
    let expert = tiny_expert(&tiny_config(1), 5, 1.0);
    for mut b in backends(
        &expert,
        "bad_input_is_refused_with_a_clear_error_by_every_backend",
    ) {
        let name = b.name();
        let shape = b.shape();
        let fl = shape.frame_len();
        let x = tiny_state(shape, 6);
        let mut y = vec![0.0; fl];
        // stepping or rolling before a deployment
        assert!(
            matches!(b.step(&x, &mut y), Err(InferError::NotDeployed)),
            "{name}"
        );
        assert!(
            matches!(
                b.roll(&x, 2, &mut vec![0.0; 2 * fl]),
                Err(InferError::NotDeployed)
            ),
            "{name}"
        );
        b.deploy(&expert.weights).unwrap();
        // a state of the wrong length
        let e = b.step(&x[1..], &mut y).unwrap_err();
        assert!(
            matches!(e, InferError::Shape { what: "input state", expected, found }
                if expected == fl && found == fl - 1),
            "{name}: {e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("expected {fl} values, got {}", fl - 1)),
            "{name}: {e}"
        );
        // an output buffer of the wrong length; a rollout buffer too short
        let e = b.step(&x, &mut vec![0.0; fl + 1]).unwrap_err();
        assert!(
            matches!(
                e,
                InferError::Shape {
                    what: "output frame",
                    ..
                }
            ),
            "{name}: {e}"
        );
        let e = b.roll(&x, 3, &mut vec![0.0; 2 * fl]).unwrap_err();
        assert!(
            matches!(
                e,
                InferError::Shape {
                    what: "rollout buffer",
                    ..
                }
            ),
            "{name}: {e}"
        );
        // NaN and infinity in the state, named by index
        for bad in [f32::NAN, f32::INFINITY] {
            let mut z = x.clone();
            z[17] = bad;
            let e = b.step(&z, &mut y).unwrap_err();
            assert!(
                matches!(e, InferError::NonFiniteInput { index: 17 }),
                "{name}: {e}"
            );
            assert!(
                e.to_string().contains("non-finite value at index 17"),
                "{e}"
            );
            let e = b.roll(&z, 2, &mut vec![0.0; 2 * fl]).unwrap_err();
            assert!(
                matches!(e, InferError::NonFiniteInput { index: 17 }),
                "{name}: {e}"
            );
        }
        // weights of another architecture
        let other = tiny_expert(
            &FnoConfig {
                width: 5,
                ..tiny_config(1)
            },
            5,
            1.0,
        );
        let e = b.deploy(&other.weights).unwrap_err();
        assert!(e.to_string().contains("lift"), "{name}: {e}");
        // after all that, the deployed model still steps
        b.step(&x, &mut y).unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
    }
}

#[cfg(feature = "ort")]
#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error() {
    let expert = tiny_expert(&tiny_config(1), 7, 1.0);
    let missing = PathBuf::from("/nonexistent/onnxruntime/capi/libonnxruntime.so.1.32.0");
    let e = OrtBackend::new(expert.clone(), &ort_options(missing.clone()))
        .err()
        .expect("no library there");
    let msg = e.to_string();
    assert!(
        matches!(&e, InferError::Library { tried: Some(p), .. } if *p == missing),
        "{msg}"
    );
    for part in [
        "cannot load ONNX Runtime from /nonexistent/onnxruntime/capi/libonnxruntime.so.1.32.0",
        "no such file",
        "pip install",
        "onnxruntime==1.32.0",
        "ORT_DYLIB_PATH",
    ] {
        assert!(msg.contains(part), "missing {part:?} in: {msg}");
    }

    // a file that is not a shared library: refused, naming it (never a crash)
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("libonnxruntime.so.1.32.0");
    std::fs::write(&junk, b"not a shared library").unwrap();
    let e = OrtBackend::new(expert.clone(), &ort_options(junk.clone()))
        .err()
        .expect("not a library");
    let msg = e.to_string();
    assert!(
        msg.contains(&junk.display().to_string()) && msg.contains("ONNX Runtime"),
        "{msg}"
    );

    // a directory where the library should be
    let e = OrtBackend::new(expert.clone(), &ort_options(tmp.path().to_path_buf()))
        .err()
        .expect("a directory");
    assert!(e.to_string().contains("it is not a file"), "{e}");

    // zero threads is a configuration error, reported before any library is touched
    let opts = OrtOptions {
        intra_threads: 0,
        ..ort_options(junk)
    };
    let e = OrtBackend::new(expert, &opts).err().expect("0 threads");
    assert!(e.to_string().contains("intra_threads"), "{e}");
}

#[cfg(not(feature = "ort"))]
#[test]
fn without_the_ort_feature_the_backend_says_how_to_rebuild() {
    let expert = tiny_expert(&tiny_config(1), 7, 1.0);
    let e = OrtBackend::new(expert, &OrtOptions::default())
        .err()
        .expect("compiled out");
    assert!(matches!(e, InferError::NotCompiled { .. }));
    assert!(
        e.to_string()
            .contains("built without the `ort` feature; rebuild with --features ort"),
        "{e}"
    );
}
