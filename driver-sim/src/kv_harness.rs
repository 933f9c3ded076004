//! The KV lab harness: a port of the 6.5840 (2023) `kvraft/config.go`
//! (lab-tests.md §4.2) onto the simulator. Servers are `kv_core::KvServer`s;
//! clerks are `kv_core::Clerk`s with their own ends to every server (in a
//! random order, like the Go tester's shuffled ends); every clerk operation is
//! recorded with its virtual call and return times for the linearizability
//! check and for export.
//!
//! This file runs the servers and the clerks' calls; what the tester does
//! (the clerk loop, the history and its check, partitions, the result line)
//! is the `lab` crate's, shared with the other drivers' harnesses.
//!
//! Beyond the lab (issue 12), the cluster can grow and shrink by node id:
//! [`KvCfg::add_server`] starts a server that knows no configuration,
//! [`KvCfg::admin`] sends an administrative request through the service
//! over the same network as the clerks' calls, and
//! [`KvCfg::replace_server`] replaces a voter the way an operator would
//! (add a learner, wait until it caught up, promote it, remove the old one,
//! stop it), telling every clerk the new members as it goes.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use kv_core::{
    AdminReply, AdminRequest, Clerk, Command, KvServer, MemberAddrs, MemberList, MemberRole, Op,
    ReadPolicy, Refusal, Reply, ServerAction, ServerConfig, ServerEvent,
};
use raft_core::{Config, InstallSnapshot, Instant, Message, NodeId};

use lab::net::{Faults, ReplyFate, RequestFate, Traffic};
use lab::{
    ClerkEnds, Harness, History, HistoryOp, KvCounters, KvHarness, Links, Runtime, TestRun,
    CLERK_CALL_TIMEOUT,
};
use raft_testkit::{fnv1a, Persister, SafetyChecker};

use crate::clock::{draw_clock, ClockDrift, NodeClock};
use crate::executor::{
    now, oneshot, schedule_after, schedule_at, sleep, timeout, with_rng, OneshotReceiver,
    OneshotSender, SimRuntime,
};

/// How often labrpc checks whether the server of a pending call died.
const DEAD_POLL: Duration = Duration::from_millis(100);

/// A snapshot the server asks for is reported taken up to this long after
/// (microseconds, drawn per snapshot): the writer thread of a real driver.
const SNAPSHOT_WRITE_MAX_US: u64 = 5_000;

/// How long [`KvCfg::admin`] keeps trying one request, and
/// [`KvCfg::wait_caught_up`] waits for a learner.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`KvCfg::admin`] pauses before retrying a request the leader
/// refused for now (not ready, busy, another change in progress).
const ADMIN_RETRY_PAUSE: Duration = Duration::from_millis(50);

struct Slot {
    server: KvServer,
    gen: u64,
    /// The deadline of its last `SetTimer`, in its own local time.
    timer: Option<Instant>,
}

/// One clerk's ends (`make_client`).
struct Ends {
    /// Which real servers its ends reach.
    enabled: Vec<bool>,
    /// The clerk, told the members when they change
    /// ([`KvCfg::tell_clerks`]).
    clerk: Rc<RefCell<Clerk>>,
}

/// What a call carries to a server, encoded as it travels.
enum Request {
    /// A clerk's command (`ServerEvent::RequestReceived`).
    Client(Vec<u8>),
    /// An administrative request (`ServerEvent::AdminReceived`).
    Admin(Vec<u8>),
}

struct Call {
    clerk: u64,
    server: usize,
    server_gen: u64,
    reply: OneshotSender<Option<Reply>>,
}

struct World {
    n: usize,
    slots: Vec<Option<Slot>>,
    /// The `Config::members` each server starts with: the initial servers
    /// for those of `new`, none for one added later (it learns the
    /// configuration from the leader).
    members: Vec<Vec<NodeId>>,
    /// InstallSnapshot requests delivered to each server.
    snapshots_received: Vec<u64>,
    /// Snapshot transfers to each server that a leader started.
    snapshots_sent: Vec<u64>,
    gens: Vec<u64>,
    /// Each server's machine clock: kept across restarts (and running while
    /// the server is down), so its local time never goes backwards.
    clocks: Vec<NodeClock>,
    /// Bumped by `set_clock_rate`, so that timers armed at the old rate
    /// never fire.
    clock_epochs: Vec<u64>,
    /// Whether servers serve follower reads (`ServerConfig::follower_reads`).
    follower_reads: bool,
    /// How servers serve Gets (`ServerConfig::read_policy`).
    read_policy: ReadPolicy,
    /// The bound the clocks' rates are drawn within.
    drift: ClockDrift,
    persisters: Vec<Persister>,
    links: Vec<Vec<bool>>,
    faults: Faults,
    traffic: Traffic,
    rpc_count: Vec<u64>,
    clerks: BTreeMap<u64, Ends>,
    next_clerk: u64,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    max_raft_state: Option<usize>,
    safety: SafetyChecker,
    history: History,
    run: TestRun<KvCounters>,
}

