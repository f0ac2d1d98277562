//! The bridge from station links to MQTT: [`Bridge`].
//!
//! A station without an MQTT client (a microcontroller on a UART, a radio modem, a logger sending
//! UDP) writes COBS-framed messages ([`docs/PROTOCOL.md`, section 7]); the bridge reads them from
//! stdin, a UDP socket or a serial device, and for every message
//!
//! 1. decodes and validates it ([`firmware_bridge::StreamDecoder`]: COBS, envelope, CRC, fields);
//! 2. puts chunked frames back together ([`firmware_bridge::Reassembler`], one per link or UDP
//!    peer, since chunks do not name their station);
//! 3. forwards each valid sensor frame, whole and re-encoded, to `ccm/<station>/frames` (QoS 1)
//!    through an [`MqttLink`] (which buffers while the broker is away, dropping the oldest
//!    frames first, and reconnects);
//! 4. counts everything else by [`RejectReason`] (a forecast on a station link is `wrong_kind`),
//!    and frames of other stations than `--station-filter` as filtered.
//!
//! The decoding half is sans-IO ([`BridgeCore`]: bytes in, frames out, time as an input) and is
//! unit-tested without sockets; [`Bridge::run`] is the thin shell that owns the input, the clock
//! and the link, and logs the counters periodically and at the end.
//!
//! **UDP:** each datagram carries whole COBS frames (each ending in `0x00`); bytes after the last
//! delimiter of a datagram are a cut-off frame and are counted as `truncated`.
//! **Serial:** the device is opened as a file; set its line beforehand, e.g.
//! `stty -F /dev/ttyUSB0 115200 raw -echo` (raw mode, so that reads block until bytes arrive).
//! If the device goes away the bridge reopens it every second.
//!
//! [`RejectReason`]: firmware_bridge::RejectReason

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use firmware_bridge::topic::Topic;
use firmware_bridge::{
    DecodeError, Message, MessageKind, Push, Reassembler, RejectReason, SensorFrame, StreamDecoder,
    WireMessage,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::mqtt::{LinkStats, MqttError, MqttLink, fmt_duration};

/// The longest COBS frame the bridge accepts on a link, delimiter included (128 KiB: a 128×128
/// single-channel f32 frame, or 64×64 with 3 channels). Longer frames must be sent in chunks
/// (`docs/PROTOCOL.md`, section 6); they are rejected as `too_large`.
pub const STREAM_BUFFER: usize = 128 * 1024;

/// At most this many UDP peers keep a chunk reassembler at once.
const MAX_PEERS: usize = 64;

/// Where the bridge reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`stdin` or `-`); the bridge stops at end of input.
    Stdin,
    /// UDP datagrams received on this address (`udp:ADDR:PORT`).
    Udp(SocketAddr),
    /// A serial device (`serial:/dev/ttyUSB0`), opened as a file.
    Serial(PathBuf),
}

impl FromStr for Input {
    type Err = BridgeError;
    fn from_str(s: &str) -> Result<Self, BridgeError> {
        let bad = |reason: &str| BridgeError::BadInput {
            given: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if t == "stdin" || t == "-" {
            Ok(Self::Stdin)
        } else if let Some(addr) = t.strip_prefix("udp:") {
            addr.parse()
                .map(Self::Udp)
                .map_err(|_| bad("the UDP address must be IP:PORT, e.g. udp:0.0.0.0:7001"))
        } else if let Some(path) = t.strip_prefix("serial:") {
            if path.is_empty() {
                return Err(bad("no device path after 'serial:'"));
            }
            Ok(Self::Serial(PathBuf::from(path)))
        } else {
            Err(bad("unknown kind of input"))
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdin => f.write_str("stdin"),
            Self::Udp(a) => write!(f, "udp:{a}"),
            Self::Serial(p) => write!(f, "serial:{}", p.display()),
        }
    }
}

/// Why the bridge cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The input specification is wrong.
    #[error(
        "invalid input '{given}': {reason} (expected stdin, udp:ADDR:PORT or serial:/dev/ttyXXX)"
    )]
    BadInput {
        /// What was given.
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// The UDP socket could not be opened.
    #[error("cannot listen for UDP on {addr}: {source}; is another program using the port?")]
    Udp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The serial device could not be opened.
    #[error(
        "cannot open serial device {path}: {source}; check the path and the permissions \
         (and set the line first, e.g. `stty -F {path} 115200 raw -echo`)"
    )]
    Serial {
        /// The device.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// Reading the input failed.
    #[error("reading {input} failed: {source}")]
    Read {
        /// The input.
        input: String,
        /// The cause.
        source: io::Error,
    },
    /// The station filter is not a valid station id.
    #[error("invalid station filter '{station}': {source}")]
    BadStation {
        /// The id given.
        station: String,
        /// Why it is invalid.
        source: DecodeError,
    },
}

