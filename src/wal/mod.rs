//! The write-ahead log: a directory of preallocated, checksummed, memory-mapped segment files
//! holding Raft entries.
//!
//! Calling order:
//! 1. [`Log::open`] locks the directory, recovers (see `recovery.rs` and the decision table in
//!    `segments/FORMAT.md`), and returns the log with a [`RecoveryReport`].
//! 2. [`Log::append`] writes entries (truncating a conflicting suffix first, as Raft requires);
//!    [`Log::sync`] makes everything appended durable; [`Log::append_and_sync`] does both.
//! 3. Reads ([`Log::entries`], [`Log::term`], ...) come from the maps, verified by checksum.
//! 4. [`Log::compact`] drops entries below an index and deletes whole segments;
//!    [`Log::reset`] drops everything and restarts the log after a snapshot.
//!
//! Invariants:
//! - `first_index <= last_index + 1`; entries `first_index..=last_index` are contiguous;
//! - `locs[i]` is where entry `first_index + i` lives; its segment id never decreases with `i`;
//! - every record in a segment is listed in that segment's record list, in file order; the
//!   active segment is the last one and the only one without a footer;
//! - bytes at or past `write_offset` of the active segment are zero on disk;
//! - `synced_offset <= write_offset`, and the file is durable up to `synced_offset`;
//! - once `failed` is set, nothing is written until the log is reopened.

mod group_commit;
mod prepare;
pub(crate) mod reader;
pub(crate) mod record;
pub(crate) mod recovery;
pub(crate) mod recovery_table;
pub(crate) mod segment;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::{FileSystem, StdFileSystem};
use crate::limits::{self, SEGMENT_HEADER_BYTES};
pub use crate::payload::Payload;
use record::{Header, Kind};
use segment::{FooterEntry, Segment};
use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use group_commit::{GroupCommitOptions, GroupCommitStats, OwnedNewEntry, SharedLog, SyncPolicy, Ticket};
pub use prepare::SegmentPreparation;
pub use recovery::{EntryLocation, RecoveryPlan, RecoveryReport, RemovedSegment, Truncation};
pub use segment::FORMAT_VERSION;

/// How much damage [`Log::open`] tolerates. See the decision table in `segments/FORMAT.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn tail (bytes of a write that was never acknowledged) is dropped and reported;
    /// damage anywhere else refuses to open.
    #[default]
    TolerateTailCorruption,
    /// Any damage, even a torn tail, refuses to open.
    AbsoluteConsistency,
}

/// What [`Log::open`] would do to the log in `dir` under `mode`, found without doing it.
///
/// A dry run of recovery: the same classification and replay as `open`, through
/// [`ReadOnlyFileSystem`](crate::io::ReadOnlyFileSystem) (files opened read-only, nothing
/// mapped, no lock taken, nothing written or synced), stopping where `open` would start changing
/// files. The plan lists the truncations and removals `open` would make, with their
/// decision-table labels; a refusal is the same error `open` would return. Safe to run on a
/// directory a live process holds open: a torn record at the tail of its active segment is then
/// a write in flight, which the plan shows as a truncation.
pub fn plan_recovery(dir: impl AsRef<Path>, mode: RecoveryMode) -> Result<RecoveryPlan> {
    let options =
        LogOptions { recovery_mode: mode, fs: Arc::new(crate::io::ReadOnlyFileSystem), ..LogOptions::default() };
    recovery::plan(dir.as_ref(), options)
}

/// Options for [`Log::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Preallocated size of each new segment file: a multiple of 4096 within
    /// [`limits::SEGMENT_BYTES_MIN`] and [`limits::SEGMENT_BYTES_MAX`]. Existing segments keep
    /// their own size; after a reopen with a larger size, a write that does not fit the
    /// (smaller) active segment goes to a new segment of the new size.
    pub segment_bytes: u64,
    /// What recovery tolerates.
    pub recovery_mode: RecoveryMode,
    /// The file system to use; the real one by default.
    pub fs: Arc<dyn FileSystem>,
    /// How new segment files are made ready (zero-filled ahead of time by default).
    pub preparation: SegmentPreparation,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            recovery_mode: RecoveryMode::default(),
            fs: Arc::new(StdFileSystem),
            preparation: SegmentPreparation::default(),
        }
    }
}

/// An entry to append: borrowed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry<'a> {
    /// The entry's Raft index. One append's entries are contiguous; a first index at or below
    /// the last index truncates the suffix from there.
    pub index: u64,
    /// The term of the leader that created the entry.
    pub term: u64,
    /// The entry's bytes, stored as one record's payload; more than
    /// `limits::payload_bytes_max(segment_bytes)` is refused.
    pub payload: &'a [u8],
}