/// A handle on a simulated KV cluster, the Rust twin of the kvraft tests'
/// `cfg`. Cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct KvCfg {
    world: Rc<RefCell<World>>,
}

/// A clerk with its own ends, as `make_client` builds them.
#[derive(Clone)]
pub struct SimClerk {
    cfg: KvCfg,
    ends: u64,
    clerk: Rc<RefCell<Clerk>>,
}

impl Harness for KvCfg {
    type Rt = SimRuntime;
}

impl KvHarness for KvCfg {
    type Clerk = SimClerk;

    /// `make_config(n, unreliable, maxraftstate)`: starts and connects `n`
    /// servers; `max_raft_state` of `None` is the lab's −1.
    /// Perfect clocks ([`KvCfg::with_drift`] makes them drift).
    fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> KvCfg {
        KvCfg::with_drift(n, unreliable, max_raft_state, ClockDrift::NONE)
    }

    /// Number of servers.
    fn n(&self) -> usize {
        self.world.borrow().n
    }

    /// The first server that believes it leads, if any.
    fn leader(&self) -> Option<usize> {
        let w = self.world.borrow();
        (0..w.n).find(|&i| {
            w.slots[i]
                .as_ref()
                .is_some_and(|s| s.server.raft().is_leader())
        })
    }

    /// Turn request/reply loss and short delays on (`true`) or off.
    fn set_unreliable(&self, unreliable: bool) {
        self.world.borrow_mut().faults.reliable = !unreliable;
    }

    /// Cut server `i` off, delete it from the network (so it can send no
    /// positive reply from state about to be lost), detach its persister.
    fn shutdown_server(&self, i: usize) {
        let all = self.all();
        self.disconnect(i, &all);
        self.world.borrow_mut().slots[i] = None;
    }

    /// (Re)start server `i` from its persister; not connected.
    fn start_server(&self, i: usize) {
        {
            let mut w = self.world.borrow_mut();
            w.slots[i] = None;
            w.gens[i] += 1;
            // Snapshots staged but never named by a persist do not survive.
            w.persisters[i] = w.persisters[i].after_crash();
            let (state, snapshot) = w.persisters[i].load();
            let members = w.members[i].clone();
            let mut config = ServerConfig::new(Config::new(i as u64, members), w.max_raft_state);
            config.follower_reads = w.follower_reads;
            config.read_policy = w.read_policy;
            let bound = u32::try_from(w.drift.max_ppm).unwrap_or(u32::MAX);
            config.raft.max_clock_drift_ppm = config.raft.max_clock_drift_ppm.max(bound);
            let seed = with_rng(|r| r.next_u64());
            let mut data = snapshot.as_deref();
            let reader = data.as_mut().map(|d| d as &mut dyn std::io::Read);
            let server = KvServer::recover(config, seed, state, reader)
                .expect("a server recovers from what it persisted");
            let gen = w.gens[i];
            w.slots[i] = Some(Slot {
                server,
                gen,
                timer: None,
            });
        }
        self.step(i, ServerEvent::TimerFired, None);
    }

    /// A new clerk whose ends reach the servers in `to`.
    fn make_client(&self, to: &[usize]) -> SimClerk {
        let clerk = Rc::new(RefCell::new(lab::clerk::new_clerk::<SimRuntime>(self.n())));
        let mut w = self.world.borrow_mut();
        let n = w.n;
        let enabled = (0..n).map(|j| to.contains(&j)).collect();
        let ends = w.next_clerk;
        w.next_clerk += 1;
        let clerk_for_ends = clerk.clone();
        w.clerks.insert(
            ends,
            Ends {
                enabled,
                clerk: clerk_for_ends,
            },
        );
        SimClerk {
            cfg: self.clone(),
            ends,
            clerk,
        }
    }

    /// Let clerk `ck` reach exactly the servers in `to`.
    fn connect_client(&self, ck: &SimClerk, to: &[usize]) {
        let mut w = self.world.borrow_mut();
        let n = w.n;
        let ends = w.clerks.get_mut(&ck.ends).expect("a clerk of this cluster");
        ends.enabled = (0..n).map(|j| to.contains(&j)).collect();
    }

    /// Records baselines for `end`'s result line.
    fn begin(&self, name: &str) {
        let mut w = self.world.borrow_mut();
        let counters = w.counters();
        w.run.begin(name, SimRuntime::now(), counters);
    }

    /// Checks the whole history with the KV model; running out of the
    /// budget fails ([`History::check_linearizable`]).
    fn check_linearizable(&self) {
        let w = self.world.borrow();
        w.history.check_linearizable(&SimRuntime::run_name());
    }

    /// Checks the time limit, prints the lab's result line (virtual seconds,
    /// peers, RPCs, clerk operations) and, with `HISTORY_DIR` set, exports
    /// the history to `<HISTORY_DIR>/<test>-seed<seed>.jsonl`.
    fn end(&self) {
        let w = self.world.borrow();
        w.history.export(&SimRuntime::run_name());
        w.run.end(SimRuntime::now(), w.n, w.counters());
    }

