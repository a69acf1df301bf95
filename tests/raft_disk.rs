//! Raft over the real storage engine through power loss and process kills: three `RawNode`s,
//! each on a `DiskStorage` over its own simulated disk (`keel_harness::sim`). Nodes lose power at
//! random moments (nothing written after the moment survives; unsynced writes are kept, dropped
//! or torn per the fault model) or are killed (the page cache survives), recover from what their
//! disk holds, rejoin, keep voting and accepting entries, and may lose power later: the
//! restarted node must never have built on bytes that were only in the page cache. Checked
//! throughout: at most one leader per term (election safety), no two nodes apply different
//! entries at one index, no acknowledgement or vote leaves before the disk holds what it
//! promises; and at the end, with the faults stopped, a new proposal is applied everywhere.
//!
//! `KEEL_RAFT_DISK_SCHEDULES` (default 500) and `KEEL_RAFT_DISK_SEED` (replay one).

mod common;

use keel::raft::{Config, Message, RawNode, Role};
use keel::storage::{ConfState, DiskStorage, Storage, StorageMut, StorageOptions};
use keel::wal::LogOptions;
use keel_harness::Rng;
use keel_harness::sim::{FaultModel, SimFileSystem};
use std::collections::BTreeMap;
use std::sync::Arc;

const DIR: &str = "/node";
/// Small segments and large proposals, so that rotations and seals happen often.
const SEGMENT_BYTES: u64 = 8 << 10;
const PROPOSAL_PAD_BYTES: usize = 700;

struct Node {
    fs: SimFileSystem,
    raw: Option<RawNode<DiskStorage>>,
    /// Applied (index, term, data) in this incarnation, checked for gaps.
    last_applied: u64,
}

fn open(fs: &SimFileSystem, id: u64, seed: u64) -> keel::Result<RawNode<DiskStorage>> {
    let log = LogOptions { segment_bytes: SEGMENT_BYTES, fs: Arc::new(fs.clone()), ..LogOptions::default() };
    let (mut storage, _) =
        DiskStorage::open(DIR, StorageOptions { log, reserve_bytes: 16 << 10, ..StorageOptions::default() })?;
    if storage.initial_state().unwrap().conf_state.voters.is_empty() {
        storage.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() }).unwrap();
    }
    let mut cfg = Config::new(id);
    cfg.seed = seed;
    Ok(RawNode::new(&cfg, storage).unwrap())
}

struct Cluster {
    seed: u64,
    rng: Rng,
    nodes: BTreeMap<u64, Node>,
    net: Vec<Message>,
    applied: BTreeMap<u64, (u64, Vec<u8>)>,
    /// The leader of each term seen.
    leaders: BTreeMap<u64, u64>,
    crashes: u64,
    kills: u64,
}

