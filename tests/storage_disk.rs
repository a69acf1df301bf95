//! DiskStorage behaviour beyond the shared conformance suite: damaged HardState slots and
//! snapshot files, crash leftovers, completing an interrupted snapshot install, snapshot
//! retention and the failure latch.

mod common;

use common::{FaultyFs, FaultyHandle};
use keel::Error;
use keel::storage::{ConfState, DiskStorage, Entry, HardState, SnapshotMetadata, Storage, StorageMut, StorageOptions};
use keel::wal::LogOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn opts() -> StorageOptions {
    StorageOptions {
        log: LogOptions { segment_bytes: 16 * 1024, ..LogOptions::default() },
        ..StorageOptions::default()
    }
}

/// Storage options over a file system whose failures a test can inject.
fn faulty_options() -> (Arc<FaultyFs>, StorageOptions) {
    let faults = Arc::new(FaultyFs::default());
    let log = LogOptions { fs: Arc::new(FaultyHandle(faults.clone())), ..opts().log };
    (faults, StorageOptions { log, ..opts() })
}

/// Asserts that opening refused with corruption naming `path` under decision rule `rule`.
fn assert_refused<T: std::fmt::Debug>(opened: keel::Result<T>, path: &Path, rule: &str, context: &str) {
    match opened {
        Err(Error::Corruption(c)) => {
            assert_eq!(c.path, path, "{context}: {c}");
            assert_eq!(c.rule, Some(rule), "{context}: {c}");
        }
        other => panic!("{context}: expected corruption {rule}, got {other:?}"),
    }
}

fn open(dir: &Path) -> (DiskStorage, keel::storage::StorageReport) {
    DiskStorage::open(dir, opts()).unwrap()
}

fn ents(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| Entry::new(i, term, format!("entry {i} term {term}").into_bytes())).collect()
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_hard_state_write_loses_only_the_newest_update() {
    // Proves the two-slot rule: damaging the slot written last leaves the previous state.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 0 }).unwrap(); // slot 1 (seq 2)
    s.set_hard_state(&HardState { term: 2, vote: 2, commit: 0 }).unwrap(); // slot 0 (seq 3)
    drop(s);
    let path = dir.path().join("hardstate");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xFF; // inside slot 0
    std::fs::write(&path, &bytes).unwrap();
    let (s, _) = open(dir.path());
    assert_eq!(s.initial_state().unwrap().hard_state, HardState { term: 1, vote: 1, commit: 0 });
    drop(s);
    // Both slots damaged: a typed error naming the file, never a silent default.
    bytes[4096 + 100] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    assert_refused(DiskStorage::open(dir.path(), opts()), &path, "HARDSTATE_BOTH_SLOTS_INVALID", "both slots");
}

#[test]
fn damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 30, 1)).unwrap();
    s.create_snapshot(10, &ConfState::default(), &mut &b"state at 10"[..]).unwrap();
    s.create_snapshot(20, &ConfState::default(), &mut &b"state at 20"[..]).unwrap();
    drop(s);
    let newest = snapshot_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 12] ^= 1; // data byte
    std::fs::write(&newest, &bytes).unwrap();
    let (s, report) = open(dir.path());
    assert_eq!(report.snapshot, Some(keel::storage::SnapshotId { index: 10, term: 1 }), "{report}");
    assert_eq!(report.corrupt_snapshots.len(), 1, "{report}");
    assert!(report.corrupt_snapshots[0].1.contains("snapshot data checksum"), "{report}");
    assert_eq!(s.snapshot(0).unwrap().read_to_vec().unwrap(), b"state at 10");
    // The damaged file is set aside, not deleted, and never picked again.
    assert!(dir.path().read_dir().unwrap().any(|e| e.unwrap().path().to_string_lossy().ends_with(".snap.corrupt")));
}

/// Every file under `dir`, recursively, with its bytes: what "open touched nothing" compares.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree(&p));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out.sort();
    out
}

