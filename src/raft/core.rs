//! The Raft state machine: roles, elections, replication, commitment. Deterministic: driven only
//! by `tick`, `step`, proposals and persistence reports; randomness comes from a seeded
//! generator.
//!
//! Invariants (checked by the simulator in `tests/raft_sim.rs`):
//! - the term never decreases, and a vote once cast in a term never changes;
//! - a vote reaches the candidate only after the HardState recording it is persisted (it goes
//!   out with `Ready::persisted_messages`); a candidate counts its own vote only once persisted,
//!   and becomes leader only then, even when the others' votes alone are a quorum (so nothing
//!   leaves as leader in a term this node could forget);
//! - a follower acknowledges entries only after they are persisted (same path);
//! - the leader counts its own log towards commit only up to what it has persisted, and commits
//!   only through an entry of its own term (§5.4.2);
//! - `commit` never decreases.

use super::conf_change::ConfChange;
use super::config::Config;
use super::log::RaftLog;
use super::membership::{Membership, VoteResult};
use super::message::{CAMPAIGN_TRANSFER, Message, MessageType};
use super::progress::{Progress, ProgressState};
use super::raw_node::NewNodeError;
use super::read_only::{ReadOnly, ReadOnlyOption, ReadState};
use super::{ProposeError, Role, data_bytes};
use crate::Error;
use crate::rng::Rng;
use crate::storage::{Entry, EntryType, HardState, Storage};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct Raft<S: Storage> {
    pub(crate) id: u64,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) role: Role,
    pub(crate) leader_id: u64,
    pub(crate) log: RaftLog<S>,
    pub(crate) membership: Membership,
    pub(crate) progress: BTreeMap<u64, Progress>,
    votes: BTreeMap<u64, bool>,
    /// Messages that may leave before anything is persisted.
    pub(crate) msgs: Vec<Message>,
    /// Messages that must wait until the current Ready is persisted.
    pub(crate) msgs_after_persist: Vec<Message>,
    /// A candidate's own vote, counted once the HardState holding it is persisted.
    pub(crate) self_vote_pending: bool,
    election_elapsed: usize,
    heartbeat_elapsed: usize,
    /// Leader: ticks since the current transfer (or hand-over attempt) began.
    transfer_elapsed: usize,
    randomized_election_timeout: usize,
    rng: Rng,
    uncommitted_bytes: u64,
    /// Proposals were appended and not yet sent to followers.
    pub(crate) bcast_pending: bool,
    /// Leader: the index of the last membership change proposed; no other may be proposed
    /// until it is applied (set to the last index on election, conservatively).
    pub(crate) pending_conf_index: u64,
    /// Leader: the node leadership is being handed to (0 for none); proposals are refused
    /// meanwhile.
    pub(crate) lead_transferee: u64,
    /// Leader removed or demoted by an applied change: it takes no proposals and hands
    /// leadership to the most caught-up voter, stepping down as it sends the TimeoutNow.
    leaving: bool,
    /// A TimeoutNow arrived while a committed membership change was still to be applied: the
    /// transfer's election starts once it is (etcd drops the TimeoutNow instead).
    campaign_when_applied: bool,
    /// This node has been a voter in a configuration it knows of (bootstrap, snapshot, or any
    /// since): only such a node can be counted by another's older view of the membership.
    was_voter: bool,
    /// Ticks since the node started: the leader's clock for leases.
    ticks: u64,
    /// Leader: a TimeoutNow was sent in this term, so another node may be elected inside this
    /// leader's lease (a transfer's vote request bypasses it): no more lease reads this term.
    lease_revoked: bool,
    read_only: ReadOnly,
    /// Leader: read requests that arrived before it committed an entry of its term, (from, ctx).
    pending_reads: Vec<(u64, Vec<u8>)>,
    /// Confirmed reads for the application.
    pub(crate) read_states: Vec<ReadState>,
    /// The storage error that stopped this node; nothing is done once it is set.
    pub(crate) fatal: Option<Arc<Error>>,
    config: Config,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(config: &Config, storage: S) -> Result<Raft<S>, NewNodeError> {
        let state = storage.initial_state()?;
        let log = RaftLog::new(storage, config.applied)?;
        let (membership, was_voter) = membership_at_applied(&log, &state.conf_state, config.id)?;
        let mut r = Raft {
            id: config.id,
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            role: Role::Follower,
            leader_id: 0,
            log,
            membership,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            self_vote_pending: false,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            transfer_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            rng: Rng::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            uncommitted_bytes: 0,
            bcast_pending: false,
            pending_conf_index: 0,
            lead_transferee: 0,
            leaving: false,
            campaign_when_applied: false,
            was_voter,
            ticks: 0,
            lease_revoked: false,
            read_only: ReadOnly::default(),
            pending_reads: Vec::new(),
            read_states: Vec::new(),
            fatal: None,
            config: config.clone(),
        };
        let term = r.term;
        r.become_follower(term, 0);
        Ok(r)
    }

    pub(crate) fn max_committed_size_per_ready(&self) -> u64 {
        self.config.max_committed_size_per_ready
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    /// Records a storage error: the node stops (every later call reports it).
    pub(crate) fn stop_on(&mut self, result: crate::Result<()>) {
        if let Err(e) = result
            && self.fatal.is_none()
        {
            self.fatal = Some(Arc::new(e));
        }
    }

    /// A voter (of either half) and not waiting to install a snapshot.
    fn promotable(&self) -> bool {
        self.membership.is_voter(self.id) && !self.log.has_pending_snapshot()
    }

    /// A non-voter (a learner, or a node removed or demoted) that holds entries it does not know
    /// committed campaigns as a caretaker when it hears from no leader: otherwise, if the leader
    /// that removed or demoted itself is gone, the voters left may count it (not knowing the
    /// change committed) while its longer log refuses them its vote, and no one could ever win
    /// (the simulator found this). Elected, it only hands leadership to the most caught-up voter.
    /// A caught-up learner (everything it holds known committed) never campaigns.
    fn caretaker(&self) -> bool {
        // A node that never voted is in no one's view of the voters: its log blocks no one.
        self.was_voter
            && !self.membership.is_voter(self.id)
            && !self.membership.voters.is_empty()
            && !self.log.has_pending_snapshot()
            && self.log.last_index() > self.log.committed
    }

    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        // Forwarded requests travel like local ones, without a term.
        if m.term == 0 && !matches!(m.kind, MessageType::Propose | MessageType::ReadIndex) {
            m.term = self.term;
        }
        let after_persist = matches!(
            m.kind,
            MessageType::AppendResponse | MessageType::RequestVoteResponse | MessageType::RequestPreVoteResponse
        ) && !m.reject;
        if after_persist { self.msgs_after_persist.push(m) } else { self.msgs.push(m) }
    }

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.leader_id = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.transfer_elapsed = 0;
        let e = self.config.election_tick;
        self.randomized_election_timeout = e + self.rng.below(e as u64) as usize;
        self.votes.clear();
        self.self_vote_pending = false;
        self.uncommitted_bytes = 0;
        self.lead_transferee = 0;
        self.leaving = false;
        self.campaign_when_applied = false;
        self.lease_revoked = false;
        self.read_only = ReadOnly::default();
        self.pending_reads.clear();
        let last = self.log.last_index();
        self.progress = self.membership.ids().into_iter().map(|id| (id, self.new_progress(id, last))).collect();
    }

    fn new_progress(&self, id: u64, last: u64) -> Progress {
        let mut p = Progress::new(last + 1, self.config.max_inflight_msgs, self.config.max_inflight_bytes);
        if id == self.id {
            p.matched = self.log.persisted_index();
        }
        p
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader: u64) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader_id = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert!(self.role != Role::Leader, "a leader does not pre-campaign");
        // No term change and no vote: a pre-vote changes nothing that must be persisted.
        self.votes.clear();
        self.self_vote_pending = false;
        self.role = Role::PreCandidate;
        self.leader_id = 0;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader, "a leader does not campaign");
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.self_vote_pending = true;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(self.role == Role::Candidate, "only a candidate becomes leader");
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader_id = self.id;
        let id = self.id;
        if let Some(p) = self.progress.get_mut(&id) {
            p.become_replicate();
            p.recent_active = true;
        }
        // Any membership change in the log may still be unapplied: none is proposed until
        // everything up to here is applied (etcd's conservative rule).
        self.pending_conf_index = self.log.last_index();
        // An entry of the new term at once, so earlier entries can commit through it (§5.4.2).
        let index = self.log.last_index() + 1;
        self.log.append(&[Entry::new(index, term, Vec::new())]);
        if !self.membership.is_voter(self.id) {
            // A caretaker: it leads only to pass its log on to a voter.
            self.leaving = true;
            self.hand_over();
        }
    }

    /// Starts an election (or a pre-election) if this node may.
    pub(crate) fn hup(&mut self, transfer: bool) -> crate::Result<()> {
        if self.role == Role::Leader
            || !(self.promotable() || self.caretaker())
            || self.log.has_unapplied_conf_changes()?
        {
            return Ok(());
        }
        if self.config.pre_vote && !transfer { self.campaign(true, false) } else { self.campaign(false, transfer) }
    }

    fn campaign(&mut self, pre: bool, transfer: bool) -> crate::Result<()> {
        let (kind, term) = if pre {
            self.become_pre_candidate();
            (MessageType::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::RequestVote, self.term)
        };
        if pre {
            // A pre-vote for oneself needs no persistence.
            let id = self.id;
            if self.poll(id, true) == VoteResult::Won {
                return self.campaign(false, false);
            }
        }
        let (index, log_term) = (self.log.last_index(), self.log.last_term()?);
        let peers: Vec<u64> =
            self.membership.ids().into_iter().filter(|&v| v != self.id && self.membership.is_voter(v)).collect();
        for to in peers {
            let mut m = Message::new(kind, self.id, to, term);
            m.index = index;
            m.log_term = log_term;
            if transfer {
                m.context = CAMPAIGN_TRANSFER.to_vec();
            }
            self.send(m);
        }
        Ok(())
    }

    fn poll(&mut self, id: u64, granted: bool) -> VoteResult {
        self.votes.entry(id).or_insert(granted);
        let votes = &self.votes;
        self.membership.vote_result(|v| votes.get(&v).copied())
    }

    /// The HardState holding this candidate's own vote is persisted: count it.
    pub(crate) fn self_vote_persisted(&mut self) {
        if self.role == Role::Candidate && self.self_vote_pending && self.vote == self.id {
            self.self_vote_pending = false;
            let id = self.id;
            if self.poll(id, true) == VoteResult::Won {
                self.become_leader();
                self.bcast_append();
            }
        }
    }

    /// Entries up to `index` are persisted: the leader counts its own log.
    pub(crate) fn persisted_to(&mut self, index: u64) -> crate::Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let id = self.id;
        if let Some(p) = self.progress.get_mut(&id)
            && p.maybe_update(index)
            && self.maybe_commit()?
        {
            self.bcast_append();
        }
        Ok(())
    }

    pub(crate) fn tick(&mut self) -> crate::Result<()> {
        self.ticks += 1;
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            self.heartbeat_elapsed += 1;
            if self.election_elapsed >= self.config.election_tick {
                self.election_elapsed = 0;
                if self.config.check_quorum && !self.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, 0);
                    return Ok(());
                }
            }
            // A transfer that has not finished within an election timeout is abandoned (a
            // leaving leader tries again, perhaps with another voter). Its own clock: restarting
            // `election_elapsed` for each transfer asked would postpone CheckQuorum for ever.
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_tick && (self.lead_transferee != 0 || self.leaving) {
                self.transfer_elapsed = 0;
                self.lead_transferee = 0;
                if self.leaving {
                    self.hand_over();
                }
            }
            if self.heartbeat_elapsed >= self.config.heartbeat_tick {
                self.heartbeat_elapsed = 0;
                self.bcast_heartbeat();
            }
        } else if (self.promotable() || self.caretaker()) && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false)?;
        }
        Ok(())
    }

    /// CheckQuorum: whether a quorum was heard from since the last round; resets the marks.
    fn quorum_active(&mut self) -> bool {
        let id = self.id;
        let progress = &self.progress;
        let active = |v: u64| (v == id || progress.get(&v).is_some_and(|p| p.recent_active)).then_some(true);
        let won = self.membership.vote_result(active) == VoteResult::Won;
        for (&pid, p) in self.progress.iter_mut() {
            p.recent_active = pid == id;
        }
        won
    }

    fn maybe_commit(&mut self) -> crate::Result<bool> {
        let progress = &self.progress;
        let index = self.membership.committed_index(|v| progress.get(&v).map_or(0, |p| p.matched));
        let term = self.term;
        if !self.log.maybe_commit(index.min(self.log.last_index()), term)? {
            return Ok(false);
        }
        // Reads that waited for the first commit of this term can be answered now.
        for (from, ctx) in std::mem::take(&mut self.pending_reads) {
            self.answer_read(from, ctx);
        }
        Ok(true)
    }

    /// Sends the next append (or snapshot) to `to` if its progress allows.
    fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> crate::Result<bool> {
        let Some(p) = self.progress.get(&to) else { return Ok(false) };
        if p.is_paused() {
            return Ok(false);
        }
        let next = p.next;
        // A full window lets only an empty append out: the follower's answer to it (accepted
        // or rejected) frees the window, where a full append would overrun it.
        let window_full = p.state == ProgressState::Replicate && p.inflights.full();
        let prev_term = match self.log.term(next - 1) {
            Ok(t) => t,
            Err(Error::Compacted { .. }) => return self.send_snapshot(to),
            Err(e) => return Err(e),
        };
        let entries = if window_full {
            Vec::new()
        } else {
            match self.log.slice(next, u64::MAX, self.config.max_size_per_msg) {
                Ok(e) => e,
                Err(Error::Compacted { .. }) => return self.send_snapshot(to),
                Err(e) => return Err(e),
            }
        };
        if entries.is_empty() && !send_if_empty {
            return Ok(false);
        }
        let mut m = Message::new(MessageType::Append, self.id, to, self.term);
        m.index = next - 1;
        m.log_term = prev_term;
        m.commit = self.log.committed;
        let (last, bytes, count) = (entries.last().map_or(next - 1, |e| e.index), data_bytes(&entries), entries.len());
        m.entries = entries;
        self.progress.get_mut(&to).expect("checked above").sent_append(last, bytes, count);
        self.send(m);
        Ok(true)
    }

    fn send_snapshot(&mut self, to: u64) -> crate::Result<bool> {
        // A follower not heard from lately may be gone: a snapshot is too large to send blind.
        if !self.progress.get(&to).is_some_and(|p| p.recent_active) {
            return Ok(false);
        }
        let snapshot = match self.log.storage.snapshot(0) {
            Ok(s) => s,
            // None can be served yet: retried on a later round.
            Err(Error::SnapshotTemporarilyUnavailable) => return Ok(false),
            Err(e) => return Err(e),
        };
        // A handle, not the data: the transport streams it in chunks (`snapshot_transfer`), and
        // while the handle lives the storage keeps the entries after it.
        let index = snapshot.metadata.index;
        let mut m = Message::new(MessageType::Snapshot, self.id, to, self.term);
        m.snapshot = Some(snapshot);
        if let Some(p) = self.progress.get_mut(&to) {
            p.become_snapshot(index);
        }
        self.send(m);
        Ok(true)
    }

    pub(crate) fn bcast_append(&mut self) {
        let peers: Vec<u64> = self.progress.keys().copied().filter(|&p| p != self.id).collect();
        for to in peers {
            let sent = self.maybe_send_append(to, true).map(drop);
            self.stop_on(sent);
        }
    }

    /// Heartbeats carry the context of the newest read waiting for confirmation.
    fn bcast_heartbeat(&mut self) {
        let ctx = self.read_only.last_pending_ctx().map(<[u8]>::to_vec).unwrap_or_default();
        let peers: Vec<(u64, u64)> =
            self.progress.iter().filter(|(id, _)| **id != self.id).map(|(&id, p)| (id, p.matched)).collect();
        for (to, matched) in peers {
            let mut m = Message::new(MessageType::Heartbeat, self.id, to, self.term);
            m.commit = matched.min(self.log.committed);
            m.context = ctx.clone();
            // The leader's clock, echoed in the response: when the follower's lease started.
            m.index = self.ticks;
            self.send(m);
        }
    }

    /// Appends proposals as the leader; they go to followers now and to storage in the Ready.
    pub(crate) fn propose(&mut self, entries: Vec<Entry>) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {}
            _ if self.leader_id == 0 => return Err(ProposeError::NoLeader),
            _ if self.config.disable_proposal_forwarding => return Err(ProposeError::ForwardingDisabled),
            _ => {
                let mut m = Message::new(MessageType::Propose, self.id, self.leader_id, 0);
                m.entries = entries;
                self.send(m);
                return Ok(());
            }
        }
        if self.leaving {
            return Err(ProposeError::LeaderRemoved);
        }
        if self.lead_transferee != 0 {
            return Err(ProposeError::TransferInProgress { to: self.lead_transferee });
        }
        let bytes = data_bytes(&entries);
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + bytes > self.config.max_uncommitted_size {
            return Err(ProposeError::UncommittedSizeExceeded {
                uncommitted: self.uncommitted_bytes,
                limit: self.config.max_uncommitted_size,
            });
        }
        let first_index = self.log.last_index() + 1;
        let mut conf_index = None;
        for (k, e) in entries.iter().enumerate() {
            if e.entry_type != EntryType::Normal {
                self.check_conf_change(e, conf_index.is_some())?;
                conf_index = Some(first_index + k as u64);
            }
        }
        if let Some(i) = conf_index {
            self.pending_conf_index = i;
        }
        self.uncommitted_bytes += bytes;
        let term = self.term;
        let entries: Vec<Entry> = entries
            .into_iter()
            .zip(first_index..)
            .map(|(mut e, index)| {
                e.index = index;
                e.term = term;
                e
            })
            .collect();
        self.log.append(&entries);
        // Sent when the application next asks for a Ready, so that every proposal made until
        // then travels in as few messages as the size limit allows.
        self.bcast_pending = true;
        Ok(())
    }

    /// etcd's rules for a proposed membership change: one pending at a time, a joint
    /// configuration is only left, and the change must make a valid configuration from the
    /// current one (which is the one it will apply to: every earlier change is applied).
    fn check_conf_change(&self, e: &Entry, another_in_batch: bool) -> Result<(), ProposeError> {
        let cc = ConfChange::decode(&e.data).map_err(|err| ProposeError::InvalidConfChange(err.to_string()))?;
        if another_in_batch || self.pending_conf_index > self.log.applied {
            return Err(ProposeError::ConfChangePending { index: self.pending_conf_index });
        }
        if self.membership.is_joint() && !cc.leaves_joint() {
            return Err(ProposeError::InvalidConfChange("the configuration is joint: leave it first".into()));
        }
        self.membership.apply(&cc).map(drop).map_err(ProposeError::InvalidConfChange)
    }

    /// Sends the appends that proposals made since the last Ready are waiting for.
    pub(crate) fn flush_proposals(&mut self) {
        if std::mem::take(&mut self.bcast_pending) && self.role == Role::Leader {
            self.bcast_append();
        }
    }

    /// Committed entries handed out to apply no longer count against the uncommitted limit.
    pub(crate) fn reduce_uncommitted(&mut self, entries: &[Entry]) {
        let bytes = data_bytes(entries);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(bytes);
    }

    /// Leader, once the application applied the last membership change: a joint configuration
    /// entered with auto-leave is left by proposing the empty change.
    pub(crate) fn maybe_auto_leave(&mut self) {
        if self.role == Role::Leader
            && self.membership.auto_leave
            && self.membership.is_joint()
            && self.pending_conf_index <= self.log.applied
            && self.lead_transferee == 0
        {
            let mut e = Entry::new(0, 0, ConfChange::leave_joint().encode());
            e.entry_type = EntryType::ConfChangeV2;
            // Only the uncommitted limit can refuse it; then the next advance retries.
            let _ = self.propose(vec![e]);
        }
    }

    /// The application applied what a Ready handed out: start a transfer's election that
    /// waited for a membership change to be applied.
    pub(crate) fn maybe_campaign_after_apply(&mut self) -> crate::Result<()> {
        if self.campaign_when_applied && !self.log.has_unapplied_conf_changes()? {
            self.campaign_when_applied = false;
            return self.hup(true);
        }
        Ok(())
    }

    /// Makes `next` the configuration (the application applied a committed change).
    pub(crate) fn switch_to(&mut self, next: Membership) {
        self.membership = next;
        self.was_voter |= self.membership.is_voter(self.id);
        let last = self.log.last_index();
        let ids = self.membership.ids();
        self.progress.retain(|id, _| ids.contains(id));
        for id in ids {
            if !self.progress.contains_key(&id) {
                let p = self.new_progress(id, last);
                self.progress.insert(id, p);
            }
        }
        if self.role != Role::Leader {
            return;
        }
        if !self.membership.is_voter(self.id) {
            // Removed (or demoted): the change is committed, so leave. Not at once: the voters
            // left may not know the change committed, and may still count nodes with longer
            // logs (this one, say) that no longer campaign, so none of them could win. Hand
            // leadership to the most caught-up voter instead; not being a voter, this node
            // never campaigns again.
            self.leaving = true;
            self.lead_transferee = 0;
            self.hand_over();
            return;
        }
        if self.lead_transferee != 0 && !self.membership.is_voter(self.lead_transferee) {
            self.lead_transferee = 0;
        }
        // The quorum changed: something may be committed now, and new nodes need the log.
        let committed = self.maybe_commit();
        match committed {
            Ok(true) => self.bcast_append(),
            Ok(false) => {
                let peers: Vec<u64> = self.progress.keys().copied().filter(|&p| p != self.id).collect();
                for to in peers {
                    let sent = self.maybe_send_append(to, false).map(drop);
                    self.stop_on(sent);
                }
            }
            Err(e) => self.stop_on(Err(e)),
        }
    }

    pub(crate) fn report_unreachable(&mut self, id: u64) {
        if let Some(p) = self.progress.get_mut(&id)
            && p.state == ProgressState::Replicate
        {
            p.become_probe();
        }
    }

    /// The application's report on a snapshot it was sending to `id`: either way the follower
    /// leaves the Snapshot state and is probed after its next heartbeat response (on failure
    /// the snapshot is forgotten, so the probe may send a new one).
    pub(crate) fn report_snapshot(&mut self, id: u64, failed: bool) {
        if let Some(p) = self.progress.get_mut(&id)
            && p.state == ProgressState::Snapshot
        {
            if failed {
                p.pending_snapshot = 0;
            }
            p.become_probe();
            p.paused = true;
        }
    }

    /// A read request from the application (`from` is this node) or a follower.
    pub(crate) fn read_index(&mut self, from: u64, ctx: Vec<u8>) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            if self.leader_id == 0 {
                return Err(ProposeError::NoLeader);
            }
            let mut m = Message::new(MessageType::ReadIndex, self.id, self.leader_id, 0);
            m.context = ctx;
            self.send(m);
            return Ok(());
        }
        // Thesis §6.4: until an entry of its own term commits, a new leader does not know the
        // latest commit index; the request waits for it. A single voter too (etcd answers it at
        // once): after a restart its commit index may be below what it committed before, since a
        // commit-only HardState change is not synced (the simulator found the stale read).
        if !self.committed_in_current_term() {
            self.pending_reads.push((from, ctx));
            return Ok(());
        }
        self.answer_read(from, ctx);
        Ok(())
    }

    fn committed_in_current_term(&self) -> bool {
        matches!(self.log.term_if_held(self.log.committed), Ok(Some(t)) if t == self.term)
    }

    fn answer_read(&mut self, from: u64, ctx: Vec<u8>) {
        let commit = self.log.committed;
        // A single voter is its own quorum; a valid lease vouches that no other leader exists.
        // Otherwise (the safe mode, or no lease to rely on now) a heartbeat round confirms it.
        let at_once = self.membership.is_singleton(self.id)
            || (self.config.read_only_option == ReadOnlyOption::LeaseBased && self.lease_valid());
        if at_once {
            self.respond_read(from, commit, ctx);
        } else {
            let id = self.id;
            self.read_only.add_request(commit, ctx, from, id);
            self.bcast_heartbeat();
        }
    }

    /// Whether no other leader can have been elected: a quorum (of both halves while joint)
    /// answered heartbeats sent less than `election_tick - 2` ticks ago, and each of them refuses
    /// other candidates for `election_tick` ticks from when it heard one (2 ticks of margin for
    /// where within a tick a heartbeat arrives). Measured from the heartbeats answered, not from
    /// the CheckQuorum period, which may lag by an election timeout. Assumes followers' clocks
    /// run at most `election_tick / (election_tick - 2)` times as fast as the leader's.
    fn lease_valid(&self) -> bool {
        if self.lease_revoked {
            return false;
        }
        let (now, id) = (self.ticks, self.id);
        let lease = self.config.election_tick as u64;
        let progress = &self.progress;
        let fresh = |v: u64| {
            (v == id || progress.get(&v).and_then(|p| p.lease_tick).is_some_and(|t| t + lease > now + 2))
                .then_some(true)
        };
        self.membership.vote_result(fresh) == VoteResult::Won
    }

    fn respond_read(&mut self, from: u64, index: u64, ctx: Vec<u8>) {
        if from == self.id {
            self.read_states.push(ReadState { index, request_ctx: ctx });
        } else {
            let mut m = Message::new(MessageType::ReadIndexResponse, self.id, from, self.term);
            m.index = index;
            m.context = ctx;
            self.send(m);
        }
    }

    /// The application asks to hand leadership to `to` (here, or forwarded to the leader).
    pub(crate) fn transfer_leader(&mut self, to: u64) {
        if to == 0 {
            return; // no node; on the wire 0 would mean the sender itself
        }
        match self.role {
            Role::Leader => self.handle_transfer_leader(to),
            _ if self.leader_id != 0 => {
                // The target travels in `index` (see `MessageType::TransferLeader`), so `from`
                // stays the sender: a transport checks it against the connection's peer.
                let mut m = Message::new(MessageType::TransferLeader, self.id, self.leader_id, self.term);
                m.index = to;
                self.msgs.push(m);
            }
            _ => {}
        }
    }

    /// A leaving leader transfers leadership to the voter with the highest match (or steps
    /// down if there is none).
    fn hand_over(&mut self) {
        let id = self.id;
        let target = self
            .progress
            .iter()
            .filter(|&(&v, _)| v != id && self.membership.is_voter(v))
            .max_by_key(|&(&v, p)| (p.matched, std::cmp::Reverse(v)))
            .map(|(&v, _)| v);
        match target {
            Some(to) => self.handle_transfer_leader(to),
            None => {
                let term = self.term;
                self.become_follower(term, 0);
            }
        }
    }

    /// Tells the transfer target to campaign now. A leaving leader steps down as it does.
    fn send_timeout_now(&mut self, to: u64) {
        self.send(Message::new(MessageType::TimeoutNow, self.id, to, self.term));
        self.lease_revoked = true;
        if self.leaving {
            let term = self.term;
            self.become_follower(term, 0);
        }
    }

    fn handle_transfer_leader(&mut self, to: u64) {
        if !self.membership.is_voter(to) || to == self.id || self.lead_transferee == to {
            return; // learners and strangers cannot lead; a transfer to itself is a no-op
        }
        self.lead_transferee = to;
        // The transfer is abandoned if it has not finished within an election timeout.
        self.transfer_elapsed = 0;
        let caught_up = self.progress.get(&to).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            let sent = self.maybe_send_append(to, true).map(drop);
            self.stop_on(sent);
        }
    }

    /// Handles a message from a peer.
    pub(crate) fn step(&mut self, m: Message) -> Result<(), ProposeError> {
        match m.kind {
            MessageType::Propose if self.role == Role::Leader => return self.propose(m.entries),
            // Forwarded to a node that is no longer leader.
            MessageType::Propose | MessageType::ReadIndex if self.role != Role::Leader => {
                return Err(ProposeError::NoLeader);
            }
            MessageType::ReadIndex => return self.read_index(m.from, m.context),
            _ => {}
        }
        let vote_request = matches!(m.kind, MessageType::RequestVote | MessageType::RequestPreVote);
        if m.term > self.term {
            if vote_request {
                // A node that believes a leader is alive ignores disruptive votes (§9.6), unless
                // the leader itself asked for the election (leadership transfer).
                let in_lease = self.config.check_quorum
                    && self.leader_id != 0
                    && self.election_elapsed < self.config.election_tick
                    && m.context != CAMPAIGN_TRANSFER;
                if in_lease {
                    return Ok(());
                }
            }
            match m.kind {
                MessageType::RequestPreVote => {}
                MessageType::RequestPreVoteResponse if !m.reject => {}
                MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                    self.become_follower(m.term, m.from)
                }
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            if (self.config.check_quorum || self.config.pre_vote)
                && matches!(m.kind, MessageType::Append | MessageType::Heartbeat)
            {
                // A stale leader learns our term and steps down.
                self.send(Message::new(MessageType::AppendResponse, self.id, m.from, self.term));
            } else if m.kind == MessageType::RequestPreVote {
                let mut r = Message::new(MessageType::RequestPreVoteResponse, self.id, m.from, self.term);
                r.reject = true;
                self.send(r);
            }
            return Ok(());
        }
        let result = if vote_request {
            self.handle_vote_request(m)
        } else {
            match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            }
        };
        self.stop_on(result);
        Ok(())
    }

    fn handle_vote_request(&mut self, m: Message) -> crate::Result<()> {
        let pre = m.kind == MessageType::RequestPreVote;
        let can_vote = self.vote == m.from || (self.vote == 0 && self.leader_id == 0) || (pre && m.term > self.term);
        let kind = if pre { MessageType::RequestPreVoteResponse } else { MessageType::RequestVoteResponse };
        if can_vote && self.log.is_up_to_date(m.index, m.log_term)? {
            // A pre-vote answers in the term asked about; a vote is in our (now equal) term.
            let mut r = Message::new(kind, self.id, m.from, m.term);
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
            r.reject = false;
            self.send(r);
        } else {
            let mut r = Message::new(kind, self.id, m.from, self.term);
            r.reject = true;
            self.send(r);
        }
        Ok(())
    }

    fn step_leader(&mut self, m: Message) -> crate::Result<()> {
        let from = m.from;
        if m.kind == MessageType::TransferLeader {
            self.handle_transfer_leader(transfer_target(&m));
            return Ok(());
        }
        let Some(p) = self.progress.get_mut(&from) else { return Ok(()) };
        p.recent_active = true;
        match m.kind {
            MessageType::AppendResponse if m.reject => {
                let hint = if m.log_term > 0 {
                    self.log.find_conflict_by_term(m.reject_hint, m.log_term)?
                } else {
                    m.reject_hint
                };
                let p = self.progress.get_mut(&from).expect("present");
                if p.maybe_decr_to(m.index, hint) {
                    if p.state == ProgressState::Replicate {
                        p.become_probe();
                    }
                    self.maybe_send_append(from, true)?;
                }
            }
            MessageType::AppendResponse => self.handle_append_response(from, m.index)?,
            MessageType::HeartbeatResponse => {
                p.paused = false;
                // Never later than now, whatever the peer claims.
                let sent = m.index.min(self.ticks);
                p.lease_tick = Some(p.lease_tick.map_or(sent, |t| t.max(sent)));
                // The snapshot may have been lost: after an election timeout of heartbeats
                // with no answer to it, probe again (which resends it if still needed).
                if p.state == ProgressState::Snapshot {
                    p.snapshot_wait += 1;
                    if p.snapshot_wait >= self.config.election_tick {
                        p.become_probe();
                    }
                }
                // A follower behind, or one being probed, gets an append (an empty one if the
                // window is full): its answer moves replication on.
                if p.matched < self.log.last_index() || p.state == ProgressState::Probe {
                    self.maybe_send_append(from, true)?;
                }
                if !m.context.is_empty() && self.read_only.recv_ack(from, &m.context, &self.membership) {
                    for read in self.read_only.advance(&m.context) {
                        self.respond_read(read.from, read.index, read.ctx);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append_response(&mut self, from: u64, index: u64) -> crate::Result<()> {
        // No follower holds entries of this term that this leader never had: an acknowledgement
        // past the last index is from a broken or hostile peer (found by the message fuzzer: it
        // made the leader read beyond its log).
        if index > self.log.last_index() {
            return Ok(());
        }
        let first_index = self.log.first_index()?;
        let p = self.progress.get_mut(&from).expect("present");
        let old_paused = p.is_paused();
        // An acknowledgement of exactly `matched` while probing also proves where the logs
        // match (the answer to an empty probe of a caught-up follower): replicate from there.
        let probe_matched = p.state == ProgressState::Probe && p.matched == index;
        if !p.maybe_update(index) && !probe_matched {
            if old_paused && !p.is_paused() {
                self.maybe_send_append(from, false)?;
            }
            return Ok(());
        }
        match p.state {
            ProgressState::Probe => p.become_replicate(),
            // The follower installed the snapshot (or caught up otherwise): the log continues
            // right after it, so pipelining starts at once.
            ProgressState::Snapshot if p.matched + 1 >= first_index => p.become_replicate(),
            ProgressState::Replicate => p.inflights.free_to(index),
            ProgressState::Snapshot => {}
        }
        if self.maybe_commit()? {
            self.bcast_append();
        } else {
            while self.maybe_send_append(from, false)? {}
        }
        if from == self.lead_transferee && self.progress.get(&from).is_some_and(|p| p.matched == self.log.last_index())
        {
            self.send_timeout_now(from);
        }
        Ok(())
    }

    fn step_candidate(&mut self, m: Message) -> crate::Result<()> {
        match m.kind {
            MessageType::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append(m)?;
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m)?;
            }
            MessageType::RequestPreVoteResponse | MessageType::RequestVoteResponse => {
                let expected = if self.role == Role::PreCandidate {
                    MessageType::RequestPreVoteResponse
                } else {
                    MessageType::RequestVoteResponse
                };
                if m.kind != expected {
                    return Ok(());
                }
                match self.poll(m.from, !m.reject) {
                    VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false, false)?,
                    // The others' votes alone are a quorum, but this node's term and vote are
                    // not durable yet (its disk may be full: partial Readies would carry a
                    // leader's messages out meanwhile). A leader never acts in a term it could
                    // forget in a crash and lead again: it leads once its vote is persisted
                    // (`self_vote_persisted` counts the votes again).
                    VoteResult::Won if self.self_vote_pending => {}
                    VoteResult::Won => {
                        self.become_leader();
                        self.bcast_append();
                    }
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, 0);
                    }
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn step_follower(&mut self, m: Message) -> crate::Result<()> {
        match m.kind {
            MessageType::Append => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append(m)?;
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m)?;
            }
            MessageType::TimeoutNow if self.log.has_unapplied_conf_changes()? => self.campaign_when_applied = true,
            MessageType::TimeoutNow => self.hup(true)?,
            MessageType::TransferLeader if self.leader_id != 0 => {
                let mut fwd = m;
                fwd.index = transfer_target(&fwd);
                fwd.from = self.id;
                fwd.to = self.leader_id;
                self.msgs.push(fwd);
            }
            MessageType::ReadIndexResponse => {
                self.read_states.push(ReadState { index: m.index, request_ctx: m.context });
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append(&mut self, m: Message) -> crate::Result<()> {
        // `RawNode::step` dropped any Append whose entries do not follow `index` one by one.
        let mut r = Message::new(MessageType::AppendResponse, self.id, m.from, self.term);
        if m.index < self.log.committed {
            r.index = self.log.committed;
            self.send(r);
            return Ok(());
        }
        match self.log.maybe_append(m.index, m.log_term, m.commit, &m.entries)? {
            Some((last, replaced)) => {
                if let Some(at) = replaced {
                    self.drop_acks_from(at);
                }
                r.index = last;
                self.send(r);
            }
            None => {
                // Fast backtracking: point the leader at our last entry whose term is at most
                // the term it expected, so a diverged follower is repaired in a few rounds.
                let hint = self.log.find_conflict_by_term(m.index.min(self.log.last_index()), m.log_term)?;
                r.index = m.index;
                r.reject = true;
                r.reject_hint = hint;
                r.log_term = self.log.term_if_held(hint)?.unwrap_or(0);
                self.send(r);
            }
        }
        Ok(())
    }

    /// Entries from `index` on were replaced before they were persisted: acknowledgements
    /// waiting for persistence that cover them would promise what storage will never hold (a
    /// stale leader could count them towards commit). They are dropped; the leader retries.
    fn drop_acks_from(&mut self, index: u64) {
        self.msgs_after_persist.retain(|m| m.kind != MessageType::AppendResponse || m.index < index);
    }

    fn handle_heartbeat(&mut self, m: Message) {
        let commit = m.commit.min(self.log.last_index());
        self.log.commit_to(commit);
        let mut r = Message::new(MessageType::HeartbeatResponse, self.id, m.from, self.term);
        r.context = m.context;
        r.index = m.index;
        self.send(r);
    }

    fn handle_snapshot(&mut self, m: Message) -> crate::Result<()> {
        let Some(snapshot) = m.snapshot else { return Ok(()) };
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        let mut r = Message::new(MessageType::AppendResponse, self.id, m.from, self.term);
        if index <= self.log.committed {
            r.index = self.log.committed;
        } else if self.log.match_term(index, term)? {
            // We already hold the entry it ends with: commit through it instead. Entries after
            // it may be an older leader's, so claim only what is committed (etcd does the same).
            self.log.commit_to(index);
            r.index = self.log.committed;
        } else {
            // `RawNode::step` checked the membership is valid. It may not list this node (etcd
            // ignores such a snapshot): a joining node starts from the bootstrap configuration
            // with an empty log, and the leader's newest snapshot may predate the change that
            // added it, which then comes in the entries after the snapshot. Until it is
            // applied this node is not a voter, so it does not campaign.
            let next = Membership::from_conf_state(&snapshot.metadata.conf_state).expect("validated");
            self.drop_acks_from(0);
            self.log.restore(snapshot);
            self.switch_to(next);
            r.index = index;
        }
        self.send(r);
        Ok(())
    }
}

/// The configuration as of the applied index, rebuilt at start: the newest snapshot's ConfState
/// (or, before any snapshot, the bootstrap ConfState in storage), then every membership change
/// in the log up to the applied index, in order. Nothing the application persisted after a
/// change is needed, so no crash between applying a change and recording the applied index can
/// leave the two disagreeing (a ConfState written apart from the applied index either replays a
/// change twice or loses it).
/// Also returns whether `id` is a voter in any configuration seen on the way.
fn membership_at_applied<S: Storage>(
    log: &RaftLog<S>,
    bootstrap: &crate::storage::ConfState,
    id: u64,
) -> Result<(Membership, bool), NewNodeError> {
    let applied = log.applied;
    let snapshot = match log.storage.snapshot(0) {
        Ok(s) if s.metadata.index > 0 => Some((s.metadata.index, s.metadata.conf_state.clone())),
        Ok(_) | Err(Error::SnapshotTemporarilyUnavailable) => None,
        Err(e) => return Err(e.into()),
    };
    let first = log.storage.first_index()?;
    let (base, conf) = match snapshot {
        Some((index, cs)) if index <= applied => (index, cs),
        // Below the snapshot: the configuration there is known only if the log starts at 1.
        _ if first == 1 => (0, bootstrap.clone()),
        Some((index, _)) => return Err(NewNodeError::MembershipUnknown { applied, snapshot: index }),
        None => (first - 1, bootstrap.clone()),
    };
    let mut m = Membership::from_conf_state(&conf).map_err(NewNodeError::ConfState)?;
    let mut was_voter = m.is_voter(id) || bootstrap.voters.contains(&id) || bootstrap.voters_outgoing.contains(&id);
    let mut lo = base + 1;
    while lo <= applied {
        let page = log.storage.entries(lo, applied + 1, 1 << 20)?;
        for e in &page {
            if e.entry_type != EntryType::Normal {
                let cc = ConfChange::decode(&e.data)
                    .map_err(|err| NewNodeError::ConfState(format!("entry {}: {err}", e.index)))?;
                m = m.apply(&cc).map_err(|err| NewNodeError::ConfState(format!("entry {}: {err}", e.index)))?;
                was_voter |= m.is_voter(id);
            }
        }
        match page.last() {
            Some(e) => lo = e.index + 1,
            None => break,
        }
    }
    Ok((m, was_voter))
}

/// The node a TransferLeader message asks leadership for: `index` when set (a node asking on
/// another's behalf), else the sender (etcd's convention: a node asking for itself).
fn transfer_target(m: &Message) -> u64 {
    if m.index != 0 { m.index } else { m.from }
}
