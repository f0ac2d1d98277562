//! One MQTT connection that does not lose what it accepted: [`MqttLink`].
//!
//! A link is a rumqttc client plus a queue of its own:
//!
//! ```text
//! publish() ─> waiting (bounded, oldest dropped first) ─> handed to rumqttc ─> in flight ─> PUBACK: delivered
//!                  ^                                             │                 │
//!                  └───────────── connection lost: back to the front, in order ───┘
//! ```
//!
//! * A message is **accepted** by [`MqttLink::publish`] without waiting. It stays in the link's
//!   queue until the broker acknowledges it (QoS 1) or it has been written (QoS 0).
//! * While connected, at most [`LinkOptions::in_flight`] messages are handed to the rumqttc event
//!   loop at a time (without blocking: `try_publish` into a request channel larger than the
//!   window), so the event loop, which runs in its own task, is never starved or deadlocked.
//! * When the connection breaks, every message handed over but not acknowledged goes back to the
//!   front of the queue, in the order it was accepted, and is sent again after the reconnect
//!   (QoS 1 is "at least once": a receiver may see a duplicate, which the frame's `seq` exposes).
//!   A message that was in flight when [`LinkOptions::max_attempts`] connections broke is given
//!   up and counted (a broker that silently drops connections on oversized packets would
//!   otherwise loop forever); after a loss, such messages are resent one at a time so that one bad
//!   message cannot take others down with it.
//! * The queue holds at most [`LinkOptions::buffer`] waiting messages; beyond that the **oldest**
//!   is dropped and counted in [`LinkStats::dropped_oldest`] (for live sensor data the newest
//!   frames matter most). [`MqttLink::publish_wait`] waits for room instead (a simulator that can
//!   slow down).
//! * The link reconnects on its own with an exponential back-off between
//!   [`LinkOptions::retry_min`] and [`LinkOptions::retry_max`], logging what went wrong in words
//!   a field engineer can act on.
//! * Subscriptions ([`LinkOptions::subscriptions`]) are renewed on every connection (the link
//!   uses clean sessions); received messages come out of the channel that
//!   [`MqttLink::start_subscriber`] returns. When that channel is full, messages are dropped and
//!   counted rather than stalling the connection.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use firmware_bridge::DecodeError;
use firmware_bridge::topic::{QoS, Topic};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing, StateError};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The default MQTT packet size limit, each way: a frame of the protocol's largest size
/// ([`firmware_bridge::limits::MAX_FRAME_VALUES`] f32 values, 4 MiB) plus headers.
///
/// rumqttc's own default is 10 KiB, too small for a 64×64 f32 frame (16 KiB).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 4 * 1024 * 1024 + 64 * 1024;

/// Bytes an MQTT PUBLISH adds around its topic and payload (fixed header, lengths, packet id).
const PUBLISH_OVERHEAD: usize = 16;

/// Where the broker is: `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerAddress {
    /// The standard MQTT port, used when an address gives none.
    pub const DEFAULT_PORT: u16 = 1883;

    /// An address.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// The host as a socket address lookup wants it (`[::1]` for IPv6).
    fn lookup_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl From<SocketAddr> for BrokerAddress {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.lookup_host(), self.port)
    }
}

impl FromStr for BrokerAddress {
    type Err = MqttError;

    /// `HOST:PORT`, `HOST` (port 1883), `[IPV6]:PORT`; an `mqtt://` or `tcp://` prefix is allowed.
    fn from_str(s: &str) -> Result<Self, MqttError> {
        let bad = |reason| MqttError::BadAddress {
            given: s.to_string(),
            reason,
        };
        let t = s.trim();
        let t = t
            .strip_prefix("mqtt://")
            .or_else(|| t.strip_prefix("tcp://"))
            .unwrap_or(t);
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or(bad("missing ']'"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or(bad("expected ':' after ']'"))?),
                ),
            }
        } else {
            match t.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(bad("write IPv6 addresses in brackets, e.g. [::1]:1883"));
                }
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(bad("the host is empty or not a host name"));
        }
        let port = match port {
            None => Self::DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
        };
        Ok(Self::new(host, port))
    }
}

