//! Errors, split by what the caller can do about them.
//!
//! - [`Error::Compacted`], [`Error::Unavailable`], [`Error::SnapshotOutOfDate`] and
//!   [`Error::SnapshotTemporarilyUnavailable`] are states Raft acts on (send a snapshot, wait for
//!   more entries, retry later).
//! - [`Error::InvalidArgument`] is a caller bug (a gap in an append, an index out of range).
//! - [`Error::Io`] is an operating-system failure; after one on a write or sync path the log is
//!   latched and later writes return [`Error::Failed`] until it is reopened.
//! - [`Error::Corruption`] carries the evidence (file, offset, checksums, affected indexes).
//! - [`Error::IncompatibleVersion`] is a file written by another format version, not damage.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The result type of every fallible keel call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error keel returns.
///
/// Non-exhaustive: later versions may add kinds (a full disk, say), so a `match` needs a
/// catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The requested index is below the first index: it was compacted away.
    #[error("index {index} was compacted (the first index is {first_index})")]
    Compacted {
        /// The index asked for (for an append, its first entry's).
        index: u64,
        /// The first index now: everything below it was compacted.
        first_index: u64,
    },

    /// The requested index is above the last index: it does not exist yet.
    #[error("index {index} is not available (the last index is {last_index})")]
    Unavailable {
        /// The index asked for (for a range, its last).
        index: u64,
        /// The last index now.
        last_index: u64,
    },

    /// A snapshot older than (or as old as) what storage already holds: nothing was changed.
    #[error("snapshot at index {index} is out of date (storage already covers index {covered})")]
    SnapshotOutOfDate {
        /// The last index of the refused snapshot.
        index: u64,
        /// The index storage already covers, by its newest snapshot or compaction.
        covered: u64,
    },

    /// No snapshot can be served now (none yet, one is being made, or the newest is older than
    /// requested); Raft retries later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,

    /// The call breaks the log's rules; nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The operating system refused an operation on a file or directory.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What was being done: "write", "fdatasync", "rename", ...
        op: &'static str,
        /// The file or directory (`<...>` when neither: a thread, a snapshot data stream).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The disk is full: `op` on `path` needed space the file system did not have. Unlike
    /// [`Error::Io`], nothing a reader could see was written and nothing is latched: the same
    /// call succeeds once space is freed (compaction frees it, and needs none itself).
    #[error("no space left on the disk for {op} on {}: nothing was written; free space (compact the log) and retry", path.display())]
    NoSpace {
        /// What needed the space: "prepare segment", "write snapshot", ...
        op: &'static str,
        /// The file that could not grow.
        path: PathBuf,
    },

    /// A write or sync failed earlier; the log accepts no further writes until it is reopened.
    #[error("the log refuses writes after an earlier failure ({cause}); reopen it to recover what is durable")]
    Failed {
        /// The message of the first failure, the one that latched the log (or the storage, or the
        /// snapshot writer); or that the group-commit writer thread stopped.
        cause: String,
    },

    /// Another open log holds the directory's lock.
    #[error("the log directory {} is locked by another open log (in this process or another)", dir.display())]
    Locked {
        /// The directory whose `LOCK` file is held.
        dir: PathBuf,
    },

    /// The bytes on disk are damaged; see [`Corruption`].
    #[error(transparent)]
    Corruption(#[from] Box<Corruption>),

    /// A file was written by a format version this build does not read.
    #[error("{}: format version {found} is not supported (this build reads version {supported})", path.display())]
    IncompatibleVersion {
        /// The file written by the other version.
        path: PathBuf,
        /// The format version the file states.
        found: u32,
        /// The format version this build reads and writes.
        supported: u32,
    },
}

