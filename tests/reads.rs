//! Read scenarios (issue 13) in the lab style, on the simulator, under the
//! seed from `SIM_SEED` like the lab suites: a partitioned leader never
//! answers a read, and follower reads see every acknowledged write. The
//! bodies are `lab_tests::reads`'s.

use driver_sim::run_test;

macro_rules! read_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_test(stringify!($name), lab_tests::reads::$name);
            }
        )*
        /// The registry names exactly the tests above, in order.
        #[test]
        fn registry_matches_the_tests() {
            let names: Vec<&str> = lab_tests::reads::tests().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, [$(stringify!($name)),*]);
        }
    };
}

read_tests!(
    partitioned_leader_never_answers_reads,
    follower_reads_see_every_acknowledged_write,
    lease_reads_on_a_cut_off_leader_stop_in_time,
    read_index_reads_during_replacement_and_transfers,
    lease_reads_during_replacement_and_transfers,
    learner_reads_see_every_acknowledged_write,
);

/// The bare-node read scenarios (`lab_tests::core_reads`): deterministic,
/// seedless.
mod core_reads {
    use driver_sim::run_test;

    macro_rules! core_read_tests {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    run_test(stringify!($name), lab_tests::core_reads::$name);
                }
            )*
            /// The registry names exactly the tests above, in order.
            #[test]
            fn registry_matches_the_tests() {
                let names: Vec<&str> =
                    lab_tests::core_reads::tests().iter().map(|(n, _)| *n).collect();
                assert_eq!(names, [$(stringify!($name)),*]);
            }
        };
    }

    core_read_tests!(
        read_waits_for_the_new_leaders_own_term_commit,
        lease_read_waits_for_the_new_leaders_own_term_commit,
        delayed_round_replies_never_confirm_a_later_read,
        lease_reads_stop_before_a_new_leader_can_be_elected,
        lease_reads_need_sticky_votes,
    );
}
