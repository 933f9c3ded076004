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
use std::time::Duration;

use std::collections::BTreeMap;

use raft_core::{
    Action, ChangeRefusal, Config, Event, Index, Instant, Membership, MembershipChange, Message,
    NodeId, RaftNode, Term, TransferOutcome,
};

use lab::net::{Faults, ReplyFate, RequestFate, Traffic};
use lab::{Appliers, Cmd, Harness, RaftCounters, RaftHarness, Runtime, TestRun};
use raft_testkit::{fnv1a, Persister, SafetyChecker};

use crate::clock::{draw_clock, ClockDrift, NodeClock};
use crate::executor::{now, schedule_after, schedule_at, sleep, with_rng, SimRuntime};

/// A running server: one incarnation of a node.
struct Slot {
    node: RaftNode,
    /// Incarnation number; a restart makes a new one, and messages or timers
    /// for an older one are discarded.
    gen: u64,
    /// The deadline of its last `SetTimer`, in its own local time.
    timer: Option<Instant>,
}

/// One server, by node id: its running incarnation (if any) and what
/// outlives a crash.
struct Server {
    slot: Option<Slot>,
    /// The incarnation counter (the latest incarnation's `gen`).
    gen: u64,
    persister: Persister,
    connected: bool,
    rpc_count: u64,
    /// The `Config::members` it starts with: the cluster's initial voters,
    /// or none for a server added to a running cluster (it learns the
    /// configuration from the leader).
    members: Vec<NodeId>,
    /// Its machine's clock: kept across crashes and restarts, and running
    /// while it is down, so its local time never goes backwards.
    clock: NodeClock,
    /// Bumped when the clock's rate changes, which re-arms the timer:
    /// timers armed before then are stale.
    clock_epoch: u64,
}

/// The mutable state of a cluster (the Go `config` struct).
struct World {
    /// How many servers the cluster was made with (the result line's peers).
    n: usize,
    /// Every server ever added, by node id. The first `n` have ids
    /// `0..n` (the lab's server numbers); each added one takes the next
    /// unused id, and ids are never reused.
    servers: BTreeMap<NodeId, Server>,
    /// The bound every server's clock rate is drawn within.
    drift: ClockDrift,
    faults: Faults,
    traffic: Traffic,
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
///
/// `DRIFT_PPM` is the clock-drift bound [`RaftHarness::new`] uses
/// ([`ClockDrift`], `crate::clock`): zero (the default, perfect clocks) in
/// the lab's harnesses; [`DriftCfg`] draws every server's clock rate within
/// 5%. [`SimCfg::with_drift`] takes the bound at run time.
#[derive(Clone)]
pub struct SimCfg<const PRE_VOTE: bool, const DRIFT_PPM: u64 = 0> {
    world: Rc<RefCell<World>>,
}

/// The lab's Raft harness: pre-vote off.
pub type Cfg = SimCfg<false>;

/// The Raft harness with pre-vote on in every node.
pub type PreVoteCfg = SimCfg<true>;

/// The lab's Raft harness with every server's clock drifting: each runs at
/// its own rate, drawn uniformly within [`ClockDrift::CHAOS`] (±5%), from
/// its own epoch.
pub type DriftCfg = SimCfg<false, { ClockDrift::CHAOS.max_ppm }>;

/// How long [`SimCfg::change_membership`] and its helpers keep trying:
/// the lab's `one()` budget.
pub const MEMBERSHIP_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A follow-up input for a node, produced while executing its actions.
enum FollowUp {
    Persisted(u64),
    /// The service's snapshot through this index is staged.
    Snapshot(Index),
}

impl<const PRE_VOTE: bool, const DRIFT_PPM: u64> Harness for SimCfg<PRE_VOTE, DRIFT_PPM> {
    type Rt = SimRuntime;
}

impl<const PRE_VOTE: bool, const DRIFT_PPM: u64> RaftHarness for SimCfg<PRE_VOTE, DRIFT_PPM> {
    /// `make_config(n, unreliable, snapshot)`: starts `n` servers (with the
    /// snapshotting applier if `snapshot`), connects them all.
    /// Every server's clock drifts within `DRIFT_PPM` (none by default).
    fn new(n: usize, unreliable: bool, snapshot: bool) -> Self {
        Self::with_drift(n, unreliable, snapshot, ClockDrift::ppm(DRIFT_PPM))
    }

