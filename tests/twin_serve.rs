//! The edge runtime end to end over real MQTT brokers: a simulated dam-break station outside the
//! trained range → broker → `serve` → forecasts received by a separate plain MQTT client. The α
//! read from the prefix lands near the best α in hindsight for that very trajectory, and the
//! forecasts beat the family anchor's.

mod mqtt_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ccm_twin::ccm::Line;
use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::infer::{Backend, TractBackend};
use ccm_twin::models::FamilyModels;
use ccm_twin::twin::demo::{DemoOptions, run};
use ccm_twin::twin::mqtt::BrokerAddress;
use ccm_twin::twin::serve::StationConfig;
use ccm_twin::twin::simulator::{SimulatorOptions, StationSimulator};
use mqtt_support::{Mosquitto, Subscriber};

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// Best α (grid of 0.125) for the forecast from frame `K − 1` of the demo's trajectory, and its
/// error: the ceiling the prefix readout is judged against.
fn best_alpha_in_hindsight(opts: &DemoOptions) -> (f64, f64) {
    let cfg = FamilyConfig::builtin(opts.family);
    let p = opts.p.unwrap_or(cfg.parameter.ood_test[0]);
    let mut sim =
        StationSimulator::new(&cfg, SimulatorOptions::new("hindsight", p, opts.seed)).unwrap();
    let (k, h) = (cfg.time.prefix, cfg.time.horizon);
    let frames: Vec<Vec<f32>> = (0..k + h)
        .map(|_| sim.next_frame().unwrap().truth)
        .collect();
    let truth: Vec<f32> = frames[k..].concat();
    let models = FamilyModels::load(&opts.models).unwrap();
    let line =
        Line::through_endpoints(models.low.weights.clone(), models.high.weights.clone()).unwrap();
    let mut buffer = line.buffer();
    let mut backend = TractBackend::new(models.anchor.clone()).unwrap();
    let mut out = vec![0.0; truth.len()];
    (0..=48)
        .map(|i| {
            let a = -4.0 + 0.125 * f64::from(i);
            line.merge_into(a as f32, &mut buffer).unwrap();
            backend.deploy(&buffer).unwrap();
            backend.roll(&frames[k - 1], h, &mut out).unwrap();
            (a, rel_l2(&out, &truth))
        })
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap()
}

/// The dam-break demo sending `frames` frames 100 ms apart to the broker at `addr`.
fn demo_opts(addr: SocketAddr, frames: usize) -> DemoOptions {
    let mut opts = DemoOptions::new(Family::DamBreak);
    opts.frames = frames;
    opts.frame_interval = Duration::from_millis(100);
    opts.broker = Some(BrokerAddress::new(addr.ip().to_string(), addr.port()));
    opts
}

/// Runs the demo, echoing its lines; returns its summary and the lines.
async fn run_logged(opts: &DemoOptions) -> (ccm_twin::twin::demo::DemoSummary, Vec<String>) {
    let mut lines = Vec::new();
    let s = run(opts.clone(), &mut |line| {
        eprintln!("{line}");
        lines.push(line)
    })
    .await
    .unwrap();
    (s, lines)
}

