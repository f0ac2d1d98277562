//! Cutting a long message into chunks, and putting it back together.
//!
//! A station whose radio or MQTT client cannot send a whole frame at once (a 64×64 f32 field is
//! 16 KiB) encodes the frame as usual, then [`split`]s the encoded bytes into [`Chunk`]s and sends
//! each chunk as a message of its own, with its own CRC. The receiver feeds chunks to a
//! [`Reassembler`], which hands back the original message bytes once every chunk is in, whatever
//! order they came in; those bytes then decode like any message (with the frame's own CRC checked
//! end to end).
//!
//! **Layout.** All chunks of a message carry the same number of bytes `L` except the last, which
//! carries the rest (1 to `L` bytes); chunk `i` holds bytes `i·L .. min((i+1)·L, total_len)`.
//! Every chunk's `L` and offset follow from its own header, so chunks can be placed as they come.
//!
//! **Lost chunks.** A message is delivered whole or not at all. An incomplete message is dropped
//! and counted ([`ReassemblyStats`]) when it has not completed within the timeout of its first
//! chunk, when a newer message (by serial-number order of `frame_seq`) completes first, or when its
//! slot is needed for a newer message. Chunks of a message that was delivered or dropped recently
//! are ignored as stale, so a late duplicate cannot start a message that will never complete.

use serde::ser::SerializeTuple;

use crate::error::{ChunkProblem, DecodeError, EncodeError, Field, Limit};
use crate::frame::too_large;
use crate::limits::MAX_CHUNKS;
use crate::wire::{MessageKind, ReadBody, Reader, WireMessage, sealed};

/// One piece of a longer encoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Identifies the chunked message among those in flight: the sequence number of the frame it
    /// carries.
    pub frame_seq: u32,
    /// This chunk's position, `0..count`.
    pub index: u16,
    /// Number of chunks the message was cut into, 1–1024.
    pub count: u16,
    /// Length of the whole message in bytes.
    pub total_len: u32,
    /// This chunk's bytes of the message.
    pub data: &'a [u8],
}

impl Chunk<'_> {
    /// The regular chunk length `L` and this chunk's offset in the message, as implied by its
    /// header, or why the header is inconsistent.
    pub fn layout(&self) -> Result<(usize, usize), DecodeError> {
        let bad = |problem| Err(DecodeError::BadChunk { problem });
        if self.count == 0 {
            return bad(ChunkProblem::ZeroCount);
        }
        if usize::from(self.count) > MAX_CHUNKS {
            return Err(too_large(
                Limit::Chunks,
                u64::from(self.count),
                MAX_CHUNKS as u64,
            ));
        }
        if self.index >= self.count {
            return bad(ChunkProblem::IndexOutOfRange {
                index: self.index,
                count: self.count,
            });
        }
        if self.data.is_empty() {
            return bad(ChunkProblem::Empty);
        }
        let len = self.data.len() as u64;
        let total = u64::from(self.total_len);
        let count = u64::from(self.count);
        let index = u64::from(self.index);
        let (regular, offset) = if index + 1 < count {
            // Not the last: carries exactly L bytes, and L·(count-1) < total <= L·count.
            if len * (count - 1) >= total || total > len * count {
                return bad(ChunkProblem::Layout);
            }
            (len, index * len)
        } else if count == 1 {
            if len != total {
                return bad(ChunkProblem::Layout);
            }
            (len, 0)
        } else {
            // The last of several: carries the rest, 1..=L bytes, where L·(count-1) = total - len.
            let Some(rest) = total.checked_sub(len) else {
                return bad(ChunkProblem::Layout);
            };
            if !rest.is_multiple_of(count - 1) || rest / (count - 1) < len {
                return bad(ChunkProblem::Layout);
            }
            (rest / (count - 1), rest)
        };
        // Both are at most total_len (a u32), so they fit a usize on every supported target.
        Ok((regular as usize, offset as usize))
    }
}

impl WireMessage for Chunk<'_> {
    const KIND: MessageKind = MessageKind::Chunk;

    fn validate(&self) -> Result<(), DecodeError> {
        self.layout().map(|_| ())
    }
}

impl sealed::Body for Chunk<'_> {
    fn write_body<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        t.serialize_element(&self.frame_seq)?;
        t.serialize_element(&self.index)?;
        t.serialize_element(&self.count)?;
        t.serialize_element(&self.total_len)?;
        t.serialize_element(self.data)
    }
}

