//! The sans-IO KV server node: a `RaftNode` and a `KvStore`, plus the client
//! requests waiting for their log entry to be applied.
//!
//! A request becomes a log entry on the leader. When that index is applied
//! the waiting client gets the outcome; if a different entry lands there, or
//! this node loses leadership or moves to a new term first, the client is
//! told `WrongLeader` and retries elsewhere (the session table makes the retry
//! safe). Gets are served without the log by default ([`ReadPolicy`]):
//! through a ReadIndex round (or the leader's lease) confirming that this
//! node still leads, then from the store once it has applied through the
//! read index, so a minority or deposed leader never answers one;
//! [`ReadPolicy::Log`] sends them through the log like writes. Sessionless
//! reads ([`ServerEvent::ReadReceived`]) never touch the log; with
//! [`ReadConsistency::Local`] they are answered from this node's state as it
//! is (possibly stale).
//!
//! Administrative requests ([`ServerEvent::AdminReceived`], see
//! [`crate::admin`]) change the membership, hand leadership over or list the
//! members; they are answered with [`Reply::Admin`]. A change is answered
//! once its configuration entry is applied, or refused with a reason.
//!
//! When `max_raft_state` is set and the driver reports that the encoded Raft
//! state has reached it, the server asks the driver to write a snapshot of
//! the store (with its sessions): [`ServerAction::TakeSnapshot`] hands over
//! a constant-time image ([`crate::KvImage`]) that the driver encodes and
//! makes durable off its event loop while the server goes on; once the
//! driver reports [`ServerEvent::SnapshotTaken`], Raft compacts its log. At
//! most one snapshot is in progress. With `None` it never snapshots.
//!
//! A leader's snapshot reaches a follower's driver as a stream beside its
//! `InstallSnapshot` header ([`ServerAction::SendSnapshot`]); the follower's
//! driver hands both over with [`KvServer::install_snapshot`], and the store
//! is restored from the stream if Raft installs it.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;

use raft_core::{
    Action, ChangeRefusal, DurableState, Entry, Event, Index, InstallSnapshot, Instant,
    MembershipChange, Message, NodeId, Payload, Persist, RaftNode, ReadMode, ReadRefusal,
    RejectReason, Term, TransferAbort, TransferOutcome,
};

use crate::admin::{
    AdminReply, AdminRequest, MemberAddrs, MemberInfo, MemberList, MemberRole, Refusal,
};
use crate::command::{Command, Logged, LoggedRef, OpRef, Reply};
use crate::store::{KvImage, KvStore};
use crate::Error;
use serde::{Deserialize, Serialize};

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
    /// Where this server listens, recorded in the member table so that
    /// other servers and clients can find it (`None`: never recorded, as in
    /// the simulated lab, where nodes are known by id only).
    pub addresses: Option<MemberAddrs>,
    /// How a Get is served ([`ReadPolicy::ReadIndex`] by default).
    pub read_policy: ReadPolicy,
    /// With [`ReadPolicy::ReadIndex`], a follower (or learner) serves a Get
    /// itself, forwarding the read to its leader for the read index
    /// (`raft_core`'s follower reads), instead of sending the client to the
    /// leader. Off by default: over lossy links a forwarded read whose
    /// request or answer is lost waits for the follower to give up on it
    /// (an election timeout), where a client sent to the leader retries at
    /// once; in the lab's unreliable KV tests that costs about a quarter of
    /// the operations. Turns on `raft_core::Config::notify_commit`, so a
    /// follower applies (and answers) without waiting for a heartbeat.
    pub follower_reads: bool,
}

/// How the service serves a Get. Every policy is linearizable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadPolicy {
    /// Through the log, like a write: replicated, made durable on a
    /// majority and applied.
    Log,
    /// ReadIndex (`raft_core::Event::ReadRequested`): the leader confirms
    /// it still leads with one round of messages acknowledged by a quorum,
    /// and the read is served from its state once applied through the read
    /// index; nothing is written. A client's first request goes through the
    /// log even if it is a Get, so that it has a session (a later write
    /// without one would read as an expired session).
    #[default]
    ReadIndex,
    /// As `ReadIndex`, but a leader whose lease holds answers at once, with
    /// no round (`raft_core::ReadMode::Lease`). Turns on
    /// `raft_core::Config::lease_reads` and `sticky_votes`, and so rests on
    /// the clock assumption documented there: every server of the cluster
    /// must run with this policy and with clocks whose rates stay within
    /// `raft_core::Config::max_clock_drift_ppm` of true time. Also what
    /// lets a [`ReadConsistency::Lease`] read use the lease.
    Lease,
}

