//! Helpers for the integration tests that need a real MQTT broker (`mod mqtt_support;`): a
//! Mosquitto started on a free loopback port (and stopped on drop), a plain rumqttc subscriber
//! that knows nothing of the code under test, and tiny family configs.
#![allow(dead_code)]

pub mod mosquitto;
pub mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use ccm_twin::config::{Family, FamilyConfig};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};

pub use mosquitto::Mosquitto;

/// A family config shrunk to a 16×16 grid (solved on 16×16 too), so frames take milliseconds.
pub fn tiny(family: Family) -> FamilyConfig {
    let mut cfg = FamilyConfig::builtin(family);
    cfg.grid.n = 16;
    cfg.grid.solve_n = Some(16);
    cfg
}

/// The built-in config text of `family` with the grid shrunk as in [`tiny`], for CLI tests.
pub fn tiny_toml(family: Family) -> String {
    let text = family.builtin_toml();
    let mut out = String::new();
    let mut in_grid = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_grid = line.trim() == "[grid]";
            out.push_str(line);
            if in_grid {
                out.push_str("\nn = 16\nsolve_n = 16");
            }
        } else if in_grid && (line.starts_with("n ") || line.starts_with("solve_n")) {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(
        FamilyConfig::from_toml(&out).is_ok_and(|c| c.grid.n == 16),
        "tiny_toml broke the config"
    );
    out
}

/// `serve` on `cfg` in a task of its own: the sender that stops it, its events, and the task
/// (which returns what it served).
pub fn spawn_serve(
    cfg: ccm_twin::twin::serve::StationConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    mpsc::UnboundedReceiver<ccm_twin::twin::serve::ServeEvent>,
    tokio::task::JoinHandle<
        Result<ccm_twin::twin::serve::ServeSummary, ccm_twin::twin::serve::ServeError>,
    >,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ev_tx, events) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        ccm_twin::twin::serve::serve(
            &cfg,
            async {
                let _ = stop_rx.await;
            },
            Some(ev_tx),
        )
        .await
    });
    (stop_tx, events, server)
}

/// A message received by a [`Subscriber`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A plain rumqttc subscriber (independent of `ccm_twin::twin::mqtt`): it reconnects on its own
/// and re-subscribes on every connection.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<Msg>,
    subscribed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Connects to `addr`, subscribes to `filter` with QoS 1 and returns once the broker has
    /// acknowledged the subscription. With `session`, the client id is fixed and the session
    /// persistent (`clean_session = false`), so a broker with persistence keeps queueing for it
    /// across a restart.
    pub async fn connect(addr: SocketAddr, filter: &str, session: Option<&str>) -> Self {
        let id = session.map_or_else(
            || format!("test-sub-{}-{}", std::process::id(), addr.port()),
            str::to_string,
        );
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_max_packet_size(16 << 20, 16 << 20)
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(session.is_none());
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut subscribed) = watch::channel(0_u64);
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        client
                            .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                            .expect("subscribe request");
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        sub_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subscribed.wait_for(|n| *n > 0))
            .await
            .expect("the test subscriber was not subscribed within 5 s")
            .expect("subscriber task alive");
        Self {
            rx,
            subscribed,
            task,
        }
    }

    /// Waits until the subscriber has (re-)subscribed `n` times in all.
    pub async fn wait_subscribed(&mut self, n: u64, timeout: Duration) {
        tokio::time::timeout(timeout, self.subscribed.wait_for(|k| *k >= n))
            .await
            .unwrap_or_else(|_| panic!("not subscribed {n} times within {timeout:?}"))
            .expect("subscriber task alive");
    }

    /// The next message, or `None` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Msg> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Exactly `n` messages, each within `timeout` of the previous one; panics otherwise.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.recv(timeout).await {
                Some(m) => out.push(m),
                None => panic!(
                    "received {} of {n} messages; nothing more within {timeout:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Everything that arrives until nothing has arrived for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv(quiet).await {
            out.push(m);
        }
        out
    }
}

/// COBS-frames arbitrary bytes, delimiter included (the crate under test only frames valid
/// messages; tests need to frame corrupt ones).
pub fn cobs(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0_u8; data.len() + data.len() / 254 + 2];
    let (mut w, mut code_at, mut code) = (1, 0, 1_u8);
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            (code_at, w, code) = (w, w + 1, 1);
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            if code == 0xff {
                out[code_at] = code;
                (code_at, w, code) = (w, w + 1, 1);
            }
        }
    }
    out[code_at] = code;
    out[w] = 0;
    out.truncate(w + 1);
    out
}
