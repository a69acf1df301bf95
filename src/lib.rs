//! keel: a storage engine for consensus-based databases.
//!
//! The foundation is [`wal::Log`], a segmented, checksummed, memory-mapped write-ahead log of
//! Raft entries with crash recovery. The on-disk format is specified in `segments/FORMAT.md`;
//! the design is mapped in `ARCHITECTURE.md`.
//!
//! ```
//! use keel::wal::{Log, LogOptions, NewEntry};
//!
//! let dir = tempfile::tempdir()?;
//! let options = LogOptions { segment_bytes: 1 << 20, ..LogOptions::default() };
//! let (mut log, report) = Log::open(dir.path(), options.clone())?;
//! assert_eq!(report.entries_recovered, 0);
//!
//! log.append_and_sync(&[
//!     NewEntry { index: 1, term: 1, payload: b"put x=1" },
//!     NewEntry { index: 2, term: 1, payload: b"put y=2" },
//! ])?;
//! // A new leader's entry 2 replaces ours: the suffix is truncated first.
//! log.append_and_sync(&[NewEntry { index: 2, term: 2, payload: b"put y=3" }])?;
//! drop(log);
//!
//! let (log, report) = Log::open(dir.path(), options)?;
//! assert_eq!(report.last_index, 2);
//! let entries = log.entries(1, 3, u64::MAX)?;
//! assert_eq!(&*entries[1].payload, b"put y=3");
//! assert_eq!(entries[1].term, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]
#![warn(missing_docs)]

mod error;
#[cfg(test)]
mod format_spec;
pub mod inspect;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
pub mod io;
pub mod limits;
#[cfg(feature = "openraft")]
pub mod openraft;
mod payload;
pub mod raft;
#[cfg(feature = "raft-rs")]
pub mod raft_rs;
mod rng;
pub mod storage;
pub mod transport;
pub mod wal;

pub use error::{Corruption, CorruptionKind, Error, Result};
pub use payload::Payload;

/// The README's examples, compiled and run as doctests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
