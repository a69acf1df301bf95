//! `RawNode`: the application's handle on a Raft state machine, with `Ready` and `advance`.
//!
//! Calling order, repeated (one thread):
//! 1. feed input: `tick`, `step` (messages from peers), `propose`, `propose_conf_change`,
//!    `read_index`, `transfer_leadership`, `campaign`;
//! 2. if `has_ready()`, take `let rd = node.ready()?`;
//! 3. send `rd.messages` at once (a leader's appends go out before its own copy is durable);
//! 4. persist, in this order: `rd.snapshot` (`apply_snapshot`), `rd.entries` (`append`),
//!    `rd.hard_state` (`set_hard_state`): `node.persist(&rd)` does exactly that;
//! 5. send `rd.persisted_messages` (votes and acknowledgements, which promise what is durable);
//! 6. apply `rd.committed_entries` to the state machine; for each membership change among
//!    them (`EntryType::ConfChangeV2`), decode it with `ConfChange::decode` and call
//!    `apply_conf_change`. Nothing about membership needs persisting: a restarted node rebuilds
//!    the configuration as of `Config::applied` from the newest snapshot's ConfState (or the
//!    bootstrap ConfState in storage) and the changes in the log after it;
//! 7. serve `rd.read_states` once the applied index reaches each one's `index`;
//! 8. `node.advance(rd)`.
//!
//! Input (step 1) may also arrive between `ready` and `advance`: nothing it produces is handed
//! out before the next `ready`, and acknowledgements still wait for that Ready's persistence.
//! A second `ready` before `advance`, or an `advance` of any Ready but the outstanding one, is
//! a [`RaftError`].
//!
//! When a Ready cannot be persisted yet (a full disk), what may leave before it is durable
//! still can: `take_sendable` splits it off the outstanding Ready, and `ready_while_persisting`
//! hands out what came since, each as a partial Ready (nothing to persist, no acknowledgement
//! or vote) to handle and `advance` like any other, one at a time, before the outstanding Ready
//! itself is advanced once persisted. A storage read error stops the node: `has_ready` turns true and `ready`
//! (like every call that returns a `Result`) returns [`RaftError::Storage`].

use super::conf_change::ConfChange;
use super::config::{Config, ConfigError};
use super::core::Raft;
use super::membership::Membership;
use super::message::Message;
use super::progress::ProgressState;
use super::read_only::ReadState;
use super::{RaftError, Role};
use crate::storage::{ConfState, Entry, EntryType, HardState, Snapshot, Storage, StorageMut};
use std::collections::BTreeMap;

/// Volatile state the application may want to observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this node knows of in its current term; 0 for none.
    pub leader_id: u64,
    /// This node's role.
    pub role: Role,
}

/// What the application must do next; see the module docs for the order.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    /// Set when the leader or the role changed.
    pub soft_state: Option<SoftState>,
    /// To persist, when it changed.
    pub hard_state: Option<HardState>,
    /// To persist (append), before `persisted_messages` are sent.
    pub entries: Vec<Entry>,
    /// A snapshot from the leader to install, before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Committed, persisted entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent before anything in this Ready is persisted.
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready's snapshot, entries and HardState are persisted.
    pub persisted_messages: Vec<Message>,
    /// Whether persisting needs an fdatasync: entries, a snapshot, or a term or vote change.
    /// (A commit-only HardState change does not: etcd's MustSync rule.)
    pub must_sync: bool,
    /// Confirmed read requests: serve each once the applied index reaches its `index`.
    pub read_states: Vec<ReadState>,
    /// Which Ready this is (from 1), so `advance` can tell it is the outstanding one.
    number: u64,
    /// Handed out while the outstanding Ready waits to be persisted (see
    /// [`RawNode::ready_while_persisting`]): it holds nothing to persist.
    partial: bool,
}

