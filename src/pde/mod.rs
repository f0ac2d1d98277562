//! The three PDE families: solvers checked against physics, not against themselves.
//!
//! Every solver works in `f64` on its own grid and hands out frames in `f32` on the stored grid
//! (`channels × n × n`, row-major, `y` slowest). Solvers are driven through the object-safe
//! [`Solver`] trait so that the dataset writer and the station simulator need not know which
//! family they run. A solver that blows up (non-finite values) reports [`SolveError`] instead of
//! writing garbage frames.
//!
//! | family | scheme | checks (see `tests/`) |
//! |---|---|---|
//! | [`navier_stokes`] | pseudo-spectral, 2/3 dealiasing, integrating-factor RK4 | Taylor–Green decay, inviscid energy/enstrophy, 4th order in time, numpy reference |
//! | [`reaction_diffusion`] | finite volume, no-flux walls, classical RK4 | mass, heat-kernel spreading, reaction ODE, 4th order in time |
//! | [`dam_break`] | finite volume, MUSCL + hydrostatic reconstruction, HLL, SSP-RK2, exact Manning step | mass, lake at rest, Stoker/Ritter, friction decay |

pub mod dam_break;
pub mod navier_stokes;
pub mod random_field;
pub mod reaction_diffusion;
pub mod spectral;

use crate::config::{FamilyConfig, SolverConfig};

/// Why a simulation could not continue.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SolveError {
    /// The state became NaN or infinite.
    #[error(
        "{family} solver blew up at t = {time:.4} ({what}); lower the time step or check the parameters"
    )]
    NonFinite {
        /// Family name.
        family: &'static str,
        /// Simulation time when it was detected.
        time: f64,
        /// Which quantity.
        what: &'static str,
    },
    /// The parameter value cannot be simulated.
    #[error("{family}: parameter {name} = {value} is not allowed ({reason})")]
    BadParameter {
        /// Family name.
        family: &'static str,
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What is allowed.
        reason: &'static str,
    },
    /// The internal step collapsed (the flow became too fast for the grid).
    #[error(
        "{family} solver needed a time step below {dt:.3e} at t = {time:.4}; the run is unstable"
    )]
    StepCollapsed {
        /// Family name.
        family: &'static str,
        /// Simulation time.
        time: f64,
        /// The step it would have needed.
        dt: f64,
    },
}

/// A running simulation of one trajectory.
pub trait Solver: Send {
    /// Number of state channels.
    fn channels(&self) -> usize;
    /// Side of the stored grid.
    fn frame_n(&self) -> usize;
    /// Values per stored frame.
    fn frame_len(&self) -> usize {
        self.channels() * self.frame_n() * self.frame_n()
    }
    /// Current simulation time.
    fn time(&self) -> f64;
    /// Advances the state by `duration` (internal steps land exactly on the end time).
    fn advance(&mut self, duration: f64) -> Result<(), SolveError>;
    /// Writes the current state as a stored frame (`channels × n × n`).
    fn write_frame(&self, out: &mut [f32]);
}

/// Builds the solver of `cfg`'s family at parameter `p`, with the random initial condition of
/// `seed`.
pub fn new_solver(cfg: &FamilyConfig, p: f64, seed: u64) -> Result<Box<dyn Solver>, SolveError> {
    let n = cfg.grid.n;
    let solve_n = cfg.grid.solver_n();
    Ok(match &cfg.solver {
        SolverConfig::NavierStokes(c) => Box::new(navier_stokes::NavierStokes::from_config(
            c, n, solve_n, p, seed,
        )?),
        SolverConfig::ReactionDiffusion(c) => Box::new(
            reaction_diffusion::ReactionDiffusion::from_config(c, n, solve_n, p, seed)?,
        ),
        SolverConfig::DamBreak(c) => Box::new(dam_break::ShallowWater::from_config(
            c, n, solve_n, p, seed,
        )?),
    })
}

/// Simulates a whole trajectory of `cfg.time.frames` frames into `out`
/// (`frames × channels × n × n`), the initial state first.
pub fn simulate(cfg: &FamilyConfig, p: f64, seed: u64, out: &mut [f32]) -> Result<(), SolveError> {
    let mut solver = new_solver(cfg, p, seed)?;
    let len = solver.frame_len();
    assert_eq!(out.len(), len * cfg.time.frames, "output buffer size");
    for (i, frame) in out.chunks_exact_mut(len).enumerate() {
        if i > 0 {
            solver.advance(cfg.time.frame_dt)?;
        }
        solver.write_frame(frame);
    }
    Ok(())
}

/// Number of internal steps of length at most `dt` that cover `duration`, and their length.
pub(crate) fn split_interval(duration: f64, dt: f64) -> (usize, f64) {
    let steps = (duration / dt - 1e-9).ceil().max(1.0) as usize;
    (steps, duration / steps as f64)
}

/// Averages `src` (`m × m`, `m = s·n`) over `s × s` blocks into `dst` (`n × n`).
pub(crate) fn block_average(src: &[f64], m: usize, n: usize, dst: &mut [f32]) {
    let s = m / n;
    let w = 1.0 / (s * s) as f64;
    for j in 0..n {
        for i in 0..n {
            let mut acc = 0.0;
            for dj in 0..s {
                let row = &src[(j * s + dj) * m + i * s..][..s];
                acc += row.iter().sum::<f64>();
            }
            dst[j * n + i] = (acc * w) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_interval_lands_on_the_end() {
        assert_eq!(split_interval(1.0, 0.25), (4, 0.25));
        let (k, h) = split_interval(1.0, 0.3);
        assert_eq!(k, 4);
        assert!((h * k as f64 - 1.0).abs() < 1e-15);
        assert_eq!(split_interval(1e-3, 0.5).0, 1);
    }

    #[test]
    fn block_average_keeps_the_mean() {
        let src: Vec<f64> = (0..16).map(f64::from).collect();
        let mut dst = vec![0.0f32; 4];
        block_average(&src, 4, 2, &mut dst);
        assert_eq!(dst, vec![2.5, 4.5, 10.5, 12.5]);
    }
}
