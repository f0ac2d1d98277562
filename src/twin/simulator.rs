//! A sensor station made of a PDE solver: [`StationSimulator`] and [`run_simulation`].
//!
//! The simulator runs a family's solver from a seeded initial condition and turns every frame
//! interval (`time.frame_dt` of the family config) into one [`SensorFrame`]: the whole field, or
//! its values at chosen sensor points, optionally with Gaussian noise, i16 quantisation and
//! randomly dropped frames (a lossy radio). Everything random comes from the seed, on separate
//! streams (the initial condition, the noise, the drops, the random sensor points), so changing
//! the noise does not change which frames drop.
//!
//! Frame `k` has sequence number `first_seq + k` and timestamp `start_us + t_k` with the
//! simulation time `t_k = k · frame_dt` read as seconds (mapped to µs). A dropped frame still
//! uses up its sequence number, so a receiver sees the gap, as it would with a real station.
//!
//! ```
//! use ccm_twin::config::{Family, FamilyConfig};
//! use ccm_twin::twin::simulator::{SimulatorOptions, StationSimulator};
//!
//! let mut cfg = FamilyConfig::builtin(Family::ReactionDiffusion);
//! cfg.grid.n = 16;
//! cfg.grid.solve_n = Some(16);
//! let mut opts = SimulatorOptions::new("st-01", 1e-3, 7);
//! opts.start_us = 1_700_000_000_000_000;
//! let mut sim = StationSimulator::new(&cfg, opts)?;
//! let first = sim.next_frame()?;
//! let second = sim.next_frame()?;
//! assert_eq!((first.seq, second.seq), (0, 1));
//! assert_eq!(second.timestamp_us - first.timestamp_us, 250_000); // frame_dt = 0.25
//! let bytes = second.encode()?; // a firmware-bridge SensorFrame, as published on MQTT
//! let decoded = firmware_bridge::decode_frame(&bytes)?;
//! assert_eq!(decoded.values.to_vec(), second.truth);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use firmware_bridge::limits::MAX_POINTS;
use firmware_bridge::topic::Topic;
use firmware_bridge::{
    Channels, DecodeError, EncodeError, GridPoint, GridShape, PackedSlice, Quantizer, Sampling,
    SensorFrame, Values, WireMessage,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::mqtt::{LinkStats, MqttError, MqttLink};
use crate::config::FamilyConfig;
use crate::pde::{self, SolveError, Solver};

/// Which cells of the grid the station reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sensors {
    /// The whole field.
    #[default]
    Dense,
    /// The values at these cells (sparse sensors), in this order.
    Points(Vec<GridPoint>),
}

/// How the station encodes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// f32, 4 bytes per value.
    #[default]
    F32,
    /// i16 counts with a per-frame linear quantiser spanning the frame's range, 2 bytes per value.
    I16,
}

impl FromStr for Encoding {
    type Err = SimulatorError;
    fn from_str(s: &str) -> Result<Self, SimulatorError> {
        match s.trim() {
            "f32" => Ok(Self::F32),
            "i16" => Ok(Self::I16),
            other => Err(bad_option("the encoding", "f32 or i16", other)),
        }
    }
}

/// What a simulated station does.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorOptions {
    /// Station id (the MQTT topic level): 1–32 characters from `[A-Za-z0-9_.-]`.
    pub station: String,
    /// The family's regime parameter `p`.
    pub p: f64,
    /// Seeds the initial condition, the noise, the drops and random sensor points.
    pub seed: u64,
    /// Whole field or sensor points.
    pub sensors: Sensors,
    /// The family channels the station measures, by name, in the order it sends them (`None`:
    /// all of them). A flood station's gauges read depth (`h`), not momentum.
    pub channels: Option<Vec<String>>,
    /// Standard deviation of the Gaussian noise added to every reported value, in the field's
    /// units (0: none).
    pub noise_sigma: f64,
    /// Probability that a frame is dropped (not published), `0 ≤ p < 1`.
    pub drop_probability: f64,
    /// f32 or quantised i16 values.
    pub encoding: Encoding,
    /// Timestamp of the first frame, µs since the Unix epoch.
    pub start_us: u64,
    /// Sequence number of the first frame.
    pub first_seq: u32,
}

