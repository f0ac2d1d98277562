//! The bridge against real brokers: COBS frames sent over UDP (and through the stdin of
//! `ccm-twin bridge`) arrive on the broker; corrupt input is counted by reason and not forwarded;
//! while the broker is away the bounded buffer keeps the newest frames and counts what it drops;
//! after the broker restarts the bridge reconnects and delivers what it kept.

mod mqtt_support;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ccm_twin::twin::bridge::{
    Bridge, BridgeMonitor, BridgeOptions, BridgeStats, Input, InputSource,
};
use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
use firmware_bridge::{
    Channels, GridShape, Sampling, SensorFrame, Values, WireMessage, decode_frame,
};
use mqtt_support::{Mosquitto, Subscriber, cobs};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(5);

fn frame(station: &str, seq: u32, n: u16) -> SensorFrame<'static> {
    let values: &'static [f32] = Box::leak(
        (0..usize::from(n) * usize::from(n))
            .map(|i| seq as f32 + i as f32 * 1e-3)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    SensorFrame {
        station: Box::leak(station.to_string().into_boxed_str()),
        seq,
        timestamp_us: 1_700_000_000_000_000 + u64::from(seq) * 100_000,
        channels: Channels::single("h"),
        shape: GridShape::new(n, n, 1),
        sampling: Sampling::Dense,
        values: Values::f32(values),
    }
}

fn link_to(addr: SocketAddr, client_id: &str, buffer: usize) -> MqttLink {
    let mut opts = LinkOptions::new(addr.into(), client_id);
    opts.buffer = buffer;
    opts.retry_min = Duration::from_millis(50);
    opts.retry_max = Duration::from_millis(200);
    MqttLink::start(opts).unwrap()
}

/// A bridge on a UDP port of its own, running until the returned sender fires.
struct RunningBridge {
    addr: SocketAddr,
    monitor: BridgeMonitor,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<BridgeStats>,
    tx: UdpSocket,
}

