//! Opening a log directory: lock, load segments, classify damage by the decision table in
//! `recovery_table.rs`, replay records into the index, repair the tail, report.
//!
//! `open` runs these steps in order, one function each; `Recovery` carries what they learn.
//! 1. `check_segment_bytes`, then `ops::lock_dir`: check the options; create and lock the
//!    directory;
//! 2. `load_segments`: list `*.seg` files; check each header; map each segment at the size its
//!    header states;
//! 3. `Recovery::classify`, newest segment first (so that "is anything valid after this damage?"
//!    is known): `drop_below_boundary` for segments older than the boundary named by the newest
//!    compaction marker (they hold nothing live); `classify_bad_header`; or `find_records` (from
//!    the footer if sealed, otherwise by `scan`), `decide_tail` (tail or middle damage, by the
//!    table), `keep` (which calls `apply_marker`); last `settle_empty_newest`;
//! 4. `check_dense`, `replay_records`: no segment is missing between kept ones; replay their
//!    records in file order into the entry index;
//! 5. `Recovery::make_durable`: zero and sync torn tails, sync every kept segment
//!    (`sync_kept_segments`) and the log directory and its parent (`sync_directories`), and only
//!    then remove dead segments (`remove_dead_segments`: below the boundary oldest first) and
//!    install a new active segment if needed: nothing recovery read is trusted until synced,
//!    because a killed process leaves unsynced writes in the page cache;
//! 6. `Recovery::start`: build the `Log` and finish the report.
//!
//! No step decides what damage is tolerated: each looks it up with `recovery_table::decide`.

use super::prepare::{self, PREPARED_NAME, Preparer};
use super::reader::{self, SegmentReader};
use super::record::{self, Kind};
use super::recovery_table::{self as table, Action, Damaged, Position};
use super::segment::{self, FooterCheck, FooterEntry, HeaderCheck, Segment};
use super::{Active, Loc, Log, LogOptions};
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::io::{DataFile, FileSystem, ops};
use crate::limits::{self, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use byteorder::{ByteOrder, LittleEndian as LE};
use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log directory opened.
    pub dir: PathBuf,
    /// Segment files found in the directory.
    pub segments_found: usize,
    /// Segments whose records came from their footer (not scanned).
    pub segments_sealed: usize,
    /// Segments whose records were scanned one by one.
    pub segments_scanned: usize,
    /// Entries in the log after recovery.
    pub entries_recovered: u64,
    /// The log's first index after recovery (`last_index + 1` when it holds no entry).
    pub first_index: u64,
    /// The log's last index after recovery (`first_index - 1` when it holds no entry).
    pub last_index: u64,
    /// Torn tails dropped, each with the decision-table rule that allowed it.
    pub truncations: Vec<Truncation>,
    /// Segment files removed (wholly compacted, or holding nothing but a torn tail).
    pub removed_segments: Vec<RemovedSegment>,
}

/// A torn tail that recovery dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file that held the torn tail.
    pub path: PathBuf,
    /// That segment's id, as in its file name.
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
    /// The segment file, now deleted.
    pub path: PathBuf,
    /// Why it held nothing to keep (below the compaction boundary, no valid record, ...).
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
    BadHeader { path: PathBuf, file: Box<dyn DataFile>, kind: CorruptionKind },
}

/// Damage found by scanning a segment's records.
#[derive(Debug)]
pub(crate) struct ScanDamage {
    /// Where the first invalid position is (inside an incomplete write, where its records stop).
    pub(crate) offset: u64,
    pub(crate) damaged: Damaged,
    pub(crate) kind: CorruptionKind,
    /// A valid record after the damage whose `synced_offset` lies past it: proof that the damaged
    /// bytes had been synced. (offset of that record)
    pub(crate) proof: Option<u64>,
    /// The damaged record's index, when its header is intact.
    damaged_index: Option<u64>,
    /// Lowest and highest index among valid records after the damage.
    later_indexes: Option<(u64, u64)>,
    /// One past the last non-zero byte at or after `offset`.
    pub(crate) garbage_end: u64,
}

#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) records: Vec<FooterEntry>,
    pub(crate) end: u64,
    pub(crate) damage: Option<ScanDamage>,
}

