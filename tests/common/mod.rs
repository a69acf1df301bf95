//! Helpers shared by the integration tests.
#![allow(dead_code)]

use keel::io::{DataFile, FileSystem, Map, StdFileSystem};
use keel::wal::{Log, LogOptions, NewEntry, RecoveryMode};
use std::any::Any;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub const SEGMENT_BYTES: u64 = 16 * 1024;

pub fn options(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes, ..LogOptions::default() }
}

pub fn absolute(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes, recovery_mode: RecoveryMode::AbsoluteConsistency, ..LogOptions::default() }
}

/// A payload that depends on index and term, with a varying length.
pub fn payload(index: u64, term: u64) -> Vec<u8> {
    let len = ((index * 37 + term * 11) % 300) as usize;
    (0..len).map(|i| (index as usize * 31 + term as usize * 7 + i) as u8).collect()
}

pub fn append(log: &mut Log, from: u64, to: u64, term: u64) {
    let payloads: Vec<Vec<u8>> = (from..=to).map(|i| payload(i, term)).collect();
    let entries: Vec<NewEntry<'_>> =
        (from..=to).zip(&payloads).map(|(index, p)| NewEntry { index, term, payload: p }).collect();
    log.append_and_sync(&entries).unwrap();
}

/// Checks that `log` holds exactly `first..=last` with the expected payloads for `term_of`.
pub fn check(log: &Log, first: u64, last: u64, term_of: impl Fn(u64) -> u64) {
    assert_eq!(log.first_index(), first);
    assert_eq!(log.last_index(), last);
    let entries = log.entries(first, last + 1, u64::MAX).unwrap();
    assert_eq!(entries.len() as u64, last + 1 - first);
    for e in entries {
        assert_eq!(e.term, term_of(e.index), "term of {}", e.index);
        assert_eq!(&*e.payload, &payload(e.index, e.term)[..], "payload of {}", e.index);
    }
}

/// The segment files of `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// The newest segment file of `dir`.
pub fn last_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir).pop().expect("a segment file")
}

/// A file system that fails chosen operations, for latch tests. (The full simulated disk
/// arrives with the crash-safety work.)
#[derive(Debug)]
pub struct FaultyFs {
    pub fail_sync: AtomicBool,
    pub fail_write: AtomicBool,
    /// `sync_data` calls made by the thread that created this (the log's own calls, not the
    /// background segment preparer's).
    pub syncs: Arc<AtomicU64>,
    /// Every `sync_data` call, from any thread.
    pub all_syncs: AtomicU64,
    /// Only the `sync_data` call with this number fails (counting `all_syncs` from 1): the
    /// fsyncgate case, where a retry or a later sync would seem to succeed.
    pub fail_sync_at: AtomicU64,
    /// A `read_at` of a range reaching this offset or beyond fails with EIO: a bad sector
    /// (reads through a map do not see it; on a real disk they raise SIGBUS).
    pub fail_read_from: AtomicU64,
    /// Every directory `sync_dir` was called on, in order.
    pub synced_dirs: std::sync::Mutex<Vec<std::path::PathBuf>>,
    owner: std::thread::ThreadId,
}

impl Default for FaultyFs {
    fn default() -> Self {
        FaultyFs {
            fail_sync: AtomicBool::new(false),
            fail_write: AtomicBool::new(false),
            syncs: Arc::default(),
            all_syncs: AtomicU64::new(0),
            fail_sync_at: AtomicU64::new(u64::MAX),
            fail_read_from: AtomicU64::new(u64::MAX),
            synced_dirs: std::sync::Mutex::default(),
            owner: std::thread::current().id(),
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn DataFile>,
    fs: Arc<FaultyFs>,
}

#[derive(Debug)]
pub struct FaultyHandle(pub Arc<FaultyFs>);

impl FileSystem for FaultyHandle {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFileSystem.create_dir_all(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        Ok(Box::new(FaultyFile { inner: StdFileSystem.open(path)?, fs: self.0.clone() }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        Ok(Box::new(FaultyFile { inner: StdFileSystem.create(path)?, fs: self.0.clone() }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFileSystem.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFileSystem.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        StdFileSystem.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.synced_dirs.lock().unwrap().push(dir.to_path_buf());
        StdFileSystem.sync_dir(dir)
    }
    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        StdFileSystem.lock(dir)
    }
}

impl DataFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.fs.fail_read_from.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fs.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        let n = self.fs.all_syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fs.fail_sync.load(Ordering::SeqCst) || n == self.fs.fail_sync_at.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if std::thread::current().id() == self.fs.owner {
            self.fs.syncs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.sync_data()
    }
    fn map(&self, len: u64) -> io::Result<Map> {
        self.inner.map(len)
    }
}

/// What a message leaving `storage`'s node promises that the storage does not yet hold, if
/// anything: an append acknowledgement past the persisted log, a vote the persisted HardState
/// does not record (or rule out repeating, by a later term), or a leader's message in a term
/// the persisted HardState has not reached.
pub fn unkept_promise(storage: &impl keel::storage::Storage, m: &keel::raft::Message) -> Option<String> {
    use keel::raft::MessageType;
    match m.kind {
        MessageType::AppendResponse if !m.reject => {
            let last = storage.last_index().unwrap();
            (m.index > last)
                .then(|| format!("node {} acknowledged index {} with only {last} persisted", m.from, m.index))
        }
        MessageType::RequestVoteResponse if !m.reject => {
            let hs = storage.initial_state().unwrap().hard_state;
            (hs.term < m.term || (hs.term == m.term && hs.vote != m.to))
                .then(|| format!("node {} granted a vote to {} in term {} with {hs:?} persisted", m.from, m.to, m.term))
        }
        // What only a leader sends: never in a term the sender could forget in a crash (and
        // then win, and lead, again).
        MessageType::Append
        | MessageType::Heartbeat
        | MessageType::Snapshot
        | MessageType::TimeoutNow
        | MessageType::ReadIndexResponse => {
            let hs = storage.initial_state().unwrap().hard_state;
            (hs.term < m.term).then(|| {
                format!("node {} sent {:?} as leader of term {} with {hs:?} persisted", m.from, m.kind, m.term)
            })
        }
        _ => None,
    }
}
