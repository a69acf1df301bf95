//! Snapshot transfer between nodes (`keel::raft::snapshot_transfer`) over `DiskStorage`: a large
//! snapshot streamed in bounded memory and installed intact; every damaged, cut, reordered,
//! duplicated, dropped, foreign or forged chunk refused with a typed error that leaves the
//! follower's storage and directory as they were; and a transfer in flight keeping the
//! leader's log so that the follower is caught up from it afterwards.

use keel::raft::{
    Config, Decoded, Message, MessageType, PendingSnapshot, RawNode, Role, SnapshotChunk, SnapshotHeader,
    SnapshotReceiver, SnapshotSender, TransferError,
};
use keel::storage::{
    ConfState, DiskStorage, Entry, HardState, Snapshot, SnapshotMetadata, Storage, StorageMut, StorageOptions,
};
use keel::wal::LogOptions;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

// ---- Heap use of the test's own thread, to bound what a transfer holds. ----

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

/// The system allocator, counting the bytes the current thread holds and their peak.
struct Counting;

fn count(delta: i64) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counting
// touches only const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller's contract for `realloc` is `System.realloc`'s.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the most heap bytes this thread held at once beyond what
/// it held before.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

// ---- Helpers. ----

fn options() -> StorageOptions {
    StorageOptions { log: LogOptions { segment_bytes: 1 << 20, ..LogOptions::default() }, ..StorageOptions::default() }
}

fn voters() -> ConfState {
    ConfState { voters: vec![1, 2, 3], ..ConfState::default() }
}

fn open(dir: &Path) -> DiskStorage {
    DiskStorage::open(dir, options()).unwrap().0
}

fn ents(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| Entry::new(i, term, format!("entry {i}").into_bytes())).collect()
}

/// The byte at `at` of generated snapshot data: varied enough that a misplaced chunk shows.
fn byte_at(at: u64) -> u8 {
    (at.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (at >> 20) as u8
}

/// `len` bytes of generated data, produced as read (never held whole).
struct Generated {
    at: u64,
    len: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.at) as usize);
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = byte_at(self.at + k as u64);
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Reads `snapshot` in 1 MiB pieces and compares them with the generated data.
fn assert_generated(snapshot: &Snapshot, len: u64) {
    assert_eq!(snapshot.data_len(), len);
    let mut reader = snapshot.reader().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != byte_at(at + k as u64)) {
            panic!("installed data differs at byte {}", at + k as u64);
        }
        at += n as u64;
    }
    assert_eq!(at, len);
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Everything a failed transfer must leave as it was.
fn fingerprint(s: &DiskStorage, dir: &Path) -> String {
    let snapshot = s.snapshot(0).map(|snap| (snap.metadata.clone(), snap.read_to_vec().unwrap()));
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        s.initial_state().unwrap(),
        (s.first_index().unwrap(), s.last_index().unwrap()),
        s.entries(s.first_index().unwrap(), s.last_index().unwrap() + 1, u64::MAX).unwrap(),
        snapshot,
        names(dir),
    )
}

/// A Snapshot message from 1 to 2 carrying `snapshot`, as a transport sends it: encoded, then
/// decoded on the far side into an announcement.
fn announce(snapshot: Snapshot, term: u64) -> PendingSnapshot {
    let mut m = Message::new(MessageType::Snapshot, 1, 2, term);
    m.snapshot = Some(snapshot);
    match Message::decode(&m.encode()).unwrap() {
        Decoded::Snapshot(pending) => pending,
        Decoded::Message(m) => panic!("a snapshot message decoded without its announcement: {m:?}"),
    }
}

/// Feeds encoded chunks to a new receiver staging in `storage`: the snapshot, or the first error.
fn receive(storage: &DiskStorage, header: &SnapshotHeader, chunks: &[Vec<u8>]) -> Result<Snapshot, TransferError> {
    let sink = storage.receive_snapshot(&header.metadata).map_err(TransferError::Staging)?;
    let mut receiver = SnapshotReceiver::new(header.clone(), sink);
    for bytes in chunks {
        receiver.receive(&SnapshotChunk::decode(bytes)?)?;
    }
    receiver.finish()
}

fn encoded_chunks(snapshot: &Snapshot, chunk_bytes: usize) -> Vec<Vec<u8>> {
    SnapshotSender::new(snapshot.clone(), chunk_bytes).unwrap().map(|c| c.unwrap().encode()).collect()
}

// ---- Tests. ----

