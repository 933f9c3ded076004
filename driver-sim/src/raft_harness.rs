//! The Raft lab harness: a port of the 6.5840 (2023) `raft/config.go`
//! (lab-tests.md §2) onto the simulator. Servers are `RaftNode`s hosted in
//! slots; the network follows labrpc; persisters hold encoded state; appliers
//! check what the nodes apply; the safety checker runs after every step.
//!
//! This file runs the servers and implements [`RaftHarness`]; what the
//! tester does with them (`one`, `wait`, the leader and term checks, the
//! appliers, the result line) is the `lab` crate's, shared with the other
//! drivers' harnesses.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use raft_core::{Action, Config, Event, Index, Instant, Message, RaftNode, Term, TransferOutcome};

use lab::net::{Faults, ReplyFate, RequestFate, Traffic};
use lab::{Appliers, Cmd, Harness, RaftCounters, RaftHarness, Runtime, TestRun};
use raft_testkit::{fnv1a, Persister, SafetyChecker};

use crate::executor::{now, schedule_after, schedule_at, with_rng, SimRuntime};

/// A running server: one incarnation of a node.
struct Slot {
    node: RaftNode,
    /// Incarnation number; a restart makes a new one, and messages or timers
    /// for an older one are discarded.
    gen: u64,
    timer: Option<Instant>,
}

/// The mutable state of a cluster (the Go `config` struct).
struct World {
    n: usize,
    slots: Vec<Option<Slot>>,
    gens: Vec<u64>,
    persisters: Vec<Persister>,
    connected: Vec<bool>,
    faults: Faults,
    traffic: Traffic,
    rpc_count: Vec<u64>,
    appliers: Appliers,
    safety: SafetyChecker,
    next_proposal: u64,
    trace: u64,
    run: TestRun<RaftCounters>,
}

/// A handle on a simulated Raft cluster, the Rust twin of the Go tests'
/// `cfg`. Cheap to clone into spawned tasks.
///
/// `PRE_VOTE` sets every node's `Config::pre_vote`: off in [`Cfg`] (the
/// lab's, whose tests count RPCs and terms of plain Raft), on in
/// [`PreVoteCfg`] (the same bodies with pre-vote).
#[derive(Clone)]
pub struct SimCfg<const PRE_VOTE: bool> {
    world: Rc<RefCell<World>>,
}

/// The lab's Raft harness: pre-vote off.
pub type Cfg = SimCfg<false>;

/// The Raft harness with pre-vote on in every node.
pub type PreVoteCfg = SimCfg<true>;

/// A follow-up input for a node, produced while executing its actions.
enum FollowUp {
    Persisted(u64),
    Snapshot(Index, Vec<u8>),
}

impl<const PRE_VOTE: bool> Harness for SimCfg<PRE_VOTE> {
    type Rt = SimRuntime;
}

impl<const PRE_VOTE: bool> RaftHarness for SimCfg<PRE_VOTE> {
    /// `make_config(n, unreliable, snapshot)`: starts `n` servers (with the
    /// snapshotting applier if `snapshot`), connects them all.
    fn new(n: usize, unreliable: bool, snapshot: bool) -> Self {
        let world = World {
            n,
            slots: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            persisters: vec![Persister::new(); n],
            connected: vec![false; n],
            faults: Faults {
                reliable: !unreliable,
                ..Faults::default()
            },
            traffic: Traffic::default(),
            rpc_count: vec![0; n],
            appliers: Appliers::new(n, snapshot),
            safety: SafetyChecker::default(),
            next_proposal: 0,
            trace: 0,
            run: TestRun::new(SimRuntime::now()),
        };
        let cfg = SimCfg {
            world: Rc::new(RefCell::new(world)),
        };
        for i in 0..n {
            cfg.start1(i);
        }
        for i in 0..n {
            cfg.connect(i);
        }
        cfg
    }

    /// Number of servers.
    fn n(&self) -> usize {
        self.world.borrow().n
    }

    /// Crash server `i`: disconnect it, delete it from the network, detach its
    /// persister. Its in-flight replies are discarded.
    fn crash1(&self, i: usize) {
        self.disconnect(i);
        self.world.borrow_mut().slots[i] = None;
        self.trace_connectivity(i, "crashed");
    }

