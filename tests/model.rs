//! Property test: random sequences of append (with Raft overwrites), sync, compact, reset and
//! reopen, checked against a plain in-memory model after every step, on small segments so that
//! rotation and sealing happen often. Set PROPTEST_CASES for longer runs.

mod common;

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..6, 1u64..20, 0usize..700).prop_map(|(back, count, len)| Op::Append { back, count, len }),
        2 => Just(Op::Sync),
        2 => (0u64..40).prop_map(|ahead| Op::Compact { ahead }),
        1 => (0u64..50).prop_map(|ahead| Op::Reset { ahead }),
        2 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default)]
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
        for op in ops {
            match op {
                Op::Append { back, count, len } => {
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
            }
            check(&log, &m)?;
        }
        prop_assert!(log.verify().is_ok());
    }
}
