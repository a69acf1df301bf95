//! Every stored fuzz input, run as an ordinary test on the stable toolchain: the corpus of each
//! target (`fuzz/corpus/<target>/`, seeded from `segments/golden/` and minimized after fuzzing)
//! and every input that once crashed a target (`fuzz/regressions/<target>/`).
//!
//! `KEEL_WRITE_CORPUS=1 cargo test --test fuzz_corpus -- --ignored` writes the seed inputs.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 11] = [
    ("record", keel_harness::fuzz::record),
    ("log_dir", keel_harness::fuzz::log_dir),
    ("hard_state", keel_harness::fuzz::hard_state),
    ("snapshot", keel_harness::fuzz::snapshot),
    ("storage_model", keel_harness::fuzz::storage_model),
    ("message", keel_harness::fuzz::message),
    ("snapshot_transfer", keel_harness::fuzz::snapshot_transfer),
    ("peer_stream", keel_harness::fuzz::peer_stream),
    ("resp_request", keel_harness::fuzz::resp_request),
    ("resp_reply", keel_harness::fuzz::resp_reply),
    ("kv_data", keel_harness::fuzz::kv_data),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_runs_clean() {
    for (name, target) in TARGETS {
        let corpus = inputs(&root().join("fuzz/corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} holds no inputs");
        for path in corpus.iter().chain(&inputs(&root().join("fuzz/regressions").join(name))) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "fuzz target {name} fails on {}", path.display());
        }
    }
}

