//! Client commands: parsed from a request's arguments ([`Command::parse`]), then either a write
//! (replicated through the log, applied by [`Store::apply`](crate::kv::Store::apply)) or a read
//! served from the store ([`Command::read`]). Every malformed command is an error reply in
//! Redis's wording, never a closed connection.

use crate::kv::{Presence, Store, Write};
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
    /// INFO [section]: the server's state as `field:value` lines.
    Info(Option<String>),
    /// READONLY: this connection's reads are served from the local store without asking the
    /// leader (possibly stale). READWRITE turns it off.
    ReadOnly(bool),
    /// SELECT db: only database 0 exists.
    Select(i64),
    /// QUIT: reply OK and close.
    Quit,
    /// CONFIG GET pattern: answered with an empty list (nothing is configurable at run time);
    /// redis-benchmark asks at start.
    ConfigGet,
    /// KEEL.MEMBERS: each member's id, role and addresses.
    Members,
    /// KEEL.ADD id peer-addr client-addr [VOTER|LEARNER]: adds a member (or promotes a learner).
    AddMember {
        /// The node id.
        id: u64,
        /// Its peer address.
        peer_addr: String,
        /// Its client address.
        client_addr: String,
        /// Whether it joins as a learner.
        learner: bool,
    },
    /// KEEL.REMOVE id
    RemoveMember(u64),
    /// KEEL.TRANSFER id: hands leadership to that voter.
    Transfer(u64),
    /// KEEL.FAULT BLOCK id [id ...] | KEEL.FAULT HEAL: fault injection for tests (the server
    /// must be started with it enabled): drop messages to and from those peers, or none.
    Fault(Vec<u64>),
}

