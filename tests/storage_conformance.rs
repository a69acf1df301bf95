//! One conformance suite for the Raft storage rules (etcd-raft / raft-rs semantics), run against
//! both `MemStorage` and `DiskStorage`. For `DiskStorage` every rule is checked again after a
//! reopen, so the rules hold for what is durable, not only for what is in memory.

use keel::Error;
use keel::storage::{
    ConfState, DiskStorage, Entry, EntryType, HardState, MemStorage, SnapshotMetadata, Storage, StorageMut,
    StorageOptions,
};
use keel::wal::LogOptions;
use std::io::Write;

trait Harness {
    type S: StorageMut;
    fn new() -> Self;
    fn s(&mut self) -> &mut Self::S;
    /// Closes and reopens a durable implementation; a no-op in memory.
    fn reopen(&mut self);
}

struct Mem(MemStorage);

impl Harness for Mem {
    type S = MemStorage;
    fn new() -> Self {
        Mem(MemStorage::new())
    }
    fn s(&mut self) -> &mut MemStorage {
        &mut self.0
    }
    fn reopen(&mut self) {}
}

struct Disk {
    dir: tempfile::TempDir,
    s: Option<DiskStorage>,
}

fn disk_options() -> StorageOptions {
    StorageOptions {
        log: LogOptions { segment_bytes: 16 * 1024, ..LogOptions::default() },
        ..StorageOptions::default()
    }
}

impl Harness for Disk {
    type S = DiskStorage;
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = DiskStorage::open(dir.path(), disk_options()).unwrap();
        Disk { dir, s: Some(s) }
    }
    fn s(&mut self) -> &mut DiskStorage {
        self.s.as_mut().unwrap()
    }
    fn reopen(&mut self) {
        self.s = None;
        let (s, _) = DiskStorage::open(self.dir.path(), disk_options()).unwrap();
        self.s = Some(s);
    }
}

fn ent(index: u64, term: u64) -> Entry {
    let data: Vec<u8> = (0..(index % 7) * 10 + 5).map(|i| (index + i) as u8).collect();
    Entry {
        index,
        term,
        entry_type: if index.is_multiple_of(5) { EntryType::ConfChange } else { EntryType::Normal },
        data: data.into(),
        // Every third entry has a context, which must round-trip beside the data.
        context: if index.is_multiple_of(3) { format!("ctx{index}").into_bytes().into() } else { Default::default() },
    }
}

fn ents(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| ent(i, term)).collect()
}

fn conf(v: &[u64]) -> ConfState {
    ConfState { voters: v.to_vec(), ..ConfState::default() }
}

/// Checks a rule now and, for durable implementations, again after reopening.
fn twice<H: Harness>(h: &mut H, check: impl Fn(&mut H::S)) {
    check(h.s());
    h.reopen();
    check(h.s());
}

fn fresh_storage_is_empty<H: Harness>() {
    let mut h = H::new();
    twice(&mut h, |s| {
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state, HardState::default());
        assert_eq!(st.conf_state, ConfState::default());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(matches!(s.term(1), Err(Error::Unavailable { .. })));
        assert!(matches!(s.term(u64::MAX), Err(Error::Unavailable { .. })), "no overflow panic");
        assert!(s.entries(1, 1, u64::MAX).unwrap().is_empty());
        assert!(matches!(s.snapshot(0), Err(Error::SnapshotTemporarilyUnavailable)));
    });
}

fn append_and_read_back<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 20, 3)).unwrap();
    h.s().append(&[]).unwrap();
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 20));
        assert_eq!(s.entries(1, 21, u64::MAX).unwrap(), ents(1, 20, 3));
        for i in 1..=20 {
            assert_eq!(s.term(i).unwrap(), 3);
        }
        assert_eq!(s.entries(5, 6, 0).unwrap()[0].entry_type, EntryType::ConfChange);
    });
}