impl SimulatorOptions {
    /// Dense f32 frames without noise or drops, starting at `seq` 0 and timestamp 0.
    pub fn new(station: impl Into<String>, p: f64, seed: u64) -> Self {
        Self {
            station: station.into(),
            p,
            seed,
            sensors: Sensors::Dense,
            channels: None,
            noise_sigma: 0.0,
            drop_probability: 0.0,
            encoding: Encoding::F32,
            start_us: 0,
            first_seq: 0,
        }
    }
}

/// Why the simulator cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The solver failed (blew up, or the parameter is not allowed).
    #[error("the station's solver failed: {0}")]
    Solve(#[from] SolveError),
    /// An option is out of range.
    #[error("{what} must be {allowed} (got {got})")]
    BadOption {
        /// Which option.
        what: &'static str,
        /// What is allowed.
        allowed: &'static str,
        /// What was given.
        got: String,
    },
    /// The station id cannot be used.
    #[error("invalid station id '{station}': {source}")]
    BadStation {
        /// The id.
        station: String,
        /// Why.
        source: DecodeError,
    },
    /// The sensor points do not fit the grid.
    #[error("sensor points: {0}")]
    BadPoints(String),
    /// A points file could not be read.
    #[error("cannot read the sensor points file {path}: {source}")]
    PointsFile {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a points file is wrong.
    #[error("{path}:{line}: {reason} (expected one `row col` or `row,col` per line, `#` comments)")]
    PointsSyntax {
        /// The path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A frame could not be encoded (a bug: the simulator only makes valid frames).
    #[error("cannot encode frame {seq}: {source}")]
    Encode {
        /// The frame's sequence number.
        seq: u32,
        /// Why.
        source: EncodeError,
    },
    /// Publishing failed.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The solver's worker task died.
    #[error("the solver task failed: {0}")]
    Task(String),
}

fn bad_option(what: &'static str, allowed: &'static str, got: impl ToString) -> SimulatorError {
    SimulatorError::BadOption {
        what,
        allowed,
        got: got.to_string(),
    }
}

/// The values a station reports for one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum SimValues {
    /// f32 values.
    F32(Vec<f32>),
    /// Quantised values.
    I16 {
        /// The counts.
        counts: Vec<i16>,
        /// How counts map to values.
        quantizer: Quantizer,
    },
}

/// One frame of a simulated station.
#[derive(Debug, Clone, PartialEq)]
pub struct SimFrame {
    /// Sequence number.
    pub seq: u32,
    /// Timestamp, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// Simulation time.
    pub time: f64,
    /// The solver's whole field (`channels × n × n`), without noise: the ground truth.
    pub truth: Vec<f32>,
    /// What the station reports (at its sensors, with noise, encoded), channel-major.
    pub values: SimValues,
    /// Whether the station drops this frame (it is not published).
    pub dropped: bool,
    station: Arc<str>,
    channels: Arc<[&'static str]>,
    shape: GridShape,
    points: Option<Arc<[GridPoint]>>,
}

impl SimFrame {
    /// The frame as the protocol's [`SensorFrame`] (borrowing this frame).
    pub fn sensor_frame(&self) -> SensorFrame<'_> {
        // `Channels::new` only fails beyond 8 channels; families have at most 3.
        let channels = Channels::new(&self.channels).unwrap_or(Channels::single("?"));
        SensorFrame {
            station: &self.station,
            seq: self.seq,
            timestamp_us: self.timestamp_us,
            channels,
            shape: self.shape,
            sampling: match &self.points {
                None => Sampling::Dense,
                Some(points) => Sampling::Points(PackedSlice::new(points)),
            },
            values: match &self.values {
                SimValues::F32(v) => Values::f32(v),
                SimValues::I16 { counts, quantizer } => Values::i16(counts, *quantizer),
            },
        }
    }

    /// The encoded frame (the MQTT payload).
    pub fn encode(&self) -> Result<Vec<u8>, SimulatorError> {
        self.sensor_frame()
            .to_vec()
            .map_err(|source| SimulatorError::Encode {
                seq: self.seq,
                source,
            })
    }

    /// The reported values as f32 (dequantised).
    pub fn observed(&self) -> Vec<f32> {
        match &self.values {
            SimValues::F32(v) => v.clone(),
            SimValues::I16 { counts, quantizer } => {
                counts.iter().map(|&q| quantizer.dequantize(q)).collect()
            }
        }
    }

    /// The sensor points, if the station reports points.
    pub fn points(&self) -> Option<&[GridPoint]> {
        self.points.as_deref()
    }
}

/// Random-stream ids, so each use of the seed gets independent numbers.
const STREAM_NOISE: u64 = 1;
const STREAM_DROP: u64 = 2;
const STREAM_POINTS: u64 = 3;

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A simulated sensor station; see the [module docs](self).
pub struct StationSimulator {
    station: Arc<str>,
    /// The channels it sends, and where each is in the solver's frame.
    channels: Arc<[&'static str]>,
    measured: Vec<usize>,
    shape: GridShape,
    n: usize,
    points: Option<Arc<[GridPoint]>>,
    solver: Box<dyn Solver>,
    frame_dt: f64,
    noise: Option<Normal<f64>>,
    noise_rng: ChaCha8Rng,
    drop_probability: f64,
    drop_rng: ChaCha8Rng,
    encoding: Encoding,
    start_us: u64,
    next_seq: u32,
    frames_made: u64,
}

impl std::fmt::Debug for StationSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StationSimulator")
            .field("station", &self.station)
            .field("shape", &self.shape)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl StationSimulator {
    /// A station running `cfg`'s solver at `opts.p` from the initial condition of `opts.seed`.
    pub fn new(cfg: &FamilyConfig, opts: SimulatorOptions) -> Result<Self, SimulatorError> {
        firmware_bridge::topic::validate_station_id(&opts.station).map_err(|source| {
            SimulatorError::BadStation {
                station: opts.station.clone(),
                source,
            }
        })?;
        if !(opts.noise_sigma.is_finite() && opts.noise_sigma >= 0.0) {
            return Err(bad_option(
                "the noise sigma",
                "finite and ≥ 0",
                opts.noise_sigma,
            ));
        }
        if !(0.0..1.0).contains(&opts.drop_probability) {
            return Err(bad_option(
                "the drop probability",
                "at least 0 and below 1",
                opts.drop_probability,
            ));
        }
        let n = cfg.grid.n;
        let side = u16::try_from(n).map_err(|_| bad_option("the grid size", "at most 65535", n))?;
        let all = cfg.channels();
        let measured: Vec<usize> = match &opts.channels {
            None => (0..all.len()).collect(),
            Some(names) => {
                let mut idx = Vec::with_capacity(names.len());
                for name in names {
                    let Some(i) = all.iter().position(|c| c == name) else {
                        return Err(bad_option(
                            "each measured channel",
                            "one of the family's channels",
                            format!("{name}; the family has {}", all.join(", ")),
                        ));
                    };
                    if idx.contains(&i) {
                        return Err(bad_option(
                            "each measured channel",
                            "listed once",
                            name.clone(),
                        ));
                    }
                    idx.push(i);
                }
                if idx.is_empty() {
                    return Err(bad_option(
                        "the list of measured channels",
                        "non-empty",
                        "an empty list",
                    ));
                }
                idx
            }
        };
        let channels: Arc<[&'static str]> = measured.iter().map(|&i| all[i]).collect();
        let shape = GridShape::new(side, side, channels.len() as u8);
        let points = match &opts.sensors {
            Sensors::Dense => None,
            Sensors::Points(points) => {
                check_points(points, n)?;
                Some(Arc::from(points.as_slice()))
            }
        };
        let solver = pde::new_solver(cfg, opts.p, opts.seed)?;
        let noise =
            if opts.noise_sigma > 0.0 {
                Some(Normal::new(0.0, opts.noise_sigma).map_err(|_| {
                    bad_option("the noise sigma", "finite and ≥ 0", opts.noise_sigma)
                })?)
            } else {
                None
            };
        Ok(Self {
            station: Arc::from(opts.station.as_str()),
            channels,
            measured,
            shape,
            n,
            points,
            solver,
            frame_dt: cfg.time.frame_dt,
            noise,
            noise_rng: rng(opts.seed, STREAM_NOISE),
            drop_probability: opts.drop_probability,
            drop_rng: rng(opts.seed, STREAM_DROP),
            encoding: opts.encoding,
            start_us: opts.start_us,
            next_seq: opts.first_seq,
            frames_made: 0,
        })
    }

    /// The station id.
    pub fn station(&self) -> &str {
        &self.station
    }

    /// The grid shape of its frames.
    pub fn shape(&self) -> GridShape {
        self.shape
    }

    /// The names of the channels it sends.
    pub fn channels(&self) -> &[&'static str] {
        &self.channels
    }

    /// The sensor points, if it reports points.
    pub fn points(&self) -> Option<&[GridPoint]> {
        self.points.as_deref()
    }

    /// Simulation time between frames.
    pub fn frame_dt(&self) -> f64 {
        self.frame_dt
    }

    /// The next frame: the initial condition first, then one frame interval later each time.
    pub fn next_frame(&mut self) -> Result<SimFrame, SimulatorError> {
        if self.frames_made > 0 {
            self.solver.advance(self.frame_dt)?;
        }
        let time = self.solver.time();
        let mut truth = vec![0.0_f32; self.solver.frame_len()];
        self.solver.write_frame(&mut truth);
        let n = self.n;
        let cells = n * n;
        let channel = |c: usize| &truth[c * cells..(c + 1) * cells];
        let mut observed: Vec<f32> = match &self.points {
            None => self
                .measured
                .iter()
                .flat_map(|&c| channel(c).iter().copied())
                .collect(),
            Some(points) => self
                .measured
                .iter()
                .flat_map(|&c| {
                    let field = channel(c);
                    points
                        .iter()
                        .map(move |p| field[usize::from(p.row) * n + usize::from(p.col)])
                })
                .collect(),
        };
        if let Some(noise) = &self.noise {
            for v in &mut observed {
                *v = (f64::from(*v) + noise.sample(&mut self.noise_rng)) as f32;
            }
        }
        let values = match self.encoding {
            Encoding::F32 => SimValues::F32(observed),
            Encoding::I16 => {
                let (lo, hi) = observed
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                let quantizer = Quantizer::for_range(lo, hi);
                let mut counts = vec![0_i16; observed.len()];
                quantizer.quantize_into(&observed, &mut counts);
                SimValues::I16 { counts, quantizer }
            }
        };
        let dropped =
            self.drop_probability > 0.0 && self.drop_rng.random_bool(self.drop_probability);
        let frame = SimFrame {
            seq: self.next_seq,
            timestamp_us: self.start_us.saturating_add((time * 1e6).round() as u64),
            time,
            truth,
            values,
            dropped,
            station: Arc::clone(&self.station),
            channels: Arc::clone(&self.channels),
            shape: self.shape,
            points: self.points.clone(),
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.frames_made += 1;
        Ok(frame)
    }
}

impl Iterator for StationSimulator {
    type Item = Result<SimFrame, SimulatorError>;

    /// Never ends (a solver that fails yields its error).
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_frame())
    }
}

fn check_points(points: &[GridPoint], n: usize) -> Result<(), SimulatorError> {
    if points.is_empty() {
        return Err(SimulatorError::BadPoints("no sensor points given".into()));
    }
    if points.len() > MAX_POINTS {
        return Err(SimulatorError::BadPoints(format!(
            "{} points given, a frame carries at most {MAX_POINTS}",
            points.len()
        )));
    }
    if let Some(p) = points
        .iter()
        .find(|p| usize::from(p.row) >= n || usize::from(p.col) >= n)
    {
        return Err(SimulatorError::BadPoints(format!(
            "point (row {}, col {}) lies outside the {n}×{n} grid",
            p.row, p.col
        )));
    }
    let mut sorted = points.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(SimulatorError::BadPoints(format!(
            "point (row {}, col {}) is listed twice",
            w[0].row, w[0].col
        )));
    }
    Ok(())
}

/// `count` distinct random cells of an `n × n` grid (seeded), sorted by row then column.
pub fn random_points(n: usize, count: usize, seed: u64) -> Result<Vec<GridPoint>, SimulatorError> {
    let cells = n * n;
    if count == 0 || count > cells.min(MAX_POINTS) || n > usize::from(u16::MAX) {
        return Err(SimulatorError::BadPoints(format!(
            "cannot choose {count} random points: between 1 and {} fit the {n}×{n} grid",
            cells.min(MAX_POINTS)
        )));
    }
    let mut rng = rng(seed, STREAM_POINTS);
    let mut points: Vec<GridPoint> = rand::seq::index::sample(&mut rng, cells, count)
        .into_iter()
        .map(|i| GridPoint::new((i / n) as u16, (i % n) as u16))
        .collect();
    points.sort_unstable();
    Ok(points)
}

/// Parses a points file: one `row col` (or `row,col`) per line; blank lines and `#` comments
/// are ignored. `path` only names the file in errors.
pub fn parse_points(text: &str, path: &str) -> Result<Vec<GridPoint>, SimulatorError> {
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let syntax = |reason: String| SimulatorError::PointsSyntax {
            path: path.to_string(),
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        let [row, col] = fields.as_slice() else {
            return Err(syntax(format!("{} numbers on the line", fields.len())));
        };
        let parse = |f: &str| {
            f.parse::<u16>()
                .map_err(|_| syntax(format!("'{f}' is not a grid index (0–65535)")))
        };
        points.push(GridPoint::new(parse(row)?, parse(col)?));
    }
    Ok(points)
}

/// Reads a points file (see [`parse_points`]).
pub fn load_points(path: &Path) -> Result<Vec<GridPoint>, SimulatorError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulatorError::PointsFile {
        path: path.display().to_string(),
        source,
    })?;
    parse_points(&text, &path.display().to_string())
}

