//! Running experts and merges forward: ONNX files and the runtimes.
//!
//! [`onnx_model`] reads any producer's ONNX experts, checks that they share one graph and writes
//! merged weights back. A runtime is a [`Backend`]: deploy a weight set, step, roll.
//! [`tract::TractBackend`] is pure Rust and always built; [`ort::OrtBackend`] runs ONNX Runtime,
//! loaded at run time (cargo feature `ort`; without it the type is still there and its
//! constructor returns [`InferError::NotCompiled`]). Every backend implements
//! [`crate::ccm::prefix::Rollout`], which is how the CCM readouts roll candidates forward without
//! knowing which runtime they use.
//!
//! ```no_run
//! use ccm_twin::infer::{Backend, OrtBackend, OrtOptions, TractBackend};
//! use ccm_twin::models::FamilyModels;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bundle = FamilyModels::load("models/dam_break".as_ref())?;
//! // ONNX Runtime when it can be loaded, tract otherwise
//! let mut backend: Box<dyn Backend> = match OrtBackend::new(bundle.anchor.clone(), &OrtOptions::default()) {
//!     Ok(ort) => Box::new(ort),
//!     Err(e) => {
//!         eprintln!("{e}; using tract");
//!         Box::new(TractBackend::new(bundle.anchor.clone())?)
//!     }
//! };
//! backend.deploy(&bundle.anchor.weights)?;
//! let shape = backend.shape();
//! let state = vec![0.1; shape.input_len()];
//! let mut forecast = vec![0.0; 10 * shape.frame_len()];
//! backend.roll(&state, 10, &mut forecast)?;
//! # Ok(())
//! # }
//! ```

pub mod gemm;
pub mod native;
pub mod onnx_model;
pub mod ort;
pub mod tract;

pub use native::NativeBackend;
pub use onnx_model::{OnnxError, OnnxExpert, RunGraph};
pub use ort::{OrtBackend, OrtOptions};
pub use tract::TractBackend;

use std::path::PathBuf;

use crate::ccm::prefix::Rollout;
use crate::ccm::{WeightError, WeightSet};

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
    /// The runtime's shared library could not be found or loaded (ONNX Runtime).
    #[error(
        "cannot load ONNX Runtime from {}: {reason}. Install it with `python3 -m pip install --target DIR onnxruntime==1.32.0` and set ORT_DYLIB_PATH=DIR/onnxruntime/capi/libonnxruntime.so.1.32.0 (or give the library's path in the configuration)",
        tried.as_ref().map_or("<no path given>".to_string(), |p| p.display().to_string())
    )]
    Library {
        /// The path tried (`None` when neither an explicit path nor `ORT_DYLIB_PATH` was given).
        tried: Option<PathBuf>,
        /// What went wrong.
        reason: String,
    },
    /// The backend was compiled out of this build.
    #[error(
        "the {backend} backend is not available: built without the `{feature}` feature; rebuild with --features {feature}"
    )]
    NotCompiled {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
}

/// Which runtime runs the experts (`runtime = "native"` in a station's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// [`NativeBackend`]: our FNO forward on packed GEMMs; the fastest on a small CPU, for
    /// experts `ccm-twin export` wrote.
    #[default]
    Native,
    /// [`TractBackend`] with swappable weights: pure Rust, any ONNX graph tract runs.
    Tract,
    /// [`OrtBackend`]: ONNX Runtime's shared library, loaded at run time (feature `ort`).
    Ort,
}

impl Runtime {
    /// Every runtime.
    pub const ALL: [Runtime; 3] = [Runtime::Native, Runtime::Tract, Runtime::Ort];

    /// Its name in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Native => "native",
            Runtime::Tract => "tract",
            Runtime::Ort => "ort",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown runtime '{s}': expected native, tract or ort"))
    }
}

/// A runtime that runs one FNO expert (or merge) forward.
///
/// The lifecycle is `new(template)` (a backend for experts with the template's graph), then
/// [`deploy`](Backend::deploy) a weight set (what CCM merged), then any number of
/// [`step`](Backend::step)s and [`roll`](Backend::roll)s; deploying again replaces the weights.
/// Stepping before the first deployment is [`InferError::NotDeployed`]. The trait is
/// dyn-compatible, so the runtime can be chosen at run time (`Box<dyn Backend>`), and every
/// backend is a [`Rollout`] for the CCM readouts.
pub trait Backend {
    /// A short name for logs and messages (`"tract"`, `"ort"`).
    fn name(&self) -> &'static str;

    /// Sizes of one step.
    fn shape(&self) -> StepShape;

    /// Makes `weights` (the template's layout) the deployed model. On error the previously
    /// deployed model, if any, stays deployed.
    fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError>;

    /// One step: `state` holds the last `T_in` frames (oldest first, `T_in × C × n × n`), and the
    /// next frame (`C × n × n`) is written into `out`. A state of the wrong length or holding a
    /// non-finite value is refused ([`StepShape::check_input`]).
    fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), InferError>;

    /// Rolls the deployed model `steps` steps from `initial` (`T_in` frames, oldest first),
    /// writing the predicted frames into `out[..steps × frame_len]`; each prediction is fed back
    /// through a sliding window of the last `T_in` frames.
    ///
    /// `initial` is checked like a step's input. A *prediction* that turns non-finite (the
    /// deployed merge diverged) is not an error: it is written out, the remaining frames are
    /// filled with NaN and the roll stops, so a caller such as the prefix guard sees the
    /// divergence and rejects the candidate instead of aborting.
    fn roll(&mut self, initial: &[f32], steps: usize, out: &mut [f32]) -> Result<(), InferError> {
        let s = self.shape();
        s.check_input(initial)?;
        let fl = s.frame_len();
        let needed = steps.saturating_mul(fl);
        if out.len() < needed {
            return Err(InferError::Shape {
                what: "rollout buffer",
                expected: needed,
                found: out.len(),
            });
        }
        let out = &mut out[..needed];
        let mut window = initial.to_vec();
        for i in 0..steps {
            let frame = &mut out[i * fl..(i + 1) * fl];
            self.step(&window, frame)?;
            if frame.iter().any(|x| !x.is_finite()) {
                out[(i + 1) * fl..].fill(f32::NAN);
                break;
            }
            // slide the T_in-frame window: drop the oldest frame, append the prediction
            window.rotate_left(fl);
            let last = window.len() - fl;
            window[last..].copy_from_slice(frame);
        }
        Ok(())
    }
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn shape(&self) -> StepShape {
        (**self).shape()
    }
    fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError> {
        (**self).deploy(weights)
    }
    fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), InferError> {
        (**self).step(state, out)
    }
    fn roll(&mut self, initial: &[f32], steps: usize, out: &mut [f32]) -> Result<(), InferError> {
        (**self).roll(initial, steps, out)
    }
}

impl<B: Backend + ?Sized> Rollout for B {
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

    /// Checks a step's input: `T_in` frames, all values finite.
    pub fn check_input(&self, state: &[f32]) -> Result<(), InferError> {
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

    /// Checks a step's output buffer: one frame.
    pub fn check_output(&self, out: &[f32]) -> Result<(), InferError> {
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
