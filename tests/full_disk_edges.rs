//! Full-disk edge cases: writes split across segments and grouped requests that meet a full disk
//! (refused before a byte lands, acknowledged exactly as recovered), repeated compactions on a
//! full disk, and a log opened on a sealed newest segment with no room.

use keel::io::FileSystem;
use keel::wal::{Log, LogOptions, NewEntry};
use keel_harness::sim::SimFileSystem;
use std::path::Path;
use std::sync::Arc;

const SEGMENT: u64 = 64 << 10;

/// Compactions one entry apart, all inside the oldest segment (about 60 entries of 1000 bytes).
const SMALL: u64 = 40;

fn payload(index: u64) -> Vec<u8> {
    (0..1000u64).map(|i| (i * 31 + index) as u8).collect()
}

fn append(log: &mut Log, index: u64) -> keel::Result<()> {
    let p = payload(index);
    log.append_and_sync(&[NewEntry { index, term: 1, payload: &p }])
}

fn segments(fs: &SimFileSystem, dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs
        .list(dir)
        .unwrap()
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

/// A log on a simulated disk of `capacity` bytes, appended to until the disk is full (the last
/// append answered `NoSpace`); with the index the next append would take.
fn filled_log(capacity: u64) -> (Arc<SimFileSystem>, &'static Path, LogOptions, Log, u64) {
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/log");
    fs.create_dir_all(dir).unwrap();
    fs.set_capacity(Some(capacity));
    let options = LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() };
    let (mut log, _) = Log::open(dir, options.clone()).unwrap();
    let mut index = 1;
    loop {
        match append(&mut log, index) {
            Ok(()) => index += 1,
            Err(e) => {
                assert!(e.is_no_space(), "{e}");
                return (fs, dir, options, log, index);
            }
        }
    }
}

/// A log on the simulated disk filled until it has `segments` segment files, then given a
/// sealed newest segment: the newest (just installed) and the prepared file are removed, as
/// after a crash between sealing and installing (older versions' rotation order).
fn with_sealed_newest_segment(segments_made: usize) -> (Arc<SimFileSystem>, &'static Path, LogOptions) {
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/log");
    fs.create_dir_all(dir).unwrap();
    let options = LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() };
    let (mut log, _) = Log::open(dir, options.clone()).unwrap();
    let mut index = 1;
    while segments(&fs, dir).len() < segments_made {
        append(&mut log, index).unwrap();
        index += 1;
    }
    drop(log);
    let segs = segments(&fs, dir);
    fs.remove(&dir.join(segs.last().unwrap())).unwrap();
    let _ = fs.remove(&dir.join("next.prep"));
    fs.sync_dir(dir).unwrap();
    (fs, dir, options)
}

/// A log whose newest segment is sealed (no next.prep: as after an upgrade from the old rotation
/// order, or a reopen with another segment size), opened on a full disk: the segment is reopened
/// in place (its footer zeroed), so compaction still needs no space.
#[test]
fn compaction_on_a_sealed_newest_segment_opened_on_a_full_disk() {
    let (fs, dir, options) = with_sealed_newest_segment(4);
    fs.set_capacity(Some(fs.used_bytes()));
    let (mut log, _) = Log::open(dir, options.clone()).expect("opens on a full disk");
    let last = log.last_index();
    assert!(append(&mut log, last + 1).unwrap_err().is_no_space());
    let r = log.compact(last - 5);
    assert!(r.is_ok(), "compaction needs no space, but: {r:?}");
}

/// A crash in the middle of unsealing (the footer's zeros torn: some of its bytes zeroed, some
/// not) leaves the segment read record by record, with the same entries, in both recovery
/// modes: a damaged footer with nothing valid after it is not tail damage.
#[test]
fn a_crash_in_the_middle_of_unsealing_loses_nothing_in_either_recovery_mode() {
    use keel::wal::RecoveryMode;
    for cut in 0..6 {
        let (fs, dir, options) = with_sealed_newest_segment(3);
        let sealed = dir.join(segments(&fs, dir).last().unwrap());
        let (log, _) = Log::open(dir, options.clone()).unwrap();
        let (first, last) = (log.first_index(), log.last_index());
        drop(log);
        // Both segments hold the same number of entries; the footer lists the sealed one's
        // (24 bytes each, then a 32-byte trailer: FORMAT.md).
        assert_eq!(first, 1);
        let footer = last / 2 * 24 + 32;
        let (from_end, to_end) = [
            (footer, 0),
            (footer, footer / 2),
            (footer / 2, 0),
            (8, 0),
            (footer, footer - 8),
            (footer - 24, footer - 48),
        ][cut];
        // What a torn unseal leaves: part of the footer zeroed.
        let file = fs.open(&sealed).unwrap();
        let len = file.len().unwrap();
        file.write_at(&vec![0u8; (from_end - to_end) as usize], len - from_end).unwrap();
        file.sync_data().unwrap();
        drop(file);
        for mode in [RecoveryMode::TolerateTailCorruption, RecoveryMode::AbsoluteConsistency] {
            let (log, _) = Log::open(dir, LogOptions { recovery_mode: mode, ..options.clone() })
                .unwrap_or_else(|e| panic!("zeros at end-{from_end}..end-{to_end}, {mode:?}: {e}"));
            assert_eq!((log.first_index(), log.last_index()), (first, last), "{mode:?}");
            for i in first..=last {
                assert_eq!(&*log.entry(i).unwrap().payload, &payload(i)[..]);
            }
        }
    }
}

