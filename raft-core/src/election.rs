//! Leader election (Raft paper §5.2, §5.4.1): randomized timeouts,
//! pre-vote (thesis §9.6), candidacy, counting votes, taking office.
//! Answering a vote request is shared by every role
//! (`Shared::on_request_vote`), and so is answering a pre-vote
//! (`Shared::on_pre_vote`).
//!
//! Pre-vote, with [`crate::Config::pre_vote`] on: when the election timeout
//! passes, a node becomes a pre-candidate. It keeps its term and vote (so
//! nothing is persisted), forgets its leader (etcd#9586: otherwise, with
//! everyone's leader sticky, a cluster whose leader died could refuse every
//! pre-vote forever), and sends `PreVote { term: its term + 1, its last log
//! position }` as plain sends. A voter grants iff the pre-vote's term is past
//! its own (or equal, and it could still vote in it), the log is at least as
//! up-to-date as its own, and it has not heard from a leader within the
//! minimum election timeout (a leader always refuses). Answering changes
//! nothing in the voter. A majority of grants (its own counted) starts the
//! real election; otherwise the next timeout starts a new round. A candidate
//! whose election times out goes back to pre-vote, but late grants of its
//! candidacy still elect it in its term (it voted for itself and its log has
//! not changed), so long reordering does not throw nearly won elections
//! away. A leader
//! transfer's `TimeoutNow` (`transfer.rs`) skips pre-vote by calling
//! `RaftNode::start_election` directly.

use std::collections::BTreeMap;

use crate::message::{Message, RequestVote, RequestVoteReply};
use crate::node::RaftNode;
use crate::progress::Progress;
use crate::quorum::VoteResult;
use crate::role::{LeaderState, RoleState};
use crate::shared::Shared;
use crate::time::Instant;
use crate::types::{HardState, NodeId};

impl RaftNode {
    /// The election timeout passed without word from a leader (or, with
    /// `transfer`, the leader sent `TimeoutNow`): stand for the next term.
    /// The vote for itself is durable before any request leaves.
    pub(crate) fn start_election(&mut self, transfer: bool) {
        let s = &mut self.shared;
        let Some(term) = s.hard.term.checked_add(1) else {
            // Term space exhausted (only reachable from a corrupt or hostile
            // stored term, since peers' messages at `u64::MAX` are dropped):
            // this node can never stand again, but it must not panic.
            s.reset_election_deadline();
            return;
        };
        s.hard = HardState {
            term,
            voted_for: Some(s.config.id),
        };
        s.pending.hard_state_dirty = true;
        let votes = BTreeMap::from([(s.config.id, true)]);
        let won = s.voters.vote_result(|v| votes.get(&v).copied()) == VoteResult::Won;
        self.role = RoleState::Candidate { votes };
        s.timers.unlead();
        s.leader_hint = None;
        s.reset_election_deadline();
        if won {
            // Alone in the cluster: no peer's grant (which comes only after
            // our RequestVote, sent once the vote is durable) vouches for the
            // vote, so it leads only once the vote is durable
            // (`on_persisted`). Leading sooner, a crash could lose the vote
            // and let it lead the same term again with another log.
            return;
        }
        let request = s.vote_request(term, transfer);
        let peers = s.voter_peers();
        for peer in peers {
            s.send_durable(peer, Message::RequestVote(request.clone()));
        }
    }

