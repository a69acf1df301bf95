//! Snapshot files: one per snapshot, named by term and index, written to a temporary name,
//! fdatasynced, renamed and the directory fsynced. Data is streamed in and out, never held in
//! memory whole. Layout in `segments/FORMAT.md` ("Snapshot file").
//!
//! A [`SnapshotFile`] keeps its file open: a snapshot handle stays readable after the file is
//! removed (pruned by a newer snapshot) for as long as the handle lives, which is what a
//! snapshot transfer to a follower needs. A snapshot received from a leader is staged in a
//! writer's temporary file ([`SnapshotWriter::finish_staged`]), read back from there, and
//! removed when its [`StagedSnapshot`] drops.

use super::hard_state::{CONF_STATE_FIXED_BYTES, decode_conf_state, encode_conf_state};
use super::types::{ConfState, SnapshotId, SnapshotMetadata, SnapshotSource};
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::io::{DataFile, FileSystem};
use byteorder::{ByteOrder, LittleEndian as LE};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub(crate) const MAGIC: [u8; 8] = *b"KEELSNAP";
pub(crate) const VERSION: u32 = 1;
pub(crate) const OFF_MAGIC: usize = 0;
pub(crate) const OFF_VERSION: usize = OFF_MAGIC + 8;
pub(crate) const OFF_HEADER_CRC: usize = OFF_VERSION + 4;
pub(crate) const OFF_HEADER_LEN: usize = OFF_HEADER_CRC + 4;
pub(crate) const OFF_FLAGS: usize = OFF_HEADER_LEN + 4;
pub(crate) const OFF_INDEX: usize = OFF_FLAGS + 4;
/// Flag: the snapshot was installed from a leader (`apply_snapshot`), not created locally.
pub(crate) const FLAG_INSTALLED: u32 = 1;
pub(crate) const OFF_TERM: usize = OFF_INDEX + 8;
pub(crate) const OFF_DATA_LEN: usize = OFF_TERM + 8;
/// The ConfState (auto_leave, reserved, four counts, reserved, ids) starts here.
pub(crate) const OFF_CONF_STATE: usize = OFF_DATA_LEN + 8;
pub(crate) const FIXED_HEADER_BYTES: usize = OFF_CONF_STATE + CONF_STATE_FIXED_BYTES;
pub(crate) const TRAILER_BYTES: u64 = 8;
/// Largest header accepted when reading (a ConfState of about 8,000 node ids).
const HEADER_BYTES_MAX: usize = 1 << 16;
const CHUNK_BYTES: usize = 1 << 20;
/// The number of the next snapshot writer, in this process: each names its own temporary file
/// with it. Process-wide rather than per storage, so that a staged snapshot that outlives its
/// storage never removes a file of a writer of the storage reopened in the same directory.
static NEXT_WRITER: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
pub(crate) const LAYOUT: &[(&str, usize, usize)] = &[
    ("magic", OFF_MAGIC, 8),
    ("version", OFF_VERSION, 4),
    ("header_crc", OFF_HEADER_CRC, 4),
    ("header_len", OFF_HEADER_LEN, 4),
    ("flags", OFF_FLAGS, 4),
    ("index", OFF_INDEX, 8),
    ("term", OFF_TERM, 8),
    ("data_len", OFF_DATA_LEN, 8),
    ("auto_leave", OFF_CONF_STATE, 1),
    ("reserved", OFF_CONF_STATE + 1, 3),
    ("voters_count", OFF_CONF_STATE + 4, 4),
    ("learners_count", OFF_CONF_STATE + 8, 4),
    ("voters_outgoing_count", OFF_CONF_STATE + 12, 4),
    ("learners_next_count", OFF_CONF_STATE + 16, 4),
    ("reserved", OFF_CONF_STATE + 20, 4),
];

/// The file name of a snapshot.
pub(crate) fn file_name(id: SnapshotId) -> String {
    format!("snap-{:016x}-{:016x}.snap", id.term, id.index)
}

/// The temporary file a snapshot writer streams into before renaming it to `file_name(id)`:
/// that name, then `writer` (a number no other writer in the process uses, in 16 hex digits),
/// then `.tmp`. A name per writer, so that two writers of the same snapshot never
/// write, remove or rename each other's file.
pub(crate) fn temp_file_name(id: SnapshotId, writer: u64) -> String {
    format!("{}.{writer:016x}.tmp", file_name(id))
}