#[test]
fn a_64_mib_snapshot_streams_to_a_follower_in_bounded_memory_and_installs_intact() {
    // Proves the leader never reads the snapshot whole and the follower never buffers it: the
    // test thread's heap peak over the whole path (sender, chunk encoding and decoding, the
    // receiver staging to disk, the Raft node installing it through `persist`) stays within a
    // few chunks, an eighth of the data; and the installed data is the leader's, byte for byte.
    const LEN: u64 = 64 << 20;
    const CHUNK: usize = 1 << 20;
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = open(leader_dir.path());
    leader.set_conf_state(&voters()).unwrap();
    leader.append(&ents(1, 10, 1)).unwrap();
    leader.create_snapshot(10, &voters(), &mut Generated { at: 0, len: LEN }).unwrap();
    let mut follower_storage = open(follower_dir.path());
    follower_storage.set_conf_state(&voters()).unwrap();
    let mut follower = RawNode::new(&Config::new(2), follower_storage).unwrap();

    let ((), peak) = peak_heap(|| {
        let snapshot = leader.snapshot(0).unwrap();
        let pending = announce(snapshot.clone(), 1);
        let sink = follower.storage().receive_snapshot(&pending.header().metadata).unwrap();
        let mut receiver = SnapshotReceiver::new(pending.header().clone(), sink);
        let mut chunks = 0;
        for chunk in SnapshotSender::new(snapshot, CHUNK).unwrap() {
            let bytes = chunk.unwrap().encode();
            assert!(bytes.len() <= CHUNK + 64);
            receiver.receive(&SnapshotChunk::decode(&bytes).unwrap()).unwrap();
            chunks += 1;
        }
        assert_eq!(chunks, LEN as usize / CHUNK);
        let message = pending.complete(receiver.finish().unwrap()).unwrap();
        follower.step(message).unwrap();
        let rd = follower.ready().unwrap();
        assert_eq!(rd.snapshot.as_ref().map(|s| s.metadata.index), Some(10));
        follower.persist(&rd).unwrap();
        follower.advance(rd).unwrap();
    });
    assert!(peak < (LEN / 8) as i64, "the transfer held {peak} bytes of heap at once");
    eprintln!("64 MiB transfer and install: heap peak {} KiB", peak / 1024);

    let installed = follower.storage().snapshot(0).unwrap();
    assert_eq!(installed.metadata, SnapshotMetadata { index: 10, term: 1, conf_state: voters() });
    assert_generated(&installed, LEN);
    assert_eq!(installed.data_crc(), leader.snapshot(0).unwrap().data_crc());
    assert_eq!(follower.storage().first_index().unwrap(), 11);
    assert!(names(follower_dir.path()).iter().all(|n| !n.ends_with(".tmp")), "the staged file is gone");
}