/// How the bridge treats what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeOptions {
    /// Forward only this station's frames (others are counted as filtered).
    pub station_filter: Option<String>,
    /// The longest chunked message that can be reassembled (two buffers of this size per link
    /// or UDP peer that sends chunks).
    pub reassembly_capacity: usize,
    /// An incomplete chunked message is dropped (counted as lost) this long after its first chunk.
    pub reassembly_timeout: Duration,
    /// How often the counters are logged (`info`); zero: only at the end.
    pub stats_interval: Duration,
    /// How long [`Bridge::run`] waits at the end for the broker to acknowledge what is queued.
    pub flush_timeout: Duration,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            station_filter: None,
            reassembly_capacity: 1 << 20,
            reassembly_timeout: Duration::from_secs(5),
            stats_interval: Duration::from_secs(60),
            flush_timeout: Duration::from_secs(5),
        }
    }
}

/// The bridge's counters (since it started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Bytes read from the input.
    pub bytes: u64,
    /// Valid frames handed to the MQTT link.
    pub frames_forwarded: u64,
    /// Valid frames of other stations than the filter's.
    pub frames_filtered: u64,
    /// Valid frames the link refused (larger than its packet limit).
    pub frames_unsendable: u64,
    /// Valid chunks received.
    pub chunks: u64,
    /// Chunked frames dropped incomplete (a chunk was lost).
    pub chunked_frames_lost: u64,
    /// Rejected messages, COBS frames and chunks, by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// The MQTT link's counters.
    pub link: LinkStats,
}

impl BridgeStats {
    /// Rejections for one reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get(&reason).copied().unwrap_or(0)
    }

    /// Rejections in all.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

impl fmt::Display for BridgeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frame(s) forwarded, {} acknowledged by the broker; {} rejected",
            self.frames_forwarded,
            self.link.delivered,
            self.rejected_total()
        )?;
        if !self.rejected.is_empty() {
            let reasons: Vec<String> = self
                .rejected
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        write!(
            f,
            "; {} filtered out; {} chunked frame(s) lost; {} dropped while the broker was away \
             (buffer full); {} reconnect(s); {} bytes read",
            self.frames_filtered,
            self.chunked_frames_lost,
            self.link.dropped_oldest + self.link.dropped_undeliverable,
            self.link.connections.saturating_sub(1),
            self.bytes
        )?;
        if self.frames_unsendable > 0 {
            write!(
                f,
                "; {} frame(s) too large for MQTT",
                self.frames_unsendable
            )?;
        }
        Ok(())
    }
}

/// Where bytes came from, for chunk reassembly: chunks of one message must come from one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The byte stream (stdin, serial).
    Stream,
    /// A UDP peer.
    Peer(SocketAddr),
}

/// A frame ready for MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The station id (the topic level).
    pub station: String,
    /// The frame's sequence number.
    pub seq: u32,
    /// The encoded frame.
    pub payload: Vec<u8>,
}

/// The sans-IO half of the bridge: bytes in, frames to forward out, counters.
pub struct BridgeCore {
    stream: Box<StreamDecoder<STREAM_BUFFER>>,
    reassemblers: HashMap<Source, Reassembler<Vec<u8>>>,
    /// Losses of reassemblers that were evicted.
    lost_evicted: u64,
    filter: Option<String>,
    capacity: usize,
    timeout_us: u64,
    stats: BridgeStats,
}

