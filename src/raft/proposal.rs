//! What became of a proposal made through a [`Node`](super::Node): the [`Proposal`] handle the
//! application waits on, the [`Outcome`] it resolves to, and the node thread's `Tracker` that
//! resolves it.
//!
//! A proposal the leader appended at (index, term) is decided by the Ready that hands out its
//! index, and its handle is told when the application advances that Ready (so a `Committed`
//! entry has been applied, calling order step 5 before 7), or when the node stops:
//!
//! | this node hands out at the proposal's index         | outcome                              |
//! |-----------------------------------------------------|--------------------------------------|
//! | a committed entry of the same term                  | `Committed { index, term }`          |
//! | a committed entry of another term                   | `Dropped(Superseded { index })`      |
//! | a snapshot ending exactly at (index, term)          | `Committed { index, term }`          |
//! | a snapshot past the index, ending in a lower term   | `Dropped(Superseded { index })`      |
//! | a snapshot past the index, ending in the same or a higher term | `Unknown(Snapshot { index })` |
//! | nothing yet, and the node stops                     | `Unknown(Stopped)`                   |
//!
//! A follower forwards a proposal and cannot follow it further: `Forwarded { leader }` at once.
//! A proposal `RawNode` refuses: `Dropped(Refused(error))` at once.
//!
//! (Terms never decrease along a log, so an entry below a snapshot ending in a lower term than
//! the proposal's cannot be the proposal.)
//!
//! Losing leadership, or this node's log losing the entry to a new leader's append, decides
//! nothing: with five voters the entry may sit on one other node that is elected later and
//! commits it. Only a committed entry at the index is proof either way.
//!
//! Invariants: a proposal resolves at most once; every proposal the tracker holds resolves
//! (when the Ready handing out its index is advanced, or when the tracker is dropped: decided
//! outcomes are told, the rest are `Unknown(Stopped)`); a proposal that never reached the node
//! thread resolves as `Dropped(Stopped)`.

use super::RaftError;
use crate::storage::Entry;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

/// How a proposal ended, as far as this node can tell.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The entry was committed at `index` in `term` and handed out to apply (in a `Ready`'s
    /// `committed_entries`, or inside a snapshot ending at it), and the application advanced
    /// that Ready: it has applied the entry, unless the node stopped before the advance.
    Committed {
        /// The entry's index.
        index: u64,
        /// The entry's term (the leader's term when it was proposed).
        term: u64,
    },
    /// This node is a follower and forwarded the proposal to `leader`. A follower cannot learn
    /// which index the leader gives it (nor whether the message arrived), so the handle stops
    /// here; the application sees the entry, if it commits, in `committed_entries` like any
    /// other, and matches it by its own request id.
    Forwarded {
        /// The leader it was sent to.
        leader: u64,
    },
    /// The entry is not in the log and never will be, at least not from this proposal.
    Dropped(DropReason),
    /// This node can no longer tell: the entry may have committed or not. Do not retry blindly
    /// (the entry might be applied twice); read the state machine, or make the entry
    /// idempotent.
    Unknown(UnknownReason),
}

/// Why a proposal will never commit.
#[derive(Debug, Clone)]
pub enum DropReason {
    /// `RawNode` refused it (no leader, forwarding disabled, a transfer or a membership change
    /// in progress, too much uncommitted, ...): it never entered the log.
    Refused(RaftError),
    /// Another entry committed at its index: a new leader's log replaced it.
    Superseded {
        /// The proposal's index.
        index: u64,
    },
    /// The node stopped before the proposal reached it: it never entered the log.
    Stopped,
}

/// Why a proposal's fate is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownReason {
    /// The node stopped (or failed) with the entry in its log, not yet seen committed: it may
    /// still commit on the other nodes, or on this one once restarted.
    Stopped,
    /// A snapshot from the leader replaced the log past the entry's index and does not say
    /// which entry committed there.
    Snapshot {
        /// The proposal's index.
        index: u64,
    },
}

/// A proposal's handle: resolves once to an [`Outcome`].
#[derive(Debug)]
pub struct Proposal {
    rx: Receiver<Outcome>,
    outcome: Option<Outcome>,
}

