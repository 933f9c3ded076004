//! The role a node plays in its term, with the state only that role has.
//!
//! A candidate's votes and a leader's view of its followers live inside the
//! role, so they exist exactly while the role does: stepping down drops them,
//! and no code has to remember to clear them. [`Role`] is the data-free
//! answer to "which role?" for callers.

use std::collections::BTreeMap;

use crate::progress::Progress;
use crate::types::{Index, NodeId};

/// Which role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows the leader of the term (if any) and votes.
    Follower,
    /// Asks for votes to lead the term.
    Candidate,
    /// Accepts proposals and replicates the log.
    Leader,
    /// Asks whether it could win the next term, without standing yet
    /// (pre-vote, [`crate::Config::pre_vote`]); still in its old term.
    PreCandidate,
}

/// The role with its own state.
#[derive(Debug)]
pub(crate) enum RoleState {
    Follower,
    /// Asking for pre-votes for the term after the current one.
    PreCandidate {
        /// Every answer to this pre-vote round so far: `true` for a grant
        /// (its own included), `false` for a refusal.
        votes: BTreeMap<NodeId, bool>,
        /// The votes of its candidacy in the current term, if it stood in
        /// it and timed out: late grants still elect it in that term (its
        /// vote for itself and its log are unchanged), so under long
        /// reordering a pre-vote round does not throw a nearly won
        /// election away.
        candidacy: Option<BTreeMap<NodeId, bool>>,
    },
    Candidate {
        /// Every answer to this candidacy so far: `true` for a grant (its own
        /// vote included), `false` for a refusal.
        votes: BTreeMap<NodeId, bool>,
    },
    Leader(LeaderState),
}

impl RoleState {
    /// The data-free role.
    pub(crate) fn role(&self) -> Role {
        match self {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }
}

/// What only a leader keeps.
#[derive(Debug)]
pub(crate) struct LeaderState {
    /// The leader's view of each follower's log, one per peer.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// The leader's last index when it took office: entries after it are its
    /// own term's.
    pub(crate) term_start_index: Index,
    /// The leadership transfer in progress, if any (its deadline is in the
    /// timer table).
    pub(crate) transfer: Option<Transfer>,
    /// Reads waiting for a round (`read.rs`).
    pub(crate) reads: crate::read::Reads,
    /// The commit index each follower was last told of by a commit
    /// notification (`Config::notify_commit`).
    pub(crate) commit_told: BTreeMap<NodeId, Index>,
    /// The snapshot transfer to each follower that this term asked for
    /// (`Action::SendSnapshot`) and the driver has not reported ended: the
    /// index sent. At most one per follower, even once the follower has
    /// answered and needs a newer snapshot (`snapshot.rs`).
    pub(crate) snapshots_in_flight: BTreeMap<NodeId, Index>,
}

/// A leadership transfer in progress (`transfer.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// Who is to lead next.
    pub(crate) target: NodeId,
    /// Whether `TimeoutNow` has been sent to it.
    pub(crate) timeout_now_sent: bool,
}

impl LeaderState {
    /// CheckQuorum (etcd-io/raft, Raft thesis §6.2): a leader that has not
    /// heard from a majority within the longest election timeout must step
    /// down, so a leader cut off in a minority stops taking requests it can
    /// never commit and its clients move on. Returns whether it may stay;
    /// if so, starts the next round (everyone inactive again, the next check
    /// one longest election timeout away).
    pub(crate) fn check_quorum(&mut self, s: &mut crate::shared::Shared) -> bool {
        let id = s.config.id;
        let active = s.voters.vote_result(|v| {
            if v == id {
                Some(true)
            } else {
                self.progress.get(&v).map(|p| p.recent_active)
            }
        });
        if active != crate::quorum::VoteResult::Won {
            return false;
        }
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        s.timers.leader_mut().check_quorum = s.now + s.config.election_timeout_max;
        true
    }
}
