//! Family configurations: what `configs/<family>.toml` says and how it is checked.
//!
//! The three shipped configs are embedded in the binary ([`FamilyConfig::builtin`]), so the tool
//! works from any directory; `ccm-twin config <family>` prints one with its comments. A config file
//! given on the command line replaces the built-in one. Every value is validated before any work
//! starts, and a bad value is reported with its key, what was found and what is allowed, so that a
//! field engineer can fix the file without reading code.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the three PDE families the project knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// 2-D incompressible Navier–Stokes (vorticity form) on the unit torus; parameter: viscosity ν.
    NavierStokes,
    /// 2-D FitzHugh–Nagumo activator–inhibitor; parameter: activator diffusivity `D_u`.
    ReactionDiffusion,
    /// 2-D shallow water, radial dam break; parameter: Manning bed friction `n`.
    DamBreak,
}

impl Family {
    /// All families, in a fixed order.
    pub const ALL: [Family; 3] = [
        Family::NavierStokes,
        Family::ReactionDiffusion,
        Family::DamBreak,
    ];

    /// The family's name as used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Family::NavierStokes => "navier_stokes",
            Family::ReactionDiffusion => "reaction_diffusion",
            Family::DamBreak => "dam_break",
        }
    }

    /// Whether the domain is periodic (Navier–Stokes); the others have walls.
    pub fn periodic(self) -> bool {
        matches!(self, Family::NavierStokes)
    }

    /// The commented TOML shipped in `configs/`.
    pub fn builtin_toml(self) -> &'static str {
        match self {
            Family::NavierStokes => include_str!("../configs/navier_stokes.toml"),
            Family::ReactionDiffusion => include_str!("../configs/reaction_diffusion.toml"),
            Family::DamBreak => include_str!("../configs/dam_break.toml"),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Family::ALL
            .into_iter()
            .find(|f| f.name() == norm)
            .ok_or_else(|| ConfigError::UnknownFamily(s.to_string()))
    }
}

/// How the regime parameter is laid out between its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// Coordinates are linear in `log p` (the default: all three parameters are scale parameters).
    Log,
    /// Coordinates are linear in `p`.
    Linear,
}

impl Scale {
    /// Maps `p` to the axis on which the coordinate is linear.
    pub fn forward(self, p: f64) -> f64 {
        match self {
            Scale::Log => p.ln(),
            Scale::Linear => p,
        }
    }

    /// Inverse of [`Scale::forward`].
    pub fn inverse(self, x: f64) -> f64 {
        match self {
            Scale::Log => x.exp(),
            Scale::Linear => x,
        }
    }
}

/// Spatial grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// Stored frames are `n × n`.
    pub n: usize,
    /// The solver's grid (`solve_n × solve_n`), a multiple of `n`; stored frames are taken from it.
    #[serde(default)]
    pub solve_n: Option<usize>,
}

impl GridConfig {
    /// The solver's grid size (`solve_n`, or `n` when not given).
    pub fn solver_n(&self) -> usize {
        self.solve_n.unwrap_or(self.n)
    }
}

/// Time axis of the stored trajectories and of the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// Physical time between stored frames.
    pub frame_dt: f64,
    /// Stored frames per trajectory, the initial state included.
    pub frames: usize,
    /// Frames the model takes in (`T_in`).
    pub t_in: usize,
    /// Forecast horizon `H` in frames.
    pub horizon: usize,
    /// Frames in the observed prefix used by the prefix readout (`K`).
    pub prefix: usize,
}

/// The regime parameter `p` and the values each split uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParameterConfig {
    /// Physical name of `p` (`nu`, `D_u`, `manning_n`).
    pub name: String,
    /// Axis on which the CCM coordinate is linear.
    pub scale: Scale,
    /// Lower end of the in-distribution range.
    pub lo: f64,
    /// Upper end of the in-distribution range.
    pub hi: f64,
    /// Band `[a, b]` the low endpoint expert is fine-tuned on.
    pub low_band: [f64; 2],
    /// Band `[a, b]` the high endpoint expert is fine-tuned on.
    pub high_band: [f64; 2],
    /// Interior (in-distribution) test values.
    pub id_test: Vec<f64>,
    /// Extrapolative (out-of-distribution) test values.
    pub ood_test: Vec<f64>,
    /// The widest range `[a, b]` of `p` a station of this family is specified for (the trained
    /// range and its extrapolations). The prefix readout searches the coordinates of this range.
    /// When absent (configs older than the key), the hull of the trained range and the OOD test
    /// values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<[f64; 2]>,
    /// Values of the `val` split (tunes the readouts).
    pub val: Vec<f64>,
    /// Values of the `calib` split (fits the calibrated map).
    pub calib: Vec<f64>,
}

