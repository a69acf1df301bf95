//! Raft messages and their compact binary encoding.
//!
//! Encoding (little-endian): a version byte (2), the message type, `to`, `from`, `term`,
//! `log_term`, `index`, `commit`, `reject` (one byte), `reject_hint`, the entry count (`u32`)
//! and each entry (index, term, type byte, data length `u32`, data; an entry with a context sets
//! bit 7 of its type byte (`0x80`) and puts the context's length `u32` and bytes
//! between the type byte and the data length), then a snapshot flag byte
//! and, if set, the snapshot's header (index, term, the four ConfState id lists each as a `u32`
//! count and ids, `auto_leave`, data length `u64`, data checksum `u32`): not its data, which
//! follows as chunks (`snapshot_transfer`), so decoding such a message gives
//! [`Decoded::Snapshot`], which cannot be stepped until its chunks have arrived. A rejected
//! AppendResponse's hint is `reject_hint` with its term in `log_term`; there is no separate
//! hint-term field. Then the context (length `u32`, bytes). Framing and checksums belong to the transport. (A test checks this field
//! list against `encode`.) Version 1 carried the snapshot's data inline; version 2
//! (briefly) either the context or the snapshot header, never both.

use super::snapshot_transfer::{SnapshotHeader, TransferError};
use crate::storage::types::ENTRY_CONTEXT_FLAG;
use crate::storage::{ConfState, Entry, EntryType, Snapshot, SnapshotMetadata};
use byteorder::{ByteOrder, LE};

/// The kinds of message nodes exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Leader → follower: entries after (`index`, `log_term`), and the leader's commit.
    Append = 1,
    /// Follower → leader: accepted up to `index`, or rejected with a hint.
    AppendResponse = 2,
    /// Candidate → all: vote for me in `term`; my last entry is (`index`, `log_term`).
    RequestVote = 3,
    /// Voter → candidate: the vote in `term` granted (sent once persisted) or refused (`reject`).
    RequestVoteResponse = 4,
    /// Pre-candidate → all: would you vote for me in `term` (not yet entered)?
    RequestPreVote = 5,
    /// Voter → pre-candidate: it would vote in the term asked about, or not (`reject`, sent in
    /// the voter's own term).
    RequestPreVoteResponse = 6,
    /// Leader → follower: I am alive; commit up to `commit` (bounded by what you matched).
    Heartbeat = 7,
    /// Follower → leader: the heartbeat arrived; the leader resends appends if it is behind.
    HeartbeatResponse = 8,
    /// Leader → follower: install this snapshot.
    Snapshot = 9,
    /// Follower → leader: a forwarded proposal (its `entries`). Term 0, like a local request.
    Propose = 10,
    /// Follower → leader: a forwarded read request (`context` is the application's). Term 0.
    ReadIndex = 11,
    /// Leader → follower: the read request `context` may be served once `index` is applied.
    ReadIndexResponse = 12,
    /// Follower → leader: the application asked to hand leadership to `index`, or to `from`
    /// when `index` is 0 (etcd's form, a node asking for itself). `from` is always the sender,
    /// so a transport can hold it to the connection's peer.
    TransferLeader = 13,
    /// Leader → transfer target: campaign now, skipping PreVote and the leader lease.
    TimeoutNow = 14,
}

impl MessageType {
    fn from_u8(b: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match b {
            1 => Append,
            2 => AppendResponse,
            3 => RequestVote,
            4 => RequestVoteResponse,
            5 => RequestPreVote,
            6 => RequestPreVoteResponse,
            7 => Heartbeat,
            8 => HeartbeatResponse,
            9 => Snapshot,
            10 => Propose,
            11 => ReadIndex,
            12 => ReadIndexResponse,
            13 => TransferLeader,
            14 => TimeoutNow,
            _ => return None,
        })
    }
}

