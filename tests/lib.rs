//! The lab suites' test bodies (`raft`, `kv`) and their shared helpers.

use lab::Harness;

/// A random string of `n` URL-safe characters (the Go tests' `randstring`).
pub fn rand_string<H: Harness>(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..n)
        .map(|_| ALPHABET[H::random_below(ALPHABET.len() as u64) as usize] as char)
        .collect()
}

use std::future::Future;
use std::pin::Pin;

/// A lab test's body: builds its cluster, runs its scenario, panics on a
/// failure. The caller supplies the runtime (`driver_sim::run_test`).
pub type Body = fn() -> Pin<Box<dyn Future<Output = ()>>>;

/// The Raft lab suite, 2A–2D (28 tests).
#[path = "suites/raft.rs"]
pub mod raft;

/// The KV lab suite, 3A–3B (23 tests).
#[path = "suites/kv.rs"]
pub mod kv;

/// Membership change scenarios on the simulator's Raft and KV harnesses (issue 12).
#[path = "suites/membership.rs"]
pub mod membership;

/// Read scenarios (issue 13): ReadIndex, follower reads.
#[path = "suites/reads.rs"]
pub mod reads;

/// Streamed-snapshot scenarios (issue 14): no transfer to an unreachable
/// follower, catching up with one or a few.
#[path = "suites/snapshots.rs"]
pub mod snapshots;

/// Read scenarios on bare Raft nodes with exact timing (issue 13): own-term
/// commit, delayed round replies, leases under drift and without sticky
/// votes.
#[path = "suites/core_reads.rs"]
pub mod core_reads;
