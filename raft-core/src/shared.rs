//! What every role shares: the persistent state, the volatile state common to
//! all roles, the timer table, durability tracking, and the output being
//! assembled during one step.
//!
//! Role-specific state lives in [`crate::role::RoleState`]; the functions
//! here never look at the role. Invariants: `pending` holds exactly the
//! changes made during the current step that are not yet in a `Persist`;
//! `unpersisted` lists, oldest first, the writes handed out and not yet
//! reported durable, each with the last log index it makes durable.

use std::collections::VecDeque;

use crate::config::Config;
use crate::configs::Configs;
use crate::io::{Action, Persist};
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::message::{AppendEntriesReply, AppendOutcome, InstallSnapshotReply, Message};
use crate::message::{RequestVote, RequestVoteReply};
use crate::quorum::JointConfig;
use crate::rng::SplitMix64;
use crate::time::Instant;
use crate::timers::Timers;
use crate::types::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};

/// A durable write being assembled during one step.
#[derive(Debug, Default)]
pub(crate) struct PendingWrite {
    pub(crate) hard_state_dirty: bool,
    pub(crate) snapshot: Option<SnapshotMeta>,
    pub(crate) truncate_from: Option<Index>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) then_send: Vec<(NodeId, Message)>,
}

impl PendingWrite {
    fn changes_state(&self) -> bool {
        self.hard_state_dirty
            || self.snapshot.is_some()
            || self.truncate_from.is_some()
            || !self.entries.is_empty()
    }
}

/// The state of a node that does not depend on its role.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The configurations of the log: the latest is in force.
    pub(crate) configs: Configs,
    /// The latest configuration's quorums: a majority of its voters, and
    /// during a joint change a majority of the outgoing voters too. Kept in
    /// step with `configs` by `sync_voters`.
    pub(crate) voters: JointConfig,
    /// The (effective, committed) configurations last reported in
    /// `Action::MembershipChanged` (or known at construction).
    pub(crate) reported: (Membership, Membership),
    pub(crate) rng: SplitMix64,
    /// The time of the current (or latest) step.
    pub(crate) now: Instant,
    /// False until the first step.
    pub(crate) started: bool,
    /// The time of the first step (sticky votes count from it too).
    pub(crate) started_at: Instant,

    // Persistent state (Figure 2), mirrored in memory.
    pub(crate) hard: HardState,
    pub(crate) log: RaftLog,

    // Volatile state.
    pub(crate) leader_hint: Option<NodeId>,
    /// When a leader of the current term last reached us (a well-formed
    /// AppendEntries or InstallSnapshot): pre-votes are refused within the
    /// minimum election timeout of it (leader stickiness, thesis §9.6).
    pub(crate) leader_contact: Option<Instant>,
    pub(crate) commit_index: Index,
    pub(crate) last_applied: Index,
    /// Reads forwarded to the leader, waiting for its answer (`read.rs`).
    pub(crate) forwarded: crate::read::Forwarded,
    pub(crate) timers: Timers,

    // Durability tracking.
    pub(crate) next_persist_id: u64,
    pub(crate) unpersisted: VecDeque<(u64, Index)>,
    pub(crate) durable_index: Index,

    // Per-step output.
    pub(crate) out: Vec<Action>,
    pub(crate) pending: PendingWrite,
    pub(crate) pending_apply_snapshot: Option<SnapshotMeta>,
}

impl Shared {
    /// A request for a vote (or a pre-vote) in `term`, naming our last log
    /// entry for the voter's up-to-date check; `transfer`: the election
    /// follows the leader's `TimeoutNow`.
    pub(crate) fn vote_request(&self, term: Term, transfer: bool) -> RequestVote {
        RequestVote {
            term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        }
    }

    /// Adopt `term` if it is newer, forgetting the vote (which was cast in an
    /// older term).
    pub(crate) fn adopt_term(&mut self, term: Term) {
        if term > self.hard.term {
            let keep = crate::canary::on(crate::canary::Canary::KeepVoteOnNewTerm);
            self.hard = HardState {
                term,
                voted_for: if keep { self.hard.voted_for } else { None },
            };
            self.pending.hard_state_dirty = true;
        }
    }

