//! Real process kills: the `keel crash-child` subcommand appends synced entries to a directory
//! on the real disk and prints each acknowledgement on a pipe; this test kills it with SIGKILL
//! at a random moment (during recovery, mid-append, mid-rotation or mid-compaction), reopens the
//! directory and checks that every acknowledged entry is there with the same term and payload
//! checksum, and that the HardState term it announced survived. Then it starts the child again
//! on the same directory.
//!
//! `KEEL_KILLS` sets the number of kills (default 200, what CI runs). A process kill keeps the
//! page cache, so this proves the ordering of writes and acknowledgements and the recovery of
//! half-done operations, not power loss: that is `tests/torture.rs`.

use keel::io::sim::SimRng;
use keel::storage::{DiskStorage, Storage, StorageOptions};
use keel::wal::LogOptions;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
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
    let mut rng = SimRng::new(0x5EED);
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["crash-child", "--dir"])
            .arg(dir.path())
            .args(["--seed", &kill.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keel crash-child");
        let stdout = child.stdout.take().unwrap();
        let reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_micros(rng.below(window_us)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        if status.success() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("kill {kill}: the child exited on its own: {err}");
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
