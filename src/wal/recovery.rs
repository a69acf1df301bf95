//! Opening a log directory: lock, load segments, classify damage by the decision table in
//! `recovery_table.rs`, replay records into the index, repair the tail, report.
//!
//! Steps (newest segment first, so that "is anything valid after this damage?" is known):
//! 1. list `*.seg` files; check each header; map each segment at the size its header states;
//! 2. for each segment from the newest: take its records from the footer if sealed, otherwise
//!    scan them; classify any damage as tail or middle; stop at the boundary named by the newest
//!    compaction marker (older segments hold nothing live and are removed);
//! 3. replay the kept segments' records in file order into the entry index;
//! 4. zero and sync torn tails, remove dead segments, sync the directory, make sure an active
//!    segment exists, and sync it so that everything recovered is durable.

use super::prepare::{PREPARED_NAME, Preparer};
use super::record::{self, Kind};
use super::recovery_table::{self as table, Action, Damaged, Position};
use super::segment::{self, FooterCheck, FooterEntry, HeaderCheck, Segment};
use super::{Active, Loc, Log, LogOptions};
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::io::{FileSystem, ops};
use crate::limits::{self, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use byteorder::{ByteOrder, LittleEndian as LE};
use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub dir: PathBuf,
    /// Segment files found in the directory.
    pub segments_found: usize,
    /// Segments whose records came from their footer (not scanned).
    pub segments_sealed: usize,
    /// Segments whose records were scanned one by one.
    pub segments_scanned: usize,
    /// Entries in the log after recovery.
    pub entries_recovered: u64,
    pub first_index: u64,
    pub last_index: u64,
    /// Torn tails dropped, each with the decision-table rule that allowed it.
    pub truncations: Vec<Truncation>,
    /// Segment files removed (wholly compacted, or holding nothing but a torn tail).
    pub removed_segments: Vec<RemovedSegment>,
}

/// A torn tail that recovery dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub path: PathBuf,
    pub segment_id: u64,
    /// Where the dropped bytes start.
    pub offset: u64,
    /// How many bytes (up to the last non-zero one) were zeroed.
    pub bytes_dropped: u64,
    /// The decision-table label.
    pub rule: &'static str,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// A segment file that recovery removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedSegment {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "recovered {}: {} segments ({} sealed, {} scanned), {} entries, indexes {}..={}",
            self.dir.display(),
            self.segments_found,
            self.segments_sealed,
            self.segments_scanned,
            self.entries_recovered,
            self.first_index,
            self.last_index
        )?;
        for t in &self.truncations {
            writeln!(
                f,
                "  truncated {} at offset {}: {} bytes dropped [{}]: {}",
                t.path.display(),
                t.offset,
                t.bytes_dropped,
                t.rule,
                t.reason
            )?;
        }
        for r in &self.removed_segments {
            writeln!(f, "  removed {}: {}", r.path.display(), r.reason)?;
        }
        Ok(())
    }
}

/// Turns the prepared file at `prepared` into segment `id`: header, fdatasync, rename, directory
/// fsync. The file must be `segment_bytes` long and durable (see `prepare.rs`).
pub(crate) fn install_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    prepared: &Path,
    id: u64,
    segment_bytes: u64,
) -> Result<Segment> {
    let path = Segment::path_in(dir, id);
    let file = fs.open(prepared).map_err(Error::at("open", prepared))?;
    file.write_at(&segment::encode_header(id, segment_bytes), 0).map_err(Error::at("write", prepared))?;
    file.sync_data().map_err(Error::at("fdatasync", prepared))?;
    fs.rename(prepared, &path).map_err(Error::at("rename", &path))?;
    fs.sync_dir(dir).map_err(Error::at("fsync directory", dir))?;
    Segment::map(id, path, file, segment_bytes)
}

/// A segment as loaded: valid header and map, or why not.
enum Loaded {
    Mapped(Segment),
    BadHeader { path: PathBuf, file: Box<dyn crate::io::DataFile>, kind: CorruptionKind },
}