/// How a read that carries no session ([`ServerEvent::ReadReceived`]) is
/// served. None of them writes anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Linearizable by ReadIndex: the leader confirms it still leads with a
    /// quorum round, and the value is read once applied through the read
    /// index (at the leader, or at a follower with follower reads). Rests
    /// on no clock.
    #[default]
    Linearizable,
    /// Linearizable by the leader's lease (no round while it holds), if the
    /// server runs [`ReadPolicy::Lease`]; otherwise served as
    /// `Linearizable`. Rests on bounded clock drift.
    Lease,
    /// This server's applied state as it is, with no contact with the
    /// leader: possibly stale (etcd's serializable reads), and a later read
    /// elsewhere may see an older value. Served by any server, even one
    /// cut off from the rest.
    Local,
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
            addresses: None,
            read_policy: ReadPolicy::default(),
            follower_reads: false,
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
    /// A read that carries no session (it changes nothing, so needs none):
    /// answered later by a `Reply` with the same `id`, `Applied(Value)` or
    /// `WrongLeader`. Never written to the log, whatever the read policy.
    ReadReceived {
        /// The driver's id for this request.
        id: u64,
        /// The key to read.
        key: String,
        /// How it is served.
        consistency: ReadConsistency,
    },
    /// An administrative request; answered later by a `Reply` with the same
    /// `id` carrying [`Reply::Admin`].
    AdminReceived {
        /// The driver's id for this request.
        id: u64,
        /// The request.
        request: AdminRequest,
    },
    /// The snapshot asked for by [`ServerAction::TakeSnapshot`] is durable
    /// (the driver holds it under `index`).
    SnapshotTaken {
        /// Its index.
        index: Index,
    },
    /// The transfer asked for by [`ServerAction::SendSnapshot`] ended,
    /// delivered or not (report each exactly once).
    SnapshotSendEnded {
        /// The follower.
        to: NodeId,
        /// The `InstallSnapshot`'s term.
        term: Term,
        /// Its index.
        index: Index,
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
    /// Write `image` as the snapshot through `index` (encode it with
    /// [`KvImage::write_to`], fsync it), off the event loop if you like,
    /// keeping it under `index`; then report [`ServerEvent::SnapshotTaken`].
    /// Not asked again until that report.
    TakeSnapshot {
        /// The last log index the snapshot covers.
        index: Index,
        /// The store at `index`.
        image: KvImage,
    },
    /// Stream the snapshot at `message.last_included_index` to `to`; its
    /// driver passes both to [`KvServer::install_snapshot`] once all of the
    /// bytes have arrived. Report the end with
    /// [`ServerEvent::SnapshotSendEnded`] (`raft_core::Action::SendSnapshot`).
    SendSnapshot {
        /// The follower.
        to: NodeId,
        /// The header.
        message: InstallSnapshot,
    },
}

#[derive(Clone, Debug)]
struct Waiting {
    id: u64,
    client: u64,
    seq: u64,
    term: Term,
}

/// A proposal handed to Raft, until it is accepted or rejected.
#[derive(Clone, Debug)]
enum Proposal {
    /// A client's command (the driver's request id).
    Client(u64, Command),
    /// An address record: for an admin request (`reply`), which may go on
    /// with a membership change once the record is applied; or (`reply`
    /// `None`) this leader recording its own addresses.
    Record {
        reply: Option<u64>,
        then: Option<MembershipChange>,
    },
}

/// An admin request waiting for its entry to apply.
#[derive(Clone, Debug)]
struct AdminWaiting {
    id: u64,
    term: Term,
    /// For a record: the membership change to ask for once it is applied.
    then: Option<MembershipChange>,
}

/// A KV replica.
#[derive(Debug)]
pub struct KvServer {
    raft: RaftNode,
    store: KvStore,
    raft_state_bytes: usize,
    waiting: BTreeMap<Index, Waiting>,
    proposals: BTreeMap<u64, Proposal>,
    next_proposal: u64,
    /// The term this node led at the last staleness check, if it led.
    leading_term: Option<Term>,
    /// This server's own addresses, to record.
    addresses: Option<MemberAddrs>,
    /// The term in which this leader proposed its own record.
    recorded_in: Option<Term>,
    /// Admin requests waiting for the entry at an index to apply.
    admin_waiting: BTreeMap<Index, AdminWaiting>,
    /// Membership change requests handed to Raft: our id -> the admin id.
    changes: BTreeMap<u64, u64>,
    /// The transfer request being stepped, until Raft answers it.
    transfer_request: Option<u64>,
    /// Transfer requests waiting for the transfer's end.
    transfer_waiters: Vec<u64>,
    /// Bumped whenever the membership or the address table may have
    /// changed ([`KvServer::peers_version`]).
    peers_version: u64,
    read_policy: ReadPolicy,
    follower_reads: bool,
    /// The last index the store has applied (or restored).
    applied: Index,
    /// Reads handed to Raft: our read id -> (request id, key).
    reads: BTreeMap<u64, (u64, String)>,
    /// Reads Raft confirmed, waiting for the store to apply through their
    /// read index.
    reads_ready: BTreeMap<Index, Vec<(u64, String)>>,
    /// The index of the snapshot the driver is writing, if any.
    snapshotting: Option<Index>,
    /// Whether committed entries wait for [`KvServer::apply_pending`] (see
    /// [`KvServer::defer_applies`]).
    defer_applies: bool,
    /// Committed entries Raft handed over that the store has not applied
    /// yet (only while applies are deferred), in index order.
    pending_apply: Vec<Entry>,
    /// The id of the latest `Persist` that compacted the log: a size
    /// reported for earlier writes is that of the log before it.
    compacted_by: u64,
    /// This server's snapshot threshold: `max_raft_state` less up to an
    /// eighth, drawn from its seed, so that the servers of a cluster do not
    /// all snapshot at the same index and slow a quorum at once.
    snapshot_at_bytes: Option<usize>,
}