impl Proposal {
    /// A handle and the sender that resolves it (capacity 1: one outcome, sent once, never
    /// blocks the node thread).
    pub(crate) fn new() -> (Proposal, SyncSender<Outcome>) {
        let (tx, rx) = sync_channel(1);
        (Proposal { rx, outcome: None }, tx)
    }

    /// The outcome if it is known, without waiting.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        if self.outcome.is_none() {
            self.outcome = match self.rx.try_recv() {
                Ok(o) => Some(o),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Outcome::Dropped(DropReason::Stopped)),
            };
        }
        self.outcome.clone()
    }

    /// Waits up to `timeout` for the outcome; `None` if it is still undecided.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome> {
        if self.outcome.is_none() {
            self.outcome = match self.rx.recv_timeout(timeout) {
                Ok(o) => Some(o),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Outcome::Dropped(DropReason::Stopped)),
            };
        }
        self.outcome.clone()
    }

    /// Waits for the outcome. This blocks for as long as the cluster takes to commit or replace
    /// the entry: without a quorum, for ever. Stopping the node ends the wait.
    pub fn wait(mut self) -> Outcome {
        match self.outcome.take() {
            Some(o) => o,
            None => self.rx.recv().unwrap_or(Outcome::Dropped(DropReason::Stopped)),
        }
    }
}

/// The node thread's proposals appended on this node (as leader): those not yet decided, by
/// (index, term) (one index may hold a stale proposal of an earlier term and a new one), and
/// those the outstanding Ready decided, told once the application advances it.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pending: BTreeMap<(u64, u64), SyncSender<Outcome>>,
    decided: Vec<(SyncSender<Outcome>, Outcome)>,
}

impl Tracker {
    /// Tracks a proposal the leader appended at (index, term).
    pub(crate) fn add(&mut self, index: u64, term: u64, tx: SyncSender<Outcome>) {
        let old = self.pending.insert((index, term), tx);
        assert!(old.is_none(), "two proposals appended at index {index} in term {term}");
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
    }

    /// A snapshot ending at (index, term) is being handed out and replaces the log up to
    /// `index`.
    pub(crate) fn snapshot(&mut self, index: u64, term: u64) {
        while let Some(entry) = self.pending.first_entry() {
            let (i, t) = *entry.key();
            if i > index {
                break;
            }
            let outcome = if (i, t) == (index, term) {
                Outcome::Committed { index: i, term: t }
            } else if term < t {
                Outcome::Dropped(DropReason::Superseded { index: i })
            } else {
                Outcome::Unknown(UnknownReason::Snapshot { index: i })
            };
            self.decided.push((entry.remove(), outcome));
        }
    }

    /// `entries` (contiguous, in order) are being handed out to apply.
    pub(crate) fn committed(&mut self, entries: &[Entry]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        while let Some(entry) = self.pending.first_entry() {
            let (i, t) = *entry.key();
            if i > last.index {
                break;
            }
            // Every proposal is above the applied index when made, and entries are handed out
            // from the applied index on (or replaced by a snapshot, resolved first).
            assert!(i >= first.index, "proposal at {i} was skipped: entries handed out from {}", first.index);
            let e = &entries[(i - first.index) as usize];
            assert_eq!(e.index, i, "committed entries are contiguous");
            let outcome = if e.term == t {
                Outcome::Committed { index: i, term: t }
            } else {
                Outcome::Dropped(DropReason::Superseded { index: i })
            };
            self.decided.push((entry.remove(), outcome));
        }
    }

    /// Tells the handles what the Ready just advanced decided: the application has applied
    /// what it handed out.
    pub(crate) fn release(&mut self) {
        for (tx, outcome) in self.decided.drain(..) {
            // A handle dropped by the application is not an error: nobody is waiting.
            let _ = tx.send(outcome);
        }
    }
}

