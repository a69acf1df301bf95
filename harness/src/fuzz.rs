//! Entry points of the fuzz targets (`fuzz/`), public so that the same functions run every
//! stored corpus input as an ordinary test (`tests/fuzz_corpus.rs`) on the stable toolchain.
//! Each takes arbitrary bytes and panics only on a real bug: bytes read from disk must come back
//! as data that was written or as a typed error, never as a panic.
//!
//! - [`record`]: one record decoded at a position of a segment; a record that decodes must
//!   re-encode to the same bytes.
//! - [`log_dir`]: a log directory of segment files made from the input, opened in both recovery
//!   modes, then every entry read and the log verified.
//! - [`hard_state`], [`snapshot`]: a storage directory whose HardState file or snapshot file is
//!   the input, opened (snapshot checksums verified) and read.
//! - [`message`]: a Raft message decoded from network bytes.
//! - [`snapshot_transfer`]: a snapshot chunk decoded from network bytes, and a whole transfer
//!   into `DiskStorage` on the simulated disk with its chunks damaged, reordered, duplicated,
//!   dropped or mixed with another snapshot's as the input says: every change is refused, leaves
//!   no staged file and no change to the storage, and the intact transfer then installs.
//! - [`storage_model`]: the input chooses a workload of storage calls, injected I/O failures
//!   and crash points on the simulated disk; every recovered state is compared with the model
//!   ([`crate::torture`]).
//!
//! Directory inputs are framed as a sequence of files: a name byte, a little-endian `u16`
//! length, then that many bytes (cut short at the end of the input).

use crate::sim::SimFileSystem;
use crate::torture;
use keel::Error;
use keel::io::FileSystem;
use keel::storage::{DiskStorage, Storage, StorageOptions};
use keel::wal::{Log, LogOptions, RecoveryMode};
use std::path::Path;
use std::sync::Arc;

/// Where the simulated directories live.
const DIR: &str = "/fuzz";

/// Splits framed input into (name byte, contents) pairs.
pub fn frames(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut files = Vec::new();
    while data.len() >= 3 {
        let (name, len) = (data[0], u16::from_le_bytes([data[1], data[2]]) as usize);
        let body = &data[3..];
        let take = len.min(body.len());
        files.push((name, &body[..take]));
        data = &body[take..];
    }
    files
}

