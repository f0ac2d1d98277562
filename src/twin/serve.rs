//! `ccm-twin serve`: one station's frames in over MQTT, forecasts, status and alerts out.
//!
//! The station's configuration ([`StationConfig`], a TOML file) names the broker, the station,
//! the family's model bundle, how `α` is read (from the prefix, or from a known `p`) and the
//! alert rules. The server subscribes to `ccm/<station>/frames`, decodes every payload with the
//! firmware-bridge protocol (rejections are counted by reason), feeds the frames to a
//! [`Forecaster`] (which runs on a blocking thread, off the MQTT event loop), and publishes each
//! forecast (QoS 1) on `ccm/<station>/forecast`, a retained status on `ccm/<station>/status` after
//! every cycle, and alerts on `ccm/<station>/alerts`. The subscription uses a persistent session
//! (the broker queues frames while the runtime reconnects). The broker holds an `offline` status
//! as the last will; a clean shutdown publishes it too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firmware_bridge::dashboard::{
    AlertKind, AlertLevel, AlertMessage, AlertPoint, Counters, StationState, StatusMessage, Timings,
};
use firmware_bridge::topic::QoS;
use firmware_bridge::topic::Topic;
use firmware_bridge::{Channels, Forecast, GridShape, PackedSlice, Values, WireMessage};
use serde::Deserialize;

use super::forecaster::{Forecaster, ForecasterOptions, Progress, ReadoutMode};
use super::mapping::{Mapped, MappingConfig, ModelGrid, Probe, StationMap};
use super::mqtt::{BrokerAddress, LastWill, LinkOptions, MqttError, MqttLink};
use crate::config::Family;
use crate::models::FamilyModels;

/// A station's runtime configuration (`configs/station.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// The MQTT broker.
    pub broker: BrokerConfig,
    /// The station served.
    pub station: StationSection,
    /// Threshold alerts on the forecast.
    #[serde(default)]
    pub alerts: Vec<AlertRule>,
    /// A Prometheus-style `GET /metrics` endpoint, when given.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// How sparse sensor frames are made whole (optimal interpolation).
    #[serde(default)]
    pub analysis: AnalysisConfig,
    /// Signed model updates, when given.
    #[serde(default)]
    pub updates: Option<UpdatesConfig>,
    /// How the station's grid, channels, units and frame rate map onto the model's
    /// ([`super::mapping`]); without it the station speaks the model's terms.
    #[serde(default)]
    pub mapping: MappingConfig,
}

/// `[updates]`: where signed model bundles come from, whom to trust, where they are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdatesConfig {
    /// Trusted ed25519 public keys (hex): a package must be signed by one of them.
    pub keys: Vec<String>,
    /// The data folder (relative to the config file): installed bundles and the pointer to
    /// the current one live here, and the runtime writes nowhere else.
    pub data_dir: PathBuf,
    /// A folder watched for packages (`*.tar`), relative to the config file; each is moved into
    /// `taken/` inside it once read (`refused/` when it is a link, unreadable or too large).
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// Accept packages published (QoS 1) on `ccm/<station>/bundle`.
    #[serde(default)]
    pub mqtt: bool,
    /// Largest package accepted, in MiB (default 64).
    #[serde(default = "default_bundle_mib")]
    pub max_bundle_mib: u64,
    /// How often the folder is looked at, in seconds (default 5).
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: f64,
}

fn default_bundle_mib() -> u64 {
    super::update::DEFAULT_MAX_BYTES >> 20
}

fn default_poll_seconds() -> f64 {
    5.0
}

/// The optimal interpolation that makes a sparse sensor frame whole
/// ([`crate::twin::analysis`]); whether distances wrap follows the family's domain.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Correlation length of the background's error, in grid cells.
    pub length_cells: f64,
    /// Sensor error variance over background error variance (> 0; small: trust the sensors).
    pub obs_to_background: f64,
    /// Shallow water: when a station measures the depth and neither momentum component, correct
    /// the background's momentum from the depth by mass conservation (default on;
    /// [`crate::twin::analysis::MassBalance`]); sparse gauges only when they cover the grid
    /// ([`crate::twin::analysis::Analyser::coverage`]). Other families have no balance.
    pub mass_balance: bool,
}

impl AnalysisConfig {
    /// The analysis's settings for a station of `family` (distances wrap on a periodic domain).
    pub fn oi(&self, family: crate::config::Family) -> super::analysis::OiConfig {
        super::analysis::OiConfig {
            length_cells: self.length_cells,
            obs_to_background: self.obs_to_background,
            periodic: family.periodic(),
            mass_balance: self.mass_balance,
        }
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        let d = super::analysis::OiConfig::default();
        AnalysisConfig {
            length_cells: d.length_cells,
            obs_to_background: d.obs_to_background,
            mass_balance: d.mass_balance,
        }
    }
}

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` (port 0 picks a free one; the `Metrics` event says which).
    pub listen: String,
}

/// Where the broker is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// MQTT client id (default `ccm-twin-<station>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, for a broker that refuses anonymous clients; the password comes from
    /// `password_file` or `password_env`, never from this file.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (its first line), relative to the config file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS to the broker (`[broker.tls]`); plain TCP when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[broker.tls]`: the files of a TLS connection, relative to the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate authorities that may sign the broker's certificate.
    pub ca_file: PathBuf,
    /// This client's certificate (PEM), for a broker that asks for one.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// This client's private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The files as the MQTT link takes them.
    pub fn files(&self) -> super::mqtt::TlsFiles {
        super::mqtt::TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }
}

