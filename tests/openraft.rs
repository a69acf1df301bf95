//! keel as openraft's log store (`keel::openraft`, feature `openraft`): openraft's own storage
//! conformance suite, a reopen that must find everything as it was left, and a failed fdatasync
//! that must fail the flush and latch the store.
#![cfg(feature = "openraft")]

#[path = "../examples/support/kv_state_machine.rs"]
#[allow(dead_code)] // `get` is for the example
mod kv_state_machine;

use keel::openraft::KeelLogStore;
use keel::wal::LogOptions;
use keel_harness::sim::SimFileSystem;
use kv_state_machine::{KvStateMachine, NodeId, Request, TypeConfig};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError, Vote};
use std::sync::Arc;

type Store = KeelLogStore<TypeConfig>;

/// A fresh store in a temporary directory, with a small segment size so that the suite's logs
/// span several segments.
struct Builder;

fn small_segments() -> LogOptions {
    LogOptions { segment_bytes: 64 << 10, ..LogOptions::default() }
}

impl StoreBuilder<TypeConfig, Store, KvStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, Store, KvStateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path(), small_segments()).expect("open store");
        Ok((dir, store, KvStateMachine::default()))
    }
}

/// openraft's `Suite::test_all` runs every storage test openraft has against fresh stores.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite passes");
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let set = Request::Set { key: format!("k{index}"), value: format!("v{index}@{term}") };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(set) }
}

fn ids(entries: &[Entry<TypeConfig>]) -> Vec<LogId<NodeId>> {
    entries.iter().map(|e| e.log_id).collect()
}

/// What was saved (vote, committed, a purge, a truncation) is what a reopened store reports,
/// and an append after the truncation replaces the truncated entries for good.
#[tokio::test]
async fn reopened_store_sees_what_was_saved() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let open = || Store::open(dir.path(), small_segments());
    {
        let mut s = open()?;
        s.save_vote(&Vote::new_committed(2, 1)).await?;
        s.blocking_append((0..10).map(|i| entry(1, i))).await?;
        s.blocking_append((10..20).map(|i| entry(2, i))).await?;
        s.save_committed(Some(log_id(2, 12))).await?;
        s.purge(log_id(1, 4)).await?;
        s.truncate(log_id(2, 15)).await?;
        let state = s.get_log_state().await?;
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 4)), Some(log_id(2, 14))));
    }
    {
        let mut s = open()?;
        assert_eq!(s.read_vote().await?, Some(Vote::new_committed(2, 1)));
        assert_eq!(s.read_committed().await?, Some(log_id(2, 12)));
        let state = s.get_log_state().await?;
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 4)), Some(log_id(2, 14))));
        let got = s.try_get_log_entries(0..100).await?;
        let want: Vec<_> = (5..10).map(|i| log_id(1, i)).chain((10..15).map(|i| log_id(2, i))).collect();
        assert_eq!(ids(&got), want, "purged and truncated entries are never returned");
        assert_eq!(got[0], entry(1, 5));
        // The truncated range is written again by a new leader (term 3).
        s.blocking_append((15..17).map(|i| entry(3, i))).await?;
        let mut reader = s.get_log_reader().await;
        assert_eq!(ids(&reader.try_get_log_entries(14..).await?), vec![log_id(2, 14), log_id(3, 15), log_id(3, 16)]);
    }
    let mut s = open()?;
    let state = s.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(log_id(3, 16)), "the fence was lifted once the new entries were durable");
    assert_eq!(s.try_get_log_entries(15..17).await?, vec![entry(3, 15), entry(3, 16)]);
    Ok(())
}

/// A purge past the last entry (after a snapshot install) empties the log, and a reopen agrees.
#[tokio::test]
async fn purge_past_the_last_entry_restarts_the_log() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    {
        let mut s = Store::open(dir.path(), small_segments())?;
        s.blocking_append((0..3).map(|i| entry(1, i))).await?;
        s.truncate(log_id(1, 1)).await?;
        s.purge(log_id(4, 9)).await?;
        let state = s.get_log_state().await?;
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(4, 9)), Some(log_id(4, 9))));
    }
    let mut s = Store::open(dir.path(), small_segments())?;
    let state = s.get_log_state().await?;
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(4, 9)), Some(log_id(4, 9))));
    assert!(s.try_get_log_entries(0..20).await?.is_empty());
    s.blocking_append([entry(4, 10)]).await?;
    drop(s);
    let mut s = Store::open(dir.path(), small_segments())?;
    assert_eq!(s.try_get_log_entries(0..20).await?, vec![entry(4, 10)]);
    Ok(())
}

/// A failed fdatasync (the simulated disk's EIO) fails the flush callback of the append it
/// covers, and the store then refuses every write, without retrying the sync.
#[tokio::test]
async fn failed_fsync_fails_the_flush_and_latches() -> Result<(), Box<dyn std::error::Error>> {
    let fs = SimFileSystem::new();
    let options = LogOptions { segment_bytes: 64 << 10, fs: Arc::new(fs.clone()), ..LogOptions::default() };
    let mut s = Store::open("/keel", options.clone())?;
    s.blocking_append([entry(1, 0)]).await?;
    fs.fail_nth_sync(1);
    let err = s.blocking_append([entry(1, 1)]).await.expect_err("the flush callback reports the failed sync");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    assert!(s.is_failed());
    fs.clear_faults();
    for e in [
        s.blocking_append([entry(1, 2)]).await.expect_err("append refused"),
        s.save_vote(&Vote::new(2, 1)).await.expect_err("vote refused"),
        s.truncate(log_id(1, 0)).await.expect_err("truncate refused"),
    ] {
        assert!(e.to_string().contains("refuses writes"), "{e}");
    }
    drop(s);
    // A reopen starts over from what is durable: entry 0 for certain.
    let mut s = Store::open("/keel", options)?;
    assert_eq!(s.try_get_log_entries(0..1).await?, vec![entry(1, 0)]);
    Ok(())
}
