//! Group commit: a [`SharedLog`] lets many appends, from one thread pipelining or from many
//! threads, share one `fdatasync`.
//!
//! One writer thread owns all mutation of the log. Callers queue requests and get a [`Ticket`];
//! the writer takes everything queued (up to `batch_bytes_max`), writes it under the log's write
//! lock, releases the lock, runs one `fdatasync` with no lock held (readers and new submissions
//! proceed), then completes the tickets in queue order, which is log order. While that sync is
//! in flight the next batch forms by itself: there is no artificial delay unless `max_wait` asks
//! for one. Rejected: a leader/follower queue in the callers' threads (as raft-engine does),
//! because a Raft node wants to hand over a `Ready` and keep working, which needs a completion
//! that outlives the call anyway.
//!
//! Invariants:
//! - tickets complete in submission order, each exactly once, refused requests included
//!   (dropping an uncompleted request, even while the writer unwinds from a panic, completes it
//!   with an error);
//! - once the log latches, every queued and later request fails with the original cause;
//! - after the writer stops, submissions fail at once; nothing waits forever.

use super::{Log, NewEntry};
use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When the writer syncs, and what a completed ticket means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// One `fdatasync` per batch; a ticket completes once its entries are durable.
    #[default]
    EveryBatch,
    /// At most one `fdatasync` per interval; tickets complete once a sync covers them (so they
    /// still mean durable), trading latency for fewer syncs under light load.
    Interval(Duration),
    /// Never sync: tickets complete once written. Not durable; for tests and benchmarks only.
    Never,
}

/// Knobs of a [`SharedLog`].
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitOptions {
    /// A batch stops growing at this many payload bytes (at least one request is always taken).
    pub batch_bytes_max: u64,
    /// When the writer syncs, and so what a completed ticket promises (durable by default).
    pub sync: SyncPolicy,
    /// If set, a batch smaller than `batch_bytes_max` waits up to this long for more requests
    /// before it is written. No delay by default: batches form while the disk is busy.
    pub max_wait: Option<Duration>,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions { batch_bytes_max: 4 << 20, sync: SyncPolicy::EveryBatch, max_wait: None }
    }
}

/// What [`NewEntry`](super::NewEntry) is to [`Log::append`](super::Log::append), for
/// [`SharedLog`]: the payload is owned, since the request outlives the caller's borrow until the
/// writer has written it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNewEntry {
    /// The entry's Raft index. One append's entries are contiguous; a first index at or below
    /// the last index truncates the suffix from there.
    pub index: u64,
    /// The term of the leader that created the entry.
    pub term: u64,
    /// The entry's bytes, stored as one record's payload; what `batch_bytes_max` counts.
    pub payload: Vec<u8>,
}

/// The completion of one request. [`Ticket::wait`] blocks until it is done.
#[derive(Debug)]
pub struct Ticket {
    done: Arc<Completion>,
}

#[derive(Debug, Default)]
struct Completion {
    result: Mutex<Option<Result<()>>>,
    cv: Condvar,
}

impl Completion {
    fn complete(&self, r: Result<()>) {
        let mut slot = self.result.lock();
        if slot.is_none() {
            *slot = Some(r);
            self.cv.notify_all();
        }
    }
}

impl Ticket {
    /// Blocks until the request is done (durable, under the default policy) or failed.
    pub fn wait(self) -> Result<()> {
        let mut slot = self.done.result.lock();
        while slot.is_none() {
            self.done.cv.wait(&mut slot);
        }
        slot.take().expect("checked")
    }

    /// Waits up to `timeout`; `None` if the request is still pending.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<()>> {
        let mut slot = self.done.result.lock();
        if slot.is_none() {
            let _ = self.done.cv.wait_for(&mut slot, timeout);
        }
        slot.clone()
    }

    /// Whether the request is done; [`Ticket::wait`] then returns at once.
    pub fn is_done(&self) -> bool {
        self.done.result.lock().is_some()
    }
}

enum Work {
    Append(Vec<OwnedNewEntry>),
    Compact(u64),
    Sync,
}

struct Request {
    work: Work,
    bytes: u64,
    done: Arc<Completion>,
}

impl Drop for Request {
    fn drop(&mut self) {
        // Only reached uncompleted if the writer stopped abnormally.
        self.done.complete(Err(Error::Failed { cause: "the log's writer thread stopped".into() }));
    }
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    closed: bool,
}

/// Counters of a [`SharedLog`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Requests written (appends, compactions, syncs).
    pub requests: u64,
    /// Batches written.
    pub batches: u64,
    /// fdatasyncs run by the writer.
    pub syncs: u64,
}

