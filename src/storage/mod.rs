//! Raft persistence: the [`Storage`] trait Raft reads through, the [`StorageMut`] trait the node
//! writes through after a `Ready`, and two implementations that pass one conformance suite:
//! [`DiskStorage`] (log segments, a HardState file and snapshot files in one directory) and
//! [`MemStorage`] (for tests and as the model in property tests).
//!
//! Semantics follow etcd-raft and raft-rs:
//! - `term(i)` answers for `i` in `[first_index - 1, last_index]`; the snapshot (or the last
//!   compaction) answers for `first_index - 1`; below that [`Error::Compacted`], above
//!   [`Error::Unavailable`].
//! - After a snapshot at `s` with no later entries, `first_index = s + 1`, `last_index = s`.
//! - `entries(lo, hi, max_bytes)` returns `[lo, hi)`, stopping before the data exceeds
//!   `max_bytes` in total, but always at least one entry.
//!
//! [`Error::Compacted`]: crate::Error::Compacted
//! [`Error::Unavailable`]: crate::Error::Unavailable

pub(crate) mod disk;
pub(crate) mod hard_state;
mod mem;
mod pin;
mod reserve;
pub(crate) mod snapshot;
pub(crate) mod types;

pub use disk::{DiskStorage, RESERVE_BYTES_DEFAULT, StorageOptions, StorageReport};
pub use mem::MemStorage;
pub use snapshot::SnapshotWriter;
pub use types::{ConfState, Entry, EntryType, HardState, RaftState, Snapshot, SnapshotId, SnapshotMetadata};

use crate::error::Result;
use std::io::{Read, Write};

/// What Raft reads.
pub trait Storage {
    /// The persisted HardState and ConfState.
    fn initial_state(&self) -> Result<RaftState>;
    /// Entries in `[lo, hi)`, at most `max_bytes` of data but at least one entry.
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>>;
    /// The term of entry `index`, for `index` in `[first_index - 1, last_index]`.
    fn term(&self, index: u64) -> Result<u64>;
    /// The first index still available in the log (`snapshot index + 1` after a snapshot).
    fn first_index(&self) -> Result<u64>;
    /// The last index in the log (the snapshot index if no entries follow it).
    fn last_index(&self) -> Result<u64>;
    /// The newest snapshot. [`crate::Error::SnapshotTemporarilyUnavailable`] while one is being
    /// made, when there is none, or when the newest is older than `request_index`.
    fn snapshot(&self, request_index: u64) -> Result<Snapshot>;
}

/// What the node writes after a `Ready`. Each call is crash-atomic: after a crash at any point
/// the storage recovers to the state before the call or after it, never a mix.
pub trait StorageMut: Storage {
    /// Streams the data of a snapshot being made; see [`StorageMut::begin_snapshot`].
    type SnapshotWriter: Write;

