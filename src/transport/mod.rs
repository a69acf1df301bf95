//! Moving Raft messages between processes: the wire framing and the handshake that opens a
//! peer connection (`frame`), the [`Transport`] an application's node loop sends through, and a
//! TCP implementation of it (`tcp`: [`TcpTransport`]).

mod frame;
mod tcp;

pub use tcp::{Delivered, Inbound, SendError, TcpConfig, TcpTransport};

pub use frame::{
    FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, Frame, FrameError, FrameKind, HandshakeError, Hello, PROTOCOL_VERSION,
    decode_frame, encode_frame,
};

use crate::raft::{Message, SnapshotStatus};

/// What a node loop needs from a transport; [`TcpTransport`] is keel's, and an application
/// with its own network (an RPC framework, a test network) implements this.
///
/// Received messages are not part of the trait: a transport hands them to the node however it
/// is built to (`TcpTransport` sends them to a channel given at start).
///
/// Contract: `send` never waits for the network (queue, or drop and remember the peer as
/// unreachable); a message to a peer that is not known is refused; snapshot messages
/// (`m.snapshot.is_some()`) carry their data however the transport chooses, and each such
/// transfer is reported once through `take_snapshot_reports`.
pub trait Transport: Send + Sync {
    /// Queues `m` for `m.to`. Never waits.
    fn send(&self, m: &Message) -> Result<(), SendError>;
    /// Peers a message was dropped for since the last call (for `report_unreachable`).
    fn take_unreachable(&self) -> Vec<u64>;
    /// How snapshot transfers ended since the last call (for `report_snapshot`).
    fn take_snapshot_reports(&self) -> Vec<(u64, SnapshotStatus)>;
    /// Adds peer `id` at `address` (the transport's own address syntax), or moves it there.
    fn add_peer(&self, id: u64, address: &str) -> Result<(), String>;
    /// Removes peer `id`: nothing is sent to it or taken from it any more.
    fn remove_peer(&self, id: u64);
}