/// Why the link could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A broker address could not be parsed.
    #[error(
        "invalid MQTT broker address '{given}': {reason} (expected HOST:PORT, e.g. 127.0.0.1:1883)"
    )]
    BadAddress {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A station id cannot be used in a topic.
    #[error("cannot publish for station '{station}': {source}")]
    BadStation {
        /// The station id.
        station: String,
        /// Why it is invalid.
        source: DecodeError,
    },
    /// A message is larger than the link's packet size limit; it was not accepted.
    #[error(
        "a {len}-byte message for {topic} exceeds the MQTT packet limit of {max} bytes; \
         raise the limit (and the broker's) or send the frame in chunks"
    )]
    TooLarge {
        /// The topic.
        topic: String,
        /// Payload length.
        len: usize,
        /// The link's limit.
        max: usize,
    },
    /// The link was closed.
    #[error("the MQTT link is closed")]
    Closed,
    /// A TLS file cannot be used.
    #[error("TLS: {}: {reason}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`MqttLink::flush`] gave up waiting.
    #[error(
        "{pending} message(s) not yet acknowledged by the MQTT broker at {broker} after {}; {}",
        fmt_duration(*waited),
        if *connected { "the broker is slow or overloaded" } else { "the broker is unreachable" }
    )]
    FlushTimeout {
        /// The broker.
        broker: String,
        /// Messages still queued or in flight.
        pending: usize,
        /// How long it waited.
        waited: Duration,
        /// Whether the link was connected at the end.
        connected: bool,
    },
    /// The link was started outside a tokio runtime.
    #[error("the MQTT link must be started from inside a tokio runtime")]
    NoRuntime,
}

/// The retained (or not) message a broker publishes when this client vanishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// How a link connects and queues.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The broker.
    pub broker: BrokerAddress,
    /// MQTT client id; must be unique among the broker's clients (a second client with the same
    /// id makes the broker disconnect the first).
    pub client_id: String,
    /// Messages held while they cannot be sent (broker away or slow); beyond this the oldest is
    /// dropped. At least 1.
    pub buffer: usize,
    /// Messages handed to the connection at once (sent, not yet acknowledged). 1–1000.
    pub in_flight: usize,
    /// MQTT packet size limit, each way ([`DEFAULT_MAX_PACKET_SIZE`]).
    pub max_packet_size: usize,
    /// MQTT keep-alive (at least 1 s).
    pub keep_alive: Duration,
    /// First delay before reconnecting; doubles up to [`Self::retry_max`].
    pub retry_min: Duration,
    /// Longest delay between reconnection attempts.
    pub retry_max: Duration,
    /// A message in flight when this many connections broke is given up (counted in
    /// [`LinkStats::dropped_undeliverable`]).
    pub max_attempts: u32,
    /// Topic filters to subscribe to on every connection.
    pub subscriptions: Vec<(String, QoS)>,
    /// Capacity of the channel that received messages come out of.
    pub incoming_capacity: usize,
    /// Registered with the broker at every connection.
    pub last_will: Option<LastWill>,
    /// `false` asks the broker for a persistent session: it keeps the subscriptions and queues
    /// QoS 1 messages for this client id while it is away (the runtime's frame subscription).
    pub clean_session: bool,
    /// User name and password sent in every CONNECT (a broker with `allow_anonymous false`).
    pub credentials: Option<Credentials>,
    /// TLS to the broker ([`TlsFiles::client_config`]); plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl LinkOptions {
    /// Defaults: a buffer of 1024 messages, 32 in flight, [`DEFAULT_MAX_PACKET_SIZE`], 30 s
    /// keep-alive, reconnecting after 0.5 s doubling up to 5 s, 5 attempts per message.
    pub fn new(broker: BrokerAddress, client_id: impl Into<String>) -> Self {
        Self {
            broker,
            client_id: client_id.into(),
            buffer: 1024,
            in_flight: 32,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            keep_alive: Duration::from_secs(30),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
            max_attempts: 5,
            subscriptions: Vec::new(),
            incoming_capacity: 1024,
            last_will: None,
            clean_session: true,
            credentials: None,
            tls: None,
        }
    }
}

