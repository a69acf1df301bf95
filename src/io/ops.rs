//! Small I/O routines that more than one module needs, written once so that each keeps one
//! error mapping and one sequence of operations (the simulated disk's crash points count them).

use super::{DataFile, FileSystem};
use crate::error::{Error, Result};
use std::any::Any;
use std::io;
use std::path::Path;

/// The largest single write of [`zero_fill`].
const ZERO_WRITE_BYTES_MAX: u64 = 1 << 20;

/// Creates `dir` if missing and takes its exclusive lock (the `LOCK` file), held until the
/// returned guard drops. Another holder gives [`Error::Locked`]. Every directory it creates is
/// made durable in its parent (`fsync` of the parent), so a power loss cannot take the data
/// directory's entry away from under files synced inside it.
pub(crate) fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Box<dyn Any + Send + Sync>> {
    let mut created = Vec::new();
    let mut missing = Some(dir);
    while let Some(d) = missing.filter(|d| !d.as_os_str().is_empty() && fs.list(d).is_err()) {
        created.push(d);
        missing = d.parent();
    }
    fs.create_dir_all(dir).map_err(Error::at("create directory", dir))?;
    for d in created.iter().rev() {
        sync_parent(fs, d)?;
    }
    fs.lock(dir).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => Error::Locked { dir: dir.to_path_buf() },
        _ => Error::io("lock", dir.join("LOCK"), e),
    })
}

/// Makes `dir`'s own entry durable: an `fsync` of the directory holding it (`.` for a relative
/// name with no parent; nothing for the root).
pub(crate) fn sync_parent(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Ok(()),
    };
    fs.sync_dir(parent).map_err(Error::at("fsync directory", parent))
}

/// Writes zeros over `[from, to)` of `file`, in order, one write per MiB (the last one shorter).
/// Does not sync: the caller does, as its protocol requires.
pub(crate) fn zero_fill(file: &dyn DataFile, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; to.saturating_sub(from).min(ZERO_WRITE_BYTES_MAX) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZERO_WRITE_BYTES_MAX) as usize;
        file.write_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
