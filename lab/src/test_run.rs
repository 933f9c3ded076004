//! A test's bookkeeping from `make_config` to `end`: the lab's time limit and
//! the result line `end` prints (`<name> ... Passed -- <seconds> <peers>
//! <counters>`), with the counters as differences since `begin`.

use std::time::Duration;

use raft_core::Index;

use super::Runtime;

/// The lab's per-test limit, from making the cluster to `end`.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(120);

/// The counters a result line reports.
pub trait Counters: Copy {
    /// The line's columns after the peer count: `self` minus `at_begin`.
    fn columns_since(&self, at_begin: &Self) -> String;
}

/// The Raft line's counters: RPCs, bytes, commands committed.
#[derive(Clone, Copy, Debug)]
pub struct RaftCounters {
    /// Requests sent.
    pub rpcs: u64,
    /// Request bytes plus delivered reply bytes.
    pub bytes: u64,
    /// The highest index applied ([`Appliers::max_index`](super::Appliers::max_index)).
    pub max_index: Index,
}

impl Counters for RaftCounters {
    fn columns_since(&self, at_begin: &Self) -> String {
        format!(
            "{:4} {:7} {:4}",
            self.rpcs - at_begin.rpcs,
            self.bytes - at_begin.bytes,
            self.max_index - at_begin.max_index
        )
    }
}

/// The KV line's counters: RPCs and clerk operations.
#[derive(Clone, Copy, Debug)]
pub struct KvCounters {
    /// Requests sent.
    pub rpcs: u64,
    /// Clerk operations completed.
    pub ops: u64,
}

impl Counters for KvCounters {
    fn columns_since(&self, at_begin: &Self) -> String {
        format!(
            "{:5} {:4}",
            self.rpcs - at_begin.rpcs,
            self.ops - at_begin.ops
        )
    }
}

/// When the cluster was made, and what `begin` recorded.
pub struct TestRun<C> {
    made: Duration,
    begun: Option<Begun<C>>,
}

struct Begun<C> {
    name: String,
    t0: Duration,
    at_begin: C,
}

impl<C: Counters> TestRun<C> {
    /// A run whose cluster is made at `now` (the time limit counts from here).
    pub fn new(now: Duration) -> Self {
        TestRun {
            made: now,
            begun: None,
        }
    }

    /// `begin(name)`: prints nothing yet; records the baselines.
    pub fn begin(&mut self, name: &str, now: Duration, counters: C) {
        self.begun = Some(Begun {
            name: name.to_string(),
            t0: now,
            at_begin: counters,
        });
    }

    /// `end()`: checks the time limit and prints the lab's result line for
    /// a cluster of `peers` servers.
    pub fn end(&self, now: Duration, peers: usize, counters: C) {
        assert!(
            now - self.made <= TEST_TIME_LIMIT,
            "test took longer than 120 seconds"
        );
        let b = self.begun.as_ref().expect("begin() before end()");
        println!(
            "{} ... Passed -- {:4.1} {} {}",
            b.name,
            (now - b.t0).as_secs_f64(),
            peers,
            counters.columns_since(&b.at_begin)
        );
    }
}

/// Fails the test if it still runs [`TEST_TIME_LIMIT`] from now: a task
/// that then asks `status` for the cluster's state (`None` once the cluster
/// is gone: the test ended) and panics with it. A test that hangs fails
/// with a report instead of hanging.
pub fn watch_time_limit<R: Runtime>(status: impl FnOnce() -> Option<String> + 'static) {
    R::spawn(async move {
        R::sleep(TEST_TIME_LIMIT).await;
        if let Some(status) = status() {
            panic!(
                "test took longer than 120 seconds ({}); cluster:\n{status}",
                R::CLOCK
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_columns_are_the_lab_widths_of_the_differences() {
        let begin = RaftCounters {
            rpcs: 10,
            bytes: 100,
            max_index: 2,
        };
        let end = RaftCounters {
            rpcs: 26,
            bytes: 290,
            max_index: 5,
        };
        assert_eq!(end.columns_since(&begin), "  16     190    3");
        let kv = KvCounters { rpcs: 5, ops: 7 }.columns_since(&KvCounters { rpcs: 0, ops: 0 });
        assert_eq!(kv, "    5    7");
    }

    #[test]
    #[should_panic(expected = "test took longer than 120 seconds")]
    fn end_checks_the_time_limit_from_making_the_cluster() {
        let mut run = TestRun::new(Duration::from_secs(1));
        let zero = KvCounters { rpcs: 0, ops: 0 };
        run.begin("late", Duration::from_secs(100), zero);
        run.end(Duration::from_secs(122), 3, zero);
    }
}
