//! [`ReadOnlyFileSystem`]: the real file system, opened for reading only, for inspecting a data
//! directory (`keel inspect`, `verify`, `dump`) without changing a byte of it.
//!
//! Files are opened `O_RDONLY`, so a write that slipped into the read-only path would fail in
//! the kernel (`EBADF`) rather than change the file; every operation that would change the
//! directory (create, rename, remove, a lock, an fsync) is refused here with
//! [`io::ErrorKind::PermissionDenied`] before it reaches the kernel. Nothing is mapped:
//! a live process may be writing the files, and a map of bytes that change under it is not
//! sound (see `mmap.rs`), so everything is read with `pread`.

use super::{DataFile, FileSystem, Map};
use std::any::Any;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The real file system, for reading only: every change is refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadOnlyFileSystem;

#[derive(Debug)]
struct ReadOnlyFile(File);

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{what} refused: the directory is opened read-only"))
}

impl FileSystem for ReadOnlyFileSystem {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Err(refused("create directory"))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DataFile>> {
        // `O_NONBLOCK`: opening a FIFO named like a keel file (an adversarial or damaged
        // directory) for reading would otherwise block until some writer opens it, hanging the
        // inspection. It changes nothing for regular files, the only kind read here.
        let file =
            fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path)?;
        let kind = file.metadata()?.file_type();
        if !kind.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a regular file ({kind:?}): a keel data directory holds only regular files"),
            ));
        }
        Ok(Box::new(ReadOnlyFile(file)))
    }

    fn create(&self, _: &Path) -> io::Result<Box<dyn DataFile>> {
        Err(refused("create"))
    }

    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(refused("rename"))
    }

    fn remove(&self, _: &Path) -> io::Result<()> {
        Err(refused("remove"))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }

    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Err(refused("fsync directory"))
    }

    fn lock(&self, _: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        Err(refused("lock"))
    }

    fn background_threads(&self) -> bool {
        false
    }
}

impl DataFile for ReadOnlyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(refused("write"))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(refused("truncate"))
    }

    fn allocate(&self, _: u64) -> io::Result<()> {
        Err(refused("allocate"))
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(refused("fdatasync"))
    }

    fn map(&self, _: u64) -> io::Result<Map> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "a read-only inspection maps nothing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_refused_and_reads_work() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello").unwrap();
        let ro = ReadOnlyFileSystem;
        let f = ro.open(&p).unwrap();
        let mut b = [0u8; 3];
        f.read_at(&mut b, 1).unwrap();
        assert_eq!(&b, b"ell");
        assert_eq!(f.len().unwrap(), 5);
        assert!(f.write_at(b"x", 0).is_err());
        assert!(f.set_len(0).is_err());
        assert!(f.sync_data().is_err());
        assert!(ro.remove(&p).is_err());
        assert!(ro.create(&dir.path().join("g")).is_err());
        assert!(ro.lock(dir.path()).is_err());
        assert!(ro.rename(&p, &dir.path().join("h")).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(ro.list(dir.path()).unwrap(), vec![OsString::from("f")]);
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_at_open_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("00000000000000000001.seg");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        // Without O_NONBLOCK this open blocks forever: no writer ever opens the FIFO.
        let e = ReadOnlyFileSystem.open(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let sub = dir.path().join("00000000000000000002.seg");
        fs::create_dir(&sub).unwrap();
        assert_eq!(ReadOnlyFileSystem.open(&sub).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
