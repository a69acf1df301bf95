//! Behaviour of the log through its public API: appends, Raft truncation, rotation, reads,
//! compaction, reset, the directory lock, misuse errors and the failure latch.

mod common;

use common::*;
use keel::Error;
use keel::wal::{Log, LogOptions, NewEntry};
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[test]
fn appends_survive_reopen_across_many_segments() {
    // Proves rotation and sealing: 2,000 entries over 16 KiB segments reopen intact, and every
    // sealed segment is loaded from its footer rather than scanned.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    for i in 1..=2000 {
        append(&mut log, i, i, 1);
    }
    check(&log, 1, 2000, |_| 1);
    drop(log);
    let (log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert!(report.segments_found > 10, "{report}");
    assert_eq!(report.segments_sealed, report.segments_found - 1, "{report}");
    assert_eq!(report.segments_scanned, 1);
    assert!(report.truncations.is_empty());
    check(&log, 1, 2000, |_| 1);
    assert_eq!(log.verify().unwrap(), 2000);
}

#[test]
fn conflicting_append_truncates_the_suffix_durably() {
    // Proves Raft's truncate-then-append: the new suffix replaces the old one, also across
    // segment boundaries, and the replacement is what a reopen sees.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 300, 1);
    append(&mut log, 120, 150, 2);
    check(&log, 1, 150, |i| if i < 120 { 1 } else { 2 });
    append(&mut log, 151, 160, 2);
    append(&mut log, 5, 5, 3);
    check(&log, 1, 5, |i| if i < 5 { 1 } else { 3 });
    drop(log);
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    check(&log, 1, 5, |i| if i < 5 { 1 } else { 3 });
}

#[test]
fn misuse_gives_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 10, 1);
    let gap = log.append(&[NewEntry { index: 12, term: 1, payload: b"x" }]);
    assert!(matches!(gap, Err(Error::InvalidArgument(_))), "{gap:?}");
    let unordered =
        log.append(&[NewEntry { index: 11, term: 1, payload: b"x" }, NewEntry { index: 13, term: 1, payload: b"x" }]);
    assert!(matches!(unordered, Err(Error::InvalidArgument(_))));
    // The largest index followed by anything is refused, not an overflow panic.
    let wrapped = log
        .append(&[NewEntry { index: u64::MAX, term: 1, payload: b"x" }, NewEntry { index: 0, term: 1, payload: b"x" }]);
    assert!(matches!(wrapped, Err(Error::InvalidArgument(_))), "{wrapped:?}");
    let big = vec![0u8; SEGMENT_BYTES as usize];
    assert!(matches!(log.append(&[NewEntry { index: 11, term: 1, payload: &big }]), Err(Error::InvalidArgument(_))));
    assert!(matches!(log.entry(11), Err(Error::Unavailable { index: 11, last_index: 10 })));
    assert!(matches!(log.term(u64::MAX), Err(Error::Unavailable { .. })), "no overflow panic");
    assert!(matches!(log.entries(1, 12, 0), Err(Error::Unavailable { .. })));
    log.compact(5).unwrap();
    assert!(matches!(log.entry(4), Err(Error::Compacted { index: 4, first_index: 5 })));
    assert!(matches!(log.entries(3, 6, 0), Err(Error::Compacted { .. })));
    assert!(matches!(log.append(&[NewEntry { index: 4, term: 1, payload: b"x" }]), Err(Error::Compacted { .. })));
    assert!(matches!(log.compact(12), Err(Error::Unavailable { .. })));
    // None of that changed the log.
    check(&log, 5, 10, |_| 1);
    assert!(!log.is_failed());
}

#[test]
fn entries_pages_by_max_bytes_but_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    let p = vec![7u8; 100];
    let entries: Vec<_> = (1..=10).map(|index| NewEntry { index, term: 1, payload: &p }).collect();
    log.append(&entries).unwrap();
    assert_eq!(log.entries(1, 11, 0).unwrap().len(), 1);
    assert_eq!(log.entries(1, 11, 99).unwrap().len(), 1);
    assert_eq!(log.entries(1, 11, 100).unwrap().len(), 1);
    assert_eq!(log.entries(1, 11, 250).unwrap().len(), 2);
    assert_eq!(log.entries(1, 11, 300).unwrap().len(), 3);
    assert_eq!(log.entries(3, 11, u64::MAX).unwrap().len(), 8);
    assert!(log.entries(4, 4, 0).unwrap().is_empty());
}