/// Damage found by scanning a segment's records.
#[derive(Debug)]
struct ScanDamage {
    /// Where the first invalid position is (inside an incomplete write, where its records stop).
    offset: u64,
    damaged: Damaged,
    kind: CorruptionKind,
    /// A valid record after the damage whose `synced_offset` lies past it: proof that the damaged
    /// bytes had been synced. (offset of that record)
    proof: Option<u64>,
    /// The damaged record's index, when its header is intact.
    damaged_index: Option<u64>,
    /// Lowest and highest index among valid records after the damage.
    later_indexes: Option<(u64, u64)>,
    /// One past the last non-zero byte at or after `offset`.
    garbage_end: u64,
}

#[derive(Debug)]
struct Scan {
    records: Vec<FooterEntry>,
    end: u64,
    damage: Option<ScanDamage>,
}

/// Reads records from the start of a segment until the first position that is not a valid
/// record, then classifies what follows.
fn scan(bytes: &[u8], id: u64) -> Scan {
    let size = bytes.len() as u64;
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut found = None;
    // (offset, records.len()) where the current write began, while its last record is missing.
    let mut open_write: Option<(u64, usize)> = None;
    // A record with a valid header whose `synced_offset` lies past its own offset: no writer
    // puts one there, so the bytes it covers were synced (corruption in the middle).
    let mut misplaced = None;
    while offset + RECORD_HEADER_BYTES <= size {
        let at = &bytes[offset as usize..];
        if record::is_zero_header(at) {
            break;
        }
        match record::decode(at, id, offset, size) {
            Ok((h, _)) => {
                if h.continues {
                    open_write.get_or_insert((offset, records.len()));
                } else {
                    open_write = None;
                }
                records.push(FooterEntry { index: h.index, term: h.term, offset: offset as u32, kind: h.kind });
                offset += h.record_bytes();
            }
            Err(d) => {
                misplaced = if let record::Damage::Misplaced { offset, .. } = d { Some(offset) } else { None };
                found = Some(d);
                break;
            }
        }
    }
    // A write whose last record is missing is dropped whole: the damage starts where it began.
    let mut torn_write = None;
    if let Some((write_start, count)) = open_write {
        records.truncate(count);
        torn_write = Some(offset);
        offset = write_start;
    }
    let end = offset;
    let garbage_end = last_nonzero_end(bytes, end);
    let mut damaged_index = None;
    // Where the damage itself is: the first position that is not a valid record.
    let damage_offset = torn_write.unwrap_or(end);
    let (damaged, kind) = match found {
        Some(d @ (record::Damage::Header(_) | record::Damage::Misplaced { .. })) => {
            (Damaged::RecordHeader, d.into_kind())
        }
        Some(d @ record::Damage::Payload { index, .. }) => {
            damaged_index = Some(index);
            (Damaged::RecordPayload, d.into_kind())
        }
        None if torn_write.is_some() => (
            Damaged::RecordHeader,
            CorruptionKind::Malformed(format!(
                "the write that starts at offset {end} is incomplete: its records stop at offset {damage_offset}"
            )),
        ),
        None if garbage_end == end => return Scan { records, end, damage: None },
        None => (
            Damaged::RecordHeader,
            CorruptionKind::Malformed(format!(
                "zeroed record header followed by non-zero bytes up to offset {garbage_end}"
            )),
        ),
    };
    // Look for valid records after the damage, at every aligned offset.
    let mut proof = misplaced;
    let mut later_indexes: Option<(u64, u64)> = None;
    let mut p = end + RECORD_ALIGN_BYTES;
    while p + RECORD_HEADER_BYTES <= garbage_end {
        let at = &bytes[p as usize..];
        // Cheap filter before checksumming: a known kind and zero reserved bytes.
        let plausible = record::Kind::from_u8(at[record::OFF_KIND]).is_some()
            && at[record::OFF_RESERVED..RECORD_HEADER_BYTES as usize].iter().all(|&b| b == 0);
        if plausible && let Ok((h, _)) = record::decode(at, id, p, size) {
            if u64::from(h.synced_offset) > end && proof.is_none() {
                proof = Some(p);
            }
            later_indexes =
                Some(later_indexes.map_or((h.index, h.index), |(lo, hi)| (lo.min(h.index), hi.max(h.index))));
            p += h.record_bytes();
            continue;
        }
        p += RECORD_ALIGN_BYTES;
    }
    Scan {
        records,
        end,
        damage: Some(ScanDamage {
            offset: damage_offset,
            damaged,
            kind,
            proof,
            damaged_index,
            later_indexes,
            garbage_end,
        }),
    }
}

