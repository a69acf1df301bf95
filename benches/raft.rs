//! Propose-to-commit throughput of three in-process Raft nodes, 256-byte entries: with
//! `MemStorage` (the CPU ceiling) and with `DiskStorage` (disk-bound, one directory per node on
//! the same disk). Clients keep a fixed number of proposals outstanding (a closed loop), so
//! batches form from the load, as in a server.
//!
//! Before the criterion groups, a summary prints commits/s, p50/p99 propose-to-commit latency,
//! and beside the `DiskStorage` figure the single-log synced-append rate of 256-byte entries
//! (one per fdatasync, as W1) measured in the same run. Three logs share the disk, so the
//! three-node figure should reach at least a third of it.
//!
//! Beside each commit figure: linearizable reads (`read_index`, the default safe mode: each
//! batch of reads waits for a heartbeat round to a quorum), with the same number of reads
//! outstanding, asked on the leader and on a follower (forwarded to the leader): reads/s and
//! p50/p99 from asking to the confirmed `ReadState`.
//!
//! `KEEL_RAFT_BENCH_COMMITS` (default 20,000; reads as many) and `KEEL_RAFT_BENCH_CLIENTS`
//! (default 64).

use criterion::{Criterion, Throughput};
use keel::raft::{Config, Message, RawNode, ReadState, Role};
use keel::storage::{ConfState, DiskStorage, MemStorage, StorageMut, StorageOptions};
use keel::wal::{Log, LogOptions, NewEntry};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ENTRY_BYTES: usize = 256;

struct Cluster<S: StorageMut> {
    nodes: Vec<RawNode<S>>,
    queue: Vec<Message>,
    /// Read states confirmed on each node, in arrival order.
    read_states: Vec<Vec<ReadState>>,
}

impl<S: StorageMut> Cluster<S> {
    fn new(mut make: impl FnMut(u64) -> S) -> Cluster<S> {
        let nodes = (1..=3)
            .map(|id| {
                let mut s = make(id);
                s.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() }).unwrap();
                let mut cfg = Config::new(id);
                cfg.check_quorum = false;
                RawNode::new(&cfg, s).unwrap()
            })
            .collect();
        let mut c = Cluster { nodes, queue: Vec::new(), read_states: vec![Vec::new(); 3] };
        c.nodes[0].campaign().unwrap();
        while c.nodes[0].status().soft_state.role != Role::Leader {
            c.round(&mut |_| {});
        }
        c
    }

    /// Every node handles its Ready (persisting with one write each), then messages are
    /// delivered; `applied` sees the entries the leader applies.
    fn round(&mut self, applied: &mut dyn FnMut(&[u8])) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if !node.has_ready() {
                continue;
            }
            let rd = node.ready().unwrap();
            self.queue.extend(rd.messages.iter().cloned());
            node.persist(&rd).unwrap();
            self.queue.extend(rd.persisted_messages.iter().cloned());
            if i == 0 {
                rd.committed_entries.iter().filter(|e| !e.data.is_empty()).for_each(|e| applied(&e.data));
            }
            self.read_states[i].extend(rd.read_states.iter().cloned());
            node.advance(rd).unwrap();
        }
        for m in std::mem::take(&mut self.queue) {
            let to = m.to as usize - 1;
            let _ = self.nodes[to].step(m);
        }
    }

    /// Commits `commits` entries with `clients` outstanding; returns the latencies.
    fn run(&mut self, commits: usize, clients: usize) -> (Duration, Vec<Duration>) {
        let mut sent: HashMap<u64, Instant> = HashMap::new();
        let mut latencies = Vec::with_capacity(commits);
        let mut next = 0u64;
        let start = Instant::now();
        while latencies.len() < commits {
            let mut batch = Vec::new();
            while sent.len() < clients {
                let mut data = vec![0x5A; ENTRY_BYTES];
                data[..8].copy_from_slice(&next.to_le_bytes());
                sent.insert(next, Instant::now());
                batch.push(data);
                next += 1;
            }
            if !batch.is_empty() {
                self.nodes[0].propose_batch(batch).unwrap();
            }
            self.round(&mut |data| {
                let id = u64::from_le_bytes(data[..8].try_into().unwrap());
                if let Some(t) = sent.remove(&id) {
                    latencies.push(t.elapsed());
                }
            });
        }
        (start.elapsed(), latencies)
    }
}

