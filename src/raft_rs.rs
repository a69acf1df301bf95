//! keel under [raft-rs](https://github.com/tikv/raft-rs) (the `raft` crate, 0.7): its
//! [`raft::Storage`] trait for [`DiskStorage`] and [`MemStorage`], and the writes a raft-rs
//! application makes after each `Ready`, in their one safe order. Behind the `raft-rs` feature.
//!
//! Calling order, for each `Ready` a `RawNode<DiskStorage>` hands out (see
//! `examples/raft_rs_node.rs` for a whole node):
//! 1. Send `ready.messages()` (a leader's appends go out before its own write), then
//!    [`persist_ready`]`(node.mut_store(), &ready)`: the snapshot, then the entries, then the
//!    HardState, durable on return; then send `ready.persisted_messages()` and apply
//!    `ready.committed_entries()`.
//! 2. After `node.advance(ready)`: [`persist_commit`]`(node.mut_store(), commit)` with the
//!    `LightReady`'s `commit_index()`, if any; then its messages and committed entries.
//! 3. After applying a membership change: `set_conf_state` with the `ConfState` raft-rs returns
//!    from `apply_conf_change` (raft-rs restores membership from the stored ConfState, not from
//!    the log, unlike keel's own Raft).
//! 4. At a restart with a durable state machine: [`restore_commit`]`(&mut storage, applied)`
//!    before passing `applied` as `Config::applied`.
//!
//! What raft-rs code can rely on, and where keel differs from raft-rs's `MemStorage` (each
//! difference is checked by `tests/raft_rs.rs`):
//! - `entries(lo, hi, max_size)` limits by raft-rs's own measure, each entry's encoded protobuf
//!   size (`raft::util::limit_size`), so a caller never gets more than it asked for.
//! - An entry's `context` round-trips (keel stores it beside the data; `segments/FORMAT.md`).
//!   `sync_log`, a field raft-rs no longer reads, is not stored.
//! - Entries read from a `DiskStorage` point into the memory-mapped segment (no copy); appended
//!   entries are copied once, from raft-rs's buffers straight into the log's write buffer.
//! - `term(first_index - 1)` answers after any compaction, as the trait's documentation asks;
//!   raft-rs's `MemStorage` answers it only at its snapshot's index.
//! - `snapshot(request_index, _)` answers `SnapshotTemporarilyUnavailable` while the newest
//!   snapshot is older than `request_index` (raft-rs asks again later); raft-rs's `MemStorage`
//!   instead relabels its snapshot with the requested index. Snapshot data crosses this API whole
//!   in memory, as raft-rs's `Snapshot` message holds it; keel's own API streams it.
//! - An append that would overwrite compacted or committed entries returns an error (raft-rs's
//!   `MemStorage` panics).
//!
//! [`DiskStorage`]: crate::storage::DiskStorage
//! [`MemStorage`]: crate::storage::MemStorage

use crate::error::Error;
use crate::payload::Payload;
use crate::storage::disk::EntryRef;
use crate::storage::{
    ConfState, DiskStorage, Entry, EntryType, HardState, MemStorage, SnapshotMetadata, Storage, StorageMut,
};
use raft::eraftpb;
use raft::{GetEntriesContext, StorageError};

/// A storage raft-rs can run on: raft-rs's reads ([`raft::Storage`]) and keel's writes
/// ([`StorageMut`]), plus the append of raft-rs's own entries that [`persist_ready`] uses.
pub trait RaftRsStorage: raft::Storage + StorageMut {
    /// Appends raft-rs entries (contiguous; a conflicting suffix is truncated first), durable on
    /// return. `DiskStorage` copies each entry's bytes once, into the log's write buffer.
    fn append_raft_entries(&mut self, entries: &[eraftpb::Entry]) -> crate::Result<()>;
}

impl RaftRsStorage for DiskStorage {
    fn append_raft_entries(&mut self, entries: &[eraftpb::Entry]) -> crate::Result<()> {
        let refs: Vec<EntryRef<'_>> = entries
            .iter()
            .map(|e| EntryRef {
                index: e.index,
                term: e.term,
                entry_type: entry_type_from_raft(e.entry_type),
                context: &e.context,
                data: &e.data,
            })
            .collect();
        self.append_refs(&refs)
    }
}

impl RaftRsStorage for MemStorage {
    fn append_raft_entries(&mut self, entries: &[eraftpb::Entry]) -> crate::Result<()> {
        let entries: Vec<Entry> = entries.iter().map(entry_from_raft).collect();
        self.append(&entries)
    }
}

