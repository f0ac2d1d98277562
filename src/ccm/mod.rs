//! Calibration-Conditioned Merge: weight sets, the decomposition of endpoint updates into a
//! shared adaptation and a physical direction, the in-place merge, and the coordinate readouts.
//!
//! **Invariant:** this module does no IO and reads no clock.

pub mod weights;

pub use weights::{LayoutMismatch, TensorInfo, WeightError, WeightSet};