impl<S: StorageMut> Cluster<S> {
    /// Confirms `reads` linearizable reads asked on node `on` (0 is the leader) with `clients`
    /// outstanding; returns the elapsed time and each read's latency. Every node has applied
    /// everything (no writes run meanwhile), so a read is served as soon as it is confirmed.
    fn run_reads(&mut self, on: usize, reads: usize, clients: usize) -> (Duration, Vec<Duration>) {
        let mut asked: HashMap<Vec<u8>, Instant> = HashMap::new();
        let mut latencies = Vec::with_capacity(reads);
        let mut next = 0u64;
        let start = Instant::now();
        while latencies.len() < reads {
            while asked.len() < clients {
                let ctx = next.to_le_bytes().to_vec();
                next += 1;
                asked.insert(ctx.clone(), Instant::now());
                self.nodes[on].read_index(ctx).unwrap();
            }
            self.round(&mut |_| {});
            for rs in std::mem::take(&mut self.read_states[on]) {
                assert!(rs.index <= self.nodes[on].status().applied, "applied everything already");
                if let Some(t) = asked.remove(&rs.request_ctx) {
                    latencies.push(t.elapsed());
                }
            }
        }
        (start.elapsed(), latencies)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn disk_cluster(dir: &std::path::Path) -> Cluster<DiskStorage> {
    Cluster::new(|id| DiskStorage::open(dir.join(format!("node-{id}")), StorageOptions::default()).unwrap().0)
}

/// Single-log synced appends of one 256-byte entry each: the same disk's rate for this shape.
fn single_log_rate(dir: &std::path::Path, appends: u64) -> f64 {
    let (mut log, _) = Log::open(dir.join("single"), LogOptions::default()).unwrap();
    let payload = [0x5Au8; ENTRY_BYTES];
    let start = Instant::now();
    for index in 1..=appends {
        log.append_and_sync(&[NewEntry { index, term: 1, payload: &payload }]).unwrap();
    }
    appends as f64 / start.elapsed().as_secs_f64()
}

fn summary() {
    let commits = env("KEEL_RAFT_BENCH_COMMITS", 20_000);
    let clients = env("KEEL_RAFT_BENCH_CLIENTS", 64);
    let report = |name: &str, what: &str, (elapsed, mut lat): (Duration, Vec<Duration>)| {
        lat.sort();
        let rate = lat.len() as f64 / elapsed.as_secs_f64();
        println!(
            "raft 3 nodes, {name}: {rate:.0} {what}/s, p50 {:?}, p99 {:?} ({} {what}, {clients} outstanding)",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.len()
        );
        rate
    };
    let mut mem = Cluster::new(|_| MemStorage::new());
    report("MemStorage", "commits", mem.run(commits, clients));
    report("MemStorage", "leader reads", mem.run_reads(0, commits, clients));
    report("MemStorage", "follower reads", mem.run_reads(1, commits, clients));
    let dir = tempfile::tempdir().unwrap();
    let mut disk = disk_cluster(dir.path());
    let three = report("DiskStorage", "commits", disk.run(commits, clients));
    report("DiskStorage", "leader reads", disk.run_reads(0, commits, clients));
    report("DiskStorage", "follower reads", disk.run_reads(1, commits, clients));
    let single = single_log_rate(dir.path(), 4000);
    println!(
        "single log, synced appends of one {ENTRY_BYTES} B entry: {single:.0}/s; three-node commits / single-log appends = {:.2}",
        three / single
    );
}

fn benches(c: &mut Criterion) {
    let clients = env("KEEL_RAFT_BENCH_CLIENTS", 64);
    let mut g = c.benchmark_group("raft3_propose_to_commit");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let mut mem = Cluster::new(|_| MemStorage::new());
    g.bench_function("mem_1000_commits", |b| b.iter_custom(|iters| (0..iters).map(|_| mem.run(1000, clients).0).sum()));
    let dir = tempfile::tempdir().unwrap();
    let mut disk = disk_cluster(dir.path());
    g.bench_function("disk_1000_commits", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| disk.run(1000, clients).0).sum())
    });
    g.finish();
}

fn main() {
    summary();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
