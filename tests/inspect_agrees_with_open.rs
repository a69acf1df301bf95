//! `keel::inspect` checked against what open does: on randomly damaged golden directories it never panics and
//! its dry run agrees with `Log::open` and `DiskStorage::open`; on a live `DiskStorage` that
//! appends, commits, snapshots and compacts, it reports no damage.
use keel::storage::{DiskStorage, Entry as KEntry, StorageMut, StorageOptions};
use keel::wal::{Log, LogOptions};

fn opts(seg: u64) -> StorageOptions {
    StorageOptions { log: LogOptions { segment_bytes: seg, ..LogOptions::default() }, ..StorageOptions::default() }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Random damage to golden logs: inspect never panics, and the dry run agrees with open.
#[test]
fn mutated_golden_logs_plan_equals_open() {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("segments/golden");
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut disagreements = Vec::new();
    for round in 0..150 {
        for name in ["v1-clean", "v1-reset", "v1-torn-tail", "storage-v1"] {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path().join("d");
            copy_dir(&golden.join(name), &d);
            let log_dir = if name.starts_with("storage") { d.join("log") } else { d.clone() };
            let mut segs: Vec<_> = std::fs::read_dir(&log_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect();
            segs.sort();
            let n = 1 + next() % 3;
            for _ in 0..n {
                let p = &segs[(next() % segs.len() as u64) as usize];
                let mut b = std::fs::read(p).unwrap();
                match next() % 4 {
                    0 => {
                        let at = (next() % b.len() as u64) as usize;
                        b[at] ^= 1 << (next() % 8);
                    }
                    1 => {
                        let at = (next() % b.len() as u64) as usize;
                        b.truncate(at);
                    }
                    2 => {
                        let at = (next() % b.len() as u64) as usize;
                        let len = (next() % 64) as usize;
                        for x in b.iter_mut().skip(at).take(len) {
                            *x = 0;
                        }
                    }
                    _ => {
                        let at = (next() % b.len() as u64) as usize;
                        let len = (next() % 64) as usize;
                        for x in b.iter_mut().skip(at).take(len) {
                            *x = next() as u8;
                        }
                    }
                }
                std::fs::write(p, b).unwrap();
            }
            let ins = std::panic::catch_unwind(|| {
                keel::inspect::inspect_every_record(&d).map(|i| (i.findings().len(), i.actions().len()))
            });
            assert!(ins.is_ok(), "round {round} {name}: inspect panicked");
            let plan = keel::wal::plan_recovery(&log_dir, keel::wal::RecoveryMode::TolerateTailCorruption);
            let opened = std::panic::catch_unwind(|| {
                Log::open(&log_dir, LogOptions { segment_bytes: 4096, ..LogOptions::default() }).map(|(_, r)| r)
            });
            let opened = match opened {
                Ok(o) => o,
                Err(_) => {
                    disagreements.push(format!("round {round} {name}: open panicked"));
                    continue;
                }
            };
            match (&plan, &opened) {
                (Ok(p), Ok(r)) if p.report == *r => {}
                (Err(a), Err(b)) if a.corruption() == b.corruption() && a.corruption().is_some() => {}
                (Err(a), Err(b)) if a.to_string() == b.to_string() => {}
                _ => disagreements.push(format!(
                    "round {round} {name}: plan {:?} vs open {:?}",
                    plan.as_ref().map(|p| &p.report),
                    opened
                )),
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements, first: {:#?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(3)]
    );
}

/// Random damage to golden storages: inspect's "open refuses" agrees with DiskStorage::open.
#[test]
fn mutated_golden_storages_refusal_agrees() {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("segments/golden");
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut bad = Vec::new();
    for round in 0..80 {
        for name in ["storage-v1", "storage-v1-bad-snapshot", "storage-v1-torn-hardstate"] {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path().join("d");
            copy_dir(&golden.join(name), &d);
            let mut files: Vec<_> =
                std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
            files.extend(std::fs::read_dir(d.join("log")).unwrap().map(|e| e.unwrap().path()));
            files.sort();
            let p = &files[(next() % files.len() as u64) as usize];
            let mut b = std::fs::read(p).unwrap();
            if b.is_empty() {
                continue;
            }
            match next() % 3 {
                0 => {
                    let at = (next() % b.len() as u64) as usize;
                    b[at] ^= 1 << (next() % 8);
                }
                1 => {
                    let at = (next() % b.len() as u64) as usize;
                    b.truncate(at);
                }
                _ => {
                    if next() % 2 == 0 {
                        std::fs::remove_file(p).unwrap();
                    }
                }
            }
            if p.exists() {
                std::fs::write(p, &b).unwrap();
            }
            let ins = keel::inspect::inspect(&d).unwrap();
            let findings = ins.findings();
            let predicted_refusal = findings
                .iter()
                .any(|f| f.consequence.starts_with("open refuses") || f.consequence.starts_with("open fails"));
            let opened = DiskStorage::open(
                &d,
                StorageOptions {
                    log: LogOptions { segment_bytes: 4096, ..LogOptions::default() },
                    ..StorageOptions::default()
                },
            );
            if predicted_refusal != opened.is_err() {
                bad.push(format!(
                    "round {round} {name} {:?}: predicted refusal {predicted_refusal}, open {:?}; findings {:#?}",
                    p.file_name().unwrap(),
                    opened.as_ref().err().map(|e| e.to_string()),
                    findings.iter().map(|f| (&f.what, &f.consequence)).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.iter().take(4).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// inspect/verify on a live DiskStorage that appends, commits, snapshots and compacts.
#[test]
fn verify_on_a_live_storage_reports_no_damage() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let (mut s, _) = DiskStorage::open(&d, opts(4096)).unwrap();
    s.set_conf_state(&keel::storage::ConfState { voters: vec![1], ..Default::default() }).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut i = 1u64;
        let mut term = 1;
        let mut round = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            round += 1;
            if round.is_multiple_of(30) {
                // A snapshot install from a leader: the log restarts after it.
                let cs = keel::storage::ConfState { voters: vec![1], ..Default::default() };
                let md = keel::storage::SnapshotMetadata { index: i + 50, term, conf_state: cs };
                s.apply_snapshot(&md, &mut &b"installed"[..]).unwrap();
                i += 51;
                continue;
            }
            let ents: Vec<KEntry> = (i..i + 4)
                .map(|k| KEntry { context: b"cx".to_vec().into(), ..KEntry::new(k, term, vec![k as u8; 300]) })
                .collect();
            s.append(&ents).unwrap();
            i += 4;
            if round.is_multiple_of(10) {
                term += 1;
            }
            s.set_hard_state(&keel::storage::HardState { term, vote: 1, commit: i - 1 }).unwrap();
            if round.is_multiple_of(20) {
                let cs = keel::storage::ConfState { voters: vec![1], ..Default::default() };
                s.create_snapshot(i - 1, &cs, &mut &b"snapshot data"[..]).unwrap();
                s.compact(i - 10).unwrap();
            }
        }
        drop(s);
    });
    let mut problems = Vec::new();
    let mut runs = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(4) {
        runs += 1;
        match keel::inspect::inspect_every_record(&d) {
            Err(e) => problems.push(format!("error (exit 2): {e}")),
            Ok(ins) => {
                assert!(ins.live);
                for f in ins.findings() {
                    problems.push(format!(
                        "finding (exit 1): {} @{} {} -> {}",
                        f.path.display(),
                        f.offset,
                        f.what,
                        f.consequence
                    ));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut kinds: Vec<String> = problems.iter().map(|p| p.chars().take(60).collect()).collect();
    kinds.sort();
    kinds.dedup();
    assert!(
        problems.is_empty(),
        "{} of {runs} runs had problems; kinds:\n{}\nfirst:\n{}",
        problems.len(),
        kinds.join("\n"),
        problems.iter().take(6).cloned().collect::<Vec<_>>().join("\n")
    );
}
