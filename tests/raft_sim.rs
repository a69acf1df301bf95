//! Deterministic cluster simulator: `RawNode`s over `MemStorage`, a seeded network that drops,
//! duplicates, reorders and partitions messages (both ways or one way), simulated time (ticks,
//! with clock skew between nodes), crashes (anywhere, including half-way through persisting a
//! Ready) and restarts that keep only what was persisted, storage that fails reads, snapshots
//! with compaction, membership changes (learners added and promoted, voters removed and demoted,
//! joint changes entered and left automatically or on request, the leader removed), leadership
//! transfers and linearizable reads. Snapshots travel as a transport sends them: the message's
//! encoding, then the data in chunks of random sizes through a `SnapshotReceiver` into the
//! follower's storage; in the chaotic phase one transfer in ten has a bit flipped, which the
//! receiver must refuse (the snapshot is then lost, like a dropped message). After every step
//! it checks:
//!
//! - election safety: at most one leader per term, across membership changes;
//! - log matching: two logs holding an entry of the same index and term agree on every entry
//!   up to it;
//! - leader completeness: a leader's log holds every entry applied anywhere;
//! - state machine safety: no two nodes apply different entries (data or membership changes) at
//!   one index, and each applies in order with no gaps;
//! - a node's commit index never goes backwards while it runs, nor its persisted one ever;
//! - nothing is acknowledged before it is persisted: an append acknowledgement never covers an
//!   entry the sender's storage lacks, and a vote leaves only once the sender's storage records it;
//! - linearizable reads: the index a read is confirmed at covers every write completed (applied
//!   anywhere) before the read was asked for.
//!
//! Restarts model an application whose state machine is flushed on its own schedule: a node
//! restarts from its newest durable state (a flushed state machine or the storage's snapshot),
//! with `Config::applied` at it, and commit-only HardState changes (which need no sync) are
//! sometimes lost, so a node may restart with `applied` above its persisted commit.
//!
//! Each schedule ends with a calm phase (network healed, every node up, no faults): a leader must
//! be elected, and a new proposal applied on every member of the final configuration, which all
//! members must agree on (liveness, and no membership change lost).
//!
//! `KEEL_RAFT_SCHEDULES` (default 500) and `KEEL_RAFT_STEPS` (default 2,000) set the scale;
//! `KEEL_RAFT_SEED` replays one schedule. A failure prints its seed and step.

mod common;

use keel::raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, Config, Decoded, Message, RaftError, RawNode,
    ReadOnlyOption, Ready, Role, SnapshotChunk, SnapshotReceiver, SnapshotSender, TransferError,
};
use keel::storage::{
    ConfState, Entry, EntryType, HardState, MemStorage, RaftState, Snapshot, SnapshotMetadata, SnapshotSink, Storage,
    StorageMut,
};
use keel_harness::Rng;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::rc::Rc;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

/// Node ids a schedule may use: the first members and the ones membership changes add.
const POOL: u64 = 7;

/// The state machine: the applied entries, (index, term, data). Snapshots serialize it.
type Applied = Vec<(u64, u64, Vec<u8>)>;

fn encode_state(applied: &Applied) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, t, d) in applied {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&(d.len() as u32).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

fn decode_state(mut b: &[u8]) -> Applied {
    let mut out = Vec::new();
    while !b.is_empty() {
        let i = u64::from_le_bytes(b[..8].try_into().unwrap());
        let t = u64::from_le_bytes(b[8..16].try_into().unwrap());
        let n = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
        out.push((i, t, b[20..20 + n].to_vec()));
        b = &b[20 + n..];
    }
    out
}

/// `MemStorage` whose reads of entries and terms fail once when a countdown reaches zero.
struct SimStorage {
    inner: MemStorage,
    /// Reads until the next failure; 0 for none planned.
    fail_in: Rc<Cell<u64>>,
}

impl SimStorage {
    fn read_fails(&self) -> keel::Result<()> {
        match self.fail_in.get() {
            0 => Ok(()),
            1 => {
                self.fail_in.set(0);
                Err(keel::Error::Failed { cause: "injected read failure".into() })
            }
            n => {
                self.fail_in.set(n - 1);
                Ok(())
            }
        }
    }
}

impl Storage for SimStorage {
    fn initial_state(&self) -> keel::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> keel::Result<Vec<Entry>> {
        self.read_fails()?;
        self.inner.entries(lo, hi, max_bytes)
    }
    fn term(&self, index: u64) -> keel::Result<u64> {
        self.read_fails()?;
        self.inner.term(index)
    }
    fn first_index(&self) -> keel::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> keel::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64) -> keel::Result<Snapshot> {
        self.inner.snapshot(request_index)
    }
}

