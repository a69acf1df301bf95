//! Reading a segment file through `pread`, in large chunks: the scans of recovery and
//! [`Log::verify`](super::Log::verify).
//!
//! A read through a segment's map whose page the disk cannot deliver (a bad sector) raises
//! `SIGBUS` and kills the process. Recovery and `verify` read every byte of some segments, the
//! bytes most likely to have gone bad since they were written, so they read through
//! [`DataFile::read_at`] instead, where a failed read is an [`Error::Io`] naming the file and the
//! offset. Entry reads after open still come from the map (ARCHITECTURE.md, "Reads come from
//! maps"): zero-copy payloads are worth that risk there.
//!
//! Invariants: the buffer holds the bytes of `[start, start + buf.len())` of the file as read;
//! nothing at or past `size` is ever read.

use super::record::{self, Damage, Header};
use crate::error::{Error, Result};
use crate::io::DataFile;
use crate::limits::RECORD_HEADER_BYTES;
use std::io;
use std::path::Path;

/// Bytes read at once when the bytes asked for are not buffered: a scan costs one `pread` per
/// MiB (a record larger than that is read whole).
pub(crate) const CHUNK_BYTES: u64 = 1 << 20;

/// Buffered positional reads of the first `size` bytes of a segment file.
pub(crate) struct SegmentReader<'a> {
    file: &'a dyn DataFile,
    path: &'a Path,
    size: u64,
    /// Bytes read at least, when what is asked for is not buffered.
    chunk_bytes: u64,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    start: u64,
}

impl<'a> SegmentReader<'a> {
    /// A reader of `[0, size)` of `file` (at `path`, for errors) for scans: it reads ahead a
    /// chunk at a time. Reads nothing yet.
    pub(crate) fn new(file: &'a dyn DataFile, path: &'a Path, size: u64) -> SegmentReader<'a> {
        SegmentReader { file, path, size, chunk_bytes: CHUNK_BYTES, buf: Vec::new(), start: 0 }
    }

    /// A reader that reads only what it is asked for, for a lookup of one record.
    pub(crate) fn exact(file: &'a dyn DataFile, path: &'a Path, size: u64) -> SegmentReader<'a> {
        SegmentReader { chunk_bytes: 0, ..SegmentReader::new(file, path, size) }
    }

    /// The bytes that may be read: the segment's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn file(&self) -> &'a dyn DataFile {
        self.file
    }

    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }

    /// The bytes of `[offset, offset + len)`, cut short at the segment's size. When they are not
    /// all buffered, reads from `offset` at least a chunk (or `len`, if larger) in one `pread`.
    pub(crate) fn bytes(&mut self, offset: u64, len: u64) -> Result<&[u8]> {
        let end = offset.saturating_add(len).min(self.size);
        let offset = offset.min(end);
        if offset < self.start || end > self.start + self.buf.len() as u64 {
            let read_end = end.max(offset.saturating_add(self.chunk_bytes).min(self.size));
            self.buf.clear();
            self.buf.resize((read_end - offset) as usize, 0);
            if let Err(e) = read_exact_at(self.file, self.path, &mut self.buf, offset) {
                self.buf.clear();
                return Err(e);
            }
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        Ok(&self.buf[from..from + (end - offset) as usize])
    }

    /// The record at `offset` of segment `id`: its header checked, then the whole record.
    /// `Ok(Err(_))` when the bytes there are not a valid record; `Err` when they cannot be read.
    pub(crate) fn record(&mut self, offset: u64, id: u64) -> Result<std::result::Result<(Header, &[u8]), Damage>> {
        let size = self.size;
        let h = match record::decode_header(self.bytes(offset, RECORD_HEADER_BYTES)?, id, offset, size) {
            Ok(h) => h,
            Err(d) => return Ok(Err(d)),
        };
        // `decode_header` checked that the whole record lies within the segment.
        let bytes = self.bytes(offset, h.record_bytes())?;
        Ok(record::check_payload(bytes, id, &h).map(|payload| (h, payload)))
    }
}

/// Fills `buf` from `offset` of `file`; a failure is an [`Error::Io`] naming the file, and the
/// offset and length in its message.
pub(crate) fn read_exact_at(file: &dyn DataFile, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_at(buf, offset).map_err(|e| {
        let source = io::Error::new(e.kind(), format!("{} bytes at offset {offset}: {e}", buf.len()));
        Error::io("read", path, source)
    })
}

/// A `DataFile` over bytes in memory, for unit tests of the readers' users.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct MemFile(pub Vec<u8>);

#[cfg(test)]
impl DataFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let from = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self.0.get(from..from + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn allocate(&self, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn map(&self, _: u64) -> io::Result<crate::io::Map> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_read_in_chunks_and_cut_at_the_size() {
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 100).map(|i| (i % 251) as u8).collect();
        let file = MemFile(data.clone());
        let size = data.len() as u64 - 50;
        let mut r = SegmentReader::new(&file, Path::new("seg"), size);
        assert_eq!(r.bytes(10, 20).unwrap(), &data[10..30]);
        assert_eq!(r.buf.len() as u64, CHUNK_BYTES);
        assert_eq!(r.bytes(CHUNK_BYTES - 5, 10).unwrap(), &data[CHUNK_BYTES as usize - 5..CHUNK_BYTES as usize + 5]);
        let big = 2 * CHUNK_BYTES;
        assert_eq!(r.bytes(7, big).unwrap(), &data[7..7 + big as usize]);
        assert_eq!(r.bytes(size - 10, 100).unwrap(), &data[size as usize - 10..size as usize]);
        assert!(r.bytes(size + 10, 5).unwrap().is_empty());
    }

    #[test]
    fn a_failed_read_names_the_file_and_offset() {
        let file = MemFile(vec![0; 100]);
        let mut r = SegmentReader::new(&file, Path::new("short.seg"), 4096);
        match r.bytes(64, 40) {
            Err(Error::Io { op: "read", path, source }) => {
                assert_eq!(path, Path::new("short.seg"));
                assert!(source.to_string().contains("at offset 64"), "{source}");
            }
            other => panic!("{other:?}"),
        }
    }
}