    /// The largest encoded Raft state over all servers.
    fn log_size(&self) -> usize {
        self.world
            .borrow()
            .persisters
            .iter()
            .map(Persister::raft_state_size)
            .max()
            .unwrap_or(0)
    }

    /// The largest snapshot over all servers.
    fn snapshot_size(&self) -> usize {
        self.world
            .borrow()
            .persisters
            .iter()
            .map(Persister::snapshot_size)
            .max()
            .unwrap_or(0)
    }

    /// Requests sent so far.
    fn rpc_total(&self) -> u64 {
        self.world.borrow().traffic.rpc_total
    }

    /// Runs `op` through `ck` over the simulated network (`lab::clerk::run_op`).
    async fn run_op(&self, ck: &SimClerk, cli: u64, op: Op) -> String {
        lab::clerk::run_op(&SimEnds(ck), &ck.clerk, cli, op).await
    }
}

/// The read policy the KV suites run with: `SIM_READ_POLICY` (`log`,
/// `read-index` or `lease`), else the service's default (ReadIndex). For
/// comparing the suites' figures across policies on the same seeds.
pub fn read_policy_from_env() -> ReadPolicy {
    match std::env::var("SIM_READ_POLICY").as_deref() {
        Err(_) | Ok("") => ReadPolicy::default(),
        Ok("log") => ReadPolicy::Log,
        Ok("read-index") => ReadPolicy::ReadIndex,
        Ok("lease") => ReadPolicy::Lease,
        Ok(other) => panic!("SIM_READ_POLICY={other:?}: expected log, read-index or lease"),
    }
}

impl KvCfg {
    /// `make_config(n, unreliable, maxraftstate)` with every server's clock
    /// drifting within `drift`: each runs at its own rate, drawn uniformly
    /// within the bound, from its own epoch (see `crate::clock`). With
    /// [`ClockDrift::NONE`] the run is that of [`KvHarness::new`].
    pub fn with_drift(
        n: usize,
        unreliable: bool,
        max_raft_state: Option<usize>,
        drift: ClockDrift,
    ) -> KvCfg {
        KvCfg::with_reads(n, unreliable, max_raft_state, drift, read_policy_from_env())
    }

    /// [`KvCfg::with_drift`] with every server serving Gets by
    /// `read_policy` (with [`ReadPolicy::Lease`], the lease's clock bound,
    /// `raft_core::Config::max_clock_drift_ppm`, is set to `drift`'s when
    /// that is larger than the default).
    pub fn with_reads(
        n: usize,
        unreliable: bool,
        max_raft_state: Option<usize>,
        drift: ClockDrift,
        read_policy: ReadPolicy,
    ) -> KvCfg {
        let world = World {
            n,
            slots: (0..n).map(|_| None).collect(),
            members: vec![(0..n as NodeId).collect(); n],
            snapshots_received: vec![0; n],
            snapshots_sent: vec![0; n],
            gens: vec![0; n],
            clocks: with_rng(|r| crate::clock::draw_clocks(n, now(), drift, r)),
            clock_epochs: vec![0; n],
            follower_reads: false,
            read_policy,
            drift,
            persisters: vec![Persister::new(); n],
            links: vec![vec![false; n]; n],
            faults: Faults {
                reliable: !unreliable,
                ..Faults::default()
            },
            traffic: Traffic::default(),
            rpc_count: vec![0; n],
            clerks: BTreeMap::new(),
            next_clerk: 0,
            calls: BTreeMap::new(),
            next_call: 0,
            max_raft_state,
            safety: SafetyChecker::default(),
            history: History::new(),
            run: TestRun::new(SimRuntime::now()),
        };
        let cfg = KvCfg {
            world: Rc::new(RefCell::new(world)),
        };
        for i in 0..n {
            cfg.start_server(i);
        }
        cfg.connect_all();
        let watched = Rc::downgrade(&cfg.world);
        lab::watch_time_limit::<SimRuntime>(move || {
            watched.upgrade().map(|world| KvCfg { world }.status())
        });
        cfg
    }

    /// Turns follower reads on or off on every server, running or started
    /// later.
    pub fn set_follower_reads(&self, on: bool) {
        let mut w = self.world.borrow_mut();
        w.follower_reads = on;
        for slot in w.slots.iter_mut().flatten() {
            slot.server.set_follower_reads(on);
        }
    }

    /// From now on, server `i`'s clock runs at `rate_ppm` parts per million
    /// of real time (its local time now is unchanged), any rate, also one
    /// beyond the harness's bound; its pending timer is re-armed at the
    /// global time its local deadline now falls on.
    pub fn set_clock_rate(&self, i: usize, rate_ppm: u64) {
        let timer = {
            let mut w = self.world.borrow_mut();
            w.clocks[i].set_rate(now(), rate_ppm);
            w.clock_epochs[i] += 1;
            w.slots[i].as_ref().and_then(|s| s.timer)
        };
        if let Some(deadline) = timer {
            self.set_timer(i, deadline);
        }
    }

    /// Server `i`'s clock.
    pub fn clock(&self, i: usize) -> NodeClock {
        self.world.borrow().clocks[i]
    }

