//! The engine on a shipped expert (dam break, 64×64, 3 channels, ~0.92 M parameters, batch 1),
//! each figure next to a baseline measured in the same run:
//!
//! 1. `step`: one forward step in each runtime (native, tract with its weights folded into the
//!    plan, tract with swappable weights, ONNX Runtime when `ORT_DYLIB_PATH` is set, and the
//!    trainer's burn forward); the throughput is the FNO's multiply–adds per step, so criterion
//!    prints each runtime's achieved rate;
//! 2. `roofline`: a plain single-precision matrix product of the size of the FNO's largest one
//!    (the projection, 64 × 20 × 4096) on the same GEMM kernels: the rate a step could reach;
//! 3. `deploy`: merge θ(α) in place and make it runnable, per runtime, next to a plain copy of
//!    the weight bytes;
//! 4. `readout`: the CCM prefix readout (K = 4 frames, the default search with the guard) end to
//!    end, per runtime.
//!
//! cargo bench --bench engine            (add `-- step` etc. to run one group)

use std::hint::black_box;
use std::path::Path;

use ccm_twin::ccm::Line;
use ccm_twin::ccm::prefix::{
    Helper, Observation, prescan, read_prefix, read_prefix_parallel, read_prefix_prescanned,
};
use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::infer::gemm::gemm;
use ccm_twin::infer::{Backend, NativeBackend, OrtBackend, OrtOptions, TractBackend};
use ccm_twin::models::FamilyModels;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

struct Setup {
    bundle: FamilyModels,
    line: Line,
    /// The first K frames of a flood at an out-of-range regime.
    prefix: Vec<f32>,
    frame_len: usize,
}

fn setup() -> Setup {
    let bundle = FamilyModels::load(Path::new("models/dam_break")).expect("shipped bundle");
    let line = Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone())
        .expect("shared layout");
    let cfg = FamilyConfig::builtin(Family::DamBreak);
    let mut solver = ccm_twin::pde::new_solver(&cfg, 0.0125, 3).expect("solver");
    let frame_len = solver.frame_len();
    let mut prefix = vec![0.0; cfg.time.prefix * frame_len];
    for (i, frame) in prefix.chunks_exact_mut(frame_len).enumerate() {
        if i > 0 {
            solver.advance(cfg.time.frame_dt).expect("solver step");
        }
        solver.write_frame(frame);
    }
    Setup {
        bundle,
        line,
        prefix,
        frame_len,
    }
}

/// Every runtime this run can build, with the anchor deployed.
fn runtimes(s: &Setup) -> Vec<(&'static str, Box<dyn Backend>)> {
    let anchor = &s.bundle.anchor;
    let mut all: Vec<(&'static str, Box<dyn Backend>)> = vec![
        (
            "native",
            Box::new(NativeBackend::new(anchor).expect("native")),
        ),
        (
            "tract (weights folded)",
            Box::new(TractBackend::new(anchor.clone()).expect("tract")),
        ),
        (
            "tract (swappable weights)",
            Box::new(s.bundle.tract_backend().expect("tract")),
        ),
    ];
    all.push((
        "tract (the file's graph, weights folded)",
        Box::new(TractBackend::with_file_graph(anchor.clone()).expect("tract")),
    ));
    let ort = [
        (
            "ort",
            OrtBackend::new(anchor.clone(), &OrtOptions::default()),
        ),
        (
            "ort (the file's graph)",
            OrtBackend::with_file_graph(anchor.clone(), &OrtOptions::default()),
        ),
    ];
    for (name, b) in ort {
        match b {
            Ok(b) => all.push((name, Box::new(b))),
            Err(e) => eprintln!("ONNX Runtime left out: {e}"),
        }
    }
    for (_, b) in &mut all {
        b.deploy(&anchor.weights).expect("deploy");
    }
    all
}

fn step(c: &mut Criterion) {
    let s = setup();
    let macs = s.bundle.manifest.model.forward_macs();
    let mut g = c.benchmark_group("step");
    // one "element" = one multiply–add of the forward: criterion's elem/s is the MAC rate
    g.throughput(Throughput::Elements(macs));
    let state = &s.prefix[..s.frame_len];
    let mut out = vec![0.0; s.frame_len];
    for (name, mut b) in runtimes(&s) {
        g.bench_function(name, |bench| {
            bench.iter(|| b.step(black_box(state), &mut out).expect("step"))
        });
    }
    #[cfg(feature = "train")]
    {
        use burn::tensor::{Device, Tensor, TensorData};
        use ccm_twin::fno::model::Fno;
        let m = &s.bundle.manifest;
        let names: Vec<String> = m.model.param_shapes().into_iter().map(|(n, _)| n).collect();
        let params = s
            .bundle
            .anchor
            .weights
            .select(names.iter().map(String::as_str))
            .expect("canonical tensors");
        let device = Device::flex();
        let model = Fno::from_weights(&m.model, &m.normalization, &params, &device).expect("burn");
        let n = m.model.n;
        g.bench_function("burn (the trainer's forward)", |bench| {
            bench.iter(|| {
                let x = Tensor::<4>::from_data(
                    TensorData::new(state.to_vec(), [1, m.model.channels, n, n]),
                    &device,
                );
                black_box(model.forward(x).into_data())
            })
        });
    }
    g.finish();
}

