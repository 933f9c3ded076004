//! The Raft node: its state, the `step` entry point, term handling, output
//! assembly, and the invariants checked after every step.
//!
//! Role-specific logic lives in `election.rs`, `replication.rs` and
//! `snapshot.rs`; this file owns what every role shares.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::Config;
use crate::io::{Action, DurableState, Event, Persist};
use crate::log::RaftLog;
use crate::message::Message;
use crate::progress::Progress;
use crate::rng::SplitMix64;
use crate::time::Instant;
use crate::types::{Entry, HardState, Index, NodeId, Snapshot, SnapshotMeta, Term};
use crate::Error;

/// Which role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows the leader of the term (if any) and votes.
    Follower,
    /// Asks for votes to lead the term.
    Candidate,
    /// Accepts proposals and replicates the log.
    Leader,
}

/// A durable write being assembled during one step.
#[derive(Debug, Default)]
pub(crate) struct PendingWrite {
    pub(crate) hard_state_dirty: bool,
    pub(crate) snapshot: Option<Snapshot>,
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

/// One Raft peer as a deterministic state machine.
///
/// # Driving it
///
/// Build it with [`RaftNode::new`] (first boot) or [`RaftNode::recover`]
/// (restart from storage), then feed it [`Event`]s with [`RaftNode::step`],
/// always with a `now` that never goes backwards. Step it once right away
/// (for example with `Event::TimerFired`) to arm its election timer.
///
/// Each step returns [`Action`]s to execute **in order**:
/// - `Send`: hand to the transport now.
/// - `Persist`: write durably, after every earlier `Persist`; once durable,
///   send its `then_send` messages and step `Event::Persisted`. A driver may
///   keep stepping while a write is in flight (pipelining), but never reorders
///   writes among themselves.
/// - `Apply` / `ApplySnapshot`: give to the service, in order.
/// - `SetTimer`: arm the one timer; step `Event::TimerFired` when it passes.
/// - `AcceptProposal` / `RejectProposal`: answer a `ProposalReceived`.
///
/// The node never reads a clock, a file or the network, and draws randomness
/// only from the generator seeded at construction: the same inputs give the
/// same outputs.
#[derive(Debug)]
pub struct RaftNode {
    pub(crate) config: Config,
    pub(crate) rng: SplitMix64,
    pub(crate) now: Instant,
    /// The latest time seen; `None` before the first step.
    pub(crate) started: bool,

    // Persistent state (Figure 2), mirrored in memory.
    pub(crate) hard: HardState,
    pub(crate) log: RaftLog,
    pub(crate) snapshot_data: Option<Vec<u8>>,

    // Volatile state.
    pub(crate) role: Role,
    pub(crate) leader_hint: Option<NodeId>,
    pub(crate) commit_index: Index,
    /// A leader's last index when it took office: entries after it are its own.
    pub(crate) term_start_index: Index,
    pub(crate) last_applied: Index,
    pub(crate) votes: BTreeSet<NodeId>,
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) election_deadline: Instant,
    pub(crate) heartbeat_deadline: Instant,
    /// A leader's next check that a majority still answers it.
    pub(crate) quorum_deadline: Instant,
    reported_deadline: Option<Instant>,

    // Durability tracking: writes handed out but not yet reported durable,
    // each with the last log index it makes durable.
    next_persist_id: u64,
    pub(crate) unpersisted: VecDeque<(u64, Index)>,
    pub(crate) durable_index: Index,

    // Per-step output.
    pub(crate) out: Vec<Action>,
    pub(crate) pending: PendingWrite,
    pub(crate) pending_apply_snapshot: Option<Snapshot>,
}

impl RaftNode {
    /// A node booting for the first time, with an empty log.
    pub fn new(config: Config, seed: u64) -> Result<Self, Error> {
        Self::recover(config, seed, DurableState::default(), None)
    }

