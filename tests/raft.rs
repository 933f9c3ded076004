//! The MIT 6.5840 (Spring 2023) Raft lab suite, 2A–2D: 28 tests ported
//! scenario by scenario and bound by bound from `src/raft/test_test.go` (see
//! `../shared/lab-tests.md` §3), run on the deterministic simulator. Every
//! sleep and timeout is virtual. A failure prints `SIM_SEED=<n>`; rerunning
//! with that seed replays the identical run.

use driver_sim::run_test;

/// One `#[test]` per body of `lab_tests::raft`, on the simulator (`driver_sim::Cfg`), under
/// the seed from `SIM_SEED`.
macro_rules! lab_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_test(stringify!($name), lab_tests::raft::$name::<driver_sim::Cfg>);
            }
        )*
        /// The registry names exactly the tests above, in order.
        #[test]
        fn registry_matches_the_tests() {
            let names: Vec<&str> = lab_tests::raft::tests::<driver_sim::Cfg>().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, [$(stringify!($name)),*]);
        }
    };
}

lab_tests!(
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
