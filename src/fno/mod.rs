//! The Fourier neural operator experts: the architecture contract ([`spec`]), an independent
//! reference forward ([`reference`](mod@reference)), the expert directory format ([`expert`]), and — with the
//! `train` feature — the burn module ([`model`]) and its training and scoring ([`train`]).

pub mod expert;
pub mod onnx;
pub mod reference;
pub mod spec;

#[cfg(feature = "train")]
pub mod model;
#[cfg(feature = "train")]
pub mod train;

pub use spec::{DftBases, FnoConfig, Normalization};
