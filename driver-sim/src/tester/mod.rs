//! The MIT 6.5840 lab tester (`raft/config.go`, `kvraft/config.go`,
//! lab-tests.md §2 and §4.2), written once for every driver.
//!
//! What the tester checks, how long it waits and what it records do not
//! depend on how the servers run. Each driver's harness (the simulator's
//! [`Cfg`](crate::Cfg) and [`KvCfg`](crate::KvCfg), `driver_threads`'
//! `ThreadCfg` and `ThreadKvCfg`) keeps its own servers and network,
//! implements the small traits here and calls these functions:
//!
//! - [`Runtime`]: the driver's executor (clock, sleeps, timeouts, tasks, the
//!   run's random numbers).
//! - [`raft`]: `one`, `wait` and the leader and term checks, over a
//!   [`RaftCluster`]; [`Appliers`]: the appliers' checks and the tester's
//!   snapshots; [`Cmd`]: the commands the tests submit.
//! - [`TestRun`]: `begin`/`end` bookkeeping, the time limit, the result
//!   lines.
//! - [`clerk`]: `make_client`'s choices and the clerk loop, over a driver's
//!   [`ClerkEnds`]; [`History`]: the record of clerk operations, its
//!   linearizability check and its export.
//! - [`Links`]: connections and partitions between KV servers;
//!   [`server_status`]: a KV cluster's status for failure reports.
//!
//! Determinism: these functions sleep and draw from the run's generator in
//! exactly the order the simulator's harnesses did before they were shared,
//! so a simulated run is the same through them, event for event.

use std::future::Future;
use std::time::Duration;

mod applier;
pub mod clerk;
mod cmd;
mod history;
mod links;
pub mod raft;
mod status;
mod test_run;

pub use applier::{Appliers, SNAPSHOT_INTERVAL};
pub use clerk::{ClerkEnds, CLERK_CALL_TIMEOUT};
pub use cmd::Cmd;
pub use history::{History, HistoryOp, PendingOp, LINEARIZABILITY_STEPS};
pub use links::{make_partition, Links};
pub use raft::RaftCluster;
pub use status::{links_column, server_status};
pub use test_run::{
    watch_time_limit, Counters, KvCounters, RaftCounters, TestRun, TEST_TIME_LIMIT,
};

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
