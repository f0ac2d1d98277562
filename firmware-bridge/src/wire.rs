//! The envelope every message travels in, encoding and decoding.
//!
//! ```text
//! magic "CT" | version u8 | kind u8 | body: varint length + bytes | crc32: 4 bytes LE
//! ```
//!
//! The envelope is read through serde (postcard's deserializer) by a visitor that never fails:
//! it turns a short or long input into a [`DecodeError`] value instead, so that the same code
//! serves plain slices ([`decode`]) and postcard's COBS accumulator ([`crate::StreamDecoder`])
//! and every rejection keeps its reason.

use core::fmt;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::chunk::Chunk;
use crate::error::{DecodeError, EncodeError, Field};
use crate::forecast::Forecast;
use crate::frame::SensorFrame;

/// The two bytes every message starts with: ASCII `"CT"` (0x43 0x54).
pub const MAGIC: [u8; 2] = *b"CT";

/// The protocol version this crate writes and reads.
pub const VERSION: u8 = 1;

/// The most bytes the envelope and chunk header add around a chunk's data (4 header bytes,
/// at most 5 for the body length, 5 + 3 + 3 + 5 for the chunk fields, 5 for the data length, 4 CRC
/// bytes). A chunk message with `n` data bytes is at most `n + CHUNK_OVERHEAD_MAX` bytes long
/// before COBS framing.
pub const CHUNK_OVERHEAD_MAX: usize = 34;

/// The most bytes a COBS-framed message of `len` bytes takes, the `0x00` delimiter included.
/// A [`crate::StreamDecoder`] needs a buffer at least this large for the longest message it
/// must accept.
pub const fn cobs_max_len(len: usize) -> usize {
    len + len / 254 + 2
}

/// CRC-32/ISO-HDLC (the zlib/PNG/Ethernet CRC), with a 1 KiB table.
static CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A [`SensorFrame`] (kind byte 1).
    Frame,
    /// A [`Chunk`] of a longer message (kind byte 2).
    Chunk,
    /// A [`Forecast`] (kind byte 3).
    Forecast,
}

impl MessageKind {
    /// The kind byte on the wire.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Frame => 1,
            Self::Chunk => 2,
            Self::Forecast => 3,
        }
    }

    /// The kind a kind byte names.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Frame),
            2 => Some(Self::Chunk),
            3 => Some(Self::Forecast),
            _ => None,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Frame => "frame",
            Self::Chunk => "chunk",
            Self::Forecast => "forecast",
        })
    }
}

pub(crate) mod sealed {
    use serde::ser::SerializeTuple;

    /// Writes a message's body fields, in wire order, as elements of a postcard tuple (which
    /// postcard writes back to back, with no framing of its own).
    pub trait Body {
        fn write_body<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error>;
    }
}

/// Reads a message's body fields, in wire order.
pub(crate) trait ReadBody<'a>: Sized {
    /// The body's last field, named when bytes follow it.
    const LAST_FIELD: Field;
    fn read_body(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

/// A cursor over a body that reads one postcard value per field and names the field in errors.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) const fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn take<T: Deserialize<'a>>(&mut self, field: Field) -> Result<T, DecodeError> {
        let (value, rest) = postcard::take_from_bytes::<T>(self.rest)
            .map_err(|e| DecodeError::from_postcard(e, field))?;
        self.rest = rest;
        Ok(value)
    }

    fn finish(self, last: Field) -> Result<(), DecodeError> {
        match self.rest.len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { field: last, count }),
        }
    }
}

/// A message that can be sent: a [`SensorFrame`], a [`Chunk`] or a [`Forecast`].
///
/// Every encoder validates first (a receiver would reject what fails [`Self::validate`]) and
/// needs no buffer besides `out`.
pub trait WireMessage: sealed::Body {
    /// The kind byte this message travels under.
    const KIND: MessageKind;

    /// Checks everything a receiver checks after reading the body: names, shape, counts,
    /// limits, finiteness.
    fn validate(&self) -> Result<(), DecodeError>;

