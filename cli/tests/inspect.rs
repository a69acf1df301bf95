//! `keel inspect`, `keel verify` and `keel dump`, run as the real binary on copies of the golden
//! directories, on copies damaged byte by byte at known offsets, and on a directory a live
//! `DiskStorage` in this process holds open. Every run checks that the tools changed nothing:
//! the whole tree (names and bytes) is compared before and after.

use keel::storage::{DiskStorage, Entry, EntryType, Storage, StorageMut, StorageOptions};
use keel::wal::{Log, LogOptions, NewEntry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../segments/golden").join(name)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_tree(&p, &to.join(p.file_name().unwrap()));
        } else {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn golden_copy(name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_tree(&golden(name), t.path());
    t
}

/// Every file and directory under `dir`, with the bytes of each file.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                todo.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `keel <args> <dir>` and asserts that not a byte under `dir` changed.
fn keel(dir: &Path, args: &[&str]) -> Run {
    let before = tree(dir);
    let out = Command::new(KEEL).args(args).arg(dir).output().unwrap();
    assert_eq!(tree(dir), before, "keel {args:?} changed the directory");
    let run = Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert!(!run.stderr.contains("panicked"), "keel {args:?} panicked: {}", run.stderr);
    run
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

/// Offsets of the records a sealed segment's footer lists (FORMAT.md, "Footer").
fn footer_offsets(seg: &Path) -> Vec<u64> {
    let b = std::fs::read(seg).unwrap();
    let t = b.len() - 32;
    assert_eq!(&b[t..t + 8], b"KEELSEAL", "{} is sealed", seg.display());
    let count = u32_at(&b, t + 8) as usize;
    let start = t - 24 * count;
    (0..count).map(|i| u32_at(&b, start + 24 * i + 16)).collect()
}

/// Where the records of an unsealed segment end: walk them from offset 64 to the first zeros.
fn records_end(seg: &Path) -> u64 {
    let b = std::fs::read(seg).unwrap();
    let mut at = 64usize;
    while b[at..at + 40].iter().any(|&x| x != 0) {
        at += (40 + u32_at(&b, at + 24) as usize).div_ceil(8) * 8;
    }
    at as u64
}

fn seg(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The finding line for `path` at `offset`, asserting there is one.
fn finding<'a>(run: &'a Run, path: &Path, offset: u64) -> &'a str {
    let want = format!("{} offset {offset} ", path.display());
    let want_end = format!("{} offset {offset}:", path.display());
    run.stdout
        .lines()
        .find(|l| {
            (l.starts_with("DAMAGE ") || l.starts_with("TORN TAIL ")) && (l.contains(&want) || l.contains(&want_end))
        })
        .unwrap_or_else(|| panic!("no finding at {} offset {offset} in:\n{}", path.display(), run.stdout))
}

#[test]
fn golden_directories_are_read_without_a_byte_changed() {
    // Each golden directory: inspect, verify and dump run, change nothing, and verify's exit code
    // and labels match what recovery decides for it (tests/golden.rs, tests/golden_storage.rs).
    let cases: &[(&str, i32, Option<&str>)] = &[
        ("v1-clean", 0, None),
        ("v1-reset", 0, None),
        ("v1-torn-tail", 1, Some("[TAIL_PAYLOAD_TRUNCATE]")),
        ("v1-torn-write", 1, Some("_TRUNCATE]")),
        ("v1-middle-corruption", 1, Some("[MIDDLE_PAYLOAD_REFUSE]")),
        ("storage-v1", 0, None),
        ("storage-v1-torn-hardstate", 1, Some("HardState slot")),
        ("storage-v1-bad-snapshot", 1, Some("snapshot data checksum mismatch")),
    ];
    for &(name, code, expect) in cases {
        let d = golden_copy(name);
        let ins = keel(d.path(), &["inspect"]);
        assert_eq!(ins.code, 0, "{name}: {}{}", ins.stdout, ins.stderr);
        assert!(ins.stdout.contains("open would"), "{name}: {}", ins.stdout);
        let v = keel(d.path(), &["verify"]);
        assert_eq!(v.code, code, "{name}: {}{}", v.stdout, v.stderr);
        if let Some(e) = expect {
            assert!(v.stdout.contains(e), "{name}: {}", v.stdout);
        } else {
            assert!(v.stdout.contains("findings: none"), "{name}: {}", v.stdout);
        }
        keel(d.path(), &["dump"]);
        keel(d.path(), &["dump", "--format", "json"]);
    }
}

#[test]
fn torn_tail_says_recovery_would_truncate_it() {
    let d = golden_copy("v1-torn-tail");
    let ins = keel(d.path(), &["inspect"]);
    assert!(ins.stdout.contains("[TAIL_PAYLOAD_TRUNCATE]"), "{}", ins.stdout);
    let v = keel(d.path(), &["verify"]);
    let line = finding(&v, &seg(d.path(), 6), 368);
    assert!(line.starts_with("TORN TAIL"), "{line}");
    assert!(v.stdout.contains("never acknowledged") && v.stdout.contains("[TAIL_PAYLOAD_REFUSE]"), "{}", v.stdout);
}

#[test]
fn damage_in_each_structure_is_named_by_file_and_offset() {
    // Each case damages one byte of a clean copy; verify must exit 1 and name the structure that
    // holds the byte, by file and by the offset where that structure starts, with its label.
    fn sealed(d: &Path) -> PathBuf {
        seg(d, 3)
    }
    // (what, the damage: (file, byte flipped, where the structure holding it starts), label)
    type Damage = Box<dyn Fn(&Path) -> (PathBuf, u64, u64)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "record payload in a sealed segment",
            Box::new(|d: &Path| {
                let r = footer_offsets(&sealed(d))[1];
                (sealed(d), r + 40, r)
            }),
            "[READ_RECORD_REFUSE]",
        ),
        (
            "record header in a sealed segment",
            Box::new(|d: &Path| {
                let r = footer_offsets(&sealed(d))[2];
                (sealed(d), r + 9, r)
            }),
            "[READ_RECORD_REFUSE]",
        ),
        (
            "footer of a sealed segment with successors",
            Box::new(|d: &Path| {
                let start = 4096 - 32 - 24 * footer_offsets(&sealed(d)).len() as u64;
                (sealed(d), start + 3, start)
            }),
            "[MIDDLE_FOOTER_REFUSE]",
        ),
        ("segment header", Box::new(|d: &Path| (sealed(d), 17, 0)), "[MIDDLE_SEGMENT_HEADER_REFUSE]"),
        (
            "record payload in the active segment, before its last record",
            Box::new(|d: &Path| (seg(d, 6), 64 + 40, 64)),
            "_REFUSE]",
        ),
    ];
    for (what, damage, label) in cases {
        let d = golden_copy("v1-clean");
        let (path, byte, start) = damage(d.path());
        flip(&path, byte);
        let v = keel(d.path(), &["verify"]);
        assert_eq!(v.code, 1, "{what}: {}", v.stdout);
        let line = finding(&v, &path, start);
        assert!(line.contains(label), "{what}: {line}");
        let (from, to) = line.split_once("(bytes ").unwrap().1.split_once(')').unwrap().0.split_once("..").unwrap();
        let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
        assert!(from <= byte && byte < to, "{what}: byte {byte} outside {from}..{to}");
        // inspect reads the same directory without failing.
        assert_eq!(keel(d.path(), &["inspect"]).code, 0, "{what}");
    }
}