fn conflicting_append_truncates_the_suffix<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    h.s().append(&ents(6, 8, 2)).unwrap();
    twice(&mut h, |s| {
        assert_eq!(s.last_index().unwrap(), 8);
        let mut want = ents(1, 5, 1);
        want.extend(ents(6, 8, 2));
        assert_eq!(s.entries(1, 9, u64::MAX).unwrap(), want);
    });
    // Overwrite the whole log.
    h.s().append(&ents(1, 2, 4)).unwrap();
    twice(&mut h, |s| assert_eq!(s.entries(1, 3, u64::MAX).unwrap(), ents(1, 2, 4)));
}

fn append_rule_violations_are_typed<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    assert!(matches!(h.s().append(&ents(12, 13, 1)), Err(Error::InvalidArgument(_))));
    let mut gap = ents(11, 11, 1);
    gap.push(ent(13, 1));
    assert!(matches!(h.s().append(&gap), Err(Error::InvalidArgument(_))));
    h.s().compact(5).unwrap();
    assert!(matches!(h.s().append(&ents(4, 6, 2)), Err(Error::Compacted { index: 4, first_index: 5 })));
    twice(&mut h, |s| assert_eq!(s.entries(5, 11, u64::MAX).unwrap(), ents(5, 10, 1)));
}

fn entries_page_by_max_bytes<H: Harness>() {
    let mut h = H::new();
    let es: Vec<Entry> = (1..=10).map(|i| Entry::new(i, 1, vec![i as u8; 100])).collect();
    h.s().append(&es).unwrap();
    twice(&mut h, |s| {
        for (max, n) in [(0, 1), (99, 1), (100, 1), (199, 1), (200, 2), (250, 2), (300, 3), (1000, 10), (u64::MAX, 10)]
        {
            assert_eq!(s.entries(1, 11, max).unwrap().len(), n, "max_bytes {max}");
        }
        assert_eq!(s.entries(4, 7, 200).unwrap(), es[3..5].to_vec());
        assert!(s.entries(4, 4, 0).unwrap().is_empty());
    });
}

fn entries_bounds_are_typed<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    h.s().compact(4).unwrap();
    twice(&mut h, |s| {
        assert!(matches!(s.entries(3, 5, u64::MAX), Err(Error::Compacted { index: 3, first_index: 4 })));
        assert!(matches!(s.entries(4, 12, u64::MAX), Err(Error::Unavailable { .. })));
        assert!(matches!(s.entries(6, 5, u64::MAX), Err(Error::InvalidArgument(_))));
        assert_eq!(s.entries(4, 11, u64::MAX).unwrap().len(), 7);
    });
}

fn term_around_compacted_indexes<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 5, 1)).unwrap();
    h.s().append(&ents(6, 10, 2)).unwrap();
    h.s().compact(7).unwrap();
    twice(&mut h, |s| {
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2, "first_index - 1 still answers");
        assert!(matches!(s.term(5), Err(Error::Compacted { .. })));
        assert_eq!(s.term(7).unwrap(), 2);
        assert_eq!(s.term(10).unwrap(), 2);
        assert!(matches!(s.term(11), Err(Error::Unavailable { .. })));
    });
}

fn compaction_limits<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    assert!(matches!(h.s().compact(12), Err(Error::Unavailable { index: 12, last_index: 10 })));
    h.s().compact(3).unwrap();
    h.s().compact(2).unwrap(); // below first: nothing to do
    h.s().compact(3).unwrap();
    twice(&mut h, |s| assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 10)));
    h.s().compact(11).unwrap(); // everything
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (11, 10));
        assert_eq!(s.term(10).unwrap(), 1);
        assert!(s.entries(11, 11, 0).unwrap().is_empty());
    });
    h.s().append(&ents(11, 12, 2)).unwrap();
    twice(&mut h, |s| assert_eq!(s.entries(11, 13, u64::MAX).unwrap(), ents(11, 12, 2)));
}

