//! The raft-rs adapter and the gathered write path: `entries()` equals raft-rs's
//! `MemStorage` (its `limit_size`) at every bound and limit; a gathered record is byte-identical
//! to the joined payload; zero-copy entries outlive compaction and a snapshot install.
#![cfg(feature = "raft-rs")]
use keel::raft_rs::{self, RaftRsStorage};
use keel::storage::{DiskStorage, Entry as KEntry, EntryType, Storage, StorageMut, StorageOptions};
use keel::wal::{Log, LogOptions, NewEntry};
use protobuf::Message as _;
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as RaftStorage};

fn opts(seg: u64) -> StorageOptions {
    StorageOptions { log: LogOptions { segment_bytes: seg, ..LogOptions::default() }, ..StorageOptions::default() }
}

fn e(index: u64, term: u64, data: &[u8], ctx: &[u8]) -> Entry {
    Entry { index, term, data: data.to_vec().into(), context: ctx.to_vec().into(), ..Default::default() }
}

/// entries() must equal raft-rs MemStorage (limit_size) for every lo/hi/max.
#[test]
fn entries_match_raft_mem_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _) = DiskStorage::open(dir.path(), opts(64 << 10)).unwrap();
    let mem = raft::storage::MemStorage::new();
    let mut ents = Vec::new();
    for i in 1..=12u64 {
        let data = vec![b'x'; (i as usize * 7) % 23];
        let ctx = if i % 3 == 0 { vec![b'c'; i as usize] } else { vec![] };
        ents.push(e(i, 1 + i / 4, &data, &ctx));
    }
    d.append_raft_entries(&ents).unwrap();
    mem.wl().append(&ents).unwrap();
    let sizes: Vec<u64> = ents.iter().map(|e| u64::from(e.compute_size())).collect();
    let mut maxes: Vec<Option<u64>> = vec![None, Some(raft::NO_LIMIT), Some(0), Some(1), Some(u64::MAX - 1)];
    let mut acc = 0;
    for s in &sizes {
        acc += s;
        maxes.extend([Some(acc - 1), Some(acc), Some(acc + 1)]);
    }
    for lo in 1..=13u64 {
        for hi in lo..=13u64 {
            for &m in &maxes {
                let a = RaftStorage::entries(&d, lo, hi, m, GetEntriesContext::empty(false)).unwrap();
                let b = mem.entries(lo, hi, m, GetEntriesContext::empty(false)).unwrap();
                assert_eq!(a, b, "lo {lo} hi {hi} max {m:?}");
            }
        }
    }
}

/// The gathered write path makes the same bytes on disk as the single-slice path.
#[test]
fn gathered_records_are_byte_identical_to_joined_payloads() {
    let seg = 16 << 10;
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _) = DiskStorage::open(dir.path(), opts(seg)).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir2.path(), LogOptions { segment_bytes: seg, ..LogOptions::default() }).unwrap();
    let max = keel::limits::payload_bytes_max(seg) as usize;
    let mut index = 1;
    let shapes: Vec<(usize, usize)> = vec![
        (0, 0),
        (0, 1),
        (1, 0),
        (3, 5),
        (0, max - 1),
        (max - 5, 0),
        (max - 6, 1),
        (1, max - 6),
        (100, 200),
        (0, 3000),
    ];
    for (clen, dlen) in shapes {
        let ctx = vec![0xC5u8; clen];
        let data: Vec<u8> = (0..dlen).map(|i| i as u8).collect();
        let ent = KEntry { context: ctx.clone().into(), ..KEntry::new(index, 1, data.clone()) };
        d.append(&[ent]).unwrap();
        let mut joined = Vec::new();
        if clen == 0 {
            joined.push(0u8);
        } else {
            joined.push(0x80);
            joined.extend_from_slice(&(clen as u32).to_le_bytes());
            joined.extend_from_slice(&ctx);
        }
        joined.extend_from_slice(&data);
        log.append_and_sync(&[NewEntry { index, term: 1, payload: &joined }]).unwrap();
        let back = Storage::entries(&d, index, index + 1, u64::MAX).unwrap();
        assert_eq!(&*back[0].context, &ctx[..]);
        assert_eq!(&*back[0].data, &data[..]);
        index += 1;
    }
    // too large by one, counting all parts
    let too_big = KEntry { context: vec![1u8; 10].into(), ..KEntry::new(index, 1, vec![0u8; max - 5 - 10 + 1]) };
    assert!(matches!(d.append(&[too_big]), Err(keel::Error::InvalidArgument(_))));
    let fits = KEntry { context: vec![1u8; 10].into(), ..KEntry::new(index, 1, vec![0u8; max - 5 - 10]) };
    d.append(&[fits]).unwrap();
    drop(d);
    drop(log);
    let mut a: Vec<_> = std::fs::read_dir(dir.path().join("log")).unwrap().map(|e| e.unwrap().path()).collect();
    let mut b: Vec<_> = std::fs::read_dir(dir2.path()).unwrap().map(|e| e.unwrap().path()).collect();
    a.retain(|p| p.extension().is_some_and(|x| x == "seg"));
    b.retain(|p| p.extension().is_some_and(|x| x == "seg"));
    a.sort();
    b.sort();
    // compare segments that exist in both (b has one fewer entry)
    for (pa, pb) in a.iter().zip(&b).take(b.len() - 1) {
        assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap(), "{pa:?}");
    }
    let (d, _) = DiskStorage::open(dir.path(), opts(seg)).unwrap();
    assert_eq!(Storage::last_index(&d).unwrap(), index);
    let all = Storage::entries(&d, 1, index + 1, u64::MAX).unwrap();
    assert_eq!(all.len() as u64, index);
}