#[test]
fn snapshot_of_a_newer_format_version_refuses_open_and_touches_nothing() {
    // Proves a snapshot written by a newer keel is neither set aside as `*.corrupt` (hiding it
    // from that keel too) nor removed: open fails with IncompatibleVersion naming the file and
    // version, and leaves every file as it was (a leftover temporary file included), whether
    // the header checksum is one this build computes or not (a newer header layout).
    for checksum_known in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path());
        s.append(&ents(1, 30, 1)).unwrap();
        s.create_snapshot(10, &ConfState::default(), &mut &b"state at 10"[..]).unwrap();
        s.create_snapshot(20, &ConfState::default(), &mut &b"state at 20"[..]).unwrap();
        drop(s);
        std::fs::write(dir.path().join("snap-0000000000000001-000000000000001e.snap.tmp"), b"half").unwrap();
        let newest = snapshot_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        if checksum_known {
            let header_len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[..12]);
            crc.update(&bytes[16..header_len]);
            bytes[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
        }
        std::fs::write(&newest, &bytes).unwrap();
        let before = tree(dir.path());
        match DiskStorage::open(dir.path(), opts()) {
            Err(Error::IncompatibleVersion { path, found: 2, supported: 1 }) => assert_eq!(path, newest),
            other => panic!("checksum known {checksum_known}: {other:?}"),
        }
        assert_eq!(tree(dir.path()), before, "checksum known {checksum_known}: open changed the directory");
    }
}

#[test]
fn two_writers_of_the_same_snapshot_do_not_destroy_each_other() {
    // Proves each snapshot writer has a temporary file of its own: two writers of the snapshot
    // at the same (term, index), streaming more than a buffer's worth on two threads at once,
    // then finished one after the other. The first becomes the snapshot, byte for byte; the
    // second is refused as out of date and leaves no file behind. (They shared one `.tmp`
    // name: the second unlinked the first's file and the first renamed the second's.)
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 30, 1)).unwrap();
    let data = |fill: u8| vec![fill; 3 << 20];
    let mut a = s.begin_snapshot(20, &ConfState::default()).unwrap();
    let mut b = s.begin_snapshot(20, &ConfState::default()).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| std::io::Write::write_all(&mut a, &data(0xA)).unwrap());
        scope.spawn(|| std::io::Write::write_all(&mut b, &data(0xB)).unwrap());
    });
    s.finish_snapshot(a).unwrap();
    assert!(matches!(s.finish_snapshot(b), Err(Error::SnapshotOutOfDate { index: 20, covered: 20 })));
    assert_eq!(s.snapshot(20).unwrap().read_to_vec().unwrap(), data(0xA));
    drop(s);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let (s, report) = open(dir.path());
    assert!(report.corrupt_snapshots.is_empty(), "{report}");
    assert_eq!(s.snapshot(20).unwrap().read_to_vec().unwrap(), data(0xA));
}

#[test]
fn damaged_snapshot_without_a_usable_fallback_is_refused() {
    // The log was compacted past the older snapshot: the state cannot be rebuilt, so open fails
    // rather than serve a corrupt snapshot or a hole.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 30, 1)).unwrap();
    s.create_snapshot(20, &ConfState::default(), &mut &b"state at 20"[..]).unwrap();
    s.compact(21).unwrap();
    drop(s);
    let snap = snapshot_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[40] ^= 1; // header
    std::fs::write(&snap, &bytes).unwrap();
    let err = DiskStorage::open(dir.path(), opts()).unwrap_err();
    assert!(err.corruption().is_some(), "{err}");
    assert!(err.to_string().contains("cannot be rebuilt"), "{err}");
}

#[test]
fn leftover_temporary_files_are_removed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 5, 1)).unwrap();
    drop(s);
    let tmp = dir.path().join("snap-0000000000000001-0000000000000004.snap.tmp");
    std::fs::write(&tmp, b"half a snapshot").unwrap();
    let (s, report) = open(dir.path());
    assert_eq!(report.removed_temp_files, vec![tmp.clone()]);
    assert!(!tmp.exists());
    assert!(matches!(s.snapshot(0), Err(Error::SnapshotTemporarilyUnavailable)));
}

