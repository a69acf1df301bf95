//! keel as the log store of [openraft](https://docs.rs/openraft/0.9) 0.9 (feature `openraft`):
//! [`KeelLogStore`] implements openraft's v2 storage API, `RaftLogStorage` and `RaftLogReader`
//! (`openraft::storage`). The state machine stays the application's.
//!
//! ```
//! use keel::openraft::KeelLogStore;
//! use keel::wal::LogOptions;
//! use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
//! use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
//! use std::io::Cursor; // the default snapshot data type of `declare_raft_types!`
//!
//! openraft::declare_raft_types!(pub Config: D = String, R = String);
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let mut store = KeelLogStore::<Config>::open(dir.path(), LogOptions::default())?;
//! store.save_vote(&Vote::new_committed(1, 7)).await?;
//! let entry = |index| Entry::<Config> {
//!     log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
//!     payload: EntryPayload::Normal(format!("put x={index}")),
//! };
//! // `blocking_append` waits for the flush callback, which comes after the fdatasync.
//! store.blocking_append([entry(0), entry(1)]).await?;
//! drop(store);
//!
//! let mut store = KeelLogStore::<Config>::open(dir.path(), LogOptions::default())?;
//! assert_eq!(store.read_vote().await?, Some(Vote::new_committed(1, 7)));
//! let entries = store.try_get_log_entries(0..2).await?;
//! assert_eq!(entries[1].log_id.index, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`KeelLogReader`] shares the store's open log and directory lock: after the store is
//! dropped, the directory stays locked (a reopen answers [`Error::Locked`]) until the last reader
//! openraft handed to its replication tasks is dropped too.
//!
//! The directory holds `LOCK`, the keel log in `log/` and the openraft state file
//! (`openraft-state`, layout in `segments/FORMAT.md`): the vote, the committed log id, the last
//! purged log id and the truncation fence.
//!
//! Index mapping: openraft counts log indexes from 0, keel from 1, so openraft index `i` is keel
//! index `i + 1` ([`keel_index`]). The openraft `LogId` of an entry (term, node id, index) is in
//! its payload; keel's record keeps the term beside it, and a read checks both agree.
//!
//! Group commit: `append` writes the entries to the log at once (so a reader sees them when it
//! returns, as openraft requires) and queues the flush callback; a flusher thread takes every
//! queued callback, runs one `fdatasync` covering all of them, then completes them in order.
//! A failed sync fails every callback in it with the error and latches the store: every later
//! write fails with [`Error::Failed`] until it is reopened. Writes that are not appends (vote,
//! committed, truncate, purge) first wait for the queued flushes, so the store's writes happen
//! in the order openraft issued them.
//!
//! Truncation: keel's log truncates a conflicting suffix only as part of an append. A `truncate`
//! therefore durably records a fence in the state file (the first removed index) and hides what
//! follows it; the next append writes from the fence (keel truncating the old suffix with it),
//! and once that append is durable the flusher lifts the fence before completing its callback.
//! A crash before that leaves the fence, and the old entries stay hidden.
//!
//! Purge: the last purged log id is written to the state file (synced) before keel compacts
//! its log; an open finishes a compaction that a crash interrupted. Entries at or below it are
//! never returned.
//!
//! Invariants:
//! - `last` (the store's last keel index) `<= log.last_index()`; when it is lower, the state
//!   file holds a fence at `last + 1` (in openraft numbering, `last`);
//! - entries below the purged index + 1 are never returned, whatever the log still holds;
//! - a flush callback is called only after an `fdatasync` covering its entries succeeded (and the
//!   fence, if its append lifts one, is durably lifted), once, and in submission order;
//! - once a write or sync fails, the store refuses every write until it is reopened.

mod entry;
pub(crate) mod state_file;

