//! The tract backend: pure Rust, the default runtime.
//!
//! Two ways to deploy a weight set:
//!
//! * **rebuild** ([`TractBackend::new`]): the typed model is rebuilt from the template expert's
//!   protobuf with the new initializers and re-optimised (tract packs constant weights into its
//!   matmul kernels during optimisation, so they cannot be patched afterwards). The fastest
//!   steps, but every deployment pays the optimisation (~60 ms for a shipped expert).
//! * **swap** ([`TractBackend::swappable`]): the tensors a merge changes are graph *inputs*; the
//!   graph is optimised once, and deploying copies the new values into the input tensors
//!   (about a millisecond). Steps cost a little more, since those weights are not pre-packed.
//!   What the CCM readout wants: it deploys a merge per candidate α.
//!
//! The graph a rebuilt deployment runs: for an expert written by our exporter, the same model
//! in the stacked layout ([`RunGraph`]), where each Fourier layer is 4 matrix products and 1
//! mixing einsum instead of 12 and 4. tract runs an einsum as one small product per Fourier
//! mode, so the file's four mixing einsums per layer cost it a third of a step in per-mode
//! overhead (`examples/tract_profile.rs`). A swappable backend keeps the file's graph: with the
//! mixing weights as inputs, the stacked einsum repacks its larger weights on every step and
//! is the slower of the two (`docs/PERFORMANCE.md`).
//!
//! [`Backend`] is the interface; `roll` is the trait's sliding-window default.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::onnx_model::{OnnxExpert, RunGraph};
use super::{Backend, InferError, StepShape};
use crate::ccm::WeightSet;

/// An FNO expert (or merge) running in tract.
pub struct TractBackend {
    template: OnnxExpert,
    shape: StepShape,
    /// The graph a rebuilt deployment runs: the stacked layout of our exporter's, or the file's.
    graph: RunGraph,
    plan: Option<Arc<TypedRunnableModel>>,
    swap: Option<Swap>,
}

/// The swapped tensors of a [`TractBackend::swappable`] backend.
struct Swap {
    /// Their names, in graph-input order (after the state).
    names: Vec<String>,
    /// Their deployed values.
    values: Vec<TValue>,
    /// Whether a weight set was deployed (there may be no tensor to swap at all).
    deployed: bool,
}

impl TractBackend {
    /// A backend for experts with `template`'s graph; nothing is deployed yet.
    pub fn new(template: OnnxExpert) -> Result<Self, InferError> {
        let shape = StepShape::of(&template)?;
        Ok(TractBackend {
            graph: RunGraph::for_expert(&template),
            template,
            shape,
            plan: None,
            swap: None,
        })
    }

    /// A backend that runs `template`'s graph as it is, even when it is our exporter's (for
    /// comparisons: the stacked layout is the same model in fewer, larger operations).
    pub fn with_file_graph(template: OnnxExpert) -> Result<Self, InferError> {
        let mut b = Self::new(template)?;
        b.graph = RunGraph::File;
        Ok(b)
    }

    /// Whether deployments run the stacked layout of the template's graph (it is our
    /// exporter's, and the backend is not swappable).
    pub fn stacked(&self) -> bool {
        self.graph.is_stacked()
    }