#[test]
fn a_snapshot_handle_still_reads_its_file_after_a_newer_snapshot_removed_it() {
    // A snapshot file keeps its file open: a handle taken before the file was pruned (a
    // transfer to a follower in flight) still reads all of it, checksum checked, after the
    // name is gone. Proves the snapshot file needs no pin of its own.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions { snapshots_kept: 1, ..opts() }).unwrap();
    s.append(&ents(1, 30, 1)).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 256) as u8).collect();
    s.create_snapshot(10, &ConfState::default(), &mut &data[..]).unwrap();
    let handle = s.snapshot(0).unwrap();
    s.create_snapshot(20, &ConfState::default(), &mut &b"newer"[..]).unwrap();
    let names: Vec<String> =
        snapshot_files(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["snap-0000000000000001-0000000000000014.snap"], "the file at 10 was removed");
    assert_eq!(handle.metadata.index, 10);
    assert_eq!(handle.read_to_vec().unwrap(), data);
    assert_eq!(handle.clone().read_to_vec().unwrap(), data, "every reader, not only the first");
}

#[test]
fn a_staged_snapshot_is_a_writer_temporary_file_removed_when_dropped_or_at_open() {
    // Staging uses the snapshot writers' temporary naming, so a crash's leftover is removed
    // by open like any other; a dropped sink or staged snapshot removes its file at once.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 5, 1)).unwrap();
    let temps = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
            .collect();
        v.sort();
        v
    };
    let meta = SnapshotMetadata { index: 9, term: 2, conf_state: ConfState::default() };
    let mut sink = s.receive_snapshot(&meta).unwrap();
    std::io::Write::write_all(&mut sink, b"received state").unwrap();
    let staged = temps(dir.path());
    assert_eq!(staged.len(), 1);
    let name = staged[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("snap-0000000000000002-0000000000000009.snap.") && name.ends_with(".tmp"), "{name}");
    let snapshot = sink.finish().unwrap();
    assert_eq!(temps(dir.path()), staged, "finished, it stays staged under the same name");
    assert!(snapshot_files(dir.path()).is_empty());
    assert_eq!(snapshot.read_to_vec().unwrap(), b"received state");
    drop(snapshot);
    assert!(temps(dir.path()).is_empty());
    // A crash while staging: the file stays until the next open removes it.
    let mut sink = s.receive_snapshot(&meta).unwrap();
    std::io::Write::write_all(&mut sink, b"half").unwrap();
    std::mem::forget(sink);
    let leftover = temps(dir.path());
    drop(s);
    let (s, report) = open(dir.path());
    assert_eq!(report.removed_temp_files, leftover);
    assert!(temps(dir.path()).is_empty());
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 5));
}

#[test]
fn only_temporary_files_named_by_keel_are_removed() {
    // Proves open removes the leftovers of keel's own interrupted writes (snapshot temporaries,
    // this version's and the earlier `<name>.tmp`, and `hardstate.tmp`) and nothing else: a
    // user's `notes.tmp` and files that merely look like keel's stay, untouched.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 5, 1)).unwrap();
    drop(s);
    let keels = [
        "snap-0000000000000001-0000000000000004.snap.tmp",
        "snap-0000000000000001-0000000000000004.snap.0000000000000003.tmp",
        "hardstate.tmp",
    ];
    let users = [
        "notes.tmp",
        "snap-1-4.snap.tmp",
        "snap-0000000000000001-0000000000000004.snap.3.tmp",
        "snap-0000000000000001-0000000000000004.snap.000000000000000G.tmp",
        "snap-+000000000000001-0000000000000004.snap.tmp",
        "log.tmp",
        "hardstate.tmp.tmp",
    ];
    for name in keels.iter().chain(&users) {
        std::fs::write(dir.path().join(name), name.as_bytes()).unwrap();
    }
    let (_s, report) = open(dir.path());
    let mut removed = report.removed_temp_files.clone();
    removed.sort();
    let mut expected: Vec<PathBuf> = keels.iter().map(|n| dir.path().join(n)).collect();
    expected.sort();
    assert_eq!(removed, expected, "{report}");
    for name in keels {
        assert!(!dir.path().join(name).exists(), "{name} was left");
    }
    for name in users {
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), name.as_bytes(), "{name} was touched");
    }
}