fn create_snapshot_and_read_it<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 2)).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    h.s().create_snapshot(7, &conf(&[1, 2, 3]), &mut &data[..]).unwrap();
    twice(&mut h, |s| {
        let snap = s.snapshot(0).unwrap();
        assert_eq!(snap.metadata, SnapshotMetadata { index: 7, term: 2, conf_state: conf(&[1, 2, 3]) });
        assert_eq!(snap.data_len(), data.len() as u64);
        assert_eq!(snap.read_to_vec().unwrap(), data);
        assert!(matches!(s.snapshot(8), Err(Error::SnapshotTemporarilyUnavailable)));
        // Creating a snapshot does not compact the log.
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 10));
    });
    assert!(matches!(h.s().create_snapshot(7, &conf(&[1]), &mut &b""[..]), Err(Error::SnapshotOutOfDate { .. })));
    assert!(matches!(h.s().create_snapshot(5, &conf(&[1]), &mut &b""[..]), Err(Error::SnapshotOutOfDate { .. })));
    assert!(matches!(h.s().create_snapshot(11, &conf(&[1]), &mut &b""[..]), Err(Error::Unavailable { .. })));
    // Compacting up to the snapshot: term(first - 1) is the snapshot's term.
    h.s().compact(8).unwrap();
    twice(&mut h, |s| {
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.term(7).unwrap(), 2);
    });
}

fn snapshot_is_unavailable_while_being_made<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    h.s().create_snapshot(3, &conf(&[1]), &mut &b"old"[..]).unwrap();
    let mut w = h.s().begin_snapshot(8, &conf(&[1, 2])).unwrap();
    std::io::Write::write_all(&mut w, b"new state").unwrap();
    assert!(matches!(h.s().snapshot(0), Err(Error::SnapshotTemporarilyUnavailable)));
    h.s().finish_snapshot(w).unwrap();
    twice(&mut h, |s| {
        let snap = s.snapshot(0).unwrap();
        assert_eq!((snap.metadata.index, snap.metadata.term), (8, 1));
        assert_eq!(snap.read_to_vec().unwrap(), b"new state");
    });
    // An abandoned snapshot leaves nothing behind.
    let w = h.s().begin_snapshot(9, &conf(&[1])).unwrap();
    drop(w);
    twice(&mut h, |s| assert_eq!(s.snapshot(0).unwrap().metadata.index, 8));
}

fn apply_snapshot_restarts_the_log<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    h.s().set_hard_state(&HardState { term: 1, vote: 2, commit: 4 }).unwrap();
    let meta = SnapshotMetadata { index: 50, term: 3, conf_state: conf(&[1, 2, 4]) };
    h.s().apply_snapshot(&meta, &mut &b"leader state"[..]).unwrap();
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (51, 50));
        assert_eq!(s.term(50).unwrap(), 3);
        assert!(matches!(s.term(49), Err(Error::Compacted { .. })));
        assert!(matches!(s.entries(50, 51, 0), Err(Error::Compacted { .. })));
        let st = s.initial_state().unwrap();
        // The vote for 2 was cast in term 1; it does not carry into term 3.
        assert_eq!(st.hard_state, HardState { term: 3, vote: 0, commit: 50 });
        assert_eq!(st.conf_state, conf(&[1, 2, 4]));
        let snap = s.snapshot(0).unwrap();
        assert_eq!(snap.metadata, meta);
        assert_eq!(snap.read_to_vec().unwrap(), b"leader state");
    });
    h.s().append(&ents(51, 53, 3)).unwrap();
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (51, 53));
        assert_eq!(s.entries(51, 54, u64::MAX).unwrap(), ents(51, 53, 3));
    });
    assert!(matches!(h.s().append(&ents(50, 50, 3)), Err(Error::Compacted { .. })));
}

fn apply_snapshot_replaces_a_different_history<H: Harness>() {
    // The local log runs past the snapshot with other terms: all of it goes.
    let mut h = H::new();
    h.s().append(&ents(1, 30, 1)).unwrap();
    let meta = SnapshotMetadata { index: 20, term: 5, conf_state: conf(&[1]) };
    h.s().apply_snapshot(&meta, &mut &b"x"[..]).unwrap();
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (21, 20));
        assert_eq!(s.term(20).unwrap(), 5);
    });
}

