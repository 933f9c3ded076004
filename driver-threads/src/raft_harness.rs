//! The Raft lab harness on OS threads: `driver_sim::Cfg`'s public methods,
//! with the same names, signatures and checks, over real threads and clocks
//! (a port of the 6.5840 (2023) `raft/config.go`, lab-tests.md §2).
//!
//! Each server is a `RaftNode` on its own thread ([`crate::node`]); the
//! network is [`crate::network`] with labrpc's semantics; each persister is
//! the simulator's, behind a mutex. The appliers (the Go `applier` and
//! `applierSnap`, with their "apply out of order" and "commit index=…"
//! checks, and the tester's snapshot every [`SNAPSHOT_INTERVAL`] entries) run
//! on the node threads under the harness's mutex; the cluster safety checker
//! runs after every step, as in the simulator. A failure on a node thread
//! fails the test on the body's thread.
//!
//! Crash and restart follow config.go: `crash1` disconnects the server,
//! deletes it from the network, stops its thread (its incarnation never
//! steps again) and replaces its persister with a copy, so nothing the dead
//! incarnation did can reach the state the next one loads; `start1` builds a
//! new incarnation with `RaftNode::recover` from that copy, not connected.
//!
//! Used inside [`crate::rt::run`]; every sleep is real time.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_sim::persister::Persister;
use raft_core::{Action, Config, Entry, Event, Index, Message, Persist, RaftNode, Term};

/// The lab's command type and constants, as in the simulator.
pub use driver_sim::raft_harness::{
    Cmd, RAFT_ELECTION_TIMEOUT, SNAPSHOT_INTERVAL, TEST_TIME_LIMIT,
};

use crate::lab::{check_failures, watch_failures, Safety};
use crate::network::{NetConfig, Network};
use crate::node::{Clock, Failures, Hooks, Node, NodeSpec};
use crate::rt::{lock, ms, now, sleep, with_rng};

fn encode_cmd(cmd: &Cmd) -> Vec<u8> {
    postcard::to_allocvec(cmd).expect("commands encode")
}

fn decode_cmd(bytes: &[u8]) -> Cmd {
    postcard::from_bytes(bytes).expect("commands decode")
}

/// What the appliers keep (the Go config's `logs`, `lastApplied`,
/// `maxIndex`), shared by the node threads and the body.
struct Applied {
    snapshot_applier: bool,
    logs: Vec<BTreeMap<Index, Cmd>>,
    last_applied: Vec<Index>,
    max_index: Index,
}

struct Begin {
    name: String,
    t0: Duration,
    rpcs0: u64,
    bytes0: u64,
    max_index0: Index,
}

struct Inner {
    n: usize,
    net: Network,
    clock: Clock,
    applied: Arc<Mutex<Applied>>,
    safety: Safety,
    failures: Failures,
    nodes: RefCell<Vec<Option<Node<RaftNode, Persister>>>>,
    persisters: RefCell<Vec<Arc<Mutex<Persister>>>>,
    connected: RefCell<Vec<bool>>,
    next_proposal: Cell<u64>,
    start: Duration,
    begin: RefCell<Option<Begin>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for node in self.nodes.get_mut().iter_mut() {
            if let Some(mut node) = node.take() {
                node.stop();
            }
        }
        self.net.shutdown();
    }
}

/// A Raft cluster on OS threads, the real-time twin of `driver_sim::Cfg`
/// (and of the Go tests' `cfg`). Cheap to clone into spawned tasks; the
/// threads stop when the last clone is dropped.
#[derive(Clone)]
pub struct ThreadCfg {
    inner: Rc<Inner>,
}

/// The appliers and the safety checker, on the node threads.
struct RaftHooks {
    applied: Arc<Mutex<Applied>>,
    safety: Safety,
}

impl Hooks<RaftNode, Persister> for RaftHooks {
    fn stepped(&mut self, _id: usize, node: &RaftNode) {
        self.safety.stepped(node);
    }

    fn persisted(&mut self, id: usize, node: &RaftNode, persist: &Persist, _storage: &Persister) {
        self.safety.persisted(id, node, persist);
    }

    fn sending(&mut self, id: usize, to: usize, message: &Message, storage: &Persister) {
        self.safety.sending(id, to, message, storage);
    }