    /// Connect server `i` to each of `to` (both directions).
    pub fn connect(&self, i: usize, to: &[usize]) {
        self.set_links(i, to, true);
    }

    /// Disconnect server `i` from each of `from` (both directions).
    pub fn disconnect(&self, i: usize, from: &[usize]) {
        self.set_links(i, from, false);
    }
    // ----- clerks ---------------------------------------------------------

    /// Cut clerk `ck` off from the servers in `from`.
    pub fn disconnect_client(&self, ck: &SimClerk, from: &[usize]) {
        let mut w = self.world.borrow_mut();
        let ends = w.clerks.get_mut(&ck.ends).expect("a clerk of this cluster");
        for &j in from {
            ends.enabled[j] = false;
        }
    }
    /// One line per server: incarnation, term, role, commit, applied, log
    /// and snapshot indices, waiting requests, links; for failure reports.
    pub fn status(&self) -> String {
        let w = self.world.borrow();
        let mut out = String::new();
        for i in 0..w.n {
            let links = lab::links_column(w.n, |j| w.links[i][j]);
            let server = w.slots[i].as_ref().map(|s| (s.gen, &s.server));
            out += &lab::server_status(i, server, &links);
        }
        out += &format!(
            "  pending calls {}, clerk ops {}\n",
            w.calls.len(),
            w.history.len()
        );
        out
    }

    /// Every clerk operation so far, in return order.
    pub fn history(&self) -> Vec<HistoryOp> {
        self.world.borrow().history.ops().to_vec()
    }
    // ----- membership -----------------------------------------------------

    /// Adds a server: a fresh one with the next unused number, which is its
    /// node id, that knows no configuration (empty `Config::members`: it
    /// stands for no election and learns the configuration from the leader
    /// once a configuration names it), started and linked to every server.
    /// Every clerk's ends reach it; a clerk tries it once told
    /// ([`KvCfg::tell_clerks`]).
    pub fn add_server(&self) -> usize {
        let id = {
            let mut w = self.world.borrow_mut();
            let id = w.n;
            w.n += 1;
            w.slots.push(None);
            w.members.push(Vec::new());
            w.snapshots_received.push(0);
            w.snapshots_sent.push(0);
            w.gens.push(0);
            let clock = with_rng(|r| draw_clock(now(), w.drift, r));
            w.clocks.push(clock);
            w.clock_epochs.push(0);
            w.persisters.push(Persister::new());
            for row in w.links.iter_mut() {
                row.push(false);
            }
            w.links.push(vec![false; id + 1]);
            w.rpc_count.push(0);
            for ends in w.clerks.values_mut() {
                ends.enabled.push(true);
            }
            id
        };
        self.start_server(id);
        self.connect(id, &self.all());
        id
    }

    /// Sends `request` through the service the way an operator's tool
    /// would, over clerk `ck`'s ends (the clerks' network, with its losses
    /// and delays): tries the servers `ck` knows in turn, follows leader
    /// hints, and retries a refusal that may pass later
    /// ([`Refusal::is_retryable`]) after a pause. A member list is wanted
    /// from the leader (only it knows match indices). Returns the answer
    /// (a member list, `Done`, or a refusal that will not pass); panics
    /// after [`ADMIN_TIMEOUT`].
    pub async fn admin(&self, ck: &SimClerk, request: AdminRequest) -> AdminReply {
        let bytes = postcard::to_allocvec(&request).expect("admin requests encode");
        let servers: Vec<NodeId> = ck.clerk.borrow().servers().to_vec();
        let started = now();
        let (mut at, mut target) = (0, servers[0]);
        let mut misses = 0;
        let mut last = String::from("nothing yet");
        while now() - started < ADMIN_TIMEOUT {
            let call = self.call(ck.ends, target as usize, Request::Admin(bytes.clone()));
            let hint = match timeout(CLERK_CALL_TIMEOUT, call).await.flatten().flatten() {
                None => {
                    last = format!("no answer from {target}");
                    None
                }
                Some(Reply::Admin(AdminReply::Members(list))) if !list.from_leader() => {
                    last = format!("{target} does not lead");
                    list.leader
                }
                Some(Reply::Admin(AdminReply::Refused(Refusal::NotLeader { leader_hint }))) => {
                    last = format!("{target} does not lead");
                    leader_hint
                }
                Some(Reply::Admin(AdminReply::Refused(r))) if r.is_retryable() => {
                    last = format!("{target} refused: {r}");
                    sleep(ADMIN_RETRY_PAUSE).await;
                    continue;
                }
                Some(Reply::Admin(reply)) => return reply,
                Some(other) => panic!("{target} answered {request:?} with {other:?}"),
            };
            // A hint may name a server the tool does not list yet (one
            // just promoted); one it cannot reach fails and the round goes on.
            match hint.filter(|&h| h != target && (h as usize) < self.n()) {
                Some(h) => target = h,
                None => {
                    at = (at + 1) % servers.len();
                    target = servers[at];
                }
            }
            misses += 1;
            if misses % servers.len() == 0 {
                sleep(kv_core::ROUND_BACKOFF).await;
            }
        }
        panic!(
            "admin request {request:?} not answered within {ADMIN_TIMEOUT:?} (last: {last})\n{}",
            self.status()
        );
    }