impl fmt::Debug for BridgeCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeCore")
            .field("filter", &self.filter)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl BridgeCore {
    /// A core with `opts`' filter and reassembly settings; checks the filter.
    pub fn new(opts: &BridgeOptions) -> Result<Self, BridgeError> {
        if let Some(station) = &opts.station_filter {
            firmware_bridge::topic::validate_station_id(station).map_err(|source| {
                BridgeError::BadStation {
                    station: station.clone(),
                    source,
                }
            })?;
        }
        Ok(Self {
            stream: Box::new(StreamDecoder::new()),
            reassemblers: HashMap::new(),
            lost_evicted: 0,
            filter: opts.station_filter.clone(),
            capacity: opts.reassembly_capacity,
            timeout_us: u64::try_from(opts.reassembly_timeout.as_micros()).unwrap_or(u64::MAX),
            stats: BridgeStats::default(),
        })
    }

    /// Feeds bytes of the stream from `source`, received at `now_us` (any monotonic µs clock);
    /// frames to forward are appended to `out`.
    pub fn feed(&mut self, source: Source, bytes: &[u8], now_us: u64, out: &mut Vec<Forward>) {
        self.stats.bytes += bytes.len() as u64;
        let Self {
            stream,
            reassemblers,
            lost_evicted,
            filter,
            capacity,
            timeout_us,
            stats,
        } = self;
        let mut handler = Handler {
            reassemblers,
            lost_evicted,
            filter: filter.as_deref(),
            capacity: *capacity,
            timeout_us: *timeout_us,
            stats,
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let (event, left) = stream.feed(rest);
            rest = left;
            if let Some(result) = event {
                handler.message(source, result, now_us, out);
            }
        }
    }

    /// Feeds one UDP datagram: whole COBS frames; a cut-off frame at its end is rejected as
    /// `truncated`.
    pub fn feed_datagram(
        &mut self,
        peer: SocketAddr,
        datagram: &[u8],
        now_us: u64,
        out: &mut Vec<Forward>,
    ) {
        self.feed(Source::Peer(peer), datagram, now_us, out);
        if datagram.last().is_some_and(|&b| b != 0) {
            self.stream.reset();
            reject(
                &mut self.stats,
                DecodeError::Truncated {
                    field: firmware_bridge::Field::Magic,
                },
                Source::Peer(peer),
            );
        }
    }

    /// Drops chunked messages that did not complete in time (call about once a second).
    pub fn expire(&mut self, now_us: u64) {
        for r in self.reassemblers.values_mut() {
            r.expire(now_us);
        }
    }

    /// The counters (the link's are left at their defaults).
    pub fn stats(&self) -> BridgeStats {
        let mut stats = self.stats.clone();
        stats.chunked_frames_lost = self.lost_evicted
            + self
                .reassemblers
                .values()
                .map(|r| u64::from(r.stats().messages_lost()))
                .sum::<u64>();
        stats
    }
}

/// The parts of [`BridgeCore`] that handle a decoded message (borrowed apart from the decoder,
/// whose buffer the message borrows).
struct Handler<'c> {
    reassemblers: &'c mut HashMap<Source, Reassembler<Vec<u8>>>,
    lost_evicted: &'c mut u64,
    filter: Option<&'c str>,
    capacity: usize,
    timeout_us: u64,
    stats: &'c mut BridgeStats,
}