/// Persists what a raft-rs `Ready` asks to be persisted, in the one safe order: the snapshot
/// (its file, then the HardState and ConfState it implies, then the log restarted after it),
/// the entries (one fdatasync of the log), then the HardState. Durable on return, except a
/// change of the HardState's commit index alone, which is written but not synced (raft-rs's
/// `Ready::must_sync` rule; see [`StorageMut::set_hard_state`] for what a crash keeps).
///
/// A Ready of entries and a commit (the common case) costs one fdatasync. A new term or vote
/// costs one more, of the HardState file; so does a snapshot, of its file.
pub fn persist_ready<S: RaftRsStorage>(storage: &mut S, ready: &raft::Ready) -> crate::Result<()> {
    persist(storage, ready.snapshot(), ready.entries(), ready.hs())
}

/// [`persist_ready`] for the parts of a Ready taken apart (an application that moves entries
/// out of its Ready, or persists on another thread): the snapshot (empty for none), the entries
/// and the HardState, in that order.
///
/// A snapshot the storage already covers up to its commit index (raft-rs restores a snapshot at
/// its own commit index after `RawNode::request_snapshot`, and the application may have made or
/// compacted past one there itself) is not installed again: what the storage holds at or below
/// its commit index is the committed state, the same as the snapshot's.
pub fn persist<S: RaftRsStorage>(
    storage: &mut S,
    snapshot: &eraftpb::Snapshot,
    entries: &[eraftpb::Entry],
    hs: Option<&eraftpb::HardState>,
) -> crate::Result<()> {
    if !snapshot.is_empty() {
        let metadata = snapshot_metadata_from_raft(snapshot.get_metadata());
        let mut data: &[u8] = &snapshot.data;
        match storage.apply_snapshot(&metadata, &mut data) {
            Ok(()) => {}
            // At or below the stored commit, the storage's state is the committed one: the same.
            Err(Error::SnapshotOutOfDate { .. })
                if metadata.index <= Storage::initial_state(storage)?.hard_state.commit => {}
            Err(e) => return Err(e),
        }
    }
    if !entries.is_empty() {
        storage.append_raft_entries(entries)?;
    }
    if let Some(hs) = hs {
        storage.set_hard_state(&HardState { term: hs.term, vote: hs.vote, commit: hs.commit })?;
    }
    Ok(())
}

/// Records a new commit index alone (a `LightReady`'s `commit_index()`), keeping the term and
/// vote: written, not synced, as for [`persist_ready`]. A commit at or below the stored one is
/// a no-op.
pub fn persist_commit<S: RaftRsStorage>(storage: &mut S, commit: u64) -> crate::Result<()> {
    let hs = Storage::initial_state(storage)?.hard_state;
    if commit <= hs.commit {
        return Ok(());
    }
    storage.set_hard_state(&HardState { commit, ..hs })
}

/// Makes the stored commit index at least `applied`, the index a durable state machine has
/// applied, before `applied` is passed as raft-rs's `Config::applied` (raft-rs panics in
/// `RawNode::new` when `applied` is above the stored commit).
///
/// After a process kill keel keeps the newest commit index, but after a power loss it may come
/// back lower, to the last synced HardState: an application that made its state machine durable
/// meanwhile has applied entries that were committed, which it proves. Returns the commit index
/// now stored. `applied` above the last index means the state machine is ahead of the log it was
/// built from (not keel's doing: keel makes entries durable before raft-rs hands them out as
/// committed): an `InvalidArgument` error, and nothing changed.
pub fn restore_commit<S: RaftRsStorage>(storage: &mut S, applied: u64) -> crate::Result<u64> {
    let hs = Storage::initial_state(storage)?.hard_state;
    if applied <= hs.commit {
        return Ok(hs.commit);
    }
    let last = Storage::last_index(storage)?;
    if applied > last {
        return Err(Error::InvalidArgument(format!(
            "restore_commit: applied index {applied} is past the last index {last} of the log"
        )));
    }
    storage.set_hard_state(&HardState { commit: applied, ..hs })?;
    Ok(applied)
}

