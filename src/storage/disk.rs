//! [`DiskStorage`]: Raft persistence in one directory.
//!
//! ```text
//! <dir>/LOCK                  flock held while open
//! <dir>/hardstate             HardState + ConfState, two slots
//! <dir>/snap-<term>-<index>.snap   the newest `snapshots_kept` snapshots
//! <dir>/log/                  the write-ahead log (segments)
//! ```
//!
//! Crash atomicity of each write call (ARCHITECTURE.md, "Raft persistence"):
//! - `append`: one atomic log write, then fdatasync.
//! - `set_hard_state`, `set_conf_state`: one slot of the HardState file, then fdatasync.
//! - `create_snapshot`: temporary file, fdatasync, rename, directory fsync; older snapshots
//!   beyond the kept number are removed afterwards.
//! - `apply_snapshot`: (1) the snapshot file as above, (2) the HardState slot, (3) the log
//!   reset marker. Open rolls a crash after (1) forward: a snapshot newer than what the log
//!   holds resets the log, and a HardState whose commit is below the snapshot takes the
//!   snapshot's commit, term and ConfState.
//! - `compact`: the log's compaction marker, then segment removal.
//! - `receive_snapshot` changes nothing: it stages the data in a snapshot writer's temporary
//!   file, which `apply_snapshot` later copies (streamed) into a snapshot file of its own.
//!
//! Invariants: once `failed` is set (or the log latched), nothing is written until reopen;
//! `snapshots` is ordered oldest to newest and every entry's header was checked.

use super::hard_state::{self, CONF_IDS_MAX, HardStateFile};
use super::pin::Pins;
use super::reserve::Reserve;
use super::snapshot::{self, SnapshotFile, SnapshotWriter};
use super::types::{
    ConfState, ENTRY_CONTEXT_FLAG, Entry, EntryType, HardState, RaftState, Snapshot, SnapshotId, SnapshotMetadata,
};
use super::{SnapshotSink, Storage, StorageMut};
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::io::{FileSystem, ops};
use crate::wal::{GatheredEntry, Log, LogOptions, Parts, RecoveryReport};
use std::any::Any;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The log's directory inside the storage directory.
const LOG_DIR: &str = "log";

/// Options for [`DiskStorage::open`].
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Options of the log (segment size, recovery mode, file system).
    pub log: LogOptions,
    /// Snapshots kept; older ones are removed when a new one is durable. At least 1.
    pub snapshots_kept: usize,
    /// Read every byte of the newest snapshot at open to check its checksum (and fall back to
    /// an older one if it is damaged). Off only if the caller checks snapshots itself.
    pub verify_snapshot_on_open: bool,
    /// Bytes held aside in the file `reserve` while the disk has them, and given back when a
    /// snapshot finds the disk full, so that the snapshot that lets the log be compacted can be
    /// written on a full disk (retried after its first `NoSpace`). Size it to the state
    /// machine's snapshots; 0 for none. Default 64 MiB (`RESERVE_BYTES_DEFAULT`).
    pub reserve_bytes: u64,
}

/// The default [`StorageOptions::reserve_bytes`]: one default segment's size.
pub const RESERVE_BYTES_DEFAULT: u64 = crate::limits::SEGMENT_BYTES_DEFAULT;

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            log: LogOptions::default(),
            snapshots_kept: 2,
            verify_snapshot_on_open: true,
            reserve_bytes: RESERVE_BYTES_DEFAULT,
        }
    }
}

/// What [`DiskStorage::open`] found and did.
#[derive(Debug, Clone, Default)]
pub struct StorageReport {
    /// The log's own recovery report.
    pub log: RecoveryReport,
    /// The newest usable snapshot.
    pub snapshot: Option<SnapshotId>,
    /// Snapshots found damaged, renamed to `*.corrupt` and skipped, with the reason.
    pub corrupt_snapshots: Vec<(PathBuf, String)>,
    /// Temporary files left by a crash, removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// A snapshot install interrupted by a crash was completed (log reset, HardState updated).
    pub snapshot_install_completed: bool,
}

impl fmt::Display for StorageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.log)?;
        match self.snapshot {
            Some(id) => writeln!(f, "  snapshot at {id}")?,
            None => writeln!(f, "  no snapshot")?,
        }
        for (p, why) in &self.corrupt_snapshots {
            writeln!(f, "  damaged snapshot {} set aside: {why}", p.display())?;
        }
        for p in &self.removed_temp_files {
            writeln!(f, "  removed leftover temporary file {}", p.display())?;
        }
        if self.snapshot_install_completed {
            writeln!(f, "  completed a snapshot install interrupted by a crash")?;
        }
        Ok(())
    }
}

