//! The Raft log as the consensus module sees it: what storage holds (persisted) followed by
//! entries and a snapshot not yet persisted ("unstable").
//!
//! Invariants: `applied <= applying <= committed <= last_index()` (`applying`: handed out to
//! apply; `applied`: reported applied by `advance`); unstable entries start at `offset`, and
//! storage is only read below `offset` (storage may still hold older entries at and after it,
//! which the next persisted append replaces); entries up to `in_progress` were handed out in a
//! `Ready` and are being persisted; only persisted entries are handed out to apply.
//!
//! Storage errors: `Compacted` and `Unavailable` are answers (the index is outside the log);
//! anything else is returned to the caller, and the Raft core stops the node with it. Nothing
//! here guesses a value in place of one storage failed to give.

use super::raw_node::NewNodeError;
use crate::Error;
use crate::storage::{Entry, EntryType, Snapshot, Storage};

#[derive(Debug)]
pub(crate) struct RaftLog<S: Storage> {
    pub(crate) storage: S,
    unstable: Vec<Entry>,
    offset: u64,
    /// A snapshot received and not yet persisted.
    snapshot: Option<Snapshot>,
    /// Whether the unstable snapshot was handed out in a `Ready`.
    snapshot_in_progress: bool,
    /// Last unstable index handed out for persisting.
    in_progress: u64,
    pub(crate) committed: u64,
    /// The last index handed out to apply (in a Ready not necessarily advanced yet).
    pub(crate) applying: u64,
    /// The last index the application reported applied (`advance`): membership decisions
    /// (the next change, campaigning) wait for this one, not for `applying`.
    pub(crate) applied: u64,
}

