//! Every size limit of the log in one place, with compile-time checks of how they relate.
//!
//! The byte layouts these limits constrain are specified in `segments/FORMAT.md`.

/// Bytes of the segment header at offset 0 of every segment file.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Bytes of a record header; the payload follows it.
pub const RECORD_HEADER_BYTES: u64 = 40;
/// Records start, and are padded to end, on this boundary.
pub const RECORD_ALIGN_BYTES: u64 = 8;
/// Bytes of one footer entry of a sealed segment.
pub const FOOTER_ENTRY_BYTES: u64 = 24;
/// Bytes of the footer trailer, the last bytes of a sealed segment.
pub const FOOTER_TRAILER_BYTES: u64 = 32;

/// Default preallocated size of a segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest segment size accepted (small segments are for tests and golden files).
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Largest segment size: record offsets are stored as `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 32;

/// The largest Raft index (and term) the log accepts. Far beyond any real log, and low enough
/// that index arithmetic on bytes read from disk can never overflow.
pub const INDEX_MAX: u64 = i64::MAX as u64;

/// Default bytes of snapshot data per chunk of a snapshot transfer
/// ([`SnapshotSender`](crate::raft::SnapshotSender)): what one side holds in memory at a time.
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 1 << 20;
/// Largest chunk a sender makes: a chunk's byte count is encoded as a `u32`.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = u32::MAX as usize;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(FOOTER_ENTRY_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(FOOTER_TRAILER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(4096));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(
    SEGMENT_BYTES_MIN
        >= SEGMENT_HEADER_BYTES
            + FOOTER_TRAILER_BYTES
            + 4 * (RECORD_HEADER_BYTES + FOOTER_ENTRY_BYTES)
            + MARKER_RESERVE_BYTES
);
const _: () = assert!(SEGMENT_BYTES_MAX - 1 <= u32::MAX as u64);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_DEFAULT <= SNAPSHOT_CHUNK_BYTES_MAX);

/// Rounds `n` up to the record alignment.
pub const fn align_up(n: u64) -> u64 {
    (n + RECORD_ALIGN_BYTES - 1) & !(RECORD_ALIGN_BYTES - 1)
}

/// Bytes a record with `payload_bytes` of payload occupies on disk, padding included.
pub const fn record_bytes(payload_bytes: u64) -> u64 {
    RECORD_HEADER_BYTES + align_up(payload_bytes)
}

/// Space every segment keeps free of entries for one compaction or reset marker (an 8-byte
/// payload) and its footer entry, so that compaction, which frees space, never needs a new
/// segment (and so never needs free space on the disk) to record its boundary.
pub const MARKER_RESERVE_BYTES: u64 = record_bytes(8) + FOOTER_ENTRY_BYTES;

/// The largest payload a segment of `segment_bytes` can hold (one record plus its footer entry,
/// beside the marker reserve).
pub const fn payload_bytes_max(segment_bytes: u64) -> u64 {
    segment_bytes
        - SEGMENT_HEADER_BYTES
        - FOOTER_TRAILER_BYTES
        - FOOTER_ENTRY_BYTES
        - RECORD_HEADER_BYTES
        - MARKER_RESERVE_BYTES
}
