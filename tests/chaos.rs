//! Chaos seeds in the test command (clocks drifting within ±5% in the seeds
//! divisible by three, and each seed drawing its read setup, as chaos runs
//! by default), seeds on each read setup, and the seeds that ever failed,
//! kept as regressions. (The canary hunt is `chaos --canaries`, see the
//! README.)

use std::panic::{catch_unwind, AssertUnwindSafe};

use driver_sim::chaos::{run_seed, run_seed_with, ChaosOptions, ReadSetup, Reads, SwapTally};

/// What a failing run says (the first line of its panic).
fn failure(seed: u64, options: ChaosOptions) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| run_seed_with(seed, options))) {
        Ok(_) => None,
        Err(p) => Some(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ),
    }
}

#[test]
fn chaos_500_seeds() {
    let mut events = 0;
    let mut swaps = SwapTally::default();
    for seed in 1..=500 {
        match catch_unwind(AssertUnwindSafe(|| run_seed(seed))) {
            Ok(r) => {
                events += r.events;
                swaps.add(&r.swaps);
            }
            Err(p) => {
                eprintln!("chaos seed {seed} failed; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed}");
                std::panic::resume_unwind(p);
            }
        }
    }
    println!("500 chaos seeds, {events} events, {swaps:?}");
    // The history checked swaps and deletes of every kind.
    assert!(swaps.swapped > 0 && swaps.not_swapped > 0, "{swaps:?}");
    assert!(swaps.deleted > 0 && swaps.absent > 0, "{swaps:?}");
}

/// Seed 32 stalled after healing: a new leader could not commit its
/// predecessor's last entry without a proposal (fixed by the no-op entry
/// on election). Seed 234 tripped the persist-before-send check on a group
/// commit that had already moved past the message's term (checker fixed);
/// seeds 6290, 7307 and 8813 did the same with acknowledgements. With
/// membership changes drawn: seed 541 stalled because a leader that demoted
/// itself and crashed never stood again (raft-core `Shared::may_stand`);
/// seeds 6555, 8221 and 9074 because nodes behind on the configuration
/// dropped the votes of members they did not know (dropped now only while
/// a leader works); seed 4598 because clerks followed stale leader hints
/// of removed servers round in a circle (chaos now shuts removed servers
/// down once healed). All of these failed before clocks drifted and before
/// clerks deleted and swapped: each runs as it did then (perfect clocks,
/// `--drift-ppm 0`, no swaps), and as chaos runs it now.
#[test]
fn chaos_regression_seeds() {
    for seed in [32, 234, 6290, 7307, 8813, 541, 4598, 6555, 8221, 9074] {
        assert_eq!(
            failure(seed, ChaosOptions::PERFECT_CLOCKS.with_swaps(false)),
            None,
            "seed {seed}; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed} --drift-ppm 0 --no-swaps"
        );
        assert_eq!(
            failure(seed, ChaosOptions::default()),
            None,
            "seed {seed}; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed}"
        );
    }
}

/// Seeds on each read setup (the default run draws one per seed).
#[test]
fn chaos_each_read_setup() {
    for setup in ReadSetup::ALL {
        let options = ChaosOptions::default().with_reads(Reads::Only(setup));
        let mut served = 0;
        for seed in 1..=60 {
            match catch_unwind(AssertUnwindSafe(|| run_seed_with(seed, options))) {
                Ok(r) => {
                    assert_eq!(r.mix.reads, setup);
                    served += r.reads.served;
                }
                Err(p) => {
                    eprintln!("chaos seed {seed} failed; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed} --reads {setup}");
                    std::panic::resume_unwind(p);
                }
            }
        }
        assert!(served > 0, "{setup}: no sessionless read served");
    }
}

/// A seed run with the read setup it would draw runs exactly as when it
/// draws it.
#[test]
fn a_setup_named_replays_the_drawn_run() {
    let run = |seed, options| {
        let r = run_seed_with(seed, options);
        (r.events, r.ops, r.acked, r.changes, r.reads, r.mix.reads)
    };
    for seed in 1..=8 {
        let drawn = run(seed, ChaosOptions::default());
        let named = ChaosOptions::default().with_reads(Reads::Only(drawn.5));
        assert_eq!(run(seed, named), drawn, "seed {seed}");
    }
}