/// Frames files as [`frames`] reads them (for building seed inputs).
pub fn frame(files: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in files {
        let body = &body[..body.len().min(u16::MAX as usize)];
        out.push(*name);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

fn sim_with(files: &[(String, &[u8])]) -> SimFileSystem {
    let fs = SimFileSystem::new();
    for (name, body) in files {
        let path = Path::new(DIR).join(name);
        fs.create_dir_all(path.parent().expect("files live in a directory")).expect("sim mkdir");
        let _ = fs.remove(&path);
        let f = fs.create(&path).expect("sim create");
        f.write_at(body, 0).expect("sim write");
    }
    fs
}

/// Record decoding: the first 8 input bytes choose the segment id (small, so valid records are
/// reachable) and the rest is a record position at offset 64 of a segment that ends with them;
/// a record that decodes must re-encode to the same bytes. The body needs keel's crate-private
/// record codec, so it lives in the library behind the hidden `internals` feature.
pub fn record(data: &[u8]) {
    keel::internals::fuzz_record(data);
}

/// Recovery of a log directory: each frame is a segment file named by its byte (the segment id;
/// 0 makes `next.prep`).
pub fn log_dir(data: &[u8]) {
    let files: Vec<(String, &[u8])> = frames(data)
        .into_iter()
        .map(|(name, body)| {
            let file = if name == 0 { "next.prep".to_string() } else { format!("{:020}.seg", name) };
            (file, body)
        })
        .collect();
    for mode in [RecoveryMode::TolerateTailCorruption, RecoveryMode::AbsoluteConsistency] {
        let fs = sim_with(&files);
        let options =
            LogOptions { segment_bytes: 4096, recovery_mode: mode, fs: Arc::new(fs), ..LogOptions::default() };
        let log = match Log::open(DIR, options) {
            Ok((log, _)) => log,
            Err(e) => {
                assert_typed(&e);
                continue;
            }
        };
        for index in log.first_index()..=log.last_index() {
            match log.entries(index, index + 1, u64::MAX) {
                Ok(entries) => assert_eq!(entries.len(), 1, "one entry per index"),
                Err(e) => assert_typed(&e),
            }
        }
        if let Err(e) = log.verify() {
            assert_typed(&e);
        }
    }
}

/// A storage directory whose HardState file is the input.
pub fn hard_state(data: &[u8]) {
    open_storage(&[("hardstate".to_string(), data)]);
}

/// A storage directory whose snapshot file is the input; the first frame byte picks its name's
/// index (term 2), so names and headers can disagree.
pub fn snapshot(data: &[u8]) {
    let Some((&index, body)) = data.split_first() else { return };
    let name = format!("snap-{:016}-{:016}.snap", 2, u64::from(index));
    open_storage(&[(name, body)]);
}

fn open_storage(files: &[(String, &[u8])]) {
    let fs = sim_with(files);
    let log = LogOptions { segment_bytes: 4096, fs: Arc::new(fs), ..LogOptions::default() };
    match DiskStorage::open(DIR, StorageOptions { log, reserve_bytes: 16 << 10, ..StorageOptions::default() }) {
        Ok((storage, _)) => {
            let state = storage.initial_state();
            if let Err(e) = &state {
                assert_typed(e);
            }
            match storage.snapshot(0) {
                Ok(s) => {
                    if let Err(e) = s.read_to_vec() {
                        assert_typed(&e);
                    }
                }
                Err(e) => assert_typed(&e),
            }
        }
        Err(e) => assert_typed(&e),
    }
}

/// Raft message decoding (bytes from the network): a decoded message re-encodes to the same
/// bytes (the encoding has no slack), and nothing panics; then the message is stepped into a
/// follower and into a leader (addressed to each), whose Ready is persisted and advanced: what
/// acts on decoded input must not panic either, and a refused message changes nothing.
pub fn message(data: &[u8]) {
    use keel::raft::Decoded;
    let m = match keel::raft::Message::decode(data) {
        Err(_) => return,
        Ok(Decoded::Message(m)) => {
            assert_eq!(m.encode(), data, "a decoded message re-encodes to its bytes");
            m
        }
        Ok(Decoded::Snapshot(pending)) => {
            assert_eq!(pending.encode(), data, "a decoded snapshot message re-encodes to its bytes");
            assert!(pending.message().snapshot.is_none(), "no snapshot before its data arrived");
            // Only an announcement of empty data can be completed without more input: its one
            // (empty) chunk goes through a receiver, as over the network.
            match complete_empty(pending) {
                Some(m) => m,
                None => return,
            }
        }
    };
    step_into_nodes(m);
}

/// Steps `m` (readdressed to node 1) into a follower and a leader and drives each a little: a
/// refused message changes nothing, and nothing panics. Each also runs with a Ready held
/// unpersisted (a full disk) while `m` arrives: the partial Readies handed out meanwhile hold
/// nothing to persist and no acknowledgement.
fn step_into_nodes(m: keel::raft::Message) {
    for (leader, stall) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut node = node_with_log(leader);
        let mut held = None;
        if stall {
            if leader {
                let _ = node.propose(b"held".to_vec());
            }
            node.tick();
            if node.has_ready() {
                held = Some(node.ready().unwrap());
            }
        }
        let mut m = m.clone();
        m.to = 1;
        let before = node.status();
        if node.step(m).is_err() {
            let after = node.status();
            assert_eq!((before.hard_state, before.last_index), (after.hard_state, after.last_index));
        }
        for _ in 0..2 {
            if held.is_some() && node.has_ready_while_persisting() {
                let rd = node.ready_while_persisting().unwrap();
                assert!(rd.is_partial() && rd.entries.is_empty() && rd.hard_state.is_none());
                assert!(rd.snapshot.is_none() && rd.persisted_messages.is_empty());
                node.advance(rd).unwrap();
            }
            node.tick();
        }
        if let Some(rd) = held.take() {
            node.persist(&rd).expect("MemStorage persists");
            node.advance(rd).unwrap();
        }
        for _ in 0..2 {
            if node.has_ready() {
                let rd = node.ready().unwrap();
                node.persist(&rd).expect("MemStorage persists");
                node.advance(rd).unwrap();
            }
            node.tick();
        }
    }
}

/// The message of an announcement of empty data, completed through a receiver, if the
/// announced checksum is the empty data's.
fn complete_empty(pending: keel::raft::PendingSnapshot) -> Option<keel::raft::Message> {
    use keel::raft::{SnapshotReceiver, SnapshotSender};
    use keel::storage::{MemStorage, Snapshot, StorageMut};
    let header = pending.header().clone();
    if header.data_len != 0 {
        return None;
    }
    let sink = MemStorage::new().receive_snapshot(&header.metadata).expect("MemStorage stages");
    let mut receiver = SnapshotReceiver::new(header.clone(), sink);
    let empty = Snapshot::from_bytes(header.metadata.clone(), Vec::new());
    for chunk in SnapshotSender::new(empty, 16).expect("a sender") {
        receiver.receive(&chunk.expect("memory reads")).ok()?;
    }
    let snapshot = receiver.finish().ok()?;
    Some(pending.complete(snapshot).expect("the receiver made the announced snapshot"))
}

/// Snapshot transfer. Two parts:
/// 1. the input decoded as one chunk: no panic, and a chunk that decodes re-encodes to it;
/// 2. a transfer of a snapshot whose data is the input after a small prefix (chunk size, up
///    to three changes to the chunk sequence: a flipped bit, a cut, a swap, a duplicate, a
///    dropped chunk, a chunk of another snapshot, an injected write failure) from memory into
///    `DiskStorage` on the simulated disk. A transfer whose chunks changed must fail with a
///    typed error, leave no temporary file and no change to the storage; an unchanged one must
///    install data equal to the source. After a failure the intact transfer must still work.
pub fn snapshot_transfer(data: &[u8]) {
    use keel::raft::{SnapshotChunk, SnapshotHeader, SnapshotReceiver, SnapshotSender, TransferError};
    use keel::storage::{ConfState, Entry, Snapshot, SnapshotMetadata, StorageMut};
    if let Ok(chunk) = SnapshotChunk::decode(data) {
        assert_eq!(chunk.encode(), data, "a decoded chunk re-encodes to its bytes");
    }
    let Some((&[size, ops], rest)) = data.split_first_chunk::<2>() else { return };
    let op_count = usize::from(ops % 4);
    let Some((ops, body)) = rest.split_at_checked(3 * op_count) else { return };
    let body = &body[..body.len().min(2048)];
    let conf_state = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
    let metadata = SnapshotMetadata { index: 10, term: 3, conf_state: conf_state.clone() };
    let source = Snapshot::from_bytes(metadata.clone(), body.to_vec());
    let chunk_bytes = 1 + usize::from(size % 32);
    let encode_all = |s: &Snapshot| -> Vec<Vec<u8>> {
        SnapshotSender::new(s.clone(), chunk_bytes)
            .expect("a sender")
            .map(|c| c.expect("memory reads").encode())
            .collect()
    };
    let intact = encode_all(&source);
    let other = encode_all(&Snapshot::from_bytes(SnapshotMetadata { index: 11, ..metadata.clone() }, body.to_vec()));
    let mut chunks = intact.clone();
    let mut write_fault = None;
    for op in ops.chunks_exact(3) {
        let (a, b) = (usize::from(op[1]), usize::from(op[2]));
        let n = chunks.len();
        match op[0] % 7 {
            0 if n > 0 => {
                let c = &mut chunks[a % n];
                let bit = (a * 256 + b) % (c.len() * 8).max(1);
                if let Some(byte) = c.get_mut(bit / 8) {
                    *byte ^= 1 << (bit % 8);
                }
            }
            1 if n > 0 => {
                let c = &mut chunks[a % n];
                c.truncate(b % c.len().max(1));
            }
            2 if n > 0 => chunks.swap(a % n, b % n),
            3 if n > 0 => {
                let c = chunks[a % n].clone();
                chunks.insert(a % n, c);
            }
            4 if n > 0 => {
                chunks.remove(a % n);
            }
            5 if n > 0 => chunks[a % n] = other[a % other.len()].clone(),
            // Staging writes the data (if any), the trailer and the header: the first two
            // writes always happen.
            6 => write_fault = Some(1 + (a % 2) as u64),
            _ => {}
        }
    }
    let changed = chunks != intact || write_fault.is_some();

    let fs = Arc::new(SimFileSystem::new());
    let log = LogOptions { segment_bytes: 4096, fs: Arc::clone(&fs) as Arc<dyn FileSystem>, ..LogOptions::default() };
    let (mut storage, _) =
        DiskStorage::open(DIR, StorageOptions { log, reserve_bytes: 16 << 10, ..StorageOptions::default() })
            .expect("open");
    storage.set_conf_state(&conf_state).expect("conf state");
    storage.append(&[Entry::new(1, 1, b"x".to_vec())]).expect("append");
    let names_before = sorted_names(fs.as_ref());
    let header = SnapshotHeader::of(&source);
    let receive = |storage: &DiskStorage, chunks: &[Vec<u8>], fault: Option<u64>| -> Result<Snapshot, TransferError> {
        let sink = storage.receive_snapshot(&header.metadata).map_err(TransferError::Staging)?;
        if let Some(n) = fault {
            fs.fail_nth_write(n, crate::sim::WriteFault::Eio);
        }
        let mut receiver = SnapshotReceiver::new(header.clone(), sink);
        for bytes in chunks {
            receiver.receive(&SnapshotChunk::decode(bytes)?)?;
        }
        receiver.finish()
    };
    match receive(&storage, &chunks, write_fault) {
        Ok(snapshot) => {
            assert!(!changed, "a changed transfer was accepted");
            assert_eq!(snapshot.read_to_vec().expect("staged data reads"), body);
        }
        Err(e) => {
            assert!(changed, "the intact transfer failed: {e}");
            assert!(!matches!(e, TransferError::Abandoned | TransferError::Source(_)), "{e}");
            fs.clear_faults();
            assert_eq!(sorted_names(fs.as_ref()), names_before, "a failed transfer leaves nothing behind");
            assert_eq!((storage.first_index().unwrap(), storage.last_index().unwrap()), (1, 1));
            assert!(storage.snapshot(0).is_err(), "no snapshot was installed");
        }
    }
    let snapshot = receive(&storage, &intact, None).expect("the intact transfer after a failure");
    storage.apply_snapshot(&snapshot.metadata, &mut snapshot.reader().expect("a reader")).expect("install");
    drop(snapshot);
    assert_eq!(storage.snapshot(0).expect("installed").read_to_vec().expect("reads"), body);
    assert!(!sorted_names(fs.as_ref()).iter().any(|n| n.ends_with(".tmp")), "no staged file stays");
}

fn sorted_names(fs: &dyn FileSystem) -> Vec<String> {
    let mut names: Vec<String> =
        fs.list(Path::new(DIR)).expect("list").into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Node 1 of three over `MemStorage` holding entries 1..=6 (terms 1, 1, 2, 2, 3, 3) with four
/// committed, at term 3: a follower, or the leader of term 4 once node 2 granted its vote.
fn node_with_log(leader: bool) -> keel::raft::RawNode<keel::storage::MemStorage> {
    use keel::raft::{Config, Message, MessageType, RawNode};
    use keel::storage::{ConfState, Entry, HardState, MemStorage, StorageMut};
    let mut storage = MemStorage::new();
    storage.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() }).expect("conf state");
    let entries: Vec<Entry> = (1..=6).map(|i| Entry::new(i, i.div_ceil(2), vec![i as u8; 8])).collect();
    storage.append(&entries).expect("entries");
    storage.set_hard_state(&HardState { term: 3, vote: 0, commit: 4 }).expect("hard state");
    let mut config = Config::new(1);
    config.pre_vote = false;
    let mut node = RawNode::new(&config, storage).expect("a valid node");
    if leader {
        node.campaign().unwrap();
        let rd = node.ready().unwrap();
        node.persist(&rd).expect("MemStorage persists");
        node.advance(rd).unwrap();
        let mut vote = Message::new(MessageType::RequestVoteResponse, 2, 1, 4);
        vote.reject = false;
        node.step(vote).expect("a vote");
        let rd = node.ready().unwrap();
        node.persist(&rd).expect("MemStorage persists");
        node.advance(rd).unwrap();
        assert_eq!(node.status().soft_state.role, keel::raft::Role::Leader);
    }
    node
}

