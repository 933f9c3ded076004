//! The KV lab harness on OS threads: `driver_sim::KvCfg`'s and
//! `driver_sim::SimClerk`'s public methods, with the same names, signatures
//! and checks, over real threads and clocks (a port of the 6.5840 (2023)
//! `kvraft/config.go`, lab-tests.md §4.2).
//!
//! Each server is a `kv_core::KvServer` on its own thread
//! ([`crate::node`]), built with the same `ServerConfig` as in the
//! simulator and told the encoded Raft state's size after every write, so it
//! snapshots at `max_raft_state` as it does there. Clerks are
//! `kv_core::Clerk`s with their own ends to every server, in a random order
//! per clerk (the Go tester's shuffled ends), driven by the same loop as the
//! simulator's (`CLERK_CALL_TIMEOUT` per call). Every operation is recorded
//! with its real call and return times (monotonic nanoseconds since the run
//! began) and the history is checked with `driver_sim::linearizability` under
//! the same step budget (running out fails).
//!
//! `shutdown_server` disconnects the server, deletes it from the network,
//! stops its thread and detaches its persister (the next incarnation loads a
//! copy); `start_server` recovers a new incarnation from that copy.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_sim::persister::Persister;
use kv_core::{Clerk, KvServer, Op, Outcome, Progress, Reply, ServerConfig};
use raft_core::{Config, Message, Persist};

pub use driver_sim::kv_harness::{
    HistoryOp, CLERK_CALL_TIMEOUT, KV_ELECTION_TIMEOUT, LINEARIZABILITY_STEPS,
};

use crate::lab::{check_failures, test_name, watch_failures, Safety};
use crate::network::{NetConfig, Network};
use crate::node::{Clock, Failures, Hooks, Node, NodeSpec};
use crate::raft_harness::TEST_TIME_LIMIT;
use crate::rt::{self, lock, now, sleep, timeout, with_rng};

struct Begin {
    name: String,
    t0: Duration,
    rpcs0: u64,
    ops0: u64,
}

struct KvInner {
    n: usize,
    net: Network,
    clock: Clock,
    safety: Safety,
    failures: Failures,
    max_raft_state: Option<usize>,
    nodes: RefCell<Vec<Option<Node<KvServer, Persister>>>>,
    persisters: RefCell<Vec<Arc<Mutex<Persister>>>>,
    /// Each clerk's ends (by network client id): its server k is real
    /// server `order[k]`.
    clerks: RefCell<BTreeMap<u64, Vec<usize>>>,
    ops: Cell<u64>,
    history: RefCell<Vec<HistoryOp>>,
    last_stamp: Cell<u64>,
    start: Duration,
    begin: RefCell<Option<Begin>>,
}

impl Drop for KvInner {
    fn drop(&mut self) {
        for node in self.nodes.get_mut().iter_mut() {
            if let Some(mut node) = node.take() {
                node.stop();
            }
        }
        self.net.shutdown();
    }
}

/// A KV cluster on OS threads, the real-time twin of `driver_sim::KvCfg`
/// (and of the kvraft tests' `cfg`). Cheap to clone into spawned tasks; the
/// threads stop when the last clone (clerks hold one) is dropped.
#[derive(Clone)]
pub struct ThreadKvCfg {
    inner: Rc<KvInner>,
}

/// A clerk with its own ends, as [`ThreadKvCfg::make_client`] builds them
/// (the twin of `driver_sim::SimClerk`).
#[derive(Clone)]
pub struct ThreadClerk {
    cfg: ThreadKvCfg,
    ends: u64,
    clerk: Rc<RefCell<Clerk>>,
}

/// The safety checker on the server threads.
struct KvHooks {
    safety: Safety,
}

impl Hooks<KvServer, Persister> for KvHooks {
    fn stepped(&mut self, _id: usize, server: &KvServer) {
        self.safety.stepped(server);
    }

    fn persisted(&mut self, id: usize, server: &KvServer, persist: &Persist, _storage: &Persister) {
        self.safety.persisted(id, server, persist);
    }

    fn sending(&mut self, id: usize, to: usize, message: &Message, storage: &Persister) {
        self.safety.sending(id, to, message, storage);
    }
}