    /// The length of [`Self::encode`]'s output.
    fn encoded_len(&self) -> Result<usize, EncodeError> {
        Ok(measure(self)?.total())
    }

    /// Writes the message (unframed, as sent on MQTT) into `out`; returns the bytes written.
    fn encode<'b>(&self, out: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        let m = measure(self)?;
        if out.len() < m.total() {
            return Err(EncodeError::BufferTooSmall {
                needed: m.total(),
                available: out.len(),
            });
        }
        let available = out.len();
        postcard::to_slice(&Envelope { msg: self, m }, out).map_err(|_| {
            EncodeError::BufferTooSmall {
                needed: m.total(),
                available,
            }
        })
    }

    /// Writes the message COBS-framed, `0x00` delimiter included (as sent on a byte stream),
    /// into `out`; returns the bytes written. `out` needs at most
    /// [`cobs_max_len`]`(self.encoded_len())` bytes.
    fn encode_cobs<'b>(&self, out: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        let m = measure(self)?;
        let available = out.len();
        postcard::to_slice_cobs(&Envelope { msg: self, m }, out).map_err(|_| {
            EncodeError::BufferTooSmall {
                needed: cobs_max_len(m.total()),
                available,
            }
        })
    }

    /// [`Self::encode`] into a new `Vec`.
    #[cfg(feature = "std")]
    fn to_vec(&self) -> Result<std::vec::Vec<u8>, EncodeError> {
        let mut out = std::vec![0; self.encoded_len()?];
        let len = self.encode(&mut out)?.len();
        out.truncate(len);
        Ok(out)
    }

    /// [`Self::encode_cobs`] into a new `Vec`.
    #[cfg(feature = "std")]
    fn to_vec_cobs(&self) -> Result<std::vec::Vec<u8>, EncodeError> {
        let mut out = std::vec![0; cobs_max_len(self.encoded_len()?)];
        let len = self.encode_cobs(&mut out)?.len();
        out.truncate(len);
        Ok(out)
    }
}

/// The body's length and the message's CRC, from a first pass over the body.
#[derive(Clone, Copy)]
struct Measured {
    kind: u8,
    body_len: usize,
    crc: u32,
}

impl Measured {
    /// Header, length prefix, body, CRC.
    const fn total(&self) -> usize {
        4 + varint_len(self.body_len) + self.body_len + 4
    }
}

const fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

const fn header(kind: u8) -> [u8; 4] {
    [MAGIC[0], MAGIC[1], VERSION, kind]
}

/// Validates, then serialises the body once into a flavor that only counts and hashes.
fn measure<M: WireMessage + ?Sized>(msg: &M) -> Result<Measured, EncodeError> {
    msg.validate()?;
    let kind = M::KIND.as_u8();
    let mut digest = CRC32.digest();
    digest.update(&header(kind));
    // `Measure` never fails and the body serialisers raise no errors: the error arm is unreachable.
    let (body_len, crc) =
        postcard::serialize_with_flavor(&BodyOnly(msg), Measure { digest, len: 0 }).map_err(
            |_| EncodeError::BufferTooSmall {
                needed: 0,
                available: 0,
            },
        )?;
    if body_len > u32::MAX as usize {
        return Err(EncodeError::Invalid(DecodeError::TooLarge {
            what: crate::error::Limit::MessageLen,
            value: body_len as u64,
            max: u64::from(u32::MAX),
        }));
    }
    Ok(Measured {
        kind,
        body_len,
        crc,
    })
}

/// A postcard flavor that keeps no bytes: it counts them and feeds them to the CRC.
struct Measure {
    digest: crc::Digest<'static, u32>,
    len: usize,
}

impl postcard::ser_flavors::Flavor for Measure {
    type Output = (usize, u32);

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.digest.update(data);
        self.len += data.len();
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        Ok((self.len, self.digest.finalize()))
    }
}

struct BodyOnly<'x, M: ?Sized>(&'x M);

impl<M: sealed::Body + ?Sized> Serialize for BodyOnly<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(usize::MAX)?;
        self.0.write_body(&mut t)?;
        t.end()
    }
}

