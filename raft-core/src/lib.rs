//! Raft as a deterministic, sans-IO state machine.
//!
//! A [`RaftNode`] is a value driven by [`RaftNode::step`]: it takes the time
//! and one [`Event`] (a fact: a message arrived, a timer fired, a write became
//! durable, the service snapshotted) and returns [`Action`]s (commands: send,
//! persist, apply, set the timer, answer a proposal). It reads no clock, does
//! no I/O, spawns nothing, and draws randomness only from a generator seeded by
//! the caller, so a driver (a simulator, threads, tokio) decides everything
//! about time, transport and storage, and the same inputs always give the same
//! outputs.
//!
//! # The ordering contract
//!
//! 1. **Persist before send.** Messages whose safety rests on durable state
//!    (vote grants, append acknowledgements, a candidate's own vote) come in the
//!    `then_send` of the [`Persist`] that makes them safe, never as a plain
//!    `Send`. A leader's AppendEntries may leave before its own write is
//!    durable; it counts itself toward commit only once `Persisted`.
//! 2. **Writes are FIFO.** Persist ids grow by one; a driver makes them
//!    durable in order and reports `Event::Persisted { upto }`.
//! 3. **Apply only what is committed and locally durable**, strictly in order.
//! 4. **Execute each returned Vec in order**; a driver may pipeline writes but
//!    never reorders writes among themselves or applies among themselves.
//! 5. **Invariants are checked at the end of every step** (term never
//!    decreases, one vote per term, commit <= last index, applied <= commit, a
//!    leader never truncates its log); a broken one is an `assert!`.
//!
//! Peer input never panics the node (bad messages are dropped); caller misuse
//! returns an [`Error`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bytes;
pub mod canary;
mod config;
mod durable;
mod election;
mod io;
mod log;
mod message;
mod node;
mod progress;
mod replication;
mod rng;
mod snapshot;
mod time;
mod types;

#[cfg(test)]
mod tests_handlers;
#[cfg(test)]
mod tests_props;

pub use config::Config;
pub use durable::{DurableError, DurableWrite};
pub use io::{Action, DurableState, Event, Persist, RejectReason};
pub use log::RaftLog;
pub use message::{
    AppendEntries, AppendEntriesReply, AppendOutcome, InstallSnapshot, InstallSnapshotReply,
    Message, RequestVote, RequestVoteReply,
};
pub use node::{RaftNode, Role};
pub use progress::{quorum_index, Progress, ProgressState};
pub use rng::SplitMix64;
pub use time::Instant;
pub use types::{Entry, HardState, Index, NodeId, Snapshot, SnapshotMeta, Term};

/// Misuse of the node by its caller. Peer input never produces one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The state handed to `recover` is inconsistent.
    #[error("invalid durable state: {0}")]
    InvalidDurableState(String),
    /// `step` was called with a time earlier than a previous one.
    #[error("time went backwards: {now:?} after {last:?}")]
    TimeWentBackwards {
        /// The time passed now.
        now: Instant,
        /// The latest time passed before.
        last: Instant,
    },
    /// `SnapshotTaken` named an index the service has not been given.
    #[error("snapshot through {index} but only {applied} applied")]
    SnapshotBeyondApplied {
        /// The index named.
        index: Index,
        /// The last index applied.
        applied: Index,
    },
    /// `Persisted` named an id no `Persist` carried.
    #[error("persisted id {id} was never issued")]
    UnknownPersist {
        /// The id named.
        id: u64,
    },
}