/// An entry read from the log (`Log::entry`, `Log::entries`). Its payload points into the
/// segment's map (no copy). Not to be confused with the Raft entry, `storage::Entry`, which
/// `DiskStorage` builds from it.
#[derive(Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The entry's Raft index: its position in the log.
    pub index: u64,
    /// The term of the leader that created the entry.
    pub term: u64,
    /// The entry's bytes: a shared handle into the segment's map, its checksum verified on read.
    pub payload: Payload,
}

impl fmt::Debug for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogEntry")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A record payload given as consecutive parts, so that a prefix and a caller's bytes are
/// copied once, straight into the write buffer, without being joined first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a>(pub(crate) [&'a [u8]; 3]);

impl<'a> Parts<'a> {
    pub(crate) fn one(payload: &'a [u8]) -> Parts<'a> {
        Parts([payload, &[], &[]])
    }

    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(|p| p.len()).sum()
    }
}

/// An entry to append whose payload is given in parts; see [`Log::append_gathered`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatheredEntry<'a> {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) payload: Parts<'a>,
}

/// What the append path needs of an entry, whether its payload is one slice or parts.
trait AppendEntry {
    fn index_term(&self) -> (u64, u64);
    fn parts(&self) -> Parts<'_>;
}

impl AppendEntry for NewEntry<'_> {
    fn index_term(&self) -> (u64, u64) {
        (self.index, self.term)
    }
    fn parts(&self) -> Parts<'_> {
        Parts::one(self.payload)
    }
}

impl AppendEntry for GatheredEntry<'_> {
    fn index_term(&self) -> (u64, u64) {
        (self.index, self.term)
    }
    fn parts(&self) -> Parts<'_> {
        self.payload
    }
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    term: u64,
    segment_id: u64,
    offset: u32,
}

/// Write position in the active segment.
#[derive(Debug)]
struct Active {
    write_offset: u64,
    synced_offset: u64,
    /// Every record of the active segment, in file order: the footer it will be sealed with.
    records: Vec<FooterEntry>,
    /// Successful syncs of the active segment (steers segment preparation).
    syncs: u64,
}

/// The write-ahead log. See the module documentation for the calling order.
pub struct Log {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    segment_bytes: u64,
    _lock: Box<dyn Any + Send + Sync>,
    /// Makes the next segment file ready in the background.
    preparer: prepare::Preparer,
    /// Open segments, ids dense and increasing; the last is the active one.
    segments: VecDeque<Arc<Segment>>,
    active: Active,
    first_index: u64,
    /// Term of `first_index - 1`, when known (after a compaction or reset, or 0 for index 0).
    prev_term: Option<u64>,
    locs: VecDeque<Loc>,
    /// The newest reset marker still in the log (index, term of index - 1): the log restarted
    /// after a snapshot there, so that snapshot (or a later one) must exist.
    reset: Option<(u64, u64)>,
    /// A compaction that freed no segment and found no room for its marker on a full disk:
    /// (index, term of index - 1, boundary), written before the next append's records (or
    /// superseded by the next compaction or reset). Until then a crash forgets it: the entries
    /// it dropped, all still valid, are back after a reopen.
    deferred_compaction: Option<(u64, u64, u64)>,
    /// The first write or sync failure; set once, cleared only by reopening.
    failed: Option<String>,
    unsynced: bool,
    buf: Vec<u8>,
    stats: LogStats,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("first_index", &self.first_index)
            .field("last_index", &self.last_index())
            .field("segments", &self.segments.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// An `fdatasync` of the active segment, covering everything written before `upto`.
#[derive(Debug)]
pub(crate) struct SyncJob {
    segment: Arc<Segment>,
    upto: u64,
}

impl SyncJob {
    /// Runs the `fdatasync`; returns its result and how long it took.
    pub(crate) fn run(&self) -> (std::io::Result<()>, std::time::Duration) {
        let started = std::time::Instant::now();
        let result = self.segment.file.sync_data();
        (result, started.elapsed())
    }
}

/// What a [`Log`] has done since it was opened, for metrics ([`Log::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Append requests written (an `append` call, or one request of `append_many`).
    pub appends: u64,
    /// Entries written.
    pub entries: u64,
    /// Successful `fdatasync`s of the active segment.
    pub syncs: u64,
    /// Time spent in those `fdatasync`s, in nanoseconds.
    pub sync_nanos: u64,
    /// The longest of them, in nanoseconds.
    pub sync_nanos_max: u64,
}

/// A record to write.
struct Rec<'a> {
    kind: Kind,
    index: u64,
    term: u64,
    payload: Parts<'a>,
    /// The last record of its append call: the write it belongs to ends here.
    write_end: bool,
    /// May take the room entries leave for a marker (`MARKER_RESERVE_BYTES`): a marker that
    /// frees space (a compaction that removes segments, a reset). Entries, and compaction
    /// markers that free nothing, leave it, so freeing space never needs space.
    uses_reserve: bool,
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, locks it, and recovers it. The report says
    /// what recovery found: segments, entries, any torn tail dropped (with its decision-table
    /// rule) and any segment removed.
    ///
    /// ```
    /// use keel::wal::{Log, LogOptions, NewEntry};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (mut log, report) = Log::open(dir.path(), LogOptions::default())?;
    /// assert_eq!((report.first_index, report.last_index), (1, 0)); // a new log is empty
    /// log.append_and_sync(&[NewEntry { index: 1, term: 1, payload: b"put x=1" }])?;
    /// assert_eq!(log.term(1)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<(Log, RecoveryReport)> {
        recovery::open(dir.as_ref(), options)
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index of the first entry (one past the last if the log is empty).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The index of the last entry (`first_index - 1` if the log is empty).
    pub fn last_index(&self) -> u64 {
        self.first_index + self.locs.len() as u64 - 1
    }