    /// Number of server ids handed out: the servers the cluster was made
    /// with plus those added since ([`SimCfg::add_server`]); a server
    /// number `i` is node id `i`. Removed servers keep their number.
    fn n(&self) -> usize {
        self.world.borrow().servers.len()
    }

    /// Crash server `i`: disconnect it, delete it from the network, detach its
    /// persister. Its in-flight replies are discarded.
    fn crash1(&self, i: usize) {
        self.disconnect(i);
        self.world.borrow_mut().server(i).slot = None;
        self.trace_connectivity(i, "crashed");
    }

    /// (Re)start server `i` from its persisted state, not connected.
    fn start1(&self, i: usize) {
        self.crash1(i);
        let (node, gen) = {
            let mut w = self.world.borrow_mut();
            let w = &mut *w;
            let server = w.server(i);
            server.gen += 1;
            server.rpc_count = 0;
            // Snapshots staged but never named by a persist do not survive.
            server.persister = server.persister.after_crash();
            let (state, snapshot) = server.persister.load();
            let gen = server.gen;
            let config = Config {
                pre_vote: PRE_VOTE,
                ..Config::new(i as NodeId, server.members.clone())
            };
            w.appliers.restarted(i, snapshot.as_deref());
            let seed = with_rng(|r| r.next_u64());
            let node = RaftNode::recover(config, seed, state)
                .expect("a node recovers from what it persisted");
            (node, gen)
        };
        self.world.borrow_mut().server(i).slot = Some(Slot {
            node,
            gen,
            timer: None,
        });
        self.step(i, Event::TimerFired, None);
    }

    /// Is server `i` running (not crashed)?
    fn is_alive(&self, i: usize) -> bool {
        self.world.borrow().get(i).is_some_and(|s| s.slot.is_some())
    }

    /// Connect server `i` to every other connected server.
    fn connect(&self, i: usize) {
        self.world.borrow_mut().server(i).connected = true;
        self.trace_connectivity(i, "connected");
    }

    /// Cut server `i` off from every other server.
    fn disconnect(&self, i: usize) {
        self.world.borrow_mut().server(i).connected = false;
        self.trace_connectivity(i, "disconnected");
    }

    /// Is server `i` connected?
    fn is_connected(&self, i: usize) -> bool {
        self.world.borrow().get(i).is_some_and(|s| s.connected)
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
            w.get(i)?.slot.as_ref()?;
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
        w.get(i)
            .and_then(|s| s.slot.as_ref())
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
        self.world.borrow().get(i).map_or(0, |s| s.rpc_count)
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
        w.servers
            .values()
            .map(|s| s.persister.raft_state_size())
            .max()
            .unwrap_or(0)
    }

