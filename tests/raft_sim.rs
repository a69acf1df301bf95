//! Deterministic cluster simulator: N `RawNode`s over `MemStorage`, a seeded network that drops,
//! duplicates, reorders and partitions messages, simulated time (ticks), crashes (anywhere,
//! including half-way through persisting a Ready) and restarts that keep only what was persisted,
//! and snapshots with compaction. Snapshots travel as a transport sends them: the message's
//! encoding, then the data in chunks of random sizes through a `SnapshotReceiver` into the
//! follower's storage; in the chaotic phase one transfer in ten has a bit flipped, which the
//! receiver must refuse (the snapshot is then lost, like a dropped message). After every step
//! it checks:
//!
//! - election safety: at most one leader per term;
//! - log matching: two logs holding an entry of the same index and term agree on every entry
//!   up to it;
//! - leader completeness: a leader's log holds every entry applied anywhere;
//! - state machine safety: no two nodes apply different entries at one index, and each applies
//!   in order with no gaps;
//! - a node's commit index never goes backwards while it runs, nor its persisted one ever;
//! - nothing is acknowledged before it is persisted: an append acknowledgement never covers an
//!   entry the sender's storage lacks, and a vote leaves only once the sender's storage records it.
//!
//! Each schedule ends with a calm phase (network healed, every node up, no faults): a leader must
//! be elected and a new proposal applied on every node within it (liveness).
//!
//! `KEEL_RAFT_SCHEDULES` (default 500) and `KEEL_RAFT_STEPS` (default 2,000) set the scale;
//! `KEEL_RAFT_SEED` replays one schedule. A failure prints its seed and step.

mod common;

use keel::raft::{
    Config, Decoded, Message, RawNode, Ready, Role, SnapshotChunk, SnapshotReceiver, SnapshotSender, TransferError,
};
use keel::storage::{ConfState, MemStorage, Storage, StorageMut};
use keel_harness::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

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

struct Node {
    raw: Option<RawNode<MemStorage>>,
    /// The storage of a crashed node, until it restarts.
    down: Option<MemStorage>,
    applied: Applied,
    /// Commit index seen in this incarnation.
    commit_seen: u64,
    persisted_commit_seen: u64,
}

struct Sim {
    seed: u64,
    step: u64,
    rng: Rng,
    ids: Vec<u64>,
    nodes: BTreeMap<u64, Node>,
    net: VecDeque<Message>,
    /// Pairs that cannot talk.
    cut: BTreeSet<(u64, u64)>,
    leaders: BTreeMap<u64, u64>,
    /// Every entry applied anywhere: index -> (term, data).
    applied: BTreeMap<u64, (u64, Vec<u8>)>,
    /// For each applied index, the highest term any node had when it was first applied: the
    /// entry was committed in that term or earlier, so every leader of a later term holds it.
    committed_by: BTreeMap<u64, u64>,
    proposals: u64,
    snapshots_installed: u64,
    /// Chunk sizes and damage of snapshot transfers: a generator of its own, so that the
    /// schedule of everything else is the same as before transfers were chunked.
    wire: Rng,
    /// Whether snapshot transfers may be damaged (not in the calm phase).
    wire_faults: bool,
    transfers_refused: u64,
}

