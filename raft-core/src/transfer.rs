//! Leadership transfer (Raft thesis §3.10).
//!
//! On `Event::LeadershipTransferRequested { to }` a leader picks the target
//! (`to`, or the voter with the highest match index, the lowest id among
//! equals), refuses if it is not the leader, the target is itself or not a
//! member, or a transfer is already in progress, and otherwise records the
//! transfer with a deadline one `election_timeout_max` away (in the timer
//! table). While it is in progress the leader refuses proposals
//! (`RejectReason::TransferInProgress`), so the target can catch up for good.
//! If the target's match index is the leader's last index, `TimeoutNow` goes
//! at once; otherwise the leader sends it an AppendEntries and sends
//! `TimeoutNow` when an acknowledgement shows it caught up.
//!
//! The transfer ends when its deadline passes (`TimedOut`: proposals are
//! taken again) or when the leader leaves office (`SteppedDown`, normally
//! because the target won the next term). Each step of the way is reported
//! as `Action::LeadershipTransfer`.
//!
//! A follower that receives `TimeoutNow` from the leader it follows in its
//! current term stands at once with `RaftNode::start_election`, skipping
//! pre-vote (the leader vouches that it is up to date, and the voters that
//! still hear from the leader would refuse a pre-vote). Any other
//! `TimeoutNow` (a stale term, not from the known leader, at a candidate) is
//! ignored.

use crate::io::{Action, TransferAbort, TransferOutcome};
use crate::message::Message;
use crate::node::RaftNode;
use crate::role::{LeaderState, RoleState, Transfer};
use crate::shared::Shared;
use crate::types::NodeId;

impl RaftNode {
    /// The caller asks this node to hand its leadership over.
    pub(crate) fn on_transfer_requested(&mut self, to: Option<NodeId>) {
        let RoleState::Leader(leader) = &mut self.role else {
            report(&mut self.shared, to, abort(TransferAbort::NotLeader));
            return;
        };
        leader.start_transfer(&mut self.shared, to);
    }

    /// `TimeoutNow` at a follower of the sender's term (older terms were
    /// dropped before dispatch; a newer one made us a follower with no known
    /// leader, so it is ignored below).
    pub(crate) fn on_timeout_now(&mut self, from: NodeId) {
        if self.shared.leader_hint == Some(from) && self.shared.is_voter() {
            self.start_election(true);
        }
    }
}

impl LeaderState {
    fn start_transfer(&mut self, s: &mut Shared, to: Option<NodeId>) {
        let Some(target) = to.or_else(|| self.most_up_to_date(s)) else {
            report(s, None, abort(TransferAbort::InvalidTarget));
            return;
        };
        if target == s.config.id || !s.membership().is_voter(target) {
            report(s, Some(target), abort(TransferAbort::InvalidTarget));
            return;
        }
        if self.transfer.is_some() {
            report(s, Some(target), abort(TransferAbort::InProgress));
            return;
        }
        self.transfer = Some(Transfer {
            target,
            timeout_now_sent: false,
        });
        s.timers.leader_mut().transfer = Some(s.now + s.config.election_timeout_max);
        report(s, Some(target), TransferOutcome::Started);
        let caught_up = self.progress[&target].match_index == s.log.last_index();
        if caught_up {
            self.maybe_send_timeout_now(s, target);
        } else {
            // A heartbeat-style send always sends something (entries when
            // the follower can take them).
            self.send_append(s, target, true);
        }
    }

    /// The voter (other than us) with the highest match index, the lowest
    /// id among equals.
    pub(crate) fn most_up_to_date(&self, s: &Shared) -> Option<NodeId> {
        let mut best: Option<(NodeId, crate::types::Index)> = None;
        let voters = s.membership();
        for (&id, pr) in self.progress.iter().filter(|(id, _)| voters.is_voter(**id)) {
            if best.is_none_or(|(_, m)| pr.match_index > m) {
                best = Some((id, pr.match_index));
            }
        }
        best.map(|(id, _)| id)
    }

    /// If `peer` is the transfer's target and its log now matches ours,
    /// send it `TimeoutNow` (once).
    pub(crate) fn maybe_send_timeout_now(&mut self, s: &mut Shared, peer: NodeId) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if transfer.target != peer || transfer.timeout_now_sent {
            return;
        }
        if self.progress[&peer].match_index != s.log.last_index() {
            return;
        }
        transfer.timeout_now_sent = true;
        let term = s.hard.term;
        self.reads.forfeit_lease();
        s.send(peer, Message::TimeoutNow { term });
        report(s, Some(peer), TransferOutcome::TimeoutNowSent);
    }

    /// End the transfer in progress, if any, for `why`.
    pub(crate) fn end_transfer(&mut self, s: &mut Shared, why: TransferAbort) {
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        s.timers.leader_mut().transfer = None;
        report(s, Some(transfer.target), abort(why));
    }
}

fn abort(why: TransferAbort) -> TransferOutcome {
    TransferOutcome::Aborted(why)
}

fn report(s: &mut Shared, to: Option<NodeId>, outcome: TransferOutcome) {
    s.out.push(Action::LeadershipTransfer { to, outcome });
}