#[test]
fn interrupted_snapshot_install_is_completed_at_open() {
    // A crash after the snapshot file of apply_snapshot became durable, before the HardState
    // and the log reset: open rolls forward to the state after the call.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 10, 1)).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 5 }).unwrap();
    drop(s);
    // Produce the snapshot file in another directory, then drop it in, as if only step (1) ran.
    let other = tempfile::tempdir().unwrap();
    let (mut o, _) = open(other.path());
    let meta = SnapshotMetadata {
        index: 100,
        term: 4,
        conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
    };
    o.apply_snapshot(&meta, &mut &b"leader"[..]).unwrap();
    drop(o);
    let file = snapshot_files(other.path()).pop().unwrap();
    std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();

    let (s, report) = open(dir.path());
    assert!(report.snapshot_install_completed, "{report}");
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (101, 100));
    let st = s.initial_state().unwrap();
    // The vote was cast in term 1: it does not carry into term 4.
    assert_eq!(st.hard_state, HardState { term: 4, vote: 0, commit: 100 });
    assert_eq!(st.conf_state, meta.conf_state);
    drop(s);
    let (s, report) = open(dir.path());
    assert!(!report.snapshot_install_completed, "completed once, durably: {report}");
    assert_eq!(s.term(100).unwrap(), 4);
}

#[test]
fn only_the_newest_snapshots_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 50, 1)).unwrap();
    for i in [10, 20, 30, 40] {
        s.create_snapshot(i, &ConfState::default(), &mut &b"x"[..]).unwrap();
    }
    let names: Vec<String> =
        snapshot_files(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        vec!["snap-0000000000000001-000000000000001e.snap", "snap-0000000000000001-0000000000000028.snap"]
    );
}

#[test]
fn missing_hard_state_beside_a_log_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 5, 1)).unwrap();
    drop(s);
    std::fs::remove_file(dir.path().join("hardstate")).unwrap();
    let err = DiskStorage::open(dir.path(), opts()).unwrap_err();
    assert!(err.to_string().contains("HardState file is missing"), "{err}");
    assert_eq!(err.corruption().and_then(|c| c.rule), Some("STORAGE_HARDSTATE_MISSING"));
    // Snapshot files vouch for a HardState file too, even with the log gone as well.
    let (mut s, _) = open(dir.path().join("other").as_path());
    s.append(&ents(1, 5, 1)).unwrap();
    s.create_snapshot(3, &ConfState::default(), &mut &b"x"[..]).unwrap();
    drop(s);
    std::fs::remove_file(dir.path().join("other/hardstate")).unwrap();
    std::fs::remove_dir_all(dir.path().join("other/log")).unwrap();
    let err = DiskStorage::open(dir.path().join("other"), opts()).unwrap_err();
    assert_eq!(err.corruption().and_then(|c| c.rule), Some("STORAGE_HARDSTATE_MISSING"), "{err}");
}

/// The storage options in each recovery mode.
fn every_mode() -> [StorageOptions; 2] {
    use keel::wal::RecoveryMode::{AbsoluteConsistency, TolerateTailCorruption};
    [TolerateTailCorruption, AbsoluteConsistency]
        .map(|recovery_mode| StorageOptions { log: LogOptions { recovery_mode, ..opts().log }, ..opts() })
}

#[test]
fn a_hard_state_without_its_log_is_corruption() {
    // Proves the reverse of the check above: a HardState file that was written (or snapshot
    // files) beside a log directory that is missing or holds no segment is a lost log, refused
    // in every mode with the log directory named, instead of opening as an empty log.
    for lose in ["directory", "segments"] {
        for options in every_mode() {
            let dir = tempfile::tempdir().unwrap();
            let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
            s.append(&ents(1, 5, 1)).unwrap();
            s.set_hard_state(&HardState { term: 1, vote: 1, commit: 5 }).unwrap();
            drop(s);
            let log_dir = dir.path().join("log");
            if lose == "directory" {
                std::fs::remove_dir_all(&log_dir).unwrap();
            } else {
                for p in std::fs::read_dir(&log_dir).unwrap().map(|e| e.unwrap().path()) {
                    if p.extension().is_some_and(|x| x == "seg") {
                        std::fs::remove_file(p).unwrap();
                    }
                }
            }
            let context = format!("log {lose} lost, {:?}", options.log.recovery_mode);
            assert_refused(DiskStorage::open(dir.path(), options.clone()), &log_dir, "STORAGE_LOG_MISSING", &context);
        }
    }
}

