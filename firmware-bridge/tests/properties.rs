//! Property tests: arbitrary bytes never panic the decoders and every rejection has a reason;
//! arbitrary valid messages round-trip byte for byte; damaged ones are rejected.
//!
//! A much longer randomised run lives in `fuzz_long.rs` (ignored by default).

mod common;

use common::*;
use firmware_bridge::{
    Channels, DecodeError, GridPoint, GridShape, Message, PackedSlice, Quantizer, RejectReason,
    Sampling, SensorFrame, StreamDecoder, Values, WireMessage, decode, decode_chunk, decode_cobs,
    decode_forecast, decode_frame,
};
use proptest::prelude::*;

/// An owned description of a valid frame, from which a borrowed `SensorFrame` is built.
#[derive(Debug, Clone)]
struct Spec {
    station: String,
    seq: u32,
    timestamp_us: u64,
    names: Vec<String>,
    rows: u16,
    cols: u16,
    points: Option<Vec<GridPoint>>,
    quantizer: Option<Quantizer>,
    values: Vec<f32>,
    counts: Vec<i16>,
}

impl Spec {
    /// Builds the borrowed frame and hands it to `f`.
    fn with_frame<R>(&self, f: impl FnOnce(SensorFrame<'_>) -> R) -> R {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let frame = SensorFrame {
            station: &self.station,
            seq: self.seq,
            timestamp_us: self.timestamp_us,
            channels: Channels::new(&names).unwrap(),
            shape: GridShape::new(self.rows, self.cols, self.names.len() as u8),
            sampling: match &self.points {
                None => Sampling::Dense,
                Some(p) => Sampling::Points(PackedSlice::new(p)),
            },
            values: match self.quantizer {
                None => Values::f32(&self.values),
                Some(q) => Values::i16(&self.counts, q),
            },
        };
        f(frame)
    }

    fn encode(&self) -> Vec<u8> {
        self.with_frame(|f| f.to_vec().unwrap())
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    let head = (
        "[A-Za-z0-9_.-]{1,32}",
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec("[a-z]{1,16}", 1..=3),
        1_u16..=8,
        1_u16..=8,
        any::<bool>(),
        prop::option::of((1e-4_f32..10.0, -100.0_f32..100.0)),
    );
    head.prop_flat_map(|(station, seq, ts, names, rows, cols, sparse, quant)| {
        let points = if sparse {
            prop::collection::vec(
                (0..rows, 0..cols).prop_map(|(r, c)| GridPoint::new(r, c)),
                1..=6,
            )
            .prop_map(Some)
            .boxed()
        } else {
            Just(None).boxed()
        };
        (Just((station, seq, ts, names, rows, cols, quant)), points).prop_flat_map(
            |((station, seq, ts, names, rows, cols, quant), points)| {
                let positions = points
                    .as_ref()
                    .map_or(usize::from(rows) * usize::from(cols), Vec::len);
                let n = positions * names.len();
                (
                    Just(Spec {
                        station,
                        seq,
                        timestamp_us: ts,
                        names,
                        rows,
                        cols,
                        points,
                        quantizer: quant.map(|(s, o)| Quantizer::new(s, o)),
                        values: vec![],
                        counts: vec![],
                    }),
                    prop::collection::vec(-1e6_f32..1e6, n),
                    prop::collection::vec(-32767_i16..=32767, n),
                )
                    .prop_map(|(mut spec, values, counts)| {
                        spec.values = values;
                        spec.counts = counts;
                        spec
                    })
            },
        )
    })
}

/// Every rejection must name a reason and explain itself.
fn check_rejection(err: &DecodeError) {
    assert!(RejectReason::ALL.contains(&err.reason()));
    assert!(!err.to_string().is_empty());
}

fn decode_everything(bytes: &[u8]) {
    for result in [
        decode(bytes).map(|_| ()),
        decode_frame(bytes).map(|_| ()),
        decode_chunk(bytes).map(|_| ()),
        decode_forecast(bytes).map(|_| ()),
    ] {
        if let Err(e) = result {
            check_rejection(&e);
        }
    }
    let mut copy = bytes.to_vec();
    if let Err(e) = decode_cobs(&mut copy) {
        check_rejection(&e);
    }
}

fn stream_everything(bytes: &[u8], piece: usize) -> usize {
    let mut rx = StreamDecoder::<256>::new();
    let mut events = 0;
    for read in bytes.chunks(piece.max(1)) {
        let mut rest = read;
        while !rest.is_empty() {
            let (event, left) = rx.feed(rest);
            assert!(
                left.len() < rest.len() || event.is_some(),
                "the decoder must make progress"
            );
            rest = left;
            match event {
                Some(Err(e)) => check_rejection(&e),
                Some(Ok(_)) => {}
                None => continue,
            }
            events += 1;
        }
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_every_rejection_has_a_reason(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        piece in 1_usize..64,
    ) {
        decode_everything(&bytes);
        stream_everything(&bytes, piece);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_envelope_never_panic(
        kind in 0_u8..5,
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        // A valid CRC gets random bytes past the CRC check, into the body readers.
        let msg = seal(kind, &body);
        decode_everything(&msg);
        if let Err(e) = decode(&msg) {
            prop_assert_ne!(e.reason(), RejectReason::BadCrc);
        }
    }
}

/// Encodes, decodes and re-encodes a frame, plainly and through the stream decoder.
fn round_trip(frame: SensorFrame<'_>) -> Result<(), TestCaseError> {
    let bytes = frame.to_vec().unwrap();
    let back = decode_frame(&bytes).unwrap();
    prop_assert_eq!(back, frame);
    let mut again = vec![0; bytes.len()];
    prop_assert_eq!(back.encode(&mut again).unwrap(), &bytes[..]);

    // COBS, through the stream decoder in odd pieces.
    let framed = frame.to_vec_cobs().unwrap();
    let mut rx = StreamDecoder::<1024>::new();
    let mut seen = 0;
    for read in framed.chunks(7) {
        let mut rest = read;
        while !rest.is_empty() {
            let (event, left) = rx.feed(rest);
            rest = left;
            if let Some(event) = event {
                prop_assert_eq!(event.unwrap(), Message::Frame(frame));
                seen += 1;
            }
        }
    }
    prop_assert_eq!(seen, 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_round_trip_byte_for_byte(spec in spec()) {
        spec.with_frame(round_trip)?;
    }

    #[test]
    fn damaged_frames_are_rejected(
        spec in spec(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0_u8..8), 1..=3),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let bytes = spec.encode();
        // Up to three flipped bits: CRC-32 detects every such error at these lengths.
        let mut flipped = bytes.clone();
        for (at, bit) in &flips {
            flipped[at.index(bytes.len())] ^= 1 << bit;
        }
        if flipped != bytes {
            let err = decode(&flipped).unwrap_err();
            check_rejection(&err);
        }
        // A cut-off message is truncated; a padded one has trailing bytes.
        let len = cut.index(bytes.len());
        prop_assert_eq!(decode(&bytes[..len]).unwrap_err().reason(), RejectReason::Truncated);
        let mut padded = bytes.clone();
        padded.extend(&extra);
        prop_assert_eq!(decode(&padded).unwrap_err().reason(), RejectReason::TrailingBytes);
    }
}
