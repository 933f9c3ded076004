//! Clocks that drift (issue 13 item 4), in simulated scenarios on the seed
//! from `SIM_SEED` like the lab suites. Every node reads its own clock
//! (`driver_sim::clock`): a rate drawn within ±5% (`ClockDrift::CHAOS`) and
//! an epoch of its own; it is stepped with its local time and its timers
//! fire by it. Nothing in Raft's safety rests on clocks, so under drift
//! within the bound (and beyond it) the cluster must stay safe (the safety
//! checker runs after every step) and live (the lab's `one()`):
//!
//! - a 5-node cluster elects a leader and commits through a cut-off leader,
//!   a crash and restart of every node (whose local time never goes
//!   backwards), and an unreliable network;
//! - the same cluster after two clocks are set beyond the bound mid-run;
//! - a 5-server KV cluster with drifting clocks through partitions, its
//!   history linearizable;
//! - the whole Raft lab suite (28 tests, `lab_suite_with_drift::*`) with
//!   every clock drifting (`driver_sim::DriftCfg`);
//! - the same seed with drift replays identically, and differs from the run
//!   with perfect clocks (which equals the lab harness's own run).

use driver_sim::clock::PERFECT_PPM;
use driver_sim::{ms, run_test, sleep, ClockDrift, DriftCfg, KvCfg, SimCfg};
use lab::{KvHarness, Links, RaftHarness};

/// The bound the scenarios draw within.
const BOUND: ClockDrift = ClockDrift::CHAOS;

/// Checks the clocks were drawn within `bound` and do drift, and returns
/// their rates (ppm).
fn rates_within(cfg: &DriftCfg, n: usize, bound: ClockDrift) -> Vec<u64> {
    let rates: Vec<u64> = (0..n).map(|i| cfg.clock(i).rate_ppm()).collect();
    assert!(
        rates.iter().all(|&r| bound.allows(r)),
        "a clock rate outside ±{} ppm: {rates:?}",
        bound.max_ppm
    );
    assert!(
        rates.iter().any(|&r| r != PERFECT_PPM),
        "no clock drifts: {rates:?}"
    );
    rates
}

/// Elections, commits, a cut-off leader, every node crashed and restarted,
/// an unreliable network: on a 5-node cluster whose clocks drift.
async fn drifting_cluster(cfg: &DriftCfg, n: usize) {
    let leader = cfg.check_one_leader().await;
    cfg.one(101, n, true).await;
    // The leader is cut off: the others, on their own clocks, elect
    // another and commit without it.
    cfg.disconnect(leader);
    cfg.one(102, n - 1, true).await;
    cfg.connect(leader);
    cfg.one(103, n, true).await;
    // A restarted node keeps its machine's clock, which ran on meanwhile.
    for i in 0..n {
        let before = cfg.local_now(i);
        cfg.crash1(i);
        sleep(ms(300)).await;
        let down = cfg.local_now(i);
        assert!(
            down > before,
            "server {i}'s clock stopped while it was down"
        );
        cfg.start1(i);
        cfg.connect(i);
        assert!(
            cfg.local_now(i) >= down,
            "server {i}'s clock went back on restart"
        );
        cfg.one(200 + i as i64, n, true).await;
    }
    cfg.set_unreliable(true);
    for k in 0..20 {
        cfg.one(300 + k, 1, true).await;
    }
    cfg.set_unreliable(false);
    cfg.one(400, n, true).await;
    cfg.check_one_leader().await;
}

#[test]
fn five_nodes_with_drifting_clocks_elect_and_commit() {
    run_test(
        "five_nodes_with_drifting_clocks_elect_and_commit",
        || async {
            let n = 5;
            let cfg = DriftCfg::new(n, false, false);
            let rates = rates_within(&cfg, n, BOUND);
            cfg.begin("Test (drift): 5 nodes, clocks within ±5%");
            drifting_cluster(&cfg, n).await;
            let skew: Vec<i128> = (0..n)
                .map(|i| {
                    let local = cfg.local_now(i).as_nanos() as i128;
                    (local - driver_sim::now().as_nanos() as i128) / 1_000_000
                })
                .collect();
            cfg.end();
            println!("  clock rates {rates:?} ppm; local minus global time at the end {skew:?} ms");
        },
    );
}

