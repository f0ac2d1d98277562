//! A stable-toolchain fuzzer for the decoders: millions of random and mutated messages.
//!
//! `fuzz_smoke` runs a few thousand iterations with every `cargo test`. The long run is ignored
//! by default; run it with
//!
//! ```text
//! FUZZ_ITERATIONS=50000000 FUZZ_SEED=1 cargo test -p firmware-bridge \
//!     --test fuzz_long -- --ignored --nocapture
//! ```
//!
//! (the default is 10 million iterations, about 12 s on one core; the workspace's test profile is
//! optimised and keeps overflow checks, which is what a fuzz run wants, so no `--release`). Vary
//! `FUZZ_SEED` to explore further. It checks that no input panics a
//! decoder, the stream decoder or the reassembler; that every rejection has a reason and a
//! message; that whatever decodes re-encodes and decodes to the same message; and that a
//! message damaged by up to three bit flips is always rejected. A coverage-guided libFuzzer
//! target for nightly lives in `firmware-bridge/fuzz/`.

mod common;

use std::collections::BTreeMap;

use common::*;
use firmware_bridge::{
    Chunk, DecodeError, GridShape, Message, Reassembler, RejectReason, StreamDecoder, WireMessage,
    decode, decode_chunk, decode_cobs, decode_forecast, decode_frame, split,
};

/// SplitMix64: small, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// `min + below(spread)` random bytes.
    fn bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Valid messages of every kind to mutate.
fn corpus() -> Vec<Vec<u8>> {
    let mut out = vec![
        example_frame().to_vec().unwrap(),
        example_points_frame().to_vec().unwrap(),
        example_forecast().to_vec().unwrap(),
    ];
    let values = field(6, 5, 2);
    let frame = dense_frame(9, GridShape::new(6, 5, 2), &values, &["u", "v"])
        .to_vec()
        .unwrap();
    out.extend(split(&frame, 9, 40).unwrap().map(|c| c.to_vec().unwrap()));
    out.push(frame);
    out
}

#[derive(Default)]
struct Tally {
    inputs: u64,
    accepted: u64,
    reasons: BTreeMap<RejectReason, u64>,
}

impl Tally {
    fn rejection(&mut self, err: &DecodeError) {
        assert!(RejectReason::ALL.contains(&err.reason()));
        assert!(!err.to_string().is_empty());
        *self.reasons.entry(err.reason()).or_default() += 1;
    }

    /// Every decoder on one input.
    fn check(&mut self, input: &[u8]) {
        self.inputs += 1;
        match decode(input) {
            Ok(msg) => {
                self.accepted += 1;
                // Whatever decodes re-encodes, and the re-encoding decodes to the same message.
                let mut out = vec![0; input.len() + 16];
                let again = msg
                    .encode(&mut out)
                    .expect("a decoded message re-encodes")
                    .to_vec();
                assert_eq!(decode(&again).unwrap(), msg);
            }
            Err(e) => self.rejection(&e),
        }
        for r in [
            decode_frame(input).map(|_| ()),
            decode_chunk(input).map(|_| ()),
            decode_forecast(input).map(|_| ()),
        ] {
            if let Err(e) = r {
                assert!(RejectReason::ALL.contains(&e.reason()));
            }
        }
        let mut copy = input.to_vec();
        if let Err(e) = decode_cobs(&mut copy) {
            assert!(!e.to_string().is_empty());
        }
    }