/// One past the last non-zero byte in `bytes[from..]`, or `from` if all are zero.
///
/// Opening a log reads the unused rest of the active segment (up to a whole segment) to prove
/// it is zero; that read is memory-bound and most of R1's time, so a large range is split in
/// two halves checked on two threads.
fn last_nonzero_end(bytes: &[u8], from: u64) -> u64 {
    const PARALLEL_ABOVE: usize = 8 << 20;
    let tail = &bytes[from as usize..];
    if tail.len() < PARALLEL_ABOVE {
        return from + last_nonzero_in(tail) as u64;
    }
    let mid = tail.len() / 2;
    let (low, high) = tail.split_at(mid);
    let (low_end, high_end) = std::thread::scope(|s| {
        // Without a second thread (spawn refused), check both halves here.
        let checker = std::thread::Builder::new().spawn_scoped(s, || last_nonzero_in(high)).ok();
        let low_end = last_nonzero_in(low);
        let high_end = match checker {
            // A checker that cannot report counts as "non-zero to the end": never silently clean.
            Some(c) => c.join().unwrap_or(high.len()),
            None => last_nonzero_in(high),
        };
        (low_end, high_end)
    });
    from + if high_end > 0 { (mid + high_end) as u64 } else { low_end as u64 }
}

/// One past the last non-zero byte of `tail`, or 0.
fn last_nonzero_in(tail: &[u8]) -> usize {
    // Whole-block OR folds vectorize; only the last non-zero block is searched byte by byte.
    const BLOCK: usize = 4096;
    let mut end = tail.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &tail[start..end];
        if block.iter().fold(0u8, |a, &b| a | b) != 0 {
            let last = block.iter().rposition(|&b| b != 0).expect("block is non-zero");
            return start + last + 1;
        }
        end = start;
    }
    0
}

/// The records of a kept segment, and how recovery found them.
struct Kept {
    segment: Segment,
    records: Vec<FooterEntry>,
    sealed: bool,
    /// Records end (write offset) for an unsealed segment.
    end: u64,
    /// A torn tail to zero: (offset, garbage_end, rule, reason).
    tail: Option<(u64, u64, &'static str, String)>,
}

fn refuse(path: &Path, offset: u64, kind: CorruptionKind, rule: &'static str, affected: Option<(u64, u64)>) -> Error {
    let mut c = Corruption::new(path, offset, kind);
    c.rule = Some(rule);
    c.affected_indexes = affected;
    c.into_error()
}

pub(super) fn open(dir: &Path, options: LogOptions) -> Result<(Log, RecoveryReport)> {
    let LogOptions { segment_bytes, recovery_mode: mode, fs, preparation } = options;
    if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&segment_bytes) || segment_bytes % 4096 != 0 {
        return Err(Error::InvalidArgument(format!(
            "segment_bytes {segment_bytes} must be a multiple of 4096 in [{}, {}]",
            limits::SEGMENT_BYTES_MIN,
            limits::SEGMENT_BYTES_MAX
        )));
    }
    let lock = ops::lock_dir(fs.as_ref(), dir)?;
    let mut report = RecoveryReport { dir: dir.to_path_buf(), ..RecoveryReport::default() };

