//! The KV lab harness on OS threads: `lab::KvHarness` (as the simulator's
//! `KvCfg` implements it, with the same checks), over real threads and clocks (a port of the 6.5840 (2023)
//! `kvraft/config.go`, lab-tests.md §4.2).
//!
//! Each server is a `kv_core::KvServer` on its own thread
//! ([`crate::node`], `harness::Servers`), built with the same
//! `ServerConfig` as in the simulator and told the encoded Raft state's size
//! after every write, so it snapshots at `max_raft_state` as it does there.
//! Clerks are `kv_core::Clerk`s with their own ends to every server, in a
//! random order per clerk (the Go tester's shuffled ends), driven by the
//! lab's clerk loop (`lab::clerk`, [`lab::CLERK_CALL_TIMEOUT`] per call). Every operation is recorded with its real call and return times
//! (monotonic nanoseconds since the run began) and the history is checked
//! with `lincheck` under the same step budget (running
//! out fails).
//!
//! `shutdown_server` disconnects the server, deletes it from the network,
//! stops its thread and detaches its persister (the next incarnation loads a
//! copy); `start_server` recovers a new incarnation from that copy.

use std::cell::{RefCell, RefMut};
use std::future::Future;
use std::rc::Rc;

use kv_core::{Clerk, Command, KvServer, Op, Reply, ServerConfig};
use lab::{ClerkEnds, Harness, History, HistoryOp, KvCounters, KvHarness, Links, Runtime, TestRun};
use raft_core::Config;

use crate::harness::{RealTime, Safety, Servers};
use crate::rt::with_rng;

struct KvInner {
    servers: Servers<KvServer>,
    max_raft_state: Option<usize>,
    history: RefCell<History>,
    run: RefCell<TestRun<KvCounters>>,
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

impl Harness for ThreadKvCfg {
    type Rt = RealTime;
}

impl KvHarness for ThreadKvCfg {
    type Clerk = ThreadClerk;

    /// `make_config(n, unreliable, maxraftstate)`: starts and connects `n`
    /// servers; `max_raft_state` of `None` is the lab's −1. Fails the test
    /// if it is still running after 120 s.
    fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> ThreadKvCfg {
        // The kvraft config leaves LongDelays off: failed calls return
        // within 100 ms so clerks move on quickly.
        let servers = Servers::new(n, unreliable, false);
        let inner = KvInner {
            servers,
            max_raft_state,
            history: RefCell::new(History::new()),
            run: RefCell::new(TestRun::new(RealTime::now())),
        };
        let cfg = ThreadKvCfg {
            inner: Rc::new(inner),
        };
        for i in 0..n {
            cfg.start_server(i);
        }
        cfg.connect_all();
        let watched = Rc::downgrade(&cfg.inner);
        lab::watch_time_limit::<RealTime>(move || {
            watched
                .upgrade()
                .map(|inner| ThreadKvCfg { inner }.status())
        });
        cfg
    }

    /// Number of servers.
    fn n(&self) -> usize {
        self.inner.servers.n
    }

    /// The first server that believes it leads, if any.
    fn leader(&self) -> Option<usize> {
        (0..self.n()).find(|&i| {
            self.inner
                .servers
                .node(i, |n| n.with(|s| s.raft().is_leader()))
                .flatten()
                .unwrap_or(false)
        })
    }

    /// Turn request/reply loss and short delays on (`true`) or off.
    fn set_unreliable(&self, unreliable: bool) {
        self.inner.servers.net.set_reliable(!unreliable);
    }

    /// Cut server `i` off, delete it from the network (so it can send no
    /// positive reply from state about to be lost), stop its thread, detach
    /// its persister.
    fn shutdown_server(&self, i: usize) {
        let all = self.all();
        self.disconnect(i, &all);
        self.inner.servers.kill(i);
    }

    /// (Re)start server `i` from its persister; not connected.
    fn start_server(&self, i: usize) {
        self.inner.servers.kill(i);
        let (storage, state, snapshot) = self.inner.servers.load(i);
        let members: Vec<u64> = (0..self.n() as u64).collect();
        let config = ServerConfig::new(Config::new(i as u64, members), self.inner.max_raft_state);
        let seed = with_rng(|r| r.next_u64());
        let mut data = snapshot.as_deref();
        let reader = data.as_mut().map(|d| d as &mut dyn std::io::Read);
        let server = KvServer::recover(config, seed, state, reader)
            .expect("a server recovers from what it persisted");
        // A KV server applies internally (and its snapshots are the node
        // thread's): no outputs to handle.
        let output = |_: &Safety, _, _, _: &mut raft_testkit::Persister| None;
        // Sizing re-encodes the state: only when it matters.
        let measure = self.inner.max_raft_state.is_some();
        self.inner
            .servers
            .spawn(i, server, storage, output, measure);
    }

    /// A new clerk whose ends reach the servers in `to`.
    fn make_client(&self, to: &[usize]) -> ThreadClerk {
        let clerk = lab::clerk::new_clerk::<RealTime>(self.n());
        let enabled = (0..self.n()).map(|j| to.contains(&j)).collect();
        let ends = self.inner.servers.net.add_client(enabled);
        ThreadClerk {
            cfg: self.clone(),
            ends,
            clerk: Rc::new(RefCell::new(clerk)),
        }
    }

