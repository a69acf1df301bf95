//! [`Payload`]: bytes that are either inside a mapped segment or on the heap, shared cheaply.

use crate::io::Map;
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// A cheap, shared, immutable byte string. Read from the log it points into the segment's map
/// (no copy) and keeps the map alive, so it stays valid after compaction removes the segment;
/// built from a `Vec<u8>` it lives on the heap. Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct Payload {
    backing: Backing,
    start: usize,
    len: usize,
}

#[derive(Clone)]
enum Backing {
    Map(Arc<Map>),
    Heap(Arc<[u8]>),
}

impl Payload {
    pub(crate) fn mapped(map: Arc<Map>, start: usize, len: usize) -> Payload {
        assert!(start + len <= map.len(), "payload outside its map");
        Payload { backing: Backing::Map(map), start, len }
    }

    /// A sub-range of this payload, sharing the same backing.
    pub fn slice(&self, range: Range<usize>) -> Payload {
        assert!(range.start <= range.end && range.end <= self.len, "slice {range:?} of {} bytes", self.len);
        Payload { backing: self.backing.clone(), start: self.start + range.start, len: range.end - range.start }
    }

    /// Whether the bytes live in a mapped segment (read without copying).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Map(_))
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::from(Vec::new())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        let len = v.len();
        Payload { backing: Backing::Heap(v.into()), start: 0, len }
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Payload {
        Payload::from(v.to_vec())
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.backing {
            Backing::Map(m) => m,
            Backing::Heap(h) => h,
        };
        &all[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes{})", self.len, if self.is_mapped() { ", mapped" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_and_compare_by_content() {
        let p = Payload::from(b"hello world".to_vec());
        let w = p.slice(6..11);
        assert_eq!(&*w, b"world");
        assert_eq!(&*w.slice(1..3), b"or");
        assert_eq!(w, Payload::from(&b"world"[..]));
        assert!(!w.is_mapped());
        assert_eq!(format!("{w:?}"), "Payload(5 bytes)");
    }

    #[test]
    #[should_panic]
    fn slice_out_of_range_is_a_bug() {
        let _ = Payload::from(vec![1, 2, 3]).slice(2..4);
    }
}
