//! Is a directory held open by a live keel process? Answered without taking its lock.
//!
//! A live `Log` or `DiskStorage` holds `flock(LOCK_EX)` on `<dir>/LOCK` for as long as it is
//! open. On Linux the held locks are listed in `/proc/locks` by device and inode, so the answer
//! is read there and no lock is taken at all. Elsewhere (or if `/proc/locks` cannot be read) a
//! non-blocking `flock` probe answers, released at once: it never blocks, and it never keeps a
//! lock, but a keel process opening the directory in the same instant would find it locked and
//! fail its open, which is why `/proc/locks` comes first.

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether some process holds the `flock` on `lock_file` (`false` if there is no such file).
/// Creates nothing and keeps no lock.
pub fn lock_held(lock_file: &Path) -> io::Result<bool> {
    let meta = match std::fs::metadata(lock_file) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
        return Ok(listed(&locks, meta.dev(), meta.ino()));
    }
    probe(lock_file)
}

/// Whether `/proc/locks` (its text) lists a lock on the file at device `dev`, inode `ino`.
fn listed(locks: &str, dev: u64, ino: u64) -> bool {
    // glibc's encoding of a device number (`major(3)`, `minor(3)`).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    // A line: "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF" (a blocked waiter's has "->";
    // only a granted lock counts). The file is "MAJOR:MINOR:INODE", the first two in hex.
    locks.lines().filter(|l| !l.contains("->")).any(|line| {
        line.split_whitespace().any(|field| {
            let mut parts = field.split(':');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(ma), Some(mi), Some(i), None) => {
                    u64::from_str_radix(ma, 16).ok() == Some(major)
                        && u64::from_str_radix(mi, 16).ok() == Some(minor)
                        && i.parse::<u64>().ok() == Some(ino)
                }
                _ => false,
            }
        })
    })
}

/// A non-blocking exclusive `flock` on a read-only descriptor, released at once.
fn probe(lock_file: &Path) -> io::Result<bool> {
    let f = File::open(lock_file)?;
    match f.try_lock() {
        Ok(()) => {
            f.unlock()?;
            Ok(false)
        }
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_and_a_released_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("LOCK");
        assert!(!lock_held(&p).unwrap(), "no LOCK file: not held");
        assert!(!p.exists(), "the check creates nothing");
        let holder = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
        assert!(!lock_held(&p).unwrap());
        holder.lock().unwrap();
        assert!(lock_held(&p).unwrap());
        assert!(probe(&p).unwrap(), "the fallback probe agrees");
        holder.unlock().unwrap();
        assert!(!lock_held(&p).unwrap());
        assert!(!probe(&p).unwrap());
    }

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let dev = (8 << 8) | 1; // 08:01
        let text =
            "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF\n2: -> FLOCK  ADVISORY  WRITE 99 08:01:7 0 EOF\n";
        assert!(listed(text, dev, 1234567));
        assert!(!listed(text, dev, 7), "a blocked waiter holds nothing");
        assert!(!listed(text, dev + 1, 1234567));
    }
}
