//! Group commit: appends in flight share fdatasyncs, tickets complete in log order, and an
//! injected fdatasync failure fails every later append without leaving any waiter hanging.

mod common;

use common::*;
use keel::Error;
use keel::wal::{GroupCommitOptions, Log, LogOptions, OwnedNewEntry, SharedLog, SyncPolicy, Ticket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn faulty() -> (Arc<FaultyFs>, LogOptions) {
    let faults = Arc::new(FaultyFs::default());
    let opts = LogOptions { fs: Arc::new(FaultyHandle(faults.clone())), ..options(SEGMENT_BYTES) };
    (faults, opts)
}

fn owned(index: u64, term: u64) -> OwnedNewEntry {
    OwnedNewEntry { index, term, payload: payload(index, term) }
}

/// Waits for a ticket, failing the test (instead of hanging it) after 30 s.
fn settle(t: &Ticket) -> keel::Result<()> {
    t.wait_timeout(Duration::from_secs(30)).expect("a waiter hung")
}

#[test]
fn pipelined_appends_share_syncs_and_complete_in_order() {
    // One thread keeps many appends in flight, as a Raft node pipelining its Readys: all are
    // durable, tickets complete in log order, and far fewer fdatasyncs than appends were run.
    let dir = tempfile::tempdir().unwrap();
    let (faults, opts) = faulty();
    let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    let shared = SharedLog::new(log, GroupCommitOptions::default()).unwrap();
    let before = faults.all_syncs.load(Ordering::SeqCst);
    let tickets: Vec<Ticket> = (1..=2000).map(|i| shared.append_async(vec![owned(i, 1)])).collect();
    for t in &tickets {
        settle(t).unwrap();
    }
    let syncs = faults.all_syncs.load(Ordering::SeqCst) - before;
    assert!(syncs < 2000 / 2, "{syncs} fdatasyncs for 2000 appends: no group commit");
    assert_eq!(shared.read().last_index(), 2000);
    drop(shared);
    let (log, _) = Log::open(dir.path(), opts).unwrap();
    check(&log, 1, 2000, |_| 1);
}

#[test]
fn tickets_complete_in_log_order() {
    // Ticket k is never done while an earlier ticket is still pending.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    let shared = SharedLog::new(log, GroupCommitOptions::default()).unwrap();
    let tickets: Vec<Ticket> = (1..=500).map(|i| shared.append_async(vec![owned(i, 1)])).collect();
    for _ in 0..200 {
        let done: Vec<bool> = tickets.iter().map(Ticket::is_done).collect();
        if let Some(first_pending) = done.iter().position(|d| !d) {
            assert!(done[first_pending..].iter().all(|d| !d), "a later ticket completed before an earlier one");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for t in &tickets {
        settle(t).unwrap();
    }
}

#[test]
fn invalid_requests_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    let shared = SharedLog::new(log, GroupCommitOptions::default()).unwrap();
    let a = shared.append_async(vec![owned(1, 1), owned(2, 1)]);
    let gap = shared.append_async(vec![owned(9, 1)]);
    let b = shared.append_async(vec![owned(3, 1)]);
    let truncate = shared.append_async(vec![owned(2, 2)]);
    assert!(matches!(settle(&gap), Err(Error::InvalidArgument(_))));
    assert!(a.is_done(), "a refused request completed before an earlier one");
    settle(&a).unwrap();
    settle(&b).unwrap();
    settle(&truncate).unwrap();
    shared.compact_async(2).wait().unwrap();
    let log = shared.read();
    assert_eq!((log.first_index(), log.last_index()), (2, 2));
    assert_eq!(log.entry(2).unwrap().term, 2);
}

#[test]
fn concurrent_appenders_with_a_failed_fdatasync_never_see_an_ack_after_it() {
    // Proves the failure contract under group commit: 8 threads append; one fdatasync fails
    // and every later one would succeed (the fsyncgate case). By index, results are some Oks
    // then only errors; every acknowledged entry is durable after reopening; no waiter hangs.
    for fail_at in [5u64, 40, 120] {
        let dir = tempfile::tempdir().unwrap();
        let (faults, opts) = faulty();
        let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
        let base = faults.all_syncs.load(Ordering::SeqCst);
        faults.fail_sync_at.store(base + fail_at, Ordering::SeqCst);
        let shared = Arc::new(SharedLog::new(log, GroupCommitOptions::default()).unwrap());
        // The next index and the submission happen under one lock, so queue order is log order.
        let next = Arc::new(Mutex::new(1u64));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (shared, next, results) = (shared.clone(), next.clone(), results.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let (index, ticket) = {
                            let mut n = next.lock().unwrap();
                            let index = *n;
                            *n += 1;
                            (index, shared.append_async(vec![owned(index, 1)]))
                        };
                        let r = settle(&ticket);
                        results.lock().unwrap().push((index, r.is_ok()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut results = results.lock().unwrap().clone();
        results.sort();
        assert_eq!(results.len(), 800);
        let first_err = results.iter().position(|(_, ok)| !ok).expect("the injected failure surfaced");
        assert!(
            results[first_err..].iter().all(|(_, ok)| !ok),
            "an append was acknowledged after the failure (fail_at {fail_at})"
        );
        // Syncs never resumed after the failure.
        assert!(shared.read().is_failed());
        drop(shared);
        let (log, _) = Log::open(dir.path(), opts).unwrap();
        let acked = first_err as u64;
        assert!(log.last_index() >= acked, "acknowledged entries lost: {} < {acked}", log.last_index());
        for e in log.entries(1, acked + 1, u64::MAX).unwrap() {
            assert_eq!(&*e.payload, &payload(e.index, 1)[..]);
        }
    }
}

#[test]
fn interval_and_never_policies_complete_every_ticket() {
    for sync in [SyncPolicy::Interval(Duration::from_millis(5)), SyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
        let shared = SharedLog::new(log, GroupCommitOptions { sync, ..GroupCommitOptions::default() }).unwrap();
        let tickets: Vec<Ticket> = (1..=300).map(|i| shared.append_async(vec![owned(i, 1)])).collect();
        for t in &tickets {
            settle(t).unwrap();
        }
        shared.sync().unwrap();
        drop(shared);
        let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
        check(&log, 1, 300, |_| 1);
    }
}

#[test]
fn dropping_the_shared_log_finishes_what_was_queued() {
    // With max_wait batching on, appends still queued when the SharedLog is dropped are written,
    // synced and completed before the drop returns.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    let options_wait = GroupCommitOptions { max_wait: Some(Duration::from_millis(20)), ..Default::default() };
    let shared = SharedLog::new(log, options_wait).unwrap();
    let tickets: Vec<Ticket> = (1..=50).map(|i| shared.append_async(vec![owned(i, 1)])).collect();
    drop(shared);
    for t in &tickets {
        assert!(t.is_done());
        settle(t).unwrap();
    }
    let (log, _) = Log::open(dir.path(), options(SEGMENT_BYTES)).unwrap();
    check(&log, 1, 50, |_| 1);
}

#[test]
fn an_entry_for_a_larger_new_segment_size_does_not_kill_the_writer() {
    // Proves the writer thread survives an append that fits only the segment size given at
    // reopen, not the empty active segment's (it panicked, and every later request failed).
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(dir.path(), options(4096)).unwrap());
    let (log, _) = Log::open(dir.path(), options(16 * 1024)).unwrap();
    let shared = SharedLog::new(log, GroupCommitOptions::default()).unwrap();
    let big = OwnedNewEntry { index: 1, term: 1, payload: vec![7u8; 8000] };
    settle(&shared.append_async(vec![big.clone()])).unwrap();
    settle(&shared.append_async(vec![owned(2, 1)])).unwrap();
    assert_eq!(&*shared.read().entry(1).unwrap().payload, &big.payload[..]);
    assert_eq!(shared.read().last_index(), 2);
}
