//! The Raft state that storage persists: HardState, ConfState, entries and snapshots.

use super::pin::{Pin, Pins};
use crate::error::{Error, Result};
use crate::payload::Payload;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// The Raft state that must be durable before messages depending on it leave the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// The node's current term: the highest it has seen. Never decreases.
    pub term: u64,
    /// The node voted for in `term`; 0 for none.
    pub vote: u64,
    /// The highest index known committed. Never decreases; after a crash it may be lower than
    /// it was (a commit-only change need not be synced), never higher.
    pub commit: u64,
}

/// Cluster membership, with room for joint consensus (`voters_outgoing`, `learners_next`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// Ids of the nodes that vote in elections and count towards commit (a quorum is a majority).
    pub voters: Vec<u64>,
    /// Ids of the nodes that receive the log but neither vote nor count towards commit.
    pub learners: Vec<u64>,
    /// Joint consensus: the voters of the configuration being left; empty outside a joint
    /// change. Stored and sent, not yet used by the Raft core.
    pub voters_outgoing: Vec<u64>,
    /// Joint consensus: voters that become learners when the joint configuration is left.
    /// Stored and sent, not yet used by the Raft core.
    pub learners_next: Vec<u64>,
    /// Joint consensus: leave the joint configuration on its own once it is committed. Stored
    /// and sent, not yet used by the Raft core.
    pub auto_leave: bool,
}

impl ConfState {
    /// Node ids in all four lists.
    pub fn id_count(&self) -> usize {
        self.voters.len() + self.learners.len() + self.voters_outgoing.len() + self.learners_next.len()
    }
}

/// What `initial_state` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftState {
    /// The persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The persisted membership: voters and learners.
    pub conf_state: ConfState,
}

/// The kind of a Raft entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryType {
    /// Application data; a new leader's first entry of its term is an empty one.
    #[default]
    Normal = 0,
    /// A membership change (etcd's `EntryConfChange`). Stored and replicated like any entry; the
    /// Raft core does not act on it yet.
    ConfChange = 1,
    /// A joint-consensus membership change (etcd's `EntryConfChangeV2`). Stored and replicated like
    /// any entry; the Raft core does not act on it yet.
    ConfChangeV2 = 2,
}

/// Bit 7 of an entry's type byte, on disk (`segments/FORMAT.md`, "Raft entries in records") and
/// in messages: the entry has a context, whose length (`u32`) and bytes follow the type byte.
pub(crate) const ENTRY_CONTEXT_FLAG: u8 = 0x80;

impl EntryType {
    pub(crate) fn from_u8(b: u8) -> Option<EntryType> {
        match b {
            0 => Some(EntryType::Normal),
            1 => Some(EntryType::ConfChange),
            2 => Some(EntryType::ConfChangeV2),
            _ => None,
        }
    }
}

/// A Raft log entry. Read from `DiskStorage`, `data` points into the mapped segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry's position in the Raft log; the first entry ever is index 1.
    pub index: u64,
    /// The term of the leader that created the entry.
    pub term: u64,
    /// Whether `data` is application data or a membership change.
    pub entry_type: EntryType,
    /// The entry's bytes, opaque to keel.
    pub data: Payload,
    /// Bytes the application attaches beside `data` (raft-rs's `Entry::context`), opaque to
    /// keel, stored and replicated with the entry; usually empty, and then it costs nothing.
    pub context: Payload,
}

impl Entry {
    /// A normal entry.
    pub fn new(index: u64, term: u64, data: impl Into<Payload>) -> Entry {
        Entry { index, term, entry_type: EntryType::Normal, data: data.into(), context: Payload::default() }
    }

    /// Bytes counted against `max_bytes` limits: the data and the context.
    pub fn size_bytes(&self) -> u64 {
        (self.data.len() + self.context.len()) as u64
    }
}

/// What a snapshot covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMetadata {
    /// The last index the snapshot includes.
    pub index: u64,
    /// The term of `index`.
    pub term: u64,
    /// Membership as of `index`.
    pub conf_state: ConfState,
}

/// Which snapshot: the last index it includes and that index's term. Named fields rather than a
/// pair, because snapshot file names put the term first and reports the index first, and a
/// swapped pair compiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    /// The last index the snapshot includes.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "index {}, term {}", self.index, self.term)
    }
}

impl SnapshotMetadata {
    /// The snapshot's index and term.
    pub fn id(&self) -> SnapshotId {
        SnapshotId { index: self.index, term: self.term }
    }
}

