//! Segment files: naming, the segment header, and the footer that seals a full segment.
//!
//! Layouts are specified in `segments/FORMAT.md` ("Segment header", "Footer").
//!
//! Invariants:
//! - segment ids are never reused: a new segment's id is one more than the newest id present;
//! - a segment file keeps its preallocated size (`segment_bytes`, stored in its header) for life;
//! - a segment is sealed (footer written and synced) before the next segment receives a record.

use crate::error::{Corruption, CorruptionKind, Result};
use crate::io::{DataFile, Map};
use crate::limits::{FOOTER_ENTRY_BYTES, FOOTER_TRAILER_BYTES, SEGMENT_HEADER_BYTES};
use crate::wal::reader::SegmentReader;
use crate::wal::record::Kind;
use byteorder::{ByteOrder, LittleEndian as LE};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Magic bytes at offset 0 of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"KEELSEG\0";
/// Magic bytes that start the footer trailer of a sealed segment.
pub(crate) const FOOTER_MAGIC: [u8; 8] = *b"KEELSEAL";
/// The segment format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const OFF_MAGIC: usize = 0;
pub(crate) const OFF_VERSION: usize = OFF_MAGIC + 8;
pub(crate) const OFF_HEADER_CRC: usize = OFF_VERSION + 4;
pub(crate) const OFF_SEGMENT_ID: usize = OFF_HEADER_CRC + 4;
pub(crate) const OFF_SEGMENT_BYTES: usize = OFF_SEGMENT_ID + 8;
pub(crate) const OFF_HEADER_RESERVED: usize = OFF_SEGMENT_BYTES + 8;
const _: () = assert!(OFF_HEADER_RESERVED + 32 == SEGMENT_HEADER_BYTES as usize);

/// (field, offset, size) of the segment header, for the test against `segments/FORMAT.md`.
#[cfg(test)]
pub(crate) const HEADER_LAYOUT: &[(&str, usize, usize)] = &[
    ("magic", OFF_MAGIC, 8),
    ("version", OFF_VERSION, 4),
    ("header_crc", OFF_HEADER_CRC, 4),
    ("segment_id", OFF_SEGMENT_ID, 8),
    ("segment_bytes", OFF_SEGMENT_BYTES, 8),
    ("reserved", OFF_HEADER_RESERVED, 32),
];

pub(crate) const OFF_FE_INDEX: usize = 0;
pub(crate) const OFF_FE_TERM: usize = OFF_FE_INDEX + 8;
pub(crate) const OFF_FE_OFFSET: usize = OFF_FE_TERM + 8;
pub(crate) const OFF_FE_KIND: usize = OFF_FE_OFFSET + 4;
pub(crate) const OFF_FE_RESERVED: usize = OFF_FE_KIND + 1;
const _: () = assert!(OFF_FE_RESERVED + 3 == FOOTER_ENTRY_BYTES as usize);

/// (field, offset, size) of a footer entry.
#[cfg(test)]
pub(crate) const FOOTER_ENTRY_LAYOUT: &[(&str, usize, usize)] = &[
    ("index", OFF_FE_INDEX, 8),
    ("term", OFF_FE_TERM, 8),
    ("record_offset", OFF_FE_OFFSET, 4),
    ("kind", OFF_FE_KIND, 1),
    ("reserved", OFF_FE_RESERVED, 3),
];

pub(crate) const OFF_FT_MAGIC: usize = 0;
pub(crate) const OFF_FT_ENTRY_COUNT: usize = OFF_FT_MAGIC + 8;
pub(crate) const OFF_FT_CRC: usize = OFF_FT_ENTRY_COUNT + 4;
pub(crate) const OFF_FT_RECORDS_END: usize = OFF_FT_CRC + 4;
pub(crate) const OFF_FT_RESERVED: usize = OFF_FT_RECORDS_END + 8;
const _: () = assert!(OFF_FT_RESERVED + 8 == FOOTER_TRAILER_BYTES as usize);

/// (field, offset, size) of the footer trailer.
#[cfg(test)]
pub(crate) const FOOTER_TRAILER_LAYOUT: &[(&str, usize, usize)] = &[
    ("magic", OFF_FT_MAGIC, 8),
    ("entry_count", OFF_FT_ENTRY_COUNT, 4),
    ("footer_crc", OFF_FT_CRC, 4),
    ("records_end", OFF_FT_RECORDS_END, 8),
    ("reserved", OFF_FT_RESERVED, 8),
];