    /// [`KvCfg::admin`], which must answer `Done`.
    pub async fn admin_done(&self, ck: &SimClerk, request: AdminRequest) {
        let reply = self.admin(ck, request.clone()).await;
        assert_eq!(reply, AdminReply::Done, "the answer to {request:?}");
    }

    /// The members as the leader knows them (with match indices).
    pub async fn members(&self, ck: &SimClerk) -> MemberList {
        match self.admin(ck, AdminRequest::Members).await {
            AdminReply::Members(list) => list,
            other => panic!("a member list was asked for, not {other:?}"),
        }
    }

    /// Waits until the leader's match index for learner `i` has reached its
    /// commit index (asking the service for the members every 20 ms), so
    /// that promoting it does not stall commits; panics after
    /// [`ADMIN_TIMEOUT`]. Returns the last member list.
    pub async fn wait_caught_up(&self, ck: &SimClerk, i: usize) -> MemberList {
        let started = now();
        loop {
            let list = self.members(ck).await;
            let matched = list.member(i as NodeId).and_then(|m| m.match_index);
            if matched.is_some_and(|m| m >= list.commit_index) {
                return list;
            }
            assert!(
                now() - started < ADMIN_TIMEOUT,
                "learner {i} never caught up: {list:?}\n{}",
                self.status()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tells every clerk of the cluster that the servers are `servers`
    /// (`Clerk::set_servers`): each keeps its own order for those it knew
    /// and tries the others after them.
    pub fn tell_clerks(&self, servers: &[NodeId]) {
        let w = self.world.borrow();
        for ends in w.clerks.values() {
            let mut clerk = ends.clerk.borrow_mut();
            let mut order: Vec<NodeId> = clerk
                .servers()
                .iter()
                .copied()
                .filter(|s| servers.contains(s))
                .collect();
            let known = order.clone();
            order.extend(servers.iter().filter(|s| !known.contains(s)));
            clerk.set_servers(order);
        }
    }

    /// Replaces voter `old` the way an operator would, through the service
    /// with clerk `ck` as the tool: starts a new server
    /// ([`KvCfg::add_server`]), adds it as a learner with (dummy)
    /// addresses, waits until it has caught up, promotes it, tells the
    /// clerks, removes `old`, tells the clerks again, and stops `old` once
    /// its removal has committed (so no clerk follows its stale leader
    /// hints). Returns the new server.
    pub async fn replace_server(&self, ck: &SimClerk, old: usize) -> usize {
        let new = self.add_server();
        let node = new as NodeId;
        let addrs = MemberAddrs {
            peer: format!("sim-peer-{new}"),
            client: format!("sim-client-{new}"),
        };
        self.admin_done(ck, AdminRequest::AddLearner { node, addrs })
            .await;
        self.wait_caught_up(ck, new).await;
        self.admin_done(ck, AdminRequest::Promote { node }).await;
        let list = self.members(ck).await;
        self.tell_clerks(&voters(&list));
        self.admin_done(
            ck,
            AdminRequest::Remove {
                node: old as NodeId,
            },
        )
        .await;
        let list = self.members(ck).await;
        let now_voters = voters(&list);
        assert!(
            now_voters.contains(&node) && list.member(old as NodeId).is_none(),
            "after replacing {old} by {new}: {list:?}"
        );
        self.tell_clerks(&now_voters);
        self.shutdown_server(old);
        new
    }

    /// Is server `i` running?
    pub fn is_running(&self, i: usize) -> bool {
        self.world.borrow().slots[i].is_some()
    }

    /// The last index in running server `i`'s snapshot (0: none taken or
    /// installed yet); `None` if it is down.
    pub fn snapshot_index(&self, i: usize) -> Option<raft_core::Index> {
        let w = self.world.borrow();
        let slot = w.slots[i].as_ref()?;
        Some(slot.server.raft().log().snapshot().index)
    }

    /// InstallSnapshot requests delivered to server `i` so far.
    pub fn snapshots_received(&self, i: usize) -> u64 {
        self.world.borrow().snapshots_received[i]
    }

    /// Running server `i`'s applied index; `None` if it is down.
    pub fn applied_index(&self, i: usize) -> Option<raft_core::Index> {
        let w = self.world.borrow();
        Some(w.slots[i].as_ref()?.server.raft().last_applied())
    }

    /// Snapshot transfers to server `i` that a leader started so far
    /// (delivered or not).
    pub fn snapshots_sent(&self, i: usize) -> u64 {
        self.world.borrow().snapshots_sent[i]
    }

    // ----- driving servers ----------------------------------------------------

    fn step(&self, i: usize, event: ServerEvent, caller: Option<(usize, u64)>) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = {
                let mut w = self.world.borrow_mut();
                let w = &mut *w;
                let local_now = w.clocks[i].local(now());
                let Some(slot) = w.slots[i].as_mut() else {
                    return;
                };
                let actions = slot
                    .server
                    .step(local_now, event)
                    .expect("the harness uses the server correctly");
                w.safety.after_step(slot.server.raft());
                actions
            };
            self.execute(i, actions, caller, &mut queue);
        }
    }

    /// Delivers a leader's snapshot, header and bytes, to server `i`, then
    /// handles what follows like `step`.
    fn install(
        &self,
        i: usize,
        from: usize,
        from_gen: u64,
        header: InstallSnapshot,
        data: Vec<u8>,
    ) {
        let index = header.last_included_index;
        let actions = {
            let mut w = self.world.borrow_mut();
            let w = &mut *w;
            let local_now = w.clocks[i].local(now());
            let Some(slot) = w.slots[i].as_mut() else {
                return;
            };
            // A snapshot held already at that index (our own, being
            // written) stays ours: the delivered bytes are only staged in
            // its absence, and only then dropped after.
            let staged_here = w.persisters[i].snapshot_at(index).is_none();
            if staged_here {
                w.persisters[i].stage(index, data.clone());
            }
            let actions = slot
                .server
                .install_snapshot(local_now, from as u64, header, &mut &data[..])
                .expect("the harness uses the server correctly");
            w.safety.after_step(slot.server.raft());
            (actions, staged_here)
        };
        let (actions, staged_here) = actions;
        let mut queue = VecDeque::new();
        let caller = Some((from, from_gen));
        self.execute(i, actions, caller, &mut queue);
        // Installed (now stored) or not wanted: no longer staged.
        if staged_here {
            self.world.borrow_mut().persisters[i].unstage(index);
        }
        while let Some(event) = queue.pop_front() {
            self.step(i, event, caller);
        }
    }

    /// Carries out server `i`'s actions; the events they lead to (its own
    /// writes durable, its snapshot taken) join `queue`.
    fn execute(
        &self,
        i: usize,
        actions: Vec<ServerAction>,
        caller: Option<(usize, u64)>,
        queue: &mut VecDeque<ServerEvent>,
    ) {
        for action in actions {
            match action {
                ServerAction::Send { to, message } => {
                    self.send(i, to as usize, &message, None, caller)
                }
                ServerAction::SendSnapshot { to, message } => {
                    let index = message.last_included_index;
                    let data = {
                        let mut w = self.world.borrow_mut();
                        w.snapshots_sent[to as usize] += 1;
                        w.persisters[i]
                            .snapshot_at(index)
                            .expect("a leader holds the snapshot it sends")
                            .to_vec()
                    };
                    let header = Message::InstallSnapshot(message);
                    self.send(i, to as usize, &header, Some(data), caller);
                }
                ServerAction::TakeSnapshot { index, image } => {
                    // Encoded now (the image is frozen anyway); reported
                    // taken a little later, as a writer thread would, so
                    // that the server goes on meanwhile.
                    let mut data = Vec::new();
                    image
                        .write_to(&mut data)
                        .expect("writing into a Vec cannot fail");
                    let (gen, delay) = {
                        let mut w = self.world.borrow_mut();
                        w.persisters[i].stage(index, data);
                        let delay = with_rng(|r| r.below(SNAPSHOT_WRITE_MAX_US));
                        (w.gens[i], std::time::Duration::from_micros(delay))
                    };
                    let cfg = self.clone();
                    schedule_after(delay, move || {
                        let current = cfg.world.borrow().slots[i]
                            .as_ref()
                            .is_some_and(|s| s.gen == gen);
                        if current {
                            cfg.step(i, ServerEvent::SnapshotTaken { index }, None);
                        }
                    });
                }
                ServerAction::Persist(p) => {
                    let size = {
                        let mut w = self.world.borrow_mut();
                        let w = &mut *w;
                        w.persisters[i].save(&p);
                        if let Some(slot) = w.slots[i].as_ref() {
                            w.safety.persist_issued(i as u64, slot.server.raft(), &p);
                        }
                        // Sizing re-encodes the state: only when it matters.
                        if w.max_raft_state.is_some() {
                            w.persisters[i].raft_state_size()
                        } else {
                            0
                        }
                    };
                    for (to, message) in &p.then_send {
                        self.send(i, *to as usize, message, None, caller);
                    }
                    queue.push_back(ServerEvent::Persisted {
                        upto: p.id,
                        raft_state_bytes: size,
                    });
                }
                ServerAction::SetTimer { deadline } => self.set_timer(i, deadline),
                ServerAction::Reply { id, reply } => self.server_replied(i, id, reply),
            }
        }
    }

    /// The sender learns that its transfer to `to` ended (if the
    /// incarnation that started it still runs).
    fn snapshot_send_ended(&self, from: usize, from_gen: u64, to: usize, term: u64, index: u64) {
        let running = self.world.borrow().slots[from]
            .as_ref()
            .is_some_and(|s| s.gen == from_gen);
        if running {
            let to = to as u64;
            let event = ServerEvent::SnapshotSendEnded { to, term, index };
            self.step(from, event, None);
        }
    }

    /// Arms server `i`'s timer for `deadline`, an instant of its own clock:
    /// it fires once that clock reads `deadline` (never earlier).
    fn set_timer(&self, i: usize, deadline: Instant) {
        let (gen, at, epoch) = {
            let mut w = self.world.borrow_mut();
            let at = w.clocks[i].global_at(deadline);
            let epoch = w.clock_epochs[i];
            let Some(slot) = w.slots[i].as_mut() else {
                return;
            };
            slot.timer = Some(deadline);
            (slot.gen, at, epoch)
        };
        let cfg = self.clone();
        schedule_at(at, move || {
            let current = {
                let w = cfg.world.borrow();
                w.clock_epochs[i] == epoch
                    && w.slots[i]
                        .as_ref()
                        .is_some_and(|s| s.gen == gen && s.timer == Some(deadline))
            };
            if current {
                let local = cfg.world.borrow().clocks[i].local(now());
                assert!(local >= deadline, "a timer fired early");
                cfg.step(i, ServerEvent::TimerFired, None);
            }
        });
    }

    /// Raft traffic between servers, with labrpc semantics (see the Raft
    /// harness): requests start calls, replies answer the call being handled.
    /// A snapshot transfer is an `InstallSnapshot` call carrying the
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
        w.safety
            .check_send(from as u64, to as u64, message, w.persisters[from].state());
        let from_gen = w.gens[from];
        if message.is_request() {
            let is_snapshot = matches!(message, Message::InstallSnapshot(_));
            let enabled = w.links[from][to] && w.slots[to].is_some();
            let to_gen = w.gens[to];
            w.traffic
                .request_sent(bytes.len() + snapshot.as_ref().map_or(0, Vec::len));
            let fate = with_rng(|r| w.faults.send_request(enabled, r));
            let transfer = match message {
                Message::InstallSnapshot(m) => Some((m.clone(), m.term, m.last_included_index)),
                _ => None,
            };
            if let (RequestFate::Fail, Some((_, term, index))) = (&fate, &transfer) {
                let (cfg, term, index) = (self.clone(), *term, *index);
                schedule_after(std::time::Duration::ZERO, move || {
                    cfg.snapshot_send_ended(from, from_gen, to, term, index)
                });
            }
            if let RequestFate::Deliver { delay } = fate {
                let cfg = self.clone();
                schedule_after(delay, move || {
                    let handle = {
                        let mut w = cfg.world.borrow_mut();
                        let alive = w.slots[to].as_ref().is_some_and(|s| s.gen == to_gen);
                        let handle = !with_rng(|r| w.faults.drop_request_now(r)) && alive;
                        if handle {
                            w.rpc_count[to] += 1;
                            if is_snapshot {
                                w.snapshots_received[to] += 1;
                            }
                        }
                        handle
                    };
                    match (transfer, snapshot) {
                        (Some((header, term, index)), Some(data)) => {
                            if handle {
                                cfg.install(to, from, from_gen, header, data);
                            }
                            cfg.snapshot_send_ended(from, from_gen, to, term, index);
                        }
                        _ if handle => {
                            let message: Message =
                                postcard::from_bytes(&bytes).expect("messages decode");
                            let event = ServerEvent::MessageReceived {
                                from: from as u64,
                                message,
                            };
                            cfg.step(to, event, Some((from, from_gen)));
                        }
                        _ => {}
                    }
                });
            }
        } else {
            let caller_gen = match caller {
                Some((c, g)) if c == to => g,
                _ => w.gens[to],
            };
            let alive = w.links[to][from] && w.gens[to] == caller_gen;
            if let ReplyFate::Deliver { delay } = with_rng(|r| w.faults.send_reply(alive, r)) {
                let cfg = self.clone();
                schedule_after(delay, move || {
                    let deliver = {
                        let mut w = cfg.world.borrow_mut();
                        w.traffic.reply_delivered(bytes.len());
                        w.slots[to].as_ref().is_some_and(|s| s.gen == caller_gen)
                    };
                    if deliver {
                        let message: Message =
                            postcard::from_bytes(&bytes).expect("messages decode");
                        cfg.step(
                            to,
                            ServerEvent::MessageReceived {
                                from: from as u64,
                                message,
                            },
                            None,
                        );
                    }
                });
            }
        }
    }