/// TLS to the broker: the certificate authorities to trust, and this client's own certificate
/// for a broker that asks for one. The broker's certificate must name the host connected to
/// (a DNS name, or an IP address such as `127.0.0.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the certificate authorities that may sign the broker's certificate.
    pub ca_file: std::path::PathBuf,
    /// PEM file of this client's certificate chain (mutual TLS), with `client_key_file`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM file of this client's private key.
    pub client_key_file: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// A rustls client configuration (TLS 1.2 and 1.3, ring's algorithms) that trusts only the
    /// authorities in `ca_file`; every problem with the files is a [`MqttError::Tls`] naming it.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, MqttError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |path: &std::path::Path, reason: String| MqttError::Tls {
            path: path.to_path_buf(),
            reason,
        };
        let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, MqttError> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(path, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, e.to_string()))?;
            if certs.is_empty() {
                return Err(bad(path, "holds no PEM certificate".into()));
            }
            Ok(certs)
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca_file)? {
            roots
                .add(c)
                .map_err(|e| bad(&self.ca_file, format!("not a usable CA certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&self.ca_file, e.to_string()))?
        .with_root_certificates(roots);
        let config = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certs(cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(key, format!("no usable PEM private key: {e}")))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    bad(cert, format!("certificate and key do not go together: {e}"))
                })?
            }
            (Some(p), None) | (None, Some(p)) => {
                return Err(bad(
                    p,
                    "a client certificate needs its key and the key its certificate".into(),
                ));
            }
        };
        Ok(Arc::new(config))
    }
}

/// MQTT user name and password. `Debug` leaves the password out, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What a link has done so far (a snapshot; counts since the link started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connected right now.
    pub connected: bool,
    /// Connections made (the first one included).
    pub connections: u64,
    /// Connections that broke.
    pub connection_losses: u64,
    /// Connection attempts that failed.
    pub failed_attempts: u64,
    /// Messages accepted by `publish`.
    pub accepted: u64,
    /// Messages acknowledged by the broker (QoS 1, 2) or written to it (QoS 0).
    pub delivered: u64,
    /// Messages put back in the queue because their connection broke before the broker
    /// acknowledged them (each is sent again).
    pub requeued: u64,
    /// Messages dropped from a full buffer, oldest first.
    pub dropped_oldest: u64,
    /// Messages given up after [`LinkOptions::max_attempts`] broken connections.
    pub dropped_undeliverable: u64,
    /// Messages waiting or in flight now.
    pub queued: usize,
    /// Messages received on the subscriptions.
    pub received: u64,
    /// Received messages dropped because the receiving channel was full.
    pub received_dropped: u64,
    /// Why the last connection attempt failed or the last connection broke, in words a field
    /// engineer can act on (kept after a later success: it is the last trouble seen).
    pub last_error: Option<String>,
}

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic it was published on.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The retain flag (set when the broker replays a retained message).
    pub retain: bool,
}

/// A message the link holds until the broker has it.
#[derive(Debug)]
struct Pending {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
    /// Connections that broke while it was in flight.
    attempts: u32,
    /// Acceptance order, to put messages back in order after a broken connection.
    order: u64,
}

/// The queue and the connection state, behind one mutex shared by publishers and the driver.
#[derive(Debug, Default)]
struct State {
    connected: bool,
    closing: bool,
    /// Accepted, not handed to rumqttc yet.
    waiting: VecDeque<Pending>,
    /// Handed to rumqttc (in its request channel), not written yet.
    handed: VecDeque<Pending>,
    /// Written, waiting for the broker's acknowledgement, by packet id.
    in_flight: HashMap<u16, Pending>,
    next_order: u64,
    stats: LinkStats,
}

impl State {
    fn queued(&self) -> usize {
        self.waiting.len() + self.handed.len() + self.in_flight.len()
    }

    fn outstanding(&self) -> usize {
        self.handed.len() + self.in_flight.len()
    }

