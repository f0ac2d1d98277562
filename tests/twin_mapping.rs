//! Stations that do not speak the model's terms, served end to end over Mosquitto: they send a
//! 128×128 grid (the model's is 64×64), depth in centimetres under their own channel name next
//! to a channel the model does not take, twice per model step; one of them sends the momentum
//! too, the other depth only. `[mapping]` maps them onto the model: the forecasts come on the
//! station's sequence numbers, the frames between model steps are skipped and counted, an alert
//! written in the station's terms fires, and the depth forecasts are compared with the same
//! trajectory sent as the model's own frames.

mod mqtt_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::twin::mapping::{ChannelMapping, MappingConfig};
use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
use ccm_twin::twin::serve::{AlertRule, ServeEvent, ServeSummary, StationConfig};
use ccm_twin::twin::simulator::{SimulatorOptions, StationSimulator};
use firmware_bridge::dashboard::AlertLevel;
use firmware_bridge::topic::Topic;
use firmware_bridge::{
    Channels, GridShape, PackedSlice, Sampling, SensorFrame, Values, WireMessage,
};
use mqtt_support::{Mosquitto, Subscriber};

const MODEL_FRAMES: usize = 10;

/// The depth (`h`, channel 0) error of each forecast against the truth, relative L2 over the
/// horizon, by the model frame it starts from; and the same for persistence (the last depth
/// held).
fn depth_errors(
    forecasts: &[mqtt_support::Msg],
    truth: &[Vec<f32>],
    per_step: u32,
) -> Vec<(usize, f64, f64)> {
    let cells = truth[0].len() / 3;
    forecasts
        .iter()
        .map(|m| {
            let f = firmware_bridge::decode_forecast(&m.payload).unwrap();
            assert_eq!(
                f.based_on_seq % per_step,
                0,
                "a station frame on a model step"
            );
            let k = (f.based_on_seq / per_step) as usize;
            let values = f.values.to_vec();
            let step = values.len() / f.horizon();
            let (mut num, mut den, mut pers) = (0.0f64, 0.0f64, 0.0f64);
            for s in 0..f.horizon() {
                let t = &truth[k + 1 + s][..cells];
                let v = &values[s * step..s * step + cells];
                for ((x, y), z) in v.iter().zip(t).zip(&truth[k][..cells]) {
                    num += f64::from(x - y).powi(2);
                    den += f64::from(*y).powi(2);
                    pers += f64::from(z - y).powi(2);
                }
            }
            (k, (num / den).sqrt(), (pers / den).sqrt())
        })
        .collect()
}

