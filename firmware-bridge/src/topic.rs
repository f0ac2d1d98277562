//! MQTT topic names, QoS and retain flags.
//!
//! | topic                     | payload                                     | QoS | retained |
//! |---------------------------|---------------------------------------------|-----|----------|
//! | `ccm/<station>/frames`    | a [`SensorFrame`](crate::SensorFrame) or a [`Chunk`](crate::Chunk), binary | 1 | no |
//! | `ccm/<station>/forecast`  | a [`Forecast`](crate::Forecast), binary     | 1   | no       |
//! | `ccm/<station>/lead`      | a [`Forecast`](crate::Forecast) of its first step only, binary | 0 | no |
//! | `ccm/<station>/status`    | status JSON (`dashboard::StatusMessage`)    | 1   | yes      |
//! | `ccm/<station>/alerts`    | alert JSON (`dashboard::AlertMessage`)      | 1   | no       |
//!
//! Why: a frame must not be silently lost (the prefix needs consecutive frames), and QoS 1's
//! duplicates are harmless because frames carry a sequence number. A retained frame would be
//! replayed as if new after a reconnect, so frames are never retained. A forecast must reach a
//! consumer that archives forecasts or raises alarms, and its `based_on_seq` makes duplicates
//! harmless. The lead is a forecast's first step, published as soon as it is computed and
//! superseded by the whole forecast tens of milliseconds later, so it is not worth a
//! retransmission. The status is retained so
//! a dashboard that connects late sees the current state at once; the runtime also registers a
//! retained `state: "offline"` status as its MQTT last will. Alerts must arrive, carry an `id` so
//! duplicates can be dropped, and are not retained (an old alert must not fire again on connect).

use core::fmt;

use crate::error::{DecodeError, EncodeError};
use crate::frame::validate_station;

/// The first level of every topic.
pub const ROOT: &str = "ccm";

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// QoS 0: at most once.
    AtMostOnce = 0,
    /// QoS 1: at least once (duplicates possible).
    AtLeastOnce = 1,
    /// QoS 2: exactly once.
    ExactlyOnce = 2,
}

/// The five topics of a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `ccm/<station>/frames`: station → runtime, binary frames and chunks.
    Frames,
    /// `ccm/<station>/forecast`: runtime → consumers, binary forecasts.
    Forecast,
    /// `ccm/<station>/lead`: runtime → consumers, each forecast's first step (a binary forecast
    /// of horizon 1), published before the rest of the horizon is rolled.
    Lead,
    /// `ccm/<station>/status`: runtime → dashboards, retained JSON.
    Status,
    /// `ccm/<station>/alerts`: runtime → dashboards, JSON.
    Alerts,
}

impl Topic {
    /// All five.
    pub const ALL: [Self; 5] = [
        Self::Frames,
        Self::Forecast,
        Self::Lead,
        Self::Status,
        Self::Alerts,
    ];

    /// The last topic level.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Frames => "frames",
            Self::Forecast => "forecast",
            Self::Lead => "lead",
            Self::Status => "status",
            Self::Alerts => "alerts",
        }
    }

    /// The QoS to publish (and subscribe) with.
    pub const fn qos(self) -> QoS {
        match self {
            Self::Frames | Self::Forecast | Self::Status | Self::Alerts => QoS::AtLeastOnce,
            Self::Lead => QoS::AtMostOnce,
        }
    }

    /// Whether to publish with the retain flag.
    pub const fn retained(self) -> bool {
        matches!(self, Self::Status)
    }

    /// The filter that subscribes to this topic of every station, e.g. `ccm/+/frames`.
    pub const fn filter_all_stations(self) -> &'static str {
        match self {
            Self::Frames => "ccm/+/frames",
            Self::Forecast => "ccm/+/forecast",
            Self::Lead => "ccm/+/lead",
            Self::Status => "ccm/+/status",
            Self::Alerts => "ccm/+/alerts",
        }
    }

    /// Writes `ccm/<station>/<suffix>` into `buf` (no allocation); the station id is validated.
    pub fn write<'b>(self, station: &str, buf: &'b mut [u8]) -> Result<&'b str, EncodeError> {
        validate_station(station)?;
        let parts = [
            ROOT.as_bytes(),
            b"/",
            station.as_bytes(),
            b"/",
            self.suffix().as_bytes(),
        ];
        let needed = parts.iter().map(|p| p.len()).sum();
        let available = buf.len();
        let Some(out) = buf.get_mut(..needed) else {
            return Err(EncodeError::BufferTooSmall { needed, available });
        };
        let mut at = 0;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        // Only ASCII went in; an error here is unreachable but is not a panic.
        core::str::from_utf8(out).map_err(|_| EncodeError::BufferTooSmall { needed, available })
    }

    /// `ccm/<station>/<suffix>`; the station id is validated.
    #[cfg(feature = "std")]
    pub fn for_station(self, station: &str) -> Result<std::string::String, DecodeError> {
        validate_station(station)?;
        Ok(std::format!("{ROOT}/{station}/{}", self.suffix()))
    }

    /// Splits a topic into station and kind; `None` for any topic that is not one of ours.
    pub fn parse(topic: &str) -> Option<(&str, Self)> {
        let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
        let (station, suffix) = rest.split_once('/')?;
        validate_station(station).ok()?;
        let kind = Self::ALL.into_iter().find(|t| t.suffix() == suffix)?;
        Some((station, kind))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Checks a station id: 1–32 characters from `[A-Za-z0-9_.-]`.
pub fn validate_station_id(station: &str) -> Result<(), DecodeError> {
    validate_station(station)
}
