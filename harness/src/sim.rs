//! A simulated disk: an in-memory [`FileSystem`] that loses power on demand.
//!
//! Tests (and embedders testing their own code over keel) run the real engine on it, take
//! [`CrashImage`]s at chosen moments, and turn each into the disk a machine would find after
//! losing power at that moment, under a seeded fault model.
//!
//! # State
//!
//! Every file (inode) has a **live image**, what reads and maps see, kept in an anonymous memory
//! file (`memfd`) so that [`DataFile::map`] is a real shared mapping that follows later writes,
//! exactly as on disk; and a **durable image**, what survives power loss. A write changes the live
//! image and is queued as *pending*; `sync_data` makes the file's pending writes and its size
//! durable. Directory entries are the same: `create`, `rename` and `remove` change the live names
//! at once and are queued; `sync_dir` makes the queued operations of that directory durable.
//! Directories themselves are durable when created (keel creates them once, before any file).
//!
//! # Fault model at a crash ([`CrashImage::materialize`], [`SimFileSystem::crash`])
//!
//! 1. Unsynced directory operations: a random prefix of them survives (ext4 commits its journal
//!    in order), so a rename may be lost but never reordered before an earlier create.
//! 2. Each unsynced write, independently and in order, is **kept**, **dropped**, or **torn**: a
//!    torn write keeps a random subset of its 512-byte sectors (sectors are the atomic unit; a
//!    later write may survive while an earlier one is lost, as with a disk's volatile cache).
//!    The probabilities are in [`FaultModel`]. An unsynced size change is kept or dropped.
//! 3. Optionally (off by default) a kept write is **misdirected**: it lands at another
//!    sector-aligned offset of the same file, overwriting whatever was there, durable or not.
//! 4. Writes whose `sync_data` failed are never made durable by a later sync (the page cache
//!    marks them clean after the error: "fsyncgate"); at a crash they fare like unsynced writes.
//!
//! # Injected failures
//!
//! Counted from when they are armed: the n-th `write_at` fails with `EIO` or is short (a prefix
//! lands, then an error), the n-th `sync_data`/`sync_dir` fails with `EIO`; and a byte budget,
//! after which writes and growth fail with `ENOSPC` until it is lifted.
//!
//! # Determinism
//!
//! [`FileSystem::background_threads`] is false here, so keel does all its I/O on the caller's
//! thread and a run replays exactly from its seed.

use keel::internals::Rng;
use keel::io::{DataFile, FileSystem, Map};
use parking_lot::Mutex;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sector size: the unit a torn write keeps or loses.
pub const SECTOR_BYTES: u64 = 512;

/// What happens to unsynced state at a crash. Percentages of unsynced writes; the rest of 100 are
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultModel {
    /// Percent of unsynced writes kept whole.
    pub keep_percent: u32,
    /// Percent of unsynced writes torn (a random subset of their sectors kept).
    pub torn_percent: u32,
    /// Percent of kept writes that land at a wrong, sector-aligned offset of their file.
    pub misdirect_percent: u32,
    /// Whether unsynced directory operations may be lost (a random prefix survives).
    pub lose_dir_ops: bool,
}

impl Default for FaultModel {
    fn default() -> Self {
        FaultModel { keep_percent: 40, torn_percent: 30, misdirect_percent: 0, lose_dir_ops: true }
    }
}

/// How an armed write failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// Nothing is written; `EIO`.
    Eio,
    /// The first half of the buffer (whole sectors where possible) lands; then an error.
    Short,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Arc<[u8]> },
    Len(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Link { path: PathBuf, ino: u64 },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn dir(&self) -> &Path {
        let p = match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => path,
            DirOp::Rename { to, .. } => to,
        };
        p.parent().unwrap_or(Path::new(""))
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug)]
struct Inode {
    live: Arc<File>,
    durable: Arc<Vec<u8>>,
    /// Since the last successful sync, in order.
    pending: Vec<Pending>,
    /// Writes whose sync failed: never durable through a later sync; at a crash, like pending.
    lost: Vec<Pending>,
}

#[derive(Debug, Default)]
struct Faults {
    write: Option<(u64, WriteFault)>,
    sync: Option<u64>,
    budget: Option<u64>,
    /// A file system of this many bytes: growing files beyond it fails with `ENOSPC`.
    capacity: Option<u64>,
}