    // 1. Load every segment.
    let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| n.to_str().and_then(segment::parse_file_name)).collect();
    ids.sort_unstable();
    report.segments_found = ids.len();
    let mut loaded = Vec::with_capacity(ids.len());
    for &id in &ids {
        loaded.push(load(fs.as_ref(), dir, id)?);
    }

    // 2. Newest first: find records, classify damage, find the compaction boundary.
    let mut kept: Vec<Kept> = Vec::new(); // newest first
    let mut tail_segments: Vec<(PathBuf, String)> = Vec::new();
    let mut later_valid = false; // a newer segment holds a valid record or a seal
    let mut boundary: Option<u64> = None;
    let mut empty_newest: Option<Segment> = None;
    while let Some(l) = loaded.pop() {
        let id = ids[loaded.len()];
        if boundary.is_some_and(|b| id < b) {
            let path = match l {
                Loaded::Mapped(s) => s.path,
                Loaded::BadHeader { path, .. } => path,
            };
            report.removed_segments.push(RemovedSegment { path, reason: "below the compaction boundary".into() });
            continue;
        }
        let seg = match l {
            Loaded::Mapped(seg) => seg,
            Loaded::BadHeader { path, file, kind } => {
                // Can records still be found under the id the file name gives?
                let len = file.len().unwrap_or(0);
                let map_len = len - len % RECORD_ALIGN_BYTES;
                let has_records = map_len >= limits::SEGMENT_BYTES_MIN
                    && file.map(map_len).is_ok_and(|m| !scan(&m, id).records.is_empty());
                let position = if later_valid || has_records { Position::Middle } else { Position::Tail };
                let rule = table::decide(position, Damaged::SegmentHeader, mode);
                if rule.action == Action::Refuse {
                    return Err(refuse(&path, 0, kind, rule.label, None));
                }
                tail_segments.push((
                    path,
                    format!("segment header damaged ({kind}) and no record in or after it [{}]", rule.label),
                ));
                continue;
            }
        };
        let bytes = seg.bytes();
        let (records, sealed, end, damage) = match segment::check_footer(bytes, id) {
            FooterCheck::Sealed { entries, records_end } => {
                report.segments_sealed += 1;
                (entries, true, records_end, None)
            }
            // A segment is sealed and synced before the next one receives a record, so an
            // unsealed segment with valid records after it lost its footer.
            FooterCheck::Damaged { offset, kind } if later_valid => {
                let rule = table::decide(Position::Middle, Damaged::Footer, mode);
                return Err(refuse(&seg.path, offset, kind, rule.label, None));
            }
            FooterCheck::Absent if later_valid => {
                let rule = table::decide(Position::Middle, Damaged::Footer, mode);
                let offset = seg.segment_bytes - limits::FOOTER_TRAILER_BYTES;
                let kind =
                    CorruptionKind::Malformed("footer missing from a segment that has a successor with records".into());
                return Err(refuse(&seg.path, offset, kind, rule.label, None));
            }
            // Never sealed, or a torn seal with nothing after it: read record by record.
            FooterCheck::Absent | FooterCheck::Damaged { .. } => {
                report.segments_scanned += 1;
                let s = scan(bytes, id);
                (s.records, false, s.end, s.damage)
            }
        };
        let mut tail = None;
        if let Some(d) = damage {
            let position = if later_valid || d.proof.is_some() { Position::Middle } else { Position::Tail };
            let rule = table::decide(position, d.damaged, mode);
            if rule.action == Action::Refuse {
                // The damaged record's own index if its header survived, else the index after
                // the last entry before it, else the first valid one after it.
                let after_last = records.iter().rev().find(|r| r.kind == Kind::Entry).map(|r| r.index + 1);
                let lo = d.damaged_index.or(after_last).or(d.later_indexes.map(|l| l.0)).unwrap_or(1);
                let affected = Some((lo, d.later_indexes.map_or(lo, |l| l.1.max(lo))));
                return Err(refuse(&seg.path, d.offset, d.kind, rule.label, affected));
            }
            // A torn tail is dropped from where its write began.
            tail = Some((end, d.garbage_end, rule.label, d.kind.to_string()));
        }
        if records.is_empty() && !sealed {
            // Nothing valid here and nothing after. A clean, empty newest segment (created at a
            // rotation or by a previous open) stays the active one if what precedes it is sealed;
            // that is decided once the older segments are known.
            if tail.is_none() && kept.is_empty() && empty_newest.is_none() {
                empty_newest = Some(seg);
                continue;
            }
            // Otherwise it was cut short before a crash, or holds only a torn tail.
            let reason = match tail {
                Some((offset, _, rule, reason)) => {
                    format!("no valid record; torn bytes from offset {offset} [{rule}]: {reason}")
                }
                None => "holds no record".into(),
            };
            tail_segments.push((seg.path.clone(), reason));
            continue;
        }
        later_valid = true;
        if boundary.is_none() {
            boundary =
                records.iter().rev().find(|r| r.kind != Kind::Entry).map(|r| marker_boundary(&seg, r)).transpose()?;
        }
        kept.push(Kept { segment: seg, records, sealed, end, tail });
    }
    kept.reverse();
    if let Some(seg) = empty_newest {
        match kept.last() {
            Some(k) if !k.sealed || k.segment.id + 1 != seg.id => {
                // The segment before it is unsealed: that one stays active, this one goes.
                tail_segments.push((seg.path.clone(), "holds no record and follows an unsealed segment".into()));
            }
            _ => kept.push(Kept {
                segment: seg,
                records: Vec::new(),
                sealed: false,
                end: SEGMENT_HEADER_BYTES,
                tail: None,
            }),
        }
    }

    // Ids of kept segments must be dense: a missing one lost records.
    for pair in kept.windows(2) {
        if pair[1].segment.id != pair[0].segment.id + 1 {
            let missing = Segment::path_in(dir, pair[0].segment.id + 1);
            return Err(Corruption::new(
                missing,
                0,
                CorruptionKind::Malformed("segment file is missing between kept segments".into()),
            )
            .into_error());
        }
    }

    // 3. Replay.
    let mut replay = Replay::default();
    for k in &kept {
        for r in &k.records {
            replay
                .apply(k.segment.id, r)
                .map_err(|kind| Corruption::new(&k.segment.path, u64::from(r.offset), kind).into_error())?;
        }
    }

    let (first_index, prev_term, locs) = replay.finish().map_err(|kind| {
        let first = kept.first().map_or_else(|| dir.to_path_buf(), |k| k.segment.path.clone());
        Corruption::new(first, SEGMENT_HEADER_BYTES, kind).into_error()
    })?;

    // 4. Repair: zero torn tails, remove dead segments, ensure an active segment.
    for k in &kept {
        if let Some((offset, garbage_end, rule, reason)) = &k.tail {
            zero(k.segment.file.as_ref(), &k.segment.path, *offset, *garbage_end)?;
            report.truncations.push(Truncation {
                path: k.segment.path.clone(),
                segment_id: k.segment.id,
                offset: *offset,
                bytes_dropped: garbage_end - offset,
                rule,
                reason: reason.clone(),
            });
        }
    }
    let mut removed_any = !report.removed_segments.is_empty();
    for r in &report.removed_segments {
        fs.remove(&r.path).map_err(|e| Error::io("remove", &r.path, e))?;
    }
    for (path, reason) in tail_segments {
        fs.remove(&path).map_err(|e| Error::io("remove", &path, e))?;
        report.removed_segments.push(RemovedSegment { path, reason });
        removed_any = true;
    }
    if removed_any {
        fs.sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    let mut preparer = Preparer::new(Arc::clone(&fs), dir, segment_bytes, preparation);
    let mut active = None;
    if let Some(last) = kept.last_mut()
        && !last.sealed
    {
        active = Some(Active {
            write_offset: last.end,
            synced_offset: last.end,
            records: std::mem::take(&mut last.records),
            syncs: 0,
        });
    }
    let mut segments: VecDeque<Arc<Segment>> = kept.into_iter().map(|k| Arc::new(k.segment)).collect();
    let active = match active {
        Some(a) => {
            let seg = segments.back().expect("kept");
            // What recovery read may not be durable yet (a process crash leaves it in the page
            // cache): sync it, so every record's synced_offset claim stays true.
            seg.file.sync_data().map_err(|e| Error::io("fdatasync", &seg.path, e))?;
            a
        }
        None => {
            let id = segments.back().map_or(1, |s| s.id + 1);
            preparer.take().map_err(Error::at("prepare segment", &dir.join(PREPARED_NAME)))?;
            segments.push_back(Arc::new(install_segment(
                fs.as_ref(),
                dir,
                &dir.join(PREPARED_NAME),
                id,
                segment_bytes,
            )?));
            Active {
                write_offset: SEGMENT_HEADER_BYTES,
                synced_offset: SEGMENT_HEADER_BYTES,
                records: Vec::new(),
                syncs: 0,
            }
        }
    };

    let mut log = Log {
        dir: dir.to_path_buf(),
        fs,
        preparer,
        segment_bytes,
        _lock: lock,
        segments,
        active,
        first_index,
        prev_term,
        locs,
        failed: None,
        unsynced: false,
        buf: Vec::new(),
    };
    log.prepare_when_half_full();
    report.entries_recovered = log.locs.len() as u64;
    report.first_index = log.first_index();
    report.last_index = log.last_index();
    Ok((log, report))
}