/// Whether `s` is 16 lower-case hex digits, as keel writes numbers in file names.
fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The snapshot a file name names (`snap-<term>-<index>.snap`, both 16 hex digits).
pub(crate) fn parse_file_name(name: &str) -> Option<SnapshotId> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (t, i) = rest.split_once('-')?;
    if !is_hex16(t) || !is_hex16(i) {
        return None;
    }
    Some(SnapshotId { term: u64::from_str_radix(t, 16).ok()?, index: u64::from_str_radix(i, 16).ok()? })
}

/// Whether `name` is a snapshot writer's temporary file: [`temp_file_name`]'s form, or the
/// `<snapshot name>.tmp` that writers used before they were numbered.
pub(crate) fn is_temp_file_name(name: &str) -> bool {
    let Some(rest) = name.strip_suffix(".tmp") else { return false };
    parse_file_name(rest).is_some()
        || rest.rsplit_once('.').is_some_and(|(snap, writer)| parse_file_name(snap).is_some() && is_hex16(writer))
}

fn header_len(cs: &ConfState) -> usize {
    FIXED_HEADER_BYTES + 8 * cs.id_count()
}

fn header_crc(h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..OFF_HEADER_CRC]);
    c.update(&h[OFF_HEADER_LEN..]);
    c.finalize()
}

fn encode_header(meta: &SnapshotMetadata, installed: bool, data_len: u64) -> Vec<u8> {
    let len = header_len(&meta.conf_state);
    let mut h = vec![0u8; len];
    h[..8].copy_from_slice(&MAGIC);
    LE::write_u32(&mut h[OFF_VERSION..], VERSION);
    LE::write_u32(&mut h[OFF_HEADER_LEN..], len as u32);
    LE::write_u32(&mut h[OFF_FLAGS..], if installed { FLAG_INSTALLED } else { 0 });
    LE::write_u64(&mut h[OFF_INDEX..], meta.index);
    LE::write_u64(&mut h[OFF_TERM..], meta.term);
    LE::write_u64(&mut h[OFF_DATA_LEN..], data_len);
    encode_conf_state(&mut h[OFF_CONF_STATE..], &meta.conf_state);
    let c = header_crc(&h);
    LE::write_u32(&mut h[OFF_HEADER_CRC..], c);
    h
}

/// Refuses a snapshot file whose magic is keel's and whose version is newer than this build's.
///
/// Checked before the header length and checksum: a newer format may lay out and checksum its
/// header differently, and taking its file for damage would set aside (hide) a snapshot that
/// the newer keel can read. A flipped bit that raises the version of a version-1 file is then
/// refused too: open fails and nothing is changed, which is the safe side.
pub(crate) fn check_not_newer(head: &[u8], path: &Path) -> Result<()> {
    if head.len() < OFF_HEADER_CRC || head[..8] != MAGIC {
        return Ok(());
    }
    let version = LE::read_u32(&head[OFF_VERSION..]);
    if version > VERSION {
        return Err(Error::IncompatibleVersion { path: path.to_path_buf(), found: version, supported: VERSION });
    }
    Ok(())
}