/// Raft storage in a directory: log segments, a HardState file and snapshot files.
pub struct DiskStorage {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    _lock: Box<dyn Any + Send + Sync>,
    log: Log,
    hard_state: HardStateFile,
    /// Oldest to newest.
    snapshots: Vec<Arc<SnapshotFile>>,
    snapshots_kept: usize,
    in_progress: Arc<AtomicUsize>,
    /// Snapshot handles handed out by `snapshot()` pin the entries after them.
    pins: Pins,
    /// Space held aside for a snapshot on a full disk (`reserve.rs`).
    reserve: Reserve,
    failed: Option<String>,
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("log", &self.log)
            .field("failed", &self.failed)
            .finish()
    }
}

impl DiskStorage {
    /// Opens (creating if needed) the storage in `dir` and recovers it: leftovers of interrupted
    /// writes are removed, the log recovers ([`Log::open`]), a damaged newest snapshot is set
    /// aside for an older one if the log still covers what follows it, and a snapshot install
    /// that a crash interrupted is completed. The report says what was found and done.
    pub fn open(dir: impl AsRef<Path>, options: StorageOptions) -> Result<(DiskStorage, StorageReport)> {
        let dir = dir.as_ref();
        let fs = Arc::clone(&options.log.fs);
        if options.snapshots_kept == 0 {
            return Err(Error::InvalidArgument("snapshots_kept must be at least 1".into()));
        }
        let lock = ops::lock_dir(fs.as_ref(), dir)?;
        // A newer keel's snapshot refuses open before anything is changed.
        let names = list_names(fs.as_ref(), dir)?;
        snapshot::refuse_newer(fs.as_ref(), dir, &names)?;
        let mut report = StorageReport::default();
        remove_temp_files(fs.as_ref(), dir, &names, &mut report.removed_temp_files)?;
        let mut hard_state = open_hard_state(fs.as_ref(), dir, &names)?;
        let (mut log, log_report) = Log::open(dir.join(LOG_DIR), options.log.clone())?;
        report.log = log_report;
        let verify = options.verify_snapshot_on_open;
        let snapshots = load_snapshots(&fs, dir, &names, verify, &mut report.corrupt_snapshots)?;
        report.snapshot = snapshots.last().map(|s| s.metadata.id());
        sync_snapshots_and_directory(fs.as_ref(), dir, &snapshots)?;
        check_fallback(&log, &snapshots, &report.corrupt_snapshots)?;
        check_reset_covered(dir, &log, &snapshots)?;
        report.snapshot_install_completed = roll_forward_install(&snapshots, &mut hard_state, &mut log)?;
        check_commit_held(&hard_state, &log, &snapshots)?;
        let mut storage = DiskStorage {
            dir: dir.to_path_buf(),
            fs,
            _lock: lock,
            log,
            hard_state,
            snapshots,
            snapshots_kept: options.snapshots_kept,
            in_progress: Arc::new(AtomicUsize::new(0)),
            pins: Pins::default(),
            reserve: Reserve::new(Arc::clone(&options.log.fs), dir, options.reserve_bytes),
            failed: None,
        };
        storage.prune_snapshots()?;
        storage.reserve.take()?;
        Ok((storage, report))
    }
}

/// The names in `dir` that are valid UTF-8 (keel names no other file).
fn list_names(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    let names = fs.list(dir).map_err(Error::at("list", dir))?;
    Ok(names.into_iter().filter_map(|n| n.into_string().ok()).collect())
}

/// Whether `name` is the temporary file of one of keel's own interrupted writes: a snapshot
/// writer's or the HardState file's creation. Nothing else in the directory is keel's to remove.
fn is_temp_file_name(name: &str) -> bool {
    snapshot::is_temp_file_name(name) || name.strip_suffix(".tmp") == Some(hard_state::FILE_NAME)
}

/// Removes the temporary files of keel's interrupted writes (into `removed`); returns the names
/// in `dir`.
fn remove_temp_files(fs: &dyn FileSystem, dir: &Path, names: &[String], removed: &mut Vec<PathBuf>) -> Result<()> {
    for n in names.iter().filter(|n| is_temp_file_name(n)) {
        let p = dir.join(n);
        fs.remove(&p).map_err(Error::at("remove", &p))?;
        removed.push(p);
    }
    Ok(())
}

