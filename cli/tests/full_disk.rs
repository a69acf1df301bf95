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
    assert!(c.log(1).contains("NOSPACE alarm:"), "the disk filled");
    wait_for_log(&c, 1, "NOSPACE alarm cleared", 1);
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
    // Still up: refuses again, answers PING and INFO, and serves linearizable reads (a lone
    // leader confirms its read index at once, and has applied everything it committed).
    assert!(matches!(set(&mut con, "k0", "x"), Set::NoSpace));
    let _: String = redis::cmd("PING").query(&mut con).unwrap();
    for (k, v) in &acked {
        let got: String = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert!(&got == v, "{k} reads back, while the disk is full, what was acknowledged last");
    }
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
    assert!(c.log(1).contains("NOSPACE alarm:"));
    wait_for_log(&c, 1, "NOSPACE alarm cleared", 1);
}

/// Fills the file system holding `path` with a file there (until ENOSPC); returns its size.
fn fill_with_ballast(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![1u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("writing the ballast: {e}"),
        }
    }
    written
}

/// A GET on a node whose disk is full, with a healthy leader: the latest value (served from the
/// node's store when it has applied what the read needs, else asked of the leader), never an
/// older one and never a refusal.
fn get_on_full_node(con: &mut redis::Connection, key: &str, latest: &str) {
    match redis::cmd("GET").arg(key).query::<String>(con) {
        Ok(v) => assert!(v == latest, "a full node served a stale value for {key}"),
        Err(e) => panic!("GET {key} on the full node: {e}"),
    }
}

/// A three-node cluster whose node 1 keeps its data on a small tmpfs (the others on the normal
/// disk). Node 1 leads; its disk fills (a ballast file, then writes): it refuses writes with
/// NOSPACE, hands leadership to a peer that persisted its log, and the cluster goes on writing.
/// Reads on the full node keep being answered, linearizably: it asks the leader what it cannot
/// serve itself. Once the ballast is removed node 1 catches up by itself. Then node 1, now a follower, fills
/// again: the leader keeps committing through node 3, and node 1 catches up once space returns.
#[test]
fn a_full_node_in_a_cluster_hands_over_leadership_and_catches_up() {
    let (_dir, tmpfs) = match mount_tmpfs("16m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill ({why})");
            return;
        }
    };
    let extra = ["--segment-mib", "2", "--reserve-mib", "0", "--snapshot-entries", "100000"];
    let mut c = TestCluster {
        dir: tempfile::tempdir().unwrap(),
        cluster_id: 7,
        specs: (1..=3).map(NodeSpec::new).collect(),
        procs: vec![None, None, None],
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
    };
    std::fs::create_dir(tmpfs.path().join("node1")).unwrap();
    std::os::unix::fs::symlink(tmpfs.path().join("node1"), c.data_dir(1)).unwrap();
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.leader(&[1, 2, 3]);
    if leader != 1 {
        c.retry("handing leadership to node 1", || {
            redis::cmd("KEEL.TRANSFER").arg(1).query::<String>(&mut c.conn(leader))
        });
    }
    assert_eq!(c.leader(&[1]), 1);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown = std::collections::BTreeSet::new();
    let mut con1 = c.conn(1);
    for k in 0..8 {
        let (key, v) = (format!("k{k}"), value(k));
        assert!(matches!(set(&mut con1, &key, &v), Set::Ok));
        acked.insert(key, v);
    }

    // Node 1's disk fills while it leads.
    let ballast = tmpfs.path().join("ballast");
    fill_with_ballast(&ballast);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 100u64;
    loop {
        assert!(Instant::now() < deadline, "node 1 never refused a write");
        let (key, v) = (format!("k{}", i % 8), value(i));
        i += 1;
        match set(&mut con1, &key, &v) {
            Set::Ok => {
                acked.insert(key, v);
            }
            Set::Unknown => {
                unknown.insert(key);
            }
            Set::NoSpace => break,
        }
    }
    // It hands leadership to a healthy peer, and the cluster takes writes again.
    let new_leader = c.leader(&[2, 3]);
    let info = c.info(1);
    assert_eq!(info.get("alarm").map(String::as_str), Some("NOSPACE"), "{info:?}");
    assert!(info["disk_full_transfers"].parse::<u64>().unwrap() >= 1, "{info:?}");
    assert!(c.log(1).contains("the disk is full: handing leadership to node"));
    let mut con_leader = c.conn(new_leader);
    for k in 0..8 {
        let (key, v) = (format!("k{k}"), value(1000 + k));
        c.retry("a write through the new leader", || {
            redis::cmd("SET").arg(&key).arg(&v).query::<String>(&mut c.conn(new_leader))
        });
        unknown.remove(&key);
        acked.insert(key, v);
    }
    let _: String = redis::cmd("PING").query(&mut con_leader).unwrap();
    // Node 1 still answers: writes refused, reads correct or refused, never stale.
    assert!(matches!(set(&mut con1, "k0", "x"), Set::NoSpace));
    let started = Instant::now();
    for (k, v) in acked.iter().filter(|(k, _)| !unknown.contains(*k)) {
        get_on_full_node(&mut con1, k, v);
    }
    assert!(started.elapsed() < Duration::from_secs(10), "reads on the full node are answered promptly");
    let asked: u64 = c.info(1)["reads_asked_of_leader"].parse().unwrap();
    assert!(asked >= 1, "node 1 asked the leader for what it could not serve");

    // The operator frees space: node 1 persists on its next tick and catches up.
    std::fs::remove_file(&ballast).unwrap();
    let caught_up = Instant::now() + Duration::from_secs(20);
    while !acked.iter().all(|(k, v)| {
        redis::cmd("GET").arg(k).query::<String>(&mut con1).is_ok_and(|got| &got == v) || unknown.contains(k)
    }) {
        assert!(Instant::now() < caught_up, "node 1 never caught up after space was freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.info(1).get("disk_full").map(String::as_str), Some("0"));

    // Node 1, a follower now, fills again: the leader commits through node 3.
    fill_with_ballast(&ballast);
    let leader = c.leader(&[2, 3]);
    let mut con_leader = c.conn(leader);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut writes = 0;
    while c.info(1).get("disk_full").map(String::as_str) != Some("1") || writes < 20 {
        assert!(Instant::now() < deadline, "node 1 never filled as a follower ({writes} writes)");
        let (key, v) = (format!("k{}", i % 8), value(i));
        i += 1;
        assert!(matches!(set(&mut con_leader, &key, &v), Set::Ok), "the cluster writes without node 1");
        acked.insert(key, v);
        writes += 1;
    }
    let started = Instant::now();
    for (k, v) in &acked {
        get_on_full_node(&mut con1, k, v);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(c.info(1)["reads_asked_of_leader"].parse::<u64>().unwrap() > asked);
    std::fs::remove_file(&ballast).unwrap();
    let caught_up = Instant::now() + Duration::from_secs(20);
    while !acked.iter().all(|(k, v)| redis::cmd("GET").arg(k).query::<String>(&mut con1).is_ok_and(|got| &got == v)) {
        assert!(Instant::now() < caught_up, "node 1 never caught up the second time");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_log(&c, 1, "NOSPACE alarm cleared", 2);
}

/// Waits (5 s) until node `id` has logged `needle` `count` times: the alarm is logged by the
/// ticker on the tick after the node's state changed, so a test may see the change first.
fn wait_for_log(c: &TestCluster, id: u64, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.log(id).matches(needle).count() < count {
        assert!(Instant::now() < deadline, "node {id} did not log {needle:?} {count} times: {}", c.log(id));
        std::thread::sleep(Duration::from_millis(50));
    }
}
