//! Why a message was rejected, and why one could not be encoded.

use core::fmt;

use crate::wire::MessageKind;

/// Why a message (or a chunk, or a COBS frame) was rejected.
///
/// Every rejection carries enough detail for a field engineer to act on it; [`Self::reason`]
/// collapses it to a fieldless [`RejectReason`] for counters. The decoder checks in this order:
/// envelope structure ([`Self::Truncated`], [`Self::TrailingBytes`]), [`Self::BadMagic`],
/// [`Self::UnsupportedVersion`], [`Self::BadCrc`], [`Self::UnknownKind`], then the body's fields,
/// then the body's meaning (names, shape, counts, limits, finiteness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside `field`: the message was cut short (or, for the body, its length
    /// prefix is malformed).
    Truncated {
        /// Where the input ran out.
        field: Field,
    },
    /// Bytes follow the end of `field` (the envelope's CRC, or the last field of the body).
    TrailingBytes {
        /// The part after which the extra bytes start.
        field: Field,
        /// How many extra bytes there are.
        count: usize,
    },
    /// The message does not start with [`crate::MAGIC`]: not a ccm-twin message at all.
    BadMagic {
        /// The two bytes found instead.
        found: [u8; 2],
    },
    /// The message was written for a protocol version this decoder does not speak.
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The CRC-32 carried by the message does not match its bytes: corrupted in transit.
    BadCrc {
        /// The CRC the message carries.
        carried: u32,
        /// The CRC of the bytes that arrived.
        computed: u32,
    },
    /// The kind byte names no message this decoder knows.
    UnknownKind {
        /// The kind byte found.
        found: u8,
    },
    /// A valid message of another kind arrived where a specific kind was expected.
    WrongKind {
        /// The kind the caller asked for.
        expected: MessageKind,
        /// The kind that arrived.
        found: MessageKind,
    },
    /// A COBS frame on a byte stream is not valid COBS (a lost or inserted byte).
    BadCobs,
    /// A body field could not be read as the type the protocol says it has.
    Malformed {
        /// The field.
        field: Field,
        /// What is wrong with it.
        problem: Malformation,
    },
    /// A station id or channel name is empty or uses characters outside `[A-Za-z0-9_.-]`
    /// (station) or printable ASCII (channel).
    InvalidName {
        /// [`Field::Station`] or [`Field::Channels`].
        field: Field,
    },
    /// The grid shape, the channel list and the sampled points do not fit together.
    ShapeMismatch {
        /// What does not fit.
        problem: ShapeProblem,
    },
    /// The number of values is not the number the shape calls for.
    ValueCountMismatch {
        /// Values the shape calls for.
        expected: u64,
        /// Values the message carries.
        found: u64,
    },
    /// A value (or the quantisation scale/offset, or `alpha`) is NaN or infinite.
    NonFinite {
        /// [`Field::Values`], [`Field::Encoding`] (index 0: scale, 1: offset) or [`Field::Alpha`].
        field: Field,
        /// The index of the first non-finite element.
        index: usize,
    },
    /// Forecast timestamps must increase strictly from one step to the next.
    TimestampsNotIncreasing {
        /// The first step whose timestamp is not after the previous one.
        index: usize,
    },
    /// Something is larger than the receiver accepts.
    TooLarge {
        /// Which limit.
        what: Limit,
        /// The size found (for [`Limit::StreamFrame`]: the receive buffer's size plus one).
        value: u64,
        /// The largest size accepted.
        max: u64,
    },
    /// A chunk's header is inconsistent with itself or with other chunks of the same message.
    BadChunk {
        /// What is inconsistent.
        problem: ChunkProblem,
    },
}

impl DecodeError {
    /// The fieldless reason, for counters (`frames_rejected` in the status message).
    pub const fn reason(&self) -> RejectReason {
        match self {
            Self::Truncated { .. } => RejectReason::Truncated,
            Self::TrailingBytes { .. } => RejectReason::TrailingBytes,
            Self::BadMagic { .. } => RejectReason::BadMagic,
            Self::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            Self::BadCrc { .. } => RejectReason::BadCrc,
            Self::UnknownKind { .. } => RejectReason::UnknownKind,
            Self::WrongKind { .. } => RejectReason::WrongKind,
            Self::BadCobs => RejectReason::BadCobs,
            Self::Malformed { .. } => RejectReason::Malformed,
            Self::InvalidName { .. } => RejectReason::InvalidName,
            Self::ShapeMismatch { .. } => RejectReason::ShapeMismatch,
            Self::ValueCountMismatch { .. } => RejectReason::ValueCountMismatch,
            Self::NonFinite { .. } => RejectReason::NonFinite,
            Self::TimestampsNotIncreasing { .. } => RejectReason::TimestampsNotIncreasing,
            Self::TooLarge { .. } => RejectReason::TooLarge,
            Self::BadChunk { .. } => RejectReason::BadChunk,
        }
    }

