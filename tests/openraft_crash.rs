//! The openraft adapter under faults: power loss and process kill at every sync and write of a
//! sequence of appends, truncations, purges and votes, and a failed fsync at every point, on
//! the simulated disk; damaged state files and refused appends.
#![cfg(feature = "openraft")]

use keel::openraft::KeelLogStore;
use keel::wal::LogOptions;
use keel_harness::sim::{CrashImage, FaultModel, SimFileSystem};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

openraft::declare_raft_types!(pub Config: D = String, R = String);

type Store = KeelLogStore<Config>;

/// What a reopened store shows: last purged, last log id, the entries' log ids.
type View = (Option<LogId<u64>>, Option<LogId<u64>>, Vec<LogId<u64>>);

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<Config> {
    // ~1.5 KiB payloads so that a 8 KiB segment holds a few entries and appends rotate.
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(format!("{index}@{term}:{}", "x".repeat(1500))) }
}

#[derive(Debug, Clone)]
enum Op {
    Vote(u64),
    Append(u64, std::ops::Range<u64>),
    Truncate(u64),
    Purge(u64, u64),
    Committed(u64, u64),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, LogId<u64>>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Vote(t) => self.vote = Some(Vote::new(*t, 1)),
            Op::Append(t, r) => {
                for i in r.clone() {
                    if self.purged.is_none_or(|p| i > p.index) {
                        self.entries.insert(i, log_id(*t, i));
                    }
                }
            }
            Op::Truncate(i) => {
                self.entries.retain(|&k, _| k < *i);
            }
            Op::Purge(t, i) => {
                if self.purged.is_some_and(|p| p.index >= *i) {
                    return;
                }
                self.purged = Some(log_id(*t, *i));
                self.entries.retain(|&k, _| k > *i);
            }
            Op::Committed(..) => {}
        }
    }

    /// (purged, last log id, entries) as the store should report them.
    fn view(&self) -> View {
        let last = self.entries.values().last().copied().or(self.purged);
        (self.purged, last, self.entries.values().copied().collect())
    }
}

fn ops() -> Vec<Op> {
    vec![
        Op::Vote(1),
        Op::Append(1, 0..5),
        Op::Append(1, 5..9),
        Op::Committed(1, 3),
        Op::Truncate(6),
        Op::Vote(2),
        Op::Append(2, 6..7),
        Op::Purge(1, 2),
        Op::Truncate(5),
        Op::Append(3, 5..10),
        Op::Truncate(8),
        Op::Purge(3, 8), // reaches entries the fence hides: a reset
        Op::Append(4, 9..12),
        Op::Purge(5, 20), // past the last entry (snapshot install)
        Op::Append(5, 21..24),
        Op::Truncate(22),
        Op::Append(6, 22..23),
        Op::Purge(0, 0), // no-op purge below
        Op::Truncate(21),
        Op::Append(7, 21..30),
    ]
}

fn options(fs: &SimFileSystem) -> LogOptions {
    LogOptions { segment_bytes: 8192, fs: Arc::new(fs.clone()), ..LogOptions::default() }
}

async fn run(store: &mut Store, op: &Op) {
    match op {
        Op::Vote(t) => store.save_vote(&Vote::new(*t, 1)).await.unwrap(),
        Op::Append(t, r) => store.blocking_append(r.clone().map(|i| entry(*t, i))).await.unwrap(),
        Op::Truncate(i) => store.truncate(log_id(0, *i)).await.unwrap(),
        Op::Purge(t, i) => store.purge(log_id(*t, *i)).await.unwrap(),
        Op::Committed(t, i) => store.save_committed(Some(log_id(*t, *i))).await.unwrap(),
    }
}

async fn observe(
    fs: SimFileSystem,
) -> Result<(Option<Vote<u64>>, (Option<LogId<u64>>, Option<LogId<u64>>, Vec<LogId<u64>>)), String> {
    let mut s = Store::open("/keel", options(&fs)).map_err(|e| format!("open: {e}"))?;
    let vote = s.read_vote().await.map_err(|e| e.to_string())?;
    let st = s.get_log_state().await.map_err(|e| e.to_string())?;
    let got = s.try_get_log_entries(0..1000).await.map_err(|e| e.to_string())?;
    for e in &got {
        assert_eq!(*e, entry(e.log_id.leader_id.term, e.log_id.index), "payload intact");
    }
    Ok((vote, (st.last_purged_log_id, st.last_log_id, got.iter().map(|e| e.log_id).collect())))
}

