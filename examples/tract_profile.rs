//! Where a tract step spends its time: the optimised plan of a bundle's anchor, in the stacked
//! layout the tract backend runs or in the file's split one, run `reps` times with each node
//! timed, summed by operator kind (and the slowest nodes listed). For the tract backend's graph
//! work (`docs/PERFORMANCE.md`).
//!
//! ```text
//! cargo run --profile dev --example tract_profile -- models/dam_break 200 [stacked|split]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ccm_twin::fno::onnx::{SpectralLayout, export_with};
use ccm_twin::models::FamilyModels;
use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        (2..=3).contains(&args.len()),
        "usage: tract_profile <bundle dir> <repetitions> [stacked|split]"
    );
    let models = FamilyModels::load(&PathBuf::from(&args[0]))?;
    let reps: usize = args[1].parse()?;
    let anchor = &models.anchor;
    let m = &models.manifest.model;
    // the input holds T_in frames
    let (c, n) = (m.t_in * m.channels, m.n);
    let layout = match args.get(2).map(String::as_str) {
        None | Some("stacked") => SpectralLayout::Stacked,
        Some("split") => SpectralLayout::Split,
        Some(other) => anyhow::bail!("layout {other}: `stacked` or `split`"),
    };
    let meta = anchor
        .meta()
        .ok_or_else(|| anyhow::anyhow!("no expert metadata"))?;
    let proto = export_with(&meta.config, &meta.normalization, &anchor.weights, layout)?;
    println!("{layout:?} layout");
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&proto)?
        .with_input_fact(0, f32::fact([1, c, n, n]).into())?
        .into_optimized()?
        .into_runnable()?;
    let input: TValue = Tensor::from_shape::<f32>(&[1, c, n, n], &vec![0.5; c * n * n])?.into();
    let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
    let mut per_node: BTreeMap<usize, (String, String, Duration)> = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..reps {
        state.run_plan_with_eval(tvec![input.clone()], |ctx, st, node, inputs| {
            let t = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
            let e = per_node.entry(node.id).or_insert_with(|| {
                (
                    node.op().name().to_string(),
                    format!("{} {:?}", node.name, node.outputs[0].fact.shape),
                    Duration::ZERO,
                )
            });
            e.2 += t.elapsed();
            out
        })?;
    }
    let wall = started.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let mut by_op: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (op, _, d) in per_node.values() {
        let e = by_op.entry(op.clone()).or_default();
        e.0 += 1;
        e.1 += d.as_secs_f64() * 1e3 / reps as f64;
    }
    let timed: f64 = by_op.values().map(|x| x.1).sum();
    println!(
        "{} nodes; {wall:.3} ms per step ({timed:.3} ms inside the nodes)",
        per_node.len()
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    for (op, (count, ms)) in ops {
        println!("{ms:8.3} ms {:5.1} %  {count:3} × {op}", 100.0 * ms / timed);
    }
    let mut nodes: Vec<_> = per_node.values().collect();
    nodes.sort_by_key(|n| std::cmp::Reverse(n.2));
    println!("slowest nodes:");
    for (op, what, d) in nodes.iter().take(15) {
        println!(
            "{:8.3} ms  {op}  {what}",
            d.as_secs_f64() * 1e3 / reps as f64
        );
    }
    Ok(())
}