/// Many compactions on a full disk while the active segment stays the same. Those that free no
/// segment leave the room kept for markers that do (and, with no room left for their marker,
/// are kept in memory and written before the next append), so a compaction that frees whole
/// segments still runs afterwards; then appends resume, and a reopen finds the log as compacted.
/// A reopen before that append forgets only the deferred compactions: their entries, all
/// valid, come back.
#[test]
fn repeated_compactions_on_a_full_disk_never_spend_the_room_freeing_needs() {
    let (fs, dir, options, mut log, _) = filled_log(6 * SEGMENT + 4096);
    let first = log.first_index();
    // Compactions that free nothing (inside the oldest segment), one entry at a time, as an
    // application compacting after each small snapshot would: each succeeds.
    let files = segments(&fs, dir);
    for k in 1..=SMALL {
        log.compact(first + k).unwrap_or_else(|e| panic!("compaction {k} on a full disk: {e}"));
        assert_eq!(log.first_index(), first + k);
    }
    assert_eq!(segments(&fs, dir), files, "none of them freed a segment");
    // Reopened now (a crash), the deferred compactions are forgotten, nothing else.
    let last = log.last_index();
    drop(log);
    let (log, _) = Log::open(dir, options.clone()).unwrap();
    assert!(log.first_index() < first + SMALL && log.last_index() == last, "some were deferred: {log:?}");
    for i in log.first_index()..=last {
        assert_eq!(&*log.entry(i).unwrap().payload, &payload(i)[..]);
    }
    let mut log = log;
    for k in 1..=SMALL {
        log.compact(first + k).unwrap();
    }
    // A compaction that frees whole segments still finds room for its marker.
    let segments_before = segments(&fs, dir).len();
    log.compact(last - 5).unwrap_or_else(|e| panic!("a freeing compaction after {SMALL} small ones: {e}"));
    assert!(segments(&fs, dir).len() < segments_before);
    // Space is back: appends resume.
    for i in last + 1..=last + 20 {
        append(&mut log, i).unwrap();
    }
    drop(log);
    let (log, _) = Log::open(dir, options).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (last - 5, last + 20));
    for i in last - 5..=last + 20 {
        assert_eq!(&*log.entry(i).unwrap().payload, &payload(i)[..]);
    }
}

/// A compaction deferred on a full disk is written, and made durable, with the next append.
#[test]
fn a_deferred_compaction_is_durable_with_the_next_append() {
    let (fs, dir, options, mut log, index) = filled_log(3 * SEGMENT + 4096);
    // Spend the active segment's free room on small compactions (those that fit are written),
    // until one is deferred; then make room by removing the log's spare segment file (as an
    // operator freeing space would, here: raising the capacity).
    let first = log.first_index();
    for k in 1..=SMALL {
        log.compact(first + k).unwrap();
    }
    let before = fs.image().restart().unwrap();
    let (reopened, _) = Log::open(dir, LogOptions { fs: Arc::new(before), ..options.clone() }).unwrap();
    assert!(reopened.first_index() < first + SMALL, "the last compactions were deferred");
    drop(reopened);
    fs.set_capacity(Some(6 * SEGMENT));
    append(&mut log, index).unwrap();
    // Power loss now: only what was synced survives.
    let model =
        keel_harness::sim::FaultModel { keep_percent: 0, torn_percent: 0, misdirect_percent: 0, lose_dir_ops: true };
    let crashed = fs.image().materialize(7, &model).unwrap();
    drop(log);
    let (log, _) = Log::open(dir, LogOptions { fs: Arc::new(crashed), ..options }).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (first + SMALL, index));
}

