//! The sans-IO KV server node: a `RaftNode` and a `KvStore`, plus the client
//! requests waiting for their log entry to be applied.
//!
//! A request becomes a log entry on the leader. When that index is applied
//! the waiting client gets the outcome; if a different entry lands there, or
//! this node loses leadership or moves to a new term first, the client is
//! told `WrongLeader` and retries elsewhere (the session table makes the retry
//! safe). Gets go through the log too, so a minority or deposed leader never
//! answers one.
//!
//! When `max_raft_state` is set and the driver reports that the encoded Raft
//! state has reached it, the server snapshots the store (with its sessions)
//! and lets Raft compact its log. With `None` it never snapshots.

use std::collections::{BTreeMap, VecDeque};

use raft_core::{
    Action, DurableState, Event, Index, Instant, Message, NodeId, Persist, RaftNode, RejectReason,
    Term,
};

use crate::command::{Command, Reply};
use crate::store::KvStore;
use crate::Error;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The Raft node's configuration.
    pub raft: raft_core::Config,
    /// Snapshot once the encoded Raft state reaches this many bytes; `None`:
    /// never (the lab's `maxraftstate = -1`).
    pub max_raft_state: Option<usize>,
    /// The bound on the session table (see [`KvStore`]).
    pub max_sessions: usize,
}

impl ServerConfig {
    /// Defaults around a Raft configuration.
    /// Turns on the no-op entry at the start of each term (the store ignores
    /// it), so a new leader commits what its predecessor left without
    /// waiting for a client; and pre-vote (`raft_core::Config::pre_vote`),
    /// so a server that was cut off, or is too stale to win, does not
    /// depose a working leader by raising the term.
    pub fn new(mut raft: raft_core::Config, max_raft_state: Option<usize>) -> Self {
        raft.noop_on_election = true;
        raft.pre_vote = true;
        ServerConfig {
            raft,
            max_raft_state,
            max_sessions: crate::store::DEFAULT_MAX_SESSIONS,
        }
    }
}

/// An input to the server.
#[derive(Clone, Debug)]
pub enum ServerEvent {
    /// A Raft peer's message arrived.
    MessageReceived {
        /// The sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// The timer set by the last `SetTimer` fired.
    TimerFired,
    /// Every `Persist` up to `upto` is durable, and the encoded Raft state
    /// (what the lab calls `RaftStateSize`) is now `raft_state_bytes`.
    Persisted {
        /// The highest durable persist id.
        upto: u64,
        /// The size of the stored Raft state, excluding the snapshot.
        raft_state_bytes: usize,
    },
    /// A client request; answered later by a `Reply` with the same `id`.
    RequestReceived {
        /// The driver's id for this request.
        id: u64,
        /// The command.
        command: Command,
    },
}

/// An output of the server. Execute in order, like Raft's actions.
#[derive(Clone, Debug)]
pub enum ServerAction {
    /// Send to a peer now.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Write durably, then send `then_send` and report `Persisted`.
    Persist(Persist),
    /// Arm the timer.
    SetTimer {
        /// When to report `TimerFired`.
        deadline: Instant,
    },
    /// Answer the request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
}

#[derive(Clone, Debug)]
struct Waiting {
    id: u64,
    client: u64,
    seq: u64,
    term: Term,
}

/// A KV replica.
#[derive(Debug)]
pub struct KvServer {
    raft: RaftNode,
    store: KvStore,
    max_raft_state: Option<usize>,
    raft_state_bytes: usize,
    waiting: BTreeMap<Index, Waiting>,
    proposals: BTreeMap<u64, (u64, Command)>,
    next_proposal: u64,
    /// The term this node led at the last staleness check, if it led.
    leading_term: Option<Term>,
}

impl KvServer {
    /// A server booting for the first time.
    pub fn new(config: ServerConfig, seed: u64) -> Result<Self, Error> {
        Self::recover(config, seed, DurableState::default(), None)
    }

