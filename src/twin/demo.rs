//! `ccm-twin demo`: the whole edge system in one process, on a regime outside the trained range.
//!
//! An embedded MQTT broker (unless one is given), a simulated station publishing frames of a PDE
//! solver at an OOD parameter, the runtime ([`serve`]) reading `α` from the
//! first `K` frames and forecasting, and an observer that receives the forecasts over MQTT and
//! scores them against the simulator's truth as it arrives, next to the family anchor rolled from
//! the same frame. Returns a [`DemoSummary`]; the CLI prints progress and writes a PNG.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use firmware_bridge::topic::{QoS, Topic};

use super::broker::EmbeddedBroker;
use super::mqtt::{BrokerAddress, LinkOptions, MqttLink};
use super::serve::{AlertRule, BrokerConfig, ServeEvent, StationConfig, StationSection, serve};
use super::simulator::{SimulatorOptions, StationSimulator};
use crate::config::{Family, FamilyConfig};
use crate::infer::{Backend, TractBackend};
use crate::models::FamilyModels;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The family.
    pub family: Family,
    /// The station's true regime (default: the family's first OOD test value).
    pub p: Option<f64>,
    /// The model bundle (default `models/<family>`).
    pub models: PathBuf,
    /// Frames the station sends (at least `K + 1`).
    pub frames: usize,
    /// Seed of the station's initial condition.
    pub seed: u64,
    /// Wall-clock time between frames.
    pub frame_interval: Duration,
    /// A broker to use instead of the embedded one.
    pub broker: Option<BrokerAddress>,
    /// The runtime that runs the experts.
    pub runtime: crate::infer::Runtime,
    /// Sparse sensors: the station reports this many random cells instead of whole fields, and
    /// the runtime makes each frame whole by optimal interpolation.
    pub sensors: Option<usize>,
    /// The channels the station measures (default: all); the runtime's `[mapping]` lists the
    /// others as unobserved and takes them from its background.
    pub channels: Option<Vec<String>>,
}

impl DemoOptions {
    /// The defaults for `family`.
    pub fn new(family: Family) -> Self {
        DemoOptions {
            family,
            p: None,
            models: PathBuf::from("models").join(family.name()),
            frames: 12,
            seed: 7,
            frame_interval: Duration::from_millis(200),
            broker: None,
            runtime: crate::infer::Runtime::default(),
            sensors: None,
            channels: None,
        }
    }
}

/// One forecast as the observer scored it.
#[derive(Debug, Clone)]
pub struct ScoredForecast {
    /// The frame it starts from.
    pub based_on_seq: u32,
    /// The α it was made with.
    pub alpha: f64,
    /// nRMSE over the steps whose truth is known.
    pub error: f64,
    /// The anchor's nRMSE from the same frame over the same steps.
    pub anchor_error: f64,
    /// Steps scored.
    pub steps: usize,
}

/// The first forecast next to the anchor's and the truth.
#[derive(Debug, Clone)]
pub struct FirstForecast {
    /// The frame it starts from.
    pub based_on_seq: u32,
    /// Its α.
    pub alpha: f64,
    /// CCM's forecast (steps × frame).
    pub ccm: Vec<f32>,
    /// The anchor's from the same frame.
    pub anchor: Vec<f32>,
    /// The truth.
    pub truth: Vec<f32>,
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The family.
    pub family: Family,
    /// The station's true `p`.
    pub p: f64,
    /// Its CCM coordinate `s(p)`.
    pub coordinate: f64,
    /// The calibrated map's α for the true `p` (what a known `p` would give).
    pub calibrated_alpha: Option<f64>,
    /// The α the runtime read out of the prefix.
    pub alpha: Option<f64>,
    /// Every forecast received, scored.
    pub forecasts: Vec<ScoredForecast>,
    /// Alerts received.
    pub alerts: Vec<String>,
    /// The first forecast, the anchor's from the same frame and the truth (each steps × frame),
    /// for a plot.
    pub first: Option<FirstForecast>,
    /// Values per frame (`channels × n × n`).
    pub frame_len: usize,
    /// Grid side.
    pub n: usize,
    /// Wall time of the whole demo.
    pub seconds: f64,
}

