//! Membership changes on the node (the design is in `membership.rs`): the
//! leader's side of a change request, what a leader does when a
//! configuration commits (leave a joint one, step down if removed), keeping
//! its followers' progress in step with the configuration, and reporting
//! configuration changes to the driver.

use crate::canary::{on, Canary};
use crate::io::{Action, ChangeRefusal, TransferAbort};
use crate::membership::{Membership, MembershipChange};
use crate::message::Message;
use crate::node::RaftNode;
use crate::progress::Progress;
use crate::role::{LeaderState, RoleState};
use crate::shared::Shared;
use crate::types::{Entry, NodeId, Payload};

impl RaftNode {
    /// The caller asks this node to change the configuration.
    pub(crate) fn on_membership_change_requested(
        &mut self,
        id: u64,
        changes: Vec<MembershipChange>,
    ) {
        let RoleState::Leader(leader) = &mut self.role else {
            let reason = ChangeRefusal::NotLeader {
                leader_hint: self.shared.leader_hint,
            };
            self.shared
                .out
                .push(Action::RejectMembershipChange { id, reason });
            return;
        };
        if let Err(reason) = leader.propose_change(&mut self.shared, id, &changes) {
            self.shared
                .out
                .push(Action::RejectMembershipChange { id, reason });
        }
    }

    /// After every step: a leader acts on a configuration that committed
    /// (leaves a joint one, steps down if it is no longer a voter), and the
    /// driver hears of any change to the effective or committed
    /// configuration.
    pub(crate) fn follow_configuration(&mut self) {
        if let RoleState::Leader(leader) = &mut self.role {
            let s = &mut self.shared;
            let settled = s.configs.latest_index() <= s.commit_index;
            let latest = s.membership().clone();
            if settled && latest.is_joint() {
                // The joint entry committed: the leader leaves it itself.
                leader.append_configuration(s, latest.leave_joint());
            } else if settled && !latest.is_voter(s.config.id) {
                // The configuration that removed us committed: hand over to
                // the most up-to-date voter, if it is caught up, and go.
                let last = s.log.last_index();
                if let Some(target) = leader.most_up_to_date(s) {
                    if leader.progress[&target].match_index == last {
                        let term = s.hard.term;
                        leader.reads.forfeit_lease();
                        s.send(target, Message::TimeoutNow { term });
                    }
                }
                let term = s.hard.term;
                self.become_follower(term, None);
            }
        }
        let s = &mut self.shared;
        let effective = s.configs.latest();
        let committed = s.configs.at(s.commit_index);
        if (effective, committed) != (&s.reported.0, &s.reported.1) {
            s.reported = (effective.clone(), committed.clone());
            s.out.push(Action::MembershipChanged {
                effective: effective.clone(),
                committed: committed.clone(),
            });
        }
    }
}

impl LeaderState {
    /// Validate a change against the latest configuration and append it.
    fn propose_change(
        &mut self,
        s: &mut Shared,
        id: u64,
        changes: &[MembershipChange],
    ) -> Result<(), ChangeRefusal> {
        if self.transfer.is_some() {
            return Err(ChangeRefusal::TransferInProgress);
        }
        let ready = s.commit_index > self.term_start_index;
        if !ready && !on(Canary::ChangeBeforeOwnTermCommit) {
            if s.log.last_index() == self.term_start_index {
                // Nothing of our term to commit yet: give the next request
                // something to wait for.
                self.append_noop(s);
            }
            return Err(ChangeRefusal::LeaderNotReady);
        }
        let in_progress = s.configs.latest_index() > s.commit_index || s.membership().is_joint();
        if in_progress && !on(Canary::TwoChangesInFlight) {
            return Err(ChangeRefusal::ChangeInProgress);
        }
        let base = if s.membership().is_joint() {
            // Only reachable with the canary on.
            s.membership().leave_joint()
        } else {
            s.membership().clone()
        };
        let next = base.change(changes).map_err(ChangeRefusal::Invalid)?;
        let index = self.append_configuration(s, next.clone());
        let term = s.hard.term;
        s.out.push(Action::AcceptMembershipChange {
            id,
            index,
            term,
            membership: next,
        });
        Ok(())
    }

    /// Append a configuration entry (in force at once), track its members,
    /// and send it. Returns its index.
    pub(crate) fn append_configuration(&mut self, s: &mut Shared, next: Membership) -> u64 {
        let index = s.log.last_index() + 1;
        let term = s.hard.term;
        s.append_entry(Entry {
            index,
            term,
            payload: Payload::Membership(next),
        });
        self.sync_progress(s);
        self.replicate(s);
        // A configuration without other voters commits on our durability.
        self.maybe_commit(s);
        index
    }

    /// Append a no-op of the current term and send it.
    pub(crate) fn append_noop(&mut self, s: &mut Shared) {
        let index = s.log.last_index() + 1;
        let term = s.hard.term;
        s.append_entry(Entry {
            index,
            term,
            payload: Payload::Noop,
        });
        self.replicate(s);
    }

    /// Send every follower what it can take now.
    pub(crate) fn replicate(&mut self, s: &mut Shared) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(s, peer, false);
        }
    }

    /// One progress per member of the latest configuration (new members
    /// start probing at our last index + 1; departed ones are forgotten),
    /// and a transfer to a node that no longer votes ends.
    pub(crate) fn sync_progress(&mut self, s: &mut Shared) {
        let members = s.member_peers();
        let last = s.log.last_index();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(last));
        }
        if let Some(t) = self.transfer {
            if !s.membership().is_voter(t.target) {
                self.end_transfer(s, TransferAbort::TargetRemoved);
            }
        }
    }
}