    /// Appends entries (contiguous), truncating a conflicting suffix first; durable on return.
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    /// Persists the HardState (keeping the ConfState). A term or commit below the current one,
    /// a commit raised above the last index, or a changed vote within the same term, is refused
    /// with `InvalidArgument`.
    ///
    /// A change of the term or vote is durable on return. A change of the commit index alone is
    /// written but not synced (etcd's MustSync rule, `Ready::must_sync`): what an application may
    /// assume afterwards is
    /// - after a clean close (`DiskStorage::close`, or drop): the newest commit index;
    /// - after a process kill (SIGKILL, abort, the OOM killer; the machine stays up): the newest
    ///   commit index as well, because the page cache keeps the write and the next open syncs it;
    /// - after a power loss or kernel crash: at least the commit index of the last synced change
    ///   (a term, vote, ConfState or snapshot write), at most the newest; never higher.
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()>;
    /// Persists the ConfState (keeping the HardState). For a Raft node this is the bootstrap
    /// configuration, set once before the first start: the node tracks membership changes
    /// through the log and snapshots, and rebuilds the configuration as of `Config::applied` at
    /// each start from the newest snapshot's ConfState (or this one, while the log still starts
    /// at index 1) and the changes in the log after it. Writing a later configuration here
    /// would have those changes applied twice.
    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()>;
    /// Installs a snapshot received from a leader: entries are dropped and the log restarts
    /// after `metadata.index`, whatever the local log held. The HardState's commit becomes at
    /// least the snapshot's index and its term at least the snapshot's term.
    fn apply_snapshot(&mut self, metadata: &SnapshotMetadata, data: &mut dyn Read) -> Result<()>;
    /// Starts a snapshot of the state machine at `index` (which must be in the log): write the
    /// data to the returned writer, then call [`StorageMut::finish_snapshot`]. Until then
    /// `snapshot()` answers `SnapshotTemporarilyUnavailable`.
    fn begin_snapshot(&self, index: u64, conf_state: &ConfState) -> Result<Self::SnapshotWriter>;
    /// Makes the snapshot written through `writer` durable and the newest one.
    fn finish_snapshot(&mut self, writer: Self::SnapshotWriter) -> Result<()>;
    /// Creates a snapshot at `index` from a reader of its data (begin, copy, finish).
    fn create_snapshot(&mut self, index: u64, conf_state: &ConfState, data: &mut dyn Read) -> Result<()> {
        let mut w = self.begin_snapshot(index, conf_state)?;
        std::io::copy(data, &mut w).map_err(|e| crate::Error::io("write snapshot", "<snapshot data>", e))?;
        self.finish_snapshot(w)
    }
    /// Starts receiving the data of a snapshot a leader is sending (the
    /// [`SnapshotReceiver`](crate::raft::SnapshotReceiver) writes the chunks into the returned
    /// sink), without changing anything the storage holds: the data is staged apart until
    /// [`SnapshotSink::finish`] hands out a complete [`Snapshot`], which a `Ready` later installs
    /// through [`StorageMut::apply_snapshot`]. Dropping the sink, or the finished snapshot,
    /// removes what was staged. `DiskStorage` stages in a snapshot writer's temporary file in
    /// its directory (removed at open if a crash leaves it); `MemStorage` in memory.
    fn receive_snapshot(&self, metadata: &SnapshotMetadata) -> Result<Box<dyn SnapshotSink>>;
    /// A stager that does what `receive_snapshot` does, usable from other threads while the
    /// node owns the storage (a transport receiving snapshot chunks).
    fn snapshot_stager(&self) -> std::sync::Arc<dyn SnapshotStager>;
    /// Drops entries below `index` (at most `last_index + 1`); at or below `first_index` it does
    /// nothing.
    ///
    /// While a snapshot handle from [`Storage::snapshot`] is alive (any clone of it: a transfer
    /// to a follower in flight), the entries after its index are kept: `index` is lowered to one
    /// past the lowest such snapshot's index, and the rest of the request is dropped (call again
    /// once the transfer is over). `first_index` tells what was kept.
    fn compact(&mut self, index: u64) -> Result<()>;
}

/// Stages received snapshots apart from the storage object, so that a transport's threads can
/// receive one while the Raft node owns the storage ([`StorageMut::snapshot_stager`]). Staging
/// is no state of the storage: what a sink staged is removed when it is dropped unfinished.
pub trait SnapshotStager: Send + Sync {
    /// A sink for the data of the snapshot `metadata` describes, as
    /// [`StorageMut::receive_snapshot`] gives.
    fn stage(&self, metadata: &SnapshotMetadata) -> Result<Box<dyn SnapshotSink>>;
}

/// Where a snapshot received from a leader is staged; see [`StorageMut::receive_snapshot`].
///
/// Calling order: 1. write the data (in order, all of it); 2. [`finish`](SnapshotSink::finish).
/// Dropped before `finish`, it removes what it staged.
pub trait SnapshotSink: Write + Send {
    /// Ends staging: the data written, as a snapshot that reads it back (checking it against the
    /// checksum computed while it was written). Nothing is installed yet.
    fn finish(self: Box<Self>) -> Result<Snapshot>;
}

/// Checks an append against the log's bounds, the same way for every implementation (and as
/// the log itself does), and that it replaces no committed entry: Raft never does (etcd-raft
/// panics on it), and a log shorter than the commit index would read as acknowledged entries
/// lost at the next open.
pub(crate) fn check_append(entries: &[Entry], first_index: u64, last_index: u64, commit: u64) -> Result<()> {
    check_append_by(entries, |e| (e.index, e.term), first_index, last_index, commit)
}

/// [`check_append`] for entries of any type, given their (index, term).
pub(crate) fn check_append_by<T>(
    entries: &[T],
    index_term: impl Fn(&T) -> (u64, u64),
    first_index: u64,
    last_index: u64,
    commit: u64,
) -> Result<()> {
    crate::wal::check_append_indexes(entries, &index_term, first_index, last_index)?;
    match entries.first().map(&index_term) {
        Some((first, _)) if first <= last_index && first <= commit => Err(crate::Error::InvalidArgument(format!(
            "append: index {first} would replace committed entries (the commit index is {commit})"
        ))),
        _ => Ok(()),
    }
}