impl<'a> ReadBody<'a> for Chunk<'a> {
    const LAST_FIELD: Field = Field::ChunkData;

    fn read_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            frame_seq: r.take(Field::ChunkSeq)?,
            index: r.take(Field::ChunkIndex)?,
            count: r.take(Field::ChunkCount)?,
            total_len: r.take(Field::TotalLen)?,
            data: r.take(Field::ChunkData)?,
        })
    }
}

/// Cuts an encoded `message` into chunks of `chunk_len` bytes (the last may be shorter).
///
/// Use the frame's `seq` as `frame_seq`. Each chunk is then sent with
/// [`WireMessage::encode`] or [`WireMessage::encode_cobs`]; a chunk message is at most
/// `chunk_len + `[`crate::CHUNK_OVERHEAD_MAX`] bytes long.
pub fn split(message: &[u8], frame_seq: u32, chunk_len: usize) -> Result<Chunks<'_>, EncodeError> {
    if chunk_len == 0 || message.is_empty() {
        return Err(DecodeError::BadChunk {
            problem: ChunkProblem::Empty,
        }
        .into());
    }
    let total_len = u32::try_from(message.len())
        .map_err(|_| too_large(Limit::MessageLen, message.len() as u64, u64::from(u32::MAX)))?;
    let count = message.len().div_ceil(chunk_len);
    if count > MAX_CHUNKS {
        return Err(too_large(Limit::Chunks, count as u64, MAX_CHUNKS as u64).into());
    }
    Ok(Chunks {
        message,
        frame_seq,
        total_len,
        chunk_len,
        count: count as u16,
        next: 0,
    })
}

/// The chunks of one message, in order; see [`split`].
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    message: &'a [u8],
    frame_seq: u32,
    total_len: u32,
    chunk_len: usize,
    count: u16,
    next: u16,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        if self.next >= self.count {
            return None;
        }
        let start = usize::from(self.next) * self.chunk_len;
        let end = start.saturating_add(self.chunk_len).min(self.message.len());
        let chunk = Chunk {
            frame_seq: self.frame_seq,
            index: self.next,
            count: self.count,
            total_len: self.total_len,
            data: self.message.get(start..end)?,
        };
        self.next += 1;
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.count - self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Chunks<'_> {}

/// What happened to a chunk given to [`Reassembler::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push<'r> {
    /// The chunk completed its message: here are the message's bytes, ready for
    /// [`crate::decode`]. They stay valid until the reassembler is used again.
    Complete(&'r [u8]),
    /// The chunk was stored; the message still misses some.
    Pending {
        /// Chunks of this message received so far.
        received: u16,
        /// Chunks in the message.
        count: u16,
    },
    /// This chunk was already received; it was ignored.
    Duplicate,
    /// The chunk belongs to a message that was recently delivered or dropped, or that is older
    /// than every message in progress while no slot is free; it was ignored.
    Stale,
}

/// Counters kept by a [`Reassembler`] (saturating).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Chunks stored.
    pub chunks_accepted: u32,
    /// Chunks received twice and ignored.
    pub chunks_duplicate: u32,
    /// Chunks of finished or hopelessly old messages, ignored.
    pub chunks_stale: u32,
    /// Chunks rejected with an error (inconsistent header, too large).
    pub chunks_rejected: u32,
    /// Messages delivered whole.
    pub messages_completed: u32,
    /// Messages dropped because they did not complete within the timeout.
    pub messages_timed_out: u32,
    /// Messages dropped because a newer message completed first.
    pub messages_superseded: u32,
    /// Messages dropped to make room for a newer one.
    pub messages_evicted: u32,
}

impl ReassemblyStats {
    /// Messages dropped incomplete, for whatever reason.
    pub const fn messages_lost(&self) -> u32 {
        self.messages_timed_out
            .saturating_add(self.messages_superseded)
            .saturating_add(self.messages_evicted)
    }
}

/// How many finished `frame_seq`s a reassembler remembers to recognise stale chunks.
const FINISHED_MEMORY: usize = 8;

const SEEN_WORDS: usize = MAX_CHUNKS.div_ceil(32);

#[derive(Clone, Copy)]
struct Progress {
    seq: u32,
    count: u16,
    total: u32,
    regular: usize,
    received: u16,
    started_us: u64,
    seen: [u32; SEEN_WORDS],
}

