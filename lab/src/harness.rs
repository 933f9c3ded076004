//! The interface the lab test bodies are written against, so that one body
//! runs under every driver: the simulator (`driver_sim::Cfg`, `KvCfg`, in
//! virtual time) and OS threads (`driver_threads`, in real time). A driver
//! implements these traits on its cluster handles directly: the required
//! methods are what only the driver can do (start, crash, connect a server,
//! read its state); the provided ones are the tester's logic, written once
//! ([`crate::raft`]).
//!
//! A harness is the Rust twin of the Go tests' `cfg` (`raft/config.go`,
//! `kvraft/config.go`), plus the runtime services a body uses: sleeping,
//! spawning concurrent tasks, timeouts, the clock and the test's random
//! numbers. Bodies are `!Send` futures run on one thread by the driver's
//! executor, so handles are cheap clones (`Rc` inside) and the traits need no
//! `Send` bounds.

#![allow(async_fn_in_trait)] // single-threaded executors: no Send bounds wanted

use std::future::Future;
use std::time::Duration;

use kv_core::Op;
use raft_core::{Index, Term};

use crate::{raft, Cmd, Links, Runtime};

/// Runtime services for a test body: those of the driver's executor (its
/// [`Runtime`]), plus tasks whose output can be awaited.
pub trait Harness: Clone + 'static {
    /// The driver's executor.
    type Rt: Runtime;
    /// Completes after `d` (virtual or real time, per driver).
    fn sleep(d: Duration) -> impl Future<Output = ()> {
        Self::Rt::sleep(d)
    }
    /// Runs `future` concurrently; await the handle for its output.
    fn spawn<F>(future: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let (task, handle) = crate::sync::joinable(future);
        Self::Rt::spawn(task);
        handle
    }
    /// `future`'s output, or `None` if `d` passes first.
    fn timeout<F: Future>(d: Duration, future: F) -> impl Future<Output = Option<F::Output>> {
        Self::Rt::timeout(d, future)
    }
    /// Time since the run began.
    fn now() -> Duration {
        Self::Rt::now()
    }
    /// A uniform number below `bound`, from the run's generator.
    fn random_below(bound: u64) -> u64 {
        Self::Rt::random_below(bound)
    }
}

/// A spawned task: await it for its output.
pub type Task<T> = crate::sync::JoinHandle<T>;

/// The Raft lab harness (`raft/config.go`).
pub trait RaftHarness: Harness {
    /// `make_config(n, unreliable, snapshot)`: `n` servers started and
    /// connected, with the snapshotting applier if `snapshot`.
    fn new(n: usize, unreliable: bool, snapshot: bool) -> Self;
    /// Number of servers.
    fn n(&self) -> usize;
    /// Crash server `i`, keeping (a copy of) its persisted state.
    fn crash1(&self, i: usize);
    /// Start (or restart) server `i` from its persisted state.
    fn start1(&self, i: usize);
    /// Whether server `i` is running.
    fn is_alive(&self, i: usize) -> bool;
    /// Attach server `i` to the network.
    fn connect(&self, i: usize);
    /// Detach server `i` from the network.
    fn disconnect(&self, i: usize);
    /// Whether server `i` is attached.
    fn is_connected(&self, i: usize) -> bool;
    /// Lose and delay messages (or stop).
    fn set_unreliable(&self, unreliable: bool);
    /// Hold some messages back a long time (or stop).
    fn set_long_reordering(&self, on: bool);
    /// `rf.Start(cmd)` on server `i`: `(index, term)` if it leads.
    fn start(&self, i: usize, cmd: impl Into<Cmd>) -> Option<(Index, Term)>;
    /// `rf.GetState()` of server `i`: `(term, is_leader)`.
    fn get_state(&self, i: usize) -> (Term, bool);
    /// Start a test: prints its name, records the counters.
    fn begin(&self, name: &str);
    /// End a test: checks the time limit, prints the result line.
    fn end(&self);
    /// How many servers applied `index`, and the command there.
    fn n_committed(&self, index: Index) -> (usize, Option<Cmd>);
    /// RPCs received by server `i` since it (re)started.
    fn rpc_count(&self, i: usize) -> u64;
    /// Requests sent so far.
    fn rpc_total(&self) -> u64;
    /// Bytes sent over the network.
    fn bytes_total(&self) -> u64;
    /// The largest persisted Raft state.
    fn log_size(&self) -> usize;
    /// The largest snapshot.
    fn snapshot_size(&self) -> usize;