/// The segment boundary a compaction or reset marker names (its payload).
fn marker_boundary(seg: &Segment, r: &FooterEntry) -> Result<u64> {
    let offset = u64::from(r.offset);
    let (h, payload) = record::decode(&seg.bytes()[offset as usize..], seg.id, offset, seg.segment_bytes)
        .map_err(|d| refuse(&seg.path, offset, d.into_kind(), table::READ_RECORD_REFUSE, None))?;
    if payload.len() != 8 || h.index != r.index || h.kind != r.kind {
        return Err(refuse(
            &seg.path,
            offset,
            CorruptionKind::Malformed("compaction marker does not match its listing".into()),
            table::READ_RECORD_REFUSE,
            None,
        ));
    }
    Ok(LE::read_u64(payload))
}

fn load(fs: &dyn FileSystem, dir: &Path, id: u64) -> Result<Loaded> {
    let path = Segment::path_in(dir, id);
    let file = fs.open(&path).map_err(|e| Error::io("open", &path, e))?;
    let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    let head = (len as usize).min(header.len());
    file.read_at(&mut header[..head], 0).map_err(|e| Error::io("read", &path, e))?;
    match segment::check_header(&header[..head], id) {
        HeaderCheck::Version(found) => {
            Err(Error::IncompatibleVersion { path, found, supported: segment::FORMAT_VERSION })
        }
        HeaderCheck::Damaged(kind) => Ok(Loaded::BadHeader { path, file, kind }),
        HeaderCheck::Valid { segment_bytes } if len < segment_bytes => Ok(Loaded::BadHeader {
            path,
            file,
            kind: CorruptionKind::Malformed(format!("file holds {len} bytes; its header promises {segment_bytes}")),
        }),
        HeaderCheck::Valid { segment_bytes } => Ok(Loaded::Mapped(Segment::map(id, path, file, segment_bytes)?)),
    }
}

