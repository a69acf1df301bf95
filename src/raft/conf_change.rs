//! Membership changes as the application proposes them, and their encoding in log entries.
//!
//! A [`ConfChange`] is etcd's ConfChangeV2: any number of single changes (add a voter, add a
//! learner, remove a node) and how to make them. One voter added or removed is a *simple*
//! change, applied in one step; anything more goes through the joint configuration
//! C_old,new (Raft thesis §4.3), in which every decision needs a majority of both the old and the
//! new voters, and which is left by a second, empty change: on its own once the first is applied
//! ([`ConfChangeTransition::Auto`], [`ConfChangeTransition::Implicit`]) or when the application
//! proposes it ([`ConfChangeTransition::Explicit`]).
//!
//! Entry data layout ([`EntryType::ConfChangeV2`](crate::storage::EntryType), little-endian,
//! specified in `segments/FORMAT.md`): a version byte (1), the transition byte, the change count
//! (`u32`), each change as a type byte and a node id (`u64`), then the context length (`u32`)
//! and the context bytes.

use byteorder::{ByteOrder, LE};

/// One change to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfChangeType {
    /// Make the node a voter (a learner is promoted; a new node joins as a voter).
    AddNode = 0,
    /// Make the node a learner: it receives the log and neither votes nor counts towards
    /// commit. A voter is demoted (while joint, once the joint configuration is left).
    AddLearnerNode = 1,
    /// Remove the node from the configuration. A removed leader steps down once the change is
    /// applied.
    RemoveNode = 2,
}

/// A change of one node: what and who.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfChangeSingle {
    /// What happens to the node.
    pub change_type: ConfChangeType,
    /// The node (never 0).
    pub node_id: u64,
}

/// How a change that is not simple enters and leaves the joint configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConfChangeTransition {
    /// A simple change if it can be one (at most one voter changes), otherwise joint and left
    /// automatically.
    #[default]
    Auto = 0,
    /// Always joint, left automatically once applied.
    Implicit = 1,
    /// Always joint; the application leaves it by proposing an empty change.
    Explicit = 2,
}

/// A proposed membership change (etcd's ConfChangeV2). An empty `changes` leaves a joint
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfChange {
    /// How to make the change.
    pub transition: ConfChangeTransition,
    /// The changes, applied in order.
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application data carried along (etcd uses it for the new member's address).
    pub context: Vec<u8>,
}

impl ConfChange {
    /// A change of one node, made simply (no joint configuration).
    pub fn simple(change_type: ConfChangeType, node_id: u64) -> ConfChange {
        ConfChange { changes: vec![ConfChangeSingle { change_type, node_id }], ..ConfChange::default() }
    }

    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> ConfChange {
        ConfChange::default()
    }

    /// Whether this change leaves the joint configuration (it has no changes).
    pub fn leaves_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether this change enters a joint configuration, and if so whether it is left on its
    /// own (etcd's `EnterJoint`): `Some(auto_leave)` or `None` for a simple change.
    pub(crate) fn enters_joint(&self) -> Option<bool> {
        let joint = self.transition != ConfChangeTransition::Auto || self.changes.len() > 1;
        joint.then_some(self.transition != ConfChangeTransition::Explicit)
    }

    /// The entry data layout of the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + 9 * self.changes.len() + self.context.len());
        out.push(VERSION);
        out.push(self.transition as u8);
        out.extend_from_slice(&(self.changes.len() as u32).to_le_bytes());
        for c in &self.changes {
            out.push(c.change_type as u8);
            out.extend_from_slice(&c.node_id.to_le_bytes());
        }
        out.extend_from_slice(&(self.context.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.context);
        out
    }

    /// Decodes [`ConfChange::encode`]'s output. Bytes from a log or a peer are untrusted: any
    /// damage is a [`ConfChangeDecodeError`] naming the offset, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ConfChange, ConfChangeDecodeError> {
        let mut at = 0usize;
        let mut take = |n: usize, what: &str| -> Result<(usize, &[u8]), ConfChangeDecodeError> {
            if bytes.len() - at < n {
                return Err(ConfChangeDecodeError {
                    offset: at,
                    what: format!("{what} needs {n} bytes, {} remain", bytes.len() - at),
                });
            }
            let start = at;
            at += n;
            Ok((start, &bytes[start..start + n]))
        };
        let (off, v) = take(1, "version")?;
        if v[0] != VERSION {
            return Err(ConfChangeDecodeError { offset: off, what: format!("version {}, expected {VERSION}", v[0]) });
        }
        let (off, t) = take(1, "transition")?;
        let transition = match t[0] {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            b => return Err(ConfChangeDecodeError { offset: off, what: format!("unknown transition {b}") }),
        };
        let (off, n) = take(4, "change count")?;
        let count = LE::read_u32(n) as usize;
        if count > (bytes.len() - off - 4) / 9 {
            return Err(ConfChangeDecodeError { offset: off, what: format!("{count} changes cannot fit") });
        }
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            let (off, t) = take(1, "change type")?;
            let change_type = match t[0] {
                0 => ConfChangeType::AddNode,
                1 => ConfChangeType::AddLearnerNode,
                2 => ConfChangeType::RemoveNode,
                b => return Err(ConfChangeDecodeError { offset: off, what: format!("unknown change type {b}") }),
            };
            let (_, id) = take(8, "node id")?;
            changes.push(ConfChangeSingle { change_type, node_id: LE::read_u64(id) });
        }
        let (_, n) = take(4, "context length")?;
        let len = LE::read_u32(n) as usize;
        let (_, context) = take(len, "context")?;
        let context = context.to_vec();
        if at != bytes.len() {
            return Err(ConfChangeDecodeError {
                offset: at,
                what: format!("{} bytes after the change", bytes.len() - at),
            });
        }
        Ok(ConfChange { transition, changes, context })
    }
}

