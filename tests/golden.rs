//! Golden segment directories in `segments/golden/`, written by format version 1. Every later
//! version must open them with exactly these outcomes. The directories are copied to a temporary
//! place first, because recovery repairs what it opens.
//!
//! To regenerate (only when adding a new golden directory; never rewrite an old one):
//! `KEEL_WRITE_GOLDEN=1 cargo test --test golden -- --ignored write_golden`.

mod common;

use common::{append, last_segment, payload};
use keel::wal::{Log, LogOptions};
use std::path::{Path, PathBuf};

const SEGMENT_BYTES: u64 = 4096;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("segments/golden").join(name)
}

fn open_copy(name: &str) -> (tempfile::TempDir, keel::Result<(Log, keel::wal::RecoveryReport)>) {
    let to = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(golden(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
        n += 1;
    }
    assert!(n > 0, "golden directory {name} is empty");
    let opened = Log::open(to.path(), LogOptions { segment_bytes: SEGMENT_BYTES, ..LogOptions::default() });
    (to, opened)
}

/// The history every golden directory starts with: entries 1..=60 in term 1, entries 41..=70
/// rewritten in term 2 (a Raft truncation), then compaction to 25.
fn history(log: &mut Log) {
    for i in (1..=60).step_by(5) {
        append(log, i, i + 4, 1);
    }
    append(log, 41, 70, 2);
    log.compact(25).unwrap();
}

fn term_of(i: u64) -> u64 {
    if i <= 40 { 1 } else { 2 }
}

fn check_history(log: &Log, last: u64) {
    assert_eq!(log.first_index(), 25);
    assert_eq!(log.last_index(), last);
    assert_eq!(log.term(24).unwrap(), 1);
    for e in log.entries(25, last + 1, u64::MAX).unwrap() {
        assert_eq!(e.term, term_of(e.index));
        assert_eq!(&*e.payload, &payload(e.index, e.term)[..]);
    }
    assert!(log.verify().unwrap() > 0);
}

#[test]
fn v1_clean_opens_exactly() {
    let (_dir, opened) = open_copy("v1-clean");
    let (log, report) = opened.unwrap();
    check_history(&log, 70);
    assert!(report.truncations.is_empty());
    assert!(report.removed_segments.is_empty());
    assert_eq!(report.segments_found, report.segments_sealed + 1);
}

#[test]
fn v1_torn_tail_drops_only_the_torn_record() {
    let (_dir, opened) = open_copy("v1-torn-tail");
    let (log, report) = opened.unwrap();
    check_history(&log, 70);
    assert_eq!(report.truncations.len(), 1, "{report}");
    let t = &report.truncations[0];
    assert_eq!(t.rule, "TAIL_PAYLOAD_TRUNCATE");
    assert_eq!((t.offset, t.bytes_dropped), (TORN_OFFSET, TORN_BYTES), "{report}");
}

#[test]
fn v1_middle_corruption_is_refused_with_evidence() {
    let (dir, opened) = open_copy("v1-middle-corruption");
    let err = opened.unwrap_err();
    let c = err.corruption().expect("a corruption error");
    assert_eq!(c.rule, Some("MIDDLE_PAYLOAD_REFUSE"));
    assert_eq!(c.path, dir.path().join(MIDDLE_FILE));
    assert_eq!(c.offset, MIDDLE_OFFSET);
    assert_eq!(c.affected_indexes, Some((71, 73)));
    assert!(matches!(c.kind, keel::CorruptionKind::Checksum { what: "record", .. }));
}

#[test]
fn v1_torn_write_is_dropped_whole() {
    let (_dir, opened) = open_copy("v1-torn-write");
    let (log, report) = opened.unwrap();
    check_history(&log, 70);
    assert_eq!(report.truncations.len(), 1, "{report}");
    let t = &report.truncations[0];
    // The last record's payload is damaged; the whole write (entries 71..=73) goes.
    assert_eq!(t.rule, "TAIL_PAYLOAD_TRUNCATE");
    assert_eq!((t.offset, t.bytes_dropped), (1424, 657), "{report}");
}

#[test]
fn v1_reset_restarts_after_the_snapshot() {
    let (_dir, opened) = open_copy("v1-reset");
    let (log, report) = opened.unwrap();
    assert!(report.truncations.is_empty());
    assert_eq!((log.first_index(), log.last_index()), (1001, 1010));
    assert_eq!(log.term(1000).unwrap(), 5);
    for e in log.entries(1001, 1011, u64::MAX).unwrap() {
        assert_eq!((e.term, &*e.payload), (6, &payload(e.index, 6)[..]));
    }
}

// Facts about the golden files, fixed when they were written.
const TORN_OFFSET: u64 = 368;
const TORN_BYTES: u64 = 289;
const MIDDLE_FILE: &str = "00000000000000000006.seg";
const MIDDLE_OFFSET: u64 = 368;

#[test]
#[ignore = "writes segments/golden; run only to add a new golden directory"]
fn write_golden() {
    if std::env::var_os("KEEL_WRITE_GOLDEN").is_none() {
        return;
    }
    let opts = LogOptions { segment_bytes: SEGMENT_BYTES, ..LogOptions::default() };
    // Golden directories are never rewritten: only missing ones are written.
    let fresh = |name: &str| {
        let d = golden(name);
        if d.exists() {
            return None;
        }
        std::fs::create_dir_all(&d).unwrap();
        Some(d)
    };
    let finish = |d: &Path| {
        let _ = std::fs::remove_file(d.join("LOCK"));
    };

    if let Some(d) = fresh("v1-clean") {
        let (mut log, _) = Log::open(&d, opts.clone()).unwrap();
        history(&mut log);
        drop(log);
        finish(&d);
    }

    // A torn tail: entry 71 written, then all but its first 48 bytes replaced by zeros and junk.
    if let Some(d) = fresh("v1-torn-tail") {
        let (mut log, _) = Log::open(&d, opts.clone()).unwrap();
        history(&mut log);
        let seg = last_segment(&d);
        let before = std::fs::read(&seg).unwrap();
        append(&mut log, 71, 71, 2);
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let start = before.iter().zip(&bytes).position(|(a, b)| a != b).unwrap();
        println!("torn record at {} in {}", start, seg.display());
        for (k, b) in bytes[start + 48..start + 160].iter_mut().enumerate() {
            *b = if k < 64 { 0 } else { 0x5A };
        }
        std::fs::write(&seg, bytes).unwrap();
        finish(&d);
    }

    // Corruption in the middle: entry 71's payload damaged after 72 and 73 were synced.
    if let Some(d) = fresh("v1-middle-corruption") {
        let (mut log, _) = Log::open(&d, opts.clone()).unwrap();
        history(&mut log);
        let seg = last_segment(&d);
        let before = std::fs::read(&seg).unwrap();
        append(&mut log, 71, 71, 2);
        append(&mut log, 72, 72, 2);
        append(&mut log, 73, 73, 2);
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let start = before.iter().zip(&bytes).position(|(a, b)| a != b).unwrap();
        println!("middle record at {} in {}", start, seg.display());
        bytes[start + 45] ^= 0x08;
        std::fs::write(&seg, bytes).unwrap();
        finish(&d);
    }

    // Multi-record writes (CONTINUES flags), the last one torn inside its last record.
    if let Some(d) = fresh("v1-torn-write") {
        let (mut log, _) = Log::open(&d, opts.clone()).unwrap();
        history(&mut log);
        let seg = last_segment(&d);
        let before = std::fs::read(&seg).unwrap();
        append(&mut log, 71, 73, 2);
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let start = before.iter().zip(&bytes).position(|(a, b)| a != b).unwrap();
        let end = bytes.len() - before.iter().rev().zip(bytes.iter().rev()).position(|(a, b)| a != b).unwrap();
        println!("torn write at {start}..{end} in {}", seg.display());
        bytes[end - 30..end].fill(0);
        std::fs::write(&seg, bytes).unwrap();
        finish(&d);
    }

    if let Some(d) = fresh("v1-reset") {
        let (mut log, _) = Log::open(&d, opts.clone()).unwrap();
        history(&mut log);
        log.reset(1001, 5).unwrap();
        append(&mut log, 1001, 1010, 6);
        drop(log);
        finish(&d);
    }
}