fn roofline(c: &mut Criterion) {
    use ndarray::Array2;
    use ndarray::linalg::general_mat_mul;
    // matrixmultiply (packed, via ndarray) and our unpacked kernel on the forward's shapes: the
    // projection [64 × 20]·[20 × 4096] (the largest product), the DFT along h and the inverse
    // along w of a Fourier layer; and a square product, where packed kernels run near their peak
    let mut g = c.benchmark_group("roofline");
    for (m, k, n) in [
        (64, 20, 4096),
        (48, 64, 480),
        (1280, 24, 64),
        (256, 256, 256),
    ] {
        let a = Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.1);
        let b = Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.1);
        let mut out = Array2::<f32>::zeros((m, n));
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(format!("matrixmultiply {m}x{k} by {k}x{n}"), |bench| {
            bench.iter(|| general_mat_mul(1.0, black_box(&a), black_box(&b), 0.0, &mut out))
        });
        let (a, b) = (a.as_slice().unwrap(), b.as_slice().unwrap());
        let mut out = vec![0.0f32; m * n];
        g.bench_function(format!("ours {m}x{k} by {k}x{n}"), |bench| {
            bench.iter(|| gemm(m, k, n, black_box(a), black_box(b), &mut out, false))
        });
    }
    g.finish();
}

fn deploy(c: &mut Criterion) {
    let s = setup();
    let mut buffer = s.line.buffer();
    let source = s.bundle.anchor.weights.data().to_vec();
    let mut g = c.benchmark_group("deploy");
    g.bench_function("plain copy of the weight bytes", |bench| {
        bench.iter(|| buffer.data_mut().copy_from_slice(black_box(&source)))
    });
    for (name, mut b) in runtimes(&s) {
        let mut alpha = 0.0f32;
        g.bench_function(format!("merge + deploy, {name}"), |bench| {
            bench.iter(|| {
                alpha = if alpha > 2.0 { -2.0 } else { alpha + 0.37 };
                s.line.merge_into(alpha, &mut buffer).expect("merge");
                b.deploy(&buffer).expect("deploy")
            })
        });
    }
    g.finish();
}

fn readout(c: &mut Criterion) {
    let s = setup();
    let cfg = s.bundle.prefix_config();
    let mut buffer = s.line.buffer();
    let obs = Observation {
        frames: &s.prefix,
        frame_len: s.frame_len,
        t_in: 1,
        mask: None,
    };
    let mut g = c.benchmark_group("readout");
    g.sample_size(10);
    for (name, mut b) in runtimes(&s) {
        if name.contains("folded") {
            continue; // a graph rebuild per candidate: the slow path the others replace
        }
        g.bench_function(format!("prefix readout K=4, {name}"), |bench| {
            bench.iter(|| {
                read_prefix(&s.line, &mut buffer, &mut b, obs, None, &cfg)
                    .expect("readout")
                    .alpha
            })
        });
    }
    // the steps one readout rolls: every candidate through the prefix, the guarded ones on past it
    {
        let mut native = NativeBackend::new(&s.bundle.anchor).expect("native");
        let r = read_prefix(&s.line, &mut buffer, &mut native, obs, None, &cfg).expect("readout");
        let prefix_steps = s.prefix.len() / s.frame_len - 1;
        let guarded = r.curve.iter().filter(|c| c.growth.is_some()).count();
        let steps = r.curve.len() * prefix_steps + guarded * cfg.guard_steps;
        let eager = r.curve.len() * (prefix_steps + cfg.guard_steps);
        eprintln!(
            "readout: {} candidates × {prefix_steps} prefix steps + {guarded} guarded × {} = \
             {steps} steps (a guard on every candidate: {eager})",
            r.curve.len(),
            cfg.guard_steps
        );
    }
    // what a serving runtime on this box does: a helper runtime shares the coarse scan
    let mut native = NativeBackend::new(&s.bundle.anchor).expect("native");
    let mut helpers = vec![Helper {
        model: NativeBackend::new(&s.bundle.anchor).expect("native"),
        buffer: s.line.buffer(),
    }];
    g.bench_function("prefix readout K=4, native, 2 threads", |bench| {
        bench.iter(|| {
            read_prefix_parallel(
                &s.line,
                &mut buffer,
                &mut native,
                &mut helpers,
                obs,
                None,
                &cfg,
            )
            .expect("readout")
            .alpha
        })
    });
    // what `serve` does for the first readout: the coarse scan as soon as the prefix's first
    // frame is in, the rest when its last frame arrives
    let fl = s.frame_len;
    let k = s.prefix.len() / fl;
    let mut run_prescan = || {
        prescan(
            &s.line,
            &mut buffer,
            &mut native,
            &mut helpers,
            &s.prefix[..fl],
            fl,
            k,
            &cfg,
        )
        .expect("prescan")
    };
    g.bench_function(
        "prescan at the prefix's first frame, native, 2 threads",
        |bench| bench.iter(&mut run_prescan),
    );
    let pre = run_prescan();
    g.bench_function(
        "readout at the prefix's last frame after a prescan, native, 2 threads",
        |bench| {
            bench.iter(|| {
                read_prefix_prescanned(
                    &s.line,
                    &mut buffer,
                    &mut native,
                    &mut helpers,
                    obs,
                    None,
                    &cfg,
                    Some(&pre),
                )
                .expect("readout")
                .alpha
            })
        },
    );
    g.finish();
}

criterion_group!(benches, step, roofline, deploy, readout);
criterion_main!(benches);
