//! One record: a fixed header, then the payload, padded to 8 bytes.
//!
//! The layout is specified in `segments/FORMAT.md` ("Record"); the offsets below are chained
//! constants that a test checks against that file.
//!
//! Two checksums, both seeded with the id of the segment the record belongs to, so bytes from
//! another segment (a recycled file, a misdirected write) fail them:
//! - `header_crc` covers the header fields, so a damaged header is told apart from a damaged
//!   payload (the recovery decision table needs the difference);
//! - `record_crc` covers the header fields and the payload: the whole record.

use crate::limits::{RECORD_HEADER_BYTES, align_up};
use byteorder::{ByteOrder, LittleEndian as LE};

pub(crate) const OFF_RECORD_CRC: usize = 0;
pub(crate) const OFF_HEADER_CRC: usize = OFF_RECORD_CRC + 4;
pub(crate) const OFF_INDEX: usize = OFF_HEADER_CRC + 4;
pub(crate) const OFF_TERM: usize = OFF_INDEX + 8;
pub(crate) const OFF_PAYLOAD_LEN: usize = OFF_TERM + 8;
pub(crate) const OFF_SYNCED_OFFSET: usize = OFF_PAYLOAD_LEN + 4;
pub(crate) const OFF_KIND: usize = OFF_SYNCED_OFFSET + 4;
pub(crate) const OFF_FLAGS: usize = OFF_KIND + 1;
pub(crate) const OFF_RESERVED: usize = OFF_FLAGS + 1;
const HEADER: usize = RECORD_HEADER_BYTES as usize;
const _: () = assert!(OFF_RESERVED + 6 == HEADER);

/// Flag: more records of the same write follow this one. A write is recovered whole or not at
/// all: records of a write whose last record (the one without this flag) is missing are a torn
/// tail.
pub(crate) const FLAG_CONTINUES: u8 = 1;
/// Bytes covered by both checksums (after the segment id): the header less the two checksums.
const COVERED: std::ops::Range<usize> = OFF_INDEX..HEADER;

/// (field, offset, size) of the record header, for the test against `segments/FORMAT.md`.
#[cfg(test)]
pub(crate) const LAYOUT: &[(&str, usize, usize)] = &[
    ("record_crc", OFF_RECORD_CRC, 4),
    ("header_crc", OFF_HEADER_CRC, 4),
    ("index", OFF_INDEX, 8),
    ("term", OFF_TERM, 8),
    ("payload_len", OFF_PAYLOAD_LEN, 4),
    ("synced_offset", OFF_SYNCED_OFFSET, 4),
    ("kind", OFF_KIND, 1),
    ("flags", OFF_FLAGS, 1),
    ("reserved", OFF_RESERVED, 6),
];

/// What a record means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A Raft entry: `index`, `term`, payload.
    Entry = 1,
    /// Entries below `index` are compacted; `term` is the term of `index - 1`; the payload is the
    /// id (u64) of the oldest segment still needed.
    Compact = 2,
    /// Every entry is dropped and the log restarts at `index`; `term` is the term of
    /// `index - 1` (a snapshot's); the payload is as for `Compact`.
    Reset = 3,
}

impl Kind {
    pub(crate) fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Compact),
            3 => Some(Kind::Reset),
            _ => None,
        }
    }
}

/// A decoded, checksum-verified record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub index: u64,
    pub term: u64,
    pub payload_len: u32,
    pub synced_offset: u32,
    pub kind: Kind,
    /// More records of the same write follow ([`FLAG_CONTINUES`]).
    pub continues: bool,
}

impl Header {
    /// Bytes the whole record occupies, padding included.
    pub(crate) fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + align_up(u64::from(self.payload_len))
    }
}

/// Why bytes at a record position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The header checksum failed or a header field is impossible.
    Header(crate::error::CorruptionKind),
    /// The header is valid (so `index` is trustworthy) but the whole-record checksum failed.
    Payload { index: u64, expected: u32, actual: u32 },
    /// The header is valid but states that the segment was synced past the record's own
    /// offset: it was written for a later position (a misdirected write) over bytes that were
    /// synced, which makes it proof of corruption in the middle.
    Misplaced { offset: u64, synced_offset: u64 },
}

