//! The four ways a restart after a process kill used to build on bytes that were only in the
//! page cache (issue 11), and a rotation under group commit, each replayed on the simulated disk: a crash image is captured before
//! every sync of one operation; for each, the process is killed there (`restart`: the page cache
//! is kept), the storage reopens and does synced work that it acknowledges, and then power is
//! lost at every sync of that restarted run and at its end. Every entry acknowledged before the
//! kill, every entry and HardState the restarted node read at open (it builds on them), and
//! everything acknowledged after must survive, and open must succeed.
//!
//! `tests/torture.rs` checks the same future on random workloads; these name the four cases.

use keel::storage::{DiskStorage, Entry, HardState, Storage, StorageMut, StorageOptions};
use keel::wal::{GroupCommitOptions, Log, LogOptions, OwnedNewEntry, SharedLog};
use keel_harness::sim::{CrashImage, FaultModel, SimFileSystem};

const DIR: &str = "/keel";
/// Power-loss states made from each image of the restarted run.
const STATES_PER_IMAGE: u64 = 8;

fn options(fs: &SimFileSystem) -> StorageOptions {
    let log = LogOptions { segment_bytes: 8192, fs: std::sync::Arc::new(fs.clone()), ..LogOptions::default() };
    // A small reserve: the simulated disk copies whole files into its crash images.
    StorageOptions { log, reserve_bytes: 16 << 10, ..StorageOptions::default() }
}

fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| Entry::new(i, term, vec![i as u8; 700])).collect()
}

/// Appends `count` entries after the last one (the restarted log may or may not hold what the
/// interrupted operation wrote).
fn append_next(s: &mut DiskStorage, count: u64) {
    let next = s.last_index().unwrap() + 1;
    let term = s.initial_state().unwrap().hard_state.term.max(1);
    s.append(&entries(next, next + count - 1, term)).unwrap();
}

/// What must survive a power loss: these entries (index, term, payload), and at least this
/// term and vote.
#[derive(Debug, Clone)]
struct MustHold {
    entries: Vec<(u64, u64, Vec<u8>)>,
    term_vote: (u64, u64),
}

impl MustHold {
    /// What a `DiskStorage` holds from index `from` on.
    fn of(s: &DiskStorage, from: u64) -> MustHold {
        let hs = s.initial_state().unwrap().hard_state;
        let from = from.max(s.first_index().unwrap());
        let entries = s.entries(from, s.last_index().unwrap() + 1, u64::MAX).unwrap();
        let entries = entries.into_iter().map(|e| (e.index, e.term, e.data.to_vec())).collect();
        MustHold { entries, term_vote: (hs.term, hs.vote) }
    }

    /// What a log behind group commit holds from index `from` on.
    fn of_log(s: &SharedLog, from: u64) -> MustHold {
        let log = s.read();
        let from = from.max(log.first_index());
        let entries = log.entries(from, log.last_index() + 1, u64::MAX).unwrap();
        MustHold {
            entries: entries.into_iter().map(|e| (e.index, e.term, e.payload.to_vec())).collect(),
            term_vote: (0, 0),
        }
    }

    /// Whether `got` (what a recovered storage holds) keeps all of this.
    fn check(&self, got: &MustHold) -> Result<(), String> {
        let ((term, vote), (got_term, got_vote)) = (self.term_vote, got.term_vote);
        if got_term < term || (got_term == term && got_vote != vote) {
            return Err(format!("HardState went back to term {got_term} vote {got_vote} from term {term} vote {vote}"));
        }
        for e in &self.entries {
            if !got.entries.contains(e) {
                return Err(format!("acknowledged entry {} (term {}) lost", e.0, e.1));
            }
        }
        Ok(())
    }
}