/// One Raft message. Fields a type does not use are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What the message is, and so which of the other fields it uses.
    pub kind: MessageType,
    /// The id of the node it is addressed to.
    pub to: u64,
    /// The id of the node that sent it.
    pub from: u64,
    /// The sender's term; RequestPreVote carries the term it would campaign in, and a granted
    /// pre-vote answers in that term. 0 in Propose.
    pub term: u64,
    /// Append: the term of the entry before `entries`; votes: the candidate's last term;
    /// AppendResponse rejection: the term of the follower's entry at `reject_hint`.
    pub log_term: u64,
    /// Append: the index before `entries`; AppendResponse: the index accepted (or rejected);
    /// votes: the candidate's last index; Heartbeat: the leader's tick count, echoed in the
    /// HeartbeatResponse (when a follower's lease started, for lease-based reads).
    pub index: u64,
    /// Append: the entries following `index`; Propose: the proposed entries (the leader assigns
    /// their index and term).
    pub entries: Vec<Entry>,
    /// Append: the leader's commit index; Heartbeat: the same, capped at what the follower matched.
    pub commit: u64,
    /// AppendResponse: the follower's log does not match at `index`; vote responses: not granted.
    pub reject: bool,
    /// AppendResponse rejection: the follower's index to retry from (its last index or the
    /// last index whose term is at most `log_term`).
    pub reject_hint: u64,
    /// Snapshot: the snapshot to install (a handle: its data is streamed, never copied into
    /// the message); `None` in every other type.
    pub snapshot: Option<Snapshot>,
    /// ReadIndex and its response: the application's request context; Heartbeat and its
    /// response: the context of the newest read waiting for this heartbeat round; RequestVote:
    /// [`CAMPAIGN_TRANSFER`] for an election started by a leadership transfer.
    pub context: Vec<u8>,
}

/// The `context` of a vote request sent by a leadership transfer's target: voters grant it even
/// while they believe the old leader alive (it asked for the election).
pub const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

impl Message {
    /// Checks the rules a message from a correct peer always keeps and that the state machine
    /// relies on; [`RawNode::step`](super::RawNode::step) drops a message that breaks one with
    /// [`RaftError::Malformed`](super::RaftError::Malformed). No index or term is above
    /// [`limits::INDEX_MAX`](crate::limits::INDEX_MAX) (storage refuses them). An `Append`'s entries follow
    /// `index` one by one, with terms that never decrease, starting at or above `log_term`, and
    /// none above the message's term (a leader's log holds no entry of a later term); a
    /// `Snapshot` carries a snapshot of a term no later than the message's; a rejecting
    /// `AppendResponse` hints at or below the index it rejects.
    pub fn validate(&self) -> Result<(), String> {
        let max = crate::limits::INDEX_MAX;
        let fields = [
            ("term", self.term),
            ("log_term", self.log_term),
            ("index", self.index),
            ("commit", self.commit),
            ("reject_hint", self.reject_hint),
        ];
        let snapshot = self
            .snapshot
            .iter()
            .flat_map(|s| [("snapshot index", s.metadata.index), ("snapshot term", s.metadata.term)]);
        let entries = self.entries.iter().flat_map(|e| [("entry index", e.index), ("entry term", e.term)]);
        if let Some((what, value)) = fields.into_iter().chain(snapshot).chain(entries).find(|&(_, v)| v > max) {
            return Err(format!("{what} {value} is above the largest index or term, {max}"));
        }
        match self.kind {
            MessageType::Append => {
                let mut prev_term = self.log_term;
                for (k, e) in self.entries.iter().enumerate() {
                    if self.index.checked_add(k as u64 + 1) != Some(e.index) {
                        return Err(format!("entry {k} has index {}, not index {} + {}", e.index, self.index, k + 1));
                    }
                    if e.term == 0 || e.term < prev_term || e.term > self.term {
                        return Err(format!(
                            "entry {} has term {}: terms are at least 1, never decrease (from {prev_term}) and \
                             never pass the message's term {}",
                            e.index, e.term, self.term
                        ));
                    }
                    prev_term = e.term;
                }
                if self.log_term > self.term {
                    return Err(format!("log_term {} is above the message's term {}", self.log_term, self.term));
                }
                Ok(())
            }
            // A follower's hint points at or below the index it rejects.
            MessageType::AppendResponse if self.reject && self.reject_hint > self.index => {
                Err(format!("reject_hint {} is above the rejected index {}", self.reject_hint, self.index))
            }
            MessageType::Snapshot => match &self.snapshot {
                None => Err("a snapshot message without a snapshot".into()),
                Some(s) if s.metadata.term > self.term => {
                    Err(format!("snapshot term {} is above the message's term {}", s.metadata.term, self.term))
                }
                // The log restarts after the snapshot, at an index that must exist too.
                Some(s) if s.metadata.index >= max => {
                    Err(format!("snapshot index {} leaves no index after it", s.metadata.index))
                }
                Some(s) if s.metadata.index > 0 && s.metadata.term == 0 => {
                    Err(format!("snapshot at index {} has term 0; every entry's term is at least 1", s.metadata.index))
                }
                Some(s) => match super::membership::Membership::from_conf_state(&s.metadata.conf_state) {
                    Err(why) => Err(format!("snapshot membership: {why}")),
                    Ok(m) if m.voters.is_empty() => Err("snapshot membership has no voters".into()),
                    Ok(_) => Ok(()),
                },
            },
            _ => Ok(()),
        }
    }