impl RunningBridge {
    async fn start(link: MqttLink, opts: BridgeOptions) -> Self {
        let input = InputSource::open(&Input::Udp("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = input.local_addr().unwrap();
        let bridge = Bridge::new(link, opts).unwrap();
        let monitor = bridge.monitor();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bridge
                .run(input, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        Self {
            addr,
            monitor,
            stop,
            task,
            tx: UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn send(&self, datagram: &[u8]) {
        self.tx.send_to(datagram, self.addr).unwrap();
    }

    /// Waits until the bridge has forwarded `n` frames in all.
    async fn wait_forwarded(&self, n: u64) -> BridgeStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.monitor.snapshot();
            if s.frames_forwarded >= n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "forwarded {} of {n}: {s}",
                s.frames_forwarded
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> BridgeStats {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

fn seqs(msgs: &[mqtt_support::Msg]) -> Vec<u32> {
    msgs.iter()
        .map(|m| decode_frame(&m.payload).unwrap().seq)
        .collect()
}

#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_frames_reach_the_embedded_broker_and_bad_input_is_counted_not_forwarded() {
    use ccm_twin::twin::broker::EmbeddedBroker;
    use firmware_bridge::{Forecast, PackedSlice, RejectReason, split};

    let broker = EmbeddedBroker::start(0).unwrap();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/frames", None).await;
    let link = link_to(broker.addr(), "bridge-udp", 64);
    let opts = BridgeOptions {
        station_filter: Some("st-a".into()),
        ..BridgeOptions::default()
    };
    let bridge = RunningBridge::start(link.clone(), opts).await;

    // Three frames, one datagram each.
    for seq in 0..3 {
        bridge.send(&frame("st-a", seq, 4).to_vec_cobs().unwrap());
    }
    // Two frames in one datagram.
    let mut two = frame("st-a", 3, 4).to_vec_cobs().unwrap();
    two.extend(frame("st-a", 4, 4).to_vec_cobs().unwrap());
    bridge.send(&two);
    // A 64×64 frame (16 KiB, larger than one datagram should be) in 1 KiB chunks, last first.
    let big = frame("st-a", 5, 64).to_vec().unwrap();
    let chunks: Vec<Vec<u8>> = split(&big, 5, 1024)
        .unwrap()
        .map(|c| c.to_vec_cobs().unwrap())
        .collect();
    for c in chunks.iter().rev() {
        bridge.send(c);
    }
    // Bad input: a flipped bit, garbage, a forecast, a cut-off datagram, another station.
    let mut flipped = frame("st-a", 6, 4).to_vec().unwrap();
    flipped[20] ^= 0x01;
    bridge.send(&cobs(&flipped));
    bridge.send(&[0x05, 0x01, 0x00]);
    let forecast = Forecast {
        station: "st-a",
        based_on_seq: 5,
        issued_at_us: 1,
        alpha: 0.5,
        channels: Channels::single("h"),
        shape: GridShape::new(1, 1, 1),
        timestamps_us: PackedSlice::new(&[2]),
        values: Values::f32(&[1.0]),
    };
    bridge.send(&forecast.to_vec_cobs().unwrap());
    let cut = frame("st-a", 7, 4).to_vec_cobs().unwrap();
    bridge.send(&cut[..cut.len() / 2]);
    bridge.send(&frame("st-b", 8, 4).to_vec_cobs().unwrap());
    // And a last good frame, so everything before it has been processed when it arrives.
    bridge.send(&frame("st-a", 9, 4).to_vec_cobs().unwrap());

    let msgs = sub.take(7, WAIT).await;
    assert_eq!(seqs(&msgs), [0, 1, 2, 3, 4, 5, 9]);
    assert!(msgs.iter().all(|m| m.topic == "ccm/st-a/frames"));
    assert_eq!(msgs[5].payload, big, "the chunked frame arrives whole");
    assert!(sub.drain(Duration::from_millis(200)).await.is_empty());

    link.flush(WAIT).await.unwrap();
    let stats = bridge.finish().await;
    assert_eq!(stats.frames_forwarded, 7, "{stats}");
    assert_eq!(stats.frames_filtered, 1, "{stats}");
    assert_eq!(stats.chunks, chunks.len() as u64);
    assert_eq!(stats.rejected(RejectReason::BadCrc), 1, "{stats}");
    assert_eq!(stats.rejected(RejectReason::BadCobs), 1, "{stats}");
    assert_eq!(stats.rejected(RejectReason::WrongKind), 1, "{stats}");
    assert_eq!(stats.rejected(RejectReason::Truncated), 1, "{stats}");
    assert_eq!(stats.rejected_total(), 4, "{stats}");
    assert_eq!(stats.link.delivered, 7, "{stats}");
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_mosquitto_is_away_the_newest_frames_are_kept_and_delivered_after_its_restart() {
    let mut broker = Mosquitto::start_persistent();
    // A persistent session: the restarted broker queues for it even before it reconnects.
    let mut sub =
        Subscriber::connect(broker.addr(), "ccm/+/frames", Some("restart-test-sub")).await;
    let link = link_to(broker.addr(), "bridge-restart", 5);
    let bridge = RunningBridge::start(link.clone(), BridgeOptions::default()).await;
    assert!(link.wait_connected(WAIT).await);

    for seq in 0..3 {
        bridge.send(&frame("st-r", seq, 8).to_vec_cobs().unwrap());
    }
    assert_eq!(seqs(&sub.take(3, WAIT).await), [0, 1, 2]);
    link.flush(WAIT).await.unwrap();

    broker.stop();
    assert!(
        link.wait_disconnected(WAIT).await,
        "the link did not notice"
    );
    for seq in 3..23 {
        bridge.send(&frame("st-r", seq, 8).to_vec_cobs().unwrap());
    }
    let away = bridge.wait_forwarded(23).await;
    assert_eq!(away.link.dropped_oldest, 15, "{away}");
    assert_eq!(away.link.queued, 5, "{away}");
    assert!(!away.link.connected);

    broker.restart();
    assert!(
        link.wait_connected(WAIT).await,
        "no reconnect: {}",
        broker.log()
    );
    link.flush(WAIT).await.unwrap();
    sub.wait_subscribed(2, WAIT).await;
    let mut after = seqs(&sub.take(5, WAIT).await);
    after.extend(seqs(&sub.drain(Duration::from_millis(300)).await));
    after.dedup(); // QoS 1 allows duplicates
    assert_eq!(after, [18, 19, 20, 21, 22], "the newest five, in order");

    let stats = bridge.finish().await;
    assert_eq!(stats.link.delivered, 8, "{stats}");
    assert_eq!(stats.link.connections, 2, "{stats}");
    assert!(
        stats
            .to_string()
            .contains("15 dropped while the broker was away"),
        "{stats}"
    );
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bridge_forwards_stdin_to_mosquitto_and_reports_rejects() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/frames", None).await;
    let mut input = Vec::new();
    input.extend(frame("st-cli", 1, 4).to_vec_cobs().unwrap());
    let mut bad = frame("st-cli", 2, 4).to_vec().unwrap();
    bad[20] ^= 0x01; // a bit flipped on the wire: bad CRC
    input.extend(cobs(&bad));
    input.extend(frame("st-cli", 3, 4).to_vec_cobs().unwrap());

    let addr = broker.addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ccm-twin"))
            .args(["bridge", "--input", "stdin", "--broker", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bridge failed: {stderr}");
    assert!(
        stderr.contains(
            "2 frame(s) forwarded, 2 acknowledged by the broker; 1 rejected (bad_crc: 1)"
        ),
        "{stderr}"
    );
    assert_eq!(seqs(&sub.take(2, WAIT).await), [1, 3]);
    assert!(sub.drain(Duration::from_millis(200)).await.is_empty());

    // A wrong input is the user's mistake: exit code 2, and the accepted forms.
    let bad = Command::new(env!("CARGO_BIN_EXE_ccm-twin"))
        .args([
            "bridge",
            "--input",
            "tcp:1.2.3.4:5",
            "--broker",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected stdin, udp:ADDR:PORT or serial:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_device_is_read_as_a_file_and_reopened_after_a_hang_up() {
    // A FIFO stands in for the tty: it is opened as a file, and a writer closing it is a hang-up.
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("ttyFAKE0");
    assert!(
        Command::new("mkfifo")
            .arg(&device)
            .status()
            .unwrap()
            .success()
    );
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/frames", None).await;
    let link = link_to(broker.addr(), "bridge-serial", 16);
    let bridge = Bridge::new(link.clone(), BridgeOptions::default()).unwrap();
    let monitor = bridge.monitor();

    let write = |seqs: std::ops::Range<u32>| {
        let device = device.clone();
        tokio::task::spawn_blocking(move || {
            // Blocks until the bridge has the FIFO open for reading.
            let mut tty = std::fs::OpenOptions::new()
                .write(true)
                .open(device)
                .unwrap();
            for seq in seqs {
                tty.write_all(&frame("st-tty", seq, 4).to_vec_cobs().unwrap())
                    .unwrap();
            }
        })
    };
    let first_writer = write(0..2);
    let input = InputSource::open(&Input::Serial(device.clone()))
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(bridge.run(input, async {
        let _ = stopped.await;
    }));
    first_writer.await.unwrap();
    assert_eq!(seqs(&sub.take(2, WAIT).await), [0, 1]);
    // The writer hung up; after a second of end-of-input the bridge reopens the device.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    write(2..3).await.unwrap();
    assert_eq!(seqs(&sub.take(1, WAIT).await), [2]);
    let _ = stop.send(());
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.frames_forwarded, 3, "{stats}");
    assert_eq!(monitor.snapshot().rejected_total(), 0);

    let missing = InputSource::open(&Input::Serial(dir.path().join("ttyNONE")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot open serial device") && missing.contains("stty -F"),
        "{missing}"
    );
    link.close().await;
}