impl<S: Storage> RaftLog<S> {
    /// The log over `storage`, with the application's applied index. An applied index above
    /// the stored commit raises the commit to it: the application applied those entries, so
    /// they were committed (a power loss may lose a commit-only HardState change, never the
    /// entries). Neither the stored commit nor `applied` may be above the last index.
    pub(crate) fn new(storage: S, applied: u64) -> Result<RaftLog<S>, NewNodeError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        let stored = storage.initial_state()?.hard_state.commit;
        if stored > last {
            return Err(NewNodeError::CommitAboveLog { commit: stored, last_index: last });
        }
        if applied > last {
            return Err(NewNodeError::AppliedAboveLog { applied, last_index: last });
        }
        let committed = stored.max(first - 1).max(applied);
        Ok(RaftLog {
            storage,
            unstable: Vec::new(),
            offset: last + 1,
            snapshot: None,
            snapshot_in_progress: false,
            in_progress: last,
            committed,
            applying: applied.max(first - 1),
            applied: applied.max(first - 1),
        })
    }

    pub(crate) fn first_index(&self) -> crate::Result<u64> {
        match &self.snapshot {
            Some(s) => Ok(s.metadata.index + 1),
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        match (self.unstable.last(), &self.snapshot) {
            (Some(e), _) => e.index,
            (None, Some(s)) => s.metadata.index,
            (None, None) => self.offset - 1,
        }
    }

    /// The last index persisted (what this node may acknowledge).
    pub(crate) fn persisted_index(&self) -> u64 {
        match &self.snapshot {
            Some(s) => s.metadata.index.min(self.offset - 1),
            None => self.offset - 1,
        }
    }

    pub(crate) fn last_term(&self) -> crate::Result<u64> {
        self.term(self.last_index())
    }

    /// The term of `index`, for `index` in `[first_index - 1, last_index]`.
    pub(crate) fn term(&self, index: u64) -> crate::Result<u64> {
        if let Some(s) = &self.snapshot
            && index == s.metadata.index
        {
            return Ok(s.metadata.term);
        }
        if index >= self.offset {
            return match self.unstable.get((index - self.offset) as usize) {
                Some(e) => Ok(e.term),
                None => Err(Error::Unavailable { index, last_index: self.last_index() }),
            };
        }
        let first = self.first_index()?;
        if index + 1 < first {
            return Err(Error::Compacted { index, first_index: first });
        }
        if self.snapshot.is_some() {
            // Below a pending snapshot nothing is known.
            return Err(Error::Compacted { index, first_index: first });
        }
        self.storage.term(index)
    }

    /// The term of `index`, or `None` if the log does not hold it (compacted or beyond the end).
    pub(crate) fn term_if_held(&self, index: u64) -> crate::Result<Option<u64>> {
        match self.term(index) {
            Ok(t) => Ok(Some(t)),
            Err(Error::Compacted { .. } | Error::Unavailable { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn match_term(&self, index: u64, term: u64) -> crate::Result<bool> {
        Ok(self.term_if_held(index)? == Some(term))
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> crate::Result<bool> {
        let ours = self.last_term()?;
        Ok(last_term > ours || (last_term == ours && last_index >= self.last_index()))
    }

    /// The follower side of an append: entries after (`prev_index`, `prev_term`). Returns the
    /// last index of the appended run and, if entries the log held were replaced, the first
    /// replaced index; or `None` if the log does not match at `prev_index` (or the leader asks
    /// to overwrite a committed entry, which a correct leader never does).
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        committed: u64,
        entries: &[Entry],
    ) -> crate::Result<Option<(u64, Option<u64>)>> {
        if !self.match_term(prev_index, prev_term)? {
            return Ok(None);
        }
        let last_before = self.last_index();
        let last_new = prev_index + entries.len() as u64;
        let mut conflict = None;
        for e in entries {
            if !self.match_term(e.index, e.term)? {
                conflict = Some(e.index);
                break;
            }
        }
        if let Some(at) = conflict {
            if at <= self.committed {
                return Ok(None);
            }
            self.append(&entries[(at - prev_index - 1) as usize..]);
        }
        self.commit_to(committed.min(last_new));
        Ok(Some((last_new, conflict.filter(|&at| at <= last_before))))
    }

    /// The largest index at most `index` whose term is at most `term` (fast backtracking).
    /// Stops at the first index the log does not hold (compacted): the answer is a hint.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> crate::Result<u64> {
        let mut i = index.min(self.last_index());
        while i > 0 {
            match self.term_if_held(i)? {
                Some(t) if t > term => i -= 1,
                _ => break,
            }
        }
        Ok(i)
    }

    /// Appends `entries` (contiguous), replacing any unstable suffix they overlap.
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let after = first.index;
        if after == self.offset + self.unstable.len() as u64 {
            self.unstable.extend_from_slice(entries);
        } else if after <= self.offset {
            self.offset = after;
            self.unstable = entries.to_vec();
        } else {
            self.unstable.truncate((after - self.offset) as usize);
            self.unstable.extend_from_slice(entries);
        }
        self.in_progress = self.in_progress.min(after - 1);
    }

    /// Entries in `[lo, hi)`, at most `max_bytes` of data but at least one.
    pub(crate) fn slice(&self, lo: u64, hi: u64, max_bytes: u64) -> crate::Result<Vec<Entry>> {
        let first = self.first_index()?;
        if lo < first {
            return Err(Error::Compacted { index: lo, first_index: first });
        }
        let hi = hi.min(self.last_index() + 1);
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        if lo < self.offset {
            out = self.storage.entries(lo, hi.min(self.offset), max_bytes)?;
            if (out.len() as u64) < hi.min(self.offset) - lo {
                return Ok(out); // the byte limit cut the stored part short
            }
        }
        if hi <= self.offset {
            return Ok(out);
        }
        let mut bytes = super::data_bytes(&out);
        for e in &self.unstable[(lo.max(self.offset) - self.offset) as usize..(hi - self.offset) as usize] {
            if !out.is_empty() && bytes + e.size_bytes() > max_bytes {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(out)
    }

    pub(crate) fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond the last index {}", self.last_index());
            self.committed = index;
        }
    }

    /// §5.4.2: commits `index` only if it is an entry of the current `term`.
    pub(crate) fn maybe_commit(&mut self, index: u64, term: u64) -> crate::Result<bool> {
        if index > self.committed && index <= self.last_index() && self.term(index)? == term {
            self.commit_to(index);
            return Ok(true);
        }
        Ok(false)
    }

    /// Committed, persisted entries not yet handed out to apply, at most `max_bytes` of data.
    pub(crate) fn next_committed(&self, max_bytes: u64) -> crate::Result<Vec<Entry>> {
        let hi = self.committed.min(self.persisted_index()) + 1;
        let lo = (self.applying + 1).max(self.first_index()?);
        if lo >= hi {
            return Ok(Vec::new());
        }
        self.slice(lo, hi, max_bytes)
    }

    /// Whether a committed entry not yet handed out to apply changes the membership (etcd's
    /// `hasUnappliedConfChanges`): a node does not campaign with a configuration about to change.
    pub(crate) fn has_unapplied_conf_changes(&self) -> crate::Result<bool> {
        let mut lo = (self.applied + 1).max(self.first_index()?);
        let hi = self.committed + 1;
        while lo < hi {
            let page = self.slice(lo, hi, 1 << 20)?;
            if page.iter().any(|e| e.entry_type != EntryType::Normal) {
                return Ok(true);
            }
            match page.last() {
                Some(e) => lo = e.index + 1,
                None => break,
            }
        }
        Ok(false)
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        // Below an unpersisted snapshot nothing is handed out (`next_committed` starts above
        // it), although `persisted_index` counts up to it.
        self.snapshot.is_none() && self.committed.min(self.persisted_index()) > self.applying
    }

    /// Entries up to `index` were handed out to apply.
    pub(crate) fn applying_to(&mut self, index: u64) {
        self.applying = self.applying.max(index);
    }

    /// The application reported entries up to `index` applied.
    pub(crate) fn applied_to(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        self.applying = self.applying.max(index);
    }

    /// Entries to hand out for persisting (not handed out before).
    pub(crate) fn to_persist(&self) -> &[Entry] {
        let from = (self.in_progress + 1).max(self.offset);
        &self.unstable[(from - self.offset).min(self.unstable.len() as u64) as usize..]
    }

    /// A snapshot was received and is not yet persisted (handed out or not).
    pub(crate) fn has_pending_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    pub(crate) fn snapshot_to_persist(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref().filter(|_| !self.snapshot_in_progress)
    }

    /// Marks what a `Ready` handed out as being persisted.
    pub(crate) fn handed_out(&mut self, last: Option<u64>, snapshot: bool) {
        if let Some(last) = last {
            self.in_progress = self.in_progress.max(last);
        }
        self.snapshot_in_progress |= snapshot;
    }

    /// Entries up to `index` of `term` are persisted.
    pub(crate) fn stable_to(&mut self, index: u64, term: u64) {
        let n = index.wrapping_add(1).wrapping_sub(self.offset) as usize;
        // Replaced since it was handed out, or already stable: only the unstable tail counts.
        if index < self.offset || n > self.unstable.len() || self.unstable[n - 1].term != term {
            return;
        }
        self.unstable.drain(..n);
        self.offset = index + 1;
    }

    /// The snapshot at `index` is persisted.
    pub(crate) fn stable_snapshot_to(&mut self, index: u64) {
        if self.snapshot.as_ref().is_some_and(|s| s.metadata.index == index) {
            self.snapshot = None;
            self.snapshot_in_progress = false;
            self.applied_to(index);
        }
    }

    /// Replaces the log by a snapshot received from the leader.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.metadata.index;
        self.committed = index;
        self.unstable.clear();
        self.offset = index + 1;
        self.in_progress = index;
        self.snapshot = Some(snapshot);
        self.snapshot_in_progress = false;
    }
}