impl StorageMut for SimStorage {
    type SnapshotWriter = <MemStorage as StorageMut>::SnapshotWriter;
    fn append(&mut self, entries: &[Entry]) -> keel::Result<()> {
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> keel::Result<()> {
        self.inner.set_hard_state(hs)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> keel::Result<()> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, metadata: &SnapshotMetadata, data: &mut dyn Read) -> keel::Result<()> {
        self.inner.apply_snapshot(metadata, data)
    }
    fn begin_snapshot(&self, index: u64, cs: &ConfState) -> keel::Result<Self::SnapshotWriter> {
        self.inner.begin_snapshot(index, cs)
    }
    fn finish_snapshot(&mut self, writer: Self::SnapshotWriter) -> keel::Result<()> {
        self.inner.finish_snapshot(writer)
    }
    fn compact(&mut self, index: u64) -> keel::Result<()> {
        self.inner.compact(index)
    }
    fn receive_snapshot(&self, metadata: &SnapshotMetadata) -> keel::Result<Box<dyn SnapshotSink>> {
        self.inner.receive_snapshot(metadata)
    }
    fn snapshot_stager(&self) -> std::sync::Arc<dyn keel::storage::SnapshotStager> {
        self.inner.snapshot_stager()
    }
}

/// A state machine the application flushed: what it applied, up to which index, and the
/// configuration as of that index.
#[derive(Clone)]
struct Flushed {
    applied: Applied,
    index: u64,
    conf: ConfState,
}

struct Node {
    raw: Option<RawNode<SimStorage>>,
    /// The storage of a crashed node, until it restarts.
    down: Option<SimStorage>,
    applied: Applied,
    /// The configuration as of the last applied index (what the application tracks).
    conf: ConfState,
    /// The state machine as last flushed; survives crashes.
    flushed: Option<Flushed>,
    /// Commit index seen in this incarnation.
    commit_seen: u64,
    persisted_commit_seen: u64,
    /// Reads asked on this node and not yet confirmed: context -> the highest index applied
    /// anywhere when it was asked.
    reads: BTreeMap<Vec<u8>, u64>,
    /// Ticks per global tick, in percent (clock skew).
    rate: u64,
    tick_credit: u64,
    /// A Ready taken whose persisting waits (a full disk): meanwhile only partial Readies
    /// (`ready_while_persisting`) are handled. Lost in a crash, as the unpersisted is.
    held: Option<Ready>,
}

/// How a schedule is set up.
struct Setup {
    skew: bool,
    failing_reads: bool,
    lose_commit_only: bool,
    /// Readies may wait to be persisted (a full disk) while partial Readies go out.
    stalls: bool,
    config: Config,
}

struct Sim {
    seed: u64,
    step: u64,
    rng: Rng,
    setup: Setup,
    /// The first members' configuration: every node, joining or restarting from nothing,
    /// starts from it.
    bootstrap: ConfState,
    nodes: BTreeMap<u64, Node>,
    net: VecDeque<Message>,
    /// Directed pairs (from, to) that cannot talk.
    cut: BTreeSet<(u64, u64)>,
    /// The step from which the partition may heal.
    heal_at: u64,
    leaders: BTreeMap<u64, u64>,
    /// Every entry applied anywhere: index -> (term, data).
    applied: BTreeMap<u64, (u64, Vec<u8>)>,
    /// For each applied index, the highest term any node had when it was first applied: the
    /// entry was committed in that term or earlier, so every leader of a later term holds it.
    committed_by: BTreeMap<u64, u64>,
    fail_in: BTreeMap<u64, Rc<Cell<u64>>>,
    proposals: u64,
    totals: Totals,
    /// `KEEL_RAFT_TRACE`: print every event (for replaying one schedule).
    trace: bool,
    /// Chunk sizes and damage of snapshot transfers: a generator of its own.
    wire: Rng,
    /// Whether snapshot transfers may be damaged (not in the calm phase).
    wire_faults: bool,
}

/// What a schedule did, so a run shows that it exercised something.
#[derive(Debug, Default, Clone)]
struct Totals {
    applied: u64,
    leaders: u64,
    snapshots: u64,
    conf_changes: u64,
    joint_entered: u64,
    leaders_removed: u64,
    transfers: u64,
    reads: u64,
    storage_failures: u64,
    restarts_above_commit: u64,
    transfers_refused: u64,
    partial_readies: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.applied += o.applied;
        self.leaders += o.leaders;
        self.snapshots += o.snapshots;
        self.conf_changes += o.conf_changes;
        self.joint_entered += o.joint_entered;
        self.leaders_removed += o.leaders_removed;
        self.transfers += o.transfers;
        self.reads += o.reads;
        self.storage_failures += o.storage_failures;
        self.restarts_above_commit += o.restarts_above_commit;
        self.transfers_refused += o.transfers_refused;
        self.partial_readies += o.partial_readies;
    }
}