#[derive(Debug, Default)]
struct Capture {
    at_syncs: bool,
    write_percent: u32,
    rng: Option<Rng>,
    tag: u64,
    taken: Vec<(u64, CrashImage)>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by a crash: handles from before it fail.
    generation: u64,
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    dirs: BTreeSet<PathBuf>,
    live_names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_dir_ops: Vec<DirOp>,
    locks: BTreeSet<PathBuf>,
    faults: Faults,
    capture: Capture,
}

/// The simulated disk. Cloning gives another handle to the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimFileSystem {
    state: Arc<Mutex<State>>,
}

/// The durable state of a [`SimFileSystem`] plus everything not yet durable, taken at one
/// moment: what a power loss at that moment may leave.
#[derive(Debug, Clone)]
pub struct CrashImage {
    dirs: BTreeSet<PathBuf>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_dir_ops: Vec<DirOp>,
    files: HashMap<u64, ImageFile>,
}

/// One file of a [`CrashImage`]: durable bytes, then writes whose sync failed, then unsynced
/// writes, each list in order.
type ImageFile = (Arc<Vec<u8>>, Vec<Pending>, Vec<Pending>);

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

fn memfd(content: &[u8]) -> io::Result<Arc<File>> {
    let fd = rustix::fs::memfd_create("keel-sim", rustix::fs::MemfdFlags::CLOEXEC)?;
    let file = File::from(fd);
    file.write_all_at(content, 0)?;
    Ok(Arc::new(file))
}

/// Applies one pending change, whole.
fn apply(content: &mut Vec<u8>, change: &Pending) {
    match change {
        Pending::Write { offset, data } => apply_write(content, *offset, data),
        Pending::Len(len) => content.resize(*len as usize, 0),
    }
}

fn apply_write(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset as usize..end].copy_from_slice(data);
}

impl SimFileSystem {
    /// An empty disk.
    pub fn new() -> SimFileSystem {
        SimFileSystem::default()
    }

    /// Arms a failure of the `n`-th `write_at` from now (1 is the next one).
    pub fn fail_nth_write(&self, n: u64, how: WriteFault) {
        self.state.lock().faults.write = Some((n.max(1), how));
    }

    /// Arms an `EIO` from the `n`-th `sync_data` or `sync_dir` from now (1 is the next one).
    pub fn fail_nth_sync(&self, n: u64) {
        self.state.lock().faults.sync = Some(n.max(1));
    }

    /// Bytes that may still be written or grown before `ENOSPC`; `None` lifts the limit.
    pub fn set_space_budget(&self, bytes: Option<u64>) {
        self.state.lock().faults.budget = bytes;
    }

    /// Makes the disk a file system of `bytes` (`None`: unlimited), as a real one fills: the
    /// bytes in use are the lengths of the files that have a name, so overwriting a file's bytes
    /// needs no space, growing one (a write past its end, `set_len`, `allocate`) fails with
    /// `ENOSPC` beyond the capacity, and removing a file gives its bytes back. (The byte budget
    /// of [`SimFileSystem::set_space_budget`] is the harsher model: every write spends.)
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().faults.capacity = bytes;
    }

    /// Bytes in use in the [`SimFileSystem::set_capacity`] model: the lengths of named files.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used_bytes()
    }

    /// Disarms every injected failure and lifts the byte budget.
    pub fn clear_faults(&self) {
        self.state.lock().faults = Faults::default();
    }

    /// Takes a [`CrashImage`] before every sync (`at_syncs`) and before `write_percent` percent
    /// of writes (chosen with `seed`), tagged with the current [`SimFileSystem::set_tag`].
    pub fn capture_crash_points(&self, at_syncs: bool, write_percent: u32, seed: u64) {
        let mut s = self.state.lock();
        s.capture.at_syncs = at_syncs;
        s.capture.write_percent = write_percent;
        s.capture.rng = Some(Rng::new(seed));
    }

    /// Sets the tag of later captures (a test's step number, say).
    pub fn set_tag(&self, tag: u64) {
        self.state.lock().capture.tag = tag;
    }

    /// Returns and forgets the captured images, oldest first, with their tags.
    pub fn take_captures(&self) -> Vec<(u64, CrashImage)> {
        std::mem::take(&mut self.state.lock().capture.taken)
    }

    /// The crash image of this moment.
    pub fn image(&self) -> CrashImage {
        self.state.lock().image()
    }

    /// Loses power now: the disk becomes what [`CrashImage::materialize`] makes of this moment.
    /// Handles (files, maps excepted, and locks) from before fail afterwards.
    pub fn crash(&self, seed: u64, model: &FaultModel) -> io::Result<()> {
        let fresh = self.image().materialize(seed, model)?;
        let fresh = std::mem::take(&mut *fresh.state.lock());
        let mut s = self.state.lock();
        let generation = s.generation + 1;
        let faults = std::mem::take(&mut s.faults);
        *s = State { generation, faults, ..fresh };
        Ok(())
    }

    fn check_generation(&self, generation: u64) -> io::Result<parking_lot::MutexGuard<'_, State>> {
        let s = self.state.lock();
        if s.generation != generation {
            return Err(eio("handle from before a simulated crash"));
        }
        Ok(s)
    }
}