/// The whole message as one postcard value: header bytes, body as a byte string (its varint
/// length, then the body fields back to back), CRC bytes.
struct Envelope<'x, M: ?Sized> {
    msg: &'x M,
    m: Measured,
}

impl<M: sealed::Body + ?Sized> Serialize for Envelope<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(usize::MAX)?;
        for b in header(self.m.kind) {
            t.serialize_element(&b)?;
        }
        t.serialize_element(&self.m.body_len)?;
        self.msg.write_body(&mut t)?;
        for b in self.m.crc.to_le_bytes() {
            t.serialize_element(&b)?;
        }
        t.end()
    }
}

/// A message whose envelope has been read: magic and version checked, CRC not yet.
pub(crate) struct RawEnvelope<'a> {
    kind: u8,
    body: &'a [u8],
    crc: u32,
}

impl<'a> RawEnvelope<'a> {
    /// Checks the CRC, then the kind.
    fn checked_kind(&self) -> Result<MessageKind, DecodeError> {
        let mut digest = CRC32.digest();
        digest.update(&header(self.kind));
        digest.update(self.body);
        let computed = digest.finalize();
        if computed != self.crc {
            return Err(DecodeError::BadCrc {
                carried: self.crc,
                computed,
            });
        }
        MessageKind::from_u8(self.kind).ok_or(DecodeError::UnknownKind { found: self.kind })
    }

    /// Checks the CRC and the kind, then reads and validates the body.
    pub(crate) fn decode(self) -> Result<Message<'a>, DecodeError> {
        Ok(match self.checked_kind()? {
            MessageKind::Frame => Message::Frame(read_body(self.body)?),
            MessageKind::Chunk => Message::Chunk(read_body(self.body)?),
            MessageKind::Forecast => Message::Forecast(read_body(self.body)?),
        })
    }

    fn decode_as<M: ReadBody<'a> + WireMessage>(self) -> Result<M, DecodeError> {
        let found = self.checked_kind()?;
        if found != M::KIND {
            return Err(DecodeError::WrongKind {
                expected: M::KIND,
                found,
            });
        }
        read_body(self.body)
    }
}

fn read_body<'a, M: ReadBody<'a> + WireMessage>(body: &'a [u8]) -> Result<M, DecodeError> {
    let mut r = Reader::new(body);
    let msg = M::read_body(&mut r)?;
    r.finish(M::LAST_FIELD)?;
    msg.validate()?;
    Ok(msg)
}

/// The outcome of reading an envelope; deserialising it never fails.
pub(crate) struct EnvelopeParse<'a>(pub(crate) Result<RawEnvelope<'a>, DecodeError>);

impl<'de> Deserialize<'de> for EnvelopeParse<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_tuple(usize::MAX, EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = EnvelopeParse<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ccm-twin message envelope")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        Ok(EnvelopeParse(read_envelope(&mut seq)))
    }
}

fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    field: Field,
) -> Result<T, DecodeError> {
    match seq.next_element::<T>() {
        Ok(Some(value)) => Ok(value),
        // postcard's only failures here are running out of input, or (for the body) a length
        // prefix that is not a varint; both mean the message is not whole.
        _ => Err(DecodeError::Truncated { field }),
    }
}

fn read_envelope<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<RawEnvelope<'de>, DecodeError> {
    let magic: [u8; 2] = next(seq, Field::Magic)?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version: u8 = next(seq, Field::Version)?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let kind: u8 = next(seq, Field::Kind)?;
    let body: &'de [u8] = next(seq, Field::Body)?;
    let crc: [u8; 4] = next(seq, Field::Crc)?;
    let mut extra = 0;
    while let Ok(Some(_)) = seq.next_element::<u8>() {
        extra += 1;
    }
    if extra > 0 {
        return Err(DecodeError::TrailingBytes {
            field: Field::Crc,
            count: extra,
        });
    }
    Ok(RawEnvelope {
        kind,
        body,
        crc: u32::from_le_bytes(crc),
    })
}