impl Cluster {
    fn new(seed: u64) -> Cluster {
        let nodes = (1..=3)
            .map(|id| {
                let fs = SimFileSystem::new();
                let raw = open(&fs, id, seed).unwrap();
                (id, Node { fs, raw: Some(raw), last_applied: 0 })
            })
            .collect();
        Cluster {
            seed,
            rng: Rng::new(seed),
            nodes,
            net: Vec::new(),
            applied: BTreeMap::new(),
            leaders: BTreeMap::new(),
            crashes: 0,
            kills: 0,
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("raft-on-disk failure: {what}\n  replay with KEEL_RAFT_DISK_SEED={}", self.seed)
    }

    fn check_send(&self, m: &Message) {
        let storage = self.nodes[&m.from].raw.as_ref().unwrap().storage();
        if let Some(broken) = common::unkept_promise(storage, m) {
            self.fail(broken);
        }
    }

    /// A vote (always) or an append acknowledgement (one in 20) checked against what a power
    /// loss right now would leave, not against what the node reads: after a kill the node reads
    /// the page cache, which a promise must not rest on.
    fn check_durable(&mut self, m: &Message) {
        use keel::raft::MessageType;
        let vote = m.kind == MessageType::RequestVoteResponse && !m.reject;
        let ack = m.kind == MessageType::AppendResponse && !m.reject;
        if !(vote || (ack && self.rng.chance(5))) {
            return;
        }
        let model = FaultModel { keep_percent: 0, torn_percent: 0, ..FaultModel::default() };
        let lost = self.nodes[&m.from].fs.image().materialize(self.rng.next_u64(), &model).unwrap();
        let log = LogOptions { segment_bytes: SEGMENT_BYTES, fs: Arc::new(lost), ..LogOptions::default() };
        let storage = match DiskStorage::open(
            DIR,
            StorageOptions { log, reserve_bytes: 16 << 10, ..StorageOptions::default() },
        ) {
            Ok((storage, _)) => storage,
            Err(e) => self.fail(format!("node {} would not recover from a power loss now: {e}", m.from)),
        };
        if let Some(broken) = common::unkept_promise(&storage, m) {
            self.fail(format!("{broken}, and a power loss now would lose it"));
        }
    }

    fn handle_ready(&mut self, id: u64) {
        let Some(raw) = self.nodes.get_mut(&id).unwrap().raw.as_mut() else { return };
        if !raw.has_ready() {
            return;
        }
        let rd = raw.ready().unwrap();
        for m in &rd.messages {
            self.check_send(m);
        }
        self.net.extend(rd.messages.iter().cloned());
        self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().persist(&rd).unwrap();
        for m in &rd.persisted_messages {
            self.check_send(m);
            self.check_durable(m);
        }
        self.net.extend(rd.persisted_messages.iter().cloned());
        for e in &rd.committed_entries {
            let node = self.nodes.get_mut(&id).unwrap();
            if e.index != node.last_applied + 1 {
                let last = node.last_applied;
                self.fail(format!("node {id} applied {} after {last}", e.index));
            }
            node.last_applied = e.index;
            match self.applied.get(&e.index) {
                Some((t, d)) if (*t, &d[..]) != (e.term, &e.data[..]) => {
                    self.fail(format!("node {id} applied ({}, {}), another ({}, {t})", e.index, e.term, e.index))
                }
                Some(_) => {}
                None => {
                    self.applied.insert(e.index, (e.term, e.data.to_vec()));
                }
            }
        }
        let raw = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap();
        raw.advance(rd).unwrap();
        let status = raw.status();
        if status.soft_state.role == Role::Leader {
            let term = status.hard_state.term;
            if let Some(&other) = self.leaders.get(&term).filter(|&&other| other != id) {
                self.fail(format!("nodes {other} and {id} were both leaders in term {term}"));
            }
            self.leaders.insert(term, id);
        }
    }

    /// Process kill half-way through persisting a Ready: its messages that may leave before
    /// persisting are sent, then the node dies at a random write or sync of `persist` (or after
    /// it, before anything that waited for it is sent or applied). The disk keeps everything
    /// written, synced or not (the page cache survives; what the dropped node's destructor
    /// writes goes to the old disk and is discarded), and the node recovers from it and goes on.
    fn kill(&mut self, id: u64) {
        let kill_seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).unwrap();
        let raw = node.raw.as_mut().unwrap();
        let mut images = Vec::new();
        if raw.has_ready() {
            let rd = raw.ready().unwrap();
            self.net.extend(rd.messages.iter().cloned());
            node.fs.capture_crash_points(true, 50, kill_seed);
            let _ = raw.persist(&rd);
            node.fs.capture_crash_points(false, 0, kill_seed);
            images = node.fs.take_captures();
        }
        let pick = kill_seed % (images.len() as u64 + 1);
        let image = match images.into_iter().nth(pick as usize) {
            Some((_, image)) => image,
            None => node.fs.image(),
        };
        drop(node.raw.take());
        node.fs = image.restart().unwrap();
        match open(&node.fs, id, self.seed ^ kill_seed) {
            Ok(raw) => node.raw = Some(raw),
            Err(e) => self.fail(format!("node {id} does not recover from a kill: {e}")),
        }
        let node = self.nodes.get_mut(&id).unwrap();
        node.last_applied = 0; // the state machine is rebuilt from the log
        self.kills += 1;
    }