/// Zeroes `[from, to)` of a file and syncs it.
fn zero(file: &dyn crate::io::DataFile, path: &Path, from: u64, to: u64) -> Result<()> {
    ops::zero_fill(file, from, to).map_err(|e| Error::io("write", path, e))?;
    file.sync_data().map_err(|e| Error::io("fdatasync", path, e))
}

/// Rebuilds the entry index from records in file order.
///
/// Replay starts at the compaction boundary, not at the beginning of history, so it may begin
/// in the middle of the log, and a record may truncate entries that lived in removed segments.
/// What it knows: entries below the newest marker (`floor`) are gone; a run of entries that
/// starts with no known predecessor is only valid if everything below it was compacted, which
/// the check in [`Replay::finish`] enforces.
#[derive(Default)]
struct Replay {
    /// Index of `locs[0]`; `None` while no entry of the current run is known.
    base: Option<u64>,
    locs: VecDeque<Loc>,
    /// The newest marker: (index, term of index - 1).
    marker: Option<(u64, u64)>,
    /// Entries below this index are compacted (the newest marker's index).
    floor: u64,
}

impl Replay {
    fn apply(&mut self, segment_id: u64, r: &FooterEntry) -> std::result::Result<(), CorruptionKind> {
        let bad = |m: String| Err(CorruptionKind::Malformed(m));
        match r.kind {
            Kind::Entry => {
                if r.index < self.floor {
                    return bad(format!("entry {} is below the compacted index {}", r.index, self.floor));
                }
                let loc = Loc { term: r.term, segment_id, offset: r.offset };
                match self.base {
                    Some(base) if r.index >= base => {
                        let pos = (r.index - base) as usize;
                        if pos > self.locs.len() {
                            return bad(format!(
                                "entry {} leaves a gap after entry {}",
                                r.index,
                                base + self.locs.len() as u64 - 1
                            ));
                        }
                        self.locs.truncate(pos);
                    }
                    // No known predecessor, or below everything known: the entries it follows
                    // or truncates lived in segments removed by compaction (checked in finish).
                    _ => {
                        self.locs.clear();
                        self.base = Some(r.index);
                    }
                }
                self.locs.push_back(loc);
            }
            Kind::Compact => {
                self.floor = self.floor.max(r.index);
                self.marker = Some((r.index, r.term));
                if let Some(base) = self.base {
                    let drop = r.index.saturating_sub(base).min(self.locs.len() as u64);
                    self.locs.drain(..drop as usize);
                    self.base = if self.locs.is_empty() { None } else { Some(base + drop) };
                }
            }
            Kind::Reset => {
                self.locs.clear();
                self.base = None;
                self.floor = r.index;
                self.marker = Some((r.index, r.term));
            }
        }
        Ok(())
    }

