//! # ccm-twin
//!
//! An embedded digital-twin runtime built on *Calibration-Conditioned Merge* (CCM) of neural PDE
//! experts, together with the offline tooling that produces those experts.
//!
//! The crate is organised along the path the data takes (see `ARCHITECTURE.md`):
//!
//! * [`config`] — the family configurations (`configs/<family>.toml`), embedded in the binary and
//!   validated with errors that name the offending key;
//! * [`pde`] — the three PDE families (Navier–Stokes, FitzHugh–Nagumo reaction–diffusion, shallow-water
//!   dam break): solvers checked against exact solutions and conservation laws;
//! * [`dataset`] — reproducible trajectory datasets (`.npy` + JSON manifest) for every split;
//! * [`twin`] — the edge side, the only module that owns IO and time: the MQTT link, the
//!   embedded broker, the station simulator and the serial/UDP bridge.
//!
//! The key design decision of the offline half is that every number a later stage depends on is
//! reproducible from a seed and a config: a dataset directory records the full config it was made
//! with, the per-trajectory seeds and parameters, and the sha256 of its arrays.
//!
//! ```
//! use ccm_twin::config::{Family, FamilyConfig};
//! use ccm_twin::pde::Solver;
//!
//! let mut cfg = FamilyConfig::builtin(Family::ReactionDiffusion);
//! cfg.grid.n = 16; // tiny grid for the example
//! let mut solver = ccm_twin::pde::new_solver(&cfg, 1e-3, 7).unwrap();
//! let mut frame = vec![0.0f32; solver.frame_len()];
//! solver.advance(cfg.time.frame_dt).unwrap();
//! solver.write_frame(&mut frame);
//! assert!(frame.iter().all(|x| x.is_finite()));
//! ```
#![deny(missing_docs)]

pub mod ccm;
pub mod config;
pub mod dataset;
#[cfg(feature = "train")]
pub mod eval;
pub mod fno;
pub mod infer;
pub mod models;
pub mod pde;
pub mod twin;
