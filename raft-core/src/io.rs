//! The contract between the core and its driver: `Event`s in (facts, past
//! tense), `Action`s out (commands, imperative), and the durable image that a
//! driver rebuilds from `Persist` actions.

use serde::{Deserialize, Serialize};

use crate::membership::{ChangeError, Membership, MembershipChange};
use crate::message::{InstallSnapshot, Message};
use crate::types::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};

/// An input to [`crate::RaftNode::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer's message arrived.
    MessageReceived {
        /// The sender.
        from: NodeId,
        /// What it sent.
        message: Message,
    },
    /// A client command to replicate. Only a leader accepts it.
    ProposalReceived {
        /// The caller's id for this proposal, echoed in the answer.
        id: u64,
        /// The opaque command bytes.
        command: Vec<u8>,
    },
    /// The deadline of the last `SetTimer` has passed. Early or repeated
    /// firings are harmless.
    TimerFired,
    /// Every `Persist` whose id is `<= upto` is durable.
    Persisted {
        /// The highest durable persist id.
        upto: u64,
    },
    /// The driver holds, durably, the service's snapshot of its state
    /// through `index` (which the service has been given in an `Apply`): the
    /// log up to there may be discarded. The core never sees the bytes: it
    /// answers with a `Persist` whose `snapshot` names this one, which makes
    /// it the node's snapshot (see [`Persist::snapshot`]).
    SnapshotTaken {
        /// The last index the snapshot covers.
        index: Index,
    },
    /// A transfer that `Action::SendSnapshot` asked for has ended, delivered
    /// or not (the driver reports each one exactly once, and gives up on it
    /// when the connection fails, stalls, or this node stops leading
    /// `term`). The leader probes the follower at once and sends a snapshot
    /// again only if the follower answers that it still needs one, so an
    /// unreachable follower costs heartbeats, not snapshots.
    SnapshotSendEnded {
        /// The follower.
        to: NodeId,
        /// The term of the `InstallSnapshot` sent.
        term: Term,
        /// Its `last_included_index`.
        index: Index,
    },
    /// The caller asks the leader to hand its leadership to `to`, or, when
    /// `None`, to the most up-to-date voter (highest match index, the lowest
    /// id among equals). The leader stops taking proposals, brings the
    /// target up to date and sends it `Message::TimeoutNow`; the outcome
    /// comes back as `Action::LeadershipTransfer`.
    LeadershipTransferRequested {
        /// The target, or `None` for the most up-to-date voter.
        to: Option<NodeId>,
    },
    /// The caller asks the leader to change the configuration: all of
    /// `changes` at once (one voter added or removed takes the simple path,
    /// more go through a joint configuration that the leader leaves by
    /// itself). Answered with `Action::AcceptMembershipChange` (the entry is
    /// in the log: watch `Action::MembershipChanged` for its commit) or
    /// `Action::RejectMembershipChange`.
    MembershipChangeRequested {
        /// The caller's id for this request, echoed in the answer.
        id: u64,
        /// What to change, applied together.
        changes: Vec<MembershipChange>,
    },
    /// The caller wants to read the service's state linearizably without
    /// writing to the log (ReadIndex, Raft thesis §6.4). Only a leader takes
    /// it: once an entry of its term has committed, it records its commit
    /// index as the read index, confirms it still leads with a round of
    /// `ReadRound`s acknowledged by a quorum after the read arrived, and
    /// answers `Action::ReadReady`; the caller serves the read once its
    /// service has applied through that index. Refused with
    /// `Action::RejectRead`. With `mode: ReadMode::Lease` and
    /// `Config::lease_reads`, a leader whose lease holds answers at once,
    /// with no round. A follower forwards the read to its leader (follower
    /// reads, always by ReadIndex).
    ReadRequested {
        /// The caller's id for this read, echoed in the answer.
        id: u64,
        /// How the leader confirms it still leads.
        mode: ReadMode,
    },
}

/// How a leader confirms, for a read, that it still leads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReadMode {
    /// A round of messages acknowledged by a quorum after the read arrived
    /// (ReadIndex): rests on no clock.
    #[default]
    ReadIndex,
    /// Its lease, if it holds (`Config::lease_reads`): no messages, but
    /// safe only under the clock assumption documented on
    /// `Config::lease_reads`. Without a lease (lease reads off, expired, or
    /// forfeited), served as `ReadIndex`.
    Lease,
}

/// Why a read was refused (or, when pending, failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadRefusal {
    /// This node is not the leader (or stopped being it while the read was
    /// pending); `leader_hint` is who it believes is.
    NotLeader {
        /// The leader of the current term, if known.
        leader_hint: Option<NodeId>,
    },
    /// `Config::max_pending_reads` reads are already pending.
    TooManyPendingReads,
}

