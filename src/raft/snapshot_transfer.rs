//! Snapshot transfer: a leader's snapshot travels to a follower in checksummed chunks, read
//! from the snapshot one chunk at a time and written into the follower's staging sink one chunk
//! at a time, so neither side ever holds the whole snapshot in memory.
//!
//! The calling order is on [`SnapshotSender`], the type a transport meets first.
//!
//! Chunk encoding (little-endian): a version byte (1), the snapshot's `index` and `term`, its
//! `data_len` (`u64`) and `data_crc` (`u32`), the chunk's `offset` (`u64`), its byte count
//! (`u32`) and the bytes, then `crc`: the CRC-32 of every byte before it. The first four fields
//! bind the chunk to one snapshot's data: a chunk of another snapshot, or of another copy of a
//! snapshot at the same index and term, is refused. As for messages, framing belongs to the
//! transport.
//!
//! A transfer is all or nothing: any refused chunk abandons it (the staged data is removed at
//! once), and the follower's storage is unchanged until the `Ready` that installs it.

use super::message::DecodeError;
use crate::error::Error;
use crate::storage::{Snapshot, SnapshotId, SnapshotMetadata, SnapshotSink};
use byteorder::{ByteOrder, LE};
use std::io::{ErrorKind, Read};

/// What identifies a snapshot's data on the wire: what a Snapshot message carries instead of
/// the data, and what a [`SnapshotReceiver`] checks the chunks and the whole data against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// What the snapshot covers: its last index, that index's term, the membership then.
    pub metadata: SnapshotMetadata,
    /// Bytes of data.
    pub data_len: u64,
    /// The CRC-32 of the data ([`Snapshot::data_crc`]).
    pub data_crc: u32,
}

impl SnapshotHeader {
    /// The header announcing `snapshot`.
    pub fn of(snapshot: &Snapshot) -> SnapshotHeader {
        SnapshotHeader {
            metadata: snapshot.metadata.clone(),
            data_len: snapshot.data_len(),
            data_crc: snapshot.data_crc(),
        }
    }
}

/// One piece of a snapshot's data, bound to its snapshot; see the module docs for the encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot's index and term.
    pub snapshot: SnapshotId,
    /// Bytes of the snapshot's data in all.
    pub data_len: u64,
    /// The CRC-32 of the snapshot's data in all.
    pub data_crc: u32,
    /// Where `data` starts in the snapshot's data.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// The CRC-32 of the chunk's encoding before it (every field above); the receiver checks
    /// it against [`SnapshotChunk::computed_crc`].
    pub crc: u32,
}

/// Bytes of a chunk's encoding before its data: version, index, term, data length, data
/// checksum, offset, byte count.
const CHUNK_HEAD_BYTES: usize = 1 + 8 + 8 + 8 + 4 + 8 + 4;
/// Bytes of a chunk's encoding besides its data.
const CHUNK_FIXED_BYTES: usize = CHUNK_HEAD_BYTES + 4;
const CHUNK_VERSION: u8 = 1;

impl SnapshotChunk {
    /// The encoding before the bytes.
    fn head(&self) -> [u8; CHUNK_HEAD_BYTES] {
        let mut h = [0u8; CHUNK_HEAD_BYTES];
        h[0] = CHUNK_VERSION;
        LE::write_u64(&mut h[1..9], self.snapshot.index);
        LE::write_u64(&mut h[9..17], self.snapshot.term);
        LE::write_u64(&mut h[17..25], self.data_len);
        LE::write_u32(&mut h[25..29], self.data_crc);
        LE::write_u64(&mut h[29..37], self.offset);
        LE::write_u32(&mut h[37..41], self.data.len() as u32);
        h
    }

