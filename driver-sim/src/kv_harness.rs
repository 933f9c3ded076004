//! The KV lab harness: a port of the 6.5840 (2023) `kvraft/config.go`
//! (lab-tests.md §4.2) onto the simulator. Servers are `kv_core::KvServer`s;
//! clerks are `kv_core::Clerk`s with their own ends to every server (in a
//! random order, like the Go tester's shuffled ends); every clerk operation is
//! recorded with its virtual call and return times for the linearizability
//! check and for export.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use kv_core::{
    Clerk, Command, KvServer, Op, Outcome, Progress, Reply, ServerAction, ServerConfig, ServerEvent,
};
use raft_core::{Config, Instant, Message};

use crate::executor::{
    ms, now, oneshot, schedule_after, schedule_at, timeout, with_rng, OneshotSender,
};
use crate::network::{Network, ReplyFate, RequestFate};
use crate::persister::Persister;
use crate::safety::{fnv1a, SafetyChecker};

/// The kvraft tests' `electionTimeout`.
pub const KV_ELECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a clerk waits for one call before trying the next server. A
/// leader cut off in a minority never answers, so the clerk must move on.
pub const CLERK_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// The lab's `linearizabilityCheckTimeout` (1 s), as a number of search
/// steps so that the verdict depends only on the history, never on how
/// loaded the machine is: the checker runs about 7–18 million steps per
/// second on the reference histories here (etcd_002: 659 437 steps in 95 ms),
/// so 10 million is about a second of real search. Running out fails the test
/// (the Go tests pass it).
pub const LINEARIZABILITY_STEPS: u64 = 10_000_000;
/// How often labrpc checks whether the server of a pending call died.
const DEAD_POLL: Duration = Duration::from_millis(100);

/// One recorded clerk operation (times in virtual nanoseconds).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryOp {
    /// The test's client number (the Go `cli`).
    pub client: u64,
    /// When the clerk was called.
    pub call: u64,
    /// When it returned.
    #[serde(rename = "return")]
    pub ret: u64,
    /// "get", "put" or "append".
    pub op: &'static str,
    /// The key.
    pub key: String,
    /// The value written ("" for get).
    pub value: String,
    /// What a get returned ("" for put and append).
    pub output: String,
}

struct Slot {
    server: KvServer,
    gen: u64,
    timer: Option<Instant>,
}

struct ClerkEnds {
    /// The clerk's server k is real server `order[k]`.
    order: Vec<usize>,
    /// Which real servers its ends reach.
    enabled: Vec<bool>,
}

struct Call {
    clerk: u64,
    server: usize,
    server_gen: u64,
    reply: OneshotSender<Option<Reply>>,
}

struct Begin {
    name: String,
    t0: Instant,
    rpcs0: u64,
    ops0: u64,
}

struct World {
    n: usize,
    slots: Vec<Option<Slot>>,
    gens: Vec<u64>,
    persisters: Vec<Persister>,
    links: Vec<Vec<bool>>,
    net: Network,
    rpc_count: Vec<u64>,
    clerks: BTreeMap<u64, ClerkEnds>,
    next_clerk: u64,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    max_raft_state: Option<usize>,
    ops: u64,
    safety: SafetyChecker,
    history: Vec<HistoryOp>,
    last_stamp: u64,
    start: Instant,
    begin: Option<Begin>,
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

impl KvCfg {
    /// `make_config(n, unreliable, maxraftstate)`: starts and connects `n`
    /// servers; `max_raft_state` of `None` is the lab's −1.
    pub fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> KvCfg {
        let world = World {
            n,
            slots: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            persisters: vec![Persister::new(); n],
            links: vec![vec![false; n]; n],
            net: Network {
                reliable: !unreliable,
                ..Network::default()
            },
            rpc_count: vec![0; n],
            clerks: BTreeMap::new(),
            next_clerk: 0,
            calls: BTreeMap::new(),
            next_call: 0,
            max_raft_state,
            ops: 0,
            safety: SafetyChecker::default(),
            history: Vec::new(),
            last_stamp: 0,
            start: now(),
            begin: None,
        };
        let cfg = KvCfg {
            world: Rc::new(RefCell::new(world)),
        };
        for i in 0..n {
            cfg.start_server(i);
        }
        cfg.connect_all();
        let watched = Rc::downgrade(&cfg.world);
        crate::executor::spawn(async move {
            crate::executor::sleep(crate::raft_harness::TEST_TIME_LIMIT).await;
            if let Some(world) = watched.upgrade() {
                let cfg = KvCfg { world };
                panic!(
                    "test took longer than 120 seconds (virtual); cluster:\n{}",
                    cfg.status()
                );
            }
        });
        cfg
    }

