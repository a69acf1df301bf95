//! Frames: how bytes on a peer connection are cut into messages, and the handshake that opens a
//! connection.
//!
//! Frame layout (little-endian): payload length `u32`, CRC-32 (`crc32fast`) of the kind byte and
//! the payload `u32`, the kind byte, then the payload. Kinds: 1 handshake ([`Hello`]), 2 a Raft
//! message ([`Message::encode`](crate::raft::Message::encode)), 3 a snapshot chunk
//! ([`SnapshotChunk::encode`](crate::raft::SnapshotChunk::encode)). A frame announcing more than
//! [`FRAME_PAYLOAD_BYTES_MAX`] is refused before anything is allocated for it.
//!
//! Handshake payload: magic `KEELRAFT` (8 bytes), protocol version `u16`, cluster id `u64`, the
//! sender's node id `u64`, the node id it means to reach `u64`. Both sides send one first; a
//! connection whose handshake names another cluster, another protocol version, an unknown sender
//! or another receiver is closed.
//!
//! Bytes from the network are untrusted: every decoder here returns a [`FrameError`] naming the
//! byte offset and what was wrong, never panics, and never allocates more than the bytes it was
//! given.

use byteorder::{ByteOrder, LE};

/// Bytes before a frame's payload: length, CRC, kind.
pub const FRAME_HEADER_BYTES: usize = 9;
/// The largest payload a frame may announce (64 MiB): above any Raft message keel makes with its
/// size limits, and above a snapshot chunk of the default size.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// The peer protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"KEELRAFT";
pub(crate) const HELLO_BYTES: usize = 8 + 2 + 8 + 8 + 8;

const _: () = assert!(crate::limits::SNAPSHOT_CHUNK_BYTES_DEFAULT + 256 <= FRAME_PAYLOAD_BYTES_MAX);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// The handshake ([`Hello`]).
    Hello = 1,
    /// A Raft message.
    Message = 2,
    /// A chunk of a snapshot's data.
    SnapshotChunk = 3,
}

/// One frame read from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload, checksum verified.
    pub payload: Vec<u8>,
}

/// Why bytes from a peer are not a frame or a handshake: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame at byte {offset}: {what}")]
pub struct FrameError {
    /// Offset in the bytes given to the decoder.
    pub offset: usize,
    /// What was wrong there.
    pub what: String,
}

/// The frame of `kind` around `payload`. Panics if the payload is above
/// [`FRAME_PAYLOAD_BYTES_MAX`]: the sender's own limits keep it below (a bug otherwise).
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= FRAME_PAYLOAD_BYTES_MAX, "a {} byte frame payload", payload.len());
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame_crc(kind as u8, payload).to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