fn older_snapshots_are_out_of_date<H: Harness>() {
    let mut h = H::new();
    let meta = SnapshotMetadata { index: 20, term: 2, conf_state: conf(&[1]) };
    h.s().apply_snapshot(&meta, &mut &b"a"[..]).unwrap();
    for index in [5, 19, 20] {
        let old = SnapshotMetadata { index, term: 2, conf_state: conf(&[1]) };
        assert!(matches!(h.s().apply_snapshot(&old, &mut &b"b"[..]), Err(Error::SnapshotOutOfDate { .. })), "{index}");
    }
    twice(&mut h, |s| {
        assert_eq!(s.snapshot(0).unwrap().read_to_vec().unwrap(), b"a");
        assert_eq!(s.first_index().unwrap(), 21);
    });
    // A newer one, far ahead of the log (a gap), is fine.
    let newer = SnapshotMetadata { index: 1000, term: 4, conf_state: conf(&[1, 2]) };
    h.s().apply_snapshot(&newer, &mut &b"c"[..]).unwrap();
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1001, 1000));
        assert_eq!(s.snapshot(0).unwrap().metadata, newer);
    });
}

fn hard_state_and_conf_state_persist<H: Harness>() {
    let mut h = H::new();
    let hs = HardState { term: 7, vote: 3, commit: 0 };
    let cs = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![9],
        voters_outgoing: vec![1, 2, 4],
        learners_next: vec![4],
        auto_leave: true,
    };
    h.s().set_hard_state(&hs).unwrap();
    h.s().set_conf_state(&cs).unwrap();
    twice(&mut h, |s| {
        let st = s.initial_state().unwrap();
        assert_eq!((st.hard_state, st.conf_state.clone()), (hs, cs.clone()));
    });
    for term in 8..20 {
        h.s().set_hard_state(&HardState { term, vote: 0, commit: 0 }).unwrap();
    }
    twice(&mut h, |s| {
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.term, 19);
        assert_eq!(st.conf_state, cs);
    });
}

