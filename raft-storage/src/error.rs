//! The one error type of the store.

use std::path::{Path, PathBuf};

use raft_core::DurableError;

/// A failure of durable storage. Every variant is fatal for the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file holds bytes that no crash of this code can produce.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the bad record (or header field).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process (or another open `Storage`) holds the data
    /// directory's lock: it is in use.
    #[error("the data directory is in use: {path} is locked by another process (a second server on the same directory?)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An operating-system call failed (including fsync).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The files are individually valid but do not fit together (for
    /// example the log names a snapshot and the snapshot file is missing).
    #[error("inconsistent data directory at {path}: {reason}")]
    Inconsistent {
        /// The file concerned.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A record would exceed [`crate::MAX_RECORD_LEN`]; nothing was written.
    #[error("record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// The payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The `Persist` does not continue the stored log (a bug in the caller);
    /// nothing was written.
    #[error("invalid write: {0}")]
    InvalidWrite(#[from] DurableError),
    /// The directory belongs to another node or cluster
    /// ([`crate::Storage::open_owned`]).
    #[error(
        "{} belongs to node {} of cluster {}, not node {} of cluster {}",
        dir.display(), found.node_id, found.cluster_id, expected.node_id, expected.cluster_id
    )]
    WrongOwner {
        /// The data directory.
        dir: PathBuf,
        /// Who it belongs to.
        found: crate::Owner,
        /// Who opened it.
        expected: crate::Owner,
    },
    /// An earlier write or fsync failed; the on-disk state is unknown, so
    /// the storage refuses further use. Restart and recover.
    #[error("storage refuses further use after an earlier I/O error")]
    Poisoned,
}

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}
