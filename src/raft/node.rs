//! `Node`: a [`RawNode`] on a thread of its own, driven from any thread through bounded
//! channels (etcd-raft's `Node`), with proposals that report what became of them.
//!
//! The calling order and an example are on [`Node`].
//!
//! Invariants:
//! - at most one Ready is outstanding: the node thread takes the next one only after the
//!   application advanced the last;
//! - a Ready reaches the application only after its snapshot, entries and HardState are
//!   persisted; while one cannot be persisted (a full disk) the node hands out partial Readies
//!   ([`Ready::is_partial`]), which hold nothing to persist and nothing that promises what is
//!   durable;
//! - the node thread waits only for its command queue and for storage: every channel it sends
//!   on has room (one Ready at a time in a channel of one; replies and outcomes go to
//!   channels of one, each sent once);
//! - every proposal resolves at most once (see [`Outcome`]);
//! - once stopped a node stays stopped, and the first reason (stop or storage error) is the
//!   one every later call returns.

// Who persists. etcd's Node hands the application Readies to persist itself, through a
// MemoryStorage it shares with the node behind a lock. `DiskStorage` is not `Sync` and the
// `RawNode` owns its storage, so here the node thread persists each Ready (`RawNode::persist`)
// before handing it out. The cost: a leader's appends (`messages`) leave only after its own
// fdatasync instead of beside it (thesis §10.2.1), so commit latency is the leader's sync plus
// a follower's rather than the larger of the two. Rejected: a `persist` call the application
// must make between sending `messages` and `persisted_messages` (a round trip per Ready, and a
// Ready advanced without it would mark unsynced entries stable).
//
// One command queue rather than etcd's channel per kind: std has no `select`, and one FIFO
// keeps a proposal ahead of the messages that follow it. Its capacity bounds memory at
// `COMMAND_QUEUE_CAPACITY` commands (messages up to `Config::max_size_per_msg` of entries,
// or snapshots); a full queue blocks the caller (back pressure on the transport and on
// proposers), except `tick`, which is dropped as etcd drops a tick its 128-slot tick channel
// cannot hold: a node that far behind gains nothing from a burst of queued ticks.

use super::RaftError;
use super::conf_change::ConfChange;
use super::config::Config;
use super::message::Message;
use super::proposal::{DropReason, Outcome, Proposal, Tracker};
use super::raw_node::PersistStep;
use super::raw_node::{NewNodeError, RawNode, Ready, SnapshotStatus, Status};
use crate::storage::{ConfState, StorageMut};
use parking_lot::Mutex;
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Commands queued for the node thread before callers block (see the comment above on the
/// memory this bounds). Also the most it handles before taking a Ready, so proposals and
/// messages that arrive together are persisted in one write yet a steady stream of input
/// still lets Readies out.
pub const COMMAND_QUEUE_CAPACITY: usize = 128;

/// Why a [`Node`] call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node was stopped ([`Node::stop`], or the `Node` dropped).
    #[error("the node is stopped")]
    Stopped,
    /// A storage read or write failed: the node thread stopped, and every later call returns
    /// this. [`Node::stop`] gives the storage back, to repair and start a new node over.
    #[error("the node stopped on a storage error: {0}")]
    Storage(Arc<crate::Error>),
    /// `RawNode` refused the call (no leader for a read, an advance of the wrong Ready, an
    /// invalid membership change, ...); nothing changed and the node goes on.
    #[error(transparent)]
    Raft(RaftError),
}

/// Why [`Node::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Building the `RawNode` failed.
    #[error(transparent)]
    New(#[from] NewNodeError),
    /// The operating system refused a thread.
    #[error("spawning the node thread: {0}")]
    Spawn(std::io::Error),
}

type Reply<T> = SyncSender<Result<T, NodeError>>;

enum Command<S> {
    Tick,
    Campaign(Reply<()>),
    Propose(Vec<u8>, SyncSender<Outcome>),
    ProposeConfChange(ConfChange, SyncSender<Outcome>),
    Step(Message),
    ReadIndex(Vec<u8>, Reply<()>),
    TransferLeadership(u64, Reply<()>),
    ApplyConfChange(ConfChange, Reply<ConfState>),
    Advance(Box<Ready>, Reply<()>),
    ReportUnreachable(u64),
    ReportSnapshot(u64, SnapshotStatus),
    Status(SyncSender<Status>),
    WithStorage(Box<dyn FnOnce(&mut S) + Send>),
    Stop,
}