impl Ready {
    /// Whether this Ready was handed out while an earlier one waits to be persisted: it holds
    /// only what may leave before that ([`RawNode::ready_while_persisting`]), and nothing to
    /// persist.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// Whether [`RawNode::take_sendable`] would take anything.
    pub fn has_sendable(&self) -> bool {
        self.soft_state.is_some()
            || !self.messages.is_empty()
            || !self.committed_entries.is_empty()
            || !self.read_states.is_empty()
    }
}

/// How sending a snapshot to a follower ended (see [`RawNode::report_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// The follower received all of it.
    Finish,
    /// The transfer failed or was abandoned; the leader may send another.
    Failure,
}

impl<S: StorageMut> RawNode<S> {
    /// Persists what `rd` hands out, in the order that keeps every step crash-safe: the
    /// snapshot, then the entries, then the HardState (whose commit may point into them).
    pub fn persist(&mut self, rd: &Ready) -> crate::Result<()> {
        self.persist_from(rd, PersistStep::Snapshot).map_err(|(_, e)| e)
    }

    /// [`RawNode::persist`] from step `from` on (the earlier steps done already); on failure,
    /// the step that failed, from which a retry starts (the threaded `Node` on a full disk).
    pub(crate) fn persist_from(
        &mut self,
        rd: &Ready,
        mut from: PersistStep,
    ) -> Result<(), (PersistStep, crate::Error)> {
        let s = self.storage_mut();
        while from < PersistStep::Done {
            let r = match from {
                // Streamed from wherever the snapshot's data is (a received snapshot: its staging).
                PersistStep::Snapshot => match &rd.snapshot {
                    Some(snapshot) => {
                        snapshot.reader().and_then(|mut data| s.apply_snapshot(&snapshot.metadata, &mut data))
                    }
                    None => Ok(()),
                },
                PersistStep::Entries if rd.entries.is_empty() => Ok(()),
                PersistStep::Entries => s.append(&rd.entries),
                PersistStep::HardState => rd.hard_state.map_or(Ok(()), |hs| s.set_hard_state(&hs)),
                PersistStep::Done => unreachable!("the loop stops at Done"),
            };
            r.map_err(|e| (from, e))?;
            from = match from {
                PersistStep::Snapshot => PersistStep::Entries,
                PersistStep::Entries => PersistStep::HardState,
                _ => PersistStep::Done,
            };
        }
        Ok(())
    }
}

/// The steps of persisting a Ready, in their one safe order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PersistStep {
    Snapshot,
    Entries,
    HardState,
    Done,
}

/// A snapshot of the node's state, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node's id (`Config::id`).
    pub id: u64,
    /// The node's term, vote and commit index now, including changes not yet persisted.
    pub hard_state: HardState,
    /// The leader this node knows of and its role.
    pub soft_state: SoftState,
    /// The last index handed out to apply (in a `Ready`'s `committed_entries`, or by a snapshot).
    pub applied: u64,
    /// The last index of this node's log, persisted or not.
    pub last_index: u64,
    /// Leader only: each peer's (matched, next, state).
    pub progress: BTreeMap<u64, (u64, u64, ProgressState)>,
    /// The configuration the node works with (the last membership change applied).
    pub conf_state: ConfState,
    /// Leader only: the node leadership is being handed to, 0 for none.
    pub lead_transferee: u64,
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NewNodeError {
    /// The configuration is invalid, or the storage's ConfState does not list this node.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading the initial state or the log bounds from storage failed.
    #[error("reading the initial state from storage: {0}")]
    Storage(#[from] crate::Error),
    /// The storage's HardState commits entries its log does not hold.
    #[error("the stored commit index {commit} is above the last index {last_index}")]
    CommitAboveLog {
        /// The commit index the storage holds.
        commit: u64,
        /// The storage's last index.
        last_index: u64,
    },
    /// The configuration as of the applied index is invalid: the stored ConfState or snapshot
    /// breaks a membership rule (a node both voter and learner, ...), or a membership change in
    /// the log up to the applied index does not decode or apply.
    #[error("the membership as of the applied index is invalid: {0}")]
    ConfState(String),
    /// `Config::applied` is below the newest snapshot and the log before the snapshot is
    /// compacted: the configuration at `applied` cannot be known. Restart the state machine from
    /// the snapshot (with `Config::applied` at its index).
    #[error("Config::applied {applied} is below the snapshot at {snapshot} and the log before it is compacted")]
    MembershipUnknown {
        /// `Config::applied`.
        applied: u64,
        /// The newest snapshot's index.
        snapshot: u64,
    },
    /// `Config::applied` says the application applied entries the log does not hold.
    #[error("Config::applied {applied} is above the storage's last index {last_index}")]
    AppliedAboveLog {
        /// `Config::applied`.
        applied: u64,
        /// The storage's last index.
        last_index: u64,
    },
}

/// A Raft node driven by the application.
#[derive(Debug)]
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    /// The number of the Ready taken and not yet advanced (0 for none).
    outstanding: u64,
    /// The number of the last Ready taken.
    readies: u64,
    /// The number of the partial Ready handed out and not yet advanced (0 for none).
    partial_outstanding: u64,
}

