//! Raft consensus in etcd-raft's model: a deterministic state machine ([`RawNode`]) driven by
//! ticks, messages and proposals; the application persists, sends and applies what each
//! [`Ready`] hands it, through the [`crate::storage`] traits.
//!
//! Inside (every public type is re-exported here):
//! - `config`: [`Config`] and its validation;
//! - `message`: [`Message`] and its binary encoding;
//! - `snapshot_transfer`: a snapshot sent in checksummed chunks ([`SnapshotSender`],
//!   [`SnapshotReceiver`]);
//! - `progress`: the leader's view of each follower ([`ProgressState`]) and the flow-control
//!   window;
//! - `log`: the persisted log plus the unstable tail;
//! - `core`: the state machine (roles, PreVote, CheckQuorum, replication, commitment);
//! - `raw_node`: [`RawNode`], [`Ready`], [`Status`].

mod config;
mod core;
mod log;
mod message;
mod progress;
mod raw_node;
mod snapshot_transfer;

pub use config::{Config, ConfigError};
pub use message::{DecodeError, Decoded, Message, MessageType, PendingSnapshot};
pub use progress::ProgressState;
pub use raw_node::{NewNodeError, RawNode, Ready, SoftState, Status};
pub use snapshot_transfer::{SnapshotChunk, SnapshotHeader, SnapshotReceiver, SnapshotSender, TransferError};

/// Bytes of entry data in `entries`: what size limits and flow control count.
pub(crate) fn data_bytes(entries: &[crate::storage::Entry]) -> u64 {
    entries.iter().map(crate::storage::Entry::size_bytes).sum()
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Takes the leader's appends, heartbeats and snapshots and answers votes; a voter campaigns
    /// when an election timeout passes without hearing from a leader.
    Follower,
    /// Asks the voters whether they would vote for it (PreVote), without raising its term.
    PreCandidate,
    /// Has raised its term and voted for itself; asks the voters for their votes.
    Candidate,
    /// Accepts proposals, replicates the log to the other nodes and advances the commit index.
    Leader,
}

/// Why [`RawNode::step`] did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A forwarded proposal was refused.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The message breaks a rule no correct peer breaks (see [`Message::validate`]): it was
    /// dropped and changed nothing. Messages come from the network; this is the node's answer
    /// to bytes that decoded but do not make sense.
    #[error("malformed {kind:?} message from node {from}: {reason}")]
    Malformed {
        /// What the message claimed to be.
        kind: MessageType,
        /// The sender it claimed.
        from: u64,
        /// The rule it broke.
        reason: String,
    },
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader and knows of none (or a forwarded proposal reached a node that
    /// is no longer leader).
    #[error("no leader is known; retry after an election")]
    NoLeader,
    /// This node follows a known leader, but `Config::disable_proposal_forwarding` is set.
    #[error("this node is not the leader and proposal forwarding is disabled")]
    ForwardingDisabled,
    /// The leader holds too much uncommitted entry data (`Config::max_uncommitted_size`).
    #[error("{uncommitted} bytes are uncommitted; the limit is {limit}")]
    UncommittedSizeExceeded {
        /// Bytes of entry data proposed on this leader and not yet handed out to apply.
        uncommitted: u64,
        /// `Config::max_uncommitted_size`.
        limit: u64,
    },
}