/// Rates beyond the bound break the assumption a lease will rest on, not
/// any Raft safety property: with no lease in the core, the cluster stays
/// safe and live. (A lease canary sets them the same way.)
#[test]
fn clocks_set_beyond_the_bound_mid_run_keep_the_cluster_safe() {
    run_test(
        "clocks_set_beyond_the_bound_mid_run_keep_the_cluster_safe",
        || async {
            let n = 5;
            let cfg = DriftCfg::new(n, false, false);
            cfg.begin("Test (drift): 5 nodes, two clocks beyond the bound");
            let leader = cfg.check_one_leader().await;
            cfg.one(1, n, true).await;
            let follower = (leader + 1) % n;
            let (fast, slow) = driver_sim::executor::with_rng(|r| loop {
                let a = BOUND.draw_rate_beyond(4, r);
                let b = BOUND.draw_rate_beyond(4, r);
                if a > PERFECT_PPM && b < PERFECT_PPM {
                    break (a, b);
                }
            });
            // The leader's clock slow (its heartbeats late), a follower's
            // fast (its election timeout early): the pairing a lease fears.
            let (l0, f0) = (cfg.local_now(leader), cfg.local_now(follower));
            cfg.set_clock_rate(leader, slow);
            cfg.set_clock_rate(follower, fast);
            assert_eq!(cfg.local_now(leader), l0, "a rate change moved the clock");
            assert_eq!(cfg.local_now(follower), f0, "a rate change moved the clock");
            assert!(!BOUND.allows(slow) && !BOUND.allows(fast));
            drifting_cluster(&cfg, n).await;
            assert!(cfg.local_now(leader) > l0 && cfg.local_now(follower) > f0);
            cfg.end();
        },
    );
}

#[test]
fn kv_cluster_with_drifting_clocks_stays_linearizable() {
    run_test(
        "kv_cluster_with_drifting_clocks_stays_linearizable",
        || async {
            let n = 5;
            let cfg = KvCfg::with_drift(n, true, Some(1000), BOUND);
            let rates: Vec<u64> = (0..n).map(|i| cfg.clock(i).rate_ppm()).collect();
            assert!(rates.iter().all(|&r| BOUND.allows(r)), "{rates:?}");
            assert!(rates.iter().any(|&r| r != PERFECT_PPM), "{rates:?}");
            cfg.begin(
                "Test (drift): KV, 5 servers, clocks within ±5%, unreliable, partitions, snapshots",
            );
            let ck = cfg.make_client(&cfg.all());
            let mut expected = String::new();
            for round in 0..6 {
                for k in 0..5 {
                    let v = format!("{round}.{k};");
                    cfg.append(&ck, "k", &v, 0).await;
                    expected += &v;
                }
                let (majority, minority) = cfg.make_partition();
                cfg.partition(&majority, &minority);
                cfg.connect_client(&ck, &majority);
                sleep(ms(500)).await;
                assert_eq!(cfg.get(&ck, "k", 0).await, expected);
                cfg.connect_all();
                cfg.connect_client(&ck, &cfg.all());
                if round % 2 == 1 {
                    let i = cfg.rand_below(n as u64) as usize;
                    cfg.shutdown_server(i);
                    sleep(ms(200)).await;
                    cfg.start_server(i);
                    cfg.connect_all();
                }
            }
            cfg.set_unreliable(false);
            assert_eq!(cfg.get(&ck, "k", 0).await, expected);
            cfg.check_linearizable();
            cfg.end();
        },
    );
}