/// Lease seeds that served stale reads before the fix in raft-core
/// `LeaderState::renew_lease`: a new leader's heartbeat started a round
/// before an entry of its term had committed, and reads waiting then took
/// its commit index, which could lag its predecessor's, as read index.
/// Found before clerks deleted and swapped: each runs as it did then (no
/// swaps) and as chaos runs it now.
#[test]
fn chaos_lease_regression_seeds() {
    let options = ChaosOptions::default().with_reads(Reads::Only(ReadSetup::Lease));
    for seed in [312, 545, 612, 640, 804] {
        assert_eq!(
            failure(seed, options.with_swaps(false)),
            None,
            "seed {seed}; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed} --reads lease --no-swaps"
        );
        assert_eq!(
            failure(seed, options),
            None,
            "seed {seed}; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed} --reads lease"
        );
    }
}

/// Rates beyond the bound break no check while nothing in the core rests
/// on clocks: on every read setup but the lease.
#[test]
fn chaos_clocks_beyond_the_bound() {
    // The seeds that drift: one in three, each setup in turn.
    for k in 1..=100u64 {
        let seed = 3 * k;
        assert!(driver_sim::chaos::drifts(seed));
        let setup = [ReadSetup::Log, ReadSetup::ReadIndex, ReadSetup::Follower][k as usize % 3];
        let options = ChaosOptions::beyond_the_bound(4).with_reads(Reads::Only(setup));
        assert_eq!(
            failure(seed, options),
            None,
            "seed {seed}; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed} --drift-beyond 4 --reads {setup}"
        );
    }
}

/// The drift canary: with lease reads and clock rates beyond the bound the
/// lease assumes (up to 20 times it: some clocks at a tenth of real time),
/// a leader's lease outlasts its voters' stickiness, a new leader commits
/// writes, and the old one serves a stale read from its lease; the
/// linearizability check catches it. Rare: these are the only two seeds
/// of 1-30,000 that produce one (the other 9,998 drifting seeds do not;
/// with factors 2, 4, 10 and 40, none of 1-10,000). They were found before
/// clerks deleted and swapped, which changes every seed's run, so they run
/// without (`--no-swaps`), and before servers deferred their applies in
/// the odd seeds, which changes those seeds' runs: they run without
/// (`--no-defer`; with deferral, none of 1-40,000 produces one). If a
/// change to chaos's draws moves them, find the new ones with `cargo run
/// --release -p driver-sim --bin chaos -- --seeds 10000 --reads lease
/// --drift-beyond 20 --no-swaps --no-defer`.
#[test]
fn drift_canary_stale_lease_read_is_caught() {
    let options = ChaosOptions::beyond_the_bound(20)
        .with_reads(Reads::Only(ReadSetup::Lease))
        .with_swaps(false)
        .with_defer(false);
    for seed in [3993, 8235] {
        let caught = failure(seed, options);
        assert!(
            caught
                .as_deref()
                .is_some_and(|why| why.starts_with("linearizability:")),
            "seed {seed} should serve a stale lease read that the linearizability check catches, got {caught:?}; replay: cargo run --release -p driver-sim --bin chaos -- --seed {seed} --drift-beyond 20 --reads lease --no-swaps --no-defer"
        );
    }
}

/// Only the seeds divisible by three drift: every other seed runs exactly
/// as with perfect clocks, and a drifting one does not.
#[test]
fn only_one_seed_in_three_drifts() {
    let run = |seed, options| {
        let r = run_seed_with(seed, options);
        (r.events, r.ops, r.acked, r.changes, r.mix.clocks.len())
    };
    for seed in 1..=30 {
        let drifting = run(seed, ChaosOptions::default());
        let perfect = run(seed, ChaosOptions::PERFECT_CLOCKS);
        if driver_sim::chaos::drifts(seed) {
            assert!(drifting.4 > 0, "seed {seed} drew no clocks");
            assert_ne!(drifting, perfect, "seed {seed}: drift changed nothing");
        } else {
            assert_eq!(
                drifting, perfect,
                "seed {seed} does not drift but ran otherwise"
            );
        }
    }
}