#[test]
fn a_first_open_cut_short_before_the_log_still_opens() {
    // Proves the check above leaves a new storage alone: a HardState file as created (never
    // written) and no snapshot, beside no log, is a first open that stopped before creating the
    // log; nothing can have been lost, and open completes it.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 3, 1)).unwrap();
    assert_eq!(s.last_index().unwrap(), 3);
}

#[test]
fn a_log_reset_past_a_missing_snapshot_is_corruption() {
    // Proves a log that restarted after an installed snapshot (a reset marker at 21) refuses to
    // open when no snapshot covers index 20: the state before 21 is gone. Refused in every mode,
    // naming the missing snapshot file, instead of opening with nothing to serve below 21.
    for options in every_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
        s.append(&ents(1, 5, 1)).unwrap();
        let meta = SnapshotMetadata { index: 20, term: 3, conf_state: ConfState::default() };
        s.apply_snapshot(&meta, &mut &b"leader state"[..]).unwrap();
        s.append(&ents(21, 25, 3)).unwrap();
        drop(s);
        let snap = snapshot_files(dir.path()).pop().unwrap();
        std::fs::remove_file(&snap).unwrap();
        let context = format!("{:?}", options.log.recovery_mode);
        assert_refused(DiskStorage::open(dir.path(), options.clone()), &snap, "STORAGE_SNAPSHOT_MISSING", &context);
    }
}

#[test]
fn compaction_without_a_snapshot_and_installed_snapshots_still_open() {
    // Proves the check above refuses only a reset with no snapshot: a compaction marker justifies
    // a log that starts after 1 without any snapshot, and after an install, local snapshots and
    // compactions (the reset snapshot pruned by newer ones) reopen as before.
    for options in every_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
        s.append(&ents(1, 10, 1)).unwrap();
        s.compact(6).unwrap();
        drop(s);
        let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
        assert_eq!(s.first_index().unwrap(), 6);
        s.apply_snapshot(&SnapshotMetadata { index: 20, term: 3, conf_state: ConfState::default() }, &mut &b"x"[..])
            .unwrap();
        s.append(&ents(21, 40, 3)).unwrap();
        for i in [25, 30, 35] {
            s.create_snapshot(i, &ConfState::default(), &mut &b"y"[..]).unwrap();
            s.compact(i + 1).unwrap();
        }
        drop(s);
        let (s, report) = DiskStorage::open(dir.path(), options.clone()).unwrap();
        assert_eq!(report.snapshot.map(|id| id.index), Some(35), "{report}");
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (36, 40));
    }
}

#[test]
fn failed_hard_state_sync_latches_the_whole_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, options) = faulty_options();
    let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
    s.append(&ents(1, 5, 1)).unwrap();
    faults.fail_sync.store(true, Ordering::SeqCst);
    assert!(matches!(
        s.set_hard_state(&HardState { term: 2, vote: 1, commit: 3 }),
        Err(Error::Io { op: "fdatasync", .. })
    ));
    faults.fail_sync.store(false, Ordering::SeqCst);
    for r in [
        s.append(&ents(6, 6, 1)),
        s.set_hard_state(&HardState { term: 3, vote: 0, commit: 3 }),
        s.set_conf_state(&ConfState::default()),
        s.compact(2),
        s.create_snapshot(3, &ConfState::default(), &mut &b"x"[..]),
    ] {
        assert!(matches!(r, Err(Error::Failed { .. })), "{r:?}");
    }
    drop(s);
    let (s, _) = DiskStorage::open(dir.path(), options).unwrap();
    assert_eq!(s.last_index().unwrap(), 5);
    // The failed update may or may not have reached the disk; never a mix.
    let hs = s.initial_state().unwrap().hard_state;
    assert!(hs == HardState::default() || hs == HardState { term: 2, vote: 1, commit: 3 }, "{hs:?}");
}

#[test]
fn snapshot_data_streams_through_a_reader() {
    // 24 MiB produced and consumed in chunks: the writer and reader never need it whole.
    /// Yields `len` bytes, byte `p` being `p % 253`.
    struct Gen {
        pos: u64,
        len: u64,
    }
    impl std::io::Read for Gen {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min((self.len - self.pos) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.pos + i as u64) % 253) as u8;
            }
            self.pos += n as u64;
            Ok(n)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 3, 1)).unwrap();
    let len = 24u64 << 20;
    s.create_snapshot(3, &ConfState::default(), &mut Gen { pos: 0, len }).unwrap();
    let snap = s.snapshot(0).unwrap();
    assert_eq!(snap.data_len(), len);
    let mut r = snap.reader().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (mut seen, mut expect) = (0u64, Gen { pos: 0, len });
    let mut want = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut r, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        std::io::Read::read_exact(&mut expect, &mut want[..n]).unwrap();
        assert!(buf[..n] == want[..n], "data differs near byte {seen}");
        seen += n as u64;
    }
    assert_eq!(seen, len);
}

