//! The space reserve: a file of `StorageOptions::reserve_bytes` that `DiskStorage` keeps in its
//! directory and gives back to the file system when a snapshot finds the disk full.
//!
//! Freeing space must not need space. Compaction itself needs none (every segment keeps room for
//! its marker, `limits::MARKER_RESERVE_BYTES`), but the snapshot that lets Raft compact is a new
//! file as large as the state machine. So the storage holds this much space aside while the disk
//! has it; a snapshot write that runs out of space releases it (remove, directory fsync) and
//! fails with [`Error::NoSpace`]; the retry has the reserve's bytes to write into; the compaction
//! that follows frees segments, after which the reserve is taken again if there is room.
//!
//! Invariants: the file is named [`RESERVE_NAME`], holds no data anyone reads, and is either
//! whole (`reserve_bytes` long, allocated) or absent; taking it never fails an operation (a full
//! disk just leaves it absent).

use crate::error::{Error, Result, is_no_space_io};
use crate::io::FileSystem;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The reserve's file name in the storage directory.
pub(crate) const RESERVE_NAME: &str = "reserve";

/// The reserve of one storage directory.
#[derive(Debug)]
pub(crate) struct Reserve {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    path: PathBuf,
    bytes: u64,
    held: AtomicBool,
}

impl Reserve {
    pub(crate) fn new(fs: Arc<dyn FileSystem>, dir: &Path, bytes: u64) -> Reserve {
        Reserve { fs, dir: dir.to_path_buf(), path: dir.join(RESERVE_NAME), bytes, held: AtomicBool::new(false) }
    }

    /// Whether the reserve's space is held now.
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Takes the reserve's space if it is not held: allocates the whole file, durably. A disk
    /// too full for it leaves it absent (no error); other I/O errors are reported.
    pub(crate) fn take(&self) -> Result<()> {
        if self.bytes == 0 || self.is_held() {
            return Ok(());
        }
        let existing = match self.fs.open(&self.path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("open", &self.path, e)),
        };
        let created = existing.is_none();
        let file = match existing {
            Some(f) => f,
            None => self.fs.create(&self.path).map_err(Error::at("create", &self.path))?,
        };
        match file.allocate(self.bytes).and_then(|()| file.sync_data()) {
            Ok(()) => {}
            Err(e) if is_no_space_io(&e) => {
                drop(file);
                let _ = self.fs.remove(&self.path);
                return Ok(());
            }
            Err(e) => return Err(Error::io("allocate", &self.path, e)),
        }
        if created {
            self.fs.sync_dir(&self.dir).map_err(Error::at("fsync directory", &self.dir))?;
        }
        self.held.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Gives the reserve's space back to the file system (remove, directory fsync). Returns
    /// whether there was anything to give.
    pub(crate) fn release(&self) -> Result<bool> {
        if !self.held.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        self.fs.remove(&self.path).map_err(Error::at("remove", &self.path))?;
        self.fs.sync_dir(&self.dir).map_err(Error::at("fsync directory", &self.dir))?;
        Ok(true)
    }

    /// `r`, or on a full disk the reserve released and `NoSpace` naming `op` and `path`: the
    /// caller's retry has the reserve's bytes. Only [`Error::NoSpace`] counts (a write refused
    /// before anything was put in place), not an I/O error whose cause was ENOSPC: an fsync
    /// after a rename may fail so with the file already in place, which is a failed write.
    pub(crate) fn on_no_space<T>(&self, r: Result<T>, op: &'static str, path: &Path) -> Result<T> {
        match r {
            Err(Error::NoSpace { .. }) => {
                self.release()?;
                Err(Error::NoSpace { op, path: path.to_path_buf() })
            }
            r => r,
        }
    }
}