impl Progress {
    fn has(&self, index: u16) -> bool {
        self.seen[usize::from(index / 32)] & (1 << (index % 32)) != 0
    }

    fn mark(&mut self, index: u16) {
        self.seen[usize::from(index / 32)] |= 1 << (index % 32);
        self.received += 1;
    }
}

struct Slot<B> {
    buf: B,
    progress: Option<Progress>,
}

/// `a` comes after `b` in serial-number order (RFC 1982 style, so wrap-around is fine).
const fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Puts chunked messages back together, in fixed memory.
///
/// `SLOTS` messages can be in progress at once (two by default: the current one and a late one),
/// each in a buffer `B` (`[u8; N]` or `&mut [u8]` on a microcontroller, `Vec<u8>` on the runtime
/// via [`Reassembler::with_capacity`]). The capacity, the longest message accepted, is the
/// shortest buffer's length. Time is an input (`now_us`, any monotonic microsecond clock), so
/// the reassembler never reads a clock itself. One reassembler serves one link or station.
///
/// ```
/// use firmware_bridge::{Push, Reassembler, split};
///
/// let message: Vec<u8> = (0..100).collect(); // stands for an encoded frame
/// let mut rx = Reassembler::<[u8; 128]>::new([[0; 128]; 2], 1_000_000);
/// let mut chunks: Vec<_> = split(&message, 7, 30)?.collect();
/// chunks.reverse(); // any order will do
/// let mut out = None;
/// for chunk in &chunks {
///     if let Push::Complete(bytes) = rx.push(chunk, 0)? {
///         out = Some(bytes.to_vec());
///     }
/// }
/// assert_eq!(out.as_deref(), Some(&message[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reassembler<B, const SLOTS: usize = 2> {
    slots: [Slot<B>; SLOTS],
    timeout_us: u64,
    finished: [Option<u32>; FINISHED_MEMORY],
    finished_next: usize,
    stats: ReassemblyStats,
}