    /// A message with every other field zero.
    pub fn new(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
        Message {
            kind,
            to,
            from,
            term,
            log_term: 0,
            index: 0,
            entries: Vec::new(),
            commit: 0,
            reject: false,
            reject_hint: 0,
            snapshot: None,
            context: Vec::new(),
        }
    }

    /// Bytes of entry data carried (what flow control counts).
    pub fn entry_bytes(&self) -> u64 {
        super::data_bytes(&self.entries)
    }

    /// The encoding described in the module docs. A snapshot is encoded as its header: a
    /// transport sends its data after the message, through a
    /// [`SnapshotSender`](super::SnapshotSender).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(self.snapshot.as_ref().map(SnapshotHeader::of).as_ref())
    }

    fn encode_with(&self, snapshot: Option<&SnapshotHeader>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.iter().map(|e| 25 + e.size_bytes() as usize).sum::<usize>());
        out.push(VERSION);
        out.push(self.kind as u8);
        for v in [self.to, self.from, self.term, self.log_term, self.index, self.commit] {
            put_u64(&mut out, v);
        }
        out.push(u8::from(self.reject));
        put_u64(&mut out, self.reject_hint);
        put_u32(&mut out, self.entries.len() as u32);
        for e in &self.entries {
            put_u64(&mut out, e.index);
            put_u64(&mut out, e.term);
            if e.context.is_empty() {
                out.push(e.entry_type as u8);
            } else {
                out.push(e.entry_type as u8 | ENTRY_CONTEXT_FLAG);
                put_u32(&mut out, e.context.len() as u32);
                out.extend_from_slice(&e.context);
            }
            put_u32(&mut out, e.data.len() as u32);
            out.extend_from_slice(&e.data);
        }
        match snapshot {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_u64(&mut out, s.metadata.index);
                put_u64(&mut out, s.metadata.term);
                put_conf_state(&mut out, &s.metadata.conf_state);
                put_u64(&mut out, s.data_len);
                put_u32(&mut out, s.data_crc);
            }
        }
        put_u32(&mut out, self.context.len() as u32);
        out.extend_from_slice(&self.context);
        out
    }

    /// Decodes [`Message::encode`]'s output; bad bytes give a [`DecodeError`], never a panic.
    /// A message announcing a snapshot gives [`Decoded::Snapshot`]: its data is still to come.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(r.error(format!("message version {version}, expected {VERSION}")));
        }
        let kind_byte = r.u8("type")?;
        let kind =
            MessageType::from_u8(kind_byte).ok_or_else(|| r.error(format!("unknown message type {kind_byte}")))?;
        let (to, from, term, log_term, index, commit) =
            (r.u64("to")?, r.u64("from")?, r.u64("term")?, r.u64("log_term")?, r.u64("index")?, r.u64("commit")?);
        let reject = r.bool("reject")?;
        let reject_hint = r.u64("reject_hint")?;
        let count = r.u32("entry count")? as usize;
        // Each entry takes at least 21 bytes: a count larger than that cannot be honest.
        if count > r.remaining() / 21 {
            return Err(r.error(format!("{count} entries cannot fit in {} bytes", r.remaining())));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let (index, term) = (r.u64("entry index")?, r.u64("entry term")?);
            let type_byte = r.u8("entry type")?;
            let entry_type = EntryType::from_u8(type_byte & !ENTRY_CONTEXT_FLAG)
                .ok_or_else(|| r.error(format!("unknown entry type {type_byte}")))?;
            let mut context = Vec::new();
            if type_byte & ENTRY_CONTEXT_FLAG != 0 {
                let len = r.u32("entry context length")? as usize;
                if len == 0 {
                    return Err(r.error("entry context flag set with an empty context".into()));
                }
                context = r.take(len, "entry context")?.to_vec();
            }
            let len = r.u32("entry length")? as usize;
            let data = r.take(len, "entry data")?.to_vec();
            entries.push(Entry { index, term, entry_type, data: data.into(), context: context.into() });
        }
        let header = match r.bool("snapshot flag")? {
            false => None,
            true => {
                let (index, term) = (r.u64("snapshot index")?, r.u64("snapshot term")?);
                let conf_state = r.conf_state()?;
                let (data_len, data_crc) = (r.u64("snapshot data length")?, r.u32("snapshot data checksum")?);
                Some(SnapshotHeader { metadata: SnapshotMetadata { index, term, conf_state }, data_len, data_crc })
            }
        };
        let context_len = r.u32("context length")? as usize;
        let context = r.take(context_len, "context")?.to_vec();
        if r.remaining() != 0 {
            return Err(r.error(format!("{} bytes after the message", r.remaining())));
        }
        let snapshot = None;
        let message =
            Message { kind, to, from, term, log_term, index, entries, commit, reject, reject_hint, snapshot, context };
        Ok(match header {
            None => Decoded::Message(message),
            Some(header) => Decoded::Snapshot(PendingSnapshot { message, header }),
        })
    }
}

