//! A key-value state machine on a raft-rs `RawNode` over keel's `DiskStorage`: the loop a
//! raft-rs application runs for each `Ready`, with keel's `raft_rs` helpers persisting it.
//! Shared by the example's `main.rs` and by `tests/raft_rs.rs`.

use keel::raft_rs;
use keel::storage::{ConfState, DiskStorage, Storage, StorageMut, StorageOptions};
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};
use std::collections::BTreeMap;
use std::path::Path;

/// raft-rs logs through slog; the example and tests discard it.
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A key-value state machine over a raft-rs `RawNode<DiskStorage>`: entries `key=value`.
pub struct KvNode {
    pub raw: RawNode<DiskStorage>,
    pub kv: BTreeMap<String, String>,
    pub applied: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Make a snapshot (and compact) every this many applied entries; 0 for never.
    snapshot_every: u64,
}

impl KvNode {
    /// Opens (creating on first use) node `id` of a cluster of `voters` in `dir`, restoring
    /// the state machine from the newest snapshot, as a restarted application does.
    pub fn open(id: u64, voters: &[u64], dir: &Path, opts: StorageOptions, snapshot_every: u64) -> KvNode {
        let (mut storage, _) = DiskStorage::open(dir, opts).unwrap();
        if Storage::initial_state(&storage).unwrap().conf_state.voters.is_empty() {
            storage.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }).unwrap();
        }
        let (kv, applied) = match Storage::snapshot(&storage, 0) {
            Ok(s) => (decode_kv(&s.read_to_vec().unwrap()), s.metadata.index),
            Err(_) => (BTreeMap::new(), 0),
        };
        let config = Config { id, election_tick: 10, heartbeat_tick: 2, applied, ..Config::default() };
        config.validate().unwrap();
        let raw = RawNode::new(&config, storage, &logger()).unwrap();
        KvNode { raw, kv, applied, snapshots_installed: 0, snapshot_every }
    }

    /// Handles one Ready, if any, as raft-rs's documentation orders it; returns the messages
    /// to send.
    pub fn on_ready(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        if !self.raw.has_ready() {
            return out;
        }
        let mut ready = self.raw.ready();
        out.extend(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.kv = decode_kv(&ready.snapshot().data);
            self.applied = ready.snapshot().get_metadata().index;
            self.snapshots_installed += 1;
        }
        let committed = ready.take_committed_entries();
        raft_rs::persist_ready(self.raw.mut_store(), &ready).unwrap();
        self.apply(committed);
        out.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            raft_rs::persist_commit(self.raw.mut_store(), commit).unwrap();
        }
        out.extend(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        out
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            assert_eq!(e.index, self.applied + 1, "applied in order, without gaps");
            self.applied = e.index;
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                let s = std::str::from_utf8(&e.data).unwrap();
                let (k, v) = s.split_once('=').unwrap();
                self.kv.insert(k.to_string(), v.to_string());
            }
            if self.snapshot_every > 0 && self.applied.is_multiple_of(self.snapshot_every) {
                self.snapshot_and_compact();
            }
        }
    }

    /// Snapshots the state machine at the applied index and compacts the log below it, keeping
    /// a few entries for slightly lagging followers.
    fn snapshot_and_compact(&mut self) {
        let conf_state = Storage::initial_state(self.raw.store()).unwrap().conf_state;
        let data = encode_kv(&self.kv);
        let store = self.raw.mut_store();
        match store.create_snapshot(self.applied, &conf_state, &mut &data[..]) {
            Ok(()) => {}
            // A leader's newer snapshot arrived first: nothing to do.
            Err(keel::Error::SnapshotOutOfDate { .. }) => return,
            Err(e) => panic!("snapshot: {e}"),
        }
        store.compact(self.applied.saturating_sub(5).max(1)).unwrap();
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }
}

pub fn encode_kv(kv: &BTreeMap<String, String>) -> Vec<u8> {
    kv.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>().into_bytes()
}

pub fn decode_kv(data: &[u8]) -> BTreeMap<String, String> {
    let s = std::str::from_utf8(data).unwrap();
    s.lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}
