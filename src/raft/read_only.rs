//! Linearizable reads without writing to the log (ReadIndex, thesis §6.4).
//!
//! The leader records its commit index when a read request arrives, then confirms it is still
//! the leader with a heartbeat round carrying the request's context; once a quorum has answered
//! a heartbeat carrying that context (or a later one: heartbeats answer in order of the queue),
//! every request queued up to it is released with the index recorded for it. The application
//! serves the read once it has applied that index.
//!
//! Invariants: `queue` and `pending` hold the same contexts; a context is queued at most once;
//! requests are released in the order they arrived.

use super::membership::{Membership, VoteResult};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// A read request the leader confirmed: serve it once `index` is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index when the leader took the request: the read may be served once the
    /// application has applied at least this index.
    pub index: u64,
    /// The context the application passed to `read_index`, to match the answer to its request.
    pub request_ctx: Vec<u8>,
}

/// How reads are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// Each read (or batch of reads) waits for a heartbeat round to a quorum: safe whatever
    /// the clocks do.
    #[default]
    Safe,
    /// The leader answers at once, relying on its lease: with CheckQuorum, no other leader can
    /// be elected within an election timeout of the last time a quorum heard from it. Wrong if
    /// clocks drift by more than the margin between the election timeout and the lease.
    LeaseBased,
}

/// A request waiting for its heartbeat round.
#[derive(Debug, Clone)]
pub(crate) struct PendingRead {
    /// The node that asked (the leader itself for a local request).
    pub(crate) from: u64,
    pub(crate) index: u64,
    pub(crate) ctx: Vec<u8>,
    acks: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    pending: HashMap<Vec<u8>, PendingRead>,
    queue: VecDeque<Vec<u8>>,
}

impl ReadOnly {
    /// Queues a request taken at commit index `index`; a context already queued is ignored.
    pub(crate) fn add_request(&mut self, index: u64, ctx: Vec<u8>, from: u64, leader: u64) {
        if self.pending.contains_key(&ctx) {
            return;
        }
        let acks = BTreeSet::from([leader]);
        self.pending.insert(ctx.clone(), PendingRead { from, index, ctx: ctx.clone(), acks });
        self.queue.push_back(ctx);
    }

    /// A heartbeat response carrying `ctx` came from `from`; returns whether a quorum of
    /// `membership` has now confirmed it.
    pub(crate) fn recv_ack(&mut self, from: u64, ctx: &[u8], membership: &Membership) -> bool {
        let Some(read) = self.pending.get_mut(ctx) else { return false };
        read.acks.insert(from);
        let acks = &read.acks;
        membership.vote_result(|id| acks.contains(&id).then_some(true)) == VoteResult::Won
    }

    /// Releases every request up to and including `ctx`, oldest first.
    pub(crate) fn advance(&mut self, ctx: &[u8]) -> Vec<PendingRead> {
        let Some(pos) = self.queue.iter().position(|c| c == ctx) else { return Vec::new() };
        self.queue.drain(..=pos).filter_map(|c| self.pending.remove(&c)).collect()
    }

    /// The context of the newest request, which the next heartbeats carry.
    pub(crate) fn last_pending_ctx(&self) -> Option<&[u8]> {
        self.queue.back().map(Vec::as_slice)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_release_in_order_once_a_quorum_acknowledges() {
        let m = Membership { voters: [1, 2, 3].into(), ..Membership::default() };
        let mut ro = ReadOnly::default();
        ro.add_request(5, b"a".to_vec(), 1, 1);
        ro.add_request(6, b"b".to_vec(), 2, 1);
        ro.add_request(9, b"b".to_vec(), 2, 1); // duplicate: ignored
        assert_eq!(ro.len(), 2);
        assert!(!ro.recv_ack(9, b"b", &m), "a non-member's answer does not count");
        assert!(ro.recv_ack(3, b"b", &m), "leader + 3 is a quorum of three");
        let released = ro.advance(b"b");
        assert_eq!(released.iter().map(|r| (r.index, r.from)).collect::<Vec<_>>(), vec![(5, 1), (6, 2)]);
        assert_eq!(ro.len(), 0);
        assert!(ro.advance(b"a").is_empty());
        assert!(!ro.recv_ack(2, b"zzz", &m));
    }
}