impl State {
    fn image(&self) -> CrashImage {
        let files = self
            .inodes
            .iter()
            .map(|(ino, node)| (*ino, (Arc::clone(&node.durable), node.lost.clone(), node.pending.clone())))
            .collect();
        CrashImage {
            dirs: self.dirs.clone(),
            durable_names: self.durable_names.clone(),
            pending_dir_ops: self.pending_dir_ops.clone(),
            files,
        }
    }

    fn maybe_capture(&mut self, sync: bool) {
        let take = if sync {
            self.capture.at_syncs
        } else {
            let percent = self.capture.write_percent;
            percent > 0 && self.capture.rng.as_mut().is_some_and(|r| r.chance(percent))
        };
        if take {
            let image = self.image();
            self.capture.taken.push((self.capture.tag, image));
        }
    }

    fn check_dir(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(dir) if self.dirs.contains(dir) => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory for {}", path.display()))),
        }
    }

    fn used_bytes(&self) -> u64 {
        let inos: std::collections::BTreeSet<u64> = self.live_names.values().copied().collect();
        inos.iter().filter_map(|ino| self.inodes.get(ino)).filter_map(|n| n.live.metadata().ok()).map(|m| m.len()).sum()
    }

    /// Growing a file by `growth` bytes, under the capacity model.
    fn grow(&mut self, growth: u64) -> io::Result<()> {
        match self.faults.capacity {
            Some(cap) if growth > 0 && self.used_bytes() + growth > cap => Err(enospc()),
            _ => Ok(()),
        }
    }

    fn spend(&mut self, bytes: u64) -> io::Result<()> {
        match self.faults.budget {
            Some(left) if left < bytes => Err(enospc()),
            Some(left) => {
                self.faults.budget = Some(left - bytes);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn sync_fault(&mut self) -> io::Result<()> {
        self.maybe_capture(true);
        if let Some(n) = self.faults.sync {
            if n <= 1 {
                self.faults.sync = None;
                return Err(eio("fsync"));
            }
            self.faults.sync = Some(n - 1);
        }
        Ok(())
    }
}

impl CrashImage {
    /// The disk as a process started after this one was killed at this moment finds it: the
    /// page cache survives, so every write and directory operation shows, but what was not
    /// durable still is not (a later [`SimFileSystem::crash`] may lose it).
    pub fn restart(&self) -> io::Result<SimFileSystem> {
        let mut live_names = self.durable_names.clone();
        for op in &self.pending_dir_ops {
            op.apply(&mut live_names);
        }
        let mut inodes = HashMap::new();
        for (&ino, (durable, lost, pending)) in &self.files {
            let mut content = Vec::clone(durable);
            for w in lost.iter().chain(pending) {
                apply(&mut content, w);
            }
            let live = memfd(&content)?;
            inodes.insert(
                ino,
                Inode { live, durable: Arc::clone(durable), pending: pending.clone(), lost: lost.clone() },
            );
        }
        let state = State {
            next_ino: self.files.keys().max().map_or(0, |m| m + 1),
            inodes,
            dirs: self.dirs.clone(),
            live_names,
            durable_names: self.durable_names.clone(),
            pending_dir_ops: self.pending_dir_ops.clone(),
            ..State::default()
        };
        Ok(SimFileSystem { state: Arc::new(Mutex::new(state)) })
    }

    /// The disk after a power loss at this image's moment: unsynced state kept, dropped, torn
    /// (and misdirected, if asked) as [`FaultModel`] says, chosen by `seed`.
    pub fn materialize(&self, seed: u64, model: &FaultModel) -> io::Result<SimFileSystem> {
        let mut rng = Rng::new(seed);
        let mut names = self.durable_names.clone();
        let ops = self.pending_dir_ops.len() as u64;
        let kept_ops = if model.lose_dir_ops { rng.below(ops + 1) } else { ops };
        for op in &self.pending_dir_ops[..kept_ops as usize] {
            op.apply(&mut names);
        }
        let mut inodes = HashMap::new();
        for ino in names.values().copied().collect::<BTreeSet<_>>() {
            let (durable, lost, pending) = &self.files[&ino];
            let mut content = Vec::clone(durable);
            for w in lost.iter().chain(pending) {
                let fate = rng.below(100) as u32;
                let kept = fate < model.keep_percent;
                let torn = !kept && fate < model.keep_percent + model.torn_percent;
                match w {
                    Pending::Len(len) if kept || torn => content.resize(*len as usize, 0),
                    Pending::Len(_) => {}
                    Pending::Write { offset, data } if kept => {
                        let mut at = *offset;
                        if model.misdirect_percent > 0 && rng.chance(model.misdirect_percent) {
                            let sectors = (content.len() as u64).div_ceil(SECTOR_BYTES).max(1);
                            at = rng.below(sectors) * SECTOR_BYTES;
                        }
                        apply_write(&mut content, at, data);
                    }
                    Pending::Write { offset, data } if torn => {
                        let end = offset + data.len() as u64;
                        let mut at = *offset;
                        while at < end {
                            let sector_end = ((at / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                            let piece_end = sector_end.min(end);
                            if rng.chance(50) {
                                let from = (at - offset) as usize;
                                apply_write(&mut content, at, &data[from..from + (piece_end - at) as usize]);
                            }
                            at = piece_end;
                        }
                    }
                    Pending::Write { .. } => {}
                }
            }
            let live = memfd(&content)?;
            inodes.insert(ino, Inode { live, durable: Arc::new(content), pending: Vec::new(), lost: Vec::new() });
        }
        let next_ino = self.files.keys().max().map_or(0, |m| m + 1);
        let state = State {
            next_ino,
            inodes,
            dirs: self.dirs.clone(),
            live_names: names.clone(),
            durable_names: names,
            ..State::default()
        };
        Ok(SimFileSystem { state: Arc::new(Mutex::new(state)) })
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFileSystem,
    ino: u64,
    generation: u64,
}

#[derive(Debug)]
struct SimLock {
    fs: SimFileSystem,
    dir: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.fs.state.lock();
        if s.generation == self.generation {
            s.locks.remove(&self.dir);
        }
    }
}

impl FileSystem for SimFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() {
                s.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        let s = self.state.lock();
        match s.live_names.get(path) {
            Some(&ino) => Ok(Box::new(SimFile { fs: self.clone(), ino, generation: s.generation })),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        let mut s = self.state.lock();
        s.check_dir(path)?;
        if s.live_names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        let live = memfd(&[])?;
        s.inodes.insert(ino, Inode { live, durable: Arc::default(), pending: Vec::new(), lost: Vec::new() });
        s.live_names.insert(path.to_path_buf(), ino);
        s.pending_dir_ops.push(DirOp::Link { path: path.to_path_buf(), ino });
        Ok(Box::new(SimFile { fs: self.clone(), ino, generation: s.generation }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check_dir(to)?;
        let Some(ino) = s.live_names.remove(from) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", from.display())));
        };
        s.live_names.insert(to.to_path_buf(), ino);
        s.pending_dir_ops.push(DirOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.live_names.remove(path).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())));
        }
        s.pending_dir_ops.push(DirOp::Unlink { path: path.to_path_buf() });
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let s = self.state.lock();
        if !s.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display())));
        }
        let files = s.live_names.keys().filter(|p| p.parent() == Some(dir));
        let subdirs = s.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files.chain(subdirs).filter_map(|p| p.file_name().map(|n| n.to_os_string())).collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.sync_fault()?;
        let ops = std::mem::take(&mut s.pending_dir_ops);
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = ops.into_iter().partition(|op| op.dir() == dir);
        for op in &now {
            op.apply(&mut s.durable_names);
        }
        s.pending_dir_ops = later;
        // Inodes no name refers to stay: open handles may still use them, as on a real file
        // system; a crash image leaves them out.
        Ok(())
    }

    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut s = self.state.lock();
        if !s.locks.insert(dir.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(Box::new(SimLock { fs: self.clone(), dir: dir.to_path_buf(), generation: s.generation }))
    }

    fn background_threads(&self) -> bool {
        false
    }
}