impl ParameterConfig {
    /// The CCM metadata coordinate `s(p)`: linear on the parameter's scale, `−1` at the centre of
    /// the low band and `+1` at the centre of the high band.
    pub fn coordinate(&self, p: f64) -> f64 {
        let sc = self.scale;
        let centre = |b: [f64; 2]| 0.5 * (sc.forward(b[0]) + sc.forward(b[1]));
        let lo = centre(self.low_band);
        let hi = centre(self.high_band);
        (2.0 * sc.forward(p) - lo - hi) / (hi - lo)
    }

    /// The interval of `α` the prefix readout searches: twice the coordinates of the service
    /// range, and never narrower than `[−2, 2]`. Past the trained range the best α grows faster
    /// than the coordinate (measured on the shipped dam-break experts: `n = 0.1`, at `s = 2.6`,
    /// has its best α near 4.5), so the coordinate alone would cut the readout short; the
    /// prefix guard keeps far merges that go unstable out.
    pub fn readout_interval(&self) -> crate::ccm::Interval {
        let [a, b] = self.service_range().map(|x| self.coordinate(x));
        crate::ccm::Interval {
            lo: (2.0 * a.min(b)).min(-2.0),
            hi: (2.0 * a.max(b)).max(2.0),
        }
    }

    /// The service range (see [`ParameterConfig::service`]).
    pub fn service_range(&self) -> [f64; 2] {
        self.service.unwrap_or_else(|| {
            self.ood_test
                .iter()
                .fold([self.lo, self.hi], |[a, b], &x| [a.min(x), b.max(x)])
        })
    }

    /// ID and OOD test values, ID first.
    pub fn test_values(&self) -> Vec<f64> {
        self.id_test.iter().chain(&self.ood_test).copied().collect()
    }
}

/// Trajectories per split (per regime for the splits at fixed regimes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitSizes {
    /// Anchor training set (whole ID range).
    pub anchor: usize,
    /// Low endpoint band.
    pub low: usize,
    /// High endpoint band.
    pub high: usize,
    /// Per value of `parameter.val`.
    pub val: usize,
    /// Per value of `parameter.calib`.
    pub calib: usize,
    /// Per test value (ID and OOD): data to fine-tune oracle experts.
    pub oracle: usize,
    /// Per test value (ID and OOD): held-out evaluation trajectories.
    pub test: usize,
}

/// Navier–Stokes solver settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NavierStokesConfig {
    /// Largest internal time step.
    pub dt_max: f64,
    /// Advective CFL number bounding the internal step (`dt ≤ cfl·dx/max|u|`).
    pub cfl: f64,
    /// Amplitude of the forcing `A(sin 2π(x+y) + cos 2π(x+y))`.
    pub forcing_amplitude: f64,
    /// Initial vorticity ~ N(0, σ²(−Δ + τ²)^(−α)): the exponent α.
    pub init_alpha: f64,
    /// Initial vorticity: the inverse length scale τ.
    pub init_tau: f64,
    /// Initial vorticity: the amplitude σ.
    pub init_sigma: f64,
}

/// FitzHugh–Nagumo solver settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReactionDiffusionConfig {
    /// Inhibitor diffusivity `D_v`.
    pub dv: f64,
    /// Reaction constant `k`.
    pub k: f64,
    /// Half-width of the square domain `[-L, L]²`.
    pub half_width: f64,
    /// Largest internal (RK4) time step.
    pub dt_max: f64,
    /// Correlation length of the smooth random initial fields.
    pub init_length: f64,
    /// Switch the reaction terms off (pure diffusion; used by the checks).
    #[serde(default = "default_true")]
    pub reaction: bool,
}

fn default_true() -> bool {
    true
}

/// Boundary condition of the shallow-water domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Walls {
    /// Reflective walls: no flow through the boundary (mass is conserved exactly).
    Closed,
    /// Transmissive (zero-gradient) boundary: waves leave the domain.
    Open,
}

/// Shallow-water dam-break settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DamBreakConfig {
    /// Side of the square domain in metres.
    pub domain: f64,
    /// Gravity in m/s².
    pub g: f64,
    /// Water depth inside the disc (m).
    pub h_in: f64,
    /// Water depth outside the disc (m); 0 gives a dry bed.
    pub h_out: f64,
    /// Disc radius range `[min, max]` (m).
    pub radius: [f64; 2],
    /// Disc centres are drawn within this distance of the domain centre on each axis (m).
    pub centre_spread: f64,
    /// Boundary condition.
    pub walls: Walls,
    /// Courant number of the explicit step.
    pub cfl: f64,
    /// Depth below which a cell counts as dry (m).
    pub h_dry: f64,
    /// Bed slope `[∂b/∂x, ∂b/∂y]` (flat bed: `[0, 0]`).
    #[serde(default)]
    pub bed_slope: [f64; 2],
}