impl Handler<'_> {
    fn message(
        &mut self,
        source: Source,
        result: Result<Message<'_>, DecodeError>,
        now_us: u64,
        out: &mut Vec<Forward>,
    ) {
        match result {
            Ok(Message::Frame(frame)) => forward(self.filter, self.stats, source, &frame, out),
            Ok(Message::Chunk(chunk)) => {
                self.stats.chunks += 1;
                if !self.reassemblers.contains_key(&source) && self.reassemblers.len() >= MAX_PEERS
                {
                    self.evict_one();
                }
                let reassembler = self
                    .reassemblers
                    .entry(source)
                    .or_insert_with(|| Reassembler::with_capacity(self.capacity, self.timeout_us));
                match reassembler.push(&chunk, now_us) {
                    Ok(Push::Complete(bytes)) => match firmware_bridge::decode(bytes) {
                        Ok(Message::Frame(frame)) => {
                            forward(self.filter, self.stats, source, &frame, out);
                        }
                        Ok(other) => reject(
                            self.stats,
                            DecodeError::WrongKind {
                                expected: MessageKind::Frame,
                                found: other.kind(),
                            },
                            source,
                        ),
                        Err(e) => reject(self.stats, e, source),
                    },
                    Ok(Push::Pending { .. } | Push::Duplicate | Push::Stale) => {}
                    Err(e) => reject(self.stats, e, source),
                }
            }
            Ok(other) => reject(
                self.stats,
                DecodeError::WrongKind {
                    expected: MessageKind::Frame,
                    found: other.kind(),
                },
                source,
            ),
            Err(e) => reject(self.stats, e, source),
        }
    }

    fn evict_one(&mut self) {
        let victim = self
            .reassemblers
            .iter()
            .min_by_key(|(_, r)| r.in_progress())
            .map(|(k, _)| *k);
        if let Some(r) = victim.and_then(|k| self.reassemblers.remove(&k)) {
            *self.lost_evicted += u64::from(r.stats().messages_lost()) + r.in_progress() as u64;
        }
    }
}

/// Forwards a valid frame, unless the filter says otherwise.
fn forward(
    filter: Option<&str>,
    stats: &mut BridgeStats,
    source: Source,
    frame: &SensorFrame<'_>,
    out: &mut Vec<Forward>,
) {
    if filter.is_some_and(|f| f != frame.station) {
        stats.frames_filtered += 1;
        return;
    }
    match frame.to_vec() {
        Ok(payload) => {
            stats.frames_forwarded += 1;
            out.push(Forward {
                station: frame.station.to_string(),
                seq: frame.seq,
                payload,
            });
        }
        // A decoded frame is valid, so this cannot happen; count it rather than panic.
        Err(e) => reject(
            stats,
            match e {
                firmware_bridge::EncodeError::Invalid(d) => d,
                _ => DecodeError::BadCobs,
            },
            source,
        ),
    }
}

fn reject(stats: &mut BridgeStats, err: DecodeError, source: Source) {
    let reason = err.reason();
    let count = stats.rejected.entry(reason).or_default();
    *count += 1;
    let from = match source {
        Source::Stream => String::from("the stream"),
        Source::Peer(peer) => format!("{peer}"),
    };
    if *count == 1 {
        tracing::warn!(
            %reason,
            "rejected a message from {from}: {err} (further `{reason}` rejections are only counted)"
        );
    } else {
        tracing::debug!(%reason, "rejected a message from {from}: {err}");
    }
}

/// An opened input.
pub struct InputSource {
    label: String,
    kind: InputKind,
}

enum InputKind {
    Udp(UdpSocket),
    Reader(mpsc::Receiver<io::Result<Vec<u8>>>),
}

impl fmt::Debug for InputSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputSource")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

enum Chunk {
    Bytes(Vec<u8>),
    Datagram(SocketAddr, Vec<u8>),
}

