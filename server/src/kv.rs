//! The replicated state machine of `keel server`: a key-value map changed only by committed
//! writes, applied in log order on every node.
//!
//! A write travels as the data of a log entry ([`Write::encode`]); applying it is deterministic
//! (the same reply and the same map on every node, errors included, such as INCR on a value
//! that is not a number). The map's snapshot is its entries in key order ([`Store::snapshot`]).
//!
//! The store also keeps the cluster's address book ([`Member`]): membership changes carry the
//! new member's addresses in their context, so every node learns them in log order and a
//! snapshot brings them along.
//!
//! Entry data layout (little-endian): a version byte; for version 2 the [`Tag`] (node, boot,
//! seq: three `u64`s), for version 1 nothing; the write's kind byte (1 SET, 2 DEL, 3 INCRBY,
//! 4 MSET), then its fields: byte strings as a `u32` length and the bytes, counts as `u64`, the
//! INCRBY amount as `i64`. Version 1 (no tag) is still read.
//!
//! Snapshot layout: a version byte (2), the applied index `u64`, the entry count `u64`, each key
//! and value as byte strings, then the member count `u64` and for each its id `u64`, peer address
//! and client address as byte strings. Version 1 (no members) is still read.
//!
//! Membership change context layout ([`ChangeContext`]): a version byte (2), the [`Tag`], a byte
//! saying whether a member's addresses follow (1) or not (0), then the peer address and the
//! client address as byte strings. Version 1 is the addresses alone (a [`Member`]), still read.

use crate::resp::Reply;
use std::collections::BTreeMap;

/// A write, as replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// SET key value
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// DEL key [key ...]
    Del {
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// INCRBY key amount (INCR, DECR and DECRBY too).
    IncrBy {
        /// The key.
        key: Vec<u8>,
        /// The amount (negative to decrement).
        by: i64,
    },
    /// MSET key value [key value ...]
    MSet {
        /// The pairs, applied in order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// SET key value with NX, XX or GET (SETNX too).
    SetWith {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Only if the key is absent (NX) or present (XX).
        only_if: Option<Presence>,
        /// Reply with the old value (GET) instead of OK.
        get: bool,
        /// Reply 1 or 0 (SETNX) instead of OK or nil.
        integer_reply: bool,
    },
    /// KEEL.CAS key expected new: sets `key` to `new` if it holds `expected`; replies 1 or 0.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value it must hold.
        expected: Vec<u8>,
        /// The value it gets.
        new: Vec<u8>,
    },
    /// APPEND key value: appends to the value (an absent key is empty); replies the new length.
    Append {
        /// The key.
        key: Vec<u8>,
        /// The bytes appended.
        value: Vec<u8>,
    },
}

/// SET's NX and XX conditions.
///
/// (Kinds 6 and 7, below, are KEEL.CAS and APPEND.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// NX: only if the key does not exist.
    Absent,
    /// XX: only if the key exists.
    Present,
}

/// Why entry or snapshot data is not what [`Write::encode`] or [`Store::snapshot`] writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad key-value data at byte {offset}: {what}")]
pub struct DataError {
    /// Offset in the data.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

/// The entry data version written (1 is still read).
const WRITE_VERSION: u8 = 2;
/// The snapshot version written (1 is still read).
const SNAPSHOT_VERSION: u8 = 2;
const MEMBER_VERSION: u8 = 1;
const CHANGE_CONTEXT_VERSION: u8 = 2;

/// The context `keel server` puts in a membership change: who proposed it (so that node answers
/// its client when the change is applied) and, for an added member, its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeContext {
    /// Who proposed it; `None` for version 1 contexts.
    pub tag: Option<Tag>,
    /// The added member's addresses.
    pub member: Option<Member>,
}

impl ChangeContext {
    /// The layout of the module docs (version 2; version 1 when there is no tag).
    pub fn encode(&self) -> Vec<u8> {
        match (self.tag, &self.member) {
            (None, None) => Vec::new(),
            (None, Some(m)) => m.encode(),
            (tag, member) => {
                let t = tag.unwrap_or(Tag { node: 0, boot: 0, seq: 0 });
                let mut out = vec![CHANGE_CONTEXT_VERSION];
                for n in [t.node, t.boot, t.seq] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                match member {
                    None => out.push(0),
                    Some(m) => {
                        out.push(1);
                        m.put_addresses(&mut out);
                    }
                }
                out
            }
        }
    }

