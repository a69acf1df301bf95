//! The TCP transport on loopback: three Raft nodes in one process but talking only over TCP
//! elect a leader and commit; a node of another cluster, a stray byte stream and a message
//! claiming another sender are refused without harm; a peer that is down fills its bounded queue
//! and is reported unreachable; a snapshot travels in chunks on a connection of its own and is
//! reported finished. Every wait is bounded in time.

use keel::raft::{Config, Message, MessageType, RawNode, Role};
use keel::storage::{ConfState, MemStorage, StorageMut};
use keel::transport::{FrameKind, Hello, PROTOCOL_VERSION, SendError, TcpConfig, TcpTransport, encode_frame};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

const CLUSTER: u64 = 0xC1;

fn listeners(n: usize) -> (Vec<TcpListener>, BTreeMap<u64, SocketAddr>) {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs = ls.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap())).collect();
    (ls, addrs)
}

fn start(
    id: u64,
    cluster: u64,
    listener: TcpListener,
    addrs: &BTreeMap<u64, SocketAddr>,
) -> (TcpTransport, Receiver<Message>) {
    let peers = addrs.iter().filter(|(p, _)| **p != id).map(|(&p, &a)| (p, a)).collect();
    let (tx, rx) = sync_channel(1024);
    (
        TcpTransport::start(TcpConfig::new(id, cluster, peers), listener, tx, MemStorage::new().snapshot_stager())
            .unwrap(),
        rx,
    )
}