impl BrokerConfig {
    /// The credentials the configuration asks for, with the password read from its file or
    /// environment variable; `None` when no user name is given.
    pub fn credentials(&self) -> Result<Option<super::mqtt::Credentials>, String> {
        let Some(username) = &self.username else {
            return Ok(None);
        };
        let password = match (&self.password_file, &self.password_env) {
            (Some(file), None) => std::fs::read_to_string(file)
                .map_err(|e| format!("broker.password_file {}: {e}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                format!("broker.password_env: the environment variable {var} is not set")
            })?,
            (None, None) => {
                return Err(
                    "broker.username needs broker.password_file or broker.password_env".into(),
                );
            }
            (Some(_), Some(_)) => {
                return Err(
                    "broker: give the password one way, password_file or password_env".into(),
                );
            }
        };
        Ok(Some(super::mqtt::Credentials {
            username: username.clone(),
            password,
        }))
    }
}

/// The station and its model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Station id (the topic level).
    pub id: String,
    /// The PDE family.
    pub family: Family,
    /// The model bundle directory (`models/<family>`), relative to the config file.
    pub models: PathBuf,
    /// The station's regime parameter when it is known; the prefix readout otherwise.
    #[serde(default)]
    pub p: Option<f64>,
    /// Frames may arrive this many sequence numbers early before missing ones are given up.
    #[serde(default = "default_reorder")]
    pub reorder_window: u32,
    /// The runtime that runs the experts: `native` (default, the fastest here), `tract`, or
    /// `ort` (ONNX Runtime's shared library, see `ort_library`).
    #[serde(default)]
    pub runtime: crate::infer::Runtime,
    /// For `runtime = "ort"`: the path of `libonnxruntime.so.*` (default: `ORT_DYLIB_PATH`),
    /// relative to the config file.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// Threads (each with its own runtime) that share a prefix readout's scan; default: the
    /// machine's cores, at most 4.
    #[serde(default)]
    pub readout_threads: Option<usize>,
    /// Frames that may wait while a cycle runs; when more arrive faster than the runtime
    /// forecasts, the oldest waiting ones are dropped (counted as `shed_backlog`) so the
    /// forecasts stay current and memory stays bounded. Default 16.
    #[serde(default = "default_backlog")]
    pub max_backlog: usize,
    /// Frames given up as missing (`reorder_window` behind the newest): `restart` the prefix
    /// (default), or `fill` them from the forecast made for them when it covers them.
    #[serde(default)]
    pub gap_policy: super::forecaster::GapPolicy,
    /// Seconds without a valid frame after which a `station_silent` alert is raised (cleared by
    /// the next valid frame). Default 30.
    #[serde(default = "default_silent_after")]
    pub silent_after_seconds: f64,
}

fn default_backlog() -> usize {
    16
}

fn default_silent_after() -> f64 {
    30.0
}

fn default_reorder() -> u32 {
    4
}

/// An alert: the forecast at a cell reaches `above` (raised) and later stays below `clear_below`
/// over the whole horizon (all clear). The gap between the two is the hysteresis.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Channel name: the station's (then `above` and `clear_below` are in the station's units)
    /// or the model's (`h` for water depth, ...; in the model's units).
    pub channel: String,
    /// Cell row, on the station's grid.
    pub row: u16,
    /// Cell column, on the station's grid.
    pub col: u16,
    /// Raise when the forecast reaches this value.
    pub above: f64,
    /// Clear when the whole forecast stays below this value (≤ `above`).
    pub clear_below: f64,
    /// `info`, `warning` or `critical`.
    #[serde(default = "default_level")]
    pub level: AlertLevel,
}

fn default_level() -> AlertLevel {
    AlertLevel::Warning
}

