//! Log replication (Raft paper §5.3): proposals, AppendEntries on both sides,
//! fast conflict backtracking, and the commit rule of Figure 8.
//!
//! The leader's side is written on [`LeaderState`] (which holds the
//! followers' progress) with the shared state passed in; the follower's side
//! on [`Shared`].

use crate::io::{Action, RejectReason};
use crate::message::{AppendEntries, AppendEntriesReply, AppendOutcome, Message};
use crate::progress::ProgressState;
use crate::role::LeaderState;
use crate::shared::Shared;
use crate::types::{Entry, Index, NodeId};

impl LeaderState {
    /// A leader's messages of its own term: replies from its followers. A
    /// vote request is refused (it voted for itself); an AppendEntries or
    /// InstallSnapshot would come from a second leader of the term, which
    /// cannot exist: dropped.
    pub(crate) fn step(&mut self, s: &mut Shared, from: NodeId, message: Message) {
        match message {
            Message::RequestVote(m) => s.on_request_vote(from, m, false),
            Message::PreVote(m) => s.on_pre_vote(from, m, true),
            Message::AppendEntriesReply(m) => self.on_append_entries_reply(s, from, m),
            Message::InstallSnapshotReply(m) => self.on_install_snapshot_reply(s, from, m),
            Message::ReadRoundReply { round, .. } => self.on_read_round_reply(s, from, round),
            Message::ReadIndex { ctx, .. } => self.on_read_index(s, from, ctx),
            Message::ReadRound { .. } | Message::ReadIndexReply { .. } => {}
            Message::RequestVoteReply(_)
            | Message::PreVoteReply(_)
            | Message::AppendEntries(_)
            | Message::InstallSnapshot(_)
            | Message::TimeoutNow { .. } => {}
        }
    }

    /// A client command: the leader appends it and sends it at once to every
    /// follower that can take it (not on the next heartbeat).
    pub(crate) fn propose(&mut self, s: &mut Shared, id: u64, command: Vec<u8>) {
        // Only this term's entries count: older ones commit only once one of
        // ours does (Figure 8), so refusing proposals because of them could
        // leave a new leader unable to ever commit again.
        if self.transfer.is_some() {
            let reason = RejectReason::TransferInProgress;
            s.out.push(Action::RejectProposal { id, reason });
            return;
        }
        let uncommitted = s.log.last_index() - s.commit_index.max(self.term_start_index);
        if uncommitted >= s.config.max_uncommitted_entries {
            let reason = RejectReason::TooManyUncommitted;
            s.out.push(Action::RejectProposal { id, reason });
            return;
        }
        let index = s.log.last_index() + 1;
        let term = s.hard.term;
        s.append_entry(Entry::new(index, term, command));
        s.out.push(Action::AcceptProposal { id, index, term });
        self.replicate(s);
    }

