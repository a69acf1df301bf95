//! Raft over the real storage engine through power loss: three `RawNode`s, each on a
//! `DiskStorage` over its own simulated disk (`keel_harness::sim`). Nodes lose power at random
//! moments (nothing written after the moment survives; unsynced writes are kept, dropped or torn
//! per the fault model), recover from what their disk holds, and rejoin. Checked throughout: no two nodes apply
//! different entries at one index, no acknowledgement or vote leaves before the disk holds what
//! it promises; and at the end, with the faults stopped, a new proposal is applied everywhere.
//!
//! `KEEL_RAFT_DISK_SCHEDULES` (default 200) and `KEEL_RAFT_DISK_SEED` (replay one).

mod common;

use keel::raft::{Config, Message, RawNode, Role};
use keel::storage::{ConfState, DiskStorage, Storage, StorageMut, StorageOptions};
use keel::wal::LogOptions;
use keel_harness::Rng;
use keel_harness::sim::{FaultModel, SimFileSystem};
use std::collections::BTreeMap;
use std::sync::Arc;

const DIR: &str = "/node";

struct Node {
    fs: SimFileSystem,
    raw: Option<RawNode<DiskStorage>>,
    /// Applied (index, term, data) in this incarnation, checked for gaps.
    last_applied: u64,
}

fn open(fs: &SimFileSystem, id: u64, seed: u64) -> keel::Result<RawNode<DiskStorage>> {
    let log = LogOptions { segment_bytes: 16 << 10, fs: Arc::new(fs.clone()), ..LogOptions::default() };
    let (mut storage, _) = DiskStorage::open(DIR, StorageOptions { log, ..StorageOptions::default() })?;
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
    crashes: u64,
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
        Cluster { seed, rng: Rng::new(seed), nodes, net: Vec::new(), applied: BTreeMap::new(), crashes: 0 }
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

    fn handle_ready(&mut self, id: u64) {
        let Some(raw) = self.nodes.get_mut(&id).unwrap().raw.as_mut() else { return };
        if !raw.has_ready() {
            return;
        }
        let rd = raw.ready();
        for m in &rd.messages {
            self.check_send(m);
        }
        self.net.extend(rd.messages.iter().cloned());
        self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().persist(&rd).unwrap();
        for m in &rd.persisted_messages {
            self.check_send(m);
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
        self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().advance(&rd);
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
                let data = format!("{}-{}", self.seed, self.rng.next_u64()).into_bytes();
                let _ = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().propose(data);
            }
            87..=89 if !self.net.is_empty() => {
                self.net.swap_remove(self.rng.below(self.net.len() as u64) as usize); // dropped
            }
            90 | 91 => self.power_loss(id),
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
            let n = std::env::var("KEEL_RAFT_DISK_SCHEDULES").map_or(200, |v| v.parse().expect("a number"));
            (0..n).collect()
        }
    };
    let (mut applied, mut crashes) = (0, 0);
    for &seed in &seeds {
        let mut c = Cluster::new(seed);
        for _ in 0..1500 {
            c.step();
        }
        c.calm(300);
        applied += c.applied.len();
        crashes += c.crashes;
    }
    eprintln!("{} schedules: {applied} entries applied, {crashes} power losses, safe and live", seeds.len());
    assert!(applied > seeds.len() && crashes > 0, "the schedules did little");
}
