//! Recovery: torn tails at every byte, torn multi-record writes, and corruption in the middle,
//! in both recovery modes.

mod common;

use common::*;
use keel::wal::{Log, LogOptions, NewEntry};
use keel::{CorruptionKind, Error};
use std::path::{Path, PathBuf};

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "LOCK" {
            std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    to
}

/// Writes entries 1..=base synced, then `extra` more in one write; returns the directory and
/// the byte range of that last write in the last segment.
fn base_with_last_write(base: u64, extra: u64) -> (tempfile::TempDir, PathBuf, std::ops::Range<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, base, 1);
    let seg = last_segment(dir.path());
    let before = std::fs::read(&seg).unwrap();
    append(&mut log, base + 1, base + extra, 1);
    drop(log);
    let after = std::fs::read(&seg).unwrap();
    let start = before.iter().zip(&after).position(|(a, b)| a != b).unwrap();
    let end = after.len() - after.iter().rev().zip(before.iter().rev()).position(|(a, b)| a != b).unwrap();
    (dir, seg, start..end)
}

#[test]
fn torn_last_record_at_every_byte_keeps_everything_before_it() {
    // Proves the torn-tail rule: for every prefix length of the last record's write, followed by
    // zeros or by garbage, recovery keeps entries 1..=20, drops entry 21, reports the truncation
    // with its rule, and the repaired log accepts entry 21 again.
    let (dir, seg, range) = base_with_last_write(20, 1);
    assert!(range.len() > 100, "last record is {} bytes", range.len());
    let name = seg.file_name().unwrap().to_owned();
    let original = std::fs::read(&seg).unwrap();
    for cut in 0..range.len() {
        for fill in [0x00u8, 0xA5] {
            let copy = copy_dir(dir.path());
            let mut bytes = original.clone();
            for b in &mut bytes[range.start + cut..range.end] {
                *b = fill;
            }
            std::fs::write(copy.path().join(&name), &bytes).unwrap();
            let (mut log, report) = Log::open(copy.path(), options(SEGMENT_BYTES))
                .unwrap_or_else(|e| panic!("cut {cut} fill {fill:#x}: {e}"));
            check(&log, 1, 20, |_| 1);
            let torn = cut > 0 || fill != 0;
            assert_eq!(report.truncations.len(), usize::from(torn), "cut {cut} fill {fill:#x}: {report}");
            if let Some(t) = report.truncations.first() {
                assert_eq!(t.offset, range.start as u64);
                assert!(t.rule.starts_with("TAIL_"), "{}", t.rule);
                assert!(t.bytes_dropped > 0);
            }
            append(&mut log, 21, 22, 2);
            drop(log);
            let (log, report) = Log::open(copy.path(), options(SEGMENT_BYTES)).unwrap();
            assert!(report.truncations.is_empty(), "{report}");
            check(&log, 1, 22, |i| if i <= 20 { 1 } else { 2 });
        }
    }
}

#[test]
fn torn_tail_is_refused_in_absolute_mode_and_zeros_are_not() {
    let (dir, seg, range) = base_with_last_write(20, 1);
    let name = seg.file_name().unwrap().to_owned();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Only the first half of the record persisted.
    for b in &mut bytes[range.start + range.len() / 2..range.end] {
        *b = 0;
    }
    let copy = copy_dir(dir.path());
    std::fs::write(copy.path().join(&name), &bytes).unwrap();
    let err = Log::open(copy.path(), absolute(SEGMENT_BYTES)).unwrap_err();
    let c = err.corruption().expect("corruption");
    assert_eq!(c.rule, Some("TAIL_PAYLOAD_REFUSE"));
    assert_eq!(c.offset, range.start as u64);
    // A clean log opens in absolute mode.
    let (log, _) = Log::open(dir.path(), absolute(SEGMENT_BYTES)).unwrap();
    check(&log, 1, 21, |_| 1);
}

#[test]
fn torn_multi_record_write_is_a_tail_even_with_valid_records_after_the_hole() {
    // Proves the synced_offset evidence: a batch of unsynced records whose first sector never
    // reached the disk while later sectors did is still a torn tail, because none of the later
    // records was written after the damaged bytes had been synced.
    let (dir, seg, range) = base_with_last_write(20, 12);
    let name = seg.file_name().unwrap().to_owned();
    let mut bytes = std::fs::read(&seg).unwrap();
    let hole = range.start..range.start + 512;
    for b in &mut bytes[hole] {
        *b = 0;
    }
    let copy = copy_dir(dir.path());
    std::fs::write(copy.path().join(&name), &bytes).unwrap();
    let (log, report) = Log::open(copy.path(), options(SEGMENT_BYTES)).unwrap();
    check(&log, 1, 20, |_| 1);
    assert_eq!(report.truncations.len(), 1, "{report}");
    assert_eq!(report.truncations[0].rule, "TAIL_HEADER_TRUNCATE");
    assert_eq!(report.truncations[0].offset + report.truncations[0].bytes_dropped, range.end as u64);
}