impl Damage {
    /// The evidence, as reported in a corruption error.
    pub(crate) fn into_kind(self) -> crate::error::CorruptionKind {
        match self {
            Damage::Header(kind) => kind,
            Damage::Payload { expected, actual, .. } => {
                crate::error::CorruptionKind::Checksum { what: "record", expected, actual }
            }
            Damage::Misplaced { offset, synced_offset } => crate::error::CorruptionKind::Malformed(format!(
                "the record at offset {offset} has a valid header stating that the segment was synced up to \
                 offset {synced_offset}: it was written for a later position (a misdirected write) over synced bytes"
            )),
        }
    }
}

/// Appends the encoded record (header, payload, zero padding) to `out`.
#[cfg_attr(not(any(test, feature = "internals")), allow(dead_code))]
pub(crate) fn encode(out: &mut Vec<u8>, segment_id: u64, h: &Header, payload: &[u8]) {
    encode_parts(out, segment_id, h, &[payload]);
}

/// As [`encode`], for a payload given as consecutive parts (a prefix and the caller's bytes),
/// copied once, straight into `out`.
pub(crate) fn encode_parts(out: &mut Vec<u8>, segment_id: u64, h: &Header, parts: &[&[u8]]) {
    assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), h.payload_len as usize);
    let start = out.len();
    out.resize(start + HEADER, 0);
    let hdr = &mut out[start..start + HEADER];
    LE::write_u64(&mut hdr[OFF_INDEX..], h.index);
    LE::write_u64(&mut hdr[OFF_TERM..], h.term);
    LE::write_u32(&mut hdr[OFF_PAYLOAD_LEN..], h.payload_len);
    LE::write_u32(&mut hdr[OFF_SYNCED_OFFSET..], h.synced_offset);
    hdr[OFF_KIND] = h.kind as u8;
    hdr[OFF_FLAGS] = if h.continues { FLAG_CONTINUES } else { 0 };
    let (header_crc, record_crc) = checksums(segment_id, &hdr[COVERED], parts);
    LE::write_u32(&mut hdr[OFF_HEADER_CRC..], header_crc);
    LE::write_u32(&mut hdr[OFF_RECORD_CRC..], record_crc);
    for part in parts {
        out.extend_from_slice(part);
    }
    out.resize(start + h.record_bytes() as usize, 0);
}

fn checksums(segment_id: u64, covered: &[u8], payload: &[&[u8]]) -> (u32, u32) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment_id.to_le_bytes());
    hasher.update(covered);
    let header_crc = hasher.clone().finalize();
    for part in payload {
        hasher.update(part);
    }
    (header_crc, hasher.finalize())
}

/// Whether `bytes` (a record header position) is all zeros: unwritten space.
pub(crate) fn is_zero_header(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER && bytes[..HEADER].iter().all(|&b| b == 0)
}

/// Decodes and checks the header at the start of `bytes`, bound to `segment_id`.
/// `offset` is where `bytes` starts in its segment; `limit` is the segment's size.
pub(crate) fn decode_header(bytes: &[u8], segment_id: u64, offset: u64, limit: u64) -> Result<Header, Damage> {
    use crate::error::CorruptionKind::{Checksum, Malformed};
    if bytes.len() < HEADER {
        return Err(Damage::Header(Malformed(format!(
            "record header needs {HEADER} bytes, {} remain in the segment",
            bytes.len()
        ))));
    }
    let hdr = &bytes[..HEADER];
    let stored = LE::read_u32(&hdr[OFF_HEADER_CRC..]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment_id.to_le_bytes());
    hasher.update(&hdr[COVERED]);
    let actual = hasher.finalize();
    if stored != actual {
        return Err(Damage::Header(Checksum { what: "record header", expected: stored, actual }));
    }
    let kind = Kind::from_u8(hdr[OFF_KIND])
        .ok_or_else(|| Damage::Header(Malformed(format!("record kind {} is unknown", hdr[OFF_KIND]))))?;
    if hdr[OFF_FLAGS] & !FLAG_CONTINUES != 0 || hdr[OFF_RESERVED..HEADER].iter().any(|&b| b != 0) {
        return Err(Damage::Header(Malformed("record header has unknown flags or non-zero reserved bytes".into())));
    }
    let h = Header {
        index: LE::read_u64(&hdr[OFF_INDEX..]),
        term: LE::read_u64(&hdr[OFF_TERM..]),
        payload_len: LE::read_u32(&hdr[OFF_PAYLOAD_LEN..]),
        synced_offset: LE::read_u32(&hdr[OFF_SYNCED_OFFSET..]),
        kind,
        continues: hdr[OFF_FLAGS] & FLAG_CONTINUES != 0,
    };
    if offset.checked_add(h.record_bytes()).is_none_or(|end| end > limit) {
        return Err(Damage::Header(Malformed(format!(
            "record of {} payload bytes at offset {offset} runs past the segment end {limit}",
            h.payload_len
        ))));
    }
    if u64::from(h.synced_offset) > offset {
        return Err(Damage::Misplaced { offset, synced_offset: u64::from(h.synced_offset) });
    }
    if h.index == 0 || h.index > crate::limits::INDEX_MAX || h.term > crate::limits::INDEX_MAX {
        return Err(Damage::Header(Malformed(format!("record index {} or term {} is out of range", h.index, h.term))));
    }
    Ok(h)
}