macro_rules! impl_raft_storage {
    ($t:ty) => {
        impl raft::Storage for $t {
            fn initial_state(&self) -> raft::Result<raft::RaftState> {
                let s = Storage::initial_state(self).map_err(to_raft)?;
                let hs = &s.hard_state;
                let mut hard_state = eraftpb::HardState::default();
                (hard_state.term, hard_state.vote, hard_state.commit) = (hs.term, hs.vote, hs.commit);
                Ok(raft::RaftState { hard_state, conf_state: conf_state_to_raft(&s.conf_state) })
            }

            fn entries(
                &self,
                low: u64,
                high: u64,
                max_size: impl Into<Option<u64>>,
                _context: GetEntriesContext,
            ) -> raft::Result<Vec<eraftpb::Entry>> {
                let max_size = max_size.into();
                // keel's measure (data and context bytes) never exceeds raft-rs's (the encoded
                // entry), so keel's page holds at least what raft-rs's limit keeps.
                let page = Storage::entries(self, low, high, max_size.unwrap_or(u64::MAX)).map_err(to_raft)?;
                let mut entries: Vec<eraftpb::Entry> = page.into_iter().map(entry_to_raft).collect();
                raft::util::limit_size(&mut entries, max_size);
                Ok(entries)
            }

            fn term(&self, idx: u64) -> raft::Result<u64> {
                Storage::term(self, idx).map_err(to_raft)
            }

            fn first_index(&self) -> raft::Result<u64> {
                Storage::first_index(self).map_err(to_raft)
            }

            fn last_index(&self) -> raft::Result<u64> {
                Storage::last_index(self).map_err(to_raft)
            }

            fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<eraftpb::Snapshot> {
                let s = Storage::snapshot(self, request_index).map_err(to_raft)?;
                let mut out = eraftpb::Snapshot::default();
                out.data = s.read_to_vec().map_err(to_raft)?.into();
                let m = out.mut_metadata();
                (m.index, m.term) = (s.metadata.index, s.metadata.term);
                m.set_conf_state(conf_state_to_raft(&s.metadata.conf_state));
                Ok(out)
            }
        }
    };
}

impl_raft_storage!(DiskStorage);
impl_raft_storage!(MemStorage);

/// keel's errors in raft-rs's terms: the states Raft must see by name, the rest as `Other`
/// (keel's error, with its file, offset and cause, inside).
pub fn to_raft(e: Error) -> raft::Error {
    raft::Error::Store(match e {
        Error::Compacted { .. } => StorageError::Compacted,
        Error::Unavailable { .. } => StorageError::Unavailable,
        Error::SnapshotOutOfDate { .. } => StorageError::SnapshotOutOfDate,
        Error::SnapshotTemporarilyUnavailable => StorageError::SnapshotTemporarilyUnavailable,
        other => StorageError::Other(Box::new(other)),
    })
}

/// A keel entry as raft-rs's. A `DiskStorage` entry's data and context stay in the mapped
/// segment: the `Bytes` own a handle to it.
pub fn entry_to_raft(e: Entry) -> eraftpb::Entry {
    let entry_type = match e.entry_type {
        EntryType::Normal => eraftpb::EntryType::EntryNormal,
        EntryType::ConfChange => eraftpb::EntryType::EntryConfChange,
        EntryType::ConfChangeV2 => eraftpb::EntryType::EntryConfChangeV2,
    };
    eraftpb::Entry {
        index: e.index,
        term: e.term,
        entry_type,
        data: payload_to_bytes(e.data),
        context: payload_to_bytes(e.context),
        ..Default::default()
    }
}

/// A raft-rs entry as keel's (copying its bytes).
pub fn entry_from_raft(e: &eraftpb::Entry) -> Entry {
    Entry {
        index: e.index,
        term: e.term,
        entry_type: entry_type_from_raft(e.entry_type),
        data: Payload::from(&e.data[..]),
        context: Payload::from(&e.context[..]),
    }
}

fn entry_type_from_raft(t: eraftpb::EntryType) -> EntryType {
    match t {
        eraftpb::EntryType::EntryNormal => EntryType::Normal,
        eraftpb::EntryType::EntryConfChange => EntryType::ConfChange,
        eraftpb::EntryType::EntryConfChangeV2 => EntryType::ConfChangeV2,
    }
}

fn payload_to_bytes(p: Payload) -> bytes::Bytes {
    if p.is_empty() { bytes::Bytes::new() } else { bytes::Bytes::from_owner(p) }
}

/// A keel ConfState as raft-rs's.
pub fn conf_state_to_raft(c: &ConfState) -> eraftpb::ConfState {
    eraftpb::ConfState {
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        voters_outgoing: c.voters_outgoing.clone(),
        learners_next: c.learners_next.clone(),
        auto_leave: c.auto_leave,
        ..Default::default()
    }
}

/// A raft-rs ConfState as keel's.
pub fn conf_state_from_raft(c: &eraftpb::ConfState) -> ConfState {
    ConfState {
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        voters_outgoing: c.voters_outgoing.clone(),
        learners_next: c.learners_next.clone(),
        auto_leave: c.auto_leave,
    }
}

/// A raft-rs snapshot's metadata as keel's.
pub fn snapshot_metadata_from_raft(m: &eraftpb::SnapshotMetadata) -> SnapshotMetadata {
    SnapshotMetadata { index: m.index, term: m.term, conf_state: conf_state_from_raft(m.get_conf_state()) }
}
