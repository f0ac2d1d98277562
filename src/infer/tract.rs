//! The tract backend: pure Rust, the default runtime.
//!
//! Deploying a weight set rebuilds the typed model from the template expert's protobuf with the
//! new initializers and re-optimises it (tract packs weights into its matmul kernels during
//! optimisation, so they cannot be patched afterwards). A step then runs the optimised plan.
//! [`Backend`] is the interface; `roll` is the trait's sliding-window default.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::onnx_model::OnnxExpert;
use super::{Backend, InferError, StepShape};
use crate::ccm::WeightSet;

/// An FNO expert (or merge) running in tract.
pub struct TractBackend {
    template: OnnxExpert,
    shape: StepShape,
    plan: Option<Arc<TypedRunnableModel>>,
}

impl TractBackend {
    /// A backend for experts with `template`'s graph; nothing is deployed yet.
    pub fn new(template: OnnxExpert) -> Result<Self, InferError> {
        let shape = StepShape::of(&template)?;
        Ok(TractBackend {
            template,
            shape,
            plan: None,
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
    /// shipped 64×64 expert on a loaded 2-core box; see `TECH-NOTES` for cheaper swaps).
    fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError> {
        let proto = self.template.with_weights(weights)?;
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
        let result = plan
            .run(tvec!(x.into()))
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