impl ThreadKvCfg {
    /// `make_config(n, unreliable, maxraftstate)`: starts and connects `n`
    /// servers; `max_raft_state` of `None` is the lab's −1. Fails the test
    /// if it is still running after 120 s.
    pub fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> ThreadKvCfg {
        let net = Network::new(NetConfig {
            servers: n,
            reliable: !unreliable,
            // The kvraft config leaves LongDelays off: failed calls return
            // within 100 ms so clerks move on quickly.
            long_delays: false,
            hop_latency: driver_sim::network::HOP_LATENCY,
            seed: with_rng(|r| r.next_u64()),
        });
        let inner = KvInner {
            n,
            net,
            clock: Clock::new(),
            safety: Safety::default(),
            failures: Failures::new(),
            max_raft_state,
            nodes: RefCell::new((0..n).map(|_| None).collect()),
            persisters: RefCell::new(
                (0..n)
                    .map(|_| Arc::new(Mutex::new(Persister::new())))
                    .collect(),
            ),
            clerks: RefCell::new(BTreeMap::new()),
            ops: Cell::new(0),
            history: RefCell::new(Vec::new()),
            last_stamp: Cell::new(0),
            start: now(),
            begin: RefCell::new(None),
        };
        let cfg = ThreadKvCfg {
            inner: Rc::new(inner),
        };
        watch_failures(&cfg.inner.failures);
        for i in 0..n {
            cfg.start_server(i);
        }
        cfg.connect_all();
        let watched: Weak<KvInner> = Rc::downgrade(&cfg.inner);
        rt::spawn(async move {
            sleep(TEST_TIME_LIMIT).await;
            if let Some(inner) = watched.upgrade() {
                let cfg = ThreadKvCfg { inner };
                panic!(
                    "test took longer than 120 seconds; cluster:\n{}",
                    cfg.status()
                );
            }
        });
        cfg
    }

    /// Number of servers.
    pub fn n(&self) -> usize {
        self.inner.n
    }

    /// Every server index.
    pub fn all(&self) -> Vec<usize> {
        (0..self.n()).collect()
    }

    // ----- connectivity ---------------------------------------------------

