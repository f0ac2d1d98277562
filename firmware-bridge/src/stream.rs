//! Messages on a byte stream (a UART, a TCP socket): COBS frames ending in `0x00`.

use postcard::accumulator::{CobsAccumulator, FeedResult};

use crate::error::{DecodeError, Field, Limit};
use crate::wire::{EnvelopeParse, Message};

/// Decodes COBS-framed messages from a byte stream fed in pieces of any size, in `N` bytes of
/// fixed memory (built on postcard's [`CobsAccumulator`]).
///
/// `N` must hold the longest COBS frame to accept, delimiter included: see
/// [`crate::cobs_max_len`]. A longer frame is skipped up to its delimiter and reported once as
/// [`DecodeError::TooLarge`] ([`Limit::StreamFrame`]); an invalid one as [`DecodeError::BadCobs`];
/// either way the decoder resynchronises on the next `0x00`. Empty frames (a lone `0x00`, which a
/// sender may send first to flush a half-received frame) are skipped silently.
///
/// ```
/// use firmware_bridge::StreamDecoder;
///
/// let mut rx = StreamDecoder::<512>::new();
/// let mut rest: &[u8] = &[0x00, 0x03, 0x01, 0x02, 0x00]; // not a valid message
/// while !rest.is_empty() {
///     let (event, left) = rx.feed(rest);
///     rest = left;
///     if let Some(result) = event {
///         assert!(result.is_err()); // with a reason: result.unwrap_err().reason()
///     }
/// }
/// ```
pub struct StreamDecoder<const N: usize> {
    acc: CobsAccumulator<N>,
    /// Bytes of the current frame held by `acc`.
    pending: usize,
    /// Skipping the rest of an over-long frame.
    discarding: bool,
}

impl<const N: usize> Default for StreamDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> StreamDecoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            acc: CobsAccumulator::new(),
            pending: 0,
            discarding: false,
        }
    }

    /// Feeds bytes; returns at most one decoded message (or the reason a frame was rejected) and
    /// the bytes not consumed yet, to feed again. Call in a loop until nothing is left. The message
    /// borrows the decoder's buffer, so it must be used before the next call.
    pub fn feed<'s, 'i>(
        &'s mut self,
        input: &'i [u8],
    ) -> (Option<Result<Message<'s>, DecodeError>>, &'i [u8]) {
        if self.discarding {
            return match input.iter().position(|&b| b == 0) {
                Some(end) => {
                    self.discarding = false;
                    (None, &input[end + 1..])
                }
                None => (None, &[]),
            };
        }
        if self.pending == 0 {
            let start = input.iter().position(|&b| b != 0).unwrap_or(input.len());
            if start > 0 {
                return (None, &input[start..]); // empty frames
            }
        }
        if input.is_empty() {
            return (None, input);
        }
        match self.acc.feed_ref::<EnvelopeParse<'s>>(input) {
            FeedResult::Consumed => {
                self.pending += input.len();
                (None, &[])
            }
            FeedResult::OverFull(rest) => {
                let consumed = &input[..input.len() - rest.len()];
                self.pending = 0;
                // Without the delimiter among the consumed bytes, the frame goes on: skip the rest.
                self.discarding = consumed.last() != Some(&0);
                let err = DecodeError::TooLarge {
                    what: Limit::StreamFrame,
                    value: N as u64 + 1,
                    max: N as u64,
                };
                (Some(Err(err)), rest)
            }
            FeedResult::DeserError(rest) => {
                self.pending = 0;
                (Some(Err(DecodeError::BadCobs)), rest)
            }
            FeedResult::Success { data, remaining } => {
                self.pending = 0;
                (Some(data.0.and_then(|raw| raw.decode())), remaining)
            }
        }
    }

    /// Forgets a partly received frame (after a link reset, say).
    pub fn reset(&mut self) {
        self.acc = CobsAccumulator::new();
        self.pending = 0;
        self.discarding = false;
    }
}

/// Decodes the first COBS frame in `buf` (leading `0x00` bytes are skipped), decoding COBS in
/// place; returns the message and the bytes after the frame's delimiter.
pub fn decode_cobs(buf: &mut [u8]) -> Result<(Message<'_>, &mut [u8]), DecodeError> {
    let start = buf.iter().position(|&b| b != 0).unwrap_or(buf.len());
    let buf = &mut buf[start..];
    if buf.is_empty() {
        return Err(DecodeError::Truncated {
            field: Field::Magic,
        });
    }
    let (parse, rest) = postcard::take_from_bytes_cobs::<EnvelopeParse<'_>>(buf)
        .map_err(|_| DecodeError::BadCobs)?;
    Ok((parse.0?.decode()?, rest))
}
