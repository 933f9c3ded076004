//! The Raft node: construction, the `step` entry point, the term handled
//! once and then one dispatch by role, role transitions, queries, and the
//! invariants checked after every step.
//!
//! What every role shares is in `shared.rs`; the role with its own state in
//! `role.rs`; elections in `election.rs`, replication in `replication.rs`,
//! snapshots in `snapshot.rs`.

use std::collections::VecDeque;

use crate::config::Config;
use crate::configs::Configs;
use crate::io::{Action, DurableState, Event, RejectReason};
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::message::Message;
use crate::progress::Progress;
use crate::quorum::VoteResult;
use crate::rng::SplitMix64;
use crate::role::{Role, RoleState};
use crate::shared::{PendingWrite, Shared};
use crate::time::Instant;
use crate::timers::Timers;
use crate::types::{HardState, Index, NodeId, Payload, Term};
use crate::Error;

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
/// - `LeadershipTransfer`: what became of a `LeadershipTransferRequested`
///   (informational; nothing to execute).
/// - `AcceptMembershipChange` / `RejectMembershipChange`: answer a
///   `MembershipChangeRequested`.
/// - `MembershipChanged`: the effective or committed configuration changed;
///   connect to every member of either (and drop the others if you like).
///
/// The node never reads a clock, a file or the network, and draws randomness
/// only from the generator seeded at construction: the same inputs give the
/// same outputs.
#[derive(Debug)]
pub struct RaftNode {
    pub(crate) shared: Shared,
    pub(crate) role: RoleState,
}

impl RaftNode {
    /// A node booting for the first time, with an empty log.
    pub fn new(config: Config, seed: u64) -> Result<Self, Error> {
        Self::recover(config, seed, DurableState::default())
    }