/// persist_ready-like sequence: zero copy entries outlive compaction and reset.
#[test]
fn zero_copy_bytes_outlive_compaction_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _) = DiskStorage::open(dir.path(), opts(4096)).unwrap();
    let mut ents = Vec::new();
    for i in 1..=60u64 {
        ents.push(e(i, 1, format!("data-{i:0200}").as_bytes(), b"ctx"));
    }
    for chunk in ents.chunks(3) {
        d.append_raft_entries(chunk).unwrap();
    }
    let held = RaftStorage::entries(&d, 1, 61, None, GetEntriesContext::empty(false)).unwrap();
    assert_eq!(held, ents);
    d.set_hard_state(&keel::storage::HardState { term: 1, vote: 0, commit: 60 }).unwrap();
    d.create_snapshot(50, &keel::storage::ConfState { voters: vec![1], ..Default::default() }, &mut &b"snap"[..])
        .unwrap();
    d.compact(50).unwrap();
    let md = keel::storage::SnapshotMetadata {
        index: 200,
        term: 3,
        conf_state: keel::storage::ConfState { voters: vec![1], ..Default::default() },
    };
    d.apply_snapshot(&md, &mut &b"s2"[..]).unwrap();
    let more: Vec<Entry> = (201..=260).map(|i| e(i, 3, &[7u8; 300], b"")).collect();
    for chunk in more.chunks(5) {
        d.append_raft_entries(chunk).unwrap();
    }
    assert_eq!(held, ents, "bytes handed out earlier changed");
    drop(d);
    assert_eq!(held, ents);
}

#[test]
fn persist_ready_types_round_trip() {
    // Every entry type and a context survive a reopen.
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _) = DiskStorage::open(dir.path(), opts(64 << 10)).unwrap();
    let mut ents = vec![e(1, 1, b"", b"c"), e(2, 1, b"d", b""), e(3, 1, b"", b"")];
    ents[0].set_entry_type(raft::eraftpb::EntryType::EntryConfChange);
    ents[1].set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
    d.append_raft_entries(&ents).unwrap();
    drop(d);
    let (d, _) = DiskStorage::open(dir.path(), opts(64 << 10)).unwrap();
    let got = RaftStorage::entries(&d, 1, 4, None, GetEntriesContext::empty(false)).unwrap();
    assert_eq!(got, ents);
    let k = Storage::entries(&d, 1, 4, u64::MAX).unwrap();
    assert_eq!(k[0].entry_type, EntryType::ConfChange);
    let _ = raft_rs::entry_to_raft(k[0].clone());
}