/// Why a membership change was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeRefusal {
    /// This node is not the leader; `leader_hint` is who it believes is.
    NotLeader {
        /// The leader of the current term, if known.
        leader_hint: Option<NodeId>,
    },
    /// A configuration change is not yet committed (or a joint
    /// configuration not yet left): one change at a time.
    ChangeInProgress,
    /// The leader has not yet committed an entry of its own term, so it may
    /// not know of a change an earlier leader made (the single-server bug
    /// of 2015). It appends a no-op if it has none; try again soon.
    LeaderNotReady,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The changes do not apply to the latest configuration.
    Invalid(ChangeError),
}

/// Why a proposal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// This node is not the leader; `leader_hint` is who it believes is.
    NotLeader {
        /// The leader of the current term, if known.
        leader_hint: Option<NodeId>,
    },
    /// The leader has `Config::max_uncommitted_entries` entries waiting to
    /// commit; try again later.
    TooManyUncommitted,
    /// The leader is handing its leadership over
    /// (`Event::LeadershipTransferRequested`); try the new leader soon.
    TransferInProgress,
}

/// What became of a leadership transfer, reported by
/// `Action::LeadershipTransfer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferOutcome {
    /// The leader accepted the request: it refuses proposals until the
    /// transfer ends, and brings the target up to date.
    Started,
    /// The target's log matches the leader's: `TimeoutNow` was sent. The
    /// transfer succeeds when the target's election deposes the leader
    /// (reported as `Aborted(SteppedDown)`, the leader cannot know who won).
    TimeoutNowSent,
    /// The transfer was refused or ended without the leader handing over.
    Aborted(TransferAbort),
}

/// Why a leadership transfer was refused or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferAbort {
    /// Refused: this node is not the leader.
    NotLeader,
    /// Refused: the target is this node, not a member, or (none named) there
    /// is no other voter.
    InvalidTarget,
    /// Refused: another transfer is in progress (it goes on).
    InProgress,
    /// No election deposed the leader within an election timeout
    /// (`Config::election_timeout_max`) of the request: proposals are taken
    /// again.
    TimedOut,
    /// The leader left office while the transfer was in progress: after
    /// `TimeoutNowSent`, normally because the target won a newer term.
    SteppedDown,
    /// The target stopped being a voter (a configuration change removed or
    /// demoted it) while the transfer was in progress.
    TargetRemoved,
}

/// An output of [`crate::RaftNode::step`]. Execute them in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send now. The network may drop, delay, duplicate or reorder it.
    Send {
        /// The destination.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make this write durable, atomically, after every earlier `Persist`.
    /// Only once it is durable, send `then_send` and report
    /// `Event::Persisted { upto: id }` (ids only grow).
    Persist(Persist),
    /// Committed, locally durable entries for the service, in index order,
    /// continuing exactly where the previous `Apply` or `ApplySnapshot` ended.
    Apply {
        /// The entries, consecutive.
        entries: Vec<Entry>,
    },
    /// Replace the service's state with the snapshot the leader sent, which
    /// the driver received with the `InstallSnapshot` it delivered in this
    /// step (the snapshot at `meta.index`). The next `Apply` continues at
    /// `meta.index + 1`.
    ApplySnapshot {
        /// Where the snapshot ends.
        meta: SnapshotMeta,
    },
    /// Send `to` the snapshot `message` names (the one at
    /// `message.last_included_index`, which the driver holds: this node's
    /// own, or a newer one taken since), and deliver the message to `to`'s
    /// core only once all of its bytes have arrived there. Stream it (a
    /// driver need not hold it in memory) and report the end of the
    /// transfer, whatever became of it, with `Event::SnapshotSendEnded`.
    /// The core asks for at most one transfer per follower at a time.
    SendSnapshot {
        /// The follower.
        to: NodeId,
        /// The header: term, index, term at that index, configuration.
        message: InstallSnapshot,
    },
    /// Arm the driver's one timer for `deadline`; the last one set wins.
    SetTimer {
        /// When to report `Event::TimerFired`.
        deadline: crate::Instant,
    },
    /// The leader appended the proposal at `index` in `term`. It is not yet
    /// committed: watch `Apply` for that index (another command may end up
    /// there if leadership is lost).
    AcceptProposal {
        /// The proposal's id.
        id: u64,
        /// Where it was placed.
        index: Index,
        /// The leader's term.
        term: Term,
    },
    /// This node cannot take the proposal.
    RejectProposal {
        /// The proposal's id.
        id: u64,
        /// Why.
        reason: RejectReason,
    },
    /// What became of a leadership transfer
    /// (`Event::LeadershipTransferRequested`): `Started`, then
    /// `TimeoutNowSent` once the target is up to date, then `Aborted` if it
    /// timed out or the leader stepped down; or `Aborted` at once if refused.
    LeadershipTransfer {
        /// The target, `None` only when a refusal came before one was chosen.
        to: Option<NodeId>,
        /// What happened.
        outcome: TransferOutcome,
    },
    /// The leader appended the membership change at `index` in `term`; it
    /// is in force now, and committed once `MembershipChanged` reports a
    /// committed configuration from that index on (watch for another entry
    /// taking its place if leadership is lost).
    AcceptMembershipChange {
        /// The request's id.
        id: u64,
        /// Where the configuration entry was placed.
        index: Index,
        /// The leader's term.
        term: Term,
        /// The configuration it sets.
        membership: Membership,
    },
    /// This node cannot make the change.
    RejectMembershipChange {
        /// The request's id.
        id: u64,
        /// Why.
        reason: ChangeRefusal,
    },
    /// The read may be served once the service has applied through `index`:
    /// nothing written before the read arrived is beyond it.
    ReadReady {
        /// The read's id.
        id: u64,
        /// The read index.
        index: Index,
    },
    /// This node cannot serve the read (or can no longer: it stopped
    /// leading while the read was pending).
    RejectRead {
        /// The read's id.
        id: u64,
        /// Why.
        reason: ReadRefusal,
    },
    /// The node's configurations changed: `effective` is the latest in its
    /// log (in force, possibly uncommitted), `committed` the latest
    /// committed one. A driver connects to every member of either and may
    /// drop links to nodes in neither. Reported after the step's `Persist`,
    /// only when one of them changed since the last report (the starting
    /// ones are `RaftNode::membership` and `RaftNode::committed_membership`).
    MembershipChanged {
        /// The latest configuration in the log.
        effective: Membership,
        /// The latest committed configuration.
        committed: Membership,
    },
}

