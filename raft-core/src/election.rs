//! Leader election (Raft paper §5.2, §5.4.1): randomized timeouts,
//! candidacy, voting with the election restriction, taking office.

use crate::message::{Message, RequestVote, RequestVoteReply};
use crate::node::{RaftNode, Role};
use crate::progress::Progress;
use crate::types::{HardState, NodeId};

impl RaftNode {
    /// The election timeout passed without word from a leader: stand for the
    /// next term. The vote for itself is durable before any request leaves.
    pub(crate) fn start_election(&mut self) {
        let Some(term) = self.hard.term.checked_add(1) else {
            // Term space exhausted (only reachable from a corrupt or hostile
            // stored term, since peers' messages at `u64::MAX` are dropped):
            // this node can never stand again, but it must not panic.
            self.reset_election_deadline();
            return;
        };
        self.hard = HardState {
            term,
            voted_for: Some(self.config.id),
        };
        self.pending.hard_state_dirty = true;
        self.role = Role::Candidate;
        self.leader_hint = None;
        self.progress.clear();
        self.votes.clear();
        self.votes.insert(self.config.id);
        self.reset_election_deadline();
        if self.votes.len() >= self.config.quorum() {
            // Alone in the cluster: no peer's grant (which comes only after
            // our RequestVote, sent once the vote is durable) vouches for the
            // vote, so it leads only once the vote is durable
            // (`on_persisted`). Leading sooner, a crash could lose the vote
            // and let it lead the same term again with another log.
            return;
        }
        let request = RequestVote {
            term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        let peers: Vec<NodeId> = self.config.peers().collect();
        for peer in peers {
            self.send_durable(peer, Message::RequestVote(request.clone()));
        }
    }

    /// Grant the vote if we have not voted for someone else this term and the
    /// candidate's log is at least as up-to-date as ours.
    pub(crate) fn on_request_vote(&mut self, from: NodeId, m: RequestVote) {
        let free = self.hard.voted_for.is_none_or(|v| v == from);
        let grant = self.role == Role::Follower
            && free
            && self.log.is_up_to_date(m.last_log_index, m.last_log_term);
        if grant {
            if self.hard.voted_for != Some(from) {
                self.hard.voted_for = Some(from);
                self.pending.hard_state_dirty = true;
            }
            // Granting a vote defers our own candidacy (Figure 2, Followers).
            self.reset_election_deadline();
        }
        if grant && crate::canary::on(crate::canary::Canary::VoteBeforePersist) {
            let reply = RequestVoteReply {
                term: self.hard.term,
                vote_granted: true,
            };
            self.send(from, Message::RequestVoteReply(reply));
            return;
        }
        let reply = RequestVoteReply {
            term: self.hard.term,
            vote_granted: grant,
        };
        self.send_durable(from, Message::RequestVoteReply(reply));
    }

    pub(crate) fn on_request_vote_reply(&mut self, from: NodeId, m: RequestVoteReply) {
        if self.role != Role::Candidate || !m.vote_granted {
            return;
        }
        self.votes.insert(from);
        if self.votes.len() >= self.config.quorum() {
            self.become_leader();
        }
    }

    /// Take office: every follower starts in `Probe` at our last index + 1,
    /// and an immediate heartbeat announces the new leader.
    pub(crate) fn become_leader(&mut self) {
        debug_assert_eq!(self.hard.voted_for, Some(self.config.id));
        self.role = Role::Leader;
        self.leader_hint = Some(self.config.id);
        self.votes.clear();
        let last = self.log.last_index();
        self.term_start_index = last;
        self.progress = self
            .config
            .peers()
            .map(|p| (p, Progress::new(last)))
            .collect();
        self.heartbeat_deadline = self.now + self.config.heartbeat_interval;
        self.quorum_deadline = self.now + self.config.election_timeout_max;
        if self.config.noop_on_election {
            let entry = crate::types::Entry {
                index: last + 1,
                term: self.hard.term,
                command: Vec::new(),
            };
            self.append_entry(entry);
        }
        self.broadcast_heartbeat();
        // A single-member cluster commits on its own durability.
        self.maybe_commit();
    }
}