    /// Draw a new randomized election deadline (the node's only use of its
    /// generator).
    pub(crate) fn reset_election_deadline(&mut self) {
        let min = self.config.election_timeout_min.as_nanos() as u64;
        let max = self.config.election_timeout_max.as_nanos() as u64;
        let timeout = self.rng.range(min, max);
        self.timers.election = self.now + core::time::Duration::from_nanos(timeout);
    }

    /// A request from an older term gets our term back, so its sender steps
    /// down; stale replies are dropped.
    pub(crate) fn reply_stale(&mut self, to: NodeId, message: &Message) {
        let term = self.hard.term;
        let reply = match message {
            Message::RequestVote(_) => Message::RequestVoteReply(RequestVoteReply {
                term,
                vote_granted: false,
            }),
            Message::PreVote(_) => Message::PreVoteReply(RequestVoteReply {
                term,
                vote_granted: false,
            }),
            Message::AppendEntries(m) => Message::AppendEntriesReply(AppendEntriesReply {
                term,
                outcome: AppendOutcome::Rejected {
                    rejected_prev: m.prev_log_index,
                    conflict_term: None,
                    conflict_index: 0,
                },
            }),
            // Index 0 acknowledges nothing: the sender may lead our (newer)
            // term by the time this arrives, and must not take it for an
            // install it never got.
            Message::InstallSnapshot(_) => Message::InstallSnapshotReply(InstallSnapshotReply {
                term,
                last_included_index: 0,
            }),
            Message::ReadRound { round, .. } => Message::ReadRoundReply {
                term,
                round: *round,
            },
            Message::ReadIndex { ctx, .. } => Message::ReadIndexReply {
                term,
                ctx: *ctx,
                index: None,
            },
            _ => return,
        };
        self.send_durable(to, reply);
    }

    /// Answer a vote request of the current term. Only a follower may grant
    /// (`may_grant`): a candidate or leader has voted for itself. A grant
    /// needs that we have not voted for someone else this term, that the
    /// candidate's log is at least as up-to-date as ours (§5.4.1), and,
    /// with sticky votes, that no leader reached us within the minimum
    /// election timeout (`Shared::refuses_votes`).
    pub(crate) fn on_request_vote(&mut self, from: NodeId, m: RequestVote, may_grant: bool) {
        let free = self.hard.voted_for.is_none_or(|v| v == from);
        let grant = may_grant
            && free
            && !self.refuses_votes(&m)
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

    /// Send a message whose meaning rests on durable state (a vote, an
    /// acknowledgement): if anything is not yet durable, it rides in the
    /// `then_send` of a write (possibly an empty barrier) so that it leaves
    /// only after every earlier write is durable.
    pub(crate) fn send_durable(&mut self, to: NodeId, message: Message) {
        if self.pending.changes_state() || !self.unpersisted.is_empty() {
            self.pending.then_send.push((to, message));
        } else {
            self.out.push(Action::Send { to, message });
        }
    }

    /// Send a message that may leave before local writes are durable.
    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        self.out.push(Action::Send { to, message });
    }

    /// Drop log entries from `from` on, here and in the durable image. Only
    /// a follower's handlers call it (a leader never truncates its own log,
    /// which `check_invariants` asserts).
    pub(crate) fn truncate_log(&mut self, from: Index) {
        assert!(
            from > self.commit_index,
            "committed entries are never truncated"
        );
        self.log.truncate_from(from);
        self.configs.truncate(from);
        self.sync_voters();
        self.pending.entries.retain(|e| e.index < from);
        self.pending.truncate_from = Some(self.pending.truncate_from.map_or(from, |t| t.min(from)));
        self.lower_durable_index(from - 1);
    }

    /// What is durable can only be what the log still holds.
    pub(crate) fn lower_durable_index(&mut self, to: Index) {
        self.durable_index = self.durable_index.min(to);
        for (_, last) in self.unpersisted.iter_mut() {
            *last = (*last).min(to);
        }
    }