struct Shared {
    stats: Mutex<GroupCommitStats>,
    log: RwLock<Log>,
    queue: Mutex<Queue>,
    work_ready: Condvar,
    options: GroupCommitOptions,
}

/// A [`Log`] shared between threads, with group commit. Reads go straight to the log under a
/// read lock; appends, compaction and syncs are queued to the writer thread.
pub struct SharedLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog").field("options", &self.shared.options).finish()
    }
}

impl SharedLog {
    /// Takes ownership of `log` and starts its writer thread. Appends from any number of
    /// threads queue up, and each batch the writer takes shares one `fdatasync`.
    ///
    /// ```
    /// use keel::wal::{GroupCommitOptions, Log, LogOptions, OwnedNewEntry, SharedLog};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (log, _) = Log::open(dir.path(), LogOptions::default())?;
    /// let shared = SharedLog::new(log, GroupCommitOptions::default())?;
    /// // Queue two appends without waiting, then wait for both: usually one fdatasync.
    /// let first = shared.append_async(vec![OwnedNewEntry { index: 1, term: 1, payload: b"a".to_vec() }]);
    /// let second = shared.append_async(vec![OwnedNewEntry { index: 2, term: 1, payload: b"b".to_vec() }]);
    /// first.wait()?;
    /// second.wait()?;
    /// assert_eq!(shared.read().last_index(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(log: Log, options: GroupCommitOptions) -> Result<SharedLog> {
        let shared = Arc::new(Shared {
            stats: Mutex::new(GroupCommitStats::default()),
            log: RwLock::new(log),
            queue: Mutex::new(Queue::default()),
            work_ready: Condvar::new(),
            options,
        });
        let for_writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("keel-writer".into())
            .spawn(move || writer_loop(&for_writer))
            .map_err(|e| Error::io("spawn writer thread", "<keel-writer>", e))?;
        Ok(SharedLog { shared, writer: Some(writer) })
    }

    fn submit(&self, work: Work, bytes: u64) -> Ticket {
        let done = Arc::new(Completion::default());
        let request = Request { work, bytes, done: Arc::clone(&done) };
        let mut q = self.shared.queue.lock();
        if q.closed {
            drop(q);
            drop(request); // completes it with an error
        } else {
            q.requests.push_back(request);
            self.shared.work_ready.notify_one();
        }
        Ticket { done }
    }

    /// Queues an append (contiguous entries; a first index at or below the last truncates the
    /// conflicting suffix first). The ticket completes once the entries are durable.
    pub fn append_async(&self, entries: Vec<OwnedNewEntry>) -> Ticket {
        let bytes = entries.iter().map(|e| e.payload.len() as u64).sum();
        self.submit(Work::Append(entries), bytes)
    }

    /// Appends and waits until the entries are durable.
    pub fn append(&self, entries: Vec<OwnedNewEntry>) -> Result<()> {
        self.append_async(entries).wait()
    }

    /// Queues a compaction (after everything queued before it).
    pub fn compact_async(&self, index: u64) -> Ticket {
        self.submit(Work::Compact(index), 0)
    }

    /// Waits until everything queued before this call is durable.
    pub fn sync(&self) -> Result<()> {
        self.submit(Work::Sync, 0).wait()
    }

    /// Counters since the log was shared: requests per fdatasync shows how well batches form.
    pub fn stats(&self) -> GroupCommitStats {
        *self.shared.stats.lock()
    }

    /// Read access to the log (entries, terms, indexes). Holding it delays the writer's next
    /// write, never its sync.
    pub fn read(&self) -> RwLockReadGuard<'_, Log> {
        self.shared.log.read()
    }

    fn stop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.work_ready.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Closes the queue when the writer exits, even by a panic, so no submission waits forever.
struct CloseOnExit<'a>(&'a Shared);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        q.closed = true;
        // Fail whatever is still queued (their Drop completes them).
        q.requests.clear();
    }
}