    /// The stream decoder and a reassembler on a byte stream, read in `piece`-byte pieces.
    fn stream(&mut self, stream: &[u8], piece: usize, rx: &mut Reassembler<[u8; 512]>) {
        let mut decoder = StreamDecoder::<256>::new();
        for read in stream.chunks(piece.max(1)) {
            let mut rest = read;
            while !rest.is_empty() {
                let (event, left) = decoder.feed(rest);
                assert!(left.len() < rest.len() || event.is_some(), "no progress");
                rest = left;
                match event {
                    Some(Ok(Message::Chunk(chunk))) => {
                        if let Err(e) = rx.push(&chunk, 0) {
                            assert!(!e.to_string().is_empty());
                        }
                    }
                    Some(Err(e)) => self.rejection(&e),
                    _ => {}
                }
            }
        }
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.below(corpus.len())];
    let mut m = base.clone();
    match rng.below(9) {
        0 => return rng.bytes(0, 200),
        1 => {
            // Up to three bit flips: CRC-32 must catch every one of these.
            let flips = 1 + rng.below(3);
            for _ in 0..flips {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
            if m != *base {
                let err = decode(&m).expect_err("a message with <= 3 flipped bits was accepted");
                assert!(!err.to_string().is_empty());
            }
        }
        2 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(m.len());
                m[at] = rng.next() as u8;
            }
        }
        3 => m.truncate(rng.below(m.len())),
        4 => {
            let at = rng.below(m.len() + 1);
            let extra = rng.bytes(1, 16);
            m.splice(at..at, extra);
        }
        5 => {
            let a = rng.below(m.len());
            let b = (a + 1 + rng.below(16)).min(m.len());
            m.drain(a..b);
        }
        6 => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(m.len());
            m.truncate(cut);
            m.extend_from_slice(&other[rng.below(other.len())..]);
        }
        7 => {
            // Random body behind a valid envelope: past the CRC, into the body readers.
            let body = rng.bytes(0, 120);
            return seal(rng.below(5) as u8, &body);
        }
        _ => {
            // A valid message's body, mutated, then resealed with a correct CRC: this reaches
            // the field readers and the semantic checks.
            let range = body_range(&m);
            let mut body = m[range].to_vec();
            for _ in 0..1 + rng.below(4) {
                if body.is_empty() {
                    break;
                }
                let at = rng.below(body.len());
                match rng.below(3) {
                    0 => body[at] ^= 1 << rng.below(8),
                    1 => body[at] = rng.next() as u8,
                    _ => {
                        body.remove(at);
                    }
                }
            }
            return seal(m[3], &body);
        }
    }
    m
}

fn run(iterations: u64, seed: u64) -> Tally {
    let corpus = corpus();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut rx = Reassembler::<[u8; 512]>::new([[0; 512]; 2], 1000);
    for i in 0..iterations {
        let input = mutate(&mut rng, &corpus);
        tally.check(&input);
        if i % 8 == 0 {
            // Also as a COBS stream, between valid frames, in odd pieces; chunks go to the
            // reassembler, arbitrary headers included.
            let mut stream = corpus[rng.below(corpus.len())].clone();
            let mut framed = vec![0; firmware_bridge::cobs_max_len(stream.len())];
            let n = decode(&stream)
                .unwrap()
                .encode_cobs(&mut framed)
                .unwrap()
                .len();
            stream = framed[..n].to_vec();
            let mut junk = vec![0; firmware_bridge::cobs_max_len(input.len())];
            let cobs = cobs_encode(&input, &mut junk);
            stream.extend_from_slice(cobs);
            stream.extend(rng.bytes(0, 8));
            tally.stream(&stream, 1 + rng.below(40), &mut rx);
            let data = rng.bytes(1, 64);
            let chunk = Chunk {
                frame_seq: rng.below(6) as u32,
                index: rng.below(5) as u16,
                count: rng.below(5) as u16,
                total_len: rng.below(300) as u32,
                data: &data,
            };
            let _ = rx.push(&chunk, rng.below(3000) as u64);
        }
    }
    tally
}

/// Plain COBS (independent of the crate), to frame arbitrary bytes for the stream decoder.
fn cobs_encode<'a>(data: &[u8], out: &'a mut [u8]) -> &'a [u8] {
    let mut code_at = 0;
    let mut w = 1;
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
    &out[..=w]
}

#[test]
fn fuzz_smoke() {
    let tally = run(20_000, 0x5eed);
    assert!(tally.accepted > 0, "the corpus itself must decode");
    assert!(
        tally.reasons.len() >= 8,
        "mutations reach many rejection paths: {:?}",
        tally.reasons
    );
}

#[test]
#[ignore = "long: run with --ignored (see the module docs)"]
fn fuzz_decoders_long() {
    let iterations = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let start = std::time::Instant::now();
    let tally = run(iterations, seed);
    println!(
        "{} inputs in {:.1?} (seed {seed}): {} accepted; rejected by reason: {:?}",
        tally.inputs,
        start.elapsed(),
        tally.accepted,
        tally.reasons
    );
}
