//! The replicated key/value service's logic, free of I/O:
//!
//! - [`KvStore`]: Get / Put / Append / Delete / CompareAndSwap on string
//!   keys, with client sessions so that a retried request is never applied
//!   twice; snapshot and restore.
//! - [`KvServer`]: the sans-IO server node, a `RaftNode` plus a `KvStore`
//!   plus the requests waiting to be applied; it decides when to snapshot.
//! - [`Clerk`]: the sans-IO client (request numbers, leader guess, retries).
//!
//! Drivers move bytes, keep time and write storage; every decision is here or
//! in `raft-core`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod canary;
mod clerk;
mod command;
mod server;
mod shards;
mod store;

pub use admin::{
    AdminReply, AdminRequest, MemberAddrs, MemberInfo, MemberList, MemberRole, Refusal,
};
pub use clerk::{Attempt, Clerk, Progress, ROUND_BACKOFF};
pub use command::{ClientId, Command, Op, Outcome, Reply};
pub use server::{KvServer, ReadConsistency, ReadPolicy, ServerAction, ServerConfig, ServerEvent};
pub use store::{KvImage, KvStore, DEFAULT_MAX_SESSIONS};

/// What can go wrong in the KV core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Raft node was misused.
    #[error(transparent)]
    Raft(#[from] raft_core::Error),
    /// A snapshot was refused.
    #[error("bad snapshot: {0}")]
    BadSnapshot(#[from] SnapshotError),
    /// A snapshot came without its bytes: `recover` without the snapshot
    /// the state names, or an `InstallSnapshot` through `step` instead of
    /// `install_snapshot`.
    #[error("a snapshot without its bytes")]
    SnapshotDataMissing,
}

/// Why a KV snapshot was refused ([`KvStore::restore`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes do not decode as a store.
    #[error("does not decode: {0}")]
    Decode(postcard::Error),
    /// Bytes follow the store.
    #[error("{0} bytes after the store")]
    TrailingBytes(usize),
    /// More sessions than the store's bound, or a bound of zero.
    #[error("{sessions} sessions with a bound of {bound}")]
    SessionBound {
        /// Sessions in the snapshot.
        sessions: usize,
        /// The snapshot's session bound.
        bound: usize,
    },
    /// The sessions' use order does not match the sessions (two sessions
    /// last used at one index).
    #[error("the sessions' use order does not match the sessions")]
    UseOrder,
    /// Keys, clients or nodes are not in strictly increasing order.
    #[error("records out of order")]
    Unsorted,
    /// The snapshot ends before its header says it does.
    #[error("cut short")]
    Truncated,
    /// A snapshot format this version does not read.
    #[error("unknown snapshot format version {0}")]
    Version(u32),
    /// Reading the snapshot failed (on disk: a checksum mismatch, say).
    #[error("read failed: {0}")]
    Read(String),
}
