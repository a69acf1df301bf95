//! A full disk is an operating state: appends answer `Error::NoSpace` (not latched), reads,
//! reopening and compaction work while the disk is full, and appends work again by themselves
//! once compaction (or anything else) made room. On the simulated disk's capacity model (a file
//! system of N bytes: growing files spends, overwriting does not, removing gives back) and, where
//! this machine lets a test mount one, on a real tmpfs of a few MiB.

use keel::Error;
use keel::io::FileSystem;
use keel::wal::{Log, LogOptions, NewEntry};
use keel_harness::sim::SimFileSystem;
use keel_harness::tmpfs::Tmpfs;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const SEGMENT: u64 = 64 << 10;

fn payload(index: u64) -> Vec<u8> {
    (0..1000u64).map(|i| (i * 31 + index) as u8).collect()
}

/// Appends 1 KB entries, one synced append each, until the disk is full; returns what was
/// acknowledged.
/// Opens again right after the last handle was dropped, on a real file system: the directory
/// lock (`flock`) may still be held for a moment by a process another test thread is starting
/// (`mount`, `umount`), which inherits the descriptor between fork and exec. Retried for up to
/// 2 s on `Locked` only.
fn reopen<T>(mut open: impl FnMut() -> keel::Result<T>) -> keel::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open() {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

/// A real tmpfs of `size` mounted for the test (bind as `(_mnt, tmpfs)`: unmounted before its
/// directory goes), or `None`, said as SKIPPED, where this process may not mount one.
fn small_tmpfs(size: &str) -> Option<(tempfile::TempDir, Tmpfs)> {
    let mnt = tempfile::tempdir().unwrap();
    match Tmpfs::mount(mnt.path(), size) {
        Ok(fs) => Some((mnt, fs)),
        Err(why) => {
            eprintln!("SKIPPED: no small real file system to fill ({why}); the simulated disk's tests still ran");
            None
        }
    }
}

fn fill(log: &mut Log, acked: &mut BTreeMap<u64, Vec<u8>>) -> Error {
    loop {
        let index = log.last_index() + 1;
        let p = payload(index);
        match log.append_and_sync(&[NewEntry { index, term: 1, payload: &p }]) {
            Ok(()) => {
                acked.insert(index, p);
            }
            Err(e) => return e,
        }
        assert!(acked.len() < 1_000_000, "the disk never filled");
    }
}

fn check_all(log: &Log, acked: &BTreeMap<u64, Vec<u8>>) {
    assert_eq!(log.last_index(), *acked.keys().last().unwrap());
    for (&index, p) in acked.range(log.first_index()..) {
        assert_eq!(&*log.entry(index).unwrap().payload, &p[..], "entry {index}");
    }
}

/// The whole story on one file system: fill, fail, stay readable, reopen while full, compact,
/// append again without a reopen, and reopen once more.
fn full_disk_story(dir: &Path, options: LogOptions, room_left: impl Fn() -> u64) {
    let (mut log, _) = Log::open(dir, options.clone()).unwrap();
    let mut acked = BTreeMap::new();
    let err = fill(&mut log, &mut acked);
    assert!(matches!(err, Error::NoSpace { .. }), "a typed disk-full error, not {err:?}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(!log.is_failed(), "a full disk does not latch the log");
    let filled = acked.len();
    assert!(filled > 100, "only {filled} entries fit");
    // Refused again, still not latched; everything acknowledged reads back.
    let p = payload(0);
    let next = log.last_index() + 1;
    assert!(log.append_and_sync(&[NewEntry { index: next, term: 1, payload: &p }]).unwrap_err().is_no_space());
    assert!(!log.is_failed());
    check_all(&log, &acked);
    log.verify().unwrap();

    // Reopened while full: nothing to write, so nothing needs space.
    drop(log);
    let (mut log, report) = reopen(|| Log::open(dir, options.clone())).unwrap();
    assert_eq!(report.last_index, *acked.keys().last().unwrap());
    check_all(&log, &acked);

    // Compaction frees space and needs none.
    let before = room_left();
    let keep_from = log.last_index() - 10;
    log.compact(keep_from).unwrap();
    assert!(room_left() > before + SEGMENT, "compaction freed whole segments: {before} -> {}", room_left());
    assert_eq!(log.first_index(), keep_from);

    // Appends work again, without a reopen, until the disk is full once more.
    let err = fill(&mut log, &mut acked);
    assert!(err.is_no_space(), "{err}");
    assert!(acked.len() > filled + 50, "appends resumed after compaction: {filled} -> {}", acked.len());
    check_all(&log, &acked);
    drop(log);
    let (log, _) = reopen(|| Log::open(dir, options.clone())).unwrap();
    check_all(&log, &acked);
}

#[test]
fn a_full_simulated_disk_refuses_appends_and_recovers_by_compaction() {
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/log");
    fs.create_dir_all(dir).unwrap();
    // Room for the directory's files plus about six segments (one of them being prepared).
    fs.set_capacity(Some(6 * SEGMENT + 4096));
    let options = LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() };
    let cap = 6 * SEGMENT + 4096;
    full_disk_story(dir, options, || cap - fs.used_bytes());
}

#[test]
fn a_full_tmpfs_refuses_appends_and_recovers_by_compaction() {
    let Some((_mnt, fs)) = small_tmpfs("1m") else { return };
    let dir = fs.path().join("log");
    let options = LogOptions { segment_bytes: SEGMENT, ..LogOptions::default() };
    full_disk_story(&dir, options, || fs.free_bytes());
}

mod storage {
    use super::*;
    use keel::storage::{ConfState, DiskStorage, Entry, HardState, Storage, StorageMut, StorageOptions};

    const RESERVE: u64 = 2 * SEGMENT;

    fn options(fs: &Arc<SimFileSystem>) -> StorageOptions {
        StorageOptions {
            log: LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() },
            reserve_bytes: RESERVE,
            ..StorageOptions::default()
        }
    }

    fn fill(s: &mut DiskStorage, term: u64) -> Error {
        loop {
            let index = s.last_index().unwrap() + 1;
            if let Err(e) = s.append(&[Entry::new(index, term, payload(index))]) {
                return e;
            }
        }
    }

    /// The snapshot that lets the log be compacted is written on a full disk: its first try
    /// gives the reserve back and says `NoSpace`, the retry fits, compaction frees segments, and
    /// the reserve is held again.
    #[test]
    fn a_snapshot_is_written_on_a_full_disk_from_the_reserve() {
        let fs = Arc::new(SimFileSystem::new());
        let dir = Path::new("/sim/storage");
        let (mut s, _) = DiskStorage::open(dir, options(&fs)).unwrap();
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        s.set_conf_state(&cs).unwrap();
        fs.set_capacity(Some(fs.used_bytes() + 5 * SEGMENT));
        assert!(fill(&mut s, 1).is_no_space());
        let last = s.last_index().unwrap();
        s.set_hard_state(&HardState { term: 1, vote: 1, commit: last }).unwrap();
        let state = vec![7u8; SEGMENT as usize]; // the state machine: one segment's worth
        let err = s.create_snapshot(last, &cs, &mut &state[..]).unwrap_err();
        assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
        s.create_snapshot(last, &cs, &mut &state[..]).expect("the retry fits in the released reserve");
        s.compact(last - 5).unwrap();
        assert_eq!(Storage::snapshot(&s, 0).unwrap().read_to_vec().unwrap(), state);
        // The reserve is taken again, and the log has room again.
        assert_eq!(fs.open(&dir.join("reserve")).unwrap().len().unwrap(), RESERVE, "the reserve is held again");
        for index in last + 1..last + 40 {
            s.append(&[Entry::new(index, 1, payload(index))]).unwrap();
        }
        drop(s);
        let (s, _) = DiskStorage::open(dir, options(&fs)).unwrap();
        assert_eq!(Storage::snapshot(&s, 0).unwrap().metadata.index, last);
        assert_eq!(s.last_index().unwrap(), last + 39);
    }

    /// A snapshot received from a leader on a full disk: installing it fails with `NoSpace`
    /// (nothing changed, nothing latched), the retry installs it from the released reserve.
    #[test]
    fn a_leaders_snapshot_installs_on_a_full_disk_from_the_reserve() {
        let fs = Arc::new(SimFileSystem::new());
        let dir = Path::new("/sim/storage");
        let (mut s, _) = DiskStorage::open(dir, options(&fs)).unwrap();
        let cs = ConfState { voters: vec![1, 2], ..ConfState::default() };
        s.set_conf_state(&cs).unwrap();
        fs.set_capacity(Some(fs.used_bytes() + 5 * SEGMENT));
        assert!(fill(&mut s, 1).is_no_space());
        let last = s.last_index().unwrap();
        let metadata = keel::storage::SnapshotMetadata { index: last + 100, term: 2, conf_state: cs.clone() };
        let state = vec![9u8; SEGMENT as usize];
        let err = s.apply_snapshot(&metadata, &mut &state[..]).unwrap_err();
        assert!(err.is_no_space(), "{err:?}");
        assert_eq!(s.last_index().unwrap(), last, "nothing changed");
        s.apply_snapshot(&metadata, &mut &state[..]).expect("the retry fits in the released reserve");
        assert_eq!(s.first_index().unwrap(), last + 101);
        // The old log is gone: room for appends again.
        for index in last + 101..last + 150 {
            s.append(&[Entry::new(index, 2, payload(index))]).unwrap();
        }
    }

    /// `DiskStorage` on a full simulated disk: appends refused (not latched), the HardState
    /// still written (its two slots are overwritten in place), reopened while full, compacted,
    /// and appending again.
    #[test]
    fn a_full_disk_keeps_the_hard_state_and_recovers_by_compaction() {
        let fs = Arc::new(SimFileSystem::new());
        let dir = Path::new("/sim/storage");
        let (mut s, _) = DiskStorage::open(dir, options(&fs)).unwrap();
        s.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() }).unwrap();
        fs.set_capacity(Some(fs.used_bytes() + 4 * SEGMENT));
        let mut term = 1;
        let full = loop {
            let index = s.last_index().unwrap() + 1;
            match s.append(&[Entry::new(index, term, payload(index))]) {
                Ok(()) => {}
                Err(e) => break e,
            }
            if index % 50 == 0 {
                term += 1;
                s.set_hard_state(&HardState { term, vote: 2, commit: index }).unwrap();
            }
        };
        assert!(full.is_no_space(), "{full}");
        let last = s.last_index().unwrap();
        // A full disk still takes a new term and vote, and the commit: the HardState file is
        // overwritten in place. Nothing latched: the storage goes on.
        s.set_hard_state(&HardState { term: term + 1, vote: 3, commit: last }).unwrap();
        assert!(s.append(&[Entry::new(last + 1, term + 1, payload(0))]).unwrap_err().is_no_space());
        drop(s);
        let (mut s, _) = DiskStorage::open(dir, options(&fs)).unwrap();
        let hs = Storage::initial_state(&s).unwrap().hard_state;
        assert_eq!(hs, HardState { term: term + 1, vote: 3, commit: last });
        assert_eq!(s.last_index().unwrap(), last);
        for i in [1, last / 2, last] {
            assert_eq!(&*Storage::entries(&s, i, i + 1, u64::MAX).unwrap()[0].data, &payload(i)[..]);
        }
        // Compaction needs no space and makes room; appends resume without a reopen.
        s.compact(last - 5).unwrap();
        for index in last + 1..last + 100 {
            s.append(&[Entry::new(index, term + 1, payload(index))]).unwrap();
        }
    }
}