fn config(id: u64, seed: u64, applied: u64) -> Config {
    let mut c = Config::new(id);
    c.seed = seed;
    c.applied = applied;
    c.max_size_per_msg = 512;
    c.max_inflight_msgs = 4;
    c
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let n = if rng.chance(70) { 3 } else { 5 };
        let ids: Vec<u64> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let mut storage = MemStorage::new();
            storage.set_conf_state(&ConfState { voters: ids.clone(), ..ConfState::default() }).unwrap();
            let raw = RawNode::new(&config(id, seed, 0), storage).unwrap();
            nodes.insert(
                id,
                Node { raw: Some(raw), down: None, applied: Vec::new(), commit_seen: 0, persisted_commit_seen: 0 },
            );
        }
        Sim {
            seed,
            step: 0,
            rng,
            ids,
            nodes,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            committed_by: BTreeMap::new(),
            proposals: 0,
            snapshots_installed: 0,
            wire: Rng::new(seed ^ 0x5eed_c4a2),
            wire_faults: true,
            transfers_refused: 0,
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("raft simulation failure at step {}: {what}\n  replay with KEEL_RAFT_SEED={}", self.step, self.seed)
    }

    fn alive(&self) -> Vec<u64> {
        self.ids.iter().copied().filter(|id| self.nodes[id].raw.is_some()).collect()
    }

    /// Checks a message as it leaves `from` against what `from` has persisted.
    fn check_send(&self, m: &Message) {
        let storage = self.nodes[&m.from].raw.as_ref().expect("sender is up").storage();
        if let Some(broken) = common::unkept_promise(storage, m) {
            self.fail(broken);
        }
    }

    fn send_all(&mut self, messages: Vec<Message>) {
        for m in messages {
            self.check_send(&m);
            self.net.push_back(m);
        }
    }

    /// Processes one Ready of `id`; with `crash_after = Some(k)` the node crashes after k of
    /// the persistence steps (snapshot, entries, HardState).
    fn handle_ready(&mut self, id: u64, crash_after: Option<usize>) {
        let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) else { return };
        if !raw.has_ready() {
            return;
        }
        let rd: Ready = raw.ready();
        // Sent before persisting: check_send holds them to what was persisted before this Ready.
        let immediate = rd.messages.clone();
        self.send_all(immediate);
        let node = self.nodes.get_mut(&id).unwrap();
        let raw = node.raw.as_mut().unwrap();
        let mut done = 0;
        if let Some(s) = &rd.snapshot {
            raw.storage_mut().apply_snapshot(&s.metadata, &mut s.reader().unwrap()).unwrap();
            node.applied = decode_state(&s.read_to_vec().unwrap());
        }
        done += 1;
        if crash_after == Some(done) {
            return self.crash(id);
        }
        let raw = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap();
        if !rd.entries.is_empty() {
            raw.storage_mut().append(&rd.entries).unwrap();
        }
        done += 1;
        if crash_after == Some(done) {
            return self.crash(id);
        }
        let raw = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap();
        if let Some(hs) = rd.hard_state {
            raw.storage_mut().set_hard_state(&hs).unwrap();
        }
        if crash_after.is_some() {
            return self.crash(id);
        }
        let persisted = rd.persisted_messages.clone();
        self.send_all(persisted);
        // A snapshot's entries were checked against the global record as they were applied.
        if let Some(s) = &rd.snapshot {
            self.snapshots_installed += 1;
            for (i, t, d) in decode_state(&s.read_to_vec().unwrap()) {
                self.check_applied(id, i, t, &d);
            }
        }
        for e in &rd.committed_entries {
            let node = &self.nodes[&id];
            let expected = node.applied.last().map_or(0, |a| a.0) + 1;
            let floor = node.raw.as_ref().unwrap().storage().first_index().unwrap();
            if e.index != expected && !(node.applied.is_empty() && e.index <= floor) {
                self.fail(format!("node {id} applied index {} after {}", e.index, expected - 1));
            }
            self.check_applied(id, e.index, e.term, &e.data);
            self.nodes.get_mut(&id).unwrap().applied.push((e.index, e.term, e.data.to_vec()));
        }
        self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().advance(&rd);
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
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(raw) = node.raw.take() {
            node.down = Some(raw.into_storage());
            node.applied.clear();
            node.commit_seen = 0;
        }
    }

    fn restart(&mut self, id: u64) {
        let seed = self.seed ^ self.step;
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(storage) = node.down.take() else { return };
        // The state machine restarts from the snapshot; committed entries after it are replayed.
        let (applied, snapshot_index) = match storage.snapshot(0) {
            Ok(s) if s.metadata.index > 0 => (decode_state(&s.read_to_vec().unwrap()), s.metadata.index),
            _ => (Vec::new(), 0),
        };
        node.applied = applied;
        node.raw = Some(RawNode::new(&config(id, seed, snapshot_index), storage).unwrap());
    }

    fn deliver(&mut self, m: Message) {
        let to = m.to;
        if self.cut.contains(&(m.from, to)) {
            return;
        }
        if let Some(raw) = self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) {
            let m = if m.snapshot.is_some() {
                match over_the_wire(m, raw.storage(), &mut self.wire, self.wire_faults) {
                    Some(m) => m,
                    None => {
                        self.transfers_refused += 1;
                        return;
                    }
                }
            } else {
                m
            };
            let _ = raw.step(m); // a forwarded proposal may be refused: the client retries
        }
    }

    fn propose(&mut self, id: u64, data: Vec<u8>) {
        if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
            let _ = raw.propose(data);
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
        let cs = storage.initial_state().unwrap().conf_state;
        if storage.create_snapshot(index, &cs, &mut &data[..]).is_ok() {
            storage.compact(index.saturating_sub(2)).unwrap();
        }
    }

    fn check(&mut self) {
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
                let (first, last) = raw.log_bounds();
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
            if persisted_commit < node.persisted_commit_seen {
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
                let ((fa, la), (fb, lb)) = (ra.log_bounds(), rb.log_bounds());
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
        let pick = |rng: &mut Rng, ids: &[u64]| ids[rng.below(ids.len() as u64) as usize];
        match self.rng.below(100) {
            0..=29 => {
                if let Some(m) = self.random_message() {
                    self.deliver(m);
                }
            }
            30..=44 => {
                for id in alive {
                    self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().tick();
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
                let down: Vec<u64> = self.ids.iter().copied().filter(|id| self.nodes[id].raw.is_none()).collect();
                if !down.is_empty() {
                    let id = pick(&mut self.rng, &down);
                    self.restart(id);
                }
            }
            87 | 88 => {
                // A partition: a random side cut off from the rest.
                self.cut.clear();
                let side: Vec<u64> = self.ids.iter().copied().filter(|_| self.rng.chance(40)).collect();
                for &a in &side {
                    for &b in self.ids.iter().filter(|b| !side.contains(b)) {
                        self.cut.insert((a, b));
                        self.cut.insert((b, a));
                    }
                }
            }
            89..=91 => self.cut.clear(),
            92 | 93 if !alive.is_empty() => {
                let id = pick(&mut self.rng, &alive);
                self.compact(id);
            }
            _ => {
                if let Some(m) = self.net.pop_front() {
                    self.deliver(m);
                }
            }
        }
    }

    /// The calm phase: no faults; returns once a new proposal is applied everywhere.
    fn calm(&mut self, max_ticks: u64) {
        self.cut.clear();
        self.wire_faults = false;
        for id in self.ids.clone() {
            self.restart(id);
        }
        let data = format!("liveness-{}", self.seed).into_bytes();
        let applied_everywhere =
            |s: &Sim| s.ids.iter().all(|id| s.nodes[id].applied.iter().any(|(_, _, d)| *d == data));
        for tick in 0..max_ticks {
            self.step += 1;
            for id in self.ids.clone() {
                self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().tick();
            }
            // Deliver and persist until quiet.
            for _ in 0..50 {
                for id in self.ids.clone() {
                    self.handle_ready(id, None);
                }
                if self.net.is_empty() {
                    break;
                }
                while let Some(m) = self.net.pop_front() {
                    self.deliver(m);
                }
            }
            self.check();
            if tick % 5 == 0 {
                let leader = self
                    .ids
                    .iter()
                    .copied()
                    .find(|id| self.nodes[id].raw.as_ref().unwrap().status().soft_state.role == Role::Leader);
                if let Some(l) = leader
                    && !self.applied.values().any(|(_, d)| *d == data)
                {
                    self.propose(l, data.clone());
                }
            }
            if applied_everywhere(self) {
                return;
            }
        }
        let states: Vec<String> = self
            .ids
            .iter()
            .map(|id| {
                let st = self.nodes[id].raw.as_ref().unwrap().status();
                format!(
                    "{id}: {:?} {:?} applied {} last {} progress {:?}",
                    st.soft_state, st.hard_state, st.applied, st.last_index, st.progress
                )
            })
            .collect();
        self.fail(format!("liveness: no proposal applied everywhere within {max_ticks} calm ticks ({states:?})"));
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

/// What a schedule did, so a run shows that it exercised something.
#[derive(Debug, Default)]
struct Totals {
    applied: u64,
    leaders: u64,
    snapshots: u64,
    transfers_refused: u64,
}

fn run_schedule(seed: u64, steps: u64, totals: &mut Totals) {
    // Any panic (a storage call refusing what the node asked, say) names its schedule too.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_schedule_inner(seed, steps)));
    match run {
        Ok(sim) => {
            totals.applied += sim.applied.len() as u64;
            totals.leaders += sim.leaders.len() as u64;
            totals.snapshots += sim.snapshots_installed;
            totals.transfers_refused += sim.transfers_refused;
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
    let mut totals = Totals::default();
    for seed in 0..schedules {
        run_schedule(seed, steps, &mut totals);
    }
    eprintln!("{schedules} schedules of {steps} steps: safe and live; {totals:?}");
    assert!(totals.applied > schedules && totals.leaders > schedules, "the schedules did little: {totals:?}");
}
