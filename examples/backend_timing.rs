//! Times the runtimes on a shipped bundle: deploying a merge (median over merges along the line)
//! and one step (median), for tract and, when `ORT_DYLIB_PATH` is set, ONNX Runtime.
//!
//! ```text
//! ORT_DYLIB_PATH=.../libonnxruntime.so.1.32.0 cargo run --release --example backend_timing -- models/dam_break
//! ```

use std::path::PathBuf;
use std::time::Instant;

use ccm_twin::ccm::Line;
use ccm_twin::infer::{Backend, NativeBackend, OrtBackend, OrtOptions, TractBackend};
use ccm_twin::models::FamilyModels;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models/dam_break"));
    let bundle = FamilyModels::load(&dir)?;
    let line = Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone())?;
    let mut merged = line.buffer();
    let mut backends: Vec<(&str, Box<dyn Backend>)> = vec![
        ("tract", Box::new(TractBackend::new(bundle.anchor.clone())?)),
        ("tract-swap", Box::new(bundle.tract_backend()?)),
        ("native", Box::new(NativeBackend::new(&bundle.anchor)?)),
    ];
    match OrtBackend::new(bundle.anchor.clone(), &OrtOptions::default()) {
        Ok(b) => backends.push(("ort", Box::new(b))),
        Err(e) => eprintln!("ort not timed: {e}"),
    }
    // an optional second argument keeps only the backends whose label contains it
    if let Some(only) = std::env::args().nth(2) {
        backends.retain(|(label, _)| label.contains(only.as_str()));
    }
    for (label, b) in &mut backends {
        let shape = b.shape();
        let state: Vec<f32> = (0..shape.input_len())
            .map(|i| 0.1 + 0.01 * (i % 13) as f32)
            .collect();
        let mut y = vec![0.0; shape.frame_len()];
        let mut deploys = Vec::new();
        for k in 0..9 {
            line.merge_into(-2.0 + 0.5 * k as f32, &mut merged)?;
            let t = Instant::now();
            b.deploy(&merged)?;
            deploys.push(t.elapsed().as_secs_f64() * 1e3);
        }
        b.step(&state, &mut y)?; // warm-up
        let steps: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                b.step(&state, &mut y)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<anyhow::Result<_>>()?;
        println!(
            "{:>10}: deploy {:7.1} ms (median of 9 merges), step {:6.2} ms (median of 200)",
            label,
            median(deploys),
            median(steps),
        );
    }
    Ok(())
}