/// What both sides see: why the node stopped, set once.
#[derive(Debug, Default)]
struct Shared {
    stopped: OnceLock<NodeError>,
    /// While a Ready waits for space on a full disk: what failed (`Node::disk_full`).
    disk_full: parking_lot::Mutex<Option<String>>,
}

/// A Raft node on its own thread. Every method takes `&self`: share it (`Arc<Node<S>>`)
/// between the ticker, the transport and the one thread that takes Readies.
///
/// Calling order:
/// 1. `Node::start(&config, storage)`: the node thread takes the storage; from here on only
///    the node thread touches it (the application reaches it through `with_storage`);
/// 2. feed input, from any thread: `tick` (on a timer), `step` (messages from peers),
///    `propose` and `propose_conf_change` (each returns a [`Proposal`] to wait on),
///    `read_index`, `transfer_leadership`, `campaign`, `report_unreachable`,
///    `report_snapshot`;
/// 3. in one thread, take `let rd = node.ready()?` (or `ready_timeout`, `try_ready`): the
///    node thread has already persisted its snapshot, entries and HardState (a partial Ready,
///    handed out while the disk is full, has none: handle it the same way);
/// 4. send `rd.messages` and `rd.persisted_messages`, in any order: the Ready is persisted, so
///    both may leave at once;
/// 5. restore `rd.snapshot`'s data into the state machine if there is one, then apply
///    `rd.committed_entries`; for each membership change among them
///    (`EntryType::ConfChangeV2`) decode it with `ConfChange::decode` and call
///    `node.apply_conf_change(&cc)?`, which also persists the ConfState it returns;
/// 6. serve `rd.read_states` once the applied index reaches each one's `index`;
/// 7. `node.advance(rd)?`, then back to 3;
/// 8. `node.stop()?` ends the thread and gives the storage back.
///
/// Input (step 2) may arrive between `ready` and `advance`; nothing it produces is handed out
/// before the next Ready. After `stop`, or after a storage error stopped the node, every call
/// returns [`NodeError::Stopped`] or [`NodeError::Storage`].
///
/// ```
/// use keel::raft::{Config, Node, Outcome, Role};
/// use keel::storage::{ConfState, EntryType, MemStorage, StorageMut};
/// use std::time::Duration;
///
/// let mut storage = MemStorage::new();
/// storage.set_conf_state(&ConfState { voters: vec![1], ..ConfState::default() })?;
/// let node = Node::start(&Config::new(1), storage)?;
/// node.campaign()?;
/// let mut applied = Vec::new();
/// let mut proposal = None;
/// let outcome = loop {
///     // 3. Persisted already; a single node has nobody to send messages to (step 4).
///     let rd = node.ready_timeout(Duration::from_secs(10))?.expect("a Ready within 10 s");
///     // 5. Apply: a new leader's empty entry, then ours.
///     for e in &rd.committed_entries {
///         if e.entry_type == EntryType::Normal && !e.data.is_empty() {
///             applied.push((e.index, e.data.to_vec()));
///         }
///     }
///     node.advance(rd)?; // 7.
///     if proposal.is_none() && node.status()?.soft_state.role == Role::Leader {
///         proposal = Some(node.propose(b"x=1".to_vec())?);
///     }
///     if let Some(outcome) = proposal.as_mut().and_then(|p| p.try_outcome()) {
///         break outcome;
///     }
/// };
/// assert!(matches!(outcome, Outcome::Committed { index: 2, term: 1 }), "{outcome:?}");
/// assert_eq!(applied, vec![(2, b"x=1".to_vec())]);
/// let storage = node.stop()?; // 8.
/// assert!(node.tick().is_err(), "stopped");
/// # drop(storage);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Node<S: StorageMut + Send + 'static> {
    id: u64,
    commands: SyncSender<Command<S>>,
    /// Ready channel of capacity 1. Locked by the one thread that takes Readies.
    readies: Mutex<Receiver<Ready>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<S>>>,
}

impl<S: StorageMut + Send + 'static> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("stopped", &self.shared.stopped.get()).finish()
    }
}