#[test]
fn arbitrary_bytes_in_hard_state_and_snapshot_files_never_panic() {
    // Overwrites parts of the HardState file and the snapshot file with patterned garbage, or
    // truncates them: open returns a storage or a typed error, never panics, and a snapshot it
    // serves always reads back intact or fails its checksum.
    let base = tempfile::tempdir().unwrap();
    let (mut s, _) = open(base.path());
    s.append(&ents(1, 10, 1)).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 5 }).unwrap();
    s.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() }).unwrap();
    s.create_snapshot(5, &ConfState { voters: vec![1, 2, 3], ..ConfState::default() }, &mut &[7u8; 5000][..]).unwrap();
    drop(s);
    let snap_name = snapshot_files(base.path()).pop().unwrap().file_name().unwrap().to_owned();
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        for name in ["hardstate".as_ref(), snap_name.as_os_str()] {
            std::fs::copy(base.path().join(name), dir.path().join(name)).unwrap();
        }
        std::fs::create_dir(dir.path().join("log")).unwrap();
        for e in std::fs::read_dir(base.path().join("log")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "seg") {
                std::fs::copy(&p, dir.path().join("log").join(p.file_name().unwrap())).unwrap();
            }
        }
        let target = dir.path().join(if round % 2 == 0 { "hardstate".as_ref() } else { snap_name.as_os_str() });
        let mut bytes = std::fs::read(&target).unwrap();
        for _ in 0..1 + next() % 30 {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        if next() % 4 == 0 {
            bytes.truncate((next() as usize) % bytes.len());
        }
        std::fs::write(&target, &bytes).unwrap();
        if let Ok((s, _)) = DiskStorage::open(dir.path(), opts()) {
            let _ = s.initial_state().unwrap();
            if let Ok(data) = s.snapshot(0).and_then(|snap| snap.read_to_vec()) {
                assert_eq!(data, vec![7u8; 5000]);
            }
        }
    }
}

#[test]
fn commit_only_changes_cost_no_fdatasync() {
    // etcd's MustSync rule: moving only the commit index writes without an fdatasync; a term or
    // vote change is written and synced at once; a clean close keeps the newest commit.
    let dir = tempfile::tempdir().unwrap();
    let (faults, options) = faulty_options();
    let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
    s.append(&ents(1, 12, 1)).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 0 }).unwrap();
    let before = faults.syncs.load(Ordering::SeqCst);
    for commit in 1..=10 {
        s.set_hard_state(&HardState { term: 1, vote: 1, commit }).unwrap();
    }
    assert_eq!(faults.syncs.load(Ordering::SeqCst), before, "a commit-only change was synced");
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 10);
    s.set_hard_state(&HardState { term: 2, vote: 0, commit: 10 }).unwrap();
    assert_eq!(faults.syncs.load(Ordering::SeqCst), before + 1, "a term change must be synced");
    s.set_hard_state(&HardState { term: 2, vote: 0, commit: 11 }).unwrap();
    drop(s);
    let (s, _) = DiskStorage::open(dir.path(), options).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, HardState { term: 2, vote: 0, commit: 11 });
}