/// Solver settings, one variant per family.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SolverConfig {
    /// Navier–Stokes.
    NavierStokes(NavierStokesConfig),
    /// Reaction–diffusion.
    ReactionDiffusion(ReactionDiffusionConfig),
    /// Dam break.
    DamBreak(DamBreakConfig),
}

/// A whole family configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "RawConfig")]
pub struct FamilyConfig {
    /// The family.
    pub family: Family,
    /// Master seed; every trajectory's seed is derived from it, its split and its index.
    pub seed: u64,
    /// Grid.
    pub grid: GridConfig,
    /// Time axis.
    pub time: TimeConfig,
    /// Regime parameter.
    pub parameter: ParameterConfig,
    /// Split sizes.
    pub splits: SplitSizes,
    /// Solver settings.
    pub solver: SolverConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    family: String,
    seed: u64,
    grid: GridConfig,
    time: TimeConfig,
    parameter: ParameterConfig,
    splits: SplitSizes,
    solver: toml::Table,
}

impl TryFrom<RawConfig> for FamilyConfig {
    type Error = ConfigError;
    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let family: Family = raw.family.parse()?;
        let value = toml::Value::Table(raw.solver);
        let solver = match family {
            Family::NavierStokes => value.try_into().map(SolverConfig::NavierStokes),
            Family::ReactionDiffusion => value.try_into().map(SolverConfig::ReactionDiffusion),
            Family::DamBreak => value.try_into().map(SolverConfig::DamBreak),
        }
        .map_err(|e| ConfigError::Parse(format!("[solver] of family {family}: {e}")))?;
        Ok(FamilyConfig {
            family,
            seed: raw.seed,
            grid: raw.grid,
            time: raw.time,
            parameter: raw.parameter,
            splits: raw.splits,
            solver,
        })
    }
}

/// One problem found in a config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `parameter.lo`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The family name is not one of the known families.
    #[error("unknown family '{0}': expected one of navier_stokes, reaction_diffusion, dam_break")]
    UnknownFamily(String),
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/missing keys.
    #[error("config is not valid TOML for a family config: {0}")]
    Parse(String),
    /// Values are out of their allowed ranges.
    #[error("invalid config ({} problem{}):\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<ConfigIssue>),
}

impl FamilyConfig {
    /// The built-in config of a family (the file shipped in `configs/`).
    pub fn builtin(family: Family) -> Self {
        Self::from_toml(family.builtin_toml())
            .unwrap_or_else(|e| panic!("built-in config of {family} is invalid: {e}"))
    }

    /// Parses and validates a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: FamilyConfig = toml::from_str(text).map_err(|e| {
            // try_from errors surface as custom messages; keep them readable.
            ConfigError::Parse(e.message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Values per stored frame (`channels × n × n`).
    pub fn frame_len(&self) -> usize {
        self.channels().len() * self.grid.n * self.grid.n
    }

    /// Names of the state channels, in storage order.
    pub fn channels(&self) -> &'static [&'static str] {
        match self.family {
            Family::NavierStokes => &["vorticity"],
            Family::ReactionDiffusion => &["u", "v"],
            Family::DamBreak => &["h", "hu", "hv"],
        }
    }

    /// The CCM metadata coordinate `s(p)` (see [`ParameterConfig::coordinate`]).
    pub fn coordinate(&self, p: f64) -> f64 {
        self.parameter.coordinate(p)
    }