/// Seed inputs built from the golden directories, so fuzzing starts from valid files.
#[test]
#[ignore = "writes fuzz/corpus; run with KEEL_WRITE_CORPUS=1"]
fn write_seed_corpus() {
    if std::env::var("KEEL_WRITE_CORPUS").is_err() {
        return;
    }
    let golden = root().join("segments/golden");
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for dir in inputs_dirs(&golden) {
        let tag = dir.file_name().unwrap().to_string_lossy().to_string();
        let log = if dir.join("log").is_dir() { dir.join("log") } else { dir.clone() };
        let segments: Vec<(u8, Vec<u8>)> = inputs(&log)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .map(|p| {
                let id: u64 = p.file_stem().unwrap().to_string_lossy().parse().unwrap();
                (id as u8, std::fs::read(&p).unwrap())
            })
            .collect();
        let framed: Vec<(u8, &[u8])> = segments.iter().map(|(id, b)| (*id, &b[..])).collect();
        seeds.push(("log_dir", tag.clone(), keel_harness::fuzz::frame(&framed)));
        for (id, bytes) in &segments {
            let mut record = (u64::from(*id) % 8).to_le_bytes().to_vec();
            if u64::from(*id) < 8 {
                record.extend_from_slice(&bytes[64..bytes.len().min(64 + 1024)]);
                seeds.push(("record", format!("{tag}-{id}"), record));
            }
        }
        let hard_state = dir.join("hardstate");
        if hard_state.exists() {
            seeds.push(("hard_state", tag.clone(), std::fs::read(hard_state).unwrap()));
        }
        for snap in inputs(&dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "snap")) {
            let name = snap.file_name().unwrap().to_string_lossy().to_string();
            let index: u64 = name.trim_end_matches(".snap").rsplit('-').next().unwrap().parse().unwrap();
            let mut input = vec![index as u8];
            input.extend(std::fs::read(&snap).unwrap());
            seeds.push(("snapshot", tag.clone(), input));
        }
    }
    for mode in 0u8..6 {
        let input: Vec<u8> = std::iter::once(mode).chain((0..200u32).map(|i| (i * 37 % 251) as u8)).collect();
        seeds.push(("storage_model", format!("mode-{mode}"), input));
    }
    {
        use keel::raft::{Message, MessageType};
        use keel::storage::Entry;
        let mut append = Message::new(MessageType::Append, 1, 2, 3);
        append.index = 4;
        append.log_term = 2;
        append.commit = 4;
        append.entries = vec![Entry::new(5, 3, b"put x=1".to_vec()), Entry::new(6, 3, Vec::new())];
        let mut reject = Message::new(MessageType::AppendResponse, 2, 1, 3);
        reject.reject = true;
        reject.reject_hint = 3;
        seeds.push(("message", "append".into(), append.encode()));
        seeds.push(("message", "reject".into(), reject.encode()));
        seeds.push(("message", "vote".into(), Message::new(MessageType::RequestVote, 1, 3, 9).encode()));
        let mut snap = Message::new(MessageType::Snapshot, 1, 2, 3);
        let conf_state = keel::storage::ConfState { voters: vec![1, 2, 3], ..Default::default() };
        let metadata = keel::storage::SnapshotMetadata { index: 8, term: 3, conf_state };
        snap.snapshot = Some(keel::storage::Snapshot::from_bytes(metadata, Vec::new()));
        seeds.push(("message", "snapshot-empty".into(), snap.encode()));
        use keel::transport::{FrameKind, Hello, PROTOCOL_VERSION, encode_frame};
        let hello = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: 0xC1, from: 2, to: 1 };
        // The first byte: how many bytes each read delivers.
        let mut stream = vec![7u8];
        stream.extend(encode_frame(FrameKind::Hello, &hello.encode()));
        let mut to_1 = append.clone();
        (to_1.from, to_1.to) = (2, 1);
        stream.extend(encode_frame(FrameKind::Message, &to_1.encode()));
        seeds.push(("peer_stream", "hello-append".into(), stream));
        // A snapshot announced and its data in 16-byte chunks.
        let mut stream = vec![200u8];
        stream.extend(encode_frame(FrameKind::Hello, &hello.encode()));
        let mut snap_to_1 = Message::new(MessageType::Snapshot, 2, 1, 3);
        let conf_state = keel::storage::ConfState { voters: vec![1, 2, 3], ..Default::default() };
        let data: Vec<u8> = (0..100u8).collect();
        snap_to_1.snapshot = Some(keel::storage::Snapshot::from_bytes(
            keel::storage::SnapshotMetadata { index: 8, term: 3, conf_state },
            data,
        ));
        stream.extend(encode_frame(FrameKind::Message, &snap_to_1.encode()));
        let sender = keel::raft::SnapshotSender::new(snap_to_1.snapshot.clone().unwrap(), 16).unwrap();
        for chunk in sender {
            stream.extend(encode_frame(FrameKind::SnapshotChunk, &chunk.unwrap().encode()));
        }
        seeds.push(("peer_stream", "hello-snapshot".into(), stream));
        seeds.push((
            "resp_request",
            "set-get".into(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
        ));
        seeds.push(("resp_request", "inline".into(), b"PING\r\nset a 1\n".to_vec()));
        seeds.push((
            "resp_reply",
            "replies".into(),
            b"+OK\r\n-NOSPACE full\r\n:42\r\n$-1\r\n$3\r\nabc\r\n*2\r\n$1\r\na\r\n$-1\r\n*-1\r\n".to_vec(),
        ));
        {
            use keel_server::kv::{Member, Request, Store, Tag, Write};
            let mset = Write::MSet { pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())] };
            let tag = Some(Tag { node: 1, boot: 2, seq: 3 });
            seeds.push(("kv_data", "mset".into(), Request { tag, write: mset.clone() }.encode()));
            let mut store = Store::default();
            store.apply(1, &mset);
            let member = Member { peer_addr: "127.0.0.1:7001".into(), client_addr: "127.0.0.1:6381".into() };
            store.set_member(2, 1, member.clone());
            seeds.push(("kv_data", "snapshot".into(), store.snapshot()));
            seeds.push(("kv_data", "member".into(), member.encode()));
            let cx = keel_server::kv::ChangeContext { tag, member: Some(member) };
            seeds.push(("kv_data", "change-context".into(), cx.encode()));
        }
    }
    {
        use keel::raft::SnapshotSender;
        use keel::storage::{Snapshot, SnapshotMetadata};
        // Chunk size byte, op count byte, ops (kind, a, b), then the snapshot's data.
        let data: Vec<u8> = (0..300u32).map(|i| (i * 13 % 256) as u8).collect();
        let with = |size: u8, ops: &[[u8; 3]]| -> Vec<u8> {
            let mut v = vec![size, ops.len() as u8];
            ops.iter().for_each(|op| v.extend_from_slice(op));
            v.extend_from_slice(&data);
            v
        };
        seeds.push(("snapshot_transfer", "intact".into(), with(31, &[])));
        seeds.push(("snapshot_transfer", "flip".into(), with(15, &[[0, 3, 77]])));
        seeds.push(("snapshot_transfer", "swap-dup".into(), with(7, &[[2, 1, 2], [3, 4, 0]])));
        seeds.push(("snapshot_transfer", "other-fault".into(), with(3, &[[5, 2, 0], [6, 1, 0]])));
        let snap = Snapshot::from_bytes(SnapshotMetadata { index: 10, term: 3, ..Default::default() }, data.clone());
        let chunk = SnapshotSender::new(snap, 64).unwrap().next().unwrap().unwrap();
        seeds.push(("snapshot_transfer", "chunk".into(), chunk.encode()));
    }
    for (target, name, bytes) in seeds {
        let dir = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

fn inputs_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}