#[test]
fn torn_tail_in_the_active_segment_is_a_truncation() {
    let d = golden_copy("v1-clean");
    let active = seg(d.path(), 6);
    let end = records_end(&active);
    let mut b = std::fs::read(&active).unwrap();
    b[end as usize..end as usize + 40].fill(0x5a);
    std::fs::write(&active, b).unwrap();
    let v = keel(d.path(), &["verify"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let line = finding(&v, &active, end);
    assert!(line.starts_with("TORN TAIL") && line.contains("[TAIL_HEADER_TRUNCATE]"), "{line}");
    let ins = keel(d.path(), &["inspect"]);
    assert!(ins.stdout.contains(&format!("from offset {end} (a torn tail) [TAIL_HEADER_TRUNCATE]")), "{}", ins.stdout);
}

#[test]
fn damaged_hardstate_slot_and_snapshot_are_named() {
    let d = golden_copy("storage-v1");
    let hs = d.path().join("hardstate");
    flip(&hs, 4096 + 30); // slot 1's term
    let snap = d.path().join("snap-0000000000000002-0000000000000014.snap");
    flip(&snap, 26); // the header's index
    let v = keel(d.path(), &["verify"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(finding(&v, &hs, 4096).contains("HardState slot 1"), "{}", v.stdout);
    assert!(finding(&v, &snap, 0).contains("snapshot header checksum mismatch"), "{}", v.stdout);

    let d = golden_copy("storage-v1");
    let hs = d.path().join("hardstate");
    flip(&hs, 30);
    flip(&hs, 4096 + 30);
    let v = keel(d.path(), &["verify"]);
    assert_eq!(v.code, 1);
    assert!(finding(&v, &hs, 0).contains("[HARDSTATE_BOTH_SLOTS_INVALID]"), "{}", v.stdout);
}

#[test]
fn dump_json_parses_and_honours_the_bounds() {
    let d = golden_copy("storage-v1");
    let run = keel(d.path(), &["dump", "--format", "json", "--from", "25", "--to", "31"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let indexes: Vec<u64> = lines.iter().map(|v| v["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, (25..=31).collect::<Vec<_>>());
    for v in &lines {
        let (i, t) = (v["index"].as_u64().unwrap(), v["term"].as_u64().unwrap());
        assert_eq!(t, if i <= 30 { 2 } else { 3 });
        assert_eq!(v["type"], "normal");
        assert_eq!(v["data_utf8"], format!("put k{i}=v{t}"));
    }
    let bare = golden_copy("v1-clean");
    let run = keel(bare.path(), &["dump", "--format", "json", "--to", "27"]);
    let indexes: Vec<u64> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![25, 26, 27], "the log starts at 25 after compaction");
}

#[test]
fn dump_decodes_a_context_and_reports_an_unknown_type_without_failing() {
    // A storage-shaped directory whose log holds payloads written by hand: a normal entry with a
    // context (type byte 0x80), and an entry type keel does not know.
    let d = tempfile::tempdir().unwrap();
    let options = LogOptions { segment_bytes: 1 << 16, ..LogOptions::default() };
    let (mut log, _) = Log::open(d.path().join("log"), options).unwrap();
    let ctx = [0x80, 3, 0, 0, 0, b'c', b't', b'x', b'h', b'i'];
    log.append_and_sync(&[
        NewEntry { index: 1, term: 1, payload: &ctx },
        NewEntry { index: 2, term: 1, payload: &[0x05, 1, 2] },
        NewEntry { index: 3, term: 1, payload: &[] },
    ])
    .unwrap();
    drop(log);
    let run = keel(d.path(), &["dump", "--format", "json"]);
    assert_eq!(run.code, 1, "malformed entries are reported in the exit code: {}", run.stderr);
    let lines: Vec<serde_json::Value> = run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "normal");
    assert_eq!(lines[0]["context_size"], 3);
    assert_eq!(lines[0]["context_utf8"], "ctx");
    assert_eq!(lines[0]["data_utf8"], "hi");
    assert_eq!(lines[1]["type"], "malformed");
    assert!(lines[1]["error"].as_str().unwrap().contains("0x05"));
    assert_eq!(lines[2]["type"], "malformed");
}

#[test]
fn a_live_storage_is_inspected_without_disturbing_it() {
    let d = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        log: LogOptions { segment_bytes: 1 << 16, ..LogOptions::default() },
        ..StorageOptions::default()
    };
    let entry = |index: u64| Entry {
        index,
        term: 1,
        entry_type: EntryType::Normal,
        data: format!("value {index}").into_bytes().into(),
        // Written by DiskStorage itself: dump must read its context layout.
        context: if index.is_multiple_of(7) { format!("ctx{index}").into_bytes().into() } else { Default::default() },
    };
    let (mut storage, _) = DiskStorage::open(d.path(), options.clone()).unwrap();
    storage.append(&(1..=300).map(entry).collect::<Vec<_>>()).unwrap();
    for tool in [&["inspect"][..], &["verify"], &["dump", "--format", "json", "--from", "290"]] {
        let run = keel(d.path(), tool);
        assert_eq!(run.code, 0, "{tool:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("held open by a live process") || run.stderr.contains("held open by a live process"),
            "{tool:?} says the directory is live: {}",
            run.stdout
        );
    }
    let run = keel(d.path(), &["dump", "--format", "json", "--from", "290"]);
    assert_eq!(run.stdout.lines().count(), 11);
    let e294: serde_json::Value = serde_json::from_str(run.stdout.lines().nth(4).unwrap()).unwrap();
    assert_eq!(
        (&e294["index"], &e294["context_utf8"], &e294["data_utf8"]),
        (&294.into(), &"ctx294".into(), &"value 294".into())
    );
    // The storage keeps working, and a closed directory is no longer reported live.
    storage.append(&(301..=400).map(entry).collect::<Vec<_>>()).unwrap();
    assert_eq!(storage.last_index().unwrap(), 400);
    drop(storage);
    let run = keel(d.path(), &["verify"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(!run.stdout.contains("live process"), "{}", run.stdout);
    let (storage, _) = DiskStorage::open(d.path(), options).unwrap();
    assert_eq!(storage.last_index().unwrap(), 400);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nothing-here");
    for tool in ["inspect", "verify", "dump"] {
        let out = Command::new(KEEL).arg(tool).arg(&missing).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{tool}");
        assert!(!missing.exists(), "{tool} created the directory");
        let out = Command::new(KEEL).arg(tool).arg(d.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{tool} on an empty directory");
    }
    let out = Command::new(KEEL).args(["dump", "--format", "xml"]).arg(d.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn dump_exits_1_when_disk_storage_open_would_refuse_the_directory() {
    // The log itself is whole, but without its HardState DiskStorage::open refuses
    // (STORAGE_HARDSTATE_MISSING): dump prints the entries yet says so, and exits 1.
    let d = golden_copy("storage-v1");
    std::fs::remove_file(d.path().join("hardstate")).unwrap();
    let run = keel(d.path(), &["dump"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("STORAGE_HARDSTATE_MISSING"), "{}", run.stderr);
    assert!(!run.stdout.is_empty());
    let clean = golden_copy("storage-v1");
    assert_eq!(keel(clean.path(), &["dump"]).code, 0);
}
