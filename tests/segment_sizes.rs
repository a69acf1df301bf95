//! Property test: random segment sizes (valid and not), reopens with other sizes, preparation
//! modes and entry sizes near and above `limits::payload_bytes_max`, through `Log`, `SharedLog`
//! and `DiskStorage`. Nothing may panic (a panic fails the case), every refusal must be a typed
//! error (`InvalidArgument` for a bad size or an oversized entry, nothing else), and every
//! acknowledged entry must read back, before and after each reopen. Set PROPTEST_CASES for
//! longer runs.

use keel::Error;
use keel::limits::{self, payload_bytes_max};
use keel::storage::{DiskStorage, Entry, Storage, StorageMut, StorageOptions};
use keel::wal::{GroupCommitOptions, Log, LogOptions, NewEntry, OwnedNewEntry, SegmentPreparation, SharedLog};
use proptest::prelude::*;
use std::path::Path;

/// Valid segment sizes, small enough to test quickly.
const SIZES: [u64; 5] = [4096, 8192, 12 * 1024, 16 * 1024, 64 * 1024];
/// Sizes `LogOptions` must refuse with `InvalidArgument`.
const BAD_SIZES: [u64; 5] = [0, 4095, 5000, limits::SEGMENT_BYTES_MAX + 4096, u64::MAX];

#[derive(Debug, Clone, Copy)]
enum Api {
    Log,
    Shared,
    Storage,
}

#[derive(Debug, Clone, Copy)]
enum Len {
    Small(usize),
    /// `payload_bytes_max` of the size the log was opened with, plus this (may be above).
    NearMax(i64),
    /// `payload_bytes_max` of another size, plus this.
    NearMaxOf(u64, i64),
}

#[derive(Debug, Clone)]
enum Op {
    /// `count` entries of `len` payload bytes, starting `back` entries below last_index + 1.
    Append { back: u64, count: u64, len: Len },
    /// Reopen with this size (valid or not) and preparation.
    Reopen { segment_bytes: u64, preparation: SegmentPreparation },
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![6 => prop::sample::select(&SIZES[..]), 1 => prop::sample::select(&BAD_SIZES[..])]
}

fn preparation() -> impl Strategy<Value = SegmentPreparation> {
    prop::sample::select(vec![SegmentPreparation::Auto, SegmentPreparation::ZeroFill, SegmentPreparation::Fallocate])
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        3 => (0usize..600).prop_map(Len::Small),
        2 => (-24i64..=16).prop_map(Len::NearMax),
        2 => (prop::sample::select(&SIZES[..]), -24i64..=16).prop_map(|(s, d)| Len::NearMaxOf(s, d)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..3, 1u64..4, len()).prop_map(|(back, count, len)| Op::Append { back, count, len }),
        2 => (size(), preparation()).prop_map(|(segment_bytes, preparation)| Op::Reopen { segment_bytes, preparation }),
    ]
}

/// The log (or storage) under test, opened through one of the three APIs.
enum Handle {
    Log(Box<Log>),
    Shared(SharedLog),
    Storage(Box<DiskStorage>),
}

/// Every entry of a log, from its first index: (term, payload).
type Entries = Vec<(u64, Vec<u8>)>;

impl Handle {
    fn open(api: Api, dir: &Path, log: LogOptions) -> keel::Result<Handle> {
        Ok(match api {
            Api::Log => Handle::Log(Box::new(Log::open(dir, log)?.0)),
            Api::Shared => Handle::Shared(SharedLog::new(Log::open(dir, log)?.0, GroupCommitOptions::default())?),
            Api::Storage => {
                Handle::Storage(Box::new(DiskStorage::open(dir, StorageOptions { log, ..Default::default() })?.0))
            }
        })
    }

    /// The largest payload an entry may carry (the storage spends one byte on the entry type).
    fn payload_max(&self, segment_bytes: u64) -> u64 {
        match self {
            Handle::Storage(_) => payload_bytes_max(segment_bytes) - 1,
            _ => payload_bytes_max(segment_bytes),
        }
    }

    fn append(&mut self, start: u64, term: u64, payloads: &[Vec<u8>]) -> keel::Result<()> {
        let index = |k: usize| start + k as u64;
        match self {
            Handle::Log(log) => {
                let e: Vec<NewEntry<'_>> =
                    payloads.iter().enumerate().map(|(k, p)| NewEntry { index: index(k), term, payload: p }).collect();
                log.append_and_sync(&e)
            }
            Handle::Shared(s) => s.append(
                payloads
                    .iter()
                    .enumerate()
                    .map(|(k, p)| OwnedNewEntry { index: index(k), term, payload: p.clone() })
                    .collect(),
            ),
            Handle::Storage(s) => s.append(
                &payloads.iter().enumerate().map(|(k, p)| Entry::new(index(k), term, p.clone())).collect::<Vec<_>>(),
            ),
        }
    }