fn writer_loop(shared: &Shared) {
    let _close = CloseOnExit(shared);
    let mut last_sync = Instant::now();
    // Requests written (or refused) and not yet completed, in queue order; a refused one carries
    // its error and completes in its turn, so tickets always complete in submission order.
    let mut unsynced: Vec<(Request, Option<Error>)> = Vec::new();
    loop {
        let batch = match take_batch(shared, &unsynced) {
            Some(b) => b,
            None => break,
        };
        // 1. Write everything in the batch, in order, under the write lock.
        {
            let mut stats = shared.stats.lock();
            stats.requests += batch.len() as u64;
            stats.batches += u64::from(!batch.is_empty());
        }
        {
            let mut log = shared.log.write();
            // Consecutive appends go to the log together: one pwrite for the run.
            let mut run: Vec<Request> = Vec::new();
            for request in batch {
                if matches!(request.work, Work::Append(_)) {
                    run.push(request);
                    continue;
                }
                append_run(&mut log, &mut run, &mut unsynced);
                let result = match &request.work {
                    Work::Compact(index) => log.compact(*index),
                    Work::Sync | Work::Append(_) => Ok(()),
                };
                unsynced.push((request, result.err()));
            }
            append_run(&mut log, &mut run, &mut unsynced);
        }
        // 2. Sync, with no lock held, and complete in order.
        let due = match shared.options.sync {
            SyncPolicy::EveryBatch | SyncPolicy::Never => true,
            SyncPolicy::Interval(every) => last_sync.elapsed() >= every || shared.queue.lock().closed,
        };
        if !due || unsynced.is_empty() {
            continue;
        }
        last_sync = Instant::now();
        complete(shared, &mut unsynced);
    }
    // Closed: anything written but not yet synced gets its final sync.
    complete(shared, &mut unsynced);
}

/// Writes a run of queued appends with one `Log::append_many` and records each outcome.
fn append_run(log: &mut Log, run: &mut Vec<Request>, pending: &mut Vec<(Request, Option<Error>)>) {
    if run.is_empty() {
        return;
    }
    let owned: Vec<Vec<NewEntry<'_>>> = run
        .iter()
        .map(|r| match &r.work {
            Work::Append(entries) => {
                entries.iter().map(|e| NewEntry { index: e.index, term: e.term, payload: &e.payload }).collect()
            }
            _ => unreachable!("a run holds appends only"),
        })
        .collect();
    let requests: Vec<&[NewEntry<'_>]> = owned.iter().map(Vec::as_slice).collect();
    let results = log.append_many(&requests);
    drop(requests);
    drop(owned);
    pending.extend(run.drain(..).zip(results).map(|(request, result)| (request, result.err())));
}

/// Syncs (unless nothing succeeded) and completes `pending` in order.
fn complete(shared: &Shared, pending: &mut Vec<(Request, Option<Error>)>) {
    if pending.is_empty() {
        return;
    }
    let any_written = pending.iter().any(|(_, refused)| refused.is_none());
    let outcome = if shared.options.sync == SyncPolicy::Never || !any_written { Ok(()) } else { sync(shared) };
    for (request, refused) in pending.drain(..) {
        request.done.complete(match refused {
            Some(e) => Err(e),
            None => outcome.clone(),
        });
    }
}

/// Runs one fdatasync covering everything written so far, without holding the log's lock.
fn sync(shared: &Shared) -> Result<()> {
    let job = {
        let log = shared.log.read();
        if let Some(cause) = log.failed_cause() {
            return Err(Error::Failed { cause });
        }
        log.sync_job()
    };
    let Some(job) = job else { return Ok(()) };
    shared.stats.lock().syncs += 1;
    let result = job.run();
    shared.log.write().finish_sync(job, result)
}

/// Waits for work and takes a batch; `None` when closed and drained.
fn take_batch(shared: &Shared, unsynced: &[(Request, Option<Error>)]) -> Option<Vec<Request>> {
    let mut q = shared.queue.lock();
    loop {
        if !q.requests.is_empty() {
            break;
        }
        if q.closed {
            return None;
        }
        match shared.options.sync {
            // Written requests wait for their interval sync: wake up in time for it.
            SyncPolicy::Interval(every) if !unsynced.is_empty() => {
                if shared.work_ready.wait_for(&mut q, every).timed_out() {
                    return Some(Vec::new());
                }
            }
            _ => shared.work_ready.wait(&mut q),
        }
    }
    if let Some(wait) = shared.options.max_wait {
        let deadline = Instant::now() + wait;
        while q.requests.iter().map(|r| r.bytes).sum::<u64>() < shared.options.batch_bytes_max && !q.closed {
            if shared.work_ready.wait_until(&mut q, deadline).timed_out() {
                break;
            }
        }
    }
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(r) = q.requests.front() {
        if !batch.is_empty() && bytes + r.bytes > shared.options.batch_bytes_max {
            break;
        }
        bytes += r.bytes;
        batch.push(q.requests.pop_front().expect("checked"));
    }
    Some(batch)
}