    /// A clerk's call to real server `server`: resolves to the reply, or
    /// `None` when labrpc's `Call` would return false.
    fn call(&self, clerk: u64, server: usize, request: Request) -> OneshotReceiver<Option<Reply>> {
        let (tx, rx) = oneshot();
        let mut w = self.world.borrow_mut();
        let enabled = w.clerks[&clerk].enabled[server] && w.slots[server].is_some();
        let (Request::Client(bytes) | Request::Admin(bytes)) = &request;
        w.traffic.request_sent(bytes.len());
        match with_rng(|r| w.faults.send_request(enabled, r)) {
            RequestFate::Fail => {
                // The kvraft config leaves LongDelays off.
                let delay = with_rng(|r| Faults::failed_call_delay(false, r));
                schedule_after(delay, move || tx.send(None));
            }
            RequestFate::Deliver { delay } => {
                let id = w.next_call;
                w.next_call += 1;
                let server_gen = w.gens[server];
                w.calls.insert(
                    id,
                    Call {
                        clerk,
                        server,
                        server_gen,
                        reply: tx,
                    },
                );
                let cfg = self.clone();
                schedule_after(delay, move || cfg.client_request_arrived(id, request));
            }
        }
        rx
    }

    fn call_alive(w: &World, call: &Call) -> bool {
        w.clerks[&call.clerk].enabled[call.server]
            && w.slots[call.server]
                .as_ref()
                .is_some_and(|s| s.gen == call.server_gen)
    }