    /// Let clerk `ck` reach exactly the servers in `to`.
    fn connect_client(&self, ck: &ThreadClerk, to: &[usize]) {
        for j in 0..self.n() {
            self.inner
                .servers
                .net
                .set_client_link(ck.ends, j, to.contains(&j));
        }
    }

    /// Records baselines for `end`'s result line.
    fn begin(&self, name: &str) {
        let mut run = self.inner.run.borrow_mut();
        run.begin(name, RealTime::now(), self.counters());
    }

    /// Checks the whole history with the KV model; running out of the
    /// budget fails ([`History::check_linearizable`]).
    fn check_linearizable(&self) {
        let history = self.inner.history.borrow();
        history.check_linearizable(&RealTime::run_name());
    }

    /// Checks that no server thread failed and the time limit, prints the
    /// lab's result line (real seconds, peers, RPCs, clerk operations) and,
    /// with `HISTORY_DIR` set, exports the history to
    /// `<HISTORY_DIR>/<test>-threads-seed<seed>.jsonl`.
    fn end(&self) {
        self.inner.history.borrow().export(&RealTime::run_name());
        self.inner.servers.check_failures();
        let run = self.inner.run.borrow();
        run.end(RealTime::now(), self.n(), self.counters());
    }

    /// The largest encoded Raft state over all servers.
    fn log_size(&self) -> usize {
        self.inner.servers.log_size()
    }

    /// The largest snapshot over all servers.
    fn snapshot_size(&self) -> usize {
        self.inner.servers.snapshot_size()
    }

    /// Requests sent so far.
    fn rpc_total(&self) -> u64 {
        self.inner.servers.net.rpc_total()
    }

    /// Runs `op` through `ck` over the in-process network
    /// (`lab::clerk::run_op`).
    async fn run_op(&self, ck: &ThreadClerk, cli: u64, op: Op) -> String {
        lab::clerk::run_op(&ThreadEnds(ck), &ck.clerk, cli, op).await
    }
}

impl ThreadKvCfg {
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
    pub fn disconnect_client(&self, ck: &ThreadClerk, from: &[usize]) {
        for &j in from {
            self.inner.servers.net.set_client_link(ck.ends, j, false);
        }
    }
    /// The result line's counters now.
    fn counters(&self) -> KvCounters {
        KvCounters {
            rpcs: self.inner.servers.net.rpc_total(),
            ops: self.inner.history.borrow().len() as u64,
        }
    }

    /// One line per server: incarnation, term, role, commit, applied, log
    /// and snapshot indices, waiting requests, links; for failure reports.
    pub fn status(&self) -> String {
        let n = self.n();
        let net = &self.inner.servers.net;
        let mut out = String::new();
        for i in 0..n {
            let links = lab::links_column(n, |j| net.link(i, j));
            let line = self.inner.servers.node(i, |node| {
                let gen = node.generation();
                node.with(|s| lab::server_status(i, Some((gen, s)), &links))
            });
            out += &line
                .flatten()
                .unwrap_or_else(|| lab::server_status(i, None, &links));
        }
        out += &format!(
            "  pending calls {}, clerk ops {}\n",
            net.pending_calls(),
            self.inner.history.borrow().len()
        );
        out
    }

    /// Every clerk operation so far, in return order.
    pub fn history(&self) -> Vec<HistoryOp> {
        self.inner.history.borrow().ops().to_vec()
    }
}

impl Links for ThreadKvCfg {
    fn servers(&self) -> usize {
        self.n()
    }

    fn set_links(&self, i: usize, to: &[usize], on: bool) {
        for &j in to {
            self.inner.servers.net.set_link(i, j, on);
            self.inner.servers.net.set_link(j, i, on);
        }
    }
}

/// A clerk's ends in the in-process network, for the tester's clerk loop.
struct ThreadEnds<'a>(&'a ThreadClerk);

impl ClerkEnds for ThreadEnds<'_> {
    type Runtime = RealTime;

    fn call(&self, server: usize, command: Command) -> impl Future<Output = Option<Reply>> {
        let request = postcard::to_allocvec(&command).expect("commands encode");
        let reply = self
            .0
            .cfg
            .inner
            .servers
            .net
            .call(self.0.ends, server, request);
        async move {
            let bytes = reply.await.flatten()?;
            postcard::from_bytes(&bytes).ok()
        }
    }

    fn history(&self) -> RefMut<'_, History> {
        self.0.cfg.inner.history.borrow_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{threads_left, SERIAL};
    use crate::rt::{lock, ms, run, sleep, spawn};

    #[test]
    fn clerks_survive_restarts_and_pending_ones_are_dropped_at_the_end() {
        let _serial = lock(&SERIAL);
        let instance = run(async {
            let cfg = ThreadKvCfg::new(3, false, Some(1000));
            let instance = cfg.inner.servers.net.instance();
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
            instance
        });
        assert_eq!(threads_left(instance), Vec::<String>::new());
    }
}