impl KvServer {
    /// A server booting for the first time.
    pub fn new(config: ServerConfig, seed: u64) -> Result<Self, Error> {
        Self::recover(config, seed, DurableState::default(), None)
    }

    /// A server restarting from its stored Raft state and the snapshot it
    /// names (read as a stream: required when the state names one).
    pub fn recover(
        config: ServerConfig,
        seed: u64,
        durable: DurableState,
        snapshot: Option<&mut dyn Read>,
    ) -> Result<Self, Error> {
        // The keys' hasher is keyed by the server's seed (a secret in
        // production), mixed so that it is not the Raft node's own draw.
        let mut store = KvStore::with_seed(config.max_sessions, seed ^ 0x6b76_2d6b_6579_7321);
        match (snapshot, &durable.snapshot) {
            (Some(r), Some(_)) => store.restore_from(r)?,
            (None, Some(_)) => return Err(Error::SnapshotDataMissing),
            (_, None) => {}
        }
        let applied = durable.snapshot.as_ref().map_or(0, |s| s.index);
        let mut raft_config = config.raft;
        // Followers that serve reads should hear of commits at once.
        raft_config.notify_commit |= config.follower_reads;
        if config.read_policy == ReadPolicy::Lease {
            raft_config.lease_reads = true;
            raft_config.sticky_votes = true;
        }
        let raft = RaftNode::recover(raft_config, seed, durable)?;
        Ok(KvServer {
            raft,
            store,
            raft_state_bytes: 0,
            waiting: BTreeMap::new(),
            proposals: BTreeMap::new(),
            next_proposal: 0,
            leading_term: None,
            addresses: config.addresses,
            recorded_in: None,
            admin_waiting: BTreeMap::new(),
            changes: BTreeMap::new(),
            transfer_request: None,
            transfer_waiters: Vec::new(),
            peers_version: 0,
            read_policy: config.read_policy,
            follower_reads: config.follower_reads,
            applied,
            reads: BTreeMap::new(),
            reads_ready: BTreeMap::new(),
            snapshotting: None,
            defer_applies: false,
            pending_apply: Vec::new(),
            compacted_by: 0,
            snapshot_at_bytes: config.max_raft_state.map(|max| {
                let eighth = (max / 8) as u64;
                let spread = if eighth == 0 { 0 } else { seed % (eighth + 1) };
                max - spread as usize
            }),
        })
    }

    /// Grows whenever the configuration or the member address table may
    /// have changed: a driver that keeps links to the members
    /// ([`RaftNode::membership`], [`RaftNode::committed_membership`],
    /// [`KvServer::member_addrs`]) looks again when it moves.
    pub fn peers_version(&self) -> u64 {
        self.peers_version
    }

    /// The recorded addresses of every node, by id (including nodes that
    /// are no longer members).
    pub fn member_addrs(&self) -> &BTreeMap<NodeId, MemberAddrs> {
        self.store.member_addrs()
    }

    /// The request a follower should send the leader so that its own
    /// addresses are recorded: `Some` while it is a member whose record is
    /// missing or differs from its configured addresses. (A leader records
    /// its own by itself.)
    pub fn registration(&self) -> Option<AdminRequest> {
        let addrs = self.addresses.as_ref()?;
        let me = self.raft.id();
        let needed = !self.raft.is_leader()
            && self.raft.membership().contains(me)
            && self.member_addrs().get(&me) != Some(addrs);
        needed.then(|| AdminRequest::RecordAddresses {
            node: me,
            addrs: addrs.clone(),
        })
    }

