//! The replicated state machine of `keel server`: a key-value map changed only by committed
//! writes, applied in log order on every node.
//!
//! A write travels as the data of a log entry ([`Write::encode`]); applying it is deterministic
//! (the same reply and the same map on every node, errors included, such as INCR on a value
//! that is not a number). The map's snapshot is its entries in key order ([`Store::snapshot`]).
//!
//! Entry data layout (little-endian): a version byte (1), the write's kind byte (1 SET, 2 DEL,
//! 3 INCRBY, 4 MSET), then its fields: byte strings as a `u32` length and the bytes, counts as
//! `u32`, the INCRBY amount as `i64`. Snapshot layout: a version byte (1), the applied index
//! `u64`, the entry count `u64`, each key and value as byte strings.

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

const VERSION: u8 = 1;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader past the version byte, which must be [`VERSION`].
    fn versioned(b: &'a [u8]) -> Result<Reader<'a>, DataError> {
        let mut r = Reader { b, at: 0 };
        let v = r.u8("version")?;
        if v != VERSION {
            return Err(DataError { offset: 0, what: format!("version {v}, expected {VERSION}") });
        }
        Ok(r)
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

impl Write {
    /// The entry data layout of the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Write::Set { key, value } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Write::Del { keys } => {
                out.push(2);
                out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
                keys.iter().for_each(|k| put_bytes(&mut out, k));
            }
            Write::IncrBy { key, by } => {
                out.push(3);
                put_bytes(&mut out, key);
                out.extend_from_slice(&by.to_le_bytes());
            }
            Write::MSet { pairs } => {
                out.push(4);
                out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
                for (k, v) in pairs {
                    put_bytes(&mut out, k);
                    put_bytes(&mut out, v);
                }
            }
        }
        out
    }

    /// Decodes [`Write::encode`]'s output; damage is a [`DataError`], never a panic.
    pub fn decode(data: &[u8]) -> Result<Write, DataError> {
        let mut r = Reader::versioned(data)?;
        let w = match r.u8("kind")? {
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
            k => return Err(DataError { offset: 1, what: format!("unknown write kind {k}") }),
        };
        r.end()?;
        Ok(w)
    }
}

/// The map, and the last log index applied to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
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
        }
    }

    /// The snapshot layout of the module docs.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out
    }

    /// The store a snapshot holds; damage is a [`DataError`], never a panic.
    pub fn restore(data: &[u8]) -> Result<Store, DataError> {
        let mut r = Reader::versioned(data)?;
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
        r.end()?;
        Ok(Store { map, applied })
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
        ];
        for w in &writes {
            let b = w.encode();
            assert_eq!(&Write::decode(&b).unwrap(), w);
            for n in 0..b.len() {
                assert!(Write::decode(&b[..n]).is_err(), "{w:?} cut at {n}");
            }
            let mut extra = b.clone();
            extra.push(0);
            assert!(Write::decode(&extra).is_err());
        }
        let mut huge = Write::Del { keys: Vec::new() }.encode();
        huge[2..10].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Write::decode(&huge).unwrap_err().what.contains("cannot fit"));
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
        let restored = Store::restore(&s.snapshot()).unwrap();
        assert_eq!(restored, s);
        let snap = s.snapshot();
        for n in 0..snap.len() {
            assert!(Store::restore(&snap[..n]).is_err(), "cut at {n}");
        }
    }
}
