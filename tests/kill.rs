//! Real process kills: a child process (this test binary again, running only
//! [`crash_child_process`]) appends synced entries to a directory on the real disk and prints
//! each acknowledgement on a pipe; this test kills it with SIGKILL
//! at a random moment (during recovery, mid-append, mid-rotation or mid-compaction), reopens the
//! directory and checks that every acknowledged entry is there with the same term and payload
//! checksum, and that the HardState term it announced survived. Then it starts the child again
//! on the same directory.
//!
//! `KEEL_KILLS` sets the number of kills (default 200, what CI runs). A process kill keeps the
//! page cache, so this proves the ordering of writes and acknowledgements and the recovery of
//! half-done operations, not power loss: that is `tests/torture.rs`.

use keel::storage::{DiskStorage, Storage, StorageOptions};
use keel::storage::{Entry, HardState, StorageMut};
use keel::wal::LogOptions;
use keel_harness::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn options() -> StorageOptions {
    StorageOptions {
        log: LogOptions { segment_bytes: 256 << 10, ..LogOptions::default() },
        ..StorageOptions::default()
    }
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_entry() {
    let kills: u64 = std::env::var("KEEL_KILLS").map_or(200, |v| v.parse().expect("KEEL_KILLS must be a number"));
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0x5EED);
    // index -> (term, crc32 of payload), for every acknowledged entry.
    let mut acked: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let mut term_announced = 0;
    let mut acks_total = 0;
    // Kill within this many microseconds of the start; widened while the child has not yet
    // acknowledged anything (a slow or loaded machine starts it slowly), so the kills land
    // mid-append rather than always during start-up.
    let mut window_us = 30_000;
    for kill in 0..kills {
        if acks_total == 0 && kill > 0 && kill % 10 == 0 {
            window_us = (window_us * 2).min(2_000_000);
        }
        // The child speaks on stderr: the test runner's own lines go to stdout.
        let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", "crash_child_process", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, kill.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the crash child");
        let stderr = child.stderr.take().unwrap();
        let reader =
            std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_micros(rng.below(window_us)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        if status.signal() != Some(SIGKILL) {
            panic!("kill {kill}: the child exited on its own ({status}):\n{}", lines.join("\n"));
        }
        for line in &lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["term", t] => term_announced = t.parse().unwrap(),
                ["ack", i, t, c] => {
                    acked.insert(i.parse().unwrap(), (t.parse().unwrap(), c.parse().unwrap()));
                    acks_total += 1;
                }
                _ => panic!("kill {kill}: unexpected line from the child: {line:?}"),
            }
        }
        let (storage, report) =
            DiskStorage::open(dir.path(), options()).unwrap_or_else(|e| panic!("kill {kill}: reopen failed: {e}"));
        let hs = storage.initial_state().unwrap().hard_state;
        assert!(hs.term >= term_announced, "kill {kill}: HardState term {} < announced {term_announced}", hs.term);
        let first = storage.first_index().unwrap();
        for (&index, &(term, crc)) in acked.range(first..) {
            let e = storage
                .entries(index, index + 1, u64::MAX)
                .unwrap_or_else(|e| panic!("kill {kill}: acknowledged entry {index} unreadable: {e}\n{report}"));
            assert_eq!((e[0].term, crc32fast::hash(&e[0].data)), (term, crc), "kill {kill}: entry {index}\n{report}");
        }
        // Entries below the first index were compacted by the child: forget them.
        acked = acked.split_off(&first);
    }
    eprintln!("{kills} kills, {acks_total} acknowledged entries, every one found intact");
    assert!(acks_total > 0, "the child never acknowledged anything: the kills came too early to test");
}

const SIGKILL: i32 = 9;
const CHILD_DIR: &str = "KEEL_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "KEEL_CRASH_CHILD_SEED";

/// The child process of the kill test, started by it with the directory and seed in the
/// environment (and otherwise skipped): appends batches of 1-8 entries (random sizes up to
/// 4 KiB, small segments so rotations are frequent, a compaction every 64 batches) under a new
/// term, printing `ack <index> <term> <crc32 of the payload>` on stderr after each append
/// returns, until it is killed.
#[test]
#[ignore = "the kill test's child process; runs only when that test starts it"]
fn crash_child_process() -> Result<(), Box<dyn std::error::Error>> {
    let (Ok(dir), Ok(seed)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_SEED)) else { return Ok(()) };
    let (mut storage, _) = DiskStorage::open(dir, options())?;
    let mut rng = Rng::new(seed.parse()?);
    let state = storage.initial_state()?;
    let term = state.hard_state.term + 1;
    storage.set_hard_state(&HardState { term, vote: 1, commit: state.hard_state.commit })?;
    // One write per flush, so a kill never cuts a line in half.
    let mut out = std::io::BufWriter::new(std::io::stderr().lock());
    writeln!(out, "term {term}")?;
    out.flush()?;
    for batch in 0u64.. {
        let next = storage.last_index()? + 1;
        let entries: Vec<Entry> = (next..next + 1 + rng.below(8))
            .map(|index| {
                let data: Vec<u8> = (0..rng.below(4096)).map(|_| rng.next_u64() as u8).collect();
                Entry::new(index, term, data)
            })
            .collect();
        storage.append(&entries)?;
        for e in &entries {
            writeln!(out, "ack {} {} {}", e.index, e.term, crc32fast::hash(&e.data))?;
        }
        out.flush()?;
        if batch % 64 == 63 {
            let last = storage.last_index()?;
            storage.compact(last.saturating_sub(256).max(storage.first_index()?))?;
        }
    }
    Ok(())
}
