//! Raft consensus in etcd-raft's model: a deterministic state machine ([`RawNode`]) driven by
//! ticks, messages and proposals; the application persists, sends and applies what each
//! [`Ready`] hands it, through the [`crate::storage`] traits.
//!
//! Inside (every public type is re-exported here):
//! - `config`: [`Config`] and its validation;
//! - `message`: [`Message`] and its binary encoding;
//! - `conf_change`: [`ConfChange`], the membership changes the application proposes, and their
//!   encoding in log entries;
//! - `membership`: the configuration the core works with (voters, learners, joint consensus)
//!   and the quorum rules;
//! - `read_only`: linearizable reads ([`ReadState`], [`ReadOnlyOption`]);
//! - `snapshot_transfer`: a snapshot sent in checksummed chunks ([`SnapshotSender`],
//!   [`SnapshotReceiver`]);
//! - `progress`: the leader's view of each follower ([`ProgressState`]) and the flow-control
//!   window;
//! - `log`: the persisted log plus the unstable tail;
//! - `core`: the state machine (roles, PreVote, CheckQuorum, replication, commitment,
//!   membership changes, reads, leadership transfer);
//! - `raw_node`: [`RawNode`], [`Ready`], [`Status`];
//! - `node`: [`Node`], the `RawNode` on a thread of its own, driven through bounded channels;
//! - `proposal`: [`Proposal`], the handle a `Node` proposal resolves through to its
//!   [`Outcome`].

mod conf_change;
mod config;
mod core;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod proposal;
mod raw_node;
mod read_only;
mod snapshot_transfer;

use std::sync::Arc;

pub use conf_change::{ConfChange, ConfChangeDecodeError, ConfChangeSingle, ConfChangeTransition, ConfChangeType};
pub use config::{Config, ConfigError};
pub use message::{CAMPAIGN_TRANSFER, DecodeError, Decoded, Message, MessageType, PendingSnapshot};
pub use node::{COMMAND_QUEUE_CAPACITY, Node, NodeError, StartError};
pub use progress::ProgressState;
pub use proposal::{DropReason, Outcome, Proposal, UnknownReason};
pub use raw_node::{NewNodeError, RawNode, Ready, SnapshotStatus, SoftState, Status};
pub use read_only::{ReadOnlyOption, ReadState};
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

/// Why a [`RawNode`] call did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// A proposal, read or membership change was refused; nothing changed.
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
    /// A committed membership change cannot be applied to the current configuration (a correct
    /// leader never commits one: it checks each change when proposed); nothing changed.
    #[error("the membership change cannot be applied: {0}")]
    InvalidConfChange(String),
    /// Reading from storage failed: the node stopped, and every later call returns this. Build
    /// a new node over the storage (after repairing it) to go on; nothing was guessed in place
    /// of what storage failed to give.
    #[error("the node stopped on a storage error: {0}")]
    Storage(Arc<crate::Error>),
    /// `ready` was called while an earlier `Ready` waits for `advance`.
    #[error("a Ready is outstanding: advance it before asking for another")]
    ReadyOutstanding,
    /// `advance` was given a `Ready` that is not the one outstanding (already advanced, or none
    /// was taken).
    #[error("advance was given a Ready that is not outstanding")]
    NotOutstanding,
    /// A partial Ready ([`RawNode::ready_while_persisting`]) is out: advance it before taking
    /// another or advancing the Ready it was handed out beside.
    #[error("a partial Ready is outstanding: advance it first")]
    PartialOutstanding,
}

/// Why a proposal (or a read request) was not accepted.
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
    /// Leadership is being handed to another node; retry there once it leads.
    #[error("leadership is being transferred to node {to}")]
    TransferInProgress {
        /// The node taking over.
        to: u64,
    },
    /// This leader was removed (or demoted) by a membership change and is handing leadership
    /// to a voter; retry on the next leader.
    #[error("this leader was removed from the configuration and is handing over")]
    LeaderRemoved,
    /// A membership change is proposed and not yet applied; one at a time.
    #[error("the membership change at index {index} is not applied yet")]
    ConfChangePending {
        /// Its index (on a new leader: the last index when it was elected).
        index: u64,
    },
    /// The membership change cannot be made from the current configuration (or its entry data
    /// does not decode).
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
}
