//! The interface the lab test bodies are written against, so that one body
//! runs under every driver: the simulator (`driver_sim::Cfg`, `KvCfg`, in
//! virtual time) and OS threads (`driver_threads`, in real time).
//!
//! A harness is the Rust twin of the Go tests' `cfg` (`raft/config.go`,
//! `kvraft/config.go`), plus the runtime services a body uses: sleeping,
//! spawning concurrent tasks, timeouts, the clock and the test's random
//! numbers. Bodies are `!Send` futures run on one thread by the driver's
//! executor, so handles are cheap clones (`Rc` inside) and the traits need no
//! `Send` bounds.

#![allow(async_fn_in_trait)] // single-threaded executors: no Send bounds wanted

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use driver_sim::Cmd;
use raft_core::{Index, Term};

/// Runtime services for a test body: those of the driver's executor (the
/// tester's [`driver_sim::tester::Runtime`]), plus tasks whose output can be
/// awaited.
pub trait Runtime: Clone + 'static {
    /// The driver's executor.
    type Rt: driver_sim::tester::Runtime;
    /// Completes after `d` (virtual or real time, per driver).
    fn sleep(d: Duration) -> impl Future<Output = ()> {
        <Self::Rt as driver_sim::tester::Runtime>::sleep(d)
    }
    /// Runs `future` concurrently, as a [`Task`].
    fn spawn<F>(future: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let slot = Rc::new(RefCell::new(Slot {
            output: None,
            finished: false,
            waiter: None,
        }));
        let done = slot.clone();
        <Self::Rt as driver_sim::tester::Runtime>::spawn(async move {
            let output = future.await;
            let mut done = done.borrow_mut();
            done.output = Some(output);
            done.finished = true;
            if let Some(waker) = done.waiter.take() {
                waker.wake();
            }
        });
        Task { slot }
    }
    /// `future`'s output, or `None` if `d` passes first.
    fn timeout<F: Future>(d: Duration, future: F) -> impl Future<Output = Option<F::Output>> {
        <Self::Rt as driver_sim::tester::Runtime>::timeout(d, future)
    }
    /// Time since the run began.
    fn now() -> Duration {
        <Self::Rt as driver_sim::tester::Runtime>::now()
    }
    /// A uniform number below `bound`, from the run's generator.
    fn random_below(bound: u64) -> u64 {
        <Self::Rt as driver_sim::tester::Runtime>::random_below(bound)
    }
}

struct Slot<T> {
    output: Option<T>,
    finished: bool,
    waiter: Option<Waker>,
}

/// A spawned task: await it for its output.
pub struct Task<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

impl<T> Task<T> {
    /// True once the task has finished.
    pub fn is_finished(&self) -> bool {
        self.slot.borrow().finished
    }
}

