//! An in-process MQTT broker for the demo and the tests: [`EmbeddedBroker`].
//!
//! It is rumqttd (MQTT 3.1.1), compiled in with the cargo feature `embedded-broker` (on by
//! default; an edge build that connects to a site broker turns it off, and then
//! [`EmbeddedBroker::start`] returns [`BrokerError::NotCompiled`], so callers need no `#[cfg]`).
//!
//! **It cannot be stopped.** rumqttd has no shutdown API: [`EmbeddedBroker::start`] runs it on a
//! thread of its own, which (with the router and listener threads rumqttd starts) lives until the
//! process exits. Dropping the handle does not stop it. Start one per process (or one per test).
//!
//! Its limits suit sensor frames: packets up to [`MAX_PACKET_SIZE`] (rumqttd silently drops a
//! connection that sends a larger one), anonymous access, loopback only.

use std::net::SocketAddr;
#[cfg(feature = "embedded-broker")]
use std::time::Duration;

/// The largest MQTT packet the embedded broker accepts (8 MiB: any frame the protocol allows).
pub const MAX_PACKET_SIZE: usize = 8 * 1024 * 1024;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// This build has no embedded broker.
    #[error(
        "this ccm-twin was built without the embedded MQTT broker (cargo feature \
         `embedded-broker`); pass the address of a running broker (--broker HOST:PORT)"
    )]
    NotCompiled,
    /// The port could not be used.
    #[error(
        "the embedded MQTT broker could not listen on 127.0.0.1:{port}: {reason}; is another \
         broker running there? (choose another port, or 0 for any free one)"
    )]
    Listen {
        /// The port asked for.
        port: u16,
        /// What went wrong.
        reason: String,
    },
}

/// A running embedded broker; see the [module docs](self). Dropping the handle does not stop it.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker listening on `127.0.0.1:port` (`0`: any free port) and returns once it
    /// accepts connections.
    pub fn start(port: u16) -> Result<Self, BrokerError> {
        imp::start(port)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

#[cfg(not(feature = "embedded-broker"))]
mod imp {
    use super::{BrokerError, EmbeddedBroker};

    pub(super) fn start(_port: u16) -> Result<EmbeddedBroker, BrokerError> {
        Err(BrokerError::NotCompiled)
    }
}

#[cfg(feature = "embedded-broker")]
mod imp {
    use std::collections::HashMap;
    use std::io::{self, Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::time::Instant;

    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

    use super::{BrokerError, Duration, EmbeddedBroker, MAX_PACKET_SIZE};

    /// How long a new broker may take to accept connections.
    const READY_TIMEOUT: Duration = Duration::from_secs(5);

    pub(super) fn start(port: u16) -> Result<EmbeddedBroker, BrokerError> {
        // With port 0, pick a free port first (rumqttd cannot report the port it bound); should
        // another process take it in between, try another.
        let tries = if port == 0 { 3 } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            let chosen = if port == 0 { free_port(port)? } else { port };
            match start_on(chosen) {
                Ok(broker) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(BrokerError::Listen {
            port,
            reason: "no attempt made".into(),
        }))
    }

    fn free_port(port: u16) -> Result<u16, BrokerError> {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| BrokerError::Listen {
                port,
                reason: e.to_string(),
            })
    }

    fn start_on(port: u16) -> Result<EmbeddedBroker, BrokerError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Fail early and clearly if the port is taken (rumqttd would only log it).
        drop(TcpListener::bind(addr).map_err(|e| BrokerError::Listen {
            port,
            reason: e.to_string(),
        })?);
        let config = config(addr);
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-broker-{port}"))
            .spawn(move || {
                let mut broker = Broker::new(config);
                // Blocks for the life of the process; returns only if the listener failed.
                if let Err(e) = broker.start() {
                    tracing::error!(port, "embedded MQTT broker stopped: {e}");
                }
            })
            .map_err(|e| BrokerError::Listen {
                port,
                reason: format!("cannot start its thread: {e}"),
            })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if mqtt_handshake(addr).is_ok() {
                tracing::info!(%addr, "embedded MQTT broker listening");
                return Ok(EmbeddedBroker { addr });
            }
            if thread.is_finished() || Instant::now() > deadline {
                return Err(BrokerError::Listen {
                    port,
                    reason: "it did not start accepting connections".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects as an MQTT client and disconnects cleanly: the broker is up when this succeeds
    /// (a bare TCP probe would make rumqttd log an error about a broken CONNECT).
    fn mqtt_handshake(addr: SocketAddr) -> io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        const ID: &[u8] = b"ccm-twin-probe";
        // CONNECT: protocol "MQTT" level 4 (3.1.1), clean session, keep-alive 10 s, client id.
        let mut connect = vec![
            0x10,
            (12 + ID.len()) as u8,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            0x02,
            0,
            10,
        ];
        connect.extend_from_slice(&[0, ID.len() as u8]);
        connect.extend_from_slice(ID);
        stream.write_all(&connect)?;
        let mut connack = [0_u8; 4];
        stream.read_exact(&mut connack)?;
        if connack[0] != 0x20 || connack[3] != 0 {
            return Err(io::Error::other(format!(
                "unexpected CONNACK {connack:02x?}"
            )));
        }
        stream.write_all(&[0xe0, 0x00]) // DISCONNECT
    }

    fn config(addr: SocketAddr) -> Config {
        let connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            // rumqttd counts the whole packet and silently drops the connection beyond it.
            max_payload_size: MAX_PACKET_SIZE,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = ServerSettings {
            name: format!("ccm-twin-{}", addr.port()),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        let router = RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 256,
            // rumqttd keeps each topic's recent messages in memory: at most 3 segments of 8 MiB.
            max_segment_size: MAX_PACKET_SIZE,
            max_segment_count: 3,
            ..RouterConfig::default()
        };
        Config {
            id: 0,
            router,
            v4: Some(HashMap::from([("1".to_string(), server)])),
            ..Config::default()
        }
    }
}

#[cfg(all(test, not(feature = "embedded-broker")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_start_says_what_to_do_instead() {
        let err = EmbeddedBroker::start(0).unwrap_err();
        assert!(matches!(err, BrokerError::NotCompiled));
        assert!(err.to_string().contains("--broker HOST:PORT"), "{err}");
    }
}
