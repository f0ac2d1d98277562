//! In-place merge `θ(α)` of a shipped family (~0.9 M parameters) against a plain copy of the
//! same weight bytes, measured in the same run: the ratio is what docs/PERFORMANCE.md reports.
//!
//! cargo bench --bench merge

use std::hint::black_box;
use std::path::Path;

use ccm_twin::ccm::Line;
use ccm_twin::models::FamilyModels;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn merge_vs_copy(c: &mut Criterion) {
    let bundle = FamilyModels::load(Path::new("models/dam_break")).expect("shipped bundle");
    let line = Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone())
        .expect("shared layout");
    let mut buffer = line.buffer();
    let source = bundle.anchor.weights.data().to_vec();
    let bytes = (buffer.len() * std::mem::size_of::<f32>()) as u64;

    let mut g = c.benchmark_group("merge_vs_copy");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("plain copy of the weight bytes", |b| {
        b.iter(|| buffer.data_mut().copy_from_slice(black_box(&source)))
    });
    // the merge's own memory traffic (read two buffers, write one) with the least arithmetic
    let other = bundle.high.weights.data().to_vec();
    g.bench_function("sum of two weight buffers (same traffic as a merge)", |b| {
        b.iter(|| {
            for ((o, x), y) in buffer.data_mut().iter_mut().zip(&source).zip(&other) {
                *o = x + y;
            }
            black_box(buffer.data()[0])
        })
    });
    let mut alpha = 0.0f32;
    g.bench_function("merge theta(alpha) in place", |b| {
        b.iter(|| {
            // a different α each time, as in a readout
            alpha = if alpha > 2.0 { -2.0 } else { alpha + 0.37 };
            line.merge_into(black_box(alpha), &mut buffer).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, merge_vs_copy);
criterion_main!(benches);