/// Why serving cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is unusable.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model bundle cannot be used.
    #[error("model bundle {path}: {reason}")]
    Models {
        /// The bundle directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// MQTT failed.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

impl StationConfig {
    /// Reads and checks a station config; the models and library paths are made relative to
    /// the file.
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let bad = |reason: String| ServeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let mut cfg: StationConfig = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.station.models.is_relative() {
            cfg.station.models = base.join(&cfg.station.models);
        }
        if let Some(lib) = cfg.station.ort_library.as_mut()
            && lib.is_relative()
        {
            *lib = base.join(&*lib);
        }
        if let Some(file) = cfg.broker.password_file.as_mut()
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if let Some(u) = cfg.updates.as_mut() {
            for dir in std::iter::once(&mut u.data_dir).chain(u.folder.as_mut()) {
                if dir.is_relative() {
                    *dir = base.join(&*dir);
                }
            }
        }
        if let Some(tls) = cfg.broker.tls.as_mut() {
            for file in std::iter::once(&mut tls.ca_file)
                .chain(tls.client_cert_file.as_mut())
                .chain(tls.client_key_file.as_mut())
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    /// How this station's frames map onto its family's model (`[mapping]`).
    pub fn station_map(&self) -> Result<StationMap, String> {
        let family = crate::config::FamilyConfig::builtin(self.station.family);
        let model = ModelGrid {
            n: family.grid.n,
            channels: family.channels().iter().map(|c| c.to_string()).collect(),
            frame_dt: family.time.frame_dt,
            periodic: self.station.family.periodic(),
        };
        StationMap::new(&self.mapping, &model)
    }

    /// The alert rules on the model's terms, or every rule that cannot be mapped.
    fn probes(&self, map: &StationMap) -> Result<Vec<Probe>, String> {
        let mut problems = Vec::new();
        let mut probes = Vec::new();
        for (i, a) in self.alerts.iter().enumerate() {
            match map.probe(
                &a.channel,
                usize::from(a.row),
                usize::from(a.col),
                a.above,
                a.clear_below,
            ) {
                Ok(p) => probes.push(p),
                Err(e) => problems.push(format!("alerts[{i}]: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(probes)
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Every problem at once, one per line.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(e) = firmware_bridge::topic::validate_station_id(&self.station.id) {
            problems.push(format!("station.id: {e}"));
        }
        let b = &self.broker;
        match (&b.username, &b.password_file, &b.password_env) {
            (None, None, None) | (Some(_), Some(_), None) | (Some(_), None, Some(_)) => {}
            (None, _, _) => {
                problems.push("broker: a password is given without broker.username".to_string())
            }
            (Some(_), None, None) => problems.push(
                "broker.username needs a password: set broker.password_file (a file holding \
                 it) or broker.password_env (an environment variable holding it)"
                    .to_string(),
            ),
            (Some(_), Some(_), Some(_)) => problems.push(
                "broker: give the password one way, password_file or password_env, not both"
                    .to_string(),
            ),
        }
        let a = &self.analysis;
        if !(a.length_cells.is_finite() && a.length_cells > 0.0) {
            problems.push(format!(
                "analysis.length_cells: must be positive (got {})",
                a.length_cells
            ));
        }
        if !(a.obs_to_background.is_finite() && a.obs_to_background > 0.0) {
            problems.push(format!(
                "analysis.obs_to_background: must be positive (got {}); a sensor error of zero \
                 makes two sensors on one cell unsolvable",
                a.obs_to_background
            ));
        }
        if let Some(tls) = &b.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            problems.push(
                "broker.tls: client_cert_file and client_key_file go together (mutual TLS), or \
                 neither"
                    .to_string(),
            );
        }
        if let Some(u) = &self.updates {
            if let Err(e) = super::update::TrustedKeys::parse(&u.keys) {
                problems.push(e.to_string());
            }
            if !(u.poll_seconds.is_finite() && u.poll_seconds >= 0.1) {
                problems.push(format!(
                    "updates.poll_seconds: at least 0.1 (got {})",
                    u.poll_seconds
                ));
            }
            if u.max_bundle_mib == 0 || u.max_bundle_mib > 1024 {
                problems.push(format!(
                    "updates.max_bundle_mib: 1 to 1024 (got {})",
                    u.max_bundle_mib
                ));
            }
            if u.folder.is_none() && !u.mqtt {
                problems.push(
                    "updates: give a folder to watch, or mqtt = true, or leave [updates] out"
                        .to_string(),
                );
            }
        }
        if !(1..=4096).contains(&self.station.max_backlog) {
            problems.push(format!(
                "station.max_backlog: 1 to 4096 (got {})",
                self.station.max_backlog
            ));
        }
        let silent = self.station.silent_after_seconds;
        if !(silent.is_finite() && (0.1..=86_400.0).contains(&silent)) {
            problems.push(format!(
                "station.silent_after_seconds: 0.1 to 86400 (got {silent})"
            ));
        }
        if let Some(t) = self.station.readout_threads
            && !(1..=16).contains(&t)
        {
            problems.push(format!("station.readout_threads: 1 to 16 (got {t})"));
        }
        if let Some(p) = self.station.p
            && !(p.is_finite() && p > 0.0)
        {
            problems.push(format!("station.p: must be positive (got {p})"));
        }
        match self.station_map() {
            Ok(map) => {
                if let Err(e) = self.probes(&map) {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(e),
        }
        for (i, a) in self.alerts.iter().enumerate() {
            if a.clear_below.is_nan() || a.above.is_nan() || a.clear_below > a.above {
                problems.push(format!(
                    "alerts[{i}]: clear_below ({}) must not exceed above ({})",
                    a.clear_below, a.above
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// What one serving run did (returned at shutdown).
#[derive(Debug, Clone, Default)]
pub struct ServeSummary {
    /// The published counters.
    pub counters: Counters,
    /// The last α deployed.
    pub alpha: Option<f64>,
    /// Times α was (re-)read.
    pub readouts: u32,
}

/// Something the server did, for a caller that shows progress (the demo).
#[derive(Debug, Clone)]
pub enum ServeEvent {
    /// A frame joined the prefix.
    Filling {
        /// Frames held.
        have: usize,
        /// Frames needed.
        need: usize,
    },
    /// A forecast was published.
    Forecast {
        /// The frame it starts from.
        based_on_seq: u32,
        /// The α in use.
        alpha: f64,
        /// Whether α was read for it.
        new_readout: bool,
        /// Confidence interval of the readout.
        confidence: Option<(f64, f64)>,
        /// Readout time, ms.
        readout_ms: f64,
        /// Frame to forecast, ms.
        total_ms: f64,
        /// Frame to the forecast's first step on the `lead` topic, ms (`None`: no lead was
        /// published for it).
        lead_ms: Option<f64>,
        /// Set when the merge blew up and this forecast is the anchor's: why.
        fallback: Option<String>,
    },
    /// The metrics endpoint listens here.
    Metrics {
        /// Its address.
        addr: std::net::SocketAddr,
    },
    /// A frame was refused.
    Rejected {
        /// Why.
        reason: String,
    },
    /// An alert (or all-clear) was published.
    Alert(AlertMessage),
    /// A model update was installed (the forecaster restarted on it) or refused.
    Update {
        /// Whether it was installed.
        installed: bool,
        /// Its release, when installed.
        release: Option<u64>,
        /// What happened, for the person on duty.
        message: String,
    },
}

struct AlertState {
    active: bool,
    raised: u64,
}

/// Serves one station until `shutdown` resolves (or the MQTT link is closed). Must run inside a
/// tokio runtime.
pub async fn serve(
    cfg: &StationConfig,
    shutdown: impl std::future::Future<Output = ()>,
    events: Option<tokio::sync::mpsc::UnboundedSender<ServeEvent>>,
) -> Result<ServeSummary, ServeError> {
    // the installed update, when there is one; the configured bundle otherwise
    let installed = match &cfg.updates {
        Some(u) => super::update::current(&u.data_dir, cfg.station.family).unwrap_or_else(|e| {
            tracing::warn!("{e}; serving the configured bundle");
            None
        }),
        None => None,
    };
    let mut models_dir = match (&installed, &cfg.updates) {
        (Some(i), Some(u)) => i.path(&u.data_dir),
        _ => cfg.station.models.clone(),
    };
    let mut loaded = FamilyModels::load(&models_dir);
    if let (Err(e), Some(i)) = (&loaded, &installed) {
        // the installed update does not load any more: the configured bundle serves
        tracing::warn!(
            "installed release {} at {}: {e}; serving the configured bundle {}",
            i.release,
            models_dir.display(),
            cfg.station.models.display()
        );
        models_dir = cfg.station.models.clone();
        loaded = FamilyModels::load(&models_dir);
    }
    let installed = installed.filter(|_| models_dir != cfg.station.models);
    let models = loaded.map_err(|e| ServeError::Models {
        path: models_dir.clone(),
        reason: e.to_string(),
    })?;
    let family_cfg = crate::config::FamilyConfig::builtin(cfg.station.family);
    let oi = cfg.analysis.oi(cfg.station.family);
    let channel_names: Vec<String> = family_cfg
        .channels()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let station = cfg.station.id.clone();
    let config_error = |section: &str, reason: String| ServeError::Config {
        path: PathBuf::from(section),
        reason,
    };
    let map = cfg
        .station_map()
        .map_err(|e| config_error("[mapping]", e))?;
    let probes = cfg
        .probes(&map)
        .map_err(|e| config_error("[[alerts]]", e))?;
    tracing::info!(%station, "mapping: {}", map.describe());
    let forecaster = build_forecaster(cfg, &models)?;
    let updates =
        match &cfg.updates {
            Some(u) => Some(super::update::TrustedKeys::parse(&u.keys).map_err(|e| {
                ServeError::Config {
                    path: PathBuf::from("[updates]"),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };

    let topic = |t: Topic| t.for_station(&station).expect("station id checked");
    let bundle_topic = format!("ccm/{station}/bundle");
    let offline = serde_json::to_vec(&StatusMessage::offline(&station, super::unix_time_us()))
        .expect("status serialises");
    let mut link_opts = LinkOptions::new(
        BrokerAddress::new(cfg.broker.host.clone(), cfg.broker.port),
        cfg.broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("ccm-twin-{station}")),
    );
    link_opts.credentials = cfg
        .broker
        .credentials()
        .map_err(|reason| ServeError::Config {
            path: PathBuf::from("[broker]"),
            reason,
        })?;
    link_opts.tls = cfg
        .broker
        .tls
        .as_ref()
        .map(|t| t.files().client_config())
        .transpose()
        .map_err(|e| ServeError::Config {
            path: PathBuf::from("[broker.tls]"),
            reason: e.to_string(),
        })?;
    link_opts.subscriptions = vec![(topic(Topic::Frames), QoS::AtLeastOnce)];
    // the inbox below drains the link at once, so this only absorbs scheduling hiccups
    link_opts.incoming_capacity = 4 * cfg.station.max_backlog.max(16);
    if let Some(u) = cfg.updates.as_ref().filter(|u| u.mqtt) {
        link_opts
            .subscriptions
            .push((bundle_topic.clone(), QoS::AtLeastOnce));
        // a package is one message: the link must take it whole
        link_opts.max_packet_size = link_opts
            .max_packet_size
            .max(((u.max_bundle_mib << 20) + (64 << 10)) as usize);
    }
    // a persistent session: the broker queues the station's frames while the runtime reconnects
    link_opts.clean_session = false;
    link_opts.last_will = Some(LastWill {
        topic: topic(Topic::Status),
        payload: offline,
        qos: QoS::AtLeastOnce,
        retain: true,
    });
    let (link, rx) = MqttLink::start_subscriber(link_opts)?;
    let mut inbox = Inbox::spawn(rx, bundle_topic.clone(), cfg.station.max_backlog);

    let mut counters = Counters::default();
    let mut alerts: Vec<AlertState> = cfg
        .alerts
        .iter()
        .map(|_| AlertState {
            active: false,
            raised: 0,
        })
        .collect();
    let mut status = StatusMessage {
        family: Some(cfg.station.family.to_string()),
        model_sha256: Some(manifest_sha(&models_dir)),
        model_release: installed.as_ref().map(|i| i.release),
        state: StationState::Online,
        ..StatusMessage::offline(&station, super::unix_time_us())
    };
    let emit = |e: ServeEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    let metrics = match &cfg.metrics {
        None => None,
        Some(m) => {
            let server = super::metrics::MetricsServer::bind(&m.listen)
                .await
                .map_err(|e| ServeError::Config {
                    path: PathBuf::from("[metrics]"),
                    reason: format!("cannot listen on {}: {e}", m.listen),
                })?;
            tracing::info!(addr = %server.addr(), "metrics at http://{}/metrics", server.addr());
            emit(ServeEvent::Metrics {
                addr: server.addr(),
            });
            Some(server)
        }
    };
    let metrics = metrics.as_ref();
    let status_topic = topic(Topic::Status);
    let publish = |status: &mut StatusMessage, counters: &Counters| {
        publish_status(&link, &status_topic, status, counters, metrics)
    };
    publish(&mut status, &counters)?;
    let lead = LeadPublisher {
        link: link.clone(),
        topic: topic(Topic::Lead),
        station: station.clone(),
        channels: channel_names.clone(),
        n: family_cfg.grid.n as u16,
        dt_us: forecaster.frame_dt_us(),
        frames_per_step: map.frames_per_step(),
        shared: std::sync::Arc::default(),
    };
    let mut forecaster = forecaster;
    forecaster.on_lead(lead.sink());
    let mut forecaster = Some(forecaster);
    tokio::pin!(shutdown);
    let poll = cfg
        .updates
        .as_ref()
        .filter(|u| u.folder.is_some())
        .map(|u| Duration::from_secs_f64(u.poll_seconds));
    let mut ticker = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    enum Next {
        Message(super::mqtt::Received),
        Poll,
        Silent,
    }
    let silent_after = Duration::from_secs_f64(cfg.station.silent_after_seconds);
    let mut last_valid = (tokio::time::Instant::now(), None::<u32>);
    // the id of the station-silent alert in force, and how many were raised
    let (mut silent, mut silences) = (None::<String>, 0u64);
    loop {
        // the metrics page follows every frame (the retained status only every cycle)
        if let Some(m) = metrics {
            status.counters = counters.clone();
            m.update(&status);
        }
        let shed = inbox.take_shed();
        if shed > 0 {
            *counters
                .frames_rejected
                .entry("shed_backlog".into())
                .or_default() += shed;
            // the shed frames will not come: no waiting for them in the reorder window
            if let Some(f) = forecaster.as_mut() {
                f.expect_gap();
            }
        }
        let next = tokio::select! {
            m = inbox.next() => match m { Some(m) => Next::Message(m), None => break },
            _ = ticker.tick(), if poll.is_some() => Next::Poll,
            () = tokio::time::sleep_until(last_valid.0 + silent_after), if silent.is_none() => {
                Next::Silent
            }
            () = &mut shutdown => break,
        };
        let msg = match next {
            Next::Message(m) if m.topic != bundle_topic => m,
            Next::Silent => {
                silences += 1;
                let id = format!("{station}-silent-{silences}");
                let last = last_valid
                    .1
                    .map_or("none since the runtime started".to_string(), |s| {
                        format!("the last was seq {s}")
                    });
                let a = silence_alert(
                    &station,
                    &id,
                    false,
                    format!(
                        "no valid frame from {station} for {} ({last}); no forecasts until \
                         frames come again: check the station, its power and its link",
                        super::mqtt::fmt_duration(silent_after)
                    ),
                );
                tracing::warn!(%station, "{}", a.message);
                publish_alert(&link, &topic(Topic::Alerts), &a)?;
                counters.alerts_published += 1;
                emit(ServeEvent::Alert(a));
                publish(&mut status, &counters)?;
                silent = Some(id);
                continue;
            }
            other => {
                // a model update: from the watched folder, or published on the bundle topic
                let (Some(u), Some(keys)) = (&cfg.updates, &updates) else {
                    continue;
                };
                let packages = match other {
                    Next::Message(m) => vec![(format!("a package on {bundle_topic}"), m.payload)],
                    Next::Poll => match &u.folder {
                        Some(dir) => take_packages(dir, u.max_bundle_mib << 20),
                        None => Vec::new(),
                    },
                    Next::Silent => unreachable!("handled above"),
                };
                for (source, package) in packages {
                    let (release, message) = match apply_update(
                        u,
                        keys,
                        cfg.station.family,
                        package,
                    )
                    .await
                    {
                        Ok((inst, models)) => match build_forecaster(cfg, &models) {
                            Ok(mut f) => {
                                f.on_lead(lead.sink());
                                forecaster = Some(f);
                                status.model_sha256 = Some(manifest_sha(&inst.path(&u.data_dir)));
                                status.model_release = Some(inst.release);
                                status.alpha = None;
                                (
                                    Some(inst.release),
                                    format!(
                                        "release {} from {source} installed and serving (signed \
                                         by {}); the prefix starts again",
                                        inst.release, inst.key
                                    ),
                                )
                            }
                            Err(e) => (
                                None,
                                format!(
                                    "release {} from {source} was installed but cannot run \
                                     ({e}); the previous model keeps serving until a restart",
                                    inst.release
                                ),
                            ),
                        },
                        Err(e) => (
                            None,
                            format!("{source}: {e}; the current model keeps serving"),
                        ),
                    };
                    if release.is_some() {
                        tracing::info!(%station, "{message}");
                    } else {
                        tracing::warn!(%station, "{message}");
                    }
                    status.last_update = Some(message.clone());
                    emit(ServeEvent::Update {
                        installed: release.is_some(),
                        release,
                        message,
                    });
                    publish(&mut status, &counters)?;
                }
                continue;
            }
        };
        let arrived = Instant::now();
        let frame = match firmware_bridge::decode_frame(&msg.payload) {
            Ok(f) => f,
            Err(e) => {
                counters.reject(e.reason());
                emit(ServeEvent::Rejected {
                    reason: format!("undecodable frame: {e}"),
                });
                continue;
            }
        };
        counters.frames_received += 1;
        let values = match frame_values(&frame, &map, &station) {
            Ok(v) => v,
            Err((counter, reason)) => {
                count(&mut counters, counter);
                emit(ServeEvent::Rejected { reason });
                continue;
            }
        };
        last_valid = (tokio::time::Instant::now(), Some(frame.seq));
        if let Some(id) = silent.take() {
            let a = silence_alert(
                &station,
                &id,
                true,
                format!("frames from {station} again (seq {})", frame.seq),
            );
            tracing::info!(%station, "{}", a.message);
            publish_alert(&link, &topic(Topic::Alerts), &a)?;
            counters.alerts_published += 1;
            emit(ServeEvent::Alert(a));
        }
        let Some(seq) = map.model_seq(frame.seq) else {
            // between two model steps
            counters.frames_skipped += 1;
            continue;
        };
        let ts = frame.timestamp_us;
        let every = channel_names.len();
        let partial = !matches!(&values, Mapped::Dense { observed, .. } if observed.len() == every);
        // the forecaster computes on a blocking thread; the MQTT event loop keeps running
        let mut f = forecaster.take().expect("returned after every frame");
        let (f, outcome) = tokio::task::spawn_blocking(move || {
            let pushed = match &values {
                Mapped::Dense { values, observed } => {
                    f.push_partial(seq, ts, None, observed, values, &oi)
                }
                Mapped::Points {
                    points,
                    values,
                    observed,
                } => f.push_partial(seq, ts, Some(points), observed, values, &oi),
            };
            let outcome = match pushed {
                Ok(Progress::Forecast(v)) => Ok(Some((
                    v.based_on_seq,
                    v.based_on_us,
                    v.frames.to_vec(),
                    v.deployment.clone(),
                    v.new_readout,
                    v.timings,
                    v.fallback,
                ))),
                Ok(Progress::Filling { have, need }) => Err(Ok((have, need))),
                Ok(Progress::Held) => Ok(None),
                Err(e) => Err(Err((e.counter(), e.to_string()))),
            };
            (f, outcome)
        })
        .await
        .expect("the forecaster does not panic");
        let dt_us = f.frame_dt_us();
        status.state_from = Some(match (partial, f.last_background()) {
            (true, Some(b)) => format!("analysis from {}", b.name()),
            _ => "observed".to_string(),
        });
        forecaster = Some(f);
        let (based_on_seq, based_on_us, frames, dep, new_readout, timings, fallback) = match outcome
        {
            Ok(Some(x)) => x,
            Ok(None) => continue,
            Err(Ok((have, need))) => {
                emit(ServeEvent::Filling { have, need });
                continue;
            }
            Err(Err((counter, reason))) => {
                count(&mut counters, counter);
                tracing::warn!(%station, "{reason}");
                emit(ServeEvent::Rejected { reason });
                continue;
            }
        };
        let horizon = frames.len() / (channel_names.len() * family_cfg.grid.n.pow(2));
        let stamps: Vec<u64> = (1..=horizon as u64)
            .map(|s| based_on_us + s * dt_us)
            .collect();
        let names: Vec<&str> = channel_names.iter().map(String::as_str).collect();
        let n = family_cfg.grid.n as u16;
        // the station's numbering (every `frames_per_step`-th of its frames is a model step)
        let based_on_seq = based_on_seq.wrapping_mul(map.frames_per_step());
        let forecast = Forecast {
            station: &station,
            based_on_seq,
            issued_at_us: super::unix_time_us(),
            alpha: dep.alpha as f32,
            channels: Channels::new(&names).expect("family channel names are valid"),
            shape: GridShape {
                rows: n,
                cols: n,
                channels: names.len() as u8,
            },
            timestamps_us: PackedSlice::new(&stamps),
            values: Values::F32(PackedSlice::new(&frames)),
        };
        match forecast.to_vec() {
            Ok(bytes) => {
                link.publish(topic(Topic::Forecast), QoS::AtLeastOnce, false, bytes)?;
                counters.forecasts_published += 1;
            }
            Err(e) => tracing::error!(%station, "cannot encode the forecast: {e}"),
        }
        let (leads, lead_at) = lead.take(based_on_seq);
        counters.leads_published = leads;
        let lead_ms = lead_at.map(|t| t.saturating_duration_since(arrived).as_secs_f64() * 1e3);
        emit(ServeEvent::Forecast {
            lead_ms,
            based_on_seq,
            alpha: dep.alpha,
            new_readout,
            confidence: dep.confidence.map(|c| (c.lo, c.hi)),
            readout_ms: timings.readout_ms,
            total_ms: arrived.elapsed().as_secs_f64() * 1e3,
            fallback: fallback.clone(),
        });
        if let Some(why) = &fallback {
            tracing::warn!(%station, "{why}");
        }
        status.fallback = fallback;
        for ((rule, probe), state) in cfg.alerts.iter().zip(&probes).zip(alerts.iter_mut()) {
            if let Some(a) = check_alert(rule, probe, state, &station, &frames, &stamps) {
                publish_alert(&link, &topic(Topic::Alerts), &a)?;
                counters.alerts_published += 1;
                emit(ServeEvent::Alert(a));
            }
        }
        status.alpha = Some(dep.alpha);
        status.alpha_confidence = dep.confidence_score();
        status.extrapolating = dep.extrapolates();
        status.prefix_fit_error = dep.fit_error;
        status.timings = Timings {
            readout_ms: new_readout.then_some(timings.readout_ms),
            merge_ms: new_readout.then_some(timings.merge_ms),
            rollout_ms: Some(timings.rollout_ms),
            frame_to_forecast_ms: Some(arrived.elapsed().as_secs_f64() * 1e3),
            frame_to_lead_ms: lead_ms,
        };
        publish(&mut status, &counters)?;
        // between frames: the scan of a re-read the drift check is about to call for (not when
        // a frame is already waiting: the re-read then simply does the whole scan itself)
        if !forecaster.as_ref().is_some_and(|f| f.work_due()) || inbox.waiting() {
            continue;
        }
        let mut f = forecaster.take().expect("returned after every frame");
        let (f, prepared) = tokio::task::spawn_blocking(move || {
            let r = f.prepare();
            (f, r)
        })
        .await
        .expect("the forecaster does not panic");
        forecaster = Some(f);
        if let Err(e) = prepared {
            tracing::warn!(%station, "preparing a re-read: {e}");
        }
    }
    let shed = inbox.take_shed();
    if shed > 0 {
        *counters
            .frames_rejected
            .entry("shed_backlog".into())
            .or_default() += shed;
    }
    counters.broker_reconnects = link.stats().connections.saturating_sub(1);
    // clean shutdown: the offline status, then disconnect
    status.state = StationState::Offline;
    publish(&mut status, &counters)?;
    let _ = link.flush(Duration::from_secs(5)).await;
    link.close().await;
    let f = forecaster.expect("returned after every frame");
    Ok(ServeSummary {
        counters,
        alpha: f.deployment().map(|d| d.alpha),
        readouts: f.deployment().map_or(0, |d| d.readouts),
    })
}

/// Leads published, and the last one's `based_on_seq` (the station's numbering) and time.
type LeadsSent = (u64, Option<(u32, Instant)>);

/// Publishes each forecast's first step on the station's `lead` topic from the forecaster's
/// thread, as soon as it is computed (a forecast of horizon 1, in the model's terms like the
/// forecast; `based_on_seq` in the station's numbering).
#[derive(Clone)]
struct LeadPublisher {
    link: MqttLink,
    topic: String,
    station: String,
    channels: Vec<String>,
    n: u16,
    dt_us: u64,
    frames_per_step: u32,
    shared: std::sync::Arc<std::sync::Mutex<LeadsSent>>,
}

impl LeadPublisher {
    fn sink(&self) -> impl FnMut(super::forecaster::LeadView<'_>) + Send + 'static {
        let me = self.clone();
        move |v| {
            let names: Vec<&str> = me.channels.iter().map(String::as_str).collect();
            let stamps = [v.based_on_us + me.dt_us];
            let based_on_seq = v.based_on_seq.wrapping_mul(me.frames_per_step);
            let lead = Forecast {
                station: &me.station,
                based_on_seq,
                issued_at_us: super::unix_time_us(),
                alpha: v.alpha as f32,
                channels: Channels::new(&names).expect("family channel names are valid"),
                shape: GridShape {
                    rows: me.n,
                    cols: me.n,
                    channels: names.len() as u8,
                },
                timestamps_us: PackedSlice::new(&stamps),
                values: Values::F32(PackedSlice::new(v.frame)),
            };
            let sent = lead.to_vec().map_err(|e| e.to_string()).and_then(|bytes| {
                me.link
                    .publish(me.topic.clone(), Topic::Lead.qos(), false, bytes)
                    .map_err(|e| e.to_string())
            });
            match sent {
                Ok(()) => {
                    let mut s = me.shared.lock().expect("not poisoned");
                    s.0 += 1;
                    s.1 = Some((based_on_seq, Instant::now()));
                }
                Err(e) => tracing::warn!(station = %me.station, "cannot publish the lead: {e}"),
            }
        }
    }

    /// Leads published so far, and when the lead of the forecast from `based_on_seq` was, if
    /// it was the last one published (taken: a lead is reported once).
    fn take(&self, based_on_seq: u32) -> (u64, Option<Instant>) {
        let mut s = self.shared.lock().expect("not poisoned");
        let last = s.1.take();
        (s.0, last.filter(|l| l.0 == based_on_seq).map(|l| l.1))
    }
}

/// The forecaster for `models` on the station's runtime, with its readout helpers.
fn build_forecaster(
    cfg: &StationConfig,
    models: &FamilyModels,
) -> Result<Forecaster<Box<dyn crate::infer::Backend + Send>>, ServeError> {
    let bad = |reason: String| ServeError::Models {
        path: models.dir.clone(),
        reason,
    };
    if models.manifest.family != cfg.station.family {
        return Err(bad(format!(
            "holds {} experts, the station is configured for {}",
            models.manifest.family, cfg.station.family
        )));
    }
    let ort = crate::infer::OrtOptions {
        library: cfg.station.ort_library.clone(),
        ..Default::default()
    };
    let runtime = |e: crate::infer::InferError| {
        bad(format!(
            "the {} runtime cannot run it: {e}",
            cfg.station.runtime
        ))
    };
    let backend = models.backend(cfg.station.runtime, &ort).map_err(runtime)?;
    let mode = match cfg.station.p {
        Some(p) => ReadoutMode::Known { p },
        None => ReadoutMode::Prefix,
    };
    let mut opts = ForecasterOptions::for_bundle(models, mode);
    opts.reorder_window = cfg.station.reorder_window;
    opts.gap_policy = cfg.station.gap_policy;
    // helpers share the prefix readout's scan; with a known p there is none to share
    let threads = match cfg.station.p {
        Some(_) => 1,
        None => cfg
            .station
            .readout_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4))),
    };
    let helpers = (1..threads.max(1))
        .map(|_| models.backend(cfg.station.runtime, &ort))
        .collect::<Result<Vec<_>, _>>()
        .map_err(runtime)?;
    Ok(Forecaster::new(models, backend, opts)
        .map_err(|e| bad(e.to_string()))?
        .with_helpers(helpers))
}

/// sha256 of a bundle's manifest file (empty input when unreadable).
fn manifest_sha(dir: &Path) -> String {
    crate::fno::expert::sha256_hex(&std::fs::read(dir.join("manifest.json")).unwrap_or_default())
}

/// Verifies and installs a package off the event loop.
async fn apply_update(
    u: &UpdatesConfig,
    keys: &super::update::TrustedKeys,
    family: Family,
    package: Vec<u8>,
) -> Result<(super::update::Installed, FamilyModels), super::update::UpdateError> {
    let (keys, data_dir, max) = (keys.clone(), u.data_dir.clone(), u.max_bundle_mib << 20);
    tokio::task::spawn_blocking(move || {
        let v = super::update::verify(&package, &keys, family, max)?;
        super::update::install(&data_dir, &v)
    })
    .await
    .expect("the update task does not panic")
}

/// The packages (`*.tar`) waiting in `dir`, in name order, each moved into `taken/` once read
/// (so it is handled once; the status says what became of it). A link, a non-file or an
/// oversized file is moved into `refused/` unread and comes back empty, its reason in its name.
fn take_packages(dir: &Path, max_bytes: u64) -> Vec<(String, Vec<u8>)> {
    let Ok(list) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = list
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = std::fs::symlink_metadata(&path);
        let (verdict, bytes) = match meta {
            Ok(m) if !m.file_type().is_file() => ("refused", Err("is not a regular file")),
            Ok(m) if m.len() > max_bytes => ("refused", Err("is over updates.max_bundle_mib")),
            Ok(_) => match std::fs::read(&path) {
                Ok(b) => ("taken", Ok(b)),
                Err(_) => ("refused", Err("cannot be read")),
            },
            Err(_) => continue,
        };
        let to = dir.join(verdict);
        let _ = std::fs::create_dir_all(&to);
        let _ = std::fs::rename(&path, to.join(&name));
        let source = format!("{} in {}", name, dir.display());
        match bytes {
            Ok(b) => out.push((source, b)),
            Err(why) => {
                tracing::warn!("model update {source} {why}; moved to refused/");
                out.push((format!("{source} ({why})"), Vec::new()));
            }
        }
    }
    out
}

fn publish_status(
    link: &MqttLink,
    topic: &str,
    status: &mut StatusMessage,
    counters: &Counters,
    metrics: Option<&super::metrics::MetricsServer>,
) -> Result<(), MqttError> {
    status.updated_at_us = super::unix_time_us();
    status.counters = counters.clone();
    status.counters.broker_reconnects = link.stats().connections.saturating_sub(1);
    if let Some(m) = metrics {
        m.update(status);
    }
    link.publish(
        topic,
        QoS::AtLeastOnce,
        true,
        serde_json::to_vec(status).expect("status serialises"),
    )
}

/// The runtime's inbox: a task drains the MQTT link as messages come, keeping at most
/// `max_backlog` frames and dropping the *oldest* beyond (counted), so a flood costs bounded
/// memory and the runtime always works on the newest frames; bundle packages wait apart (at
/// most two; more are dropped) and come first.
struct Inbox {
    frames: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<super::mqtt::Received>>>,
    bundles: tokio::sync::mpsc::Receiver<super::mqtt::Received>,
    notify: std::sync::Arc<tokio::sync::Notify>,
    shed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Inbox {
    fn spawn(
        mut rx: tokio::sync::mpsc::Receiver<super::mqtt::Received>,
        bundle_topic: String,
        max_backlog: usize,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let frames = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let shed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (btx, bundles) = tokio::sync::mpsc::channel(2);
        let (f, n, s, c) = (frames.clone(), notify.clone(), shed.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if m.topic == bundle_topic {
                    if btx.try_send(m).is_err() {
                        tracing::warn!("a model package arrived while two wait; dropped");
                    }
                } else {
                    let mut q = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    while q.len() >= max_backlog.max(1) {
                        q.pop_front();
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    q.push_back(m);
                }
                n.notify_one();
            }
            c.store(true, Ordering::Release);
            n.notify_one();
        });
        Inbox {
            frames,
            bundles,
            notify,
            shed,
            closed,
        }
    }

    /// The next message (packages first, then the oldest frame kept); `None` once the link is
    /// closed and everything was taken. Cancel-safe: a message is taken only when returned.
    async fn next(&mut self) -> Option<super::mqtt::Received> {
        use std::sync::atomic::Ordering;
        loop {
            if let Ok(b) = self.bundles.try_recv() {
                return Some(b);
            }
            if let Some(f) = self
                .frames
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
            {
                return Some(f);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.notify.notified().await;
        }
    }

    /// Frames dropped since the last call.
    /// Whether a message is waiting.
    fn waiting(&self) -> bool {
        !self.frames.lock().expect("not poisoned").is_empty()
    }

    fn take_shed(&self) -> u64 {
        self.shed.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts a rejection (or a withheld forecast) under `reason`.
fn count(counters: &mut Counters, reason: &str) {
    *counters.frames_rejected.entry(reason.into()).or_default() += 1;
}

/// Publishes an alert (QoS 1, not retained).
fn publish_alert(link: &MqttLink, topic: &str, a: &AlertMessage) -> Result<(), MqttError> {
    link.publish(
        topic.to_string(),
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(a).expect("alert serialises"),
    )
}

/// The station-silent alert `id` (raised, or cleared when `all_clear`).
fn silence_alert(station: &str, id: &str, all_clear: bool, message: String) -> AlertMessage {
    AlertMessage {
        schema: 1,
        id: id.to_string(),
        station: station.to_string(),
        kind: AlertKind::StationSilent,
        level: AlertLevel::Warning,
        issued_at_us: super::unix_time_us(),
        point: None,
        threshold: None,
        expected_crossing_us: None,
        all_clear,
        message,
    }
}

/// The frame's values on the model's terms, or (counter name, why) not.
fn frame_values(
    frame: &firmware_bridge::SensorFrame<'_>,
    map: &StationMap,
    station: &str,
) -> Result<Mapped, (&'static str, String)> {
    if frame.station != station {
        return Err((
            "wrong_station",
            format!(
                "frame {} names station `{}`, this runtime serves `{station}`",
                frame.seq, frame.station
            ),
        ));
    }
    map.map(frame)
}

/// Raises or clears the alert of `rule` (watched at `probe` on the model) on this forecast
/// (`frames`: one per entry of `stamps`).
fn check_alert(
    rule: &AlertRule,
    probe: &Probe,
    state: &mut AlertState,
    station: &str,
    frames: &[f32],
    stamps: &[u64],
) -> Option<AlertMessage> {
    let per_step = frames.len() / stamps.len().max(1);
    let series = frames
        .chunks_exact(per_step)
        .map(|f| f64::from(f[probe.index]));
    let crossing = series.clone().position(|v| v >= probe.above);
    let peak = series.fold(f64::NEG_INFINITY, f64::max);
    let base = AlertMessage {
        schema: 1,
        id: format!(
            "{station}-{}-{}-{}-{}",
            rule.channel, rule.row, rule.col, state.raised
        ),
        station: station.to_string(),
        kind: AlertKind::ThresholdCrossing,
        level: rule.level,
        issued_at_us: super::unix_time_us(),
        point: Some(AlertPoint {
            row: rule.row,
            col: rule.col,
            channel: rule.channel.clone(),
        }),
        threshold: Some(rule.above),
        expected_crossing_us: None,
        all_clear: false,
        message: String::new(),
    };
    match (state.active, crossing) {
        (false, Some(step)) => {
            state.active = true;
            let when = stamps[step];
            Some(AlertMessage {
                expected_crossing_us: Some(when),
                message: format!(
                    "{} forecast to reach {} at ({}, {}) in {:.1} s",
                    rule.channel,
                    rule.above,
                    rule.row,
                    rule.col,
                    (when.saturating_sub(stamps[0]) as f64 / 1e6)
                        + (stamps.get(1).map_or(0, |s| s - stamps[0]) as f64 / 1e6)
                ),
                ..base
            })
        }
        (true, _) if peak < probe.clear_below => {
            state.active = false;
            state.raised += 1;
            Some(AlertMessage {
                all_clear: true,
                message: format!(
                    "all clear: {} stays below {} at ({}, {}) over the whole forecast",
                    rule.channel, rule.clear_below, rule.row, rule.col
                ),
                ..base
            })
        }
        _ => None,
    }
}
