//! Log replication (Raft paper §5.3): proposals, AppendEntries on both sides,
//! fast conflict backtracking, and the commit rule of Figure 8.

use crate::io::{Action, RejectReason};
use crate::message::{AppendEntries, AppendEntriesReply, AppendOutcome, Message};
use crate::node::{RaftNode, Role};
use crate::progress::{quorum_index, ProgressState};
use crate::types::{Entry, Index, NodeId};

impl RaftNode {
    /// A client command: a leader appends it and sends it at once to every
    /// follower that can take it (not on the next heartbeat).
    pub(crate) fn on_proposal(&mut self, id: u64, command: Vec<u8>) {
        if self.role != Role::Leader {
            let reason = RejectReason::NotLeader {
                leader_hint: self.leader_hint,
            };
            self.out.push(Action::RejectProposal { id, reason });
            return;
        }
        // Only this term's entries count: older ones commit only once one of
        // ours does (Figure 8), so refusing proposals because of them could
        // leave a new leader unable to ever commit again.
        let uncommitted = self.log.last_index() - self.commit_index.max(self.term_start_index);
        if uncommitted >= self.config.max_uncommitted_entries {
            let reason = RejectReason::TooManyUncommitted;
            self.out.push(Action::RejectProposal { id, reason });
            return;
        }
        let index = self.log.last_index() + 1;
        let term = self.hard.term;
        self.append_entry(Entry {
            index,
            term,
            command,
        });
        self.out.push(Action::AcceptProposal { id, index, term });
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, false);
        }
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, true);
        }
    }

    /// Send `peer` what it needs next. `heartbeat` forces a message even when
    /// there is nothing new, so the follower hears from its leader and any
    /// lost append is detected (the follower rejects what it cannot attach).
    pub(crate) fn send_append(&mut self, peer: NodeId, heartbeat: bool) {
        let last = self.log.last_index();
        let (state, next, paused, inflight) = {
            let pr = &self.progress[&peer];
            (pr.state, pr.next_index, pr.paused, pr.inflight.len())
        };
        if let ProgressState::Snapshot { .. } = state {
            if heartbeat {
                self.send_snapshot(peer);
            }
            return;
        }
        if next - 1 < self.snapshot_meta().index {
            self.send_snapshot(peer);
            return;
        }
        match state {
            ProgressState::Probe if paused => {
                if heartbeat {
                    self.send_append_from(peer, next, false);
                }
            }
            ProgressState::Probe => {
                self.send_append_from(peer, next, true);
                self.progress.get_mut(&peer).unwrap().paused = true;
            }
            ProgressState::Replicate => {
                if next <= last && inflight < self.config.max_inflight_appends {
                    let sent_to = self.send_append_from(peer, next, true);
                    let pr = self.progress.get_mut(&peer).unwrap();
                    pr.next_index = sent_to + 1;
                    pr.inflight.push_back(sent_to);
                } else if heartbeat {
                    self.send_append_from(peer, next, false);
                }
            }
            ProgressState::Snapshot { .. } => unreachable!("handled above"),
        }
    }

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

    /// Follower side: check that the log holds `prev`, drop any conflicting
    /// suffix, append what is new, and acknowledge once it is durable.
    pub(crate) fn on_append_entries(&mut self, from: NodeId, mut m: AppendEntries) {
        if !well_formed(&m) {
            return; // not from a correct leader: drop
        }
        match self.role {
            Role::Leader => return, // a second leader in our term: impossible, drop
            Role::Candidate => self.become_follower(m.term, Some(from)),
            Role::Follower => self.leader_hint = Some(from),
        }
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

    /// Leader side: advance the follower's progress on success, back up by a
    /// whole term per round trip on rejection.
    pub(crate) fn on_append_entries_reply(&mut self, from: NodeId, m: AppendEntriesReply) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match m.outcome {
            AppendOutcome::Accepted { match_index } => {
                if match_index > self.log.last_index() {
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
                    self.maybe_commit();
                }
                self.send_append(from, false);
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
                if stale || rejected_prev == 0 || rejected_prev > self.log.last_index() {
                    return;
                }
                // Skip the follower's whole conflicting term: if we hold that
                // term, resume after our last entry of it; otherwise at the
                // first index the follower holds it.
                let hint = match conflict_term.and_then(|t| self.log.last_index_of_term(t)) {
                    Some(last_of_term) => last_of_term + 1,
                    None => conflict_index,
                };
                let next = hint.min(rejected_prev).max(1);
                let pr = self.progress.get_mut(&from).unwrap();
                pr.become_probe(next);
                self.send_append(from, false);
            }
        }
    }

    /// Commit the highest index stored on a majority, if it is from the
    /// current term (Figure 8: older entries commit only under a newer one).
    /// The leader counts its own log only as far as it is durable.
    pub(crate) fn maybe_commit(&mut self) {
        let mut matches: Vec<Index> = self.progress.values().map(|p| p.match_index).collect();
        matches.push(
            if crate::canary::on(crate::canary::Canary::AckBeforePersist) {
                self.log.last_index()
            } else {
                self.durable_index
            },
        );
        let candidate = quorum_index(&matches);
        let current_term = self.log.term_at(candidate) == Some(self.hard.term)
            || crate::canary::on(crate::canary::Canary::CommitOlderTermByCounting);
        if candidate > self.commit_index && current_term {
            self.commit_index = candidate;
        }
    }
}

/// An AppendEntries a correct leader could have sent: its entries continue
/// `prev_log_index` one by one, with terms that never decrease, never below
/// the previous entry's and never above the message's own term.
fn well_formed(m: &AppendEntries) -> bool {
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