    /// Decodes [`ChangeContext::encode`]'s output (and version 1); an empty context is no tag and
    /// no member. Damage is a [`DataError`].
    pub fn decode(data: &[u8]) -> Result<ChangeContext, DataError> {
        if data.is_empty() {
            return Ok(ChangeContext::default());
        }
        let (mut r, version) = Reader::versioned(data, &[MEMBER_VERSION, CHANGE_CONTEXT_VERSION])?;
        if version == MEMBER_VERSION {
            return Ok(ChangeContext { tag: None, member: Some(Member::decode(data)?) });
        }
        let tag = Tag { node: r.u64("tag node")?, boot: r.u64("tag boot")?, seq: r.u64("tag seq")? };
        let at = r.at;
        let member = match r.u8("member flag")? {
            0 => None,
            1 => Some(r.member()?),
            f => return Err(DataError { offset: at, what: format!("member flag {f}") }),
        };
        r.end()?;
        Ok(ChangeContext { tag: Some(tag), member })
    }
}

/// Who proposed a write: the node that took the client's request, that process's incarnation
/// (`boot`, different at each start) and a sequence number, so that node can answer the client
/// when the entry is applied, wherever it was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The node id.
    pub node: u64,
    /// The process incarnation.
    pub boot: u64,
    /// The request's number within it.
    pub seq: u64,
}

/// A write as log entry data: the write and who asked for it (no tag in version 1 data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Who proposed it; `None` only for version 1 data.
    pub tag: Option<Tag>,
    /// The write.
    pub write: Write,
}

/// A member's addresses, as the address book holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// Where it listens for peers.
    pub peer_addr: String,
    /// Where it listens for clients.
    pub client_addr: String,
}

impl Member {
    /// The member context layout of the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MEMBER_VERSION];
        self.put_addresses(&mut out);
        out
    }

    /// The two addresses as byte strings: every layout that holds a member writes them so.
    fn put_addresses(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.peer_addr.as_bytes());
        put_bytes(out, self.client_addr.as_bytes());
    }

    /// Decodes [`Member::encode`]'s output; damage is a [`DataError`].
    pub fn decode(data: &[u8]) -> Result<Member, DataError> {
        let mut r = Reader::versioned(data, &[MEMBER_VERSION])?.0;
        let m = r.member()?;
        r.end()?;
        Ok(m)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader past the version byte, which must be one of `known`; returns the version too.
    fn versioned(b: &'a [u8], known: &[u8]) -> Result<(Reader<'a>, u8), DataError> {
        let mut r = Reader { b, at: 0 };
        let v = r.u8("version")?;
        if !known.contains(&v) {
            return Err(DataError { offset: 0, what: format!("version {v}, expected one of {known:?}") });
        }
        Ok((r, v))
    }

    /// A member's two addresses ([`Member::put_addresses`]).
    fn member(&mut self) -> Result<Member, DataError> {
        Ok(Member { peer_addr: self.string("peer address")?, client_addr: self.string("client address")? })
    }

    fn string(&mut self, what: &str) -> Result<String, DataError> {
        let at = self.at;
        String::from_utf8(self.bytes(what)?).map_err(|_| DataError { offset: at, what: format!("{what} is not UTF-8") })
    }

    fn err(&self, what: impl Into<String>) -> DataError {
        DataError { offset: self.at, what: what.into() }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DataError> {
        if self.b.len() - self.at < n {
            return Err(self.err(format!("{what} needs {n} bytes, {} remain", self.b.len() - self.at)));
        }
        self.at += n;
        Ok(&self.b[self.at - n..self.at])
    }
    fn u8(&mut self, what: &str) -> Result<u8, DataError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, DataError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DataError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, DataError> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }
    /// A count of items each at least `min_bytes` long: no more than the bytes left allow.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, DataError> {
        let n = self.u64(what)? as usize;
        if n > (self.b.len() - self.at) / min_bytes {
            return Err(self.err(format!("{n} {what} cannot fit")));
        }
        Ok(n)
    }
    fn end(&self) -> Result<(), DataError> {
        if self.at != self.b.len() {
            return Err(self.err(format!("{} bytes after the end", self.b.len() - self.at)));
        }
        Ok(())
    }
}