/// Runs a short unreliable scenario with crashes and returns its trace hash
/// and virtual end time.
async fn traced<const D: u64>(cfg: SimCfg<false, D>) -> (u64, u64) {
    let n = cfg.n();
    cfg.set_long_reordering(true);
    for round in 0..6u64 {
        cfg.one(round as i64, 1, true).await;
        let victim = cfg.rand_below(n as u64) as usize;
        cfg.crash1(victim);
        sleep(ms(200 + cfg.rand_below(300))).await;
        cfg.start1(victim);
        cfg.connect(victim);
    }
    cfg.set_unreliable(false);
    cfg.one(-1, n, true).await;
    (cfg.trace_hash(), driver_sim::now().as_nanos())
}

#[test]
fn drifting_runs_replay_identically_and_perfect_clocks_are_the_lab_run() {
    let seed = driver_sim::seed_from_env();
    let drift = |s| driver_sim::run(s, async { traced(DriftCfg::new(5, true, false)).await });
    let none = |s| {
        driver_sim::run(s, async {
            traced(driver_sim::Cfg::with_drift(
                5,
                true,
                false,
                ClockDrift::NONE,
            ))
            .await
        })
    };
    let lab = |s| {
        driver_sim::run(s, async {
            traced(driver_sim::Cfg::new(5, true, false)).await
        })
    };
    let a = drift(seed);
    assert_eq!(
        a,
        drift(seed),
        "SIM_SEED={seed}: two drifting runs diverged"
    );
    assert_eq!(
        none(seed),
        lab(seed),
        "SIM_SEED={seed}: a bound of zero changed the run"
    );
    assert_ne!(a, lab(seed), "SIM_SEED={seed}: drift changed nothing");
}

/// One `#[test]` per body of `lab_tests::raft`, on [`DriftCfg`], named
/// `lab_suite_with_drift::<test>` so that a failure's replay command
/// (`--exact lab_suite_with_drift::<test>`) runs this one and not the lab's.
///
/// Known failures, of raft-core and not of drift: on seeds 3 and 196 of
/// 1–500, `snapshot_install_unreliable_2d` trips "acknowledged entries
/// kept". A follower in term T answers a delayed InstallSnapshot of term
/// T-1 with `InstallSnapshotReply { term: T, last_included_index }` (the
/// stale-term reply echoes the index), which reads as an acknowledgement
/// through that index in term T although the follower holds less; a leader
/// of T that sent the old request in T-1 would count it toward a commit.
/// The lab's own `snapshot_install_unreliable_2d` fails the same way on
/// seeds 571 and 952 with perfect clocks.
macro_rules! lab_suite_with_drift {
    ($($name:ident),* $(,)?) => {
        /// The Raft lab suite with every clock drifting within ±5%.
        mod lab_suite_with_drift {
            $(
                #[test]
                fn $name() {
                    driver_sim::run_test(
                        concat!("lab_suite_with_drift::", stringify!($name)),
                        lab_tests::raft::$name::<driver_sim::DriftCfg>,
                    );
                }
            )*
            /// The registry names exactly the tests above, in order.
            #[test]
            fn registry_matches_the_tests() {
                let names: Vec<&str> = lab_tests::raft::tests::<driver_sim::DriftCfg>()
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                assert_eq!(names, [$(stringify!($name)),*]);
            }
        }
    };
}

lab_suite_with_drift!(
    initial_election_2a,
    re_election_2a,
    many_elections_2a,
    basic_agree_2b,
    rpc_bytes_2b,
    follower_failure_2b,
    leader_failure_2b,
    fail_agree_2b,
    fail_no_agree_2b,
    concurrent_starts_2b,
    rejoin_2b,
    backup_2b,
    count_2b,
    persist1_2c,
    persist2_2c,
    persist3_2c,
    figure8_2c,
    unreliable_agree_2c,
    figure8_unreliable_2c,
    reliable_churn_2c,
    unreliable_churn_2c,
    snapshot_basic_2d,
    snapshot_install_2d,
    snapshot_install_unreliable_2d,
    snapshot_install_crash_2d,
    snapshot_install_un_crash_2d,
    snapshot_all_crash_2d,
    snapshot_init_2d,
);