    /// Whether the log refuses writes after a failure (see [`Error::Failed`]).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The newest reset marker still in the log, as (index, term of index - 1): the log was
    /// restarted there by [`Log::reset`] (a snapshot install). `None` if no reset marker is left
    /// (never reset, or compaction removed the segment holding it).
    pub(crate) fn newest_reset(&self) -> Option<(u64, u64)> {
        self.reset
    }

    /// The first write or sync failure, if the log is latched.
    pub fn failed_cause(&self) -> Option<String> {
        self.failed.clone()
    }

    /// The term of entry `index`. For `first_index - 1` it answers from the last compaction or
    /// reset when known; below that, [`Error::Compacted`].
    pub fn term(&self, index: u64) -> Result<u64> {
        if index.checked_add(1) == Some(self.first_index)
            && let Some(t) = self.prev_term
        {
            return Ok(t);
        }
        Ok(self.loc(index)?.term)
    }

    fn loc(&self, index: u64) -> Result<Loc> {
        if index < self.first_index {
            return Err(Error::Compacted { index, first_index: self.first_index });
        }
        let last_index = self.last_index();
        if index > last_index {
            return Err(Error::Unavailable { index, last_index });
        }
        Ok(self.locs[(index - self.first_index) as usize])
    }

    /// The entry at `index`, its checksum verified.
    pub fn entry(&self, index: u64) -> Result<LogEntry> {
        let loc = self.loc(index)?;
        self.read(index, loc)
    }