impl Request {
    /// The entry data layout of the module docs (version 1 when there is no tag).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.tag {
            None => out.push(1),
            Some(t) => {
                out.push(WRITE_VERSION);
                for n in [t.node, t.boot, t.seq] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        self.write.encode_into(&mut out);
        out
    }

    /// Decodes [`Request::encode`]'s output; damage is a [`DataError`], never a panic.
    pub fn decode(data: &[u8]) -> Result<Request, DataError> {
        let (mut r, version) = Reader::versioned(data, &[1, WRITE_VERSION])?;
        let tag = match version {
            1 => None,
            _ => Some(Tag { node: r.u64("tag node")?, boot: r.u64("tag boot")?, seq: r.u64("tag seq")? }),
        };
        let write = Write::decode_from(&mut r)?;
        r.end()?;
        Ok(Request { tag, write })
    }
}

impl Write {
    /// The bytes of the write after the version and tag (module docs).
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Write::Set { key, value } => {
                out.push(1);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Write::Del { keys } => {
                out.push(2);
                out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
                keys.iter().for_each(|k| put_bytes(out, k));
            }
            Write::IncrBy { key, by } => {
                out.push(3);
                put_bytes(out, key);
                out.extend_from_slice(&by.to_le_bytes());
            }
            Write::SetWith { key, value, only_if, get, integer_reply } => {
                out.push(5);
                put_bytes(out, key);
                put_bytes(out, value);
                let flags = match only_if {
                    None => 0,
                    Some(Presence::Absent) => 1,
                    Some(Presence::Present) => 2,
                } | if *get { 4 } else { 0 }
                    | if *integer_reply { 8 } else { 0 };
                out.push(flags);
            }
            Write::Cas { key, expected, new } => {
                out.push(6);
                put_bytes(out, key);
                put_bytes(out, expected);
                put_bytes(out, new);
            }
            Write::Append { key, value } => {
                out.push(7);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Write::MSet { pairs } => {
                out.push(4);
                out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
                for (k, v) in pairs {
                    put_bytes(out, k);
                    put_bytes(out, v);
                }
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Write, DataError> {
        let kind_at = r.at;
        Ok(match r.u8("kind")? {
            1 => Write::Set { key: r.bytes("key")?, value: r.bytes("value")? },
            2 => {
                let n = r.count("keys", 4)?;
                Write::Del { keys: (0..n).map(|_| r.bytes("key")).collect::<Result<_, _>>()? }
            }
            3 => Write::IncrBy { key: r.bytes("key")?, by: r.u64("amount")? as i64 },
            4 => {
                let n = r.count("pairs", 8)?;
                let pairs =
                    (0..n).map(|_| Ok((r.bytes("key")?, r.bytes("value")?))).collect::<Result<_, DataError>>()?;
                Write::MSet { pairs }
            }
            5 => {
                let (key, value) = (r.bytes("key")?, r.bytes("value")?);
                let at = r.at;
                let flags = r.u8("flags")?;
                let only_if = match flags & 3 {
                    0 => None,
                    1 => Some(Presence::Absent),
                    2 => Some(Presence::Present),
                    _ => return Err(DataError { offset: at, what: "NX and XX together".into() }),
                };
                if flags & !15 != 0 || flags & 12 == 12 {
                    return Err(DataError { offset: at, what: format!("unknown SET flags {flags:#x}") });
                }
                Write::SetWith { key, value, only_if, get: flags & 4 != 0, integer_reply: flags & 8 != 0 }
            }
            6 => Write::Cas { key: r.bytes("key")?, expected: r.bytes("expected value")?, new: r.bytes("new value")? },
            7 => Write::Append { key: r.bytes("key")?, value: r.bytes("value")? },
            k => return Err(DataError { offset: kind_at, what: format!("unknown write kind {k}") }),
        })
    }
}

/// The map, the address book, and the last log index applied to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    members: BTreeMap<u64, Member>,
    applied: u64,
}

impl Store {
    /// The last log index applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The address book: members whose addresses a membership change (or the bootstrap
    /// configuration, [`Store::set_member`] at index 0) gave.
    pub fn members(&self) -> &BTreeMap<u64, Member> {
        &self.members
    }

    /// Records member `id`'s addresses, from the membership change at `index` (0: bootstrap).
    pub fn set_member(&mut self, index: u64, id: u64, member: Member) {
        self.skip(index);
        self.members.insert(id, member);
    }

    /// Forgets member `id`, removed by the membership change at `index`.
    pub fn remove_member(&mut self, index: u64, id: u64) {
        self.skip(index);
        self.members.remove(&id);
    }

    /// Marks `index` applied without a write (an entry that carries none: a leader's empty
    /// entry, a membership change).
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Applies the write of the entry at `index` and returns the reply for its client. Entries
    /// come in log order; one at or below `applied` (replayed after a restart) is not applied
    /// again.
    pub fn apply(&mut self, index: u64, w: &Write) -> Reply {
        if index <= self.applied {
            return Reply::Error("ERR already applied".into());
        }
        self.applied = index;
        match w {
            Write::Set { key, value } => {
                self.map.insert(key.clone(), value.clone());
                Reply::Simple("OK".into())
            }
            Write::Del { keys } => Reply::Integer(keys.iter().filter(|k| self.map.remove(*k).is_some()).count() as i64),
            Write::IncrBy { key, by } => {
                let current = match self.map.get(key) {
                    None => 0,
                    Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                        Some(n) => n,
                        None => return Reply::Error("ERR value is not an integer or out of range".into()),
                    },
                };
                match current.checked_add(*by) {
                    Some(n) => {
                        self.map.insert(key.clone(), n.to_string().into_bytes());
                        Reply::Integer(n)
                    }
                    None => Reply::Error("ERR increment or decrement would overflow".into()),
                }
            }
            Write::MSet { pairs } => {
                for (k, v) in pairs {
                    self.map.insert(k.clone(), v.clone());
                }
                Reply::Simple("OK".into())
            }
            Write::Cas { key, expected, new } => {
                if self.map.get(key) == Some(expected) {
                    self.map.insert(key.clone(), new.clone());
                    Reply::Integer(1)
                } else {
                    Reply::Integer(0)
                }
            }
            Write::Append { key, value } => {
                let v = self.map.entry(key.clone()).or_default();
                v.extend_from_slice(value);
                Reply::Integer(v.len() as i64)
            }
            Write::SetWith { key, value, only_if, get, integer_reply } => {
                let old = self.map.get(key).cloned();
                let allowed = match only_if {
                    None => true,
                    Some(Presence::Absent) => old.is_none(),
                    Some(Presence::Present) => old.is_some(),
                };
                if allowed {
                    self.map.insert(key.clone(), value.clone());
                }
                match (get, allowed) {
                    _ if *integer_reply => Reply::Integer(i64::from(allowed)),
                    (true, _) => Reply::Bulk(old),
                    (false, true) => Reply::Simple("OK".into()),
                    (false, false) => Reply::Bulk(None),
                }
            }
        }
    }

    /// The snapshot layout of the module docs.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out.extend_from_slice(&(self.members.len() as u64).to_le_bytes());
        for (id, m) in &self.members {
            out.extend_from_slice(&id.to_le_bytes());
            m.put_addresses(&mut out);
        }
        out
    }