/// Power loss (several seeds) and process kill at every sync and every write: the reopened store
/// is the state before the interrupted step or the state after it, never anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_point_is_before_or_after_the_step() {
    let fs = SimFileSystem::new();
    let ops = ops();
    let mut models = vec![Model::default()];
    {
        let mut s = Store::open("/keel", options(&fs)).unwrap();
        fs.capture_crash_points(true, 100, 7);
        for (k, op) in ops.iter().enumerate() {
            fs.set_tag(k as u64 + 1);
            run(&mut s, op).await;
            let mut m = models.last().unwrap().clone();
            m.apply(op);
            models.push(m);
            let st = s.get_log_state().await.unwrap();
            let got: Vec<_> = s.try_get_log_entries(0..1000).await.unwrap().iter().map(|e| e.log_id).collect();
            assert_eq!((st.last_purged_log_id, st.last_log_id, got), models[k + 1].view(), "live after {op:?}");
        }
        fs.set_tag(ops.len() as u64 + 1);
    }
    let mut images: Vec<(u64, CrashImage)> = fs.take_captures();
    images.push((ops.len() as u64 + 1, fs.image()));
    models.push(models.last().unwrap().clone());
    eprintln!("{} crash images", images.len());
    let mut failures = Vec::new();
    for (tag, image) in &images {
        let k = *tag as usize;
        let (before, after) = (&models[k - 1], &models[k]);
        let mut disks = vec![("kill".to_string(), image.restart().unwrap())];
        for seed in 0..4 {
            disks.push((format!("power seed {seed}"), image.materialize(seed, &FaultModel::default()).unwrap()));
        }
        for (how, disk) in disks {
            match observe(disk).await {
                Ok((vote, view)) => {
                    let ok_before = view == before.view() && vote == before.vote;
                    let ok_after = view == after.view() && vote == after.vote;
                    // A step may be durable without being acknowledged (vote of the step before
                    // with the log of the step after is not possible: one step changes one).
                    if !(ok_before || ok_after) {
                        failures.push(format!(
                            "step {k} ({:?}) {how}: got vote {vote:?} {view:?}\n  before {:?} {:?}\n  after {:?} {:?}",
                            ops.get(k - 1),
                            before.vote,
                            before.view(),
                            after.vote,
                            after.view()
                        ));
                    }
                }
                Err(e) => failures.push(format!("step {k} ({:?}) {how}: {e}", ops.get(k - 1))),
            }
        }
    }
    for f in failures.iter().take(10) {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}

/// A state slot that passes its checksum but holds out-of-range indexes (a bug of another
/// writer, a crafted file): open must refuse it, not panic.
#[test]
fn state_file_with_huge_indexes_is_refused_not_a_panic() {
    fn slot(flags: u32, purged_index: u64, fence: u64) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(b"KEELORST");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&5u64.to_le_bytes());
        b[24..28].copy_from_slice(&flags.to_le_bytes());
        b[88..96].copy_from_slice(&purged_index.to_le_bytes());
        b[96..104].copy_from_slice(&fence.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..12]);
        h.update(&b[16..]);
        let c = h.finalize();
        b[12..16].copy_from_slice(&c.to_le_bytes());
        b
    }
    let cases = [("fence u64::MAX", slot(1 << 4, 0, u64::MAX)), ("purged u64::MAX - 1", slot(1 << 3, u64::MAX - 1, 0))];
    let mut panics = Vec::new();
    for (name, s) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = s.clone();
        bytes.resize(8192, 0);
        std::fs::write(dir.path().join("openraft-state"), &bytes).unwrap();
        let path = dir.path().to_path_buf();
        let r = std::panic::catch_unwind(move || Store::open(&path, LogOptions::default()).map(|_| ()));
        match r {
            Ok(res) => eprintln!("{name}: {res:?}"),
            Err(_) => panics.push(name),
        }
    }
    assert!(panics.is_empty(), "open panicked on: {panics:?}");
}

