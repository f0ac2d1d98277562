//! Calibration-Conditioned Merge: weight sets, the decomposition of endpoint updates into a
//! shared adaptation and a physical direction, the in-place merge along the line, and the
//! coordinate readouts (metadata, scaled, calibrated, observed prefix).
//!
//! **Invariant:** this module does no IO and reads no clock. What it needs from a runtime (rolling
//! a merged weight set forward) it asks for through the [`prefix::Rollout`] trait.

pub mod axis;
pub mod decompose;
pub mod line;
pub mod prefix;
pub mod readout;
pub mod weights;

pub use decompose::{Diagnostics, Experts, ExpertsMismatch};
pub use line::Line;
pub use readout::{CalibratedMap, Interval, Scale};
pub use weights::{LayoutMismatch, TensorInfo, WeightError, WeightSet};