#[test]
fn compaction_deletes_whole_segments_and_stays_durable() {
    // Proves compaction frees space at once and that compacted entries never come back.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 1000, 1);
    let count = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count()
    };
    let before = count();
    let held = log.entry(2).unwrap(); // a payload handle keeps its map alive past removal
    log.compact(800).unwrap();
    assert!(count() < before / 2, "{} segments left of {before}", count());
    assert_eq!(&*held.payload, &payload(2, 1)[..]);
    assert_eq!(log.term(799).unwrap(), 1);
    check(&log, 800, 1000, |_| 1);
    drop(log);
    let (mut log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert!(report.removed_segments.is_empty(), "{report}");
    check(&log, 800, 1000, |_| 1);
    assert_eq!(log.term(799).unwrap(), 1);
    // Compact everything: the log is empty and continues at the next index.
    log.compact(1001).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1001, 1000));
    drop(log);
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1001, 1000));
    append(&mut log, 1001, 1010, 2);
    check(&log, 1001, 1010, |_| 2);
}

#[test]
fn reset_restarts_the_log_after_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 500, 1);
    log.reset(10_001, 7).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (10_001, 10_000));
    assert_eq!(log.term(10_000).unwrap(), 7);
    append(&mut log, 10_001, 10_050, 8);
    drop(log);
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    check(&log, 10_001, 10_050, |_| 8);
    assert_eq!(log.term(10_000).unwrap(), 7);
    assert!(matches!(log.term(9_999), Err(Error::Compacted { .. })));
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    match Log::open(dir.path(), options(SEGMENT_BYTES)) {
        Err(Error::Locked { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn failed_fdatasync_latches_the_log_until_reopen() {
    // Proves the fsyncgate rule: after one failed fdatasync nothing is acknowledged, the sync
    // is never retried, and a reopen finds exactly what was synced before.
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultyFs::default());
    let opts = LogOptions { fs: Arc::new(FaultyHandle(faults.clone())), ..options(SEGMENT_BYTES) };
    let (mut log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    append(&mut log, 1, 20, 1);
    faults.fail_sync.store(true, Ordering::SeqCst);
    log.append(&[NewEntry { index: 21, term: 1, payload: b"lost" }]).unwrap();
    let err = log.sync().unwrap_err();
    assert!(matches!(err, Error::Io { op: "fdatasync", .. }), "{err:?}");
    faults.fail_sync.store(false, Ordering::SeqCst);
    let syncs = faults.syncs.load(Ordering::SeqCst);
    for attempt in
        [log.sync(), log.append(&[NewEntry { index: 22, term: 1, payload: b"x" }]), log.compact(5), log.reset(100, 1)]
    {
        match attempt {
            Err(Error::Failed { cause }) => assert!(cause.contains("fdatasync"), "{cause}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }
    assert_eq!(faults.syncs.load(Ordering::SeqCst), syncs, "a failed sync was retried");
    assert!(log.is_failed());
    drop(log);
    let (log, _) = Log::open(dir.path(), opts).unwrap();
    // Entry 21 was written but its sync failed: it may or may not be there, never corrupt.
    assert!(log.last_index() == 20 || log.last_index() == 21);
    for e in log.entries(1, 21, u64::MAX).unwrap() {
        assert_eq!(&*e.payload, &payload(e.index, 1)[..]);
    }
    if log.last_index() == 21 {
        assert_eq!(&*log.entry(21).unwrap().payload, b"lost");
    }
}

#[test]
fn failed_write_latches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultyFs::default());
    let opts = LogOptions { fs: Arc::new(FaultyHandle(faults.clone())), ..options(SEGMENT_BYTES) };
    let (mut log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    append(&mut log, 1, 5, 1);
    faults.fail_write.store(true, Ordering::SeqCst);
    assert!(matches!(log.append(&[NewEntry { index: 6, term: 1, payload: b"x" }]), Err(Error::Io { op: "write", .. })));
    faults.fail_write.store(false, Ordering::SeqCst);
    assert!(matches!(log.append(&[NewEntry { index: 6, term: 1, payload: b"x" }]), Err(Error::Failed { .. })));
    assert_eq!(log.last_index(), 5);
    drop(log);
    let (log, _) = Log::open(dir.path(), opts).unwrap();
    check(&log, 1, 5, |_| 1);
}

#[test]
fn replay_that_starts_at_a_compaction_marker_reopens() {
    // Regression found by the model test: after compactions removed the segments holding
    // entries 44..67, the oldest kept segment starts with the marker of an earlier compaction
    // (44) followed by entry 68; replay must not read that as a gap.
    let dir = tempfile::tempdir().unwrap();
    let opts = options(8192);
    let (mut log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    let mut term = 1;
    let steps: &[(char, u64, u64, usize)] = &[
        ('a', 0, 4, 313),
        ('a', 0, 12, 353),
        ('a', 0, 19, 673),
        ('c', 25, 0, 0),
        ('a', 4, 9, 465),
        ('a', 3, 18, 105),
        ('a', 5, 1, 305),
        ('a', 1, 9, 265),
        ('a', 5, 18, 265),
        ('c', 18, 0, 0),
        ('a', 5, 1, 0),
        ('c', 11, 0, 0),
        ('c', 13, 0, 0),
    ];
    for &(op, x, count, len) in steps {
        if op == 'a' {
            let start = (log.last_index() + 1).saturating_sub(x).max(log.first_index());
            term += 1;
            let p = vec![term as u8; len];
            let entries: Vec<_> = (0..count).map(|i| NewEntry { index: start + i, term, payload: &p }).collect();
            log.append(&entries).unwrap();
        } else {
            let to = (log.first_index() + x).min(log.last_index() + 1);
            log.compact(to).unwrap();
        }
    }
    assert_eq!((log.first_index(), log.last_index()), (68, 68));
    let want = log.entry(68).unwrap();
    drop(log);
    let (log, _) = Log::open(dir.path(), opts).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (68, 68));
    assert_eq!(log.entry(68).unwrap(), want);
}

#[test]
fn segments_are_prepared_ahead_and_leftovers_are_harmless() {
    // Proves the preparer: a log that fills segments rotates into prepared (zero-filled) files,
    // and a garbage `next.prep` left by a crash is neither read nor trusted.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 500, 1);
    drop(log);
    assert!(segment_files(dir.path()).len() > 5);
    std::fs::write(dir.path().join("next.prep"), vec![0xABu8; 1000]).unwrap();
    let (mut log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert!(report.truncations.is_empty(), "{report}");
    append(&mut log, 501, 1000, 1);
    check(&log, 1, 1000, |_| 1);
    drop(log);
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    check(&log, 1, 1000, |_| 1);
}

#[test]
fn a_recycled_file_full_of_valid_old_records_reads_as_empty() {
    // Proves the segment-id binding: the active segment's file is replaced by a copy of sealed
    // segment 1 (valid records, footer and all) under the active segment's id with a correct
    // header, which is what recycling a compacted segment produces. None of the old records is
    // read back: each was checksummed with segment 1's id.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 300, 1);
    drop(log);
    let files = segment_files(dir.path());
    let active = files.last().unwrap();
    let mut recycled = std::fs::read(&files[0]).unwrap();
    recycled[..64].copy_from_slice(&std::fs::read(active).unwrap()[..64]);
    std::fs::write(active, &recycled).unwrap();
    let (log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert!(log.last_index() < 300, "entries of the replaced active segment are gone");
    check(&log, 1, log.last_index(), |_| 1);
    // The stale bytes were reported and dropped, not returned.
    assert!(!report.removed_segments.is_empty() || !report.truncations.is_empty(), "{report}");
    drop(log);
    let (log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert!(report.truncations.is_empty() && report.removed_segments.is_empty(), "{report}");
    check(&log, 1, log.last_index(), |_| 1);
}

#[test]
fn a_larger_segment_size_applies_to_new_segments_after_an_empty_active_one() {
    // Proves that a reopen with a larger `segment_bytes` takes effect even when the active
    // segment is empty and of the old size: an entry that fits only the new size goes to a new
    // segment of the new size (it panicked with "a record fits no segment"), and the old segment
    // keeps its own size.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), options(4096)).unwrap();
    drop(log);
    let (mut log, _) = Log::open(dir.path(), options(16 * 1024)).unwrap();
    let big = vec![0x5Au8; 8000];
    log.append_and_sync(&[NewEntry { index: 1, term: 1, payload: &big }]).unwrap();
    assert_eq!(&*log.entry(1).unwrap().payload, &big[..]);
    assert_eq!(std::fs::metadata(&segment_files(dir.path())[0]).unwrap().len(), 4096);
    append(&mut log, 2, 50, 1);
    drop(log);
    let (log, report) = Log::open(dir.path(), options(16 * 1024)).unwrap();
    assert!(report.truncations.is_empty() && report.removed_segments.is_empty(), "{report}");
    assert_eq!(&*log.entry(1).unwrap().payload, &big[..]);
    for e in log.entries(2, 51, u64::MAX).unwrap() {
        assert_eq!(&*e.payload, &payload(e.index, 1)[..]);
    }
    assert_eq!(log.verify().unwrap(), 50);
}

#[test]
fn stats_count_appends_entries_and_syncs() {
    // Proves the metrics `keel server` reports: each append request, entry and fdatasync counts,
    // and a sync with nothing new to cover is not one.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert_eq!(log.stats().syncs, 0);
    append(&mut log, 1, 2, 1); // appends and syncs
    append(&mut log, 3, 5, 1);
    log.sync().unwrap();
    let s = log.stats();
    assert_eq!((s.appends, s.entries, s.syncs), (2, 5, 2));
    assert!(s.sync_nanos >= s.sync_nanos_max && s.sync_nanos_max > 0, "{s:?}");
}