    fn output(&mut self, id: usize, _node: &RaftNode, action: Action) -> Option<Event> {
        match action {
            Action::Apply { entries } => {
                self.safety.applied(id, &entries);
                lock(&self.applied).apply_entries(id, &entries)
            }
            Action::ApplySnapshot { snapshot } => {
                let mut applied = lock(&self.applied);
                if applied.snapshot_applier {
                    if let Err(e) =
                        applied.ingest_snapshot(id, &snapshot.data, Some(snapshot.meta.index))
                    {
                        panic!("{e}");
                    }
                }
                None
            }
            Action::Send { .. }
            | Action::Persist(_)
            | Action::SetTimer { .. }
            | Action::AcceptProposal { .. }
            | Action::RejectProposal { .. } => None,
        }
    }
}

impl ThreadCfg {
    /// `make_config(n, unreliable, snapshot)`: starts `n` servers (with the
    /// snapshotting applier if `snapshot`), connects them all.
    pub fn new(n: usize, unreliable: bool, snapshot: bool) -> ThreadCfg {
        let net = Network::new(NetConfig {
            servers: n,
            reliable: !unreliable,
            // The Raft config turns LongDelays on (lab-tests.md §2.3).
            long_delays: true,
            hop_latency: driver_sim::network::HOP_LATENCY,
            seed: with_rng(|r| r.next_u64()),
        });
        let inner = Inner {
            n,
            net,
            clock: Clock::new(),
            applied: Arc::new(Mutex::new(Applied {
                snapshot_applier: snapshot,
                logs: vec![BTreeMap::new(); n],
                last_applied: vec![0; n],
                max_index: 0,
            })),
            safety: Safety::default(),
            failures: Failures::new(),
            nodes: RefCell::new((0..n).map(|_| None).collect()),
            persisters: RefCell::new(
                (0..n)
                    .map(|_| Arc::new(Mutex::new(Persister::new())))
                    .collect(),
            ),
            connected: RefCell::new(vec![false; n]),
            next_proposal: Cell::new(0),
            start: now(),
            begin: RefCell::new(None),
        };
        let cfg = ThreadCfg {
            inner: Rc::new(inner),
        };
        watch_failures(&cfg.inner.failures);
        for i in 0..n {
            cfg.start1(i);
        }
        for i in 0..n {
            cfg.connect(i);
        }
        cfg
    }

    /// Number of servers.
    pub fn n(&self) -> usize {
        self.inner.n
    }

    // ----- lifecycle -----------------------------------------------------

    /// Crash server `i`: disconnect it, delete it from the network, stop its
    /// thread, detach its persister (the next incarnation gets a copy).
    pub fn crash1(&self, i: usize) {
        self.disconnect(i);
        let node = self.inner.nodes.borrow_mut()[i].take();
        if let Some(mut node) = node {
            node.stop();
        }
        let mut persisters = self.inner.persisters.borrow_mut();
        let copy = lock(&persisters[i]).clone();
        persisters[i] = Arc::new(Mutex::new(copy));
    }

    /// (Re)start server `i` from its persisted state, not connected.
    pub fn start1(&self, i: usize) {
        self.crash1(i);
        let storage = self.inner.persisters.borrow()[i].clone();
        let (state, snapshot) = lock(&storage).load();
        {
            let mut applied = lock(&self.inner.applied);
            applied.last_applied[i] = 0;
            if let Some(data) = &snapshot {
                if !data.is_empty() {
                    if let Err(e) = applied.ingest_snapshot(i, data, None) {
                        panic!("{e}");
                    }
                }
            }
        }
        let members: Vec<u64> = (0..self.inner.n as u64).collect();
        let config = Config::new(i as u64, members);
        let seed = with_rng(|r| r.next_u64());
        let node = RaftNode::recover(config, seed, state, snapshot)
            .expect("a node recovers from what it persisted");
        let hooks = RaftHooks {
            applied: self.inner.applied.clone(),
            safety: self.inner.safety.clone(),
        };
        let spec = NodeSpec {
            id: i,
            machine: node,
            storage,
            hooks: Box::new(hooks),
            measure_raft_state: false,
        };
        let node = Node::spawn(
            spec,
            &self.inner.net,
            self.inner.clock,
            &self.inner.failures,
        );
        self.inner.nodes.borrow_mut()[i] = Some(node);
    }

