//! Sensor frame protocol shared by station firmware and the ccm-twin runtime.
//!
//! A sensor station (a microcontroller next to the sensors) samples a field — water depth on a
//! grid, the activator of a reactor, vorticity — and sends it to the twin runtime as a
//! [`SensorFrame`]. The runtime answers on MQTT with a [`Forecast`] and publishes JSON status and
//! alert messages for dashboards (`dashboard`, with the `std` feature). This crate is the one
//! definition of those bytes; `docs/PROTOCOL.md` in the repository describes them for senders
//! written in other languages, and a test keeps its worked example in step with this code.
//!
//! # The key design decision: a checked envelope around postcard, no allocator anywhere
//!
//! Every message is the postcard encoding of one small envelope:
//!
//! ```text
//! magic "CT" (2 bytes) | version (1 byte) | kind (1 byte) | body (varint length + bytes) | CRC-32 (4 bytes, LE)
//! ```
//!
//! * The body is the postcard encoding of the message's fields, in a fixed order. Large arrays
//!   (the field values, sensor coordinates, forecast timestamps) are carried as one postcard byte
//!   string of little-endian elements, so a decoder *borrows* them from the input instead of
//!   copying: [`decode`] allocates nothing and returns types with a lifetime tied to the input.
//! * The CRC-32 (CRC-32/ISO-HDLC, the zlib one) covers the header bytes and the body bytes and is
//!   checked *before* the body is interpreted, so a bit flipped on the wire is reported as
//!   [`DecodeError::BadCrc`], never as a confusing field error.
//! * Encoding runs the same validation as decoding: a sender cannot emit a frame the runtime would
//!   reject. Encoding needs no scratch buffer: one pass over the body measures it and computes the
//!   CRC, a second writes the bytes (optionally COBS-framed) straight into the caller's buffer.
//! * On byte streams (a UART) each message is COBS-framed and ends with `0x00`
//!   ([`WireMessage::encode_cobs`], [`StreamDecoder`], [`decode_cobs`], built on postcard's COBS
//!   support). On MQTT one publish carries one message, unframed.
//! * A message too large to send at once is cut into [`Chunk`]s ([`split`]), each a message of its
//!   own with its own CRC; a [`Reassembler`] with a fixed capacity puts them back together in any
//!   order and either delivers the whole message or drops it and counts the loss — never part
//!   of it.
//! * Every rejection is a [`DecodeError`] that says why; [`DecodeError::reason`] gives a fieldless
//!   [`RejectReason`] for counters. No input makes the decoder panic (a property test and a long
//!   fuzz run check this).
//!
//! # Example
//!
//! A station encodes a 2×3 single-channel frame for its UART; the runtime decodes the stream.
//!
//! ```
//! use firmware_bridge::{
//!     Channels, GridShape, Message, Sampling, SensorFrame, StreamDecoder, Values, WireMessage,
//! };
//!
//! // On the station: no allocator needed.
//! let depth = [0.0_f32, 0.5, 1.0, 1.5, 2.0, 2.5];
//! let frame = SensorFrame {
//!     station: "st-01",
//!     seq: 7,
//!     timestamp_us: 1_700_000_000_000_000,
//!     channels: Channels::single("h"),
//!     shape: GridShape::new(2, 3, 1),
//!     sampling: Sampling::Dense,
//!     values: Values::f32(&depth),
//! };
//! let mut tx = [0_u8; 128];
//! let wire = frame.encode_cobs(&mut tx)?;
//! assert_eq!(wire.last(), Some(&0x00)); // COBS frame delimiter
//!
//! // On the runtime: bytes arrive in arbitrary pieces.
//! let mut rx = StreamDecoder::<256>::new();
//! let mut received = None;
//! for piece in wire.chunks(7) {
//!     let mut rest = piece;
//!     while !rest.is_empty() {
//!         let (event, left) = rx.feed(rest);
//!         rest = left;
//!         if let Some(Ok(Message::Frame(f))) = event {
//!             received = Some((f.seq, f.values.iter().sum::<f32>()));
//!         }
//!     }
//! }
//! assert_eq!(received, Some((7, 7.5)));
//! # Ok::<(), firmware_bridge::EncodeError>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

mod chunk;
#[cfg(feature = "std")]
pub mod dashboard;
mod error;
mod forecast;
mod frame;
mod packed;
mod stream;
pub mod topic;
mod wire;

pub use chunk::{Chunk, Chunks, Push, Reassembler, ReassemblyStats, split};
pub use error::{
    ChunkProblem, DecodeError, EncodeError, Field, Limit, Malformation, RejectReason, ShapeProblem,
};
pub use forecast::Forecast;
pub use frame::{Channels, GridPoint, GridShape, Quantizer, Sampling, SensorFrame, Values};
pub use packed::{Packed, PackedIter, PackedSlice};
pub use stream::{StreamDecoder, decode_cobs};
pub use wire::{
    CHUNK_OVERHEAD_MAX, MAGIC, Message, MessageKind, VERSION, WireMessage, cobs_max_len, decode,
    decode_chunk, decode_forecast, decode_frame,
};

/// The limits a receiver enforces. A message over any of them is rejected with
/// [`DecodeError::TooLarge`] naming the [`Limit`]; a sender's encoder enforces the same.
pub mod limits {
    /// Longest station id, in bytes.
    pub const MAX_STATION_LEN: usize = 32;
    /// Most channels (named fields) in one frame or forecast.
    pub const MAX_CHANNELS: usize = 8;
    /// Longest channel name, in bytes.
    pub const MAX_CHANNEL_NAME_LEN: usize = 16;
    /// Most sensor points in one point-sampled frame.
    pub const MAX_POINTS: usize = 4096;
    /// Most values in one sensor frame (1 Mi; a 64×64×3 field has 12 288).
    pub const MAX_FRAME_VALUES: u64 = 1 << 20;
    /// Most forecast steps in one forecast.
    pub const MAX_HORIZON: usize = 1024;
    /// Most values in one forecast (16 Mi).
    pub const MAX_FORECAST_VALUES: u64 = 1 << 24;
    /// Most chunks one message may be cut into.
    pub const MAX_CHUNKS: usize = 1024;
}
