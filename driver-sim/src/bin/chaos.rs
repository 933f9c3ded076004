//! Runs chaos seeds: `chaos [--seeds N] [--from FIRST] [--seed ONE]
//! [--drift-ppm BOUND] [--drift-beyond FACTOR] [--reads SETUP] [--no-swaps]
//! [--no-defer]`; built with
//! `--features canaries`, also `--canary NAME` (plant one bug for the run)
//! and `--canaries SEEDS` (hunt each planted bug in turn).
//!
//! Reads: `--reads log|read-index|follower|lease` runs every seed with that
//! read setup (`driver_sim::chaos::ReadSetup`); `--reads drawn` (the
//! default) lets each seed draw its own. A seed run with the setup it would
//! draw runs exactly as when drawing.
//!
//! Writes: `--no-swaps` runs clerks that only append and read, without the
//! deletes, puts and compare-and-swaps of the shared keys
//! (`driver_sim::chaos::ChaosOptions::swaps`): each seed as it ran before
//! those existed.
//!
//! Applies: the odd seeds run servers that defer their applies
//! (`driver_sim::chaos::ChaosOptions::defer`); `--no-defer` runs every
//! seed as it ran before deferred applies existed.
//!
//! Clocks: in one seed of three (those divisible by 3) every node's clock
//! drifts within `--drift-ppm` parts per million (default 50000, ±5%; 0
//! gives perfect clocks in every seed, the runs of chaos before clocks
//! drifted), or with `--drift-beyond FACTOR` beyond that bound, up to FACTOR
//! times it (for a lease canary: the clock assumption a lease rests on is
//! broken). The other seeds run exactly as with perfect clocks.
//!
//! Prints a progress bar on stderr, every failing seed with what broke and
//! the command that replays it, and a summary. Exit status 1 if any failed.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

use driver_sim::chaos::{
    mix_of, run_seed_with, ChaosOptions, DeferTally, ReadSetup, ReadTally, Reads, SwapTally,
};
use driver_sim::ClockDrift;