/// How fast frames go out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// As fast as the solver and the broker allow (publishing waits while the link's buffer is
    /// full instead of dropping frames).
    Unpaced,
    /// One frame per interval (a live station: while the broker is away, the link's buffer
    /// drops the oldest frames).
    Every(Duration),
}

impl Pacing {
    /// `hz` frames per second of wall-clock time; 0 means [`Pacing::Unpaced`].
    pub fn rate(hz: f64) -> Result<Self, SimulatorError> {
        if hz == 0.0 {
            return Ok(Self::Unpaced);
        }
        if !(hz.is_finite() && hz > 0.0 && hz <= 1e6) {
            return Err(bad_option("the rate", "between 0 and 1e6 Hz", hz));
        }
        Ok(Self::Every(Duration::from_secs_f64(1.0 / hz)))
    }

    /// Simulation time mapped to wall-clock time: one frame every `frame_dt / speed` seconds
    /// (`speed` 1: real time).
    pub fn simulated_time(frame_dt: f64, speed: f64) -> Result<Self, SimulatorError> {
        if !(speed.is_finite() && speed > 0.0) {
            return Err(bad_option("the speed factor", "positive", speed));
        }
        Self::rate(speed / frame_dt)
    }
}

/// What [`run_simulation`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimulationReport {
    /// Frames simulated.
    pub frames: u64,
    /// Frames handed to the link.
    pub published: u64,
    /// Frames the station dropped on purpose (`drop_probability`).
    pub dropped: u64,
    /// Sequence number of the last frame simulated.
    pub last_seq: Option<u32>,
    /// The link's counters at the end.
    pub link: LinkStats,
}