#[test]
fn a_commit_above_what_the_log_holds_is_refused_as_corruption() {
    // Damage inside the last synced write cannot be told from a torn write, so the log drops it
    // as a tail; but the HardState says entry 10 was committed, i.e. acknowledged to clients.
    // Starting without it would lose it silently: open refuses in every recovery mode, naming
    // the missing indexes.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    s.append(&ents(1, 9, 1)).unwrap();
    s.append(&ents(10, 10, 1)).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 10 }).unwrap();
    s.close().unwrap();
    let segment = common::last_segment(&dir.path().join("log"));
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap(); // inside entry 10's payload
    bytes[last] ^= 0xFF;
    std::fs::write(&segment, &bytes).unwrap();
    for mode in [keel::wal::RecoveryMode::TolerateTailCorruption, keel::wal::RecoveryMode::AbsoluteConsistency] {
        let mut options = opts();
        options.log.recovery_mode = mode;
        match DiskStorage::open(dir.path(), options) {
            Err(Error::Corruption(c)) if mode == keel::wal::RecoveryMode::AbsoluteConsistency => {
                // Refused already by the log's own rule for a damaged tail.
                assert!(c.rule.is_some(), "{c}");
            }
            Err(Error::Corruption(c)) => {
                assert_eq!(c.rule, Some("COMMIT_ABOVE_LOG"), "{c}");
                assert_eq!(c.affected_indexes, Some((10, 10)), "{c}");
            }
            other => panic!("{mode:?}: opened without committed entry 10: {:?}", other.map(|(_, r)| r.to_string())),
        }
    }
}

#[test]
fn directories_open_creates_are_durable_in_their_parents() {
    // A data directory created by open must survive a power loss with the files synced in it:
    // each directory open creates is fsynced into its parent, and open syncs the data and log
    // directories and their parents before it answers (a killed process may have left any of
    // these entries only in the page cache).
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b");
    let (faults, options) = faulty_options();
    let (s, _) = DiskStorage::open(&dir, options).unwrap();
    drop(s);
    let synced = faults.synced_dirs.lock().unwrap().clone();
    for must in [root.path().to_path_buf(), root.path().join("a"), dir.clone(), dir.join("log")] {
        assert!(synced.contains(&must), "{} never synced: {synced:?}", must.display());
    }
}

#[test]
fn a_hard_state_whose_fdatasync_failed_is_not_reported_as_current() {
    // After a failed fdatasync nobody knows what the disk holds; the storage latches and keeps
    // reporting the last state it made durable, never the one that failed.
    let dir = tempfile::tempdir().unwrap();
    let (faults, options) = faulty_options();
    let (mut s, _) = DiskStorage::open(dir.path(), options).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 0 }).unwrap();
    faults.fail_sync.store(true, Ordering::SeqCst);
    assert!(s.set_hard_state(&HardState { term: 2, vote: 3, commit: 0 }).is_err());
    assert_eq!(s.initial_state().unwrap().hard_state, HardState { term: 1, vote: 1, commit: 0 });
    assert!(matches!(s.set_hard_state(&HardState { term: 3, vote: 0, commit: 0 }), Err(Error::Failed { .. })));
}

#[test]
fn a_snapshot_synced_on_its_writers_thread_finishes_and_a_failed_early_sync_fails_it() {
    // Proves `SnapshotWriter::sync_data`: the data's fdatasync can run on the thread that
    // writes (keel server keeps it off the node thread), `finish_snapshot` then completes the
    // snapshot; a failed early sync is never retried into a snapshot that looks durable.
    let dir = tempfile::tempdir().unwrap();
    let (faults, options) = faulty_options();
    let (mut s, _) = DiskStorage::open(dir.path(), options.clone()).unwrap();
    s.append(&ents(1, 30, 1)).unwrap();
    let data = vec![0x5Au8; 3 << 20];
    let mut w = s.begin_snapshot(10, &ConfState::default()).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::io::Write::write_all(&mut w, &data).unwrap();
            w.sync_data().unwrap();
        });
    });
    s.finish_snapshot(w).unwrap();
    assert_eq!(s.snapshot(10).unwrap().read_to_vec().unwrap(), data);
    let mut w = s.begin_snapshot(20, &ConfState::default()).unwrap();
    std::io::Write::write_all(&mut w, &data).unwrap();
    faults.fail_sync.store(true, Ordering::SeqCst);
    assert!(matches!(w.sync_data(), Err(Error::Io { op: "fdatasync", .. })));
    faults.fail_sync.store(false, Ordering::SeqCst);
    assert!(s.finish_snapshot(w).is_err(), "a snapshot whose sync failed was finished");
    assert_eq!(s.snapshot(0).unwrap().metadata.index, 10);
    drop(s);
    let (s, _) = DiskStorage::open(dir.path(), options).unwrap();
    assert_eq!(s.snapshot(0).unwrap().metadata.index, 10);
}
