//! raft-rs `RawNode`s running on keel's `DiskStorage` through the `raft-rs` feature: entry
//! contexts, a SIGKILL and a power loss under a raft-rs application with a durable state machine
//! (raft-rs panics in `RawNode::new` when `Config::applied` is above the stored commit), and a
//! 3-node cluster with restarts, leader loss, snapshots and compaction.
#![cfg(feature = "raft-rs")]

use keel::raft_rs::{self, RaftRsStorage};
use keel::storage::{ConfState, DiskStorage, Storage, StorageMut, StorageOptions};
use keel::wal::LogOptions;
use keel_harness::sim::{FaultModel, SimFileSystem};
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

fn options() -> StorageOptions {
    StorageOptions {
        log: LogOptions { segment_bytes: 64 << 10, ..LogOptions::default() },
        reserve_bytes: 64 << 10,
        ..StorageOptions::default()
    }
}

#[path = "../examples/raft_rs_node/node.rs"]
mod node;
use node::{KvNode, logger};

#[test]
fn entry_context_and_data_round_trip_through_disk_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for i in 1..=20u64 {
        let mut e = Entry::default();
        (e.index, e.term) = (i, 1 + i / 7);
        e.data = format!("data-{i}").into_bytes().into();
        if i % 3 == 0 {
            e.context = format!("context-{i}").into_bytes().into();
        }
        if i == 5 {
            e.set_entry_type(EntryType::EntryConfChangeV2);
        }
        if i == 6 {
            e.set_entry_type(EntryType::EntryConfChange);
        }
        entries.push(e);
    }
    {
        let (mut s, _) = DiskStorage::open(dir.path(), options()).unwrap();
        s.append_raft_entries(&entries).unwrap();
        let read = raft::Storage::entries(&s, 1, 21, None, raft::GetEntriesContext::empty(false)).unwrap();
        assert_eq!(read, entries);
    }
    let (s, _) = DiskStorage::open(dir.path(), options()).unwrap();
    let read = raft::Storage::entries(&s, 1, 21, None, raft::GetEntriesContext::empty(false)).unwrap();
    assert_eq!(read, entries, "after reopen");
    // keel's own view has the context too, and the data is read from the mapped segment.
    let e3 = Storage::entries(&s, 3, 4, u64::MAX).unwrap().remove(0);
    assert_eq!((&e3.context[..], &e3.data[..]), (&b"context-3"[..], &b"data-3"[..]));
    assert!(e3.data.is_mapped() && e3.context.is_mapped());
    // raft-rs's size limit counts the context (the encoded entry), keel's page too.
    let sizes: Vec<u64> = entries.iter().map(|e| u64::from(protobuf::Message::compute_size(e))).collect();
    let limited =
        raft::Storage::entries(&s, 1, 21, Some(sizes[..3].iter().sum()), raft::GetEntriesContext::empty(false))
            .unwrap();
    assert_eq!(limited.len(), 3);
}

const CHILD_DIR: &str = "KEEL_RAFT_RS_CHILD_DIR";

/// The child process of `sigkill_then_restart_with_applied_never_panics`: a single-node raft-rs
/// application that proposes entries forever, makes its state machine's applied index durable
/// in its own file after each Ready, and prints it. Runs only when the parent starts it.
#[test]
#[ignore = "the child process of sigkill_then_restart_with_applied_never_panics"]
fn raft_rs_child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let dir = PathBuf::from(dir);
    let mut node = KvNode::open(1, &[1], &dir.join("raft"), options(), 0);
    node.applied = read_applied(&dir);
    if node.raw.raft.state != StateRole::Leader {
        node.raw.campaign().unwrap();
    }
    let mut stderr = std::io::stderr();
    for n in 0u64.. {
        if node.is_leader() {
            node.raw.propose(Vec::new(), format!("k{}=v{n}", n % 50).into_bytes()).unwrap();
        }
        let before = node.applied;
        assert!(node.on_ready().is_empty(), "a single node sends nothing");
        if node.applied > before {
            write_applied(&dir, node.applied);
            writeln!(stderr, "applied {}", node.applied).unwrap();
        }
    }
}