    fn fail_call(&self, id: u64) {
        let call = self.world.borrow_mut().calls.remove(&id);
        if let Some(call) = call {
            call.reply.send(None);
        }
    }

    fn client_request_arrived(&self, id: u64, request: Request) {
        let server = {
            let mut w = self.world.borrow_mut();
            let Some(call) = w.calls.get(&id) else { return };
            let server = call.server;
            if with_rng(|r| w.faults.drop_request_now(r)) || !Self::call_alive(&w, call) {
                drop(w);
                self.fail_call(id);
                return;
            }
            w.rpc_count[server] += 1;
            server
        };
        self.watch_call(id);
        let event = match request {
            Request::Client(bytes) => ServerEvent::RequestReceived {
                id,
                command: postcard::from_bytes(&bytes).expect("commands decode"),
            },
            Request::Admin(bytes) => ServerEvent::AdminReceived {
                id,
                request: postcard::from_bytes(&bytes).expect("admin requests decode"),
            },
        };
        self.step(server, event, None);
    }

    /// labrpc polls a pending call every 100 ms: if its end was disabled or
    /// its server killed, the call fails. A call nobody waits for any more
    /// (the clerk timed out) is forgotten.
    fn watch_call(&self, id: u64) {
        let cfg = self.clone();
        schedule_after(DEAD_POLL, move || {
            let verdict = {
                let w = cfg.world.borrow();
                w.calls
                    .get(&id)
                    .map(|call| (Self::call_alive(&w, call), call.reply.is_abandoned()))
            };
            match verdict {
                None => {}
                Some((false, _)) => cfg.fail_call(id),
                Some((true, true)) => {
                    cfg.world.borrow_mut().calls.remove(&id);
                }
                Some((true, false)) => cfg.watch_call(id),
            }
        });
    }