fn hard_state_rules_are_enforced<H: Harness>() {
    let mut h = H::new();
    h.s().append(&ents(1, 12, 5)).unwrap();
    h.s().set_hard_state(&HardState { term: 5, vote: 2, commit: 10 }).unwrap();
    for bad in [
        HardState { term: 4, vote: 2, commit: 10 },
        HardState { term: 5, vote: 2, commit: 9 },
        HardState { term: 5, vote: 3, commit: 10 },
        HardState { term: 5, vote: 2, commit: 13 }, // above the last index (12)
    ] {
        assert!(matches!(h.s().set_hard_state(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
    h.s().set_hard_state(&HardState { term: 6, vote: 3, commit: 10 }).unwrap();
    // Raft never replaces a committed entry, and neither does storage: not by an append, nor by
    // installing a snapshot below the commit index (which would drop entries after it).
    assert!(matches!(h.s().append(&ents(10, 11, 6)), Err(Error::InvalidArgument(_))));
    let old_snapshot = SnapshotMetadata { index: 9, term: 5, conf_state: conf(&[1]) };
    let refused = h.s().apply_snapshot(&old_snapshot, &mut &b"old"[..]);
    assert!(matches!(refused, Err(Error::SnapshotOutOfDate { index: 9, covered: 10 })), "{refused:?}");
    h.s().append(&ents(11, 12, 6)).unwrap();
    twice(&mut h, |s| assert_eq!(s.initial_state().unwrap().hard_state, HardState { term: 6, vote: 3, commit: 10 }));
}

fn a_snapshot_handle_pins_the_entries_after_it<H: Harness>() {
    // While a handle from snapshot() lives (a transfer in flight), compaction keeps every entry
    // after the snapshot; once the last clone drops, compaction goes on.
    let mut h = H::new();
    h.s().append(&ents(1, 30, 2)).unwrap();
    h.s().create_snapshot(10, &conf(&[1]), &mut &b"at 10"[..]).unwrap();
    let handle = h.s().snapshot(0).unwrap();
    let clone = handle.clone();
    drop(handle);
    h.s().compact(25).unwrap();
    assert_eq!(h.s().first_index().unwrap(), 11, "lowered to one past the pinned snapshot");
    assert_eq!(h.s().entries(11, 31, u64::MAX).unwrap(), ents(11, 30, 2));
    h.s().append(&ents(31, 40, 2)).unwrap();
    h.s().create_snapshot(35, &conf(&[1]), &mut &b"at 35"[..]).unwrap();
    let newer = h.s().snapshot(0).unwrap();
    h.s().compact(38).unwrap();
    assert_eq!(h.s().first_index().unwrap(), 11, "the lowest pin wins");
    drop(clone);
    h.s().compact(38).unwrap();
    assert_eq!(h.s().first_index().unwrap(), 36);
    drop(newer);
    h.s().compact(38).unwrap();
    twice(&mut h, |s| assert_eq!(s.first_index().unwrap(), 38));
}

fn a_received_snapshot_is_staged_apart_until_installed<H: Harness>() {
    // receive_snapshot changes nothing the storage holds; a finished sink reads back what was
    // written, and installing it (streamed) is an ordinary apply_snapshot.
    let mut h = H::new();
    h.s().append(&ents(1, 10, 1)).unwrap();
    let meta = SnapshotMetadata { index: 40, term: 3, conf_state: conf(&[1, 2, 3]) };
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut sink = h.s().receive_snapshot(&meta).unwrap();
    for piece in data.chunks(100_000) {
        sink.write_all(piece).unwrap();
    }
    assert!(matches!(h.s().snapshot(0), Err(Error::SnapshotTemporarilyUnavailable)), "nothing installed yet");
    let staged = sink.finish().unwrap();
    assert_eq!((staged.metadata.clone(), staged.data_len()), (meta.clone(), data.len() as u64));
    assert_eq!(staged.data_crc(), crc32fast::hash(&data));
    assert_eq!((h.s().first_index().unwrap(), h.s().last_index().unwrap()), (1, 10), "staging changes nothing");
    // An abandoned one goes without a trace.
    let mut abandoned = h.s().receive_snapshot(&meta).unwrap();
    abandoned.write_all(b"partial").unwrap();
    drop(abandoned);
    h.s().apply_snapshot(&staged.metadata, &mut staged.reader().unwrap()).unwrap();
    drop(staged);
    twice(&mut h, |s| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (41, 40));
        let snap = s.snapshot(0).unwrap();
        assert_eq!(snap.metadata, meta);
        assert_eq!(snap.read_to_vec().unwrap(), data);
    });
}

macro_rules! suite {
    ($($rule:ident),* $(,)?) => {
        mod mem {
            $( #[test] fn $rule() { super::$rule::<super::Mem>(); } )*
        }
        mod disk {
            $( #[test] fn $rule() { super::$rule::<super::Disk>(); } )*
        }
    };
}

suite!(
    fresh_storage_is_empty,
    append_and_read_back,
    conflicting_append_truncates_the_suffix,
    append_rule_violations_are_typed,
    entries_page_by_max_bytes,
    entries_bounds_are_typed,
    term_around_compacted_indexes,
    compaction_limits,
    create_snapshot_and_read_it,
    snapshot_is_unavailable_while_being_made,
    apply_snapshot_restarts_the_log,
    apply_snapshot_replaces_a_different_history,
    older_snapshots_are_out_of_date,
    hard_state_and_conf_state_persist,
    hard_state_rules_are_enforced,
    a_snapshot_handle_pins_the_entries_after_it,
    a_received_snapshot_is_staged_apart_until_installed,
);