use crate::error::{Error, Result};
use crate::io::ops;
use crate::wal::{Log, LogOptions, NewEntry};
use ::openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use ::openraft::{
    AnyError, CommittedLeaderId, LogId, OptionalSend, RaftLogId, RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use state_file::{RawLogId, RawVote, State, StateFile};
use std::any::Any;
use std::fmt;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The name of the log's directory inside the store's directory.
pub const LOG_DIR: &str = "log";

/// The keel index of openraft index `index` (keel counts from 1, openraft from 0).
pub fn keel_index(index: u64) -> u64 {
    index.checked_add(1).expect("openraft index below u64::MAX")
}

/// What the completion of one queued flush does with its outcome.
type Done = Box<dyn FnOnce(Result<()>) + Send>;

/// The flush queue (see the module documentation, "Group commit").
#[derive(Default)]
struct Queue {
    /// Completions waiting for a sync, in submission order, each with whether its append
    /// replaced the entries at the fence (so the fence is lifted once it is durable).
    pending: Vec<(Done, bool)>,
    submitted: u64,
    completed: u64,
    stop: bool,
}

/// The log and what the store knows about it.
struct Core {
    log: Log,
    /// The store's last keel index (see the invariants).
    last: u64,
    last_log_id: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
}

impl Core {
    /// The first keel index the store returns.
    fn first(&self) -> u64 {
        let after_purged = self.purged.map_or(1, |p| keel_index(p.index) + 1);
        self.log.first_index().max(after_purged)
    }
}

struct Shared {
    dir: PathBuf,
    core: RwLock<Core>,
    state: Mutex<StateFile>,
    queue: Mutex<Queue>,
    /// Signalled when work is queued or the flusher must stop.
    work: Condvar,
    /// Signalled when queued flushes complete.
    idle: Condvar,
    /// The first write or sync failure; set once, cleared only by reopening.
    failed: Mutex<Option<String>>,
    /// Held until the store is dropped: no other process or store opens the directory.
    _lock: Box<dyn Any + Send + Sync>,
}

impl Shared {
    fn check_writable(&self) -> Result<()> {
        match &*self.failed.lock() {
            Some(cause) => Err(Error::Failed { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Latches the store on `err` (the first failure is kept) and returns it.
    fn latch(&self, err: Error) -> Error {
        let mut failed = self.failed.lock();
        if failed.is_none() {
            *failed = Some(err.to_string());
        }
        err
    }

    /// Queues a completion for the next sync.
    fn submit(&self, done: Done, lifts_fence: bool) {
        let mut q = self.queue.lock();
        q.pending.push((done, lifts_fence));
        q.submitted += 1;
        self.work.notify_one();
    }

    /// Waits until every queued flush has completed; then whether the store is still writable.
    fn wait_idle(&self) -> Result<()> {
        let mut q = self.queue.lock();
        while q.completed < q.submitted {
            self.idle.wait(&mut q);
        }
        drop(q);
        self.check_writable()
    }

    /// The flusher thread: one sync per batch of whatever is queued.
    fn flusher(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                while q.pending.is_empty() && !q.stop {
                    self.work.wait(&mut q);
                }
                if q.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            let lifts_fence = batch.iter().any(|(_, lifts)| *lifts);
            let result = self.flush(lifts_fence);
            let n = batch.len() as u64;
            for (done, _) in batch {
                done(result.clone());
            }
            let mut q = self.queue.lock();
            q.completed += n;
            self.idle.notify_all();
        }
    }

    /// Makes everything appended so far durable (one `fdatasync`, none if a segment rotation
    /// already synced it), then lifts the fence if asked. The sync runs with no lock held.
    fn flush(&self, lift_fence: bool) -> Result<()> {
        self.check_writable()?;
        let job = {
            let core = self.core.read();
            if let Some(cause) = core.log.failed_cause() {
                return Err(self.latch(Error::Failed { cause }));
            }
            core.log.sync_job()
        };
        if let Some(job) = job {
            let outcome = job.run();
            let result = self.core.write().log.finish_sync(job, outcome);
            result.map_err(|e| self.latch(e))?;
        }
        if lift_fence {
            let mut file = self.state.lock();
            let mut state = file.state();
            if state.fence.take().is_some() {
                file.write(state, true).map_err(|e| self.latch(e))?;
            }
        }
        Ok(())
    }

    /// Writes the state file with `change` applied; synced unless `sync` is false.
    fn write_state(&self, sync: bool, change: impl FnOnce(&mut State)) -> Result<()> {
        let mut file = self.state.lock();
        let mut state = file.state();
        change(&mut state);
        file.write(state, sync).map_err(|e| self.latch(e))
    }

    /// The entries of the store in keel indexes `[lo, hi)`, clamped to what it holds.
    fn read<E: DeserializeOwned + RaftLogId<u64>>(&self, lo: u64, hi: u64) -> Result<Vec<E>> {
        let core = self.core.read();
        let (lo, hi) = (lo.max(core.first()), hi.min(core.last + 1));
        if lo >= hi {
            return Ok(Vec::new());
        }
        let log_dir = core.log.dir();
        let mut out = Vec::with_capacity((hi - lo) as usize);
        for e in core.log.entries(lo, hi, u64::MAX)? {
            out.push(decode_checked(&e.payload, log_dir, e.index, e.term)?);
        }
        Ok(out)
    }
}

/// Decodes the entry at keel index `index` and checks that its log id is where keel keeps it.
fn decode_checked<E: DeserializeOwned + RaftLogId<u64>>(
    payload: &[u8],
    log_dir: &Path,
    index: u64,
    term: u64,
) -> Result<E> {
    let e: E = entry::decode(payload, log_dir, index)?;
    let id = e.get_log_id();
    if keel_index(id.index) != index || id.leader_id.term != term {
        let mut c = crate::error::Corruption::new(
            log_dir,
            0,
            crate::error::CorruptionKind::Malformed(format!(
                "entry {index} (term {term}) holds openraft log id {id}, which belongs elsewhere"
            )),
        );
        c.affected_indexes = Some((index, index));
        return Err(c.into_error());
    }
    Ok(e)
}

fn log_id(raw: RawLogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(raw.term, raw.node_id), raw.index)
}

fn raw_log_id(id: &LogId<u64>) -> RawLogId {
    RawLogId { term: id.leader_id.term, node_id: id.leader_id.node_id, index: id.index }
}

/// keel's [`Log`] as openraft's log store. See the module documentation.
///
/// `C::NodeId` is `u64` (node ids are fixed-width fields of the state file), and openraft's
/// default leader id (term and node id; not its `single-term-leader` feature) is assumed.
pub struct KeelLogStore<C: RaftTypeConfig> {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    buf: Vec<u8>,
    _config: PhantomData<fn() -> C>,
}

/// A reader of a [`KeelLogStore`] (`RaftLogStorage::get_log_reader`), for replication tasks:
/// reads share the log with the store and with each other.
pub struct KeelLogReader<C: RaftTypeConfig> {
    shared: Arc<Shared>,
    _config: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Clone for KeelLogReader<C> {
    fn clone(&self) -> Self {
        KeelLogReader { shared: Arc::clone(&self.shared), _config: PhantomData }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for KeelLogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = self.shared.core.read();
        f.debug_struct("KeelLogStore")
            .field("dir", &self.shared.dir)
            .field("last_log_id", &core.last_log_id)
            .field("purged", &core.purged)
            .field("failed", &*self.shared.failed.lock())
            .finish()
    }
}

impl<C: RaftTypeConfig> fmt::Debug for KeelLogReader<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeelLogReader").field("dir", &self.shared.dir).finish()
    }
}

impl<C> KeelLogStore<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: Serialize + DeserializeOwned,
{
    /// Opens (creating if needed) the store in `dir` and recovers it: the log recovers
    /// ([`Log::open`] in `dir/log`, with `options`), the state file is read (or created), and a
    /// compaction that a crash interrupted after its purge was recorded is completed.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<KeelLogStore<C>> {
        let dir = dir.as_ref();
        let fs = Arc::clone(&options.fs);
        let lock = ops::lock_dir(fs.as_ref(), dir)?;
        let (mut log, _report) = Log::open(dir.join(LOG_DIR), options)?;
        let state_file = StateFile::open_or_create(fs.as_ref(), dir)?;
        let state = state_file.state();
        let purged = state.purged.map(log_id);
        let fence = state.fence.map(keel_index);
        if let Some(p) = purged {
            compact_through(&mut log, p, fence)?;
        }
        let last = match fence {
            Some(f) if effective(&log, f) => f - 1,
            _ => log.last_index(),
        };
        let mut core = Core { log, last, last_log_id: None, purged };
        core.last_log_id = last_log_id::<C::Entry>(&core)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            core: RwLock::new(core),
            state: Mutex::new(state_file),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            failed: Mutex::new(None),
            _lock: lock,
        });
        let for_thread = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("keel-openraft-flush".into())
            .spawn(move || for_thread.flusher())
            .map_err(|e| Error::io("spawn flusher thread", "<thread>", e))?;
        Ok(KeelLogStore { shared, flusher: Some(flusher), buf: Vec::new(), _config: PhantomData })
    }

    /// Whether the store refuses writes after a failure (see [`Error::Failed`]).
    pub fn is_failed(&self) -> bool {
        self.shared.failed.lock().is_some()
    }

    /// Writes `entries` and queues `done` for the flush that makes them durable. The entries
    /// are readable on return. The first must follow the store's last entry.
    fn append_entries(&mut self, mut entries: Vec<C::Entry>, done: Done) -> Result<()> {
        self.shared.check_writable()?;
        // Entries at or below the last purged one are purged at once (openraft's suite appends
        // such entries after its state machine moved past them; Raft never needs them again).
        if let Some(purged) = self.shared.core.read().purged {
            entries.retain(|e| e.get_log_id().index > purged.index);
        }
        let Some(new_last) = entries.last().map(|e| *e.get_log_id()) else {
            self.shared.submit(done, false);
            return Ok(());
        };
        // One buffer for all payloads, then one keel append (one write) for the whole call.
        self.buf.clear();
        let mut bounds = Vec::with_capacity(entries.len());
        for e in &entries {
            let start = self.buf.len();
            entry::encode(e, &mut self.buf)?;
            bounds.push((e.get_log_id(), start, self.buf.len()));
        }
        let new: Vec<NewEntry<'_>> = bounds
            .iter()
            .map(|(id, start, end)| NewEntry {
                index: keel_index(id.index),
                term: id.leader_id.term,
                payload: &self.buf[*start..*end],
            })
            .collect();
        let first = new[0].index;
        let fence = self.shared.state.lock().state().fence.map(keel_index);
        {
            let mut core = self.shared.core.write();
            let empty = core.last < core.first() && core.purged.is_none();
            if empty && first > core.last + 1 {
                // A store that never held an entry starts where the first append does (openraft's
                // suite asks for this; Raft itself starts at 0 or after a purge). The term of the
                // entry before is unknown and unused: keel's log records 0.
                core.log.reset(first, 0).map_err(|e| self.shared.latch(e))?;
            } else if first != core.last + 1 {
                return Err(Error::InvalidArgument(format!(
                    "append: openraft index {} does not follow the last log id {:?}",
                    first - 1,
                    core.last_log_id
                )));
            }
            // An append keel refuses before writing (a payload too large for a segment) changes
            // nothing and is only reported; any other failure latches.
            core.log.append(&new).map_err(|e| match e {
                Error::InvalidArgument(_) => e,
                e => self.shared.latch(e),
            })?;
            core.last = new.last().expect("non-empty").index;
            core.last_log_id = Some(new_last);
        }
        self.shared.submit(done, fence.is_some_and(|f| first <= f));
        Ok(())
    }

    /// Removes the entries from openraft index `index` on (see "Truncation").
    fn truncate_from(&mut self, index: u64) -> Result<()> {
        self.shared.wait_idle()?;
        let k = keel_index(index);
        let (first, last) = {
            let core = self.shared.core.read();
            (core.first(), core.last)
        };
        if k > last {
            return Ok(());
        }
        let k = k.max(first);
        self.shared.write_state(true, |s| s.fence = Some(k - 1))?;
        let mut core = self.shared.core.write();
        core.last = k - 1;
        core.last_log_id = last_log_id::<C::Entry>(&core)?;
        Ok(())
    }

    /// Removes the entries up to and including `id` (see "Purge").
    fn purge_through(&mut self, id: LogId<u64>) -> Result<()> {
        self.shared.wait_idle()?;
        if self.shared.core.read().purged.is_some_and(|p| p.index >= id.index) {
            return Ok(());
        }
        let fence = self.shared.state.lock().state().fence.map(keel_index);
        self.shared.write_state(true, |s| s.purged = Some(raw_log_id(&id)))?;
        let mut core = self.shared.core.write();
        core.purged = Some(id);
        compact_through(&mut core.log, id, fence).map_err(|e| self.shared.latch(e))?;
        if core.last < keel_index(id.index) {
            core.last = keel_index(id.index);
        }
        if core.last_log_id.is_none_or(|l| l.index <= id.index) {
            core.last_log_id = Some(id);
        }
        Ok(())
    }
}