impl<S: StorageMut + Send + 'static> Node<S> {
    /// Builds a `RawNode` over `storage` (see [`RawNode::new`]) and starts its thread.
    pub fn start(config: &Config, storage: S) -> Result<Node<S>, StartError> {
        let raw = RawNode::new(config, storage)?;
        let (commands, commands_rx) = sync_channel(COMMAND_QUEUE_CAPACITY);
        let (readies_tx, readies) = sync_channel(1);
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            raw,
            commands: commands_rx,
            readies: readies_tx,
            shared: shared.clone(),
            tracker: Tracker::default(),
            ready_outstanding: false,
            unpersisted: None,
            ticked: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("keel-raft-{}", config.id))
            .spawn(move || worker.run())
            .map_err(StartError::Spawn)?;
        Ok(Node { id: config.id, commands, readies: Mutex::new(readies), shared, thread: Mutex::new(Some(thread)) })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn stopped_error(&self) -> NodeError {
        self.shared.stopped.get().cloned().unwrap_or(NodeError::Stopped)
    }

    fn running(&self) -> Result<(), NodeError> {
        match self.shared.stopped.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Queues `cmd`, waiting while the queue is full.
    fn send(&self, cmd: Command<S>) -> Result<(), NodeError> {
        self.running()?;
        self.commands.send(cmd).map_err(|_| self.stopped_error())
    }

    /// Queues the command `make` builds around a reply channel and waits for the answer.
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command<S>) -> Result<T, NodeError> {
        let (tx, rx) = sync_channel(1);
        self.send(make(tx))?;
        rx.recv().map_err(|_| self.stopped_error())?
    }

    /// Advances logical time by one tick. Never blocks: if the command queue is full the tick
    /// is dropped (the node is that far behind; see [`COMMAND_QUEUE_CAPACITY`]).
    pub fn tick(&self) -> Result<(), NodeError> {
        self.running()?;
        match self.commands.try_send(Command::Tick) {
            Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(self.stopped_error()),
        }
    }

    /// Starts an election now (see [`RawNode::campaign`]).
    pub fn campaign(&self) -> Result<(), NodeError> {
        self.call(Command::Campaign)
    }

    /// Proposes one entry of application data. The returned [`Proposal`] resolves to its
    /// [`Outcome`]: on the leader `Committed` or `Dropped` (or `Unknown`) once the Ready that
    /// hands out its index is advanced; on a follower, at once, `Forwarded` to the leader;
    /// refused (no leader, ...), `Dropped(Refused(_))`. Blocks only while the command queue is
    /// full.
    pub fn propose(&self, data: Vec<u8>) -> Result<Proposal, NodeError> {
        let (proposal, tx) = Proposal::new();
        self.send(Command::Propose(data, tx))?;
        Ok(proposal)
    }

    /// Proposes a membership change (see [`RawNode::propose_conf_change`]); resolves like
    /// [`Node::propose`]. Once it is committed every node applies it with
    /// [`Node::apply_conf_change`].
    pub fn propose_conf_change(&self, cc: &ConfChange) -> Result<Proposal, NodeError> {
        let (proposal, tx) = Proposal::new();
        self.send(Command::ProposeConfChange(cc.clone(), tx))?;
        Ok(proposal)
    }

    /// Hands a message from a peer to the node, without waiting for it to be handled: a
    /// message `RawNode::step` refuses (malformed, addressed elsewhere, a forwarded proposal
    /// this node cannot take) is dropped, as the network could have dropped it.
    pub fn step(&self, m: Message) -> Result<(), NodeError> {
        self.send(Command::Step(m))
    }

    /// Asks for a linearizable read (see [`RawNode::read_index`]); the [`ReadState`] carrying
    /// `ctx` comes out in a later Ready. Refusals (no leader, ...) are [`NodeError::Raft`].
    ///
    /// [`ReadState`]: super::ReadState
    pub fn read_index(&self, ctx: Vec<u8>) -> Result<(), NodeError> {
        self.call(|tx| Command::ReadIndex(ctx, tx))
    }

    /// Asks the leader to hand leadership to `to` (see [`RawNode::transfer_leadership`]).
    pub fn transfer_leadership(&self, to: u64) -> Result<(), NodeError> {
        self.call(|tx| Command::TransferLeadership(to, tx))
    }

    /// Applies a committed membership change and returns the configuration now in force. Call
    /// it for every `ConfChangeV2` entry in `committed_entries`, in order, before `advance`.
    /// Nothing needs persisting: a restart rebuilds the configuration from the log.
    pub fn apply_conf_change(&self, cc: &ConfChange) -> Result<ConfState, NodeError> {
        self.call(|tx| Command::ApplyConfChange(cc.clone(), tx))
    }

    /// Waits for the next Ready (already persisted: see the module docs). Returns the stop
    /// reason once the node stops, whether it was waiting or not.
    pub fn ready(&self) -> Result<Ready, NodeError> {
        self.running()?;
        let readies = self.readies.lock();
        readies.recv().map_err(|_| self.stopped_error())
    }

    /// Waits up to `timeout` for the next Ready; `None` if none came.
    pub fn ready_timeout(&self, timeout: Duration) -> Result<Option<Ready>, NodeError> {
        self.running()?;
        let Some(readies) = self.readies.try_lock_for(timeout) else { return Ok(None) };
        match readies.recv_timeout(timeout) {
            Ok(rd) => Ok(Some(rd)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.stopped_error()),
        }
    }

    /// The next Ready if one is waiting.
    pub fn try_ready(&self) -> Result<Option<Ready>, NodeError> {
        self.running()?;
        let Some(readies) = self.readies.try_lock() else { return Ok(None) };
        match readies.try_recv() {
            Ok(rd) => Ok(Some(rd)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.stopped_error()),
        }
    }

    /// Reports that `rd`'s messages were sent and its committed entries applied; the node may
    /// hand out the next Ready. When it returns, the proposals `rd` decided hold their
    /// outcome.
    pub fn advance(&self, rd: Ready) -> Result<(), NodeError> {
        self.call(|tx| Command::Advance(Box::new(rd), tx))
    }

    /// While the disk is full: why the node cannot persist its next Ready (an
    /// [`Error::NoSpace`](crate::Error::NoSpace) message). The node keeps running: it retries
    /// persisting on every tick, by itself, and meanwhile hands out partial Readies
    /// ([`Ready::is_partial`], see [`RawNode::ready_while_persisting`]) with what may leave
    /// before anything is durable: a leader's appends and heartbeats (it still commits through
    /// the others' acknowledgements), ReadIndex traffic and read states, a leader transfer's
    /// TimeoutNow, and committed entries it had persisted. It acknowledges nothing and casts no
    /// vote until persisting succeeds. `None` when the last persist succeeded.
    pub fn disk_full(&self) -> Option<String> {
        self.shared.disk_full.lock().clone()
    }

    /// The node's state (see [`RawNode::status`]).
    pub fn status(&self) -> Result<Status, NodeError> {
        let (tx, rx) = sync_channel(1);
        self.send(Command::Status(tx))?;
        rx.recv().map_err(|_| self.stopped_error())
    }

    /// The peer is unreachable (see [`RawNode::report_unreachable`]); does not wait.
    pub fn report_unreachable(&self, id: u64) -> Result<(), NodeError> {
        self.send(Command::ReportUnreachable(id))
    }

    /// How sending a snapshot to `id` ended (see [`RawNode::report_snapshot`]); does not wait.
    pub fn report_snapshot(&self, id: u64, status: SnapshotStatus) -> Result<(), NodeError> {
        self.send(Command::ReportSnapshot(id, status))
    }

    /// Runs `f` on the node thread with the storage and returns its result: to create a
    /// snapshot (`StorageMut::create_snapshot`), compact, or read. Never write what the node
    /// writes (entries, HardState, ConfState). The node does nothing else meanwhile; a panic in
    /// `f` ends the node thread (and [`Node::stop`] raises it again).
    pub fn with_storage<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (tx, rx) = sync_channel(1);
        self.send(Command::WithStorage(Box::new(move |s: &mut S| {
            let _ = tx.send(f(s));
        })))?;
        rx.recv().map_err(|_| self.stopped_error())
    }

    /// Stops the node thread and waits for it to end; gives the storage back (also after a
    /// storage error stopped the node). Proposals not yet decided resolve as
    /// `Unknown(Stopped)`; a thread blocked in [`Node::ready`] gets [`NodeError::Stopped`].
    /// A second call returns the stop reason. If the node thread panicked (a broken invariant,
    /// or a panic in a `with_storage` closure) the panic is raised here.
    pub fn stop(&self) -> Result<S, NodeError> {
        let Some(thread) = self.thread.lock().take() else { return Err(self.stopped_error()) };
        let _ = self.shared.stopped.set(NodeError::Stopped);
        // Fails only if the thread already ended on a storage error.
        let _ = self.commands.send(Command::Stop);
        Ok(thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    }
}