    /// Drops the oldest waiting messages beyond `capacity`; returns how many.
    fn trim(&mut self, capacity: usize) -> u64 {
        let mut dropped = 0;
        while self.waiting.len() > capacity {
            self.waiting.pop_front();
            dropped += 1;
        }
        self.stats.dropped_oldest += dropped;
        dropped
    }

    fn accept(&mut self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) {
        let order = self.next_order;
        self.next_order += 1;
        self.stats.accepted += 1;
        self.waiting.push_back(Pending {
            topic,
            qos,
            retain,
            payload,
            attempts: 0,
            order,
        });
    }

    /// Hands waiting messages to rumqttc while the window allows. A message that was in flight
    /// on a broken connection goes alone, so that a message the broker cannot take is isolated.
    fn hand_over(&mut self, client: &AsyncClient, window: usize) {
        while self.connected && self.outstanding() < window {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let retrying_outstanding = self
                .handed
                .iter()
                .chain(self.in_flight.values())
                .any(|m| m.attempts > 0);
            if retrying_outstanding || (next.attempts > 0 && self.outstanding() > 0) {
                break;
            }
            let Some(m) = self.waiting.pop_front() else {
                break;
            };
            match client.try_publish(
                m.topic.clone(),
                to_rumqttc(m.qos),
                m.retain,
                m.payload.clone(),
            ) {
                Ok(()) => self.handed.push_back(m),
                Err(_) => {
                    // The request channel is larger than the window, so this means the event
                    // loop is gone; keep the message.
                    self.waiting.push_front(m);
                    break;
                }
            }
        }
    }

    /// After a broken connection: everything handed over or in flight goes back to the front of
    /// the queue, in acceptance order; returns the messages given up (topic, length).
    fn requeue(&mut self, capacity: usize, max_attempts: u32) -> Vec<(String, usize)> {
        let mut back: Vec<Pending> = self
            .in_flight
            .drain()
            .map(|(_, mut m)| {
                m.attempts += 1;
                m
            })
            .chain(self.handed.drain(..))
            .collect();
        back.sort_by_key(|m| m.order);
        let mut given_up = Vec::new();
        for m in back.into_iter().rev() {
            if m.attempts >= max_attempts {
                self.stats.dropped_undeliverable += 1;
                given_up.push((m.topic, m.payload.len()));
                continue;
            }
            self.stats.requeued += 1;
            self.waiting.push_front(m);
        }
        self.trim(capacity);
        given_up
    }
}

struct Shared {
    state: Mutex<State>,
    /// Woken on every change of the queue or the connection.
    changed: Notify,
    client: AsyncClient,
    opts: LinkOptions,
    broker: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn window(&self) -> usize {
        self.opts.in_flight
    }
}

/// Owns the driver task; aborts it when the last [`MqttLink`] handle goes away.
struct Owner {
    shared: Arc<Shared>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(task) = self
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// A connection to an MQTT broker with its own delivery queue; see the [module docs](self).
///
/// Cheap to clone: clones share the connection. Dropping the last clone stops the connection
/// (call [`Self::flush`] first to wait for delivery).
#[derive(Clone)]
pub struct MqttLink {
    owner: Arc<Owner>,
}

impl fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttLink")
            .field("broker", &self.owner.shared.broker)
            .field("client_id", &self.owner.shared.opts.client_id)
            .finish_non_exhaustive()
    }
}

impl MqttLink {
    /// Starts connecting (in the background: this returns at once) and accepting messages.
    /// Must be called inside a tokio runtime.
    pub fn start(opts: LinkOptions) -> Result<Self, MqttError> {
        Self::spawn(opts, None)
    }

    /// Like [`Self::start`], and returns the channel on which messages received on
    /// [`LinkOptions::subscriptions`] arrive.
    pub fn start_subscriber(
        opts: LinkOptions,
    ) -> Result<(Self, mpsc::Receiver<Received>), MqttError> {
        let (tx, rx) = mpsc::channel(opts.incoming_capacity.max(1));
        Ok((Self::spawn(opts, Some(tx))?, rx))
    }

