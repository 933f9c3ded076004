//! The KV tester's clerks: `make_client`'s random choices, and the loop that
//! drives a `kv_core::Clerk` through a driver's network until an operation
//! completes, recording it in the [`History`].

use std::cell::{RefCell, RefMut};
use std::future::Future;
use std::time::Duration;

use kv_core::{Clerk, Command, Op, Outcome, Progress, Reply};

use super::{History, Runtime};

/// How long a clerk waits for one call before trying the next server. A
/// leader cut off in a minority never answers, so the clerk must move on.
pub const CLERK_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// One clerk's ends into a driver's network (the Go tester gives each clerk
/// its own, in a shuffled order), and the history its operations go to.
pub trait ClerkEnds {
    /// The executor the cluster runs in.
    type Runtime: Runtime;
    /// Starts a call to real server `server` now; resolves to the reply, or
    /// `None` when labrpc's `Call` would return false.
    fn call(&self, server: usize, command: Command) -> impl Future<Output = Option<Reply>>;
    /// The cluster's history.
    fn history(&self) -> RefMut<'_, History>;
}

/// `make_client`'s random choices for a cluster of `servers`, in this order:
/// the order of the clerk's ends (a shuffle: the order it tries the
/// servers in), the server it tries first, its client id.
pub fn new_clerk<R: Runtime>(servers: usize) -> Clerk {
    let mut order: Vec<usize> = (0..servers).collect();
    for k in (1..servers).rev() {
        let j = R::random_below(k as u64 + 1) as usize;
        order.swap(k, j);
    }
    let first = R::random_below(servers as u64) as usize;
    let client_id = R::random_u64();
    let ids = order.iter().map(|&s| s as u64).collect();
    Clerk::new(client_id, ids, first)
}

/// A Go test wrapper (`Get`, `Put`, `Append`) as test client `client`:
/// runs `op` through `clerk` to completion and records it. Returns a get's
/// value ("" otherwise).
pub async fn run_op<E: ClerkEnds>(ends: &E, clerk: &RefCell<Clerk>, client: u64, op: Op) -> String {
    let pending = ends.history().called(E::Runtime::now(), client, &op);
    let outcome = execute(ends, clerk, op).await;
    ends.history().returned(E::Runtime::now(), pending, outcome)
}

/// Runs one operation to completion: retries (with the clerk's logic) until
/// some server applies it. Each call waits at most [`CLERK_CALL_TIMEOUT`].
pub async fn execute<E: ClerkEnds>(ends: &E, clerk: &RefCell<Clerk>, op: Op) -> Outcome {
    let mut attempt = clerk.borrow_mut().begin(op);
    loop {
        if let Some(delay) = attempt.delay {
            E::Runtime::sleep(delay).await;
        }
        // Server i of the lab's cluster is Raft node i.
        let call = ends.call(attempt.server as usize, attempt.command.clone());
        let result = E::Runtime::timeout(CLERK_CALL_TIMEOUT, call)
            .await
            .flatten();
        let mut clerk = clerk.borrow_mut();
        attempt = match result {
            Some(reply) => match clerk.on_reply(attempt.server, reply) {
                Progress::Done(outcome) => return outcome,
                Progress::Retry(a) => a,
            },
            None => clerk.on_failure(attempt.server),
        };
    }
}