/// Reads records from the start of a segment until the first position that is not a valid
/// record, then classifies what follows. Reads through `pread` (`r`), never the map: a bad
/// sector is an `Error::Io`, not a `SIGBUS`.
pub(crate) fn scan(r: &mut SegmentReader<'_>, id: u64) -> Result<Scan> {
    let Run { records, end, torn_write, found } = read_run(r, id)?;
    let garbage_end = last_nonzero_end(r.file(), r.path(), end, r.size())?;
    // A record with a valid header whose `synced_offset` lies past its own offset: no writer
    // puts one there, so the bytes it covers were synced (corruption in the middle).
    let misplaced = match &found {
        Some(record::Damage::Misplaced { offset, .. }) => Some(*offset),
        _ => None,
    };
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
        None if garbage_end == end => return Ok(Scan { records, end, damage: None }),
        None => (
            Damaged::RecordHeader,
            CorruptionKind::Malformed(format!(
                "zeroed record header followed by non-zero bytes up to offset {garbage_end}"
            )),
        ),
    };
    let RecordsAfter { proof, later_indexes } = records_after(r, id, end, garbage_end, misplaced)?;
    let damage = ScanDamage { offset: damage_offset, damaged, kind, proof, damaged_index, later_indexes, garbage_end };
    Ok(Scan { records, end, damage: Some(damage) })
}

/// The valid records at the start of a segment, and what ended them.
struct Run {
    records: Vec<FooterEntry>,
    /// Where the records end: after the last complete write.
    end: u64,
    /// Where the records of an incomplete write stop (that write is dropped whole).
    torn_write: Option<u64>,
    /// The damaged record that ended the run, if not zeros or the end of the segment.
    found: Option<record::Damage>,
}