fn usage() -> ExitCode {
    eprintln!("usage: chaos [--seeds N (default 1000)] [--from FIRST (default 1)] [--seed ONE]");
    eprintln!("             [--drift-ppm BOUND (default 50000; 0: perfect clocks)] [--drift-beyond FACTOR (>= 2)]");
    eprintln!(
        "             [--reads log|read-index|follower|lease|drawn (default: drawn per seed)] [--no-swaps] [--no-defer]"
    );
    eprintln!("       chaos --canaries SEEDS   (built with --features canaries): each planted bug in turn");
    eprintln!("       chaos --canary NAME ...  (built with --features canaries): run with one planted bug");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut from = 1u64;
    let mut count = 1000u64;
    // How to rebuild this run in a replay command: the planted bug, if any.
    #[cfg_attr(not(feature = "canaries"), allow(unused_mut))]
    let mut planted = String::new();
    let mut options = ChaosOptions::default();
    #[cfg_attr(not(feature = "canaries"), allow(unused_mut))]
    let mut hunt: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        #[cfg(feature = "canaries")]
        if flag == "--canary" {
            use kv_core::canary::Planted;
            let name = args.next().unwrap_or_default();
            let Some(c) = Planted::by_name(&name) else {
                let all: Vec<String> = Planted::ALL.iter().map(ToString::to_string).collect();
                eprintln!("chaos: no canary {name:?}; there are {}", all.join(", "));
                return ExitCode::from(2);
            };
            Planted::set(Some(c));
            planted = format!(" --features canaries --bin chaos -- --canary {c}");
            continue;
        }
        if flag == "--no-swaps" {
            options.swaps = false;
            continue;
        }
        if flag == "--no-defer" {
            options.defer = false;
            continue;
        }
        if flag == "--reads" {
            let name = args.next().unwrap_or_default();
            options.reads = match ReadSetup::by_name(&name) {
                Some(setup) => Reads::Only(setup),
                None if name == "drawn" => Reads::Drawn,
                None => return usage(),
            };
            continue;
        }
        let Some(value) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
            return usage();
        };
        match flag.as_str() {
            "--seeds" => count = value,
            "--from" => from = value,
            #[cfg(feature = "canaries")]
            "--canaries" => hunt = Some(value),
            "--seed" => {
                from = value;
                count = 1;
            }
            "--drift-ppm" if value < 1_000_000 => options.drift = ClockDrift::ppm(value),
            "--drift-beyond" if value >= 2 => options.beyond = Some(value),
            _ => return usage(),
        }
    }
    #[cfg(feature = "canaries")]
    if let Some(seeds) = hunt {
        return hunt_canaries(seeds, options);
    }
    #[cfg(not(feature = "canaries"))]
    let _ = hunt;
    // How to rebuild the clocks in a replay command.
    let mut clocks = String::new();
    if options.drift != ChaosOptions::default().drift {
        clocks += &format!(" --drift-ppm {}", options.drift.max_ppm);
    }
    if let Some(factor) = options.beyond {
        clocks += &format!(" --drift-beyond {factor}");
    }
    if let Reads::Only(setup) = options.reads {
        clocks += &format!(" --reads {setup}");
    }
    if !options.swaps {
        clocks += " --no-swaps";
    }
    if !options.defer {
        clocks += " --no-defer";
    }
    // Failures are reported here, with their seed; keep panics quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let (mut failed, mut events, mut ops, mut changes) = (Vec::new(), 0u64, 0usize, 0usize);
    let mut drifting = 0u64;
    // Passed seeds by read setup (in `ReadSetup::ALL` order), and what
    // their reads did.
    let mut by_setup = [0u64; ReadSetup::ALL.len()];
    let mut reads = ReadTally::default();
    let mut swaps = SwapTally::default();
    let mut deferred = DeferTally::default();
    for (k, seed) in (from..from + count).enumerate() {
        match catch_unwind(AssertUnwindSafe(|| run_seed_with(seed, options))) {
            Ok(report) => {
                events += report.events;
                ops += report.ops;
                changes += report.changes;
                drifting += u64::from(!report.mix.clocks.is_empty());
                by_setup[report.mix.reads.position()] += 1;
                reads.add(&report.reads);
                swaps.add(&report.swaps);
                deferred.add(&report.deferred);
                if count == 1 {
                    eprintln!(
                        "\rseed {seed}: reads {}, {} nodes, {} clients, {} readers, {:?}",
                        report.mix.reads,
                        report.mix.nodes,
                        report.mix.clients,
                        report.mix.readers,
                        report.reads
                    );
                }
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let setup = mix_of(seed, options).reads;
                eprintln!(
                    "\rseed {seed} FAILED (reads {setup}): {}",
                    why.lines().next().unwrap_or("")
                );
                let run = if planted.is_empty() {
                    " --bin chaos --"
                } else {
                    planted.as_str()
                };
                eprintln!("  replay: cargo run --release -p driver-sim{run} --seed {seed}{clocks}");
                if count == 1 {
                    eprintln!("{why}");
                }
                failed.push(seed);
            }
        }
        let done = k as u64 + 1;
        // Repaint about 200 times per run, not on every seed.
        if !done.is_multiple_of((count / 200).max(1)) && done != count {
            continue;
        }
        let width = 30;
        let filled = (done * width / count.max(1)) as usize;
        eprint!(
            "\r[{}{}] {done}/{count} seeds, {} failed, {:.1}M events, {:.1} s ",
            "#".repeat(filled),
            " ".repeat(width as usize - filled),
            failed.len(),
            events as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    // Named only when clocks may drift, so that a run with perfect clocks
    // prints the line chaos printed before clocks drifted.
    let clocks_note = match options.beyond {
        _ if !options.drift.is_on() => String::new(),
        None => format!(
            ", {drifting} passed seeds with clocks drifting within {} ppm",
            options.drift.max_ppm
        ),
        Some(factor) => format!(
            ", {drifting} passed seeds with clocks drifting beyond {} ppm (up to {factor}x)",
            options.drift.max_ppm
        ),
    };
    let setups: Vec<String> = ReadSetup::ALL
        .iter()
        .zip(by_setup)
        .filter(|&(_, n)| n > 0)
        .map(|(setup, n)| format!("{n} {setup}"))
        .collect();
    let reads_note = format!(
        "; reads: passed seeds {}, {} sessionless reads served without the log ({} attempts refused, {} unanswered), {} reads answered with no round trip",
        if setups.is_empty() { "none".to_string() } else { setups.join(", ") },
        reads.served,
        reads.refused,
        reads.unanswered,
        reads.at_once
    );
    // Named only when on, so that a run without prints the line chaos
    // printed before deletes and swaps existed.
    // Named only when on, so that a run without prints the line chaos
    // printed before deferred applies existed.
    let defer_note = if options.defer {
        format!(
            "; deferred applies: {} steps left entries to apply later, {} steps applied them before their event",
            deferred.left, deferred.applied_first
        )
    } else {
        String::new()
    };
    let swaps_note = if options.swaps {
        format!(
            "; swaps: {} swapped, {} not, deletes: {} found the key, {} did not",
            swaps.swapped, swaps.not_swapped, swaps.deleted, swaps.absent
        )
    } else {
        String::new()
    };
    println!(
        "chaos: {} seeds from {from}: {} passed, {} failed; {events} events, {ops} client operations checked, {changes} membership changes{clocks_note}{reads_note}{swaps_note}{defer_note}, {:.1} s",
        count,
        count as usize - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}

/// Switches each planted bug on in turn and runs seeds 1..=`seeds` until one
/// fails; reports which check caught it, or that it survived.
#[cfg(feature = "canaries")]
fn hunt_canaries(seeds: u64, options: ChaosOptions) -> ExitCode {
    use kv_core::canary::Planted;
    std::panic::set_hook(Box::new(|_| {}));
    let mut survivors = Vec::new();
    for c in Planted::ALL {
        Planted::set(Some(c));
        let caught = (1..=seeds).find_map(|seed| {
            match catch_unwind(AssertUnwindSafe(|| run_seed_with(seed, options))) {
                Ok(_) => None,
                Err(p) => {
                    let why = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Some((seed, why.lines().next().unwrap_or("").to_string()))
                }
            }
        });
        Planted::set(None);
        match caught {
            Some((seed, why)) => println!("{c}: caught by seed {seed}: {why}"),
            None => {
                println!("{c}: SURVIVED {seeds} seeds");
                survivors.push(c);
            }
        }
    }
    println!(
        "{} of {} canaries caught",
        Planted::ALL.len() - survivors.len(),
        Planted::ALL.len()
    );
    if survivors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
