//! `RawNode`: the application's handle on a Raft state machine, with `Ready` and `advance`.
//!
//! Calling order, repeated (one thread):
//! 1. feed input: `tick`, `step` (messages from peers), `propose`, `campaign`;
//! 2. if `has_ready()`, take `let rd = node.ready()`;
//! 3. send `rd.messages` at once (a leader's appends go out before its own copy is durable);
//! 4. persist, in this order: `rd.snapshot` (`apply_snapshot`), `rd.entries` (`append`),
//!    `rd.hard_state` (`set_hard_state`): `node.persist(&rd)` does exactly that;
//! 5. send `rd.persisted_messages` (votes and acknowledgements, which promise what is durable);
//! 6. apply `rd.committed_entries` to the state machine;
//! 7. `node.advance(&rd)`.

use super::config::{Config, ConfigError};
use super::core::Raft;
use super::message::Message;
use super::progress::ProgressState;
use super::{ProposeError, Role, StepError};
use crate::storage::{Entry, HardState, Snapshot, Storage, StorageMut};
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
}

impl<S: StorageMut> RawNode<S> {
    /// Persists what `rd` hands out, in the order that keeps every step crash-safe: the
    /// snapshot, then the entries, then the HardState (whose commit may point into them).
    pub fn persist(&mut self, rd: &Ready) -> crate::Result<()> {
        let s = self.storage_mut();
        if let Some(snapshot) = &rd.snapshot {
            // Streamed from wherever the snapshot's data is (a received snapshot: its staging).
            s.apply_snapshot(&snapshot.metadata, &mut snapshot.reader()?)?;
        }
        if !rd.entries.is_empty() {
            s.append(&rd.entries)?;
        }
        if let Some(hs) = rd.hard_state {
            s.set_hard_state(&hs)?;
        }
        Ok(())
    }
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
    /// A Ready was taken and not yet advanced: no committed entries are handed out meanwhile.
    outstanding: bool,
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
    /// node.campaign(); // a PreVote round first: the Ready holds the requests to send
    /// let ready = node.ready();
    /// assert_eq!(ready.messages.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(config: &Config, storage: S) -> Result<RawNode<S>, NewNodeError> {
        config.validate()?;
        let raft = Raft::new(config, storage)?;
        if !raft.voters.contains(&config.id) && !raft.learners.contains(&config.id) {
            return Err(ConfigError::NotAMember(config.id).into());
        }
        let prev_soft = SoftState { leader_id: raft.leader_id, role: raft.role };
        // What storage holds, so that a commit raised to `Config::applied` is persisted by the
        // first Ready.
        let prev_hard = raft.log.storage.initial_state()?.hard_state;
        Ok(RawNode { raft, prev_soft, prev_hard, outstanding: false })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (a pre-election first if PreVote is on).
    pub fn campaign(&mut self) {
        self.raft.hup();
    }

    /// Proposes one entry of application data.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        self.raft.propose(vec![Entry::new(0, 0, data)])
    }

    /// Proposes several entries at once (one storage write, as few messages as fit).
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<(), ProposeError> {
        self.raft.propose(data.into_iter().map(|d| Entry::new(0, 0, d)).collect())
    }

    /// Handles a message from a peer. Messages addressed to another node are ignored.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.raft.id {
            return Ok(());
        }
        if let Err(reason) = m.validate() {
            return Err(StepError::Malformed { kind: m.kind, from: m.from, reason });
        }
        Ok(self.raft.step(m)?)
    }

    /// The peer is unreachable: stop pipelining to it until it answers again.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raft.report_unreachable(id);
    }

    fn soft_state(&self) -> SoftState {
        SoftState { leader_id: self.raft.leader_id, role: self.raft.role }
    }

    /// Whether `ready` has anything to do.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        self.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || !r.log.to_persist().is_empty()
            || r.log.snapshot_to_persist().is_some()
            || r.log.has_next_committed() && !self.outstanding
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
    }

    /// Takes what must be persisted, sent and applied. Call `advance` with it when done.
    pub fn ready(&mut self) -> Ready {
        self.raft.flush_proposals();
        let soft = self.soft_state();
        let hard = self.raft.hard_state();
        let r = &mut self.raft;
        let entries = r.log.to_persist().to_vec();
        let snapshot = r.log.snapshot_to_persist().cloned();
        let committed_entries =
            if !self.outstanding { r.log.next_committed(r.max_committed_size_per_ready()) } else { Vec::new() };
        r.reduce_uncommitted(&committed_entries);
        let vote_changed = hard.term != self.prev_hard.term || hard.vote != self.prev_hard.vote;
        let rd = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            must_sync: !entries.is_empty() || snapshot.is_some() || vote_changed,
            messages: std::mem::take(&mut r.msgs),
            persisted_messages: std::mem::take(&mut r.msgs_after_persist),
            entries,
            snapshot,
            committed_entries,
        };
        r.log.handed_out(rd.entries.last().map(|e| e.index), rd.snapshot.is_some());
        self.prev_soft = soft;
        self.prev_hard = hard;
        self.outstanding = true;
        if let Some(i) = rd.committed_entries.last().map(|e| e.index) {
            self.raft.log.applied_to(i);
        }
        rd
    }

    /// Reports that everything `rd` asked for was persisted, sent and applied.
    pub fn advance(&mut self, rd: &Ready) {
        if let Some(s) = &rd.snapshot {
            self.raft.log.stable_snapshot_to(s.metadata.index);
        }
        if let Some(e) = rd.entries.last() {
            self.raft.log.stable_to(e.index, e.term);
        }
        self.outstanding = false;
        if rd.hard_state.is_some_and(|hs| hs.vote == self.raft.id && hs.term == self.raft.term) {
            self.raft.self_vote_persisted();
        }
        let persisted = self.raft.log.persisted_index();
        self.raft.persisted_to(persisted);
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
            applied: r.log.applied,
            last_index: r.log.last_index(),
            progress,
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

    /// The first and last index of this node's log (persisted or not).
    pub fn log_bounds(&self) -> (u64, u64) {
        (self.raft.log.first_index(), self.raft.log.last_index())
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