fn in_conf(cs: &ConfState, id: u64) -> bool {
    cs.voters.contains(&id) || cs.voters_outgoing.contains(&id) || cs.learners.contains(&id)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let n = if rng.chance(70) { 3 } else { 5 };
        let ids: Vec<u64> = (1..=n).collect();
        let mut config = Config::new(1);
        config.max_size_per_msg = if rng.chance(50) { 512 } else { 64 };
        config.max_inflight_msgs = 4;
        if rng.chance(30) {
            config.max_inflight_bytes = 1024;
        }
        if rng.chance(30) {
            config.max_committed_size_per_ready = 128;
        }
        if rng.chance(30) {
            config.max_uncommitted_size = 2048;
        }
        // Without CheckQuorum a partitioned leader keeps believing it leads: reads must still
        // be linearizable (the heartbeat round, not a lease, is what makes them so).
        config.check_quorum = rng.chance(70);
        let skew = rng.chance(40);
        // Lease-based reads assume clocks that drift little: only in schedules without skew.
        if !skew && config.check_quorum && rng.chance(40) {
            config.read_only_option = ReadOnlyOption::LeaseBased;
        }
        let setup = Setup {
            skew,
            failing_reads: rng.chance(30),
            lose_commit_only: rng.chance(50),
            stalls: rng.chance(40),
            config,
        };
        let bootstrap = ConfState { voters: ids.clone(), ..ConfState::default() };
        let mut sim = Sim {
            seed,
            step: 0,
            rng,
            setup,
            bootstrap,
            nodes: BTreeMap::new(),
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            heal_at: 0,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            committed_by: BTreeMap::new(),
            fail_in: BTreeMap::new(),
            proposals: 0,
            totals: Totals::default(),
            trace: std::env::var_os("KEEL_RAFT_TRACE").is_some(),
            wire: Rng::new(seed ^ 0x5eed_c4a2),
            wire_faults: true,
        };
        for id in ids {
            sim.start_new(id);
        }
        sim
    }

    fn config(&self, id: u64, applied: u64, joining: bool) -> Config {
        let mut c = self.setup.config.clone();
        c.id = id;
        c.seed = self.seed ^ self.step;
        c.applied = applied;
        c.joining = joining;
        c
    }

    /// Starts node `id` with nothing: the bootstrap configuration and an empty log.
    fn start_new(&mut self, id: u64) {
        let mut inner = MemStorage::new();
        inner.set_conf_state(&self.bootstrap).unwrap();
        let fail_in = Rc::new(Cell::new(0));
        self.fail_in.insert(id, fail_in.clone());
        let storage = SimStorage { inner, fail_in };
        let joining = !in_conf(&self.bootstrap, id);
        let raw = RawNode::new(&self.config(id, 0, joining), storage).unwrap();
        let rate = if self.setup.skew { [50, 100, 100, 150, 200][self.rng.below(5) as usize] } else { 100 };
        self.nodes.insert(
            id,
            Node {
                raw: Some(raw),
                down: None,
                applied: Vec::new(),
                conf: self.bootstrap.clone(),
                flushed: None,
                commit_seen: 0,
                persisted_commit_seen: 0,
                reads: BTreeMap::new(),
                rate,
                tick_credit: 0,
                held: None,
            },
        );
    }

    fn fail(&self, what: String) -> ! {
        panic!("raft simulation failure at step {}: {what}\n  replay with KEEL_RAFT_SEED={}", self.step, self.seed)
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn alive(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.raw.is_some()).map(|(&id, _)| id).collect()
    }

    fn raw(&mut self, id: u64) -> Option<&mut RawNode<SimStorage>> {
        self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut())
    }

    /// Checks a message as it leaves `from` against what `from` has persisted.
    fn check_send(&self, m: &Message) {
        let storage = &self.nodes[&m.from].raw.as_ref().expect("sender is up").storage().inner;
        if let Some(broken) = common::unkept_promise(storage, m) {
            self.fail(broken);
        }
    }

    fn send_all(&mut self, sender: u64, messages: Vec<Message>) {
        for m in messages {
            // A transport holds `from` to the connection's peer: a node never sends as another.
            if m.from != sender {
                self.fail(format!("node {sender} sent a message as node {}: {m:?}", m.from));
            }
            self.check_send(&m);
            self.net.push_back(m);
        }
    }

    /// A call on a node returned an error: a storage failure stops the node (the application
    /// restarts it later); anything else is a refused request, which the client retries.
    fn on_error(&mut self, id: u64, e: RaftError) {
        if let RaftError::Storage(_) = e {
            self.totals.storage_failures += 1;
            self.crash(id);
        }
    }

    /// Processes one Ready of `id`; with `crash_after = Some(k)` the node crashes after k of
    /// the persistence steps (snapshot, entries, HardState).
    fn handle_ready(&mut self, id: u64, crash_after: Option<usize>) {
        if self.raw(id).is_none() {
            return;
        }
        if let Some(rd) = self.nodes.get_mut(&id).unwrap().held.take() {
            // The disk has room again now and then; until then only partial Readies go out.
            if crash_after.is_some() || self.rng.chance(20) {
                return self.persist_and_finish(id, rd, crash_after);
            }
            self.nodes.get_mut(&id).unwrap().held = Some(rd);
            return self.handle_partial(id);
        }
        let Some(raw) = self.raw(id) else { return };
        if !raw.has_ready() {
            return;
        }
        let rd: Ready = match raw.ready() {
            Ok(rd) => rd,
            Err(e) => return self.on_error(id, e),
        };
        if self.trace {
            let entries: Vec<(u64, u64)> = rd.entries.iter().map(|e| (e.index, e.term)).collect();
            let committed: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
            let snap = rd.snapshot.as_ref().map(|s| (s.metadata.index, s.metadata.term));
            eprintln!(
                "[{}] ready {id} hs {:?} entries {entries:?} snapshot {snap:?} committed {committed:?} crash {crash_after:?}",
                self.step, rd.hard_state
            );
        }
        // Sent before persisting: check_send holds them to what was persisted before this Ready.
        self.send_all(id, rd.messages.clone());
        if self.setup.stalls && crash_after.is_none() && self.rng.chance(10) {
            // What may be handled before persisting is, as a partial Ready (messages were sent).
            let mut rd = rd;
            let raw = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap();
            let mut sendable = raw.take_sendable(&mut rd).unwrap_or_else(|e| self.fail(format!("take_sendable: {e}")));
            sendable.messages.clear();
            self.nodes.get_mut(&id).unwrap().held = Some(rd);
            return self.finish_partial(id, sendable);
        }
        self.persist_and_finish(id, rd, crash_after);
    }

    /// While `id` holds a Ready it cannot persist: handles a partial Ready, which holds nothing
    /// to persist and nothing that promises what is durable (`check_send` holds its messages to
    /// what was persisted before).
    fn handle_partial(&mut self, id: u64) {
        let raw = self.raw(id).expect("up");
        if !raw.has_ready_while_persisting() {
            return;
        }
        let rd = match raw.ready_while_persisting() {
            Ok(rd) => rd,
            Err(e) => return self.on_error(id, e),
        };
        self.finish_partial(id, rd);
    }

    fn finish_partial(&mut self, id: u64, rd: Ready) {
        if !rd.is_partial()
            || !rd.entries.is_empty()
            || rd.hard_state.is_some()
            || rd.snapshot.is_some()
            || !rd.persisted_messages.is_empty()
        {
            self.fail(format!("node {id}: a partial Ready holds something to persist: {rd:?}"));
        }
        if self.trace {
            let committed: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
            eprintln!("[{}] partial ready {id} committed {committed:?}", self.step);
        }
        self.totals.partial_readies += 1;
        self.send_all(id, rd.messages.clone());
        self.apply_and_advance(id, rd);
    }

    /// Applies `rd`'s committed entries, checks its read states and advances it; whether it
    /// was advanced (a storage failure crashes the node instead).
    fn apply_and_advance(&mut self, id: u64, rd: Ready) -> bool {
        for e in &rd.committed_entries {
            if let Err(err) = self.apply(id, e) {
                self.on_error(id, err);
                return false;
            }
        }
        self.check_reads(id, &rd);
        let node = self.nodes.get_mut(&id).unwrap();
        if let Err(e) = node.raw.as_mut().unwrap().advance(rd) {
            self.on_error(id, e);
            return false;
        }
        true
    }

    /// Persists `rd` (its `messages` were sent when it was taken), then sends, applies and
    /// advances it; with `crash_after = Some(k)` the node crashes after k persistence steps.
    fn persist_and_finish(&mut self, id: u64, rd: Ready, crash_after: Option<usize>) {
        let lose_commit_only = self.setup.lose_commit_only && self.rng.chance(30);
        let node = self.nodes.get_mut(&id).unwrap();
        let raw = node.raw.as_mut().unwrap();
        if let Some(s) = &rd.snapshot {
            raw.storage_mut().apply_snapshot(&s.metadata, &mut s.reader().unwrap()).unwrap();
            node.applied = decode_state(&s.read_to_vec().unwrap());
            node.conf = s.metadata.conf_state.clone();
        }
        if crash_after == Some(1) {
            return self.crash(id);
        }
        if !rd.entries.is_empty() {
            raw.storage_mut().append(&rd.entries).unwrap();
        }
        if crash_after == Some(2) {
            return self.crash(id);
        }
        if let Some(hs) = rd.hard_state {
            // A commit-only change is written without a sync: a crash may lose it.
            if !lose_commit_only || rd.must_sync {
                raw.storage_mut().set_hard_state(&hs).unwrap();
            }
        }
        if crash_after.is_some() {
            return self.crash(id);
        }
        self.send_all(id, rd.persisted_messages.clone());
        // A snapshot's entries were checked against the global record as they were applied.
        if let Some(s) = &rd.snapshot {
            self.totals.snapshots += 1;
            for (i, t, d) in decode_state(&s.read_to_vec().unwrap()) {
                self.check_applied(id, i, t, &d);
            }
        }
        if !self.apply_and_advance(id, rd) {
            return;
        }
        // The application flushes its state machine now and then.
        if self.rng.chance(20) {
            let node = self.nodes.get_mut(&id).unwrap();
            let index = node.applied.last().map_or(0, |a| a.0);
            node.flushed = Some(Flushed { applied: node.applied.clone(), index, conf: node.conf.clone() });
        }
    }

    fn apply(&mut self, id: u64, e: &Entry) -> Result<(), RaftError> {
        let node = &self.nodes[&id];
        let expected = node.applied.last().map_or(0, |a| a.0) + 1;
        let floor = node.raw.as_ref().unwrap().storage().first_index().unwrap();
        if e.index != expected && !(node.applied.is_empty() && e.index <= floor) {
            self.fail(format!("node {id} applied index {} after {}", e.index, expected - 1));
        }
        self.check_applied(id, e.index, e.term, &e.data);
        if e.entry_type == EntryType::ConfChangeV2 {
            let cc = ConfChange::decode(&e.data).unwrap_or_else(|err| self.fail(format!("committed {err}")));
            let node = self.nodes.get_mut(&id).unwrap();
            let raw = node.raw.as_mut().unwrap();
            let was_leader = raw.status().soft_state.role == Role::Leader;
            let cs = match raw.apply_conf_change(&cc) {
                Ok(cs) => cs,
                Err(err @ RaftError::Storage(_)) => return Err(err),
                Err(err) => self.fail(format!("node {id} cannot apply the committed change {cc:?}: {err}")),
            };
            node.conf = cs.clone();
            if was_leader && raw.status().soft_state.role != Role::Leader {
                self.totals.leaders_removed += 1;
            }
            if !cs.voters_outgoing.is_empty() {
                self.totals.joint_entered += 1;
            }
            self.totals.conf_changes += 1;
            // A node the change adds is started (once, with nothing) when first applied.
            let new: Vec<u64> =
                cs.voters.iter().chain(&cs.learners).copied().filter(|n| !self.nodes.contains_key(n)).collect();
            for n in new {
                self.start_new(n);
            }
        }
        self.nodes.get_mut(&id).unwrap().applied.push((e.index, e.term, e.data.to_vec()));
        Ok(())
    }

    fn check_applied(&mut self, id: u64, index: u64, term: u64, data: &[u8]) {
        match self.applied.get(&index) {
            Some((t, d)) if (*t, &d[..]) != (term, data) => {
                self.fail(format!("node {id} applied ({index}, {term}) where another applied ({index}, {t})"))
            }
            Some(_) => {}
            None => {
                self.applied.insert(index, (term, data.to_vec()));
                let now = self.highest_term();
                self.committed_by.insert(index, now);
            }
        }
    }

    /// Linearizable reads: a confirmed read's index covers every write completed before it was
    /// asked.
    fn check_reads(&mut self, id: u64, rd: &Ready) {
        for rs in &rd.read_states {
            // A response the network duplicated, or one to a request asked before a restart:
            // the application no longer waits for it.
            let Some(floor) = self.nodes.get_mut(&id).unwrap().reads.remove(&rs.request_ctx) else { continue };
            if rs.index < floor {
                self.fail(format!(
                    "stale read on node {id}: confirmed at index {} but index {floor} was applied before it was asked",
                    rs.index
                ));
            }
            self.totals.reads += 1;
        }
    }

    /// The highest term of any node, running or down (from its persisted HardState).
    fn highest_term(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match (&n.raw, &n.down) {
                (Some(raw), _) => raw.status().hard_state.term,
                (None, Some(s)) => s.initial_state().unwrap().hard_state.term,
                (None, None) => 0,
            })
            .max()
            .unwrap_or(0)
    }

    fn crash(&mut self, id: u64) {
        if self.trace {
            eprintln!("[{}] crash {id}", self.step);
        }
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(raw) = node.raw.take() {
            node.down = Some(raw.into_storage());
            node.held = None;
            node.applied.clear();
            node.commit_seen = 0;
            node.reads.clear();
        }
    }

    fn restart(&mut self, id: u64) {
        let Some(storage) = self.nodes.get_mut(&id).unwrap().down.take() else { return };
        // The state machine restarts from the newest of its flushed state and the snapshot;
        // committed entries after it are replayed.
        let from_snapshot = match storage.snapshot(0) {
            Ok(s) if s.metadata.index > 0 => Some(Flushed {
                applied: decode_state(&s.read_to_vec().unwrap()),
                index: s.metadata.index,
                conf: s.metadata.conf_state.clone(),
            }),
            _ => None,
        };
        let node = self.nodes.get_mut(&id).unwrap();
        let last = storage.last_index().unwrap();
        let flushed = node.flushed.clone().filter(|f| f.index <= last);
        let start = match (from_snapshot, flushed) {
            (Some(s), Some(f)) => Some(if f.index > s.index { f } else { s }),
            (s, f) => s.or(f),
        }
        .unwrap_or(Flushed { applied: Vec::new(), index: 0, conf: self.bootstrap.clone() });
        if start.index > storage.initial_state().unwrap().hard_state.commit {
            self.totals.restarts_above_commit += 1;
        }
        // `joining`: the node may have been removed (or never added) as of its applied index.
        let config = self.config(id, start.index, true);
        if self.trace {
            eprintln!("[{}] restart {id} applied {} conf {:?}", self.step, start.index, start.conf);
        }
        let node = self.nodes.get_mut(&id).unwrap();
        node.applied = start.applied;
        node.conf = start.conf;
        let start_index = start.index;
        // Start-up reads (the membership is rebuilt from the log) are not failed on purpose: a
        // node that cannot start would only stay down.
        let planned = storage.fail_in.replace(0);
        let raw =
            RawNode::new(&config, storage).unwrap_or_else(|e| self.fail(format!("node {id} cannot restart: {e}")));
        raw.storage().fail_in.set(planned);
        // The membership the node rebuilt is the one the application tracked for this index.
        let rebuilt = raw.status().conf_state;
        let tracked = self.nodes[&id].conf.clone();
        if rebuilt != tracked {
            self.fail(format!("node {id} restarted at applied {start_index} with {rebuilt:?}, expected {tracked:?}"));
        }
        self.nodes.get_mut(&id).unwrap().raw = Some(raw);
    }

    fn deliver(&mut self, m: Message) {
        let to = m.to;
        if self.cut.contains(&(m.from, to)) {
            return;
        }
        if self.trace {
            let entries: Vec<(u64, u64)> = m.entries.iter().map(|e| (e.index, e.term)).collect();
            let snap = m.snapshot.as_ref().map(|s| (s.metadata.index, s.metadata.term));
            eprintln!(
                "[{}] deliver {:?} {}->{} term {} index {} log_term {} commit {} reject {} entries {entries:?} snapshot {snap:?}",
                self.step, m.kind, m.from, m.to, m.term, m.index, m.log_term, m.commit, m.reject
            );
        }
        let Some(raw) = self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) else { return };
        let m = if m.snapshot.is_some() {
            match over_the_wire(m, &raw.storage().inner, &mut self.wire, self.wire_faults) {
                Some(m) => m,
                None => {
                    self.totals.transfers_refused += 1;
                    return;
                }
            }
        } else {
            m
        };
        if let Err(e) = raw.step(m) {
            self.on_error(to, e);
        }
    }

    fn propose(&mut self, id: u64, data: Vec<u8>) {
        if let Some(raw) = self.raw(id)
            && let Err(e) = raw.propose(data)
        {
            self.on_error(id, e);
        }
    }

    fn tick(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.tick_credit += node.rate;
        while node.tick_credit >= 100 {
            node.tick_credit -= 100;
            if let Some(raw) = node.raw.as_mut() {
                raw.tick();
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.alive()
            .into_iter()
            .find(|id| self.nodes[id].raw.as_ref().unwrap().status().soft_state.role == Role::Leader)
    }

    /// A random membership change proposed to the leader (refusals are fine: one at a time).
    fn change_membership(&mut self) {
        let Some(leader) = self.leader() else { return };
        let cs = self.nodes[&leader].raw.as_ref().unwrap().status().conf_state;
        let cc = if !cs.voters_outgoing.is_empty() {
            if cs.auto_leave {
                return;
            }
            ConfChange::leave_joint()
        } else {
            let k = 1 + usize::from(self.rng.chance(30)) + usize::from(self.rng.chance(20));
            let changes: Vec<ConfChangeSingle> = (0..k).filter_map(|_| self.random_change(&cs)).collect();
            if changes.is_empty() {
                return;
            }
            let transition = match self.rng.below(3) {
                0 => ConfChangeTransition::Auto,
                1 => ConfChangeTransition::Implicit,
                _ => ConfChangeTransition::Explicit,
            };
            ConfChange { transition, changes, context: Vec::new() }
        };
        if let Some(raw) = self.raw(leader)
            && let Err(e) = raw.propose_conf_change(&cc)
        {
            self.on_error(leader, e);
        }
    }

    fn random_change(&mut self, cs: &ConfState) -> Option<ConfChangeSingle> {
        let pick = |rng: &mut Rng, v: &[u64]| (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize]);
        let outside: Vec<u64> = (1..=POOL).filter(|&id| !in_conf(cs, id)).collect();
        let (change_type, node_id) = match self.rng.below(5) {
            0 => (ConfChangeType::AddLearnerNode, pick(&mut self.rng, &outside)?),
            1 => (ConfChangeType::AddNode, pick(&mut self.rng, &cs.learners)?),
            2 => (ConfChangeType::AddNode, pick(&mut self.rng, &outside)?),
            3 if cs.voters.len() > 2 => (ConfChangeType::RemoveNode, pick(&mut self.rng, &cs.voters)?),
            4 if cs.voters.len() > 2 => (ConfChangeType::AddLearnerNode, pick(&mut self.rng, &cs.voters)?),
            _ => (ConfChangeType::RemoveNode, pick(&mut self.rng, &cs.learners)?),
        };
        Some(ConfChangeSingle { change_type, node_id })
    }

    fn transfer(&mut self) {
        let Some(leader) = self.leader() else { return };
        let voters = self.nodes[&leader].raw.as_ref().unwrap().status().conf_state.voters;
        let to = voters[self.rng.below(voters.len() as u64) as usize];
        self.totals.transfers += 1;
        if let Some(raw) = self.raw(leader)
            && let Err(e) = raw.transfer_leadership(to)
        {
            self.on_error(leader, e);
        }
    }

    fn read(&mut self, id: u64) {
        self.proposals += 1;
        let ctx = format!("r{}", self.proposals).into_bytes();
        let floor = self.applied.keys().next_back().copied().unwrap_or(0);
        let Some(raw) = self.raw(id) else { return };
        match raw.read_index(ctx.clone()) {
            Ok(()) => {
                self.nodes.get_mut(&id).unwrap().reads.insert(ctx, floor);
            }
            Err(e) => self.on_error(id, e),
        }
    }

    fn compact(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(raw) = node.raw.as_mut() else { return };
        let Some(&(index, _, _)) = node.applied.last() else { return };
        let storage = raw.storage_mut();
        let first = storage.first_index().unwrap();
        if index < first + 8 || index > storage.last_index().unwrap() {
            return;
        }
        let data = encode_state(&node.applied);
        if storage.create_snapshot(index, &node.conf, &mut &data[..]).is_ok() {
            storage.compact(index.saturating_sub(2)).unwrap();
        }
    }

    /// The invariant checks read the nodes' logs too; those reads must not fail.
    fn check(&mut self) {
        let planned: Vec<(u64, u64)> = self.fail_in.iter().map(|(&id, c)| (id, c.replace(0))).collect();
        self.check_invariants();
        for (id, n) in planned {
            self.fail_in[&id].set(n);
        }
    }

    fn check_invariants(&mut self) {
        let alive = self.alive();
        for &id in &alive {
            let raw = self.nodes[&id].raw.as_ref().unwrap();
            let st = raw.status();
            let persisted_commit = raw.storage().initial_state().unwrap().hard_state.commit;
            if st.soft_state.role == Role::Leader {
                let term = st.hard_state.term;
                if let Some(&other) = self.leaders.get(&term)
                    && other != id
                {
                    self.fail(format!("two leaders in term {term}: {other} and {id}"));
                }
                self.leaders.insert(term, id);
                // Leader completeness: an entry committed in an earlier term is in the log of
                // every leader of a later term. (A deposed leader that has not heard of a newer
                // term yet may still lack it.)
                let (first, last) = raw.log_bounds().unwrap();
                for (&i, (t, _)) in self.applied.range(first..) {
                    if self.committed_by[&i] >= term {
                        continue;
                    }
                    if i > last || raw.log_term(i) != Some(*t) {
                        self.fail(format!("leader {id} of term {term} lacks applied entry ({i}, {t})"));
                    }
                }
            }
            let node = &self.nodes[&id];
            if st.hard_state.commit < node.commit_seen {
                self.fail(format!("node {id} commit went back from {} to {}", node.commit_seen, st.hard_state.commit));
            }
            // Lost commit-only changes may leave the persisted commit lower; never in a model
            // that keeps every write.
            if persisted_commit < node.persisted_commit_seen && !self.setup.lose_commit_only {
                self.fail(format!("node {id} persisted commit went back to {persisted_commit}"));
            }
            let node = self.nodes.get_mut(&id).unwrap();
            node.commit_seen = st.hard_state.commit;
            node.persisted_commit_seen = persisted_commit;
        }
        // Log matching, pairwise over the overlap of the logs.
        for (a_pos, &a) in alive.iter().enumerate() {
            for &b in &alive[a_pos + 1..] {
                let (ra, rb) = (self.nodes[&a].raw.as_ref().unwrap(), self.nodes[&b].raw.as_ref().unwrap());
                let ((fa, la), (fb, lb)) = (ra.log_bounds().unwrap(), rb.log_bounds().unwrap());
                let (lo, hi) = (fa.max(fb), la.min(lb));
                if lo > hi {
                    continue;
                }
                let (ea, eb) = (ra.log_entries(lo, hi + 1).unwrap(), rb.log_entries(lo, hi + 1).unwrap());
                // From the highest index with equal terms down, everything must be equal.
                if let Some(k) = (0..ea.len()).rev().find(|&k| ea[k].term == eb[k].term)
                    && ea[..=k] != eb[..=k]
                {
                    self.fail(format!("logs of {a} and {b} agree at index {} but differ before it", ea[k].index));
                }
            }
        }
    }

    fn random_message(&mut self) -> Option<Message> {
        if self.net.is_empty() {
            return None;
        }
        let i = self.rng.below(self.net.len() as u64) as usize;
        self.net.remove(i)
    }

    /// One chaotic step.
    fn chaos_step(&mut self) {
        let alive = self.alive();
        let ids = self.ids();
        let pick = |rng: &mut Rng, ids: &[u64]| ids[rng.below(ids.len() as u64) as usize];
        match self.rng.below(110) {
            0..=29 => {
                for _ in 0..3 {
                    if let Some(m) = self.random_message() {
                        self.deliver(m);
                    }
                }
            }
            30..=44 => {
                for id in alive {
                    self.tick(id);
                }
            }
            45..=64 if !alive.is_empty() => {
                let id = pick(&mut self.rng, &alive);
                self.handle_ready(id, None);
            }
            65..=73 if !alive.is_empty() => {
                let id = pick(&mut self.rng, &alive);
                self.proposals += 1;
                let data = format!("p{}-{}", self.seed, self.proposals).into_bytes();
                self.propose(id, data);
            }
            74..=76 => {
                let _ = self.random_message(); // dropped
            }
            77..=79 => {
                if let Some(m) = self.random_message() {
                    self.net.push_back(m.clone());
                    self.net.push_back(m); // duplicated
                }
            }
            80 | 81 if alive.len() > 1 => {
                let id = pick(&mut self.rng, &alive);
                let at = Some(1 + self.rng.below(3) as usize);
                self.handle_ready(id, at); // crashes part-way through persisting
            }
            82 if alive.len() > 1 => {
                let id = pick(&mut self.rng, &alive);
                self.crash(id);
            }
            83..=86 => {
                let down: Vec<u64> = ids.iter().copied().filter(|id| self.nodes[id].raw.is_none()).collect();
                if !down.is_empty() {
                    let id = pick(&mut self.rng, &down);
                    self.restart(id);
                }
            }
            87 if self.cut.is_empty() => {
                // A partition: a random side cut off from the rest, both ways or one way, for
                // long enough (often) for the other side to elect a leader and commit.
                self.heal_at = self.step + 20 + self.rng.below(200);
                let one_way = self.rng.chance(40);
                let side: Vec<u64> = ids.iter().copied().filter(|_| self.rng.chance(40)).collect();
                for &a in &side {
                    for &b in ids.iter().filter(|b| !side.contains(b)) {
                        self.cut.insert((a, b));
                        if !one_way {
                            self.cut.insert((b, a));
                        }
                    }
                }
            }
            89..=91 if self.step >= self.heal_at => self.cut.clear(),
            // The leader cut off from everyone, for long enough that the rest elect another:
            // a deposed leader that does not know it yet is where stale reads would come from.
            103 if self.cut.is_empty() => {
                if let Some(l) = self.leader() {
                    self.heal_at = self.step + 100 + self.rng.below(200);
                    for &b in ids.iter().filter(|&&b| b != l) {
                        self.cut.insert((l, b));
                        self.cut.insert((b, l));
                    }
                }
            }
            92 | 93 if !alive.is_empty() => {
                let id = pick(&mut self.rng, &alive);
                self.compact(id);
            }
            94..=96 => self.change_membership(),
            97 => self.transfer(),
            98..=101 if !alive.is_empty() => {
                let id = pick(&mut self.rng, &alive);
                self.read(id);
            }
            102 if self.setup.failing_reads && !alive.is_empty() => {
                let id = pick(&mut self.rng, &alive);
                self.fail_in[&id].set(1 + self.rng.below(20));
            }
            _ => {
                if let Some(m) = self.net.pop_front() {
                    self.deliver(m);
                }
            }
        }
    }

    /// The calm phase: no faults; returns once a new proposal is applied on every member of the
    /// final configuration and they agree on it.
    fn calm(&mut self, max_ticks: u64) {
        self.cut.clear();
        self.wire_faults = false;
        for fail_in in self.fail_in.values() {
            fail_in.set(0);
        }
        for id in self.ids() {
            self.restart(id);
        }
        let data = format!("liveness-{}", self.seed).into_bytes();
        for tick in 0..max_ticks {
            self.step += 1;
            for id in self.ids() {
                self.tick(id);
            }
            // Deliver and persist until quiet.
            for _ in 0..50 {
                for id in self.ids() {
                    self.handle_ready(id, None);
                }
                if self.net.is_empty() {
                    break;
                }
                while let Some(m) = self.net.pop_front() {
                    self.deliver(m);
                }
            }
            for id in self.ids() {
                self.restart(id); // nodes added during the calm phase
            }
            self.check();
            let leader = self.leader();
            if tick % 5 == 0
                && let Some(l) = leader
                && !self.applied.values().any(|(_, d)| *d == data)
            {
                self.propose(l, data.clone());
            }
            if let Some(l) = leader
                && self.settled(l, &data)
            {
                return;
            }
        }
        let states: Vec<String> = self
            .ids()
            .iter()
            .map(|id| {
                let st = self.nodes[id].raw.as_ref().unwrap().status();
                format!(
                    "{id}: {:?} {:?} applied {} last {} conf {:?} progress {:?}",
                    st.soft_state, st.hard_state, st.applied, st.last_index, st.conf_state, st.progress
                )
            })
            .collect();
        self.fail(format!("liveness: no proposal applied everywhere within {max_ticks} calm ticks ({states:?})"));
    }

    /// Every member of the leader's configuration applied `data` and holds the same
    /// configuration.
    fn settled(&self, leader: u64, data: &[u8]) -> bool {
        let cs = self.nodes[&leader].raw.as_ref().unwrap().status().conf_state;
        let members: Vec<u64> = (1..=POOL).filter(|&id| in_conf(&cs, id)).collect();
        members.iter().all(|id| {
            self.nodes.get(id).is_some_and(|n| {
                n.applied.iter().any(|(_, _, d)| d == data)
                    && n.raw.as_ref().is_some_and(|raw| raw.status().conf_state == cs)
            })
        })
    }
}