    /// Checks every value; returns all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        let g = &self.grid;
        v.check(
            g.n >= 8,
            "grid.n",
            format!("must be at least 8 (got {})", g.n),
        );
        v.check(
            g.n.is_multiple_of(2),
            "grid.n",
            format!("must be even (got {})", g.n),
        );
        if let Some(s) = g.solve_n {
            v.check(
                s >= g.n && g.n > 0 && s.is_multiple_of(g.n),
                "grid.solve_n",
                format!("must be a multiple of grid.n = {} (got {s})", g.n),
            );
        }
        let t = &self.time;
        v.positive("time.frame_dt", t.frame_dt);
        v.check(t.t_in >= 1, "time.t_in", "must be at least 1".into());
        v.check(
            t.frames > t.t_in,
            "time.frames",
            format!("must exceed time.t_in = {} (got {})", t.t_in, t.frames),
        );
        v.check(
            t.horizon >= 1 && t.horizon + t.t_in <= t.frames,
            "time.horizon",
            format!(
                "must be in 1..={} (frames − t_in) (got {})",
                t.frames.saturating_sub(t.t_in),
                t.horizon
            ),
        );
        v.check(
            t.prefix > t.t_in && t.prefix < t.frames,
            "time.prefix",
            format!(
                "must be in {}..{} (more than t_in, fewer than frames) (got {})",
                t.t_in + 1,
                t.frames,
                t.prefix
            ),
        );
        self.validate_parameter(&mut v);
        let s = &self.splits;
        for (key, n) in [
            ("splits.anchor", s.anchor),
            ("splits.low", s.low),
            ("splits.high", s.high),
            ("splits.val", s.val),
            ("splits.calib", s.calib),
            ("splits.oracle", s.oracle),
            ("splits.test", s.test),
        ] {
            v.check(n >= 1, key, "must be at least 1".into());
        }
        match &self.solver {
            SolverConfig::NavierStokes(c) => {
                v.positive("solver.dt_max", c.dt_max);
                v.positive("solver.cfl", c.cfl);
                v.finite("solver.forcing_amplitude", c.forcing_amplitude);
                v.positive("solver.init_alpha", c.init_alpha);
                v.positive("solver.init_tau", c.init_tau);
                v.positive("solver.init_sigma", c.init_sigma);
            }
            SolverConfig::ReactionDiffusion(c) => {
                v.non_negative("solver.dv", c.dv);
                v.finite("solver.k", c.k);
                v.positive("solver.half_width", c.half_width);
                v.positive("solver.dt_max", c.dt_max);
                v.positive("solver.init_length", c.init_length);
            }
            SolverConfig::DamBreak(c) => {
                v.positive("solver.domain", c.domain);
                v.positive("solver.g", c.g);
                v.positive("solver.h_in", c.h_in);
                v.non_negative("solver.h_out", c.h_out);
                v.check(
                    c.radius[0] > 0.0 && c.radius[0] <= c.radius[1],
                    "solver.radius",
                    format!("must be [min, max] with 0 < min ≤ max (got {:?})", c.radius),
                );
                v.check(
                    c.radius[1] + c.centre_spread < 0.5 * c.domain,
                    "solver.radius",
                    format!(
                        "max radius + centre_spread must stay inside the domain (half-width {})",
                        0.5 * c.domain
                    ),
                );
                v.non_negative("solver.centre_spread", c.centre_spread);
                v.check(
                    c.cfl > 0.0 && c.cfl <= 0.5,
                    "solver.cfl",
                    format!("must be in (0, 0.5] for a positive depth (got {})", c.cfl),
                );
                v.positive("solver.h_dry", c.h_dry);
                v.finite("solver.bed_slope[0]", c.bed_slope[0]);
                v.finite("solver.bed_slope[1]", c.bed_slope[1]);
            }
        }
        v.finish()
    }

    fn validate_parameter(&self, v: &mut Validator) {
        let p = &self.parameter;
        let name = &p.name;
        v.positive("parameter.lo", p.lo);
        v.positive("parameter.hi", p.hi);
        v.check(
            p.lo < p.hi,
            "parameter.hi",
            format!(
                "must be larger than parameter.lo (got lo = {}, hi = {})",
                p.lo, p.hi
            ),
        );
        for (key, band) in [
            ("parameter.low_band", p.low_band),
            ("parameter.high_band", p.high_band),
        ] {
            v.check(
                band[0] < band[1] && band[0] >= p.lo && band[1] <= p.hi,
                key,
                format!(
                    "must be [a, b] with {} ≤ a < b ≤ {} (got {:?})",
                    p.lo, p.hi, band
                ),
            );
        }
        v.check(
            p.low_band[1] < p.high_band[0],
            "parameter.high_band",
            "must lie above parameter.low_band".into(),
        );
        let in_range = |x: f64| x >= p.lo && x <= p.hi;
        for (i, &x) in p.id_test.iter().enumerate() {
            v.check(
                in_range(x),
                &format!("parameter.id_test[{i}]"),
                format!("{name} = {x} is not inside [{}, {}]", p.lo, p.hi),
            );
        }
        for (i, &x) in p.ood_test.iter().enumerate() {
            v.check(
                x > 0.0 && (x <= p.lo / 1.5 || x >= 1.5 * p.hi),
                &format!("parameter.ood_test[{i}]"),
                format!(
                    "{name} = {x} is not clearly extrapolative: need ≤ {} (lo/1.5) or ≥ {} (1.5·hi)",
                    p.lo / 1.5,
                    1.5 * p.hi
                ),
            );
        }
        let [sa, sb] = p.service_range();
        v.check(
            sa > 0.0 && sa <= p.lo && sb >= p.hi,
            "parameter.service",
            format!(
                "must hold the trained range [{}, {}] (got [{sa}, {sb}])",
                p.lo, p.hi
            ),
        );
        for (i, &x) in p.ood_test.iter().enumerate() {
            v.check(
                x >= sa && x <= sb,
                &format!("parameter.ood_test[{i}]"),
                format!("{name} = {x} lies outside the service range [{sa}, {sb}]"),
            );
        }
        v.check(
            !p.id_test.is_empty(),
            "parameter.id_test",
            "needs at least one value".into(),
        );
        v.check(
            !p.ood_test.is_empty(),
            "parameter.ood_test",
            "needs at least one value".into(),
        );
        for (key, list) in [("parameter.val", &p.val), ("parameter.calib", &p.calib)] {
            v.check(!list.is_empty(), key, "needs at least one value".into());
            for (i, &x) in list.iter().enumerate() {
                v.positive(&format!("{key}[{i}]"), x);
            }
        }
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn check(&mut self, ok: bool, key: &str, reason: String) {
        if !ok {
            self.issues.push(ConfigIssue {
                key: key.to_string(),
                reason,
            });
        }
    }
    fn positive(&mut self, key: &str, x: f64) {
        self.check(
            x.is_finite() && x > 0.0,
            key,
            format!("must be a positive number (got {x})"),
        );
    }
    fn non_negative(&mut self, key: &str, x: f64) {
        self.check(
            x.is_finite() && x >= 0.0,
            key,
            format!("must be ≥ 0 (got {x})"),
        );
    }
    fn finite(&mut self, key: &str, x: f64) {
        self.check(x.is_finite(), key, format!("must be finite (got {x})"));
    }
    fn finish(self) -> Result<(), ConfigError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.issues))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_configs_parse_and_validate() {
        for f in Family::ALL {
            let cfg = FamilyConfig::builtin(f);
            assert_eq!(cfg.family, f);
            assert_eq!(
                cfg.frame_len(),
                cfg.channels().len() * cfg.grid.n * cfg.grid.n
            );
        }
    }

    #[test]
    fn coordinate_puts_band_centres_at_plus_minus_one() {
        for f in Family::ALL {
            let cfg = FamilyConfig::builtin(f);
            let p = &cfg.parameter;
            let c = |b: [f64; 2]| {
                cfg.parameter
                    .scale
                    .inverse(0.5 * (p.scale.forward(b[0]) + p.scale.forward(b[1])))
            };
            assert!((cfg.coordinate(c(p.low_band)) + 1.0).abs() < 1e-12);
            assert!((cfg.coordinate(c(p.high_band)) - 1.0).abs() < 1e-12);
            for &x in &p.ood_test {
                assert!(
                    cfg.coordinate(x).abs() > 1.0,
                    "{f}: OOD {x} must extrapolate"
                );
            }
        }
    }

    #[test]
    fn family_names_round_trip_and_unknown_is_clear() {
        for f in Family::ALL {
            assert_eq!(f.name().parse::<Family>().unwrap(), f);
        }
        assert_eq!("Dam-Break".parse::<Family>().unwrap(), Family::DamBreak);
        let err = "heat".parse::<Family>().unwrap_err().to_string();
        assert!(err.contains("unknown family 'heat'"), "{err}");
    }

    #[test]
    fn bad_values_are_reported_with_their_keys() {
        let text = Family::NavierStokes
            .builtin_toml()
            .replace("lo = 1.0e-3", "lo = -1.0e-3")
            .replace("n = 64", "n = 0");
        let err = FamilyConfig::from_toml(&text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Invalid(_)), "{msg}");
        assert!(
            msg.contains("parameter.lo: must be a positive number (got -0.001)"),
            "{msg}"
        );
        assert!(msg.contains("grid.n: must be at least 8 (got 0)"), "{msg}");
    }

    #[test]
    fn unknown_keys_and_families_are_parse_errors() {
        let text = Family::DamBreak
            .builtin_toml()
            .replace("family = \"dam_break\"", "family = \"heat\"");
        let msg = FamilyConfig::from_toml(&text).unwrap_err().to_string();
        assert!(msg.contains("unknown family 'heat'"), "{msg}");
        let text = Family::DamBreak
            .builtin_toml()
            .replace("[solver]", "[solver]\nviscosity = 1.0");
        let msg = FamilyConfig::from_toml(&text).unwrap_err().to_string();
        assert!(msg.contains("viscosity"), "{msg}");
    }
}
