//! Known bugs in the KV service that tests can switch on, to prove that the
//! checks catch them; and [`Planted`], every planted bug of the service
//! (the Raft core's and these) in one list, for the suites that hunt them.
//!
//! As in `raft_core::canary`: compiled in only with the `canaries` cargo
//! feature, which nothing but the test suites enables; without it [`on`] is
//! the constant `false` and every planted bug is compiled out. With it, one
//! canary at a time is active on the current thread.

use core::fmt;

/// A planted bug in the KV service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Canary {
    /// Leave the client session table out of the KV snapshot.
    SessionsLeftOutOfSnapshot,
    /// Answer Get from the local store on whoever thinks it leads.
    LocalGetOnLeader,
    /// Serve a confirmed read before the store has applied through its
    /// read index.
    ReadBeforeApplied,
}

raft_core::canary_switch!(Canary);

/// A planted bug anywhere in the service: in the Raft core or in the KV
/// layer. Displays as the bug's own name (`VoteBeforePersist`,
/// `LocalGetOnLeader`), which is what `SIM_CANARY=<name>` and the canary
/// tables use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Planted {
    /// One of `raft_core::canary`'s.
    Raft(raft_core::canary::Canary),
    /// One of this module's.
    Kv(Canary),
}

impl Planted {
    /// Every planted bug of the service, in a fixed order.
    pub const ALL: [Planted; 22] = {
        use raft_core::canary::Canary as R;
        [
            Planted::Raft(R::CommitOlderTermByCounting),
            Planted::Raft(R::VoteBeforePersist),
            Planted::Raft(R::KeepVoteOnNewTerm),
            Planted::Raft(R::AcceptStaleAppend),
            Planted::Raft(R::ApplyUncommitted),
            Planted::Raft(R::KeepAppliedAfterSnapshot),
            Planted::Kv(Canary::SessionsLeftOutOfSnapshot),
            Planted::Kv(Canary::LocalGetOnLeader),
            Planted::Raft(R::AckBeforePersist),
            Planted::Raft(R::PreVoteBumpsTerm),
            Planted::Raft(R::TwoChangesInFlight),
            Planted::Raft(R::ChangeBeforeOwnTermCommit),
            Planted::Raft(R::JointCommitOnOneMajority),
            Planted::Raft(R::RemovedLeaderCountsItself),
            Planted::Raft(R::LearnerCountsForCommit),
            Planted::Raft(R::ReadWithoutFreshRound),
            Planted::Raft(R::ReadBeforeOwnTermCommit),
            Planted::Kv(Canary::ReadBeforeApplied),
            Planted::Raft(R::FollowerReadsOwnCommit),
            Planted::Raft(R::LeaseIgnoresDrift),
            Planted::Raft(R::LeaseWithoutStickyVotes),
            Planted::Raft(R::AcksKeyedByReadId),
        ]
    };

    /// The planted bug called `name`, if any.
    pub fn by_name(name: &str) -> Option<Planted> {
        Planted::ALL.into_iter().find(|p| p.to_string() == name)
    }

    /// The planted bug active on this thread, if any.
    pub fn active() -> Option<Planted> {
        Planted::ALL.into_iter().find(|p| match *p {
            Planted::Raft(c) => raft_core::canary::on(c),
            Planted::Kv(c) => on(c),
        })
    }

    /// Switches `planted` on (and every other off) for this thread; `None`
    /// switches all off.
    #[cfg(feature = "canaries")]
    pub fn set(planted: Option<Planted>) {
        raft_core::canary::set(match planted {
            Some(Planted::Raft(c)) => Some(c),
            _ => None,
        });
        set(match planted {
            Some(Planted::Kv(c)) => Some(c),
            _ => None,
        });
    }
}

impl fmt::Display for Planted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Planted::Raft(c) => write!(f, "{c:?}"),
            Planted::Kv(c) => write!(f, "{c:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_raft_canary_is_planted_once_and_names_are_unique() {
        for c in raft_core::canary::Canary::ALL {
            let n = Planted::ALL
                .iter()
                .filter(|p| **p == Planted::Raft(c))
                .count();
            assert_eq!(n, 1, "{c:?}");
        }
        for p in Planted::ALL {
            assert_eq!(Planted::by_name(&p.to_string()), Some(p));
        }
    }
}