/// A reader handed to openraft's replication keeps the store's directory locked (and its log
/// open) after the store itself is dropped, as documented: a reopen is refused with `Locked`
/// (never two stores on one directory) until the last reader is gone.
#[tokio::test]
async fn a_live_reader_keeps_the_directory_locked_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), LogOptions::default()).unwrap();
    s.blocking_append([entry(1, 0)]).await.unwrap();
    let reader = s.get_log_reader().await;
    drop(s);
    let refused = Store::open(dir.path(), LogOptions::default());
    assert!(matches!(refused, Err(keel::Error::Locked { .. })), "reopen while a reader lives: {:?}", refused.err());
    drop(reader);
    Store::open(dir.path(), LogOptions::default()).expect("reopen once the last reader is gone");
}

/// An entry too large for a segment is refused by keel before anything is written; the store
/// says so without latching itself (a gap, also refused, does not latch).
#[tokio::test]
async fn an_oversized_entry_is_refused_without_latching() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), LogOptions { segment_bytes: 8192, ..LogOptions::default() }).unwrap();
    s.blocking_append([entry(1, 0)]).await.unwrap();
    let big = Entry::<Config> { log_id: log_id(1, 1), payload: EntryPayload::Normal("y".repeat(9000)) };
    let err = s.blocking_append([big]).await.unwrap_err();
    eprintln!("refused: {err}");
    assert!(!s.is_failed(), "an invalid argument latched the store");
}

async fn try_run(store: &mut Store, op: &Op) -> Result<(), String> {
    let r = match op {
        Op::Vote(t) => store.save_vote(&Vote::new(*t, 1)).await,
        Op::Append(t, r) => store.blocking_append(r.clone().map(|i| entry(*t, i))).await,
        Op::Truncate(i) => store.truncate(log_id(0, *i)).await,
        Op::Purge(t, i) => store.purge(log_id(*t, *i)).await,
        Op::Committed(t, i) => store.save_committed(Some(log_id(*t, *i))).await,
    };
    r.map_err(|e| e.to_string())
}

/// The n-th sync fails, for every n the sequence reaches: the step it belongs to fails, every
/// later step is refused (no retry, no "ok" after the failure), and after a kill or a power
/// loss the store is the state before that step or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_at_every_point_latches_and_recovers() {
    let ops = ops();
    let mut models = vec![Model::default()];
    for op in &ops {
        let mut m = models.last().unwrap().clone();
        m.apply(op);
        models.push(m);
    }
    let mut failures = Vec::new();
    let mut n = 1;
    loop {
        let fs = SimFileSystem::new();
        let mut s = Store::open("/keel", options(&fs)).unwrap();
        fs.fail_nth_sync(n);
        let mut failed_at = None;
        for (k, op) in ops.iter().enumerate() {
            let r = try_run(&mut s, op).await;
            match (failed_at, r) {
                (None, Err(_)) => failed_at = Some(k + 1),
                (Some(f), Ok(())) => failures.push(format!("sync {n}: step {} ok after step {f} failed", k + 1)),
                _ => {}
            }
        }
        let Some(k) = failed_at else { break };
        assert!(s.is_failed(), "sync {n}: step {k} failed without latching");
        let image = fs.image();
        drop(s);
        let (before, after) = (&models[k - 1], &models[k]);
        let mut disks = vec![("kill".to_string(), image.restart().unwrap())];
        for seed in 0..3 {
            disks.push((format!("power seed {seed}"), image.materialize(seed, &FaultModel::default()).unwrap()));
        }
        for (how, disk) in disks {
            match observe(disk).await {
                Ok((vote, view)) => {
                    let ok =
                        (view == before.view() && vote == before.vote) || (view == after.view() && vote == after.vote);
                    if !ok {
                        failures.push(format!("sync {n}, step {k} ({:?}) {how}: got {vote:?} {view:?}", ops[k - 1]));
                    }
                }
                Err(e) => failures.push(format!("sync {n}, step {k} {how}: {e}")),
            }
        }
        n += 1;
    }
    eprintln!("{} syncs failed in turn", n - 1);
    for f in failures.iter().take(10) {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}
