//! The one narrow interface through which keel touches files.
//!
//! Everything that reads or writes the data directory goes through [`FileSystem`] and
//! [`DataFile`], so a simulated disk (crashing, tearing writes, failing fsync) can stand in for
//! the real one in tests. [`StdFileSystem`] is the real implementation over `std` and `rustix`;
//! [`ReadOnlyFileSystem`] is the real one opened for reading only, refusing every change
//! (for inspecting a directory).
//!
//! Memory maps are made by [`Map`] in the `mmap` module, the only place in the library with
//! `unsafe` code. The simulated disk the crash tests run on, `SimFileSystem`, implements these
//! traits from outside the library, in the `keel-harness` crate.

#[allow(unsafe_code)]
mod mmap;
pub(crate) mod ops;
mod read_only;
mod std_fs;

pub use mmap::Map;
pub use read_only::ReadOnlyFileSystem;
pub use std_fs::StdFileSystem;

use std::any::Any;
use std::ffi::OsString;
use std::fmt::Debug;
use std::io;
use std::path::Path;

/// Directory-level operations.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn DataFile>>;
    /// Creates a new file for reading and writing; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DataFile>>;
    /// Renames `from` to `to`, replacing `to`. Durable only after [`FileSystem::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. Durable only after [`FileSystem::sync_dir`].
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Makes creations, renames and removals in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir`, held until the returned guard drops.
    /// Fails with [`io::ErrorKind::WouldBlock`] if any other holder (any process) has it.
    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Whether keel may do I/O on background threads (preparing the next segment). A simulated
    /// disk says no, so that every operation happens on the caller's thread in a replayable order.
    fn background_threads(&self) -> bool {
        true
    }
}

/// A file opened for positional reads and writes.
#[allow(clippy::len_without_is_empty)] // `len` is file metadata, not a collection size
pub trait DataFile: Send + Sync + Debug {
    /// Fills `buf` from `offset`; a short file is an [`io::ErrorKind::UnexpectedEof`] error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The current size in bytes (metadata: not trusted for anything but bounds).
    fn len(&self) -> io::Result<u64>;
    /// Sets the size, truncating or extending with zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks for `[0, len)` and extends the size to at least `len`.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Makes the written data (and the size) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Maps `[0, len)` read-only. The bytes of the map follow later `write_at` calls.
    fn map(&self, len: u64) -> io::Result<Map>;
}
