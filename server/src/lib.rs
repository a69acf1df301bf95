//! `keel server` (issue 13, in progress): a replicated key-value store over keel's Raft that
//! Redis clients talk to. So far: the client protocol (`resp`).

pub mod resp;