/// The HardState file, created if the storage is new. Also makes the removal of temporary files
/// durable, if any.
///
/// The HardState file and the log vouch for each other, both ways (rules `STORAGE_*_MISSING`):
/// - no HardState file beside a log with segments, or beside snapshot files, lost it;
/// - a HardState file that was ever written (sequence above 1), or snapshot files, beside a log
///   with no segment (its directory missing or empty) lost the log: every completed open leaves
///   a segment, and nothing is written before an open completes. A HardState file as created,
///   with no snapshot, beside no log is a first open cut short before it made the log; nothing
///   was acknowledged yet, and the log is created now.
fn open_hard_state(fs: &dyn FileSystem, dir: &Path, names: &[String]) -> Result<HardStateFile> {
    let log_dir = dir.join(LOG_DIR);
    let log_has_segments = match fs.list(&log_dir) {
        Ok(l) => l.iter().any(|n| n.to_str().and_then(crate::wal::segment::parse_file_name).is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("list", &log_dir, e)),
    };
    let snapshot_files = names.iter().filter(|n| snapshot::parse_file_name(n).is_some()).count();
    if !names.iter().any(|n| n == hard_state::FILE_NAME) {
        if log_has_segments || snapshot_files > 0 {
            let mut c = Corruption::new(
                dir.join(hard_state::FILE_NAME),
                0,
                CorruptionKind::Malformed(format!(
                    "the HardState file is missing but the log holds {} segments and there are {snapshot_files} \
                     snapshot files: the term, vote and membership were lost",
                    if log_has_segments { "some" } else { "no" }
                )),
            );
            c.rule = Some("STORAGE_HARDSTATE_MISSING");
            return Err(c.into_error());
        }
        HardStateFile::create(fs, dir)?;
    }
    let hard_state = HardStateFile::open(fs, dir)?;
    let sequence = hard_state.current().sequence;
    if !log_has_segments && (sequence > 1 || snapshot_files > 0) {
        let mut c = Corruption::new(
            &log_dir,
            0,
            CorruptionKind::Malformed(format!(
                "the log directory is missing or holds no segment, but the HardState file has been written \
                 (sequence {sequence}) and there are {snapshot_files} snapshot files: the log was lost"
            )),
        );
        c.rule = Some("STORAGE_LOG_MISSING");
        return Err(c.into_error());
    }
    Ok(hard_state)
}