    /// (Re)start server `i` from its persisted state, not connected.
    fn start1(&self, i: usize) {
        self.crash1(i);
        let (node, gen) = {
            let mut w = self.world.borrow_mut();
            w.gens[i] += 1;
            w.rpc_count[i] = 0;
            let (state, snapshot) = w.persisters[i].load();
            w.appliers.restarted(i, snapshot.as_deref());
            let members: Vec<u64> = (0..w.n as u64).collect();
            let config = Config {
                pre_vote: PRE_VOTE,
                ..Config::new(i as u64, members)
            };
            let seed = with_rng(|r| r.next_u64());
            let node = RaftNode::recover(config, seed, state, snapshot)
                .expect("a node recovers from what it persisted");
            (node, w.gens[i])
        };
        self.world.borrow_mut().slots[i] = Some(Slot {
            node,
            gen,
            timer: None,
        });
        self.step(i, Event::TimerFired, None);
    }

    /// Is server `i` running (not crashed)?
    fn is_alive(&self, i: usize) -> bool {
        self.world.borrow().slots[i].is_some()
    }

    /// Connect server `i` to every other connected server.
    fn connect(&self, i: usize) {
        self.world.borrow_mut().connected[i] = true;
        self.trace_connectivity(i, "connected");
    }

    /// Cut server `i` off from every other server.
    fn disconnect(&self, i: usize) {
        self.world.borrow_mut().connected[i] = false;
        self.trace_connectivity(i, "disconnected");
    }

    /// Is server `i` connected?
    fn is_connected(&self, i: usize) -> bool {
        self.world.borrow().connected[i]
    }

    /// Turn request/reply loss and short delays on (`false`) or off.
    fn set_unreliable(&self, unreliable: bool) {
        self.world.borrow_mut().faults.reliable = !unreliable;
    }

    /// Turn long reordering of replies on or off.
    fn set_long_reordering(&self, on: bool) {
        self.world.borrow_mut().faults.long_reordering = on;
    }

    /// `rf.Start(cmd)` on server `i`: `Some((index, term))` if it is the
    /// leader and accepted the command, `None` otherwise (or if crashed).
    fn start(&self, i: usize, cmd: impl Into<Cmd>) -> Option<(Index, Term)> {
        let id = {
            let mut w = self.world.borrow_mut();
            w.slots[i].as_ref()?;
            w.next_proposal += 1;
            w.next_proposal
        };
        let command = cmd.into().encode();
        let actions = self.step(i, Event::ProposalReceived { id, command }, None);
        actions.iter().find_map(|a| match *a {
            Action::AcceptProposal {
                id: aid,
                index,
                term,
            } if aid == id => Some((index, term)),
            _ => None,
        })
    }

    /// `rf.GetState()` on server `i`: (term, is leader). A crashed server
    /// answers `(0, false)`.
    fn get_state(&self, i: usize) -> (Term, bool) {
        let w = self.world.borrow();
        w.slots[i]
            .as_ref()
            .map_or((0, false), |s| (s.node.term(), s.node.is_leader()))
    }

    /// Prints nothing yet; records baselines for `end`'s result line.
    fn begin(&self, name: &str) {
        let mut w = self.world.borrow_mut();
        let counters = w.counters();
        w.run.begin(name, SimRuntime::now(), counters);
    }

    /// Checks the time limit and prints the lab's result line: virtual
    /// seconds, peers, RPCs, bytes, commands committed.
    fn end(&self) {
        let w = self.world.borrow();
        w.run.end(SimRuntime::now(), w.n, w.counters());
    }

    /// How many servers have applied `index`, and the command there.
    fn n_committed(&self, index: Index) -> (usize, Option<Cmd>) {
        self.world.borrow().appliers.n_committed(index)
    }

    /// Handler invocations on server `i` since it (re)started.
    fn rpc_count(&self, i: usize) -> u64 {
        self.world.borrow().rpc_count[i]
    }

    /// Requests sent so far.
    fn rpc_total(&self) -> u64 {
        self.world.borrow().traffic.rpc_total
    }

    /// Request bytes plus delivered reply bytes so far.
    fn bytes_total(&self) -> u64 {
        self.world.borrow().traffic.bytes_total
    }

    /// The largest encoded Raft state over all servers.
    fn log_size(&self) -> usize {
        let w = self.world.borrow();
        w.persisters
            .iter()
            .map(Persister::raft_state_size)
            .max()
            .unwrap_or(0)
    }

    /// The largest snapshot over all servers.
    fn snapshot_size(&self) -> usize {
        let w = self.world.borrow();
        w.persisters
            .iter()
            .map(Persister::snapshot_size)
            .max()
            .unwrap_or(0)
    }
}