    /// Maps a postcard error met while reading `field` of a body.
    pub(crate) fn from_postcard(err: postcard::Error, field: Field) -> Self {
        use postcard::Error as P;
        let problem = match err {
            P::DeserializeUnexpectedEnd => return Self::Truncated { field },
            P::DeserializeBadVarint => Malformation::BadVarint,
            P::DeserializeBadUtf8 => Malformation::BadUtf8,
            _ => Malformation::Other,
        };
        Self::Malformed { field, problem }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { field } => write!(
                f,
                "message truncated: the input ended inside `{field}` (a lost byte or a cut-off \
                 transfer)"
            ),
            Self::TrailingBytes { field, count } => {
                write!(f, "{count} unexpected byte(s) after `{field}`")
            }
            Self::BadMagic { found } => write!(
                f,
                "not a ccm-twin message: starts with {:02x} {:02x}, expected 43 54 (\"CT\")",
                found[0], found[1]
            ),
            Self::UnsupportedVersion { found } => write!(
                f,
                "protocol version {found} is not supported (this runtime speaks version {})",
                crate::VERSION
            ),
            Self::BadCrc { carried, computed } => write!(
                f,
                "CRC mismatch: the message carries {carried:#010x} but its bytes give \
                 {computed:#010x} (corrupted in transit: check the link)"
            ),
            Self::UnknownKind { found } => write!(f, "unknown message kind {found}"),
            Self::WrongKind { expected, found } => {
                write!(f, "expected a {expected} message, got a {found} message")
            }
            Self::BadCobs => {
                write!(
                    f,
                    "invalid COBS framing on the byte stream (a byte was lost or inserted)"
                )
            }
            Self::Malformed { field, problem } => {
                write!(f, "field `{field}` is malformed: {problem}")
            }
            Self::InvalidName {
                field: Field::Station,
            } => write!(
                f,
                "invalid station id: it must be 1-{} characters from [A-Za-z0-9_.-]",
                crate::limits::MAX_STATION_LEN
            ),
            Self::InvalidName { field } => write!(
                f,
                "invalid name in `{field}`: names must be 1-{} printable ASCII characters",
                crate::limits::MAX_CHANNEL_NAME_LEN
            ),
            Self::ShapeMismatch { problem } => write!(f, "shape mismatch: {problem}"),
            Self::ValueCountMismatch { expected, found } => write!(
                f,
                "value count mismatch: the shape calls for {expected} values, the message carries \
                 {found}"
            ),
            Self::NonFinite {
                field: Field::Encoding,
                index,
            } => write!(
                f,
                "the quantisation {} is NaN or infinite",
                if *index == 0 { "scale" } else { "offset" }
            ),
            Self::NonFinite { field, index } => {
                write!(f, "`{field}` element {index} is NaN or infinite")
            }
            Self::TimestampsNotIncreasing { index } => write!(
                f,
                "forecast timestamps must increase: step {index} is not after step {}",
                index.saturating_sub(1)
            ),
            Self::TooLarge {
                what: Limit::StreamFrame,
                max,
                ..
            } => write!(
                f,
                "a COBS frame is longer than the {max}-byte receive buffer; it was dropped"
            ),
            Self::TooLarge { what, value, max } => {
                write!(f, "too large: {what} is {value}, at most {max} accepted")
            }
            Self::BadChunk { problem } => write!(f, "bad chunk: {problem}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// A fieldless [`DecodeError`], for counting rejections by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// [`DecodeError::Truncated`]
    Truncated,
    /// [`DecodeError::TrailingBytes`]
    TrailingBytes,
    /// [`DecodeError::BadMagic`]
    BadMagic,
    /// [`DecodeError::UnsupportedVersion`]
    UnsupportedVersion,
    /// [`DecodeError::BadCrc`]
    BadCrc,
    /// [`DecodeError::UnknownKind`]
    UnknownKind,
    /// [`DecodeError::WrongKind`]
    WrongKind,
    /// [`DecodeError::BadCobs`]
    BadCobs,
    /// [`DecodeError::Malformed`]
    Malformed,
    /// [`DecodeError::InvalidName`]
    InvalidName,
    /// [`DecodeError::ShapeMismatch`]
    ShapeMismatch,
    /// [`DecodeError::ValueCountMismatch`]
    ValueCountMismatch,
    /// [`DecodeError::NonFinite`]
    NonFinite,
    /// [`DecodeError::TimestampsNotIncreasing`]
    TimestampsNotIncreasing,
    /// [`DecodeError::TooLarge`]
    TooLarge,
    /// [`DecodeError::BadChunk`]
    BadChunk,
}

impl RejectReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 16] = [
        Self::Truncated,
        Self::TrailingBytes,
        Self::BadMagic,
        Self::UnsupportedVersion,
        Self::BadCrc,
        Self::UnknownKind,
        Self::WrongKind,
        Self::BadCobs,
        Self::Malformed,
        Self::InvalidName,
        Self::ShapeMismatch,
        Self::ValueCountMismatch,
        Self::NonFinite,
        Self::TimestampsNotIncreasing,
        Self::TooLarge,
        Self::BadChunk,
    ];