async fn station_to_forecast(addr: SocketAddr) {
    let opts = demo_opts(addr, 8);
    let mut sub = Subscriber::connect(addr, "ccm/demo-dam-break/+", None).await;
    let s = run(opts.clone(), &mut |line| eprintln!("{line}"))
        .await
        .unwrap();

    // a separate plain client received every forecast, and they decode
    let all = sub.drain(Duration::from_secs(2)).await;
    let on = |topic: &str| -> Vec<&[u8]> {
        all.iter()
            .filter(|m| m.topic == format!("ccm/demo-dam-break/{topic}"))
            .map(|m| m.payload.as_slice())
            .collect()
    };
    let got = on("forecast");
    assert_eq!(
        got.len(),
        s.forecasts.len(),
        "forecasts received by the plain client"
    );
    assert_eq!(
        s.forecasts.len(),
        opts.frames - 3,
        "one per frame from the K-th on"
    );
    for m in &got {
        let f = firmware_bridge::decode_forecast(m).unwrap();
        assert_eq!((f.station, f.horizon()), ("demo-dam-break", 20));
    }
    // each forecast's first step came ahead of it on the lead topic: the same values, issued
    // earlier
    let leads = on("lead");
    assert_eq!(leads.len(), got.len(), "one lead per forecast");
    for (l, f) in leads.iter().zip(&got) {
        let (l, f) = (
            firmware_bridge::decode_forecast(l).unwrap(),
            firmware_bridge::decode_forecast(f).unwrap(),
        );
        assert_eq!((l.horizon(), l.based_on_seq), (1, f.based_on_seq));
        assert_eq!(l.timestamps_us.iter().next(), f.timestamps_us.iter().next());
        assert!(
            l.issued_at_us <= f.issued_at_us,
            "the lead was issued first"
        );
        for c in 0..3 {
            for r in 0..64 {
                for x in 0..64 {
                    assert_eq!(l.get(0, c, r, x), f.get(0, c, r, x), "({c}, {r}, {x})");
                }
            }
        }
    }
    // the readout against the best α in hindsight for this trajectory
    let alpha = s.alpha.expect("a readout");
    let (best, e_best) = best_alpha_in_hindsight(&opts);
    let first = &s.forecasts[0];
    assert_eq!(first.steps, 20);
    eprintln!(
        "α read {alpha:+.2}, best in hindsight {best:+.2}; error {:.4} vs {e_best:.4}, anchor {:.4}",
        first.error, first.anchor_error
    );
    assert!(
        (alpha - best).abs() <= 0.25 || first.error <= 1.05 * e_best,
        "α read {alpha:+.2}, best {best:+.2}: error {:.4} vs {e_best:.4}",
        first.error
    );
    // every forecast beats the anchor from the same frame
    for f in &s.forecasts {
        assert!(f.error < f.anchor_error, "{f:?}");
    }
}

#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_to_forecast_over_the_embedded_broker() {
    let broker = ccm_twin::twin::broker::EmbeddedBroker::start(0).unwrap();
    station_to_forecast(broker.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_to_forecast_over_mosquitto() {
    let broker = Mosquitto::start();
    station_to_forecast(broker.addr()).await;
}

/// A station with sparse sensors over the embedded broker: every frame is made whole by optimal
/// interpolation, the retained status says how, α is read at the sensors, the forecasts improve
/// as the analysis cycles (each frame's background is the previous forecast), and more sensors
/// give better forecasts.
#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_station_is_served_through_the_analysis() {
    let broker = ccm_twin::twin::broker::EmbeddedBroker::start(0).unwrap();
    let addr = broker.addr();
    let n = FamilyConfig::builtin(Family::DamBreak).grid.n;
    let mut opts = demo_opts(addr, 10);
    let dense = run(opts.clone(), &mut |_| {}).await.unwrap();
    opts.sensors = Some(n * n / 16);
    let fewer = run(opts.clone(), &mut |_| {}).await.unwrap();
    opts.sensors = Some(n * n / 4);
    let (sparse, lines) = run_logged(&opts).await;
    assert_eq!(
        sparse.forecasts.len(),
        opts.frames - 4,
        "from the 5th frame on"
    );
    let (e_sparse, e_anchor_truth) = sparse.mean_errors().unwrap();
    let (e_fewer, _) = fewer.mean_errors().unwrap();
    let (e_dense, _) = dense.mean_errors().unwrap();
    eprintln!(
        "mean forecast error: one cell in 4 {e_sparse:.4}, in 16 {e_fewer:.4}, every cell \
         {e_dense:.4}; the anchor from the true field {e_anchor_truth:.4}; α {:?}, {:?}, {:?}",
        sparse.alpha, fewer.alpha, dense.alpha
    );
    assert!(
        lines.iter().all(|l| !l.contains("rejected")),
        "no frame refused: {lines:?}"
    );
    assert!(sparse.alpha.unwrap() < -1.0, "α = {:?}", sparse.alpha);
    let (first, last) = (&sparse.forecasts[0], sparse.forecasts.last().unwrap());
    assert!(
        last.error < first.error,
        "the cycle improves the state: {:.4} then {:.4}",
        first.error,
        last.error
    );
    assert!(
        e_dense < e_sparse && e_sparse < e_fewer,
        "more sensors, better forecasts: {e_dense:.4} < {e_sparse:.4} < {e_fewer:.4}"
    );
    // the retained status (the final one, offline) tells how the last state was formed
    let mut sub = Subscriber::connect(addr, "ccm/demo-dam-break/status", None).await;
    let status = sub
        .recv(Duration::from_secs(5))
        .await
        .expect("a retained status");
    let status: firmware_bridge::dashboard::StatusMessage =
        serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(
        status.state_from.as_deref(),
        Some("analysis from forecast"),
        "{status:?}"
    );
}