impl<T> Future for Task<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.borrow_mut();
        match slot.output.take() {
            Some(output) => Poll::Ready(output),
            None => {
                slot.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The Raft lab harness (`raft/config.go`).
pub trait RaftHarness: Runtime {
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
    /// The one leader, after waiting for an election; fails if none.
    async fn check_one_leader(&self) -> usize;
    /// The term all connected servers agree on; fails if they disagree.
    fn check_terms(&self) -> Term;
    /// Fails if a connected server thinks it leads.
    fn check_no_leader(&self);
    /// How many servers applied `index`, and the command there.
    fn n_committed(&self, index: Index) -> (usize, Option<Cmd>);
    /// Waits until at least `n` servers applied `index`.
    async fn wait(&self, index: Index, n: usize, start_term: Option<Term>) -> Option<Cmd>;
    /// Gets `cmd` committed by `expected` servers; its index.
    async fn one(&self, cmd: impl Into<Cmd>, expected: usize, retry: bool) -> Index;
    /// RPCs received by server `i`.
    fn rpc_count(&self, i: usize) -> u64;
    /// Bytes sent over the network.
    fn bytes_total(&self) -> u64;
    /// The largest persisted Raft state.
    fn log_size(&self) -> usize;
    /// A random command value.
    fn rand_int(&self) -> i64;
    /// A uniform number below `bound`.
    fn rand_below(&self, bound: u64) -> u64;
}

/// The KV lab harness (`kvraft/config.go`).
pub trait KvHarness: Runtime {
    /// A clerk with its own ends to the servers.
    type Clerk: Clone + 'static;
    /// `make_config(n, unreliable, maxraftstate)`; `None` is the lab's −1.
    fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> Self;
    /// Number of servers.
    fn n(&self) -> usize;
    /// Every server's number.
    fn all(&self) -> Vec<usize>;
    /// Reconnect every server to every other.
    fn connect_all(&self);
    /// Split the servers into `p1` and `p2`.
    fn partition(&self, p1: &[usize], p2: &[usize]);
    /// A random partition with the current leader in the minority.
    fn make_partition(&self) -> (Vec<usize>, Vec<usize>);
    /// Stop server `i`, keeping (a copy of) its persisted state.
    fn shutdown_server(&self, i: usize);
    /// Start (or restart) server `i` from its persisted state.
    fn start_server(&self, i: usize);
    /// A clerk reaching the servers in `to`.
    fn make_client(&self, to: &[usize]) -> Self::Clerk;
    /// Let `ck` reach exactly the servers in `to`.
    fn connect_client(&self, ck: &Self::Clerk, to: &[usize]);
    /// Start a test.
    fn begin(&self, name: &str);
    /// Checks the recorded history is linearizable.
    fn check_linearizable(&self);
    /// End a test: checks, prints the result line.
    fn end(&self);
    /// The largest persisted Raft state.
    fn log_size(&self) -> usize;
    /// The largest snapshot.
    fn snapshot_size(&self) -> usize;
    /// A uniform number below `bound`.
    fn rand_below(&self, bound: u64) -> u64;
    /// `ck.Get(key)` as test client `cli`, recorded.
    async fn get(&self, ck: &Self::Clerk, key: &str, cli: u64) -> String;
    /// `ck.Put(key, value)`, recorded.
    async fn put(&self, ck: &Self::Clerk, key: &str, value: &str, cli: u64);
    /// `ck.Append(key, value)`, recorded.
    async fn append(&self, ck: &Self::Clerk, key: &str, value: &str, cli: u64);
}

/// `RaftHarness` for a type with the same inherent methods (every driver's
/// Raft harness mirrors `driver_sim::Cfg`).
macro_rules! raft_harness {
    ($t:ty) => {
        impl RaftHarness for $t {
            fn new(n: usize, unreliable: bool, snapshot: bool) -> Self {
                <$t>::new(n, unreliable, snapshot)
            }
            fn n(&self) -> usize {
                self.n()
            }
            fn crash1(&self, i: usize) {
                self.crash1(i)
            }
            fn start1(&self, i: usize) {
                self.start1(i)
            }
            fn is_alive(&self, i: usize) -> bool {
                self.is_alive(i)
            }
            fn connect(&self, i: usize) {
                self.connect(i)
            }
            fn disconnect(&self, i: usize) {
                self.disconnect(i)
            }
            fn is_connected(&self, i: usize) -> bool {
                self.is_connected(i)
            }
            fn set_unreliable(&self, unreliable: bool) {
                self.set_unreliable(unreliable)
            }
            fn set_long_reordering(&self, on: bool) {
                self.set_long_reordering(on)
            }
            fn start(&self, i: usize, cmd: impl Into<Cmd>) -> Option<(Index, Term)> {
                self.start(i, cmd)
            }
            fn get_state(&self, i: usize) -> (Term, bool) {
                self.get_state(i)
            }
            fn begin(&self, name: &str) {
                self.begin(name)
            }
            fn end(&self) {
                self.end()
            }
            async fn check_one_leader(&self) -> usize {
                self.check_one_leader().await
            }
            fn check_terms(&self) -> Term {
                self.check_terms()
            }
            fn check_no_leader(&self) {
                self.check_no_leader()
            }
            fn n_committed(&self, index: Index) -> (usize, Option<Cmd>) {
                self.n_committed(index)
            }
            async fn wait(&self, index: Index, n: usize, start_term: Option<Term>) -> Option<Cmd> {
                self.wait(index, n, start_term).await
            }
            async fn one(&self, cmd: impl Into<Cmd>, expected: usize, retry: bool) -> Index {
                self.one(cmd, expected, retry).await
            }
            fn rpc_count(&self, i: usize) -> u64 {
                self.rpc_count(i)
            }
            fn bytes_total(&self) -> u64 {
                self.bytes_total()
            }
            fn log_size(&self) -> usize {
                self.log_size()
            }
            fn rand_int(&self) -> i64 {
                self.rand_int()
            }
            fn rand_below(&self, bound: u64) -> u64 {
                self.rand_below(bound)
            }
        }
    };
}

/// `KvHarness` for a type with the same inherent methods as
/// `driver_sim::KvCfg`, and its clerk type.
macro_rules! kv_harness {
    ($t:ty, $clerk:ty) => {
        impl KvHarness for $t {
            type Clerk = $clerk;
            fn new(n: usize, unreliable: bool, max_raft_state: Option<usize>) -> Self {
                <$t>::new(n, unreliable, max_raft_state)
            }
            fn n(&self) -> usize {
                self.n()
            }
            fn all(&self) -> Vec<usize> {
                self.all()
            }
            fn connect_all(&self) {
                self.connect_all()
            }
            fn partition(&self, p1: &[usize], p2: &[usize]) {
                self.partition(p1, p2)
            }
            fn make_partition(&self) -> (Vec<usize>, Vec<usize>) {
                self.make_partition()
            }
            fn shutdown_server(&self, i: usize) {
                self.shutdown_server(i)
            }
            fn start_server(&self, i: usize) {
                self.start_server(i)
            }
            fn make_client(&self, to: &[usize]) -> Self::Clerk {
                self.make_client(to)
            }
            fn connect_client(&self, ck: &Self::Clerk, to: &[usize]) {
                self.connect_client(ck, to)
            }
            fn begin(&self, name: &str) {
                self.begin(name)
            }
            fn check_linearizable(&self) {
                self.check_linearizable()
            }
            fn end(&self) {
                self.end()
            }
            fn log_size(&self) -> usize {
                self.log_size()
            }
            fn snapshot_size(&self) -> usize {
                self.snapshot_size()
            }
            fn rand_below(&self, bound: u64) -> u64 {
                self.rand_below(bound)
            }
            async fn get(&self, ck: &Self::Clerk, key: &str, cli: u64) -> String {
                self.get(ck, key, cli).await
            }
            async fn put(&self, ck: &Self::Clerk, key: &str, value: &str, cli: u64) {
                self.put(ck, key, value, cli).await
            }
            async fn append(&self, ck: &Self::Clerk, key: &str, value: &str, cli: u64) {
                self.append(ck, key, value, cli).await
            }
        }
    };
}

impl Runtime for driver_sim::Cfg {
    type Rt = driver_sim::SimRuntime;
}
impl Runtime for driver_sim::KvCfg {
    type Rt = driver_sim::SimRuntime;
}
raft_harness!(driver_sim::Cfg);
kv_harness!(driver_sim::KvCfg, driver_sim::SimClerk);

impl Runtime for driver_threads::ThreadCfg {
    type Rt = driver_threads::RealTime;
}
impl Runtime for driver_threads::ThreadKvCfg {
    type Rt = driver_threads::RealTime;
}
raft_harness!(driver_threads::ThreadCfg);
kv_harness!(driver_threads::ThreadKvCfg, driver_threads::ThreadClerk);