impl SimFile {
    fn live(&self) -> io::Result<Arc<File>> {
        let s = self.fs.check_generation(self.generation)?;
        Ok(Arc::clone(&s.inodes[&self.ino].live))
    }
}

impl DataFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.live()?.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.check_generation(self.generation)?;
        s.maybe_capture(false);
        let mut data = buf;
        let mut fault = None;
        if let Some((n, how)) = s.faults.write {
            if n <= 1 {
                s.faults.write = None;
                match how {
                    WriteFault::Eio => return Err(eio("write")),
                    WriteFault::Short => {
                        let half = buf.len() as u64 / 2;
                        let cut = if half >= SECTOR_BYTES { half / SECTOR_BYTES * SECTOR_BYTES } else { half };
                        data = &buf[..cut as usize];
                        fault = Some(io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("simulated short write: {cut} of {} bytes", buf.len()),
                        ));
                    }
                }
            } else {
                s.faults.write = Some((n - 1, how));
            }
        }
        s.spend(data.len() as u64)?;
        let current = s.inodes[&self.ino].live.metadata()?.len();
        s.grow((offset + data.len() as u64).saturating_sub(current))?;
        let node = s.inodes.get_mut(&self.ino).expect("open file has an inode");
        node.live.write_all_at(data, offset)?;
        node.pending.push(Pending::Write { offset, data: Arc::from(data) });
        match fault {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.live()?.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.check_generation(self.generation)?;
        let current = s.inodes[&self.ino].live.metadata()?.len();
        s.spend(len.saturating_sub(current))?;
        s.grow(len.saturating_sub(current))?;
        let node = s.inodes.get_mut(&self.ino).expect("open file has an inode");
        node.live.set_len(len)?;
        node.pending.push(Pending::Len(len));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let current = self.len()?;
        if current < len { self.set_len(len) } else { Ok(()) }
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.check_generation(self.generation)?;
        let failed = s.sync_fault();
        let node = s.inodes.get_mut(&self.ino).expect("open file has an inode");
        let pending = std::mem::take(&mut node.pending);
        if let Err(e) = failed {
            node.lost.extend(pending);
            return Err(e);
        }
        let durable = Arc::make_mut(&mut node.durable);
        for p in &pending {
            apply(durable, p);
        }
        Ok(())
    }

    #[allow(unsafe_code)]
    fn map(&self, len: u64) -> io::Result<Map> {
        // SAFETY: the live image is an anonymous memory file that no other process or handle can
        // open; it changes only through this file's `write_at` and `set_len`, which keel calls
        // under `Map::new`'s rules (bytes handed to a reader are never rewritten, a mapped file is
        // never truncated). A simulated crash gives the file system new memory files and leaves
        // the old ones, and the maps into them, untouched.
        unsafe { Map::new(&*self.live()?, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(fs: &SimFileSystem, path: &Path) -> Vec<u8> {
        let f = fs.open(path).unwrap();
        let mut buf = vec![0; f.len().unwrap() as usize];
        f.read_at(&mut buf, 0).unwrap();
        buf
    }

    fn setup() -> (SimFileSystem, PathBuf) {
        let fs = SimFileSystem::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        (fs, PathBuf::from("/d/f"))
    }

    const KEEP_ALL: FaultModel =
        FaultModel { keep_percent: 100, torn_percent: 0, misdirect_percent: 0, lose_dir_ops: false };
    const DROP_ALL: FaultModel =
        FaultModel { keep_percent: 0, torn_percent: 0, misdirect_percent: 0, lose_dir_ops: true };

    #[test]
    fn synced_data_survives_and_unsynced_data_may_not() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        f.write_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_at(b"DURABLE-and-more", 0).unwrap();
        let image = fs.image();
        let dropped = image.materialize(1, &DROP_ALL).unwrap();
        assert_eq!(read_all(&dropped, &path), b"durable");
        let kept = image.materialize(1, &KEEP_ALL).unwrap();
        assert_eq!(read_all(&kept, &path), b"DURABLE-and-more");
    }

    #[test]
    fn a_file_whose_directory_was_not_synced_can_vanish() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        let image = fs.image();
        let vanished = |seed| image.materialize(seed, &DROP_ALL).unwrap().open(&path).is_err();
        assert!((0..16).any(vanished) && !(0..16).all(vanished), "the create is lost for some seeds only");
        let seed = (0..16).find(|&s| vanished(s)).unwrap();
        fs.crash(seed, &DROP_ALL).unwrap();
        assert_eq!(fs.open(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
        // The old handle is dead after the crash.
        assert!(f.write_at(b"y", 0).is_err());
    }

    #[test]
    fn torn_writes_keep_whole_sectors_only() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        f.write_at(&vec![0u8; 4096], 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_at(&vec![0xFFu8; 4096], 0).unwrap();
        let torn = FaultModel { keep_percent: 0, torn_percent: 100, misdirect_percent: 0, lose_dir_ops: false };
        let mut seen_mixed = false;
        for seed in 0..32 {
            let bytes = read_all(&fs.image().materialize(seed, &torn).unwrap(), &path);
            for sector in bytes.chunks(SECTOR_BYTES as usize) {
                assert!(sector.iter().all(|&b| b == sector[0]), "a sector is all old or all new");
            }
            seen_mixed |= bytes.contains(&0) && bytes.contains(&0xFF);
        }
        assert!(seen_mixed);
    }

    #[test]
    fn a_failed_sync_never_makes_its_writes_durable_later() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_at(b"lost", 0).unwrap();
        fs.fail_nth_sync(1);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap(); // "succeeds", as Linux does after reporting the error once
        let after = fs.image().materialize(3, &DROP_ALL).unwrap();
        assert_eq!(read_all(&after, &path), b"");
    }

    #[test]
    fn a_restart_shows_unsynced_state_that_a_later_crash_may_lose() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        f.write_at(b"cached", 0).unwrap();
        let restarted = fs.image().restart().unwrap();
        assert_eq!(read_all(&restarted, &path), b"cached");
        restarted.crash(0, &DROP_ALL).unwrap();
        let gone = restarted.open(&path).map(|_| read_all(&restarted, &path));
        assert!(gone.as_deref().map_or(true, |b| b.is_empty()), "neither the name nor the bytes were durable");
    }

    #[test]
    fn injected_write_failures_and_budget() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        fs.fail_nth_write(2, WriteFault::Eio);
        f.write_at(b"one", 0).unwrap();
        assert!(f.write_at(b"two", 3).is_err());
        fs.fail_nth_write(1, WriteFault::Short);
        assert!(f.write_at(&[9u8; 2048], 0).is_err());
        assert_eq!(&read_all(&fs, &path)[..1024], &[9u8; 1024][..]);
        assert_eq!(read_all(&fs, &path).len(), 1024);
        fs.set_space_budget(Some(10));
        assert_eq!(f.write_at(&[1u8; 11], 0).unwrap_err().raw_os_error(), Some(28));
        f.write_at(&[1u8; 10], 0).unwrap();
        fs.set_space_budget(None);
        f.write_at(&[1u8; 100], 0).unwrap();
    }

    #[test]
    fn maps_follow_writes_and_renames_need_a_directory_sync() {
        let (fs, path) = setup();
        let f = fs.create(&path).unwrap();
        f.set_len(4096).unwrap();
        let map = f.map(4096).unwrap();
        f.write_at(b"seen", 10).unwrap();
        assert_eq!(&map[10..14], b"seen");
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.rename(&path, Path::new("/d/g")).unwrap();
        let image = fs.image();
        let outcomes: Vec<(bool, bool)> = (0..16)
            .map(|seed| {
                let after = image.materialize(seed, &DROP_ALL).unwrap();
                (after.open(&path).is_ok(), after.open(Path::new("/d/g")).is_ok())
            })
            .collect();
        assert!(outcomes.iter().all(|&(f, g)| f != g), "exactly one name, never both or none");
        assert!(outcomes.contains(&(true, false)) && outcomes.contains(&(false, true)));
        fs.sync_dir(Path::new("/d")).unwrap();
        let kept = fs.image().materialize(0, &DROP_ALL).unwrap();
        assert!(kept.open(&path).is_err() && kept.open(Path::new("/d/g")).is_ok());
    }
}
