//! A read-only walk of one segment file: header, footer, records, damage. Every read is a
//! `pread` through [`SegmentReader`]; nothing is mapped, locked or written.

use crate::error::{Error, Result};
use crate::io::FileSystem;
use crate::limits::{FOOTER_TRAILER_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::wal::reader::SegmentReader;
use crate::wal::record::Kind;
use crate::wal::recovery;
use crate::wal::recovery_table::Damaged;
use crate::wal::segment::{self, FooterCheck, FooterEntry, HeaderCheck};
use byteorder::{ByteOrder, LittleEndian as LE};
use std::path::{Path, PathBuf};

/// What a segment's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderState {
    /// A valid header stating the segment's size.
    Valid {
        /// The size the header states (`segment_bytes`).
        segment_bytes: u64,
    },
    /// A valid header of another format version.
    Version(u32),
    /// A damaged header, or a file shorter than its header promises.
    Damaged(String),
}

/// How a segment's records were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentState {
    /// Sealed: a valid footer lists its records.
    Sealed,
    /// Not sealed (the active segment, or one whose footer was never written): scanned.
    Unsealed,
    /// A footer with a bad checksum or impossible fields, at `offset`; the records were scanned.
    FooterDamaged {
        /// Where the check failed (the trailer, or the footer entry at fault).
        offset: u64,
        /// Where the footer starts, as far as its trailer's entry count can tell (else
        /// `offset`): the damaged byte lies between here and the segment's end.
        footer_start: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header cannot be trusted: no record was read.
    NotRead,
}

/// A compaction or reset marker found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerInfo {
    /// True for a reset marker, false for a compaction marker.
    pub reset: bool,
    /// The marker's index: entries below it are compacted (or, for a reset, the next entry).
    pub index: u64,
    /// The term of `index - 1`.
    pub term: u64,
    /// The record's offset in the segment.
    pub record_offset: u64,
    /// The oldest segment still needed (the marker's payload), if its record reads back.
    pub boundary_segment: Option<u64>,
}

/// Damage found where the records of an unsealed segment stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanFinding {
    /// Where the first invalid position is.
    pub offset: u64,
    /// One past the last non-zero byte after it.
    pub garbage_end: u64,
    /// "record header" or "record payload".
    pub damaged: &'static str,
    /// The evidence.
    pub reason: String,
    /// A later valid record in the same segment proves the damaged bytes had been synced.
    pub proven_synced: bool,
}

/// A record listed by a sealed segment's footer that does not read back (found by `verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFinding {
    /// The record's offset.
    pub offset: u64,
    /// One past the record's last byte as its header states it (or the header's end, if the
    /// header itself is damaged).
    pub end: u64,
    /// The index the footer lists for it.
    pub index: u64,
    /// The evidence.
    pub reason: String,
}

/// One segment file, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The id its file name gives.
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// The file's size now.
    pub file_bytes: u64,
    /// The header.
    pub header: HeaderState,
    /// Sealed or not.
    pub state: SegmentState,
    /// Entry records (superseded ones included: a Raft truncation appends, never rewrites).
    pub entry_records: u64,
    /// Compaction and reset markers.
    pub markers: Vec<MarkerInfo>,
    /// Lowest and highest index among the entry records.
    pub index_range: Option<(u64, u64)>,
    /// Where the records end.
    pub records_end: Option<u64>,
    /// Damage where the scan of an unsealed segment stopped.
    pub scan_damage: Option<ScanFinding>,
    /// Records of a sealed segment that fail their checksums (only when every record was read).
    pub record_damage: Vec<RecordFinding>,
}

/// Reads segment `id` in `dir`: header, footer or scan, markers; with `every_record`, also
/// every record a footer lists, checksums and all.
pub(crate) fn read_segment(fs: &dyn FileSystem, dir: &Path, id: u64, every_record: bool) -> Result<SegmentInfo> {
    // Damage found by a scan may be a live process's write in flight: a record whose later
    // bytes reached the page cache before its header did, or a footer written while the
    // segment was being scanned (zeros, then the footer's bytes). Such damage is gone, or has
    // moved, when the segment is read again; damage on disk reads the same every time. (On a
    // directory no process holds, a damaged segment is just read twice.)
    let mut info = read_segment_once(fs, dir, id, every_record)?;
    for _ in 0..3 {
        if info.scan_damage.is_none() || info.state != SegmentState::Unsealed {
            break;
        }
        let again = read_segment_once(fs, dir, id, every_record)?;
        let same = again.state == info.state
            && again.scan_damage.as_ref().map(|d| (d.offset, d.garbage_end))
                == info.scan_damage.as_ref().map(|d| (d.offset, d.garbage_end));
        info = again;
        if same {
            break;
        }
    }
    Ok(info)
}