    /// Append an entry to the log and to the pending write.
    pub(crate) fn append_entry(&mut self, entry: Entry) {
        if let crate::types::Payload::Membership(m) = &entry.payload {
            self.configs.append(entry.index, m.clone());
            self.sync_voters();
        }
        self.log.append(entry.clone());
        self.pending.entries.push(entry);
    }

    /// Every write with an id `<= upto` is durable.
    pub(crate) fn mark_durable(&mut self, upto: u64) {
        while let Some(&(id, last)) = self.unpersisted.front() {
            if id > upto {
                break;
            }
            self.unpersisted.pop_front();
            self.durable_index = last;
        }
    }

    /// Assemble the step's output: the durable write (with the messages that
    /// wait for it), then what the service may apply, then the timer.
    pub(crate) fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending.changes_state() || !pending.then_send.is_empty() {
            let id = self.next_persist_id;
            self.next_persist_id += 1;
            self.unpersisted.push_back((id, self.log.last_index()));
            self.out.push(Action::Persist(Persist {
                id,
                hard_state: pending.hard_state_dirty.then_some(self.hard),
                snapshot: pending.snapshot,
                truncate_from: pending.truncate_from,
                entries: pending.entries,
                then_send: pending.then_send,
            }));
        }
        if let Some(meta) = self.pending_apply_snapshot.take() {
            self.out.push(Action::ApplySnapshot { meta });
        }
        let apply_to = if crate::canary::on(crate::canary::Canary::ApplyUncommitted) {
            self.durable_index
        } else {
            self.commit_index.min(self.durable_index)
        };
        if apply_to > self.last_applied {
            let entries = self.log.slice(self.last_applied + 1, apply_to).to_vec();
            assert_eq!(
                entries.len() as u64,
                apply_to - self.last_applied,
                "applied entries must be held"
            );
            self.last_applied = apply_to;
            self.out.push(Action::Apply { entries });
        }
        if let Some(deadline) = self.timers.take_changed() {
            self.out.push(Action::SetTimer { deadline });
        }
    }

    /// The snapshot boundary of the log.
    pub(crate) fn snapshot_meta(&self) -> &SnapshotMeta {
        self.log.snapshot()
    }

    /// Recompute the quorums from the latest configuration.
    pub(crate) fn sync_voters(&mut self) {
        self.voters = self.configs.latest().quorum();
    }

    /// The latest configuration in the log.
    pub(crate) fn membership(&self) -> &Membership {
        self.configs.latest()
    }

    /// The latest configuration at or below the commit index.
    pub(crate) fn committed_membership(&self) -> &Membership {
        self.configs.at(self.commit_index)
    }

    /// Does this node vote in its latest configuration (in either half)?
    pub(crate) fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id)
    }

    /// May this node stand for election? A voter of its latest
    /// configuration may. So may a node that the latest configuration
    /// leaves out (or makes a learner) while that change is not known to
    /// be committed and the committed configuration still counts it
    /// (thesis §4.2.2: until the change commits it may still be needed; a
    /// leader that removed or demoted itself and crashed before its entry
    /// reached the others may hold the only log that can win, and those
    /// others, still in the old configuration, need its vote). A learner,
    /// a node whose removal it knows committed, and one that knows no
    /// configuration never stand.
    pub(crate) fn may_stand(&self) -> bool {
        let id = self.config.id;
        self.is_voter()
            || (self.configs.latest_index() > self.commit_index
                && self.committed_membership().is_voter(id))
    }

    /// The voters of the latest configuration other than this node.
    pub(crate) fn voter_peers(&self) -> Vec<NodeId> {
        let id = self.config.id;
        self.voters
            .voters()
            .into_iter()
            .filter(|&v| v != id)
            .collect()
    }

    /// Every member of the latest configuration other than this node:
    /// whom a leader replicates to.
    pub(crate) fn member_peers(&self) -> Vec<NodeId> {
        let id = self.config.id;
        self.membership()
            .members()
            .into_iter()
            .filter(|&v| v != id)
            .collect()
    }
}
