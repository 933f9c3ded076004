//! The global state of the model and how each [`Choice`] changes it.
//!
//! A [`World`] is three real [`RaftNode`]s plus everything their driver would
//! hold: the network (a multiset of encoded messages, kept sorted so that a
//! position names a message canonically), each node's durable image (a
//! [`DurableState`] built by applying its completed `Persist`s, which is all
//! a crash leaves), each node's writes still in flight, its clock and its
//! armed deadline.
//!
//! `RaftNode` is not `Clone`, so a node is shared between a state and its
//! successors behind an `Rc` together with its *incarnation* (how it was
//! built and every event it has been stepped with since). A successor that
//! steps the node rebuilds its own copy by replaying that incarnation; the
//! core is deterministic, so the copy is exact.
//!
//! Time: every node has its own logical clock, which moves only when the
//! model chooses to fire that node's timer (to its last `SetTimer`
//! deadline). Every other event happens at the node's current time, so no
//! timeout ever happens implicitly: it is always an explicit choice. Nodes'
//! clocks are unrelated, which covers every relative speed; Raft's safety
//! does not depend on timing.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use raft_core::canary::Canary;
use raft_core::{Action, Config, DurableState, Event, Instant, Message, NodeId, Persist, RaftNode};
use raft_testkit::SafetyChecker;
use serde::Serialize;

use crate::choice::Choice;
use crate::invariants::{History, Violation};

/// The cluster size.
pub const NODES: usize = 3;

/// What the environment may do besides delivering messages, firing timers
/// and completing writes (which it may always do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client proposals in one trace (each is a fresh command).
    pub max_proposals: u8,
    /// Crash-and-restarts in one trace.
    pub max_crashes: u8,
    /// Whether the network may lose a message. Losing one is, for every
    /// invariant checked here, the same as never delivering it, so this only
    /// spends depth; it is on by default because the issue asks for it.
    pub drops: bool,
    /// Whether the network may deliver a copy and keep the original.
    pub duplicates: bool,
    /// A bug planted in the core (`raft_core::canary`, only with this
    /// crate's `canaries` feature), to show that the search catches it.
    pub canary: Option<Canary>,
    /// Whether the nodes run pre-vote (`Config::pre_vote`).
    pub pre_vote: bool,
    /// Whether an operator may ask a leader, once per trace, to remove one
    /// node (any of the three, the leader too) from the configuration
    /// (`Choice::RemoveMember`; a refused request may be made again).
    pub membership: bool,
    /// Client reads in one trace (`Choice::Read`, at any node): each read
    /// answered must cover every entry any node had counted committed when
    /// it was asked.
    pub max_reads: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_proposals: 2,
            max_crashes: 0,
            drops: true,
            duplicates: false,
            canary: None,
            pre_vote: false,
            membership: false,
            max_reads: 0,
        }
    }
}

/// A message in flight. Ordered by destination, sender, then encoding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Envelope {
    /// The destination.
    pub to: NodeId,
    /// The sender.
    pub from: NodeId,
    /// The message's postcard encoding, shared between states.
    #[serde(serialize_with = "serialize_bytes")]
    pub bytes: Rc<[u8]>,
}

fn serialize_bytes<S: serde::Serializer>(bytes: &Rc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

impl Envelope {
    /// The message itself.
    pub fn message(&self) -> Message {
        postcard::from_bytes(&self.bytes).expect("encoded by the model")
    }
}

/// How to rebuild a node: what its current incarnation started from, and
/// every event it has been stepped with since.
#[derive(Clone, Debug)]
struct Incarnation {
    seed: u64,
    pre_vote: bool,
    durable: DurableState,
    events: Vec<(Instant, Event)>,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) node: RaftNode,
    incarnation: Incarnation,
}

impl Slot {
    fn start(
        id: usize,
        seed: u64,
        durable: DurableState,
        pre_vote: bool,
    ) -> Result<Slot, Violation> {
        let node = RaftNode::recover(config(id, pre_vote), seed, durable.clone())
            .map_err(|e| Violation::new(format!("node {id} cannot recover its image: {e}")))?;
        let incarnation = Incarnation {
            seed,
            pre_vote,
            durable,
            events: Vec::new(),
        };
        Ok(Slot { node, incarnation })
    }

