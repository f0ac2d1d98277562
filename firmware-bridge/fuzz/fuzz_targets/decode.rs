//! libFuzzer target: every decoder on arbitrary bytes, plus the stream decoder and a reassembler.
#![no_main]

use firmware_bridge::{Message, Push, Reassembler, StreamDecoder, decode, decode_cobs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Plain messages: a rejection always has a reason; an accepted message re-encodes to a
    // message that decodes to the same thing.
    match decode(data) {
        Ok(msg) => {
            let mut out = vec![0; data.len() + 16];
            let again = msg.encode(&mut out).expect("a decoded message re-encodes");
            assert_eq!(decode(again).expect("its re-encoding decodes"), msg);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let mut copy = data.to_vec();
    let _ = decode_cobs(&mut copy);

    // The same bytes as a stream, read in pieces whose size the first byte picks; chunks go to a
    // small reassembler.
    let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut rx = StreamDecoder::<512>::new();
    let mut chunks = Reassembler::<[u8; 1024]>::new([[0; 1024]; 2], 1_000);
    for (t, read) in data.chunks(piece).enumerate() {
        let mut rest = read;
        while !rest.is_empty() {
            let (event, left) = rx.feed(rest);
            assert!(left.len() < rest.len() || event.is_some(), "no progress");
            rest = left;
            if let Some(Ok(Message::Chunk(chunk))) = event {
                if let Ok(Push::Complete(bytes)) = chunks.push(&chunk, t as u64 * 100) {
                    let _ = decode(bytes);
                }
            }
        }
    }
});
