//! Read-only memory maps of segment files: the only module of keel with `unsafe` code.
//!
//! # Soundness
//!
//! A `&[u8]` into a file mapping is sound only while no one changes or removes the mapped bytes
//! under it. keel guarantees that for every byte it hands out:
//!
//! 1. **No other writer.** The log holds an exclusive lock on its directory (`LOCK`, taken with
//!    `flock`) for as long as it is open, so no other keel instance, in this process or another,
//!    writes the files. (Processes that ignore the lock are outside the model, as for every
//!    mmap-based engine.)
//! 2. **Never truncated while mapped; unlinked while mapped only.** A segment file keeps its
//!    preallocated size for its whole life (nothing calls `set_len` on a segment). Compaction
//!    and reset (`Log::remove_segments_below`) unlink segment files while maps of them are
//!    alive: the log's own until it drops the segment, and every payload handle a reader holds
//!    (an `Arc<Map>`), for as long as the reader keeps it. That is sound: a mapping keeps the
//!    file's inode and blocks until it is unmapped, and nothing writes an unlinked segment.
//!    Recovery removes segments (below the compaction boundary, or holding nothing valid) after
//!    dropping their maps, before the log exists.
//! 3. **Only written bytes are read, and written bytes are never rewritten while a reader may
//!    hold them.** The log reads a range only after the `pwrite` that filled it returned, and
//!    never writes over a range it has indexed: a Raft truncation appends a superseding record
//!    instead of overwriting the old one. Recovery zeroes a torn tail after the segment is
//!    mapped (`Recovery::make_durable`), but before the log is returned: no slice into the
//!    segment has been handed out yet, and the zeroed bytes lie past every record it indexes.
//!
//! A read of a mapped page whose disk block fails raises `SIGBUS` rather than an error. So the
//! reads that cover whole segments, recovery's scans and `Log::verify`, go through `pread`
//! (`wal/reader.rs`) and report `EIO` as an error naming the file and offset. Entry reads come
//! from the map and accept `SIGBUS` on a bad sector as the price of zero-copy payloads.

use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::io;
use std::ops::Deref;

/// A read-only, shared mapping of the first `len` bytes of a file.
#[derive(Debug)]
pub struct Map {
    // `None` for a zero-length map: mmap(2) refuses length 0.
    inner: Option<Mmap>,
}

impl Map {
    /// Maps `[0, len)` of `file` read-only and shared, so later writes through the file show.
    ///
    /// This is what a [`FileSystem`](super::FileSystem) implementation's
    /// [`DataFile::map`](super::DataFile::map) returns; keel's own
    /// [`StdFileSystem`](super::StdFileSystem) makes its maps the same way.
    ///
    /// # Safety
    ///
    /// The bytes of `[0, len)` must not be truncated away or changed while the map lives, except
    /// by the `write_at` calls keel itself makes on the same file under the rules in this
    /// module's documentation (keel writes only bytes no reader was handed and never truncates a
    /// mapped file). In particular no other process and no other handle may write or truncate the
    /// file: a file under keel's directory lock, or an anonymous file nobody else can open, meets
    /// this.
    pub unsafe fn new(file: &File, len: u64) -> io::Result<Map> {
        if len == 0 {
            return Ok(Map { inner: None });
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("map length exceeds the address space"))?;
        // SAFETY: memmap2 needs the file neither modified nor truncated by others while the map
        // lives; this function's `# Safety` contract passes that requirement on to its caller.
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        Ok(Map { inner: Some(map) })
    }

    /// Maps a file of keel's data directory, for [`StdFileSystem`](super::StdFileSystem).
    pub(crate) fn data_directory_file(file: &File, len: u64) -> io::Result<Map> {
        // The module doc gives the argument: the directory lock excludes other writers, files are
        // never truncated while mapped, and mapped bytes that were handed out are never rewritten.
        // SAFETY: those are exactly `Map::new`'s conditions (module doc, "Soundness").
        unsafe { Map::new(file, len) }
    }

    /// A map of nothing (made without `mmap`): for a segment that is read only through `pread`.
    pub(crate) fn empty() -> Map {
        Map { inner: None }
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |m| m.len())
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Deref for Map {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.inner.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn map_sees_later_writes_and_zero_length_is_empty() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        // SAFETY: the temporary file is this test's alone, and only grows while mapped.
        let m = unsafe { Map::new(&f, 8192) }.unwrap();
        assert_eq!(m.len(), 8192);
        assert!(m[..].iter().all(|&b| b == 0));
        f.write_all_at(b"written after mapping", 100).unwrap();
        assert_eq!(&m[100..121], b"written after mapping");
        // SAFETY: as above.
        let empty = unsafe { Map::new(&f, 0) }.unwrap();
        assert!(empty.is_empty());
        assert_eq!(&empty[..], &[] as &[u8]);
    }
}
