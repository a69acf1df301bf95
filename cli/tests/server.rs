//! `keel server` end to end: real processes on loopback ports, a real Redis client (the `redis`
//! crate). Writes and reads through every node; the leader SIGKILLed and every acknowledged
//! write still there; the killed node restarted and caught up by log, and after compaction by
//! snapshot; membership changed from a client (a node joins, leads, and the old leader leaves);
//! a node of another cluster refused; bad client bytes and bad peer bytes answered or dropped
//! without a crash; the limits answered with error replies.

mod common;

use common::{KEEL, NodeSpec, TestCluster};
use redis::{Commands, RedisResult};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn writes_and_reads_go_through_every_node() {
    let c = TestCluster::start(3, &[]);
    c.leader(&[1, 2, 3]);
    for id in 1..=3u64 {
        let mut con = c.conn(id);
        let key = format!("key-{id}");
        c.retry("SET", || con.set::<_, _, String>(&key, format!("value-{id}")));
    }
    // Every node answers every read, linearizably: a write acknowledged anywhere is seen.
    for id in 1..=3u64 {
        let mut con = c.conn(id);
        for k in 1..=3 {
            let v: Option<String> = con.get(format!("key-{k}")).unwrap();
            assert_eq!(v.as_deref(), Some(format!("value-{k}").as_str()), "node {id} key-{k}");
        }
    }
    let mut con = c.conn(2);
    assert_eq!(con.incr::<_, _, i64>("n", 5).unwrap(), 5);
    assert_eq!(redis::cmd("DECR").arg("n").query::<i64>(&mut con).unwrap(), 4);
    let _: () = redis::cmd("MSET").arg("a").arg("1").arg("b").arg("2").query(&mut con).unwrap();
    let got: Vec<Option<String>> = redis::cmd("MGET").arg("a").arg("b").arg("zz").query(&mut c.conn(3)).unwrap();
    assert_eq!(got, vec![Some("1".into()), Some("2".into()), None]);
    assert_eq!(redis::cmd("EXISTS").arg("a").arg("zz").query::<i64>(&mut c.conn(1)).unwrap(), 1);
    assert_eq!(redis::cmd("DEL").arg("a").arg("zz").query::<i64>(&mut c.conn(3)).unwrap(), 1);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c.conn(1)).unwrap(), 5);
    // The state machine's errors come back as Redis's, from whichever node took the write.
    let err = redis::cmd("INCR").arg("key-1").query::<i64>(&mut c.conn(3)).unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    // INFO's replication section and the member list.
    let info = c.info(1);
    for field in ["role", "leader_id", "term", "commit_index", "applied_index", "voters", "fsyncs", "readies"] {
        assert!(info.contains_key(field), "INFO lacks {field}: {info:?}");
    }
    assert_eq!(info["voters"], "1,2,3");
    let members: Vec<(u64, String, String, String)> = redis::cmd("KEEL.MEMBERS").query(&mut c.conn(2)).unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members[0], (1, "voter".into(), c.spec(1).peer.to_string(), c.spec(1).client.to_string()));
    // SET's conditions, decided where the entry is applied and answered through a follower.
    let follower = (1..=3u64).find(|&id| c.info(id)["role"] != "leader").unwrap();
    let mut con = c.conn(follower);
    let nx: Option<String> = redis::cmd("SET").arg("key-1").arg("x").arg("NX").query(&mut con).unwrap();
    assert_eq!(nx, None, "NX on a key that exists");
    let old: Option<String> = redis::cmd("SET").arg("key-1").arg("y").arg("XX").arg("GET").query(&mut con).unwrap();
    assert_eq!(old.as_deref(), Some("value-1"));
    assert_eq!(redis::cmd("SETNX").arg("fresh").arg("1").query::<i64>(&mut con).unwrap(), 1);
    assert_eq!(redis::cmd("SETNX").arg("fresh").arg("2").query::<i64>(&mut con).unwrap(), 0);
    let _: i64 = redis::cmd("DEL").arg("fresh").query(&mut con).unwrap();
    // A pipeline of writes and reads answers in order.
    let mut p = redis::pipe();
    p.cmd("SET").arg("p").arg("1").cmd("INCR").arg("p").cmd("GET").arg("p").cmd("INCR").arg("p");
    let (a, b, g, d): (String, i64, String, i64) = p.query(&mut c.conn(3)).unwrap();
    assert_eq!((a.as_str(), b, g.as_str(), d), ("OK", 2, "2", 3));
}