/// The append that carries deferred compactions' marker, crashed at every write and sync of it
/// (process kill, and power loss with unsynced writes kept, torn or dropped): every image opens,
/// with the log compacted either as before the deferral or as after it, every entry it holds
/// intact, the append's entry there or not; after the append's sync, both survive power loss.
#[test]
fn a_crash_anywhere_in_the_append_that_writes_a_deferred_compaction_is_safe() {
    use keel_harness::sim::FaultModel;
    let (fs, dir, options, mut log, index) = filled_log(3 * SEGMENT + 4096);
    let first = log.first_index();
    for k in 1..=SMALL {
        log.compact(first + k).unwrap();
    }
    let durable_first = {
        let (reopened, _) =
            Log::open(dir, LogOptions { fs: Arc::new(fs.image().restart().unwrap()), ..options.clone() }).unwrap();
        reopened.first_index()
    };
    assert!(durable_first < first + SMALL, "some compactions were deferred");
    fs.set_capacity(Some(6 * SEGMENT));
    fs.capture_crash_points(true, 100, 5);
    append(&mut log, index).unwrap();
    let images = fs.take_captures();
    assert!(images.len() >= 2, "the append wrote and synced");
    let synced_last = fs.image();
    let mut checked = 0;
    for (k, (_, image)) in images.iter().map(|(t, i)| (*t, i)).chain([(0, &synced_last)]).enumerate() {
        let mut disks = vec![image.restart().unwrap()];
        for seed in 0..4 {
            disks.push(image.materialize(seed, &FaultModel::default()).unwrap());
        }
        for disk in disks {
            let (log, _) = Log::open(dir, LogOptions { fs: Arc::new(disk), ..options.clone() })
                .unwrap_or_else(|e| panic!("image {k}: {e}"));
            let f = log.first_index();
            assert!(f == durable_first || f == first + SMALL, "image {k}: first index {f}");
            let last = log.last_index();
            assert!(last == index - 1 || last == index, "image {k}: last index {last}");
            for i in f..=last {
                assert_eq!(&*log.entry(i).unwrap().payload, &payload(i)[..], "image {k}, entry {i}");
            }
            checked += 1;
        }
    }
    // After the append's sync, power loss keeps both the compaction and the entry.
    let (log, _) = Log::open(
        dir,
        LogOptions { fs: Arc::new(synced_last.materialize(9, &FaultModel::default()).unwrap()), ..options },
    )
    .unwrap();
    assert_eq!((log.first_index(), log.last_index()), (first + SMALL, index));
    assert!(checked >= 10);
}

/// `append_many` with two requests: the first fits the active segment, the second needs a
/// rotation that fails with NoSpace. Both are answered NoSpace ("nothing was written"), but the
/// first request's records are in the segment; after a compaction to last+1 and a reopen, they
/// are part of the log although never acknowledged and the log had said last_index = n.
#[test]
fn append_many_nospace_leaves_unacknowledged_records_that_reopen_recovers() {
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/log");
    fs.create_dir_all(dir).unwrap();
    fs.set_capacity(Some(4 * SEGMENT + 4096));
    let options = LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() };
    let (mut log, _) = Log::open(dir, options.clone()).unwrap();
    let mut index = 1;
    let big = vec![7u8; 40_000];
    // Fill until a small entry fits the active segment but a 40 KB one does not, and no new
    // segment can be prepared.
    loop {
        match append(&mut log, index) {
            Ok(()) => index += 1,
            Err(e) => {
                assert!(e.is_no_space(), "{e}");
                break;
            }
        }
    }
    // Free room in the active segment is at most ~1 entry; make the first request tiny.
    let n = log.last_index();
    let small = [1u8; 8];
    let a = [NewEntry { index: n + 1, term: 2, payload: &small }];
    let b = [NewEntry { index: n + 2, term: 2, payload: &big }];
    let results = log.append_many(&[&a, &b]);
    // The second is refused with NoSpace, not latched; the first is either acknowledged or
    // refused, and reopen recovers exactly what was acknowledged.
    assert!(matches!(results[1], Err(keel::Error::NoSpace { .. })), "{results:?}");
    assert!(!log.is_failed());
    let expected = n + u64::from(results[0].is_ok());
    assert_eq!(log.last_index(), expected);
    log.sync().unwrap();
    drop(log);
    let (log, _) = Log::open(dir, options).unwrap();
    assert_eq!(log.last_index(), expected, "{results:?}: reopen recovers what was acknowledged");
}