/// What [`Message::decode`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message, ready for [`RawNode::step`](super::RawNode::step).
    Message(Message),
    /// A message announcing a snapshot whose data follows in chunks: not a [`Message`] until
    /// a [`SnapshotReceiver`](super::SnapshotReceiver) built from its header has received them.
    Snapshot(PendingSnapshot),
}

/// A decoded message that announced a snapshot, waiting for the snapshot's data: it holds no
/// snapshot, so nothing can install one before [`PendingSnapshot::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSnapshot {
    /// The message, with `snapshot` still `None`.
    message: Message,
    header: SnapshotHeader,
}

impl PendingSnapshot {
    /// What the snapshot's data must be: start a [`SnapshotReceiver`](super::SnapshotReceiver)
    /// with it.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The message without its snapshot (sender, term, ...), for routing and logging.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message with its snapshot, once the receiver has finished it. Refused if `snapshot`
    /// is not the announced one (metadata, data length and checksum).
    pub fn complete(self, snapshot: Snapshot) -> Result<Message, TransferError> {
        let got = SnapshotHeader::of(&snapshot);
        if got != self.header {
            return Err(TransferError::NotAnnounced { expected: Box::new(self.header), actual: Box::new(got) });
        }
        Ok(Message { snapshot: Some(snapshot), ..self.message })
    }

    /// The bytes it was decoded from.
    pub fn encode(&self) -> Vec<u8> {
        self.message.encode_with(Some(&self.header))
    }
}

const VERSION: u8 = 3;

