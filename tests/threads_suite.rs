//! All 51 lab tests on OS threads in real time, one at a time like the Go
//! suite, with each test's wall time and a summary per suite:
//!
//! ```sh
//! cargo run --release -p lab-tests --example threads_suite            # all 51
//! cargo run --release -p lab-tests --example threads_suite -- 2b 3a   # names containing "2b" or "3a"
//! ```
//!
//! Exits 1 if any test failed, after running the rest. A failure prints the
//! `THREADS_SEED` that replays the body's random choices (the timing of a
//! real-time run is not reproducible).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

use driver_threads::{ThreadCfg, ThreadKvCfg};

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let suites = [
        ("raft", lab_tests::raft::tests::<ThreadCfg>()),
        ("kv", lab_tests::kv::tests::<ThreadKvCfg>()),
    ];
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (suite, tests) in &suites {
        let suite_started = Instant::now();
        let mut suite_ran = 0;
        for &(name, body) in tests {
            if !wanted(name) {
                continue;
            }
            eprintln!("threads::{name} ...");
            let t0 = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| driver_threads::rt::run(body())));
            let secs = t0.elapsed().as_secs_f64();
            match result {
                Ok(()) => println!("threads::{name} ok ({secs:.1} s)"),
                Err(_) => {
                    println!("threads::{name} FAILED ({secs:.1} s)");
                    failed.push(name);
                }
            }
            suite_ran += 1;
        }
        ran += suite_ran;
        if suite_ran > 0 {
            println!(
                "{suite}: {suite_ran} tests in {:.1} s",
                suite_started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "threads: {ran} tests, {} passed, {} failed, {:.1} s",
        ran - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed: {failed:?}");
        ExitCode::FAILURE
    }
}