    /// Number of servers.
    pub fn n(&self) -> usize {
        self.world.borrow().n
    }

    /// Every server index.
    pub fn all(&self) -> Vec<usize> {
        (0..self.n()).collect()
    }

    // ----- connectivity ---------------------------------------------------

    fn set_links(&self, i: usize, to: &[usize], on: bool) {
        let mut w = self.world.borrow_mut();
        for &j in to {
            w.links[i][j] = on;
            w.links[j][i] = on;
        }
    }

    /// Connect server `i` to each of `to` (both directions).
    pub fn connect(&self, i: usize, to: &[usize]) {
        self.set_links(i, to, true);
    }

    /// Disconnect server `i` from each of `from` (both directions).
    pub fn disconnect(&self, i: usize, from: &[usize]) {
        self.set_links(i, from, false);
    }

    /// Reconnect every server to every other.
    pub fn connect_all(&self) {
        let all = self.all();
        for i in 0..self.n() {
            self.connect(i, &all);
        }
    }

    /// Each side fully connected internally and cut off from the other.
    pub fn partition(&self, p1: &[usize], p2: &[usize]) {
        for &i in p1 {
            self.disconnect(i, p2);
            self.connect(i, p1);
        }
        for &i in p2 {
            self.disconnect(i, p1);
            self.connect(i, p2);
        }
    }

    /// The first server that believes it leads, if any.
    pub fn leader(&self) -> Option<usize> {
        let w = self.world.borrow();
        (0..w.n).find(|&i| {
            w.slots[i]
                .as_ref()
                .is_some_and(|s| s.server.raft().is_leader())
        })
    }

    /// A majority of `n/2 + 1` non-leaders and a minority of `n/2` servers
    /// whose last member is the current leader (server 0 if none).
    pub fn make_partition(&self) -> (Vec<usize>, Vec<usize>) {
        let n = self.n();
        let l = self.leader().unwrap_or(0);
        let others = (0..n).filter(|&i| i != l);
        let mut p1: Vec<usize> = others.clone().take(n / 2 + 1).collect();
        let mut p2: Vec<usize> = others.skip(n / 2 + 1).collect();
        p2.push(l);
        p1.sort_unstable();
        (p1, p2)
    }

    /// Turn request/reply loss and short delays on (`true`) or off.
    pub fn set_unreliable(&self, unreliable: bool) {
        self.world.borrow_mut().net.reliable = !unreliable;
    }

    // ----- servers --------------------------------------------------------

    /// Cut server `i` off, delete it from the network (so it can send no
    /// positive reply from state about to be lost), detach its persister.
    pub fn shutdown_server(&self, i: usize) {
        let all = self.all();
        self.disconnect(i, &all);
        self.world.borrow_mut().slots[i] = None;
    }