/// Refuses (with [`Error::IncompatibleVersion`]) if any snapshot file in `dir`, named as in
/// `names`, was written by a newer format version. Reads only the first bytes of each.
pub(crate) fn refuse_newer(fs: &dyn FileSystem, dir: &Path, names: &[String]) -> Result<()> {
    for name in names.iter().filter(|n| parse_file_name(n).is_some()) {
        let path = dir.join(name);
        let file = fs.open(&path).map_err(|e| Error::io("open", &path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        let mut head = [0u8; OFF_HEADER_CRC];
        if len < head.len() as u64 {
            continue; // too short to be a snapshot: `SnapshotFile::open` reports it
        }
        file.read_at(&mut head, 0).map_err(|e| Error::io("read", &path, e))?;
        check_not_newer(&head, &path)?;
    }
    Ok(())
}

/// A snapshot file whose header has been checked, open.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    pub path: PathBuf,
    pub metadata: SnapshotMetadata,
    /// Installed from a leader (`apply_snapshot`) rather than created locally.
    pub installed: bool,
    pub data_offset: u64,
    pub data_len: u64,
    pub data_crc: u32,
    /// Held open, so that readers still work once the file is removed.
    file: Arc<dyn DataFile>,
}

impl SnapshotFile {
    /// Opens and checks the header and size of a snapshot file.
    pub(crate) fn open(fs: &dyn FileSystem, path: &Path) -> Result<SnapshotFile> {
        use CorruptionKind::{Checksum, Malformed};
        let bad = |offset, kind| Corruption::new(path, offset, kind).into_error();
        let file = fs.open(path).map_err(|e| Error::io("open", path, e))?;
        let size = file.len().map_err(|e| Error::io("stat", path, e))?;
        if size < (FIXED_HEADER_BYTES as u64) + TRAILER_BYTES {
            return Err(bad(0, Malformed(format!("snapshot file of {size} bytes is shorter than its header"))));
        }
        let mut fixed = vec![0u8; FIXED_HEADER_BYTES];
        file.read_at(&mut fixed, 0).map_err(|e| Error::io("read", path, e))?;
        if fixed[..8] != MAGIC {
            return Err(bad(0, Malformed("snapshot magic is wrong".into())));
        }
        check_not_newer(&fixed, path)?;
        let len = LE::read_u32(&fixed[OFF_HEADER_LEN..]) as usize;
        if !(FIXED_HEADER_BYTES..=HEADER_BYTES_MAX).contains(&len) || (len as u64) + TRAILER_BYTES > size {
            return Err(bad(OFF_HEADER_LEN as u64, Malformed(format!("snapshot header length {len} is impossible"))));
        }
        let mut h = vec![0u8; len];
        file.read_at(&mut h, 0).map_err(|e| Error::io("read", path, e))?;
        let stored = LE::read_u32(&h[OFF_HEADER_CRC..]);
        let actual = header_crc(&h);
        if stored != actual {
            return Err(bad(0, Checksum { what: "snapshot header", expected: stored, actual }));
        }
        let version = LE::read_u32(&h[OFF_VERSION..]);
        if version != VERSION {
            return Err(Error::IncompatibleVersion { path: path.to_path_buf(), found: version, supported: VERSION });
        }
        let conf_state =
            decode_conf_state(&h[OFF_CONF_STATE..]).map_err(|m| bad(OFF_CONF_STATE as u64, Malformed(m)))?;
        if header_len(&conf_state) != len {
            return Err(bad(0, Malformed("snapshot header length does not match its conf state".into())));
        }
        let flags = LE::read_u32(&h[OFF_FLAGS..]);
        if flags & !FLAG_INSTALLED != 0 {
            return Err(bad(OFF_FLAGS as u64, Malformed(format!("snapshot flags {flags:#x} are unknown"))));
        }
        let metadata =
            SnapshotMetadata { index: LE::read_u64(&h[OFF_INDEX..]), term: LE::read_u64(&h[OFF_TERM..]), conf_state };
        let data_len = LE::read_u64(&h[OFF_DATA_LEN..]);
        if (len as u64).checked_add(data_len).and_then(|n| n.checked_add(TRAILER_BYTES)) != Some(size) {
            return Err(bad(
                OFF_DATA_LEN as u64,
                Malformed(format!("snapshot holds {data_len} data bytes but the file is {size} bytes")),
            ));
        }
        let name_ok =
            path.file_name().and_then(|n| n.to_str()).and_then(parse_file_name).is_some_and(|id| id == metadata.id());
        if !name_ok {
            return Err(bad(OFF_INDEX as u64, Malformed("snapshot file name does not match its header".into())));
        }
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        file.read_at(&mut trailer, size - TRAILER_BYTES).map_err(|e| Error::io("read", path, e))?;
        if trailer[4..].iter().any(|&b| b != 0) {
            return Err(bad(size - 4, Malformed("snapshot trailer reserved bytes are not zero".into())));
        }
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            metadata,
            installed: flags & FLAG_INSTALLED != 0,
            data_offset: len as u64,
            data_len,
            data_crc: LE::read_u32(&trailer),
            file: Arc::from(file),
        })
    }

    /// A streaming reader of the data that checks the checksum at the end.
    pub(crate) fn reader(&self) -> Result<SnapshotReader> {
        Ok(SnapshotReader {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            next: self.data_offset,
            end: self.data_offset + self.data_len,
            expected_crc: self.data_crc,
            hasher: crc32fast::Hasher::new(),
            checked: false,
        })
    }

    /// Reads all the data once to check its checksum.
    pub(crate) fn verify(&self) -> Result<()> {
        let mut r = self.reader()?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(r.error_to_corruption(e)),
            }
        }
    }
}

impl SnapshotSource for SnapshotFile {
    fn data_len(&self) -> u64 {
        self.data_len
    }

    fn data_crc(&self) -> u32 {
        self.data_crc
    }

    fn reader(&self) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(SnapshotFile::reader(self)?))
    }

    fn describe(&self) -> PathBuf {
        self.path.clone()
    }
}

/// Streams a snapshot's data; the last `read` fails if the data checksum does not match.
#[derive(Debug)]
pub struct SnapshotReader {
    file: Arc<dyn DataFile>,
    path: PathBuf,
    next: u64,
    end: u64,
    expected_crc: u32,
    hasher: crc32fast::Hasher,
    checked: bool,
}

