//! The sensor frame a station sends, and the pieces it shares with the forecast.

use core::fmt;

use serde::ser::SerializeTuple;

use crate::error::{DecodeError, Field, Limit, Malformation, ShapeProblem};
use crate::limits::{
    MAX_CHANNEL_NAME_LEN, MAX_CHANNELS, MAX_FRAME_VALUES, MAX_POINTS, MAX_STATION_LEN,
};
use crate::packed::PackedSlice;
use crate::wire::{MessageKind, ReadBody, Reader, WireMessage, sealed};

/// One sample of a field, taken by a station at one instant.
///
/// Values are ordered channel-major: `[channel][row][col]` for a dense frame (index
/// `(c * rows + r) * cols + col`) and `[channel][point]` for a point-sampled one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorFrame<'a> {
    /// The station id: 1–32 characters from `[A-Za-z0-9_.-]`; also the MQTT topic level.
    pub station: &'a str,
    /// Sequence number, incremented by one per frame; wraps at `u32::MAX`.
    pub seq: u32,
    /// Sampling time in microseconds since the Unix epoch (UTC).
    pub timestamp_us: u64,
    /// The channel names, one per channel of the shape (`"h"`, `"hu"`, `"hv"`, ...).
    pub channels: Channels<'a>,
    /// The grid the field lives on.
    pub shape: GridShape,
    /// Whether the whole grid is sampled or only some points of it.
    pub sampling: Sampling<'a>,
    /// The values, as f32 or quantised to i16.
    pub values: Values<'a>,
}

impl SensorFrame<'_> {
    /// Number of values the shape and sampling call for.
    pub fn expected_values(&self) -> u64 {
        u64::from(self.shape.channels) * self.positions()
    }

    /// Number of sampled positions per channel: `rows * cols`, or the number of points.
    pub fn positions(&self) -> u64 {
        match self.sampling {
            Sampling::Dense => u64::from(self.shape.rows) * u64::from(self.shape.cols),
            Sampling::Points(points) => points.len() as u64,
        }
    }

    /// The value of `channel` at `position` (`row * cols + col` for a dense frame, the point's
    /// index for a point-sampled one), dequantised.
    pub fn get(&self, channel: usize, position: usize) -> Option<f32> {
        let positions = usize::try_from(self.positions()).ok()?;
        if channel >= usize::from(self.shape.channels) || position >= positions {
            return None;
        }
        self.values
            .get(channel.checked_mul(positions)?.checked_add(position)?)
    }

    /// The value of `channel` at grid cell (`row`, `col`) of a dense frame.
    pub fn dense(&self, channel: usize, row: u16, col: u16) -> Option<f32> {
        if !matches!(self.sampling, Sampling::Dense)
            || row >= self.shape.rows
            || col >= self.shape.cols
        {
            return None;
        }
        self.get(
            channel,
            usize::from(row) * usize::from(self.shape.cols) + usize::from(col),
        )
    }
}

impl WireMessage for SensorFrame<'_> {
    const KIND: MessageKind = MessageKind::Frame;

    fn validate(&self) -> Result<(), DecodeError> {
        validate_station(self.station)?;
        self.channels.validate()?;
        self.shape.validate(&self.channels)?;
        if let Sampling::Points(points) = self.sampling {
            if points.is_empty() {
                return Err(DecodeError::ShapeMismatch {
                    problem: ShapeProblem::NoPoints,
                });
            }
            if points.len() > MAX_POINTS {
                return Err(too_large(
                    Limit::Points,
                    points.len() as u64,
                    MAX_POINTS as u64,
                ));
            }
            if let Some(index) = points
                .iter()
                .position(|p| p.row >= self.shape.rows || p.col >= self.shape.cols)
            {
                return Err(DecodeError::ShapeMismatch {
                    problem: ShapeProblem::PointOutsideGrid { index },
                });
            }
        }
        let expected = self.expected_values();
        if expected > MAX_FRAME_VALUES {
            return Err(too_large(Limit::FrameValues, expected, MAX_FRAME_VALUES));
        }
        self.values.validate(expected)
    }
}

impl sealed::Body for SensorFrame<'_> {
    fn write_body<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        t.serialize_element(self.station)?;
        t.serialize_element(&self.seq)?;
        t.serialize_element(&self.timestamp_us)?;
        self.channels.write(t)?;
        self.shape.write(t)?;
        match &self.sampling {
            Sampling::Dense => t.serialize_element(&SAMPLING_DENSE)?,
            Sampling::Points(points) => {
                t.serialize_element(&SAMPLING_POINTS)?;
                points.serialize_into(t)?;
            }
        }
        self.values.write(t)
    }
}

