//! Streamed-snapshot scenarios (issue 14) on the simulator, under the seed
//! from `SIM_SEED` like the lab suites: a follower cut off while the others
//! snapshot gets no transfer until it answers, then catches up with one or
//! a few, on a reliable and an unreliable network. The bodies are
//! `lab_tests::snapshots`'.

use driver_sim::run_test;

macro_rules! snapshot_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_test(stringify!($name), lab_tests::snapshots::$name);
            }
        )*
        /// The registry names exactly the tests above, in order.
        #[test]
        fn registry_matches_the_tests() {
            let names: Vec<&str> = lab_tests::snapshots::tests().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, [$(stringify!($name)),*]);
        }
    };
}

snapshot_tests!(cut_off_follower_reliable, cut_off_follower_unreliable);