fn arity(name: &str) -> Reply {
    Reply::Error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// SET's options after the key and value: NX, XX and GET; expiry (EX, PX, EXAT, PXAT, KEEPTTL)
/// is refused, as keys do not expire here.
fn set_with_options(key: Vec<u8>, value: Vec<u8>, options: &[Vec<u8>]) -> Result<Write, Reply> {
    let (mut only_if, mut get) = (None, false);
    for o in options {
        match o.to_ascii_lowercase().as_slice() {
            b"nx" if only_if.is_none() => only_if = Some(Presence::Absent),
            b"xx" if only_if.is_none() => only_if = Some(Presence::Present),
            b"get" => get = true,
            b"ex" | b"px" | b"exat" | b"pxat" | b"keepttl" => {
                return Err(Reply::Error(
                    "ERR keel does not expire keys: SET's EX, PX, EXAT, PXAT and KEEPTTL are not supported".into(),
                ));
            }
            _ => return Err(Reply::Error("ERR syntax error".into())),
        }
    }
    Ok(Write::SetWith { key, value, only_if, get, integer_reply: false })
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
        let id = |arg: &[u8]| match integer(arg) {
            Ok(n) if n > 0 => Ok(n as u64),
            _ => Err(Reply::Error("ERR node ids are positive integers".into())),
        };
        // An IP address and port: a host name would be resolved on every node's apply path.
        let text = |arg: &[u8]| match std::str::from_utf8(arg).ok().and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        {
            Some(a) => Ok(a.to_string()),
            None => Err(Reply::Error("ERR addresses are IP:port".into())),
        };
        Ok(match (name.as_str(), rest.len()) {
            ("info", 0) => Command::Info(None),
            ("info", 1) => Command::Info(Some(String::from_utf8_lossy(&rest[0]).to_ascii_lowercase())),
            ("readonly", 0) => Command::ReadOnly(true),
            ("readwrite", 0) => Command::ReadOnly(false),
            ("select", 1) => Command::Select(integer(&rest[0])?),
            ("quit", 0) => Command::Quit,
            ("config", n) if n >= 2 && rest[0].eq_ignore_ascii_case(b"get") => Command::ConfigGet,
            ("keel.members", 0) => Command::Members,
            ("keel.add", 3 | 4) => {
                let learner = match rest.get(3).map(|r| r.to_ascii_lowercase()) {
                    None => false,
                    Some(r) if r == b"voter" => false,
                    Some(r) if r == b"learner" => true,
                    Some(_) => return Err(Reply::Error("ERR the role is VOTER or LEARNER".into())),
                };
                Command::AddMember {
                    id: id(&rest[0])?,
                    peer_addr: text(&rest[1])?,
                    client_addr: text(&rest[2])?,
                    learner,
                }
            }
            ("keel.remove", 1) => Command::RemoveMember(id(&rest[0])?),
            ("keel.transfer", 1) => Command::Transfer(id(&rest[0])?),
            ("keel.cas", 3) => Command::Write(Write::Cas { key: key(0), expected: key(1), new: key(2) }),
            ("append", 2) => Command::Write(Write::Append { key: key(0), value: key(1) }),
            ("keel.fault", 1) if rest[0].eq_ignore_ascii_case(b"heal") => Command::Fault(Vec::new()),
            ("keel.fault", n) if n >= 2 && rest[0].eq_ignore_ascii_case(b"block") => {
                Command::Fault(rest[1..].iter().map(|a| id(a)).collect::<Result<_, _>>()?)
            }
            ("ping", 0) => Command::Ping(None),
            ("ping", 1) => Command::Ping(Some(key(0))),
            ("echo", 1) => Command::Echo(key(0)),
            ("get", 1) => Command::Get(key(0)),
            ("mget", n) if n >= 1 => Command::MGet(rest.to_vec()),
            ("exists", n) if n >= 1 => Command::Exists(rest.to_vec()),
            ("dbsize", 0) => Command::DbSize,
            ("set", 2) => Command::Write(Write::Set { key: key(0), value: key(1) }),
            ("set", n) if n > 2 => Command::Write(set_with_options(key(0), key(1), &rest[2..])?),
            ("setnx", 2) => Command::Write(Write::SetWith {
                key: key(0),
                value: key(1),
                only_if: Some(Presence::Absent),
                get: false,
                integer_reply: true,
            }),
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
                "ping" | "echo" | "get" | "mget" | "exists" | "dbsize" | "set" | "setnx" | "del" | "incr" | "decr"
                | "incrby" | "decrby" | "mset" | "info" | "readonly" | "readwrite" | "select" | "quit" | "config"
                | "keel.members" | "keel.add" | "keel.remove" | "keel.transfer" | "keel.cas" | "append" | "keel.fault",
                _,
            ) => return Err(arity(&name)),
            _ => {
                let shown: String = name.chars().take(64).collect();
                return Err(Reply::Error(format!("ERR unknown command '{shown}'")));
            }
        })
    }

    /// Whether the command reads the store (and so, by default, waits for a ReadIndex).
    pub fn reads_store(&self) -> bool {
        matches!(self, Command::Get(_) | Command::MGet(_) | Command::Exists(_) | Command::DbSize)
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
            Command::Select(0) => Reply::Simple("OK".into()),
            Command::Select(_) => Reply::Error("ERR DB index is out of range".into()),
            Command::Quit | Command::ReadOnly(_) => Reply::Simple("OK".into()),
            Command::ConfigGet => Reply::Array(Some(Vec::new())),
            Command::Info(_)
            | Command::Members
            | Command::AddMember { .. }
            | Command::RemoveMember(_)
            | Command::Transfer(_)
            | Command::Fault(_) => Reply::Error("ERR this command needs a server".into()),
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
        assert_eq!(err(&["set", "k", "v", "NX", "XX"]), "ERR syntax error");
        assert_eq!(err(&["set", "k", "v", "bogus"]), "ERR syntax error");
        assert!(err(&["set", "k", "v", "EX", "10"]).contains("does not expire keys"));
        assert_eq!(
            Command::parse(&args(&["set", "k", "v", "xx", "GET"])),
            Ok(Command::Write(Write::SetWith {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                only_if: Some(Presence::Present),
                get: true,
                integer_reply: false
            }))
        );
        assert!(matches!(Command::parse(&[]), Err(Reply::Error(_))));
        assert_eq!(
            Command::parse(&args(&["keel.add", "4", "127.0.0.1:1", "127.0.0.1:2", "learner"])),
            Ok(Command::AddMember {
                id: 4,
                peer_addr: "127.0.0.1:1".into(),
                client_addr: "127.0.0.1:2".into(),
                learner: true
            })
        );
        assert_eq!(err(&["keel.add", "0", "a", "b"]), "ERR node ids are positive integers");
        assert_eq!(err(&["keel.add", "4", "127.0.0.1:1", "127.0.0.1:2", "boss"]), "ERR the role is VOTER or LEARNER");
        assert_eq!(err(&["keel.add", "4", "slow.example:1", "127.0.0.1:2"]), "ERR addresses are IP:port");
        assert_eq!(err(&["keel.transfer"]), "ERR wrong number of arguments for 'keel.transfer' command");
        assert_eq!(Command::parse(&args(&["INFO", "Replication"])), Ok(Command::Info(Some("replication".into()))));
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