    /// The first index, the term before it (if known), and the entry locations.
    fn finish(self) -> std::result::Result<(u64, Option<u64>, VecDeque<Loc>), CorruptionKind> {
        let floor = self.floor.max(1);
        let first = self.base.unwrap_or(floor);
        if first > floor {
            return Err(CorruptionKind::Malformed(format!(
                "entries {floor}..{first} are missing: the log starts at {first} but was compacted only to {floor}"
            )));
        }
        let prev_term = match self.marker {
            Some((index, term)) if index == first => Some(term),
            _ if first == 1 => Some(0),
            _ => None,
        };
        Ok((first, prev_term, self.locs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_another_segment_are_never_read() {
        // A segment image full of valid records of segment 1, scanned as segment 2 (a recycled
        // file): no record is accepted, and none counts as a valid record after the damage.
        let mut bytes = vec![0u8; 16 * 1024];
        let mut buf = Vec::new();
        for index in 1..=100u64 {
            let payload = vec![index as u8; 100];
            let h = record::Header {
                index,
                term: 1,
                payload_len: 100,
                synced_offset: 64,
                kind: Kind::Entry,
                continues: false,
            };
            record::encode(&mut buf, 1, &h, &payload);
        }
        bytes[64..64 + buf.len()].copy_from_slice(&buf);
        let own = scan(&bytes, 1);
        assert_eq!(own.records.len(), 100);
        let other = scan(&bytes, 2);
        assert!(other.records.is_empty());
        let damage = other.damage.expect("stale bytes are damage");
        assert_eq!(damage.later_indexes, None);
        assert_eq!(damage.proof, None);
    }

    #[test]
    fn last_nonzero_end_splits_large_ranges_correctly() {
        let mut b = vec![0u8; 20 << 20];
        assert_eq!(last_nonzero_end(&b, 64), 64);
        b[100] = 1;
        assert_eq!(last_nonzero_end(&b, 64), 101);
        b[15 << 20] = 1;
        assert_eq!(last_nonzero_end(&b, 64), (15 << 20) + 1);
        let n = b.len();
        b[n - 1] = 1;
        assert_eq!(last_nonzero_end(&b, 64), n as u64);
    }

    #[test]
    fn last_nonzero_end_finds_the_last_byte() {
        let mut b = vec![0u8; 20000];
        assert_eq!(last_nonzero_end(&b, 64), 64);
        b[9000] = 1;
        assert_eq!(last_nonzero_end(&b, 64), 9001);
        b[19999] = 1;
        assert_eq!(last_nonzero_end(&b, 64), 20000);
        assert_eq!(last_nonzero_end(&b, 20000), 20000);
        let mut c = vec![0u8; 4097];
        c[4096] = 7;
        assert_eq!(last_nonzero_end(&c, 0), 4097);
        c[0] = 1;
        c[4096] = 0;
        assert_eq!(last_nonzero_end(&c, 0), 1);
    }
}