#[test]
fn the_leader_is_killed_and_every_acknowledged_write_survives_then_it_catches_up() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.leader(&[1, 2, 3]);
    let mut con = c.conn(leader);
    for i in 0..200 {
        let _: String = con.set(format!("k{i}"), i).unwrap();
    }
    c.kill(leader);
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let new_leader = c.leader(&others);
    assert_ne!(new_leader, leader);
    let mut con = c.conn(others[0]);
    for i in 0..200 {
        let v: Option<i64> = c.retry("GET after the kill", || con.get(format!("k{i}")));
        assert_eq!(v, Some(i), "acknowledged write k{i} lost");
    }
    // Writes go on with two of three, through either survivor.
    for i in 200..300 {
        let id = others[i % 2];
        let mut con = c.conn(id);
        let _: String = c.retry("SET with a node down", || con.set(format!("k{i}"), i));
    }
    // The killed node comes back on its data directory and catches up through the log.
    c.restart(leader);
    let mut con = c.conn(leader);
    let _: () = redis::cmd("READONLY").query(&mut con).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Option<i64> = con.get("k299").unwrap();
        if v == Some(299) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted node never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..300 {
        assert_eq!(con.get::<_, Option<i64>>(format!("k{i}")).unwrap(), Some(i as i64));
    }
}

#[test]
fn a_node_behind_a_compacted_log_is_caught_up_by_snapshot() {
    let mut c = TestCluster::start(3, &["--snapshot-entries", "50", "--catch-up-entries", "10"]);
    let leader = c.leader(&[1, 2, 3]);
    let behind = if leader == 3 { 2 } else { 3 };
    c.kill(behind);
    let mut con = c.conn(leader);
    for i in 0..300 {
        let _: String = c.retry("SET", || con.set(format!("s{i}"), i));
    }
    let info = c.info(leader);
    assert!(info["snapshots_made"].parse::<u64>().unwrap() >= 1, "{info:?}");
    c.restart(behind);
    let mut con = c.conn(behind);
    let _: () = redis::cmd("READONLY").query(&mut con).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while con.get::<_, Option<i64>>("s299").unwrap() != Some(299) {
        assert!(Instant::now() < deadline, "the lagging node never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let info = c.info(behind);
    assert!(info["snapshots_installed"].parse::<u64>().unwrap() >= 1, "caught up without a snapshot: {info:?}");
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut con).unwrap(), 300);
    // And it restarts from its own snapshot.
    c.kill(behind);
    c.restart(behind);
    let mut con = c.conn(behind);
    let _: () = redis::cmd("READONLY").query(&mut con).unwrap();
    let v: Option<i64> = c.retry("GET after a restart", || con.get("s150"));
    assert_eq!(v, Some(150));
}

#[test]
fn membership_changes_from_a_client_add_a_node_hand_it_leadership_and_remove_the_old_leader() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.leader(&[1, 2, 3]);
    let mut con = c.conn(leader);
    for i in 0..50 {
        let _: String = con.set(format!("m{i}"), i).unwrap();
    }
    // Node 4 starts empty and joins; any node takes the change.
    let four = NodeSpec::new(4);
    let mut cmd = c.command(4);
    cmd.arg("--join").arg("--peer-addr").arg(four.peer.to_string()).arg("--client-addr").arg(four.client.to_string());
    c.specs.push(four.clone());
    c.spawn(4, &mut cmd);
    let via = if leader == 1 { 2 } else { 1 };
    let ok: String = redis::cmd("KEEL.ADD")
        .arg(4)
        .arg(four.peer.to_string())
        .arg(four.client.to_string())
        .arg("LEARNER")
        .query(&mut c.conn(via))
        .unwrap();
    assert_eq!(ok, "OK");
    let mut con4 = c.conn(4);
    let _: () = redis::cmd("READONLY").query(&mut con4).unwrap();
    let v: Option<i64> = c.retry("the learner catching up", || {
        let v: Option<i64> = con4.get("m49")?;
        v.map(Some).ok_or_else(|| redis::RedisError::from((redis::ErrorKind::TypeError, "not yet")))
    });
    assert_eq!(v, Some(49));
    let _: String = redis::cmd("KEEL.ADD")
        .arg(4)
        .arg(four.peer.to_string())
        .arg(four.client.to_string())
        .arg("VOTER")
        .query(&mut c.conn(leader))
        .unwrap();
    let _: String = c.retry("KEEL.TRANSFER", || redis::cmd("KEEL.TRANSFER").arg(4).query(&mut c.conn(leader)));
    assert_eq!(c.leader(&[1, 2, 3, 4]), 4);
    let _: String = c.retry("KEEL.REMOVE", || redis::cmd("KEEL.REMOVE").arg(leader).query(&mut c.conn(4)));
    let members: Vec<(u64, String, String, String)> = redis::cmd("KEEL.MEMBERS").query(&mut c.conn(4)).unwrap();
    let ids: Vec<u64> = members.iter().map(|m| m.0).collect();
    assert!(!ids.contains(&leader) && ids.contains(&4) && ids.len() == 3, "{members:?}");
    // The cluster without the old leader takes writes, read back linearizably from node 4.
    let rest: Vec<u64> = ids.clone();
    let _: String = c.retry("SET after the change", || c.conn(rest[0]).set("after", "yes"));
    assert_eq!(c.conn(4).get::<_, Option<String>>("after").unwrap().as_deref(), Some("yes"));
    // The removed node says so instead of timing out.
    let err = c.conn(leader).get::<_, Option<String>>("after").unwrap_err();
    assert!(err.to_string().contains("removed from the cluster"), "{err}");
    assert_eq!(c.info(leader)["role"], "removed");
    // Node 5 joins while node 4, not an initial member, leads: it is told node 4's address.
    let five = NodeSpec::new(5);
    let mut cmd = c.command(5);
    cmd.arg("--join")
        .arg("--peer")
        .arg(four.member())
        .arg("--peer-addr")
        .arg(five.peer.to_string())
        .arg("--client-addr")
        .arg(five.client.to_string());
    c.specs.push(five.clone());
    c.spawn(5, &mut cmd);
    let ok: String = redis::cmd("KEEL.ADD")
        .arg(5)
        .arg(five.peer.to_string())
        .arg(five.client.to_string())
        .arg("LEARNER")
        .query(&mut c.conn(4))
        .unwrap();
    assert_eq!(ok, "OK");
    let mut con5 = c.conn(5);
    let _: () = redis::cmd("READONLY").query(&mut con5).unwrap();
    let v: String = c.retry("node 5 catching up", || {
        let v: Option<String> = con5.get("after")?;
        v.ok_or_else(|| redis::RedisError::from((redis::ErrorKind::TypeError, "not yet")))
    });
    assert_eq!(v, "yes");
}