impl<'a> ReadBody<'a> for SensorFrame<'a> {
    const LAST_FIELD: Field = Field::Values;

    fn read_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let station = r.take(Field::Station)?;
        let seq = r.take(Field::Seq)?;
        let timestamp_us = r.take(Field::Timestamp)?;
        let channels = Channels::read(r)?;
        let shape = GridShape::read(r)?;
        let sampling = match r.take::<u32>(Field::Sampling)? {
            SAMPLING_DENSE => Sampling::Dense,
            SAMPLING_POINTS => Sampling::Points(PackedSlice::read(r, Field::Points)?),
            tag => return Err(unknown_tag(Field::Sampling, tag)),
        };
        let values = Values::read(r)?;
        Ok(Self {
            station,
            seq,
            timestamp_us,
            channels,
            shape,
            sampling,
            values,
        })
    }
}

const SAMPLING_DENSE: u32 = 0;
const SAMPLING_POINTS: u32 = 1;
const ENCODING_F32: u32 = 0;
const ENCODING_I16: u32 = 1;

pub(crate) const fn too_large(what: Limit, value: u64, max: u64) -> DecodeError {
    DecodeError::TooLarge { what, value, max }
}

const fn unknown_tag(field: Field, tag: u32) -> DecodeError {
    DecodeError::Malformed {
        field,
        problem: Malformation::UnknownTag { tag },
    }
}

/// Checks a station id: 1–32 characters from `[A-Za-z0-9_.-]`, so it is safe as an MQTT topic
/// level (no `/`, `+`, `#` or leading `$`).
pub(crate) fn validate_station(station: &str) -> Result<(), DecodeError> {
    if station.len() > MAX_STATION_LEN {
        return Err(too_large(
            Limit::StationLen,
            station.len() as u64,
            MAX_STATION_LEN as u64,
        ));
    }
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if station.is_empty() || !station.bytes().all(|b| ok(&b)) {
        return Err(DecodeError::InvalidName {
            field: Field::Station,
        });
    }
    Ok(())
}

/// The grid a field lives on: `rows × cols` cells with `channels` values each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GridShape {
    /// Grid rows (the y direction).
    pub rows: u16,
    /// Grid columns (the x direction).
    pub cols: u16,
    /// Values per cell (physical fields), 1–8.
    pub channels: u8,
}

impl GridShape {
    /// A shape.
    pub const fn new(rows: u16, cols: u16, channels: u8) -> Self {
        Self {
            rows,
            cols,
            channels,
        }
    }

    /// `rows * cols * channels`.
    pub const fn len(&self) -> u64 {
        self.rows as u64 * self.cols as u64 * self.channels as u64
    }

    /// Whether a dimension is zero.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn validate(&self, channels: &Channels<'_>) -> Result<(), DecodeError> {
        if self.is_empty() {
            return Err(DecodeError::ShapeMismatch {
                problem: ShapeProblem::ZeroDimension,
            });
        }
        if channels.len() != usize::from(self.channels) {
            return Err(DecodeError::ShapeMismatch {
                problem: ShapeProblem::ChannelCount {
                    names: channels.len(),
                    shape: self.channels,
                },
            });
        }
        Ok(())
    }

    pub(crate) fn write<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        t.serialize_element(&self.rows)?;
        t.serialize_element(&self.cols)?;
        t.serialize_element(&self.channels)
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            rows: r.take(Field::Shape)?,
            cols: r.take(Field::Shape)?,
            channels: r.take(Field::Shape)?,
        })
    }
}

/// A sensor's position on the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GridPoint {
    /// Row index, `0..rows`.
    pub row: u16,
    /// Column index, `0..cols`.
    pub col: u16,
}

impl GridPoint {
    /// A point.
    pub const fn new(row: u16, col: u16) -> Self {
        Self { row, col }
    }
}

/// Which cells of the grid a frame samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling<'a> {
    /// Every cell, row-major.
    Dense,
    /// Only these cells (sparse sensors), in this order; they should be distinct.
    Points(PackedSlice<'a, GridPoint>),
}

/// The channel names of a frame or forecast: 1–8 names of 1–16 printable ASCII characters.
///
/// Stored in a fixed array, so decoding borrows the names from the input without allocating.
#[derive(Clone, Copy)]
pub struct Channels<'a> {
    names: [&'a str; MAX_CHANNELS],
    len: u8,
}

impl<'a> Channels<'a> {
    /// A single channel.
    pub const fn single(name: &'a str) -> Self {
        let mut names = [""; MAX_CHANNELS];
        names[0] = name;
        Self { names, len: 1 }
    }