    /// An exact copy, by replaying the incarnation.
    fn rebuild(&self) -> Slot {
        let inc = &self.incarnation;
        let id = usize::try_from(self.node.id()).expect("small id");
        let config = config(id, inc.pre_vote);
        let mut node =
            RaftNode::recover(config, inc.seed, inc.durable.clone()).expect("it recovered before");
        for (now, event) in &inc.events {
            let _ = node.step(*now, event.clone()).expect("it stepped before");
        }
        Slot {
            node,
            incarnation: inc.clone(),
        }
    }
}

fn config(id: usize, pre_vote: bool) -> Config {
    Config {
        pre_vote,
        ..Config::new(id as NodeId, (0..NODES as NodeId).collect())
    }
}

/// The global state: nodes, network, storage, and the history the
/// invariants need.
#[derive(Clone, Debug)]
pub struct World {
    pub(crate) limits: Limits,
    pub(crate) slots: Vec<Rc<Slot>>,
    pub(crate) now: Vec<Instant>,
    pub(crate) deadline: Vec<Option<Instant>>,
    pub(crate) durable: Vec<Rc<DurableState>>,
    pub(crate) pending: Vec<Rc<VecDeque<Persist>>>,
    pub(crate) network: Vec<Envelope>,
    pub(crate) proposals: u8,
    pub(crate) crashes: u8,
    /// Membership changes a leader took (at most one).
    pub(crate) changes: u8,
    /// Client reads asked.
    pub(crate) reads: u8,
    pub(crate) history: History,
    /// The cluster safety checker every harness runs (`raft_testkit`),
    /// shared until a step changes it. Not part of the state's identity: it
    /// is a second opinion beside this crate's own invariants, which are
    /// checked first ([`World::apply`]).
    safety: Rc<SafetyChecker>,
    /// What `safety` found during the current choice, reported once this
    /// crate's own invariants hold.
    safety_violation: Option<String>,
    /// A readable account of every step, kept only when replaying for a human.
    narration: Option<Vec<String>>,
}

impl World {
    /// Three fresh nodes (seeds 1, 2, 3), each stepped once at time zero to
    /// arm its election timer.
    pub fn initial(limits: Limits) -> Result<World, Violation> {
        // A planted bug is switched per thread. Every replay, on every
        // worker, starts here, before any node of this world steps.
        #[cfg(feature = "canaries")]
        raft_core::canary::set(limits.canary);
        #[cfg(not(feature = "canaries"))]
        assert!(
            limits.canary.is_none(),
            "a canary needs the `canaries` feature"
        );
        let mut world = World {
            limits,
            slots: Vec::new(),
            now: vec![Instant::ZERO; NODES],
            deadline: vec![None; NODES],
            durable: vec![Rc::default(); NODES],
            pending: vec![Rc::default(); NODES],
            network: Vec::new(),
            proposals: 0,
            crashes: 0,
            changes: 0,
            reads: 0,
            history: History::default(),
            safety: Rc::default(),
            safety_violation: None,
            narration: None,
        };
        for id in 0..NODES {
            world.slots.push(Rc::new(Slot::start(
                id,
                1 + id as u64,
                DurableState::default(),
                limits.pre_vote,
            )?));
        }
        for id in 0..NODES {
            world.step(id, Event::TimerFired)?;
        }
        world.check()?;
        Ok(world)
    }

    /// Rebuilds the state a trace reaches, failing on a choice that is not
    /// enabled where it is made or on a violation along the way.
    pub fn replay(limits: Limits, trace: &[Choice]) -> Result<World, String> {
        let mut world = World::initial(limits).map_err(|v| v.to_string())?;
        for (depth, &choice) in trace.iter().enumerate() {
            world
                .apply_checked(choice)
                .map_err(|e| format!("at step {}: {e}", depth + 1))?;
        }
        Ok(world)
    }

    /// Keep a readable account of every step from now on (see [`World::narration`]).
    pub fn narrate(&mut self) {
        self.narration = Some(Vec::new());
    }