    /// The store a snapshot holds; damage is a [`DataError`], never a panic.
    pub fn restore(data: &[u8]) -> Result<Store, DataError> {
        let (mut r, version) = Reader::versioned(data, &[1, SNAPSHOT_VERSION])?;
        let applied = r.u64("applied index")?;
        let n = r.count("entries", 8)?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let at = r.at;
            let (k, v) = (r.bytes("key")?, r.bytes("value")?);
            if map.last_key_value().is_some_and(|(last, _): (&Vec<u8>, _)| *last >= k) {
                return Err(DataError { offset: at, what: "keys out of order".into() });
            }
            map.insert(k, v);
        }
        let mut members = BTreeMap::new();
        if version >= 2 {
            let n = r.count("members", 16)?;
            for _ in 0..n {
                let at = r.at;
                let id = r.u64("member id")?;
                let m = r.member()?;
                if members.last_key_value().is_some_and(|(&last, _)| last >= id) {
                    return Err(DataError { offset: at, what: "members out of order".into() });
                }
                members.insert(id, m);
            }
        }
        r.end()?;
        Ok(Store { map, members, applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Write {
        Write::Set { key: k.into(), value: v.into() }
    }

    #[test]
    fn writes_round_trip_and_damage_is_a_typed_error() {
        let writes = [
            set("k", "v"),
            Write::Del { keys: vec![b"a".to_vec(), b"b".to_vec()] },
            Write::IncrBy { key: b"n".to_vec(), by: -7 },
            Write::MSet { pairs: vec![(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), Vec::new())] },
            Write::SetWith {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                only_if: Some(Presence::Present),
                get: true,
                integer_reply: false,
            },
            Write::SetWith { key: b"k".to_vec(), value: b"v".to_vec(), only_if: None, get: false, integer_reply: true },
            Write::Cas { key: b"k".to_vec(), expected: b"1".to_vec(), new: b"2".to_vec() },
            Write::Append { key: b"s".to_vec(), value: b"e1,".to_vec() },
        ];
        let tags = [None, Some(Tag { node: 3, boot: 77, seq: 9 })];
        for (w, tag) in writes.iter().flat_map(|w| tags.iter().map(move |t| (w, *t))) {
            let request = Request { tag, write: w.clone() };
            let b = request.encode();
            assert_eq!(b[0], if tag.is_some() { 2 } else { 1 });
            assert_eq!(Request::decode(&b).unwrap(), request);
            for n in 0..b.len() {
                assert!(Request::decode(&b[..n]).is_err(), "{w:?} cut at {n}");
            }
            let mut extra = b.clone();
            extra.push(0);
            assert!(Request::decode(&extra).is_err());
        }
        let mut huge = Request { tag: None, write: Write::Del { keys: Vec::new() } }.encode();
        huge[2..10].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Request::decode(&huge).unwrap_err().what.contains("cannot fit"));
        let m = Member { peer_addr: "127.0.0.1:1".into(), client_addr: "127.0.0.1:2".into() };
        assert_eq!(Member::decode(&m.encode()).unwrap(), m);
        assert!(Member::decode(&m.encode()[..5]).is_err());
        let tag = Some(Tag { node: 1, boot: 2, seq: 3 });
        for cx in [
            ChangeContext { tag, member: Some(m.clone()) },
            ChangeContext { tag, member: None },
            ChangeContext { tag: None, member: Some(m.clone()) },
            ChangeContext::default(),
        ] {
            let b = cx.encode();
            assert_eq!(ChangeContext::decode(&b).unwrap(), cx);
            if cx != ChangeContext::default() {
                for n in 1..b.len() {
                    assert!(ChangeContext::decode(&b[..n]).is_err(), "{cx:?} cut at {n}");
                }
            }
        }
        assert_eq!(ChangeContext::decode(&[]).unwrap(), ChangeContext::default());
    }