    /// The CRC-32 of the chunk's fields and bytes: what `crc` holds for an intact chunk.
    pub fn computed_crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.head());
        h.update(&self.data);
        h.finalize()
    }

    /// The encoding described in the module docs (with `crc` as it is, so a damaged chunk
    /// stays damaged).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.data.len() <= crate::limits::SNAPSHOT_CHUNK_BYTES_MAX, "a chunk's byte count is a u32");
        let mut out = Vec::with_capacity(CHUNK_FIXED_BYTES + self.data.len());
        out.extend_from_slice(&self.head());
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Decodes [`SnapshotChunk::encode`]'s output: the layout only (the CRC is the receiver's
    /// check). Bad bytes give a [`DecodeError`], never a panic; nothing larger than the input
    /// is allocated.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotChunk, DecodeError> {
        let err = |offset: usize, what: String| DecodeError { offset, what };
        if bytes.len() < CHUNK_FIXED_BYTES {
            return Err(err(
                bytes.len(),
                format!("a chunk takes at least {CHUNK_FIXED_BYTES} bytes, got {}", bytes.len()),
            ));
        }
        if bytes[0] != CHUNK_VERSION {
            return Err(err(0, format!("chunk version {}, expected {CHUNK_VERSION}", bytes[0])));
        }
        let count = LE::read_u32(&bytes[37..41]) as usize;
        let expected = CHUNK_FIXED_BYTES as u64 + count as u64;
        if bytes.len() as u64 != expected {
            return Err(err(
                37,
                format!("a chunk of {count} data bytes takes {expected} bytes, the input is {}", bytes.len()),
            ));
        }
        let end = CHUNK_HEAD_BYTES + count;
        Ok(SnapshotChunk {
            snapshot: SnapshotId { index: LE::read_u64(&bytes[1..9]), term: LE::read_u64(&bytes[9..17]) },
            data_len: LE::read_u64(&bytes[17..25]),
            data_crc: LE::read_u32(&bytes[25..29]),
            offset: LE::read_u64(&bytes[29..37]),
            data: bytes[CHUNK_HEAD_BYTES..end].to_vec(),
            crc: LE::read_u32(&bytes[end..]),
        })
    }
}

/// Why a snapshot transfer failed. Every kind but `Source` and `Staging` is evidence of bytes
/// damaged, lost, reordered or mixed up on the way; the transfer is abandoned either way (the
/// leader resends the snapshot when it hears nothing back).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A chunk's bytes did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A chunk's checksum does not match its contents.
    #[error("snapshot chunk at offset {offset}: checksum {expected:#010x} stored, {actual:#010x} computed")]
    ChunkChecksum {
        /// The offset the chunk claims.
        offset: u64,
        /// The CRC the chunk carries.
        expected: u32,
        /// The CRC of its contents.
        actual: u32,
    },
    /// A chunk belongs to another snapshot (or another copy of it).
    #[error("snapshot chunk at offset {offset} belongs to another snapshot: {field} {actual}, expected {expected}")]
    WrongSnapshot {
        /// The offset the chunk claims.
        offset: u64,
        /// Which binding field differs: "index", "term", "data length" or "data checksum".
        field: &'static str,
        /// The receiver's value (from the header).
        expected: u64,
        /// The chunk's value.
        actual: u64,
    },
    /// A chunk does not start where the previous one ended: lost, reordered or duplicated.
    #[error("snapshot chunk at offset {actual}, expected the chunk at offset {expected}")]
    OutOfOrder {
        /// Bytes received so far: where the next chunk must start.
        expected: u64,
        /// Where the chunk starts.
        actual: u64,
    },
    /// A chunk arrived after the data was complete (a duplicate of the last one, say).
    #[error("snapshot chunk at offset {offset} arrived after all {data_len} bytes")]
    AfterEnd {
        /// The offset the chunk claims.
        offset: u64,
        /// Bytes of data in all.
        data_len: u64,
    },
    /// An empty chunk of non-empty data: a sender never makes one.
    #[error("empty snapshot chunk at offset {offset}")]
    EmptyChunk {
        /// The offset the chunk claims.
        offset: u64,
    },
    /// A chunk reaches past the end of the data.
    #[error("snapshot chunk at offset {offset} of {len} bytes reaches past the data's {data_len} bytes")]
    Overrun {
        /// The offset the chunk claims.
        offset: u64,
        /// Its byte count.
        len: u64,
        /// Bytes of data in all.
        data_len: u64,
    },
    /// The transfer was finished before all the data arrived.
    #[error("snapshot transfer incomplete: {received} of {expected} bytes received")]
    Incomplete {
        /// Bytes received.
        received: u64,
        /// Bytes of data in all.
        expected: u64,
    },
    /// Every chunk checked out, but the whole data does not match the snapshot's checksum.
    #[error("snapshot data checksum {expected:#010x} announced, {actual:#010x} received")]
    DataChecksum {
        /// The header's CRC.
        expected: u32,
        /// The CRC of the bytes received.
        actual: u32,
    },
    /// The snapshot given to [`PendingSnapshot::complete`](super::PendingSnapshot::complete), or
    /// made by a sink, is not the one the header announced.
    #[error("snapshot {actual:?} is not the announced {expected:?}")]
    NotAnnounced {
        /// The header.
        expected: Box<SnapshotHeader>,
        /// The snapshot's.
        actual: Box<SnapshotHeader>,
    },
    /// The sender could not read the snapshot (I/O, its checksum, or a length other than its
    /// header says).
    #[error("reading the snapshot to send: {0}")]
    Source(Error),
    /// The receiver's storage could not stage the data.
    #[error("staging the received snapshot: {0}")]
    Staging(Error),
    /// An earlier call failed and abandoned the transfer.
    #[error("the snapshot transfer was abandoned after an earlier error")]
    Abandoned,
}