    /// The election timeout passed and pre-vote is on: ask every voter
    /// whether we could win the next term, without changing our term or
    /// vote (nothing to persist: the questions go as plain sends).
    pub(crate) fn start_pre_vote(&mut self) {
        let s = &mut self.shared;
        if crate::canary::on(crate::canary::Canary::PreVoteBumpsTerm) {
            if let Some(bumped) = s.hard.term.checked_add(1) {
                s.adopt_term(bumped);
            }
        }
        let Some(term) = s.hard.term.checked_add(1) else {
            s.reset_election_deadline();
            return;
        };
        let votes = BTreeMap::from([(s.config.id, true)]);
        let won = s.voters.vote_result(|v| votes.get(&v).copied()) == VoteResult::Won;
        let candidacy = match std::mem::replace(&mut self.role, RoleState::Follower) {
            RoleState::Candidate { votes } => Some(votes),
            RoleState::PreCandidate { candidacy, .. } => candidacy,
            RoleState::Follower | RoleState::Leader(_) => None,
        }
        .filter(|_| s.hard.voted_for == Some(s.config.id));
        self.role = RoleState::PreCandidate { votes, candidacy };
        s.timers.unlead();
        s.leader_hint = None;
        s.reset_election_deadline();
        if won {
            // Alone in the cluster: nobody to ask.
            self.start_election(false);
            return;
        }
        let request = s.vote_request(term, false);
        let peers = s.voter_peers();
        for peer in peers {
            s.send(peer, Message::PreVote(request.clone()));
        }
    }

    /// Take office: every follower starts in `Probe` at our last index + 1,
    /// and an immediate heartbeat announces the new leader.
    pub(crate) fn become_leader(&mut self) {
        let s = &mut self.shared;
        debug_assert_eq!(s.hard.voted_for, Some(s.config.id));
        s.leader_hint = Some(s.config.id);
        let last = s.log.last_index();
        let mut leader = LeaderState {
            progress: s
                .member_peers()
                .into_iter()
                .map(|p| (p, Progress::new(last)))
                .collect(),
            term_start_index: last,
            transfer: None,
            reads: crate::read::Reads::default(),
            commit_told: BTreeMap::new(),
            snapshots_in_flight: BTreeMap::new(),
        };
        s.timers.lead(
            s.now + s.config.heartbeat_interval,
            s.now + s.config.election_timeout_max,
        );
        // A configuration change left uncommitted (or a joint one not yet
        // left) by an earlier leader needs an entry of this term to commit
        // under before the next step can be taken.
        let unsettled = s.configs.latest_index() > s.commit_index || s.membership().is_joint();
        if s.config.noop_on_election || unsettled {
            let entry = crate::types::Entry {
                index: last + 1,
                term: s.hard.term,
                payload: crate::types::Payload::Noop,
            };
            s.append_entry(entry);
        }
        leader.broadcast_heartbeat(s);
        // A single-member cluster commits on its own durability.
        leader.maybe_commit(s);
        self.role = RoleState::Leader(leader);
    }
}

/// A candidate counts an answer to its vote request. Returns true when a
/// majority has granted. A lost election is not acted on: the candidate waits
/// for its election timeout (or a leader) as before.
pub(crate) fn count_vote(
    shared: &Shared,
    votes: &mut BTreeMap<NodeId, bool>,
    from: NodeId,
    m: RequestVoteReply,
) -> bool {
    if m.vote_granted {
        votes.insert(from, true);
    } else {
        votes.entry(from).or_insert(false);
        return false;
    }
    shared.voters.vote_result(|v| votes.get(&v).copied()) == VoteResult::Won
}

/// What a pre-candidate's message leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PreCandidacy {
    /// Still asking.
    Asking,
    /// A majority granted the pre-vote: stand for the next term.
    Stand,
    /// Late grants completed its candidacy in the current term: lead it.
    Lead,
}