    /// Up to [`MAX_CHANNELS`](crate::limits::MAX_CHANNELS) channels; more is
    /// [`DecodeError::TooLarge`]. The names are checked when the message is validated.
    pub fn new(names: &[&'a str]) -> Result<Self, DecodeError> {
        if names.len() > MAX_CHANNELS {
            return Err(too_large(
                Limit::Channels,
                names.len() as u64,
                MAX_CHANNELS as u64,
            ));
        }
        let mut out = [""; MAX_CHANNELS];
        out[..names.len()].copy_from_slice(names);
        Ok(Self {
            names: out,
            len: names.len() as u8,
        })
    }

    /// The names.
    pub fn as_slice(&self) -> &[&'a str] {
        &self.names[..usize::from(self.len)]
    }

    /// Number of channels.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none (never true of a valid message).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The index of the channel called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.as_slice().iter().position(|n| *n == name)
    }

    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        for name in self.as_slice() {
            if name.len() > MAX_CHANNEL_NAME_LEN {
                return Err(too_large(
                    Limit::ChannelNameLen,
                    name.len() as u64,
                    MAX_CHANNEL_NAME_LEN as u64,
                ));
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(DecodeError::InvalidName {
                    field: Field::Channels,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn write<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        t.serialize_element(&self.len())?;
        self.as_slice()
            .iter()
            .try_for_each(|name| t.serialize_element(*name))
    }

    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let count: u32 = r.take(Field::Channels)?;
        if count as usize > MAX_CHANNELS {
            return Err(too_large(
                Limit::Channels,
                u64::from(count),
                MAX_CHANNELS as u64,
            ));
        }
        let mut names = [""; MAX_CHANNELS];
        for name in names.iter_mut().take(count as usize) {
            *name = r.take(Field::Channels)?;
        }
        Ok(Self {
            names,
            len: count as u8,
        })
    }
}

impl PartialEq for Channels<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for Channels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Linear i16 quantisation: `value = offset + scale * q`.
///
/// `q = -32768` is reserved: it dequantises to NaN (a sensor fault), so a quantised frame that
/// carries it is rejected exactly like a NaN in an f32 frame. [`Self::quantize`] never produces it
/// for a finite value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Value step per count; may be zero (a constant field).
    pub scale: f32,
    /// Value at `q = 0`.
    pub offset: f32,
}

impl Quantizer {
    /// The reserved count that stands for "no finite value".
    pub const NAN: i16 = i16::MIN;

    /// A quantiser.
    pub const fn new(scale: f32, offset: f32) -> Self {
        Self { scale, offset }
    }

    /// The quantiser that spans `[min, max]` with the full range `-32767..=32767`.
    pub fn for_range(min: f32, max: f32) -> Self {
        let offset = min / 2.0 + max / 2.0;
        // (max - min) / 65534, halved first so that a range wider than f32::MAX stays finite.
        let scale = (max / 2.0 - min / 2.0) / 32767.0;
        Self { scale, offset }
    }

    /// The count nearest to `value`, saturated to `-32767..=32767`; [`Self::NAN`] for a NaN or
    /// infinite value (or if the quantiser itself is not finite), so that a sensor fault stays
    /// visible to the receiver instead of turning into a plausible number.
    pub fn quantize(&self, value: f32) -> i16 {
        if !value.is_finite() || !self.scale.is_finite() || !self.offset.is_finite() {
            return Self::NAN;
        }
        if self.scale == 0.0 {
            return 0;
        }
        let x = (value - self.offset) / self.scale;
        if x.is_nan() {
            return Self::NAN;
        }
        // Round half away from zero (`f32::round` is not in `core`); `as` truncates toward zero.
        // The clamp keeps -32768 (reserved) out.
        let x = x.clamp(-32767.0, 32767.0);
        (if x < 0.0 { x - 0.5 } else { x + 0.5 }) as i16
    }

    /// Quantises `values` into `out` (which must be at least as long; extra entries are left).
    pub fn quantize_into(&self, values: &[f32], out: &mut [i16]) {
        out.iter_mut()
            .zip(values)
            .for_each(|(q, v)| *q = self.quantize(*v));
    }