/// Whether a fence at keel index `fence` hides entries of `log`: it is within the log. A fence
/// below the first index is moot for good (the first index never decreases).
fn effective(log: &Log, fence: u64) -> bool {
    (log.first_index()..=log.last_index()).contains(&fence)
}

/// Drops the log's entries through `purged` (keel index `purged.index + 1`): a compaction, or a
/// reset when the log does not reach that far (a purge past the last entry, after a snapshot)
/// or when the purge reaches entries an effective fence hides, which a compaction would keep
/// and so expose once the fence is moot. Idempotent: an open repeats it after a crash.
fn compact_through(log: &mut Log, purged: LogId<u64>, fence: Option<u64>) -> Result<()> {
    let next = keel_index(purged.index) + 1;
    let reaches_hidden = fence.is_some_and(|f| effective(log, f) && next > f);
    if next <= log.first_index() {
        Ok(())
    } else if next <= log.last_index() + 1 && !reaches_hidden {
        log.compact(next)
    } else {
        log.reset(next, purged.leader_id.term)
    }
}

/// The log id of the store's last entry, or the last purged one if it holds none.
fn last_log_id<E: DeserializeOwned + RaftLogId<u64>>(core: &Core) -> Result<Option<LogId<u64>>> {
    if core.last < core.first() {
        return Ok(core.purged);
    }
    let e = core.log.entry(core.last)?;
    let entry: E = decode_checked(&e.payload, core.log.dir(), e.index, e.term)?;
    Ok(Some(*entry.get_log_id()))
}