impl SnapshotReader {
    fn error_to_corruption(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::InvalidData {
            let actual = self.hasher.clone().finalize();
            Corruption::new(
                &self.path,
                self.end,
                CorruptionKind::Checksum { what: "snapshot data", expected: self.expected_crc, actual },
            )
            .into_error()
        } else {
            Error::io("read", &self.path, e)
        }
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.next == self.end {
            if !self.checked {
                let actual = self.hasher.clone().finalize();
                if actual != self.expected_crc {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "snapshot data checksum mismatch in {} (stored {:#010x}, computed {actual:#010x})",
                            self.path.display(),
                            self.expected_crc
                        ),
                    ));
                }
                self.checked = true;
            }
            return Ok(0);
        }
        let n = buf.len().min((self.end - self.next) as usize).min(CHUNK_BYTES);
        self.file.read_at(&mut buf[..n], self.next)?;
        self.hasher.update(&buf[..n]);
        self.next += n as u64;
        Ok(n)
    }
}

/// Writes a snapshot to a temporary file of its own; [`SnapshotWriter::finish`] makes it durable
/// under its final name. Dropped unfinished, it removes the temporary file.
#[derive(Debug)]
pub struct SnapshotWriter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<Box<dyn DataFile>>,
    metadata: SnapshotMetadata,
    installed: bool,
    header_len: u64,
    buf: Vec<u8>,
    written: u64,
    hasher: crc32fast::Hasher,
    /// Counts writers of snapshots in progress, so `snapshot()` can answer "temporarily
    /// unavailable"; `None` for staging a received snapshot, which is not the storage's yet.
    in_progress: Option<Arc<AtomicUsize>>,
    /// The first write error, reported again by `finish`.
    failed: Option<String>,
    /// That error was the disk being full: `finish` reports [`Error::NoSpace`], which the
    /// storage does not latch on (a snapshot file is none of its state until it is finished).
    failed_no_space: bool,
}

impl SnapshotWriter {
    pub(crate) fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        metadata: SnapshotMetadata,
        installed: bool,
        in_progress: Option<Arc<AtomicUsize>>,
    ) -> Result<SnapshotWriter> {
        // Never removed first: if the name exists, it is another writer's (or a bug), not ours.
        let tmp = dir.join(temp_file_name(metadata.id(), NEXT_WRITER.fetch_add(1, Ordering::Relaxed)));
        let file = fs.create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        if let Some(n) = &in_progress {
            n.fetch_add(1, Ordering::SeqCst);
        }
        Ok(SnapshotWriter {
            header_len: header_len(&metadata.conf_state) as u64,
            fs,
            dir: dir.to_path_buf(),
            tmp,
            file: Some(file),
            metadata,
            installed,
            buf: Vec::with_capacity(CHUNK_BYTES),
            written: 0,
            hasher: crc32fast::Hasher::new(),
            in_progress,
            failed: None,
            failed_no_space: false,
        })
    }

    pub(crate) fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }

    /// The first error writing the temporary file, if any.
    pub(crate) fn failed_cause(&self) -> Option<String> {
        self.failed.clone()
    }

    /// Whether that error was the disk being full.
    pub(crate) fn failed_no_space(&self) -> bool {
        self.failed_no_space
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_ref().expect("writer not finished");
        file.write_at(&self.buf, self.header_len + self.written)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the rest of the data, the trailer and the header. The file is still the writer's:
    /// dropping the writer removes it.
    fn complete(&mut self) -> Result<()> {
        if let Some(cause) = &self.failed {
            if self.failed_no_space {
                return Err(Error::NoSpace { op: "write snapshot", path: self.tmp.clone() });
            }
            return Err(Error::Failed { cause: cause.clone() });
        }
        let tmp = self.tmp.clone();
        let write_error = |e: io::Error| match crate::error::is_no_space_io(&e) {
            true => Error::NoSpace { op: "write snapshot", path: tmp.clone() },
            false => Error::io("write", &tmp, e),
        };
        self.flush_buf().map_err(write_error)?;
        let file = self.file.as_ref().expect("writer not finished");
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        LE::write_u32(&mut trailer, self.hasher.clone().finalize());
        file.write_at(&trailer, self.header_len + self.written).map_err(write_error)?;
        file.write_at(&encode_header(&self.metadata, self.installed, self.written), 0).map_err(write_error)
    }

    /// Writes what is buffered and fdatasyncs the data written so far, so that finishing has
    /// only the header and trailer left to sync. For the thread that writes a large snapshot:
    /// the long fdatasync happens there, not on the thread that owns the storage and calls
    /// `finish_snapshot`. A failure here fails the snapshot (`finish_snapshot` reports it); it
    /// is never retried.
    pub fn sync_data(&mut self) -> Result<()> {
        if let Some(cause) = &self.failed {
            return Err(Error::Failed { cause: cause.clone() });
        }
        let tmp = self.tmp.clone();
        let result = match self.flush_buf() {
            Ok(()) => {
                self.file.as_ref().expect("writer not finished").sync_data().map_err(Error::at("fdatasync", &tmp))
            }
            Err(e) => Err(Error::at("write", &tmp)(e)),
        };
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
            self.failed_no_space = e.is_no_space();
        }
        result
    }

    /// Writes the header and trailer, fdatasyncs, renames to the final name and fsyncs the
    /// directory. Returns the final path.
    pub(crate) fn finish(mut self) -> Result<PathBuf> {
        self.complete()?;
        let tmp = self.tmp.clone();
        let file = self.file.take().expect("writer not finished");
        file.sync_data().map_err(Error::at("fdatasync", &tmp))?;
        drop(file);
        let path = self.dir.join(file_name(self.metadata.id()));
        self.fs.rename(&self.tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
        self.fs.sync_dir(&self.dir).map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        Ok(path)
    }

    /// Completes the file under its temporary name and hands it over to a [`StagedSnapshot`],
    /// which reads it back and removes it when dropped. Nothing is synced: a staged file is
    /// never durable state (open removes it as any writer's leftover), and installing it
    /// (`apply_snapshot`) writes a durable copy.
    pub(crate) fn finish_staged(mut self) -> Result<StagedSnapshot> {
        self.complete()?;
        let file: Arc<dyn DataFile> = Arc::from(self.file.take().expect("writer not finished"));
        let staged = SnapshotFile {
            path: self.tmp.clone(),
            metadata: self.metadata.clone(),
            installed: self.installed,
            data_offset: self.header_len,
            data_len: self.written,
            data_crc: self.hasher.clone().finalize(),
            file,
        };
        Ok(StagedSnapshot { file: staged, fs: Arc::clone(&self.fs) })
    }
}

