//! Property test: random sequences of append (with Raft overwrites), sync, compact, reset,
//! reopen, and a crash that tears the last unsynced write at a random byte, checked against a
//! plain in-memory model after every step, on small segments so that rotation and sealing happen
//! often. Set PROPTEST_CASES for longer runs.

mod common;

use common::segment_files;

use keel::Error;
use keel::wal::{Log, LogOptions, NewEntry};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries starting `back` entries below last_index + 1.
    Append {
        back: u64,
        count: u64,
        len: usize,
    },
    Sync,
    /// Compact to first_index + `ahead` (clamped to last_index + 1).
    Compact {
        ahead: u64,
    },
    Reset {
        ahead: u64,
    },
    Reopen,
    /// If the previous step was an unsynced append within one segment: crash, keeping only the
    /// first `permille`/1000 of its bytes, then reopen.
    TearLastAppend {
        permille: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..6, 1u64..20, 0usize..700).prop_map(|(back, count, len)| Op::Append { back, count, len }),
        2 => Just(Op::Sync),
        2 => (0u64..40).prop_map(|ahead| Op::Compact { ahead }),
        1 => (0u64..50).prop_map(|ahead| Op::Reset { ahead }),
        2 => Just(Op::Reopen),
        2 => (0u64..1000).prop_map(|permille| Op::TearLastAppend { permille }),
    ]
}

#[derive(Debug, Default, Clone)]
struct Model {
    first: u64,
    prev_term: Option<u64>,
    entries: Vec<(u64, Vec<u8>)>, // (term, payload) from `first`
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }
}

/// What the last append left behind, for tearing it.
struct LastAppend {
    before: Model,
    files: Vec<std::path::PathBuf>,
    last_bytes: Vec<u8>,
    entry_len: usize,
}

fn bytes_for(index: u64, term: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize ^ (term as usize * 131) ^ i) as u8).collect()
}

fn check(log: &Log, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.first_index(), m.first);
    prop_assert_eq!(log.last_index(), m.last());
    for (i, (term, payload)) in m.entries.iter().enumerate() {
        let e = log.entry(m.first + i as u64).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(e.term, *term);
        prop_assert_eq!(&*e.payload, &payload[..]);
    }
    if let Some(t) = m.prev_term {
        prop_assert_eq!(log.term(m.first - 1).ok(), Some(t));
    }
    prop_assert!(matches!(log.entry(m.last() + 1), Err(Error::Unavailable { .. })), "unexpected result");
    if m.first > 1 && m.prev_term.is_none() {
        prop_assert!(matches!(log.term(m.first - 1), Err(Error::Compacted { .. })), "unexpected result");
    }
    if m.first > 1 {
        prop_assert!(matches!(log.entry(m.first - 1), Err(Error::Compacted { .. })), "unexpected result");
    }
    let all = log.entries(m.first, m.last() + 1, u64::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(all.len(), m.entries.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions { segment_bytes: 8192, ..LogOptions::default() };
        let (mut log, _) = Log::open(dir.path(), opts.clone()).unwrap();
        let mut m = Model { first: 1, prev_term: Some(0), entries: Vec::new() };
        let mut term = 1;
        let mut last_append: Option<LastAppend> = None;
        for op in ops {
            let previous = last_append.take();
            match op {
                Op::Append { back, count, len } => {
                    let files = segment_files(dir.path());
                    last_append = Some(LastAppend {
                        before: m.clone(),
                        last_bytes: std::fs::read(files.last().unwrap()).unwrap(),
                        files,
                        entry_len: len,
                    });
                    let start = (m.last() + 1).saturating_sub(back).max(m.first);
                    term += 1;
                    let payloads: Vec<Vec<u8>> = (0..count).map(|k| bytes_for(start + k, term, len)).collect();
                    let entries: Vec<NewEntry<'_>> = payloads
                        .iter()
                        .enumerate()
                        .map(|(k, p)| NewEntry { index: start + k as u64, term, payload: p })
                        .collect();
                    log.append(&entries).unwrap();
                    m.entries.truncate((start - m.first) as usize);
                    m.entries.extend(payloads.into_iter().map(|p| (term, p)));
                }
                Op::Sync => log.sync().unwrap(),
                Op::Compact { ahead } => {
                    let to = (m.first + ahead).min(m.last() + 1);
                    log.compact(to).unwrap();
                    if to > m.first {
                        let drop = (to - m.first) as usize;
                        m.prev_term = Some(m.entries[drop - 1].0);
                        m.entries.drain(..drop);
                        m.first = to;
                    }
                }
                Op::Reset { ahead } => {
                    let to = m.last() + 1 + ahead;
                    term += 1;
                    log.reset(to, term).unwrap();
                    m.entries.clear();
                    m.first = to;
                    m.prev_term = Some(term);
                }
                Op::Reopen => {
                    drop(log);
                    let (reopened, report) = Log::open(dir.path(), opts.clone()).unwrap();
                    prop_assert!(report.truncations.is_empty(), "{}", report);
                    log = reopened;
                }
                Op::TearLastAppend { permille } => {
                    let Some(prev) = previous else { continue };
                    if segment_files(dir.path()) != prev.files {
                        continue; // the append rotated, which synced part of it
                    }
                    drop(log);
                    let path = prev.files.last().unwrap();
                    let mut bytes = std::fs::read(path).unwrap();
                    let start = prev.last_bytes.iter().zip(&bytes).position(|(a, b)| a != b).unwrap();
                    let end = bytes.len() - prev.last_bytes.iter().rev().zip(bytes.iter().rev()).position(|(a, b)| a != b).unwrap();
                    let cut = start + (end - start) * permille as usize / 1000;
                    bytes[cut..end].fill(0);
                    std::fs::write(path, &bytes).unwrap();
                    // A write is recovered whole or not at all. Its last record survives when
                    // its header and payload lie before the cut (padding is not checksummed).
                    let record = 40 + prev.entry_len.div_ceil(8) * 8;
                    let count = (end - start).div_ceil(record);
                    let whole = (count - 1) * record + 40 + prev.entry_len <= cut - start;
                    let kept = if whole { count } else { 0 };
                    let start_index = {
                        // Index of the first entry of the torn append: where `m` and `before` part.
                        let mut i = prev.before.first.max(m.first);
                        while i <= prev.before.last().min(m.last())
                            && prev.before.entries[(i - prev.before.first) as usize] == m.entries[(i - m.first) as usize]
                        {
                            i += 1;
                        }
                        i
                    };
                    // The truncation of a conflicting suffix travels with the first new record.
                    let mut expect = prev.before.clone();
                    if kept > 0 {
                        expect.entries.truncate((start_index - expect.first) as usize);
                        let from = (start_index - m.first) as usize;
                        expect.entries.extend(m.entries[from..from + kept].iter().cloned());
                    }
                    m = expect;
                    let (reopened, report) = Log::open(dir.path(), opts.clone()).unwrap();
                    prop_assert!(report.truncations.len() <= 1, "{}", report);
                    log = reopened;
                }
            }
            check(&log, &m)?;
        }
        prop_assert!(log.verify().is_ok());
    }
}