/// The snapshots, oldest to newest, each header checked. From the newest down to the first that
/// checks out (in full if `verify_newest`), each damaged one is renamed `*.corrupt` and reported
/// in `corrupt`. A file of another format version is not damage: it refuses open, untouched.
fn load_snapshots(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    names: &[String],
    verify_newest: bool,
    corrupt: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<Arc<SnapshotFile>>> {
    let mut found: Vec<(SnapshotId, String)> =
        names.iter().filter_map(|n| snapshot::parse_file_name(n).map(|id| (id, n.clone()))).collect();
    found.sort();
    let mut snapshots = Vec::new();
    let mut newest_checked = false;
    for (_, name) in found.iter().rev() {
        let path = dir.join(name);
        let checked = SnapshotFile::open(fs.as_ref(), &path).and_then(|sf| {
            if !newest_checked && verify_newest {
                sf.verify()?;
            }
            Ok(sf)
        });
        match checked {
            Ok(sf) => {
                newest_checked = true;
                snapshots.push(Arc::new(sf));
            }
            Err(e @ Error::Corruption(_)) if !newest_checked => {
                let aside = dir.join(format!("{name}.corrupt"));
                fs.rename(&path, &aside).map_err(Error::at("rename", &aside))?;
                fs.sync_dir(dir).map_err(Error::at("fsync directory", dir))?;
                corrupt.push((aside, e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    snapshots.reverse();
    Ok(snapshots)
}

/// After a damaged snapshot, the older one used instead is only usable if the log still holds
/// everything after it.
fn check_fallback(log: &Log, snapshots: &[Arc<SnapshotFile>], corrupt: &[(PathBuf, String)]) -> Result<()> {
    let Some((path, why)) = corrupt.first() else { return Ok(()) };
    let covered = snapshots.last().map_or(0, |s| s.metadata.index);
    if log.first_index() <= covered + 1 {
        return Ok(());
    }
    Err(Corruption::new(
        path,
        0,
        CorruptionKind::Malformed(format!(
            "the newest snapshot is damaged ({why}) and the log starts at {}, after the newest usable snapshot \
             ({covered}): the state cannot be rebuilt locally",
            log.first_index()
        )),
    )
    .into_error())
}

/// A log restarted by a reset marker at `r` (a snapshot install) needs a snapshot covering
/// `r - 1`: the install made that snapshot durable before writing the marker, and only newer
/// snapshots replace it. Without one, the state before `r` is lost (rule
/// `STORAGE_SNAPSHOT_MISSING`). A log that starts after 1 because of a compaction marker needs
/// no snapshot: compaction without one is allowed (the application holds that state).
fn check_reset_covered(dir: &Path, log: &Log, snapshots: &[Arc<SnapshotFile>]) -> Result<()> {
    let Some((index, term)) = log.newest_reset() else { return Ok(()) };
    let covered = snapshots.last().map_or(0, |s| s.metadata.index);
    if covered.saturating_add(1) >= index {
        return Ok(());
    }
    let missing = dir.join(snapshot::file_name(SnapshotId { term, index: index - 1 }));
    let mut c = Corruption::new(
        missing,
        0,
        CorruptionKind::Malformed(format!(
            "the log was reset to start at {index} by a snapshot install, but no snapshot covers index {} (the \
             newest covers {covered}): this snapshot file is missing and the state before {index} is lost",
            index - 1
        )),
    );
    c.rule = Some("STORAGE_SNAPSHOT_MISSING");
    Err(c.into_error())
}

/// Completes a snapshot install that a crash interrupted, and says whether there was one.
///
/// Its file is the newest snapshot, but the log reset (step 3 of `apply_snapshot`) did not
/// happen, so the HardState (step 2) may not have either. (Once the reset is durable, step 2 was;
/// later calls may have moved the HardState on, so it is not compared.) The file is made durable
/// first: the process may have died between its rename and the directory fsync, and the page
/// cache shows what the disk may not hold; nothing may come to depend on it before it is durable.
fn roll_forward_install(
    snapshots: &[Arc<SnapshotFile>],
    hard_state: &mut HardStateFile,
    log: &mut Log,
) -> Result<bool> {
    let Some(sf) = snapshots.last().filter(|s| s.installed && log.first_index() <= s.metadata.index) else {
        return Ok(false);
    };
    // The snapshot file and its name are durable (`sync_snapshots_and_directory` ran first), so
    // the install is decided before the HardState and the log are brought up to it.
    let m = &sf.metadata;
    let slot = hard_state.current().clone();
    hard_state.write(super::hard_state_after_snapshot(slot.hard_state, m), m.conf_state.clone())?;
    log.reset(m.index + 1, m.term)?;
    Ok(true)
}

/// Makes durable what open read and did besides the log (which `Log::open` syncs, with its
/// directory and this one) and the HardState file (synced when opened): the snapshot files it
/// will serve, this directory after the removals and renames above, and its parent. A killed
/// process may have left any of them only in the page cache. Runs before anything is built on
/// them (the roll-forward of an interrupted install, the answers open gives).
fn sync_snapshots_and_directory(fs: &dyn FileSystem, dir: &Path, snapshots: &[Arc<SnapshotFile>]) -> Result<()> {
    for sf in snapshots {
        fs.open(&sf.path).and_then(|f| f.sync_data()).map_err(Error::at("fdatasync", &sf.path))?;
    }
    fs.sync_dir(dir).map_err(Error::at("fsync directory", dir))?;
    ops::sync_parent(fs, dir)
}

/// The HardState's commit index must be held by the log or the newest snapshot: Raft
/// acknowledged those entries to clients. If recovery dropped them (damage it could not tell
/// from a torn tail, such as inside the last synced write), starting would silently lose them,
/// so open refuses in every recovery mode.
fn check_commit_held(hard_state: &HardStateFile, log: &Log, snapshots: &[Arc<SnapshotFile>]) -> Result<()> {
    let commit = hard_state.current().hard_state.commit;
    let held = log.last_index().max(snapshots.last().map_or(0, |s| s.metadata.index));
    if commit <= held {
        return Ok(());
    }
    let kind = CorruptionKind::Malformed(format!(
        "the HardState's commit index is {commit} but the log and snapshots end at index {held}: committed \
         entries {}..={commit} are missing",
        held + 1
    ));
    let mut c = Corruption::new(log.dir(), 0, kind);
    c.rule = Some("COMMIT_ABOVE_LOG");
    c.affected_indexes = Some((held + 1, commit));
    Err(c.into_error())
}

impl DiskStorage {
    /// Closes the storage, writing a commit index that only moved since the last synced change
    /// (see `set_hard_state`) and reporting a failure, which dropping it cannot.
    pub fn close(mut self) -> Result<()> {
        self.flush_commit()
    }

    /// Writes an unsynced commit index, if any.
    fn flush_commit(&mut self) -> Result<()> {
        if !self.hard_state.unsynced() || self.failed.is_some() {
            return Ok(());
        }
        let r = self.hard_state.sync();
        self.latch(r)
    }

    /// The underlying log (read-only).
    pub fn log(&self) -> &Log {
        &self.log
    }

    fn check_writable(&self) -> Result<()> {
        if let Some(cause) = &self.failed {
            return Err(Error::Failed { cause: cause.clone() });
        }
        Ok(())
    }

    /// Latches on any I/O error; passes other errors through.
    fn latch<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e @ (Error::Io { .. } | Error::Failed { .. })) = &r {
            self.failed.get_or_insert_with(|| e.to_string());
        }
        r
    }

    /// The HardState as Raft last set it (the file's, with any unwritten commit).
    fn current_hard_state(&self) -> HardState {
        self.hard_state.current().hard_state
    }

    /// Writes a HardState slot (fdatasync).
    fn write_hard_state(&mut self, hard_state: HardState, conf_state: ConfState) -> Result<()> {
        let r = self.hard_state.write(hard_state, conf_state);
        self.latch(r)
    }

    fn newest_snapshot_index(&self) -> u64 {
        self.snapshots.last().map_or(0, |s| s.metadata.index)
    }

    fn check_conf_state(conf_state: &ConfState) -> Result<()> {
        if conf_state.id_count() > CONF_IDS_MAX {
            return Err(Error::InvalidArgument(format!(
                "conf state lists {} node ids; at most {CONF_IDS_MAX} fit",
                conf_state.id_count()
            )));
        }
        Ok(())
    }

    /// Removes the oldest snapshots beyond the kept number.
    fn prune_snapshots(&mut self) -> Result<()> {
        let excess = self.snapshots.len().saturating_sub(self.snapshots_kept);
        if excess == 0 {
            return Ok(());
        }
        for sf in self.snapshots.drain(..excess).collect::<Vec<_>>() {
            let r = self.fs.remove(&sf.path).map_err(Error::at("remove", &sf.path));
            self.latch(r)?;
        }
        let r = self.fs.sync_dir(&self.dir).map_err(Error::at("fsync directory", &self.dir));
        self.latch(r)
    }

    /// Adds a durable snapshot file as the newest snapshot.
    fn register(&mut self, path: &Path) -> Result<()> {
        let sf = SnapshotFile::open(self.fs.as_ref(), path)?;
        self.snapshots.push(Arc::new(sf));
        self.prune_snapshots()
    }

    /// Appends entries given by reference ([`StorageMut::append`] for any entry type): each
    /// log payload is the entry's prefix (type byte, and the context's length if it has one),
    /// its context and its data, copied once, into the log's write buffer. Durable on return.
    pub(crate) fn append_refs(&mut self, entries: &[EntryRef<'_>]) -> Result<()> {
        self.check_writable()?;
        let commit = self.current_hard_state().commit;
        super::check_append_by(entries, |e| (e.index, e.term), self.log.first_index(), self.log.last_index(), commit)?;
        let prefixes: Vec<EntryPrefix> =
            entries.iter().map(|e| EntryPrefix::new(e.entry_type, e.context.len())).collect();
        let gathered: Vec<GatheredEntry<'_>> = entries
            .iter()
            .zip(&prefixes)
            .map(|(e, p)| GatheredEntry {
                index: e.index,
                term: e.term,
                payload: Parts([p.bytes(), e.context, e.data]),
            })
            .collect();
        let r = self.log.append_gathered(&gathered).and_then(|()| self.log.sync());
        drop(gathered);
        self.latch(r)
    }

    fn read_entry(&self, index: u64) -> Result<Entry> {
        let e = self.log.entry(index)?;
        let (entry_type, context, data) =
            parse_entry_payload(&e.payload).map_err(|what| self.bad_entry(index, what))?;
        Ok(Entry { index, term: e.term, entry_type, data: e.payload.slice(data), context: e.payload.slice(context) })
    }

    fn bad_entry(&self, index: u64, what: String) -> Error {
        let mut c = Corruption::new(self.log.dir(), 0, CorruptionKind::Malformed(what));
        c.affected_indexes = Some((index, index));
        c.into_error()
    }
}

/// An entry to store, borrowed from a keel [`Entry`] or from another library's entry type
/// (raft-rs's), so that its bytes are copied once, into the log's write buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryRef<'a> {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) entry_type: EntryType,
    pub(crate) context: &'a [u8],
    pub(crate) data: &'a [u8],
}

/// What comes before an entry's context and data in its log payload (`segments/FORMAT.md`,
/// "Raft entries in records"): the type byte, with [`ENTRY_CONTEXT_FLAG`] and the context's
/// length (`u32`) if the entry has a context.
struct EntryPrefix {
    bytes: [u8; 5],
    len: usize,
}

impl EntryPrefix {
    fn new(entry_type: EntryType, context_len: usize) -> EntryPrefix {
        let mut bytes = [entry_type as u8, 0, 0, 0, 0];
        if context_len == 0 {
            return EntryPrefix { bytes, len: 1 };
        }
        bytes[0] |= ENTRY_CONTEXT_FLAG;
        // The log refuses payloads over `limits::payload_bytes_max`, far below 4 GiB.
        let len = u32::try_from(context_len).unwrap_or(u32::MAX);
        bytes[1..5].copy_from_slice(&len.to_le_bytes());
        EntryPrefix { bytes, len: 5 }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Splits an entry record's payload into its type and the byte ranges of its context and data;
/// says what is wrong with a payload keel did not write.
pub(crate) fn parse_entry_payload(
    payload: &[u8],
) -> std::result::Result<(EntryType, std::ops::Range<usize>, std::ops::Range<usize>), String> {
    let Some((&tag, _)) = payload.split_first() else {
        return Err("entry payload is empty (no entry type)".into());
    };
    let entry_type = EntryType::from_u8(tag & !ENTRY_CONTEXT_FLAG)
        .ok_or_else(|| format!("entry type byte {tag:#04x} is unknown"))?;
    if tag & ENTRY_CONTEXT_FLAG == 0 {
        return Ok((entry_type, 1..1, 1..payload.len()));
    }
    let Some(len) = payload.get(1..5) else {
        return Err(format!("entry has a context flag but {} payload bytes, too few for its length", payload.len()));
    };
    let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
    if len == 0 || len > payload.len() - 5 {
        return Err(format!("entry context of {len} bytes does not fit its payload of {} bytes", payload.len()));
    }
    Ok((entry_type, 5..5 + len, 5 + len..payload.len()))
}

impl Drop for DiskStorage {
    fn drop(&mut self) {
        // A clean close keeps the newest commit index; a crash may lose it, which Raft allows.
        // A failure here cannot be reported: `close` reports it.
        let _ = self.flush_commit();
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> Result<RaftState> {
        Ok(RaftState {
            hard_state: self.current_hard_state(),
            conf_state: self.hard_state.current().conf_state.clone(),
        })
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        super::check_range(lo, hi, self.log.first_index(), self.log.last_index())?;
        super::page(lo, hi, max_bytes, |i| self.read_entry(i))
    }

    fn term(&self, index: u64) -> Result<u64> {
        match self.log.term(index) {
            // The log knows the term before its first entry after any compaction or reset; the
            // snapshot answers only if that knowledge was lost.
            Err(Error::Compacted { .. })
                if index.checked_add(1) == Some(self.log.first_index())
                    && self.snapshots.last().is_some_and(|s| s.metadata.index == index) =>
            {
                Ok(self.snapshots.last().expect("checked").metadata.term)
            }
            r => r,
        }
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.log.first_index())
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.log.last_index())
    }

    fn snapshot(&self, request_index: u64) -> Result<Snapshot> {
        match self.snapshots.last() {
            Some(s) if self.in_progress.load(Ordering::SeqCst) == 0 && s.metadata.index >= request_index => {
                let data = Arc::clone(s) as Arc<dyn super::types::SnapshotSource>;
                Ok(Snapshot::new(s.metadata.clone(), data).pinned(&self.pins))
            }
            _ => Err(Error::SnapshotTemporarilyUnavailable),
        }
    }
}

impl StorageMut for DiskStorage {
    type SnapshotWriter = SnapshotWriter;

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let refs: Vec<EntryRef<'_>> = entries
            .iter()
            .map(|e| EntryRef {
                index: e.index,
                term: e.term,
                entry_type: e.entry_type,
                context: &e.context,
                data: &e.data,
            })
            .collect();
        self.append_refs(&refs)
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        self.check_writable()?;
        let current = self.current_hard_state();
        super::check_hard_state(&current, hard_state, self.log.last_index())?;
        let cs = self.hard_state.current().conf_state.clone();
        if hard_state.term == current.term && hard_state.vote == current.vote {
            // Only the commit index moved: Raft can relearn it, so no fdatasync (etcd's MustSync
            // rule), but it is written, so that a process kill (page cache kept) never moves
            // commit backwards; only a power loss may, to the last synced value.
            let r = self.hard_state.write_unsynced(*hard_state, cs);
            return self.latch(r);
        }
        self.write_hard_state(*hard_state, cs)
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()> {
        self.check_writable()?;
        Self::check_conf_state(conf_state)?;
        let hs = self.current_hard_state();
        self.write_hard_state(hs, conf_state.clone())
    }

    fn apply_snapshot(&mut self, metadata: &SnapshotMetadata, data: &mut dyn Read) -> Result<()> {
        self.check_writable()?;
        super::check_apply_snapshot(
            metadata.index,
            metadata.term,
            self.log.first_index(),
            self.newest_snapshot_index(),
            self.current_hard_state().commit,
        )?;
        Self::check_conf_state(&metadata.conf_state)?;
        let created = SnapshotWriter::create(
            Arc::clone(&self.fs),
            &self.dir,
            metadata.clone(),
            true,
            Some(Arc::clone(&self.in_progress)),
        );
        let mut w = self.latch(created)?;
        if let Err(e) = std::io::copy(data, &mut w) {
            // A failure of our file latches, but a full disk only fails the call (nothing is
            // installed yet) and releases the reserve for the retry; a failure of the source is
            // the caller's.
            return match w.failed_cause() {
                Some(_) if w.failed_no_space() => {
                    let tmp = self.dir.clone();
                    self.reserve.on_no_space(
                        Err(Error::NoSpace { op: "write snapshot", path: tmp.clone() }),
                        "install snapshot",
                        &tmp,
                    )
                }
                Some(cause) => self.latch(Err(Error::Failed { cause })),
                None => Err(Error::io("read snapshot data", "<snapshot data>", e)),
            };
        }
        // (1) The snapshot file, durable under its final name. From here a crash rolls forward.
        let finished = w.finish();
        let finished = self.reserve.on_no_space(finished, "install snapshot", &self.dir.clone());
        let path = self.latch(finished)?;
        // (2) HardState: commit and term at least the snapshot's; its ConfState.
        let hs = super::hard_state_after_snapshot(self.current_hard_state(), metadata);
        self.write_hard_state(hs, metadata.conf_state.clone())?;
        // (3) The log restarts after the snapshot.
        let reset = self.log.reset(metadata.index + 1, metadata.term);
        self.latch(reset)?;
        self.register(&path)
    }

    fn begin_snapshot(&self, index: u64, conf_state: &ConfState) -> Result<SnapshotWriter> {
        self.check_writable()?;
        Self::check_conf_state(conf_state)?;
        super::check_begin_snapshot(index, self.newest_snapshot_index(), self.log.last_index())?;
        let term = self.term(index)?;
        let metadata = SnapshotMetadata { index, term, conf_state: conf_state.clone() };
        SnapshotWriter::create(Arc::clone(&self.fs), &self.dir, metadata, false, Some(Arc::clone(&self.in_progress)))
    }

    fn finish_snapshot(&mut self, writer: SnapshotWriter) -> Result<()> {
        self.check_writable()?;
        let newest = self.newest_snapshot_index();
        if writer.metadata().index <= newest {
            return Err(Error::SnapshotOutOfDate { index: writer.metadata().index, covered: newest });
        }
        let r = writer.finish();
        let r = self.reserve.on_no_space(r, "write snapshot", &self.dir.clone());
        let path = self.latch(r)?;
        self.register(&path)
    }

    fn create_snapshot(&mut self, index: u64, conf_state: &ConfState, data: &mut dyn Read) -> Result<()> {
        let mut w = self.begin_snapshot(index, conf_state)?;
        if let Err(e) = std::io::copy(data, &mut w) {
            // Our file failing on a full disk releases the reserve for the retry; any other
            // failure of our file, or of the source, is reported as such (not latched: nothing
            // of the storage's changed).
            let r = match w.failed_no_space() {
                true => Err(Error::NoSpace { op: "write snapshot", path: self.dir.clone() }),
                false => Err(Error::io("write snapshot", "<snapshot data>", e)),
            };
            return self.reserve.on_no_space(r, "write snapshot", &self.dir.clone());
        }
        self.finish_snapshot(w)
    }

    fn receive_snapshot(&self, metadata: &SnapshotMetadata) -> Result<Box<dyn SnapshotSink>> {
        // A staging failure is not latched: the file is no state of the storage, and dropping
        // the sink removes it.
        self.check_writable()?;
        self.snapshot_stager().stage(metadata)
    }

    fn snapshot_stager(&self) -> Arc<dyn super::SnapshotStager> {
        Arc::new(DiskStager { fs: Arc::clone(&self.fs), dir: self.dir.clone() })
    }

    fn compact(&mut self, index: u64) -> Result<()> {
        self.check_writable()?;
        let index = self.pins.compact_limit(index);
        if !super::check_compact(index, self.log.first_index(), self.log.last_index())? {
            return Ok(());
        }
        let mut r = self.log.compact(index);
        // The log keeps room for one marker that frees space; if something else took it (a
        // segment sealed by an older keel, unsealed at open), the marker needs a new segment.
        // Compaction is how space is freed, so it may use the reserve: give it back, try again.
        if matches!(r, Err(Error::NoSpace { .. })) {
            let released = self.reserve.release();
            if self.latch(released)? {
                r = self.log.compact(index);
            }
        }
        self.latch(r)?;
        // Compaction may have freed space: hold the reserve again if it was given out.
        let r = self.reserve.take();
        self.latch(r)
    }
}

/// `DiskStorage`'s [`SnapshotStager`](super::SnapshotStager): staging files in its directory,
/// named as `receive_snapshot` names them (so open removes a crash's leftovers).
struct DiskStager {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
}

impl super::SnapshotStager for DiskStager {
    fn stage(&self, metadata: &SnapshotMetadata) -> Result<Box<dyn SnapshotSink>> {
        DiskStorage::check_conf_state(&metadata.conf_state)?;
        let w = SnapshotWriter::create(Arc::clone(&self.fs), &self.dir, metadata.clone(), true, None)?;
        Ok(Box::new(StagingSink(w)))
    }
}

/// `DiskStorage`'s [`SnapshotSink`]: a snapshot writer whose file stays under its temporary name.
struct StagingSink(SnapshotWriter);

impl Write for StagingSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl SnapshotSink for StagingSink {
    fn finish(self: Box<Self>) -> Result<Snapshot> {
        let metadata = self.0.metadata().clone();
        let staged = self.0.finish_staged()?;
        Ok(Snapshot::new(metadata, Arc::new(staged)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(entry_type: EntryType, context: &[u8], data: &[u8]) -> Vec<u8> {
        let p = EntryPrefix::new(entry_type, context.len());
        [p.bytes(), context, data].concat()
    }

    #[test]
    fn entry_payloads_round_trip_with_and_without_context() {
        for (t, c, d) in [
            (EntryType::Normal, &b""[..], &b"data"[..]),
            (EntryType::ConfChangeV2, b"ctx", b""),
            (EntryType::ConfChange, b"c", b"dd"),
        ] {
            let bytes = encoded(t, c, d);
            let (tt, cr, dr) = parse_entry_payload(&bytes).unwrap();
            assert_eq!((tt, &bytes[cr], &bytes[dr]), (t, c, d));
        }
        assert_eq!(encoded(EntryType::Normal, b"", b"x"), [0, b'x'], "no context: the old layout, unchanged");
    }

    #[test]
    fn malformed_entry_payloads_say_what_is_wrong() {
        let cases: [(&[u8], &str); 5] = [
            (&[], "empty"),
            (&[0x7f], "unknown"),
            (&[0x80, 1, 0], "too few"),
            (&[0x80, 0, 0, 0, 0, 9], "does not fit"),
            (&[0x81, 5, 0, 0, 0, 1, 2], "does not fit"),
        ];
        for (bytes, what) in cases {
            let e = parse_entry_payload(bytes).unwrap_err();
            assert!(e.contains(what), "{bytes:?}: {e}");
        }
    }
}
