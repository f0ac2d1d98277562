//! Arrays carried as one postcard byte string of little-endian elements.
//!
//! On the wire a packed array is `varint(byte length)` followed by the elements, each in
//! little-endian byte order with no per-element framing: exactly postcard's encoding of a `&[u8]`.
//! A decoder therefore borrows the bytes from its input (zero-copy) and reads elements on demand,
//! while an encoder writes them from a native slice (`&[f32]` on the station) without first
//! converting them into a byte buffer.

use core::fmt;
use core::iter::FusedIterator;

use serde::ser::SerializeTuple;

use crate::error::{DecodeError, Field, Malformation};
use crate::frame::GridPoint;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i16 {}
    impl Sealed for u64 {}
    impl Sealed for super::GridPoint {}
}

/// An element type that can be packed: `f32`, `i16`, `u64` and [`GridPoint`].
pub trait Packed: Copy + PartialEq + fmt::Debug + sealed::Sealed {
    /// Bytes per element on the wire.
    const SIZE: usize;
    /// Reads one element from exactly [`Self::SIZE`] little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
    /// Hands the element's little-endian bytes to `out`, one at a time.
    fn write_le<E>(self, out: impl FnMut(u8) -> Result<(), E>) -> Result<(), E>;
}

fn write_all<E>(bytes: &[u8], mut out: impl FnMut(u8) -> Result<(), E>) -> Result<(), E> {
    bytes.iter().try_for_each(|&b| out(b))
}

impl Packed for f32 {
    const SIZE: usize = 4;
    fn read_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn write_le<E>(self, out: impl FnMut(u8) -> Result<(), E>) -> Result<(), E> {
        write_all(&self.to_le_bytes(), out)
    }
}

impl Packed for i16 {
    const SIZE: usize = 2;
    fn read_le(b: &[u8]) -> Self {
        i16::from_le_bytes([b[0], b[1]])
    }
    fn write_le<E>(self, out: impl FnMut(u8) -> Result<(), E>) -> Result<(), E> {
        write_all(&self.to_le_bytes(), out)
    }
}

impl Packed for u64 {
    const SIZE: usize = 8;
    fn read_le(b: &[u8]) -> Self {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    fn write_le<E>(self, out: impl FnMut(u8) -> Result<(), E>) -> Result<(), E> {
        write_all(&self.to_le_bytes(), out)
    }
}

impl Packed for GridPoint {
    const SIZE: usize = 4;
    fn read_le(b: &[u8]) -> Self {
        GridPoint {
            row: u16::from_le_bytes([b[0], b[1]]),
            col: u16::from_le_bytes([b[2], b[3]]),
        }
    }
    fn write_le<E>(self, mut out: impl FnMut(u8) -> Result<(), E>) -> Result<(), E> {
        write_all(&self.row.to_le_bytes(), &mut out)?;
        write_all(&self.col.to_le_bytes(), out)
    }
}

/// A read-only array of `T` that is either a native slice (when encoding) or borrowed
/// little-endian bytes (when decoded). Both compare equal when their elements do.
#[derive(Clone, Copy)]
pub struct PackedSlice<'a, T> {
    repr: Repr<'a, T>,
}

#[derive(Clone, Copy)]
enum Repr<'a, T> {
    Native(&'a [T]),
    Le(&'a [u8]),
}

impl<'a, T: Packed> PackedSlice<'a, T> {
    /// Wraps a native slice (the sending side).
    pub const fn new(items: &'a [T]) -> Self {
        Self {
            repr: Repr::Native(items),
        }
    }

    /// Wraps little-endian bytes; `None` unless their length is a multiple of `T::SIZE`.
    pub fn from_le_bytes(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(T::SIZE).then_some(Self {
            repr: Repr::Le(bytes),
        })
    }

    /// Reads a packed array (a postcard byte string) for `field` of a body.
    pub(crate) fn read(r: &mut crate::wire::Reader<'a>, field: Field) -> Result<Self, DecodeError> {
        let bytes: &'a [u8] = r.take(field)?;
        Self::from_le_bytes(bytes).ok_or(DecodeError::Malformed {
            field,
            problem: Malformation::RaggedArray {
                bytes: bytes.len(),
                element: T::SIZE,
            },
        })
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        match self.repr {
            Repr::Native(items) => items.len(),
            Repr::Le(bytes) => bytes.len() / T::SIZE,
        }
    }

    /// Whether there are no elements.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of bytes the elements take on the wire.
    pub const fn byte_len(&self) -> usize {
        match self.repr {
            Repr::Native(items) => items.len() * T::SIZE,
            Repr::Le(bytes) => bytes.len(),
        }
    }

    /// The element at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<T> {
        match self.repr {
            Repr::Native(items) => items.get(index).copied(),
            Repr::Le(bytes) => {
                let start = index.checked_mul(T::SIZE)?;
                bytes
                    .get(start..start.checked_add(T::SIZE)?)
                    .map(T::read_le)
            }
        }
    }

    /// The native slice, when this array was built from one (not when decoded).
    pub const fn as_native(&self) -> Option<&'a [T]> {
        match self.repr {
            Repr::Native(items) => Some(items),
            Repr::Le(_) => None,
        }
    }

    /// Iterates over the elements.
    pub fn iter(&self) -> PackedIter<'a, T> {
        PackedIter {
            inner: match self.repr {
                Repr::Native(items) => IterRepr::Native(items.iter()),
                Repr::Le(bytes) => IterRepr::Le(bytes.chunks_exact(T::SIZE)),
            },
        }
    }

    /// Copies the elements into a `Vec`.
    #[cfg(feature = "std")]
    pub fn to_vec(&self) -> std::vec::Vec<T> {
        self.iter().collect()
    }

    /// Writes the array as a postcard byte string into a serde tuple: the varint byte length,
    /// then every byte as a `u8` element (postcard writes a `u8` as one raw byte).
    pub(crate) fn serialize_into<S: SerializeTuple>(&self, t: &mut S) -> Result<(), S::Error> {
        t.serialize_element(&self.byte_len())?;
        match self.repr {
            Repr::Native(items) => items
                .iter()
                .try_for_each(|item| item.write_le(|b| t.serialize_element(&b))),
            Repr::Le(bytes) => bytes.iter().try_for_each(|b| t.serialize_element(b)),
        }
    }
}

impl<'a, T: Packed> IntoIterator for PackedSlice<'a, T> {
    type Item = T;
    type IntoIter = PackedIter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Packed> PartialEq for PackedSlice<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<T: Packed> fmt::Debug for PackedSlice<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`PackedSlice`].
#[derive(Clone)]
pub struct PackedIter<'a, T> {
    inner: IterRepr<'a, T>,
}

#[derive(Clone)]
enum IterRepr<'a, T> {
    Native(core::slice::Iter<'a, T>),
    Le(core::slice::ChunksExact<'a, u8>),
}

impl<T: Packed> Iterator for PackedIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match &mut self.inner {
            IterRepr::Native(it) => it.next().copied(),
            IterRepr::Le(it) => it.next().map(T::read_le),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            IterRepr::Native(it) => it.size_hint(),
            IterRepr::Le(it) => it.size_hint(),
        }
    }
}

impl<T: Packed> DoubleEndedIterator for PackedIter<'_, T> {
    fn next_back(&mut self) -> Option<T> {
        match &mut self.inner {
            IterRepr::Native(it) => it.next_back().copied(),
            IterRepr::Le(it) => it.next_back().map(T::read_le),
        }
    }
}

impl<T: Packed> ExactSizeIterator for PackedIter<'_, T> {}
impl<T: Packed> FusedIterator for PackedIter<'_, T> {}