/// The application's own durable applied index (what a state machine on disk would record).
fn write_applied(dir: &Path, applied: u64) {
    let tmp = dir.join("applied.tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(&applied.to_le_bytes()).unwrap();
    f.sync_data().unwrap();
    std::fs::rename(&tmp, dir.join("applied")).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

fn read_applied(dir: &Path) -> u64 {
    std::fs::read(dir.join("applied")).map_or(0, |b| u64::from_le_bytes(b[..8].try_into().unwrap()))
}

#[test]
fn sigkill_then_restart_with_applied_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "raft_rs_child_process", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill it once it has applied (and made durable) 50 more entries.
        let start = read_applied(dir.path());
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut last = start;
        while last < start + 50 {
            let line = lines.next().expect("the child reports progress").unwrap();
            if let Some(n) = line.strip_prefix("applied ") {
                last = n.parse().unwrap();
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // What the application finds: its own applied index, and keel's commit at least as
        // high (a process kill keeps commit-only HardState writes) without restore_commit.
        let applied = read_applied(dir.path());
        assert!(applied >= start + 50, "round {round}");
        let (storage, _) = DiskStorage::open(dir.path().join("raft"), options()).unwrap();
        let commit = Storage::initial_state(&storage).unwrap().hard_state.commit;
        assert!(commit >= applied, "round {round}: commit {commit} fell below applied {applied}");
        let config = Config { id: 1, applied, ..Config::default() };
        RawNode::new(&config, storage, &logger()).expect("raft-rs restarts with the durable applied index");
    }
}

#[test]
fn power_loss_commit_regression_is_repaired_by_restore_commit() {
    let fs = Arc::new(SimFileSystem::new());
    let opts = || StorageOptions { log: LogOptions { fs: fs.clone(), ..options().log }, ..options() };
    let dir = Path::new("/sim/raft");
    let mut node = KvNode::open(1, &[1], dir, opts(), 0);
    node.raw.campaign().unwrap();
    node.on_ready();
    assert!(node.is_leader());
    for n in 0..40 {
        node.raw.propose(Vec::new(), format!("k{n}=v{n}").into_bytes()).unwrap();
        let syncs = node.raw.store().log().stats().syncs;
        node.on_ready();
        // Each Ready (an entry, and the commit of the previous one) costs one fdatasync, of
        // the log; the commit-only HardState change is written unsynced (shown below).
        assert_eq!(node.raw.store().log().stats().syncs, syncs + 1, "write {n}");
    }
    let applied = node.applied;
    assert!(applied >= 40);
    // Power is lost now: only what was synced survives. The application had made its state
    // machine durable at `applied`.
    let after = fs.image().materialize(7, &FaultModel { keep_percent: 0, torn_percent: 0, ..FaultModel::default() });
    drop(node);
    let fs = Arc::new(after.unwrap());
    let opts = StorageOptions { log: LogOptions { fs: fs.clone(), ..options().log }, ..options() };
    let (mut storage, _) = DiskStorage::open(dir, opts).unwrap();
    let commit = Storage::initial_state(&storage).unwrap().hard_state.commit;
    assert!(commit < applied, "the commit index came back lower ({commit} < {applied}): the case under test");
    assert!(Storage::last_index(&storage).unwrap() >= applied, "every applied entry was synced");
    // What raft-rs does with that, untreated: it panics.
    let config = Config { id: 1, applied, ..Config::default() };
    let untreated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (s, _) = DiskStorage::open(
            "/sim/other",
            StorageOptions { log: LogOptions { fs: fs.clone(), ..options().log }, ..options() },
        )
        .unwrap();
        // The same state, copied: a storage at `commit` below `applied`.
        let mut s = s;
        let entries = raft::Storage::entries(&storage, 1, applied + 1, None, raft::GetEntriesContext::empty(false));
        s.set_conf_state(&ConfState { voters: vec![1], ..ConfState::default() }).unwrap();
        s.append_raft_entries(&entries.unwrap()).unwrap();
        s.set_hard_state(&keel::storage::HardState { commit, ..Storage::initial_state(&storage).unwrap().hard_state })
            .unwrap();
        RawNode::new(&config, s, &logger())
    }));
    assert!(untreated.is_err(), "raft-rs panics when applied is above the stored commit");
    // With restore_commit, it starts, and the commit is durable.
    assert_eq!(raft_rs::restore_commit(&mut storage, applied).unwrap(), applied);
    assert_eq!(Storage::initial_state(&storage).unwrap().hard_state.commit, applied);
    let past_the_log = Storage::last_index(&storage).unwrap() + 1;
    assert!(raft_rs::restore_commit(&mut storage, past_the_log).is_err());
    RawNode::new(&config, storage, &logger()).expect("raft-rs starts after restore_commit");
}