impl<C: RaftTypeConfig> Drop for KeelLogStore<C> {
    fn drop(&mut self) {
        // The flusher completes what is queued, then stops.
        self.shared.queue.lock().stop = true;
        self.shared.work.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

/// openraft's error for a keel error, with what was being done.
fn storage_error(e: Error, make: fn(AnyError) -> StorageIOError<u64>) -> StorageError<u64> {
    StorageError::IO { source: make(AnyError::new(&e)) }
}

/// The openraft range `range` as keel indexes `[lo, hi)`.
fn keel_range(range: &impl RangeBounds<u64>) -> (u64, u64) {
    // Saturating: a range reaching u64::MAX (beyond any index keel accepts) reads as far as
    // the log goes, never a panic.
    let lo = match range.start_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i.saturating_add(2),
        Bound::Unbounded => 1,
    };
    let hi = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(2),
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => u64::MAX,
    };
    (lo, hi)
}

impl<C> RaftLogReader<C> for KeelLogStore<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<C::Entry>, StorageError<u64>> {
        let (lo, hi) = keel_range(&range);
        self.shared.read(lo, hi).map_err(|e| storage_error(e, StorageIOError::read_logs))
    }
}

impl<C> RaftLogReader<C> for KeelLogReader<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<C::Entry>, StorageError<u64>> {
        let (lo, hi) = keel_range(&range);
        self.shared.read(lo, hi).map_err(|e| storage_error(e, StorageIOError::read_logs))
    }
}

