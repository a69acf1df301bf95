//! Reading the entries of a log for `keel dump`: each record read back through `pread` and
//! checksum-verified, and the Raft entry a `DiskStorage` payload holds decoded without trusting
//! it (`segments/FORMAT.md`, "Raft entries in records").

use crate::error::{Corruption, Error, Result};
use crate::io::{DataFile, FileSystem};
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::storage::EntryType;
use crate::wal::EntryLocation;
use crate::wal::reader::SegmentReader;
use crate::wal::segment::{self, HeaderCheck};
use std::path::PathBuf;

/// The Raft entry a `DiskStorage` record payload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageEntry<'a> {
    /// The entry type.
    pub entry_type: EntryType,
    /// The application context, when the entry has one (bit 7 of the type byte).
    pub context: Option<&'a [u8]>,
    /// The entry's data.
    pub data: &'a [u8],
}

/// Decodes a `DiskStorage` payload: the type byte, an optional context, the data. `Err` says
/// what is malformed (bytes from disk are untrusted: never a panic).
pub fn decode_storage_entry(payload: &[u8]) -> std::result::Result<StorageEntry<'_>, String> {
    // The same decoding `DiskStorage` reads entries with.
    let (entry_type, context, data) = crate::storage::disk::parse_entry_payload(payload)?;
    let context = (!context.is_empty()).then(|| &payload[context]);
    Ok(StorageEntry { entry_type, context, data: &payload[data] })
}

/// Reads entries' payloads by their locations, keeping the segment being read open.
#[derive(Debug)]
pub struct EntryReader<'a> {
    fs: &'a dyn FileSystem,
    open: Option<(PathBuf, Box<dyn DataFile>, u64)>,
}

impl<'a> EntryReader<'a> {
    /// A reader through `fs` (a read-only one, for inspection).
    pub fn new(fs: &'a dyn FileSystem) -> EntryReader<'a> {
        EntryReader { fs, open: None }
    }

    /// The payload of the entry at `loc`, its record's checksums verified; a damaged record is
    /// an [`Error::Corruption`] naming the file and offset.
    pub fn read(&mut self, loc: &EntryLocation) -> Result<Vec<u8>> {
        if self.open.as_ref().is_none_or(|(p, _, _)| *p != loc.path) {
            let file = self.fs.open(&loc.path).map_err(|e| Error::io("open", &loc.path, e))?;
            let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
            file.read_at(&mut head, 0).map_err(|e| Error::io("read", &loc.path, e))?;
            let segment_bytes = match segment::check_header(&head, loc.segment_id) {
                HeaderCheck::Valid { segment_bytes } => segment_bytes,
                HeaderCheck::Version(v) => {
                    return Err(Error::IncompatibleVersion { path: loc.path.clone(), found: v, supported: 1 });
                }
                HeaderCheck::Damaged(kind) => return Err(Corruption::new(&loc.path, 0, kind).into_error()),
            };
            self.open = Some((loc.path.clone(), file, segment_bytes));
        }
        let (path, file, segment_bytes) = self.open.as_ref().expect("opened above");
        let mut r = SegmentReader::exact(file.as_ref(), path, *segment_bytes);
        match r.record(loc.record_offset, loc.segment_id)? {
            Ok((h, payload)) if h.index == loc.index && h.term == loc.term => Ok(payload.to_vec()),
            Ok((h, _)) => Err(Corruption::new(
                path,
                loc.record_offset,
                crate::CorruptionKind::Malformed(format!(
                    "record holds index {} term {}, expected index {} term {}",
                    h.index, h.term, loc.index, loc.term
                )),
            )
            .into_error()),
            Err(d) => Err(Corruption::new(path, loc.record_offset, d.into_kind()).into_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_payloads_decode_and_bad_ones_are_errors() {
        let e = decode_storage_entry(&[0, b'h', b'i']).unwrap();
        assert_eq!((e.entry_type, e.context, e.data), (EntryType::Normal, None, &b"hi"[..]));
        let e = decode_storage_entry(&[0x82, 2, 0, 0, 0, b'c', b'x', b'd']).unwrap();
        assert_eq!((e.entry_type, e.context, e.data), (EntryType::ConfChangeV2, Some(&b"cx"[..]), &b"d"[..]));
        assert!(decode_storage_entry(&[]).is_err());
        assert!(decode_storage_entry(&[3]).is_err());
        assert!(decode_storage_entry(&[0x7f, 1]).is_err());
        assert!(decode_storage_entry(&[0x80, 1, 0]).is_err());
        assert!(decode_storage_entry(&[0x80, 9, 0, 0, 0, 1]).is_err());
        // Every short or odd payload decodes or errs; none panics.
        for tag in 0..=255u8 {
            for len in 0..8 {
                let mut p = vec![tag];
                p.extend((0..len).map(|i| i as u8));
                let _ = decode_storage_entry(&p);
            }
        }
    }
}