#[cfg(feature = "std")]
impl<const SLOTS: usize> Reassembler<std::vec::Vec<u8>, SLOTS> {
    /// A reassembler whose slots are `Vec`s of `capacity` bytes each.
    pub fn with_capacity(capacity: usize, timeout_us: u64) -> Self {
        Self::new(core::array::from_fn(|_| std::vec![0; capacity]), timeout_us)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const SLOTS: usize> Reassembler<B, SLOTS> {
    /// A reassembler over `buffers`, one per slot; an incomplete message is dropped `timeout_us`
    /// after its first chunk arrived.
    pub fn new(buffers: [B; SLOTS], timeout_us: u64) -> Self {
        const { assert!(SLOTS > 0, "a reassembler needs at least one slot") };
        Self {
            slots: buffers.map(|buf| Slot {
                buf,
                progress: None,
            }),
            timeout_us,
            finished: [None; FINISHED_MEMORY],
            finished_next: 0,
            stats: ReassemblyStats::default(),
        }
    }

    /// The longest message accepted.
    pub fn capacity(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.buf.as_ref().len())
            .min()
            .unwrap_or(0)
    }

    /// The counters.
    pub const fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Messages in progress.
    pub fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.progress.is_some()).count()
    }

    /// Drops (and counts) every message that has not completed within the timeout; returns how
    /// many. [`Self::push`] calls this first; call it on a timer as well so a silent link does not
    /// hold a message forever.
    pub fn expire(&mut self, now_us: u64) -> usize {
        let mut dropped = 0;
        for i in 0..SLOTS {
            if let Some(p) = self.slots[i].progress
                && now_us.saturating_sub(p.started_us) > self.timeout_us
            {
                self.slots[i].progress = None;
                self.remember(p.seq);
                self.stats.messages_timed_out = self.stats.messages_timed_out.saturating_add(1);
                dropped += 1;
            }
        }
        dropped
    }

    /// Adds one chunk received at `now_us`.
    ///
    /// Errors (counted in `chunks_rejected`) are a chunk whose header contradicts itself or
    /// earlier chunks of its message, and a message longer than the capacity.
    pub fn push(&mut self, chunk: &Chunk<'_>, now_us: u64) -> Result<Push<'_>, DecodeError> {
        self.expire(now_us);
        let (regular, offset) = match self.check(chunk) {
            Ok(layout) => layout,
            Err(e) => {
                self.stats.chunks_rejected = self.stats.chunks_rejected.saturating_add(1);
                return Err(e);
            }
        };
        if self.finished.contains(&Some(chunk.frame_seq)) {
            return Ok(self.stale());
        }
        let existing = self
            .slots
            .iter()
            .position(|s| s.progress.is_some_and(|p| p.seq == chunk.frame_seq));
        let i = match existing {
            Some(i) => i,
            None => match self.claim_slot(chunk.frame_seq) {
                Some(i) => {
                    self.slots[i].progress = Some(Progress {
                        seq: chunk.frame_seq,
                        count: chunk.count,
                        total: chunk.total_len,
                        regular,
                        received: 0,
                        started_us: now_us,
                        seen: [0; SEEN_WORDS],
                    });
                    i
                }
                None => return Ok(self.stale()),
            },
        };
        let slot = &mut self.slots[i];
        let Some(progress) = slot.progress.as_mut() else {
            return Ok(Push::Stale); // unreachable: the slot was found or claimed above
        };
        if progress.count != chunk.count
            || progress.total != chunk.total_len
            || progress.regular != regular
        {
            self.stats.chunks_rejected = self.stats.chunks_rejected.saturating_add(1);
            return Err(DecodeError::BadChunk {
                problem: ChunkProblem::Conflicting,
            });
        }
        if progress.has(chunk.index) {
            self.stats.chunks_duplicate = self.stats.chunks_duplicate.saturating_add(1);
            return Ok(Push::Duplicate);
        }
        let Some(target) = slot.buf.as_mut().get_mut(offset..offset + chunk.data.len()) else {
            // unreachable: check() bounded the message by the capacity
            self.stats.chunks_rejected = self.stats.chunks_rejected.saturating_add(1);
            return Err(DecodeError::BadChunk {
                problem: ChunkProblem::Layout,
            });
        };
        target.copy_from_slice(chunk.data);
        progress.mark(chunk.index);
        self.stats.chunks_accepted = self.stats.chunks_accepted.saturating_add(1);
        let (received, count, seq, total) = (
            progress.received,
            progress.count,
            progress.seq,
            progress.total,
        );
        if received < count {
            return Ok(Push::Pending { received, count });
        }
        // Complete: free the slot (its bytes stay until the next call), forget older messages.
        self.slots[i].progress = None;
        self.remember(seq);
        self.stats.messages_completed = self.stats.messages_completed.saturating_add(1);
        for j in 0..SLOTS {
            if let Some(p) = self.slots[j].progress
                && seq_after(seq, p.seq)
            {
                self.slots[j].progress = None;
                self.remember(p.seq);
                self.stats.messages_superseded = self.stats.messages_superseded.saturating_add(1);
            }
        }
        let bytes = self.slots[i].buf.as_ref();
        Ok(Push::Complete(bytes.get(..total as usize).unwrap_or(bytes)))
    }

    fn check(&self, chunk: &Chunk<'_>) -> Result<(usize, usize), DecodeError> {
        let layout = chunk.layout()?;
        let capacity = self.capacity();
        if chunk.total_len as usize > capacity {
            return Err(too_large(
                Limit::ReassemblyCapacity,
                u64::from(chunk.total_len),
                capacity as u64,
            ));
        }
        Ok(layout)
    }

    fn stale(&mut self) -> Push<'static> {
        self.stats.chunks_stale = self.stats.chunks_stale.saturating_add(1);
        Push::Stale
    }

    /// A free slot, or the slot of the oldest message in progress (dropped and counted) when
    /// `seq` is newer than it; `None` when `seq` is older than everything in progress.
    fn claim_slot(&mut self, seq: u32) -> Option<usize> {
        if let Some(i) = self.slots.iter().position(|s| s.progress.is_none()) {
            return Some(i);
        }
        let mut oldest: Option<(usize, u32)> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(p) = slot.progress
                && oldest.is_none_or(|(_, s)| seq_after(s, p.seq))
            {
                oldest = Some((i, p.seq));
            }
        }
        let (i, old_seq) = oldest?;
        if !seq_after(seq, old_seq) {
            return None;
        }
        self.slots[i].progress = None;
        self.remember(old_seq);
        self.stats.messages_evicted = self.stats.messages_evicted.saturating_add(1);
        Some(i)
    }

    fn remember(&mut self, seq: u32) {
        self.finished[self.finished_next] = Some(seq);
        self.finished_next = (self.finished_next + 1) % FINISHED_MEMORY;
    }
}