    /// A server restarting from its stored Raft state and snapshot.
    pub fn recover(
        config: ServerConfig,
        seed: u64,
        durable: DurableState,
        snapshot: Option<Vec<u8>>,
    ) -> Result<Self, Error> {
        let mut store = KvStore::new(config.max_sessions);
        if let Some(bytes) = snapshot.as_deref().filter(|b| !b.is_empty()) {
            store.restore(bytes)?;
        }
        let raft = RaftNode::recover(config.raft, seed, durable, snapshot)?;
        Ok(KvServer {
            raft,
            store,
            max_raft_state: config.max_raft_state,
            raft_state_bytes: 0,
            waiting: BTreeMap::new(),
            proposals: BTreeMap::new(),
            next_proposal: 0,
            leading_term: None,
        })
    }

    /// The Raft node (for queries such as `term()` and `is_leader()`).
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// The store.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// How many requests wait for their entry to apply.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The planted stale read (`canary::Canary::LocalGetOnLeader`): a Get
    /// answered from the local store by whoever thinks it leads, skipping
    /// the log. `None` (always, without the `canaries` feature) lets the
    /// request take its real path.
    fn canary_local_get(&self, event: &ServerEvent) -> Option<Vec<ServerAction>> {
        if !crate::canary::on(crate::canary::Canary::LocalGetOnLeader) {
            return None;
        }
        let ServerEvent::RequestReceived { id, command } = event else {
            return None;
        };
        let crate::command::Op::Get { key } = &command.op else {
            return None;
        };
        // Only for known clients, so that a first request that skips the
        // log does not later read as an expired session: the bug to catch is
        // the stale read.
        if !self.raft.is_leader() || !self.store.has_session(command.client) {
            return None;
        }
        let value = self.store.get(key).unwrap_or_default().to_string();
        let reply = Reply::Applied(crate::command::Outcome::Value(value));
        Some(vec![ServerAction::Reply { id: *id, reply }])
    }

    /// Feeds one event at `now`; returns what to do, in order.
    #[must_use = "the actions must be executed"]
    pub fn step(&mut self, now: Instant, event: ServerEvent) -> Result<Vec<ServerAction>, Error> {
        if let Some(planted) = self.canary_local_get(&event) {
            return Ok(planted);
        }
        let mut out = Vec::new();
        let raft_event = match event {
            ServerEvent::MessageReceived { from, message } => {
                Event::MessageReceived { from, message }
            }
            ServerEvent::TimerFired => Event::TimerFired,
            ServerEvent::Persisted {
                upto,
                raft_state_bytes,
            } => {
                self.raft_state_bytes = raft_state_bytes;
                Event::Persisted { upto }
            }
            ServerEvent::RequestReceived { id, command } => {
                self.next_proposal += 1;
                let proposal = self.next_proposal;
                let bytes = postcard::to_allocvec(&command).expect("commands encode");
                self.proposals.insert(proposal, (id, command));
                Event::ProposalReceived {
                    id: proposal,
                    command: bytes,
                }
            }
        };
        self.step_raft(now, raft_event, &mut out)?;
        self.release_if_deposed(&mut out);
        debug_assert!(
            self.proposals.is_empty(),
            "every proposal is answered in its step"
        );
        Ok(out)
    }

    /// Feeds `event` straight to the Raft node and handles its actions like
    /// any step's: for what the service does not request itself yet
    /// (membership changes and leadership transfers, which the simulator's
    /// chaos draws). Client commands go through
    /// [`ServerEvent::RequestReceived`]; `event` must not be a proposal.
    #[must_use = "the actions must be executed"]
    pub fn step_raft_event(
        &mut self,
        now: Instant,
        event: Event,
    ) -> Result<Vec<ServerAction>, Error> {
        assert!(
            !matches!(event, Event::ProposalReceived { .. }),
            "client commands go through ServerEvent::RequestReceived"
        );
        let mut out = Vec::new();
        self.step_raft(now, event, &mut out)?;
        self.release_if_deposed(&mut out);
        Ok(out)
    }