/// Bytes a peer connection delivers, fed to the transport's own [`Inbound`](keel::transport::Inbound)
/// in pieces of the sizes the first byte picks (as reads deliver them): the handshake checked,
/// snapshots staged through `MemStorage`'s stager, and each delivered message stepped into a
/// follower and a leader (through [`message`]'s checks). Any damage must end the connection with
/// a reason: never a panic, never an allocation beyond the bytes given.
pub fn peer_stream(data: &[u8]) {
    use keel::storage::StorageMut;
    use keel::transport::{Delivered, Hello, Inbound, PROTOCOL_VERSION};
    let Some((&piece, mut rest)) = data.split_first() else { return };
    let piece = usize::from(piece).max(1);
    let ours = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: 0xC1, from: 1, to: 0 };
    let stager = keel::storage::MemStorage::new().snapshot_stager();
    let mut conn = Inbound::new(ours);
    while !rest.is_empty() {
        let (now, later) = rest.split_at(piece.min(rest.len()));
        rest = later;
        let Ok(delivered) = conn.feed(now, |id| (2..=3).contains(&id), stager.as_ref()) else { return };
        for d in delivered {
            let m = match d {
                Delivered::Message(m) | Delivered::Snapshot(m) => m,
            };
            assert!((2..=3).contains(&m.from) && m.to == 1, "only the greeted peer's messages to this node");
            step_into_nodes(m);
        }
    }
}

