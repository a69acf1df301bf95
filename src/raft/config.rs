//! Node configuration, validated before a node is built.

use super::read_only::ReadOnlyOption;

/// How a Raft node behaves. [`Config::new`] gives etcd-like defaults for node `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's id; never 0.
    pub id: u64,
    /// Ticks without hearing from a leader before a follower campaigns; the actual timeout is
    /// randomized in `[election_tick, 2 * election_tick)`.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats; below `election_tick`.
    pub heartbeat_tick: usize,
    /// Bytes of entry data in one append message (at least one entry is always sent).
    pub max_size_per_msg: u64,
    /// Appends in flight to one follower in the Replicate state.
    pub max_inflight_msgs: usize,
    /// Bytes of entry data in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Bytes of entry data the leader holds uncommitted before it rejects proposals.
    pub max_uncommitted_size: u64,
    /// Bytes of committed entries handed out to apply in one `Ready` (at least one entry).
    pub max_committed_size_per_ready: u64,
    /// A leader steps down when it has not heard from a quorum within an election timeout, and
    /// followers that heard from a leader recently ignore vote requests.
    pub check_quorum: bool,
    /// Pre-elections (§9.6): a node campaigns only if a quorum would vote for it, so a
    /// partitioned node rejoining does not disrupt the cluster by raising the term.
    pub pre_vote: bool,
    /// Reject proposals on followers instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
    /// The last index the application has applied (when restarting).
    pub applied: u64,
    /// Seeds the randomized election timeouts (with the id), for reproducible runs.
    pub seed: u64,
    /// How `read_index` confirms leadership: a heartbeat round (the default), or the leader
    /// lease (needs `check_quorum`, and clocks whose drift stays within the election timeout).
    pub read_only_option: ReadOnlyOption,
    /// This node is being added to a running cluster, so the configuration in its storage may
    /// not list it yet. A joining node starts over storage holding the cluster's bootstrap
    /// ConfState (the one its first members started with) and an empty log: it takes the
    /// leader's log (or a snapshot) and applies the membership changes in it like every other
    /// node, and never campaigns until they make it a voter. Without this flag a node that is
    /// not in its storage's configuration is refused ([`ConfigError::NotAMember`]): a wrong id
    /// is the likelier mistake.
    pub joining: bool,
}

impl Config {
    /// Defaults: election 10 ticks, heartbeat 1, 1 MiB per message, 256 messages or 32 MiB in
    /// flight, 64 MiB uncommitted, 64 MiB per Ready to apply, CheckQuorum and PreVote on.
    pub fn new(id: u64) -> Config {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_size: 64 << 20,
            max_committed_size_per_ready: 64 << 20,
            check_quorum: true,
            pre_vote: true,
            disable_proposal_forwarding: false,
            applied: 0,
            seed: 0,
            read_only_option: ReadOnlyOption::Safe,
            joining: false,
        }
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::ZeroHeartbeatTick);
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionNotAboveHeartbeat {
                election_tick: self.election_tick,
                heartbeat_tick: self.heartbeat_tick,
            });
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::ZeroInflight("max_inflight_msgs"));
        }
        if self.max_inflight_bytes == 0 {
            return Err(ConfigError::ZeroInflight("max_inflight_bytes"));
        }
        if self.max_uncommitted_size == 0 {
            return Err(ConfigError::ZeroInflight("max_uncommitted_size"));
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        Ok(())
    }
}

/// Why a [`Config`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `id` is 0, which means "no node" (no vote, no leader).
    #[error("node id 0 is reserved for \"none\"")]
    ZeroId,
    /// `heartbeat_tick` is 0.
    #[error("heartbeat_tick must be at least 1")]
    ZeroHeartbeatTick,
    /// `election_tick` is not above `heartbeat_tick`.
    #[error("election_tick ({election_tick}) must be above heartbeat_tick ({heartbeat_tick})")]
    ElectionNotAboveHeartbeat {
        /// The configured `election_tick`.
        election_tick: usize,
        /// The configured `heartbeat_tick`.
        heartbeat_tick: usize,
    },
    /// The named limit (`max_inflight_msgs`, `max_inflight_bytes` or `max_uncommitted_size`) is 0.
    #[error("{0} must be at least 1")]
    ZeroInflight(&'static str),
    /// `read_only_option` is `LeaseBased` but `check_quorum` is off: without CheckQuorum a leader
    /// cut off from the others keeps believing it leads, and its lease means nothing.
    #[error("lease-based reads need check_quorum")]
    LeaseWithoutCheckQuorum,
    /// This node's id (held here) is in neither the voters nor the learners of the storage's
    /// ConfState, and `joining` is not set. Returned by `RawNode::new`, not by `validate`.
    #[error("node {0} is not in the configuration's voters or learners")]
    NotAMember(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_typed_errors() {
        assert_eq!(Config::new(0).validate(), Err(ConfigError::ZeroId));
        let mut c = Config::new(1);
        c.heartbeat_tick = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroHeartbeatTick));
        c.heartbeat_tick = 10;
        assert!(matches!(c.validate(), Err(ConfigError::ElectionNotAboveHeartbeat { .. })));
        c.heartbeat_tick = 1;
        c.max_inflight_msgs = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroInflight("max_inflight_msgs")));
        assert_eq!(Config::new(3).validate(), Ok(()));
    }
}