    /// The account kept since [`World::narrate`], emptied.
    pub fn take_narration(&mut self) -> Vec<String> {
        self.narration
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The node with this id.
    pub fn node(&self, id: usize) -> &RaftNode {
        &self.slots[id].node
    }

    /// Every choice enabled here, in a fixed order. Identical in-flight
    /// messages are offered once.
    pub fn choices(&self) -> Vec<Choice> {
        let mut out = Vec::new();
        for (k, env) in self.network.iter().enumerate() {
            if k > 0 && self.network[k - 1] == *env {
                continue;
            }
            let k = u16::try_from(k).expect("fewer than 65536 messages in flight");
            out.push(Choice::Deliver(k));
            if self.limits.duplicates {
                out.push(Choice::Duplicate(k));
            }
            if self.limits.drops {
                out.push(Choice::Drop(k));
            }
        }
        for id in 0..NODES as u8 {
            let n = usize::from(id);
            if self.deadline[n].is_some() {
                out.push(Choice::FireTimer(id));
            }
            if !self.pending[n].is_empty() {
                out.push(Choice::CompletePersist(id));
            }
            if self.node(n).is_leader() && self.proposals < self.limits.max_proposals {
                out.push(Choice::Propose(id));
            }
            if self.crashes < self.limits.max_crashes {
                out.push(Choice::Crash(id));
            }
            if self.reads < self.limits.max_reads {
                out.push(Choice::Read(id));
            }
            if self.limits.membership && self.changes == 0 && self.node(n).is_leader() {
                for target in 0..NODES as u8 {
                    out.push(Choice::RemoveMember(id, target));
                }
            }
        }
        out
    }

    /// Like [`World::apply`], but first checks that the choice is enabled.
    pub fn apply_checked(&mut self, choice: Choice) -> Result<(), String> {
        if !self.choices().contains(&choice) {
            return Err(format!("{choice} is not enabled here"));
        }
        self.apply(choice).map_err(|v| v.to_string())
    }

    /// Makes one enabled choice, then checks every invariant.
    pub fn apply(&mut self, choice: Choice) -> Result<(), Violation> {
        if self.narration.is_some() {
            let line = format!("== {choice}: {}", self.describe(choice));
            self.narrate_line(line);
        }
        match choice {
            Choice::Deliver(k) => {
                let env = self.network.remove(usize::from(k));
                self.deliver(&env)?;
            }
            Choice::Duplicate(k) => {
                let env = self.network[usize::from(k)].clone();
                self.deliver(&env)?;
            }
            Choice::Drop(k) => {
                self.network.remove(usize::from(k));
            }
            Choice::FireTimer(id) => {
                let n = usize::from(id);
                let deadline = self.deadline[n].expect("a timer is armed");
                self.now[n] = self.now[n].max(deadline);
                self.step(n, Event::TimerFired)?;
            }
            Choice::CompletePersist(id) => self.complete_persist(usize::from(id))?,
            Choice::Propose(id) => {
                self.proposals += 1;
                let id_num = u64::from(self.proposals);
                let command = format!("c{id_num}").into_bytes();
                let event = Event::ProposalReceived {
                    id: id_num,
                    command,
                };
                self.step(usize::from(id), event)?;
            }
            Choice::Crash(id) => self.crash(usize::from(id))?,
            Choice::Read(id) => {
                self.reads += 1;
                let read = u64::from(self.reads);
                let n = usize::from(id);
                self.history.on_read_requested(n, read);
                let mode = raft_core::ReadMode::ReadIndex;
                self.step(n, Event::ReadRequested { id: read, mode })?;
            }
            Choice::RemoveMember(id, target) => {
                let n = usize::from(id);
                let before = self.node(n).membership().clone();
                let event = Event::MembershipChangeRequested {
                    id: 1,
                    changes: vec![raft_core::MembershipChange::Remove(NodeId::from(target))],
                };
                self.step(n, event)?;
                if *self.node(n).membership() != before {
                    self.changes += 1;
                }
            }
        }
        self.check()?;
        match self.safety_violation.take() {
            Some(what) => Err(Violation::new(format!("safety checker: {what}"))),
            None => Ok(()),
        }
    }

    /// Runs one of the safety checker's checks; a failure is kept for
    /// [`World::apply`] to report (the first one of the choice).
    fn safety_check(&mut self, f: impl FnOnce(&mut SafetyChecker, &World)) {
        if self.safety_violation.is_some() {
            return;
        }
        // Taken out while it checks, so that a checker no other world
        // shares is changed in place rather than copied.
        let mut checker = std::mem::take(&mut self.safety);
        let result = catch_unwind(AssertUnwindSafe(|| f(Rc::make_mut(&mut checker), self)));
        self.safety = checker;
        if let Err(panic) = result {
            self.safety_violation = Some(panic_message(&*panic));
        }
    }

    /// What a choice would do, in words.
    pub fn describe(&self, choice: Choice) -> String {
        let env = |k: u16| &self.network[usize::from(k)];
        match choice {
            Choice::Deliver(k) => {
                let e = env(k);
                format!("n{} -> n{} {:?}", e.from, e.to, e.message())
            }
            Choice::Duplicate(k) => {
                let e = env(k);
                format!("copy of n{} -> n{} {:?}", e.from, e.to, e.message())
            }
            Choice::Drop(k) => {
                let e = env(k);
                format!("lose n{} -> n{} {:?}", e.from, e.to, e.message())
            }
            Choice::FireTimer(n) => format!(
                "n{n}'s timer fires at {:?}",
                self.deadline[usize::from(n)].map(|d| d.as_nanos() / 1_000_000)
            ),
            Choice::CompletePersist(n) => format!(
                "n{n}'s write {:?} is durable",
                self.pending[usize::from(n)].front()
            ),
            Choice::Propose(n) => format!("a client proposes c{} to n{n}", self.proposals + 1),
            Choice::Crash(n) => format!("n{n} crashes and restarts from its image"),
            Choice::RemoveMember(n, m) => format!("the operator asks n{n} to remove n{m}"),
            Choice::Read(n) => format!("a client asks n{n} for read r{}", self.reads + 1),
        }
    }

    /// A readable summary of the whole state.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for n in 0..NODES {
            let node = self.node(n);
            let log: Vec<String> = node
                .log()
                .slice(1, node.log().last_index())
                .iter()
                .map(|e| {
                    format!(
                        "{}@t{}:{}",
                        e.index,
                        e.term,
                        String::from_utf8_lossy(e.command().unwrap_or(b"-"))
                    )
                })
                .collect();
            let image: Vec<String> = self.durable[n]
                .entries
                .iter()
                .map(|e| format!("{}@t{}", e.index, e.term))
                .collect();
            s += &format!(
                "  n{n}: {:?} term {} vote {:?} commit {} applied {} durable {} log [{}] \
                 image {:?} [{}] pending writes {}\n",
                node.role(),
                node.term(),
                node.voted_for(),
                node.commit_index(),
                node.last_applied(),
                node.durable_index(),
                log.join(" "),
                self.durable[n].hard_state,
                image.join(" "),
                self.pending[n].len(),
            );
        }
        for (k, e) in self.network.iter().enumerate() {
            s += &format!("  net[{k}] n{} -> n{} {:?}\n", e.from, e.to, e.message());
        }
        s
    }

    fn narrate_line(&mut self, line: String) {
        if let Some(lines) = self.narration.as_mut() {
            lines.push(line);
        }
    }

    /// The node's slot, rebuilt first if another state shares it.
    fn slot_mut(&mut self, n: usize) -> &mut Slot {
        if Rc::get_mut(&mut self.slots[n]).is_none() {
            let copy = self.slots[n].rebuild();
            self.slots[n] = Rc::new(copy);
        }
        Rc::get_mut(&mut self.slots[n]).expect("just made unique")
    }

    fn deliver(&mut self, env: &Envelope) -> Result<(), Violation> {
        let event = Event::MessageReceived {
            from: env.from,
            message: env.message(),
        };
        let to = usize::try_from(env.to).expect("checked when sent");
        self.step(to, event)
    }

    /// Steps node `n` at its own time and executes what it returns. A panic
    /// or an error from the core is a violation.
    fn step(&mut self, n: usize, event: Event) -> Result<(), Violation> {
        let now = self.now[n];
        if self.narration.is_some() {
            self.narrate_line(format!(
                "   n{n} <- {event:?} at {}ms",
                now.as_nanos() / 1_000_000
            ));
        }
        let slot = self.slot_mut(n);
        slot.incarnation.events.push((now, event.clone()));
        let term_before = slot.node.term();
        let node = &mut slot.node;
        let actions = match catch_unwind(AssertUnwindSafe(|| node.step(now, event))) {
            Err(panic) => {
                return Err(Violation::new(format!(
                    "node {n} panicked in step: {}",
                    panic_message(&*panic)
                )))
            }
            Ok(Err(e)) => return Err(Violation::new(format!("node {n}'s step failed: {e}"))),
            Ok(Ok(actions)) => actions,
        };
        if slot.node.term() < term_before {
            return Err(Violation::new(format!(
                "node {n}'s term went from {term_before} down to {}",
                slot.node.term()
            )));
        }
        self.safety_check(|c, w| c.after_step(w.node(n)));
        for action in actions {
            if self.narration.is_some() {
                self.narrate_line(format!("   n{n} -> {action:?}"));
            }
            self.execute(n, action)?;
        }
        Ok(())
    }

    fn execute(&mut self, n: usize, action: Action) -> Result<(), Violation> {
        match action {
            Action::Send { to, message } => self.release(n, to, &message)?,
            Action::Persist(p) => {
                self.safety_check(|c, w| c.persist_issued(n as NodeId, w.node(n), &p));
                Rc::make_mut(&mut self.pending[n]).push_back(p);
            }
            Action::Apply { entries } => {
                self.safety_check(|c, _| c.entries_applied(n as NodeId, &entries));
                self.history.on_apply(n, &entries, &self.durable[n])?;
            }
            Action::ApplySnapshot { .. } => {
                return Err(Violation::new(format!(
                    "node {n} was told to install a snapshot, but nobody snapshots in this model"
                )))
            }
            // Only a compacted log is sent as a snapshot: none is here, so a
            // transfer (and its `SnapshotSendEnded`) never happens.
            Action::SendSnapshot { to, .. } => {
                return Err(Violation::new(format!(
                    "node {n} was asked to send node {to} a snapshot, but nobody snapshots in this model"
                )))
            }
            Action::SetTimer { deadline } => self.deadline[n] = Some(deadline),
            Action::AcceptProposal { .. }
            | Action::RejectProposal { .. }
            | Action::LeadershipTransfer { .. }
            | Action::AcceptMembershipChange { .. }
            | Action::RejectMembershipChange { .. }
            | Action::MembershipChanged { .. } => {}
            Action::ReadReady { id, index } => self.history.on_read_ready(n, id, index)?,
            Action::RejectRead { id, .. } => self.history.on_read_refused(n, id)?,
        }
        Ok(())
    }

    /// A message leaves node `from` for the network.
    fn release(&mut self, from: usize, to: NodeId, message: &Message) -> Result<(), Violation> {
        self.history
            .on_send(from, to, message, &self.durable[from])?;
        self.safety_check(|c, w| c.check_send(from as NodeId, to, message, &w.durable[from]));
        let bytes = postcard::to_allocvec(message)
            .expect("messages encode")
            .into();
        let env = Envelope {
            to,
            from: from as NodeId,
            bytes,
        };
        let at = self.network.binary_search(&env).unwrap_or_else(|at| at);
        self.network.insert(at, env);
        Ok(())
    }

    /// The oldest write of node `n` becomes durable: apply it to the image,
    /// let its messages go, and tell the node.
    fn complete_persist(&mut self, n: usize) -> Result<(), Violation> {
        let p = Rc::make_mut(&mut self.pending[n])
            .pop_front()
            .expect("a write is pending");
        let before = self.durable[n].hard_state;
        let image = Rc::make_mut(&mut self.durable[n]);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| image.apply(&p))) {
            return Err(Violation::new(format!(
                "node {n}'s write {} does not fit its image: {}",
                p.id,
                panic_message(&*panic)
            )));
        }
        self.history
            .on_durable(n, before, self.durable[n].hard_state)?;
        for (to, message) in &p.then_send {
            self.release(n, *to, message)?;
        }
        self.step(n, Event::Persisted { upto: p.id })
    }

    /// Node `n` loses its memory and its writes in flight, and restarts from
    /// its image with a fresh seed. Messages already sent stay in flight.
    fn crash(&mut self, n: usize) -> Result<(), Violation> {
        self.crashes += 1;
        self.pending[n] = Rc::default();
        self.deadline[n] = None;
        self.history.on_crash(n);
        let seed = 1000 * u64::from(self.crashes) + n as u64;
        let durable = (*self.durable[n]).clone();
        self.slots[n] = Rc::new(Slot::start(n, seed, durable, self.limits.pre_vote)?);
        self.step(n, Event::TimerFired)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic)".to_string()
    }
}