/// Why bytes are not a message: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad message at byte {offset}: {what}")]
pub struct DecodeError {
    /// Byte offset in the input at which decoding stopped.
    pub offset: usize,
    /// What was wrong there (a field cut short, an unknown type, bytes after the end, ...).
    pub what: String,
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The wire layout of a ConfState: each of the four id lists as a `u32` count and its ids, then
/// `auto_leave`. It is not the disk layout (`storage::hard_state::encode_conf_state`): both
/// formats are frozen, and each is written in one function.
fn put_conf_state(out: &mut Vec<u8>, cs: &ConfState) {
    for ids in [&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next] {
        put_u32(out, ids.len() as u32);
        ids.iter().for_each(|&id| put_u64(out, id));
    }
    out.push(u8::from(cs.auto_leave));
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: String) -> DecodeError {
        DecodeError { offset: self.at, what }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.error(format!("{what} needs {n} bytes, {} remain", self.remaining())));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn bool(&mut self, what: &str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError { offset: self.at - 1, what: format!("{what} is {b}, not 0 or 1") }),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(LE::read_u32(self.take(4, what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(LE::read_u64(self.take(8, what)?))
    }

    /// A ConfState in the layout of [`put_conf_state`].
    fn conf_state(&mut self) -> Result<ConfState, DecodeError> {
        let mut lists: [Vec<u64>; 4] = Default::default();
        for list in &mut lists {
            let n = self.u32("id count")? as usize;
            if n > self.remaining() / 8 {
                return Err(self.error(format!("{n} node ids cannot fit in {} bytes", self.remaining())));
            }
            for _ in 0..n {
                list.push(self.u64("node id")?);
            }
        }
        let auto_leave = self.bool("auto_leave")?;
        let [voters, learners, voters_outgoing, learners_next] = lists;
        Ok(ConfState { voters, learners, voters_outgoing, learners_next, auto_leave })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::new(MessageType::Append, 1, 2, 7);
        m.log_term = 6;
        m.index = 41;
        m.commit = 40;
        let with_context = Entry { context: b"ctx".to_vec().into(), ..Entry::new(44, 7, b"y".to_vec()) };
        m.entries = vec![Entry::new(42, 7, b"x".to_vec()), Entry::new(43, 7, Vec::new()), with_context];
        m.snapshot = Some(Snapshot::from_bytes(
            SnapshotMetadata {
                index: 9,
                term: 2,
                conf_state: ConfState { voters: vec![1, 2, 3], learners: vec![4], ..ConfState::default() },
            },
            &b"state"[..],
        ));
        m.context = b"read-7".to_vec();
        m
    }

    #[test]
    fn round_trip() {
        let mut m = sample();
        let snapshot = m.snapshot.take().unwrap();
        assert_eq!(Message::decode(&m.encode()).unwrap(), Decoded::Message(m.clone()));
        let plain = Message::new(MessageType::HeartbeatResponse, 3, 1, 2);
        assert_eq!(Message::decode(&plain.encode()).unwrap(), Decoded::Message(plain));
        m.snapshot = Some(snapshot.clone());
        let Decoded::Snapshot(pending) = Message::decode(&m.encode()).unwrap() else { panic!("a snapshot message") };
        assert_eq!(pending.header(), &SnapshotHeader::of(&snapshot));
        assert_eq!(pending.message().snapshot, None, "no snapshot until its data arrived");
        assert_eq!(pending.encode(), m.encode());
        assert_eq!(pending.complete(snapshot).unwrap(), m);
    }

    #[test]
    fn a_pending_snapshot_completes_only_with_the_announced_snapshot() {
        let m = sample();
        let Decoded::Snapshot(pending) = Message::decode(&m.encode()).unwrap() else { panic!("a snapshot message") };
        let metadata = pending.header().metadata.clone();
        let other = Snapshot::from_bytes(metadata, &b"other"[..]);
        assert!(matches!(pending.complete(other), Err(TransferError::NotAnnounced { .. })));
    }

    #[test]
    fn module_doc_names_the_encoded_fields_in_order() {
        // The field list of the module docs, checked against `encode`: each field named between
        // "the message type," and "the entry count" must be a field of `Message`, found at the
        // next position of the encoding (8 bytes, `reject` 1), with the entry count right after.
        let doc: String = include_str!("message.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        let list = doc.split("the message type,").nth(1).and_then(|rest| rest.split("the entry count").next());
        let names: Vec<&str> = list.expect("the field list").split('`').skip(1).step_by(2).collect();
        let mut m = Message::new(MessageType::AppendResponse, 2, 1, 3);
        (m.log_term, m.index, m.commit, m.reject, m.reject_hint) = (4, 5, 6, true, 7);
        let bytes = m.encode();
        let mut at = 2; // version, type
        for name in names {
            let value = match name {
                "to" => m.to,
                "from" => m.from,
                "term" => m.term,
                "log_term" => m.log_term,
                "index" => m.index,
                "commit" => m.commit,
                "reject_hint" => m.reject_hint,
                "reject" => {
                    assert_eq!(bytes[at], 1, "reject at byte {at}");
                    at += 1;
                    continue;
                }
                other => panic!("the module docs name `{other}`, which Message does not encode"),
            };
            assert_eq!(LE::read_u64(&bytes[at..]), value, "`{name}` at byte {at}");
            at += 8;
        }
        assert_eq!(LE::read_u32(&bytes[at..]), 0, "the entry count follows the documented fields");
        assert_eq!(
            bytes.len(),
            at + 4 + 1 + 4,
            "an empty message ends with the count, the snapshot flag and the context length"
        );
    }

    #[test]
    fn every_truncation_and_bad_byte_is_a_typed_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Message::decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Message::decode(&extra).unwrap_err().what.contains("after the message"));
        let mut old = bytes.clone();
        old[0] = 1;
        assert!(Message::decode(&old).unwrap_err().what.contains("version 1"), "version 1 carried data inline");
        let mut bad = bytes.clone();
        bad[1] = 99;
        assert_eq!(Message::decode(&bad).unwrap_err().offset, 2);
        // An entry's context flag with an empty context is not what `encode` writes.
        let mut m = Message::new(MessageType::Append, 1, 2, 3);
        m.entries = vec![Entry { context: b"c".to_vec().into(), ..Entry::new(1, 3, Vec::new()) }];
        let mut empty_context = m.encode();
        let flag_at = empty_context.iter().position(|&b| b == ENTRY_CONTEXT_FLAG).expect("the flagged type byte");
        empty_context[flag_at + 1..flag_at + 5].copy_from_slice(&0u32.to_le_bytes());
        empty_context.remove(flag_at + 5);
        assert!(Message::decode(&empty_context).unwrap_err().what.contains("empty context"));
        let mut huge = Message::new(MessageType::Append, 1, 2, 3).encode();
        let count_at = huge.len() - 9;
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Message::decode(&huge).is_err());
    }
}