/// Yields a snapshot's chunks in order, reading one chunk at a time from the snapshot's reader.
/// An iterator; after an error it yields nothing more.
///
/// Calling order:
/// 1. Leader: a `Ready` hands out a [`MessageType::Snapshot`](super::MessageType::Snapshot)
///    message holding a [`Snapshot`] handle. Its encoding ([`Message::encode`]) carries the
///    [`SnapshotHeader`] (metadata, data length, data checksum), not the data.
/// 2. Leader: [`SnapshotSender::new`] over that handle yields the [`SnapshotChunk`]s in order;
///    each is encoded ([`SnapshotChunk::encode`]) and sent after the message. The sender holds
///    the handle, so the snapshot's data and the leader's log entries after it stay (see
///    [`StorageMut::compact`](crate::storage::StorageMut::compact)) until it is dropped.
/// 3. Follower: [`Message::decode`] gives [`Decoded::Snapshot`], whose header starts a
///    [`SnapshotReceiver`] over [`StorageMut::receive_snapshot`]'s sink; each decoded chunk goes
///    to [`SnapshotReceiver::receive`].
/// 4. Follower: [`SnapshotReceiver::finish`] checks the whole data against the header's
///    checksum and gives the complete [`Snapshot`]; [`PendingSnapshot::complete`] puts it into
///    the message, which is stepped into the node. The node hands it out in `Ready::snapshot`,
///    and `RawNode::persist` installs it (`apply_snapshot`, streamed from the staged data).
///
/// [`Message::encode`]: super::Message::encode
/// [`Message::decode`]: super::Message::decode
/// [`Decoded::Snapshot`]: super::Decoded::Snapshot
/// [`PendingSnapshot::complete`]: super::PendingSnapshot::complete
/// [`StorageMut::receive_snapshot`]: crate::storage::StorageMut::receive_snapshot
pub struct SnapshotSender {
    /// Held for the whole transfer: it keeps the data readable and pins the log after it.
    snapshot: Snapshot,
    reader: Option<Box<dyn Read + Send>>,
    chunk_bytes: usize,
    offset: u64,
    done: bool,
}

impl std::fmt::Debug for SnapshotSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSender")
            .field("snapshot", &self.snapshot)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("offset", &self.offset)
            .field("done", &self.done)
            .finish()
    }
}

