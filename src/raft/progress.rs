//! What a leader knows of each follower's log, and the flow-control window.
//!
//! Invariants: `matched < next`; in `Probe` at most one append is outstanding (`paused` until a
//! response or a heartbeat response); in `Replicate` appends are sent optimistically (`next`
//! moves past what was sent) while the window has room, and once it is full (`paused`) only a
//! heartbeat response lets one more append out, an empty one (a probe that the follower
//! acknowledges or rejects, either of which frees the window); in `Snapshot` nothing is sent
//! until the follower acknowledges the snapshot or the application reports it failed.

use std::collections::VecDeque;

/// How the leader replicates to one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one append at a time.
    Probe,
    /// The follower's log matches up to `matched`: appends are pipelined.
    Replicate,
    /// The follower needs a snapshot at `pending_snapshot` first.
    Snapshot,
}

/// Appends sent and not yet acknowledged, bounded by count and bytes.
#[derive(Debug, Clone)]
pub struct Inflights {
    /// (last index of the append, bytes of entry data), oldest first.
    sent: VecDeque<(u64, u64)>,
    bytes: u64,
    max_count: usize,
    max_bytes: u64,
}

impl Inflights {
    pub fn new(max_count: usize, max_bytes: u64) -> Inflights {
        Inflights { sent: VecDeque::new(), bytes: 0, max_count, max_bytes }
    }

    /// Whether the window is full (no more appends may be sent).
    pub fn full(&self) -> bool {
        self.sent.len() >= self.max_count || self.bytes >= self.max_bytes
    }

    pub fn add(&mut self, last_index: u64, bytes: u64) {
        self.sent.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every append whose last index is at most `index`.
    pub fn free_to(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.sent.front() {
            if last > index {
                break;
            }
            self.sent.pop_front();
            self.bytes -= bytes;
        }
    }

    pub fn reset(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }

    /// Appends in flight.
    pub fn count(&self) -> usize {
        self.sent.len()
    }
}

/// The leader's view of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    /// Probe: an append is outstanding. Replicate: the window was full when the last append
    /// left (etcd's `MsgAppFlowPaused`).
    pub paused: bool,
    pub pending_snapshot: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// The leader's tick count when it sent the newest heartbeat this follower answered: the
    /// follower refuses other candidates for an election timeout from (at least) then.
    pub lease_tick: Option<u64>,
    /// Heartbeat responses received while waiting for a snapshot to be applied.
    pub snapshot_wait: usize,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next: u64, max_inflight_msgs: usize, max_inflight_bytes: u64) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            paused: false,
            pending_snapshot: 0,
            recent_active: false,
            lease_tick: None,
            snapshot_wait: 0,
            inflights: Inflights::new(max_inflight_msgs, max_inflight_bytes),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.paused = false;
        self.snapshot_wait = 0;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// Records an acknowledgement up to `index`; returns whether `matched` moved.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = self.matched < index;
        if updated {
            self.matched = index;
            self.paused = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Handles a rejection of the append after `rejected` with the follower's `hint`; returns
    /// whether `next` moved back (a stale rejection changes nothing).
    pub fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // Only a rejection of what we sent after `matched` is news.
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        // etcd's rule: probe just after the hint, never at or after the rejected index again (a
        // hint at or past it would resend the same probe forever), never at or below `matched`.
        self.next = hint.saturating_add(1).min(rejected).max(self.matched + 1);
        self.paused = false;
        true
    }

    /// Whether nothing may be sent now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe | ProgressState::Replicate => self.paused,
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append of entries up to `last` carrying `bytes` of data.
    pub fn sent_append(&mut self, last: u64, bytes: u64, entry_count: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
                self.paused = self.inflights.full();
            }
            ProgressState::Probe => self.paused = true,
            ProgressState::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fills_by_count_or_bytes_and_drains_in_order() {
        let mut w = Inflights::new(3, 1000);
        w.add(5, 10);
        w.add(9, 10);
        assert!(!w.full());
        w.add(12, 10);
        assert!(w.full(), "three messages");
        w.free_to(9);
        assert_eq!(w.count(), 1);
        assert!(!w.full());
        w.add(20, 2000);
        assert!(w.full(), "bytes");
        w.free_to(100);
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn rejections_move_next_back_only_when_current() {
        let mut p = Progress::new(11, 4, 1 << 20);
        p.paused = true;
        assert!(!p.maybe_decr_to(5, 3), "stale: not the probe in flight");
        assert!(p.maybe_decr_to(10, 4));
        assert_eq!(p.next, 5);
        p.matched = 4;
        p.become_replicate();
        p.sent_append(9, 100, 5);
        assert_eq!(p.next, 10);
        assert!(!p.maybe_decr_to(3, 0), "below matched");
        assert!(p.maybe_decr_to(7, 0));
        assert_eq!(p.next, 5);
    }

    #[test]
    fn a_full_window_pauses_until_an_acknowledgement() {
        let mut p = Progress::new(5, 4, 1 << 20);
        p.matched = 4;
        p.become_replicate();
        for last in [6, 8, 10] {
            p.sent_append(last, 100, 2);
            assert!(!p.is_paused(), "room after {last}");
        }
        p.sent_append(12, 100, 2);
        assert!(p.is_paused(), "four appends fill a window of four");
        p.sent_append(12, 0, 0);
        assert!(p.is_paused(), "an empty probe keeps it paused");
        assert!(p.maybe_update(6));
        p.inflights.free_to(6);
        assert!(!p.is_paused(), "an acknowledgement frees the window");
    }

    #[test]
    fn a_hint_at_or_past_the_rejected_index_still_moves_the_probe_back() {
        // A probe after 10 rejected with hint 10 (or more) must next probe after 9, not resend
        // the probe after 10, which the follower would reject again, forever.
        for hint in [10, 11, u64::MAX] {
            let mut p = Progress::new(11, 4, 1 << 20);
            assert!(p.maybe_decr_to(10, hint));
            assert_eq!(p.next, 10, "hint {hint}");
        }
        let mut p = Progress::new(11, 4, 1 << 20);
        assert!(p.maybe_decr_to(10, 3));
        assert_eq!(p.next, 4, "a smaller hint is followed");
    }
}
