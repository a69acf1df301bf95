//! [`FileSystem`] over the real operating system.

use super::{DataFile, FileSystem, Map};
use std::any::Any;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The real file system (`std::fs`, with `fallocate` from `rustix`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFileSystem;

#[derive(Debug)]
struct StdFile(File);

impl FileSystem for StdFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        let f = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        // A lock file rather than the directory itself: flock on a directory fd works on Linux
        // but not everywhere, and a named file tells an operator what holds the directory.
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("LOCK"))?;
        match f.try_lock() {
            Ok(()) => Ok(Box::new(f)),
            Err(TryLockError::WouldBlock) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

impl DataFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs on old kernels, some FUSE): extend instead.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                if self.len()? < len {
                    self.0.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn map(&self, len: u64) -> io::Result<Map> {
        Map::data_directory_file(&self.0, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = StdFileSystem.lock(dir.path()).unwrap();
        let second = StdFileSystem.lock(dir.path()).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::WouldBlock);
        drop(held);
        StdFileSystem.lock(dir.path()).unwrap();
    }

    #[test]
    fn positional_io_allocate_and_short_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = StdFileSystem.create(&path).unwrap();
        assert!(StdFileSystem.create(&path).is_err(), "create must not replace a file");
        f.allocate(8192).unwrap();
        assert_eq!(f.len().unwrap(), 8192);
        f.write_at(b"hello", 4096).unwrap();
        let mut buf = [0u8; 5];
        f.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(f.read_at(&mut buf, 8190).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        f.sync_data().unwrap();
        StdFileSystem.sync_dir(dir.path()).unwrap();
        let names = StdFileSystem.list(dir.path()).unwrap();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        StdFileSystem.rename(&path, &dir.path().join("g")).unwrap();
        StdFileSystem.remove(&dir.path().join("g")).unwrap();
        assert!(StdFileSystem.list(dir.path()).unwrap().is_empty());
    }
}