    /// With `Config::notify_commit`: tell each follower in `Replicate` with
    /// nothing in flight of a commit index it has not been told of (a
    /// follower with an append in flight hears of it with the next one).
    pub(crate) fn notify_commit(&mut self, s: &mut Shared) {
        if !s.config.notify_commit {
            return;
        }
        let commit = s.commit_index;
        let due: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(id, pr)| {
                pr.state == ProgressState::Replicate
                    && pr.inflight.is_empty()
                    && self.commit_told.get(id).is_none_or(|&t| t < commit)
            })
            .map(|(&id, _)| id)
            .collect();
        for peer in due {
            self.commit_told.insert(peer, commit);
            self.send_append(s, peer, true);
        }
    }

    /// A heartbeat to every follower.
    pub(crate) fn broadcast_heartbeat(&mut self, s: &mut Shared) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(s, peer, true);
        }
    }

    /// Send `peer` what it needs next. `heartbeat` forces a message even when
    /// there is nothing new, so the follower hears from its leader and any
    /// lost append is detected (the follower rejects what it cannot attach).
    pub(crate) fn send_append(&mut self, s: &mut Shared, peer: NodeId, heartbeat: bool) {
        let last = s.log.last_index();
        let (state, next, paused, inflight) = {
            let pr = &self.progress[&peer];
            (pr.state, pr.next_index, pr.paused, pr.inflight.len())
        };
        if let ProgressState::Snapshot { .. } = state {
            // A transfer is in flight: only heartbeats, from our snapshot
            // (the follower rejects them until it installs one, and they
            // keep it from standing for election meanwhile).
            if heartbeat {
                s.send_append_from(peer, s.snapshot_meta().index + 1, false);
            }
            return;
        }
        let snap = s.snapshot_meta().index;
        if next - 1 < snap {
            // A snapshot only for a follower that answered since our last
            // message to it (a probe answered, a rejection): one that does
            // not answer gets probes from our snapshot on heartbeats, not a
            // transfer per compaction.
            let answered = state == ProgressState::Probe && !paused;
            if answered {
                self.send_snapshot(s, peer);
            } else {
                // Probe from our snapshot, so that the answer (a
                // rejection, until it installs one) is not taken as stale.
                let pr = self.progress.get_mut(&peer).expect("a progress per peer");
                pr.become_probe(snap + 1);
                pr.paused = true;
                if heartbeat {
                    s.send_append_from(peer, snap + 1, false);
                }
            }
            return;
        }
        let pr = self.progress.get_mut(&peer).expect("a progress per peer");
        match state {
            ProgressState::Probe if paused => {
                if heartbeat {
                    s.send_append_from(peer, next, false);
                }
            }
            ProgressState::Probe => {
                s.send_append_from(peer, next, true);
                pr.paused = true;
            }
            ProgressState::Replicate => {
                if next <= last && inflight < s.config.max_inflight_appends {
                    let sent_to = s.send_append_from(peer, next, true);
                    pr.next_index = sent_to + 1;
                    pr.inflight.push_back(sent_to);
                } else if heartbeat {
                    s.send_append_from(peer, next, false);
                }
            }
            ProgressState::Snapshot { .. } => unreachable!("handled above"),
        }
    }

    /// Advance the follower's progress on success, back up by a whole term
    /// per round trip on rejection.
    fn on_append_entries_reply(&mut self, s: &mut Shared, from: NodeId, m: AppendEntriesReply) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match m.outcome {
            AppendOutcome::Accepted { match_index } => {
                if match_index > s.log.last_index() {
                    return; // claims entries we never sent: drop
                }
                let news = pr.acknowledge(match_index);
                match pr.state {
                    ProgressState::Probe => {
                        pr.state = ProgressState::Replicate;
                        pr.next_index = pr.match_index + 1;
                        pr.inflight.clear();
                    }
                    ProgressState::Snapshot { index } if pr.match_index >= index => {
                        pr.become_probe(pr.match_index + 1);
                    }
                    _ => {}
                }
                if news {
                    self.maybe_commit(s);
                }
                self.send_append(s, from, false);
                self.maybe_send_timeout_now(s, from);
            }
            AppendOutcome::Rejected {
                rejected_prev,
                conflict_term,
                conflict_index,
            } => {
                let stale = match pr.state {
                    ProgressState::Probe => rejected_prev.checked_add(1) != Some(pr.next_index),
                    ProgressState::Replicate => rejected_prev < pr.match_index,
                    ProgressState::Snapshot { .. } => true,
                };
                if stale || rejected_prev == 0 || rejected_prev > s.log.last_index() {
                    return;
                }
                // Skip the follower's whole conflicting term: if we hold that
                // term, resume after our last entry of it; otherwise at the
                // first index the follower holds it.
                let hint = match conflict_term.and_then(|t| s.log.last_index_of_term(t)) {
                    Some(last_of_term) => last_of_term + 1,
                    None => conflict_index,
                };
                let next = hint.min(rejected_prev).max(1);
                pr.become_probe(next);
                self.send_append(s, from, false);
            }
        }
    }

    /// Commit the highest index stored on a majority, if it is from the
    /// current term (Figure 8: older entries commit only under a newer one).
    /// The leader counts its own log only as far as it is durable.
    pub(crate) fn maybe_commit(&self, s: &mut Shared) {
        let own = if crate::canary::on(crate::canary::Canary::AckBeforePersist) {
            s.log.last_index()
        } else {
            s.durable_index
        };
        let id = s.config.id;
        let acked = |v: NodeId| {
            if v == id {
                Some(own)
            } else {
                self.progress.get(&v).map(|p| p.match_index)
            }
        };
        let candidate = if crate::canary::on(crate::canary::Canary::JointCommitOnOneMajority) {
            s.voters.incoming().committed_index(acked)
        } else if crate::canary::on(crate::canary::Canary::RemovedLeaderCountsItself)
            && !s.voters.voters().contains(&id)
        {
            let m = s.membership();
            let mut voters: Vec<NodeId> = m.voters.iter().copied().collect();
            voters.push(id);
            let with_self = crate::quorum::JointConfig::new(
                crate::quorum::MajorityConfig::new(voters),
                crate::quorum::MajorityConfig::new(m.outgoing.iter().copied()),
            );
            with_self.committed_index(acked)
        } else if crate::canary::on(crate::canary::Canary::LearnerCountsForCommit) {
            let m = s.membership();
            let with_learners = crate::quorum::JointConfig::new(
                crate::quorum::MajorityConfig::new(m.voters.iter().chain(&m.learners).copied()),
                crate::quorum::MajorityConfig::new(m.outgoing.iter().copied()),
            );
            with_learners.committed_index(acked)
        } else {
            s.voters.committed_index(acked)
        };
        let current_term = s.log.term_at(candidate) == Some(s.hard.term)
            || crate::canary::on(crate::canary::Canary::CommitOlderTermByCounting);
        if candidate > s.commit_index && current_term {
            s.commit_index = candidate;
        }
    }
}

