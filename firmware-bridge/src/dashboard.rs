//! The JSON messages dashboards read: station status and alerts (`std` only).
//!
//! These are plain serde structs; the runtime serialises them with `serde_json`. Field names are
//! the JSON keys. Every field but the identifying ones has a default, so a reader accepts a
//! minimal message (such as the offline last will) and unknown keys are ignored, which lets the
//! runtime add fields without breaking dashboards. `schema` is bumped only for incompatible
//! changes.

use std::collections::BTreeMap;
use std::string::String;

use serde::{Deserialize, Serialize};

use crate::error::RejectReason;

/// The `schema` value of the messages defined here.
pub const SCHEMA_VERSION: u32 = 1;

const fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// Whether the runtime serving a station is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StationState {
    /// The runtime is connected and serving the station.
    Online,
    /// The runtime is gone (sent as its MQTT last will, or on a clean shutdown).
    Offline,
}

/// Retained on `ccm/<station>/status`: what the twin of one station is doing.
///
/// ```
/// use firmware_bridge::dashboard::StatusMessage;
///
/// let will = StatusMessage::offline("st-01", 0);
/// let json = serde_json::to_string(&will)?;
/// let back: StatusMessage = serde_json::from_str(&json)?;
/// assert_eq!(back, will);
/// // A minimal message parses too.
/// let min: StatusMessage = serde_json::from_str(r#"{"station":"st-01","state":"offline"}"#)?;
/// assert_eq!(min.schema, 1);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// The station id.
    pub station: String,
    /// Online or offline.
    pub state: StationState,
    /// When this status was produced, microseconds since the Unix epoch (UTC).
    #[serde(default)]
    pub updated_at_us: u64,
    /// The PDE family served (`reaction_diffusion`, `navier_stokes`, `dam_break`).
    #[serde(default)]
    pub family: Option<String>,
    /// SHA-256 (lower-case hex) of the deployed model's manifest.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// The CCM coordinate in use (`-1` low endpoint, `+1` high endpoint); `null` before the first
    /// readout.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// How sure the readout is of `alpha`, from 0 (no idea) to 1 (sharply determined).
    #[serde(default)]
    pub alpha_confidence: Option<f64>,
    /// `|alpha| > 1`: the regime lies outside the endpoints and the model extrapolates.
    #[serde(default)]
    pub extrapolating: bool,
    /// Relative L2 error of the merged model on the observed prefix.
    #[serde(default)]
    pub prefix_fit_error: Option<f64>,
    /// How long the last cycle's stages took.
    #[serde(default)]
    pub timings: Timings,
    /// Running counts since the runtime started.
    #[serde(default)]
    pub counters: Counters,
    /// How the latest frame's whole state was formed: `observed` (a dense frame), or
    /// `analysis from <background>` for sparse sensors (`forecast`, `persistence` or
    /// `mean state`); absent before the first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_from: Option<String>,
    /// Release number of the deployed model bundle when it came as a signed update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_release: Option<u64>,
    /// What the last model update did (installed, or why it was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    /// Set when the last forecast is the family anchor's because the merge's rollout blew up:
    /// why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl StatusMessage {
    /// The retained status to register as the MQTT last will (and to publish on shutdown).
    pub fn offline(station: &str, updated_at_us: u64) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            station: station.into(),
            state: StationState::Offline,
            updated_at_us,
            family: None,
            model_sha256: None,
            alpha: None,
            alpha_confidence: None,
            extrapolating: false,
            prefix_fit_error: None,
            timings: Timings::default(),
            counters: Counters::default(),
            state_from: None,
            model_release: None,
            last_update: None,
            fallback: None,
        }
    }
}

/// Durations of the last cycle's stages, in milliseconds (`null` when not run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Reading `alpha` out of the prefix.
    pub readout_ms: Option<f64>,
    /// Merging the endpoint experts at `alpha`.
    pub merge_ms: Option<f64>,
    /// Rolling the merged model forward over the horizon.
    pub rollout_ms: Option<f64>,
    /// From a frame's arrival to its forecast's publication.
    pub frame_to_forecast_ms: Option<f64>,
    /// From a frame's arrival to the publication of its forecast's first step on the `lead`
    /// topic (`null` when none was published).
    pub frame_to_lead_ms: Option<f64>,
}

/// Running counts since the runtime started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Frames (whole or reassembled) received.
    pub frames_received: u64,
    /// Frames, chunks and stream frames rejected, by [`RejectReason::as_str`].
    pub frames_rejected: BTreeMap<String, u64>,
    /// Chunked frames dropped incomplete (a chunk was lost).
    pub frames_lost: u64,
    /// Forecasts published.
    pub forecasts_published: u64,
    /// Forecasts' first steps published ahead of them on the `lead` topic.
    #[serde(default)]
    pub leads_published: u64,
    /// Alerts published (all-clears included).
    pub alerts_published: u64,
    /// Times the runtime lost its broker connection and connected again.
    #[serde(default)]
    pub broker_reconnects: u64,
    /// Frames that fall between model steps (a station sampling faster than the model steps),
    /// left out by design.
    #[serde(default)]
    pub frames_skipped: u64,
}

impl Counters {
    /// Counts one rejection.
    pub fn reject(&mut self, reason: RejectReason) {
        *self
            .frames_rejected
            .entry(reason.as_str().into())
            .or_default() += 1;
    }

    /// Rejections for one reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.frames_rejected
            .get(reason.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Rejections for every reason.
    pub fn rejected_total(&self) -> u64 {
        self.frames_rejected.values().sum()
    }
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    /// Worth knowing.
    Info,
    /// Act soon.
    Warning,
    /// Act now.
    Critical,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The forecast crosses a threshold at `point` (e.g. water depth above a dyke).
    ThresholdCrossing,
    /// The regime moved outside the endpoints (`|alpha| > 1`).
    Extrapolating,
    /// The regime drifted and `alpha` was read out again.
    RegimeDrift,
    /// A rollout blew up and was discarded; the last good forecast stands.
    RolloutUnstable,
    /// The station has sent no valid frame for too long.
    StationSilent,
    /// A kind this version does not know (sent by a newer runtime).
    #[serde(other)]
    Other,
}

/// A grid cell and channel an alert refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertPoint {
    /// Row index.
    pub row: u16,
    /// Column index.
    pub col: u16,
    /// The channel name.
    pub channel: String,
}

/// Published on `ccm/<station>/alerts`.
///
/// An alert is raised with `all_clear: false` and later cleared by a message with the same `id`
/// and `all_clear: true`; QoS 1 can deliver either twice, so readers key on `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertMessage {
    /// [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// Stable for the life of the alert; the all-clear repeats it.
    pub id: String,
    /// The station id.
    pub station: String,
    /// What the alert is about.
    pub kind: AlertKind,
    /// How serious it is.
    pub level: AlertLevel,
    /// When it was issued, microseconds since the Unix epoch (UTC).
    #[serde(default)]
    pub issued_at_us: u64,
    /// The cell concerned, for threshold crossings.
    #[serde(default)]
    pub point: Option<AlertPoint>,
    /// The threshold, in the channel's units.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// When the forecast expects the crossing, microseconds since the Unix epoch (UTC).
    #[serde(default)]
    pub expected_crossing_us: Option<u64>,
    /// `true` when this message clears the alert `id`.
    #[serde(default)]
    pub all_clear: bool,
    /// A sentence for the person on duty.
    #[serde(default)]
    pub message: String,
}
