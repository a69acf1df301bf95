//! Moving Raft messages between processes (issue 13, in progress): the wire framing and the
//! handshake that opens a peer connection (`frame`), and a TCP transport over them (`tcp`:
//! [`TcpTransport`]; snapshot messages are not carried yet).

mod frame;
mod tcp;

pub use tcp::{Delivered, Inbound, SendError, TcpConfig, TcpTransport};

pub use frame::{
    FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, Frame, FrameError, FrameKind, HandshakeError, Hello, PROTOCOL_VERSION,
    decode_frame, encode_frame,
};