impl<S: Storage> RawNode<S> {
    /// A node over `storage`, which must hold a ConfState listing this node. It starts as a
    /// follower at the term and vote the storage's HardState holds.
    ///
    /// ```
    /// use keel::raft::{Config, RawNode, Role};
    /// use keel::storage::{ConfState, MemStorage, StorageMut};
    ///
    /// let mut storage = MemStorage::new();
    /// storage.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() })?;
    /// let mut node = RawNode::new(&Config::new(1), storage)?;
    /// assert_eq!(node.status().soft_state.role, Role::Follower);
    /// node.campaign()?; // a PreVote round first: the Ready holds the requests to send
    /// let ready = node.ready()?;
    /// assert_eq!(ready.messages.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(config: &Config, storage: S) -> Result<RawNode<S>, NewNodeError> {
        config.validate()?;
        let raft = Raft::new(config, storage)?;
        if !raft.membership.ids().contains(&config.id) && !config.joining {
            return Err(ConfigError::NotAMember(config.id).into());
        }
        let prev_soft = SoftState { leader_id: raft.leader_id, role: raft.role };
        // What storage holds, so that a commit raised to `Config::applied` is persisted by the
        // first Ready.
        let prev_hard = raft.log.storage.initial_state()?.hard_state;
        Ok(RawNode { raft, prev_soft, prev_hard, outstanding: 0, readies: 0, partial_outstanding: 0 })
    }

    /// The storage error that stopped the node, if one did.
    fn stopped(&self) -> Result<(), RaftError> {
        match &self.raft.fatal {
            Some(e) => Err(RaftError::Storage(e.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f` unless the node stopped; a storage error it hits stops the node.
    fn run<T>(&mut self, f: impl FnOnce(&mut Raft<S>) -> crate::Result<T>) -> Result<Option<T>, RaftError> {
        self.stopped()?;
        match f(&mut self.raft) {
            Ok(v) => {
                self.stopped()?;
                Ok(Some(v))
            }
            Err(e) => {
                self.raft.stop_on(Err(e));
                self.stopped().map(|()| None)
            }
        }
    }

    /// Advances logical time by one tick. A storage error it hits stops the node (see the
    /// module docs): `ready` reports it.
    pub fn tick(&mut self) {
        let _ = self.run(Raft::tick);
    }

    /// Starts an election now (a pre-election first if PreVote is on). Learners, removed nodes
    /// and nodes with a committed membership change still to apply do not campaign.
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        self.run(|r| r.hup(false)).map(drop)
    }

    fn propose_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        self.stopped()?;
        self.raft.propose(entries)?;
        Ok(())
    }

    /// Proposes one entry of application data.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        self.propose_entries(vec![Entry::new(0, 0, data)])
    }

    /// Proposes several entries at once (one storage write, as few messages as fit).
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<(), RaftError> {
        self.propose_entries(data.into_iter().map(|d| Entry::new(0, 0, d)).collect())
    }

    /// Proposes a membership change. The leader refuses it while another is not yet applied,
    /// while joint (unless it leaves the joint configuration), and if it would not make a valid
    /// configuration; a follower forwards it. It takes effect when the application, having
    /// seen it committed, calls [`RawNode::apply_conf_change`].
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(), RaftError> {
        let mut e = Entry::new(0, 0, cc.encode());
        e.entry_type = EntryType::ConfChangeV2;
        self.propose_entries(vec![e])
    }

    /// Applies a committed membership change and returns the configuration now in force (to
    /// put in snapshots; it need not be persisted otherwise: see the module docs). A leader
    /// removed or demoted by it hands leadership over; a node that is no longer a voter never
    /// campaigns.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, RaftError> {
        self.stopped()?;
        let next: Membership = self.raft.membership.apply(cc).map_err(RaftError::InvalidConfChange)?;
        self.raft.switch_to(next);
        self.stopped()?;
        Ok(self.raft.membership.to_conf_state())
    }

    /// Asks for a linearizable read: once confirmed, a [`ReadState`] with `ctx` and the index
    /// to wait for comes out in a `Ready`. A follower forwards the request to the leader. A
    /// request whose leader changes before it is confirmed, or whose `ctx` is already waiting,
    /// gets no answer: time it out and ask again with a fresh `ctx`.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), RaftError> {
        self.stopped()?;
        let id = self.raft.id;
        self.raft.read_index(id, ctx)?;
        Ok(())
    }

    /// Asks the leader to hand leadership to `to`: it stops taking proposals, brings `to` up
    /// to date and tells it to campaign at once. Abandoned after an election timeout; ignored
    /// if `to` is not a voter. On a follower, forwarded to the leader.
    pub fn transfer_leadership(&mut self, to: u64) -> Result<(), RaftError> {
        self.stopped()?;
        self.raft.transfer_leader(to);
        self.stopped()
    }

    /// Handles a message from a peer. Messages addressed to another node are ignored.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        self.stopped()?;
        if m.to != self.raft.id {
            return Ok(());
        }
        if let Err(reason) = m.validate() {
            return Err(RaftError::Malformed { kind: m.kind, from: m.from, reason });
        }
        self.raft.step(m)?;
        self.stopped()
    }

    /// The peer is unreachable: stop pipelining to it until it answers again.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raft.report_unreachable(id);
    }

    /// How sending a snapshot to `id` ended: the follower leaves the Snapshot state either way
    /// (after a failure the leader may send a new one).
    pub fn report_snapshot(&mut self, id: u64, status: SnapshotStatus) {
        self.raft.report_snapshot(id, status == SnapshotStatus::Failure);
    }

    fn soft_state(&self) -> SoftState {
        SoftState { leader_id: self.raft.leader_id, role: self.raft.role }
    }

    /// Whether `ready` has anything to do (or a storage error to report).
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        if r.fatal.is_some() {
            return true;
        }
        if self.outstanding != 0 {
            return false;
        }
        self.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || !r.log.to_persist().is_empty()
            || r.log.snapshot_to_persist().is_some()
            || r.log.has_next_committed()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
    }

    /// Takes what must be persisted, sent and applied. Call `advance` with it when done.
    pub fn ready(&mut self) -> Result<Ready, RaftError> {
        self.stopped()?;
        if self.outstanding != 0 {
            return Err(RaftError::ReadyOutstanding);
        }
        self.raft.flush_proposals();
        let max = self.raft.max_committed_size_per_ready();
        let committed_entries = self.run(|r| r.log.next_committed(max))?.unwrap_or_default();
        let soft = self.soft_state();
        let hard = self.raft.hard_state();
        let r = &mut self.raft;
        let entries = r.log.to_persist().to_vec();
        let snapshot = r.log.snapshot_to_persist().cloned();
        r.reduce_uncommitted(&committed_entries);
        self.readies += 1;
        let vote_changed = hard.term != self.prev_hard.term || hard.vote != self.prev_hard.vote;
        let rd = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            must_sync: !entries.is_empty() || snapshot.is_some() || vote_changed,
            messages: std::mem::take(&mut r.msgs),
            persisted_messages: std::mem::take(&mut r.msgs_after_persist),
            read_states: std::mem::take(&mut r.read_states),
            entries,
            snapshot,
            committed_entries,
            number: self.readies,
            partial: false,
        };
        r.log.handed_out(rd.entries.last().map(|e| e.index), rd.snapshot.is_some());
        self.prev_soft = soft;
        self.prev_hard = hard;
        self.outstanding = self.readies;
        if let Some(i) = rd.committed_entries.last().map(|e| e.index) {
            self.raft.log.applying_to(i);
        }
        Ok(rd)
    }

    /// While the outstanding Ready waits to be persisted (a full disk: the threaded `Node`
    /// retries it until space returns): whether [`RawNode::ready_while_persisting`] has
    /// anything to hand out.
    pub fn has_ready_while_persisting(&self) -> bool {
        let r = &self.raft;
        self.outstanding != 0
            && self.partial_outstanding == 0
            && r.fatal.is_none()
            && (self.soft_state() != self.prev_soft
                || r.log.has_next_committed()
                || !r.msgs.is_empty()
                || !r.read_states.is_empty()
                || (r.bcast_pending && r.role == Role::Leader))
    }

    /// While the outstanding Ready waits to be persisted: a partial Ready
    /// ([`Ready::is_partial`]) with only what may leave before that Ready is durable, so that
    /// a node whose disk is full keeps its place in the cluster. It holds the soft state (if it
    /// changed), `messages` (a leader's appends and heartbeats, ReadIndex traffic, a leader
    /// transfer's TimeoutNow, vote requests, rejections: nothing that promises what this node
    /// has persisted), `read_states`, and committed entries this node has persisted. Its
    /// entries, snapshot, HardState and `persisted_messages` are empty: acknowledgements and
    /// votes wait for the outstanding Ready's persisting. Handle it like any Ready (send,
    /// apply, serve reads) and `advance` it before advancing the outstanding one; a leader
    /// still commits through the acknowledgements of others (it counts its own log only once
    /// persisted).
    pub fn ready_while_persisting(&mut self) -> Result<Ready, RaftError> {
        self.stopped()?;
        if self.outstanding == 0 {
            return Err(RaftError::NotOutstanding);
        }
        if self.partial_outstanding != 0 {
            return Err(RaftError::PartialOutstanding);
        }
        self.raft.flush_proposals();
        let max = self.raft.max_committed_size_per_ready();
        let committed_entries = self.run(|r| r.log.next_committed(max))?.unwrap_or_default();
        let soft = self.soft_state();
        let r = &mut self.raft;
        r.reduce_uncommitted(&committed_entries);
        let rd = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            messages: std::mem::take(&mut r.msgs),
            read_states: std::mem::take(&mut r.read_states),
            committed_entries,
            number: self.next_partial(),
            partial: true,
            ..Ready::default()
        };
        self.prev_soft = soft;
        if let Some(i) = rd.committed_entries.last().map(|e| e.index) {
            self.raft.log.applying_to(i);
        }
        Ok(rd)
    }

    /// Moves out of `rd`, the outstanding Ready, as a partial Ready, what may be handled before
    /// `rd` is persisted: its soft state, `messages`, `read_states` and committed entries
    /// (persisted already: a Ready hands out only persisted entries to apply). What stays
    /// (snapshot, entries, HardState, `persisted_messages`) waits for its persisting. For an
    /// application that cannot persist `rd` yet (a full disk): handle and `advance` the partial
    /// one, then the partial Readies of [`RawNode::ready_while_persisting`], then, once
    /// persisted, `rd`.
    pub fn take_sendable(&mut self, rd: &mut Ready) -> Result<Ready, RaftError> {
        self.stopped()?;
        if rd.partial || rd.number == 0 || rd.number != self.outstanding {
            return Err(RaftError::NotOutstanding);
        }
        if self.partial_outstanding != 0 {
            return Err(RaftError::PartialOutstanding);
        }
        Ok(Ready {
            soft_state: rd.soft_state.take(),
            messages: std::mem::take(&mut rd.messages),
            committed_entries: std::mem::take(&mut rd.committed_entries),
            read_states: std::mem::take(&mut rd.read_states),
            number: self.next_partial(),
            partial: true,
            ..Ready::default()
        })
    }

    fn next_partial(&mut self) -> u64 {
        self.readies += 1;
        self.partial_outstanding = self.readies;
        self.readies
    }

    /// Reports that everything `rd` asked for was persisted, sent and applied. A partial Ready
    /// ([`RawNode::ready_while_persisting`]) is advanced before the outstanding one.
    pub fn advance(&mut self, rd: Ready) -> Result<(), RaftError> {
        self.stopped()?;
        if rd.partial {
            if rd.number == 0 || rd.number != self.partial_outstanding {
                return Err(RaftError::NotOutstanding);
            }
            self.partial_outstanding = 0;
            if let Some(i) = rd.committed_entries.last().map(|e| e.index) {
                self.raft.log.applied_to(i);
            }
            self.run(Raft::maybe_campaign_after_apply)?;
            self.raft.maybe_auto_leave();
            return Ok(());
        }
        if rd.number == 0 || rd.number != self.outstanding {
            return Err(RaftError::NotOutstanding);
        }
        if self.partial_outstanding != 0 {
            return Err(RaftError::PartialOutstanding);
        }
        if let Some(s) = &rd.snapshot {
            self.raft.log.stable_snapshot_to(s.metadata.index);
        }
        if let Some(e) = rd.entries.last() {
            self.raft.log.stable_to(e.index, e.term);
        }
        if let Some(i) = rd.committed_entries.last().map(|e| e.index) {
            self.raft.log.applied_to(i);
        }
        self.outstanding = 0;
        if rd.hard_state.is_some_and(|hs| hs.vote == self.raft.id && hs.term == self.raft.term) {
            self.raft.self_vote_persisted();
        }
        let persisted = self.raft.log.persisted_index();
        self.run(|r| r.persisted_to(persisted))?;
        self.run(Raft::maybe_campaign_after_apply)?;
        self.raft.maybe_auto_leave();
        Ok(())
    }

    /// The node's state, for monitoring and tests.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role == Role::Leader {
            r.progress.iter().map(|(&id, p)| (id, (p.matched, p.next, p.state))).collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: r.id,
            hard_state: r.hard_state(),
            soft_state: self.soft_state(),
            applied: r.log.applying,
            last_index: r.log.last_index(),
            progress,
            conf_state: r.membership.to_conf_state(),
            lead_transferee: r.lead_transferee,
        }
    }

    /// The storage, to read.
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// The storage, to persist what a `Ready` hands out.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Gives the storage back (the node is gone: what it had not handed out is lost, as in a
    /// crash).
    pub fn into_storage(self) -> S {
        self.raft.log.storage
    }

    /// The last index of this node's log, persisted or not (`status().last_index` without
    /// building a `Status`): right after a leader's `propose`, the index of the new entry.
    pub fn last_index(&self) -> u64 {
        self.raft.log.last_index()
    }

    /// The first and last index of this node's log (persisted or not).
    pub fn log_bounds(&self) -> crate::Result<(u64, u64)> {
        Ok((self.raft.log.first_index()?, self.raft.log.last_index()))
    }

    /// Entries `[lo, hi)` of this node's log (persisted or not).
    pub fn log_entries(&self, lo: u64, hi: u64) -> crate::Result<Vec<Entry>> {
        self.raft.log.slice(lo, hi, u64::MAX)
    }

    /// The term of entry `index` in this node's log (persisted or not), if it holds it.
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index).ok()
    }

    /// Appends in flight to `id` (leader only), for flow-control tests.
    pub fn inflight_count(&self, id: u64) -> usize {
        self.raft.progress.get(&id).map_or(0, |p| p.inflights.count())
    }
}