impl<S: StorageMut + Send + 'static> Drop for Node<S> {
    /// Stops the node thread and waits for it, so the storage is dropped (and a `DiskStorage`'s
    /// directory lock released) before this returns.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.get_mut().take() {
            let _ = self.shared.stopped.set(NodeError::Stopped);
            let _ = self.commands.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

/// The node thread's state.
struct Worker<S: StorageMut> {
    raw: RawNode<S>,
    commands: Receiver<Command<S>>,
    readies: SyncSender<Ready>,
    shared: Arc<Shared>,
    tracker: Tracker,
    /// A Ready was handed out and not yet advanced.
    ready_outstanding: bool,
    /// A Ready taken and not yet handed out, and the first of its persisting steps (snapshot,
    /// entries, HardState) not yet done: retried on every tick while the disk is full. `Done`
    /// when persisted and waiting only for a partial Ready to be advanced.
    unpersisted: Option<(Ready, PersistStep)>,
    /// A tick arrived since persisting was last tried.
    ticked: bool,
}

impl<S: StorageMut> Worker<S> {
    fn run(mut self) -> S {
        'run: while let Ok(cmd) = self.commands.recv() {
            if self.handle(cmd).is_break() {
                break;
            }
            for _ in 1..COMMAND_QUEUE_CAPACITY {
                let Ok(cmd) = self.commands.try_recv() else { break };
                if self.handle(cmd).is_break() {
                    break 'run;
                }
            }
            if self.hand_out_ready().is_break() {
                break;
            }
        }
        // Ended by `stop`, by a storage error (already recorded), or by every `Node` handle
        // being gone. The reason is set before the command queue closes (when `self` drops), so
        // a caller that finds it closed finds the reason too.
        let _ = self.shared.stopped.set(NodeError::Stopped);
        let Worker { raw, tracker, .. } = self;
        drop(tracker); // decided proposals are told, undecided ones are Unknown(Stopped)
        raw.into_storage()
    }

    /// Records the storage error that stops the node.
    fn fail(&mut self, e: Arc<crate::Error>) -> NodeError {
        let _ = self.shared.stopped.set(NodeError::Storage(e));
        self.stopped()
    }

    fn stopped(&self) -> NodeError {
        self.shared.stopped.get().cloned().unwrap_or(NodeError::Stopped)
    }

    /// A `RawNode` result as the application sees it; a storage error stops the node.
    fn check<T>(&mut self, r: Result<T, RaftError>) -> Result<T, NodeError> {
        match r {
            Ok(v) => Ok(v),
            Err(RaftError::Storage(e)) => Err(self.fail(e)),
            Err(e) => Err(NodeError::Raft(e)),
        }
    }

    fn failed(&self) -> bool {
        matches!(self.shared.stopped.get(), Some(NodeError::Storage(_)))
    }

    fn handle(&mut self, cmd: Command<S>) -> ControlFlow<()> {
        // A reply whose caller stopped waiting is not an error.
        match cmd {
            Command::Tick => {
                self.raw.tick();
                self.ticked = true;
            }
            Command::Campaign(tx) => {
                let r = self.raw.campaign();
                let _ = tx.send(self.check(r));
            }
            Command::Propose(data, tx) => {
                let before = self.raw.last_index();
                let r = self.raw.propose(data);
                self.proposed(before, r, tx);
            }
            Command::ProposeConfChange(cc, tx) => {
                let before = self.raw.last_index();
                let r = self.raw.propose_conf_change(&cc);
                self.proposed(before, r, tx);
            }
            Command::Step(m) => {
                let r = self.raw.step(m);
                let _ = self.check(r);
            }
            Command::ReadIndex(ctx, tx) => {
                let r = self.raw.read_index(ctx);
                let _ = tx.send(self.check(r));
            }
            Command::TransferLeadership(to, tx) => {
                let r = self.raw.transfer_leadership(to);
                let _ = tx.send(self.check(r));
            }
            Command::ApplyConfChange(cc, tx) => {
                let r = self.raw.apply_conf_change(&cc);
                let _ = tx.send(self.check(r));
            }
            Command::Advance(rd, tx) => {
                let r = self.raw.advance(*rd);
                if r.is_ok() {
                    self.ready_outstanding = false;
                    self.tracker.release();
                }
                let _ = tx.send(self.check(r));
            }
            Command::ReportUnreachable(id) => self.raw.report_unreachable(id),
            Command::ReportSnapshot(id, status) => self.raw.report_snapshot(id, status),
            Command::Status(tx) => {
                let _ = tx.send(self.raw.status());
            }
            Command::WithStorage(f) => f(self.raw.storage_mut()),
            Command::Stop => return ControlFlow::Break(()),
        }
        if self.failed() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }

    /// Resolves or tracks a proposal `RawNode` answered `r` to; `before` is the last index
    /// before it.
    fn proposed(&mut self, before: u64, r: Result<(), RaftError>, tx: SyncSender<Outcome>) {
        if let Err(e) = r {
            if let RaftError::Storage(cause) = &e {
                self.fail(cause.clone());
            }
            let _ = tx.send(Outcome::Dropped(DropReason::Refused(e)));
            return;
        }
        // A leader appends the entry after its last one, in its term (`Raft::propose`); a
        // follower only sends it on to the leader, leaving its log as it was.
        let last = self.raw.last_index();
        if last == before {
            let leader = self.raw.status().soft_state.leader_id;
            let _ = tx.send(Outcome::Forwarded { leader });
            return;
        }
        assert_eq!(last, before + 1, "one proposal appends one entry");
        let term = self.raw.log_term(last).expect("the entry just appended is in the log");
        self.tracker.add(last, term, tx);
    }

    /// Takes, persists and hands out a Ready if there is one and none is outstanding.
    ///
    /// On a full disk (`Error::NoSpace`: nothing written, nothing latched) the Ready is kept
    /// and persisting it is retried on every tick, from the step that failed; meanwhile the
    /// node hands out partial Readies: first what the kept Ready holds that may leave before it
    /// is durable (`RawNode::take_sendable`), then whatever `RawNode` has of that kind since
    /// (`RawNode::ready_while_persisting`), so the node keeps heartbeating, replicating,
    /// confirming reads and handing over leadership. Any other storage error stops the node.
    fn hand_out_ready(&mut self) -> ControlFlow<()> {
        if self.unpersisted.is_none() {
            if self.ready_outstanding || !self.raw.has_ready() {
                return ControlFlow::Continue(());
            }
            match self.raw.ready() {
                Ok(rd) => self.unpersisted = Some((rd, PersistStep::Snapshot)),
                Err(RaftError::Storage(e)) => {
                    self.fail(e);
                    return ControlFlow::Break(());
                }
                Err(e) => panic!("the node thread took a Ready while none was outstanding: {e}"),
            }
        }
        let (rd, from) = self.unpersisted.as_mut().expect("set above");
        // After a failure, once a tick: not on every message that arrives meanwhile (each try
        // on a full disk makes and removes a segment file).
        let retry_due = std::mem::take(&mut self.ticked) || self.shared.disk_full.lock().is_none();
        if *from < PersistStep::Done && retry_due {
            match self.raw.persist_from(rd, *from) {
                Ok(()) => {
                    *from = PersistStep::Done;
                    *self.shared.disk_full.lock() = None;
                }
                Err((step, e)) if matches!(e, crate::Error::NoSpace { .. }) => {
                    *from = step;
                    *self.shared.disk_full.lock() = Some(e.to_string());
                }
                Err((_, e)) => {
                    self.fail(Arc::new(e));
                    return ControlFlow::Break(());
                }
            }
        }
        if self.ready_outstanding {
            // A partial Ready is out: this one follows once it is advanced.
            return ControlFlow::Continue(());
        }
        let rd = if *from == PersistStep::Done {
            self.unpersisted.take().expect("set above").0
        } else if rd.has_sendable() {
            match self.raw.take_sendable(rd) {
                Ok(partial) => partial,
                Err(e) => panic!("the node thread split the Ready it keeps: {e}"),
            }
        } else if self.raw.has_ready_while_persisting() {
            match self.raw.ready_while_persisting() {
                // Broadcasting proposals with no peer to send to leaves nothing to hand out.
                Ok(rd) if !rd.has_sendable() => {
                    let r = self.raw.advance(rd);
                    return match self.check(r) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(NodeError::Storage(_)) => ControlFlow::Break(()),
                        Err(e) => panic!("the node thread could not advance an empty partial Ready: {e}"),
                    };
                }
                Ok(rd) => rd,
                Err(RaftError::Storage(e)) => {
                    self.fail(e);
                    return ControlFlow::Break(());
                }
                Err(e) => panic!("the node thread took a partial Ready while a Ready was kept: {e}"),
            }
        } else {
            return ControlFlow::Continue(());
        };
        if let Some(s) = &rd.snapshot {
            self.tracker.snapshot(s.metadata.index, s.metadata.term);
        }
        self.tracker.committed(&rd.committed_entries);
        self.ready_outstanding = true;
        // The channel holds one Ready and the last one was taken (it was advanced): this never
        // waits. It fails only if the `Node` is gone, and then a Stop is on its way.
        match self.readies.send(rd) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}
