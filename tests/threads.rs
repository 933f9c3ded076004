//! The lab tests on OS threads in real time (`driver-threads`): the same
//! bodies as `raft.rs` and `kv.rs`, with every server on its own thread, real
//! timers and the in-process faulty network. The test command runs this
//! real-time subset (all of 2A and one test of each other part); all 51 run
//! with `cargo run --release -p lab-tests --example threads_suite`.
//!
//! Tests here appear as `threads::<name>`. They take one at a time, like
//! the Go suite: a real-time test shares the machine's cores with whatever
//! else runs, and two clusters at once would each see the other's load as
//! network delay.

mod threads {
    use std::sync::Mutex;

    use driver_threads::{ThreadCfg, ThreadKvCfg};

    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// Runs one body on the real-time executor (a failure prints the seed
    /// that replays its random choices: `THREADS_SEED=<n>`).
    fn run(body: lab_tests::Body) {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        driver_threads::rt::run(body());
    }

    macro_rules! threads_tests {
        ($suite:ident, $harness:ty: $($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    run(|| Box::pin(lab_tests::$suite::$name::<$harness>()));
                }
            )*
        };
    }

    threads_tests!(raft, ThreadCfg:
        initial_election_2a,
        re_election_2a,
        many_elections_2a,
        basic_agree_2b,
        fail_agree_2b,
        persist1_2c,
        snapshot_basic_2d,
    );
    threads_tests!(kv, ThreadKvCfg: basic_3a);
}