/// A snapshot message sent as a transport sends it: encoded (the header, no data), then the
/// snapshot's data in chunks of a random size, each encoded and decoded, into a receiver
/// staging in the follower's storage. With `damage`, one transfer in ten gets a bit flipped in
/// one chunk, which must be refused. The message to step, or `None` if the transfer failed.
fn over_the_wire(m: Message, storage: &MemStorage, rng: &mut Rng, damage: bool) -> Option<Message> {
    let snapshot = m.snapshot.clone().expect("a snapshot message");
    let Ok(Decoded::Snapshot(pending)) = Message::decode(&m.encode()) else {
        panic!("a snapshot message decodes as an announcement")
    };
    let sink = storage.receive_snapshot(&pending.header().metadata).unwrap();
    let mut receiver = SnapshotReceiver::new(pending.header().clone(), sink);
    let chunk_bytes = 1 + rng.below(64) as usize;
    let chunks: Vec<Vec<u8>> =
        SnapshotSender::new(snapshot, chunk_bytes).unwrap().map(|c| c.unwrap().encode()).collect();
    let flip = (damage && rng.chance(10)).then(|| (rng.below(chunks.len() as u64) as usize, rng.next_u64()));
    let mut received = Ok(());
    for (k, mut bytes) in chunks.into_iter().enumerate() {
        if let Some((_, bit)) = flip.filter(|&(at, _)| at == k) {
            let bit = (bit % (bytes.len() as u64 * 8)) as usize;
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        received = SnapshotChunk::decode(&bytes).map_err(TransferError::from).and_then(|c| receiver.receive(&c));
        if received.is_err() {
            break;
        }
    }
    match received.and_then(|()| receiver.finish()) {
        Ok(s) => {
            assert!(flip.is_none(), "a transfer with a flipped bit was accepted");
            Some(pending.complete(s).expect("the receiver made the announced snapshot"))
        }
        Err(e) => {
            assert!(flip.is_some(), "an intact snapshot transfer was refused: {e}");
            None
        }
    }
}

fn run_schedule(seed: u64, steps: u64, totals: &mut Totals) {
    // Any panic (a storage call refusing what the node asked, say) names its schedule too.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_schedule_inner(seed, steps)));
    match run {
        Ok(sim) => {
            let mut t = sim.totals.clone();
            t.applied = sim.applied.len() as u64;
            t.leaders = sim.leaders.len() as u64;
            totals.add(&t);
        }
        Err(panic) => {
            eprintln!("schedule failed: replay with KEEL_RAFT_SEED={seed}");
            std::panic::resume_unwind(panic)
        }
    }
}

fn run_schedule_inner(seed: u64, steps: u64) -> Sim {
    let mut sim = Sim::new(seed);
    let chaos = steps * 4 / 5;
    while sim.step < chaos {
        sim.step += 1;
        sim.chaos_step();
        sim.check();
    }
    sim.calm(steps - chaos);
    sim
}

#[test]
fn random_schedules_keep_raft_safe_and_live() {
    let steps = env_u64("KEEL_RAFT_STEPS").unwrap_or(2_000);
    if let Some(seed) = env_u64("KEEL_RAFT_SEED") {
        run_schedule(seed, steps, &mut Totals::default());
        return;
    }
    let schedules = env_u64("KEEL_RAFT_SCHEDULES").unwrap_or(500);
    let first = env_u64("KEEL_RAFT_FIRST_SEED").unwrap_or(0);
    let mut totals = Totals::default();
    for seed in first..first + schedules {
        run_schedule(seed, steps, &mut totals);
    }
    eprintln!("{schedules} schedules of {steps} steps: safe and live; {totals:?}");
    assert!(totals.applied > schedules && totals.leaders > schedules, "the schedules did little: {totals:?}");
    assert!(
        totals.conf_changes > 0 && totals.reads > 0 && totals.transfers > 0 && totals.partial_readies > 0,
        "features unexercised: {totals:?}"
    );
}