    fn set_links(&self, i: usize, to: &[usize], on: bool) {
        for &j in to {
            self.inner.net.set_link(i, j, on);
            self.inner.net.set_link(j, i, on);
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
        let nodes = self.inner.nodes.borrow();
        (0..self.n()).find(|&i| {
            nodes[i]
                .as_ref()
                .and_then(|n| n.with(|s| s.raft().is_leader()))
                .unwrap_or(false)
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
        self.inner.net.set_reliable(!unreliable);
    }

    // ----- servers --------------------------------------------------------

    /// Stops server `i`'s incarnation, if running, and detaches its
    /// persister: the next incarnation gets a copy.
    fn kill(&self, i: usize) {
        let node = self.inner.nodes.borrow_mut()[i].take();
        if let Some(mut node) = node {
            node.stop();
        }
        let mut persisters = self.inner.persisters.borrow_mut();
        let copy = lock(&persisters[i]).clone();
        persisters[i] = Arc::new(Mutex::new(copy));
    }

    /// Cut server `i` off, delete it from the network (so it can send no
    /// positive reply from state about to be lost), stop its thread, detach
    /// its persister.
    pub fn shutdown_server(&self, i: usize) {
        let all = self.all();
        self.disconnect(i, &all);
        self.kill(i);
    }

    /// (Re)start server `i` from its persister; not connected.
    pub fn start_server(&self, i: usize) {
        self.kill(i);
        let storage = self.inner.persisters.borrow()[i].clone();
        let (state, snapshot) = lock(&storage).load();
        let members: Vec<u64> = (0..self.inner.n as u64).collect();
        let config = ServerConfig::new(Config::new(i as u64, members), self.inner.max_raft_state);
        let seed = with_rng(|r| r.next_u64());
        let server = KvServer::recover(config, seed, state, snapshot)
            .expect("a server recovers from what it persisted");
        let spec = NodeSpec {
            id: i,
            machine: server,
            storage,
            hooks: Box::new(KvHooks {
                safety: self.inner.safety.clone(),
            }),
            // Sizing re-encodes the state: only when it matters.
            measure_raft_state: self.inner.max_raft_state.is_some(),
        };
        let node = Node::spawn(
            spec,
            &self.inner.net,
            self.inner.clock,
            &self.inner.failures,
        );
        self.inner.nodes.borrow_mut()[i] = Some(node);
    }

    // ----- clerks ---------------------------------------------------------

    /// A new clerk whose ends reach the servers in `to`.
    pub fn make_client(&self, to: &[usize]) -> ThreadClerk {
        let n = self.n();
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            let j = with_rng(|r| r.below(k as u64 + 1)) as usize;
            order.swap(k, j);
        }
        let enabled = (0..n).map(|j| to.contains(&j)).collect();
        let ends = self.inner.net.add_client(enabled);
        self.inner.clerks.borrow_mut().insert(ends, order);
        let first = with_rng(|r| r.below(n as u64)) as usize;
        let client_id = with_rng(|r| r.next_u64());
        ThreadClerk {
            cfg: self.clone(),
            ends,
            clerk: Rc::new(RefCell::new(Clerk::new(client_id, n, first))),
        }
    }

    /// Let clerk `ck` reach exactly the servers in `to`.
    pub fn connect_client(&self, ck: &ThreadClerk, to: &[usize]) {
        for j in 0..self.n() {
            self.inner.net.set_client_link(ck.ends, j, to.contains(&j));
        }
    }

    /// Cut clerk `ck` off from the servers in `from`.
    pub fn disconnect_client(&self, ck: &ThreadClerk, from: &[usize]) {
        for &j in from {
            self.inner.net.set_client_link(ck.ends, j, false);
        }
    }

    // ----- tester helpers ---------------------------------------------------

    /// Records baselines for `end`'s result line.
    pub fn begin(&self, name: &str) {
        *self.inner.begin.borrow_mut() = Some(Begin {
            name: name.to_string(),
            t0: now(),
            rpcs0: self.inner.net.rpc_total(),
            ops0: self.inner.ops.get(),
        });
    }

    /// Checks the whole history with the KV model (per-key partitioning,
    /// porcupine's search), exactly as the simulator's harness does. Unlike
    /// the Go tests, running out of the budget ([`LINEARIZABILITY_STEPS`])
    /// fails. On a violation, writes the offending key's history as an HTML
    /// timeline to the temp directory and names it in the failure.
    pub fn check_linearizable(&self) {
        use driver_sim::linearizability::{
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
                let name = format!("{}-threads-seed{}-history", test_name(), rt::seed());
                match write_violation_html_to_temp(&name, &KvModel, &v) {
                    Ok(path) => panic!("history is not linearizable; timeline: {}", path.display()),
                    Err(e) => panic!(
                        "history is not linearizable (could not write the timeline: {e})"
                    ),
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
    /// `<HISTORY_DIR>/<test>-threads-seed<seed>.jsonl`, as the simulator does.
    fn export_history(&self) {
        let Some(dir) = std::env::var_os("HISTORY_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let path = dir.join(format!("{}-threads-seed{}.jsonl", test_name(), rt::seed()));
        let mut text = String::new();
        for op in self.inner.history.borrow().iter() {
            text.push_str(&format!(
                "{{\"client\":{},\"call\":{},\"return\":{},\"op\":{},\"key\":{},\"value\":{},\"output\":{}}}\n",
                op.client,
                op.call,
                op.ret,
                json_string(op.op),
                json_string(&op.key),
                json_string(&op.value),
                json_string(&op.output)
            ));
        }
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            panic!("HISTORY_DIR: cannot write {}: {e}", path.display());
        }
    }

    /// Checks that no server thread failed and the time limit, prints the
    /// lab's result line (real seconds, peers, RPCs, clerk operations) and
    /// exports the history if asked.
    pub fn end(&self) {
        self.export_history();
        check_failures(&self.inner.failures);
        assert!(
            now() - self.inner.start <= TEST_TIME_LIMIT,
            "test took longer than 120 seconds"
        );
        let begin = self.inner.begin.borrow();
        let b = begin.as_ref().expect("begin() before end()");
        println!(
            "{} ... Passed -- {:4.1} {} {:5} {:4}",
            b.name,
            (now() - b.t0).as_secs_f64(),
            self.inner.n,
            self.inner.net.rpc_total() - b.rpcs0,
            self.inner.ops.get() - b.ops0
        );
    }

    /// The largest encoded Raft state over all servers.
    pub fn log_size(&self) -> usize {
        let persisters = self.inner.persisters.borrow();
        persisters
            .iter()
            .map(|p| lock(p).raft_state_size())
            .max()
            .unwrap_or(0)
    }

    /// The largest snapshot over all servers.
    pub fn snapshot_size(&self) -> usize {
        let persisters = self.inner.persisters.borrow();
        persisters
            .iter()
            .map(|p| lock(p).snapshot_size())
            .max()
            .unwrap_or(0)
    }

    /// One line per server: incarnation, term, role, commit, applied, log
    /// and snapshot indices, waiting requests, links; for failure reports.
    pub fn status(&self) -> String {
        let n = self.n();
        let nodes = self.inner.nodes.borrow();
        let mut out = String::new();
        for i in 0..n {
            let links: String = (0..n)
                .map(|j| if self.inner.net.link(i, j) { '1' } else { '.' })
                .collect();
            let line = nodes[i].as_ref().and_then(|node| {
                let gen = node.generation();
                node.with(|s| {
                    let r = s.raft();
                    format!(
                        "  server {i}: gen {gen} term {} {:?} leader {:?} commit {} applied {} last {} snapshot {} durable {} waiting {} links {links}\n",
                        r.term(),
                        r.role(),
                        r.leader_hint(),
                        r.commit_index(),
                        r.last_applied(),
                        r.log().last_index(),
                        r.log().snapshot().index,
                        r.durable_index(),
                        s.waiting()
                    )
                })
            });
            out += &line.unwrap_or_else(|| format!("  server {i}: down, links {links}\n"));
        }
        out += &format!(
            "  pending calls {}, clerk ops {}\n",
            self.inner.net.pending_calls(),
            self.inner.ops.get()
        );
        out
    }

    /// Requests sent so far.
    pub fn rpc_total(&self) -> u64 {
        self.inner.net.rpc_total()
    }

    /// Every clerk operation so far, in return order.
    pub fn history(&self) -> Vec<HistoryOp> {
        self.inner.history.borrow().clone()
    }

    /// A uniform integer in `0..bound` from the run's generator.
    pub fn rand_below(&self, bound: u64) -> u64 {
        with_rng(|r| r.below(bound))
    }

    // ----- clerk operations (the Go test wrappers) --------------------------

    /// `Get` through `ck`, recorded under client number `cli`.
    pub async fn get(&self, ck: &ThreadClerk, key: &str, cli: u64) -> String {
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
    pub async fn put(&self, ck: &ThreadClerk, key: &str, value: &str, cli: u64) {
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
    pub async fn append(&self, ck: &ThreadClerk, key: &str, value: &str, cli: u64) {
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

    /// A history timestamp: real nanoseconds since the run began, nudged
    /// forward so that every stamp is strictly later than the previous one.
    /// Every clerk runs on the body's one thread, so this order is the real
    /// order of calls and returns.
    fn stamp(&self) -> u64 {
        let t = (now().as_nanos() as u64).max(self.inner.last_stamp.get() + 1);
        self.inner.last_stamp.set(t);
        t
    }

    async fn run_op(&self, ck: &ThreadClerk, cli: u64, op: Op) -> String {
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
        self.inner.ops.set(self.inner.ops.get() + 1);
        let out = if kind == "get" {
            output.clone()
        } else {
            String::new()
        };
        self.inner.history.borrow_mut().push(HistoryOp {
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
}

impl ThreadClerk {
    /// Runs one operation to completion: retries (with the clerk's logic)
    /// until some server applies it. Each call waits at most
    /// [`CLERK_CALL_TIMEOUT`].
    async fn execute(&self, op: Op) -> Outcome {
        let mut attempt = self.clerk.borrow_mut().begin(op);
        loop {
            let order = self.cfg.inner.clerks.borrow()[&self.ends].clone();
            let real = order[attempt.server];
            if let Some(delay) = attempt.delay {
                sleep(delay).await;
            }
            let request = postcard::to_allocvec(&attempt.command).expect("commands encode");
            let rx = self.cfg.inner.net.call(self.ends, real, request);
            let result: Option<Reply> = timeout(CLERK_CALL_TIMEOUT, rx)
                .await
                .flatten()
                .flatten()
                .and_then(|bytes| postcard::from_bytes(&bytes).ok());
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

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{driver_threads, SERIAL};
    use crate::rt::{ms, run, spawn};

    #[test]
    fn clerks_survive_restarts_and_pending_ones_are_dropped_at_the_end() {
        let _serial = lock(&SERIAL);
        run(async {
            let cfg = ThreadKvCfg::new(3, false, Some(1000));
            cfg.begin("threads: kv restart");
            let ck = cfg.make_client(&cfg.all());
            for i in 0..100 {
                cfg.append(&ck, "k", &format!("{i},"), 0).await;
            }
            for i in 0..3 {
                cfg.shutdown_server(i);
            }
            for i in 0..3 {
                cfg.start_server(i);
            }
            cfg.connect_all();
            let v = cfg.get(&ck, "k", 0).await;
            assert_eq!(v, (0..100).map(|i| format!("{i},")).collect::<String>());
            assert!(cfg.snapshot_size() > 0, "snapshots at max_raft_state");
            // A clerk cut off from every server never finishes: the end of
            // the run drops it, with the cluster.
            let lost = cfg.make_client(&[]);
            let (c, l) = (cfg.clone(), lost.clone());
            let pending = spawn(async move { c.get(&l, "k", 1).await });
            sleep(ms(300)).await;
            assert!(!pending.is_finished());
            cfg.check_linearizable();
            cfg.end();
        });
        assert_eq!(driver_threads(), Vec::<String>::new());
    }
}
