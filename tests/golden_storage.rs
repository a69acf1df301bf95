//! Golden DiskStorage directories in `segments/golden/storage-v1*`: a HardState file, snapshot
//! files and a log, written by format version 1. Every later version must open them with exactly
//! these outcomes. They are copied to a temporary place first, because open repairs what it finds.
//!
//! To add one (never rewrite an existing one):
//! `KEEL_WRITE_GOLDEN=1 cargo test --test golden_storage -- --ignored write_golden`.

use keel::Error;
use keel::storage::{ConfState, DiskStorage, Entry, EntryType, HardState, Storage, StorageMut, StorageOptions};
use keel::wal::LogOptions;
use std::path::{Path, PathBuf};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("segments/golden").join(name)
}

fn options() -> StorageOptions {
    StorageOptions { log: LogOptions { segment_bytes: 4096, ..LogOptions::default() }, ..StorageOptions::default() }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if p.is_dir() {
            copy_tree(&p, &to.join(name));
        } else if name != "LOCK" {
            std::fs::copy(&p, to.join(name)).unwrap();
        }
    }
}

fn open_copy(name: &str) -> (tempfile::TempDir, keel::Result<(DiskStorage, keel::storage::StorageReport)>) {
    let to = tempfile::tempdir().unwrap();
    copy_tree(&golden(name), to.path());
    let opened = DiskStorage::open(to.path(), options());
    (to, opened)
}

fn joint() -> ConfState {
    ConfState {
        voters: vec![1, 2, 3],
        learners: vec![7],
        voters_outgoing: vec![1, 2, 4],
        learners_next: vec![4],
        auto_leave: true,
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        entry_type: if index == 12 { EntryType::ConfChangeV2 } else { EntryType::Normal },
        data: format!("put k{index}=v{term}").into_bytes().into(),
        context: Default::default(),
    }
}

/// The history of `storage-v1`: 40 entries over terms 1..=3, a snapshot at 20, compaction to 21,
/// HardState {term 3, vote 2, commit 38} and a joint ConfState.
fn history(s: &mut DiskStorage) {
    s.append(&(1..=15).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
    s.append(&(10..=30).map(|i| entry(i, 2)).collect::<Vec<_>>()).unwrap();
    s.append(&(31..=40).map(|i| entry(i, 3)).collect::<Vec<_>>()).unwrap();
    s.set_conf_state(&joint()).unwrap();
    s.set_hard_state(&HardState { term: 3, vote: 2, commit: 38 }).unwrap();
    s.create_snapshot(20, &joint(), &mut &b"state machine at 20"[..]).unwrap();
    s.compact(21).unwrap();
}

fn term_of(i: u64) -> u64 {
    match i {
        1..=9 => 1,
        10..=30 => 2,
        _ => 3,
    }
}

#[test]
fn storage_v1_opens_exactly() {
    let (_dir, opened) = open_copy("storage-v1");
    let (s, report) = opened.unwrap();
    assert_eq!(report.snapshot, Some(keel::storage::SnapshotId { index: 20, term: 2 }));
    assert!(report.corrupt_snapshots.is_empty() && report.removed_temp_files.is_empty());
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state, HardState { term: 3, vote: 2, commit: 38 });
    assert_eq!(st.conf_state, joint());
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 40));
    assert_eq!(s.term(20).unwrap(), 2);
    for e in s.entries(21, 41, u64::MAX).unwrap() {
        assert_eq!(e, entry(e.index, term_of(e.index)));
    }
    let snap = s.snapshot(0).unwrap();
    assert_eq!((snap.metadata.index, snap.metadata.term, &snap.metadata.conf_state), (20, 2, &joint()));
    assert_eq!(snap.read_to_vec().unwrap(), b"state machine at 20");
}

#[test]
fn storage_v1_torn_hard_state_falls_back_one_update() {
    // The newest HardState slot was torn: the update before it (the joint ConfState with the
    // HardState set before it) is what opens.
    let (_dir, opened) = open_copy("storage-v1-torn-hardstate");
    let (s, _) = opened.unwrap();
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state, HardState::default());
    assert_eq!(st.conf_state, joint());
}

#[test]
fn storage_v1_damaged_snapshot_is_refused_without_fallback() {
    let (_dir, opened) = open_copy("storage-v1-bad-snapshot");
    match opened {
        Err(e @ Error::Corruption(_)) => assert!(e.to_string().contains("cannot be rebuilt"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
#[ignore = "writes segments/golden; run only to add a new golden directory"]
fn write_golden() {
    if std::env::var_os("KEEL_WRITE_GOLDEN").is_none() {
        return;
    }
    let fresh = |name: &str| {
        let d = golden(name);
        if d.exists() {
            return None;
        }
        let (mut s, _) = DiskStorage::open(&d, options()).unwrap();
        history(&mut s);
        drop(s);
        let _ = std::fs::remove_file(d.join("LOCK"));
        let _ = std::fs::remove_file(d.join("log/LOCK"));
        Some(d)
    };
    fresh("storage-v1");
    if let Some(d) = fresh("storage-v1-torn-hardstate") {
        // Slot written last by `history` (set_hard_state, sequence 3) is slot 0.
        let p = d.join("hardstate");
        let mut b = std::fs::read(&p).unwrap();
        b[2000..2100].fill(0xEE);
        std::fs::write(p, b).unwrap();
    }
    if let Some(d) = fresh("storage-v1-bad-snapshot") {
        let snap = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "snap"))
            .unwrap();
        let mut b = std::fs::read(&snap).unwrap();
        let n = b.len();
        b[n - 10] ^= 0x01; // a data byte
        std::fs::write(snap, b).unwrap();
    }
}