    /// The largest snapshot over all servers.
    fn snapshot_size(&self) -> usize {
        let w = self.world.borrow();
        w.servers
            .values()
            .map(|s| s.persister.snapshot_size())
            .max()
            .unwrap_or(0)
    }
}

impl<const PRE_VOTE: bool, const DRIFT_PPM: u64> SimCfg<PRE_VOTE, DRIFT_PPM> {
    /// With `SIM_TRACE_ROLES=1`: what happened to server `i`, and which
    /// servers are now up and connected (`+`), for reading liveness failures.
    fn trace_connectivity(&self, i: usize, what: &str) {
        if !crate::trace_roles() {
            return;
        }
        let w = self.world.borrow();
        let up: String = w
            .servers
            .values()
            .map(|s| {
                if s.slot.is_some() && s.connected {
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

    /// `make_config(n, unreliable, snapshot)` with every server's clock
    /// drifting within `drift`: each runs at its own rate, drawn uniformly
    /// within the bound, from its own epoch (a random offset under 1 s).
    /// With [`ClockDrift::NONE`] every clock is the global one and nothing
    /// is drawn: the run is that of [`RaftHarness::new`] without drift.
    pub fn with_drift(n: usize, unreliable: bool, snapshot: bool, drift: ClockDrift) -> Self {
        let members: Vec<NodeId> = (0..n as NodeId).collect();
        let world = World {
            n,
            servers: members
                .iter()
                .map(|&id| (id, Server::new(members.clone(), drift)))
                .collect(),
            drift,
            faults: Faults {
                reliable: !unreliable,
                ..Faults::default()
            },
            traffic: Traffic::default(),
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

    /// Server `i`'s clock.
    pub fn clock(&self, i: usize) -> NodeClock {
        self.world.borrow().get(i).expect("a server").clock
    }

    /// Server `i`'s local time now: what it is stepped with.
    pub fn local_now(&self, i: usize) -> Instant {
        self.clock(i).local(now())
    }

    /// From now on, server `i`'s clock runs at `rate_ppm` parts per million
    /// of real time (its local time now is unchanged). Any rate goes, also
    /// one beyond the harness's bound
    /// ([`ClockDrift::draw_rate_beyond`]), to break the clock assumption a
    /// lease rests on. A pending timer is re-armed at the global time its
    /// local deadline now falls on.
    pub fn set_clock_rate(&self, i: usize, rate_ppm: u64) {
        let timer = {
            let mut w = self.world.borrow_mut();
            let server = w.server(i);
            server.clock.set_rate(now(), rate_ppm);
            server.clock_epoch += 1;
            server.slot.as_ref().and_then(|s| s.timer)
        };
        if let Some(deadline) = timer {
            self.set_timer(i, deadline);
        }
    }

    /// The clock-drift bound the servers' rates were drawn within.
    pub fn drift(&self) -> ClockDrift {
        self.world.borrow().drift
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

    // ----- membership -----------------------------------------------------

    /// Adds a server: a fresh node with the next unused id that knows no
    /// configuration (empty `Config::members`), started and connected. It
    /// never stands for election; it learns the configuration from the
    /// leader once a configuration names it (add it with
    /// [`SimCfg::change_membership`]). Returns its number, which is its
    /// node id.
    pub fn add_server(&self) -> usize {
        let id = {
            let mut w = self.world.borrow_mut();
            let id = w.servers.len();
            let added = w.appliers.add_server();
            assert_eq!(added, id, "server numbers are node ids");
            let server = Server::new(Vec::new(), w.drift);
            w.servers.insert(id as NodeId, server);
            id
        };
        self.start1(id);
        self.connect(id);
        id
    }

    /// The running, connected server that leads the highest term, if any.
    pub fn leader(&self) -> Option<usize> {
        let w = self.world.borrow();
        w.servers
            .iter()
            .filter(|(_, s)| s.connected)
            .filter_map(|(&id, s)| s.slot.as_ref().map(|slot| (id, &slot.node)))
            .filter(|(_, node)| node.is_leader())
            .max_by_key(|(_, node)| node.term())
            .map(|(id, _)| id as usize)
    }

    /// Server `i`'s effective configuration (the latest in its log), if it
    /// is running.
    pub fn membership(&self, i: usize) -> Option<Membership> {
        self.with_node(i, |n| n.membership().clone())
    }

    /// Server `i`'s latest committed configuration, if it is running.
    pub fn committed_membership(&self, i: usize) -> Option<Membership> {
        self.with_node(i, |n| n.committed_membership().clone())
    }

    /// What the running leader `leader` knows of `peer`'s log: its match
    /// index (`None` if `leader` does not lead or does not replicate to it).
    pub fn match_index(&self, leader: usize, peer: usize) -> Option<Index> {
        self.with_node(leader, |n| {
            n.progress(peer as NodeId).map(|p| p.match_index)
        })
        .flatten()
    }

    /// Server `i`'s commit index, if it is running.
    pub fn commit_index(&self, i: usize) -> Option<Index> {
        self.with_node(i, RaftNode::commit_index)
    }

    /// The last index in server `i`'s log, if it is running.
    pub fn last_index(&self, i: usize) -> Option<Index> {
        self.with_node(i, |n| n.log().last_index())
    }

    fn with_node<T>(&self, i: usize, f: impl FnOnce(&RaftNode) -> T) -> Option<T> {
        let w = self.world.borrow();
        w.get(i).and_then(|s| s.slot.as_ref()).map(|s| f(&s.node))
    }

    /// Asks server `i` once to make `changes`
    /// (`Event::MembershipChangeRequested`): the index and configuration of
    /// the entry it appended, or why it refused.
    pub fn request_membership_change(
        &self,
        i: usize,
        changes: &[MembershipChange],
    ) -> Result<(Index, Membership), ChangeRefusal> {
        let id = {
            let mut w = self.world.borrow_mut();
            if w.get(i).is_none_or(|s| s.slot.is_none()) {
                return Err(ChangeRefusal::NotLeader { leader_hint: None });
            }
            w.next_proposal += 1;
            w.next_proposal
        };
        let event = Event::MembershipChangeRequested {
            id,
            changes: changes.to_vec(),
        };
        let actions = self.step(i, event, None);
        for a in actions {
            match a {
                Action::AcceptMembershipChange {
                    id: aid,
                    index,
                    membership,
                    ..
                } if aid == id => return Ok((index, membership)),
                Action::RejectMembershipChange { id: aid, reason } if aid == id => {
                    return Err(reason)
                }
                _ => {}
            }
        }
        panic!("server {i} answered no membership change request {id}")
    }

    /// Makes `changes` through whoever leads, the way a client would:
    /// retries while there is no leader, the leader is not ready, another
    /// change is in progress or a transfer is, and again if leadership is
    /// lost before the change commits; then waits until a leader has
    /// committed the resulting configuration and settled on it (a joint
    /// one left). Returns that configuration; an invalid change is refused
    /// at once, and after [`MEMBERSHIP_CHANGE_TIMEOUT`] the last refusal
    /// is returned.
    pub async fn change_membership(
        &self,
        changes: &[MembershipChange],
    ) -> Result<Membership, ChangeRefusal> {
        let started = now();
        let mut target: Option<Membership> = None;
        let mut last = ChangeRefusal::NotLeader { leader_hint: None };
        while now() - started < MEMBERSHIP_CHANGE_TIMEOUT {
            let Some(leader) = self.leader() else {
                sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            if let Some(t) = &target {
                let settled = self.committed_membership(leader).as_ref() == Some(t)
                    && self.membership(leader).as_ref() == Some(t);
                if settled {
                    return Ok(t.clone());
                }
                // Still on its way (the entry, or the leave of a joint one,
                // is in the leader's log): wait. Otherwise it was lost.
                let latest = self.membership(leader).expect("the leader runs");
                if &latest == t || latest.leave_joint() == *t {
                    sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            }
            match self.request_membership_change(leader, changes) {
                Ok((_, m)) => target = Some(m.leave_joint()),
                // Refused as invalid before any leader took it: the change
                // itself is wrong. Once one took it, an invalid answer comes
                // from a leader whose log is behind ours or ahead of it (a
                // stale leader in a partition still taking requests, seed
                // 361 of partitions_during_joint_change): keep waiting.
                Err(ChangeRefusal::Invalid(e)) if target.is_none() => {
                    return Err(ChangeRefusal::Invalid(e))
                }
                Err(refusal) => {
                    last = refusal;
                    sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        Err(last)
    }

    /// Waits until the leader's match index for server `i` has reached the
    /// leader's commit index (a learner that caught up may be promoted);
    /// false after [`MEMBERSHIP_CHANGE_TIMEOUT`].
    pub async fn wait_caught_up(&self, i: usize) -> bool {
        let started = now();
        while now() - started < MEMBERSHIP_CHANGE_TIMEOUT {
            if let Some(leader) = self.leader() {
                let commit = self.commit_index(leader).expect("the leader runs");
                if leader == i || self.match_index(leader, i).is_some_and(|m| m >= commit) {
                    return true;
                }
            }
            sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    /// Adds server `i` (started by [`SimCfg::add_server`]) as a voter the
    /// careful way: as a learner, then promoted once it has caught up.
    /// Panics (naming the refusal) if either change fails.
    pub async fn add_voter(&self, i: usize) -> Membership {
        let id = i as NodeId;
        self.change_membership(&[MembershipChange::AddLearner(id)])
            .await
            .unwrap_or_else(|r| panic!("adding {i} as a learner refused: {r:?}"));
        assert!(self.wait_caught_up(i).await, "learner {i} never caught up");
        self.change_membership(&[MembershipChange::Promote(id)])
            .await
            .unwrap_or_else(|r| panic!("promoting {i} refused: {r:?}"))
    }

    /// Replaces voter `old` by a new server: adds one, brings it in as a
    /// learner, then promotes it and removes `old` in one joint change, and
    /// crashes `old` once that has committed. Returns the new server.
    pub async fn replace_server(&self, old: usize) -> usize {
        let new = self.add_server();
        self.change_membership(&[MembershipChange::AddLearner(new as NodeId)])
            .await
            .unwrap_or_else(|r| panic!("adding {new} as a learner refused: {r:?}"));
        assert!(
            self.wait_caught_up(new).await,
            "learner {new} never caught up"
        );
        let changes = [
            MembershipChange::Promote(new as NodeId),
            MembershipChange::Remove(old as NodeId),
        ];
        self.change_membership(&changes)
            .await
            .unwrap_or_else(|r| panic!("replacing {old} by {new} refused: {r:?}"));
        self.crash1(old);
        new
    }

    /// Removes server `i` from the configuration and, once that has
    /// committed, crashes it (it is gone for good).
    pub async fn remove_server(&self, i: usize) -> Membership {
        let m = self
            .change_membership(&[MembershipChange::Remove(i as NodeId)])
            .await
            .unwrap_or_else(|r| panic!("removing {i} refused: {r:?}"));
        self.crash1(i);
        m
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
                let Some(server) = w.servers.get_mut(&(i as NodeId)) else {
                    break;
                };
                let local_now = server.clock.local(now());
                let Some(slot) = server.slot.as_mut() else {
                    break;
                };
                let before = (slot.node.role(), slot.node.term());
                let actions = slot
                    .node
                    .step(local_now, event)
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
                    FollowUp::Snapshot(index) => Event::SnapshotTaken { index },
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
                Action::Send { to, message } => self.send(i, *to as usize, message, None, caller),
                Action::SendSnapshot { to, message } => {
                    let index = message.last_included_index;
                    let data = {
                        let w = self.world.borrow();
                        let server = w.get(i).expect("a server");
                        server
                            .persister
                            .snapshot_at(index)
                            .expect("a leader holds the snapshot it sends")
                            .to_vec()
                    };
                    let header = Message::InstallSnapshot(message.clone());
                    self.send(i, *to as usize, &header, Some(data), caller);
                }
                Action::Persist(p) => {
                    {
                        let mut w = self.world.borrow_mut();
                        let w = &mut *w;
                        let server = w.servers.get_mut(&(i as NodeId)).expect("a server");
                        server.persister.save(p);
                        if let Some(slot) = server.slot.as_ref() {
                            w.safety.persist_issued(i as u64, &slot.node, p);
                        }
                    }
                    for (to, message) in &p.then_send {
                        self.send(i, *to as usize, message, None, caller);
                    }
                    follow.push(FollowUp::Persisted(p.id));
                }
                Action::Apply { entries } => {
                    let mut w = self.world.borrow_mut();
                    w.safety.entries_applied(i as u64, entries);
                    if let Some((index, data)) = w.appliers.apply_entries(i, entries) {
                        w.server(i).persister.stage(index, data);
                        follow.push(FollowUp::Snapshot(index));
                    }
                }
                Action::ApplySnapshot { meta } => {
                    let mut w = self.world.borrow_mut();
                    let w = &mut *w;
                    let data = w
                        .get(i)
                        .and_then(|s| s.persister.snapshot_at(meta.index))
                        .expect("a delivered snapshot is staged or stored")
                        .to_vec();
                    w.appliers.apply_snapshot(i, &data, meta.index);
                }
                Action::SetTimer { deadline } => self.set_timer(i, *deadline),
                Action::AcceptProposal { .. }
                | Action::RejectProposal { .. }
                | Action::LeadershipTransfer { .. }
                | Action::AcceptMembershipChange { .. }
                | Action::RejectMembershipChange { .. }
                | Action::MembershipChanged { .. }
                | Action::ReadReady { .. }
                | Action::RejectRead { .. } => {}
            }
        }
        follow
    }

    /// Arms server `i`'s timer for `deadline`, an instant of its own
    /// clock: it fires at the first global instant at which that clock
    /// reads `deadline` (never earlier in local time).
    fn set_timer(&self, i: usize, deadline: Instant) {
        let (gen, epoch, at) = {
            let mut w = self.world.borrow_mut();
            let server = w.server(i);
            let (epoch, at) = (server.clock_epoch, server.clock.global_at(deadline));
            let Some(slot) = server.slot.as_mut() else {
                return;
            };
            slot.timer = Some(deadline);
            (slot.gen, epoch, at)
        };
        let cfg = self.clone();
        schedule_at(at, move || {
            let current = {
                let w = cfg.world.borrow();
                w.get(i).is_some_and(|s| {
                    s.clock_epoch == epoch
                        && s.slot
                            .as_ref()
                            .is_some_and(|s| s.gen == gen && s.timer == Some(deadline))
                })
            };
            if current {
                assert!(cfg.local_now(i) >= deadline, "a timer fired early");
                cfg.step(i, Event::TimerFired, None);
            }
        });
    }

    /// Server `from` sends `message` to `to` with labrpc semantics: requests
    /// start a call; replies answer the call being handled (`caller`). A
    /// snapshot transfer is an `InstallSnapshot` call carrying the
    /// snapshot's bytes (`snapshot`), counted in the traffic; its end, on
    /// arrival or on failure, is reported to the sender.
    fn send(
        &self,
        from: usize,
        to: usize,
        message: &Message,
        snapshot: Option<Vec<u8>>,
        caller: Option<(usize, u64)>,
    ) {
        let bytes = postcard::to_allocvec(message).expect("messages encode");
        let mut w = self.world.borrow_mut();
        let w = &mut *w;
        let sender = &w.servers[&(from as NodeId)];
        w.safety
            .check_send(from as u64, to as u64, message, sender.persister.state());
        let from_gen = sender.gen;
        let from_connected = sender.connected;
        // A server the harness never started (an id only named in a
        // configuration) is as good as crashed.
        let (to_connected, to_running, to_gen) = w.get(to).map_or((false, false, 0), |s| {
            (s.connected, s.slot.is_some(), s.gen)
        });
        if message.is_request() {
            let enabled = from_connected && to_connected && to_running;
            let extra = snapshot.as_ref().map_or(0, Vec::len);
            w.traffic.request_sent(bytes.len() + extra);
            match with_rng(|r| w.faults.send_request(enabled, r)) {
                RequestFate::Fail => {
                    if let Message::InstallSnapshot(m) = message {
                        let cfg = self.clone();
                        let (term, index) = (m.term, m.last_included_index);
                        schedule_after(Duration::ZERO, move || {
                            cfg.snapshot_send_ended(from, from_gen, to, term, index)
                        });
                    }
                }
                RequestFate::Deliver { delay } => {
                    let cfg = self.clone();
                    schedule_after(delay, move || {
                        cfg.request_arrived(from, from_gen, to, to_gen, bytes, snapshot)
                    });
                }
            }
        } else {
            let caller_gen = match caller {
                Some((c, g)) if c == to => g,
                _ => to_gen,
            };
            let alive = from_connected
                && to_connected
                && to_gen == caller_gen
                && w.servers[&(from as NodeId)]
                    .slot
                    .as_ref()
                    .is_some_and(|s| s.gen == from_gen);
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

    fn request_arrived(
        &self,
        from: usize,
        from_gen: u64,
        to: usize,
        to_gen: u64,
        bytes: Vec<u8>,
        snapshot: Option<Vec<u8>>,
    ) {
        let message: Message = postcard::from_bytes(&bytes).expect("messages decode");
        let transfer = match &message {
            Message::InstallSnapshot(m) if snapshot.is_some() => {
                Some((m.term, m.last_included_index))
            }
            _ => None,
        };
        let mut staged = false;
        let delivered = {
            let mut w = self.world.borrow_mut();
            // The server was replaced meanwhile: the old instance handles it
            // and its reply is discarded; nothing observable remains.
            let dropped = with_rng(|r| w.faults.drop_request_now(r));
            let server = w.server(to);
            if dropped || server.slot.as_ref().is_none_or(|s| s.gen != to_gen) {
                false
            } else {
                server.rpc_count += 1;
                if let (Some((_, index)), Some(data)) = (transfer, snapshot) {
                    // One held already at that index stays.
                    if server.persister.snapshot_at(index).is_none() {
                        server.persister.stage(index, data);
                        staged = true;
                    }
                }
                w.trace = fnv1a(w.trace, &now().as_nanos().to_le_bytes());
                w.trace = fnv1a(w.trace, &[from as u8, to as u8]);
                w.trace = fnv1a(w.trace, &bytes);
                true
            }
        };
        if delivered {
            self.step(
                to,
                Event::MessageReceived {
                    from: from as u64,
                    message,
                },
                Some((from, from_gen)),
            );
        }
        if let Some((term, index)) = transfer {
            if staged {
                // Installed (now stored) or not wanted: no longer staged.
                self.world.borrow_mut().server(to).persister.unstage(index);
            }
            self.snapshot_send_ended(from, from_gen, to, term, index);
        }
    }

    /// The sender's driver learns that its transfer to `to` ended (if the
    /// incarnation that started it still runs).
    fn snapshot_send_ended(&self, from: usize, from_gen: u64, to: usize, term: u64, index: Index) {
        let running = self
            .world
            .borrow()
            .get(from)
            .and_then(|s| s.slot.as_ref())
            .is_some_and(|s| s.gen == from_gen);
        if running {
            let to = to as NodeId;
            self.step(from, Event::SnapshotSendEnded { to, term, index }, None);
        }
    }

    fn reply_arrived(&self, from: usize, to: usize, to_gen: u64, bytes: Vec<u8>) {
        {
            let mut w = self.world.borrow_mut();
            w.traffic.reply_delivered(bytes.len());
            if w.server(to).slot.as_ref().is_none_or(|s| s.gen != to_gen) {
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

impl Server {
    /// A server not yet started, its clock drawn within `drift` (from now).
    fn new(members: Vec<NodeId>, drift: ClockDrift) -> Self {
        Server {
            slot: None,
            gen: 0,
            persister: Persister::new(),
            connected: false,
            rpc_count: 0,
            members,
            clock: with_rng(|r| draw_clock(now(), drift, r)),
            clock_epoch: 0,
        }
    }
}

impl World {
    /// Server `i`; panics on a number the harness never handed out.
    fn server(&mut self, i: usize) -> &mut Server {
        self.servers
            .get_mut(&(i as NodeId))
            .unwrap_or_else(|| panic!("no server {i}"))
    }

    /// Server `i`, if the harness handed that number out.
    fn get(&self, i: usize) -> Option<&Server> {
        self.servers.get(&(i as NodeId))
    }

    /// The result line's counters now.
    fn counters(&self) -> RaftCounters {
        RaftCounters {
            rpcs: self.traffic.rpc_total,
            bytes: self.traffic.bytes_total,
            max_index: self.appliers.max_index(),
        }
    }
}