    /// A backend that optimises `template`'s graph (the file's) once, with the float
    /// initializers `swapped` as inputs, and deploys a weight set by handing it their values:
    /// the tensors a merge changes (see [`crate::ccm::Experts::varying`]). Deploying a weight set that differs from
    /// the template in any *other* tensor is refused, since those are baked into the plan.
    pub fn swappable(template: OnnxExpert, swapped: &[String]) -> Result<Self, InferError> {
        let shape = StepShape::of(&template)?;
        let proto = template.with_weights_as_inputs(swapped)?;
        let s = shape;
        let fail = |e: TractError| {
            InferError::Runtime(format!(
                "tract cannot prepare {} with swappable weights: {e:#}",
                template.path.display()
            ))
        };
        let mut model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .and_then(|m| {
                m.with_input_fact(0, f32::fact([1, s.t_in * s.channels, s.n, s.n]).into())
            })
            .map_err(fail)?;
        for (i, name) in swapped.iter().enumerate() {
            let dims = template.weights.info(name)?.shape.clone();
            model = model
                .with_input_fact(i + 1, f32::fact(dims).into())
                .map_err(fail)?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(fail)?;
        Ok(TractBackend {
            template,
            shape,
            graph: RunGraph::File,
            plan: Some(plan),
            swap: Some(Swap {
                names: swapped.to_vec(),
                values: Vec::new(),
                deployed: false,
            }),
        })
    }

    /// The backend with the template's own weights deployed.
    pub fn with_template_weights(template: OnnxExpert) -> Result<Self, InferError> {
        let weights = template.weights.clone();
        let mut b = Self::new(template)?;
        b.deploy(&weights)?;
        Ok(b)
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn shape(&self) -> StepShape {
        self.shape
    }

    /// Rebuilds and re-optimises the typed model with `weights` as initializers (~60 ms for a
    /// shipped 64×64 expert on a loaded 2-core box), or, for a swappable backend, hands the
    /// swapped tensors their new values (~1 ms).
    fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError> {
        if let Some(swap) = &mut self.swap {
            let t = &self.template.weights;
            t.same_layout(weights)
                .map_err(|m| InferError::Runtime(format!("tract deploy: {m}")))?;
            // a merge reproduces the constant tensors up to rounding (a·u + b·v with u = v)
            let close = |x: f32, y: f32| (x - y).abs() <= 1e-6 * x.abs().max(y.abs());
            for info in t.tensors() {
                if !swap.names.contains(&info.name)
                    && !t
                        .get(&info.name)?
                        .iter()
                        .zip(weights.get(&info.name)?)
                        .all(|(x, y)| close(*x, *y))
                {
                    return Err(InferError::Runtime(format!(
                        "tensor {} differs from {}'s, but it is a constant of the optimised \
                         plan (only the tensors the experts' merge changes are swappable)",
                        info.name,
                        self.template.path.display()
                    )));
                }
            }
            let mut values = Vec::with_capacity(swap.names.len());
            for name in &swap.names {
                let dims = &weights.info(name)?.shape;
                let tensor = Tensor::from_shape::<f32>(dims, weights.get(name)?)
                    .map_err(|e| InferError::Runtime(format!("tract weight {name}: {e:#}")))?;
                values.push(tensor.into_tvalue());
            }
            swap.values = values;
            swap.deployed = true;
            return Ok(());
        }
        let proto = self.graph.proto(&self.template, weights)?;
        let s = self.shape;
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .and_then(|m| {
                m.with_input_fact(0, f32::fact([1, s.t_in * s.channels, s.n, s.n]).into())
            })
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                InferError::Runtime(format!(
                    "tract cannot prepare {}: {e:#}",
                    self.template.path.display()
                ))
            })?;
        self.plan = Some(plan);
        Ok(())
    }

    fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        let s = self.shape;
        s.check_input(state)?;
        s.check_output(out)?;
        let plan = self.plan.as_ref().ok_or(InferError::NotDeployed)?;
        let x = Tensor::from_shape::<f32>(&[1, s.t_in * s.channels, s.n, s.n], state)
            .map_err(|e| InferError::Runtime(format!("tract input: {e:#}")))?;
        let mut inputs: TVec<TValue> = tvec!(x.into());
        if let Some(swap) = &self.swap {
            if !swap.deployed {
                return Err(InferError::NotDeployed);
            }
            inputs.extend(swap.values.iter().cloned());
        }
        let result = plan
            .run(inputs)
            .map_err(|e| InferError::Runtime(format!("tract step failed: {e:#}")))?;
        let view = result[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| InferError::Runtime(format!("tract output: {e:#}")))?;
        if view.len() != out.len() {
            return Err(InferError::Shape {
                what: "tract output",
                expected: out.len(),
                found: view.len(),
            });
        }
        for (o, v) in out.iter_mut().zip(view.iter()) {
            *o = *v;
        }
        Ok(())
    }
}