    fn spawn(
        mut opts: LinkOptions,
        incoming: Option<mpsc::Sender<Received>>,
    ) -> Result<Self, MqttError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MqttError::NoRuntime)?;
        opts.buffer = opts.buffer.max(1);
        opts.in_flight = opts.in_flight.clamp(1, 1000);
        opts.max_attempts = opts.max_attempts.max(1);
        opts.retry_min = opts.retry_min.max(Duration::from_millis(10));
        opts.retry_max = opts.retry_max.max(opts.retry_min);
        if !opts.keep_alive.is_zero() {
            opts.keep_alive = opts.keep_alive.max(Duration::from_secs(1));
        }
        let mut mqtt = rumqttc::MqttOptions::new(
            opts.client_id.clone(),
            opts.broker.lookup_host(),
            opts.broker.port,
        );
        mqtt.set_max_packet_size(opts.max_packet_size, opts.max_packet_size)
            .set_keep_alive(opts.keep_alive)
            .set_clean_session(opts.clean_session)
            // Packet ids cycle through 1..=inflight: twice the window can never collide.
            .set_inflight(u16::try_from(2 * opts.in_flight + 2).unwrap_or(u16::MAX));
        if let Some(c) = &opts.credentials {
            mqtt.set_credentials(c.username.clone(), c.password.clone());
        }
        if let Some(tls) = &opts.tls {
            mqtt.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)),
            ));
        }
        if let Some(will) = &opts.last_will {
            mqtt.set_last_will(rumqttc::LastWill::new(
                will.topic.clone(),
                will.payload.clone(),
                to_rumqttc(will.qos),
                will.retain,
            ));
        }
        // Larger than the window plus subscriptions and a disconnect: `try_publish` never finds
        // it full while the event loop runs.
        let capacity = opts.in_flight + opts.subscriptions.len() + 8;
        let (client, eventloop) = AsyncClient::new(mqtt, capacity);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            client,
            broker: opts.broker.to_string(),
            opts,
        });
        let driver = runtime.spawn(drive(eventloop, Arc::clone(&shared), incoming));
        Ok(Self {
            owner: Arc::new(Owner {
                shared,
                driver: Mutex::new(Some(driver)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The broker, as `HOST:PORT`.
    pub fn broker(&self) -> &str {
        &self.shared().broker
    }

    /// Accepts a message without waiting. A full buffer drops its oldest waiting message.
    pub fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), MqttError> {
        let topic = self.check(topic.into(), &payload)?;
        let shared = self.shared();
        let mut st = shared.lock();
        if st.closing {
            return Err(MqttError::Closed);
        }
        st.accept(topic, qos, retain, payload);
        let dropped = st.trim(shared.opts.buffer);
        st.hand_over(&shared.client, shared.window());
        st.stats.queued = st.queued();
        drop(st);
        if dropped > 0 {
            tracing::debug!(broker = %shared.broker, dropped, "MQTT buffer full: dropped the oldest message");
        }
        shared.changed.notify_waiters();
        Ok(())
    }

    /// Accepts a message, waiting while the buffer is full (backpressure instead of dropping).
    pub async fn publish_wait(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), MqttError> {
        let topic = self.check(topic.into(), &payload)?;
        let shared = self.shared();
        let capacity = shared.opts.buffer;
        self.wait_until(None, |st| st.closing || st.waiting.len() < capacity)
            .await;
        let mut st = shared.lock();
        if st.closing {
            return Err(MqttError::Closed);
        }
        st.accept(topic, qos, retain, payload);
        st.trim(capacity); // only if another publisher raced us to the last slot
        st.hand_over(&shared.client, shared.window());
        st.stats.queued = st.queued();
        drop(st);
        shared.changed.notify_waiters();
        Ok(())
    }

    /// Publishes on a station's topic with that topic's QoS and retain flag (see
    /// [`firmware_bridge::topic`]); does not wait.
    pub fn publish_to(
        &self,
        topic: Topic,
        station: &str,
        payload: Vec<u8>,
    ) -> Result<(), MqttError> {
        let name = station_topic(topic, station)?;
        self.publish(name, topic.qos(), topic.retained(), payload)
    }

    /// [`Self::publish_to`], waiting while the buffer is full.
    pub async fn publish_to_wait(
        &self,
        topic: Topic,
        station: &str,
        payload: Vec<u8>,
    ) -> Result<(), MqttError> {
        let name = station_topic(topic, station)?;
        self.publish_wait(name, topic.qos(), topic.retained(), payload)
            .await
    }

    fn check(&self, topic: String, payload: &[u8]) -> Result<String, MqttError> {
        let max = self.shared().opts.max_packet_size;
        if payload.len() + topic.len() + PUBLISH_OVERHEAD > max {
            return Err(MqttError::TooLarge {
                topic,
                len: payload.len(),
                max,
            });
        }
        Ok(topic)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        let st = self.shared().lock();
        let mut stats = st.stats.clone();
        stats.queued = st.queued();
        stats.connected = st.connected;
        stats
    }

    /// Whether the link is connected right now.
    pub fn is_connected(&self) -> bool {
        self.shared().lock().connected
    }

    /// Waits until the link is connected; `false` if `timeout` passed first.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout), |st| st.connected)
            .await
    }

    /// Waits until the link is disconnected; `false` if `timeout` passed first.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout), |st| !st.connected)
            .await
    }

    /// Waits until every accepted message has been delivered (or given up).
    pub async fn flush(&self, timeout: Duration) -> Result<(), MqttError> {
        if self
            .wait_until(Some(Instant::now() + timeout), |st| st.queued() == 0)
            .await
        {
            return Ok(());
        }
        let st = self.shared().lock();
        Err(MqttError::FlushTimeout {
            broker: self.shared().broker.clone(),
            pending: st.queued(),
            waited: timeout,
            connected: st.connected,
        })
    }

    /// Disconnects cleanly (if connected) and stops the connection; messages still queued are
    /// dropped (call [`Self::flush`] first). Other clones of this link are closed too.
    pub async fn close(&self) {
        let shared = self.shared();
        let connected = {
            let mut st = shared.lock();
            st.closing = true;
            st.connected
        };
        shared.changed.notify_waiters();
        let task = self
            .owner
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task {
            if connected && shared.client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut task).await;
            }
            task.abort();
        }
        let mut st = shared.lock();
        st.connected = false;
        st.stats.connected = false;
    }

    /// Waits until `done` holds (checked on every change), or until `deadline`.
    async fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut done: impl FnMut(&State) -> bool,
    ) -> bool {
        let shared = self.shared();
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&shared.lock()) {
                return true;
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return done(&shared.lock());
                    }
                }
            }
        }
    }
}