/// Runs `setup` (all synced), then `during` capturing an image before each of its syncs; for
/// each image: kill, reopen, `work`, and power-loss states across that restarted run. `read`
/// says what an opened storage holds from `keep_from` on (below it, `during` may have
/// compacted entries). Returns the states checked and the failures found, each described.
fn kill_then_work_then_power_loss<S>(
    open: impl Fn(&SimFileSystem) -> keel::Result<S>,
    read: impl Fn(&S, u64) -> MustHold,
    setup: impl Fn(&mut S),
    during: impl Fn(&mut S),
    keep_from: u64,
    work: impl Fn(&mut S),
) -> (usize, Vec<String>) {
    let fs = SimFileSystem::new();
    let mut s = open(&fs).unwrap();
    setup(&mut s);
    let before_kill = read(&s, keep_from);
    fs.capture_crash_points(true, 0, 1);
    during(&mut s);
    let kill_images: Vec<CrashImage> = fs.take_captures().into_iter().map(|(_, image)| image).collect();
    drop(s);
    let mut failures = Vec::new();
    let mut states = 0;
    for (k, image) in kill_images.iter().enumerate() {
        let restarted = image.restart().unwrap();
        restarted.capture_crash_points(true, 0, 2);
        restarted.set_tag(0);
        let mut s = match open(&restarted) {
            Ok(opened) => opened,
            Err(e) => {
                failures.push(format!("kill at sync {k}: the restart refused to open: {e}"));
                continue;
            }
        };
        let read_at_open = read(&s, keep_from);
        restarted.set_tag(1);
        work(&mut s);
        let after_work = read(&s, keep_from);
        let mut images = restarted.take_captures();
        images.push((2, restarted.image()));
        drop(s);
        for (tag, image) in &images {
            // Power lost during the open: only what was acknowledged before the kill counts;
            // during the work: what the restarted node read; at the end: all of the work too.
            let must = match tag {
                0 => &before_kill,
                1 => &read_at_open,
                _ => &after_work,
            };
            for seed in 0..STATES_PER_IMAGE {
                states += 1;
                let lost = image.materialize(seed, &FaultModel::default()).unwrap();
                let outcome = open(&lost)
                    .map_err(|e| format!("refused to open: {e}"))
                    .and_then(|s| must.check(&read(&s, keep_from)));
                if let Err(e) = outcome {
                    failures.push(format!("kill at sync {k}, power lost at stage {tag} (seed {seed}): {e}"));
                }
            }
        }
    }
    (states, failures)
}

/// [`kill_then_work_then_power_loss`] on a `DiskStorage`.
fn storage_futures(
    setup: impl Fn(&mut DiskStorage),
    during: impl Fn(&mut DiskStorage),
    keep_from: u64,
    work: impl Fn(&mut DiskStorage),
) -> (usize, Vec<String>) {
    let open = |fs: &SimFileSystem| DiskStorage::open(DIR, options(fs)).map(|(s, _)| s);
    kill_then_work_then_power_loss(open, MustHold::of, setup, during, keep_from, work)
}

fn assert_none(what: &str, (states, failures): (usize, Vec<String>)) {
    assert!(states > 0, "{what}: no state was checked");
    eprintln!("{what}: {states} power-loss states after a kill and more work, {} bad", failures.len());
    assert!(
        failures.is_empty(),
        "{what}: {} of {states} power-loss states lost acknowledged data or refused to open; first: {}",
        failures.len(),
        failures[0]
    );
}

/// Killed between a rotation's rename of `next.prep` and the directory fsync: the restart
/// appended into the renamed segment without syncing the directory, and a power loss undid the
/// rename under acknowledged entries.
#[test]
fn rotation_rename_not_yet_durable_in_the_directory() {
    let outcome = storage_futures(
        |s| s.append(&entries(1, 9, 1)).unwrap(),
        |s| s.append(&entries(10, 11, 1)).unwrap(), // fits the first segment no longer
        1,
        |s| append_next(s, 2),
    );
    assert_none("rotation", outcome);
}

/// Killed between a segment's footer (seal) and its fdatasync: the restart took the segment as
/// sealed and appended to the next one; a power loss took the footer and left a later segment
/// with records after an unsealed one.
#[test]
fn seal_not_yet_durable() {
    let outcome = storage_futures(
        |s| {
            for i in 1..=10 {
                s.append(&entries(i, i, 1)).unwrap();
            }
        },
        |s| s.append(&entries(11, 12, 1)).unwrap(),
        1,
        |s| append_next(s, 4),
    );
    assert_none("seal", outcome);
}

/// Killed between writing a HardState slot and its fdatasync: the restart read the new term and
/// vote and granted the vote again; a power loss took the node back to the old term with no
/// vote, free to vote for another candidate in the same term.
#[test]
fn hard_state_vote_not_yet_durable() {
    let outcome = storage_futures(
        |s| {
            s.append(&entries(1, 3, 1)).unwrap();
            s.set_hard_state(&HardState { term: 1, vote: 0, commit: 2 }).unwrap();
        },
        |s| s.set_hard_state(&HardState { term: 2, vote: 5, commit: 2 }).unwrap(),
        1,
        |s| {
            let hs = s.initial_state().unwrap().hard_state;
            s.set_hard_state(&hs).unwrap(); // the vote granted again: nothing new to write
            append_next(s, 1);
        },
    );
    assert_none("hard state", outcome);
}

