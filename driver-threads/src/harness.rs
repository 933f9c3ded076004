//! What the two lab harnesses on threads share: the real-time executor as
//! the lab tester's runtime ([`RealTime`]), the servers with their threads,
//! persisters and network ([`Servers`]), `raft_testkit`'s in-memory
//! persister as node storage and its cluster safety checker wired into node
//! steps, and the task that turns a node thread's panic into a test
//! failure. The tester's own logic (waits, checks, clerks, histories) is the
//! `lab` crate's.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab::Runtime;
use raft_core::{DurableState, Message, Persist};
use raft_testkit::{Persister, SafetyChecker};

use crate::network::{NetConfig, Network};
use crate::node::{Clock, Failures, Hooks, Machine, Node, NodeSpec};
use crate::rt::{self, lock, with_rng};

/// The real-time executor ([`crate::rt`]) as the lab tester's runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealTime;

impl Runtime for RealTime {
    const CLOCK: &'static str = "real";

    fn now() -> Duration {
        rt::now()
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        rt::sleep(duration)
    }

    fn timeout<F: Future>(
        duration: Duration,
        future: F,
    ) -> impl Future<Output = Option<F::Output>> {
        rt::timeout(duration, future)
    }

    fn spawn(future: impl Future<Output = ()> + 'static) {
        rt::spawn(future);
    }

    fn random_below(bound: u64) -> u64 {
        with_rng(|r| r.below(bound))
    }

    fn random_u64() -> u64 {
        with_rng(|r| r.next_u64())
    }

    fn run_name() -> String {
        format!("{}-threads-seed{}", test_name(), rt::seed())
    }
}

/// A cluster's servers on threads: the network they share, the clock, the
/// safety checker and the record of node-thread failures, and per server
/// its running incarnation (if any) and its persister. Dropping it stops
/// every thread.
///
/// Crash and restart follow config.go: [`Servers::kill`] stops the
/// incarnation (it never steps, sends or writes again) and replaces its
/// persister with a copy, so nothing the dead incarnation did can reach the
/// state the next one loads.
pub(crate) struct Servers<M: Machine> {
    pub(crate) n: usize,
    pub(crate) net: Network,
    clock: Clock,
    safety: Safety,
    failures: Failures,
    nodes: RefCell<Vec<Option<Node<M, Persister>>>>,
    persisters: RefCell<Vec<Arc<Mutex<Persister>>>>,
}

impl<M: Machine> Servers<M> {
    /// `n` servers, none running yet, on a new network (`long_delays` as
    /// the lab's config sets it); starts the task that fails the test when
    /// a node thread panics.
    pub(crate) fn new(n: usize, unreliable: bool, long_delays: bool) -> Self {
        let net = Network::new(NetConfig {
            servers: n,
            reliable: !unreliable,
            long_delays,
            hop_latency: lab::net::HOP_LATENCY,
            seed: with_rng(|r| r.next_u64()),
        });
        let failures = Failures::new();
        watch_failures(&failures);
        Servers {
            n,
            net,
            clock: Clock::new(),
            safety: Safety::default(),
            failures,
            nodes: RefCell::new((0..n).map(|_| None).collect()),
            persisters: RefCell::new(
                (0..n)
                    .map(|_| Arc::new(Mutex::new(Persister::new())))
                    .collect(),
            ),
        }
    }

    /// Stops server `i`'s incarnation, if running, and detaches its
    /// persister: the next incarnation gets a copy, without the staged
    /// snapshots.
    pub(crate) fn kill(&self, i: usize) {
        let node = self.nodes.borrow_mut()[i].take();
        if let Some(mut node) = node {
            node.stop();
        }
        let mut persisters = self.persisters.borrow_mut();
        // Snapshots staged but never named by a write do not survive.
        let copy = lock(&persisters[i]).after_crash();
        persisters[i] = Arc::new(Mutex::new(copy));
    }

    /// Server `i`'s persister, and the state and snapshot it holds.
    pub(crate) fn load(&self, i: usize) -> (Arc<Mutex<Persister>>, DurableState, Option<Vec<u8>>) {
        let storage = self.persisters.borrow()[i].clone();
        let (state, snapshot) = lock(&storage).load();
        (storage, state, snapshot)
    }