impl InputSource {
    /// Opens an input (binds the UDP socket, opens the serial device, starts reading stdin).
    /// Must be called inside a tokio runtime.
    pub async fn open(input: &Input) -> Result<Self, BridgeError> {
        let label = input.to_string();
        match input {
            Input::Stdin => Ok(Self::from_reader("stdin", io::stdin())),
            Input::Udp(addr) => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(|source| BridgeError::Udp {
                        addr: *addr,
                        source,
                    })?;
                Ok(Self {
                    label,
                    kind: InputKind::Udp(socket),
                })
            }
            Input::Serial(path) => {
                let open = {
                    let path = path.clone();
                    move || std::fs::File::open(&path)
                };
                // Open once here, so that a wrong path is an error at start, not a log line.
                // Opening a tty can block (waiting for carrier), so not on a runtime thread.
                let first = tokio::task::spawn_blocking(open.clone())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)))
                    .map_err(|source| BridgeError::Serial {
                        path: path.display().to_string(),
                        source,
                    })?;
                Ok(Self {
                    label,
                    kind: InputKind::Reader(spawn_serial_reader(path.clone(), first, open)),
                })
            }
        }
    }

    /// An input reading a byte stream from `reader` on a thread of its own; the bridge stops at
    /// its end.
    pub fn from_reader(label: &str, reader: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let spawned = std::thread::Builder::new()
            .name(format!("bridge-{label}"))
            .spawn(move || read_until_end(reader, &tx));
        if let Err(e) = spawned {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err(e));
            return Self {
                label: label.to_string(),
                kind: InputKind::Reader(rx),
            };
        }
        Self {
            label: label.to_string(),
            kind: InputKind::Reader(rx),
        }
    }

    /// The local address of a UDP input (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            InputKind::Udp(socket) => socket.local_addr().ok(),
            InputKind::Reader(_) => None,
        }
    }

    /// The next bytes; `None` at the end of the input.
    async fn next(&mut self, buf: &mut [u8]) -> Option<io::Result<Chunk>> {
        match &mut self.kind {
            InputKind::Udp(socket) => Some(
                socket
                    .recv_from(buf)
                    .await
                    .map(|(n, peer)| Chunk::Datagram(peer, buf[..n].to_vec())),
            ),
            InputKind::Reader(rx) => rx.recv().await.map(|r| r.map(Chunk::Bytes)),
        }
    }
}