impl Clone for Error {
    /// A copy for delivering one failure to several waiters; an I/O error keeps its kind and
    /// message (the OS error value itself cannot be cloned).
    fn clone(&self) -> Error {
        match self {
            Error::Compacted { index, first_index } => Error::Compacted { index: *index, first_index: *first_index },
            Error::Unavailable { index, last_index } => Error::Unavailable { index: *index, last_index: *last_index },
            Error::SnapshotOutOfDate { index, covered } => {
                Error::SnapshotOutOfDate { index: *index, covered: *covered }
            }
            Error::SnapshotTemporarilyUnavailable => Error::SnapshotTemporarilyUnavailable,
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Io { op, path, source } => {
                Error::Io { op, path: path.clone(), source: io::Error::new(source.kind(), source.to_string()) }
            }
            Error::Failed { cause } => Error::Failed { cause: cause.clone() },
            Error::NoSpace { op, path } => Error::NoSpace { op, path: path.clone() },
            Error::Locked { dir } => Error::Locked { dir: dir.clone() },
            Error::Corruption(c) => Error::Corruption(c.clone()),
            Error::IncompatibleVersion { path, found, supported } => {
                Error::IncompatibleVersion { path: path.clone(), found: *found, supported: *supported }
            }
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { op, path: path.into(), source }
    }

    /// `map_err` helper: an I/O error of `op` on `path`.
    pub(crate) fn at<'a>(op: &'static str, path: &'a std::path::Path) -> impl FnOnce(io::Error) -> Error + 'a {
        move |e| Error::io(op, path, e)
    }

    /// Whether this is the disk being full: [`Error::NoSpace`], or an I/O error whose cause was
    /// `ENOSPC` or `EDQUOT` (from a call that may have written part of its bytes).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Io { source, .. } => is_no_space_io(source),
            _ => false,
        }
    }

    /// The corruption evidence, if this is a corruption error.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            Error::Corruption(c) => Some(c),
            _ => None,
        }
    }
}

/// Evidence of damaged bytes: which file, where, what was wrong, and which entries it affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The damaged file.
    pub path: PathBuf,
    /// Byte offset in `path` of the damaged structure.
    pub offset: u64,
    /// What is wrong at `offset`.
    pub kind: CorruptionKind,
    /// The Raft indexes that cannot be trusted because of this damage, if known.
    pub affected_indexes: Option<(u64, u64)>,
    /// The label of the recovery decision-table row that refused this damage, if recovery found it.
    pub rule: Option<&'static str>,
}

/// What exactly is wrong at a corrupt offset. Non-exhaustive, like [`Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// A checksum did not match; `what` names the structure ("record header", "footer", ...).
    Checksum {
        /// The structure checked: "record", "record header", "footer", "snapshot data", ...
        what: &'static str,
        /// The checksum stored on disk.
        expected: u32,
        /// The checksum computed from the bytes read.
        actual: u32,
    },
    /// A structure's fields are impossible (a length past the end, a wrong magic, ...).
    Malformed(String),
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::Checksum { what, expected, actual } => {
                write!(f, "{what} checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")
            }
            CorruptionKind::Malformed(m) => write!(f, "{m}"),
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corruption in {} at offset {}: {}", self.path.display(), self.offset, self.kind)?;
        if let Some((lo, hi)) = self.affected_indexes {
            write!(f, "; affects indexes {lo}..={hi}")?;
        }
        if let Some(rule) = self.rule {
            write!(f, "; recovery rule {rule}")?;
        }
        write!(
            f,
            ". keel does not drop data that may have been acknowledged: restore this node's log \
             from a peer or a backup, or inspect the file"
        )
    }
}

impl std::error::Error for Corruption {}

impl Corruption {
    pub(crate) fn new(path: impl Into<PathBuf>, offset: u64, kind: CorruptionKind) -> Corruption {
        Corruption { path: path.into(), offset, kind, affected_indexes: None, rule: None }
    }

    pub(crate) fn into_error(self) -> Error {
        Error::Corruption(Box::new(self))
    }
}

/// Whether an operating-system error says the file system (or the user's quota) is full.
pub(crate) fn is_no_space_io(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::DQUOT.raw_os_error())
}