fn envelope(bytes: &[u8]) -> Result<RawEnvelope<'_>, DecodeError> {
    match postcard::from_bytes::<EnvelopeParse<'_>>(bytes) {
        Ok(parse) => parse.0,
        // Unreachable: the visitor never fails. Kept as an error, not a panic.
        Err(e) => Err(DecodeError::from_postcard(e, Field::Body)),
    }
}

/// Any message, decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Message<'a> {
    /// A sensor frame.
    Frame(SensorFrame<'a>),
    /// A chunk of a longer message; feed it to a [`crate::Reassembler`].
    Chunk(Chunk<'a>),
    /// A forecast.
    Forecast(Forecast<'a>),
}

impl Message<'_> {
    /// The message's kind.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Self::Frame(_) => MessageKind::Frame,
            Self::Chunk(_) => MessageKind::Chunk,
            Self::Forecast(_) => MessageKind::Forecast,
        }
    }

    /// Encodes the message (see [`WireMessage::encode`]).
    pub fn encode<'b>(&self, out: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        match self {
            Self::Frame(m) => m.encode(out),
            Self::Chunk(m) => m.encode(out),
            Self::Forecast(m) => m.encode(out),
        }
    }

    /// Encodes the message COBS-framed (see [`WireMessage::encode_cobs`]).
    pub fn encode_cobs<'b>(&self, out: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        match self {
            Self::Frame(m) => m.encode_cobs(out),
            Self::Chunk(m) => m.encode_cobs(out),
            Self::Forecast(m) => m.encode_cobs(out),
        }
    }
}

/// Decodes one unframed message (an MQTT payload, or a reassembled chunked message).
///
/// The result borrows strings and arrays from `bytes`; nothing is allocated or copied.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    envelope(bytes)?.decode()
}

/// Decodes one unframed message that must be a [`SensorFrame`].
pub fn decode_frame(bytes: &[u8]) -> Result<SensorFrame<'_>, DecodeError> {
    envelope(bytes)?.decode_as()
}

/// Decodes one unframed message that must be a [`Chunk`].
pub fn decode_chunk(bytes: &[u8]) -> Result<Chunk<'_>, DecodeError> {
    envelope(bytes)?.decode_as()
}

/// Decodes one unframed message that must be a [`Forecast`].
pub fn decode_forecast(bytes: &[u8]) -> Result<Forecast<'_>, DecodeError> {
    envelope(bytes)?.decode_as()
}

#[cfg(test)]
mod tests {
    //! The no_std path: fixed buffers only (also run with `--no-default-features`).

    use super::*;
    use crate::{Channels, GridShape, Sampling, Values};

    #[test]
    fn encodes_and_decodes_in_fixed_buffers() {
        let values = [1.0_f32, -2.0, 3.5, 0.25];
        let frame = SensorFrame {
            station: "mcu-7",
            seq: u32::MAX,
            timestamp_us: u64::MAX,
            channels: Channels::single("w"),
            shape: GridShape::new(2, 2, 1),
            sampling: Sampling::Dense,
            values: Values::f32(&values),
        };
        let mut buf = [0_u8; 64];
        let len = frame.encoded_len().unwrap();
        let bytes = frame.encode(&mut buf).unwrap();
        assert_eq!(bytes.len(), len);
        assert_eq!(decode_frame(bytes).unwrap(), frame);

        let mut framed = [0_u8; 80];
        let n = frame.encode_cobs(&mut framed).unwrap().len();
        assert_eq!(framed[n - 1], 0);
        let (msg, rest) = crate::decode_cobs(&mut framed[..n]).unwrap();
        assert_eq!(msg, Message::Frame(frame));
        assert!(rest.is_empty());
    }

    #[test]
    fn varint_len_matches_postcard() {
        for n in [
            0_usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            u32::MAX as usize,
        ] {
            let mut buf = [0_u8; 10];
            assert_eq!(
                postcard::to_slice(&n, &mut buf).unwrap().len(),
                varint_len(n),
                "{n}"
            );
        }
    }
}