#[test]
fn three_nodes_elect_a_leader_and_commit_over_tcp() {
    let (ls, addrs) = listeners(3);
    let mut nodes = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut s = MemStorage::new();
        s.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() }).unwrap();
        let mut cfg = Config::new(id);
        cfg.seed = 7;
        let (t, rx) = start(id, CLUSTER, l, &addrs);
        nodes.push((RawNode::new(&cfg, s).unwrap(), t, rx, Vec::<Vec<u8>>::new()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut proposed = false;
    loop {
        assert!(Instant::now() < deadline, "no commit over TCP within 20 s");
        for (node, t, rx, applied) in nodes.iter_mut() {
            while let Ok(m) = rx.try_recv() {
                let _ = node.step(m);
            }
            node.tick();
            if node.has_ready() {
                let rd = node.ready().unwrap();
                for m in &rd.messages {
                    let _ = t.send(m);
                }
                node.persist(&rd).unwrap();
                for m in &rd.persisted_messages {
                    let _ = t.send(m);
                }
                applied.extend(rd.committed_entries.iter().filter(|e| !e.data.is_empty()).map(|e| e.data.to_vec()));
                node.advance(rd).unwrap();
            }
            for id in t.take_unreachable() {
                node.report_unreachable(id);
            }
            if !proposed && node.status().soft_state.role == Role::Leader {
                node.propose(b"over tcp".to_vec()).unwrap();
                proposed = true;
            }
        }
        if nodes.iter().all(|(_, _, _, applied)| applied.iter().any(|d| d == b"over tcp")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (_, t, _, _) in nodes {
        t.stop();
    }
}

#[test]
fn strangers_garbage_and_impostors_are_refused_and_the_node_still_works() {
    let (mut ls, addrs) = listeners(2);
    let l2 = ls.pop().unwrap();
    let l1 = ls.pop().unwrap();
    let (_t2, inbox2) = start(2, CLUSTER, l2, &addrs);
    let heartbeat = Message::new(MessageType::Heartbeat, 1, 2, 3);
    // A node 1 of another cluster.
    let stray_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (stray, _) = start(1, 0xBAD, stray_listener, &addrs);
    stray.send(&heartbeat).unwrap();
    // Garbage, then a handshake followed by a message claiming to come from node 3.
    let mut raw = TcpStream::connect(addrs[&2]).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut impostor = TcpStream::connect(addrs[&2]).unwrap();
    let hello = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: CLUSTER, from: 1, to: 2 };
    impostor.write_all(&encode_frame(FrameKind::Hello, &hello.encode())).unwrap();
    impostor
        .write_all(&encode_frame(FrameKind::Message, &Message::new(MessageType::Heartbeat, 3, 2, 3).encode()))
        .unwrap();
    assert!(inbox2.recv_timeout(Duration::from_millis(500)).is_err(), "something got through");
    stray.stop();
    // The real node 1 is heard.
    let (t1, _inbox1) = start(1, CLUSTER, l1, &addrs);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        assert!(Instant::now() < deadline, "node 1's message never arrived");
        t1.send(&heartbeat).unwrap();
        if let Ok(m) = inbox2.recv_timeout(Duration::from_millis(100)) {
            break m;
        }
    };
    assert_eq!((got.kind, got.from, got.to, got.term), (MessageType::Heartbeat, 1, 2, 3));
    t1.stop();
}

#[test]
fn a_peer_that_is_down_fills_its_bounded_queue_and_is_reported_unreachable() {
    let (mut ls, mut addrs) = listeners(1);
    // Node 3's address: bound, then closed, so nothing listens there.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    addrs.insert(3, gone.local_addr().unwrap());
    drop(gone);
    let peers = addrs.iter().filter(|(p, _)| **p != 1).map(|(&p, &a)| (p, a)).collect();
    let (tx, _rx) = sync_channel(16);
    let mut config = TcpConfig::new(1, CLUSTER, peers);
    config.queue_frames = 8;
    let t = TcpTransport::start(config, ls.pop().unwrap(), tx, MemStorage::new().snapshot_stager()).unwrap();
    let m = Message::new(MessageType::Heartbeat, 1, 3, 1);
    let results: Vec<Result<(), SendError>> = (0..100).map(|_| t.send(&m)).collect();
    assert!(results.contains(&Err(SendError::QueueFull(3))), "the queue never filled: {results:?}");
    assert_eq!(t.take_unreachable(), vec![3]);
    assert_eq!(t.take_unreachable(), Vec::<u64>::new(), "reported once per drop burst");
    assert_eq!(t.send(&Message::new(MessageType::Heartbeat, 1, 9, 1)), Err(SendError::UnknownPeer(9)));
    t.stop();
}

#[test]
fn a_snapshot_travels_in_chunks_and_its_transfer_is_reported() {
    use keel::raft::SnapshotStatus;
    use keel::storage::{Snapshot, SnapshotMetadata};
    let (mut ls, addrs) = listeners(2);
    let l2 = ls.pop().unwrap();
    let l1 = ls.pop().unwrap();
    let (t1, _inbox1) = start(1, CLUSTER, l1, &addrs);
    let (t2, inbox2) = start(2, CLUSTER, l2, &addrs);
    // 3 MiB and a bit: four chunks of the default 1 MiB.
    let data: Vec<u8> = (0..(3 << 20) + 12_345u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let conf_state = ConfState { voters: vec![1, 2], ..ConfState::default() };
    let mut m = Message::new(MessageType::Snapshot, 1, 2, 4);
    m.snapshot = Some(Snapshot::from_bytes(SnapshotMetadata { index: 40, term: 3, conf_state }, data.clone()));
    t1.send(&m).unwrap();
    let got = inbox2.recv_timeout(Duration::from_secs(20)).expect("the snapshot arrived");
    let s = got.snapshot.expect("a snapshot message");
    assert_eq!((got.from, got.term, s.metadata.index, s.metadata.term), (1, 4, 40, 3));
    assert!(s.read_to_vec().unwrap() == data, "the data arrived intact");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reports = loop {
        let r = t1.take_snapshot_reports();
        if !r.is_empty() || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(reports, vec![(2, SnapshotStatus::Finish)]);
    t1.stop();
    t2.stop();
}

#[test]
fn peers_added_and_removed_while_running_are_heard_then_refused() {
    let (mut ls, addrs) = listeners(2);
    let l2 = ls.pop().unwrap();
    let l1 = ls.pop().unwrap();
    // Both start knowing nobody: a new member learns its peers from membership changes.
    let (tx1, _inbox1) = sync_channel(64);
    let t1 =
        TcpTransport::start(TcpConfig::new(1, CLUSTER, BTreeMap::new()), l1, tx1, MemStorage::new().snapshot_stager())
            .unwrap();
    let (tx2, inbox2) = sync_channel(64);
    let t2 =
        TcpTransport::start(TcpConfig::new(2, CLUSTER, BTreeMap::new()), l2, tx2, MemStorage::new().snapshot_stager())
            .unwrap();
    let heartbeat = Message::new(MessageType::Heartbeat, 1, 2, 3);
    assert_eq!(t1.send(&heartbeat), Err(SendError::UnknownPeer(2)));
    t1.add_peer(2, addrs[&2]).unwrap();
    // Node 2 does not know node 1 yet: its connection is refused.
    t1.send(&heartbeat).unwrap();
    assert!(inbox2.recv_timeout(Duration::from_millis(300)).is_err(), "a stranger got through");
    keel::transport::Transport::add_peer(&t2, 1, &addrs[&1].to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "node 1 was never heard after it was added");
        t1.send(&heartbeat).unwrap();
        if inbox2.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
    }
    assert_eq!(t2.peers(), BTreeMap::from([(1, addrs[&1])]));
    t2.remove_peer(1);
    while inbox2.try_recv().is_ok() {}
    for _ in 0..5 {
        let _ = t1.send(&heartbeat);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(inbox2.recv_timeout(Duration::from_millis(300)).is_err(), "a removed peer got through");
    t1.stop();
    t2.stop();
}

#[test]
fn before_the_handshake_a_stranger_cannot_make_a_node_buffer_more_than_a_hello() {
    use keel::transport::Inbound;
    let ours = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: CLUSTER, from: 2, to: 0 };
    let stager = MemStorage::new().snapshot_stager();
    // A frame header announcing 60 MiB: refused as soon as more than a Hello's bytes are in,
    // not after 60 MiB were buffered.
    let mut header = encode_frame(FrameKind::Message, &[0u8; 8]);
    header[..4].copy_from_slice(&(60u32 << 20).to_le_bytes());
    let mut conn = Inbound::new(ours);
    assert!(conn.feed(&header, |_| true, stager.as_ref()).is_ok(), "a header alone may still become a Hello");
    assert!(conn.feed(&[0u8; 64], |_| true, stager.as_ref()).is_err());
    // A real Hello followed by a message is taken.
    let hello = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: CLUSTER, from: 1, to: 2 };
    let mut bytes = encode_frame(FrameKind::Hello, &hello.encode());
    bytes.extend(encode_frame(FrameKind::Message, &Message::new(MessageType::Heartbeat, 1, 2, 3).encode()));
    let mut conn = Inbound::new(ours);
    assert_eq!(conn.feed(&bytes, |_| true, stager.as_ref()).unwrap().len(), 1);
}
