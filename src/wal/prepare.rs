//! Segment files made ready before they are needed.
//!
//! An `fdatasync` into space that was only `fallocate`d also commits the file system's journal
//! (the extent changes from unwritten to written), which on ext4 costs about a third of the sync
//! rate at 4 KiB. So by default the next segment file is written full of zeros and synced ahead
//! of time, on a background thread, under the name `next.prep`; a rotation only writes the header
//! into it, syncs, renames it to its segment name and syncs the directory. Every `fdatasync` of an
//! append then overwrites blocks that were already written.
//!
//! Preparation starts when the active segment is half full, so opening a log (or a log that
//! never fills a segment) writes nothing extra, and half a segment of appends leaves ample time.
//! Zero-filling doubles the bytes written, which large synced batches notice more than the
//! journal commits it saves; `Auto` (the default) picks per segment from the bytes per sync.
//!
//! Invariants: at most one `next.prep` exists and only the preparer writes it; a rotation takes
//! it only after the thread that wrote it has finished (joined); a leftover `next.prep` after a
//! crash is simply prepared again.

use crate::io::{FileSystem, ops};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The file name of the segment being prepared.
pub(crate) const PREPARED_NAME: &str = "next.prep";

/// How a new segment file's space is made ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentPreparation {
    /// Chosen per segment from how the log is being written: `ZeroFill` while syncs cover less
    /// than [`AUTO_ZERO_FILL_BELOW`] bytes on average (sync-bound: the journal commit of an
    /// unwritten extent is a large part of each sync), `Fallocate` above (bandwidth-bound: a
    /// second write of every segment costs more than the journal commits it saves).
    #[default]
    Auto,
    /// Written full of zeros and synced, ahead of time on a background thread: appends then sync
    /// at the disk's overwrite speed. Costs one sequential write of each segment.
    ZeroFill,
    /// Only `fallocate`d: no extra write, but each append's `fdatasync` also commits the file
    /// system journal.
    Fallocate,
}

/// `Auto` zero-fills the next segment while the average bytes per sync stay below this.
pub const AUTO_ZERO_FILL_BELOW: u64 = 64 << 10;

impl SegmentPreparation {
    /// The concrete method for the next segment, given the average bytes per sync of the
    /// active one (unknown for the first segment of a log: small writes are assumed).
    pub(crate) fn resolve(self, bytes_per_sync: Option<u64>) -> SegmentPreparation {
        match self {
            SegmentPreparation::Auto if bytes_per_sync.is_some_and(|b| b >= AUTO_ZERO_FILL_BELOW) => {
                SegmentPreparation::Fallocate
            }
            SegmentPreparation::Auto => SegmentPreparation::ZeroFill,
            other => other,
        }
    }
}

/// Makes `path` a file of `size` bytes ready to become a segment, durably.
pub(crate) fn prepare_file(fs: &dyn FileSystem, path: &Path, size: u64, how: SegmentPreparation) -> io::Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = fs.create(path)?;
    let made = match how.resolve(None) {
        SegmentPreparation::Fallocate => file.allocate(size),
        SegmentPreparation::ZeroFill | SegmentPreparation::Auto => ops::zero_fill(file.as_ref(), 0, size),
    }
    .and_then(|()| file.sync_data());
    if made.is_err() {
        // Give back what a failed preparation took (on a full disk, the space a retry needs).
        // The file is never read, so leaving it after a failed removal is harmless.
        drop(file);
        let _ = fs.remove(path);
    }
    made
}

/// Whether `path` is a prepared file left by an earlier process, whole (`size` bytes), so that
/// it can become the next segment without writing (on a full disk, without space). Made durable
/// here: its preparation may have been cut short before its fdatasync.
pub(crate) fn reuse_prepared(fs: &dyn FileSystem, path: &Path, size: u64) -> io::Result<bool> {
    let file = match fs.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if file.len()? != size {
        return Ok(false);
    }
    file.sync_data()?;
    Ok(true)
}

/// Prepares the next segment file on a background thread.
#[derive(Debug)]
pub(crate) struct Preparer {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    size: u64,
    how: SegmentPreparation,
    running: Option<Running>,
}

impl Preparer {
    pub(crate) fn new(fs: Arc<dyn FileSystem>, dir: &Path, size: u64, how: SegmentPreparation) -> Preparer {
        Preparer { fs, path: dir.join(PREPARED_NAME), size, how, running: None }
    }

    /// Whether a preparation was started and not yet taken.
    pub(crate) fn started(&self) -> bool {
        self.running.is_some()
    }

    /// Starts preparing the next file in the background; `bytes_per_sync` of the active segment
    /// steers [`SegmentPreparation::Auto`].
    pub(crate) fn start(&mut self, bytes_per_sync: Option<u64>) {
        assert!(self.running.is_none(), "one preparation at a time");
        let how = self.how.resolve(bytes_per_sync);
        if !self.fs.background_threads() {
            // A simulated disk wants one replayable order of operations: prepare right here.
            self.running = Some(Running::Done(prepare_file(self.fs.as_ref(), &self.path, self.size, how)));
            return;
        }
        let (fs, path, size) = (Arc::clone(&self.fs), self.path.clone(), self.size);
        let spawned = std::thread::Builder::new()
            .name("keel-prepare".into())
            .spawn(move || prepare_file(fs.as_ref(), &path, size, how));
        // If no thread can be made, `take` prepares in the foreground instead.
        self.running = spawned.ok().map(Running::Thread);
    }

    /// Makes sure the prepared file exists now (waiting for, or doing, its preparation); the
    /// next [`Preparer::take`] returns it without work.
    pub(crate) fn ensure(&mut self) -> io::Result<()> {
        self.take()?;
        self.running = Some(Running::Done(Ok(())));
        Ok(())
    }

    /// Waits for the prepared file (preparing it now if nothing was started) and returns its path.
    pub(crate) fn take(&mut self) -> io::Result<&Path> {
        match self.running.take() {
            Some(Running::Thread(handle)) => {
                handle.join().map_err(|_| io::Error::other("the segment preparer thread panicked"))??
            }
            Some(Running::Done(result)) => result?,
            None => prepare_file(self.fs.as_ref(), &self.path, self.size, self.how)?,
        }
        Ok(&self.path)
    }
}

/// A preparation under way on a thread, or done in the foreground.
#[derive(Debug)]
enum Running {
    Thread(JoinHandle<io::Result<()>>),
    Done(io::Result<()>),
}

impl Drop for Preparer {
    fn drop(&mut self) {
        // Finish writing before the log (and perhaps its directory) goes away.
        if let Some(Running::Thread(handle)) = self.running.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_by_bytes_per_sync() {
        use SegmentPreparation::*;
        assert_eq!(Auto.resolve(None), ZeroFill);
        assert_eq!(Auto.resolve(Some(4136)), ZeroFill);
        assert_eq!(Auto.resolve(Some(AUTO_ZERO_FILL_BELOW)), Fallocate);
        assert_eq!(ZeroFill.resolve(Some(1 << 30)), ZeroFill);
        assert_eq!(Fallocate.resolve(None), Fallocate);
    }
}
