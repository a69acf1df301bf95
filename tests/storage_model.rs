//! Property test: random sequences of every write call (append with overwrites, HardState,
//! ConfState, create/apply snapshot, compact) plus reopen, run on `DiskStorage` and on
//! `MemStorage` as the model; every read is compared after every step, and every call must
//! succeed or fail the same way on both. Set PROPTEST_CASES for longer runs.

use keel::Error;
use keel::storage::{
    ConfState, DiskStorage, Entry, EntryType, HardState, MemStorage, SnapshotMetadata, Storage, StorageMut,
    StorageOptions,
};
use keel::wal::LogOptions;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { back: u64, count: u64, len: usize, conf: bool },
    SetHardState { term: u64, vote: u64, commit: u64 },
    SetConfState { voters: u64 },
    CreateSnapshot { back: u64, size: usize },
    ApplySnapshot { ahead: i64, size: usize },
    Compact { ahead: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..5, 1u64..12, 0usize..400, any::<bool>()).prop_map(|(back, count, len, conf)| Op::Append { back, count, len, conf }),
        2 => (0u64..50, 0u64..5, 0u64..200).prop_map(|(term, vote, commit)| Op::SetHardState { term, vote, commit }),
        1 => (0u64..6).prop_map(|voters| Op::SetConfState { voters }),
        2 => (0u64..15, 0usize..3000).prop_map(|(back, size)| Op::CreateSnapshot { back, size }),
        1 => (-30i64..30, 0usize..3000).prop_map(|(ahead, size)| Op::ApplySnapshot { ahead, size }),
        2 => (0u64..30).prop_map(|ahead| Op::Compact { ahead }),
        2 => Just(Op::Reopen),
    ]
}

fn options() -> StorageOptions {
    StorageOptions { log: LogOptions { segment_bytes: 8192, ..LogOptions::default() }, ..StorageOptions::default() }
}

fn same<T: std::fmt::Debug + PartialEq>(
    disk: keel::Result<T>,
    mem: keel::Result<T>,
    what: &str,
) -> Result<(), TestCaseError> {
    match (&disk, &mem) {
        (Ok(d), Ok(m)) => prop_assert_eq!(d, m, "{}", what),
        (Err(d), Err(m)) => {
            prop_assert_eq!(std::mem::discriminant(d), std::mem::discriminant(m), "{}: disk {:?}, mem {:?}", what, d, m)
        }
        _ => prop_assert!(false, "{}: disk {:?}, mem {:?}", what, disk, mem),
    }
    Ok(())
}

fn compare(d: &DiskStorage, m: &MemStorage) -> Result<(), TestCaseError> {
    same(d.initial_state(), m.initial_state(), "initial_state")?;
    same(d.first_index(), m.first_index(), "first_index")?;
    same(d.last_index(), m.last_index(), "last_index")?;
    let (first, last) = (m.first_index().unwrap(), m.last_index().unwrap());
    for i in first.saturating_sub(2)..=last + 1 {
        same(d.term(i), m.term(i), &format!("term({i})"))?;
    }
    for max in [0, 300, u64::MAX] {
        same(d.entries(first, last + 1, max), m.entries(first, last + 1, max), "entries")?;
    }
    let (ds, ms) = (d.snapshot(0), m.snapshot(0));
    same(
        ds.as_ref().map(|s| s.metadata.clone()).map_err(clone_err),
        ms.as_ref().map(|s| s.metadata.clone()).map_err(clone_err),
        "snapshot",
    )?;
    if let (Ok(ds), Ok(ms)) = (ds, ms) {
        prop_assert_eq!(ds.read_to_vec().unwrap(), ms.read_to_vec().unwrap());
    }
    Ok(())
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::SnapshotTemporarilyUnavailable => Error::SnapshotTemporarilyUnavailable,
        other => Error::InvalidArgument(other.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn disk_storage_matches_mem_storage(ops in prop::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, _) = DiskStorage::open(dir.path(), options()).unwrap();
        let mut m = MemStorage::new();
        let mut term = 1;
        for op in ops {
            let last = m.last_index().unwrap();
            let first = m.first_index().unwrap();
            match op {
                Op::Append { back, count, len, conf } => {
                    term += 1;
                    let start = (last + 1).saturating_sub(back).max(1);
                    let es: Vec<Entry> = (start..start + count)
                        .map(|i| Entry {
                            index: i,
                            term,
                            entry_type: if conf { EntryType::ConfChangeV2 } else { EntryType::Normal },
                            data: vec![(i ^ term) as u8; len].into(),
                            context: if i % 4 == 0 { vec![term as u8; 1 + len % 3].into() } else { Default::default() },
                        })
                        .collect();
                    same(d.append(&es), m.append(&es), "append")?;
                }
                Op::SetHardState { term: t, vote, commit } => {
                    let hs = HardState { term: t, vote, commit };
                    same(d.set_hard_state(&hs), m.set_hard_state(&hs), "set_hard_state")?;
                }
                Op::SetConfState { voters } => {
                    let cs = ConfState { voters: (1..=voters).collect(), learners: vec![9], ..ConfState::default() };
                    same(d.set_conf_state(&cs), m.set_conf_state(&cs), "set_conf_state")?;
                }
                Op::CreateSnapshot { back, size } => {
                    let index = last.saturating_sub(back);
                    let data = vec![(index % 251) as u8; size];
                    let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
                    same(d.create_snapshot(index, &cs, &mut &data[..]), m.create_snapshot(index, &cs, &mut &data[..]), "create_snapshot")?;
                }
                Op::ApplySnapshot { ahead, size } => {
                    term += 1;
                    let index = (last as i64 + ahead).max(0) as u64;
                    let meta = SnapshotMetadata { index, term, conf_state: ConfState { voters: vec![1, 4], ..ConfState::default() } };
                    let data = vec![(index % 13) as u8; size];
                    same(d.apply_snapshot(&meta, &mut &data[..]), m.apply_snapshot(&meta, &mut &data[..]), "apply_snapshot")?;
                }
                Op::Compact { ahead } => {
                    let index = first + ahead;
                    same(d.compact(index), m.compact(index), "compact")?;
                }
                Op::Reopen => {
                    drop(d);
                    let (reopened, report) = DiskStorage::open(dir.path(), options()).unwrap();
                    prop_assert!(report.log.truncations.is_empty() && !report.snapshot_install_completed, "{}", report);
                    d = reopened;
                }
            }
            compare(&d, &m)?;
        }
    }
}
