//! The tract backend: pure Rust, the default runtime.
//!
//! Deploying a weight set rebuilds the typed model from the template expert's protobuf with the
//! new initializers and re-optimises it (tract packs weights into its matmul kernels during
//! optimisation, so they cannot be patched afterwards). A step then runs the optimised plan.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::onnx_model::OnnxExpert;
use super::{InferError, StepShape};
use crate::ccm::WeightSet;
use crate::ccm::prefix::Rollout;

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

    /// Shapes of a step.
    pub fn shape(&self) -> StepShape {
        self.shape
    }

    /// Makes `weights` the deployed model.
    pub fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError> {
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

    /// One step: `state` holds the last `T_in` frames (oldest first); writes the next frame.
    pub fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), InferError> {
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
        for (o, v) in out.iter_mut().zip(view.iter()) {
            *o = *v;
        }
        Ok(())
    }

    /// Rolls the deployed model `steps` steps from `initial` (`T_in` frames), writing the
    /// predicted frames into `out`.
    pub fn roll(
        &mut self,
        initial: &[f32],
        steps: usize,
        out: &mut [f32],
    ) -> Result<(), InferError> {
        let s = self.shape;
        s.check_input(initial)?;
        let fl = s.frame_len();
        if out.len() < steps * fl {
            return Err(InferError::Shape {
                what: "rollout buffer",
                expected: steps * fl,
                found: out.len(),
            });
        }
        let mut window = initial.to_vec();
        for frame in out[..steps * fl].chunks_exact_mut(fl) {
            self.step(&window, frame)?;
            // slide the T_in-frame window: drop the oldest frame, append the prediction
            window.rotate_left(fl);
            let last = window.len() - fl;
            window[last..].copy_from_slice(frame);
        }
        Ok(())
    }
}

impl Rollout for TractBackend {
    type Error = InferError;
    fn rollout(
        &mut self,
        theta: &WeightSet,
        initial: &[f32],
        steps: usize,
        out: &mut [f32],
    ) -> Result<(), InferError> {
        self.deploy(theta)?;
        self.roll(initial, steps, out)
    }
}