/// A snapshot received from a leader, staged in a writer's temporary file: readable through
/// its open file, removed when dropped. See [`SnapshotWriter::finish_staged`].
#[derive(Debug)]
pub(crate) struct StagedSnapshot {
    file: SnapshotFile,
    fs: Arc<dyn FileSystem>,
}

impl SnapshotSource for StagedSnapshot {
    fn data_len(&self) -> u64 {
        self.file.data_len
    }

    fn data_crc(&self) -> u32 {
        self.file.data_crc
    }

    fn reader(&self) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.file.reader()?))
    }

    fn describe(&self) -> PathBuf {
        self.file.path.clone()
    }
}

impl Drop for StagedSnapshot {
    fn drop(&mut self) {
        // Garbage now (open also removes leftovers); readers still hold the open file.
        let _ = self.fs.remove(&self.file.path);
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            return Err(io::Error::other("snapshot writer already finished"));
        }
        self.hasher.update(data);
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES
            && let Err(e) = self.flush_buf()
        {
            if self.failed.is_none() {
                self.failed = Some(format!("write {}: {e}", self.tmp.display()));
                self.failed_no_space = crate::error::is_no_space_io(&e);
            }
            return Err(e);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if let Some(n) = &self.in_progress {
            n.fetch_sub(1, Ordering::SeqCst);
        }
        if self.file.take().is_some() {
            // Unfinished: the temporary file is garbage (open also removes leftovers).
            let _ = self.fs.remove(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = SnapshotId { index: 77, term: 3 };
        assert_eq!(file_name(id), "snap-0000000000000003-000000000000004d.snap");
        assert_eq!(parse_file_name(&file_name(id)), Some(id));
        assert_eq!(parse_file_name("snap-3-77.snap"), None);
        assert_eq!(parse_file_name("snap-0000000000000003-000000000000004d.snap.tmp"), None);
        assert_eq!(temp_file_name(id, 10), "snap-0000000000000003-000000000000004d.snap.000000000000000a.tmp");
        assert_eq!(parse_file_name(&temp_file_name(id, 10)), None);
        assert!(is_temp_file_name(&temp_file_name(id, u64::MAX)));
        assert!(is_temp_file_name("snap-0000000000000003-000000000000004d.snap.tmp"));
        assert!(!is_temp_file_name(&file_name(id)));
        assert!(!is_temp_file_name("snap-0000000000000003-000000000000004D.snap.tmp"));
        assert!(!is_temp_file_name("notes.tmp"));
    }
}
