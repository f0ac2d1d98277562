//! Chunked frames: split, COBS-framed, fed in 7-byte pieces, reordered, duplicated and lost.

mod common;

use common::*;
use firmware_bridge::{
    CHUNK_OVERHEAD_MAX, ChunkProblem, DecodeError, GridShape, Limit, Message, Push, Reassembler,
    StreamDecoder, WireMessage, cobs_max_len, decode_chunk, decode_frame, split,
};

const CHUNK: usize = 1024;
/// Room for one COBS-framed chunk message.
const RX: usize = cobs_max_len(CHUNK + CHUNK_OVERHEAD_MAX);

/// A deterministic permutation (a fixed-seed LCG shuffle), so failures replay.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

/// Runs a byte stream through a stream decoder in `piece`-byte reads and a reassembler; returns
/// the frames delivered as (seq, values).
fn receive(stream: &[u8], piece: usize, rx: &mut Reassembler<Vec<u8>>) -> Vec<(u32, Vec<f32>)> {
    let mut decoder = StreamDecoder::<RX>::new();
    let mut out = vec![];
    for read in stream.chunks(piece) {
        let mut rest = read;
        while !rest.is_empty() {
            let (event, left) = decoder.feed(rest);
            rest = left;
            match event {
                Some(Ok(Message::Chunk(chunk))) => {
                    if let Push::Complete(bytes) = rx.push(&chunk, 0).unwrap() {
                        let frame = decode_frame(bytes).unwrap();
                        out.push((frame.seq, frame.values.to_vec()));
                    }
                }
                Some(Ok(Message::Frame(frame))) => out.push((frame.seq, frame.values.to_vec())),
                Some(other) => panic!("unexpected {other:?}"),
                None => {}
            }
        }
    }
    out
}

fn chunk_stream(message: &[u8], seq: u32, order: impl Fn(&mut Vec<Vec<u8>>)) -> Vec<u8> {
    let mut framed: Vec<Vec<u8>> = split(message, seq, CHUNK)
        .unwrap()
        .map(|c| c.to_vec_cobs().unwrap())
        .collect();
    order(&mut framed);
    framed.concat()
}

#[test]
fn a_16_kib_frame_survives_chunking_cobs_and_7_byte_reads_in_any_order() {
    let values = field(64, 64, 1);
    let frame = dense_frame(3, GridShape::new(64, 64, 1), &values, &["h"]);
    let message = frame.to_vec().unwrap();
    assert!(message.len() > 16 * 1024);
    assert!(
        message.len() > RX,
        "the whole frame would not fit the stream decoder"
    );

    for (name, seed) in [
        ("in order", None),
        ("shuffled", Some(1)),
        ("shuffled again", Some(2)),
    ] {
        let stream = chunk_stream(&message, frame.seq, |chunks| {
            if let Some(seed) = seed {
                shuffle(chunks, seed)
            }
        });
        let mut rx = Reassembler::<Vec<u8>>::with_capacity(32 * 1024, 1_000_000);
        let got = receive(&stream, 7, &mut rx);
        assert_eq!(got, [(3, values.clone())], "{name}");
        let stats = rx.stats();
        assert_eq!(stats.chunks_accepted, 17, "{name}");
        assert_eq!(stats.messages_completed, 1);
        assert_eq!(stats.messages_lost(), 0);
    }
}

#[test]
fn duplicated_chunks_are_ignored_and_late_ones_are_stale() {
    let values = field(64, 64, 1);
    let message = dense_frame(4, GridShape::new(64, 64, 1), &values, &["h"])
        .to_vec()
        .unwrap();
    let stream = chunk_stream(&message, 4, |chunks| {
        let again: Vec<_> = chunks.iter().step_by(3).cloned().collect();
        let last = chunks.pop().unwrap();
        chunks.extend(again); // duplicates before completion
        chunks.push(last.clone()); // completes the frame
        chunks.push(last); // a duplicate after completion: stale
    });
    let mut rx = Reassembler::<Vec<u8>>::with_capacity(32 * 1024, 1_000_000);
    let got = receive(&stream, 7, &mut rx);
    assert_eq!(got, [(4, values)]);
    let stats = *rx.stats();
    assert_eq!(stats.chunks_duplicate, 6); // chunks 0, 3, 6, 9, 12, 15 of 17
    assert_eq!(stats.chunks_stale, 1);
    assert_eq!(stats.messages_completed, 1);
}

#[test]
fn a_lost_chunk_drops_the_frame_when_a_newer_one_completes() {
    let a = field(64, 64, 1);
    let b: Vec<f32> = a.iter().map(|v| v * 2.0).collect();
    let first = dense_frame(10, GridShape::new(64, 64, 1), &a, &["h"])
        .to_vec()
        .unwrap();
    let second = dense_frame(11, GridShape::new(64, 64, 1), &b, &["h"])
        .to_vec()
        .unwrap();
    let mut stream = chunk_stream(&first, 10, |chunks| {
        chunks.remove(5);
    });
    stream.extend(chunk_stream(&second, 11, |_| {}));
    // A straggler of the dropped frame arrives afterwards: ignored, it cannot complete anything.
    let straggler = split(&first, 10, CHUNK)
        .unwrap()
        .nth(5)
        .unwrap()
        .to_vec_cobs()
        .unwrap();
    stream.extend(straggler);

    let mut rx = Reassembler::<Vec<u8>>::with_capacity(32 * 1024, 1_000_000);
    let got = receive(&stream, 7, &mut rx);
    assert_eq!(got, [(11, b)], "never a partial frame");
    let stats = rx.stats();
    assert_eq!(stats.messages_superseded, 1);
    assert_eq!(stats.messages_lost(), 1);
    assert_eq!(stats.chunks_stale, 1);
    assert_eq!(rx.in_progress(), 0);
}