    /// A node restarting from what its driver loaded from storage: the
    /// durable image built from its `Persist` actions (the service restores
    /// itself from the snapshot it names, which the driver holds). Give every
    /// incarnation of a node its own `seed` (from entropy, or a simulation's
    /// generator): besides its election timeouts, it picks where the
    /// numbering of the reads it forwards starts, so that a reply to a read
    /// forwarded by an earlier incarnation cannot answer a later one.
    pub fn recover(config: Config, seed: u64, durable: DurableState) -> Result<Self, Error> {
        config.validate()?;
        use crate::DurableStateError as E;
        let bad = Error::InvalidDurableState;
        let meta = durable.snapshot.clone().unwrap_or_default();
        let config_entries: Vec<(Index, Membership)> = durable
            .entries
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Membership(m) => Some((e.index, m.clone())),
                Payload::Command(_) | Payload::Noop => None,
            })
            .collect();
        let initial = Membership::with_voters(config.members.iter().copied());
        let configs = Configs::new(initial, &meta, config_entries);
        let log =
            RaftLog::restore(meta.clone(), durable.entries).ok_or(bad(E::LogNotConsecutive))?;
        if log.last_term() > durable.hard_state.term {
            return Err(bad(E::LogTermAfterCurrentTerm));
        }
        let durable_index = log.last_index();
        let shared = Shared {
            rng: SplitMix64::new(seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            voters: configs.latest().quorum(),
            reported: (configs.latest().clone(), configs.at(meta.index).clone()),
            configs,
            config,
            now: Instant::ZERO,
            started: false,
            started_at: crate::time::Instant::ZERO,
            hard: durable.hard_state,
            log,
            leader_hint: None,
            leader_contact: None,
            forwarded: crate::read::Forwarded::new(seed),
            commit_index: meta.index,
            last_applied: meta.index,
            timers: Timers::default(),
            next_persist_id: 1,
            unpersisted: VecDeque::new(),
            durable_index,
            out: Vec::new(),
            pending: PendingWrite::default(),
            pending_apply_snapshot: None,
        };
        Ok(RaftNode {
            shared,
            role: RoleState::Follower,
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
        if self.shared.started && now < self.shared.now {
            return Err(Error::TimeWentBackwards {
                now,
                last: self.shared.now,
            });
        }
        self.validate_event(&event)?;
        let before = (self.shared.hard, self.role(), self.shared.log.last_index());
        self.shared.now = now;
        if !self.shared.started {
            self.shared.started = true;
            self.shared.started_at = now;
            self.shared.reset_election_deadline();
        }
        match event {
            Event::MessageReceived { from, message } => self.on_message(from, message),
            Event::ProposalReceived { id, command } => self.on_proposal(id, command),
            Event::TimerFired => {}
            Event::Persisted { upto } => self.on_persisted(upto),
            Event::SnapshotTaken { index } => self.shared.on_snapshot_taken(index),
            Event::SnapshotSendEnded { to, term, index } => {
                if let RoleState::Leader(leader) = &mut self.role {
                    leader.on_snapshot_send_ended(&mut self.shared, to, term, index);
                }
            }
            Event::LeadershipTransferRequested { to } => self.on_transfer_requested(to),
            Event::MembershipChangeRequested { id, changes } => {
                self.on_membership_change_requested(id, changes)
            }
            Event::ReadRequested { id, mode } => self.on_read_requested(id, mode),
        }
        self.on_time_passed();
        self.follow_configuration();
        self.shared.expire_forwarded_reads();
        if let RoleState::Leader(leader) = &mut self.role {
            // A commit of our term's first entry lets waiting reads go on.
            leader.advance_reads(&mut self.shared);
            leader.notify_commit(&mut self.shared);
        }
        self.shared.flush();
        self.check_invariants(before);
        Ok(std::mem::take(&mut self.shared.out))
    }

    fn validate_event(&self, event: &Event) -> Result<(), Error> {
        match *event {
            Event::Persisted { upto } if upto >= self.shared.next_persist_id => {
                Err(Error::UnknownPersist { id: upto })
            }
            Event::SnapshotTaken { index } if index > self.shared.last_applied => {
                Err(Error::SnapshotBeyondApplied {
                    index,
                    applied: self.shared.last_applied,
                })
            }
            _ => Ok(()),
        }
    }

    // ----- queries -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.config.id
    }
    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }
    /// The current term.
    pub fn term(&self) -> Term {
        self.shared.hard.term
    }
    /// Who it voted for in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.shared.hard.voted_for
    }
    /// Its role in the current term.
    pub fn role(&self) -> Role {
        self.role.role()
    }
    /// True if it is the leader of the current term.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }
    /// The leader of the current term, as far as it knows.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.shared.leader_hint
    }
    /// The highest index it knows to be committed.
    pub fn commit_index(&self) -> Index {
        self.shared.commit_index
    }
    /// The highest index it has handed to the service.
    pub fn last_applied(&self) -> Index {
        self.shared.last_applied
    }
    /// Its log (snapshot boundary and entries).
    pub fn log(&self) -> &RaftLog {
        &self.shared.log
    }
    /// The boundary of a snapshot through `index`: its term and the
    /// configuration in force there (what a driver writes in the snapshot
    /// file's header). `None` unless the log holds `index` (the snapshot's
    /// own last index counts).
    pub fn snapshot_meta_at(&self, index: Index) -> Option<crate::SnapshotMeta> {
        let term = self.shared.log.term_at(index)?;
        Some(crate::SnapshotMeta {
            index,
            term,
            membership: self.shared.configs.at(index).clone(),
        })
    }
    /// The highest log index known to be durable locally.
    pub fn durable_index(&self) -> Index {
        self.shared.durable_index
    }
    /// The latest configuration in its log: the one in force (possibly not
    /// yet committed). Before the log records one, the initial
    /// `Config::members` (empty for a node that joins a running cluster).
    pub fn membership(&self) -> &Membership {
        self.shared.membership()
    }
    /// The latest configuration at or below its commit index.
    pub fn committed_membership(&self) -> &Membership {
        self.shared.committed_membership()
    }
    /// True if it votes in its latest configuration (in either half of a
    /// joint one): only voters stand for election.
    pub fn is_voter(&self) -> bool {
        self.shared.is_voter()
    }
    /// The leader's view of a follower's replication (leaders only). A
    /// learner's `match_index` tells the caller when it has caught up
    /// enough to promote.
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        match &self.role {
            RoleState::Leader(leader) => leader.progress.get(&peer),
            _ => None,
        }
    }
    /// The deadline the driver's timer is armed for: the earliest deadline of
    /// the current role (a follower's or candidate's election deadline, a
    /// leader's next heartbeat, quorum check or transfer deadline). Between
    /// steps it is always the deadline of the last `SetTimer` returned.
    /// `None` before the first step, which arms the first timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.shared
            .started
            .then(|| self.shared.timers.next_deadline())
    }
    /// The `now` of the latest step (the epoch before the first).
    pub fn now(&self) -> Instant {
        self.shared.now
    }

    // ----- the term once, then one dispatch by role ----------------------

    /// Handle the term once, then dispatch by role (etcd-io/raft's `Step`,
    /// then `stepLeader` / `stepCandidate` / `stepFollower`).
    fn on_message(&mut self, from: NodeId, message: Message) {
        if from == self.shared.config.id {
            return; // not a peer: drop
        }
        // A leader's messages are taken from anyone (a node that joined
        // later than our latest configuration may lead now; a term has at
        // most one leader). The rest are dropped from a node outside our
        // latest configuration while a leader works (we lead, or heard from
        // ours within the minimum election timeout), so a removed node
        // cannot disturb us. Without a working leader they are taken: our
        // configuration may be behind (we missed the entry that added the
        // sender), or the sender may still be needed for a change to
        // commit, and it may need our vote (thesis §4.2.2: servers vote for
        // candidates outside their latest configuration). A node that
        // knows no configuration yet takes everything.
        let known = &self.shared.membership().voters;
        let leader_message = matches!(
            message,
            Message::AppendEntries(_) | Message::InstallSnapshot(_) | Message::TimeoutNow { .. }
        );
        let leader_works = self.is_leader() || self.shared.leader_is_sticky();
        if !leader_message
            && leader_works
            && !known.is_empty()
            && !self.shared.membership().contains(from)
        {
            return;
        }
        if let Message::RequestVote(m) = &message {
            if self.shared.ignores_vote_request(m, self.is_leader()) {
                // Leader stickiness (`Config::sticky_votes`): neither the
                // term nor a vote, and no answer.
                return;
            }
        }
        let term = message.term();
        if term == Term::MAX {
            // No correct node reaches the last term (it could never hold an
            // election after it); adopting it would wedge this node: drop.
            return;
        }
        // A pre-vote and its grant carry a term nobody holds yet (the
        // pre-candidate's + 1): a question, never adopted (etcd-io/raft
        // `Step`, the `MsgPreVote` cases). A refusal carries the voter's own
        // term and is adopted like any other.
        if term > self.shared.hard.term && !message.is_pre_vote_question() {
            let leader = match message {
                Message::AppendEntries(_) | Message::InstallSnapshot(_) => Some(from),
                _ => None,
            };
            self.become_follower(term, leader);
        }
        let stale_append_accepted = matches!(message, Message::AppendEntries(_))
            && crate::canary::on(crate::canary::Canary::AcceptStaleAppend);
        if term < self.shared.hard.term && !stale_append_accepted {
            // A pre-vote from an older term is refused with our term
            // (etcd#8243), so a pre-candidate left behind catches up.
            self.shared.reply_stale(from, &message);
            return;
        }
        if from_a_leader(&message) && term == self.shared.hard.term {
            // Leader stickiness: what pre-vote grants are measured against.
            self.shared.leader_contact = Some(self.shared.now);
            // A candidate or pre-candidate that hears from a leader of its
            // term follows it.
            if matches!(
                self.role,
                RoleState::Candidate { .. } | RoleState::PreCandidate { .. }
            ) {
                self.become_follower(term, Some(from));
            }
        }
        match &mut self.role {
            RoleState::Follower => {
                if let Message::TimeoutNow { .. } = message {
                    self.on_timeout_now(from);
                } else {
                    self.shared.step_follower(from, message);
                }
            }
            RoleState::PreCandidate { votes, candidacy } => {
                use crate::election::{step_pre_candidate, PreCandidacy};
                match step_pre_candidate(&mut self.shared, votes, candidacy, from, message) {
                    PreCandidacy::Asking => {}
                    PreCandidacy::Stand => self.start_election(false),
                    PreCandidacy::Lead => self.become_leader(),
                }
            }
            RoleState::Candidate { votes } => {
                if step_candidate(&mut self.shared, votes, from, message) {
                    self.become_leader();
                }
            }
            RoleState::Leader(leader) => leader.step(&mut self.shared, from, message),
        }
    }

    /// A client command: only a leader takes it.
    fn on_proposal(&mut self, id: u64, command: Vec<u8>) {
        match &mut self.role {
            RoleState::Leader(leader) => leader.propose(&mut self.shared, id, command),
            RoleState::Follower | RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                let reason = RejectReason::NotLeader {
                    leader_hint: self.shared.leader_hint,
                };
                self.shared.out.push(Action::RejectProposal { id, reason });
            }
        }
    }

    /// A read: a leader takes it, a follower forwards it to its leader
    /// (`read.rs`).
    fn on_read_requested(&mut self, id: u64, mode: crate::ReadMode) {
        match &mut self.role {
            RoleState::Leader(leader) => leader.on_read_requested(&mut self.shared, id, mode),
            RoleState::Follower => self.shared.forward_read(id, true),
            RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                self.shared.forward_read(id, false)
            }
        }
    }

    fn on_persisted(&mut self, upto: u64) {
        self.shared.mark_durable(upto);
        // A lone candidate's own vote is now durable: it wins.
        if let RoleState::Candidate { votes } = &self.role {
            let won = self.shared.voters.vote_result(|v| votes.get(&v).copied()) == VoteResult::Won;
            if won && self.shared.unpersisted.is_empty() {
                self.become_leader();
            }
        }
        if let RoleState::Leader(leader) = &self.role {
            leader.maybe_commit(&mut self.shared);
        }
    }

    /// Deadlines that passed: a leader's quorum check and heartbeat, a
    /// follower's or candidate's election.
    fn on_time_passed(&mut self) {
        let now = self.shared.now;
        match &mut self.role {
            RoleState::Leader(leader) => {
                let timers = *self.shared.timers.leader_mut();
                if now >= timers.check_quorum && !leader.check_quorum(&mut self.shared) {
                    let term = self.shared.hard.term;
                    self.become_follower(term, None);
                    return;
                }
                if timers.transfer.is_some_and(|t| now >= t) {
                    leader.end_transfer(&mut self.shared, crate::TransferAbort::TimedOut);
                }
                if now >= timers.heartbeat {
                    self.shared.timers.leader_mut().heartbeat =
                        now + self.shared.config.heartbeat_interval;
                    leader.broadcast_heartbeat(&mut self.shared);
                    leader.resend_read_round(&mut self.shared);
                    leader.renew_lease(&mut self.shared);
                }
            }
            RoleState::Follower | RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                if now >= self.shared.timers.election && !self.shared.may_stand() {
                    // A learner, a removed node or one that knows no
                    // configuration yet never stands (`Shared::may_stand`).
                    self.shared.reset_election_deadline();
                    if !matches!(self.role, RoleState::Follower) {
                        self.role = RoleState::Follower;
                    }
                } else if now >= self.shared.timers.election {
                    if self.shared.config.pre_vote {
                        self.start_pre_vote();
                    } else {
                        self.start_election(false);
                    }
                }
            }
        }
    }

    // ----- role transitions ------------------------------------------------

    /// Adopt `term` (if newer) as a follower of `leader`. Leaving another
    /// role drops its state and draws a new election deadline.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.shared.adopt_term(term);
        if let RoleState::Leader(state) = &mut self.role {
            state.end_transfer(&mut self.shared, crate::TransferAbort::SteppedDown);
            state.reads.fail_all(&mut self.shared, leader);
        }
        if !matches!(self.role, RoleState::Follower) {
            self.role = RoleState::Follower;
            self.shared.timers.unlead();
            self.shared.reset_election_deadline();
        }
        self.shared.leader_hint = leader;
    }

    // ----- invariants -------------------------------------------------------

    /// The invariants of design.md §2, checked after every step. Each assert
    /// names one fact.
    fn check_invariants(&self, (hard_before, role_before, last_before): (HardState, Role, Index)) {
        let s = &self.shared;
        assert!(s.hard.term >= hard_before.term, "term never decreases");
        if s.hard.term == hard_before.term && hard_before.voted_for.is_some() {
            assert_eq!(
                s.hard.voted_for, hard_before.voted_for,
                "at most one vote per term"
            );
        }
        assert!(s.commit_index <= s.log.last_index(), "commit <= last index");
        assert!(s.last_applied <= s.commit_index, "applied <= commit");
        assert!(
            s.log.snapshot().index <= s.last_applied,
            "snapshot <= applied"
        );
        assert!(
            s.durable_index <= s.log.last_index(),
            "durable <= last index"
        );
        assert!(
            s.log.last_term() <= s.hard.term,
            "no entry from a future term"
        );
        assert_eq!(
            s.timers.leader.is_some(),
            self.is_leader(),
            "leader deadlines exist exactly while leading"
        );
        if let RoleState::Leader(leader) = &self.role {
            assert!(
                leader.progress.keys().copied().eq(s.member_peers()),
                "a leader tracks exactly the other members of its configuration"
            );
            assert_eq!(
                leader.transfer.is_some(),
                s.timers.leader.is_some_and(|t| t.transfer.is_some()),
                "a transfer has a deadline exactly while it is in progress"
            );
        }
        if self.is_leader() {
            assert_eq!(
                s.hard.voted_for,
                Some(s.config.id),
                "a leader voted for itself"
            );
            assert_eq!(s.leader_hint, Some(s.config.id), "a leader knows it leads");
            if role_before == Role::Leader && hard_before.term == s.hard.term {
                assert!(
                    s.log.last_index() >= last_before,
                    "a leader never truncates its log"
                );
            }
        }
    }
}