impl SnapshotSender {
    /// A sender of `snapshot` in chunks of at most `chunk_bytes` bytes (1 up to
    /// [`SNAPSHOT_CHUNK_BYTES_MAX`]; [`SNAPSHOT_CHUNK_BYTES_DEFAULT`] is 1 MiB). Opens the
    /// snapshot's reader. Empty data is sent as one empty chunk.
    ///
    /// [`SNAPSHOT_CHUNK_BYTES_MAX`]: crate::limits::SNAPSHOT_CHUNK_BYTES_MAX
    /// [`SNAPSHOT_CHUNK_BYTES_DEFAULT`]: crate::limits::SNAPSHOT_CHUNK_BYTES_DEFAULT
    pub fn new(snapshot: Snapshot, chunk_bytes: usize) -> Result<SnapshotSender, TransferError> {
        if !(1..=crate::limits::SNAPSHOT_CHUNK_BYTES_MAX).contains(&chunk_bytes) {
            return Err(TransferError::Source(Error::InvalidArgument(format!(
                "snapshot chunk size {chunk_bytes} is not between 1 and {}",
                crate::limits::SNAPSHOT_CHUNK_BYTES_MAX
            ))));
        }
        let reader = snapshot.reader().map_err(TransferError::Source)?;
        Ok(SnapshotSender { snapshot, reader: Some(reader), chunk_bytes, offset: 0, done: false })
    }

    /// The header the transfer's Snapshot message carries.
    pub fn header(&self) -> SnapshotHeader {
        SnapshotHeader::of(&self.snapshot)
    }

    /// Bytes of data sent so far (in chunks already yielded).
    pub fn sent_bytes(&self) -> u64 {
        self.offset
    }

    fn source_error(&self, what: String) -> TransferError {
        TransferError::Source(Error::io(
            "read snapshot",
            self.snapshot.data.describe(),
            std::io::Error::new(ErrorKind::InvalidData, what),
        ))
    }

    /// Fills `buf` from the reader; fewer bytes only at the end of the data.
    fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn next_chunk(&mut self) -> Result<SnapshotChunk, TransferError> {
        let data_len = self.snapshot.data_len();
        let want = (data_len - self.offset).min(self.chunk_bytes as u64) as usize;
        let mut data = vec![0u8; want];
        let reader = self.reader.as_mut().expect("a sender that is not done has its reader");
        let got = Self::fill(reader.as_mut(), &mut data)
            .map_err(|e| TransferError::Source(Error::io("read snapshot", self.snapshot.data.describe(), e)))?;
        if got < want {
            return Err(self.source_error(format!(
                "the snapshot's data ended after {} bytes; its header says {data_len}",
                self.offset + got as u64
            )));
        }
        if self.offset + want as u64 == data_len {
            // The last chunk: reading on to the end lets the reader check the data checksum (a
            // snapshot file's reader does so at its end), before anything claims to be complete.
            let mut extra = [0u8; 1];
            let more = Self::fill(reader.as_mut(), &mut extra)
                .map_err(|e| TransferError::Source(Error::io("read snapshot", self.snapshot.data.describe(), e)))?;
            if more != 0 {
                return Err(
                    self.source_error(format!("the snapshot's data is longer than its header's {data_len} bytes"))
                );
            }
            self.done = true;
            self.reader = None;
        }
        let mut chunk = SnapshotChunk {
            snapshot: self.snapshot.metadata.id(),
            data_len,
            data_crc: self.snapshot.data_crc(),
            offset: self.offset,
            data,
            crc: 0,
        };
        chunk.crc = chunk.computed_crc();
        self.offset += want as u64;
        Ok(chunk)
    }
}

impl Iterator for SnapshotSender {
    type Item = Result<SnapshotChunk, TransferError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_chunk();
        if r.is_err() {
            self.done = true;
            self.reader = None;
        }
        Some(r)
    }
}

/// Takes a snapshot's chunks in order into a storage's staging sink, checking each, and checks
/// the whole data at the end; see the module docs for the calling order.
///
/// Invariants: the sink holds exactly the data's bytes `[0, received_bytes)`, and `hasher`
/// has hashed them; after any error the sink is dropped (removing what it staged) and every
/// later call returns [`TransferError::Abandoned`].
pub struct SnapshotReceiver {
    header: SnapshotHeader,
    sink: Option<Box<dyn SnapshotSink>>,
    received: u64,
    hasher: crc32fast::Hasher,
    /// All the data (and, for empty data, its one chunk) arrived.
    complete: bool,
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReceiver")
            .field("header", &self.header)
            .field("received", &self.received)
            .field("complete", &self.complete)
            .field("abandoned", &self.sink.is_none())
            .finish()
    }
}