/// Decodes records from the start of a segment until the first position that is not a valid
/// record; a write whose last record is missing is dropped whole.
fn read_run(r: &mut SegmentReader<'_>, id: u64) -> Result<Run> {
    let size = r.size();
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut found = None;
    // (offset, records.len()) where the current write began, while its last record is missing.
    let mut open_write: Option<(u64, usize)> = None;
    while offset + RECORD_HEADER_BYTES <= size {
        if record::is_zero_header(r.bytes(offset, RECORD_HEADER_BYTES)?) {
            break;
        }
        match r.record(offset, id)? {
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
    Ok(Run { records, end: offset, torn_write, found })
}

/// Valid records after damage at `end`, looked for at every aligned offset below
/// `garbage_end`: the offset of the first whose `synced_offset` lies past `end` (proof that the
/// damaged bytes had been synced; `proof` if already known), and their lowest and highest index.
fn records_after(
    r: &mut SegmentReader<'_>,
    id: u64,
    end: u64,
    garbage_end: u64,
    mut proof: Option<u64>,
) -> Result<RecordsAfter> {
    let mut later_indexes: Option<(u64, u64)> = None;
    let mut p = end + RECORD_ALIGN_BYTES;
    while p + RECORD_HEADER_BYTES <= garbage_end {
        let at = r.bytes(p, RECORD_HEADER_BYTES)?;
        // Cheap filter before checksumming: a known kind and zero reserved bytes.
        let plausible = record::Kind::from_u8(at[record::OFF_KIND]).is_some()
            && at[record::OFF_RESERVED..RECORD_HEADER_BYTES as usize].iter().all(|&b| b == 0);
        if plausible && let Ok((h, _)) = r.record(p, id)? {
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
    Ok(RecordsAfter { proof, later_indexes })
}

/// What `records_after` found after damage.
struct RecordsAfter {
    /// The first valid record whose `synced_offset` lies past the damage (its offset).
    proof: Option<u64>,
    /// Lowest and highest index among the valid records after the damage.
    later_indexes: Option<(u64, u64)>,
}

/// One past the last non-zero byte in `[from, to)` of `file`, or `from` if all are zero.
///
/// Opening a log reads the unused rest of the active segment (up to a whole segment) to prove
/// it is zero; that read is memory-bound and most of R1's time, so a large range is split in
/// two halves checked on two threads, each reading its half in chunks through `pread`.
fn last_nonzero_end(file: &dyn DataFile, path: &Path, from: u64, to: u64) -> Result<u64> {
    const PARALLEL_ABOVE: u64 = 8 << 20;
    if to - from < PARALLEL_ABOVE {
        return last_nonzero_in_range(file, path, from, to);
    }
    let mid = from + (to - from) / 2;
    let (low_end, high_end) = std::thread::scope(|s| {
        // Without a second thread (spawn refused), check both halves here.
        let checker = std::thread::Builder::new().spawn_scoped(s, || last_nonzero_in_range(file, path, mid, to)).ok();
        let low_end = last_nonzero_in_range(file, path, from, mid);
        let high_end = match checker {
            // A checker that cannot report counts as "non-zero to the end": never silently clean.
            Some(c) => c.join().unwrap_or(Ok(to)),
            None => last_nonzero_in_range(file, path, mid, to),
        };
        (low_end, high_end)
    });
    let high_end = high_end?;
    if high_end > mid { Ok(high_end) } else { low_end }
}

/// One past the last non-zero byte in `[from, to)` of `file`, or `from`: read forwards (so the
/// kernel's read-ahead helps) in chunks into one buffer.
fn last_nonzero_in_range(file: &dyn DataFile, path: &Path, from: u64, to: u64) -> Result<u64> {
    let mut buf = vec![0u8; (to - from).min(reader::CHUNK_BYTES) as usize];
    let mut last = from;
    let mut at = from;
    while at < to {
        let chunk = &mut buf[..(to - at).min(reader::CHUNK_BYTES) as usize];
        reader::read_exact_at(file, path, chunk, at)?;
        let end = last_nonzero_in(chunk);
        if end > 0 {
            last = at + end as u64;
        }
        at += chunk.len() as u64;
    }
    Ok(last)
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

/// A torn tail to zero: from where its write began to one past its last non-zero byte.
struct TornTail {
    offset: u64,
    garbage_end: u64,
    /// The decision-table label.
    rule: &'static str,
    reason: String,
}

/// A segment's records as found (footer or scan), before its damage is decided.
struct Found {
    records: Vec<FooterEntry>,
    sealed: bool,
    /// Records end (write offset) for an unsealed segment.
    end: u64,
    damage: Option<ScanDamage>,
}

/// The records of a kept segment, and how recovery found them.
struct Kept {
    segment: Segment,
    records: Vec<FooterEntry>,
    sealed: bool,
    /// Records end (write offset) for an unsealed segment.
    end: u64,
    tail: Option<TornTail>,
}

/// Every segment after recovery, durable, the active one last; and the preparer of the next.
struct Durable {
    segments: VecDeque<Arc<Segment>>,
    active: Active,
    preparer: Preparer,
}

/// What recovery has learned, carried from step to step (see the module docs).
struct Recovery<'a> {
    dir: &'a Path,
    options: LogOptions,
    report: RecoveryReport,
    /// Newest first while classifying, oldest first after.
    kept: Vec<Kept>,
    /// Segments removed once the log is known good (cut short before a crash, or holding
    /// nothing but a torn tail), with the reason reported.
    dead: Vec<(PathBuf, String)>,
    /// A newer segment holds a valid record or a seal.
    later_valid: bool,
    /// The oldest live segment, named by the newest compaction or reset marker.
    boundary: Option<u64>,
    /// A clean, empty newest segment, kept or not once the older segments are known.
    empty_newest: Option<Segment>,
}

fn refuse(path: &Path, offset: u64, kind: CorruptionKind, rule: &'static str, affected: Option<(u64, u64)>) -> Error {
    let mut c = Corruption::new(path, offset, kind);
    c.rule = Some(rule);
    c.affected_indexes = affected;
    c.into_error()
}

/// Opens the log in `dir`: the steps listed in the module docs, in order.
pub(super) fn open(dir: &Path, options: LogOptions) -> Result<(Log, RecoveryReport)> {
    check_segment_bytes(options.segment_bytes)?;
    let lock = ops::lock_dir(options.fs.as_ref(), dir)?;
    let loaded = load_segments(options.fs.as_ref(), dir, Mapping::Map)?;
    let mut recovery = Recovery::new(dir, options, loaded.len());
    recovery.classify(loaded)?;
    check_dense(dir, &recovery.kept)?;
    let replayed = replay_records(dir, &recovery.kept)?;
    let durable = recovery.make_durable()?;
    Ok(recovery.start(lock, replayed, durable))
}

/// Step 1: new segments must be a multiple of 4096 bytes within the limits.
fn check_segment_bytes(segment_bytes: u64) -> Result<()> {
    if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&segment_bytes)
        || !segment_bytes.is_multiple_of(4096)
    {
        return Err(Error::InvalidArgument(format!(
            "segment_bytes {segment_bytes} must be a multiple of 4096 in [{}, {}]",
            limits::SEGMENT_BYTES_MIN,
            limits::SEGMENT_BYTES_MAX
        )));
    }
    Ok(())
}

/// Whether `load` maps the segments it loads: `open` does (entry reads come from the maps); a
/// dry run (`plan`) does not, because it reads only through `pread` and must not map files a
/// live process may be writing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Map,
    NoMap,
}

/// Step 2: every segment file in `dir`, oldest first, loaded by `load`.
fn load_segments(fs: &dyn FileSystem, dir: &Path, mapping: Mapping) -> Result<Vec<(u64, Loaded)>> {
    let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| n.to_str().and_then(segment::parse_file_name)).collect();
    ids.sort_unstable();
    ids.into_iter().map(|id| Ok((id, load(fs, dir, id, mapping)?))).collect()
}

/// A segment's header checked and, if valid, the segment mapped at the size it states.
fn load(fs: &dyn FileSystem, dir: &Path, id: u64, mapping: Mapping) -> Result<Loaded> {
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
        HeaderCheck::Valid { segment_bytes } if mapping == Mapping::NoMap => {
            Ok(Loaded::Mapped(Segment::unmapped(id, path, file, segment_bytes)))
        }
        HeaderCheck::Valid { segment_bytes } => Ok(Loaded::Mapped(Segment::map(id, path, file, segment_bytes)?)),
    }
}