/// The demo's station as a flood gauge that measures the depth and no momentum
/// (`ccm-twin demo --channels h`): the runtime's `[mapping]` lists the momentum as unobserved and
/// takes it from its background, corrected from the depth by the mass balance. Every frame from
/// the 5th on is forecast (the first frame's momentum, from the mean state, starts no prefix),
/// α is read on the right side of the line, and the forecasts, from the analysed states, beat
/// the anchor's from the true whole fields.
#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depth_gauge_station_is_served_with_its_momentum_from_the_mass_balance() {
    let broker = ccm_twin::twin::broker::EmbeddedBroker::start(0).unwrap();
    let addr = broker.addr();
    let mut opts = demo_opts(addr, 10);
    opts.channels = Some(vec!["h".into()]);
    let (s, lines) = run_logged(&opts).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("measures h only") && l.contains("hu, hv")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("rejected")),
        "no frame refused: {lines:?}"
    );
    assert_eq!(s.forecasts.len(), opts.frames - 4, "from the 5th frame on");
    assert!(s.alpha.unwrap() < -1.0, "α = {:?}", s.alpha);
    let (e, e_anchor_truth) = s.mean_errors().unwrap();
    eprintln!("mean forecast error {e:.4}, the anchor's from the true fields {e_anchor_truth:.4}");
    assert!(e < e_anchor_truth, "{e:.4} vs {e_anchor_truth:.4}");

    // a few depth gauges do not cover the grid: the demo says their momentum goes uncorrected,
    // and every frame from the 5th on is still forecast
    opts.sensors = Some(64);
    let (s, lines) = run_logged(&opts).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("momentum not corrected") && l.contains("coverage 0.00")),
        "{lines:?}"
    );
    assert_eq!(s.forecasts.len(), opts.frames - 4);
}

#[test]
fn a_station_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    std::fs::write(
        &path,
        r#"
[broker]
host = "127.0.0.1"
port = 1883

[station]
id = "bad station!"
family = "dam_break"
models = "../models/dam_break"
p = -1.0

[[alerts]]
channel = "depth"
row = 1
col = 2
above = 0.5
clear_below = 0.6
"#,
    )
    .unwrap();
    let err = StationConfig::load(&path).unwrap_err().to_string();
    for needle in [
        "station.id",
        "station.p",
        "alerts[0]: `depth`",
        "clear_below (0.6)",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
}

#[test]
fn a_station_mapping_is_read_from_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    let write = |mapping: &str| {
        let text = format!(
            r#"
[broker]
host = "127.0.0.1"
port = 1883

[station]
id = "gauge-7"
family = "dam_break"
models = "../models/dam_break"

[[alerts]]
channel = "depth_cm"
row = 100
col = 30
above = 25.0
clear_below = 20.0

{mapping}
"#
        );
        std::fs::write(&path, text).unwrap();
        StationConfig::load(&path)
    };
    let cfg = write(
        r#"
[mapping]
rows = 128
cols = 128
frame_seconds = 0.25
unobserved = ["hu", "hv"]
[mapping.channels]
h = { from = "depth_cm", scale = 0.01 }
"#,
    )
    .unwrap();
    let map = cfg.station_map().unwrap();
    assert_eq!(map.frames_per_step(), 2);
    let said = map.describe();
    for needle in [
        "128×128 station grid",
        "h = 0.01 × depth_cm",
        "hu unobserved",
    ] {
        assert!(said.contains(needle), "{needle} missing from: {said}");
    }
    // a station slower than the model, and an alert on a channel it does not send
    let err = write(
        r#"
[mapping]
frame_seconds = 1.0
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mapping.frame_seconds = 1"), "{err}");
    let err = write("").unwrap_err().to_string();
    assert!(
        err.contains("alerts[0]: `depth_cm` is not a channel of this station"),
        "{err}"
    );
}