/// Publishes the simulator's frames on `ccm/<station>/frames` (QoS 1) at `pacing`, until
/// `frames` frames have been simulated (forever when `None`) or `stop` completes. The solver
/// runs on tokio's blocking pool. Returns once the last frame is handed to the link: call
/// [`MqttLink::flush`] to wait until the broker has them all.
pub async fn run_simulation(
    mut sim: StationSimulator,
    link: &MqttLink,
    pacing: Pacing,
    frames: Option<u64>,
    stop: impl Future<Output = ()>,
) -> Result<SimulationReport, SimulatorError> {
    tokio::pin!(stop);
    let mut ticker = match pacing {
        Pacing::Unpaced => None,
        Pacing::Every(period) => {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(t)
        }
    };
    let station = sim.station().to_string();
    let mut report = SimulationReport::default();
    let mut behind_warned = false;
    while frames.is_none_or(|n| report.frames < n) {
        match &mut ticker {
            Some(ticker) => {
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    _ = ticker.tick() => {}
                }
            }
            None => {
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    () = std::future::ready(()) => {}
                }
            }
        }
        let started = tokio::time::Instant::now();
        let (back, frame) = tokio::task::spawn_blocking(move || {
            let frame = sim.next_frame();
            (sim, frame)
        })
        .await
        .map_err(|e| SimulatorError::Task(e.to_string()))?;
        sim = back;
        let frame = frame?;
        if let Pacing::Every(period) = pacing
            && !behind_warned
            && started.elapsed() > period
        {
            behind_warned = true;
            tracing::warn!(
                station,
                "the solver needs {:.0} ms per frame, longer than the {:.0} ms frame interval: \
                 frames go out as fast as it can make them",
                started.elapsed().as_secs_f64() * 1e3,
                period.as_secs_f64() * 1e3
            );
        }
        report.frames += 1;
        report.last_seq = Some(frame.seq);
        if frame.dropped {
            report.dropped += 1;
            tracing::debug!(station, seq = frame.seq, "frame dropped (simulated loss)");
            continue;
        }
        let payload = frame.encode()?;
        match pacing {
            Pacing::Every(_) => link.publish_to(Topic::Frames, &station, payload)?,
            Pacing::Unpaced => {
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    r = link.publish_to_wait(Topic::Frames, &station, payload) => r?,
                }
            }
        }
        report.published += 1;
        tracing::debug!(station, seq = frame.seq, t = frame.time, "frame published");
    }
    report.link = link.stats();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;

    fn tiny() -> FamilyConfig {
        let mut cfg = FamilyConfig::builtin(Family::DamBreak);
        cfg.grid.n = 16;
        cfg.grid.solve_n = Some(16);
        cfg
    }

    #[test]
    fn points_files_parse_with_comments_and_commas() {
        let pts = parse_points("# sensors\n1 2\n3,4  # gauge B\n\n 5\t6\n", "p.txt").unwrap();
        assert_eq!(
            pts,
            [
                GridPoint::new(1, 2),
                GridPoint::new(3, 4),
                GridPoint::new(5, 6)
            ]
        );
        let err = parse_points("1 2\n3\n", "p.txt").unwrap_err().to_string();
        assert!(err.starts_with("p.txt:2: 1 numbers on the line"), "{err}");
        let err = parse_points("1 x\n", "p.txt").unwrap_err().to_string();
        assert!(err.contains("'x' is not a grid index"), "{err}");
    }

    #[test]
    fn random_points_are_distinct_seeded_and_inside() {
        let a = random_points(16, 20, 3).unwrap();
        assert_eq!(a, random_points(16, 20, 3).unwrap());
        assert_ne!(a, random_points(16, 20, 4).unwrap());
        assert!(check_points(&a, 16).is_ok());
        assert!(random_points(4, 17, 0).is_err());
        assert!(random_points(4, 0, 0).is_err());
    }

    #[test]
    fn bad_points_are_refused_with_the_reason() {
        let outside = [GridPoint::new(16, 0)];
        let err = check_points(&outside, 16).unwrap_err().to_string();
        assert!(err.contains("outside the 16×16 grid"), "{err}");
        let twice = [GridPoint::new(1, 1), GridPoint::new(1, 1)];
        let err = check_points(&twice, 16).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn options_are_checked() {
        let cfg = tiny();
        let mut o = SimulatorOptions::new("st 1", 0.03, 1);
        assert!(matches!(
            StationSimulator::new(&cfg, o.clone()),
            Err(SimulatorError::BadStation { .. })
        ));
        o.station = "st-1".into();
        o.drop_probability = 1.0;
        assert!(StationSimulator::new(&cfg, o.clone()).is_err());
        o.drop_probability = 0.0;
        o.noise_sigma = -1.0;
        assert!(StationSimulator::new(&cfg, o).is_err());
        assert!(Pacing::rate(-1.0).is_err());
        assert_eq!(Pacing::rate(0.0).unwrap(), Pacing::Unpaced);
        assert_eq!(
            Pacing::simulated_time(0.25, 2.0).unwrap(),
            Pacing::Every(Duration::from_millis(125))
        );
    }

    #[test]
    fn drops_do_not_depend_on_noise() {
        let cfg = tiny();
        let mut o = SimulatorOptions::new("st-1", 0.03, 9);
        o.drop_probability = 0.5;
        let drops = |sigma: f64| {
            let mut o = o.clone();
            o.noise_sigma = sigma;
            let sim = StationSimulator::new(&cfg, o).unwrap();
            sim.take(12).map(|f| f.unwrap().dropped).collect::<Vec<_>>()
        };
        let quiet = drops(0.0);
        assert_eq!(quiet, drops(0.1));
        assert!(quiet.iter().any(|d| *d) && quiet.iter().any(|d| !*d));
        o.noise_sigma = 0.0;
    }
}
