//! The Raft state machine: roles, elections, replication, commitment. Deterministic: driven only
//! by `tick`, `step`, proposals and persistence reports; randomness comes from a seeded
//! generator.
//!
//! Invariants (checked by the simulator in `tests/raft_sim.rs`):
//! - the term never decreases, and a vote once cast in a term never changes;
//! - a vote reaches the candidate only after the HardState recording it is persisted (it goes
//!   out with `Ready::persisted_messages`); a candidate counts its own vote only once persisted;
//! - a follower acknowledges entries only after they are persisted (same path);
//! - the leader counts its own log towards commit only up to what it has persisted, and commits
//!   only through an entry of its own term (§5.4.2);
//! - `commit` never decreases.

use super::config::Config;
use super::log::RaftLog;
use super::message::{Message, MessageType};
use super::progress::{Progress, ProgressState};
use super::raw_node::NewNodeError;
use super::{ProposeError, Role, data_bytes};
use crate::rng::Rng;
use crate::storage::{Entry, HardState, Storage};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoteResult {
    Won,
    Lost,
    Pending,
}

#[derive(Debug)]
pub(crate) struct Raft<S: Storage> {
    pub(crate) id: u64,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) role: Role,
    pub(crate) leader_id: u64,
    pub(crate) log: RaftLog<S>,
    pub(crate) voters: BTreeSet<u64>,
    pub(crate) learners: BTreeSet<u64>,
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
    randomized_election_timeout: usize,
    rng: Rng,
    uncommitted_bytes: u64,
    /// Proposals were appended and not yet sent to followers.
    bcast_pending: bool,
    config: Config,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(config: &Config, storage: S) -> Result<Raft<S>, NewNodeError> {
        let state = storage.initial_state()?;
        let log = RaftLog::new(storage, config.applied)?;
        let mut r = Raft {
            id: config.id,
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            role: Role::Follower,
            leader_id: 0,
            log,
            voters: state.conf_state.voters.iter().copied().collect(),
            learners: state.conf_state.learners.iter().copied().collect(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            self_vote_pending: false,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            rng: Rng::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            uncommitted_bytes: 0,
            bcast_pending: false,
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

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn promotable(&self) -> bool {
        self.voters.contains(&self.id)
    }

    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        if m.term == 0 && m.kind != MessageType::Propose {
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
        let e = self.config.election_tick;
        self.randomized_election_timeout = e + self.rng.below(e as u64) as usize;
        self.votes.clear();
        self.self_vote_pending = false;
        self.uncommitted_bytes = 0;
        let (last, persisted) = (self.log.last_index(), self.log.persisted_index());
        let (max_msgs, max_bytes) = (self.config.max_inflight_msgs, self.config.max_inflight_bytes);
        self.progress = self
            .voters
            .iter()
            .chain(&self.learners)
            .map(|&id| {
                let mut p = Progress::new(last + 1, max_msgs, max_bytes);
                if id == self.id {
                    p.matched = persisted;
                }
                (id, p)
            })
            .collect();
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
        // An entry of the new term at once, so earlier entries can commit through it (§5.4.2).
        let index = self.log.last_index() + 1;
        self.log.append(&[Entry::new(index, term, Vec::new())]);
    }

    /// Starts an election (or a pre-election) if this node may.
    pub(crate) fn hup(&mut self) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.config.pre_vote { self.campaign(true) } else { self.campaign(false) }
    }

    fn campaign(&mut self, pre: bool) {
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
                self.campaign(false);
                return;
            }
        }
        let (index, log_term) = (self.log.last_index(), self.log.last_term());
        let peers: Vec<u64> = self.voters.iter().copied().filter(|&v| v != self.id).collect();
        for to in peers {
            let mut m = Message::new(kind, self.id, to, term);
            m.index = index;
            m.log_term = log_term;
            self.send(m);
        }
    }

    fn poll(&mut self, id: u64, granted: bool) -> VoteResult {
        self.votes.entry(id).or_insert(granted);
        let yes = self.voters.iter().filter(|v| self.votes.get(v) == Some(&true)).count();
        let no = self.voters.iter().filter(|v| self.votes.get(v) == Some(&false)).count();
        if yes >= self.quorum() {
            VoteResult::Won
        } else if self.voters.len() - no < self.quorum() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
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
    pub(crate) fn persisted_to(&mut self, index: u64) {
        if self.role != Role::Leader {
            return;
        }
        let id = self.id;
        if let Some(p) = self.progress.get_mut(&id)
            && p.maybe_update(index)
            && self.maybe_commit()
        {
            self.bcast_append();
        }
    }

    pub(crate) fn tick(&mut self) {
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            self.heartbeat_elapsed += 1;
            if self.election_elapsed >= self.config.election_tick {
                self.election_elapsed = 0;
                if self.config.check_quorum && !self.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, 0);
                    return;
                }
            }
            if self.heartbeat_elapsed >= self.config.heartbeat_tick {
                self.heartbeat_elapsed = 0;
                self.bcast_heartbeat();
            }
        } else if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup();
        }
    }

    /// CheckQuorum: whether a quorum was heard from since the last round; resets the marks.
    fn quorum_active(&mut self) -> bool {
        let id = self.id;
        let active =
            self.voters.iter().filter(|v| **v == id || self.progress.get(v).is_some_and(|p| p.recent_active)).count();
        for (&pid, p) in self.progress.iter_mut() {
            p.recent_active = pid == id;
        }
        active >= self.quorum()
    }

    fn maybe_commit(&mut self) -> bool {
        let mut matched: Vec<u64> = self.voters.iter().map(|v| self.progress.get(v).map_or(0, |p| p.matched)).collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&index) = matched.get(self.quorum() - 1) else { return false };
        let term = self.term;
        self.log.maybe_commit(index, term)
    }

    /// Sends the next append (or snapshot) to `to` if its progress allows.
    fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let Some(p) = self.progress.get(&to) else { return false };
        if p.is_paused() {
            return false;
        }
        let next = p.next;
        let prev_term = self.log.term(next - 1);
        let entries = self.log.slice(next, u64::MAX, self.config.max_size_per_msg);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(t), Ok(e)) => (t, e),
            _ => return self.send_snapshot(to),
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let mut m = Message::new(MessageType::Append, self.id, to, self.term);
        m.index = next - 1;
        m.log_term = prev_term;
        m.commit = self.log.committed;
        let (last, bytes, count) = (entries.last().map_or(next - 1, |e| e.index), data_bytes(&entries), entries.len());
        m.entries = entries;
        self.progress.get_mut(&to).expect("checked above").sent_append(last, bytes, count);
        self.send(m);
        true
    }

    fn send_snapshot(&mut self, to: u64) -> bool {
        let snapshot = match self.log.storage.snapshot(0) {
            Ok(s) => s,
            Err(_) => return false, // not ready yet (or none): retried on a later round
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
        true
    }

    pub(crate) fn bcast_append(&mut self) {
        let peers: Vec<u64> = self.progress.keys().copied().filter(|&p| p != self.id).collect();
        for to in peers {
            self.maybe_send_append(to, true);
        }
    }

    fn bcast_heartbeat(&mut self) {
        let peers: Vec<(u64, u64)> =
            self.progress.iter().filter(|(id, _)| **id != self.id).map(|(&id, p)| (id, p.matched)).collect();
        for (to, matched) in peers {
            let mut m = Message::new(MessageType::Heartbeat, self.id, to, self.term);
            m.commit = matched.min(self.log.committed);
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
        let bytes = data_bytes(&entries);
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + bytes > self.config.max_uncommitted_size {
            return Err(ProposeError::UncommittedSizeExceeded {
                uncommitted: self.uncommitted_bytes,
                limit: self.config.max_uncommitted_size,
            });
        }
        self.uncommitted_bytes += bytes;
        let mut index = self.log.last_index();
        let term = self.term;
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|mut e| {
                index += 1;
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

    pub(crate) fn report_unreachable(&mut self, id: u64) {
        if let Some(p) = self.progress.get_mut(&id)
            && p.state == ProgressState::Replicate
        {
            p.become_probe();
        }
    }

    /// Handles a message from a peer.
    pub(crate) fn step(&mut self, m: Message) -> Result<(), ProposeError> {
        if m.kind == MessageType::Propose {
            if self.role == Role::Leader {
                return self.propose(m.entries);
            }
            return Err(ProposeError::NoLeader); // forwarded to a node that is no longer leader
        }
        let vote_request = matches!(m.kind, MessageType::RequestVote | MessageType::RequestPreVote);
        if m.term > self.term {
            if vote_request {
                // A node that believes a leader is alive ignores disruptive votes (§9.6).
                let in_lease = self.config.check_quorum
                    && self.leader_id != 0
                    && self.election_elapsed < self.config.election_tick;
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
        if vote_request {
            self.handle_vote_request(m);
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
        Ok(())
    }

    fn handle_vote_request(&mut self, m: Message) {
        let pre = m.kind == MessageType::RequestPreVote;
        let can_vote = self.vote == m.from || (self.vote == 0 && self.leader_id == 0) || (pre && m.term > self.term);
        let kind = if pre { MessageType::RequestPreVoteResponse } else { MessageType::RequestVoteResponse };
        if can_vote && self.log.is_up_to_date(m.index, m.log_term) {
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
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        let Some(p) = self.progress.get_mut(&from) else { return };
        p.recent_active = true;
        match m.kind {
            MessageType::AppendResponse if m.reject => {
                let hint = if m.log_term > 0 {
                    self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                } else {
                    m.reject_hint
                };
                let p = self.progress.get_mut(&from).expect("present");
                if p.maybe_decr_to(m.index, hint) {
                    if p.state == ProgressState::Replicate {
                        p.become_probe();
                    }
                    self.maybe_send_append(from, true);
                }
            }
            MessageType::AppendResponse => {
                let p = self.progress.get_mut(&from).expect("present");
                let old_paused = p.is_paused();
                if !p.maybe_update(m.index) {
                    if old_paused && !p.is_paused() {
                        self.maybe_send_append(from, false);
                    }
                    return;
                }
                match p.state {
                    ProgressState::Probe => p.become_replicate(),
                    ProgressState::Snapshot if p.matched >= p.pending_snapshot => p.become_probe(),
                    ProgressState::Replicate => p.inflights.free_to(m.index),
                    ProgressState::Snapshot => {}
                }
                if self.maybe_commit() {
                    self.bcast_append();
                } else {
                    while self.maybe_send_append(from, false) {}
                }
            }
            MessageType::HeartbeatResponse => {
                p.paused = false;
                match p.state {
                    // Appends may have been lost: free a slot so one more goes out, which the
                    // follower either accepts or rejects (moving us back to probing).
                    ProgressState::Replicate if p.inflights.full() => p.inflights.free_first(),
                    // The snapshot may have been lost: after an election timeout of heartbeats
                    // with no answer to it, probe again (which resends it if still needed).
                    ProgressState::Snapshot => {
                        p.snapshot_wait += 1;
                        if p.snapshot_wait >= self.config.election_tick {
                            p.become_probe();
                        }
                    }
                    _ => {}
                }
                if p.matched < self.log.last_index() {
                    self.maybe_send_append(from, true);
                }
            }
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.kind {
            MessageType::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            MessageType::RequestPreVoteResponse | MessageType::RequestVoteResponse => {
                let expected = if self.role == Role::PreCandidate {
                    MessageType::RequestPreVoteResponse
                } else {
                    MessageType::RequestVoteResponse
                };
                if m.kind != expected {
                    return;
                }
                match self.poll(m.from, !m.reject) {
                    VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false),
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
    }

    fn step_follower(&mut self, m: Message) {
        match m.kind {
            MessageType::Append => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m);
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, m: Message) {
        // `RawNode::step` dropped any Append whose entries do not follow `index` one by one.
        let mut r = Message::new(MessageType::AppendResponse, self.id, m.from, self.term);
        if m.index < self.log.committed {
            r.index = self.log.committed;
            self.send(r);
            return;
        }
        match self.log.maybe_append(m.index, m.log_term, m.commit, &m.entries) {
            Some(last) => {
                r.index = last;
                self.send(r);
            }
            None => {
                // Fast backtracking: point the leader at our last entry whose term is at most
                // the term it expected, so a diverged follower is repaired in a few rounds.
                let hint = self.log.find_conflict_by_term(m.index.min(self.log.last_index()), m.log_term);
                r.index = m.index;
                r.reject = true;
                r.reject_hint = hint;
                r.log_term = self.log.term_or_zero(hint);
                self.send(r);
            }
        }
    }

    fn handle_heartbeat(&mut self, m: Message) {
        let commit = m.commit.min(self.log.last_index());
        self.log.commit_to(commit);
        self.send(Message::new(MessageType::HeartbeatResponse, self.id, m.from, self.term));
    }

    fn handle_snapshot(&mut self, m: Message) {
        let Some(snapshot) = m.snapshot else { return };
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        let mut r = Message::new(MessageType::AppendResponse, self.id, m.from, self.term);
        if index <= self.log.committed {
            r.index = self.log.committed;
        } else if self.log.match_term(index, term) {
            // We already hold the entry it ends with: commit through it instead. Entries after
            // it may be an older leader's, so claim only what is committed (etcd does the same).
            self.log.commit_to(index);
            r.index = self.log.committed;
        } else {
            let cs = &snapshot.metadata.conf_state;
            self.voters = cs.voters.iter().copied().collect();
            self.learners = cs.learners.iter().copied().collect();
            self.log.restore(snapshot);
            r.index = index;
        }
        self.send(r);
    }
}