/// Checks the bounds of `entries(lo, hi, _)`.
pub(crate) fn check_range(lo: u64, hi: u64, first_index: u64, last_index: u64) -> Result<()> {
    use crate::Error;
    if lo < first_index {
        return Err(Error::Compacted { index: lo, first_index });
    }
    if hi > last_index + 1 {
        return Err(Error::Unavailable { index: hi - 1, last_index });
    }
    if lo > hi {
        return Err(Error::InvalidArgument(format!("entries({lo}, {hi}): lo is above hi")));
    }
    Ok(())
}

/// Collects entries from `read(index)` for `lo..hi` until their data exceeds `max_bytes`,
/// always keeping the first.
pub(crate) fn page(lo: u64, hi: u64, max_bytes: u64, mut read: impl FnMut(u64) -> Result<Entry>) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for index in lo..hi {
        let e = read(index)?;
        total = total.saturating_add(e.size_bytes());
        if !out.is_empty() && total > max_bytes {
            break;
        }
        out.push(e);
    }
    Ok(out)
}

/// Checks `compact(index)` bounds: `Ok(false)` when there is nothing to do.
pub(crate) fn check_compact(index: u64, first_index: u64, last_index: u64) -> Result<bool> {
    if index <= first_index {
        return Ok(false);
    }
    if index > last_index + 1 {
        return Err(crate::Error::Unavailable { index, last_index });
    }
    Ok(true)
}

/// Checks that a snapshot at `index` may be made: in the log, newer than `newest_snapshot`.
pub(crate) fn check_begin_snapshot(index: u64, newest_snapshot: u64, last_index: u64) -> Result<()> {
    if index <= newest_snapshot {
        return Err(crate::Error::SnapshotOutOfDate { index, covered: newest_snapshot });
    }
    if index > last_index {
        return Err(crate::Error::Unavailable { index, last_index });
    }
    Ok(())
}

/// Checks that a snapshot received at `index` is newer than what the log covers and than the
/// newest snapshot held.
///
/// A snapshot below the commit index is out of date too: installing it would drop committed
/// entries after it (Raft never does: a follower ignores such a snapshot).
pub(crate) fn check_apply_snapshot(
    index: u64,
    term: u64,
    first_index: u64,
    newest_snapshot: u64,
    commit: u64,
) -> Result<()> {
    if index >= crate::limits::INDEX_MAX || term > crate::limits::INDEX_MAX {
        return Err(crate::Error::InvalidArgument(format!("snapshot index {index} or term {term} is out of range")));
    }
    let covered = (first_index - 1).max(newest_snapshot).max(commit);
    if index < first_index || index <= newest_snapshot || index < commit {
        return Err(crate::Error::SnapshotOutOfDate { index, covered });
    }
    Ok(())
}

/// Checks that a HardState update keeps Raft's rules: the term and the commit index never go
/// backwards, and a vote cast in a term is never changed within that term.
pub(crate) fn check_hard_state(current: &HardState, new: &HardState, last_index: u64) -> Result<()> {
    let bad = |what: String| Err(crate::Error::InvalidArgument(format!("set_hard_state: {what}")));
    if new.commit > current.commit && new.commit > last_index {
        // Raft commits only what the log holds; a commit above it would read as lost entries at
        // the next open (refused there as corruption).
        return bad(format!("commit {} is above the last index {last_index}", new.commit));
    }
    if new.term < current.term {
        return bad(format!("term {} is below the persisted term {}", new.term, current.term));
    }
    if new.commit < current.commit {
        return bad(format!("commit {} is below the persisted commit {}", new.commit, current.commit));
    }
    if new.term == current.term && current.vote != 0 && new.vote != current.vote {
        return bad(format!("vote in term {} changes from {} to {}", new.term, current.vote, new.vote));
    }
    Ok(())
}

/// The HardState after installing a snapshot: commit and term never go backwards, and a vote
/// belongs to its term, so raising the term clears it (carried into a later term it would block
/// the node's real vote there, or look like one it never cast).
pub(crate) fn hard_state_after_snapshot(hs: HardState, metadata: &SnapshotMetadata) -> HardState {
    let vote = if metadata.term > hs.term { 0 } else { hs.vote };
    HardState { term: hs.term.max(metadata.term), vote, commit: hs.commit.max(metadata.index) }
}