fn frame_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` if more bytes are needed (never more
/// than [`FRAME_HEADER_BYTES`] plus the announced length), or the frame and the bytes it took.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let len = LE::read_u32(&bytes[0..4]) as usize;
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError { offset: 0, what: format!("a frame of {len} bytes, above {FRAME_PAYLOAD_BYTES_MAX}") });
    }
    let kind = match bytes[8] {
        1 => FrameKind::Hello,
        2 => FrameKind::Message,
        3 => FrameKind::SnapshotChunk,
        k => return Err(FrameError { offset: 8, what: format!("unknown frame kind {k}") }),
    };
    if bytes.len() < FRAME_HEADER_BYTES + len {
        return Ok(None);
    }
    let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    let (expected, actual) = (LE::read_u32(&bytes[4..8]), frame_crc(bytes[8], payload));
    if expected != actual {
        return Err(FrameError {
            offset: 4,
            what: format!("checksum {actual:#010x} of {len} payload bytes, the frame says {expected:#010x}"),
        });
    }
    Ok(Some((Frame { kind, payload: payload.to_vec() }, FRAME_HEADER_BYTES + len)))
}

/// The handshake each side sends first on a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol_version: u16,
    /// The cluster the sender belongs to: nodes of different clusters never talk.
    pub cluster_id: u64,
    /// The sender's node id.
    pub from: u64,
    /// The node id the sender means to reach.
    pub to: u64,
}

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a handshake.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs}, this node speaks {ours}")]
    Version {
        /// The peer's.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer belongs to another cluster (a stray process, a copied config).
    #[error("cluster {theirs:#x}, this node belongs to cluster {ours:#x}")]
    Cluster {
        /// The peer's cluster id.
        theirs: u64,
        /// Ours.
        ours: u64,
    },
    /// The peer meant to reach another node.
    #[error("the peer meant to reach node {to}, this is node {ours}")]
    WrongNode {
        /// The node the peer named.
        to: u64,
        /// Ours.
        ours: u64,
    },
    /// The peer's node id is not one this node knows (or is its own).
    #[error("node {0} is not a peer of this node")]
    UnknownPeer(u64),
}

impl Hello {
    /// The handshake payload (module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.protocol_version.to_le_bytes());
        for v in [self.cluster_id, self.from, self.to] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a handshake payload.
    pub fn decode(payload: &[u8]) -> Result<Hello, FrameError> {
        if payload.len() != HELLO_BYTES {
            return Err(FrameError {
                offset: 0,
                what: format!("a handshake of {} bytes, not {HELLO_BYTES}", payload.len()),
            });
        }
        if &payload[..8] != MAGIC {
            return Err(FrameError { offset: 0, what: "no KEELRAFT magic: not a keel peer".into() });
        }
        Ok(Hello {
            protocol_version: LE::read_u16(&payload[8..10]),
            cluster_id: LE::read_u64(&payload[10..18]),
            from: LE::read_u64(&payload[18..26]),
            to: LE::read_u64(&payload[26..34]),
        })
    }

    /// Checks a peer's handshake against this node: same protocol version and cluster, meant
    /// for this node, from a node `is_peer` accepts (never this node itself).
    pub fn check(&self, ours: &Hello, is_peer: impl Fn(u64) -> bool) -> Result<(), HandshakeError> {
        if self.protocol_version != ours.protocol_version {
            return Err(HandshakeError::Version { theirs: self.protocol_version, ours: ours.protocol_version });
        }
        if self.cluster_id != ours.cluster_id {
            return Err(HandshakeError::Cluster { theirs: self.cluster_id, ours: ours.cluster_id });
        }
        if self.to != ours.from {
            return Err(HandshakeError::WrongNode { to: self.to, ours: ours.from });
        }
        if self.from == ours.from || self.from == 0 || !is_peer(self.from) {
            return Err(HandshakeError::UnknownPeer(self.from));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let mut stream = encode_frame(FrameKind::Message, b"first");
        stream.extend(encode_frame(FrameKind::SnapshotChunk, &[7; 300]));
        stream.extend(encode_frame(FrameKind::Hello, b""));
        let mut frames = Vec::new();
        let mut at = 0;
        // Fed one byte more at a time, as a socket may deliver them.
        let mut upto = 0;
        while at < stream.len() {
            upto += 1;
            match decode_frame(&stream[at..upto.min(stream.len())]).unwrap() {
                None => assert!(upto <= stream.len(), "incomplete at the end of the stream"),
                Some((f, n)) => {
                    frames.push(f);
                    at += n;
                    upto = at;
                }
            }
        }
        let kinds: Vec<(FrameKind, usize)> = frames.iter().map(|f| (f.kind, f.payload.len())).collect();
        assert_eq!(kinds, vec![(FrameKind::Message, 5), (FrameKind::SnapshotChunk, 300), (FrameKind::Hello, 0)]);
        assert_eq!(frames[0].payload, b"first");
    }

    #[test]
    fn every_damaged_frame_is_a_typed_error_and_a_huge_one_is_refused_unread() {
        let frame = encode_frame(FrameKind::Message, b"payload bytes");
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode_frame(&bad) {
                Err(_) => {}
                // A flipped length bit may make the frame look longer: it waits for more bytes.
                Ok(None) => assert!(bit < 32, "bit {bit}"),
                Ok(Some(_)) => panic!("bit {bit} flipped and the frame was accepted"),
            }
        }
        let mut huge = frame.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decode_frame(&huge[..FRAME_HEADER_BYTES]).unwrap_err();
        assert!(e.what.contains("above"), "{e}");
        let mut kind = frame;
        kind[8] = 9;
        assert_eq!(decode_frame(&kind).unwrap_err().offset, 8);
    }

    #[test]
    fn handshakes_from_strangers_are_refused() {
        let ours = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: 0xC1, from: 1, to: 0 };
        let good = Hello { protocol_version: PROTOCOL_VERSION, cluster_id: 0xC1, from: 2, to: 1 };
        let peers = |id: u64| (1..=3).contains(&id);
        assert_eq!(Hello::decode(&good.encode()).unwrap(), good);
        assert_eq!(good.check(&ours, peers), Ok(()));
        let refuse = |h: Hello| h.check(&ours, peers).unwrap_err();
        assert!(matches!(refuse(Hello { cluster_id: 0xC2, ..good }), HandshakeError::Cluster { .. }));
        assert!(matches!(refuse(Hello { protocol_version: 9, ..good }), HandshakeError::Version { .. }));
        assert!(matches!(refuse(Hello { to: 3, ..good }), HandshakeError::WrongNode { .. }));
        assert_eq!(refuse(Hello { from: 7, ..good }), HandshakeError::UnknownPeer(7));
        assert_eq!(refuse(Hello { from: 1, ..good }), HandshakeError::UnknownPeer(1));
        let bytes = good.encode();
        for n in 0..bytes.len() {
            assert!(Hello::decode(&bytes[..n]).is_err(), "{n} bytes");
        }
        let mut http = bytes.clone();
        http[..8].copy_from_slice(b"GET / HT");
        assert!(Hello::decode(&http).unwrap_err().what.contains("magic"));
    }
}