/// A snapshot: metadata and a way to stream its data (which may be larger than memory).
///
/// A cheap handle: clones share the data. A handle from [`Storage::snapshot`] also pins the
/// storage's log entries after `metadata.index` until its last clone is dropped, so that a
/// follower sent this snapshot can be caught up from the log afterwards (see
/// [`StorageMut::compact`]).
///
/// Two snapshots are equal when their metadata, data length and data checksum are: what a
/// [`Message`](crate::raft::Message) announces on the wire. The data is not read to compare.
///
/// [`Storage::snapshot`]: super::Storage::snapshot
/// [`StorageMut::compact`]: super::StorageMut::compact
#[derive(Clone)]
pub struct Snapshot {
    /// What the snapshot covers: its last index, that index's term, the membership then.
    pub metadata: SnapshotMetadata,
    pub(crate) data: Arc<dyn SnapshotSource>,
    /// Keeps the entries after the snapshot in the storage that handed it out.
    pin: Option<Arc<Pin>>,
}

/// Where a snapshot's data comes from: memory here; a storage implementation supplies its own
/// (`DiskStorage`: the snapshot file, streamed and checksum-checked). Keeping the file handle
/// behind this trait keeps the public types free of any disk format.
pub(crate) trait SnapshotSource: Send + Sync {
    /// Bytes of data.
    fn data_len(&self) -> u64;
    /// The CRC-32 (crc32fast) of the data.
    fn data_crc(&self) -> u32;
    /// A reader of the data; see [`Snapshot::reader`].
    fn reader(&self) -> Result<Box<dyn Read + Send>>;
    /// Where the data lives, for error messages.
    fn describe(&self) -> PathBuf;
}

/// Snapshot data held in memory (`MemStorage`, [`Snapshot::from_bytes`]).
pub(crate) struct MemorySnapshot {
    data: Arc<[u8]>,
    crc: u32,
}

impl MemorySnapshot {
    pub(crate) fn new(data: Arc<[u8]>) -> MemorySnapshot {
        MemorySnapshot { crc: crc32fast::hash(&data), data }
    }
}

impl SnapshotSource for MemorySnapshot {
    fn data_len(&self) -> u64 {
        self.data.len() as u64
    }

    fn data_crc(&self) -> u32 {
        self.crc
    }

    fn reader(&self) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(Arc::clone(&self.data))))
    }

    fn describe(&self) -> PathBuf {
        "<memory snapshot>".into()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("metadata", &self.metadata)
            .field("data_len", &self.data_len())
            .field("data_crc", &format_args!("{:#010x}", self.data_crc()))
            .finish()
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Snapshot) -> bool {
        (&self.metadata, self.data_len(), self.data_crc()) == (&other.metadata, other.data_len(), other.data_crc())
    }
}

impl Eq for Snapshot {}

impl Snapshot {
    /// A snapshot of `data` held in memory: for tests, simulators, and a state machine small
    /// enough to serialize whole. Computes the data checksum once.
    pub fn from_bytes(metadata: SnapshotMetadata, data: impl Into<Arc<[u8]>>) -> Snapshot {
        Snapshot::new(metadata, Arc::new(MemorySnapshot::new(data.into())))
    }

    pub(crate) fn new(metadata: SnapshotMetadata, data: Arc<dyn SnapshotSource>) -> Snapshot {
        Snapshot { metadata, data, pin: None }
    }

    /// This handle, pinning the entries after it in a storage (see `storage/pin.rs`).
    pub(crate) fn pinned(mut self, pins: &Pins) -> Snapshot {
        self.pin = Some(pins.pin(self.metadata.index));
        self
    }

    /// Bytes of data.
    pub fn data_len(&self) -> u64 {
        self.data.data_len()
    }

    /// The CRC-32 (IEEE, as crc32fast computes it) of the data; for a snapshot file, the one
    /// stored in it. A [`reader`](Snapshot::reader) checks the data against it.
    pub fn data_crc(&self) -> u32 {
        self.data.data_crc()
    }

    /// A reader of the data. For a snapshot file it streams from disk and checks the data
    /// checksum at the end: a damaged snapshot ends in an error, so a consumer must treat any
    /// read error as "discard what was read".
    pub fn reader(&self) -> Result<Box<dyn Read + Send>> {
        self.data.reader()
    }

    /// Reads all of the data into memory (for small snapshots and tests).
    pub fn read_to_vec(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader()?.read_to_end(&mut out).map_err(|e| Error::io("read snapshot", self.data.describe(), e))?;
        Ok(out)
    }
}
