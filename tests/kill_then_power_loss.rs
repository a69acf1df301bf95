//! The four ways a restart after a process kill used to build on bytes that were only in the
//! page cache (issue 11), each replayed on the simulated disk: a crash image is captured before
//! every sync of one operation; for each, the process is killed there (`restart`: the page cache
//! is kept), the storage reopens and does synced work that it acknowledges, and then power is
//! lost at every sync of that restarted run and at its end. Every entry acknowledged before the
//! kill, every entry and HardState the restarted node read at open (it builds on them), and
//! everything acknowledged after must survive, and open must succeed.
//!
//! `tests/torture.rs` checks the same future on random workloads; these name the four cases.

use keel::storage::{DiskStorage, Entry, HardState, Storage, StorageMut, StorageOptions};
use keel::wal::LogOptions;
use keel_harness::sim::{CrashImage, FaultModel, SimFileSystem};

const DIR: &str = "/keel";
/// Power-loss states made from each image of the restarted run.
const STATES_PER_IMAGE: u64 = 8;

fn options(fs: &SimFileSystem) -> StorageOptions {
    let log = LogOptions { segment_bytes: 8192, fs: std::sync::Arc::new(fs.clone()), ..LogOptions::default() };
    StorageOptions { log, ..StorageOptions::default() }
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

/// What must survive a power loss: these entries, and at least this term and vote.
#[derive(Debug, Clone)]
struct MustHold {
    entries: Vec<Entry>,
    term_vote: (u64, u64),
}

impl MustHold {
    fn of(s: &DiskStorage, from: u64) -> MustHold {
        let hs = s.initial_state().unwrap().hard_state;
        let last = s.last_index().unwrap();
        let from = from.max(s.first_index().unwrap());
        MustHold { entries: s.entries(from, last + 1, u64::MAX).unwrap(), term_vote: (hs.term, hs.vote) }
    }

    fn check(&self, s: &DiskStorage) -> Result<(), String> {
        let hs = s.initial_state().map_err(|e| e.to_string())?.hard_state;
        let (term, vote) = self.term_vote;
        if hs.term < term || (hs.term == term && hs.vote != vote) {
            return Err(format!(
                "HardState went back to term {} vote {} from term {term} vote {vote}",
                hs.term, hs.vote
            ));
        }
        for e in &self.entries {
            match s.entries(e.index, e.index + 1, u64::MAX) {
                Ok(got) if got[0] == *e => {}
                other => return Err(format!("acknowledged entry {} lost: {other:?}", e.index)),
            }
        }
        Ok(())
    }
}

/// Runs `setup` (all synced), then `during` capturing an image before each of its syncs; for
/// each image: kill, reopen, `work`, and power-loss states across that restarted run. Entries
/// from `keep_from` on must survive (below it, `during` may have compacted them). Returns the
/// failures found, each described.
fn kill_then_work_then_power_loss(
    setup: impl Fn(&mut DiskStorage),
    during: impl Fn(&mut DiskStorage),
    keep_from: u64,
    work: impl Fn(&mut DiskStorage),
) -> (usize, Vec<String>) {
    let fs = SimFileSystem::new();
    let (mut s, _) = DiskStorage::open(DIR, options(&fs)).unwrap();
    setup(&mut s);
    let before_kill = MustHold::of(&s, keep_from);
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
        let (mut s, _) = match DiskStorage::open(DIR, options(&restarted)) {
            Ok(opened) => opened,
            Err(e) => {
                failures.push(format!("kill at sync {k}: the restart refused to open: {e}"));
                continue;
            }
        };
        let read_at_open = MustHold::of(&s, keep_from);
        restarted.set_tag(1);
        work(&mut s);
        let after_work = MustHold::of(&s, keep_from);
        let mut images = restarted.take_captures();
        images.push((2, restarted.image()));
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
                let outcome = DiskStorage::open(DIR, options(&lost))
                    .map_err(|e| format!("refused to open: {e}"))
                    .and_then(|(s, _)| must.check(&s));
                if let Err(e) = outcome {
                    failures.push(format!("kill at sync {k}, power lost at stage {tag} (seed {seed}): {e}"));
                }
            }
        }
    }
    (states, failures)
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
    let outcome = kill_then_work_then_power_loss(
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
    let outcome = kill_then_work_then_power_loss(
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
    let outcome = kill_then_work_then_power_loss(
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
    let outcome = kill_then_work_then_power_loss(
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
