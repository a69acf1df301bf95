//! `keel server` on a disk that fills: a real tmpfs of 24 MiB mounted by the test (skipped, with
//! a message, where this process may not mount one). The node stays up, refuses writes with a
//! `NOSPACE` error reply and says so (INFO `alarm:NOSPACE`, the log), then frees space by
//! itself (a snapshot from its reserve, compaction) and takes writes again; every acknowledged
//! write reads back.

mod common;

use common::{NodeSpec, TestCluster};
use keel_harness::tmpfs::Tmpfs;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A tmpfs of `size` on a fresh directory; bind it as `(_dir, tmpfs)` so that it is unmounted
/// before its directory is removed.
fn mount_tmpfs(size: &str) -> Result<(tempfile::TempDir, Tmpfs), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tmpfs = Tmpfs::mount(dir.path(), size)?;
    Ok((dir, tmpfs))
}

fn cluster_on(tmpfs: &Tmpfs, reserve_mib: u64) -> TestCluster {
    let extra = ["--segment-mib", "2", "--snapshot-entries", "100000", "--catch-up-entries", "5"];
    let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    extra.extend(["--reserve-mib".to_string(), reserve_mib.to_string()]);
    let mut c = TestCluster {
        dir: tempfile::tempdir_in(tmpfs.path()).unwrap(),
        cluster_id: 7,
        specs: vec![NodeSpec::new(1)],
        procs: vec![None],
        extra_args: extra,
    };
    c.restart(1);
    c.leader(&[1]);
    c
}

fn value(i: u64) -> String {
    format!("{i:08}").repeat(4096) // 32 KiB
}

/// What one SET came to.
enum Set {
    Ok,
    NoSpace,
    Unknown,
}

fn set(con: &mut redis::Connection, key: &str, v: &str) -> Set {
    match redis::cmd("SET").arg(key).arg(v).query::<String>(con) {
        Ok(_) => Set::Ok,
        Err(e) if e.to_string().contains("NOSPACE") => Set::NoSpace,
        // A write proposed just before the disk filled waited for it: its outcome is unknown.
        Err(e) if e.to_string().contains("may or may not be applied") => Set::Unknown,
        Err(e) => panic!("SET {key}: {e}"),
    }
}

/// With a reserve, a node that fills its disk frees space by itself: a snapshot written into the
/// reserve, then compaction; its writes go on (delayed, not refused, for a client that waits).
#[test]
fn a_server_whose_disk_fills_frees_space_by_itself() {
    let (_dir, tmpfs) = match mount_tmpfs("24m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill ({why})");
            return;
        }
    };
    let c = cluster_on(&tmpfs, 2);
    let mut con = c.conn(1);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // 24 MiB hold about 600 writes of 32 KiB: 1,500 fill the disk at least twice.
    for i in 0..1500u64 {
        assert!(Instant::now() < deadline, "only {i} writes in 60 s");
        let (key, v) = (format!("k{}", i % 8), value(i));
        match set(&mut con, &key, &v) {
            Set::Ok => {
                acked.insert(key, v);
            }
            Set::NoSpace => std::thread::sleep(Duration::from_millis(20)),
            Set::Unknown => {
                unknown.insert(key);
            }
        }
    }
    let log = c.log(1);
    assert!(log.contains("NOSPACE alarm:") && log.contains("NOSPACE alarm cleared"), "the disk filled and was freed");
    let info = c.info(1);
    assert_eq!(info.get("disk_full").map(String::as_str), Some("0"), "{info:?}");
    assert!(info["snapshots_made"].parse::<u64>().unwrap() >= 2, "{info:?}");
    for (k, v) in acked.iter().filter(|(k, _)| !unknown.contains(*k)) {
        let got: String = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert!(&got == v, "{k} reads back what was acknowledged last");
    }
}

/// Without a reserve the node cannot free space itself: it stays up, refuses writes with a
/// NOSPACE error reply, raises INFO's alarm and still serves reads; when the operator frees
/// space it resumes by itself.
#[test]
fn a_server_whose_disk_stays_full_refuses_writes_until_space_returns() {
    let (_dir, tmpfs) = match mount_tmpfs("24m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill ({why})");
            return;
        }
    };
    let c = cluster_on(&tmpfs, 0);
    // Something else on the same file system, which the operator can remove later.
    let ballast = tmpfs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 8 << 20]).unwrap();
    let mut con = c.conn(1);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    // 128 keys of 32 KiB: a snapshot of 4 MiB, more than the space a failed 2 MiB segment
    // preparation leaves, so the node cannot snapshot its way out.
    loop {
        assert!(Instant::now() < deadline, "the disk never filled ({i} writes)");
        let (key, v) = (format!("k{}", i % 128), value(i));
        i += 1;
        match set(&mut con, &key, &v) {
            Set::Ok => {
                acked.insert(key, v);
            }
            Set::Unknown => {
                acked.remove(&key);
            }
            Set::NoSpace => break,
        }
    }
    let info = c.info(1);
    assert_eq!(info.get("alarm").map(String::as_str), Some("NOSPACE"), "{info:?}");
    assert_eq!(info.get("disk_full").map(String::as_str), Some("1"));
    assert!(info["disk_full_reason"].contains("no space left"), "{info:?}");
    // Still up: refuses again, answers PING and INFO.
    assert!(matches!(set(&mut con, "k0", "x"), Set::NoSpace));
    let _: String = redis::cmd("PING").query(&mut con).unwrap();
    // The operator frees space: the node persists on its next tick, and writes go through.
    std::fs::remove_file(&ballast).unwrap();
    let resumed = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < resumed, "writes never resumed after space was freed");
        let v = value(i);
        match set(&mut con, "k0", &v) {
            Set::Ok => {
                acked.insert("k0".into(), v);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert_eq!(c.info(1).get("disk_full").map(String::as_str), Some("0"));
    for (k, v) in &acked {
        let got: String = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert!(&got == v, "{k} reads back what was acknowledged last");
    }
    let log = c.log(1);
    assert!(log.contains("NOSPACE alarm:") && log.contains("NOSPACE alarm cleared"), "{log}");
}