impl Shared {
    /// Send an AppendEntries whose entries start at `next` (none if
    /// `with_entries` is false). Returns the last index it carries.
    fn send_append_from(&mut self, peer: NodeId, next: Index, with_entries: bool) -> Index {
        let prev_log_index = next - 1;
        let prev_log_term = self.log.term_at(prev_log_index).expect("prev is held");
        let entries = if with_entries {
            self.log.entries_from(
                next,
                self.config.max_entries_per_append,
                self.config.max_append_bytes,
            )
        } else {
            Vec::new()
        };
        let last = prev_log_index + entries.len() as u64;
        let message = AppendEntries {
            term: self.hard.term,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
        };
        self.send(peer, Message::AppendEntries(message));
        last
    }

    /// A follower's messages of the current term: it votes, and takes the
    /// leader's entries and snapshots. Replies answer requests it sent in an
    /// earlier role: dropped.
    pub(crate) fn step_follower(&mut self, from: NodeId, message: Message) {
        match message {
            Message::RequestVote(m) => self.on_request_vote(from, m, true),
            Message::PreVote(m) => self.on_pre_vote(from, m, false),
            Message::AppendEntries(m) => self.on_append_entries(from, m),
            Message::InstallSnapshot(m) => self.on_install_snapshot(from, m),
            Message::ReadRound { round, .. } => self.on_read_round(from, round),
            Message::ReadIndexReply { ctx, index, .. } => self.on_read_index_reply(ctx, index),
            // Only a leader serves reads: the follower that sent it will
            // give up on it after an election timeout.
            Message::ReadIndex { ctx, .. } => {
                let term = self.hard.term;
                let reply = Message::ReadIndexReply {
                    term,
                    ctx,
                    index: None,
                };
                self.send_durable(from, reply);
            }
            Message::ReadRoundReply { .. } => {}
            Message::RequestVoteReply(_)
            | Message::PreVoteReply(_)
            | Message::AppendEntriesReply(_)
            | Message::InstallSnapshotReply(_) => {}
            // `RaftNode::on_message` hands it to `RaftNode::on_timeout_now`.
            Message::TimeoutNow { .. } => {}
        }
    }

    /// Follower side: check that the log holds `prev`, drop any conflicting
    /// suffix, append what is new, and acknowledge once it is durable.
    fn on_append_entries(&mut self, from: NodeId, mut m: AppendEntries) {
        if !well_formed(&m) {
            return; // not from a correct leader: drop
        }
        self.leader_hint = Some(from);
        self.reset_election_deadline();
        let term = self.hard.term;
        let snap = self.snapshot_meta();
        // Entries up to our snapshot are committed and agree with the leader's.
        if m.prev_log_index < snap.index {
            // A correct leader holds our snapshot's last entry; the rest of
            // its entries continue from that term, not from `prev_log_term`.
            if m.entries
                .iter()
                .any(|e| e.index == snap.index && e.term != snap.term)
            {
                return; // not from a correct leader: drop
            }
            let skip = (snap.index - m.prev_log_index) as usize;
            m.entries.drain(..skip.min(m.entries.len()));
            m.prev_log_index = snap.index;
            m.prev_log_term = snap.term;
        }
        let prev = m.prev_log_index;
        match self.log.term_at(prev) {
            None => {
                let outcome = AppendOutcome::Rejected {
                    rejected_prev: prev,
                    conflict_term: None,
                    conflict_index: self.log.last_index() + 1,
                };
                let reply = AppendEntriesReply { term, outcome };
                self.send_durable(from, Message::AppendEntriesReply(reply));
                return;
            }
            Some(t) if t != m.prev_log_term => {
                let outcome = AppendOutcome::Rejected {
                    rejected_prev: prev,
                    conflict_term: Some(t),
                    conflict_index: self.log.first_index_of_term_at(prev),
                };
                let reply = AppendEntriesReply { term, outcome };
                self.send_durable(from, Message::AppendEntriesReply(reply));
                return;
            }
            Some(_) => {}
        }
        let match_index = prev + m.entries.len() as u64;
        for entry in m.entries {
            match self.log.term_at(entry.index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    if entry.index <= self.commit_index {
                        return; // would truncate committed entries: not from a real leader
                    }
                    self.truncate_log(entry.index);
                    self.append_entry(entry);
                }
                None => self.append_entry(entry),
            }
        }
        let new_commit = m.leader_commit.min(match_index);
        if new_commit > self.commit_index {
            self.commit_index = new_commit;
        }
        let reply = AppendEntriesReply {
            term,
            outcome: AppendOutcome::Accepted { match_index },
        };
        self.send_durable(from, Message::AppendEntriesReply(reply));
    }
}

/// An AppendEntries a correct leader could have sent: its entries continue
/// `prev_log_index` one by one, with terms that never decrease, never below
/// the previous entry's and never above the message's own term.
pub(crate) fn well_formed(m: &AppendEntries) -> bool {
    if m.prev_log_term > m.term {
        return false;
    }
    // The last entry's index must be representable.
    let fits = u64::try_from(m.entries.len())
        .ok()
        .and_then(|n| m.prev_log_index.checked_add(n))
        .is_some();
    if !fits {
        return false;
    }
    let mut term = m.prev_log_term;
    for (offset, e) in (1..).zip(m.entries.iter()) {
        if e.index != m.prev_log_index + offset || e.term < term || e.term > m.term {
            return false;
        }
        term = e.term;
    }
    true
}