fn read_segment_once(fs: &dyn FileSystem, dir: &Path, id: u64, every_record: bool) -> Result<SegmentInfo> {
    let path = dir.join(segment::file_name(id));
    let file = fs.open(&path).map_err(|e| Error::io("open", &path, e))?;
    let file_bytes = file.len().map_err(|e| Error::io("stat", &path, e))?;
    let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
    let n = (file_bytes as usize).min(head.len());
    file.read_at(&mut head[..n], 0).map_err(|e| Error::io("read", &path, e))?;
    let mut info = SegmentInfo {
        id,
        path: path.clone(),
        file_bytes,
        header: HeaderState::Damaged(String::new()),
        state: SegmentState::NotRead,
        entry_records: 0,
        markers: Vec::new(),
        index_range: None,
        records_end: None,
        scan_damage: None,
        record_damage: Vec::new(),
    };
    let segment_bytes = match segment::check_header(&head[..n], id) {
        HeaderCheck::Valid { segment_bytes } if file_bytes < segment_bytes => {
            info.header =
                HeaderState::Damaged(format!("file holds {file_bytes} bytes; its header promises {segment_bytes}"));
            return Ok(info);
        }
        HeaderCheck::Valid { segment_bytes } => segment_bytes,
        HeaderCheck::Version(v) => {
            info.header = HeaderState::Version(v);
            return Ok(info);
        }
        HeaderCheck::Damaged(kind) => {
            info.header = HeaderState::Damaged(kind.to_string());
            return Ok(info);
        }
    };
    info.header = HeaderState::Valid { segment_bytes };
    let mut r = SegmentReader::new(file.as_ref(), &path, segment_bytes);
    let records = match segment::check_footer(&mut r, id)? {
        FooterCheck::Sealed { entries, records_end } => {
            info.state = SegmentState::Sealed;
            info.records_end = Some(records_end);
            if every_record {
                info.record_damage = check_listed(&mut r, id, &entries)?;
            }
            entries
        }
        other => {
            if let FooterCheck::Damaged { offset, kind } = other {
                let count = r.bytes(segment_bytes - FOOTER_TRAILER_BYTES + 8, 4)?;
                let count = if count.len() == 4 { u64::from(LE::read_u32(count)) } else { 0 };
                let footer_start = segment_bytes
                    .checked_sub(segment::footer_bytes(count))
                    .filter(|&s| s >= SEGMENT_HEADER_BYTES && s <= offset)
                    .unwrap_or(offset);
                info.state = SegmentState::FooterDamaged { offset, footer_start, reason: kind.to_string() };
            } else {
                info.state = SegmentState::Unsealed;
            }
            let scan = recovery::scan(&mut r, id)?;
            info.records_end = Some(scan.end);
            info.scan_damage = scan.damage.map(|d| ScanFinding {
                offset: d.offset,
                garbage_end: d.garbage_end,
                damaged: match d.damaged {
                    Damaged::RecordPayload => "record payload",
                    _ => "record header",
                },
                reason: d.kind.to_string(),
                proven_synced: d.proof.is_some(),
            });
            scan.records
        }
    };
    for e in &records {
        match e.kind {
            Kind::Entry => {
                info.entry_records += 1;
                info.index_range =
                    Some(info.index_range.map_or((e.index, e.index), |(lo, hi)| (lo.min(e.index), hi.max(e.index))));
            }
            Kind::Compact | Kind::Reset => {
                let boundary_segment = match r.record(u64::from(e.offset), id)? {
                    Ok((_, payload)) if payload.len() == 8 => Some(LE::read_u64(payload)),
                    _ => None,
                };
                info.markers.push(MarkerInfo {
                    reset: e.kind == Kind::Reset,
                    index: e.index,
                    term: e.term,
                    record_offset: u64::from(e.offset),
                    boundary_segment,
                });
            }
        }
    }
    Ok(info)
}

/// Every record a footer lists, read back and checked against its listing.
fn check_listed(r: &mut SegmentReader<'_>, id: u64, entries: &[FooterEntry]) -> Result<Vec<RecordFinding>> {
    let mut found = Vec::new();
    for e in entries {
        let offset = u64::from(e.offset);
        // The record's extent as its header states it, whether or not the checksums hold.
        let stated = r.bytes(offset, RECORD_HEADER_BYTES)?;
        let stated_len = if stated.len() == RECORD_HEADER_BYTES as usize {
            u64::from(LE::read_u32(&stated[crate::wal::record::OFF_PAYLOAD_LEN..]))
        } else {
            0
        };
        let finding = |end: u64, reason: String| RecordFinding { offset, end, index: e.index, reason };
        match r.record(offset, id)? {
            Ok((h, _)) if h.index == e.index && h.term == e.term && h.kind == e.kind => {}
            Ok((h, _)) => found.push(finding(
                offset + h.record_bytes(),
                format!(
                    "record holds index {} term {}, the footer lists index {} term {}",
                    h.index, h.term, e.index, e.term
                ),
            )),
            Err(d) => {
                let header_only = matches!(d, crate::wal::record::Damage::Header(_));
                let end = if header_only {
                    offset + RECORD_HEADER_BYTES
                } else {
                    (offset + crate::limits::align_up(RECORD_HEADER_BYTES + stated_len)).min(r.size())
                };
                found.push(finding(end, d.into_kind().to_string()));
            }
        }
    }
    Ok(found)
}