    /// Is server `i` running (not crashed)?
    pub fn is_alive(&self, i: usize) -> bool {
        self.inner.nodes.borrow()[i].is_some()
    }

    /// Connect server `i` to every other connected server.
    pub fn connect(&self, i: usize) {
        let mut connected = self.inner.connected.borrow_mut();
        connected[i] = true;
        for (j, &on) in connected.iter().enumerate() {
            if on {
                self.inner.net.set_link(i, j, true);
                self.inner.net.set_link(j, i, true);
            }
        }
    }

    /// Cut server `i` off from every other server.
    pub fn disconnect(&self, i: usize) {
        self.inner.connected.borrow_mut()[i] = false;
        for j in 0..self.inner.n {
            self.inner.net.set_link(i, j, false);
            self.inner.net.set_link(j, i, false);
        }
    }

    /// Is server `i` connected?
    pub fn is_connected(&self, i: usize) -> bool {
        self.inner.connected.borrow()[i]
    }

    /// Turn request/reply loss and short delays on (`true`) or off.
    pub fn set_unreliable(&self, unreliable: bool) {
        self.inner.net.set_reliable(!unreliable);
    }

    /// Turn long reordering of replies on or off.
    pub fn set_long_reordering(&self, on: bool) {
        self.inner.net.set_long_reordering(on);
    }

    // ----- the Raft API as the tester sees it -----------------------------