/// The file name of segment `id`.
pub(crate) fn file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The segment id a file name stands for, if it names a segment.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes the segment header.
pub(crate) fn encode_header(id: u64, segment_bytes: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
    LE::write_u32(&mut h[OFF_VERSION..], FORMAT_VERSION);
    LE::write_u64(&mut h[OFF_SEGMENT_ID..], id);
    LE::write_u64(&mut h[OFF_SEGMENT_BYTES..], segment_bytes);
    let crc = header_crc(&h);
    LE::write_u32(&mut h[OFF_HEADER_CRC..], crc);
    h
}

fn header_crc(h: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[..OFF_HEADER_CRC]);
    hasher.update(&h[OFF_SEGMENT_ID..SEGMENT_HEADER_BYTES as usize]);
    hasher.finalize()
}

/// What a segment header says, or why it cannot be trusted.
#[derive(Debug)]
pub(crate) enum HeaderCheck {
    Valid {
        segment_bytes: u64,
    },
    /// Another format version: not damage, but not readable by this build.
    Version(u32),
    Damaged(CorruptionKind),
}

/// Checks a segment header read from the file named for `id`.
pub(crate) fn check_header(h: &[u8], id: u64) -> HeaderCheck {
    use CorruptionKind::{Checksum, Malformed};
    if h.len() < SEGMENT_HEADER_BYTES as usize {
        return HeaderCheck::Damaged(Malformed(format!("file holds {} bytes, shorter than a segment header", h.len())));
    }
    if h[OFF_MAGIC..OFF_MAGIC + 8] != SEGMENT_MAGIC {
        return HeaderCheck::Damaged(Malformed("segment header magic is wrong".into()));
    }
    let stored = LE::read_u32(&h[OFF_HEADER_CRC..]);
    let actual = header_crc(h);
    if stored != actual {
        return HeaderCheck::Damaged(Checksum { what: "segment header", expected: stored, actual });
    }
    let version = LE::read_u32(&h[OFF_VERSION..]);
    if version != FORMAT_VERSION {
        return HeaderCheck::Version(version);
    }
    let stored_id = LE::read_u64(&h[OFF_SEGMENT_ID..]);
    if stored_id != id {
        return HeaderCheck::Damaged(Malformed(format!(
            "segment header names segment {stored_id}, but the file name names segment {id}"
        )));
    }
    let segment_bytes = LE::read_u64(&h[OFF_SEGMENT_BYTES..]);
    if !(crate::limits::SEGMENT_BYTES_MIN..=crate::limits::SEGMENT_BYTES_MAX).contains(&segment_bytes)
        || segment_bytes % crate::limits::RECORD_ALIGN_BYTES != 0
    {
        return HeaderCheck::Damaged(Malformed(format!("segment size {segment_bytes} is out of range")));
    }
    if h[OFF_HEADER_RESERVED..SEGMENT_HEADER_BYTES as usize].iter().any(|&b| b != 0) {
        return HeaderCheck::Damaged(Malformed("segment header reserved bytes are not zero".into()));
    }
    HeaderCheck::Valid { segment_bytes }
}

/// One entry of a footer (and of the in-memory list of a segment's records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FooterEntry {
    pub index: u64,
    pub term: u64,
    pub offset: u32,
    pub kind: Kind,
}

/// Bytes the footer of `count` entries takes, trailer included.
pub(crate) const fn footer_bytes(count: u64) -> u64 {
    count * FOOTER_ENTRY_BYTES + FOOTER_TRAILER_BYTES
}

/// Encodes the footer that seals a segment: entries, then the trailer, ending at `segment_bytes`.
/// Returns the bytes and the offset they go to.
pub(crate) fn encode_footer(id: u64, segment_bytes: u64, records_end: u64, entries: &[FooterEntry]) -> (Vec<u8>, u64) {
    let total = footer_bytes(entries.len() as u64);
    let start = segment_bytes - total;
    assert!(records_end <= start, "footer overlaps records");
    let mut buf = vec![0u8; total as usize];
    for (chunk, e) in buf.chunks_exact_mut(FOOTER_ENTRY_BYTES as usize).zip(entries) {
        LE::write_u64(&mut chunk[OFF_FE_INDEX..], e.index);
        LE::write_u64(&mut chunk[OFF_FE_TERM..], e.term);
        LE::write_u32(&mut chunk[OFF_FE_OFFSET..], e.offset);
        chunk[OFF_FE_KIND] = e.kind as u8;
    }
    let t = entries.len() * FOOTER_ENTRY_BYTES as usize;
    buf[t + OFF_FT_MAGIC..t + OFF_FT_MAGIC + 8].copy_from_slice(&FOOTER_MAGIC);
    LE::write_u32(&mut buf[t + OFF_FT_ENTRY_COUNT..], entries.len() as u32);
    LE::write_u64(&mut buf[t + OFF_FT_RECORDS_END..], records_end);
    let crc = footer_crc(id, &buf);
    LE::write_u32(&mut buf[t + OFF_FT_CRC..], crc);
    (buf, start)
}