/// A message only the leader of its term sends, and well formed enough that
/// a follower would act on it (a malformed one leaves a candidate as it is).
fn from_a_leader(message: &Message) -> bool {
    match message {
        Message::AppendEntries(m) => crate::replication::well_formed(m),
        Message::InstallSnapshot(m) => crate::snapshot::well_formed(m),
        Message::ReadRound { .. } => true,
        _ => false,
    }
}

/// A candidate's messages: it counts votes, and refuses to vote for another
/// (it voted for itself). Returns true when the election is won.
fn step_candidate(
    shared: &mut Shared,
    votes: &mut std::collections::BTreeMap<NodeId, bool>,
    from: NodeId,
    message: Message,
) -> bool {
    match message {
        Message::RequestVote(m) => {
            shared.on_request_vote(from, m, false);
            false
        }
        Message::RequestVoteReply(m) => crate::election::count_vote(shared, votes, from, m),
        Message::PreVote(m) => {
            shared.on_pre_vote(from, m, false);
            false
        }
        // A well-formed AppendEntries or InstallSnapshot of our term made us
        // a follower before dispatch; what is left is malformed. Replies are
        // to requests of an earlier role.
        Message::AppendEntries(_)
        | Message::InstallSnapshot(_)
        | Message::AppendEntriesReply(_)
        | Message::InstallSnapshotReply(_)
        | Message::PreVoteReply(_) => false,
        // Only a follower of the sender's term acts on it.
        Message::TimeoutNow { .. } => false,
        // A round of our term made us a follower before dispatch; a reply
        // answers a round of an earlier role. Only a leader serves reads.
        Message::ReadRound { .. }
        | Message::ReadRoundReply { .. }
        | Message::ReadIndex { .. }
        | Message::ReadIndexReply { .. } => false,
    }
}