/// `DiskStorage` on a real tmpfs: filled, reopened while full, a snapshot written from the
/// reserve, compacted, appending again.
#[test]
fn a_full_tmpfs_storage_snapshots_compacts_and_appends_again() {
    use keel::storage::{ConfState, DiskStorage, Entry, HardState, Storage, StorageMut, StorageOptions};
    let Some((_mnt, tmpfs)) = small_tmpfs("2m") else { return };
    let dir = tmpfs.path().join("storage");
    let options = StorageOptions {
        log: LogOptions { segment_bytes: SEGMENT, ..LogOptions::default() },
        reserve_bytes: 4 * SEGMENT,
        ..StorageOptions::default()
    };
    let (mut s, _) = DiskStorage::open(&dir, options.clone()).unwrap();
    let cs = ConfState { voters: vec![1], ..ConfState::default() };
    s.set_conf_state(&cs).unwrap();
    let full = loop {
        let index = s.last_index().unwrap() + 1;
        if let Err(e) = s.append(&[Entry::new(index, 1, payload(index))]) {
            break e;
        }
    };
    assert!(matches!(full, Error::NoSpace { .. }), "{full:?}");
    let last = s.last_index().unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: last }).unwrap();
    drop(s);
    let (mut s, _) = reopen(|| DiskStorage::open(&dir, options.clone())).expect("opens while the disk is full");
    assert_eq!(s.last_index().unwrap(), last);
    let state = vec![3u8; 3 * SEGMENT as usize];
    let snapshot = match s.create_snapshot(last, &cs, &mut &state[..]) {
        Ok(()) => Ok(()),
        Err(e) if e.is_no_space() => s.create_snapshot(last, &cs, &mut &state[..]),
        Err(e) => Err(e),
    };
    snapshot.expect("the snapshot is written from the reserve");
    s.compact(last - 2).unwrap();
    for index in last + 1..last + 100 {
        s.append(&[Entry::new(index, 1, payload(index))]).unwrap();
    }
    drop(s);
    let (s, _) = reopen(|| DiskStorage::open(&dir, options.clone())).unwrap();
    assert_eq!(s.last_index().unwrap(), last + 99);
    assert_eq!(Storage::snapshot(&s, 0).unwrap().read_to_vec().unwrap(), state);
}

