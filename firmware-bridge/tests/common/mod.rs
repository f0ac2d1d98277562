//! Helpers shared by the integration tests.
#![allow(dead_code)]

use firmware_bridge::{
    Channels, Forecast, GridPoint, GridShape, PackedSlice, Quantizer, Sampling, SensorFrame, Values,
};

/// 2023-11-14T22:13:20Z in microseconds.
pub const T0: u64 = 1_700_000_000_000_000;

pub const EXAMPLE_VALUES: [f32; 6] = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5];

/// The worked example of docs/PROTOCOL.md: a 2×3 single-channel dense f32 frame.
pub fn example_frame() -> SensorFrame<'static> {
    SensorFrame {
        station: "st-01",
        seq: 7,
        timestamp_us: T0,
        channels: Channels::single("h"),
        shape: GridShape::new(2, 3, 1),
        sampling: Sampling::Dense,
        values: Values::f32(&EXAMPLE_VALUES),
    }
}

pub const EXAMPLE_POINTS: [GridPoint; 2] = [GridPoint::new(10, 20), GridPoint::new(30, 40)];
pub const EXAMPLE_COUNTS: [i16; 4] = [100, -200, 300, -400];

/// The second example: two sensor points on a 64×64 grid, two channels, quantised.
pub fn example_points_frame() -> SensorFrame<'static> {
    SensorFrame {
        station: "st-01",
        seq: 8,
        timestamp_us: T0 + 1_000_000,
        channels: Channels::new(&["u", "v"]).unwrap(),
        shape: GridShape::new(64, 64, 2),
        sampling: Sampling::Points(PackedSlice::new(&EXAMPLE_POINTS)),
        values: Values::i16(&EXAMPLE_COUNTS, Quantizer::new(0.001, 0.0)),
    }
}

pub const EXAMPLE_STEPS: [u64; 2] = [T0 + 1_000_000, T0 + 2_000_000];
pub const EXAMPLE_FORECAST_VALUES: [f32; 4] = [1.0, 2.0, 3.0, 4.0];

/// The forecast example: two steps of a 1×2 single-channel grid.
pub fn example_forecast() -> Forecast<'static> {
    Forecast {
        station: "st-01",
        based_on_seq: 7,
        issued_at_us: T0 + 50_000,
        alpha: 1.25,
        channels: Channels::single("h"),
        shape: GridShape::new(1, 2, 1),
        timestamps_us: PackedSlice::new(&EXAMPLE_STEPS),
        values: Values::f32(&EXAMPLE_FORECAST_VALUES),
    }
}

/// A dense f32 field of `rows × cols × channels` with smooth, distinct values.
pub fn field(rows: u16, cols: u16, channels: u8) -> Vec<f32> {
    let n = usize::from(rows) * usize::from(cols) * usize::from(channels);
    (0..n)
        .map(|i| (i as f32 * 0.01).sin() * 3.0 + i as f32 * 1e-4)
        .collect()
}

pub fn dense_frame<'a>(
    seq: u32,
    shape: GridShape,
    values: &'a [f32],
    names: &'a [&'a str],
) -> SensorFrame<'a> {
    SensorFrame {
        station: "dam-north",
        seq,
        timestamp_us: T0 + u64::from(seq) * 100_000,
        channels: Channels::new(names).unwrap(),
        shape,
        sampling: Sampling::Dense,
        values: Values::f32(values),
    }
}

/// CRC-32/ISO-HDLC, as the protocol uses it.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = crc.digest();
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Wraps raw body bytes into a sealed envelope of `kind` (a valid CRC), written independently of
/// the crate's encoder, so tests can build bodies the encoder would refuse.
pub fn seal(kind: u8, body: &[u8]) -> Vec<u8> {
    let header = [b'C', b'T', 1, kind];
    let mut out = header.to_vec();
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32(&[&header, body]).to_le_bytes());
    out
}

/// Where the body of an encoded message lies.
pub fn body_range(msg: &[u8]) -> std::ops::Range<usize> {
    let mut len = 0usize;
    let mut i = 4;
    let mut shift = 0;
    loop {
        let b = msg[i];
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    i..i + len
}

/// A hand-written body builder, in postcard's encoding.
#[derive(Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn varint(mut self, n: u64) -> Self {
        varint(n, &mut self.0);
        self
    }
    pub fn byte(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        varint(b.len() as u64, &mut self.0);
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }
    pub fn f32(mut self, x: f32) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    pub fn f32s(self, xs: &[f32]) -> Self {
        let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(&b)
    }
    /// A frame body up to (not including) the sampling field.
    pub fn frame_head(
        self,
        station: &str,
        names: &[&str],
        rows: u64,
        cols: u64,
        channels: u8,
    ) -> Self {
        let mut b = self
            .str(station)
            .varint(7)
            .varint(T0)
            .varint(names.len() as u64);
        for n in names {
            b = b.str(n);
        }
        b.varint(rows).varint(cols).byte(channels)
    }
}

/// Formats bytes as docs/PROTOCOL.md shows them: lines of 16 space-separated hex bytes.
pub fn hex_block(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses a hex block (whitespace ignored).
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}