    /// (first, last, every entry as (term, payload)).
    fn read_all(&self) -> keel::Result<(u64, u64, Entries)> {
        let from_log = |log: &Log| -> keel::Result<_> {
            let (first, last) = (log.first_index(), log.last_index());
            let e = log.entries(first, last + 1, u64::MAX)?;
            Ok((first, last, e.into_iter().map(|e| (e.term, e.payload.to_vec())).collect()))
        };
        match self {
            Handle::Log(log) => from_log(log),
            Handle::Shared(s) => from_log(&s.read()),
            Handle::Storage(s) => {
                let (first, last) = (s.first_index()?, s.last_index()?);
                let e = s.entries(first, last + 1, u64::MAX)?;
                Ok((first, last, e.into_iter().map(|e| (e.term, e.data.to_vec())).collect()))
            }
        }
    }
}

fn bytes_for(index: u64, term: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize ^ (term as usize * 131) ^ i) as u8).collect()
}

fn check(h: &Handle, model: &[(u64, Vec<u8>)]) -> Result<(), TestCaseError> {
    let (first, last, got) = h.read_all().map_err(|e| TestCaseError::fail(format!("read back: {e}")))?;
    prop_assert_eq!(first, 1);
    prop_assert_eq!(last, model.len() as u64);
    prop_assert!(got == model, "entries read back differ from those acknowledged");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_segment_size_and_entry_size_gives_typed_errors_and_keeps_acknowledged_entries(
        api in prop::sample::select(vec![Api::Log, Api::Shared, Api::Storage]),
        first_size in prop::sample::select(&SIZES[..]),
        first_preparation in preparation(),
        ops in prop::collection::vec(op(), 1..16),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = |segment_bytes, preparation| LogOptions { segment_bytes, preparation, ..LogOptions::default() };
        let mut segment_bytes = first_size;
        let mut preparation = first_preparation;
        let mut h = Handle::open(api, dir.path(), options(segment_bytes, preparation)).unwrap();
        let mut model: Entries = Vec::new();
        let mut term = 1;
        for op in ops {
            match op {
                Op::Append { back, count, len } => {
                    let max = h.payload_max(segment_bytes);
                    let len = match len {
                        Len::Small(n) => n as u64,
                        Len::NearMax(d) => max.saturating_add_signed(d),
                        Len::NearMaxOf(s, d) => h.payload_max(s).saturating_add_signed(d),
                    };
                    let start = (model.len() as u64 + 1).saturating_sub(back).max(1);
                    term += 1;
                    let payloads: Vec<Vec<u8>> =
                        (0..count).map(|k| bytes_for(start + k, term, len as usize)).collect();
                    match h.append(start, term, &payloads) {
                        Ok(()) => {
                            prop_assert!(len <= max, "an entry of {} bytes was accepted; at most {} fit", len, max);
                            model.truncate(start as usize - 1);
                            model.extend(payloads.into_iter().map(|p| (term, p)));
                        }
                        Err(Error::InvalidArgument(_)) if len > max => {}
                        Err(e) => prop_assert!(false, "append of {} x {} bytes (max {}): {:?}", count, len, max, e),
                    }
                }
                Op::Reopen { segment_bytes: s, preparation: p } => {
                    drop(h);
                    h = match Handle::open(api, dir.path(), options(s, p)) {
                        Ok(reopened) => {
                            prop_assert!(SIZES.contains(&s), "segment_bytes {} was accepted", s);
                            (segment_bytes, preparation) = (s, p);
                            reopened
                        }
                        Err(Error::InvalidArgument(_)) if BAD_SIZES.contains(&s) => {
                            Handle::open(api, dir.path(), options(segment_bytes, preparation)).unwrap()
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("reopen with segment_bytes {s}: {e:?}"))),
                    };
                }
            }
            check(&h, &model)?;
        }
        drop(h);
        let h = Handle::open(api, dir.path(), options(segment_bytes, preparation)).unwrap();
        check(&h, &model)?;
        let verified = match &h {
            Handle::Log(log) => log.verify(),
            Handle::Shared(s) => s.read().verify(),
            Handle::Storage(s) => s.log().verify(),
        };
        prop_assert!(verified.is_ok(), "{:?}", verified);
    }
}
