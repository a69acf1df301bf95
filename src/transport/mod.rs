//! Moving Raft messages between processes (issue 13, in progress): the wire framing and the
//! handshake that opens a peer connection (`frame`). The TCP transport that uses them comes
//! next; until then an application carries [`Message::encode`](crate::raft::Message::encode)
//! bytes in frames of its own.

mod frame;

pub use frame::{
    FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, Frame, FrameError, FrameKind, HandshakeError, Hello, PROTOCOL_VERSION,
    decode_frame, encode_frame,
};