fn footer_crc(id: u64, footer: &[u8]) -> u32 {
    let t = footer.len() - FOOTER_TRAILER_BYTES as usize;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_le_bytes());
    hasher.update(&footer[..t + OFF_FT_CRC]);
    hasher.update(&footer[t + OFF_FT_RECORDS_END..]);
    hasher.finalize()
}

/// What the end of a segment says about sealing.
#[derive(Debug)]
pub(crate) enum FooterCheck {
    /// No footer magic at the trailer position: the segment was never sealed.
    Absent,
    /// A valid footer: the segment's records, and where they end.
    Sealed { entries: Vec<FooterEntry>, records_end: u64 },
    /// A footer magic with a bad checksum or impossible fields, at this offset.
    Damaged { offset: u64, kind: CorruptionKind },
}

/// Reads the footer of segment `id` through `r`, whose size is the segment's `segment_bytes`
/// (the trailer, then the entries it counts). `Err` only if the bytes cannot be read.
pub(crate) fn check_footer(r: &mut SegmentReader<'_>, id: u64) -> Result<FooterCheck> {
    use CorruptionKind::{Checksum, Malformed};
    let size = r.size();
    let tstart = size - FOOTER_TRAILER_BYTES;
    let trailer: [u8; FOOTER_TRAILER_BYTES as usize] =
        r.bytes(tstart, FOOTER_TRAILER_BYTES)?.try_into().expect("a segment is larger than its trailer");
    if trailer[OFF_FT_MAGIC..OFF_FT_MAGIC + 8] != FOOTER_MAGIC {
        return Ok(FooterCheck::Absent);
    }
    let damaged = |offset, kind| Ok(FooterCheck::Damaged { offset, kind });
    let count = u64::from(LE::read_u32(&trailer[OFF_FT_ENTRY_COUNT..]));
    let records_end = LE::read_u64(&trailer[OFF_FT_RECORDS_END..]);
    let max_count = (size - SEGMENT_HEADER_BYTES - FOOTER_TRAILER_BYTES) / FOOTER_ENTRY_BYTES;
    if count > max_count {
        return damaged(tstart, Malformed(format!("footer claims {count} entries, more than fit")));
    }
    let start = size - footer_bytes(count);
    let footer = r.bytes(start, size - start)?;
    let stored = LE::read_u32(&trailer[OFF_FT_CRC..]);
    let actual = footer_crc(id, footer);
    if stored != actual {
        return damaged(tstart, Checksum { what: "footer", expected: stored, actual });
    }
    if records_end < SEGMENT_HEADER_BYTES || records_end > start || records_end % crate::limits::RECORD_ALIGN_BYTES != 0
    {
        return damaged(tstart, Malformed(format!("footer records_end {records_end} is out of range")));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut prev_offset = None;
    for (i, chunk) in
        footer[..(count * FOOTER_ENTRY_BYTES) as usize].chunks_exact(FOOTER_ENTRY_BYTES as usize).enumerate()
    {
        let at = start + i as u64 * FOOTER_ENTRY_BYTES;
        let Some(kind) = Kind::from_u8(chunk[OFF_FE_KIND]) else {
            return damaged(at, Malformed(format!("footer entry kind {} is unknown", chunk[OFF_FE_KIND])));
        };
        let e = FooterEntry {
            index: LE::read_u64(&chunk[OFF_FE_INDEX..]),
            term: LE::read_u64(&chunk[OFF_FE_TERM..]),
            offset: LE::read_u32(&chunk[OFF_FE_OFFSET..]),
            kind,
        };
        let off = u64::from(e.offset);
        let ordered = prev_offset.is_none_or(|p| off > p);
        if !ordered
            || off < SEGMENT_HEADER_BYTES
            || off + crate::limits::RECORD_HEADER_BYTES > records_end
            || e.index == 0
            || e.index > crate::limits::INDEX_MAX
            || e.term > crate::limits::INDEX_MAX
        {
            return damaged(
                at,
                Malformed(format!("footer entry {i} (offset {off}, index {}) is out of place", e.index)),
            );
        }
        prev_offset = Some(off);
        entries.push(e);
    }
    Ok(FooterCheck::Sealed { entries, records_end })
}

/// An open segment: its file and the read-only map of all of it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    pub file: Box<dyn DataFile>,
    pub map: Arc<Map>,
    pub segment_bytes: u64,
}