/// A pre-candidate's messages. It answers vote requests like a follower
/// (it grants only if it has not voted in its term, which it has if it
/// stood in it), counts pre-vote grants for the term after its own, and
/// late vote grants for a candidacy of its current term.
pub(crate) fn step_pre_candidate(
    shared: &mut Shared,
    votes: &mut BTreeMap<NodeId, bool>,
    candidacy: &mut Option<BTreeMap<NodeId, bool>>,
    from: NodeId,
    message: Message,
) -> PreCandidacy {
    match message {
        Message::RequestVote(m) => shared.on_request_vote(from, m, true),
        Message::PreVote(m) => shared.on_pre_vote(from, m, false),
        Message::PreVoteReply(m) => {
            // A grant names the term asked about; one for another term
            // answers an earlier round.
            if m.vote_granted && Some(m.term) != shared.hard.term.checked_add(1) {
                return PreCandidacy::Asking;
            }
            if count_vote(shared, votes, from, m) {
                return PreCandidacy::Stand;
            }
        }
        Message::RequestVoteReply(m) => {
            if let Some(candidacy) = candidacy {
                if m.term == shared.hard.term && count_vote(shared, candidacy, from, m) {
                    return PreCandidacy::Lead;
                }
            }
        }
        // A well-formed AppendEntries or InstallSnapshot of our term made us
        // a follower before dispatch; what is left is malformed. Other
        // replies answer requests of an earlier role.
        Message::AppendEntries(_)
        | Message::InstallSnapshot(_)
        | Message::AppendEntriesReply(_)
        | Message::InstallSnapshotReply(_) => {}
        // Only a follower of the sender's term acts on it.
        Message::TimeoutNow { .. } => {}
        // A round of our term made us a follower before dispatch; a reply
        // answers a round of an earlier role.
        Message::ReadRound { .. }
        | Message::ReadRoundReply { .. }
        | Message::ReadIndex { .. }
        | Message::ReadIndexReply { .. } => {}
    }
    PreCandidacy::Asking
}

impl Shared {
    /// Answer a pre-vote whose term is not older than ours (older ones are
    /// refused before dispatch). `leading`: we are the leader, which always
    /// refuses. Never changes our term, vote or deadline, so it persists
    /// nothing; a refusal carries our term (which may still be on its way
    /// to disk, hence `send_durable`), a grant the term asked about.
    pub(crate) fn on_pre_vote(&mut self, from: NodeId, m: RequestVote, leading: bool) {
        let could_vote = m.term > self.hard.term
            || self.hard.voted_for == Some(from)
            || (self.hard.voted_for.is_none() && self.leader_hint.is_none());
        let grant = !leading
            && !self.leader_is_sticky()
            && could_vote
            && self.log.is_up_to_date(m.last_log_index, m.last_log_term);
        if grant {
            let reply = RequestVoteReply {
                term: m.term,
                vote_granted: true,
            };
            self.send(from, Message::PreVoteReply(reply));
        } else {
            let reply = RequestVoteReply {
                term: self.hard.term,
                vote_granted: false,
            };
            self.send_durable(from, Message::PreVoteReply(reply));
        }
    }

    /// With `Config::sticky_votes`: a `RequestVote` of a newer term is
    /// ignored now (thesis §4.2.3), because we heard from the leader of our
    /// term, or started, within the minimum election timeout (`leading`:
    /// we lead, and ignore it too). A transfer's election is exempt.
    pub(crate) fn ignores_vote_request(&self, m: &RequestVote, leading: bool) -> bool {
        let sticky = self.config.sticky_votes && !m.transfer;
        sticky && m.term > self.hard.term && (leading || self.refuses_votes(m))
    }

    /// With `Config::sticky_votes`: no vote may be granted now, in any term
    /// (thesis §4.2.3), because we heard from a leader, or started, within
    /// the minimum election timeout. Checked on the grant itself, not only
    /// on the term: a node may have adopted a newer term without voting
    /// (from a reply to one of its old requests), and a vote in that term
    /// would still help elect a leader while a lease we acknowledged holds.
    /// A transfer's election is exempt.
    pub(crate) fn refuses_votes(&self, m: &RequestVote) -> bool {
        if !self.config.sticky_votes || m.transfer {
            return false;
        }
        if crate::canary::on(crate::canary::Canary::LeaseWithoutStickyVotes) {
            return false;
        }
        let recent = |t: Instant| self.now < t + self.config.election_timeout_min;
        recent(self.started_at) || self.leader_contact.is_some_and(recent)
    }

    /// We heard from the leader of our term within the minimum election
    /// timeout, so a working leader exists as far as we know: refuse to
    /// help replace it (thesis §9.6).
    pub(crate) fn leader_is_sticky(&self) -> bool {
        let recent = |t: Instant| self.now < t + self.config.election_timeout_min;
        self.leader_hint.is_some() && self.leader_contact.is_some_and(recent)
    }
}
