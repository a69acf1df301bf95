//! [`MemStorage`]: the storage rules in memory, for tests and as the model of property tests.

use super::pin::Pins;
use super::types::{ConfState, Entry, HardState, RaftState, Snapshot, SnapshotMetadata};
use super::{SnapshotSink, Storage, StorageMut};
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Raft storage in memory. Nothing survives the process.
#[derive(Debug, Clone)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// The newest snapshot (unpinned: `snapshot()` hands out pinned clones).
    snapshot: Option<Snapshot>,
    /// Index of `entries[0]` (one past the last if empty).
    first_index: u64,
    /// Term of `first_index - 1`.
    prev_term: u64,
    entries: VecDeque<Entry>,
    in_progress: Arc<AtomicUsize>,
    pins: Pins,
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage {
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: None,
            first_index: 1,
            prev_term: 0,
            entries: VecDeque::new(),
            in_progress: Arc::new(AtomicUsize::new(0)),
            pins: Pins::default(),
        }
    }
}

impl MemStorage {
    /// An empty storage: first index 1, last index 0. It follows the same rules as
    /// [`DiskStorage`](super::DiskStorage) (one conformance suite runs on both), so a node
    /// tested over it behaves the same over the disk.
    ///
    /// ```
    /// use keel::storage::{Entry, MemStorage, Storage, StorageMut};
    ///
    /// let mut storage = MemStorage::new();
    /// storage.append(&[Entry::new(1, 1, b"put x=1".to_vec()), Entry::new(2, 1, b"put y=2".to_vec())])?;
    /// assert_eq!((storage.first_index()?, storage.last_index()?), (1, 2));
    /// storage.compact(2)?; // entry 1 is gone; its term still answers for first_index - 1
    /// assert_eq!((storage.first_index()?, storage.term(1)?), (2, 1));
    /// # Ok::<(), keel::Error>(())
    /// ```
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn last(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    fn newest_snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.metadata.index)
    }
}

/// Buffers a snapshot's data for [`MemStorage`].
#[derive(Debug)]
pub struct MemSnapshotWriter {
    metadata: SnapshotMetadata,
    data: Vec<u8>,
    in_progress: Arc<AtomicUsize>,
}

impl Write for MemSnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MemSnapshotWriter {
    fn drop(&mut self) {
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Stages a received snapshot's data for [`MemStorage`], in memory.
#[derive(Debug)]
pub(crate) struct MemSnapshotSink {
    metadata: SnapshotMetadata,
    data: Vec<u8>,
}

impl Write for MemSnapshotSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotSink for MemSnapshotSink {
    fn finish(self: Box<Self>) -> Result<Snapshot> {
        Ok(Snapshot::from_bytes(self.metadata, self.data))
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state, conf_state: self.conf_state.clone() })
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        super::check_range(lo, hi, self.first_index, self.last())?;
        super::page(lo, hi, max_bytes, |i| Ok(self.entries[(i - self.first_index) as usize].clone()))
    }

    fn term(&self, index: u64) -> Result<u64> {
        if index.checked_add(1) == Some(self.first_index) {
            return Ok(self.prev_term);
        }
        if index < self.first_index {
            return Err(Error::Compacted { index, first_index: self.first_index });
        }
        if index > self.last() {
            return Err(Error::Unavailable { index, last_index: self.last() });
        }
        Ok(self.entries[(index - self.first_index) as usize].term)
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.first_index)
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64) -> Result<Snapshot> {
        match &self.snapshot {
            Some(s) if self.in_progress.load(Ordering::SeqCst) == 0 && s.metadata.index >= request_index => {
                Ok(s.clone().pinned(&self.pins))
            }
            _ => Err(Error::SnapshotTemporarilyUnavailable),
        }
    }
}

impl StorageMut for MemStorage {
    type SnapshotWriter = MemSnapshotWriter;

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        super::check_append(entries, self.first_index, self.last(), self.hard_state.commit)?;
        let Some(first) = entries.first() else { return Ok(()) };
        self.entries.truncate((first.index - self.first_index) as usize);
        self.entries.extend(entries.iter().cloned());
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        super::check_hard_state(&self.hard_state, hard_state, self.last())?;
        self.hard_state = *hard_state;
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()> {
        self.conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, metadata: &SnapshotMetadata, data: &mut dyn Read) -> Result<()> {
        super::check_apply_snapshot(
            metadata.index,
            metadata.term,
            self.first_index,
            self.newest_snapshot_index(),
            self.hard_state.commit,
        )?;
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).map_err(|e| Error::io("read snapshot data", "<snapshot data>", e))?;
        self.entries.clear();
        self.first_index = metadata.index + 1;
        self.prev_term = metadata.term;
        self.hard_state = super::hard_state_after_snapshot(self.hard_state, metadata);
        self.conf_state = metadata.conf_state.clone();
        self.snapshot = Some(Snapshot::from_bytes(metadata.clone(), bytes));
        Ok(())
    }

    fn begin_snapshot(&self, index: u64, conf_state: &ConfState) -> Result<MemSnapshotWriter> {
        super::check_begin_snapshot(index, self.newest_snapshot_index(), self.last())?;
        let term = self.term(index)?;
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        Ok(MemSnapshotWriter {
            metadata: SnapshotMetadata { index, term, conf_state: conf_state.clone() },
            data: Vec::new(),
            in_progress: Arc::clone(&self.in_progress),
        })
    }

    fn finish_snapshot(&mut self, mut writer: MemSnapshotWriter) -> Result<()> {
        let newest = self.newest_snapshot_index();
        if writer.metadata.index <= newest {
            return Err(Error::SnapshotOutOfDate { index: writer.metadata.index, covered: newest });
        }
        let data = std::mem::take(&mut writer.data);
        self.snapshot = Some(Snapshot::from_bytes(writer.metadata.clone(), data));
        Ok(())
    }

    fn receive_snapshot(&self, metadata: &SnapshotMetadata) -> Result<Box<dyn SnapshotSink>> {
        super::SnapshotStager::stage(&MemStager, metadata)
    }

    fn snapshot_stager(&self) -> std::sync::Arc<dyn super::SnapshotStager> {
        std::sync::Arc::new(MemStager)
    }

    fn compact(&mut self, index: u64) -> Result<()> {
        let index = self.pins.compact_limit(index);
        if !super::check_compact(index, self.first_index, self.last())? {
            return Ok(());
        }
        self.prev_term = self.term(index - 1)?;
        self.entries.drain(..(index - self.first_index) as usize);
        self.first_index = index;
        Ok(())
    }
}

/// `MemStorage`'s stager: snapshots received into memory.
struct MemStager;

impl super::SnapshotStager for MemStager {
    fn stage(&self, metadata: &SnapshotMetadata) -> Result<Box<dyn SnapshotSink>> {
        Ok(Box::new(MemSnapshotSink { metadata: metadata.clone(), data: Vec::new() }))
    }
}
