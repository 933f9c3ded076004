//! Cluster administration through the service: list the members, add a
//! learner, promote it, remove a member, hand leadership over; and the table
//! of member addresses that lets every server and client find the others.
//!
//! # Member addresses
//!
//! Raft knows members only by node id. Their addresses (where peers and
//! clients connect) are kept in a small table replicated through the log
//! like the store itself: a *record* is a command entry
//! ([`crate::command`]'s service op) that sets one node's addresses, applied
//! in log order on every replica and carried in snapshots with the store.
//! Records are written in two ways:
//!
//! - **Adding a learner** carries its addresses. The leader first proposes
//!   the record and waits until it is applied, and only then asks Raft for
//!   the membership change. So every replica that sees the new member in a
//!   configuration it has applied also has its addresses, and the leader
//!   knows where to send the log the moment the change takes effect.
//! - **A member records its own addresses** (the initial members, started
//!   with `--peers`, which no request introduced): a leader proposes its own
//!   record as soon as its table lacks it or disagrees with it; a follower
//!   asks the leader with [`AdminRequest::RecordAddresses`]
//!   ([`crate::KvServer::registration`] says when).
//!
//! A record is idempotent (it sets, it does not accumulate), so it needs no
//! client session and a retried one is harmless. Records of nodes that have
//! left stay in the table (one small record per node id ever recorded) and
//! are overwritten if that id is added again; listings show members only.
//!
//! # Answers
//!
//! A change is answered [`AdminReply::Done`] once the configuration entry
//! that makes it is applied (so committed), or [`AdminReply::Refused`] with a
//! reason; [`Refusal::is_retryable`] tells a client whether to try again
//! (elsewhere, or after a pause). A change that already holds (adding a
//! learner that is one, with the same addresses; promoting a voter;
//! removing a non-member) is answered `Done` at once, so a client may retry
//! a change whose answer it lost.

use serde::{Deserialize, Serialize};

use raft_core::{Index, NodeId, Term};

/// Where a member listens: for its Raft peers and for clients. Kept as text
/// (`HOST:PORT`); the service stores them, drivers parse them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddrs {
    /// The peer (Raft) address.
    pub peer: String,
    /// The client address.
    pub client: String,
}

/// An administrative request to the service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// List the members as this server knows them (any server answers; only
    /// the leader knows match indices).
    Members,
    /// Record `node`'s addresses, then add it as a learner.
    AddLearner {
        /// The new member.
        node: NodeId,
        /// Where it listens.
        addrs: MemberAddrs,
    },
    /// Make the learner `node` a voter.
    Promote {
        /// The learner.
        node: NodeId,
    },
    /// Remove the member `node` (voter or learner; the leader too).
    Remove {
        /// The member.
        node: NodeId,
    },
    /// Hand leadership to `to`, or to the most up-to-date voter.
    TransferLeader {
        /// The target.
        to: Option<NodeId>,
    },
    /// Record `node`'s addresses (a member's own, or an operator's fix).
    RecordAddresses {
        /// The node.
        node: NodeId,
        /// Where it listens.
        addrs: MemberAddrs,
    },
}

/// A member's part in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// Votes (in the incoming half, during a joint change).
    Voter,
    /// Receives the log, counts for nothing.
    Learner,
    /// During a joint change: votes in the outgoing half only, and leaves
    /// (or becomes a learner) when the change is left.
    Leaving,
}

impl MemberRole {
    /// "voter", "learner" or "leaving".
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
            MemberRole::Leaving => "leaving",
        }
    }
}

/// One member, as a server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its node id.
    pub id: NodeId,
    /// Its role in the latest configuration.
    pub role: MemberRole,
    /// Its addresses, if recorded.
    pub addrs: Option<MemberAddrs>,
    /// On the leader: the highest index known replicated on it (the
    /// leader's own last index for itself); `None` elsewhere.
    pub match_index: Option<Index>,
}

/// The members, as one server knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// The server that answered.
    pub from: NodeId,
    /// Its term.
    pub term: Term,
    /// The leader it knows of (itself if it leads).
    pub leader: Option<NodeId>,
    /// Its commit index (the most up-to-date view has the highest).
    pub commit_index: Index,
    /// True if the latest configuration is committed.
    pub committed: bool,
    /// Every member of its latest configuration, by id.
    pub members: Vec<MemberInfo>,
}

impl MemberList {
    /// True if the answering server leads.
    pub fn from_leader(&self) -> bool {
        self.leader == Some(self.from)
    }

    /// A member's record, if it is a member.
    pub fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// Why an administrative request was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// This server is not the leader (or lost leadership before the change
    /// committed: it may or may not take effect). Try `leader_hint`.
    NotLeader {
        /// Who it believes leads.
        leader_hint: Option<NodeId>,
    },
    /// A configuration change is not yet committed: one at a time.
    ChangeInProgress,
    /// The leader has not yet committed an entry of its term; try soon.
    LeaderNotReady,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The leader is busy (too many uncommitted entries); try soon.
    Busy,
    /// The request does not apply to the configuration (the reason).
    Invalid(String),
    /// The leadership transfer did not happen (the reason).
    TransferFailed(String),
}

impl Refusal {
    /// True if the same request may succeed later (or at the leader).
    pub fn is_retryable(&self) -> bool {
        match self {
            Refusal::NotLeader { .. }
            | Refusal::ChangeInProgress
            | Refusal::LeaderNotReady
            | Refusal::TransferInProgress
            | Refusal::Busy => true,
            Refusal::Invalid(_) | Refusal::TransferFailed(_) => false,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotLeader {
                leader_hint: Some(l),
            } => write!(f, "not the leader (node {l} is)"),
            Refusal::NotLeader { leader_hint: None } => write!(f, "not the leader"),
            Refusal::ChangeInProgress => write!(f, "another configuration change is in progress"),
            Refusal::LeaderNotReady => write!(f, "the leader is not ready yet"),
            Refusal::TransferInProgress => write!(f, "a leadership transfer is in progress"),
            Refusal::Busy => write!(f, "the leader is busy"),
            Refusal::Invalid(why) => write!(f, "invalid: {why}"),
            Refusal::TransferFailed(why) => write!(f, "transfer failed: {why}"),
        }
    }
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    /// The members ([`AdminRequest::Members`]).
    Members(MemberList),
    /// The change committed, the addresses were recorded, or leadership
    /// left this server (a transfer).
    Done,
    /// Refused.
    Refused(Refusal),
}