    /// The members as this server knows them.
    pub fn member_list(&self) -> MemberList {
        let r = &self.raft;
        let me = r.id();
        let m = r.membership();
        let members = m
            .members()
            .into_iter()
            .map(|id| {
                let role = if m.voters.contains(&id) {
                    MemberRole::Voter
                } else if m.outgoing.contains(&id) {
                    MemberRole::Leaving
                } else {
                    MemberRole::Learner
                };
                let match_index = match (r.is_leader(), id == me) {
                    (false, _) => None,
                    (true, true) => Some(r.log().last_index()),
                    (true, false) => r.progress(id).map(|p| p.match_index),
                };
                MemberInfo {
                    id,
                    role,
                    addrs: self.member_addrs().get(&id).cloned(),
                    match_index,
                }
            })
            .collect();
        MemberList {
            from: me,
            term: r.term(),
            leader: if r.is_leader() {
                Some(me)
            } else {
                r.leader_hint()
            },
            commit_index: r.commit_index(),
            committed: r.membership() == r.committed_membership(),
            members,
        }
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

    /// Turns follower reads ([`ServerConfig::follower_reads`]) on or off.
    pub fn set_follower_reads(&mut self, on: bool) {
        self.follower_reads = on;
    }

    /// With `on`, a step does not apply the entries it commits: they wait
    /// until [`KvServer::apply_pending`], or until the next step, which
    /// applies them before anything else (so no event ever meets a store
    /// behind what Raft handed over). A driver so executes a step's sends
    /// and writes before the store's work on its entries: a follower
    /// starts its fsync, and a leader its next AppendEntries, without
    /// waiting for the previous round's entries to be applied. Off by
    /// default, when a step's actions hold its applies' replies.
    pub fn defer_applies(&mut self, on: bool) {
        self.defer_applies = on;
    }

    /// Whether committed entries wait for [`KvServer::apply_pending`].
    pub fn has_pending_applies(&self) -> bool {
        !self.pending_apply.is_empty()
    }

    /// Applies the committed entries a step left (see
    /// [`KvServer::defer_applies`]); returns what to do, in order (the
    /// replies, a snapshot due, and what stepping Raft for an applied
    /// membership request asks).
    #[must_use = "the actions must be executed"]
    pub fn apply_pending(&mut self, now: Instant) -> Result<Vec<ServerAction>, Error> {
        let mut out = Vec::new();
        self.drain_pending(now, &mut out)?;
        Ok(out)
    }

    /// Applies every pending entry, and whatever stepping Raft for their
    /// admin events commits in turn.
    fn drain_pending(&mut self, now: Instant, out: &mut Vec<ServerAction>) -> Result<(), Error> {
        while !self.pending_apply.is_empty() {
            let entries = std::mem::take(&mut self.pending_apply);
            let mut events = VecDeque::new();
            self.apply_entries(entries, out, &mut events);
            for event in events {
                self.step_raft(now, event, out, &mut None)?;
                self.release_if_deposed(out);
            }
        }
        Ok(())
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

    /// Feeds one event at `now`; returns what to do, in order. An
    /// `InstallSnapshot` comes with its bytes, through
    /// [`KvServer::install_snapshot`]: here it is refused.
    #[must_use = "the actions must be executed"]
    pub fn step(&mut self, now: Instant, event: ServerEvent) -> Result<Vec<ServerAction>, Error> {
        if let ServerEvent::MessageReceived {
            message: Message::InstallSnapshot(_),
            ..
        } = event
        {
            return Err(Error::SnapshotDataMissing);
        }
        self.step_with(now, event, None)
    }

    /// A leader's `InstallSnapshot` and the snapshot's bytes, all arrived
    /// (the driver holds them under `message.last_included_index`). If Raft
    /// installs it, the store is restored from `data` in this step: the
    /// returned actions then hold the `Persist` naming it; otherwise `data`
    /// is not read and the driver may drop the bytes.
    #[must_use = "the actions must be executed"]
    pub fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        message: InstallSnapshot,
        data: &mut dyn Read,
    ) -> Result<Vec<ServerAction>, Error> {
        let message = Message::InstallSnapshot(message);
        let event = ServerEvent::MessageReceived { from, message };
        self.step_with(now, event, Some(data))
    }

    fn step_with(
        &mut self,
        now: Instant,
        event: ServerEvent,
        mut snapshot: Option<&mut dyn Read>,
    ) -> Result<Vec<ServerAction>, Error> {
        let mut out = Vec::new();
        self.drain_pending(now, &mut out)?;
        if let Some(planted) = self.canary_local_get(&event) {
            out.extend(planted);
            return Ok(out);
        }
        let raft_event = match event {
            ServerEvent::AdminReceived { id, request } => self.admin(id, request, &mut out),
            ServerEvent::MessageReceived { from, message } => {
                Some(Event::MessageReceived { from, message })
            }
            ServerEvent::TimerFired => Some(Event::TimerFired),
            ServerEvent::SnapshotTaken { index } => {
                self.snapshotting = None;
                // Unknown until the next Persisted report: don't snapshot
                // again on a stale size.
                self.raft_state_bytes = 0;
                Some(Event::SnapshotTaken { index })
            }
            ServerEvent::SnapshotSendEnded { to, term, index } => {
                Some(Event::SnapshotSendEnded { to, term, index })
            }
            ServerEvent::Persisted {
                upto,
                raft_state_bytes,
            } => {
                // A size from before the latest compaction would start a
                // second snapshot at once.
                if upto >= self.compacted_by {
                    self.raft_state_bytes = raft_state_bytes;
                }
                Some(Event::Persisted { upto })
            }
            ServerEvent::ReadReceived {
                id,
                key,
                consistency,
            } => self.sessionless_read(id, key, consistency, &mut out),
            ServerEvent::RequestReceived { id, command } => match &command.op {
                crate::command::Op::Get { key }
                    if self.read_policy != ReadPolicy::Log
                        && (self.raft.is_leader() || self.follower_reads)
                        && self.store.has_session(command.client) =>
                {
                    let mode = match self.read_policy {
                        ReadPolicy::Lease => ReadMode::Lease,
                        _ => ReadMode::ReadIndex,
                    };
                    Some(self.read_event(id, key.clone(), mode))
                }
                _ => {
                    let bytes = command.encode();
                    Some(self.propose(Proposal::Client(id, command), bytes))
                }
            },
        };
        if let Some(event) = raft_event {
            self.step_raft(now, event, &mut out, &mut snapshot)?;
            self.release_if_deposed(&mut out);
        }
        if let Some(event) = self.own_record_due() {
            self.step_raft(now, event, &mut out, &mut None)?;
            self.release_if_deposed(&mut out);
        }
        debug_assert!(
            self.proposals.is_empty() && self.changes.is_empty(),
            "every proposal and change request is answered in its step"
        );
        if let Some(id) = self.transfer_request.take() {
            // Raft answers every transfer request in its step; never leave
            // a client waiting if it did not.
            debug_assert!(false, "transfer request {id} unanswered");
            out.push(admin_reply(
                id,
                AdminReply::Refused(Refusal::TransferFailed("no answer".into())),
            ));
        }
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
        // A change gets an id of ours that no admin request waits on, so
        // its answer is dropped and never mistaken for another's.
        let event = match event {
            Event::MembershipChangeRequested { changes, .. } => {
                self.next_proposal += 1;
                Event::MembershipChangeRequested {
                    id: self.next_proposal,
                    changes,
                }
            }
            other => other,
        };
        let mut out = Vec::new();
        self.drain_pending(now, &mut out)?;
        self.step_raft(now, event, &mut out, &mut None)?;
        self.release_if_deposed(&mut out);
        Ok(out)
    }

    fn propose(&mut self, proposal: Proposal, command: Vec<u8>) -> Event {
        self.next_proposal += 1;
        let id = self.next_proposal;
        self.proposals.insert(id, proposal);
        Event::ProposalReceived { id, command }
    }

    /// A leader whose own addresses are not (correctly) recorded proposes
    /// its record, once per term.
    fn own_record_due(&mut self) -> Option<Event> {
        let addrs = self.addresses.clone()?;
        let (me, term) = (self.raft.id(), self.raft.term());
        let due = self.raft.is_leader()
            && self.recorded_in != Some(term)
            && self.raft.membership().contains(me)
            && self.member_addrs().get(&me) != Some(&addrs);
        if !due {
            return None;
        }
        self.recorded_in = Some(term);
        let record = Proposal::Record {
            reply: None,
            then: None,
        };
        Some(self.propose(record, Logged::record(me, addrs)))
    }

    /// An admin request: answered at once, or handed to Raft.
    fn admin(
        &mut self,
        id: u64,
        request: AdminRequest,
        out: &mut Vec<ServerAction>,
    ) -> Option<Event> {
        if let AdminRequest::Members = request {
            out.push(admin_reply(id, AdminReply::Members(self.member_list())));
            return None;
        }
        if !self.raft.is_leader() {
            let leader_hint = self.raft.leader_hint();
            out.push(admin_reply(
                id,
                AdminReply::Refused(Refusal::NotLeader { leader_hint }),
            ));
            return None;
        }
        let m = self.raft.membership();
        // A change that already holds in a committed configuration is done
        // (so a client may retry one whose answer it lost).
        let settled = m == self.raft.committed_membership();
        let done = |out: &mut Vec<ServerAction>| {
            out.push(admin_reply(id, AdminReply::Done));
            None
        };
        let record = |s: &mut Self, node, addrs, then| {
            let proposal = Proposal::Record {
                reply: Some(id),
                then,
            };
            Some(s.propose(proposal, Logged::record(node, addrs)))
        };
        match request {
            AdminRequest::Members => unreachable!("answered above"),
            AdminRequest::AddLearner { node, addrs } => {
                if m.is_voter(node) {
                    let why = format!("node {node} is already a voter");
                    out.push(admin_reply(id, AdminReply::Refused(Refusal::Invalid(why))));
                    return None;
                }
                let is_learner = m.is_learner(node) && settled;
                if is_learner && self.member_addrs().get(&node) == Some(&addrs) {
                    return done(out);
                }
                // A learner already: only its addresses change.
                let then = (!is_learner).then_some(MembershipChange::AddLearner(node));
                record(self, node, addrs, then)
            }
            AdminRequest::RecordAddresses { node, addrs } => {
                if self.member_addrs().get(&node) == Some(&addrs) {
                    return done(out);
                }
                record(self, node, addrs, None)
            }
            AdminRequest::Promote { node } => {
                if settled && m.voters.contains(&node) && !m.is_joint() {
                    return done(out);
                }
                Some(self.change(id, MembershipChange::Promote(node)))
            }
            AdminRequest::Remove { node } => {
                if settled && !m.contains(node) {
                    return done(out);
                }
                Some(self.change(id, MembershipChange::Remove(node)))
            }
            AdminRequest::TransferLeader { to } => {
                self.transfer_request = Some(id);
                Some(Event::LeadershipTransferRequested { to })
            }
        }
    }

    fn change(&mut self, admin_id: u64, change: MembershipChange) -> Event {
        self.next_proposal += 1;
        let id = self.next_proposal;
        self.changes.insert(id, admin_id);
        Event::MembershipChangeRequested {
            id,
            changes: vec![change],
        }
    }

    /// Steps Raft with `event` (and the events its actions lead to).
    /// `snapshot`: the bytes of the `InstallSnapshot` being delivered.
    fn step_raft(
        &mut self,
        now: Instant,
        event: Event,
        out: &mut Vec<ServerAction>,
        snapshot: &mut Option<&mut dyn Read>,
    ) -> Result<(), Error> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.raft.step(now, event)? {
                match action {
                    Action::Send { to, message } => out.push(ServerAction::Send { to, message }),
                    Action::Persist(p) => {
                        if p.snapshot.is_some() {
                            self.compacted_by = p.id;
                        }
                        out.push(ServerAction::Persist(p))
                    }
                    Action::SetTimer { deadline } => out.push(ServerAction::SetTimer { deadline }),
                    Action::Apply { entries } => {
                        if self.defer_applies {
                            self.pending_apply.extend(entries);
                        } else {
                            self.apply_entries(entries, out, &mut queue);
                        }
                    }
                    Action::SendSnapshot { to, message } => {
                        out.push(ServerAction::SendSnapshot { to, message })
                    }
                    Action::ApplySnapshot { meta } => {
                        // Nothing waits here (every step applies what waits
                        // before its event, and Raft hands over a snapshot
                        // before the entries of its own step); were anything
                        // to, it goes first, as Raft handed it over.
                        let entries = std::mem::take(&mut self.pending_apply);
                        self.apply_entries(entries, out, &mut queue);
                        let data = snapshot
                            .take()
                            .expect("only a delivered InstallSnapshot installs one");
                        // Raft has moved on to the snapshot: a snapshot
                        // that does not restore cannot be undone here.
                        self.store.restore_from(data)?;
                        self.peers_version += 1;
                        self.applied = meta.index;
                        self.serve_ready_reads(out);
                        let covered: Vec<Index> =
                            self.waiting.range(..=meta.index).map(|(&i, _)| i).collect();
                        for index in covered {
                            let w = self.waiting.remove(&index).expect("listed");
                            out.push(self.wrong_leader(w.id));
                        }
                        let covered: Vec<Index> = self
                            .admin_waiting
                            .range(..=meta.index)
                            .map(|(&i, _)| i)
                            .collect();
                        for index in covered {
                            let w = self.admin_waiting.remove(&index).expect("listed");
                            out.push(self.admin_not_leader(w.id));
                        }
                    }
                    Action::AcceptProposal { id, index, term } => {
                        match self.proposals.remove(&id).expect("our proposal") {
                            Proposal::Client(rid, command) => {
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
                            Proposal::Record { reply: None, .. } => {}
                            Proposal::Record {
                                reply: Some(rid),
                                then,
                            } => self.admin_wait(index, rid, term, then, out),
                        }
                    }
                    Action::AcceptMembershipChange {
                        id, index, term, ..
                    } => {
                        // None: a change fed by `step_raft_event`.
                        if let Some(rid) = self.changes.remove(&id) {
                            self.admin_wait(index, rid, term, None, out);
                        }
                    }
                    Action::RejectMembershipChange { id, reason } => {
                        let Some(rid) = self.changes.remove(&id) else {
                            continue;
                        };
                        let refusal = match reason {
                            ChangeRefusal::NotLeader { leader_hint } => {
                                Refusal::NotLeader { leader_hint }
                            }
                            ChangeRefusal::ChangeInProgress => Refusal::ChangeInProgress,
                            ChangeRefusal::LeaderNotReady => Refusal::LeaderNotReady,
                            ChangeRefusal::TransferInProgress => Refusal::TransferInProgress,
                            ChangeRefusal::Invalid(e) => Refusal::Invalid(e.to_string()),
                            other => Refusal::Invalid(format!("{other:?}")),
                        };
                        out.push(admin_reply(rid, AdminReply::Refused(refusal)));
                    }
                    Action::MembershipChanged { .. } => self.peers_version += 1,
                    Action::ReadReady { id, index } => {
                        let read = self.reads.remove(&id).expect("our read");
                        self.reads_ready.entry(index).or_default().push(read);
                        self.serve_ready_reads(out);
                    }
                    Action::RejectRead { id, reason } => {
                        let (rid, _) = self.reads.remove(&id).expect("our read");
                        let leader_hint = match reason {
                            ReadRefusal::NotLeader { leader_hint } => leader_hint,
                            // Overloaded: try again here, as for proposals.
                            _ => Some(self.raft.id()),
                        };
                        out.push(ServerAction::Reply {
                            id: rid,
                            reply: Reply::WrongLeader { leader_hint },
                        });
                    }
                    Action::LeadershipTransfer { outcome, .. } => self.transfer(outcome, out),
                    Action::RejectProposal { id, reason } => {
                        let proposal = self.proposals.remove(&id).expect("our proposal");
                        let leader_hint = match reason {
                            RejectReason::NotLeader { leader_hint } => leader_hint,
                            RejectReason::TooManyUncommitted => Some(self.raft.id()),
                            // Leadership is moving to a node the client
                            // will find by trying the others.
                            RejectReason::TransferInProgress => None,
                        };
                        match proposal {
                            Proposal::Client(rid, _) => out.push(ServerAction::Reply {
                                id: rid,
                                reply: Reply::WrongLeader { leader_hint },
                            }),
                            // Try again at the next step.
                            Proposal::Record { reply: None, .. } => self.recorded_in = None,
                            Proposal::Record {
                                reply: Some(rid), ..
                            } => {
                                let refusal = match reason {
                                    RejectReason::NotLeader { leader_hint } => {
                                        Refusal::NotLeader { leader_hint }
                                    }
                                    RejectReason::TooManyUncommitted => Refusal::Busy,
                                    RejectReason::TransferInProgress => Refusal::TransferInProgress,
                                };
                                out.push(admin_reply(rid, AdminReply::Refused(refusal)));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// An admin request now waits for the entry at `index`.
    fn admin_wait(
        &mut self,
        index: Index,
        id: u64,
        term: Term,
        then: Option<MembershipChange>,
        out: &mut Vec<ServerAction>,
    ) {
        let w = AdminWaiting { id, term, then };
        if let Some(old) = self.admin_waiting.insert(index, w) {
            out.push(self.admin_not_leader(old.id));
        }
    }

    /// The entry at `index` (of `term`) was applied: an admin request
    /// waiting for it is done, or goes on to its membership change.
    fn admin_applied(
        &mut self,
        index: Index,
        term: Term,
        out: &mut Vec<ServerAction>,
    ) -> Option<Event> {
        let w = self.admin_waiting.remove(&index)?;
        if w.term != term {
            // Another leader's entry took this index.
            out.push(self.admin_not_leader(w.id));
            return None;
        }
        match w.then {
            None => {
                out.push(admin_reply(w.id, AdminReply::Done));
                None
            }
            Some(change) => Some(self.change(w.id, change)),
        }
    }

    /// What became of a leadership transfer.
    fn transfer(&mut self, outcome: TransferOutcome, out: &mut Vec<ServerAction>) {
        let refused = |abort: TransferAbort| match abort {
            TransferAbort::NotLeader => Some(Refusal::NotLeader {
                leader_hint: self.raft.leader_hint(),
            }),
            TransferAbort::InProgress => Some(Refusal::TransferInProgress),
            TransferAbort::InvalidTarget => Some(Refusal::Invalid(
                "the target is this node, not a voter, or there is no other voter".into(),
            )),
            _ => None,
        };
        match outcome {
            TransferOutcome::Started => {
                if let Some(id) = self.transfer_request.take() {
                    self.transfer_waiters.push(id);
                }
            }
            TransferOutcome::TimeoutNowSent => {}
            TransferOutcome::Aborted(abort) => {
                if let Some(refusal) = refused(abort) {
                    // The answer to the request being stepped; a transfer
                    // already under way goes on.
                    if let Some(id) = self.transfer_request.take() {
                        out.push(admin_reply(id, AdminReply::Refused(refusal)));
                    }
                    return;
                }
                let reply = match abort {
                    TransferAbort::SteppedDown => AdminReply::Done,
                    TransferAbort::TimedOut => AdminReply::Refused(Refusal::TransferFailed(
                        "no election deposed the leader in time".into(),
                    )),
                    TransferAbort::TargetRemoved => AdminReply::Refused(Refusal::TransferFailed(
                        "the target stopped being a voter".into(),
                    )),
                    other => AdminReply::Refused(Refusal::TransferFailed(format!("{other:?}"))),
                };
                for id in std::mem::take(&mut self.transfer_waiters) {
                    out.push(admin_reply(id, reply.clone()));
                }
            }
            other => {
                let reply = AdminReply::Refused(Refusal::TransferFailed(format!("{other:?}")));
                for id in std::mem::take(&mut self.transfer_waiters) {
                    out.push(admin_reply(id, reply.clone()));
                }
            }
        }
    }

    /// A read handed to Raft: the event, and the read recorded under a
    /// fresh id.
    fn read_event(&mut self, id: u64, key: String, mode: ReadMode) -> Event {
        self.next_proposal += 1;
        let rid = self.next_proposal;
        self.reads.insert(rid, (id, key));
        Event::ReadRequested { id: rid, mode }
    }

    /// A read without a session: served here from the applied state
    /// (`Local`), or handed to Raft if this server leads or serves follower
    /// reads; otherwise the client is sent to the leader.
    fn sessionless_read(
        &mut self,
        id: u64,
        key: String,
        consistency: ReadConsistency,
        out: &mut Vec<ServerAction>,
    ) -> Option<Event> {
        let mode = match consistency {
            ReadConsistency::Local => {
                let value = self.store.get(&key).unwrap_or_default().to_string();
                out.push(ServerAction::Reply {
                    id,
                    reply: Reply::Applied(crate::command::Outcome::Value(value)),
                });
                return None;
            }
            ReadConsistency::Linearizable => ReadMode::ReadIndex,
            ReadConsistency::Lease => ReadMode::Lease,
        };
        if self.raft.is_leader() || self.follower_reads {
            return Some(self.read_event(id, key, mode));
        }
        let leader_hint = self.raft.leader_hint();
        out.push(ServerAction::Reply {
            id,
            reply: Reply::WrongLeader { leader_hint },
        });
        None
    }

    /// Answer the confirmed reads whose read index the store has reached.
    fn serve_ready_reads(&mut self, out: &mut Vec<ServerAction>) {
        let planted = crate::canary::on(crate::canary::Canary::ReadBeforeApplied);
        while let Some(entry) = self.reads_ready.first_entry() {
            if *entry.key() > self.applied && !planted {
                break;
            }
            for (id, key) in entry.remove() {
                let value = self.store.get(&key).unwrap_or_default().to_string();
                out.push(ServerAction::Reply {
                    id,
                    reply: Reply::Applied(crate::command::Outcome::Value(value)),
                });
            }
        }
    }

    /// Committed entries into the store, in order; the admin events their
    /// application raises go to `queue`, for Raft.
    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Vec<ServerAction>,
        queue: &mut VecDeque<Event>,
    ) {
        if entries.is_empty() {
            return; // an installed snapshot with nothing waiting before it
        }
        for entry in entries {
            // A no-op or configuration entry carries no command.
            self.apply(entry.index, entry.command().unwrap_or_default(), out);
            if let Some(event) = self.admin_applied(entry.index, entry.term, out) {
                queue.push_back(event);
            }
            if let Payload::Membership(_) = entry.payload {
                self.peers_version += 1;
            }
        }
        // Confirmed reads waiting for the store to reach their read index.
        self.serve_ready_reads(out);
        self.snapshot_if_due(out);
    }

    fn apply(&mut self, index: Index, bytes: &[u8], out: &mut Vec<ServerAction>) {
        self.applied = index;
        // Borrowed from the entry: the store copies what it keeps, once.
        let applied = match postcard::from_bytes::<LoggedRef<'_>>(bytes) {
            Ok(LoggedRef {
                op: OpRef::RecordMember { node, addrs },
                ..
            }) => {
                self.store.record_member(node, addrs);
                self.peers_version += 1;
                None
            }
            Ok(LoggedRef { client, seq, op }) => {
                Some(((client, seq), self.store.apply_ref(index, client, seq, op)))
            }
            Err(_) => None,
        };
        if let Some(w) = self.waiting.remove(&index) {
            match applied {
                Some(((client, seq), outcome)) if client == w.client && seq == w.seq => {
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

    /// Snapshot when the stored Raft state has reached `max_raft_state`,
    /// something was applied since the last snapshot, and no snapshot is
    /// being written.
    fn snapshot_if_due(&mut self, out: &mut Vec<ServerAction>) {
        let Some(max) = self.snapshot_at_bytes else {
            return;
        };
        // The store's own index: Raft's runs ahead while applies wait.
        let applied = self.applied;
        if self.snapshotting.is_some()
            || self.raft_state_bytes < max
            || applied <= self.raft.log().snapshot().index
        {
            return;
        }
        self.snapshotting = Some(applied);
        out.push(ServerAction::TakeSnapshot {
            index: applied,
            image: self.store.image(),
        });
    }

    /// The index of the snapshot being written, if one is.
    pub fn snapshot_in_progress(&self) -> Option<Index> {
        self.snapshotting
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
        let stale: Vec<Index> = self
            .admin_waiting
            .iter()
            .filter(|(_, w)| !leader || w.term != term)
            .map(|(&i, _)| i)
            .collect();
        for index in stale {
            let w = self.admin_waiting.remove(&index).expect("listed");
            out.push(self.admin_not_leader(w.id));
        }
    }

    fn admin_not_leader(&self, id: u64) -> ServerAction {
        let leader_hint = self.raft.leader_hint().filter(|&l| l != self.raft.id());
        admin_reply(id, AdminReply::Refused(Refusal::NotLeader { leader_hint }))
    }

    fn wrong_leader(&self, id: u64) -> ServerAction {
        let leader_hint = self.raft.leader_hint().filter(|&l| l != self.raft.id());
        ServerAction::Reply {
            id,
            reply: Reply::WrongLeader { leader_hint },
        }
    }
}

fn admin_reply(id: u64, reply: AdminReply) -> ServerAction {
    ServerAction::Reply {
        id,
        reply: Reply::Admin(reply),
    }
}