    /// The entries in `[lo, hi)`, stopping before their payloads exceed `max_bytes` in total,
    /// but always at least one when `lo < hi`.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>> {
        if lo < self.first_index {
            return Err(Error::Compacted { index: lo, first_index: self.first_index });
        }
        let last_index = self.last_index();
        if hi > last_index + 1 {
            return Err(Error::Unavailable { index: hi - 1, last_index });
        }
        if lo > hi {
            return Err(Error::InvalidArgument(format!("entries({lo}, {hi}): lo is above hi")));
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        for index in lo..hi {
            let e = self.read(index, self.locs[(index - self.first_index) as usize])?;
            total = total.saturating_add(e.payload.len() as u64);
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn segment(&self, id: u64) -> &Arc<Segment> {
        let first = self.segments[0].id;
        &self.segments[(id - first) as usize]
    }

    fn read(&self, index: u64, loc: Loc) -> Result<LogEntry> {
        let seg = self.segment(loc.segment_id);
        let offset = u64::from(loc.offset);
        let bytes = &seg.bytes()[offset as usize..];
        let refuse = |kind| seg.read_refusal(offset, index, kind);
        let damage = |d: record::Damage| refuse(d.into_kind());
        let h = record::decode_header(bytes, seg.id, offset, seg.segment_bytes).map_err(damage)?;
        if h.index != index || h.term != loc.term || h.kind != Kind::Entry {
            return Err(refuse(CorruptionKind::Malformed(format!(
                "record holds {:?} index {} term {}, the index expects entry {index} term {}",
                h.kind, h.index, h.term, loc.term
            ))));
        }
        let payload = record::check_payload(bytes, seg.id, &h).map_err(damage)?;
        let start = offset as usize + limits::RECORD_HEADER_BYTES as usize;
        debug_assert_eq!(payload.as_ptr(), seg.bytes()[start..].as_ptr());
        Ok(LogEntry { index, term: h.term, payload: Payload::mapped(Arc::clone(&seg.map), start, payload.len()) })
    }

    fn check_writable(&self) -> Result<()> {
        match &self.failed {
            Some(cause) => Err(Error::Failed { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Latches the log as failed and returns the I/O error.
    fn fail(&mut self, op: &'static str, path: &Path, source: std::io::Error) -> Error {
        let err = Error::io(op, path, source);
        if self.failed.is_none() {
            self.failed = Some(err.to_string());
        }
        err
    }

    /// Appends `entries` (contiguous, increasing). If the first index is at or below the last
    /// index, the conflicting suffix is truncated first; the truncation becomes durable together
    /// with the new entries. Not durable until [`Log::sync`].
    pub fn append(&mut self, entries: &[NewEntry<'_>]) -> Result<()> {
        self.append_many(&[entries]).pop().expect("one result per request")
    }

    /// Appends several requests in order, each as [`Log::append`] would (validated against the
    /// log as the earlier ones leave it, and recovered whole or not at all), with one `pwrite`
    /// for all of them where they fit one segment. Returns one result per request; a refused
    /// request changes nothing and does not stop the others. Used by group commit.
    pub fn append_many(&mut self, requests: &[&[NewEntry<'_>]]) -> Vec<Result<()>> {
        self.append_requests(requests)
    }

    /// [`Log::append`] for entries whose payload is given in parts (`DiskStorage`'s entry type
    /// prefix, then the caller's bytes), each copied once, straight into the write buffer.
    pub(crate) fn append_gathered(&mut self, entries: &[GatheredEntry<'_>]) -> Result<()> {
        self.append_requests(&[entries]).pop().expect("one result per request")
    }

    fn append_requests<E: AppendEntry>(&mut self, requests: &[&[E]]) -> Vec<Result<()>> {
        if let Err(e) = self.check_writable() {
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        // Validate each request against the last index the earlier accepted ones leave.
        let mut last_index = self.last_index();
        let mut results = Vec::with_capacity(requests.len());
        let mut recs: Vec<Rec<'_>> = Vec::new();
        let mut accepted: Vec<usize> = Vec::new();
        for (k, entries) in requests.iter().enumerate() {
            match self.check_append(entries, last_index) {
                Ok(()) if entries.is_empty() => results.push(Ok(())),
                Ok(()) => {
                    last_index = entries.last().expect("non-empty").index_term().0;
                    let n = entries.len();
                    recs.extend(entries.iter().enumerate().map(|(i, e)| Rec {
                        kind: Kind::Entry,
                        index: e.index_term().0,
                        term: e.index_term().1,
                        payload: e.parts(),
                        write_end: i + 1 == n,
                        uses_reserve: false,
                    }));
                    accepted.push(k);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if recs.is_empty() {
            return results;
        }
        // A compaction deferred on a full disk goes first, a write of its own.
        let boundary_bytes;
        let deferred = self.deferred_compaction;
        if let Some((index, term, boundary)) = deferred {
            boundary_bytes = boundary.to_le_bytes();
            let marker = Rec {
                kind: Kind::Compact,
                index,
                term,
                payload: Parts::one(&boundary_bytes),
                write_end: true,
                uses_reserve: false,
            };
            recs.insert(0, marker);
        }
        let (mut positions, error) = self.write_partial(&recs);
        if deferred.is_some() && !positions.is_empty() {
            positions.remove(0);
            self.deferred_compaction = None;
        }
        // Apply the accepted requests to the index in order: truncate, then extend. On a full
        // disk the requests written whole before it are kept (they are in the segment and would
        // be recovered at the next open): acknowledged, and the rest refused.
        let mut at = 0;
        for &k in &accepted {
            let entries = requests[k];
            if at + entries.len() > positions.len()
                || (error.is_some() && !matches!(error, Some(Error::NoSpace { .. })))
            {
                results[k] = Err(error.clone().expect("records missing only after an error"));
                continue;
            }
            self.stats.appends += 1;
            self.stats.entries += entries.len() as u64;
            let first = entries[0].index_term().0;
            self.locs.truncate((first - self.first_index) as usize);
            self.locs.extend(
                entries.iter().zip(&positions[at..at + entries.len()]).map(|(e, &(segment_id, offset))| Loc {
                    term: e.index_term().1,
                    segment_id,
                    offset,
                }),
            );
            at += entries.len();
        }
        results
    }

    /// Checks one append request against the log's first index and `last_index`, and each
    /// payload against the segment size.
    fn check_append<E: AppendEntry>(&self, entries: &[E], last_index: u64) -> Result<()> {
        check_append_indexes(entries, |e| e.index_term(), self.first_index, last_index)?;
        let max = limits::payload_bytes_max(self.segment_bytes);
        if let Some(big) = entries.iter().find(|e| e.parts().len() as u64 > max) {
            return Err(Error::InvalidArgument(format!(
                "append: entry {} has {} payload bytes; a segment of {} bytes holds at most {max}",
                big.index_term().0,
                big.parts().len(),
                self.segment_bytes
            )));
        }
        Ok(())
    }

    /// Appends `entries` and makes them durable before returning.
    pub fn append_and_sync(&mut self, entries: &[NewEntry<'_>]) -> Result<()> {
        self.append(entries)?;
        self.sync()
    }

    /// Counters since the log was opened: appends, entries, syncs and their latency.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Makes every appended record durable (`fdatasync` of the active segment; earlier
    /// segments were synced when sealed). A failure latches the log; it is never retried.
    pub fn sync(&mut self) -> Result<()> {
        self.check_writable()?;
        let Some(job) = self.sync_job() else { return Ok(()) };
        let result = job.run();
        self.finish_sync(job, result)
    }

    /// What a sync must cover now, if anything. Running it needs no access to the log, so a
    /// group-commit writer can sync without blocking readers.
    pub(crate) fn sync_job(&self) -> Option<SyncJob> {
        (self.unsynced && self.failed.is_none()).then(|| SyncJob {
            segment: Arc::clone(self.segments.back().expect("an active segment")),
            upto: self.active.write_offset,
        })
    }

    /// Records the outcome of a [`SyncJob`]: the horizon advances, or the log latches.
    pub(crate) fn finish_sync(
        &mut self,
        job: SyncJob,
        (result, took): (std::io::Result<()>, std::time::Duration),
    ) -> Result<()> {
        if let Err(e) = result {
            return Err(self.fail("fdatasync", &job.segment.path, e));
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.stats.syncs += 1;
        self.stats.sync_nanos = self.stats.sync_nanos.saturating_add(nanos);
        self.stats.sync_nanos_max = self.stats.sync_nanos_max.max(nanos);
        let active = self.segments.back().expect("an active segment");
        // A rotation in between synced the job's segment itself; only the active one moves.
        if Arc::ptr_eq(active, &job.segment) {
            self.active.syncs += 1;
            self.active.synced_offset = self.active.synced_offset.max(job.upto);
            if job.upto == self.active.write_offset {
                self.unsynced = false;
            }
        }
        Ok(())
    }

    /// Writes records, rotating segments as they fill; returns each record's (segment, offset).
    ///
    /// The records of one append call form one write, recovered whole or not at all
    /// (`FLAG_CONTINUES` on all but its last record, `write_end`). A segment piece ends where a
    /// write ends; a write that does not fit the space left goes to the next segment whole, and
    /// only a write larger than a segment is split, into one atomic piece per segment.
    fn write(&mut self, recs: &[Rec<'_>]) -> Result<Vec<(u64, u32)>> {
        match self.write_partial(recs) {
            (positions, None) => Ok(positions),
            (_, Some(e)) => Err(e),
        }
    }

    /// [`Log::write`], telling what was written when it fails: the positions of the records
    /// written before the error (whole writes only when the error is `NoSpace`: a rotation that
    /// finds the disk full after part of a write split across segments landed latches the log,
    /// since that part is recovered at the next open).
    fn write_partial(&mut self, recs: &[Rec<'_>]) -> (Vec<(u64, u32)>, Option<Error>) {
        let mut positions = Vec::with_capacity(recs.len());
        let mut rest = recs;
        while !rest.is_empty() {
            let seg = Arc::clone(self.segments.back().expect("an active segment"));
            let start = self.active.write_offset;
            let synced_offset = u32::try_from(self.active.synced_offset).expect("segment offsets fit u32");
            // How many of the remaining records fit in this segment, ending where a write ends
            // so that no write that could fit a segment is split (`whole`).
            let mut offset = start;
            let mut fit = 0;
            let mut whole = 0;
            for r in rest {
                let footer = segment::footer_bytes((self.active.records.len() + fit + 1) as u64);
                // Entries leave room for one marker; markers that free space may take it.
                let reserve = if r.uses_reserve { 0 } else { limits::MARKER_RESERVE_BYTES };
                if offset + limits::record_bytes(r.payload.len() as u64) + footer + reserve > seg.segment_bytes {
                    break;
                }
                offset += limits::record_bytes(r.payload.len() as u64);
                fit += 1;
                if r.write_end {
                    whole = fit;
                }
            }
            // An active segment smaller than new ones (made before a reopen with a larger
            // `segment_bytes`) is left, even empty, for a write it cannot hold whole: new
            // segments get the size the log was opened with.
            let smaller = seg.segment_bytes < self.segment_bytes;
            if fit < rest.len() && (whole > 0 || !self.active.records.is_empty() || smaller) {
                // Stop at the last whole write; if none fits, rotate and retry in an empty
                // segment. Only a write larger than an empty new segment is split.
                fit = whole;
            }
            if fit < rest.len()
                && let Err(e) = self.ensure_prepared()
            {
                // A rotation follows this piece: its segment's file is made first.
                return self.refuse(recs, positions, e);
            }
            self.buf.clear();
            let mut offset = start;
            let mut batch = Vec::with_capacity(fit);
            for (k, r) in rest[..fit].iter().enumerate() {
                let h = Header {
                    index: r.index,
                    term: r.term,
                    payload_len: r.payload.len() as u32,
                    synced_offset,
                    kind: r.kind,
                    continues: !r.write_end && k + 1 < fit,
                };
                record::encode_parts(&mut self.buf, seg.id, &h, &r.payload.0);
                batch.push(FooterEntry { index: r.index, term: r.term, offset: offset as u32, kind: r.kind });
                offset += h.record_bytes();
            }
            if fit > 0 {
                if let Err(e) = seg.file.write_at(&self.buf, start) {
                    return (positions, Some(self.fail("write", &seg.path, e)));
                }
                self.unsynced = true;
                self.active.write_offset = offset;
                self.prepare_when_half_full();
                positions.extend(batch.iter().map(|e| (seg.id, e.offset)));
                self.active.records.extend_from_slice(&batch);
            }
            rest = &rest[fit..];
            if !rest.is_empty() {
                // Payload sizes were checked against an empty new segment's capacity, so an
                // empty segment is only left if it is smaller than that.
                assert!(!self.active.records.is_empty() || smaller, "a record fits no segment");
                if let Err(e) = self.rotate() {
                    return self.refuse(recs, positions, e);
                }
            }
        }
        (positions, None)
    }

    /// `write_partial`'s answer when it stops at `e` after writing `positions`: a full disk in
    /// the middle of a write split across segments latches (part of it landed and would be
    /// recovered, so it is not "nothing written").
    fn refuse(&mut self, recs: &[Rec<'_>], positions: Vec<(u64, u32)>, e: Error) -> (Vec<(u64, u32)>, Option<Error>) {
        let split = positions.len().checked_sub(1).is_some_and(|last| !recs[last].write_end);
        if split && matches!(e, Error::NoSpace { .. }) {
            let path = self.dir.join(prepare::PREPARED_NAME);
            let cause = std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space for the rest of a write split across segments",
            );
            let e = self.fail("prepare segment", &path, cause);
            return (positions, Some(e));
        }
        (positions, Some(e))
    }

    /// Makes the next segment's file now, so that a full disk refuses a write before any of it
    /// lands (`NoSpace`, not latched). A background preparation that ran out of space is tried
    /// once more (space may have been freed since).
    fn ensure_prepared(&mut self) -> Result<()> {
        let path = self.dir.join(prepare::PREPARED_NAME);
        let r = match self.preparer.ensure() {
            Err(e) if crate::error::is_no_space_io(&e) => self.preparer.ensure(),
            r => r,
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if crate::error::is_no_space_io(&e) => Err(Error::NoSpace { op: "prepare segment", path }),
            Err(e) => Err(self.fail("prepare segment", &path, e)),
        }
    }

    /// Starts preparing the next segment once the active one is half full.
    fn prepare_when_half_full(&mut self) {
        let active = self.segments.back().expect("an active segment");
        if !self.preparer.started() && self.active.write_offset >= active.segment_bytes / 2 {
            let written = self.active.write_offset - SEGMENT_HEADER_BYTES;
            let per_sync = (self.active.syncs > 0).then(|| written / self.active.syncs);
            self.preparer.start(per_sync);
        }
    }

    /// Writes the active segment's footer, after syncing its records, and syncs it.
    fn seal(&mut self, seg: &Arc<Segment>) -> Result<()> {
        // A footer that survives a power loss must not list records that did not: a disk may
        // keep a later write and lose an earlier one, and recovery trusts a valid footer. So
        // records not yet synced (appends under group commit, or without `sync`) are synced
        // before the footer is written.
        if self.active.synced_offset < self.active.write_offset {
            if let Err(e) = seg.file.sync_data() {
                return Err(self.fail("fdatasync", &seg.path, e));
            }
            self.active.synced_offset = self.active.write_offset;
        }
        let (footer, at) =
            segment::encode_footer(seg.id, seg.segment_bytes, self.active.write_offset, &self.active.records);
        if let Err(e) = seg.file.write_at(&footer, at) {
            return Err(self.fail("write footer", &seg.path, e));
        }
        // The seal (and every record before it) is durable before the next segment exists, so a
        // valid record in a later segment proves this one was complete (see recovery_table.rs).
        if let Err(e) = seg.file.sync_data() {
            return Err(self.fail("fdatasync", &seg.path, e));
        }
        Ok(())
    }

    /// Seals the active segment (footer written and synced) and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        let seg = Arc::clone(self.segments.back().expect("an active segment"));
        // The next segment's file first: a preparation that fails wrote nothing a reader sees
        // (`next.prep` is never read), so it leaves the log as it was, not latched, and a full
        // disk is `NoSpace`, retried by the next write that needs a segment. Only then is this
        // one sealed: a sealed newest segment would need a new one at the next open.
        let prepared_path = self.dir.join(prepare::PREPARED_NAME);
        // A background preparation that ran out of space may have done so before space was
        // freed (by a compaction since): one more try, now, in the foreground.
        let taken = match self.preparer.take() {
            Err(e) if crate::error::is_no_space_io(&e) => self.preparer.take().map(Path::to_path_buf),
            other => other.map(Path::to_path_buf),
        };
        let prepared = match taken {
            Ok(p) => p,
            Err(e) if crate::error::is_no_space_io(&e) => {
                return Err(Error::NoSpace { op: "prepare segment", path: prepared_path });
            }
            Err(e) => return Err(self.fail("prepare segment", &prepared_path, e)),
        };
        self.seal(&seg)?;
        let next =
            match recovery::install_segment(self.fs.as_ref(), &self.dir, &prepared, seg.id + 1, self.segment_bytes) {
                Ok(next) => next,
                Err(Error::Io { op, path, source }) => return Err(self.fail(op, &path, source)),
                Err(e) => return Err(e),
            };

        self.segments.push_back(Arc::new(next));
        self.active = Active {
            write_offset: SEGMENT_HEADER_BYTES,
            synced_offset: SEGMENT_HEADER_BYTES,
            records: Vec::new(),
            syncs: 0,
        };
        self.unsynced = false;
        Ok(())
    }

    /// Drops every entry below `index`, durably, and deletes the segments that held only
    /// dropped entries. `index` may be at most `last_index + 1`; at or below `first_index` it
    /// does nothing.
    ///
    /// On a full disk a compaction that removes no segment, and finds no room for its marker,
    /// still succeeds: its marker is written before the next append's records and is durable
    /// with that append's sync (a crash first brings back the dropped entries, all valid). A
    /// compaction that removes segments always has room (`MARKER_RESERVE_BYTES`).
    pub fn compact(&mut self, index: u64) -> Result<()> {
        self.check_writable()?;
        if index <= self.first_index {
            return Ok(());
        }
        let last_index = self.last_index();
        if index > last_index + 1 {
            return Err(Error::Unavailable { index, last_index });
        }
        let prev_term = self.term(index - 1)?;
        let boundary = match self.locs.get((index - self.first_index) as usize) {
            Some(loc) => loc.segment_id,
            None => self.segments.back().expect("an active segment").id,
        };
        // A compaction that removes no segment leaves the room kept for markers that do.
        let frees = self.segments.len() > 1 && self.segments[0].id < boundary;
        match self.write_marker(Kind::Compact, index, prev_term, boundary, frees) {
            // On a full disk a compaction that frees nothing is kept in memory and written
            // before the next append: it changes nothing a reader of the disk needs.
            Err(Error::NoSpace { .. }) if !frees => self.deferred_compaction = Some((index, prev_term, boundary)),
            r => {
                r?;
                self.deferred_compaction = None;
            }
        }
        self.locs.drain(..(index - self.first_index) as usize);
        self.first_index = index;
        self.prev_term = Some(prev_term);
        self.remove_segments_below(boundary)
    }

    /// Drops every entry, durably, and restarts the log so that the next append is `index`;
    /// `term` is the term of `index - 1` (the snapshot's). Used to install a snapshot.
    pub fn reset(&mut self, index: u64, term: u64) -> Result<()> {
        self.check_writable()?;
        if index == 0 || index > limits::INDEX_MAX || term > limits::INDEX_MAX {
            return Err(Error::InvalidArgument(format!("reset: index {index} or term {term} is out of range")));
        }
        let boundary = self.segments.back().expect("an active segment").id;
        self.write_marker(Kind::Reset, index, term, boundary, true)?;
        self.deferred_compaction = None;
        self.locs.clear();
        self.first_index = index;
        self.prev_term = Some(term);
        self.reset = Some((index, term));
        self.remove_segments_below(boundary)
    }

    fn write_marker(&mut self, kind: Kind, index: u64, term: u64, boundary: u64, uses_reserve: bool) -> Result<()> {
        let payload = boundary.to_le_bytes();
        self.write(&[Rec { kind, index, term, payload: Parts::one(&payload), write_end: true, uses_reserve }])?;
        self.sync()
    }

    /// Removes segments older than `boundary` (never the active one) and syncs the directory.
    fn remove_segments_below(&mut self, boundary: u64) -> Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].id < boundary {
            let seg = self.segments.pop_front().expect("checked above");
            // Unlinking a mapped file is sound: a map keeps its inode alive, and payload handles
            // still pointing into it stay valid until they drop.
            if let Err(e) = self.fs.remove(&seg.path) {
                return Err(self.fail("remove", &seg.path, e));
            }
            removed = true;
        }
        if removed && let Err(e) = self.fs.sync_dir(&self.dir) {
            let dir = self.dir.clone();
            return Err(self.fail("fsync directory", &dir, e));
        }
        Ok(())
    }

    /// Reads and checks every record of every segment (sealed segments are otherwise checked
    /// only when read). Returns the number of records checked, or the first corruption. Reads
    /// through `pread`, not the maps, so a disk that fails a read gives [`Error::Io`] naming the
    /// file and offset.
    pub fn verify(&self) -> Result<u64> {
        let mut checked = 0u64;
        for (i, seg) in self.segments.iter().enumerate() {
            let mut reader = seg.reader();
            let records = if i + 1 == self.segments.len() {
                self.active.records.clone()
            } else {
                match segment::check_footer(&mut reader, seg.id)? {
                    segment::FooterCheck::Sealed { entries, .. } => entries,
                    segment::FooterCheck::Absent => {
                        return Err(seg
                            .corruption(
                                seg.segment_bytes - limits::FOOTER_TRAILER_BYTES,
                                CorruptionKind::Malformed("sealed segment has no footer".into()),
                            )
                            .into_error());
                    }
                    segment::FooterCheck::Damaged { offset, kind } => {
                        return Err(seg.corruption(offset, kind).into_error());
                    }
                }
            };
            for r in records {
                let offset = u64::from(r.offset);
                let refuse = |kind| seg.read_refusal(offset, r.index, kind);
                match reader.record(offset, seg.id)? {
                    Ok((h, _)) if h.index == r.index && h.term == r.term && h.kind == r.kind => checked += 1,
                    Ok((h, _)) => {
                        return Err(refuse(CorruptionKind::Malformed(format!(
                            "record holds index {} term {}, the footer lists index {} term {}",
                            h.index, h.term, r.index, r.term
                        ))));
                    }
                    Err(d) => return Err(refuse(d.into_kind())),
                }
            }
        }
        Ok(checked)
    }
}

/// Checks an append of `entries`, each read as (index, term) by `index_term`, against a log
/// holding `first_index..=last_index`: contiguous, none compacted, indexes and terms within
/// [`limits::INDEX_MAX`], no gap after the last index. The one copy of these rules, for the log
/// and for every Raft storage.
pub(crate) fn check_append_indexes<T>(
    entries: &[T],
    index_term: impl Fn(&T) -> (u64, u64),
    first_index: u64,
    last_index: u64,
) -> Result<()> {
    let Some((first, _)) = entries.first().map(&index_term) else { return Ok(()) };
    let indexes = || entries.iter().map(|e| index_term(e).0);
    if let Some((before, after)) =
        indexes().zip(indexes().skip(1)).find(|&(before, after)| before.checked_add(1) != Some(after))
    {
        return Err(Error::InvalidArgument(format!(
            "append: index {after} follows index {before}; entries must be contiguous"
        )));
    }
    if first < first_index {
        return Err(Error::Compacted { index: first, first_index });
    }
    let out_of_range = |&(index, term): &(u64, u64)| index > limits::INDEX_MAX || term > limits::INDEX_MAX;
    if let Some((index, term)) = entries.iter().map(&index_term).find(out_of_range) {
        return Err(Error::InvalidArgument(format!(
            "append: index {index} or term {term} is above {}",
            limits::INDEX_MAX
        )));
    }
    if first > last_index + 1 {
        return Err(Error::InvalidArgument(format!(
            "append: first index {first} leaves a gap after the last index {last_index}"
        )));
    }
    Ok(())
}