/// One append larger than the room left in a segment plus a new one is split across segments;
/// when the rotation after its first piece finds the disk full, that piece landed (and would be
/// recovered): the log latches instead of answering "nothing was written".
#[test]
fn a_split_write_whose_second_rotation_finds_the_disk_full_latches() {
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/log");
    fs.create_dir_all(dir).unwrap();
    let options = LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() };
    let (mut log, _) = Log::open(dir, options.clone()).unwrap();
    append(&mut log, 1).unwrap();
    // Room for the segment being prepared (if any) and nothing more.
    fs.set_capacity(Some(fs.used_bytes() + SEGMENT + 4096));
    // 100 entries of 1000 bytes: more than a segment, so split into pieces.
    let p = payload(0);
    let entries: Vec<NewEntry<'_>> = (2..102).map(|index| NewEntry { index, term: 1, payload: &p }).collect();
    let e = log.append(&entries).unwrap_err();
    // The next segment is made before the first piece is written: refused whole, not latched.
    assert!(matches!(e, keel::Error::NoSpace { .. }), "{e:?}");
    assert!(!log.is_failed());
    let last = log.last_index();
    drop(log);
    let (log, _) = Log::open(dir, options).unwrap();
    assert_eq!(log.last_index(), last, "an append answered NoSpace (not latched) came back in part at reopen: {e}");
}

/// `DiskStorage::compact` on a full disk, 64 times without freeing a segment, then once freeing
/// some: every one succeeds (the log keeps its marker room for the freeing one; the storage's
/// reserve is the fallback when that room is gone), and appends resume.
#[test]
fn storage_compactions_on_a_full_disk_all_succeed() {
    use keel::storage::{ConfState, DiskStorage, Entry, Storage, StorageMut, StorageOptions};
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/storage");
    let options = StorageOptions {
        log: LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() },
        reserve_bytes: 2 * SEGMENT,
        ..StorageOptions::default()
    };
    let (mut s, _) = DiskStorage::open(dir, options).unwrap();
    s.set_conf_state(&ConfState { voters: vec![1], ..ConfState::default() }).unwrap();
    fs.set_capacity(Some(fs.used_bytes() + 5 * SEGMENT));
    let e = loop {
        let index = s.last_index().unwrap() + 1;
        if let Err(e) = s.append(&[Entry::new(index, 1, payload(index))]) {
            break e;
        }
    };
    assert!(e.is_no_space(), "{e}");
    let first = s.first_index().unwrap();
    for k in 1..=64 {
        s.compact(first + k).unwrap_or_else(|e| panic!("compaction {k}: {e:?}"));
    }
    let last = s.last_index().unwrap();
    s.compact(last - 5).unwrap();
    for index in last + 1..last + 40 {
        s.append(&[Entry::new(index, 1, payload(index))]).unwrap();
    }
}

/// `apply_snapshot` on a storage whose newest segment was sealed when it was opened on a full
/// disk, with no reserve: the reset marker fits the reopened segment, the install completes,
/// and the storage reopens on it.
#[test]
fn apply_snapshot_whose_reset_finds_the_disk_full() {
    use keel::storage::{ConfState, DiskStorage, Entry, SnapshotMetadata, Storage, StorageMut, StorageOptions};
    let fs = Arc::new(SimFileSystem::new());
    let dir = Path::new("/sim/storage");
    let options = StorageOptions {
        log: LogOptions { fs: fs.clone(), segment_bytes: SEGMENT, ..LogOptions::default() },
        reserve_bytes: 0,
        ..StorageOptions::default()
    };
    let (mut s, _) = DiskStorage::open(dir, options.clone()).unwrap();
    let cs = ConfState { voters: vec![1, 2], ..ConfState::default() };
    s.set_conf_state(&cs).unwrap();
    let logdir = dir.join("log");
    let mut index = 1;
    while segments(&fs, &logdir).len() < 4 {
        s.append(&[Entry::new(index, 1, payload(index))]).unwrap();
        index += 1;
    }
    drop(s);
    let segs = segments(&fs, &logdir);
    fs.remove(&logdir.join(segs.last().unwrap())).unwrap();
    let _ = fs.remove(&logdir.join("next.prep"));
    fs.set_capacity(Some(fs.used_bytes() + 8192));
    let (mut s, _) = DiskStorage::open(dir, options.clone()).unwrap();
    let last = s.last_index().unwrap();
    let metadata = SnapshotMetadata { index: last + 100, term: 2, conf_state: cs.clone() };
    let state = [9u8; 100];
    let first = s.apply_snapshot(&metadata, &mut &state[..]);
    eprintln!("first try: {first:?}");
    let second = s.apply_snapshot(&metadata, &mut &state[..]);
    eprintln!("second try: {second:?}");
    drop(s);
    let reopened = DiskStorage::open(dir, options.clone()).map(|(s, _)| {
        (s.first_index().unwrap(), s.last_index().unwrap(), Storage::initial_state(&s).unwrap().hard_state)
    });
    eprintln!("reopen: {reopened:?}");
    assert!(first.is_ok(), "the install needs no new segment: {first:?}");
    assert!(matches!(second, Err(keel::Error::SnapshotOutOfDate { .. })), "installed once: {second:?}");
    let (first_index, _, hs) = reopened.expect("a full disk does not keep the storage from opening");
    assert_eq!(first_index, last + 101);
    assert!(hs.commit >= last + 100);
}