#[test]
fn a_write_is_recovered_whole_or_not_at_all() {
    // Proves write atomicity: entries 21..=32 were appended in one call; if any byte of the last
    // record is missing, none of the 12 comes back, even though the first 11 are intact.
    let (dir, seg, range) = base_with_last_write(20, 12);
    let name = seg.file_name().unwrap().to_owned();
    let original = std::fs::read(&seg).unwrap();
    for cut in [range.len() - 1, range.len() - 100, range.len() / 2, 41] {
        let copy = copy_dir(dir.path());
        let mut bytes = original.clone();
        bytes[range.start + cut..range.end].fill(0);
        std::fs::write(copy.path().join(&name), &bytes).unwrap();
        let (log, report) = Log::open(copy.path(), options(SEGMENT_BYTES)).unwrap();
        check(&log, 1, 20, |_| 1);
        assert_eq!(report.truncations.len(), 1, "{report}");
        assert_eq!(report.truncations[0].offset, range.start as u64, "{report}");
    }
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    check(&log, 1, 32, |_| 1);
}

#[test]
fn damage_before_synced_records_is_middle_corruption() {
    // Proves that damage followed by records written after it was synced is never truncated:
    // open fails naming the file, the offset, both checksums, the index range and the rule.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 5, 1);
    let seg = last_segment(dir.path());
    let before = std::fs::read(&seg).unwrap();
    append(&mut log, 6, 6, 1);
    let mid = std::fs::read(&seg).unwrap();
    for i in 7..=9 {
        append(&mut log, i, i, 1); // each synced on its own, so each proves 6 was durable
    }
    drop(log);
    let start = before.iter().zip(&mid).position(|(a, b)| a != b).unwrap();
    for (flip, rule) in [(start + 50, "MIDDLE_PAYLOAD_REFUSE"), (start + 10, "MIDDLE_HEADER_REFUSE")] {
        let copy = copy_dir(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[flip] ^= 0x40;
        std::fs::write(copy.path().join(seg.file_name().unwrap()), &bytes).unwrap();
        for opts in [options(SEGMENT_BYTES), absolute(SEGMENT_BYTES)] {
            let err = Log::open(copy.path(), opts).unwrap_err();
            let c = err.corruption().unwrap_or_else(|| panic!("{err}"));
            assert_eq!(c.rule, Some(rule));
            assert_eq!(c.path, copy.path().join(seg.file_name().unwrap()));
            assert_eq!(c.offset, start as u64);
            assert_eq!(c.affected_indexes.map(|r| r.0), Some(6));
            assert!(c.affected_indexes.unwrap().1 >= 9);
            if rule == "MIDDLE_PAYLOAD_REFUSE" {
                assert!(
                    matches!(c.kind, CorruptionKind::Checksum { what: "record", expected, actual } if expected != actual)
                );
            }
            let msg = err.to_string();
            assert!(msg.contains(&start.to_string()) && msg.contains(rule), "{msg}");
        }
    }
}

#[test]
fn a_record_written_over_earlier_synced_records_is_corruption_not_a_tail() {
    // A misdirected write: the last write (entry 7, which states that the segment was synced up
    // to its own offset) lands instead where entry 6 was. Without a rule for it, entries 6 and 7
    // would vanish as a "tail"; the record's synced_offset lying past where it sits proves that
    // the bytes it covers were synced, so recovery refuses in both modes.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 5, 1);
    let seg = last_segment(dir.path());
    let five = std::fs::read(&seg).unwrap();
    append(&mut log, 6, 6, 1);
    let six = std::fs::read(&seg).unwrap();
    append(&mut log, 7, 7, 1);
    drop(log);
    let seven = std::fs::read(&seg).unwrap();
    let at6 = five.iter().zip(&six).position(|(a, b)| a != b).unwrap();
    let at7 = six.iter().zip(&seven).position(|(a, b)| a != b).unwrap();
    let len7 = seven.len() - seven.iter().rev().zip(six.iter().rev()).position(|(a, b)| a != b).unwrap() - at7;
    let mut bytes = six.clone(); // entry 7's own place never written
    bytes[at6..at6 + len7].copy_from_slice(&seven[at7..at7 + len7]);
    for opts in [options(SEGMENT_BYTES), absolute(SEGMENT_BYTES)] {
        let copy = copy_dir(dir.path());
        std::fs::write(copy.path().join(seg.file_name().unwrap()), &bytes).unwrap();
        let err = Log::open(copy.path(), opts).unwrap_err();
        let c = err.corruption().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(c.offset, at6 as u64, "{err}");
        assert!(err.to_string().contains("misdirected"), "{err}");
    }
}

#[test]
fn damaged_sealed_record_is_an_error_on_read_and_verify() {
    // Sealed segments are opened from their footers; a damaged record in one is caught by the
    // checksum on every read and by verify, never returned.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 400, 1);
    drop(log);
    let first = dir.path().join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[64 + 40 + 3] ^= 1; // payload of entry 1
    std::fs::write(&first, &bytes).unwrap();
    let (log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert!(report.segments_sealed > 1);
    match log.entry(1) {
        Err(Error::Corruption(c)) => {
            assert_eq!(c.rule, Some("READ_RECORD_REFUSE"));
            assert_eq!(c.offset, 64);
            assert_eq!(c.affected_indexes, Some((1, 1)));
        }
        other => panic!("{other:?}"),
    }
    assert!(log.entries(1, 3, u64::MAX).is_err());
    assert_eq!(&*log.entry(2).unwrap().payload, &payload(2, 1)[..]);
    assert!(log.verify().is_err());
}

#[test]
fn damaged_footer_with_later_segments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 400, 1);
    drop(log);
    let first = dir.path().join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1; // footer trailer
    std::fs::write(&first, &bytes).unwrap();
    let err = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap_err();
    assert_eq!(err.corruption().unwrap().rule, Some("MIDDLE_FOOTER_REFUSE"));
}