/// An in-process network of `KvNode`s: messages are delivered in rounds, dropped to and from
/// nodes that are down or cut off.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    nodes: BTreeMap<u64, Option<KvNode>>,
    cut: BTreeSet<u64>,
    queue: VecDeque<Message>,
    /// key -> value, for every write the leader applied (acknowledged to a client).
    acked: BTreeMap<String, String>,
    next_write: u64,
}

const VOTERS: [u64; 3] = [1, 2, 3];
const SNAPSHOT_EVERY: u64 = 40;

impl Cluster {
    fn new() -> Cluster {
        let mut c = Cluster {
            dirs: Vec::new(),
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            queue: VecDeque::new(),
            acked: BTreeMap::new(),
            next_write: 0,
        };
        for id in VOTERS {
            c.dirs.push(tempfile::tempdir().unwrap());
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let dir = self.dirs[(id - 1) as usize].path();
        self.nodes.insert(id, Some(KvNode::open(id, &VOTERS, dir, options(), SNAPSHOT_EVERY)));
    }

    fn stop(&mut self, id: u64) {
        // raft-rs does not hand its storage back; dropping it closes it (what `close` does,
        // without the error report).
        drop(self.nodes.get_mut(&id).unwrap().take().expect("running"));
    }

    fn up(&self, id: u64) -> bool {
        self.nodes[&id].is_some() && !self.cut.contains(&id)
    }

    /// One round: tick every node, handle Readies, deliver the queued messages.
    fn round(&mut self) {
        for node in self.nodes.values_mut().flatten() {
            node.raw.tick();
        }
        self.settle();
    }

    /// Handles Readies and delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for node in self.nodes.values_mut() {
                let Some(node) = node else { continue };
                let leader = node.is_leader();
                let before = node.applied;
                for m in node.on_ready() {
                    moved = true;
                    self.queue.push_back(m);
                }
                // A leader's applied writes are acknowledged to its clients.
                if leader && node.applied > before {
                    for (k, v) in &node.kv {
                        self.acked.entry(k.clone()).or_default().clone_from(v);
                    }
                }
            }
            while let Some(m) = self.queue.pop_front() {
                moved = true;
                if self.up(m.from) && self.up(m.to) {
                    let to = self.nodes.get_mut(&m.to).unwrap().as_mut().unwrap();
                    let _ = to.raw.step(m);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never settled");
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().find(|(id, n)| n.as_ref().is_some_and(|n| n.is_leader()) && self.up(**id)).map(|(id, _)| *id)
    }

    fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            if let Some(l) = self.leader() {
                // A leader that still hears a majority.
                if VOTERS.iter().filter(|&&v| self.up(v)).count() >= 2 {
                    return l;
                }
            }
            self.round();
        }
        panic!("no leader elected");
    }

    /// Writes `n` keys through the current leader, settling after each few.
    fn write(&mut self, n: u64) {
        let leader = self.elect();
        for _ in 0..n {
            let w = self.next_write;
            self.next_write += 1;
            let node = self.nodes.get_mut(&leader).unwrap().as_mut().unwrap();
            node.raw.propose(Vec::new(), format!("key{}=value{w}", w % 97).into_bytes()).unwrap();
            if w.is_multiple_of(4) {
                self.settle();
            }
        }
        self.settle();
        for _ in 0..5 {
            self.round();
        }
    }

    /// Every running node has applied the same state, holding every acknowledged write.
    fn check_converged(&mut self) {
        for _ in 0..100 {
            self.round();
        }
        let states: Vec<_> = self.nodes.values().flatten().map(|n| (n.applied, n.kv.clone())).collect();
        for (applied, kv) in &states {
            assert_eq!((applied, kv), (&states[0].0, &states[0].1), "the nodes converged");
        }
        for (k, v) in &self.acked {
            // A later write of the same key may have replaced an acknowledged value.
            assert!(states[0].1.contains_key(k), "acknowledged key {k}={v} kept");
        }
    }
}