fn station_topic(topic: Topic, station: &str) -> Result<String, MqttError> {
    topic
        .for_station(station)
        .map_err(|source| MqttError::BadStation {
            station: station.to_string(),
            source,
        })
}

fn to_rumqttc(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

/// The connection's task: polls the rumqttc event loop (and nothing else), keeps the queue in
/// step with what the event loop reports, and reconnects after failures.
async fn drive(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    incoming: Option<mpsc::Sender<Received>>,
) {
    let opts = &shared.opts;
    let broker = shared.broker.as_str();
    let mut delay = opts.retry_min;
    let mut failures: u64 = 0;
    loop {
        let event = eventloop.poll().await;
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                // A clean session: rumqttc's own replay list is ours to resend, not its.
                eventloop.pending.clear();
                let queued = {
                    let mut st = shared.lock();
                    st.connected = true;
                    st.stats.connections += 1;
                    for (filter, qos) in &opts.subscriptions {
                        if let Err(e) = shared
                            .client
                            .try_subscribe(filter.clone(), to_rumqttc(*qos))
                        {
                            tracing::error!(broker, filter, "cannot subscribe: {e}");
                        }
                    }
                    st.hand_over(&shared.client, shared.window());
                    st.queued()
                };
                if failures > 0 {
                    tracing::info!(
                        broker,
                        queued,
                        "connected to MQTT broker at {broker} after {failures} failed attempt(s); \
                         sending {queued} buffered message(s)"
                    );
                } else {
                    tracing::info!(broker, "connected to MQTT broker at {broker}");
                }
                failures = 0;
                delay = opts.retry_min;
                shared.changed.notify_waiters();
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut st = shared.lock();
                match st.handed.pop_front() {
                    Some(m) if m.qos == QoS::AtMostOnce => {
                        st.stats.delivered += 1;
                        st.hand_over(&shared.client, shared.window());
                        drop(st);
                        shared.changed.notify_waiters();
                    }
                    Some(m) => {
                        st.in_flight.insert(pkid, m);
                    }
                    None => {
                        tracing::debug!(pkid, "publish written that the link did not hand over")
                    }
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                let mut st = shared.lock();
                if st.in_flight.remove(&ack.pkid).is_some() {
                    st.stats.delivered += 1;
                }
                st.hand_over(&shared.client, shared.window());
                drop(st);
                shared.changed.notify_waiters();
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if let Some(tx) = &incoming {
                    let msg = Received {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    };
                    let mut st = shared.lock();
                    match tx.try_send(msg) {
                        Ok(()) => st.stats.received += 1,
                        Err(mpsc::error::TrySendError::Full(m)) => {
                            st.stats.received_dropped += 1;
                            tracing::warn!(
                                broker,
                                topic = m.topic,
                                "receiver is not keeping up: dropped an incoming message"
                            );
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(
                        broker,
                        "the broker refused a subscription; check its access rules for {:?}",
                        opts.subscriptions
                    );
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                if shared.lock().closing {
                    break;
                }
            }
            Ok(_) => {}
            Err(err) => {
                let (closing, was_connected, queued, given_up) = {
                    let mut st = shared.lock();
                    // Take back whatever is still in rumqttc's hands: the link resends it.
                    eventloop.clean();
                    eventloop.pending.clear();
                    let was_connected = st.connected;
                    st.connected = false;
                    if was_connected {
                        st.stats.connection_losses += 1;
                    } else {
                        st.stats.failed_attempts += 1;
                    }
                    st.stats.last_error = Some(explain(&err, opts.max_packet_size));
                    let given_up = st.requeue(opts.buffer, opts.max_attempts);
                    (st.closing, was_connected, st.queued(), given_up)
                };
                shared.changed.notify_waiters();
                if closing {
                    break;
                }
                for (topic, len) in given_up {
                    tracing::error!(
                        broker,
                        topic,
                        len,
                        "gave up a {len}-byte message for {topic}: {} connections to {broker} broke \
                         while it was in flight (is the broker's maximum packet size smaller than \
                         {len} bytes?)",
                        opts.max_attempts
                    );
                }
                failures += 1;
                let why = explain(&err, opts.max_packet_size);
                let retry = fmt_duration(delay);
                if was_connected {
                    tracing::warn!(
                        broker,
                        queued,
                        "lost the connection to MQTT broker at {broker}: {why}; {queued} message(s) \
                         kept for resending (retrying in {retry})"
                    );
                } else if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        broker,
                        queued,
                        "cannot reach MQTT broker at {broker}: {why} (retrying in {retry}; \
                         {queued} message(s) waiting)"
                    );
                } else {
                    tracing::debug!(broker, "cannot reach MQTT broker at {broker}: {why}");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(opts.retry_max);
            }
        }
    }
    shared.lock().connected = false;
    shared.changed.notify_waiters();
}

/// A connection error in words a field engineer can act on.
fn explain(err: &ConnectionError, max_packet: usize) -> String {
    match err {
        ConnectionError::Io(e) | ConnectionError::MqttState(StateError::Io(e)) => explain_io(e),
        ConnectionError::NetworkTimeout => {
            "no answer within 5 s; check the address, the network and any firewall".into()
        }
        ConnectionError::FlushTimeout => "the broker stopped reading from the connection".into(),
        ConnectionError::ConnectionRefused(code) => match code {
            rumqttc::ConnectReturnCode::BadUserNamePassword => {
                "the broker refused the user name or password; check the credentials in the \
                 configuration"
                    .into()
            }
            rumqttc::ConnectReturnCode::NotAuthorized => {
                "the broker refused the connection: not authorised (no or wrong credentials, or \
                 this user may not connect); check the credentials and the broker's access rules"
                    .into()
            }
            _ => format!(
                "the broker refused the connection ({code:?}); check the client id, the \
                 credentials and the broker's access rules"
            ),
        },
        ConnectionError::Tls(e) => format!(
            "the TLS handshake with the broker failed ({e}); check that the broker's certificate \
             is signed by a CA in broker.tls.ca_file and names the host connected to, and that \
             the port is the broker's TLS listener"
        ),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "the broker closed the connection".into()
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "the broker stopped answering keep-alive pings".into()
        }
        ConnectionError::MqttState(StateError::Deserialization(e)) => format!(
            "a packet could not be exchanged ({e}); both sides must allow packets of \
             {max_packet} bytes"
        ),
        other => other.to_string(),
    }
}

fn explain_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused; is the broker running?".into(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            "the broker closed the connection".into()
        }
        K::TimedOut => "the connection timed out; check the network".into(),
        K::HostUnreachable | K::NetworkUnreachable => {
            "no route to the broker; check the network and the address".into()
        }
        _ => format!("{e}; check the host name and the network"),
    }
}