#[test]
fn every_damaged_reordered_duplicated_dropped_or_foreign_chunk_is_refused_and_changes_nothing() {
    // Each change to an intact transfer of three chunks, one at a time: every single-bit flip
    // and every truncation of every chunk's encoding, every swap, duplicate and drop, a chunk
    // of another snapshot or of another copy of this one, a forged chunk (changed bytes with a
    // recomputed chunk checksum). Each is refused with the error naming it, and leaves the
    // follower's storage, snapshot and directory exactly as they were; then the intact
    // transfer installs.
    let dir = tempfile::tempdir().unwrap();
    let mut follower = open(dir.path());
    follower.set_conf_state(&voters()).unwrap();
    follower.append(&ents(1, 6, 1)).unwrap();
    follower.set_hard_state(&HardState { term: 1, vote: 1, commit: 4 }).unwrap();
    follower.create_snapshot(3, &voters(), &mut &b"local state at 3"[..]).unwrap();
    let before = fingerprint(&follower, dir.path());

    let meta = SnapshotMetadata { index: 20, term: 2, conf_state: voters() };
    let data: Vec<u8> = (0..150u64).map(byte_at).collect();
    let source = Snapshot::from_bytes(meta.clone(), data.clone());
    let header = announce(source.clone(), 2).header().clone();
    let intact = encoded_chunks(&source, 60);
    assert_eq!(intact.len(), 3);

    let mut checked = 0;
    let mut refuse = |chunks: &[Vec<u8>], what: &str, expect: &dyn Fn(&TransferError) -> bool| {
        match receive(&follower, &header, chunks) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(expect(&e), "{what}: refused with the wrong error: {e}"),
        }
        assert_eq!(fingerprint(&follower, dir.path()), before, "{what}: the follower changed");
        checked += 1;
    };

    for k in 0..intact.len() {
        for bit in 0..intact[k].len() * 8 {
            let mut chunks = intact.clone();
            chunks[k][bit / 8] ^= 1 << (bit % 8);
            refuse(&chunks, &format!("chunk {k} bit {bit} flipped"), &|e| {
                matches!(e, TransferError::Decode(_) | TransferError::ChunkChecksum { .. })
            });
        }
        for len in 0..intact[k].len() {
            let mut chunks = intact.clone();
            chunks[k].truncate(len);
            refuse(&chunks, &format!("chunk {k} cut to {len} bytes"), &|e| matches!(e, TransferError::Decode(_)));
        }
        let mut duplicated = intact.clone();
        duplicated.insert(k, intact[k].clone());
        refuse(&duplicated, &format!("chunk {k} twice"), &|e| {
            matches!(e, TransferError::OutOfOrder { .. } | TransferError::AfterEnd { .. })
        });
        let mut dropped = intact.clone();
        dropped.remove(k);
        refuse(&dropped, &format!("chunk {k} dropped"), &|e| {
            matches!(e, TransferError::OutOfOrder { .. } | TransferError::Incomplete { received: 120, expected: 150 })
        });
        for j in k + 1..intact.len() {
            let mut swapped = intact.clone();
            swapped.swap(k, j);
            refuse(
                &swapped,
                &format!("chunks {k} and {j} swapped"),
                &|e| matches!(e, TransferError::OutOfOrder { expected, .. } if *expected == 60 * k as u64),
            );
        }
    }
    let last = intact.len() - 1;
    let mut after_end = intact.clone();
    after_end.push(intact[last].clone());
    refuse(&after_end, "the last chunk twice", &|e| {
        matches!(e, TransferError::AfterEnd { offset: 120, data_len: 150 })
    });

    // A chunk of a snapshot at another index, and of another copy of this snapshot (same index
    // and term, other bytes): both bound to other data.
    let other_index =
        encoded_chunks(&Snapshot::from_bytes(SnapshotMetadata { index: 21, ..meta.clone() }, data.clone()), 60);
    let mut foreign = intact.clone();
    foreign[1] = other_index[1].clone();
    refuse(&foreign, "a chunk of the snapshot at 21", &|e| {
        matches!(e, TransferError::WrongSnapshot { offset: 60, field: "index", expected: 20, actual: 21 })
    });
    let other_bytes: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let other_copy = encoded_chunks(&Snapshot::from_bytes(meta.clone(), other_bytes), 60);
    let mut foreign = intact.clone();
    foreign[2] = other_copy[2].clone();
    refuse(&foreign, "a chunk of another copy", &|e| {
        matches!(e, TransferError::WrongSnapshot { offset: 120, field: "data checksum", .. })
    });
    // A forged chunk: its bytes changed and its own checksum recomputed. Only the checksum of
    // the whole data can tell.
    let mut forged = SnapshotChunk::decode(&intact[1]).unwrap();
    forged.data[7] ^= 1;
    forged.crc = forged.computed_crc();
    let mut chunks = intact.clone();
    chunks[1] = forged.encode();
    let crc = crc32fast::hash(&data);
    refuse(
        &chunks,
        "a forged chunk",
        &|e| matches!(e, TransferError::DataChecksum { expected, .. } if *expected == crc),
    );
    // A header that announces other data refuses the intact chunks.
    let lying = SnapshotHeader { data_crc: crc ^ 1, ..header.clone() };
    match receive(&follower, &lying, &intact) {
        Err(TransferError::WrongSnapshot { offset: 0, field: "data checksum", .. }) => {}
        other => panic!("a header announcing other data: {other:?}"),
    }
    assert_eq!(fingerprint(&follower, dir.path()), before);
    assert!(checked > 3 * 8 * 100, "{checked} changes checked");

    // The intact transfer, after all those failures, installs.
    let snapshot = receive(&follower, &header, &intact).unwrap();
    follower.apply_snapshot(&snapshot.metadata, &mut snapshot.reader().unwrap()).unwrap();
    drop(snapshot);
    let installed = follower.snapshot(0).unwrap();
    assert_eq!((installed.metadata.clone(), installed.read_to_vec().unwrap()), (meta, data));
    assert_eq!((follower.first_index().unwrap(), follower.last_index().unwrap()), (21, 20));
    assert!(names(dir.path()).iter().all(|n| !n.ends_with(".tmp")));
}

/// Three nodes over `DiskStorage`, messages delivered by hand.
struct Cluster {
    nodes: BTreeMap<u64, RawNode<DiskStorage>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Persists every Ready and delivers every message until none is left, except those
    /// `hold` picks, which are returned.
    fn settle(&mut self, hold: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut held = Vec::new();
        for _ in 0..100 {
            let mut out = Vec::new();
            for node in self.nodes.values_mut() {
                while node.has_ready() {
                    let rd = node.ready().unwrap();
                    out.extend(rd.messages.iter().cloned());
                    node.persist(&rd).unwrap();
                    out.extend(rd.persisted_messages.iter().cloned());
                    node.advance(rd).unwrap();
                }
            }
            if out.is_empty() {
                return held;
            }
            for m in out {
                if hold(&m) {
                    held.push(m);
                } else {
                    let _ = self.nodes.get_mut(&m.to).unwrap().step(m);
                }
            }
        }
        panic!("the cluster did not settle");
    }