impl<C> RaftLogStorage<C> for KeelLogStore<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = KeelLogReader<C>;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<C>, StorageError<u64>> {
        let core = self.shared.core.read();
        Ok(LogState { last_purged_log_id: core.purged, last_log_id: core.last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        KeelLogReader { shared: Arc::clone(&self.shared), _config: PhantomData }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> std::result::Result<(), StorageError<u64>> {
        let raw = RawVote { term: vote.leader_id.term, node_id: vote.leader_id.node_id, committed: vote.committed };
        self.shared
            .wait_idle()
            .and_then(|()| self.shared.write_state(true, |s| s.vote = Some(raw)))
            .map_err(|e| storage_error(e, StorageIOError::write_vote))
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote<u64>>, StorageError<u64>> {
        let vote = self.shared.state.lock().state().vote;
        Ok(vote.map(|v| {
            let mut vote = Vote::new(v.term, v.node_id);
            vote.committed = v.committed;
            vote
        }))
    }

    /// Written without an fdatasync, as keel's HardState writes its commit index: a process
    /// kill keeps it, a power loss may return an older one (openraft then re-learns it), never a
    /// newer one. Queued appends are made durable first, so it never covers entries that are not.
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> std::result::Result<(), StorageError<u64>> {
        self.shared
            .wait_idle()
            .and_then(|()| self.shared.write_state(false, |s| s.committed = committed.as_ref().map(raw_log_id)))
            .map_err(|e| storage_error(e, StorageIOError::write))
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.shared.state.lock().state().committed.map(log_id))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> std::result::Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let done: Done = Box::new(move |r: Result<()>| callback.log_io_completed(r.map_err(std::io::Error::other)));
        self.append_entries(entries.into_iter().collect(), done)
            .map_err(|e| storage_error(e, StorageIOError::write_logs))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> std::result::Result<(), StorageError<u64>> {
        self.truncate_from(log_id.index).map_err(|e| storage_error(e, StorageIOError::write_logs))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> std::result::Result<(), StorageError<u64>> {
        self.purge_through(log_id).map_err(|e| storage_error(e, StorageIOError::write_logs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::openraft::{Entry, EntryPayload};
    use std::io::Cursor;
    use std::sync::mpsc;

    ::openraft::declare_raft_types!(Config: D = String, R = String);

    fn entry(index: u64) -> Entry<Config> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(index.to_string()),
        }
    }

    #[test]
    fn ranges_map_to_keel_indexes_and_saturate() {
        assert_eq!(keel_range(&(0..3)), (1, 4));
        assert_eq!(keel_range(&(2..=5)), (3, 7));
        assert_eq!(keel_range(&(..)), (1, u64::MAX));
        assert_eq!(keel_range(&(u64::MAX..)), (u64::MAX, u64::MAX));
        assert_eq!(keel_range(&(0..=u64::MAX)), (1, u64::MAX));
        assert_eq!(keel_range(&(u64::MAX - 1..u64::MAX)), (u64::MAX, u64::MAX));
    }

    /// Appends queued while a sync runs share the next one, and their callbacks run in order.
    /// The first callback holds the flusher until the other twenty are queued, so at most two
    /// syncs cover all twenty-one appends.
    #[test]
    fn appends_queued_during_a_sync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeelLogStore::<Config>::open(dir.path(), LogOptions::default()).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = mpsc::channel::<()>();
        let o = Arc::clone(&order);
        let hold = move |r: Result<()>| {
            r.unwrap();
            released.recv().unwrap();
            o.lock().push(0);
        };
        store.append_entries(vec![entry(0)], Box::new(hold)).unwrap();
        for i in 1..=20 {
            let o = Arc::clone(&order);
            store
                .append_entries(vec![entry(i)], Box::new(move |r: Result<()>| o.lock().push(r.map(|()| i).unwrap())))
                .unwrap();
        }
        release.send(()).unwrap();
        store.shared.wait_idle().unwrap();
        assert_eq!(*order.lock(), (0..=20).collect::<Vec<u64>>());
        let syncs = store.shared.core.read().log.stats().syncs;
        assert!((1..=2).contains(&syncs), "{syncs} syncs for 21 appends");
    }

    /// An append that does not follow the last entry is refused and changes nothing.
    #[test]
    fn an_append_with_a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeelLogStore::<Config>::open(dir.path(), LogOptions::default()).unwrap();
        store.append_entries(vec![entry(0)], Box::new(|r: Result<()>| r.unwrap())).unwrap();
        let err = store.append_entries(vec![entry(2)], Box::new(|_| panic!("never queued"))).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(!store.is_failed());
        assert_eq!(store.shared.read::<Entry<Config>>(1, 10).unwrap(), vec![entry(0)]);
    }
}
