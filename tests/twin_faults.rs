//! Faults injected into a serving runtime over Mosquitto: random bytes, truncated frames, bad
//! CRCs, the wrong grid, another station's frames, duplicates, reordered and late frames, then a
//! flood faster than the runtime forecasts. Every bad frame is refused and counted by reason,
//! the runtime keeps forecasting on the good ones, the flood is shed oldest-first (counted) so
//! the forecasts stay current, and memory stays bounded.
//!
//! `CCM_TWIN_FLOOD_FRAMES` sets the flood's length (default 300; the documented soak runs use
//! thousands).

mod mqtt_support;

use std::path::Path;
use std::time::{Duration, Instant};

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
use ccm_twin::twin::serve::{ServeEvent, StationConfig};
use ccm_twin::twin::simulator::{SimulatorOptions, StationSimulator};
use firmware_bridge::topic::Topic;
use mqtt_support::Mosquitto;
use rand::{Rng, SeedableRng};

const STATION: &str = "st-faults";

/// The tests here measure the process's resident memory, which the others would add to if they
/// ran at the same time (the test harness runs a file's tests in threads of one process): each
/// holds this while it runs.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory of this process in MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_counted_and_a_flood_is_shed_while_forecasts_go_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let broker = Mosquitto::start();
    let mut cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    cfg.broker.port = broker.port();
    cfg.station.id = STATION.into();
    cfg.alerts.clear();
    let (stop_tx, mut events, server) = mqtt_support::spawn_serve(cfg);
    let link = MqttLink::start(LinkOptions::new(broker.addr().into(), "faults-station")).unwrap();
    assert!(link.wait_connected(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await; // the runtime subscribes
    let send = |bytes: Vec<u8>| link.publish_to(Topic::Frames, STATION, bytes).unwrap();
    let family = FamilyConfig::builtin(Family::DamBreak);
    let flood: u32 = std::env::var("CCM_TWIN_FLOOD_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut sim =
        StationSimulator::new(&family, SimulatorOptions::new(STATION, 0.0125, 4)).unwrap();
    let frames: Vec<Vec<u8>> = (0..8)
        .map(|_| sim.next_frame().unwrap().encode().unwrap())
        .collect();
    // a forecast for frame `seq` (skipping the others), or a panic after `wait`
    // (frame-to-forecast latencies, ms, are collected on the way)
    async fn forecast_for(
        events: &mut tokio::sync::mpsc::UnboundedReceiver<ServeEvent>,
        seq: u32,
        wait: Duration,
        latencies: &mut Vec<f64>,
    ) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ServeEvent::Forecast {
                    based_on_seq,
                    total_ms,
                    ..
                })) => {
                    latencies.push(total_ms);
                    if based_on_seq == seq {
                        return;
                    }
                }
                Ok(Some(_)) => continue,
                other => panic!("no forecast from frame {seq}: {other:?}"),
            }
        }
    }

    // the prefix, then a forecast
    for f in &frames[..4] {
        send(f.clone());
    }
    let mut latencies = Vec::new();
    forecast_for(&mut events, 3, Duration::from_secs(60), &mut latencies).await;

    // garbage of every kind
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let random: Vec<u8> = (0..200).map(|_| rng.random()).collect();
    send(random);
    send(frames[4][..frames[4].len() / 2].to_vec());
    let mut crc = frames[4].clone();
    let at = crc.len() - 100;
    crc[at] ^= 0x5a;
    send(crc);
    let mut tiny = family.clone();
    tiny.grid.n = 16;
    tiny.grid.solve_n = Some(16);
    let mut small = StationSimulator::new(&tiny, SimulatorOptions::new(STATION, 0.03, 1)).unwrap();
    send(small.next_frame().unwrap().encode().unwrap());
    let mut other =
        StationSimulator::new(&family, SimulatorOptions::new("st-other", 0.03, 1)).unwrap();
    send(other.next_frame().unwrap().encode().unwrap());
    // a duplicate, two frames swapped, and one that comes too late
    send(frames[4].clone());
    send(frames[4].clone());
    send(frames[6].clone());
    send(frames[5].clone());
    send(frames[2].clone());
    send(frames[7].clone());
    forecast_for(&mut events, 7, Duration::from_secs(60), &mut latencies).await;
    latencies.clear(); // the flood's alone from here

    // a flood, as fast as the link takes it
    let before = rss_mib();
    let started = Instant::now();
    let last = 8 + flood - 1;
    for _ in 8..=last {
        send(sim.next_frame().unwrap().encode().unwrap());
    }
    link.flush(Duration::from_secs(60)).await.unwrap();
    let sent_in = started.elapsed();
    forecast_for(&mut events, last, Duration::from_secs(120), &mut latencies).await;
    let after = rss_mib();
    let _ = stop_tx.send(());
    let summary = server.await.unwrap().unwrap();
    let c = &summary.counters;
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{flood} frames flooded in {sent_in:?}; counters {c:?}; RSS {before:.1} → {after:.1} MiB; \
         frame-to-forecast latency over {} forecasts: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        latencies.len(),
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    let rejected = |reason: &str| c.frames_rejected.get(reason).copied().unwrap_or(0);
    // the garbage: the random bytes fail the magic (or another header check), the rest by name
    let header_failures: u64 = ["bad_magic", "truncated", "unsupported_version", "malformed"]
        .iter()
        .map(|r| rejected(r))
        .sum();
    assert!(header_failures >= 2, "random and truncated: {c:?}");
    assert_eq!(rejected("bad_crc"), 1, "{c:?}");
    assert_eq!(rejected("shape_mismatch"), 1, "{c:?}");
    assert_eq!(rejected("wrong_station"), 1, "{c:?}");
    assert_eq!(rejected("duplicate"), 1, "{c:?}");
    assert_eq!(rejected("late"), 1, "{c:?}");
    // the flood was shed, the runtime kept up with the newest frames
    assert!(rejected("shed_backlog") > 0, "{c:?}");
    assert!(
        c.forecasts_published >= 5,
        "forecasts from frames 3 to 7 and the flood's last: {c:?}"
    );
    assert!(
        c.forecasts_published + rejected("shed_backlog") <= u64::from(last) + 1,
        "{c:?}"
    );
    assert!(
        after - before < 64.0,
        "memory grew by {:.1} MiB over the flood",
        after - before
    );
    link.close().await;
}

