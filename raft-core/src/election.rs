//! Leader election (Raft paper §5.2, §5.4.1): randomized timeouts,
//! candidacy, counting votes, taking office. Answering a vote request is
//! shared by every role (`Shared::on_request_vote`).

use std::collections::BTreeMap;

use crate::message::{Message, RequestVote, RequestVoteReply};
use crate::node::RaftNode;
use crate::progress::Progress;
use crate::quorum::VoteResult;
use crate::role::{LeaderState, RoleState};
use crate::shared::Shared;
use crate::types::{HardState, NodeId};

impl RaftNode {
    /// The election timeout passed without word from a leader: stand for the
    /// next term. The vote for itself is durable before any request leaves.
    pub(crate) fn start_election(&mut self) {
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
        let request = RequestVote {
            term,
            last_log_index: s.log.last_index(),
            last_log_term: s.log.last_term(),
        };
        let peers: Vec<NodeId> = s.config.peers().collect();
        for peer in peers {
            s.send_durable(peer, Message::RequestVote(request.clone()));
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
            progress: s.config.peers().map(|p| (p, Progress::new(last))).collect(),
            term_start_index: last,
        };
        s.timers.lead(
            s.now + s.config.heartbeat_interval,
            s.now + s.config.election_timeout_max,
        );
        if s.config.noop_on_election {
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