#[test]
fn torn_segment_creation_is_dropped() {
    // A crash while creating the next segment leaves a file with a zero or partial header: it
    // holds nothing acknowledged, so recovery removes it (and refuses in absolute mode).
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 100, 1);
    drop(log);
    let last = last_segment(dir.path());
    let id: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let torn = dir.path().join(format!("{:020}.seg", id + 1));
    std::fs::write(&torn, vec![0u8; 100]).unwrap();
    // Sealing `last` first would be needed for a real successor; here `last` is unsealed and the
    // torn file is the newest, as after a crash during creation.
    let err = Log::open(dir.path(), absolute(SEGMENT_BYTES)).unwrap_err();
    assert_eq!(err.corruption().unwrap().rule, Some("TAIL_SEGMENT_HEADER_REFUSE"));
    let (log, report) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    assert_eq!(report.removed_segments.len(), 1, "{report}");
    check(&log, 1, 100, |_| 1);
    assert!(!torn.exists());
}

#[test]
fn arbitrary_bytes_in_a_segment_never_panic() {
    // Fills the active segment with patterned garbage at many seeds: open returns a log or a
    // typed error, never panics, and never returns an entry whose checksum fails.
    let (dir, seg, _) = base_with_last_write(30, 1);
    let name = seg.file_name().unwrap().to_owned();
    let original = std::fs::read(&seg).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..300 {
        let copy = copy_dir(dir.path());
        let mut bytes = original.clone();
        let flips = 1 + round % 40;
        for _ in 0..flips {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % bytes.len();
            bytes[at] = (x >> 32) as u8;
        }
        if round % 3 == 0 {
            bytes.truncate((x as usize) % bytes.len());
        }
        std::fs::write(copy.path().join(&name), &bytes).unwrap();
        if let Ok((log, _)) = Log::open(copy.path(), options(SEGMENT_BYTES)) {
            let last = log.last_index();
            if last >= log.first_index() {
                for e in log.entries(log.first_index(), last + 1, u64::MAX).into_iter().flatten() {
                    assert_eq!(&*e.payload, &payload(e.index, e.term)[..]);
                }
            }
        }
    }
}

