//! Client commands: parsed from a request's arguments ([`Command::parse`]), then either a write
//! (replicated through the log, applied by [`Store::apply`](crate::kv::Store::apply)) or a read
//! served from the store ([`Command::read`]). Every malformed command is an error reply in
//! Redis's wording, never a closed connection.

use crate::kv::{Store, Write};
use crate::resp::Reply;

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// PING [message]
    Ping(Option<Vec<u8>>),
    /// ECHO message
    Echo(Vec<u8>),
    /// GET key
    Get(Vec<u8>),
    /// MGET key [key ...]
    MGet(Vec<Vec<u8>>),
    /// EXISTS key [key ...]
    Exists(Vec<Vec<u8>>),
    /// DBSIZE
    DbSize,
    /// SET, DEL, INCR, INCRBY, DECR, DECRBY, MSET: replicated.
    Write(Write),
}

fn arity(name: &str) -> Reply {
    Reply::Error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn integer(arg: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Reply::Error("ERR value is not an integer or out of range".into()))
}

impl Command {
    /// The command `args` name (case-insensitive), or the error reply for the client.
    pub fn parse(args: &[Vec<u8>]) -> Result<Command, Reply> {
        let Some((name, rest)) = args.split_first() else {
            return Err(Reply::Error("ERR empty command".into()));
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let key = |i: usize| rest[i].clone();
        Ok(match (name.as_str(), rest.len()) {
            ("ping", 0) => Command::Ping(None),
            ("ping", 1) => Command::Ping(Some(key(0))),
            ("echo", 1) => Command::Echo(key(0)),
            ("get", 1) => Command::Get(key(0)),
            ("mget", n) if n >= 1 => Command::MGet(rest.to_vec()),
            ("exists", n) if n >= 1 => Command::Exists(rest.to_vec()),
            ("dbsize", 0) => Command::DbSize,
            ("set", 2) => Command::Write(Write::Set { key: key(0), value: key(1) }),
            ("set", n) if n > 2 => return Err(Reply::Error("ERR syntax error".into())),
            ("del", n) if n >= 1 => Command::Write(Write::Del { keys: rest.to_vec() }),
            ("incr", 1) => Command::Write(Write::IncrBy { key: key(0), by: 1 }),
            ("decr", 1) => Command::Write(Write::IncrBy { key: key(0), by: -1 }),
            ("incrby", 2) => Command::Write(Write::IncrBy { key: key(0), by: integer(&rest[1])? }),
            ("decrby", 2) => {
                let by = integer(&rest[1])?
                    .checked_neg()
                    .ok_or_else(|| Reply::Error("ERR decrement would overflow".into()))?;
                Command::Write(Write::IncrBy { key: key(0), by })
            }
            ("mset", n) if n >= 2 && n % 2 == 0 => {
                Command::Write(Write::MSet { pairs: rest.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect() })
            }
            (
                "ping" | "echo" | "get" | "mget" | "exists" | "dbsize" | "set" | "del" | "incr" | "decr" | "incrby"
                | "decrby" | "mset",
                _,
            ) => return Err(arity(&name)),
            _ => {
                let shown: String = name.chars().take(64).collect();
                return Err(Reply::Error(format!("ERR unknown command '{shown}'")));
            }
        })
    }

    /// The reply to a command that is not a write, from `store`.
    pub fn read(&self, store: &Store) -> Reply {
        match self {
            Command::Ping(None) => Reply::Simple("PONG".into()),
            Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(Some(m.clone())),
            Command::Get(k) => Reply::Bulk(store.get(k).map(<[u8]>::to_vec)),
            Command::MGet(keys) => {
                Reply::Array(Some(keys.iter().map(|k| Reply::Bulk(store.get(k).map(<[u8]>::to_vec))).collect()))
            }
            Command::Exists(keys) => Reply::Integer(keys.iter().filter(|k| store.get(k).is_some()).count() as i64),
            Command::DbSize => Reply::Integer(store.len() as i64),
            Command::Write(_) => Reply::Error("ERR a write is answered once it is applied".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn commands_parse_as_redis_names_them_and_bad_ones_get_redis_errors() {
        assert_eq!(Command::parse(&args(&["PiNg"])), Ok(Command::Ping(None)));
        assert_eq!(
            Command::parse(&args(&["set", "k", "v"])),
            Ok(Command::Write(Write::Set { key: b"k".to_vec(), value: b"v".to_vec() }))
        );
        assert_eq!(
            Command::parse(&args(&["decrby", "n", "5"])),
            Ok(Command::Write(Write::IncrBy { key: b"n".to_vec(), by: -5 }))
        );
        let err = |a: &[&str]| match Command::parse(&args(a)) {
            Err(Reply::Error(e)) => e,
            other => panic!("{a:?}: {other:?}"),
        };
        assert_eq!(err(&["get"]), "ERR wrong number of arguments for 'get' command");
        assert_eq!(err(&["mset", "a"]), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(err(&["incrby", "n", "x"]), "ERR value is not an integer or out of range");
        assert_eq!(err(&["decrby", "n", &i64::MIN.to_string()]), "ERR decrement would overflow");
        assert_eq!(err(&["flushall"]), "ERR unknown command 'flushall'");
        assert_eq!(err(&["set", "k", "v", "NX"]), "ERR syntax error");
        assert!(matches!(Command::parse(&[]), Err(Reply::Error(_))));
    }

    #[test]
    fn reads_answer_from_the_store() {
        let mut store = Store::default();
        store.apply(1, &Write::MSet { pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())] });
        let read = |a: &[&str]| Command::parse(&args(a)).unwrap().read(&store);
        assert_eq!(read(&["get", "a"]), Reply::Bulk(Some(b"1".to_vec())));
        assert_eq!(read(&["get", "zz"]), Reply::Bulk(None));
        assert_eq!(
            read(&["mget", "a", "zz"]),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"1".to_vec())), Reply::Bulk(None)]))
        );
        assert_eq!(read(&["exists", "a", "b", "zz"]), Reply::Integer(2));
        assert_eq!(read(&["dbsize"]), Reply::Integer(2));
        assert_eq!(read(&["echo", "hi"]), Reply::Bulk(Some(b"hi".to_vec())));
        assert_eq!(read(&["ping"]), Reply::Simple("PONG".into()));
    }
}