/// A Raft `Node` whose disk fills: it keeps running, says why it is stuck (`disk_full`), hands
/// out nothing it could not persist (no proposal is acknowledged), and once the application
/// compacts (through `with_storage`, which needs no space) it persists by itself on the next
/// tick and the waiting proposals commit.
#[test]
fn a_node_on_a_full_disk_waits_and_resumes_by_itself() {
    use keel::raft::{Config, Node, Outcome};
    use keel::storage::{ConfState, DiskStorage, StorageMut, StorageOptions};
    use std::time::{Duration, Instant};
    let fs = Arc::new(SimFileSystem::new());
    let options = StorageOptions {
        log: LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() },
        reserve_bytes: 0,
        ..StorageOptions::default()
    };
    let (mut storage, _) = DiskStorage::open("/sim/node", options).unwrap();
    storage.set_conf_state(&ConfState { voters: vec![1], ..ConfState::default() }).unwrap();
    fs.set_capacity(Some(fs.used_bytes() + 4 * SEGMENT));
    let node = Node::start(&Config::new(1), storage).unwrap();
    node.campaign().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let drive = |until: &mut dyn FnMut(&Node<DiskStorage>) -> bool| {
        while !until(&node) {
            assert!(Instant::now() < deadline, "timed out");
            node.tick().unwrap();
            if let Some(rd) = node.ready_timeout(Duration::from_millis(5)).unwrap() {
                node.advance(rd).unwrap();
            }
        }
    };
    drive(&mut |n: &Node<DiskStorage>| n.status().unwrap().soft_state.role == keel::raft::Role::Leader);
    // Propose until the disk is full.
    let mut committed = 0;
    let mut waiting = Vec::new();
    while node.disk_full().is_none() {
        assert!(Instant::now() < deadline, "the disk never filled");
        let mut p = node.propose(payload(committed)).unwrap();
        drive(&mut |n: &Node<DiskStorage>| n.disk_full().is_some() || p.try_outcome().is_some());
        match p.try_outcome() {
            Some(Outcome::Committed { .. }) => committed += 1,
            Some(other) => panic!("{other:?}"),
            None => waiting.push(p),
        }
    }
    assert!(node.disk_full().unwrap().contains("no space left"), "{:?}", node.disk_full());
    assert!(committed > 50, "{committed}");
    // Stuck, not stopped: ticks and proposals are taken, nothing unpersisted is handed out (a
    // partial Ready holds only what may leave before persisting; a lone node has none of that
    // but committed entries it had persisted).
    let mut p = node.propose(b"while full".to_vec()).unwrap();
    for _ in 0..20 {
        node.tick().unwrap();
        if let Some(rd) = node.ready_timeout(Duration::from_millis(2)).unwrap() {
            assert!(rd.is_partial(), "only partial Readies while full");
            assert!(rd.entries.is_empty() && rd.hard_state.is_none() && rd.snapshot.is_none());
            assert!(rd.persisted_messages.is_empty());
            node.advance(rd).unwrap();
        }
    }
    assert!(p.try_outcome().is_none());
    // The application compacts (a snapshot would justify it; the log alone shows the space).
    let last = node.status().unwrap().hard_state.commit;
    node.with_storage(move |s| s.compact(last - 2)).unwrap().unwrap();
    waiting.push(p);
    drive(&mut |n: &Node<DiskStorage>| {
        n.disk_full().is_none() && waiting.iter_mut().all(|p| p.try_outcome().is_some())
    });
    for mut p in waiting {
        assert!(matches!(p.try_outcome(), Some(Outcome::Committed { .. })), "{p:?}");
    }
    node.stop().unwrap();
}