/// Bytes a Redis client sends: parsed request after request, as `keel server` will, with small
/// limits so they matter, and each request run as a command against a store (writes applied,
/// reads answered). A request never takes more bytes than it was given, a parser that neither
/// errs nor waits always moves on, and no command panics.
pub fn resp_request(data: &[u8]) {
    use keel_server::command::Command;
    use keel_server::kv::Store;
    use keel_server::resp::{Limits, parse_request};
    let limits = Limits { args_max: 16, arg_bytes_max: 256, inline_bytes_max: 256 };
    let mut store = Store::default();
    let mut at = 0;
    while at < data.len() {
        match parse_request(&data[at..], &limits) {
            Ok(Some((args, used))) => {
                assert!(used > 0 && used <= data.len() - at, "a request of {used} bytes from {}", data.len() - at);
                assert!(args.len() <= limits.args_max && args.iter().all(|a| a.len() <= limits.arg_bytes_max));
                at += used;
                let mut reply = Vec::new();
                match Command::parse(&args) {
                    Ok(Command::Write(w)) => store.apply(store.applied() + 1, &w).encode(&mut reply),
                    Ok(read) => read.read(&store).encode(&mut reply),
                    Err(e) => e.encode(&mut reply),
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Bytes another member's client port sends back when a full node asks it a read: replies
/// parsed one after another with a small bound, as `keel server` parses them. A reply never
/// takes more bytes than it was given, the resumable scanner ends it where the parser does,
/// what parses re-encodes to bytes that parse to the same reply, and nothing panics.
pub fn resp_reply(data: &[u8]) {
    use keel_server::resp::parse_reply;
    let max = 4096;
    let mut at = 0;
    while at < data.len() {
        match parse_reply(&data[at..], max) {
            Ok(Some((reply, used))) => {
                assert!(used > 0 && used <= data.len() - at, "a reply of {used} bytes from {}", data.len() - at);
                // The resumable scanner `keel server` reads with finds the same end.
                let mut scanner = keel_server::resp::ReplyScanner::default();
                let found = scanner.scan(&data[at..], max).expect("the scanner accepts what parses");
                assert_eq!(found, Some(used), "the scanner and the parser disagree on the reply's end");
                let mut again = Vec::new();
                reply.encode(&mut again);
                let reparsed = parse_reply(&again, usize::MAX).expect("an encoded reply parses");
                // Simple strings and errors lose their line breaks in encoding; compare once more.
                let (second, n) = reparsed.expect("whole");
                assert_eq!(n, again.len());
                let mut third = Vec::new();
                second.encode(&mut third);
                assert_eq!(third, again, "encoding is stable");
                at += used;
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Entry data, snapshot data and membership change contexts of `keel server`'s state machine,
/// as read back from a log or a peer: decoding never panics, and what decodes re-encodes to the
/// same bytes.
pub fn kv_data(data: &[u8]) {
    use keel_server::kv::{ChangeContext, Member, Request, Store};
    if let Ok(r) = Request::decode(data) {
        assert_eq!(r.encode(), data, "a decoded write re-encodes to its bytes");
        let mut s = Store::default();
        let _ = s.apply(1, &r.write);
    }
    if let Ok(s) = Store::restore(data) {
        // Version 1 snapshots restore, and are written back as version 2.
        if data[0] == 2 {
            assert_eq!(s.snapshot(), data, "a restored store snapshots to the same bytes");
        }
    }
    if let Ok(m) = Member::decode(data) {
        assert_eq!(m.encode(), data, "a decoded member re-encodes to its bytes");
    }
    if let Ok(cx) = ChangeContext::decode(data) {
        assert_eq!(cx.encode(), data, "a decoded membership change context re-encodes to its bytes");
    }
}

/// The model-based target: see [`torture::model_case`].
pub fn storage_model(data: &[u8]) {
    torture::model_case(data);
}

/// Bad bytes must surface as one of the errors a caller can act on, naming where they were.
fn assert_typed(e: &Error) {
    match e {
        Error::Corruption(c) => assert!(!c.path.as_os_str().is_empty(), "corruption names its file: {e}"),
        Error::IncompatibleVersion { .. }
        | Error::Compacted { .. }
        | Error::Unavailable { .. }
        | Error::SnapshotTemporarilyUnavailable
        | Error::Io { .. } => {}
        other => panic!("unexpected error kind for damaged input: {other:?}"),
    }
}
