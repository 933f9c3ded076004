//! The MIT 6.5840 (Spring 2023) kvraft lab suite, 3A–3B: 23 tests ported
//! scenario by scenario and bound by bound from `src/kvraft/test_test.go` (see
//! `../shared/lab-tests.md` §4–§5), run on the deterministic simulator. Every
//! sleep and timeout is virtual; the linearizability check is stricter than
//! the lab's (running out of budget fails). A failure prints `SIM_SEED=<n>`.

use driver_sim::run_test;

/// One `#[test]` per body of `lab_tests::kv`, on the simulator (`driver_sim::KvCfg`), under
/// the seed from `SIM_SEED`.
macro_rules! lab_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_test(stringify!($name), lab_tests::kv::$name::<driver_sim::KvCfg>);
            }
        )*
        /// The registry names exactly the tests above, in order.
        #[test]
        fn registry_matches_the_tests() {
            let names: Vec<&str> = lab_tests::kv::tests::<driver_sim::KvCfg>().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, [$(stringify!($name)),*]);
        }
    };
}

lab_tests!(
    basic_3a,
    speed_3a,
    concurrent_3a,
    unreliable_3a,
    unreliable_one_key_3a,
    one_partition_3a,
    many_partitions_one_client_3a,
    many_partitions_many_clients_3a,
    persist_one_client_3a,
    persist_concurrent_3a,
    persist_concurrent_unreliable_3a,
    persist_partition_3a,
    persist_partition_unreliable_3a,
    persist_partition_unreliable_linearizable_3a,
    snapshot_rpc_3b,
    snapshot_size_3b,
    speed_3b,
    snapshot_recover_3b,
    snapshot_recover_many_clients_3b,
    snapshot_unreliable_3b,
    snapshot_unreliable_recover_3b,
    snapshot_unreliable_recover_concurrent_partition_3b,
    snapshot_unreliable_recover_concurrent_partition_linearizable_3b,
);