    fn node(&mut self, id: u64) -> &mut RawNode<DiskStorage> {
        self.nodes.get_mut(&id).unwrap()
    }
}

#[test]
fn a_transfer_in_flight_keeps_the_leaders_log_so_the_follower_catches_up_from_it() {
    // Raft §7: a follower behind the leader's first index gets the snapshot, then the entries
    // after it. Here the leader's application compacts past the snapshot while it is being
    // sent; the handle the sender holds pins the entries after it, so once installed the
    // follower is caught up from the log. Without the pin the leader would have only the same
    // snapshot to offer again, for ever.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for (id, dir) in (1..=3u64).zip(&dirs) {
        let mut s = open(dir.path());
        s.set_conf_state(&voters()).unwrap();
        if id != 2 {
            s.append(&ents(1, 20, 1)).unwrap();
            s.set_hard_state(&HardState { term: 1, vote: 0, commit: 20 }).unwrap();
        }
        if id == 1 {
            s.create_snapshot(10, &voters(), &mut Generated { at: 0, len: 300_000 }).unwrap();
            s.compact(11).unwrap();
        }
        let mut config = Config::new(id);
        config.applied = if id == 2 { 0 } else { 20 };
        nodes.insert(id, RawNode::new(&config, s).unwrap());
    }
    let mut cluster = Cluster { nodes, _dirs: dirs };
    cluster.node(1).campaign().unwrap();
    let is_snapshot = |m: &Message| m.kind == MessageType::Snapshot;
    let mut held = cluster.settle(is_snapshot);
    assert_eq!(cluster.nodes[&1].status().soft_state.role, Role::Leader);
    let leader_last = cluster.nodes[&1].status().last_index;
    assert_eq!(cluster.nodes[&1].status().hard_state.commit, leader_last, "node 3 acknowledged");
    assert_eq!(held.len(), 1, "one snapshot for node 2");
    let message = held.pop().unwrap();
    assert_eq!((message.to, message.snapshot.as_ref().unwrap().metadata.index), (2, 10));

    // The transfer starts: the announcement and one chunk.
    let mut sender = SnapshotSender::new(message.snapshot.clone().unwrap(), 64 << 10).unwrap();
    let Decoded::Snapshot(pending) = Message::decode(&message.encode()).unwrap() else { panic!("an announcement") };
    drop(message);
    let sink = cluster.nodes[&2].storage().receive_snapshot(&pending.header().metadata).unwrap();
    let mut receiver = SnapshotReceiver::new(pending.header().clone(), sink);
    receiver.receive(&SnapshotChunk::decode(&sender.next().unwrap().unwrap().encode()).unwrap()).unwrap();

    // The leader's application compacts everything it applied: the pin keeps 11 onwards.
    cluster.node(1).storage_mut().compact(leader_last).unwrap();
    assert_eq!(cluster.nodes[&1].storage().first_index().unwrap(), 11, "compaction stops after the snapshot");

    // The rest of the transfer; node 2 installs and is caught up from the log, with no second
    // snapshot.
    for chunk in sender.by_ref() {
        receiver.receive(&SnapshotChunk::decode(&chunk.unwrap().encode()).unwrap()).unwrap();
    }
    let message = pending.complete(receiver.finish().unwrap()).unwrap();
    cluster.node(2).step(message).unwrap();
    let again = cluster.settle(is_snapshot);
    assert!(again.is_empty(), "the leader had to send another snapshot: {again:?}");
    let follower = cluster.nodes[&2].status();
    assert_eq!((follower.last_index, follower.hard_state.commit), (leader_last, leader_last));
    assert_eq!(cluster.nodes[&2].storage().first_index().unwrap(), 11);
    assert_eq!(
        cluster.nodes[&2].log_entries(11, leader_last + 1).unwrap(),
        cluster.nodes[&1].log_entries(11, leader_last + 1).unwrap()
    );
    assert_generated(&cluster.nodes[&2].storage().snapshot(0).unwrap(), 300_000);

    // The transfer is over: the same compaction now goes through.
    drop(sender);
    cluster.node(1).storage_mut().compact(leader_last).unwrap();
    assert_eq!(cluster.nodes[&1].storage().first_index().unwrap(), leader_last);
}