#[test]
fn the_shipped_station_config_loads() {
    let cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    assert_eq!(cfg.station.family, Family::DamBreak);
    assert!(cfg.station.models.join("manifest.json").exists());
    assert!(
        cfg.analysis.mass_balance,
        "the mass balance is on unless turned off"
    );
}

/// `[analysis]` keys each default on their own: the mass balance stays on when only the
/// interpolation is tuned, and can be turned off.
#[test]
fn the_analysis_section_takes_its_keys_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    let base = "[broker]\nhost = \"127.0.0.1\"\nport = 1883\n[station]\nid = \"st-9\"\n\
                family = \"dam_break\"\nmodels = \"../models/dam_break\"\n";
    let load = |analysis: &str| {
        std::fs::write(&path, format!("{base}{analysis}")).unwrap();
        StationConfig::load(&path).unwrap().analysis
    };
    let tuned = load("[analysis]\nlength_cells = 6.0\n");
    assert_eq!(tuned.length_cells, 6.0);
    assert!(tuned.mass_balance);
    let off = load("[analysis]\nmass_balance = false\n");
    assert!(!off.mass_balance);
    assert_eq!(off.length_cells, load("").length_cells);
}

#[test]
fn broker_credentials_come_from_a_file_or_the_environment_never_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("station.toml");
    let station = r#"
[station]
id = "st-9"
family = "dam_break"
models = "../models/dam_break"
"#;
    let write = |broker: &str| std::fs::write(&path, format!("{broker}{station}")).unwrap();

    // a user name without a password source, and a password without a user, are refused
    write("[broker]\nhost = \"127.0.0.1\"\nport = 1883\nusername = \"st9\"\n");
    let err = StationConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("password_file") && err.contains("password_env"),
        "{err}"
    );
    write("[broker]\nhost = \"127.0.0.1\"\nport = 1883\npassword_env = \"X\"\n");
    let err = StationConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("without broker.username"), "{err}");
    // an inline password is not a key at all
    write(
        "[broker]\nhost = \"127.0.0.1\"\nport = 1883\nusername = \"st9\"\n\
         password_env = \"X\"\npassword = \"x\"\n",
    );
    let err = StationConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `password`"), "{err}");

    // a password file next to the config (its first line)
    std::fs::write(dir.path().join("mqtt.pass"), "s3cret\nignored\n").unwrap();
    write(
        "[broker]\nhost = \"127.0.0.1\"\nport = 1883\nusername = \"st9\"\n\
         password_file = \"mqtt.pass\"\n",
    );
    let cfg = StationConfig::load(&path).unwrap();
    let c = cfg.broker.credentials().unwrap().unwrap();
    assert_eq!(
        (c.username.as_str(), c.password.as_str()),
        ("st9", "s3cret")
    );
    assert!(!format!("{c:?}").contains("s3cret"));

    // an environment variable that is not set is named in the error
    write(
        "[broker]\nhost = \"127.0.0.1\"\nport = 1883\nusername = \"st9\"\n\
         password_env = \"CCM_TWIN_TEST_UNSET_PASSWORD\"\n",
    );
    let cfg = StationConfig::load(&path).unwrap();
    let err = cfg.broker.credentials().unwrap_err();
    assert!(err.contains("CCM_TWIN_TEST_UNSET_PASSWORD"), "{err}");
}

