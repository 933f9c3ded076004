//! Known bugs in the Raft core that tests can switch on, to prove that the
//! checks catch them. (The KV service's are `kv_core::canary`'s.)
//!
//! Compiled in only with the `canaries` cargo feature, which nothing but the
//! test suites enables; without it [`on`] is the constant `false` and every
//! planted bug is compiled out. With it, one canary at a time is active on
//! the current thread (`set`, with the feature), so a test can run the same scenario with
//! each bug in turn.

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Canary {
    /// Commit an entry of an earlier term by counting replicas (Figure 8).
    CommitOlderTermByCounting,
    /// Send a vote grant before the vote is durable.
    VoteBeforePersist,
    /// Keep the vote when moving to a newer term.
    KeepVoteOnNewTerm,
    /// Accept AppendEntries from a stale term.
    AcceptStaleAppend,
    /// Apply entries beyond the commit index.
    ApplyUncommitted,
    /// Leave the applied index where it was after installing a snapshot.
    KeepAppliedAfterSnapshot,
    /// Acknowledge entries before they are durable (count them as matched).
    AckBeforePersist,
    /// A pre-candidate bumps its own term (pre-vote is meant to leave it).
    PreVoteBumpsTerm,
    /// A leader accepts a membership change while its previous one is not
    /// yet committed (two single-server changes in flight at once).
    TwoChangesInFlight,
    /// A leader accepts a membership change before an entry of its own term
    /// has committed (the single-server bug of 2015).
    ChangeBeforeOwnTermCommit,
    /// A leader in a joint configuration commits on the incoming majority
    /// alone.
    JointCommitOnOneMajority,
    /// A leader that is no longer a voter still counts itself for commit.
    RemovedLeaderCountsItself,
    /// A leader counts learners' acknowledgements for commit.
    LearnerCountsForCommit,
    /// A leader releases a read on a round confirmed before the read
    /// arrived (an old acknowledgement) instead of a fresh one.
    ReadWithoutFreshRound,
    /// A leader serves a read before an entry of its own term has
    /// committed (its commit index may be behind its predecessor's).
    ReadBeforeOwnTermCommit,
    /// A follower answers a read from its own commit index instead of
    /// asking its leader for the read index.
    FollowerReadsOwnCommit,
    /// A lease lasts the whole minimum election timeout, with no margin
    /// for clocks that drift within the bound.
    LeaseIgnoresDrift,
    /// Lease reads without leader stickiness: `Config::validate` lets
    /// `lease_reads` through without `sticky_votes`, and voters grant votes
    /// while a leader's lease holds.
    LeaseWithoutStickyVotes,
    /// A leader keys round acknowledgements by the caller's read id (as
    /// etcd-io/raft did before PR #397, etcd#20418): a reply echoing a
    /// read's id confirms any pending read of that id, even one that
    /// arrived after the reply's round was sent.
    AcksKeyedByReadId,
}

impl Canary {
    /// Every canary, in a fixed order.
    pub const ALL: [Canary; 19] = [
        Canary::CommitOlderTermByCounting,
        Canary::VoteBeforePersist,
        Canary::KeepVoteOnNewTerm,
        Canary::AcceptStaleAppend,
        Canary::ApplyUncommitted,
        Canary::KeepAppliedAfterSnapshot,
        Canary::AckBeforePersist,
        Canary::PreVoteBumpsTerm,
        Canary::TwoChangesInFlight,
        Canary::ChangeBeforeOwnTermCommit,
        Canary::JointCommitOnOneMajority,
        Canary::RemovedLeaderCountsItself,
        Canary::LearnerCountsForCommit,
        Canary::ReadWithoutFreshRound,
        Canary::ReadBeforeOwnTermCommit,
        Canary::FollowerReadsOwnCommit,
        Canary::LeaseIgnoresDrift,
        Canary::LeaseWithoutStickyVotes,
        Canary::AcksKeyedByReadId,
    ];
}

/// Defines, in the calling module, the per-thread switch for a set of
/// planted bugs `$canary` (a `Copy + PartialEq` enum): `on(canary) -> bool`
/// and, with the calling crate's `canaries` feature, `set(Option<canary>)`.
/// Without that feature `on` is the constant `false`, so every planted bug
/// compiles out. `raft_core::canary` and `kv_core::canary` both use it.
#[macro_export]
macro_rules! canary_switch {
    ($canary:ty) => {
        #[cfg(feature = "canaries")]
        thread_local! {
            static ACTIVE: ::core::cell::Cell<Option<$canary>> =
                const { ::core::cell::Cell::new(None) };
        }

        /// Is `canary` switched on (on this thread)? Always false without
        /// the `canaries` feature.
        #[inline]
        pub fn on(canary: $canary) -> bool {
            #[cfg(feature = "canaries")]
            {
                ACTIVE.with(|a| a.get() == Some(canary))
            }
            #[cfg(not(feature = "canaries"))]
            {
                let _ = canary;
                false
            }
        }

        /// Switches one canary on (or all off) for this thread.
        #[cfg(feature = "canaries")]
        pub fn set(canary: Option<$canary>) {
            ACTIVE.with(|a| a.set(canary));
        }
    };
}

canary_switch!(Canary);