impl DemoSummary {
    /// Mean forecast error and the anchor's, over the forecasts.
    pub fn mean_errors(&self) -> Option<(f64, f64)> {
        let n = self.forecasts.len() as f64;
        (n > 0.0).then(|| {
            (
                self.forecasts.iter().map(|f| f.error).sum::<f64>() / n,
                self.forecasts.iter().map(|f| f.anchor_error).sum::<f64>() / n,
            )
        })
    }
}

/// A flood watch for the dam-break demo, chosen from the station's first frame as a field
/// engineer would from a map: the cell 3 m downstream of the reservoir's edge (eastwards), raised
/// when the forecast depth reaches 0.25 m, cleared below 0.2 m.
fn flood_watch(first: &[f32], cfg: &FamilyConfig) -> AlertRule {
    let n = cfg.grid.n;
    let domain = match &cfg.solver {
        crate::config::SolverConfig::DamBreak(d) => d.domain,
        _ => n as f64,
    };
    let cell = domain / n as f64;
    let (mut count, mut sr, mut sc) = (0usize, 0.0, 0.0);
    for r in 0..n {
        for c in 0..n {
            if first[r * n + c] > 0.5 {
                count += 1;
                sr += r as f64;
                sc += c as f64;
            }
        }
    }
    let (row, col, radius) = if count > 0 {
        let radius = (count as f64 / std::f64::consts::PI).sqrt();
        (sr / count as f64, sc / count as f64, radius)
    } else {
        (n as f64 / 2.0, n as f64 / 2.0, 0.0)
    };
    let col = (col + radius + 3.0 / cell)
        .round()
        .clamp(0.0, (n - 1) as f64);
    AlertRule {
        channel: "h".into(),
        row: row.round() as u16,
        col: col as u16,
        above: 0.25,
        clear_below: 0.2,
        level: firmware_bridge::dashboard::AlertLevel::Warning,
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Runs the demo; `say` receives one line per thing worth showing.
pub async fn run(opts: DemoOptions, say: &mut dyn FnMut(String)) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let family_cfg = FamilyConfig::builtin(opts.family);
    let par = &family_cfg.parameter;
    let p = opts.p.unwrap_or(par.ood_test[0]);
    let models = FamilyModels::load(&opts.models)?;
    let k = family_cfg.time.prefix;
    anyhow::ensure!(
        opts.frames > k,
        "the station must send more than K = {k} frames"
    );
    let interval = models.prefix_config().interval;
    let calibrated_alpha = models
        .manifest
        .calibration
        .as_ref()
        .map(|c| c.map.alpha(par.coordinate(p), interval));
    say(format!(
        "{} station at {} = {p} (trained range {}–{}: {}), coordinate s(p) = {:+.2}{}",
        opts.family,
        par.name,
        par.lo,
        par.hi,
        if p < par.lo || p > par.hi {
            "outside, the runtime must extrapolate"
        } else {
            "inside"
        },
        par.coordinate(p),
        calibrated_alpha
            .map(|a| format!(", calibrated α for the true p = {a:+.2}"))
            .unwrap_or_default()
    ));

    // the broker
    let (broker, _embedded) = match &opts.broker {
        Some(b) => (b.clone(), None),
        None => {
            let e = EmbeddedBroker::start(0)?;
            say(format!("embedded MQTT broker on {}", e.addr()));
            (BrokerAddress::new("127.0.0.1", e.port()), Some(e))
        }
    };
    let station = format!("demo-{}", opts.family.name().replace('_', "-"));

    // the station's truth: every frame it will send plus a horizon more
    let horizon = family_cfg.time.horizon;
    let mut sim_opts = SimulatorOptions::new(&station, p, opts.seed);
    if let Some(count) = opts.sensors {
        sim_opts.sensors = super::simulator::Sensors::Points(super::simulator::random_points(
            family_cfg.grid.n,
            count,
            opts.seed,
        )?);
        say(format!(
            "the station reports {count} of {} cells; the runtime fills in the rest by optimal \
             interpolation (the anchor below starts from the true whole field)",
            family_cfg.grid.n * family_cfg.grid.n
        ));
    }
    let mut mapping = super::mapping::MappingConfig::default();
    if let Some(names) = &opts.channels {
        sim_opts.channels = Some(names.clone());
        mapping.unobserved = family_cfg
            .channels()
            .iter()
            .filter(|c| !names.iter().any(|n| n == *c))
            .map(|c| c.to_string())
            .collect();
    }
    let partial = opts.sensors.is_some() || !mapping.unobserved.is_empty();
    let mut sim = StationSimulator::new(&family_cfg, sim_opts)?;
    // said once the simulator has accepted the channel names
    if let (Some(names), false) = (&opts.channels, mapping.unobserved.is_empty()) {
        let unobserved = |c: &str| mapping.unobserved.iter().any(|u| u == c);
        let balanced = opts.family == Family::DamBreak
            && names.iter().any(|n| n == "h")
            && unobserved("hu")
            && unobserved("hv");
        // between sparse sensors the balance needs them to cover the grid
        let coverage = match sim.points() {
            Some(points) if balanced => {
                let cells: Vec<(usize, usize)> = points
                    .iter()
                    .map(|g| (usize::from(g.row), usize::from(g.col)))
                    .collect();
                let oi = super::serve::AnalysisConfig::default().oi(opts.family);
                super::analysis::Analyser::new(1, family_cfg.grid.n, &cells, &oi)
                    .ok()
                    .map(|a| a.coverage())
            }
            _ => None,
        };
        let min = super::analysis::BALANCE_MIN_COVERAGE;
        let balance = match (balanced, coverage) {
            (false, _) => String::new(),
            (true, Some(c)) if c < min => format!(
                ", its momentum not corrected: the sensors' coverage {c:.2} is below the {min} \
                 the mass balance needs"
            ),
            (true, _) => ", the momentum corrected from the depth by mass balance".into(),
        };
        say(format!(
            "the station measures {} only; the runtime takes {} from its background{balance} \
             (the anchor below starts from the true whole field)",
            names.join(", "),
            mapping.unobserved.join(", "),
        ));
    }
    let mut frames = Vec::new();
    for _ in 0..opts.frames + horizon {
        frames.push(sim.next_frame()?);
    }
    let frame_len = frames[0].truth.len();

    // the runtime
    let alerts = match opts.family {
        Family::DamBreak => vec![flood_watch(&frames[0].truth, &family_cfg)],
        _ => Vec::new(),
    };
    let cfg = StationConfig {
        broker: BrokerConfig {
            host: broker.host.clone(),
            port: broker.port,
            client_id: None,
            username: None,
            password_file: None,
            password_env: None,
            tls: None,
        },
        station: StationSection {
            id: station.clone(),
            family: opts.family,
            models: opts.models.clone(),
            p: None,
            reorder_window: 4,
            runtime: opts.runtime,
            ort_library: None,
            readout_threads: None,
            max_backlog: 16,
            gap_policy: Default::default(),
            silent_after_seconds: 30.0,
        },
        alerts,
        metrics: None,
        analysis: Default::default(),
        updates: None,
        mapping,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        serve(
            &cfg,
            async {
                let _ = stop_rx.await;
            },
            Some(ev_tx),
        )
        .await
    });

    // the observer
    let mut obs_opts = LinkOptions::new(broker.clone(), format!("{station}-observer"));
    obs_opts.subscriptions = vec![
        (Topic::Forecast.for_station(&station)?, QoS::AtLeastOnce),
        (Topic::Alerts.for_station(&station)?, QoS::AtLeastOnce),
    ];
    let (observer, mut obs_rx) = MqttLink::start_subscriber(obs_opts)?;
    let publisher = MqttLink::start(LinkOptions::new(broker.clone(), format!("{station}-sim")))?;
    anyhow::ensure!(
        publisher.wait_connected(Duration::from_secs(10)).await
            && observer.wait_connected(Duration::from_secs(10)).await,
        "cannot connect to the MQTT broker at {}:{}",
        broker.host,
        broker.port
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // the runtime subscribes

    let mut anchor = TractBackend::with_template_weights(models.anchor.clone())?;
    let mut anchor_out = vec![0.0f32; horizon * frame_len];
    let mut summary = DemoSummary {
        family: opts.family,
        p,
        coordinate: par.coordinate(p),
        calibrated_alpha,
        alpha: None,
        forecasts: Vec::new(),
        alerts: Vec::new(),
        first: None,
        frame_len,
        n: family_cfg.grid.n,
        seconds: 0.0,
    };
    let frames_topic = Topic::Frames.for_station(&station)?;
    let mut sent = 0usize;
    let mut received: BTreeMap<u32, usize> = BTreeMap::new();
    let mut next_send = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        // one forecast per frame from the K-th on (from the (K+1)-th with sparse sensors or
        // unmeasured channels: the first frame's analysis, from the mean state, does not start a
        // prefix)
        let expected = opts.frames + 1 - k - usize::from(partial);
        if sent == opts.frames && received.len() >= expected {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no forecast for the last frames within 5 minutes"
        );
        tokio::select! {
            () = tokio::time::sleep_until(next_send), if sent < opts.frames => {
                publisher.publish(frames_topic.clone(), QoS::AtLeastOnce, false, frames[sent].encode()?)?;
                sent += 1;
                next_send += opts.frame_interval;
            }
            Some(ev) = ev_rx.recv() => match ev {
                ServeEvent::Filling { have, need } => say(format!("prefix {have}/{need} frames")),
                ServeEvent::Forecast { alpha, new_readout: true, confidence, readout_ms, lead_ms, total_ms, .. } => {
                    summary.alpha = Some(alpha);
                    say(format!(
                        "α read from the prefix: {alpha:+.2}{} in {readout_ms:.0} ms ({})",
                        confidence.map(|(lo, hi)| format!(" (within 10 % of the best fit: {lo:+.2}…{hi:+.2})")).unwrap_or_default(),
                        if alpha.abs() > 1.0 { "extrapolating past the endpoint experts" } else { "between the endpoints" }
                    ));
                    say(format!(
                        "frame to forecast: first step published after {}, all {horizon} steps after {total_ms:.0} ms",
                        lead_ms.map_or("—".to_string(), |ms| format!("{ms:.0} ms"))
                    ));
                }
                ServeEvent::Rejected { reason } => say(format!("frame rejected: {reason}")),
                _ => {}
            },
            Some(msg) = obs_rx.recv() => {
                if msg.topic.ends_with("/alerts") {
                    let text = String::from_utf8_lossy(&msg.payload).to_string();
                    let a: firmware_bridge::dashboard::AlertMessage = serde_json::from_str(&text)?;
                    say(format!("ALERT {}: {}", if a.all_clear { "cleared" } else { "raised" }, a.message));
                    summary.alerts.push(a.message);
                    continue;
                }
                let f = firmware_bridge::decode_forecast(&msg.payload)?;
                let base = f.based_on_seq as usize;
                let values = f.values.to_vec();
                let steps = horizon.min(frames.len() - 1 - base);
                let truth: Vec<f32> = frames[base + 1..=base + steps].iter().flat_map(|fr| fr.truth.iter().copied()).collect();
                anchor.roll(&frames[base].truth, steps, &mut anchor_out)?;
                let scored = ScoredForecast {
                    based_on_seq: f.based_on_seq,
                    alpha: f64::from(f.alpha),
                    error: rel_l2(&values[..steps * frame_len], &truth),
                    anchor_error: rel_l2(&anchor_out[..steps * frame_len], &truth),
                    steps,
                };
                say(format!(
                    "forecast from frame {base}: {steps} steps, error {:.3} vs the anchor's {:.3}",
                    scored.error, scored.anchor_error
                ));
                if summary.first.is_none() {
                    summary.first = Some(FirstForecast {
                        based_on_seq: f.based_on_seq,
                        alpha: f64::from(f.alpha),
                        ccm: values[..steps * frame_len].to_vec(),
                        anchor: anchor_out[..steps * frame_len].to_vec(),
                        truth,
                    });
                }
                received.insert(f.based_on_seq, steps);
                summary.forecasts.push(scored);
            }
        }
    }
    let _ = stop_tx.send(());
    let served = server.await??;
    say(format!(
        "runtime: {} frames received, {} forecasts, {} alerts published",
        served.counters.frames_received,
        served.counters.forecasts_published,
        served.counters.alerts_published
    ));
    publisher.close().await;
    observer.close().await;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