#[test]
fn three_raft_rs_nodes_on_disk_storage_survive_restarts_leader_loss_and_compaction() {
    let mut c = Cluster::new();
    c.write(100);
    c.check_converged();

    // The leader stops (its storage closed), the others elect a new one and go on.
    let old = c.elect();
    c.stop(old);
    let new = c.elect();
    assert_ne!(new, old);
    c.write(100);
    // Restarted, it catches up (its log is behind the others' compaction: by snapshot).
    c.start(old);
    c.check_converged();

    // A follower cut off while the others write and compact far past its log.
    let leader = c.elect();
    let follower = VOTERS.into_iter().find(|&v| v != leader).unwrap();
    c.cut.insert(follower);
    c.write(3 * SNAPSHOT_EVERY);
    c.cut.remove(&follower);
    c.check_converged();
    let installed = c.nodes[&follower].as_ref().unwrap().snapshots_installed;
    assert!(installed >= 1, "the cut-off follower was caught up by snapshot");

    // The leader is cut off mid-write (its last proposals never commit), a new leader takes
    // over, and when the old one returns its uncommitted suffix is replaced.
    let leader = c.elect();
    let node = c.nodes.get_mut(&leader).unwrap().as_mut().unwrap();
    for i in 0..10 {
        node.raw.propose(Vec::new(), format!("lost{i}=x").into_bytes()).unwrap();
    }
    c.cut.insert(leader);
    c.settle();
    let next = c.elect();
    assert_ne!(next, leader);
    c.write(30);
    c.cut.remove(&leader);
    c.check_converged();
    let kv = &c.nodes[&leader].as_ref().unwrap().kv;
    assert!(kv.keys().all(|k| !k.starts_with("lost")), "uncommitted writes of a deposed leader never applied");

    // Every node restarts, one after the other, and the cluster still agrees.
    for id in VOTERS {
        c.stop(id);
        c.start(id);
        c.write(20);
    }
    c.check_converged();
    let total: u64 = c.nodes.values().flatten().map(|n| n.applied).min().unwrap();
    assert!(total > 300, "applied {total}");
}

/// raft-rs may hand out a snapshot at exactly its commit index (after
/// `RawNode::request_snapshot`); the application may already have made a snapshot there, or
/// compacted past it. `persist` leaves such a storage as it is instead of failing.
#[test]
fn a_ready_snapshot_the_storage_already_covers_is_not_an_error() {
    use keel::storage::{HardState, MemStorage};
    let snapshot_at = |index: u64, term: u64| {
        let mut s = raft::eraftpb::Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = vec![1];
        s.data = b"state".to_vec().into();
        s
    };
    let entries: Vec<Entry> =
        (1..=10).map(|i| Entry { index: i, term: 2, data: vec![i as u8].into(), ..Default::default() }).collect();
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = DiskStorage::open(dir.path(), options()).unwrap();
    let mem = MemStorage::new();
    fn check<S: RaftRsStorage>(mut s: S, snap: impl Fn(u64, u64) -> raft::eraftpb::Snapshot, entries: &[Entry]) {
        s.append_raft_entries(entries).unwrap();
        s.set_hard_state(&HardState { term: 2, vote: 1, commit: 8 }).unwrap();
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        s.create_snapshot(6, &cs, &mut &b"state"[..]).unwrap();
        // At the local snapshot's index, and below it after compaction: nothing to do.
        raft_rs::persist(&mut s, &snap(6, 2), &[], None).unwrap();
        s.compact(8).unwrap();
        raft_rs::persist(&mut s, &snap(6, 2), &[], None).unwrap();
        assert_eq!((Storage::first_index(&s).unwrap(), Storage::last_index(&s).unwrap()), (8, 10), "unchanged");
        // At the commit index, above the local snapshot: installed, the log restarts after it.
        raft_rs::persist(&mut s, &snap(8, 2), &[], None).unwrap();
        assert_eq!(Storage::first_index(&s).unwrap(), 9);
        // Below it now: covered.
        raft_rs::persist(&mut s, &snap(7, 2), &[], None).unwrap();
        assert_eq!(Storage::first_index(&s).unwrap(), 9);
    }
    check(disk, snapshot_at, &entries);
    check(mem, snapshot_at, &entries);
}