    #[test]
    fn the_layouts_are_the_ones_format_md_gives() {
        let tag = Tag { node: 1, boot: 2, seq: 3 };
        let b = Request { tag: Some(tag), write: set("k", "vv") }.encode();
        let mut want = vec![2u8];
        for n in [1u64, 2, 3] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.push(1);
        want.extend_from_slice(&1u32.to_le_bytes());
        want.push(b'k');
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(b"vv");
        assert_eq!(b, want);
        let mut s = Store::default();
        s.apply(5, &set("k", "v"));
        s.set_member(6, 9, Member { peer_addr: "p".into(), client_addr: "c".into() });
        let mut want = vec![2u8];
        want.extend_from_slice(&6u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v']);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'p', 1, 0, 0, 0, b'c']);
        assert_eq!(s.snapshot(), want);
    }

    #[test]
    fn applying_is_deterministic_errors_included_and_replays_are_skipped() {
        let mut s = Store::default();
        assert_eq!(s.apply(1, &set("n", "41")), Reply::Simple("OK".into()));
        assert_eq!(s.apply(2, &Write::IncrBy { key: b"n".to_vec(), by: 1 }), Reply::Integer(42));
        assert_eq!(s.apply(3, &set("s", "text")), Reply::Simple("OK".into()));
        assert!(matches!(s.apply(4, &Write::IncrBy { key: b"s".to_vec(), by: 1 }), Reply::Error(_)));
        assert_eq!(s.apply(5, &set("m", &i64::MAX.to_string())), Reply::Simple("OK".into()));
        assert!(matches!(s.apply(6, &Write::IncrBy { key: b"m".to_vec(), by: 1 }), Reply::Error(_)));
        assert_eq!(s.apply(7, &Write::Del { keys: vec![b"s".to_vec(), b"none".to_vec()] }), Reply::Integer(1));
        assert!(matches!(s.apply(7, &set("again", "x")), Reply::Error(_)), "a replayed index changes nothing");
        assert_eq!((s.get(b"n"), s.get(b"s"), s.len(), s.applied()), (Some(&b"42"[..]), None, 2, 7));
        let mut t = Store::default();
        t.apply(1, &set("n", "42"));
        let with = |k: &str, only_if, get| Write::SetWith {
            key: k.into(),
            value: b"w".to_vec(),
            only_if,
            get,
            integer_reply: false,
        };
        assert_eq!(t.apply(2, &with("n", Some(Presence::Absent), false)), Reply::Bulk(None), "NX on a key held");
        assert_eq!(t.apply(3, &with("new", Some(Presence::Present), true)), Reply::Bulk(None), "XX GET on none");
        assert_eq!(t.apply(4, &with("n", Some(Presence::Present), true)), Reply::Bulk(Some(b"42".to_vec())));
        assert_eq!(t.apply(5, &with("new", Some(Presence::Absent), false)), Reply::Simple("OK".into()));
        assert_eq!((t.get(b"n"), t.get(b"new"), t.len()), (Some(&b"w"[..]), Some(&b"w"[..]), 2));
        let setnx = |k: &str| Write::SetWith {
            key: k.into(),
            value: b"z".to_vec(),
            only_if: Some(Presence::Absent),
            get: false,
            integer_reply: true,
        };
        assert_eq!((t.apply(6, &setnx("n")), t.apply(7, &setnx("z"))), (Reply::Integer(0), Reply::Integer(1)));
        let cas = |e: &str, n: &str| Write::Cas { key: b"z".to_vec(), expected: e.into(), new: n.into() };
        assert_eq!((t.apply(8, &cas("y", "q")), t.apply(9, &cas("z", "q"))), (Reply::Integer(0), Reply::Integer(1)));
        assert_eq!(t.get(b"z"), Some(&b"q"[..]));
        let append = |v: &str| Write::Append { key: b"set".to_vec(), value: v.into() };
        assert_eq!((t.apply(10, &append("a,")), t.apply(11, &append("b,"))), (Reply::Integer(2), Reply::Integer(4)));
        assert_eq!(t.get(b"set"), Some(&b"a,b,"[..]));
        s.set_member(8, 2, Member { peer_addr: "p".into(), client_addr: "c".into() });
        s.set_member(9, 1, Member::default());
        let restored = Store::restore(&s.snapshot()).unwrap();
        assert_eq!(restored, s);
        // A version 1 snapshot (no members) still restores.
        let mut v1 = Store::default();
        v1.apply(1, &set("a", "b"));
        let mut old = v1.snapshot();
        old[0] = 1;
        old.truncate(old.len() - 8);
        assert_eq!(Store::restore(&old).unwrap(), v1);
        let snap = s.snapshot();
        for n in 0..snap.len() {
            assert!(Store::restore(&snap[..n]).is_err(), "cut at {n}");
        }
    }
}