/// What [`Log::open`] would do to the log in `dir`, found without doing it: the result of
/// [`plan_recovery`](crate::wal::plan_recovery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// The report `open` would return: the truncations it would make and the segments it would
    /// remove (none made yet), and the log it would recover.
    pub report: RecoveryReport,
    /// The segment file `open` would create as the new active segment, when the newest kept
    /// segment is sealed (or there is none).
    pub new_active_segment: Option<PathBuf>,
    /// The newest reset marker the log would keep: (index, term of index - 1).
    pub newest_reset: Option<(u64, u64)>,
    /// Where each entry of the recovered log lives, first index first.
    pub entries: Vec<EntryLocation>,
}

/// Where one entry of a log lives: the record holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLocation {
    /// The entry's Raft index.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
    /// The segment holding its record.
    pub segment_id: u64,
    /// That segment's file.
    pub path: PathBuf,
    /// The record's offset in the segment.
    pub record_offset: u64,
}

/// Steps 2 to 4 of `open` without step 1's lock or step 5's writes, through `options.fs`:
/// what recovery would find and decide. Reads through `pread` only and maps nothing.
///
/// Runs the same classification and replay code as `open` (so its labels are `open`'s), then
/// stops where `open` would start changing files. A refusal is returned as the same error
/// `open` would return.
pub(crate) fn plan(dir: &Path, options: LogOptions) -> Result<RecoveryPlan> {
    let loaded = load_segments(options.fs.as_ref(), dir, Mapping::NoMap)?;
    let mut recovery = Recovery::new(dir, options, loaded.len());
    recovery.classify(loaded)?;
    check_dense(dir, &recovery.kept)?;
    let replayed = replay_records(dir, &recovery.kept)?;
    Ok(recovery.into_plan(replayed))
}

