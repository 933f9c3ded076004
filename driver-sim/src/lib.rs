//! Deterministic simulation of `raft-core`: a virtual clock that jumps to the
//! next event, one seeded generator for every random draw, the lab's labrpc
//! network (`lab::net`'s fault model), in-memory persisters holding encoded
//! state (`raft_testkit::Persister`), crash and restart, the MIT 6.5840 Raft
//! and KV lab harnesses (implementations of `lab`'s [`RaftHarness`] and
//! [`KvHarness`]), and the cluster safety checker
//! (`raft_testkit::SafetyChecker`) run after every step. Each node may read
//! its own drifting clock ([`clock`]): off (perfect clocks) unless a
//! harness or a chaos run is given a [`ClockDrift`] bound.
//!
//! The seed comes from `SIM_SEED` ([`seed_from_env`]); [`run_test`] prints it
//! with the test's name whenever a test fails, and running again with that
//! seed replays the identical run.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chaos;
pub mod clock;
pub mod executor;
pub mod kv_harness;
pub mod raft_harness;

pub use clock::{ClockDrift, NodeClock};
pub use executor::{ms, now, run, sleep, spawn, JoinHandle, SimRuntime};
pub use kv_harness::{KvCfg, SimClerk};
pub use lab::{Cmd, Harness, KvHarness, RaftHarness};
pub use raft_harness::{Cfg, DriftCfg, PreVoteCfg, SimCfg};

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

thread_local! {
    static TEST_NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The name of the test [`run_test`] is running on this thread ("" outside).
pub fn current_test_name() -> String {
    TEST_NAME.with(|n| n.borrow().clone())
}

/// With `SIM_TRACE_ROLES=1`, the Raft lab harness prints every change of a
/// server's role or term (virtual time, role, term, last log entry, commit
/// index) to stderr: what an election-liveness failure needs to be read.
pub fn trace_roles() -> bool {
    thread_local! {
        static ON: bool = std::env::var_os("SIM_TRACE_ROLES").is_some_and(|v| v == "1");
    }
    ON.with(|on| *on)
}

/// The seed used when `SIM_SEED` is not set.
pub const DEFAULT_SEED: u64 = 1;

/// The seed from `SIM_SEED`, or [`DEFAULT_SEED`]. Panics on a value that is
/// not a number, rather than silently running another seed.
pub fn seed_from_env() -> u64 {
    match std::env::var("SIM_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SIM_SEED={s:?} is not a number")),
        Err(_) => DEFAULT_SEED,
    }
}

/// Runs one simulated test body under the seed from `SIM_SEED`. On failure
/// prints the test's name, its seed and the command that replays it, then
/// fails with the original panic.
pub fn run_test<F, Fut>(name: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let seed = seed_from_env();
    TEST_NAME.with(|n| *n.borrow_mut() = name.to_string());
    #[cfg(feature = "canaries")]
    if let Ok(wanted) = std::env::var("SIM_CANARY") {
        let canary = kv_core::canary::Planted::by_name(&wanted)
            .unwrap_or_else(|| panic!("SIM_CANARY={wanted:?} names no canary"));
        kv_core::canary::Planted::set(Some(canary));
    }
    let result = catch_unwind(AssertUnwindSafe(|| run(seed, body())));
    if let Err(panic) = result {
        eprintln!(
            "FAILED {name} with SIM_SEED={seed} (virtual time {:.3} s); replay with:\n  SIM_SEED={seed} cargo test --release -p lab-tests -- --exact {name}",
            executor::last_virtual_time().as_nanos() as f64 / 1e9
        );
        resume_unwind(panic);
    }
}
