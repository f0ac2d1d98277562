//! The station simulator against real brokers: frames published by `StationSimulator` /
//! `run_simulation` (and by `ccm-twin simulate`) arrive at a separate subscriber and decode to
//! exactly the solver's frames (dense, sparse points, quantised, noisy, with drops).

mod mqtt_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::pde;
use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
use ccm_twin::twin::simulator::{Pacing, SimulatorOptions, StationSimulator, run_simulation};
use firmware_bridge::{GridShape, Sampling, Values, decode_frame};
use mqtt_support::{Mosquitto, Subscriber, tiny, tiny_toml};

/// 2023-11-14T22:13:20Z in µs.
const T0: u64 = 1_700_000_000_000_000;
const WAIT: Duration = Duration::from_secs(5);

fn link_to(addr: SocketAddr, client_id: &str) -> MqttLink {
    let mut opts = LinkOptions::new(addr.into(), client_id);
    opts.retry_min = Duration::from_millis(50);
    opts.retry_max = Duration::from_millis(200);
    MqttLink::start(opts).unwrap()
}

/// The solver's first `count` frames, computed without the simulator.
fn solver_frames(cfg: &FamilyConfig, p: f64, seed: u64, count: usize) -> Vec<Vec<f32>> {
    let mut solver = pde::new_solver(cfg, p, seed).unwrap();
    (0..count)
        .map(|k| {
            if k > 0 {
                solver.advance(cfg.time.frame_dt).unwrap();
            }
            let mut frame = vec![0.0; solver.frame_len()];
            solver.write_frame(&mut frame);
            frame
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_frames_reach_a_subscriber_through_mosquitto() {
    let broker = Mosquitto::start();
    let cfg = tiny(Family::ReactionDiffusion);
    let p = cfg.parameter.lo;
    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/frames", None).await;
    let mut opts = SimulatorOptions::new("st-rd", p, 11);
    opts.start_us = T0;
    let sim = StationSimulator::new(&cfg, opts).unwrap();
    let link = link_to(broker.addr(), "sim-dense");
    let report = run_simulation(sim, &link, Pacing::Unpaced, Some(6), std::future::pending())
        .await
        .unwrap();
    link.flush(WAIT).await.unwrap();
    assert_eq!((report.frames, report.published, report.dropped), (6, 6, 0));
    assert_eq!(link.stats().delivered, 6);

    let truth = solver_frames(&cfg, p, 11, 6);
    let msgs = sub.take(6, WAIT).await;
    for (k, m) in msgs.iter().enumerate() {
        assert_eq!(m.topic, "ccm/st-rd/frames");
        let f = decode_frame(&m.payload).unwrap();
        assert_eq!(f.station, "st-rd");
        assert_eq!(f.seq, k as u32);
        let t = k as f64 * cfg.time.frame_dt;
        assert_eq!(f.timestamp_us, T0 + (t * 1e6).round() as u64);
        assert_eq!(f.shape, GridShape::new(16, 16, 2));
        assert_eq!(f.channels.as_slice(), ["u", "v"]);
        assert_eq!(f.sampling, Sampling::Dense);
        assert!(matches!(f.values, Values::F32(_)));
        assert_eq!(
            f.values.to_vec(),
            truth[k],
            "frame {k} differs from the solver's"
        );
    }
    assert!(sub.drain(Duration::from_millis(200)).await.is_empty());
    link.close().await;
}

#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_quantised_frames_reach_a_subscriber_through_the_embedded_broker() {
    use ccm_twin::twin::broker::EmbeddedBroker;
    use ccm_twin::twin::simulator::{Encoding, Sensors, random_points};
    use firmware_bridge::GridPoint;

    fn at_points(truth: &[f32], points: &[GridPoint], n: usize, channels: usize) -> Vec<f32> {
        (0..channels)
            .flat_map(|c| {
                points
                    .iter()
                    .map(move |p| truth[c * n * n + usize::from(p.row) * n + usize::from(p.col)])
            })
            .collect()
    }

    let broker = EmbeddedBroker::start(0).unwrap();
    let cfg = tiny(Family::DamBreak);
    let p = cfg.parameter.hi;
    let points = random_points(16, 12, 5).unwrap();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/st-db/frames", None).await;
    let mut opts = SimulatorOptions::new("st-db", p, 3);
    opts.sensors = Sensors::Points(points.clone());
    opts.encoding = Encoding::I16;
    opts.start_us = T0;
    opts.first_seq = 100;
    let sim = StationSimulator::new(&cfg, opts).unwrap();
    let link = link_to(broker.addr(), "sim-sparse");
    // Paced (200 Hz) to exercise the ticker as well.
    let pacing = Pacing::rate(200.0).unwrap();
    run_simulation(sim, &link, pacing, Some(5), std::future::pending())
        .await
        .unwrap();
    link.flush(WAIT).await.unwrap();

    let truth = solver_frames(&cfg, p, 3, 5);
    for (k, m) in sub.take(5, WAIT).await.iter().enumerate() {
        let f = decode_frame(&m.payload).unwrap();
        assert_eq!(f.seq, 100 + k as u32);
        assert_eq!(f.shape, GridShape::new(16, 16, 3));
        let Sampling::Points(got) = f.sampling else {
            panic!("frame {k} is not point-sampled");
        };
        assert_eq!(got.iter().collect::<Vec<_>>(), points);
        let Values::I16 { quantizer, .. } = f.values else {
            panic!("frame {k} is not quantised");
        };
        let expected = at_points(&truth[k], &points, 16, 3);
        let tolerance = quantizer.scale.abs() * 0.5 + 1e-6 * (1.0 + quantizer.offset.abs());
        for (i, (got, want)) in f.values.iter().zip(&expected).enumerate() {
            assert!(
                (got - want).abs() <= tolerance,
                "frame {k} value {i}: {got} vs {want} (tolerance {tolerance})"
            );
        }
    }
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_and_drops_are_seeded_and_dropped_frames_leave_gaps() {
    let broker = Mosquitto::start();
    let cfg = tiny(Family::ReactionDiffusion);
    let p = cfg.parameter.hi;
    let mut opts = SimulatorOptions::new("st-noisy", p, 21);
    opts.noise_sigma = 0.05;
    opts.drop_probability = 0.4;
    // The expected frames, from a second simulator with the same seed.
    let expected: Vec<_> = StationSimulator::new(&cfg, opts.clone())
        .unwrap()
        .take(12)
        .map(Result::unwrap)
        .collect();
    let kept: Vec<_> = expected.iter().filter(|f| !f.dropped).collect();
    assert!(
        !kept.is_empty() && kept.len() < expected.len(),
        "seed 21 should drop some frames and keep some"
    );

    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/frames", None).await;
    let link = link_to(broker.addr(), "sim-noisy");
    let sim = StationSimulator::new(&cfg, opts).unwrap();
    let report = run_simulation(
        sim,
        &link,
        Pacing::Unpaced,
        Some(12),
        std::future::pending(),
    )
    .await
    .unwrap();
    link.flush(WAIT).await.unwrap();
    assert_eq!(report.dropped as usize, expected.len() - kept.len());

    let msgs = sub.take(kept.len(), WAIT).await;
    let mut residual = Vec::new();
    for (m, want) in msgs.iter().zip(&kept) {
        let f = decode_frame(&m.payload).unwrap();
        assert_eq!(
            f.seq, want.seq,
            "the received sequence numbers skip the dropped frames"
        );
        assert_eq!(f.values.to_vec(), want.observed());
        residual.extend(
            f.values
                .iter()
                .zip(&want.truth)
                .map(|(a, b)| f64::from(a - b)),
        );
    }
    assert!(sub.drain(Duration::from_millis(200)).await.is_empty());
    let rms = (residual.iter().map(|r| r * r).sum::<f64>() / residual.len() as f64).sqrt();
    assert!(
        (0.04..0.06).contains(&rms),
        "noise rms {rms} for sigma 0.05"
    );
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_simulate_publishes_point_frames_to_mosquitto() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, tiny_toml(Family::ReactionDiffusion)).unwrap();
    let points = dir.path().join("points.txt");
    std::fs::write(&points, "# gauges\n0 0\n15,15\n7 3\n").unwrap();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/cli-st/frames", None).await;

    let addr = broker.addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ccm-twin"))
            .args(["simulate", "--family", "reaction_diffusion", "--p", "1e-3"])
            .args(["--broker", &addr, "--station", "cli-st", "--frames", "4"])
            .args(["--quantize", "i16", "--rate", "0"])
            .arg("--config")
            .arg(&config)
            .arg("--points-file")
            .arg(&points)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {stderr}");
    assert!(
        stderr.contains("simulated 4 frame(s) (0 dropped on purpose), 4 acknowledged"),
        "{stderr}"
    );
    let msgs = sub.take(4, WAIT).await;
    for (k, m) in msgs.iter().enumerate() {
        let f = decode_frame(&m.payload).unwrap();
        assert_eq!(f.seq, k as u32);
        assert_eq!(f.positions(), 3);
        assert!(matches!(f.values, Values::I16 { .. }));
    }

    // A bad option is the user's mistake: exit code 2 and a message that says what to fix.
    let bad = Command::new(env!("CARGO_BIN_EXE_ccm-twin"))
        .args([
            "simulate",
            "--family",
            "dam_break",
            "--p",
            "0.03",
            "--drop",
            "1.5",
        ])
        .args(["--broker", "127.0.0.1:1", "--frames", "1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("the drop probability must be at least 0 and below 1 (got 1.5)"),
        "{stderr}"
    );
}

/// A station that measures some of the family's channels (a depth gauge: `h` alone) sends those
/// alone, in the order given, under their names: on every cell or at its sensor points. Names
/// the family does not have, a name given twice, or none at all are refused.
#[test]
fn a_station_sends_only_the_channels_it_measures() {
    use ccm_twin::twin::simulator::{Sensors, SimulatorError, random_points};
    let cfg = tiny(Family::DamBreak);
    let (n, p) = (16, cfg.parameter.lo);
    let cells = n * n;
    let truth = solver_frames(&cfg, p, 4, 3);
    let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());

    let mut opts = SimulatorOptions::new("gauge", p, 4);
    opts.channels = names(&["h"]);
    let mut sim = StationSimulator::new(&cfg, opts).unwrap();
    assert_eq!(sim.channels(), ["h"]);
    for (k, want) in truth.iter().enumerate() {
        let frame = sim.next_frame().unwrap();
        assert_eq!(&frame.truth, want, "the truth stays whole");
        let bytes = frame.encode().unwrap();
        let f = decode_frame(&bytes).unwrap();
        assert_eq!(f.channels.as_slice(), ["h"]);
        assert_eq!(f.shape, GridShape::new(16, 16, 1));
        assert_eq!(
            f.values.iter().collect::<Vec<_>>(),
            want[..cells],
            "frame {k}"
        );
    }

    let points = random_points(n, 10, 2).unwrap();
    let mut opts = SimulatorOptions::new("gauge", p, 4);
    opts.channels = names(&["hv", "h"]);
    opts.sensors = Sensors::Points(points.clone());
    let mut sim = StationSimulator::new(&cfg, opts).unwrap();
    let frame = sim.next_frame().unwrap();
    let bytes = frame.encode().unwrap();
    let f = decode_frame(&bytes).unwrap();
    assert_eq!(f.channels.as_slice(), ["hv", "h"]);
    let at = |c: usize| -> Vec<f32> {
        points
            .iter()
            .map(|g| truth[0][c * cells + usize::from(g.row) * n + usize::from(g.col)])
            .collect()
    };
    let want: Vec<f32> = [at(2), at(0)].concat();
    assert_eq!(f.values.iter().collect::<Vec<_>>(), want);

    for bad in [names(&["depth"]), names(&["h", "h"]), names(&[])] {
        let mut opts = SimulatorOptions::new("gauge", p, 4);
        opts.channels = bad.clone();
        match StationSimulator::new(&cfg, opts) {
            Err(e @ SimulatorError::BadOption { .. }) => eprintln!("{bad:?}: {e}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}