    /// Power loss: the disk keeps only what the fault model leaves of this moment (whatever the
    /// dropped node's destructor writes afterwards goes to the old disk and is discarded), and
    /// the node recovers from it.
    fn power_loss(&mut self, id: u64) {
        let crash_seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).unwrap();
        let image = node.fs.image();
        drop(node.raw.take());
        node.fs = image.materialize(crash_seed, &FaultModel::default()).unwrap();
        match open(&node.fs, id, self.seed ^ crash_seed) {
            Ok(raw) => node.raw = Some(raw),
            Err(e) => self.fail(format!("node {id} does not recover from a power loss: {e}")),
        }
        let node = self.nodes.get_mut(&id).unwrap();
        node.last_applied = 0; // the state machine is rebuilt from the log
        self.crashes += 1;
    }

    fn step(&mut self) {
        let id = 1 + self.rng.below(3);
        match self.rng.below(100) {
            0..=29 if !self.net.is_empty() => {
                let m = self.net.swap_remove(self.rng.below(self.net.len() as u64) as usize);
                if let Some(raw) = self.nodes.get_mut(&m.to).unwrap().raw.as_mut() {
                    let _ = raw.step(m);
                }
            }
            30..=44 => {
                for n in self.nodes.values_mut() {
                    n.raw.as_mut().unwrap().tick();
                }
            }
            45..=74 => self.handle_ready(id),
            75..=86 => {
                let mut data = format!("{}-{}", self.seed, self.rng.next_u64()).into_bytes();
                data.resize(PROPOSAL_PAD_BYTES, b'.');
                let _ = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().propose(data);
            }
            87..=89 if !self.net.is_empty() => {
                self.net.swap_remove(self.rng.below(self.net.len() as u64) as usize); // dropped
            }
            90 | 91 => self.power_loss(id),
            92..=94 => self.kill(id),
            95 | 96 if !self.net.is_empty() => {
                // Delivered twice (a retransmission): a restarted node may grant a vote again.
                let m = self.net[self.rng.below(self.net.len() as u64) as usize].clone();
                if let Some(raw) = self.nodes.get_mut(&m.to).unwrap().raw.as_mut() {
                    let _ = raw.step(m);
                }
            }
            _ => {}
        }
    }

    fn calm(&mut self, ticks: u64) {
        let data = format!("liveness-{}", self.seed).into_bytes();
        for tick in 0..ticks {
            for n in self.nodes.values_mut() {
                n.raw.as_mut().unwrap().tick();
            }
            for _ in 0..20 {
                for id in 1..=3 {
                    self.handle_ready(id);
                }
                if self.net.is_empty() {
                    break;
                }
                for m in std::mem::take(&mut self.net) {
                    let _ = self.nodes.get_mut(&m.to).unwrap().raw.as_mut().unwrap().step(m);
                }
            }
            let leader =
                (1..=3).find(|id| self.nodes[id].raw.as_ref().unwrap().status().soft_state.role == Role::Leader);
            if tick % 5 == 0
                && let Some(l) = leader
                && !self.applied.values().any(|(_, d)| *d == data)
            {
                let _ = self.nodes.get_mut(&l).unwrap().raw.as_mut().unwrap().propose(data.clone());
            }
            let everywhere = self
                .applied
                .iter()
                .find(|(_, (_, d))| *d == data)
                .is_some_and(|(&i, _)| self.nodes.values().all(|n| n.last_applied >= i));
            if everywhere {
                return;
            }
        }
        self.fail(format!("liveness: nothing applied everywhere within {ticks} calm ticks"));
    }
}

#[test]
fn raft_over_disk_storage_survives_power_loss() {
    let seeds: Vec<u64> = match std::env::var("KEEL_RAFT_DISK_SEED") {
        Ok(s) => vec![s.parse().expect("KEEL_RAFT_DISK_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("KEEL_RAFT_DISK_SCHEDULES").map_or(500, |v| v.parse().expect("a number"));
            (0..n).collect()
        }
    };
    let (mut applied, mut crashes, mut kills, mut terms) = (0, 0, 0, 0);
    for &seed in &seeds {
        let mut c = Cluster::new(seed);
        for _ in 0..1500 {
            c.step();
        }
        c.calm(300);
        applied += c.applied.len();
        crashes += c.crashes;
        kills += c.kills;
        terms += c.leaders.len();
    }
    eprintln!(
        "{} schedules: {applied} entries applied, {crashes} power losses, {kills} kills, {terms} terms with a \
         leader; safe and live",
        seeds.len()
    );
    assert!(applied > seeds.len() && crashes > 0 && kills > 0, "the schedules did little");
}