    /// (Re)start server `i` from its persister; not connected.
    pub fn start_server(&self, i: usize) {
        {
            let mut w = self.world.borrow_mut();
            w.slots[i] = None;
            w.gens[i] += 1;
            let (state, snapshot) = w.persisters[i].load();
            let members: Vec<u64> = (0..w.n as u64).collect();
            let config = ServerConfig::new(Config::new(i as u64, members), w.max_raft_state);
            let seed = with_rng(|r| r.next_u64());
            let server = KvServer::recover(config, seed, state, snapshot)
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

    // ----- clerks ---------------------------------------------------------

    /// A new clerk whose ends reach the servers in `to`.
    pub fn make_client(&self, to: &[usize]) -> SimClerk {
        let (ends, servers, first) = {
            let mut w = self.world.borrow_mut();
            let n = w.n;
            let mut order: Vec<usize> = (0..n).collect();
            for k in (1..n).rev() {
                let j = with_rng(|r| r.below(k as u64 + 1)) as usize;
                order.swap(k, j);
            }
            let enabled = (0..n).map(|j| to.contains(&j)).collect();
            let id = w.next_clerk;
            w.next_clerk += 1;
            w.clerks.insert(id, ClerkEnds { order, enabled });
            (id, n, with_rng(|r| r.below(n as u64)) as usize)
        };
        let client_id = with_rng(|r| r.next_u64());
        SimClerk {
            cfg: self.clone(),
            ends,
            clerk: Rc::new(RefCell::new(Clerk::new(client_id, servers, first))),
        }
    }

    /// Let clerk `ck` reach exactly the servers in `to`.
    pub fn connect_client(&self, ck: &SimClerk, to: &[usize]) {
        let mut w = self.world.borrow_mut();
        let n = w.n;
        let ends = w.clerks.get_mut(&ck.ends).expect("a clerk of this cluster");
        ends.enabled = (0..n).map(|j| to.contains(&j)).collect();
    }

    /// Cut clerk `ck` off from the servers in `from`.
    pub fn disconnect_client(&self, ck: &SimClerk, from: &[usize]) {
        let mut w = self.world.borrow_mut();
        let ends = w.clerks.get_mut(&ck.ends).expect("a clerk of this cluster");
        for &j in from {
            ends.enabled[j] = false;
        }
    }

    // ----- tester helpers ---------------------------------------------------

    /// Records baselines for `end`'s result line.
    pub fn begin(&self, name: &str) {
        let mut w = self.world.borrow_mut();
        w.begin = Some(Begin {
            name: name.to_string(),
            t0: now(),
            rpcs0: w.net.rpc_total,
            ops0: w.ops,
        });
    }

    /// Checks the whole history with the KV model (per-key partitioning,
    /// porcupine's search). Unlike the Go tests, running out of the budget
    /// ([`LINEARIZABILITY_STEPS`]) fails. On a violation, writes the offending key's history as an
    /// HTML timeline to the temp directory and names it in the failure.
    pub fn check_linearizable(&self) {
        use crate::linearizability::{
            check_steps, write_violation_html_to_temp, KvInput, KvModel, KvOutput, Operation,
            Verdict,
        };
        let ops: Vec<Operation<KvInput, KvOutput>> = self
            .history()
            .into_iter()
            .map(|h| Operation {
                client: h.client,
                call: h.call,
                ret: h.ret,
                input: match h.op {
                    "get" => KvInput::get(h.key),
                    "put" => KvInput::put(h.key, h.value),
                    _ => KvInput::append(h.key, h.value),
                },
                output: KvOutput::Value(h.output),
            })
            .collect();
        let started = std::time::Instant::now();
        let (verdict, steps) = check_steps(&KvModel, &ops, LINEARIZABILITY_STEPS);
        match verdict {
            Verdict::Linearizable => println!(
                "linearizability: {} operations checked in {steps} steps, {:.1} ms",
                ops.len(),
                started.elapsed().as_secs_f64() * 1e3
            ),
            Verdict::NotLinearizable(v) => {
                let name = format!("{}-seed{}-history", crate::current_test_name(), crate::executor::seed());
                match write_violation_html_to_temp(&name, &KvModel, &v) {
                    Ok(path) => panic!("history is not linearizable; timeline: {}", path.display()),
                    Err(e) => panic!("history is not linearizable (could not write the timeline: {e})"),
                }
            }
            Verdict::Unknown => panic!(
                "linearizability check ran out of its budget of {LINEARIZABILITY_STEPS} search steps ({:?}, {} operations): a failure here",
                started.elapsed(),
                ops.len()
            ),
        }
    }

    /// With `HISTORY_DIR` set, writes the history so far as JSON lines
    /// (`client`, `call`, `return`, `op`, `key`, `value`, `output`) to
    /// `<HISTORY_DIR>/<test>-seed<seed>.jsonl`.
    fn export_history(&self) {
        let Some(dir) = std::env::var_os("HISTORY_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let name = match crate::current_test_name() {
            n if n.is_empty() => "kv".to_string(),
            n => n,
        };
        let path = dir.join(format!("{name}-seed{}.jsonl", crate::executor::seed()));
        let mut text = String::new();
        for op in self.world.borrow().history.iter() {
            text.push_str(&serde_json::to_string(op).expect("history encodes"));
            text.push('\n');
        }
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            panic!("HISTORY_DIR: cannot write {}: {e}", path.display());
        }
    }

    /// Checks the time limit, prints the lab's result line (virtual seconds,
    /// peers, RPCs, clerk operations) and exports the history if asked.
    pub fn end(&self) {
        self.export_history();
        let w = self.world.borrow();
        assert!(
            now() - w.start <= crate::raft_harness::TEST_TIME_LIMIT,
            "test took longer than 120 seconds"
        );
        let b = w.begin.as_ref().expect("begin() before end()");
        println!(
            "{} ... Passed -- {:4.1} {} {:5} {:4}",
            b.name,
            (now() - b.t0).as_secs_f64(),
            w.n,
            w.net.rpc_total - b.rpcs0,
            w.ops - b.ops0
        );
    }

    /// The largest encoded Raft state over all servers.
    pub fn log_size(&self) -> usize {
        self.world
            .borrow()
            .persisters
            .iter()
            .map(Persister::raft_state_size)
            .max()
            .unwrap_or(0)
    }

    /// The largest snapshot over all servers.
    pub fn snapshot_size(&self) -> usize {
        self.world
            .borrow()
            .persisters
            .iter()
            .map(Persister::snapshot_size)
            .max()
            .unwrap_or(0)
    }

    /// One line per server: incarnation, term, role, commit, applied, log
    /// and snapshot indices, waiting requests, links; for failure reports.
    pub fn status(&self) -> String {
        let w = self.world.borrow();
        let mut out = String::new();
        for i in 0..w.n {
            let links: String = (0..w.n)
                .map(|j| if w.links[i][j] { '1' } else { '.' })
                .collect();
            match &w.slots[i] {
                None => out += &format!("  server {i}: down, links {links}\n"),
                Some(s) => {
                    let r = s.server.raft();
                    out += &format!(
                        "  server {i}: gen {} term {} {:?} leader {:?} commit {} applied {} last {} snapshot {} durable {} waiting {} links {links}\n",
                        s.gen,
                        r.term(),
                        r.role(),
                        r.leader_hint(),
                        r.commit_index(),
                        r.last_applied(),
                        r.log().last_index(),
                        r.log().snapshot().index,
                        r.durable_index(),
                        s.server.waiting()
                    );
                }
            }
        }
        out += &format!("  pending calls {}, clerk ops {}\n", w.calls.len(), w.ops);
        out
    }

    /// Requests sent so far.
    pub fn rpc_total(&self) -> u64 {
        self.world.borrow().net.rpc_total
    }

    /// Every clerk operation so far, in return order.
    pub fn history(&self) -> Vec<HistoryOp> {
        self.world.borrow().history.clone()
    }

    /// A uniform integer in `0..bound` from the simulation's generator.
    pub fn rand_below(&self, bound: u64) -> u64 {
        with_rng(|r| r.below(bound))
    }

    // ----- clerk operations (the Go test wrappers) --------------------------

    /// `Get` through `ck`, recorded under client number `cli`.
    pub async fn get(&self, ck: &SimClerk, key: &str, cli: u64) -> String {
        self.run_op(
            ck,
            cli,
            Op::Get {
                key: key.to_string(),
            },
        )
        .await
    }

    /// `Put` through `ck`, recorded under client number `cli`.
    pub async fn put(&self, ck: &SimClerk, key: &str, value: &str, cli: u64) {
        self.run_op(
            ck,
            cli,
            Op::Put {
                key: key.to_string(),
                value: value.to_string(),
            },
        )
        .await;
    }

    /// `Append` through `ck`, recorded under client number `cli`.
    pub async fn append(&self, ck: &SimClerk, key: &str, value: &str, cli: u64) {
        self.run_op(
            ck,
            cli,
            Op::Append {
                key: key.to_string(),
                value: value.to_string(),
            },
        )
        .await;
    }

    /// A history timestamp: virtual nanoseconds, nudged forward so that every
    /// stamp is strictly later than the previous one. The simulation is
    /// single-threaded, so this order is the real order of calls and returns
    /// even when a whole operation completes within one virtual instant.
    fn stamp(&self) -> u64 {
        let mut w = self.world.borrow_mut();
        let t = now().as_nanos().max(w.last_stamp + 1);
        w.last_stamp = t;
        t
    }

    async fn run_op(&self, ck: &SimClerk, cli: u64, op: Op) -> String {
        let call = self.stamp();
        let (kind, key, value) = match &op {
            Op::Get { key } => ("get", key.clone(), String::new()),
            Op::Put { key, value } => ("put", key.clone(), value.clone()),
            Op::Append { key, value } => ("append", key.clone(), value.clone()),
        };
        let output = match ck.execute(op).await {
            Outcome::Value(v) => v,
            Outcome::Done => String::new(),
            Outcome::SessionExpired => panic!("clerk session expired"),
        };
        let ret = self.stamp();
        let mut w = self.world.borrow_mut();
        w.ops += 1;
        let out = if kind == "get" {
            output.clone()
        } else {
            String::new()
        };
        w.history.push(HistoryOp {
            client: cli,
            call,
            ret,
            op: kind,
            key,
            value,
            output: out,
        });
        output
    }

    // ----- driving servers ----------------------------------------------------

    fn step(&self, i: usize, event: ServerEvent, caller: Option<(usize, u64)>) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = {
                let mut w = self.world.borrow_mut();
                let w = &mut *w;
                let Some(slot) = w.slots[i].as_mut() else {
                    return;
                };
                let actions = slot
                    .server
                    .step(now(), event)
                    .expect("the harness uses the server correctly");
                w.safety.after_step(slot.server.raft());
                actions
            };
            for action in actions {
                match action {
                    ServerAction::Send { to, message } => {
                        self.send(i, to as usize, &message, caller)
                    }
                    ServerAction::Persist(p) => {
                        let size = {
                            let mut w = self.world.borrow_mut();
                            let w = &mut *w;
                            w.persisters[i].save(&p);
                            if let (Some(from), Some(slot)) = (p.truncate_from, w.slots[i].as_ref())
                            {
                                let term = slot.server.raft().term();
                                w.safety.log_truncated(i as u64, term, from);
                            }
                            if let (Some(first), Some(slot)) =
                                (p.entries.first(), w.slots[i].as_ref())
                            {
                                let prev = slot.server.raft().log().term_at(first.index - 1);
                                w.safety.entries_written(i as u64, &p.entries, prev);
                            }
                            // Sizing re-encodes the state: only when it matters.
                            if w.max_raft_state.is_some() {
                                w.persisters[i].raft_state_size()
                            } else {
                                0
                            }
                        };
                        for (to, message) in &p.then_send {
                            self.send(i, *to as usize, message, caller);
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
                cfg.step(i, ServerEvent::TimerFired, None);
            }
        });
    }

    /// Raft traffic between servers, with labrpc semantics (see the Raft
    /// harness): requests start calls, replies answer the call being handled.
    fn send(&self, from: usize, to: usize, message: &Message, caller: Option<(usize, u64)>) {
        let bytes = postcard::to_allocvec(message).expect("messages encode");
        let mut w = self.world.borrow_mut();
        let w = &mut *w;
        w.safety
            .check_send(from as u64, to as u64, message, &w.persisters[from]);
        let from_gen = w.gens[from];
        if message.is_request() {
            let enabled = w.links[from][to] && w.slots[to].is_some();
            let to_gen = w.gens[to];
            if let RequestFate::Deliver { delay } = w.net.send_request(bytes.len(), enabled) {
                let cfg = self.clone();
                schedule_after(delay, move || {
                    let handle = {
                        let mut w = cfg.world.borrow_mut();
                        let alive = w.slots[to].as_ref().is_some_and(|s| s.gen == to_gen);
                        let handle = !w.net.drop_request_now() && alive;
                        if handle {
                            w.rpc_count[to] += 1;
                        }
                        handle
                    };
                    if handle {
                        let message: Message =
                            postcard::from_bytes(&bytes).expect("messages decode");
                        let event = ServerEvent::MessageReceived {
                            from: from as u64,
                            message,
                        };
                        cfg.step(to, event, Some((from, from_gen)));
                    }
                });
            }
        } else {
            let caller_gen = match caller {
                Some((c, g)) if c == to => g,
                _ => w.gens[to],
            };
            let alive = w.links[to][from] && w.gens[to] == caller_gen;
            if let ReplyFate::Deliver { delay } = w.net.send_reply(alive) {
                let cfg = self.clone();
                schedule_after(delay, move || {
                    let deliver = {
                        let mut w = cfg.world.borrow_mut();
                        w.net.reply_delivered(bytes.len());
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
    fn call(
        &self,
        clerk: u64,
        server: usize,
        command: Command,
    ) -> crate::executor::OneshotReceiver<Option<Reply>> {
        let (tx, rx) = oneshot();
        let bytes = postcard::to_allocvec(&command).expect("commands encode");
        let mut w = self.world.borrow_mut();
        let enabled = w.clerks[&clerk].enabled[server] && w.slots[server].is_some();
        match w.net.send_request(bytes.len(), enabled) {
            RequestFate::Fail => {
                // Without LongDelays a failed call returns within 0–99 ms.
                let delay = ms(with_rng(|r| r.below(100)));
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
                schedule_after(delay, move || cfg.client_request_arrived(id, bytes));
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

    fn client_request_arrived(&self, id: u64, bytes: Vec<u8>) {
        let server = {
            let mut w = self.world.borrow_mut();
            let Some(call) = w.calls.get(&id) else { return };
            let server = call.server;
            if w.net.drop_request_now() || !Self::call_alive(&w, call) {
                drop(w);
                self.fail_call(id);
                return;
            }
            w.rpc_count[server] += 1;
            server
        };
        self.watch_call(id);
        let command: Command = postcard::from_bytes(&bytes).expect("commands decode");
        self.step(server, ServerEvent::RequestReceived { id, command }, None);
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
        match w.net.send_reply(alive) {
            ReplyFate::Drop => call.reply.send(None),
            ReplyFate::Deliver { delay } => {
                let bytes = postcard::to_allocvec(&reply).expect("replies encode");
                let cfg = self.clone();
                schedule_after(delay, move || {
                    cfg.world.borrow_mut().net.reply_delivered(bytes.len());
                    let reply: Reply = postcard::from_bytes(&bytes).expect("replies decode");
                    call.reply.send(Some(reply));
                });
            }
        }
    }
}

impl SimClerk {
    /// Runs one operation to completion: retries (with the clerk's logic)
    /// until some server applies it.
    async fn execute(&self, op: Op) -> Outcome {
        let mut attempt = self.clerk.borrow_mut().begin(op);
        loop {
            let (real, order) = {
                let w = self.cfg.world.borrow();
                let order = w.clerks[&self.ends].order.clone();
                (order[attempt.server], order)
            };
            if let Some(delay) = attempt.delay {
                crate::executor::sleep(delay).await;
            }
            let rx = self.cfg.call(self.ends, real, attempt.command.clone());
            let result = timeout(CLERK_CALL_TIMEOUT, rx).await.flatten().flatten();
            let mut clerk = self.clerk.borrow_mut();
            attempt = match result {
                Some(Reply::WrongLeader { leader_hint }) => {
                    // Hints name real servers; the clerk counts in its own order.
                    let hint = leader_hint.and_then(|h| order.iter().position(|&s| s as u64 == h));
                    let reply = Reply::WrongLeader {
                        leader_hint: hint.map(|k| k as u64),
                    };
                    match clerk.on_reply(attempt.server, reply) {
                        Progress::Retry(a) => a,
                        Progress::Done(_) => unreachable!("a wrong-leader reply never completes"),
                    }
                }
                Some(reply) => match clerk.on_reply(attempt.server, reply) {
                    Progress::Done(outcome) => return outcome,
                    Progress::Retry(a) => a,
                },
                None => clerk.on_failure(attempt.server),
            };
        }
    }
}

/// Fingerprint helper re-exported for tests that compare runs.
pub fn history_fingerprint(history: &[HistoryOp]) -> u64 {
    history.iter().fold(0, |h, op| {
        let h = fnv1a(h, &op.call.to_le_bytes());
        fnv1a(h, op.output.as_bytes())
    })
}