/// `500 ms`, `2 s`, `1.5 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse() {
        let a: BrokerAddress = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(a, BrokerAddress::new("127.0.0.1", 1883));
        assert_eq!("broker.site".parse::<BrokerAddress>().unwrap().port, 1883);
        assert_eq!(
            "mqtt://broker.site:8883".parse::<BrokerAddress>().unwrap(),
            BrokerAddress::new("broker.site", 8883)
        );
        let v6: BrokerAddress = "[::1]:1884".parse().unwrap();
        assert_eq!(v6, BrokerAddress::new("::1", 1884));
        assert_eq!(v6.to_string(), "[::1]:1884");
        for bad in [
            "",
            ":1883",
            "host:",
            "host:0",
            "host:70000",
            "::1:1883",
            "[::1",
            "a b:1",
        ] {
            let err = bad.parse::<BrokerAddress>().unwrap_err();
            assert!(err.to_string().contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    fn pending(order: u64) -> Pending {
        Pending {
            topic: format!("t/{order}"),
            qos: QoS::AtLeastOnce,
            retain: false,
            payload: vec![0; 4],
            attempts: 0,
            order,
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest() {
        let mut st = State::default();
        for i in 0..5 {
            st.accept(format!("t/{i}"), QoS::AtLeastOnce, false, vec![]);
            st.trim(3);
        }
        let topics: Vec<_> = st.waiting.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["t/2", "t/3", "t/4"]);
        assert_eq!(st.stats.dropped_oldest, 2);
    }

    #[test]
    fn requeue_restores_acceptance_order_in_front_of_the_waiting() {
        let mut st = State::default();
        st.in_flight.insert(7, pending(1));
        st.in_flight.insert(3, pending(0));
        st.handed.push_back(pending(2));
        st.waiting.push_back(pending(3));
        let given_up = st.requeue(10, 5);
        assert!(given_up.is_empty());
        let order: Vec<_> = st.waiting.iter().map(|m| m.order).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        // Only what was written counts as an attempt.
        let attempts: Vec<_> = st.waiting.iter().map(|m| m.attempts).collect();
        assert_eq!(attempts, [1, 1, 0, 0]);
        assert_eq!(st.stats.requeued, 3);
    }

    #[test]
    fn requeue_trims_to_the_buffer_and_gives_up_after_max_attempts() {
        let mut st = State::default();
        let mut poison = pending(0);
        poison.attempts = 4;
        st.in_flight.insert(1, poison);
        for i in 1..4 {
            st.waiting.push_back(pending(i));
        }
        let given_up = st.requeue(2, 5);
        assert_eq!(given_up, [("t/0".to_string(), 4)]);
        assert_eq!(st.stats.dropped_undeliverable, 1);
        let order: Vec<_> = st.waiting.iter().map(|m| m.order).collect();
        assert_eq!(order, [2, 3]);
        assert_eq!(st.stats.dropped_oldest, 1);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500 ms");
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn connection_errors_read_well() {
        let refused = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            explain(&refused, 1),
            "connection refused; is the broker running?"
        );
    }
}