impl Segment {
    pub(crate) fn path_in(dir: &Path, id: u64) -> PathBuf {
        dir.join(file_name(id))
    }

    pub(crate) fn corruption(&self, offset: u64, kind: CorruptionKind) -> Corruption {
        Corruption::new(&self.path, offset, kind)
    }

    /// The error for a damaged record found by a read after open (rule `READ_RECORD_REFUSE`).
    pub(crate) fn read_refusal(&self, offset: u64, index: u64, kind: CorruptionKind) -> crate::Error {
        let mut c = self.corruption(offset, kind);
        c.affected_indexes = Some((index, index));
        c.rule = Some(crate::wal::recovery_table::READ_RECORD_REFUSE);
        c.into_error()
    }

    /// The segment's bytes through its map: for entry reads only. A failed page-in there raises
    /// `SIGBUS`; scans read through [`Segment::reader`].
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// A reader of the segment's bytes through `pread`, for scans (recovery, `Log::verify`).
    pub(crate) fn reader(&self) -> SegmentReader<'_> {
        SegmentReader::new(self.file.as_ref(), &self.path, self.segment_bytes)
    }

    /// A segment with no map, for recovery's dry run (`recovery::plan`), which reads only
    /// through [`Segment::reader`]: [`Segment::bytes`] is empty.
    pub(crate) fn unmapped(id: u64, path: PathBuf, file: Box<dyn DataFile>, segment_bytes: u64) -> Segment {
        Segment { id, path, file, map: Arc::new(Map::empty()), segment_bytes }
    }

    /// Builds a segment from an opened file, checking the size the header promises.
    pub(crate) fn map(id: u64, path: PathBuf, file: Box<dyn DataFile>, segment_bytes: u64) -> Result<Segment> {
        let map = file.map(segment_bytes).map_err(|e| crate::Error::io("map", &path, e))?;
        Ok(Segment { id, path, file, map: Arc::new(map), segment_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::reader::MemFile;

    fn check_footer(segment: &[u8], id: u64) -> FooterCheck {
        let file = MemFile(segment.to_vec());
        super::check_footer(&mut SegmentReader::new(&file, Path::new("s"), segment.len() as u64), id).unwrap()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(12), "00000000000000000012.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("12.seg"), None);
        assert_eq!(parse_file_name("0000000000000000001x.seg"), None);
        assert_eq!(parse_file_name("LOCK"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = encode_header(5, 1 << 20);
        assert!(matches!(check_header(&h, 5), HeaderCheck::Valid { segment_bytes } if segment_bytes == 1 << 20));
        assert!(matches!(check_header(&h, 6), HeaderCheck::Damaged(_)));
        for i in 0..h.len() {
            let mut b = h;
            b[i] ^= 0x10;
            assert!(!matches!(check_header(&b, 5), HeaderCheck::Valid { .. }), "flip at byte {i} unnoticed");
        }
    }

    #[test]
    fn version_mismatch_is_its_own_outcome() {
        let mut h = encode_header(5, 1 << 20);
        LE::write_u32(&mut h[OFF_VERSION..], 9);
        let crc = header_crc(&h);
        LE::write_u32(&mut h[OFF_HEADER_CRC..], crc);
        assert!(matches!(check_header(&h, 5), HeaderCheck::Version(9)));
    }

    #[test]
    fn footer_round_trip_and_damage() {
        let size = 8192u64;
        let entries = vec![
            FooterEntry { index: 1, term: 1, offset: 64, kind: Kind::Entry },
            FooterEntry { index: 2, term: 1, offset: 120, kind: Kind::Entry },
        ];
        let mut seg = vec![0u8; size as usize];
        assert!(matches!(check_footer(&seg, 3), FooterCheck::Absent));
        let (buf, at) = encode_footer(3, size, 200, &entries);
        seg[at as usize..].copy_from_slice(&buf);
        match check_footer(&seg, 3) {
            FooterCheck::Sealed { entries: got, records_end } => {
                assert_eq!(got, entries);
                assert_eq!(records_end, 200);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(check_footer(&seg, 4), FooterCheck::Damaged { .. }));
        for i in at as usize..seg.len() {
            let mut s = seg.clone();
            s[i] ^= 1;
            assert!(!matches!(check_footer(&s, 3), FooterCheck::Sealed { .. }), "flip at {i} unnoticed");
        }
    }
}
