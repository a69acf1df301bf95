//! keel's test, fuzz and benchmark harnesses, kept out of the engine so that a program that
//! embeds keel builds none of them (`cargo tree -e normal -p keel` lists only what the engine
//! uses).
//!
//! - [`sim`]: `SimFileSystem`, a simulated disk that loses power, tears writes and fails fsync
//!   on demand; any code over keel can be tested on it.
//! - [`torture`]: the crash torture harness (workloads of storage calls on the simulated disk,
//!   every crash state checked against `MemStorage`), driven by `tests/torture.rs` and the
//!   `storage_model` fuzz target.
//! - [`fuzz`]: the fuzz targets' bodies, shared by `fuzz/` and the corpus replay test.
//! - [`bench`]: the workloads W1-W4, R1, R2, C1 and the disk's own limits (raw
//!   pwrite+fdatasync loops), shared by `keel bench` and the criterion benches.
//! - [`Rng`]: the seeded generator every simulation uses (the Raft core's own, re-exported).
//!
//! It reaches two crate-private pieces of keel (the generator and the record codec, for the
//! `record` fuzz target) through keel's hidden `internals` feature; everything else here uses
//! keel's public API only, as an embedder would.

#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod bench;
pub mod fuzz;
pub mod linearizability;
pub mod sim;
pub mod tmpfs;
pub mod torture;

pub use keel::internals::Rng;

/// The peer engine of the comparison bench (`benches/compare_raft_engine.rs`), re-exported so
/// that keel's own manifest never names it: `cargo bench --features compare-raft-engine`.
#[cfg(feature = "compare-raft-engine")]
pub use {raft_engine, raft_proto};
