//! The wire messages between Raft peers (Raft paper, Figure 2 and §7). One
//! variant per RPC and per reply, each with only its own fields. Every message
//! carries the sender's term; the envelope (`Event::MessageReceived`) carries
//! the sender's id.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, Term};

/// A message between two Raft peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A candidate asks for a vote.
    RequestVote(RequestVote),
    /// The answer to a `RequestVote`.
    RequestVoteReply(RequestVoteReply),
    /// A leader replicates entries (or, with none, asserts its leadership).
    AppendEntries(AppendEntries),
    /// The answer to an `AppendEntries`.
    AppendEntriesReply(AppendEntriesReply),
    /// A leader sends its snapshot to a follower whose next entry it compacted.
    InstallSnapshot(InstallSnapshot),
    /// The answer to an `InstallSnapshot`.
    InstallSnapshotReply(InstallSnapshotReply),
    /// A pre-candidate asks whether it could win an election (Raft thesis
    /// §9.6), without bumping its term: `term` is the term it would stand
    /// for (its own + 1). Answering never changes the voter's term or vote.
    PreVote(RequestVote),
    /// The answer to a `PreVote`: a grant carries the pre-vote's term, a
    /// refusal the voter's own term (so a stale pre-candidate learns it).
    PreVoteReply(RequestVoteReply),
    /// A leader transferring its leadership (Raft thesis §3.10) tells the
    /// target, whose log matches its own, to stand for election at once,
    /// skipping pre-vote. `term` is the leader's term. It has no reply: the
    /// target's `RequestVote`s are the answer.
    TimeoutNow {
        /// The leader's term.
        term: Term,
    },
    /// A leader confirming it still leads, for reads (ReadIndex, Raft thesis
    /// §6.4): round `round` of its term. Rounds are numbered by the leader,
    /// and only a reply echoing a round counts for it, so a delayed answer
    /// to an older round never confirms a newer one.
    ReadRound {
        /// The leader's term.
        term: Term,
        /// The round, counted by the leader from 1 in its term.
        round: u64,
    },
    /// The answer to a `ReadRound`: the follower's term and the round.
    ReadRoundReply {
        /// The follower's current term.
        term: Term,
        /// The round answered.
        round: u64,
    },
    /// A follower forwards a read to its leader (follower reads): `ctx` is
    /// the follower's own number for it, echoed in the reply.
    ReadIndex {
        /// The follower's current term.
        term: Term,
        /// The follower's number for the read.
        ctx: u64,
    },
    /// The leader's answer to a `ReadIndex`: the read index once a round
    /// started after the request arrived is confirmed, or `None` if it
    /// cannot serve the read (it is not, or no longer, the leader, or too
    /// many reads are pending).
    ReadIndexReply {
        /// The leader's term.
        term: Term,
        /// The follower's number for the read.
        ctx: u64,
        /// The read index, if the read can be served.
        index: Option<Index>,
    },
}

impl Message {
    /// The sender's current term.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteReply(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesReply(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotReply(m) => m.term,
            Message::PreVote(m) => m.term,
            Message::PreVoteReply(m) => m.term,
            Message::TimeoutNow { term } => *term,
            Message::ReadRound { term, .. } => *term,
            Message::ReadRoundReply { term, .. } => *term,
            Message::ReadIndex { term, .. } => *term,
            Message::ReadIndexReply { term, .. } => *term,
        }
    }

    /// True for the four requests and `TimeoutNow` (a request that is never
    /// answered), false for the replies. RPC-style transports (like the
    /// lab's) pair each reply with the request it answers.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::RequestVote(_)
                | Message::AppendEntries(_)
                | Message::InstallSnapshot(_)
                | Message::PreVote(_)
                | Message::TimeoutNow { .. }
                | Message::ReadRound { .. }
                | Message::ReadIndex { .. }
        )
    }

    /// True for a pre-vote question or a granted pre-vote answer: the two
    /// messages whose term is one nobody holds yet (the pre-candidate's
    /// term + 1), so a receiver never adopts it.
    pub fn is_pre_vote_question(&self) -> bool {
        match self {
            Message::PreVote(_) => true,
            Message::PreVoteReply(m) => m.vote_granted,
            _ => false,
        }
    }
}

/// A candidate's request for a vote (Figure 2, RequestVote RPC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// The candidate's term.
    pub term: Term,
    /// Index of the candidate's last log entry.
    pub last_log_index: Index,
    /// Term of the candidate's last log entry.
    pub last_log_term: Term,
    /// The election follows the leader's `TimeoutNow` (a leader transfer):
    /// voters set leader stickiness aside (`Config::sticky_votes`), since
    /// the leader itself asked for it. Always false in a pre-vote.
    pub transfer: bool,
}

/// The answer to a `RequestVote`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteReply {
    /// The voter's current term, for the candidate to update itself.
    pub term: Term,
    /// True when the vote was granted.
    pub vote_granted: bool,
}

/// A leader's AppendEntries (Figure 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// The leader's term.
    pub term: Term,
    /// Index of the entry immediately before `entries`.
    pub prev_log_index: Index,
    /// Term of that entry.
    pub prev_log_term: Term,
    /// Entries to store, in index order starting at `prev_log_index + 1`.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: Index,
}

/// The answer to an `AppendEntries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesReply {
    /// The follower's current term.
    pub term: Term,
    /// Whether the entries were accepted, and what the follower now holds.
    pub outcome: AppendOutcome,
}

/// What a follower did with an `AppendEntries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's through `match_index`.
    Accepted {
        /// The last index known to match (prev_log_index + entries sent).
        match_index: Index,
    },
    /// The follower does not hold `prev_log_index` with `prev_log_term`. The
    /// hint lets the leader skip a whole conflicting term per round trip.
    Rejected {
        /// The `prev_log_index` of the rejected request (to drop stale replies).
        rejected_prev: Index,
        /// The term the follower holds at `rejected_prev`, if it holds that index.
        conflict_term: Option<Term>,
        /// The first index of `conflict_term` in the follower's log, or, if
        /// the follower's log is too short, its last index + 1.
        conflict_index: Index,
    },
}

/// A leader's snapshot (Figure 13): the header. The bytes travel beside it,
/// streamed by the drivers (`Action::SendSnapshot`); the receiving driver
/// delivers this message once they have all arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The leader's term.
    pub term: Term,
    /// The last index the snapshot covers.
    pub last_included_index: Index,
    /// The term of that entry.
    pub last_included_term: Term,
    /// The configuration in force at `last_included_index`.
    pub membership: crate::Membership,
}

/// The answer to an `InstallSnapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotReply {
    /// The follower's current term.
    pub term: Term,
    /// The snapshot's last included index, echoed, so the leader can advance
    /// the follower's match index.
    pub last_included_index: Index,
}