    /// Runs `machine` as server `i`'s new incarnation, writing to `storage`
    /// (from [`Servers::load`]), on its own thread, with the safety checker
    /// around every step. `output` gets the actions the thread does not
    /// execute itself ([`Hooks::output`]), the checker and the persister.
    pub(crate) fn spawn<F>(
        &self,
        i: usize,
        machine: M,
        storage: Arc<Mutex<Persister>>,
        output: F,
        measure_raft_state: bool,
    ) where
        F: FnMut(&Safety, usize, M::Action, &mut Persister) -> Option<M::Event> + Send + 'static,
    {
        let hooks = LabHooks {
            safety: self.safety.clone(),
            output,
        };
        let spec = NodeSpec {
            id: i,
            machine,
            storage,
            hooks: Box::new(hooks),
            measure_raft_state,
        };
        let node = Node::spawn(spec, &self.net, self.clock, &self.failures);
        self.nodes.borrow_mut()[i] = Some(node);
    }

    /// `f` of server `i`'s running incarnation; `None` if it is down.
    pub(crate) fn node<R>(&self, i: usize, f: impl FnOnce(&Node<M, Persister>) -> R) -> Option<R> {
        self.nodes.borrow()[i].as_ref().map(f)
    }

    /// Is server `i` running (not crashed)?
    pub(crate) fn is_alive(&self, i: usize) -> bool {
        self.nodes.borrow()[i].is_some()
    }

    /// The largest encoded Raft state over all servers.
    pub(crate) fn log_size(&self) -> usize {
        self.largest(Persister::raft_state_size)
    }

    /// The largest snapshot over all servers.
    pub(crate) fn snapshot_size(&self) -> usize {
        self.largest(Persister::snapshot_size)
    }

    fn largest(&self, size: fn(&Persister) -> usize) -> usize {
        let persisters = self.persisters.borrow();
        persisters.iter().map(|p| size(&lock(p))).max().unwrap_or(0)
    }

    /// Panics with the first node-thread failure, if there was one.
    pub(crate) fn check_failures(&self) {
        if let Some(message) = self.failures.first() {
            panic!("a node thread failed: {message}");
        }
    }
}

impl<M: Machine> Drop for Servers<M> {
    fn drop(&mut self) {
        for node in self.nodes.get_mut().iter_mut() {
            if let Some(mut node) = node.take() {
                node.stop();
            }
        }
        self.net.shutdown();
    }
}

/// The cluster's safety checker, shared by its node threads.
#[derive(Clone, Default)]
pub(crate) struct Safety {
    checker: Arc<Mutex<SafetyChecker>>,
}

impl Safety {
    /// Node `id` gives `entries` to its service.
    pub(crate) fn applied(&self, id: usize, entries: &[raft_core::Entry]) {
        lock(&self.checker).entries_applied(id as u64, entries);
    }
}

/// A lab node's hooks: the safety checker's calls around its steps, as the
/// simulator's harnesses make them (after every step; after every write,
/// its truncations and written entries; before every send, persist before
/// send), and the harness's `output` for the rest.
struct LabHooks<F> {
    safety: Safety,
    output: F,
}

impl<M, F> Hooks<M, Persister> for LabHooks<F>
where
    M: Machine,
    F: FnMut(&Safety, usize, M::Action, &mut Persister) -> Option<M::Event> + Send + 'static,
{
    fn stepped(&mut self, _id: usize, machine: &M) {
        lock(&self.safety.checker).after_step(machine.raft());
    }

    fn persisted(&mut self, id: usize, machine: &M, p: &Persist, _storage: &Persister) {
        lock(&self.safety.checker).persist_issued(id as u64, machine.raft(), p);
    }

    fn sending(&mut self, id: usize, to: usize, message: &Message, storage: &Persister) {
        lock(&self.safety.checker).check_send(id as u64, to as u64, message, storage.state());
    }

    fn output(
        &mut self,
        id: usize,
        _machine: &M,
        action: M::Action,
        storage: &mut Persister,
    ) -> Option<M::Event> {
        (self.output)(&self.safety, id, action, storage)
    }
}

/// Spawns the task that fails the test (panics on the body's thread) with
/// the first failure on a node thread.
fn watch_failures(failures: &Failures) {
    let first = failures.wait();
    rt::spawn(async move {
        let message = first.await;
        panic!("a node thread failed: {message}");
    });
}

/// The running test's name (libtest names each test's thread after it), for
/// file names.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.replace("::", "-"),
        _ => "threads".to_string(),
    }
}
