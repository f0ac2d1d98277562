//! The Fourier neural operator experts: the architecture contract ([`spec`]) and an independent
//! reference forward ([`mod@reference`]). Training and ONNX export build on these.

pub mod onnx;
pub mod reference;
pub mod spec;

pub use spec::{DftBases, FnoConfig, Normalization};