    /// `rf.Start(cmd)` on server `i`: `Some((index, term))` if it is the
    /// leader and accepted the command, `None` otherwise (or if crashed).
    /// Steps the node on the calling thread, like Go's `Start` under `rf.mu`.
    pub fn start(&self, i: usize, cmd: impl Into<Cmd>) -> Option<(Index, Term)> {
        let nodes = self.inner.nodes.borrow();
        let node = nodes[i].as_ref()?;
        let id = self.inner.next_proposal.get() + 1;
        self.inner.next_proposal.set(id);
        let command = encode_cmd(&cmd.into());
        let actions = node.step(Event::ProposalReceived { id, command })?;
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
    pub fn get_state(&self, i: usize) -> (Term, bool) {
        let nodes = self.inner.nodes.borrow();
        nodes[i]
            .as_ref()
            .and_then(|n| n.with(|node| (node.term(), node.is_leader())))
            .unwrap_or((0, false))
    }

    // ----- tester helpers (config.go) ------------------------------------

    /// Prints nothing yet; records baselines for `end`'s result line.
    pub fn begin(&self, name: &str) {
        let max_index0 = lock(&self.inner.applied).max_index;
        *self.inner.begin.borrow_mut() = Some(Begin {
            name: name.to_string(),
            t0: now(),
            rpcs0: self.inner.net.rpc_total(),
            bytes0: self.inner.net.bytes_total(),
            max_index0,
        });
    }

    /// Checks that no node thread failed and the time limit, and prints the
    /// lab's result line: real seconds, peers, RPCs, bytes, commands
    /// committed.
    pub fn end(&self) {
        check_failures(&self.inner.failures);
        let elapsed = now() - self.inner.start;
        assert!(
            elapsed <= TEST_TIME_LIMIT,
            "test took longer than 120 seconds"
        );
        let begin = self.inner.begin.borrow();
        let b = begin.as_ref().expect("begin() before end()");
        let max_index = lock(&self.inner.applied).max_index;
        println!(
            "{} ... Passed -- {:4.1} {} {:4} {:7} {:4}",
            b.name,
            (now() - b.t0).as_secs_f64(),
            self.inner.n,
            self.inner.net.rpc_total() - b.rpcs0,
            self.inner.net.bytes_total() - b.bytes0,
            max_index - b.max_index0
        );
    }

    /// Waits for a leader and returns it; fails if a term has two leaders or
    /// none appears within 10 rounds of 450–549 ms.
    pub async fn check_one_leader(&self) -> usize {
        for _ in 0..10 {
            let wait = 450 + with_rng(|r| r.below(100));
            sleep(ms(wait)).await;
            let mut leaders: BTreeMap<Term, Vec<usize>> = BTreeMap::new();
            for i in 0..self.n() {
                if self.is_connected(i) {
                    let (term, leader) = self.get_state(i);
                    if leader {
                        leaders.entry(term).or_default().push(i);
                    }
                }
            }
            for (term, ls) in &leaders {
                assert!(ls.len() <= 1, "term {term} has {} (>1) leaders", ls.len());
            }
            if let Some((_, ls)) = leaders.last_key_value() {
                return ls[0];
            }
        }
        panic!("expected one leader, got none");
    }

    /// All connected servers agree on the term; returns it.
    pub fn check_terms(&self) -> Term {
        let mut term = None;
        for i in 0..self.n() {
            if self.is_connected(i) {
                let (t, _) = self.get_state(i);
                match term {
                    None => term = Some(t),
                    Some(t0) => assert_eq!(t0, t, "servers disagree on term"),
                }
            }
        }
        term.unwrap_or(0)
    }

    /// No connected server claims to lead.
    pub fn check_no_leader(&self) {
        for i in 0..self.n() {
            if self.is_connected(i) {
                let (_, leader) = self.get_state(i);
                assert!(
                    !leader,
                    "expected no leader among connected servers, but {i} claims to be leader"
                );
            }
        }
    }

    /// How many servers have applied `index`, and the command there.
    pub fn n_committed(&self, index: Index) -> (usize, Option<Cmd>) {
        let applied = lock(&self.inner.applied);
        let mut count = 0;
        let mut cmd: Option<&Cmd> = None;
        for log in &applied.logs {
            if let Some(c) = log.get(&index) {
                if let Some(prev) = cmd {
                    assert_eq!(prev, c, "committed values do not match: index {index}");
                }
                count += 1;
                cmd = Some(c);
            }
        }
        (count, cmd.cloned())
    }

    /// Waits (30 polls, back-off from 10 ms to about 1 s) until `n` servers
    /// applied `index`. Returns `None` if some server's term moved past
    /// `start_term` (when given): the caller should retry.
    pub async fn wait(&self, index: Index, n: usize, start_term: Option<Term>) -> Option<Cmd> {
        let mut to = ms(10);
        for _ in 0..30 {
            let (nd, _) = self.n_committed(index);
            if nd >= n {
                break;
            }
            sleep(to).await;
            if to < Duration::from_secs(1) {
                to *= 2;
            }
            if let Some(start_term) = start_term {
                for i in 0..self.n() {
                    if self.is_alive(i) && self.get_state(i).0 > start_term {
                        return None;
                    }
                }
            }
        }
        let (nd, cmd) = self.n_committed(index);
        assert!(nd >= n, "only {nd} decided for index {index}; wanted {n}");
        cmd
    }

    /// The lab's `one()`: submit `cmd` to whoever leads, wait up to 2 s for
    /// `expected` servers to apply it (resubmitting if `retry`), within 10 s
    /// in all. Returns the index.
    pub async fn one(&self, cmd: impl Into<Cmd>, expected: usize, retry: bool) -> Index {
        let cmd = cmd.into();
        let t0 = now();
        let mut starts = 0;
        while now() - t0 < Duration::from_secs(10) {
            let mut index = None;
            for _ in 0..self.n() {
                starts = (starts + 1) % self.n();
                if self.is_connected(starts) {
                    if let Some((i, _)) = self.start(starts, cmd.clone()) {
                        index = Some(i);
                        break;
                    }
                }
            }
            if let Some(index) = index {
                let t1 = now();
                while now() - t1 < Duration::from_secs(2) {
                    let (nd, c) = self.n_committed(index);
                    if nd > 0 && nd >= expected && c.as_ref() == Some(&cmd) {
                        return index;
                    }
                    sleep(ms(20)).await;
                }
                assert!(retry, "one({cmd}) failed to reach agreement");
            } else {
                sleep(ms(50)).await;
            }
        }
        panic!("one({cmd}) failed to reach agreement");
    }

    /// Handler invocations on server `i` since it (re)started.
    pub fn rpc_count(&self, i: usize) -> u64 {
        self.inner.net.rpc_count(i)
    }

    /// Requests sent so far.
    pub fn rpc_total(&self) -> u64 {
        self.inner.net.rpc_total()
    }

    /// Request bytes plus delivered reply bytes so far.
    pub fn bytes_total(&self) -> u64 {
        self.inner.net.bytes_total()
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

    /// A random non-negative integer from the run's generator (Go's
    /// `rand.Int()`).
    pub fn rand_int(&self) -> i64 {
        with_rng(|r| (r.next_u64() >> 1) as i64)
    }

    /// A uniform integer in `0..bound` from the run's generator.
    pub fn rand_below(&self, bound: u64) -> u64 {
        with_rng(|r| r.below(bound))
    }
}

impl Applied {
    /// The Go `checkLogs`: no other server applied something else at `index`.
    fn check_logs(&mut self, i: usize, index: Index, cmd: Cmd) -> Result<bool, String> {
        for (j, log) in self.logs.iter().enumerate() {
            if let Some(old) = log.get(&index) {
                if *old != cmd {
                    return Err(format!(
                        "commit index={index} server={i} {cmd} != server={j} {old}"
                    ));
                }
            }
        }
        let prev_ok = self.logs[i].contains_key(&(index - 1));
        self.logs[i].insert(index, cmd);
        self.max_index = self.max_index.max(index);
        Ok(prev_ok)
    }

    /// The plain or snapshotting applier (lab-tests.md §2.6). Returns the
    /// snapshot the tester takes, if this batch reached one.
    fn apply_entries(&mut self, i: usize, entries: &[Entry]) -> Option<Event> {
        let mut snap = None;
        for e in entries {
            let cmd = decode_cmd(&e.command);
            if self.snapshot_applier && e.index != self.last_applied[i] + 1 {
                panic!(
                    "server {i} apply out of order, expected index {}, got {}",
                    self.last_applied[i] + 1,
                    e.index
                );
            }
            match self.check_logs(i, e.index, cmd) {
                Err(err) => panic!("{err}"),
                Ok(prev_ok) => {
                    if e.index > 1 && !prev_ok {
                        panic!("server {i} apply out of order {}", e.index);
                    }
                }
            }
            self.last_applied[i] = e.index;
            if self.snapshot_applier && (e.index + 1) % SNAPSHOT_INTERVAL == 0 {
                let xlog: Vec<Option<Cmd>> = (0..=e.index)
                    .map(|k| self.logs[i].get(&k).cloned())
                    .collect();
                let data = postcard::to_allocvec(&(e.index, xlog)).expect("snapshots encode");
                snap = Some(Event::SnapshotTaken {
                    index: e.index,
                    data,
                });
            }
        }
        snap
    }

    /// The Go `ingestSnap`: load the tester's snapshot into server `i`'s log.
    fn ingest_snapshot(
        &mut self,
        i: usize,
        data: &[u8],
        index: Option<Index>,
    ) -> Result<(), String> {
        let (last_included, xlog): (Index, Vec<Option<Cmd>>) =
            postcard::from_bytes(data).map_err(|e| format!("snapshot decode error: {e}"))?;
        if let Some(index) = index {
            if index != last_included {
                return Err(format!("server {i} snapshot doesn't match m.SnapshotIndex"));
            }
        }
        self.logs[i] = xlog
            .into_iter()
            .enumerate()
            .filter_map(|(k, c)| c.map(|c| (k as Index, c)))
            .collect();
        self.last_applied[i] = last_included;
        self.max_index = self.max_index.max(last_included);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{driver_threads, SERIAL};
    use crate::rt::run;

    #[test]
    fn crashes_restarts_and_the_end_of_a_test_leave_no_threads() {
        let _serial = lock(&SERIAL);
        run(async {
            let cfg = ThreadCfg::new(3, false, false);
            cfg.begin("threads: crash, restart, end");
            cfg.one(11, 3, true).await;
            let leader = cfg.check_one_leader().await;
            cfg.crash1(leader);
            assert!(!cfg.is_alive(leader));
            assert_eq!(cfg.get_state(leader), (0, false));
            assert_eq!(cfg.start(leader, 1), None);
            cfg.one(12, 2, true).await;
            cfg.start1(leader);
            cfg.connect(leader);
            cfg.one(13, 3, true).await;
            // A restarted server re-applies from the start (no snapshot).
            assert_eq!(cfg.wait(1, 3, None).await, Some(Cmd::Int(11)));
            assert_eq!(driver_threads().len(), 3 + 1);
            cfg.end();
        });
        assert_eq!(driver_threads(), Vec::<String>::new());
    }
}