/// `GET /metrics` while serving: the counters in the Prometheus text format, a frame that cannot
/// be decoded counted by reason as soon as it arrived, and 404 for anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_what_the_runtime_sees() {
    use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
    use ccm_twin::twin::serve::{MetricsConfig, ServeEvent};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = Mosquitto::start();
    let mut cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    cfg.broker.host = "127.0.0.1".into();
    cfg.broker.port = broker.port();
    cfg.station.id = "st-metrics".into();
    cfg.metrics = Some(MetricsConfig {
        listen: "127.0.0.1:0".into(),
    });
    let (stop_tx, mut ev_rx, server) = mqtt_support::spawn_serve(cfg);
    let addr = loop {
        match tokio::time::timeout(Duration::from_secs(20), ev_rx.recv()).await {
            Ok(Some(ServeEvent::Metrics { addr })) => break addr,
            Ok(Some(_)) => continue,
            other => panic!("no metrics endpoint: {other:?}"),
        }
    };
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    let page = get("/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("# TYPE ccm_twin_frames_received_total counter"),
        "{page}"
    );
    assert!(
        page.contains("ccm_twin_frames_received_total{station=\"st-metrics\"} 0"),
        "{page}"
    );
    assert!(
        page.contains("ccm_twin_online{station=\"st-metrics\"} 1"),
        "{page}"
    );

    // a frame that is not one: counted by reason at once
    let link = MqttLink::start(LinkOptions::new(broker.addr().into(), "metrics-pub")).unwrap();
    link.publish_to(
        firmware_bridge::topic::Topic::Frames,
        "st-metrics",
        b"not a frame".to_vec(),
    )
    .unwrap();
    link.flush(Duration::from_secs(5)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = get("/metrics").await;
        if page.contains("ccm_twin_frames_rejected_total{station=\"st-metrics\",reason=") {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rejection counted: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(page.contains("\"} 1\n"), "{page}");
    assert!(get("/other").await.starts_with("HTTP/1.1 404"));
    link.close().await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// A station that stops sending: after `silent_after_seconds` without a valid frame the runtime
/// raises a `station_silent` alert, and the next valid frame clears it (same id). Frames that
/// are refused do not count as signs of life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_station_raises_an_alert_that_its_next_frame_clears() {
    use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
    use firmware_bridge::dashboard::{AlertKind, AlertMessage};
    use firmware_bridge::topic::Topic;

    let broker = Mosquitto::start();
    let station = "st-silent";
    let mut cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    cfg.broker.port = broker.port();
    cfg.station.id = station.into();
    cfg.station.silent_after_seconds = 1.5;
    cfg.alerts.clear();
    let mut alerts =
        Subscriber::connect(broker.addr(), &format!("ccm/{station}/alerts"), None).await;
    let (stop_tx, _events, server) = mqtt_support::spawn_serve(cfg);
    let link = MqttLink::start(LinkOptions::new(broker.addr().into(), "silent-sender")).unwrap();
    assert!(link.wait_connected(Duration::from_secs(10)).await);
    let family = FamilyConfig::builtin(Family::DamBreak);
    let mut sim = StationSimulator::new(&family, SimulatorOptions::new(station, 0.03, 2)).unwrap();
    let next_alert =
        |m: mqtt_support::Msg| -> AlertMessage { serde_json::from_slice(&m.payload).unwrap() };

    // two frames, then nothing valid: garbage keeps coming, which is not a sign of life
    tokio::time::sleep(Duration::from_millis(500)).await; // the runtime subscribes
    for _ in 0..2 {
        link.publish_to(
            Topic::Frames,
            station,
            sim.next_frame().unwrap().encode().unwrap(),
        )
        .unwrap();
    }
    let started = std::time::Instant::now();
    for _ in 0..6 {
        link.publish_to(Topic::Frames, station, vec![0x43, 0x54, 0x01])
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let raised = next_alert(
        alerts
            .recv(Duration::from_secs(10))
            .await
            .expect("a silence alert"),
    );
    let after = started.elapsed();
    eprintln!("after {after:?}: {raised:?}");
    assert_eq!(raised.kind, AlertKind::StationSilent);
    assert!(!raised.all_clear);
    assert!(
        raised.message.contains("the last was seq 1"),
        "{}",
        raised.message
    );
    assert!(
        after >= Duration::from_millis(1000),
        "raised too early: {after:?}"
    );
    // the station comes back
    link.publish_to(
        Topic::Frames,
        station,
        sim.next_frame().unwrap().encode().unwrap(),
    )
    .unwrap();
    let cleared = next_alert(
        alerts
            .recv(Duration::from_secs(10))
            .await
            .expect("an all-clear"),
    );
    assert_eq!(
        (cleared.kind, cleared.all_clear),
        (AlertKind::StationSilent, true)
    );
    assert_eq!(cleared.id, raised.id);
    assert!(cleared.message.contains("seq 2"), "{}", cleared.message);
    let _ = stop_tx.send(());
    let summary = server.await.unwrap().unwrap();
    assert_eq!(summary.counters.alerts_published, 2);
}