/// One atomic durable write. Applied to the stored image in this order:
/// replace the hard state; install the snapshot (dropping entries it covers);
/// drop entries from `truncate_from` on; append `entries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist {
    /// Completion is reported with this id; ids grow by one per `Persist`.
    pub id: u64,
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// A new snapshot, if one was taken (`Event::SnapshotTaken`) or
    /// installed (a delivered `InstallSnapshot`): the driver makes the
    /// snapshot it holds at `index` the node's snapshot, atomically with the
    /// rest of this write, and may then drop older ones.
    pub snapshot: Option<SnapshotMeta>,
    /// Drop every stored entry with index `>=` this.
    pub truncate_from: Option<Index>,
    /// Entries to append, consecutive, starting right after the stored log.
    pub entries: Vec<Entry>,
    /// Messages that may leave only once this write is durable.
    pub then_send: Vec<(NodeId, Message)>,
}

impl Persist {
    /// True when the write changes nothing (it is only an ordering barrier
    /// for `then_send`).
    pub fn is_barrier(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
    }
}

/// Everything a node persists except the snapshot bytes (the driver keeps
/// those, by index): what a driver loads on restart and passes to
/// [`crate::RaftNode::recover`]. Drivers may store it
/// however they like; [`DurableState::apply`] shows the exact semantics of a
/// `Persist` and is what the simulator's persister uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// Term and vote.
    pub hard_state: HardState,
    /// Where the stored snapshot ends (none before the first one).
    pub snapshot: Option<SnapshotMeta>,
    /// The log after the snapshot, consecutive.
    pub entries: Vec<Entry>,
}

impl DurableState {
    /// The index of the last stored entry (or of the snapshot, or 0).
    pub fn last_index(&self) -> Index {
        match self.entries.last() {
            Some(e) => e.index,
            None => self.snapshot.as_ref().map_or(0, |s| s.index),
        }
    }

    /// The term of the stored entry at `index`, if it is stored (the
    /// snapshot's last entry counts).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        let (snap_index, snap_term) = self.snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        if index == snap_index {
            return Some(snap_term);
        }
        if index < snap_index {
            return None;
        }
        let offset = usize::try_from(index - snap_index - 1).ok()?;
        self.entries.get(offset).map(|e| e.term)
    }

    /// Applies one write ([`DurableState::try_apply`]'s semantics). Panics
    /// if the write does not continue the stored log: the core never emits
    /// such a write, so it would be a bug in the core or the driver.
    pub fn apply(&mut self, persist: &Persist) {
        if let Err(e) = self.try_apply(persist.durable_write()) {
            panic!("persisted entries must continue the stored log: {e}");
        }
    }
}