impl SnapshotReceiver {
    /// A receiver of the snapshot `header` announces, staging into `sink` (from
    /// [`StorageMut::receive_snapshot`](crate::storage::StorageMut::receive_snapshot) with the
    /// header's metadata).
    pub fn new(header: SnapshotHeader, sink: Box<dyn SnapshotSink>) -> SnapshotReceiver {
        SnapshotReceiver { header, sink: Some(sink), received: 0, hasher: crc32fast::Hasher::new(), complete: false }
    }

    /// The header it checks against.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Bytes of data received so far.
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// Whether every chunk has arrived (then [`finish`](SnapshotReceiver::finish) is next).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Takes the next chunk: checks its checksum, its snapshot, its place, and stages its bytes.
    /// An error abandons the transfer.
    pub fn receive(&mut self, chunk: &SnapshotChunk) -> Result<(), TransferError> {
        if self.sink.is_none() {
            return Err(TransferError::Abandoned);
        }
        let r = self.check_and_stage(chunk);
        if r.is_err() {
            self.sink = None;
        }
        r
    }

    fn check_and_stage(&mut self, chunk: &SnapshotChunk) -> Result<(), TransferError> {
        let offset = chunk.offset;
        let actual = chunk.computed_crc();
        if actual != chunk.crc {
            return Err(TransferError::ChunkChecksum { offset, expected: chunk.crc, actual });
        }
        let h = &self.header;
        let binding = [
            ("index", h.metadata.index, chunk.snapshot.index),
            ("term", h.metadata.term, chunk.snapshot.term),
            ("data length", h.data_len, chunk.data_len),
            ("data checksum", u64::from(h.data_crc), u64::from(chunk.data_crc)),
        ];
        if let Some(&(field, expected, actual)) = binding.iter().find(|(_, e, a)| e != a) {
            return Err(TransferError::WrongSnapshot { offset, field, expected, actual });
        }
        let data_len = h.data_len;
        if self.complete {
            return Err(TransferError::AfterEnd { offset, data_len });
        }
        if offset != self.received {
            return Err(TransferError::OutOfOrder { expected: self.received, actual: offset });
        }
        let len = chunk.data.len() as u64;
        if len == 0 && data_len != 0 {
            return Err(TransferError::EmptyChunk { offset });
        }
        if len > data_len - offset {
            return Err(TransferError::Overrun { offset, len, data_len });
        }
        let sink = self.sink.as_mut().expect("checked by receive");
        sink.write_all(&chunk.data).map_err(|e| TransferError::Staging(Error::io("stage snapshot", "<staging>", e)))?;
        self.hasher.update(&chunk.data);
        self.received += len;
        self.complete = self.received == data_len;
        Ok(())
    }