    fn step_raft(
        &mut self,
        now: Instant,
        event: Event,
        out: &mut Vec<ServerAction>,
    ) -> Result<(), Error> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.raft.step(now, event)? {
                match action {
                    Action::Send { to, message } => out.push(ServerAction::Send { to, message }),
                    Action::Persist(p) => out.push(ServerAction::Persist(p)),
                    Action::SetTimer { deadline } => out.push(ServerAction::SetTimer { deadline }),
                    Action::Apply { entries } => {
                        for entry in entries {
                            // A no-op or configuration entry carries no command.
                            self.apply(entry.index, entry.command().unwrap_or_default(), out);
                        }
                        if let Some(event) = self.snapshot_if_due() {
                            queue.push_back(event);
                        }
                    }
                    Action::ApplySnapshot { snapshot } => {
                        self.store.restore(&snapshot.data)?;
                        let covered: Vec<Index> = self
                            .waiting
                            .range(..=snapshot.meta.index)
                            .map(|(&i, _)| i)
                            .collect();
                        for index in covered {
                            let w = self.waiting.remove(&index).expect("listed");
                            out.push(self.wrong_leader(w.id));
                        }
                    }
                    Action::AcceptProposal { id, index, term } => {
                        let (rid, command) = self.proposals.remove(&id).expect("our proposal");
                        let w = Waiting {
                            id: rid,
                            client: command.client,
                            seq: command.seq,
                            term,
                        };
                        if let Some(old) = self.waiting.insert(index, w) {
                            out.push(self.wrong_leader(old.id));
                        }
                    }
                    // The service requests no transfers or membership
                    // changes yet (issue 12 item 8).
                    Action::LeadershipTransfer { .. }
                    | Action::AcceptMembershipChange { .. }
                    | Action::RejectMembershipChange { .. }
                    | Action::MembershipChanged { .. } => {}
                    Action::RejectProposal { id, reason } => {
                        let (rid, _) = self.proposals.remove(&id).expect("our proposal");
                        let leader_hint = match reason {
                            RejectReason::NotLeader { leader_hint } => leader_hint,
                            RejectReason::TooManyUncommitted => Some(self.raft.id()),
                            // Leadership is moving to a node the client
                            // will find by trying the others.
                            RejectReason::TransferInProgress => None,
                        };
                        out.push(ServerAction::Reply {
                            id: rid,
                            reply: Reply::WrongLeader { leader_hint },
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, index: Index, bytes: &[u8], out: &mut Vec<ServerAction>) {
        let command: Option<Command> = postcard::from_bytes(bytes).ok();
        let outcome = command.as_ref().map(|c| self.store.apply(index, c));
        if let Some(w) = self.waiting.remove(&index) {
            match (command, outcome) {
                (Some(c), Some(outcome)) if c.client == w.client && c.seq == w.seq => {
                    out.push(ServerAction::Reply {
                        id: w.id,
                        reply: Reply::Applied(outcome),
                    });
                }
                // Another leader's entry took this index.
                _ => out.push(self.wrong_leader(w.id)),
            }
        }
    }

    /// Snapshot when the stored Raft state has reached `max_raft_state` and
    /// something was applied since the last snapshot.
    fn snapshot_if_due(&mut self) -> Option<Event> {
        let max = self.max_raft_state?;
        let applied = self.raft.last_applied();
        if self.raft_state_bytes < max || applied <= self.raft.log().snapshot().index {
            return None;
        }
        // Unknown until the next Persisted report: don't snapshot again on a
        // stale size.
        self.raft_state_bytes = 0;
        Some(Event::SnapshotTaken {
            index: applied,
            data: self.store.snapshot(),
        })
    }

    /// A request can only be answered by the leader of the term it was
    /// proposed in: if that is no longer us, let the client move on.
    fn release_if_deposed(&mut self, out: &mut Vec<ServerAction>) {
        let (leader, term) = (self.raft.is_leader(), self.raft.term());
        // Requests wait only on a leader, tagged with its term: while it stays
        // leader of that term nothing can go stale, so skip the scan.
        if leader && self.leading_term == Some(term) {
            return;
        }
        self.leading_term = leader.then_some(term);
        let stale: Vec<Index> = self
            .waiting
            .iter()
            .filter(|(_, w)| !leader || w.term != term)
            .map(|(&i, _)| i)
            .collect();
        for index in stale {
            let w = self.waiting.remove(&index).expect("listed");
            out.push(self.wrong_leader(w.id));
        }
    }

    fn wrong_leader(&self, id: u64) -> ServerAction {
        let leader_hint = self.raft.leader_hint().filter(|&l| l != self.raft.id());
        ServerAction::Reply {
            id,
            reply: Reply::WrongLeader { leader_hint },
        }
    }
}