/// Serves `frames` (already encoded, in order) to a runtime on `cfg`; returns its summary, the
/// forecasts a separate client received and the runtime's events.
async fn serve_frames(
    cfg: StationConfig,
    frames: Vec<Vec<u8>>,
    forecasts_expected: usize,
) -> (ServeSummary, Vec<mqtt_support::Msg>, Vec<ServeEvent>) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.broker.port));
    let station = cfg.station.id.clone();
    let mut sub = Subscriber::connect(addr, &format!("ccm/{station}/forecast"), None).await;
    let (stop_tx, mut events, server) = mqtt_support::spawn_serve(cfg);
    let link = MqttLink::start(LinkOptions::new(addr.into(), format!("{station}-sender"))).unwrap();
    assert!(link.wait_connected(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await; // the runtime subscribes
    for f in frames {
        link.publish_to(Topic::Frames, &station, f).unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    link.flush(Duration::from_secs(10)).await.unwrap();
    let got = sub.take(forecasts_expected, Duration::from_secs(60)).await;
    let _ = stop_tx.send(());
    let summary = server.await.unwrap().unwrap();
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    (summary, got, seen)
}

/// The encoded frames of a station on a `2n × 2n` grid sending `[temp_c, depth_cm]` (and `hu`,
/// `hv` in the model's units when `momentum`) twice per model step, from the model-grid `truth`.
/// The frame between two steps is the average of its neighbours (a stand-in: it is skipped).
fn station_frames(station: &str, truth: &[Vec<f32>], n: usize, momentum: bool) -> Vec<Vec<u8>> {
    let (cells, m) = (n * n, 2 * n);
    let dt_us = (FamilyConfig::builtin(Family::DamBreak).time.frame_dt * 1e6) as u64;
    let frame = |seq: u32, field: &[f32]| -> Vec<u8> {
        let mut values = vec![12.5f32; m * m];
        let planes: &[(usize, f32)] = if momentum {
            &[(0, 100.0), (1, 1.0), (2, 1.0)]
        } else {
            &[(0, 100.0)]
        };
        for &(c, unit) in planes {
            for r in 0..m {
                for col in 0..m {
                    values.push(field[c * cells + (r / 2) * n + col / 2] * unit);
                }
            }
        }
        let names: &[&str] = if momentum {
            &["temp_c", "depth_cm", "hu", "hv"]
        } else {
            &["temp_c", "depth_cm"]
        };
        SensorFrame {
            station,
            seq,
            timestamp_us: 1_700_000_000_000_000 + u64::from(seq) * dt_us / 2,
            channels: Channels::new(names).unwrap(),
            shape: GridShape {
                rows: m as u16,
                cols: m as u16,
                channels: names.len() as u8,
            },
            sampling: Sampling::Dense,
            values: Values::F32(PackedSlice::new(&values)),
        }
        .to_vec()
        .unwrap()
    };
    let mut frames = Vec::new();
    for k in 0..MODEL_FRAMES {
        frames.push(frame(2 * k as u32, &truth[k]));
        if k + 1 < MODEL_FRAMES {
            let mid: Vec<f32> = truth[k]
                .iter()
                .zip(&truth[k + 1])
                .map(|(a, b)| 0.5 * (a + b))
                .collect();
            frames.push(frame(2 * k as u32 + 1, &mid));
        }
    }
    frames
}

/// The station config for `station` on Mosquitto at `port`, with the `[mapping]` of
/// [`station_frames`].
fn mapped_config(station: &str, port: u16, n: usize, momentum: bool) -> StationConfig {
    let family = FamilyConfig::builtin(Family::DamBreak);
    let mut cfg = StationConfig::load(Path::new("configs/station.toml")).unwrap();
    cfg.broker.port = port;
    cfg.station.id = station.into();
    cfg.station.readout_threads = Some(1);
    cfg.alerts.clear();
    let mut channels = BTreeMap::new();
    channels.insert(
        "h".to_string(),
        ChannelMapping {
            from: Some("depth_cm".into()),
            scale: 0.01,
            offset: 0.0,
        },
    );
    cfg.mapping = MappingConfig {
        rows: Some(2 * n as u16),
        cols: Some(2 * n as u16),
        frame_seconds: Some(family.time.frame_dt / 2.0),
        channels,
        unobserved: if momentum {
            Vec::new()
        } else {
            vec!["hu".into(), "hv".into()]
        },
    };
    cfg
}

fn mean(v: &[(usize, f64, f64)], persistence: bool) -> f64 {
    v.iter()
        .map(|x| if persistence { x.2 } else { x.1 })
        .sum::<f64>()
        / v.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stations_on_their_own_grid_units_and_rate_are_mapped_onto_the_model() {
    let broker = Mosquitto::start();
    let family = FamilyConfig::builtin(Family::DamBreak);
    let (n, k) = (family.grid.n, family.time.prefix);
    let cells = n * n;
    let p = family.parameter.ood_test[0];
    let mut sim = StationSimulator::new(&family, SimulatorOptions::new("truth", p, 11)).unwrap();
    let truth: Vec<Vec<f32>> = (0..MODEL_FRAMES + family.time.horizon + 1)
        .map(|_| sim.next_frame().unwrap().truth)
        .collect();

    // the trajectory as the model's own frames: the reference
    let own_cfg = {
        let mut c = mapped_config("st-own", broker.port(), n, true);
        c.mapping = MappingConfig::default();
        c
    };
    let mut sim = StationSimulator::new(&family, SimulatorOptions::new("st-own", p, 11)).unwrap();
    let own: Vec<Vec<u8>> = (0..MODEL_FRAMES)
        .map(|_| sim.next_frame().unwrap().encode().unwrap())
        .collect();
    let (_, got_own, _) = serve_frames(own_cfg, own, MODEL_FRAMES - k + 1).await;
    let own = depth_errors(&got_own, &truth, 1);

    // every channel, on the station's grid, units and rate: the same forecasts
    let frames = station_frames("st-full", &truth, n, true);
    let sent = frames.len();
    let cfg = mapped_config("st-full", broker.port(), n, true);
    let (summary, got, _) = serve_frames(cfg, frames, MODEL_FRAMES - k + 1).await;
    let c = &summary.counters;
    assert_eq!(c.frames_received as usize, sent);
    assert_eq!(
        c.frames_skipped as usize,
        MODEL_FRAMES - 1,
        "the frames between steps"
    );
    assert!(c.frames_rejected.is_empty(), "{:?}", c.frames_rejected);
    let full = depth_errors(&got, &truth, 2);
    for (a, b) in full.iter().zip(&own) {
        assert_eq!(a.0, b.0, "forecasts from the same model frames");
        assert!(
            (a.1 - b.1).abs() <= 0.01 * b.1,
            "from frame {}: mapped {:.5}, own frames {:.5}",
            a.0,
            a.1,
            b.1
        );
    }

    // depth only: hu and hv come from the background, corrected by the mass balance. The first frame's come from the mean
    // state, which never starts a prefix, so the first forecast is from model frame K.
    // An alert in the station's terms: depth in cm at the station cell where the depth rises
    // most within that forecast's horizon, half-way up the rise.
    let rise = |cell: usize| {
        let peak = (k + 1..=k + family.time.horizon)
            .map(|j| truth[j][cell])
            .fold(f32::MIN, f32::max);
        (truth[k][cell], peak)
    };
    let cell = (0..cells)
        .max_by(|&a, &b| {
            let (ra, rb) = (rise(a), rise(b));
            (ra.1 - ra.0).total_cmp(&(rb.1 - rb.0))
        })
        .unwrap();
    let (start, peak) = rise(cell);
    assert!(
        peak > start + 0.02,
        "the wave reaches the cell: {start} → {peak}"
    );
    let (row, col) = (2 * (cell / n) + 1, 2 * (cell % n));
    let above_cm = f64::from(start + 0.5 * (peak - start)) * 100.0;
    let mut cfg = mapped_config("st-depth", broker.port(), n, false);
    cfg.alerts = vec![AlertRule {
        channel: "depth_cm".into(),
        row: row as u16,
        col: col as u16,
        above: above_cm,
        clear_below: above_cm - 1.0,
        level: AlertLevel::Warning,
    }];
    let frames = station_frames("st-depth", &truth, n, false);
    let (summary, got, events) = serve_frames(cfg, frames, MODEL_FRAMES - k).await;
    let c = &summary.counters;
    assert_eq!(c.frames_skipped as usize, MODEL_FRAMES - 1);
    assert!(c.frames_rejected.is_empty(), "{:?}", c.frames_rejected);
    let first = events
        .iter()
        .find_map(|e| match e {
            ServeEvent::Alert(a) => Some(a),
            _ => None,
        })
        .expect("the alert in station terms fired");
    let point = first.point.as_ref().unwrap();
    assert_eq!(
        (
            point.channel.as_str(),
            usize::from(point.row),
            usize::from(point.col)
        ),
        ("depth_cm", row, col)
    );
    assert_eq!(first.threshold, Some(above_cm));
    let depth = depth_errors(&got, &truth, 2);
    assert_eq!(depth[0].0, k);
    for (d, o) in depth.iter().zip(&own[1..]) {
        eprintln!(
            "from model frame {}: depth error, depth only {:.4}, every channel {:.4}, \
             persistence {:.4}",
            d.0, d.1, o.1, d.2
        );
    }
    let (e_depth, e_own, e_pers) = (
        mean(&depth, false),
        mean(&own[1..], false),
        mean(&depth, true),
    );
    eprintln!(
        "mean depth error: depth only {e_depth:.4}, every channel {e_own:.4}, persistence \
         {e_pers:.4}"
    );
    assert!(
        e_depth < 0.5 * e_pers,
        "the depth-only forecast beats persistence: {e_depth:.4} vs {e_pers:.4}"
    );
    // its momentum, corrected from the depth by the mass balance, keeps it close to the station
    // that measures every channel (4.2× its error without the balance)
    assert!(
        e_depth < 1.5 * e_own,
        "the depth-only forecast is close to the one from every channel: {e_depth:.4} vs {e_own:.4}"
    );
}
