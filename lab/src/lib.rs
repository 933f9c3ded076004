//! The MIT 6.5840 lab harness every driver implements (`raft/config.go`,
//! `kvraft/config.go`, lab-tests.md §2 and §4.2), written once.
//!
//! What the tester checks, how long it waits and what it records do not
//! depend on how the servers run. A driver (the simulator's `Cfg` and
//! `KvCfg`, `driver_threads`' `ThreadCfg` and `ThreadKvCfg`) keeps its own
//! servers and network and implements:
//!
//! - [`Runtime`]: its executor (clock, sleeps, timeouts, tasks, the run's
//!   random numbers);
//! - [`RaftHarness`] and [`KvHarness`] (over [`Harness`]): the Go `cfg`'s
//!   methods the lab test bodies call. The required methods are what only
//!   the driver can do; the provided ones are the tester's logic:
//!   [`raft`]'s `one`, `wait` and leader and term checks, [`clerk`]'s loop.
//!
//! and uses the shared parts: [`Appliers`] (the appliers' checks and the
//! tester's snapshots), [`Cmd`] (the commands the tests submit), [`TestRun`]
//! (`begin`/`end`, the time limit, the result lines), [`History`] (the clerk
//! operations, their linearizability check and export), [`Links`]
//! (connections and partitions between KV servers), [`server_status`] (a KV
//! cluster's status for failure reports) and [`net`] (labrpc's fault model).
//!
//! Determinism: these functions sleep and draw from the run's generator in
//! exactly the order the simulator's harnesses did before they were shared,
//! so a simulated run is the same through them, event for event.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![allow(async_fn_in_trait)] // single-threaded executors: no Send bounds wanted

use std::future::Future;
use std::time::Duration;

mod applier;
pub mod clerk;
mod cmd;
mod harness;
mod history;
mod links;
pub mod net;
pub mod raft;
mod status;
pub mod sync;
mod test_run;

pub use applier::{Appliers, SNAPSHOT_INTERVAL};
pub use clerk::{ClerkEnds, CLERK_CALL_TIMEOUT};
pub use cmd::Cmd;
pub use harness::{Harness, KvHarness, RaftHarness, Task};
pub use history::{History, HistoryOp, PendingOp, LINEARIZABILITY_STEPS};
pub use links::{make_partition, Links};
pub use status::{links_column, server_status};
pub use test_run::{
    watch_time_limit, Counters, KvCounters, RaftCounters, TestRun, TEST_TIME_LIMIT,
};

/// The Raft tests' `RaftElectionTimeout`.
pub const RAFT_ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
/// The kvraft tests' `electionTimeout`.
pub const KV_ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// Shorthand for `Duration::from_millis`.
pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The executor a harness runs in, as the tester uses it: the simulator's
/// (virtual time) or a real-time one. Every method is an associated
/// function: a run has one executor, installed on its thread.
pub trait Runtime: 'static {
    /// What the clock measures, for messages ("virtual" or "real").
    const CLOCK: &'static str;
    /// Time since the run began.
    fn now() -> Duration;
    /// Completes once `duration` has passed.
    fn sleep(duration: Duration) -> impl Future<Output = ()>;
    /// `future`'s output, or `None` if `duration` passes first (the future
    /// is dropped).
    fn timeout<F: Future>(duration: Duration, future: F)
        -> impl Future<Output = Option<F::Output>>;
    /// Runs `future` as a concurrent task, until it ends or the run does.
    fn spawn(future: impl Future<Output = ()> + 'static);
    /// A uniform integer in `0..bound` from the run's generator.
    fn random_below(bound: u64) -> u64;
    /// A uniform 64-bit integer from the run's generator.
    fn random_u64() -> u64;
    /// A name for the files a run writes: the test's name and the seed
    /// that replays it (`<test>-seed<seed>`).
    fn run_name() -> String;
}