#[test]
fn an_incomplete_frame_times_out() {
    let message: Vec<u8> = (0..=255).cycle().take(5000).collect();
    let chunks: Vec<_> = split(&message, 1, 1000).unwrap().collect();
    let mut rx = Reassembler::<[u8; 5000], 1>::new([[0; 5000]], 500_000);
    for chunk in &chunks[..4] {
        assert!(matches!(
            rx.push(chunk, 100_000).unwrap(),
            Push::Pending { .. }
        ));
    }
    assert_eq!(
        rx.expire(600_000),
        0,
        "not yet: 500 ms after the first chunk"
    );
    assert_eq!(rx.expire(600_001), 1);
    assert_eq!(rx.stats().messages_timed_out, 1);
    // The last chunk arrives too late: stale, nothing delivered.
    assert_eq!(rx.push(&chunks[4], 700_000).unwrap(), Push::Stale);
    // A fresh message can use the slot.
    let next: Vec<_> = split(&message, 2, 1000).unwrap().collect();
    let mut done = None;
    for chunk in next.iter().rev() {
        if let Push::Complete(bytes) = rx.push(chunk, 800_000).unwrap() {
            done = Some(bytes.to_vec());
        }
    }
    assert_eq!(done, Some(message));
}

#[test]
fn a_newer_message_evicts_the_oldest_when_slots_are_full() {
    let message = [9_u8; 40];
    let mut rx = Reassembler::<[u8; 64], 2>::new([[0; 64]; 2], u64::MAX);
    let first = |seq| split(&message, seq, 10).unwrap().next().unwrap();
    assert!(matches!(
        rx.push(&first(100), 0).unwrap(),
        Push::Pending {
            received: 1,
            count: 4
        }
    ));
    assert!(matches!(
        rx.push(&first(101), 0).unwrap(),
        Push::Pending { .. }
    ));
    // Older than everything in progress, no free slot: stale.
    assert_eq!(rx.push(&first(99), 0).unwrap(), Push::Stale);
    // Newer: 100 is evicted.
    assert!(matches!(
        rx.push(&first(102), 0).unwrap(),
        Push::Pending { .. }
    ));
    assert_eq!(rx.stats().messages_evicted, 1);
    assert_eq!(
        rx.push(&first(100), 0).unwrap(),
        Push::Stale,
        "evicted messages are remembered"
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    let message = [1_u8; 20];
    let mut rx = Reassembler::<[u8; 32], 2>::new([[0; 32]; 2], u64::MAX);
    let old: Vec<_> = split(&message, u32::MAX, 10).unwrap().collect();
    let new: Vec<_> = split(&message, 0, 10).unwrap().collect();
    rx.push(&old[0], 0).unwrap();
    rx.push(&new[0], 0).unwrap();
    assert!(matches!(rx.push(&new[1], 0).unwrap(), Push::Complete(_)));
    assert_eq!(
        rx.stats().messages_superseded,
        1,
        "u32::MAX is older than 0"
    );
}

#[test]
fn conflicting_and_oversized_chunks_are_rejected() {
    let message = [3_u8; 100];
    let mut rx = Reassembler::<[u8; 64], 2>::new([[0; 64]; 2], u64::MAX);
    let chunk = split(&message, 5, 10).unwrap().next().unwrap();
    assert_eq!(
        rx.push(&chunk, 0).unwrap_err(),
        DecodeError::TooLarge {
            what: Limit::ReassemblyCapacity,
            value: 100,
            max: 64
        }
    );
    let small = [3_u8; 40];
    let a = split(&small, 6, 10).unwrap().next().unwrap();
    rx.push(&a, 0).unwrap();
    let other = [3_u8; 30];
    let b = split(&other, 6, 10).unwrap().nth(1).unwrap(); // same seq, different total length
    assert_eq!(
        rx.push(&b, 0).unwrap_err(),
        DecodeError::BadChunk {
            problem: ChunkProblem::Conflicting
        }
    );
    assert_eq!(rx.stats().chunks_rejected, 2);
}

#[test]
fn split_chunks_tile_the_message_and_round_trip_as_messages() {
    let message: Vec<u8> = (0..1000_u32).map(|i| (i * 7) as u8).collect();
    for chunk_len in [1, 7, 254, 999, 1000, 4096] {
        let chunks: Vec<_> = split(&message, 77, chunk_len).unwrap().collect();
        assert_eq!(chunks.len(), message.len().div_ceil(chunk_len));
        let mut joined = vec![];
        for c in &chunks {
            let (regular, offset) = c.layout().unwrap();
            assert_eq!(regular, chunk_len.min(message.len()));
            assert_eq!(offset, joined.len());
            joined.extend_from_slice(c.data);
            let bytes = c.to_vec().unwrap();
            assert!(bytes.len() <= c.data.len() + CHUNK_OVERHEAD_MAX);
            assert_eq!(decode_chunk(&bytes).unwrap(), *c);
        }
        assert_eq!(joined, message);
    }
    assert!(split(&message, 1, 0).is_err());
    assert!(split(&[], 1, 10).is_err());
    assert_eq!(
        split(&[0; 2000], 1, 1).unwrap_err().to_string(),
        "refusing to encode an invalid message"
    );
}