const VERSION: u8 = 1;

/// Why bytes are not a [`ConfChange`]: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad membership change at byte {offset}: {what}")]
pub struct ConfChangeDecodeError {
    /// Byte offset in the entry data at which decoding stopped.
    pub offset: usize,
    /// What was wrong there.
    pub what: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        let cc = ConfChange {
            transition: ConfChangeTransition::Explicit,
            changes: vec![
                ConfChangeSingle { change_type: ConfChangeType::AddNode, node_id: 4 },
                ConfChangeSingle { change_type: ConfChangeType::RemoveNode, node_id: 1 },
                ConfChangeSingle { change_type: ConfChangeType::AddLearnerNode, node_id: 9 },
            ],
            context: b"10.0.0.4:7000".to_vec(),
        };
        let bytes = cc.encode();
        assert_eq!(ConfChange::decode(&bytes).unwrap(), cc);
        for n in 0..bytes.len() {
            assert!(ConfChange::decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ConfChange::decode(&extra).unwrap_err().what.contains("after"));
        let mut bad = bytes.clone();
        bad[1] = 7;
        assert_eq!(ConfChange::decode(&bad).unwrap_err().offset, 1);
        let mut huge = ConfChange::leave_joint().encode();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ConfChange::decode(&huge).is_err());
    }

    #[test]
    fn the_layout_in_format_md_matches_encode() {
        // The fixed-offset rows of FORMAT.md's table (offset, size, field) against the bytes of
        // a change with two entries and a two-byte context.
        let spec = include_str!("../../segments/FORMAT.md");
        let table = spec.split("### Membership change entry data").nth(1).expect("the section");
        let rows: Vec<(usize, usize, &str)> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                Some((cells.get(1)?.parse().ok()?, cells.get(2)?.parse().ok()?, *cells.get(3)?))
            })
            .collect();
        assert_eq!(rows, vec![(0, 1, "version"), (1, 1, "transition"), (2, 4, "change_count")]);
        let cc = ConfChange {
            transition: ConfChangeTransition::Explicit,
            changes: vec![
                ConfChangeSingle { change_type: ConfChangeType::AddLearnerNode, node_id: 7 },
                ConfChangeSingle { change_type: ConfChangeType::RemoveNode, node_id: 2 },
            ],
            context: b"ab".to_vec(),
        };
        let b = cc.encode();
        assert_eq!((b[0], b[1], LE::read_u32(&b[2..6])), (VERSION, 2, 2));
        assert_eq!((b[6], LE::read_u64(&b[7..15]), b[15], LE::read_u64(&b[16..24])), (1, 7, 2, 2));
        let n = 2;
        assert_eq!(LE::read_u32(&b[6 + 9 * n..10 + 9 * n]), 2, "context_len at 6 + 9 x count");
        assert_eq!(&b[10 + 9 * n..], b"ab", "context at 10 + 9 x count");
    }

    #[test]
    fn joint_or_simple_follows_etcd() {
        let one = ConfChange::simple(ConfChangeType::AddNode, 2);
        assert_eq!(one.enters_joint(), None);
        let mut two = one.clone();
        two.changes.push(ConfChangeSingle { change_type: ConfChangeType::RemoveNode, node_id: 1 });
        assert_eq!(two.enters_joint(), Some(true));
        two.transition = ConfChangeTransition::Explicit;
        assert_eq!(two.enters_joint(), Some(false));
        let mut implicit_one = one;
        implicit_one.transition = ConfChangeTransition::Implicit;
        assert_eq!(implicit_one.enters_joint(), Some(true));
    }
}