/// Reads until the end (or an error, which is passed on).
fn read_until_end(mut reader: impl Read, tx: &mpsc::Sender<io::Result<Vec<u8>>>) {
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                    return; // the bridge stopped
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// Reads a serial device for as long as the bridge runs, reopening it when it fails or hangs up.
fn spawn_serial_reader(
    path: PathBuf,
    first: std::fs::File,
    open: impl Fn() -> io::Result<std::fs::File> + Send + 'static,
) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    let thread = std::thread::Builder::new()
        .name("bridge-serial".into())
        .spawn(move || {
            let mut device = Some(first);
            let mut buf = vec![0_u8; 64 * 1024];
            loop {
                let mut file = match device.take() {
                    Some(f) => f,
                    None => match open() {
                        Ok(f) => {
                            tracing::info!(path = %path.display(), "serial device reopened");
                            f
                        }
                        Err(e) => {
                            tracing::warn!(
                                path = %path.display(),
                                "cannot open serial device {}: {e}; retrying in 1 s",
                                path.display()
                            );
                            std::thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                    },
                };
                let mut idle = 0;
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => {
                            // End of input: a hang-up, or a line not in raw mode. Keep reading
                            // for a second, then reopen the device.
                            idle += 1;
                            if idle > 10 {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Ok(n) => {
                            idle = 0;
                            if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(
                                path = %path.display(),
                                "reading serial device {} failed: {e}; reopening",
                                path.display()
                            );
                            std::thread::sleep(Duration::from_secs(1));
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = thread {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

/// A live view of a running bridge's counters.
#[derive(Clone, Debug)]
pub struct BridgeMonitor {
    stats: Arc<Mutex<BridgeStats>>,
    link: MqttLink,
}

impl BridgeMonitor {
    /// The counters now.
    pub fn snapshot(&self) -> BridgeStats {
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        stats.link = self.link.stats();
        stats
    }
}

/// The bridge: an input, a [`BridgeCore`] and an [`MqttLink`]; see the [module docs](self).
#[derive(Debug)]
pub struct Bridge {
    core: BridgeCore,
    link: MqttLink,
    opts: BridgeOptions,
    shared: Arc<Mutex<BridgeStats>>,
}

impl Bridge {
    /// A bridge forwarding to `link`.
    pub fn new(link: MqttLink, opts: BridgeOptions) -> Result<Self, BridgeError> {
        Ok(Self {
            core: BridgeCore::new(&opts)?,
            link,
            opts,
            shared: Arc::default(),
        })
    }

    /// A handle that reads the counters while the bridge runs.
    pub fn monitor(&self) -> BridgeMonitor {
        BridgeMonitor {
            stats: Arc::clone(&self.shared),
            link: self.link.clone(),
        }
    }

    /// Runs until the input ends (stdin) or `stop` completes, then waits up to
    /// [`BridgeOptions::flush_timeout`] for the broker to acknowledge what is queued, and
    /// returns the counters. A read error of the input ends the run with an error.
    pub async fn run(
        mut self,
        mut input: InputSource,
        stop: impl Future<Output = ()>,
    ) -> Result<BridgeStats, BridgeError> {
        tokio::pin!(stop);
        let started = Instant::now();
        let now_us = || u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = Instant::now();
        let mut buf = vec![0_u8; 65_536];
        let mut out = Vec::new();
        tracing::info!(input = %input.label, broker = self.link.broker(), "bridge running");
        let result = loop {
            tokio::select! {
                biased;
                () = &mut stop => break Ok(()),
                _ = tick.tick() => {
                    self.core.expire(now_us());
                    let every = self.opts.stats_interval;
                    if !every.is_zero() && last_stats.elapsed() >= every {
                        last_stats = Instant::now();
                        tracing::info!(input = %input.label, "bridge: {}", self.snapshot());
                    }
                }
                chunk = input.next(&mut buf) => match chunk {
                    None => break Ok(()),
                    Some(Ok(Chunk::Bytes(bytes))) => {
                        self.core.feed(Source::Stream, &bytes, now_us(), &mut out);
                    }
                    Some(Ok(Chunk::Datagram(peer, bytes))) => {
                        self.core.feed_datagram(peer, &bytes, now_us(), &mut out);
                    }
                    Some(Err(e)) if matches!(input.kind, InputKind::Udp(_)) => {
                        // A UDP socket reports ICMP errors of earlier sends; not fatal.
                        tracing::debug!("UDP receive error: {e}");
                    }
                    Some(Err(source)) => break Err(BridgeError::Read { input: input.label.clone(), source }),
                }
            }
            for f in out.drain(..) {
                match self.link.publish_to(Topic::Frames, &f.station, f.payload) {
                    Ok(()) => tracing::trace!(station = f.station, seq = f.seq, "frame forwarded"),
                    Err(e @ (MqttError::TooLarge { .. } | MqttError::BadStation { .. })) => {
                        self.core.stats.frames_unsendable += 1;
                        self.core.stats.frames_forwarded -= 1;
                        tracing::error!(
                            station = f.station,
                            seq = f.seq,
                            "frame not forwarded: {e}"
                        );
                    }
                    Err(e) => tracing::error!(
                        station = f.station,
                        seq = f.seq,
                        "frame not forwarded: {e}"
                    ),
                }
            }
            self.publish_stats();
        };
        let queued = self.link.stats().queued;
        if queued > 0 {
            tracing::info!(
                "waiting up to {} for the broker to acknowledge {queued} frame(s)",
                fmt_duration(self.opts.flush_timeout)
            );
        }
        if let Err(e) = self.link.flush(self.opts.flush_timeout).await {
            tracing::warn!("bridge stopping with frames undelivered: {e}");
        }
        self.publish_stats();
        let stats = self.snapshot();
        tracing::info!(input = %input.label, "bridge stopped: {stats}");
        result.map(|()| stats)
    }

    fn publish_stats(&self) {
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = self.core.stats();
    }

    fn snapshot(&self) -> BridgeStats {
        let mut stats = self.core.stats();
        stats.link = self.link.stats();
        stats
    }
}

#[cfg(test)]
mod tests {
    use firmware_bridge::{Channels, Forecast, GridShape, Sampling, Values, split};

    use super::*;

    const PEER: &str = "10.0.0.7:4000";

    fn frame_bytes(station: &str, seq: u32, values: &[f32]) -> Vec<u8> {
        SensorFrame {
            station,
            seq,
            timestamp_us: 1_000 * u64::from(seq),
            channels: Channels::single("h"),
            shape: GridShape::new(1, values.len() as u16, 1),
            sampling: Sampling::Dense,
            values: Values::f32(values),
        }
        .to_vec()
        .unwrap()
    }

    fn cobs(message: &[u8]) -> Vec<u8> {
        // A chunk of bytes that is not a message, COBS-framed: decode the envelope error path.
        let mut out = vec![0; firmware_bridge::cobs_max_len(message.len())];
        let n = cobs_encode(message, &mut out);
        out.truncate(n);
        out
    }

    /// COBS by the book (test helper; the crate under test has its own).
    fn cobs_encode(data: &[u8], out: &mut [u8]) -> usize {
        let mut w = 1;
        let mut code_at = 0;
        let mut code = 1_u8;
        for &b in data {
            if b == 0 {
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            } else {
                out[w] = b;
                w += 1;
                code += 1;
                if code == 0xff {
                    out[code_at] = code;
                    code_at = w;
                    w += 1;
                    code = 1;
                }
            }
        }
        out[code_at] = code;
        out[w] = 0;
        w + 1
    }

    fn core(filter: Option<&str>) -> BridgeCore {
        BridgeCore::new(&BridgeOptions {
            station_filter: filter.map(str::to_string),
            ..BridgeOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn inputs_parse() {
        assert_eq!("stdin".parse::<Input>().unwrap(), Input::Stdin);
        assert_eq!(
            "udp:127.0.0.1:7001".parse::<Input>().unwrap(),
            Input::Udp("127.0.0.1:7001".parse().unwrap())
        );
        assert_eq!(
            "serial:/dev/ttyUSB0".parse::<Input>().unwrap(),
            Input::Serial("/dev/ttyUSB0".into())
        );
        for bad in ["udp:7001", "serial:", "tcp:1.2.3.4:5", ""] {
            let err = bad.parse::<Input>().unwrap_err().to_string();
            assert!(
                err.contains("expected stdin, udp:ADDR:PORT"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn frames_in_any_pieces_come_out_whole_and_in_order() {
        let mut stream = Vec::new();
        for seq in 0..3 {
            stream.extend(cobs(&frame_bytes("st-01", seq, &[1.0, 2.0, 3.0])));
        }
        let mut c = core(None);
        let mut out = Vec::new();
        for piece in stream.chunks(5) {
            c.feed(Source::Stream, piece, 0, &mut out);
        }
        let seqs: Vec<u32> = out.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(out[1].payload, frame_bytes("st-01", 1, &[1.0, 2.0, 3.0]));
        assert_eq!(c.stats().frames_forwarded, 3);
        assert_eq!(c.stats().bytes, stream.len() as u64);
    }

    #[test]
    fn bad_input_is_counted_by_reason_and_not_forwarded() {
        let good = frame_bytes("st-01", 1, &[1.0]);
        let mut flipped = good.clone();
        flipped[10] ^= 0x40;
        let forecast = Forecast {
            station: "st-01",
            based_on_seq: 1,
            issued_at_us: 5,
            alpha: 0.0,
            channels: Channels::single("h"),
            shape: GridShape::new(1, 1, 1),
            timestamps_us: firmware_bridge::PackedSlice::new(&[6]),
            values: Values::f32(&[1.0]),
        }
        .to_vec()
        .unwrap();
        let mut stream = Vec::new();
        stream.extend(cobs(&flipped)); // bad_crc
        stream.extend(cobs(b"XY\x01\x01\x00\x00\x00\x00\x00")); // bad_magic
        stream.extend([0x05, 0x01, 0x00]); // bad COBS: the code promises more bytes
        stream.extend(cobs(&forecast)); // wrong_kind
        stream.extend(cobs(&good));
        let mut c = core(None);
        let mut out = Vec::new();
        c.feed(Source::Stream, &stream, 0, &mut out);
        assert_eq!(out.len(), 1);
        let s = c.stats();
        assert_eq!(s.rejected(RejectReason::BadCrc), 1, "{s:?}");
        assert_eq!(s.rejected(RejectReason::BadMagic), 1, "{s:?}");
        assert_eq!(s.rejected(RejectReason::BadCobs), 1, "{s:?}");
        assert_eq!(s.rejected(RejectReason::WrongKind), 1, "{s:?}");
        assert_eq!(s.rejected_total(), 4);
        let line = s.to_string();
        assert!(
            line.contains("4 rejected (bad_magic: 1, bad_crc: 1, wrong_kind: 1, bad_cobs: 1)"),
            "{line}"
        );
    }

    #[test]
    fn chunks_are_reassembled_per_peer() {
        let a = frame_bytes("st-a", 9, &[0.5; 40]);
        let b = frame_bytes("st-b", 9, &[1.5; 40]);
        let peer_a: SocketAddr = PEER.parse().unwrap();
        let peer_b: SocketAddr = "10.0.0.8:4000".parse().unwrap();
        let mut c = core(None);
        let mut out = Vec::new();
        // Interleave the chunks of two peers whose frames share a sequence number.
        let ca: Vec<Vec<u8>> = split(&a, 9, 50)
            .unwrap()
            .map(|ch| cobs(&ch.to_vec().unwrap()))
            .collect();
        let cb: Vec<Vec<u8>> = split(&b, 9, 50)
            .unwrap()
            .map(|ch| cobs(&ch.to_vec().unwrap()))
            .collect();
        assert!(ca.len() > 2);
        for (x, y) in ca.iter().zip(&cb).rev() {
            c.feed_datagram(peer_a, x, 0, &mut out);
            c.feed_datagram(peer_b, y, 0, &mut out);
        }
        assert_eq!(out.len(), 2, "{:?}", c.stats());
        assert_eq!(out[0].payload, a);
        assert_eq!(out[1].payload, b);
        assert_eq!(c.stats().rejected_total(), 0);
    }

    #[test]
    fn a_lost_chunk_loses_the_frame_after_the_timeout() {
        let a = frame_bytes("st-a", 3, &[0.5; 40]);
        let mut c = core(None);
        let mut out = Vec::new();
        let chunks: Vec<Vec<u8>> = split(&a, 3, 50)
            .unwrap()
            .map(|ch| cobs(&ch.to_vec().unwrap()))
            .collect();
        for ch in &chunks[1..] {
            c.feed(Source::Stream, ch, 0, &mut out);
        }
        c.expire(10_000_000);
        assert!(out.is_empty());
        assert_eq!(c.stats().chunked_frames_lost, 1);
    }

    #[test]
    fn a_cut_off_datagram_is_truncated_and_the_next_one_decodes() {
        let good = cobs(&frame_bytes("st-01", 1, &[1.0, 2.0]));
        let peer: SocketAddr = PEER.parse().unwrap();
        let mut c = core(None);
        let mut out = Vec::new();
        c.feed_datagram(peer, &good[..good.len() - 4], 0, &mut out);
        c.feed_datagram(peer, &good, 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(c.stats().rejected(RejectReason::Truncated), 1);
    }

    #[test]
    fn the_station_filter_counts_other_stations() {
        let mut c = core(Some("st-01"));
        let mut out = Vec::new();
        c.feed(
            Source::Stream,
            &cobs(&frame_bytes("st-02", 1, &[1.0])),
            0,
            &mut out,
        );
        c.feed(
            Source::Stream,
            &cobs(&frame_bytes("st-01", 2, &[1.0])),
            0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(c.stats().frames_filtered, 1);
        assert!(matches!(
            BridgeCore::new(&BridgeOptions {
                station_filter: Some("a/b".into()),
                ..BridgeOptions::default()
            }),
            Err(BridgeError::BadStation { .. })
        ));
    }
}
