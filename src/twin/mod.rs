//! The edge side of ccm-twin: the MQTT link, the embedded broker, the station simulator and the
//! serial/UDP bridge. **This is the only module that owns IO and time**: everything else in the
//! library is pure and gets its inputs (frames, clocks, seeds) from here.
//!
//! * [`mqtt`] — [`MqttLink`](mqtt::MqttLink): one connection to a broker that never loses a
//!   message it has accepted while the process lives. It reconnects on its own, keeps a bounded
//!   buffer while the broker is away (dropping the **oldest** message first, and counting), and
//!   resends what was in flight when a connection broke (QoS 1: at least once).
//! * [`broker`] — [`EmbeddedBroker`](broker::EmbeddedBroker): an in-process MQTT broker
//!   (rumqttd, cargo feature `embedded-broker`) for the demo and the tests.
//! * [`simulator`] — [`StationSimulator`](simulator::StationSimulator): a sensor station made of
//!   a PDE solver; yields [`SensorFrame`](firmware_bridge::SensorFrame)s (full field or sensor
//!   points, noise, dropped frames, i16 quantisation), and [`run_simulation`](simulator::run_simulation)
//!   publishes them at a given pace.
//! * [`forecaster`] — [`Forecaster`](forecaster::Forecaster): the runtime's core without IO:
//!   frames in sequence order → prefix → CCM readout → in-place merge → `H`-step forecast, with
//!   nowcasts on every new frame and a re-read when the regime drifts.
//! * [`bridge`] — [`Bridge`](bridge::Bridge): reads COBS-framed messages from stdin, UDP or a
//!   serial device, validates them, reassembles chunks and forwards frames to MQTT, counting
//!   every rejection by reason.
//!
//! # The key design decision: the link owns the delivery guarantee
//!
//! rumqttc forgets unacknowledged messages when it reconnects with a clean session, and its
//! request queue blocks when full. So the link keeps its own queue: a message stays ours until
//! the broker acknowledges it; when a connection breaks, what was in flight goes back to the front
//! of the queue; only the queue's bound (a configured number of messages) ever drops anything, and
//! then the oldest, counted in [`LinkStats::dropped_oldest`](mqtt::LinkStats::dropped_oldest).
//! The rumqttc event loop runs in its own task and is never blocked by a publisher: publishers
//! hand messages over without waiting (`try_publish`), within a window smaller than the client's
//! request queue.
//!
//! ```no_run
//! use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
//! use firmware_bridge::topic::Topic;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let link = MqttLink::start(LinkOptions::new("127.0.0.1:1883".parse()?, "station-st-01"))?;
//! link.publish_to(Topic::Frames, "st-01", vec![/* an encoded SensorFrame */])?;
//! link.flush(std::time::Duration::from_secs(5)).await?; // wait until the broker has it
//! link.close().await;
//! # Ok(())
//! # }
//! ```

pub mod analysis;
pub mod bridge;
pub mod broker;
pub mod demo;
pub mod forecaster;
pub mod mapping;
pub mod metrics;
pub mod mqtt;
pub mod serve;
pub mod simulator;
pub mod update;

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in microseconds since the Unix epoch: what a station stamps its frames with.
/// The only place the library reads the wall clock; everything downstream takes time as input.
pub fn unix_time_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