/// A soak: a station streaming at a pace the runtime keeps up with (faster than real time: the
/// dam break's frames are 0.5 s apart). Every frame from the K-th on gets its forecast, none is
/// shed, and memory stays within a bound after the warm-up; the latency percentiles are
/// printed. `CCM_TWIN_SOAK_FRAMES` (default 150) and `CCM_TWIN_SOAK_INTERVAL_MS` (default 150)
/// set the length and pace; docs/RELIABILITY.md gives the long run's command and figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_paced_stream_gets_every_forecast_in_bounded_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let frames = env("CCM_TWIN_SOAK_FRAMES", 150) as u32;
    let interval = Duration::from_millis(env("CCM_TWIN_SOAK_INTERVAL_MS", 150));
    let broker = Mosquitto::start();
    let mut cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    cfg.broker.port = broker.port();
    cfg.station.id = "st-soak".into();
    // room for the frames that arrive during a re-read of α (about 1 s at this pace)
    cfg.station.max_backlog = 64;
    let (stop_tx, mut events, server) = mqtt_support::spawn_serve(cfg);
    let link = MqttLink::start(LinkOptions::new(broker.addr().into(), "soak-station")).unwrap();
    assert!(link.wait_connected(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let family = FamilyConfig::builtin(Family::DamBreak);
    let mut sim =
        StationSimulator::new(&family, SimulatorOptions::new("st-soak", 0.0125, 5)).unwrap();
    let k = family.time.prefix as u32;
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut latencies = Vec::new();
    let mut got = std::collections::BTreeSet::new();
    let (mut warm_rss, mut peak_rss) = (f64::NAN, 0.0f64);
    for seq in 0..frames {
        tokio::time::sleep_until(next).await;
        next += interval;
        link.publish_to(
            Topic::Frames,
            "st-soak",
            sim.next_frame().unwrap().encode().unwrap(),
        )
        .unwrap();
        while let Ok(ev) = events.try_recv() {
            if let ServeEvent::Forecast {
                based_on_seq,
                total_ms,
                ..
            } = ev
            {
                got.insert(based_on_seq);
                latencies.push(total_ms);
            }
        }
        if seq == frames.min(50) - 1 {
            warm_rss = rss_mib();
        }
        peak_rss = peak_rss.max(rss_mib());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < (frames - k + 1) as usize {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ServeEvent::Forecast {
                based_on_seq,
                total_ms,
                ..
            })) => {
                got.insert(based_on_seq);
                latencies.push(total_ms);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let _ = stop_tx.send(());
    let summary = server.await.unwrap().unwrap();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "soak: {frames} frames ({:.0} s of station time) in {:.0} s; {} forecasts; counters {:?}; \
         RSS after warm-up {warm_rss:.1} MiB, peak {peak_rss:.1} MiB; frame-to-forecast latency \
         p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        f64::from(frames) * family.time.frame_dt,
        started.elapsed().as_secs_f64(),
        got.len(),
        summary.counters,
        pct(0.5),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    let missing: Vec<u32> = (k - 1..frames).filter(|s| !got.contains(s)).collect();
    assert!(missing.is_empty(), "no forecast from frames {missing:?}");
    assert!(
        summary.counters.frames_rejected.is_empty(),
        "{:?}",
        summary.counters
    );
    assert!(
        peak_rss - warm_rss < 32.0,
        "memory grew {:.1} MiB after the warm-up",
        peak_rss - warm_rss
    );
    link.close().await;
}

/// The broker restarts mid-stream (Mosquitto with persistence, stopped and started again): the
/// runtime reconnects and resubscribes, the forecasts go on, a subscriber with a persistent
/// session receives every forecast the runtime published (QoS 1, none lost across the restart),
/// and the status counts the reconnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_forecast() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut broker = Mosquitto::start_persistent();
    let mut cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    cfg.broker.port = broker.port();
    cfg.station.id = "st-restart".into();
    cfg.alerts.clear();
    let (stop_tx, mut events, server) = mqtt_support::spawn_serve(cfg);
    let mut observer = mqtt_support::Subscriber::connect(
        broker.addr(),
        "ccm/st-restart/forecast",
        Some("restart-observer"),
    )
    .await;
    let mut opts = LinkOptions::new(broker.addr().into(), "restart-station");
    opts.retry_min = Duration::from_millis(100);
    let link = MqttLink::start(opts).unwrap();
    assert!(link.wait_connected(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let family = FamilyConfig::builtin(Family::DamBreak);
    let mut sim =
        StationSimulator::new(&family, SimulatorOptions::new("st-restart", 0.0125, 6)).unwrap();
    let frames = 24u32;
    for seq in 0..frames {
        link.publish_to(
            Topic::Frames,
            "st-restart",
            sim.next_frame().unwrap().encode().unwrap(),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        if seq == 10 {
            broker.restart();
            observer.wait_subscribed(2, Duration::from_secs(15)).await;
        }
    }
    link.flush(Duration::from_secs(30)).await.unwrap();
    // the last frame's forecast, then stop
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ServeEvent::Forecast { based_on_seq, .. })) if based_on_seq == frames - 1 => {
                break;
            }
            Ok(Some(_)) => continue,
            other => panic!("no forecast from the last frame: {other:?}"),
        }
    }
    let _ = stop_tx.send(());
    let summary = server.await.unwrap().unwrap();
    let got = observer.drain(Duration::from_secs(3)).await;
    let mut seqs: Vec<u32> = got
        .iter()
        .map(|m| {
            firmware_bridge::decode_forecast(&m.payload)
                .unwrap()
                .based_on_seq
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    eprintln!(
        "counters {:?}; the observer got {} distinct forecasts",
        summary.counters,
        seqs.len()
    );
    assert_eq!(
        seqs.len() as u64,
        summary.counters.forecasts_published,
        "every published forecast reached the persistent subscriber: {seqs:?}"
    );
    assert!(summary.counters.forecasts_published >= u64::from(frames - 3) - 2);
    assert!(
        summary.counters.broker_reconnects >= 1,
        "{:?}",
        summary.counters
    );
    link.close().await;
}