#[test]
fn a_node_of_another_cluster_is_refused_and_logged() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.leader(&[1, 2, 3]);
    let term_before = c.info(leader)["term"].clone();
    // A stray process of cluster 99 posing as node 3 with the real members' addresses: its
    // votes and appends reach nodes 1 and 2 and are refused at the handshake.
    let stray = NodeSpec::new(3);
    let mut cmd = std::process::Command::new(KEEL);
    cmd.arg("server")
        .args(["--exit-with-parent", &std::process::id().to_string()])
        .args(["--id", "3", "--cluster-id", "99", "--tick-ms", "20"])
        .arg("--data")
        .arg(c.dir.path().join("stray"))
        .arg("--member")
        .arg(c.spec(1).member())
        .arg("--member")
        .arg(c.spec(2).member())
        .arg("--member")
        .arg(stray.member());
    c.spawn(9, &mut cmd);
    std::thread::sleep(Duration::from_secs(2));
    let refused = |id: u64| c.log(id).contains("handshake refused");
    assert!(refused(1) || refused(2), "no refusal logged:\n{}\n{}", c.log(1), c.log(2));
    let info = c.info(leader);
    assert_eq!(info["role"], "leader", "the stray disturbed the leader");
    assert_eq!(info["term"], term_before);
    let mut con = c.conn(1);
    let _: String = c.retry("SET", || con.set("still", "working"));
    // The stray never gets a leader and says so to its clients.
    let mut stray_con = redis::Client::open(format!("redis://{}/", stray.client))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    stray_con.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let r: RedisResult<String> = stray_con.set("x", "y");
    assert!(r.is_err(), "the stray accepted a write: {r:?}");
    c.kill(9);
    // A data directory of cluster 7 is not opened as cluster 8.
    c.kill(1);
    c.cluster_id = 8;
    let out = c.command(1).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to cluster 7"), "{stderr}");
}

/// Sends raw bytes to `addr` and returns what comes back before the server closes the
/// connection or 2 s pass.
fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn bad_client_bytes_and_bad_peer_bytes_are_answered_or_dropped_and_limits_reply_errors() {
    let c = TestCluster::start(1, &["--max-clients", "4", "--max-request-bytes", "1024"]);
    c.leader(&[1]);
    let client = c.spec(1).client;
    let reply = raw_exchange(client, b"*2\r\n$3\r\nGET\r\n:12\r\n");
    assert!(String::from_utf8_lossy(&reply).starts_with("-ERR Protocol error"), "{reply:?}");
    let reply = raw_exchange(client, b"*1\r\n$99999\r\n");
    assert!(String::from_utf8_lossy(&reply).starts_with("-ERR Protocol error"), "{reply:?}");
    let reply = raw_exchange(client, b"*1\r\n$4\r\nFLY!\r\nQUIT\r\n");
    assert_eq!(String::from_utf8_lossy(&reply), "-ERR unknown command 'fly!'\r\n+OK\r\n");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = raw_exchange(client, &garbage);
    // Peers: garbage, a truncated frame, an oversized length.
    let peer = c.spec(1).peer;
    let _ = raw_exchange(peer, &garbage);
    let _ = raw_exchange(peer, b"\x10\x00\x00\x00\x01\x02");
    let _ = raw_exchange(peer, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1]);
    // Still serving, nothing lost.
    let mut con = c.conn(1);
    let _: String = c.retry("SET", || con.set("alive", "1"));
    assert_eq!(con.get::<_, String>("alive").unwrap(), "1");
    assert!(c.log(1).contains("closed a connection"), "{}", c.log(1));
    // The connection limit: the fifth client is told so.
    let held: Vec<redis::Connection> = (0..3).map(|_| c.conn(1)).collect();
    let reply = raw_exchange(client, b"PING\r\n");
    assert_eq!(String::from_utf8_lossy(&reply), "-ERR max number of clients reached\r\n");
    drop(held);
    drop(con);
}