impl<const PRE_VOTE: bool> SimCfg<PRE_VOTE> {
    /// With `SIM_TRACE_ROLES=1`: what happened to server `i`, and which
    /// servers are now up and connected (`+`), for reading liveness failures.
    fn trace_connectivity(&self, i: usize, what: &str) {
        if !crate::trace_roles() {
            return;
        }
        let w = self.world.borrow();
        let up: String = (0..w.n)
            .map(|j| {
                if w.slots[j].is_some() && w.connected[j] {
                    '+'
                } else {
                    '.'
                }
            })
            .collect();
        eprintln!(
            "{:>10.3} s  server {i} {what}; up and connected: {up}",
            now().as_nanos() as f64 / 1e9
        );
    }

    /// A fingerprint of every message delivered so far and when: equal for
    /// two runs of a scenario with the same seed.
    pub fn trace_hash(&self) -> u64 {
        self.world.borrow().trace
    }

    /// Asks server `i` to hand its leadership to server `to` (or, with
    /// `None`, to the most up-to-date voter): steps it with
    /// `Event::LeadershipTransferRequested` and returns the transfer outcomes
    /// it reported at once (none if it is not running).
    pub fn transfer_leadership(&self, i: usize, to: Option<usize>) -> Vec<TransferOutcome> {
        let to = to.map(|t| t as raft_core::NodeId);
        let actions = self.step(i, Event::LeadershipTransferRequested { to }, None);
        actions
            .iter()
            .filter_map(|a| match a {
                Action::LeadershipTransfer { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    // ----- driving nodes --------------------------------------------------

    /// Steps server `i` (if running) and executes its actions, including any
    /// follow-up inputs they cause. Returns the actions of the first step.
    /// `caller` is the (server, incarnation) whose request is being handled.
    fn step(&self, i: usize, event: Event, caller: Option<(usize, u64)>) -> Vec<Action> {
        let mut first = None;
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = {
                let mut w = self.world.borrow_mut();
                let w = &mut *w;
                let Some(slot) = w.slots[i].as_mut() else {
                    break;
                };
                let before = (slot.node.role(), slot.node.term());
                let actions = slot
                    .node
                    .step(now(), event)
                    .expect("the harness uses the node correctly");
                w.safety.after_step(&slot.node);
                if crate::trace_roles() && before != (slot.node.role(), slot.node.term()) {
                    let n = &slot.node;
                    eprintln!(
                        "{:>10.3} s  server {i}: {:?} term {} (was {:?} term {}), log {}/{}, commit {}",
                        now().as_nanos() as f64 / 1e9,
                        n.role(),
                        n.term(),
                        before.0,
                        before.1,
                        n.log().last_term(),
                        n.log().last_index(),
                        n.commit_index()
                    );
                }
                actions
            };
            for follow in self.execute(i, &actions, caller) {
                queue.push_back(match follow {
                    FollowUp::Persisted(upto) => Event::Persisted { upto },
                    FollowUp::Snapshot(index, data) => Event::SnapshotTaken { index, data },
                });
            }
            first.get_or_insert(actions);
        }
        first.unwrap_or_default()
    }

    fn execute(&self, i: usize, actions: &[Action], caller: Option<(usize, u64)>) -> Vec<FollowUp> {
        let mut follow = Vec::new();
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(i, *to as usize, message, caller),
                Action::Persist(p) => {
                    {
                        let mut w = self.world.borrow_mut();
                        let w = &mut *w;
                        w.persisters[i].save(p);
                        if let Some(slot) = w.slots[i].as_ref() {
                            w.safety.persist_issued(i as u64, &slot.node, p);
                        }
                    }
                    for (to, message) in &p.then_send {
                        self.send(i, *to as usize, message, caller);
                    }
                    follow.push(FollowUp::Persisted(p.id));
                }
                Action::Apply { entries } => {
                    let mut w = self.world.borrow_mut();
                    w.safety.entries_applied(i as u64, entries);
                    if let Some((index, data)) = w.appliers.apply_entries(i, entries) {
                        follow.push(FollowUp::Snapshot(index, data));
                    }
                }
                Action::ApplySnapshot { snapshot } => {
                    let mut w = self.world.borrow_mut();
                    w.appliers
                        .apply_snapshot(i, &snapshot.data, snapshot.meta.index);
                }
                Action::SetTimer { deadline } => self.set_timer(i, *deadline),
                Action::AcceptProposal { .. }
                | Action::RejectProposal { .. }
                | Action::LeadershipTransfer { .. }
                | Action::AcceptMembershipChange { .. }
                | Action::RejectMembershipChange { .. }
                | Action::MembershipChanged { .. } => {}
            }
        }
        follow
    }

    fn set_timer(&self, i: usize, deadline: Instant) {
        let gen = {
            let mut w = self.world.borrow_mut();
            let Some(slot) = w.slots[i].as_mut() else {
                return;
            };
            slot.timer = Some(deadline);
            slot.gen
        };
        let cfg = self.clone();
        schedule_at(deadline, move || {
            let current = {
                let w = cfg.world.borrow();
                w.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.gen == gen && s.timer == Some(deadline))
            };
            if current {
                cfg.step(i, Event::TimerFired, None);
            }
        });
    }

