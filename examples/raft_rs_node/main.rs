//! Three raft-rs nodes in one process, each on its own keel `DiskStorage`, writing keys through
//! the leader; then the leader is stopped, a new one is elected, the old one restarts and
//! catches up.
//!
//! ```text
//! cargo run --release --features raft-rs --example raft_rs_node [-- DIR]
//! ```
//!
//! Without `DIR` the data goes to a temporary directory, removed at the end.

mod node;

use keel::storage::{Storage, StorageOptions};
use node::KvNode;
use raft::eraftpb::Message;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

const VOTERS: [u64; 3] = [1, 2, 3];
const WRITES: u64 = 2_000;

struct Cluster {
    dir: PathBuf,
    nodes: BTreeMap<u64, Option<KvNode>>,
    queue: VecDeque<Message>,
}

impl Cluster {
    fn start(&mut self, id: u64) {
        let dir = self.dir.join(format!("node-{id}"));
        self.nodes.insert(id, Some(KvNode::open(id, &VOTERS, &dir, StorageOptions::default(), 500)));
    }

    /// Handles Readies and delivers messages (to running nodes) until nothing moves.
    fn settle(&mut self) {
        loop {
            for node in self.nodes.values_mut().flatten() {
                self.queue.extend(node.on_ready());
            }
            if self.queue.is_empty() {
                return;
            }
            while let Some(m) = self.queue.pop_front() {
                if let Some(Some(to)) = self.nodes.get_mut(&m.to) {
                    let _ = to.raw.step(m);
                }
            }
        }
    }

    fn leader(&mut self) -> u64 {
        loop {
            if let Some((&id, _)) = self.nodes.iter().find(|(_, n)| n.as_ref().is_some_and(KvNode::is_leader)) {
                return id;
            }
            for node in self.nodes.values_mut().flatten() {
                node.raw.tick();
            }
            self.settle();
        }
    }

    fn write(&mut self, from: u64, to: u64) {
        let leader = self.leader();
        for w in from..to {
            let node = self.nodes.get_mut(&leader).unwrap().as_mut().unwrap();
            node.raw.propose(Vec::new(), format!("key{}=value{w}", w % 100).into_bytes()).unwrap();
            // Proposals queue up between Readies: each Ready persists a batch with one
            // fdatasync.
            if w % 16 == 15 {
                self.settle();
            }
        }
        self.settle();
    }
}

fn main() {
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::args().nth(1).map_or_else(|| temp.path().to_path_buf(), PathBuf::from);
    let mut c = Cluster { dir, nodes: BTreeMap::new(), queue: VecDeque::new() };
    for id in VOTERS {
        c.start(id);
    }
    let started = Instant::now();
    c.write(0, WRITES);
    let leader = c.leader();
    let stats = c.nodes[&leader].as_ref().unwrap().raw.store().log().stats();
    println!(
        "{WRITES} writes through leader {leader} in {:?}: its log made {} appends with {} fdatasyncs",
        started.elapsed(),
        stats.appends,
        stats.syncs
    );

    // The leader stops; the others elect a new one and go on; the old one comes back.
    c.nodes.insert(leader, None);
    let next = c.leader();
    println!("node {leader} stopped; node {next} leads");
    c.write(WRITES, WRITES + 500);
    c.start(leader);
    for _ in 0..50 {
        for node in c.nodes.values_mut().flatten() {
            node.raw.tick();
        }
        c.settle();
    }
    for (id, node) in &c.nodes {
        let node = node.as_ref().unwrap();
        let first = Storage::first_index(node.raw.store()).unwrap();
        println!(
            "node {id}: applied {}, {} keys, log from index {first}, snapshots installed {}",
            node.applied,
            node.kv.len(),
            node.snapshots_installed
        );
    }
    let states: Vec<_> = c.nodes.values().flatten().map(|n| (n.applied, n.kv.clone())).collect();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "the three nodes agree");
    println!("all three nodes agree");
}

// `cargo test` runs the example itself (`test = true` in Cargo.toml), so it cannot rot.
#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main();
    }
}
