//! `keel server` (issue 13, in progress): a replicated key-value store over keel's Raft that
//! Redis clients talk to. So far: the client protocol (`resp`), the commands (`command`) and the
//! state machine (`kv`).

pub mod command;
pub mod kv;
pub mod resp;
pub mod server;