/// Killed between a compaction marker and its fdatasync: the restart removed the segments below
/// the marker and synced the directory before syncing the marker; a power loss in between kept
/// the removals and lost the marker.
#[test]
fn compaction_removals_before_the_marker_is_durable() {
    let outcome = storage_futures(
        |s| {
            for i in 1..=30 {
                s.append(&entries(i, i, 1)).unwrap();
            }
        },
        |s| s.compact(25).unwrap(),
        25,
        |s| append_next(s, 2),
    );
    assert_none("compaction", outcome);
}

/// A process kill never moves commit backwards: a commit-only change is written (without an
/// fdatasync), so the restarted open reads it, and syncs it, so a later power loss keeps it. (It
/// used to be kept in memory until the next synced change: the restart came back at commit 5,
/// and a raft-rs application passing its applied index 15 to `RawNode::new` panics on that.)
#[test]
fn a_kill_keeps_commit_only_changes() {
    let fs = SimFileSystem::new();
    let (mut s, _) = DiskStorage::open(DIR, options(&fs)).unwrap();
    s.append(&entries(1, 20, 1)).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 5 }).unwrap();
    for commit in 6..=15 {
        s.set_hard_state(&HardState { term: 1, vote: 1, commit }).unwrap();
    }
    let killed = fs.image().restart().unwrap(); // taken before the drop, which would sync
    drop(s);
    let (s, _) = DiskStorage::open(DIR, options(&killed)).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 15, "the kill moved commit backwards");
    let image = killed.image();
    drop(s);
    for seed in 0..16 {
        let lost = image.materialize(seed, &FaultModel::default()).unwrap();
        let (s, _) = DiskStorage::open(DIR, options(&lost)).unwrap();
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 15, "seed {seed}: the reopen did not sync it");
    }
}

/// A rotation under group commit: appends from several tickets in flight share syncs while the
/// log seals a segment and installs the next; killed at any of those syncs, restarted, appending
/// again through group commit, then power lost.
#[test]
fn rotation_under_group_commit() {
    let open = |fs: &SimFileSystem| {
        let options = LogOptions { segment_bytes: 8192, fs: std::sync::Arc::new(fs.clone()), ..LogOptions::default() };
        let (log, _) = Log::open(format!("{DIR}/log"), options)?;
        SharedLog::new(log, GroupCommitOptions::default())
    };
    // Eight appends in flight at once, each of one 700-byte entry, after the last index.
    let burst = |s: &mut SharedLog| {
        let next = s.read().last_index() + 1;
        let tickets: Vec<_> = (next..next + 8)
            .map(|i| s.append_async(vec![OwnedNewEntry { index: i, term: 1, payload: vec![i as u8; 700] }]))
            .collect();
        for t in tickets {
            t.wait().unwrap();
        }
    };
    let outcome = kill_then_work_then_power_loss(open, MustHold::of_log, burst, burst, 1, burst);
    assert_none("group commit", outcome);
}

/// Found by `rotation_under_group_commit`: a seal wrote its footer in the same unsynced window
/// as the records it lists, so a power loss could keep the footer and lose a record; recovery
/// trusts a valid footer, indexed the lost record, and every read of it failed. Now unsynced
/// records are synced before the footer is written.
#[test]
fn a_seal_never_outlives_the_records_it_lists() {
    let fs = SimFileSystem::new();
    let options = |fs: &SimFileSystem| LogOptions {
        segment_bytes: 8192,
        fs: std::sync::Arc::new(fs.clone()),
        ..LogOptions::default()
    };
    let (mut log, _) = Log::open(DIR, options(&fs)).unwrap();
    fs.capture_crash_points(true, 100, 3);
    for i in 1..=12u64 {
        // Appended without a sync each: the seal meets unsynced records.
        log.append(&[keel::wal::NewEntry { index: i, term: 1, payload: &[i as u8; 700] }]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let images = fs.take_captures();
    assert!(!images.is_empty());
    for (k, (_, image)) in images.iter().enumerate() {
        for seed in 0..STATES_PER_IMAGE {
            let lost = image.materialize(seed, &FaultModel::default()).unwrap();
            let (log, report) = Log::open(DIR, options(&lost)).unwrap();
            if let Err(e) = log.entries(log.first_index(), log.last_index() + 1, u64::MAX) {
                panic!("image {k}, seed {seed}: recovered entries do not read: {e}\n{report}");
            }
        }
    }
}