#[test]
fn arbitrary_bytes_in_sealed_segments_never_panic() {
    // Garbage in any segment file (headers, records, footers) or a truncated file: open returns
    // a log or a typed error; reads return intact entries or typed errors.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 300, 1);
    drop(log);
    let files = segment_files(dir.path());
    assert!(files.len() > 3);
    let mut x = 0xDEAD_BEEF_0BAD_F00Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let copy = copy_dir(dir.path());
        let victim = &files[(next() as usize) % files.len()];
        let path = copy.path().join(victim.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        let region = match next() % 3 {
            0 => 0..64,                           // segment header
            1 => bytes.len() - 2048..bytes.len(), // footer
            _ => 0..bytes.len(),                  // anywhere
        };
        for _ in 0..1 + next() % 20 {
            let at = region.start + (next() as usize) % (region.end - region.start);
            bytes[at] = next() as u8;
        }
        if next() % 5 == 0 {
            bytes.truncate((next() as usize) % bytes.len());
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok((log, _)) = Log::open(copy.path(), options(SEGMENT_BYTES)) {
            for i in log.first_index()..=log.last_index() {
                if let Ok(e) = log.entry(i) {
                    assert_eq!(&*e.payload, &payload(e.index, e.term)[..]);
                }
            }
            let _ = log.verify();
        }
    }
}

#[test]
fn requests_batched_into_one_write_stay_atomic_each() {
    // append_many writes several requests with one pwrite; each request is still its own atomic
    // write: tearing the last request keeps the earlier ones of the same pwrite.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    append(&mut log, 1, 10, 1);
    let seg = segment_files(dir.path()).pop().unwrap();
    let before = std::fs::read(&seg).unwrap();
    let payloads: Vec<Vec<u8>> = (11..=16).map(|i| payload(i, 1)).collect();
    let e = |i: u64| NewEntry { index: i, term: 1, payload: &payloads[(i - 11) as usize] };
    let gap = [NewEntry { index: 40, term: 1, payload: b"x" }];
    let (a, b, c) = ([e(11), e(12)], [e(13), e(14)], [e(15), e(16)]);
    let results = log.append_many(&[&a, &gap, &b, &c]);
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok() && results[3].is_ok(), "{results:?}");
    log.sync().unwrap();
    drop(log);
    let after = std::fs::read(&seg).unwrap();
    let end = after.len() - after.iter().rev().zip(before.iter().rev()).position(|(x, y)| x != y).unwrap();
    let mut torn = after.clone();
    torn[end - 8..end].fill(0); // inside the last record of the last request
    let copy = copy_dir(dir.path());
    std::fs::write(copy.path().join(seg.file_name().unwrap()), &torn).unwrap();
    let (log, report) = Log::open(copy.path(), options(SEGMENT_BYTES)).unwrap();
    assert_eq!(report.truncations.len(), 1, "{report}");
    check(&log, 1, 14, |_| 1);
}

#[test]
fn a_failed_read_during_open_or_verify_is_an_io_error() {
    // Proves that recovery and verify read segment bytes through `read_at`, not the maps: with
    // every read past the first 4 KiB of each file failing with EIO (a bad sector), open and
    // verify return `Error::Io` naming a segment file and the offset. Through a map the same
    // bad sector raises SIGBUS and kills the process. Entry reads still come from the map, so
    // they go on working here (on a real bad sector they would not).
    let dir = tempfile::tempdir().unwrap();
    let faults = std::sync::Arc::new(FaultyFs::default());
    let opts = LogOptions { fs: std::sync::Arc::new(FaultyHandle(faults.clone())), ..options(SEGMENT_BYTES) };
    let (mut log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    append(&mut log, 1, 300, 1);
    let expect_io = |what: &str, r: keel::Result<u64>| match r {
        Err(Error::Io { op: "read", path, source }) => {
            assert!(path.extension().is_some_and(|x| x == "seg"), "{what}: {}", path.display());
            assert!(source.to_string().contains("at offset"), "{what}: {source}");
            assert_eq!(source.raw_os_error().or(Some(5)), Some(5), "{what}: {source}");
        }
        other => panic!("{what}: expected an I/O error, got {other:?}"),
    };
    faults.fail_read_from.store(4096, std::sync::atomic::Ordering::SeqCst);
    expect_io("verify", log.verify());
    assert_eq!(&*log.entry(300).unwrap().payload, &payload(300, 1)[..]);
    drop(log);
    expect_io("open", Log::open(dir.path(), opts.clone()).map(|(log, _)| log.last_index()));
    faults.fail_read_from.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let (log, report) = Log::open(dir.path(), opts).unwrap();
    assert!(report.truncations.is_empty() && report.removed_segments.is_empty(), "{report}");
    check(&log, 1, 300, |_| 1);
}