impl Drop for Tracker {
    /// The node thread is ending (stopped, failed or panicking): what a Ready handed out is
    /// decided (whether or not it was applied), the rest is unknown.
    fn drop(&mut self) {
        self.release();
        for (_, tx) in std::mem::take(&mut self.pending) {
            let _ = tx.send(Outcome::Unknown(UnknownReason::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry::new(index, term, Vec::new())
    }

    fn tracked(tracker: &mut Tracker, index: u64, term: u64) -> Proposal {
        let (p, tx) = Proposal::new();
        tracker.add(index, term, tx);
        p
    }

    #[test]
    fn committed_entries_decide_by_term_at_the_index_and_tell_once_released() {
        let mut t = Tracker::default();
        let mut same = tracked(&mut t, 3, 2);
        let mut replaced = tracked(&mut t, 4, 2);
        let mut later = tracked(&mut t, 6, 2);
        t.committed(&[entry(2, 1), entry(3, 2), entry(4, 3), entry(5, 3)]);
        assert!(same.try_outcome().is_none(), "decided, but the Ready is not advanced yet");
        t.release();
        assert!(matches!(same.try_outcome(), Some(Outcome::Committed { index: 3, term: 2 })));
        assert!(matches!(replaced.try_outcome(), Some(Outcome::Dropped(DropReason::Superseded { index: 4 }))));
        assert!(later.try_outcome().is_none(), "index 6 is not handed out yet");
        assert_eq!(t.len(), 1);
        t.committed(&[]);
        t.committed(&[entry(6, 2)]);
        t.release();
        assert!(matches!(later.try_outcome(), Some(Outcome::Committed { index: 6, term: 2 })));
        assert!(matches!(later.wait(), Outcome::Committed { index: 6, .. }), "the outcome is kept");
    }

    #[test]
    fn a_stale_and_a_new_proposal_at_one_index_are_told_apart() {
        // Leader in term 2 proposed at 5, lost it before it replicated, led again in term 4 and
        // proposed at 5 again: one commits, the other is superseded.
        let mut t = Tracker::default();
        let mut stale = tracked(&mut t, 5, 2);
        let mut new = tracked(&mut t, 5, 4);
        t.committed(&[entry(5, 4)]);
        t.release();
        assert!(matches!(stale.try_outcome(), Some(Outcome::Dropped(DropReason::Superseded { index: 5 }))));
        assert!(matches!(new.try_outcome(), Some(Outcome::Committed { index: 5, term: 4 })));
    }

    #[test]
    fn a_snapshot_decides_only_what_it_can_prove() {
        let mut t = Tracker::default();
        let mut below_same_term = tracked(&mut t, 3, 2);
        let mut below_higher_term = tracked(&mut t, 4, 5);
        let mut at_end = tracked(&mut t, 7, 4);
        let mut above = tracked(&mut t, 8, 4);
        t.snapshot(7, 4);
        t.release();
        assert!(matches!(below_same_term.try_outcome(), Some(Outcome::Unknown(UnknownReason::Snapshot { index: 3 }))));
        assert!(matches!(below_higher_term.try_outcome(), Some(Outcome::Dropped(DropReason::Superseded { index: 4 }))));
        assert!(matches!(at_end.try_outcome(), Some(Outcome::Committed { index: 7, term: 4 })));
        assert!(above.try_outcome().is_none());
    }

    #[test]
    fn a_dropped_tracker_tells_what_was_decided_and_leaves_the_rest_unknown() {
        let mut t = Tracker::default();
        let mut decided = tracked(&mut t, 2, 1);
        let mut pending = tracked(&mut t, 3, 1);
        t.committed(&[entry(2, 1)]);
        drop(t);
        assert!(matches!(decided.try_outcome(), Some(Outcome::Committed { index: 2, term: 1 })));
        assert!(matches!(pending.wait_timeout(Duration::ZERO), Some(Outcome::Unknown(UnknownReason::Stopped))));
        let (mut never_arrived, tx) = Proposal::new();
        assert!(never_arrived.try_outcome().is_none());
        drop(tx);
        assert!(matches!(never_arrived.try_outcome(), Some(Outcome::Dropped(DropReason::Stopped))));
    }
}
