//! Every planted bug (`kv_core::canary::Planted`: the Raft core's and the KV
//! service's) is caught: each canary is
//! switched on in turn, and the hunt runs, cheapest first, the Raft lab
//! suite over a few seeds, the bare-node read scenarios (deterministic: one
//! run), then the membership and read scenarios, then chaos seeds, then
//! the KV lab suite, until some check fails. The test fails if any canary survives every run in its budget, and
//! prints, for each, what caught it and the command that replays the catch.
//!
//! The canaries are compiled into this crate's tests only (the
//! `driver-sim/canaries` dev-dependency feature); release builds never have
//! them, and with none switched on the code behaves exactly as without the
//! feature.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Instant;

use driver_sim::chaos::run_seed;
use driver_sim::executor;
use kv_core::canary::Planted;

/// Raft lab suite seeds tried per canary (28 tests each).
const RAFT_SEEDS: u64 = 6;
/// Membership scenario seeds tried per canary (every scenario of
/// `lab_tests::membership`, on the Raft and the KV harness).
const MEMBERSHIP_SEEDS: u64 = 3;
/// Read scenario seeds tried per canary (`tests/reads.rs`).
const READS_SEEDS: u64 = 1;
/// Chaos seeds tried per canary.
const CHAOS_SEEDS: u64 = 1000;
/// KV lab suite seeds tried per canary (23 tests each).
const KV_SEEDS: u64 = 1;

/// What caught a canary.
struct Catch {
    /// The run: "raft figure8_2c", "chaos", "kv basic_3a".
    run: String,
    seed: u64,
    /// The first line of the failed check.
    check: String,
    replay: String,
}

/// The first line of a panic payload.
fn first_line(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Runs one lab test body with `seed`; the failed check, if any.
fn lab_run(body: lab_tests::Body, seed: u64) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| executor::run(seed, body())))
        .err()
        .map(|p| first_line(&*p))
}

fn hunt(c: Planted) -> Option<Catch> {
    // `suite` names the test binary; `module` the module its tests sit in
    // there ("" for the top level).
    let lab_in = |suite: &str, module: &str, tests: &[(&str, lab_tests::Body)], seeds: u64| {
        (1..=seeds).find_map(|seed| {
            tests.iter().find_map(|&(name, body)| {
                lab_run(body, seed).map(|check| Catch {
                    run: format!("{suite} {module}{name}"),
                    seed,
                    check,
                    replay: format!(
                        "SIM_CANARY={c} SIM_SEED={seed} cargo test --release -p lab-tests --test {suite} -- --exact {module}{name}"
                    ),
                })
            })
        })
    };
    let lab = |suite: &str, tests: &[(&str, lab_tests::Body)], seeds: u64| {
        lab_in(suite, "", tests, seeds)
    };
    lab("raft", &lab_tests::raft::tests::<driver_sim::Cfg>(), RAFT_SEEDS)
        .or_else(|| lab_in("reads", "core_reads::", &lab_tests::core_reads::tests(), 1))
        .or_else(|| lab("membership", &lab_tests::membership::tests(), MEMBERSHIP_SEEDS))
        .or_else(|| lab("reads", &lab_tests::reads::tests(), READS_SEEDS))
        .or_else(|| {
            (1..=CHAOS_SEEDS).find_map(|seed| {
                catch_unwind(AssertUnwindSafe(|| run_seed(seed)))
                    .err()
                    .map(|p| Catch {
                        run: "chaos".to_string(),
                        seed,
                        check: first_line(&*p),
                        replay: format!(
                            "cargo run --release -p driver-sim --features canaries --bin chaos -- --canary {c} --seed {seed}"
                        ),
                    })
            })
        })
        .or_else(|| lab("kv", &lab_tests::kv::tests::<driver_sim::KvCfg>(), KV_SEEDS))
}

#[test]
fn canaries_are_caught() {
    // The checks' panics are the expected outcome here: report them in the
    // table below rather than as a wall of backtraces.
    static QUIET: Mutex<()> = Mutex::new(());
    let _one_at_a_time = QUIET.lock().unwrap();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut survivors = Vec::new();
    let mut table = Vec::new();
    for c in Planted::ALL {
        let started = Instant::now();
        Planted::set(Some(c));
        let caught = catch_unwind(AssertUnwindSafe(|| hunt(c)));
        Planted::set(None);
        let caught = match caught {
            Ok(caught) => caught,
            Err(p) => {
                std::panic::set_hook(default_hook);
                std::panic::resume_unwind(p);
            }
        };
        let secs = started.elapsed().as_secs_f64();
        match caught {
            Some(k) => table.push(format!(
                "{c}: caught by {} seed {} in {secs:.1} s: {}\n    replay: {}",
                k.run, k.seed, k.check, k.replay
            )),
            None => {
                table.push(format!("{c}: SURVIVED ({secs:.1} s)"));
                survivors.push(c);
            }
        }
    }
    std::panic::set_hook(default_hook);
    println!("{}", table.join("\n"));
    assert!(
        survivors.is_empty(),
        "canaries not caught by {RAFT_SEEDS} Raft suite seeds, {MEMBERSHIP_SEEDS} membership scenario seeds, {CHAOS_SEEDS} chaos seeds, {KV_SEEDS} KV suite seeds: {survivors:?}\n{}",
        table.join("\n")
    );
}