    /// The value a count stands for (NaN for [`Self::NAN`]).
    pub fn dequantize(&self, q: i16) -> f32 {
        if q == Self::NAN {
            f32::NAN
        } else {
            self.offset + self.scale * f32::from(q)
        }
    }
}

/// The values of a frame or forecast and how they are encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Values<'a> {
    /// IEEE-754 single precision, little-endian, 4 bytes per value.
    F32(PackedSlice<'a, f32>),
    /// Quantised: two bytes per value (little-endian i16), `value = offset + scale * q`.
    I16 {
        /// How the counts map to values.
        quantizer: Quantizer,
        /// The counts.
        data: PackedSlice<'a, i16>,
    },
}

impl<'a> Values<'a> {
    /// f32 values.
    pub const fn f32(values: &'a [f32]) -> Self {
        Self::F32(PackedSlice::new(values))
    }

    /// Quantised values.
    pub const fn i16(counts: &'a [i16], quantizer: Quantizer) -> Self {
        Self::I16 {
            quantizer,
            data: PackedSlice::new(counts),
        }
    }

    /// Number of values.
    pub const fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::I16 { data, .. } => data.len(),
        }
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `index`, dequantised.
    pub fn get(&self, index: usize) -> Option<f32> {
        match self {
            Self::F32(v) => v.get(index),
            Self::I16 { quantizer, data } => data.get(index).map(|q| quantizer.dequantize(q)),
        }
    }

    /// The values in order, dequantised.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = f32> + ExactSizeIterator + 'a {
        let (f, q, quantizer) = match *self {
            Self::F32(v) => (Some(v.iter()), None, Quantizer::new(0.0, 0.0)),
            Self::I16 { quantizer, data } => (None, Some(data.iter()), quantizer),
        };
        EitherIter { f, q, quantizer }
    }

    /// Copies the values (dequantised) into `out`; returns how many were written.
    pub fn copy_to(&self, out: &mut [f32]) -> usize {
        out.iter_mut().zip(self.iter()).map(|(o, v)| *o = v).count()
    }

    /// Copies the values (dequantised) into a `Vec`.
    #[cfg(feature = "std")]
    pub fn to_vec(&self) -> std::vec::Vec<f32> {
        self.iter().collect()
    }

    /// Checks the count against `expected` and that every value (and the quantiser) is finite.
    pub(crate) fn validate(&self, expected: u64) -> Result<(), DecodeError> {
        if self.len() as u64 != expected {
            return Err(DecodeError::ValueCountMismatch {
                expected,
                found: self.len() as u64,
            });
        }
        if let Self::I16 { quantizer, .. } = self {
            for (index, x) in [quantizer.scale, quantizer.offset].into_iter().enumerate() {
                if !x.is_finite() {
                    return Err(DecodeError::NonFinite {
                        field: Field::Encoding,
                        index,
                    });
                }
            }
        }
        match self.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(DecodeError::NonFinite {
                field: Field::Values,
                index,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn write<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        match self {
            Self::F32(values) => {
                t.serialize_element(&ENCODING_F32)?;
                values.serialize_into(t)
            }
            Self::I16 { quantizer, data } => {
                t.serialize_element(&ENCODING_I16)?;
                t.serialize_element(&quantizer.scale)?;
                t.serialize_element(&quantizer.offset)?;
                data.serialize_into(t)
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match r.take::<u32>(Field::Encoding)? {
            ENCODING_F32 => Ok(Self::F32(PackedSlice::read(r, Field::Values)?)),
            ENCODING_I16 => {
                let scale = r.take(Field::Encoding)?;
                let offset = r.take(Field::Encoding)?;
                let data = PackedSlice::read(r, Field::Values)?;
                Ok(Self::I16 {
                    quantizer: Quantizer { scale, offset },
                    data,
                })
            }
            tag => Err(unknown_tag(Field::Encoding, tag)),
        }
    }
}

struct EitherIter<'a> {
    f: Option<crate::packed::PackedIter<'a, f32>>,
    q: Option<crate::packed::PackedIter<'a, i16>>,
    quantizer: Quantizer,
}

impl Iterator for EitherIter<'_> {
    type Item = f32;
    fn next(&mut self) -> Option<f32> {
        match (&mut self.f, &mut self.q) {
            (Some(f), _) => f.next(),
            (None, Some(q)) => q.next().map(|q| self.quantizer.dequantize(q)),
            (None, None) => None,
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match (&self.f, &self.q) {
            (Some(f), _) => f.size_hint(),
            (None, Some(q)) => q.size_hint(),
            (None, None) => (0, Some(0)),
        }
    }
}

impl DoubleEndedIterator for EitherIter<'_> {
    fn next_back(&mut self) -> Option<f32> {
        match (&mut self.f, &mut self.q) {
            (Some(f), _) => f.next_back(),
            (None, Some(q)) => q.next_back().map(|q| self.quantizer.dequantize(q)),
            (None, None) => None,
        }
    }
}

impl ExactSizeIterator for EitherIter<'_> {}