    /// A node restarting from what its driver loaded from storage: the
    /// durable image built from its `Persist` actions, and the bytes of the
    /// snapshot it names (required when it names one).
    pub fn recover(
        config: Config,
        seed: u64,
        durable: DurableState,
        snapshot_data: Option<Vec<u8>>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let bad = |why: &str| Error::InvalidDurableState(why.to_string());
        let meta = durable.snapshot.unwrap_or_default();
        if durable.snapshot.is_some() && snapshot_data.is_none() {
            return Err(bad(
                "the durable state names a snapshot but no snapshot bytes were given",
            ));
        }
        if let Some(v) = durable.hard_state.voted_for {
            if !config.members.contains(&v) {
                return Err(bad("voted for a node that is not a member"));
            }
        }
        let log = RaftLog::restore(meta, durable.entries).ok_or_else(|| {
            bad("log entries are not consecutive after the snapshot, or reach the last index")
        })?;
        if log.last_term() > durable.hard_state.term {
            return Err(bad("log holds a term newer than the current term"));
        }
        let durable_index = log.last_index();
        Ok(RaftNode {
            rng: SplitMix64::new(seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            config,
            now: Instant::ZERO,
            started: false,
            hard: durable.hard_state,
            log,
            snapshot_data: durable.snapshot.and(snapshot_data),
            role: Role::Follower,
            leader_hint: None,
            commit_index: meta.index,
            term_start_index: 0,
            last_applied: meta.index,
            votes: BTreeSet::new(),
            progress: BTreeMap::new(),
            election_deadline: Instant::ZERO,
            heartbeat_deadline: Instant::ZERO,
            quorum_deadline: Instant::ZERO,
            reported_deadline: None,
            next_persist_id: 1,
            unpersisted: VecDeque::new(),
            durable_index,
            out: Vec::new(),
            pending: PendingWrite::default(),
            pending_apply_snapshot: None,
        })
    }

    /// Feeds one event at time `now` and returns what to do, in order.
    ///
    /// Errors are misuse by the caller (time going backwards, a snapshot
    /// beyond what was applied, an unknown persist id); the node's state is
    /// unchanged when one is returned. Input from peers never errors: bad or
    /// stale messages are dropped.
    #[must_use = "the actions must be executed"]
    pub fn step(&mut self, now: Instant, event: Event) -> Result<Vec<Action>, Error> {
        if self.started && now < self.now {
            return Err(Error::TimeWentBackwards {
                now,
                last: self.now,
            });
        }
        self.validate_event(&event)?;
        let before = (self.hard, self.role, self.log.last_index());
        self.now = now;
        if !self.started {
            self.started = true;
            self.reset_election_deadline();
        }
        match event {
            Event::MessageReceived { from, message } => self.on_message(from, message),
            Event::ProposalReceived { id, command } => self.on_proposal(id, command),
            Event::TimerFired => {}
            Event::Persisted { upto } => self.on_persisted(upto),
            Event::SnapshotTaken { index, data } => self.on_snapshot_taken(index, data),
        }
        self.on_time_passed();
        self.flush();
        self.check_invariants(before);
        Ok(std::mem::take(&mut self.out))
    }

    fn validate_event(&self, event: &Event) -> Result<(), Error> {
        match *event {
            Event::Persisted { upto } if upto >= self.next_persist_id => {
                Err(Error::UnknownPersist { id: upto })
            }
            Event::SnapshotTaken { index, .. } if index > self.last_applied => {
                Err(Error::SnapshotBeyondApplied {
                    index,
                    applied: self.last_applied,
                })
            }
            _ => Ok(()),
        }
    }

    // ----- queries -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }
    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The current term.
    pub fn term(&self) -> Term {
        self.hard.term
    }
    /// Who it voted for in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.hard.voted_for
    }
    /// Its role in the current term.
    pub fn role(&self) -> Role {
        self.role
    }
    /// True if it is the leader of the current term.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    /// The leader of the current term, as far as it knows.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }
    /// The highest index it knows to be committed.
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }
    /// The highest index it has handed to the service.
    pub fn last_applied(&self) -> Index {
        self.last_applied
    }
    /// Its log (snapshot boundary and entries).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// The highest log index known to be durable locally.
    pub fn durable_index(&self) -> Index {
        self.durable_index
    }
    /// The latest snapshot's bytes, if any.
    pub fn snapshot_data(&self) -> Option<&[u8]> {
        self.snapshot_data.as_deref()
    }
    /// The leader's view of a follower's replication (leaders only).
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }

    // ----- shared mechanics ---------------------------------------------

    /// Handle the term once, then dispatch by role (etcd-io/raft's `Step`).
    fn on_message(&mut self, from: NodeId, message: Message) {
        if from == self.config.id || !self.config.members.contains(&from) {
            return; // not a peer: drop
        }
        let term = message.term();
        if term == Term::MAX {
            // No correct node reaches the last term (it could never hold an
            // election after it); adopting it would wedge this node: drop.
            return;
        }
        if term > self.hard.term {
            let leader = match message {
                Message::AppendEntries(_) | Message::InstallSnapshot(_) => Some(from),
                _ => None,
            };
            self.become_follower(term, leader);
        }
        let stale_append_accepted = matches!(message, Message::AppendEntries(_))
            && crate::canary::on(crate::canary::Canary::AcceptStaleAppend);
        if term < self.hard.term && !stale_append_accepted {
            self.reply_stale(from, &message);
            return;
        }
        match message {
            Message::RequestVote(m) => self.on_request_vote(from, m),
            Message::RequestVoteReply(m) => self.on_request_vote_reply(from, m),
            Message::AppendEntries(m) => self.on_append_entries(from, m),
            Message::AppendEntriesReply(m) => self.on_append_entries_reply(from, m),
            Message::InstallSnapshot(m) => self.on_install_snapshot(from, m),
            Message::InstallSnapshotReply(m) => self.on_install_snapshot_reply(from, m),
        }
    }

    /// A request from an older term gets our term back, so its sender steps
    /// down; stale replies are dropped.
    fn reply_stale(&mut self, to: NodeId, message: &Message) {
        let term = self.hard.term;
        let reply = match message {
            Message::RequestVote(_) => {
                Message::RequestVoteReply(crate::message::RequestVoteReply {
                    term,
                    vote_granted: false,
                })
            }
            Message::AppendEntries(m) => {
                Message::AppendEntriesReply(crate::message::AppendEntriesReply {
                    term,
                    outcome: crate::message::AppendOutcome::Rejected {
                        rejected_prev: m.prev_log_index,
                        conflict_term: None,
                        conflict_index: 0,
                    },
                })
            }
            Message::InstallSnapshot(m) => {
                Message::InstallSnapshotReply(crate::message::InstallSnapshotReply {
                    term,
                    last_included_index: m.last_included_index,
                })
            }
            _ => return,
        };
        self.send_durable(to, reply);
    }

    /// Adopt `term` (if newer) as a follower of `leader`.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.hard.term {
            let keep = crate::canary::on(crate::canary::Canary::KeepVoteOnNewTerm);
            self.hard = HardState {
                term,
                voted_for: if keep { self.hard.voted_for } else { None },
            };
            self.pending.hard_state_dirty = true;
        }
        if self.role != Role::Follower {
            self.role = Role::Follower;
            self.votes.clear();
            self.progress.clear();
            self.reset_election_deadline();
        }
        self.leader_hint = leader;
    }

    pub(crate) fn reset_election_deadline(&mut self) {
        let min = self.config.election_timeout_min.as_nanos() as u64;
        let max = self.config.election_timeout_max.as_nanos() as u64;
        let timeout = self.rng.range(min, max);
        self.election_deadline = self.now + core::time::Duration::from_nanos(timeout);
    }

    /// Deadlines that passed: a leader's heartbeat, a follower's election.
    fn on_time_passed(&mut self) {
        match self.role {
            Role::Leader => {
                if self.now >= self.quorum_deadline && !self.check_quorum() {
                    return;
                }
                if self.now >= self.heartbeat_deadline {
                    self.heartbeat_deadline = self.now + self.config.heartbeat_interval;
                    self.broadcast_heartbeat();
                }
            }
            Role::Follower | Role::Candidate => {
                if self.now >= self.election_deadline {
                    self.start_election();
                }
            }
        }
    }

    /// CheckQuorum (etcd-io/raft, Raft thesis §6.2): a leader that has not
    /// heard from a majority within the longest election timeout steps down,
    /// so a leader cut off in a minority stops taking requests it can never
    /// commit and its clients move on. Returns whether it is still leader.
    fn check_quorum(&mut self) -> bool {
        let active = 1 + self.progress.values().filter(|p| p.recent_active).count();
        if active < self.config.quorum() {
            let term = self.hard.term;
            self.become_follower(term, None);
            return false;
        }
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        self.quorum_deadline = self.now + self.config.election_timeout_max;
        true
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

    /// Drop log entries from `from` on, here and in the durable image.
    pub(crate) fn truncate_log(&mut self, from: Index) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader never truncates its own log"
        );
        assert!(
            from > self.commit_index,
            "committed entries are never truncated"
        );
        self.log.truncate_from(from);
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
        self.log.append(entry.clone());
        self.pending.entries.push(entry);
    }

    fn on_persisted(&mut self, upto: u64) {
        while let Some(&(id, last)) = self.unpersisted.front() {
            if id > upto {
                break;
            }
            self.unpersisted.pop_front();
            self.durable_index = last;
        }
        // A lone candidate's own vote is now durable: it wins.
        if self.role == Role::Candidate
            && self.unpersisted.is_empty()
            && self.votes.len() >= self.config.quorum()
        {
            self.become_leader();
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Assemble the step's output: the durable write (with the messages that
    /// wait for it), then what the service may apply, then the timer.
    fn flush(&mut self) {
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
        if let Some(snapshot) = self.pending_apply_snapshot.take() {
            self.out.push(Action::ApplySnapshot { snapshot });
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
        let deadline = match self.role {
            Role::Leader => self.heartbeat_deadline.min(self.quorum_deadline),
            Role::Follower | Role::Candidate => self.election_deadline,
        };
        if self.reported_deadline != Some(deadline) {
            self.reported_deadline = Some(deadline);
            self.out.push(Action::SetTimer { deadline });
        }
    }

    /// The invariants of design.md §2, checked after every step. Each assert
    /// names one fact.
    fn check_invariants(&self, (hard_before, role_before, last_before): (HardState, Role, Index)) {
        assert!(self.hard.term >= hard_before.term, "term never decreases");
        if self.hard.term == hard_before.term && hard_before.voted_for.is_some() {
            assert_eq!(
                self.hard.voted_for, hard_before.voted_for,
                "at most one vote per term"
            );
        }
        assert!(
            self.commit_index <= self.log.last_index(),
            "commit <= last index"
        );
        assert!(self.last_applied <= self.commit_index, "applied <= commit");
        assert!(
            self.log.snapshot().index <= self.last_applied,
            "snapshot <= applied"
        );
        assert!(
            self.durable_index <= self.log.last_index(),
            "durable <= last index"
        );
        assert!(
            self.log.last_term() <= self.hard.term,
            "no entry from a future term"
        );
        if self.role == Role::Leader {
            assert_eq!(
                self.hard.voted_for,
                Some(self.config.id),
                "a leader voted for itself"
            );
            assert_eq!(
                self.leader_hint,
                Some(self.config.id),
                "a leader knows it leads"
            );
            if role_before == Role::Leader && hard_before.term == self.hard.term {
                assert!(
                    self.log.last_index() >= last_before,
                    "a leader never truncates its log"
                );
            }
        }
    }

    /// The snapshot meta of the log, for convenience in sibling modules.
    pub(crate) fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.snapshot()
    }
}
