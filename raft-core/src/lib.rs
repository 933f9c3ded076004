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
//!
//! # Inside
//!
//! The node is [`RaftNode`]: the state every role shares (`shared.rs`) and
//! the role with the state only it has (`role.rs`: a pre-candidate's or
//! candidate's votes, a leader's [`Progress`] per follower), so leaving a
//! role drops its state.
//! `step` handles the term of a message once and then dispatches by role
//! (etcd-io/raft's `Step`, then `stepLeader` / `stepCandidate` /
//! `stepFollower`). Quorum arithmetic is [`MajorityConfig`] and
//! [`JointConfig`] (commit index and vote results); every deadline is
//! in one timer table, whose earliest is [`RaftNode::next_deadline`].
//!
//! With [`Config::pre_vote`] (Raft thesis §9.6) a node whose election timeout
//! passes becomes a pre-candidate: it keeps its term and vote and asks
//! (`Message::PreVote`, plain sends, nothing persisted) whether it could win
//! the next term; only a majority of grants makes it stand. Pre-votes and
//! their grants carry a term nobody holds yet, so the term is handled once
//! with one exception: a receiver never adopts it (a refusal carries the
//! voter's own term and is adopted like any term). Voters refuse within the
//! minimum election timeout of hearing from a leader (leader stickiness).
//! The rules and the two known liveness bugs they avoid are in `election.rs`.
//!
//! Leadership transfer (thesis §3.10, `transfer.rs`): on
//! `Event::LeadershipTransferRequested` a leader refuses proposals
//! (`RejectReason::TransferInProgress`), brings the target up to date and
//! sends it `Message::TimeoutNow`, on which the target stands at once,
//! skipping pre-vote. The transfer gives up after `election_timeout_max` (its
//! deadline is in the timer table) or ends when the leader steps down; each
//! step is reported as `Action::LeadershipTransfer`.
//!
//! Membership change (thesis §4; the design and what it requires are in
//! `membership.rs`'s module doc): a configuration ([`Membership`]: voters,
//! learners, and during a joint change the outgoing voters) is a log entry
//! ([`Payload::Membership`]) in force from the moment a node appends it; a
//! truncation reverts to the latest one left, and [`SnapshotMeta`] records
//! the one in force at its index. On `Event::MembershipChangeRequested` a
//! leader validates the changes against its latest configuration and
//! appends it (one voter added or removed: the simple path; more: a joint
//! configuration it leaves by itself once it commits), or refuses with a
//! [`ChangeRefusal`]: one change at a time, and none before an entry of its
//! own term has committed. Learners receive the log and never vote, stand
//! or count; a leader that removed itself steps down (after a `TimeoutNow`
//! to the most up-to-date voter) once the removal commits. Drivers follow
//! `Action::MembershipChanged` to add and drop peers; a node that joins a
//! running cluster starts with an empty `Config::members` and learns the
//! configuration from the leader. Quorums are [`JointConfig`]s.
//!
//! [`Message`], [`Event`], [`Action`] and the types inside them have compact
//! one-line `Display` forms (`MsgApp Term:1 Log:1/10 Commit:10
//! Entries:[1/11 "foo"]`) for logs and traces.
//!
//! # Tests
//!
//! `raft-core/tests/` uses only the public API: `handlers.rs` asserts the
//! exact actions of each handler, `props.rs` checks properties against simple
//! references, and `interaction.rs` runs the etcd-style interaction scripts
//! in `raft-core/testdata/*.txt` (commands with their golden output; the
//! command language is in that file's module doc). After a deliberate change
//! of behaviour or of the `Display` forms, regenerate the golden output and
//! review the diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p raft-core --test interaction
//! git diff raft-core/testdata
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bytes;
pub mod canary;
mod config;
mod configs;
mod display;
mod durable;
mod election;
mod io;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod quorum;
mod read;
mod reconfig;
mod replication;
mod rng;
mod role;
mod shared;
mod snapshot;
mod time;
mod timers;
mod transfer;
mod types;

pub use config::Config;
pub use durable::{DurableError, DurableWrite};
pub use io::{
    Action, ChangeRefusal, DurableState, Event, Persist, ReadMode, ReadRefusal, RejectReason,
    TransferAbort, TransferOutcome,
};
pub use log::RaftLog;
pub use membership::{ChangeError, Membership, MembershipChange};
pub use message::{
    AppendEntries, AppendEntriesReply, AppendOutcome, InstallSnapshot, InstallSnapshotReply,
    Message, RequestVote, RequestVoteReply,
};
pub use node::RaftNode;
pub use progress::{Progress, ProgressState};
pub use quorum::{JointConfig, MajorityConfig, VoteResult};
pub use rng::SplitMix64;
pub use role::Role;
pub use time::Instant;
pub use types::{Bytes, Entry, HardState, Index, NodeId, Payload, SnapshotMeta, Term};

/// What is wrong with a [`Config`] ([`Config::validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `members` is not empty and does not contain `id`.
    #[error("members must be empty or contain id")]
    NotAMember,
    /// A member is listed twice.
    #[error("members must not repeat")]
    RepeatedMember,
    /// The election timeout range is empty or starts at zero.
    #[error("need 0 < election_timeout_min < election_timeout_max")]
    ElectionTimeouts,
    /// The election timeout does not fit the core's time type.
    #[error("election_timeout_max must fit in u64 nanoseconds (about 584 years)")]
    ElectionTimeoutTooLong,
    /// The heartbeat interval is zero or not below the election timeout.
    #[error("need 0 < heartbeat_interval < election_timeout_min")]
    HeartbeatInterval,
    /// A limit (entries or bytes per append, appends in flight,
    /// uncommitted entries) is zero.
    #[error("limits must be positive")]
    ZeroLimit,
    /// `max_clock_drift_ppm` is a million or more (a clock that may stop).
    #[error("max_clock_drift_ppm must be below 1 000 000")]
    ClockDriftBound,
    /// `lease_reads` without `sticky_votes`: a majority that acknowledged
    /// the leader could elect another while the lease holds.
    #[error("lease_reads needs sticky_votes (leader stickiness)")]
    LeaseWithoutStickyVotes,
}

/// What is wrong with the state handed to [`RaftNode::recover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurableStateError {
    /// The entries do not continue the snapshot one by one, or reach the
    /// last representable index.
    #[error("log entries are not consecutive after the snapshot, or reach the last index")]
    LogNotConsecutive,
    /// The log holds a term newer than the stored current term.
    #[error("log holds a term newer than the current term")]
    LogTermAfterCurrentTerm,
}

/// Misuse of the node by its caller. Peer input never produces one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(#[from] ConfigError),
    /// The state handed to `recover` is inconsistent.
    #[error("invalid durable state: {0}")]
    InvalidDurableState(#[from] DurableStateError),
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
