//! Crate-private pieces that keel's own test harness needs (the `keel-harness` crate: fuzz
//! targets, the simulated disk, the torture and simulator tests). Compiled only with the hidden
//! `internals` feature, which nothing but `keel-harness` turns on: this is not a public API and
//! carries no stability promise.

use crate::limits;
use crate::wal::record;

pub use crate::rng::Rng;

/// Record decoding: the first 8 input bytes choose the segment id (small, so valid records are
/// reachable) and the rest is a record position at offset 64 of a segment that ends with them.
pub fn fuzz_record(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let id = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % 8;
    let bytes = &data[8..];
    let offset = limits::SEGMENT_HEADER_BYTES;
    let limit = offset + bytes.len() as u64;
    if let Ok((h, payload)) = record::decode(bytes, id, offset, limit) {
        let mut again = Vec::new();
        record::encode(&mut again, id, &h, payload);
        let covered = limits::RECORD_HEADER_BYTES as usize + payload.len();
        assert_eq!(&again[..covered], &bytes[..covered], "a decoded record re-encodes to the same bytes");
    }
}