    fn server_replied(&self, _server: usize, id: u64, reply: Reply) {
        let mut w = self.world.borrow_mut();
        let Some(call) = w.calls.remove(&id) else {
            return;
        };
        let alive = Self::call_alive(&w, &call);
        match with_rng(|r| w.faults.send_reply(alive, r)) {
            ReplyFate::Drop => call.reply.send(None),
            ReplyFate::Deliver { delay } => {
                let bytes = postcard::to_allocvec(&reply).expect("replies encode");
                let cfg = self.clone();
                schedule_after(delay, move || {
                    cfg.world.borrow_mut().traffic.reply_delivered(bytes.len());
                    let reply: Reply = postcard::from_bytes(&bytes).expect("replies decode");
                    call.reply.send(Some(reply));
                });
            }
        }
    }
}

impl Links for KvCfg {
    fn servers(&self) -> usize {
        self.n()
    }

    fn set_links(&self, i: usize, to: &[usize], on: bool) {
        let mut w = self.world.borrow_mut();
        for &j in to {
            w.links[i][j] = on;
            w.links[j][i] = on;
        }
    }
}

impl World {
    /// The result line's counters now.
    fn counters(&self) -> KvCounters {
        KvCounters {
            rpcs: self.traffic.rpc_total,
            ops: self.history.len() as u64,
        }
    }
}

/// A clerk's ends in the simulated network, for the tester's clerk loop.
struct SimEnds<'a>(&'a SimClerk);

impl ClerkEnds for SimEnds<'_> {
    type Runtime = SimRuntime;

    fn call(&self, server: usize, command: Command) -> impl Future<Output = Option<Reply>> {
        // The call starts now (its draws and events happen here), not when
        // the future is first polled.
        let bytes = postcard::to_allocvec(&command).expect("commands encode");
        let reply = self.0.cfg.call(self.0.ends, server, Request::Client(bytes));
        async move { reply.await.flatten() }
    }

    fn history(&self) -> RefMut<'_, History> {
        RefMut::map(self.0.cfg.world.borrow_mut(), |w| &mut w.history)
    }
}

/// The voters of a member list, in id order.
fn voters(list: &MemberList) -> Vec<NodeId> {
    list.members
        .iter()
        .filter(|m| m.role == MemberRole::Voter)
        .map(|m| m.id)
        .collect()
}

/// Fingerprint helper re-exported for tests that compare runs.
pub fn history_fingerprint(history: &[HistoryOp]) -> u64 {
    history.iter().fold(0, |h, op| {
        let h = fnv1a(h, &op.call.to_le_bytes());
        fnv1a(h, op.output.as_bytes())
    })
}