    /// The one leader, after waiting for an election; fails if none
    /// ([`raft::check_one_leader`]).
    async fn check_one_leader(&self) -> usize {
        raft::check_one_leader(self).await
    }
    /// The term all connected servers agree on; fails if they disagree
    /// ([`raft::check_terms`]).
    fn check_terms(&self) -> Term {
        raft::check_terms(self)
    }
    /// Fails if a connected server thinks it leads ([`raft::check_no_leader`]).
    fn check_no_leader(&self) {
        raft::check_no_leader(self)
    }
    /// Waits until at least `n` servers applied `index`; `None` if a term
    /// moved past `start_term` ([`raft::wait`]).
    async fn wait(&self, index: Index, n: usize, start_term: Option<Term>) -> Option<Cmd> {
        raft::wait(self, index, n, start_term).await
    }
    /// The lab's `one()`: `cmd` committed by `expected` servers; its index
    /// ([`raft::one`]).
    async fn one(&self, cmd: impl Into<Cmd>, expected: usize, retry: bool) -> Index {
        raft::one(self, cmd.into(), expected, retry).await
    }
    /// A random non-negative integer from the run's generator (Go's
    /// `rand.Int()`).
    fn rand_int(&self) -> i64 {
        (Self::Rt::random_u64() >> 1) as i64
    }
    /// A uniform number below `bound`, from the run's generator.
    fn rand_below(&self, bound: u64) -> u64 {
        Self::Rt::random_below(bound)
    }
}

/// The KV lab harness (`kvraft/config.go`).
pub trait KvHarness: Harness + Links {
    /// A clerk with its own ends to the servers.
    type Clerk: Clone + 'static;
    /// `make_config(n, unreliable, maxraftstate)`; `None` is the lab's −1.
    fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> Self;
    /// Number of servers.
    fn n(&self) -> usize;
    /// The first server that believes it leads, if any.
    fn leader(&self) -> Option<usize>;
    /// Turn request/reply loss and short delays on (`true`) or off.
    fn set_unreliable(&self, unreliable: bool);
    /// Stop server `i`, keeping (a copy of) its persisted state.
    fn shutdown_server(&self, i: usize);
    /// Start (or restart) server `i` from its persisted state.
    fn start_server(&self, i: usize);
    /// A clerk reaching the servers in `to`.
    fn make_client(&self, to: &[usize]) -> Self::Clerk;
    /// Let `ck` reach exactly the servers in `to`.
    fn connect_client(&self, ck: &Self::Clerk, to: &[usize]);
    /// Start a test: records the counters for `end`'s result line.
    fn begin(&self, name: &str);
    /// Checks the recorded history is linearizable.
    fn check_linearizable(&self);
    /// End a test: checks the time limit, prints the result line, exports
    /// the history (with `HISTORY_DIR` set).
    fn end(&self);
    /// The largest persisted Raft state.
    fn log_size(&self) -> usize;
    /// The largest snapshot.
    fn snapshot_size(&self) -> usize;
    /// Requests sent so far.
    fn rpc_total(&self) -> u64;
    /// Runs `op` through clerk `ck` to completion as test client `cli` and
    /// records it ([`crate::clerk::run_op`] over the driver's ends); a get's
    /// value, "" otherwise.
    async fn run_op(&self, ck: &Self::Clerk, cli: u64, op: Op) -> String;

    /// Every server's number.
    fn all(&self) -> Vec<usize> {
        (0..self.n()).collect()
    }
    /// A majority of non-leaders and a minority ending with the leader
    /// ([`crate::make_partition`]).
    fn make_partition(&self) -> (Vec<usize>, Vec<usize>) {
        crate::make_partition(self.n(), self.leader())
    }
    /// A uniform number below `bound`, from the run's generator.
    fn rand_below(&self, bound: u64) -> u64 {
        Self::Rt::random_below(bound)
    }
    /// `ck.Get(key)` as test client `cli`, recorded.
    async fn get(&self, ck: &Self::Clerk, key: &str, cli: u64) -> String {
        let key = key.to_string();
        self.run_op(ck, cli, Op::Get { key }).await
    }
    /// `ck.Put(key, value)`, recorded.
    async fn put(&self, ck: &Self::Clerk, key: &str, value: &str, cli: u64) {
        let (key, value) = (key.to_string(), value.to_string());
        self.run_op(ck, cli, Op::Put { key, value }).await;
    }
    /// `ck.Append(key, value)`, recorded.
    async fn append(&self, ck: &Self::Clerk, key: &str, value: &str, cli: u64) {
        let (key, value) = (key.to_string(), value.to_string());
        self.run_op(ck, cli, Op::Append { key, value }).await;
    }
}