    /// The stable snake_case name used as a counter key in the JSON status message.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadCrc => "bad_crc",
            Self::UnknownKind => "unknown_kind",
            Self::WrongKind => "wrong_kind",
            Self::BadCobs => "bad_cobs",
            Self::Malformed => "malformed",
            Self::InvalidName => "invalid_name",
            Self::ShapeMismatch => "shape_mismatch",
            Self::ValueCountMismatch => "value_count_mismatch",
            Self::NonFinite => "non_finite",
            Self::TimestampsNotIncreasing => "timestamps_not_increasing",
            Self::TooLarge => "too_large",
            Self::BadChunk => "bad_chunk",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A part of a message: an envelope part or a body field. Names match `docs/PROTOCOL.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// Envelope: the two magic bytes.
    Magic,
    /// Envelope: the version byte.
    Version,
    /// Envelope: the kind byte.
    Kind,
    /// Envelope: the length-prefixed body.
    Body,
    /// Envelope: the four CRC bytes.
    Crc,
    /// Frame and forecast: the station id.
    Station,
    /// Frame: the sequence number.
    Seq,
    /// Frame: the sampling time.
    Timestamp,
    /// Frame and forecast: the channel names.
    Channels,
    /// Frame and forecast: the grid shape.
    Shape,
    /// Frame: dense or point sampling.
    Sampling,
    /// Frame: the sensor points' grid coordinates.
    Points,
    /// Frame and forecast: the value encoding (f32, or i16 with scale and offset).
    Encoding,
    /// Frame and forecast: the values.
    Values,
    /// Forecast: the sequence number of the frame the forecast starts from.
    BasedOnSeq,
    /// Forecast: when the runtime issued it.
    IssuedAt,
    /// Forecast: the CCM coordinate.
    Alpha,
    /// Forecast: one timestamp per forecast step.
    Timestamps,
    /// Chunk: the sequence number of the chunked message.
    ChunkSeq,
    /// Chunk: this chunk's index.
    ChunkIndex,
    /// Chunk: the number of chunks.
    ChunkCount,
    /// Chunk: the length of the whole chunked message.
    TotalLen,
    /// Chunk: the chunk's bytes.
    ChunkData,
}

impl Field {
    /// The field's name as `docs/PROTOCOL.md` spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Magic => "magic",
            Self::Version => "version",
            Self::Kind => "kind",
            Self::Body => "body",
            Self::Crc => "crc",
            Self::Station => "station",
            Self::Seq => "seq",
            Self::Timestamp => "timestamp_us",
            Self::Channels => "channels",
            Self::Shape => "shape",
            Self::Sampling => "sampling",
            Self::Points => "points",
            Self::Encoding => "encoding",
            Self::Values => "values",
            Self::BasedOnSeq => "based_on_seq",
            Self::IssuedAt => "issued_at_us",
            Self::Alpha => "alpha",
            Self::Timestamps => "timestamps_us",
            Self::ChunkSeq => "frame_seq",
            Self::ChunkIndex => "index",
            Self::ChunkCount => "count",
            Self::TotalLen => "total_len",
            Self::ChunkData => "data",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a malformed field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformation {
    /// A varint is too long or overflows the field's integer type.
    BadVarint,
    /// A string is not UTF-8.
    BadUtf8,
    /// A tag (enum discriminant) names no variant.
    UnknownTag {
        /// The tag read.
        tag: u32,
    },
    /// A packed array's byte length is not a multiple of its element size.
    RaggedArray {
        /// The byte length found.
        bytes: usize,
        /// The element size in bytes.
        element: usize,
    },
    /// Any other decoding failure reported by postcard.
    Other,
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVarint => f.write_str("varint too long or out of range"),
            Self::BadUtf8 => f.write_str("not valid UTF-8"),
            Self::UnknownTag { tag } => write!(f, "unknown tag {tag}"),
            Self::RaggedArray { bytes, element } => write!(
                f,
                "{bytes} bytes is not a whole number of {element}-byte elements"
            ),
            Self::Other => f.write_str("undecodable"),
        }
    }
}

/// How a shape does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShapeProblem {
    /// Rows, columns, channels or forecast steps is zero.
    ZeroDimension,
    /// The number of channel names differs from the shape's channel count.
    ChannelCount {
        /// Channel names carried.
        names: usize,
        /// Channels in the shape.
        shape: u8,
    },
    /// A point-sampled frame lists no points.
    NoPoints,
    /// A sensor point lies outside the grid.
    PointOutsideGrid {
        /// The point's index in the list.
        index: usize,
    },
}

impl fmt::Display for ShapeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroDimension => {
                f.write_str("a dimension (rows, cols, channels or steps) is zero")
            }
            Self::ChannelCount { names, shape } => write!(
                f,
                "{names} channel name(s) for a shape with {shape} channel(s)"
            ),
            Self::NoPoints => f.write_str("a point-sampled frame lists no points"),
            Self::PointOutsideGrid { index } => {
                write!(f, "sensor point {index} lies outside the grid")
            }
        }
    }
}

/// How a chunk is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkProblem {
    /// The chunk count is zero.
    ZeroCount,
    /// The index is not below the count.
    IndexOutOfRange {
        /// The chunk's index.
        index: u16,
        /// The chunk count.
        count: u16,
    },
    /// The chunk carries no bytes.
    Empty,
    /// The chunk's length does not fit the layout its index, count and total length imply (all
    /// chunks but the last carry the same number of bytes; the last carries the rest, at least
    /// one byte and no more than the others).
    Layout,
    /// The chunk disagrees with earlier chunks of the same message (count, total length or chunk
    /// size).
    Conflicting,
}

impl fmt::Display for ChunkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroCount => f.write_str("chunk count is zero"),
            Self::IndexOutOfRange { index, count } => {
                write!(
                    f,
                    "chunk index {index} is not below the chunk count {count}"
                )
            }
            Self::Empty => f.write_str("chunk carries no bytes"),
            Self::Layout => {
                f.write_str("chunk length does not fit its index, count and total length")
            }
            Self::Conflicting => {
                f.write_str("chunk disagrees with earlier chunks of the same message")
            }
        }
    }
}

/// Which receiver limit was exceeded (see [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// [`crate::limits::MAX_STATION_LEN`]
    StationLen,
    /// [`crate::limits::MAX_CHANNELS`]
    Channels,
    /// [`crate::limits::MAX_CHANNEL_NAME_LEN`]
    ChannelNameLen,
    /// [`crate::limits::MAX_POINTS`]
    Points,
    /// [`crate::limits::MAX_FRAME_VALUES`]
    FrameValues,
    /// [`crate::limits::MAX_HORIZON`]
    Horizon,
    /// [`crate::limits::MAX_FORECAST_VALUES`]
    ForecastValues,
    /// [`crate::limits::MAX_CHUNKS`]
    Chunks,
    /// A chunked message is longer than the reassembler's buffers.
    ReassemblyCapacity,
    /// A COBS frame is longer than the stream decoder's buffer.
    StreamFrame,
    /// A message is longer than the protocol can describe (4 GiB).
    MessageLen,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StationLen => "the station id length",
            Self::Channels => "the number of channels",
            Self::ChannelNameLen => "a channel name's length",
            Self::Points => "the number of sensor points",
            Self::FrameValues => "the number of values in the frame",
            Self::Horizon => "the number of forecast steps",
            Self::ForecastValues => "the number of values in the forecast",
            Self::Chunks => "the number of chunks",
            Self::ReassemblyCapacity => "the chunked message's length (reassembly buffer)",
            Self::StreamFrame => "the COBS frame's length (receive buffer)",
            Self::MessageLen => "the message length",
        })
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small.
    BufferTooSmall {
        /// Bytes needed (for COBS output: an upper bound).
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The message is invalid: a receiver would reject it for this reason.
    Invalid(DecodeError),
}

impl From<DecodeError> for EncodeError {
    fn from(err: DecodeError) -> Self {
        Self::Invalid(err)
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed, available } => write!(
                f,
                "output buffer too small: {needed} bytes needed, {available} available"
            ),
            Self::Invalid(_) => f.write_str("refusing to encode an invalid message"),
        }
    }
}

impl core::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Invalid(err) => Some(err),
            Self::BufferTooSmall { .. } => None,
        }
    }
}