/// Checks the whole-record checksum of a record whose header `h` was decoded from
/// `bytes[..HEADER]`; returns the payload.
pub(crate) fn check_payload<'a>(bytes: &'a [u8], segment_id: u64, h: &Header) -> Result<&'a [u8], Damage> {
    let len = h.payload_len as usize;
    let payload = &bytes[HEADER..HEADER + len];
    let (_, actual) = checksums(segment_id, &bytes[COVERED], &[payload]);
    let expected = LE::read_u32(&bytes[OFF_RECORD_CRC..]);
    if expected != actual {
        return Err(Damage::Payload { index: h.index, expected, actual });
    }
    Ok(payload)
}

/// Decodes a whole record at the start of `bytes`: header and payload checked.
#[cfg_attr(not(any(test, feature = "internals")), allow(dead_code))]
pub(crate) fn decode(bytes: &[u8], segment_id: u64, offset: u64, limit: u64) -> Result<(Header, &[u8]), Damage> {
    let h = decode_header(bytes, segment_id, offset, limit)?;
    let payload = check_payload(bytes, segment_id, &h)?;
    Ok((h, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, payload: &[u8]) -> (Header, Vec<u8>) {
        let h =
            Header { index: 7, term: 3, payload_len: payload.len() as u32, synced_offset: 64, kind, continues: true };
        let mut buf = Vec::new();
        encode(&mut buf, 42, &h, payload);
        (h, buf)
    }

    #[test]
    fn round_trip_and_padding() {
        let (h, buf) = sample(Kind::Entry, b"hello");
        assert_eq!(buf.len(), 48);
        assert_eq!(&buf[45..], &[0, 0, 0]);
        let (got, payload) = decode(&buf, 42, 64, 4096).unwrap();
        assert_eq!(got, h);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn checksums_bind_the_segment() {
        let (_, buf) = sample(Kind::Entry, b"hello");
        assert!(matches!(decode(&buf, 43, 64, 4096), Err(Damage::Header(_))));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let (_, buf) = sample(Kind::Compact, b"payload bytes!");
        for bit in 0..(HEADER + 14) * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let r = decode(&b, 42, 64, 4096);
            assert!(r.is_err(), "flip of bit {bit} went unnoticed");
            if bit / 8 >= HEADER {
                assert!(matches!(r, Err(Damage::Payload { .. })), "payload flip {bit} misclassified");
            }
        }
    }

    #[test]
    fn impossible_fields_are_header_damage() {
        let (_, buf) = sample(Kind::Entry, &[1; 100]);
        // Runs past the end of a small segment.
        assert!(matches!(decode(&buf, 42, 4000, 4096), Err(Damage::Header(_))));
        // Claims more synced bytes than its own offset: a valid header in the wrong place.
        assert!(matches!(decode(&buf, 42, 8, 4096), Err(Damage::Misplaced { offset: 8, synced_offset: 64 })));
        assert!(matches!(decode(&buf[..20], 42, 64, 4096), Err(Damage::Header(_))));
    }
}