    /// Server `from` sends `message` to `to` with labrpc semantics: requests
    /// start a call; replies answer the call being handled (`caller`).
    fn send(&self, from: usize, to: usize, message: &Message, caller: Option<(usize, u64)>) {
        let bytes = postcard::to_allocvec(message).expect("messages encode");
        let mut w = self.world.borrow_mut();
        let w = &mut *w;
        w.safety
            .check_send(from as u64, to as u64, message, w.persisters[from].state());
        let from_gen = w.gens[from];
        if message.is_request() {
            let enabled = w.connected[from] && w.connected[to] && w.slots[to].is_some();
            let to_gen = w.gens[to];
            w.traffic.request_sent(bytes.len());
            match with_rng(|r| w.faults.send_request(enabled, r)) {
                RequestFate::Fail => {}
                RequestFate::Deliver { delay } => {
                    let cfg = self.clone();
                    schedule_after(delay, move || {
                        cfg.request_arrived(from, from_gen, to, to_gen, bytes)
                    });
                }
            }
        } else {
            let caller_gen = match caller {
                Some((c, g)) if c == to => g,
                _ => w.gens[to],
            };
            let alive = w.connected[from]
                && w.connected[to]
                && w.gens[to] == caller_gen
                && w.slots[from].as_ref().is_some_and(|s| s.gen == from_gen);
            match with_rng(|r| w.faults.send_reply(alive, r)) {
                ReplyFate::Drop => {}
                ReplyFate::Deliver { delay } => {
                    let cfg = self.clone();
                    schedule_after(delay, move || {
                        cfg.reply_arrived(from, to, caller_gen, bytes)
                    });
                }
            }
        }
    }

    fn request_arrived(&self, from: usize, from_gen: u64, to: usize, to_gen: u64, bytes: Vec<u8>) {
        {
            let mut w = self.world.borrow_mut();
            if with_rng(|r| w.faults.drop_request_now(r)) {
                return;
            }
            // The server was replaced meanwhile: the old instance handles it
            // and its reply is discarded; nothing observable remains.
            if w.slots[to].as_ref().is_none_or(|s| s.gen != to_gen) {
                return;
            }
            w.rpc_count[to] += 1;
            w.trace = fnv1a(w.trace, &now().as_nanos().to_le_bytes());
            w.trace = fnv1a(w.trace, &[from as u8, to as u8]);
            w.trace = fnv1a(w.trace, &bytes);
        }
        let message: Message = postcard::from_bytes(&bytes).expect("messages decode");
        self.step(
            to,
            Event::MessageReceived {
                from: from as u64,
                message,
            },
            Some((from, from_gen)),
        );
    }

    fn reply_arrived(&self, from: usize, to: usize, to_gen: u64, bytes: Vec<u8>) {
        {
            let mut w = self.world.borrow_mut();
            w.traffic.reply_delivered(bytes.len());
            if w.slots[to].as_ref().is_none_or(|s| s.gen != to_gen) {
                return;
            }
            w.trace = fnv1a(w.trace, &now().as_nanos().to_le_bytes());
            w.trace = fnv1a(w.trace, &[from as u8, to as u8]);
            w.trace = fnv1a(w.trace, &bytes);
        }
        let message: Message = postcard::from_bytes(&bytes).expect("messages decode");
        self.step(
            to,
            Event::MessageReceived {
                from: from as u64,
                message,
            },
            None,
        );
    }
}

impl World {
    /// The result line's counters now.
    fn counters(&self) -> RaftCounters {
        RaftCounters {
            rpcs: self.traffic.rpc_total,
            bytes: self.traffic.bytes_total,
            max_index: self.appliers.max_index(),
        }
    }
}
