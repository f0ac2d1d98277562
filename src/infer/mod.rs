//! Running experts and merges forward: ONNX files and the runtimes.
//!
//! [`onnx_model`] reads any producer's ONNX experts, checks that they share one graph and writes
//! merged weights back; [`tract::TractBackend`] runs them (pure Rust, the default). The backend
//! implements [`crate::ccm::prefix::Rollout`], which is how the CCM readouts roll candidates
//! forward without knowing which runtime they use.

pub mod onnx_model;
pub mod tract;

pub use onnx_model::{OnnxError, OnnxExpert};
pub use tract::TractBackend;

use crate::ccm::WeightError;

/// Why a step or a deployment failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A buffer has the wrong length.
    #[error("{what}: expected {expected} values, got {found}")]
    Shape {
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        found: usize,
    },
    /// The input holds NaN or infinite values.
    #[error("the input state holds a non-finite value at index {index}; refusing to step")]
    NonFiniteInput {
        /// First bad index.
        index: usize,
    },
    /// No weights have been deployed yet.
    #[error("no model deployed")]
    NotDeployed,
    /// The model file lacks what the runtime needs.
    #[error("{0}")]
    Model(String),
    /// The ONNX file could not be used.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// Weights do not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The runtime failed.
    #[error("{0}")]
    Runtime(String),
}

/// Sizes of one step of an FNO expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// State channels.
    pub channels: usize,
    /// Input frames.
    pub t_in: usize,
    /// Grid side.
    pub n: usize,
}

impl StepShape {
    /// From the expert's metadata.
    pub fn of(expert: &OnnxExpert) -> Result<Self, InferError> {
        let meta = expert.meta().ok_or_else(|| {
            InferError::Model(format!(
                "{} has no ccm-twin metadata ({}); export it with `ccm-twin export`",
                expert.path.display(),
                crate::fno::onnx::META_KEY
            ))
        })?;
        Ok(StepShape {
            channels: meta.config.channels,
            t_in: meta.config.t_in,
            n: meta.config.n,
        })
    }

    /// Values per frame.
    pub fn frame_len(&self) -> usize {
        self.channels * self.n * self.n
    }

    /// Values of a step's input.
    pub fn input_len(&self) -> usize {
        self.t_in * self.frame_len()
    }

    fn check_input(&self, state: &[f32]) -> Result<(), InferError> {
        if state.len() != self.input_len() {
            return Err(InferError::Shape {
                what: "input state",
                expected: self.input_len(),
                found: state.len(),
            });
        }
        if let Some(index) = state.iter().position(|x| !x.is_finite()) {
            return Err(InferError::NonFiniteInput { index });
        }
        Ok(())
    }

    fn check_output(&self, out: &[f32]) -> Result<(), InferError> {
        if out.len() != self.frame_len() {
            return Err(InferError::Shape {
                what: "output frame",
                expected: self.frame_len(),
                found: out.len(),
            });
        }
        Ok(())
    }
}