    /// Checks that all the data arrived and matches the header's checksum, then ends staging:
    /// the complete snapshot, ready to go into its message
    /// ([`PendingSnapshot::complete`](super::PendingSnapshot::complete)). On error the staged
    /// data is removed.
    pub fn finish(mut self) -> Result<Snapshot, TransferError> {
        let Some(sink) = self.sink.take() else { return Err(TransferError::Abandoned) };
        if !self.complete {
            return Err(TransferError::Incomplete { received: self.received, expected: self.header.data_len });
        }
        let actual = self.hasher.clone().finalize();
        if actual != self.header.data_crc {
            return Err(TransferError::DataChecksum { expected: self.header.data_crc, actual });
        }
        let snapshot = sink.finish().map_err(TransferError::Staging)?;
        // Pair check: what the sink staged is what arrived.
        let staged = SnapshotHeader::of(&snapshot);
        if staged != self.header {
            return Err(TransferError::NotAnnounced { expected: Box::new(self.header), actual: Box::new(staged) });
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::types::SnapshotSource;
    use crate::storage::{MemStorage, StorageMut};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn metadata(index: u64) -> SnapshotMetadata {
        SnapshotMetadata { index, term: 2, ..SnapshotMetadata::default() }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Counts bytes read from it and not yet seen in a chunk the test received.
    struct Counting {
        data: Arc<[u8]>,
        read: Arc<AtomicU64>,
    }

    impl SnapshotSource for Counting {
        fn data_len(&self) -> u64 {
            self.data.len() as u64
        }
        fn data_crc(&self) -> u32 {
            crc32fast::hash(&self.data)
        }
        fn reader(&self) -> crate::Result<Box<dyn Read + Send>> {
            struct R(std::io::Cursor<Arc<[u8]>>, Arc<AtomicU64>);
            impl Read for R {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = self.0.read(buf)?;
                    self.1.fetch_add(n as u64, Ordering::SeqCst);
                    Ok(n)
                }
            }
            Ok(Box::new(R(std::io::Cursor::new(Arc::clone(&self.data)), Arc::clone(&self.read))))
        }
        fn describe(&self) -> PathBuf {
            "<counting>".into()
        }
    }

    #[test]
    fn the_sender_reads_at_most_one_chunk_ahead_of_what_it_has_handed_out() {
        // Bounded memory: the bytes read from the source but not yet handed out in a chunk
        // never exceed one chunk, whatever the data and chunk sizes.
        for (len, chunk) in [(0, 4), (1, 4), (4, 4), (5, 4), (100_003, 4096), (1 << 20, 1 << 16)] {
            let read = Arc::new(AtomicU64::new(0));
            let source = Counting { data: data(len).into(), read: Arc::clone(&read) };
            let snap = Snapshot::new(metadata(5), Arc::new(source));
            let sender = SnapshotSender::new(snap, chunk).unwrap();
            let mut handed_out = 0u64;
            let mut chunks = 0;
            for c in sender {
                let c = c.unwrap();
                handed_out += c.data.len() as u64;
                chunks += 1;
                assert!(c.data.len() <= chunk);
                assert!(read.load(Ordering::SeqCst) - handed_out <= chunk as u64, "read ahead at {}", c.offset);
            }
            assert_eq!(handed_out, len as u64);
            assert_eq!(chunks, len.div_ceil(chunk).max(1), "{len} bytes in chunks of {chunk}");
        }
    }

    fn transfer(data: &[u8], chunk: usize) -> Vec<SnapshotChunk> {
        let snap = Snapshot::from_bytes(metadata(9), data.to_vec());
        SnapshotSender::new(snap, chunk).unwrap().map(Result::unwrap).collect()
    }

    fn receiver(data: &[u8]) -> SnapshotReceiver {
        let header = SnapshotHeader::of(&Snapshot::from_bytes(metadata(9), data.to_vec()));
        let sink = MemStorage::new().receive_snapshot(&header.metadata).unwrap();
        SnapshotReceiver::new(header, sink)
    }

    #[test]
    fn chunks_round_trip_through_their_encoding_and_rebuild_the_data() {
        let d = data(1000);
        let chunks = transfer(&d, 64);
        let mut r = receiver(&d);
        for c in &chunks {
            let decoded = SnapshotChunk::decode(&c.encode()).unwrap();
            assert_eq!(&decoded, c);
            r.receive(&decoded).unwrap();
        }
        assert!(r.is_complete());
        let snap = r.finish().unwrap();
        assert_eq!(snap.read_to_vec().unwrap(), d);
        assert_eq!(snap.metadata, metadata(9));
    }

    #[test]
    fn module_doc_names_the_chunk_fields_in_encoding_order() {
        // The chunk encoding of the module docs, checked against `encode`: the fields named
        // between "a version byte (1)," and "the bytes" sit at consecutive positions with the
        // widths given, the bytes follow, then `crc`.
        let doc: String = include_str!("snapshot_transfer.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        let list = doc.split("a version byte (1),").nth(1).and_then(|rest| rest.split("and the bytes").next());
        let names: Vec<&str> = list.expect("the field list").split('`').skip(1).step_by(2).collect();
        assert_eq!(names, ["index", "term", "data_len", "u64", "data_crc", "u32", "offset", "u64", "u32"]);
        let chunk = SnapshotChunk {
            snapshot: SnapshotId { index: 11, term: 12 },
            data_len: 13,
            data_crc: 14,
            offset: 15,
            data: b"xyz".to_vec(),
            crc: 16,
        };
        let bytes = chunk.encode();
        assert_eq!(bytes[0], CHUNK_VERSION);
        let mut at = 1;
        for (name, value) in [("index", 11u64), ("term", 12), ("data_len", 13)] {
            assert_eq!(LE::read_u64(&bytes[at..]), value, "`{name}` at byte {at}");
            at += 8;
        }
        assert_eq!(LE::read_u32(&bytes[at..]), 14, "`data_crc` at byte {at}");
        at += 4;
        assert_eq!(LE::read_u64(&bytes[at..]), 15, "`offset` at byte {at}");
        at += 8;
        assert_eq!(LE::read_u32(&bytes[at..]), 3, "the byte count at byte {at}");
        at += 4;
        assert_eq!((at, &bytes[at..at + 3]), (CHUNK_HEAD_BYTES, &b"xyz"[..]));
        assert_eq!(LE::read_u32(&bytes[at + 3..]), 16, "`crc` last");
        assert_eq!(bytes.len(), CHUNK_FIXED_BYTES + 3);
    }

    #[test]
    fn every_truncation_and_extension_of_a_chunk_is_a_decode_error() {
        let bytes = transfer(&data(10), 64)[0].encode();
        for n in 0..bytes.len() {
            assert!(SnapshotChunk::decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(SnapshotChunk::decode(&longer).unwrap_err().offset, 37);
        let mut huge = bytes.clone();
        huge[37..41].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SnapshotChunk::decode(&huge).is_err(), "a count larger than the input allocates nothing");
        let mut version = bytes;
        version[0] = 2;
        assert_eq!(SnapshotChunk::decode(&version).unwrap_err().offset, 0);
    }

    #[test]
    fn an_error_abandons_the_transfer_for_good() {
        let d = data(100);
        let chunks = transfer(&d, 10);
        let mut r = receiver(&d);
        r.receive(&chunks[0]).unwrap();
        assert!(matches!(r.receive(&chunks[2]), Err(TransferError::OutOfOrder { expected: 10, actual: 20 })));
        assert!(matches!(r.receive(&chunks[1]), Err(TransferError::Abandoned)));
        assert!(matches!(r.finish(), Err(TransferError::Abandoned)));
    }

    #[test]
    fn empty_data_travels_as_one_empty_chunk() {
        let chunks = transfer(&[], 10);
        assert_eq!(chunks.len(), 1);
        let mut r = receiver(&[]);
        r.receive(&chunks[0]).unwrap();
        assert!(matches!(r.receive(&chunks[0]), Err(TransferError::AfterEnd { offset: 0, data_len: 0 })));
        let mut r = receiver(&[]);
        assert!(matches!(r.receive(&chunks[0]), Ok(())));
        assert_eq!(r.finish().unwrap().data_len(), 0);
    }

    #[test]
    fn a_source_shorter_or_longer_than_its_header_fails_the_sender() {
        struct Lying(Arc<[u8]>, u64);
        impl SnapshotSource for Lying {
            fn data_len(&self) -> u64 {
                self.1
            }
            fn data_crc(&self) -> u32 {
                0
            }
            fn reader(&self) -> crate::Result<Box<dyn Read + Send>> {
                Ok(Box::new(std::io::Cursor::new(Arc::clone(&self.0))))
            }
            fn describe(&self) -> PathBuf {
                "<lying>".into()
            }
        }
        for claimed in [5u64, 15] {
            let snap = Snapshot::new(metadata(1), Arc::new(Lying(data(10).into(), claimed)));
            let results: Vec<_> = SnapshotSender::new(snap, 4).unwrap().collect();
            assert!(matches!(results.last(), Some(Err(TransferError::Source(_)))), "claimed {claimed}");
        }
        assert!(SnapshotSender::new(Snapshot::from_bytes(metadata(1), vec![1]), 0).is_err());
    }
}
