//! `keel server`: a replicated key-value store over keel's Raft that Redis clients talk to. The
//! client protocol (`resp`), the commands (`command`), the state machine (`kv`) and the node
//! process that ties them to a Raft `Node`, `DiskStorage` and `TcpTransport` (`server`).

pub mod command;
pub mod kv;
pub mod resp;
pub mod server;