impl<'a> Recovery<'a> {
    fn new(dir: &'a Path, options: LogOptions, segments_found: usize) -> Recovery<'a> {
        Recovery {
            dir,
            options,
            report: RecoveryReport { dir: dir.to_path_buf(), segments_found, ..RecoveryReport::default() },
            kept: Vec::new(),
            dead: Vec::new(),
            later_valid: false,
            boundary: None,
            empty_newest: None,
        }
    }

    /// Step 3: each segment from the newest, so that "is anything valid after this damage?" is
    /// known when damage is found. Ends with `kept` oldest first.
    fn classify(&mut self, mut loaded: Vec<(u64, Loaded)>) -> Result<()> {
        while let Some((id, l)) = loaded.pop() {
            match l {
                l if self.boundary.is_some_and(|b| id < b) => self.drop_below_boundary(l),
                Loaded::Mapped(segment) => self.classify_segment(segment)?,
                Loaded::BadHeader { path, file, kind } => self.classify_bad_header(id, path, file.as_ref(), kind)?,
            }
        }
        self.kept.reverse();
        self.settle_empty_newest();
        Ok(())
    }

    /// A segment older than the compaction boundary holds nothing live: it is removed.
    fn drop_below_boundary(&mut self, l: Loaded) {
        let path = match l {
            Loaded::Mapped(s) => s.path,
            Loaded::BadHeader { path, .. } => path,
        };
        self.report.removed_segments.push(RemovedSegment { path, reason: "below the compaction boundary".into() });
    }

    /// A damaged segment header: a torn creation if no record is in or after the segment,
    /// otherwise damage in the middle. The decision table says which is refused.
    fn classify_bad_header(&mut self, id: u64, path: PathBuf, file: &dyn DataFile, kind: CorruptionKind) -> Result<()> {
        // Can records still be found under the id the file name gives?
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        let scan_len = len - len % RECORD_ALIGN_BYTES;
        let has_records = scan_len >= limits::SEGMENT_BYTES_MIN
            && !scan(&mut SegmentReader::new(file, &path, scan_len), id)?.records.is_empty();
        let position = if self.later_valid || has_records { Position::Middle } else { Position::Tail };
        let rule = table::decide(position, Damaged::SegmentHeader, self.options.recovery_mode);
        if rule.action == Action::Refuse {
            return Err(refuse(&path, 0, kind, rule.label, None));
        }
        let reason = format!("segment header damaged ({kind}) and no record in or after it [{}]", rule.label);
        self.dead.push((path, reason));
        Ok(())
    }

    /// A segment with a valid header: its records found, its damage decided, then kept.
    fn classify_segment(&mut self, segment: Segment) -> Result<()> {
        let Found { records, sealed, end, damage } = self.find_records(&segment)?;
        let tail = self.decide_tail(&segment, &records, end, damage)?;
        self.keep(Kept { segment, records, sealed, end, tail })
    }

    /// The records from the footer if the segment is sealed, otherwise scanned one by one.
    fn find_records(&mut self, seg: &Segment) -> Result<Found> {
        let mut r = seg.reader();
        match segment::check_footer(&mut r, seg.id)? {
            FooterCheck::Sealed { entries, records_end } => {
                self.report.segments_sealed += 1;
                Ok(Found { records: entries, sealed: true, end: records_end, damage: None })
            }
            // A segment is sealed and synced before the next one receives a record, so an
            // unsealed segment with valid records after it lost its footer.
            FooterCheck::Damaged { offset, kind } if self.later_valid => {
                let rule = table::decide(Position::Middle, Damaged::Footer, self.options.recovery_mode);
                Err(refuse(&seg.path, offset, kind, rule.label, None))
            }
            FooterCheck::Absent if self.later_valid => {
                let rule = table::decide(Position::Middle, Damaged::Footer, self.options.recovery_mode);
                let offset = seg.segment_bytes - limits::FOOTER_TRAILER_BYTES;
                let kind =
                    CorruptionKind::Malformed("footer missing from a segment that has a successor with records".into());
                Err(refuse(&seg.path, offset, kind, rule.label, None))
            }
            // Never sealed, or a torn seal with nothing after it: read record by record.
            FooterCheck::Absent | FooterCheck::Damaged { .. } => {
                self.report.segments_scanned += 1;
                let s = scan(&mut r, seg.id)?;
                Ok(Found { records: s.records, sealed: false, end: s.end, damage: s.damage })
            }
        }
    }

    /// Damage found by a scan, looked up in the decision table: a torn tail to drop from where
    /// its write began (`end`), or a corruption error naming the indexes affected.
    fn decide_tail(
        &self,
        seg: &Segment,
        records: &[FooterEntry],
        end: u64,
        damage: Option<ScanDamage>,
    ) -> Result<Option<TornTail>> {
        let Some(d) = damage else { return Ok(None) };
        let position = if self.later_valid || d.proof.is_some() { Position::Middle } else { Position::Tail };
        let rule = table::decide(position, d.damaged, self.options.recovery_mode);
        if rule.action == Action::Refuse {
            // The damaged record's own index if its header survived, else the index after
            // the last entry before it, else the first valid one after it.
            let after_last = records.iter().rev().find(|r| r.kind == Kind::Entry).map(|r| r.index + 1);
            let lo = d.damaged_index.or(after_last).or(d.later_indexes.map(|l| l.0)).unwrap_or(1);
            let affected = Some((lo, d.later_indexes.map_or(lo, |l| l.1.max(lo))));
            return Err(refuse(&seg.path, d.offset, d.kind, rule.label, affected));
        }
        Ok(Some(TornTail { offset: end, garbage_end: d.garbage_end, rule: rule.label, reason: d.kind.to_string() }))
    }

    /// Keeps a segment that holds records or a seal; sets aside one that does not.
    fn keep(&mut self, k: Kept) -> Result<()> {
        if k.records.is_empty() && !k.sealed {
            // Nothing valid here and nothing after. A clean, empty newest segment (created at a
            // rotation or by a previous open) stays the active one if what precedes it is sealed;
            // that is decided once the older segments are known (`settle_empty_newest`).
            if k.tail.is_none() && self.kept.is_empty() && self.empty_newest.is_none() {
                self.empty_newest = Some(k.segment);
                return Ok(());
            }
            // Otherwise it was cut short before a crash, or holds only a torn tail.
            let reason = match &k.tail {
                Some(t) => format!("no valid record; torn bytes from offset {} [{}]: {}", t.offset, t.rule, t.reason),
                None => "holds no record".into(),
            };
            self.dead.push((k.segment.path.clone(), reason));
            return Ok(());
        }
        self.later_valid = true;
        self.apply_marker(&k)?;
        self.kept.push(k);
        Ok(())
    }

    /// The newest compaction or reset marker (in the newest segment that has one) names the
    /// boundary: every older segment holds nothing live.
    fn apply_marker(&mut self, k: &Kept) -> Result<()> {
        if self.boundary.is_none() {
            let marker = k.records.iter().rev().find(|r| r.kind != Kind::Entry);
            self.boundary = marker.map(|r| marker_boundary(&k.segment, r)).transpose()?;
        }
        Ok(())
    }

    /// A clean, empty newest segment stays as the active one after a sealed segment; after an
    /// unsealed one, that one stays active and this one goes.
    fn settle_empty_newest(&mut self) {
        let Some(segment) = self.empty_newest.take() else { return };
        match self.kept.last() {
            Some(k) if !k.sealed || k.segment.id + 1 != segment.id => {
                self.dead.push((segment.path.clone(), "holds no record and follows an unsealed segment".into()));
            }
            _ => {
                let end = SEGMENT_HEADER_BYTES;
                self.kept.push(Kept { segment, records: Vec::new(), sealed: false, end, tail: None });
            }
        }
    }

    /// Step 5: make durable everything recovery read before anything is removed or written:
    /// zero and sync torn tails, sync every kept segment and the directories, then remove dead
    /// segments, then make sure a durable active segment exists.
    ///
    /// What recovery read may exist only in the page cache (a killed process leaves its unsynced
    /// writes there), so nothing is trusted until it has been synced: a sealed segment whose seal
    /// was never synced, a rename (a rotation's `next.prep` to `<id>.seg`) whose directory fsync
    /// never ran, the compaction marker that justifies removing older segments. Removals come
    /// last, once what justifies them is durable.
    fn make_durable(&mut self) -> Result<Durable> {
        self.zero_torn_tails()?;
        self.sync_kept_segments()?;
        self.sync_directories()?;
        self.remove_dead_segments()?;
        let o = &self.options;
        let mut preparer = Preparer::new(Arc::clone(&o.fs), self.dir, o.segment_bytes, o.preparation);
        let (segments, active) = self.install_active(&mut preparer)?;
        Ok(Durable { segments, active, preparer })
    }

    /// Every kept segment, sealed or not (a torn tail's segment was synced after zeroing).
    fn sync_kept_segments(&self) -> Result<()> {
        for k in self.kept.iter().filter(|k| k.tail.is_none()) {
            k.segment.file.sync_data().map_err(|e| Error::io("fdatasync", &k.segment.path, e))?;
        }
        Ok(())
    }

    /// The log directory (its segment names, renames included) and the directory holding it
    /// (the log directory's own entry).
    fn sync_directories(&self) -> Result<()> {
        let fs = self.options.fs.as_ref();
        fs.sync_dir(self.dir).map_err(|e| Error::io("fsync directory", self.dir, e))?;
        ops::sync_parent(fs, self.dir)
    }

    fn zero_torn_tails(&mut self) -> Result<()> {
        for k in &self.kept {
            let Some(t) = &k.tail else { continue };
            let (file, path) = (k.segment.file.as_ref(), &k.segment.path);
            ops::zero_fill(file, t.offset, t.garbage_end).map_err(|e| Error::io("write", path, e))?;
            file.sync_data().map_err(|e| Error::io("fdatasync", path, e))?;
            self.report.truncations.push(Truncation {
                path: path.clone(),
                segment_id: k.segment.id,
                offset: t.offset,
                bytes_dropped: t.garbage_end - t.offset,
                rule: t.rule,
                reason: t.reason.clone(),
            });
        }
        Ok(())
    }

    /// Removes the segments below the compaction boundary, oldest first, then the dead ones
    /// after the kept segments, newest first: a power loss that keeps only some of the removals
    /// then leaves no hole between kept segments, only more of the same to remove next time.
    fn remove_dead_segments(&mut self) -> Result<()> {
        let fs = self.options.fs.as_ref();
        // Classified newest first.
        for r in self.report.removed_segments.iter().rev() {
            fs.remove(&r.path).map_err(|e| Error::io("remove", &r.path, e))?;
        }
        for (path, reason) in std::mem::take(&mut self.dead) {
            fs.remove(&path).map_err(|e| Error::io("remove", &path, e))?;
            self.report.removed_segments.push(RemovedSegment { path, reason });
        }
        if !self.report.removed_segments.is_empty() {
            fs.sync_dir(self.dir).map_err(|e| Error::io("fsync directory", self.dir, e))?;
        }
        Ok(())
    }

    /// The kept segments as the log holds them, with an unsealed last one as the active one,
    /// or else a new active segment installed after them.
    fn install_active(&mut self, preparer: &mut Preparer) -> Result<(VecDeque<Arc<Segment>>, Active)> {
        let mut kept = std::mem::take(&mut self.kept);
        let active = match kept.last_mut() {
            Some(last) if !last.sealed => Some(Active {
                write_offset: last.end,
                synced_offset: last.end,
                records: std::mem::take(&mut last.records),
                syncs: 0,
            }),
            _ => None,
        };
        // The newest segment's records and their end, if it is sealed: what reopening it needs.
        let sealed_newest = kept.last().filter(|k| k.sealed).map(|k| (k.records.clone(), k.end));
        let mut segments: VecDeque<Arc<Segment>> = kept.into_iter().map(|k| Arc::new(k.segment)).collect();
        if let Some(active) = active {
            // Synced by `sync_kept_segments`, so every record's synced_offset claim holds.
            return Ok((segments, active));
        }
        let (dir, prepared) = (self.dir, self.dir.join(PREPARED_NAME));
        let id = segments.back().map_or(1, |s| s.id + 1);
        let fs = self.options.fs.as_ref();
        // A whole `next.prep` left by the last process becomes the segment without a write.
        let reused = prepare::reuse_prepared(fs, &prepared, self.options.segment_bytes)
            .map_err(Error::at("prepare segment", &prepared))?;
        if !reused {
            match preparer.take() {
                Ok(_) => {}
                // A disk too full for a new segment: the log opens on its sealed newest segment
                // (reads, compaction and snapshots work); the first write installs a segment, or
                // answers `NoSpace` until there is room (`Log::rotate`).
                Err(e) if crate::error::is_no_space_io(&e) && !segments.is_empty() => {
                    let (records, end) = sealed_newest.expect("a kept newest segment that is not active is sealed");
                    let active = unseal(segments.back().expect("checked"), records, end)?;
                    return Ok((segments, active));
                }
                Err(e) => return Err(Error::io("prepare segment", &prepared, e)),
            }
        }
        segments.push_back(Arc::new(install_segment(fs, dir, &prepared, id, self.options.segment_bytes)?));
        let start = SEGMENT_HEADER_BYTES;
        Ok((segments, Active { write_offset: start, synced_offset: start, records: Vec::new(), syncs: 0 }))
    }

    /// What `make_durable` and `start` would do, done by neither: the dry run's answer.
    fn into_plan(self, replayed: Replayed) -> RecoveryPlan {
        let Replayed { first_index, locs, reset, .. } = replayed;
        let mut report = self.report;
        for k in &self.kept {
            let Some(t) = &k.tail else { continue };
            report.truncations.push(Truncation {
                path: k.segment.path.clone(),
                segment_id: k.segment.id,
                offset: t.offset,
                bytes_dropped: t.garbage_end - t.offset,
                rule: t.rule,
                reason: t.reason.clone(),
            });
        }
        for (path, reason) in self.dead {
            report.removed_segments.push(RemovedSegment { path, reason });
        }
        let new_active_segment = match self.kept.last() {
            Some(k) if !k.sealed => None,
            last => Some(Segment::path_in(self.dir, last.map_or(1, |k| k.segment.id + 1))),
        };
        let paths: std::collections::HashMap<u64, &Path> =
            self.kept.iter().map(|k| (k.segment.id, k.segment.path.as_path())).collect();
        let entries: Vec<EntryLocation> = locs
            .iter()
            .zip(first_index..)
            .map(|(l, index)| EntryLocation {
                index,
                term: l.term,
                segment_id: l.segment_id,
                path: paths
                    .get(&l.segment_id)
                    .map_or_else(|| Segment::path_in(self.dir, l.segment_id), |p| p.to_path_buf()),
                record_offset: u64::from(l.offset),
            })
            .collect();
        report.entries_recovered = entries.len() as u64;
        report.first_index = first_index;
        report.last_index = first_index + entries.len() as u64 - 1;
        RecoveryPlan { report, new_active_segment, newest_reset: reset, entries }
    }

    /// Step 6: the log, ready for appends, and the report of what recovery found and did.
    fn start(self, lock: Box<dyn Any + Send + Sync>, replayed: Replayed, durable: Durable) -> (Log, RecoveryReport) {
        let Replayed { first_index, prev_term, locs, reset } = replayed;
        let Durable { segments, active, preparer } = durable;
        let mut log = Log {
            dir: self.dir.to_path_buf(),
            fs: self.options.fs,
            preparer,
            segment_bytes: self.options.segment_bytes,
            _lock: lock,
            segments,
            active,
            first_index,
            prev_term,
            locs,
            reset,
            deferred_compaction: None,
            failed: None,
            unsynced: false,
            buf: Vec::new(),
            stats: super::LogStats::default(),
        };
        log.prepare_when_half_full();
        let mut report = self.report;
        report.entries_recovered = log.locs.len() as u64;
        report.first_index = log.first_index();
        report.last_index = log.last_index();
        (log, report)
    }
}

/// Step 4, first: the ids of kept segments must be dense; a missing one lost records.
/// Reopens a sealed newest segment for writing, on a disk too full for a new one: its footer is
/// overwritten with zeros in place (no space needed) and synced, and it becomes the active
/// segment at its records' end, so that a compaction marker (for which entries leave room,
/// `MARKER_RESERVE_BYTES`) fits without a new segment. A crash before the zeros are durable
/// leaves a valid footer, or a damaged one with nothing after it, which recovery scans as
/// unsealed: either way the same records.
fn unseal(seg: &Segment, records: Vec<FooterEntry>, end: u64) -> Result<Active> {
    let footer_start = seg.segment_bytes - segment::footer_bytes(records.len() as u64);
    ops::zero_fill(seg.file.as_ref(), footer_start, seg.segment_bytes).map_err(Error::at("write", &seg.path))?;
    seg.file.sync_data().map_err(Error::at("fdatasync", &seg.path))?;
    Ok(Active { write_offset: end, synced_offset: end, records, syncs: 0 })
}

fn check_dense(dir: &Path, kept: &[Kept]) -> Result<()> {
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
    Ok(())
}

/// Step 4: the kept segments' records replayed in file order into the entry index.
fn replay_records(dir: &Path, kept: &[Kept]) -> Result<Replayed> {
    let mut replay = Replay::default();
    for k in kept {
        for r in &k.records {
            replay
                .apply(k.segment.id, r)
                .map_err(|kind| Corruption::new(&k.segment.path, u64::from(r.offset), kind).into_error())?;
        }
    }
    replay.finish().map_err(|kind| {
        let first = kept.first().map_or_else(|| dir.to_path_buf(), |k| k.segment.path.clone());
        Corruption::new(first, SEGMENT_HEADER_BYTES, kind).into_error()
    })
}

/// The segment boundary a compaction or reset marker names (its payload).
fn marker_boundary(seg: &Segment, r: &FooterEntry) -> Result<u64> {
    let offset = u64::from(r.offset);
    let mut reader = SegmentReader::exact(seg.file.as_ref(), &seg.path, seg.segment_bytes);
    let (h, payload) = reader
        .record(offset, seg.id)?
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
    /// The newest reset marker: (index, term of index - 1).
    reset: Option<(u64, u64)>,
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
                self.reset = Some((r.index, r.term));
            }
        }
        Ok(())
    }

    /// The first index, the term before it (if known), and the entry locations.
    fn finish(self) -> std::result::Result<Replayed, CorruptionKind> {
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
        Ok(Replayed { first_index: first, prev_term, locs: self.locs, reset: self.reset })
    }
}

/// The entry index that replay rebuilt.
struct Replayed {
    first_index: u64,
    /// The term of `first_index - 1`, if known.
    prev_term: Option<u64>,
    locs: VecDeque<Loc>,
    /// The newest reset marker replayed: (index, term of index - 1).
    reset: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::reader::MemFile;

    fn scan(bytes: &[u8], id: u64) -> Scan {
        let file = MemFile(bytes.to_vec());
        super::scan(&mut SegmentReader::new(&file, Path::new("s"), bytes.len() as u64), id).unwrap()
    }

    fn last_nonzero_end(bytes: &[u8], from: u64) -> u64 {
        let file = MemFile(bytes.to_vec());
        super::last_nonzero_end(&file, Path::new("s"), from, bytes.len() as u64).unwrap()
    }

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
