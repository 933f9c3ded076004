//! Membership change scenarios (issue 12) in the lab style, on the
//! simulator, under the seed from `SIM_SEED` like the lab suites: rolling
//! replacement of every server of a 3- and a 5-server cluster under load,
//! removing the leader under load, partitions during joint changes,
//! learners never counted, and one change at a time; and the rolling
//! replacement of every server of a 3- and a 5-server KV cluster through the
//! service's administrative requests, on an unreliable network with
//! snapshots, while clients run (linearizable, every acknowledged write
//! present). The bodies are `lab_tests::membership`'s.

use driver_sim::run_test;

macro_rules! membership_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_test(stringify!($name), lab_tests::membership::$name);
            }
        )*
        /// The registry names exactly the tests above, in order.
        #[test]
        fn registry_matches_the_tests() {
            let names: Vec<&str> = lab_tests::membership::tests().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, [$(stringify!($name)),*]);
        }
    };
}

membership_tests!(
    rolling_replacement_3_nodes,
    rolling_replacement_5_nodes,
    remove_leader_under_load,
    partitions_during_joint_change,
    learners_never_counted,
    one_change_at_a_time,
    kv_rolling_replacement_3_nodes,
    kv_rolling_replacement_5_nodes,
);
