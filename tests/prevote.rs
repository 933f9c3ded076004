//! Pre-vote (Raft thesis §9.6) in simulated scenarios, on the seed from
//! `SIM_SEED` like the lab suites:
//!
//! - a follower cut off from a 5-node cluster for 5 s (long enough for its
//!   election timeout to pass about ten times), its log left behind by the
//!   commands committed meanwhile, then reconnected: with pre-vote it raises
//!   no term and the leader stays; without, it comes back with a higher term
//!   and deposes the leader (the figure is printed);
//! - the same with long reordering and an unreliable network;
//! - the whole Raft lab suite (28 tests) with pre-vote on in every node
//!   (`driver_sim::PreVoteCfg`): elections, re-elections after a leader is
//!   cut off (CheckQuorum with stickiness expiring), partitions, churn.

use std::time::Duration;

use driver_sim::{run_test, Cfg, PreVoteCfg};
use lab::RaftHarness;

/// The cut-off follower's story: the terms the cluster moved through while
/// it was away and after it came back, and whether the leader survived.
struct Rejoin {
    term_before: u64,
    term_after: u64,
    same_leader: bool,
}

async fn rejoin<H: RaftHarness>(name: &str, unreliable: bool) -> Rejoin {
    let n = 5;
    let cfg = H::new(n, unreliable, false);
    cfg.begin(name);
    if unreliable {
        cfg.set_long_reordering(true);
    }
    let leader = cfg.check_one_leader().await;
    cfg.one(101, n, true).await;
    let away = (leader + 1) % n;
    cfg.disconnect(away);
    for k in 0..10 {
        cfg.one(200 + k, n - 1, true).await;
    }
    H::sleep(Duration::from_secs(5)).await;
    let leader = cfg.check_one_leader().await;
    let term_before = cfg.check_terms();
    cfg.connect(away);
    cfg.one(301, n, true).await;
    H::sleep(Duration::from_secs(2)).await;
    cfg.one(302, n, true).await;
    let leader_after = cfg.check_one_leader().await;
    let term_after = cfg.check_terms();
    cfg.end();
    Rejoin {
        term_before,
        term_after,
        same_leader: leader_after == leader,
    }
}

#[test]
fn rejoining_follower_with_pre_vote_raises_no_term_5_nodes() {
    run_test(
        "rejoining_follower_with_pre_vote_raises_no_term_5_nodes",
        || async {
            let with = rejoin::<PreVoteCfg>("Test (pre-vote): a follower rejoins", false).await;
            assert_eq!(
                with.term_after, with.term_before,
                "with pre-vote the rejoining follower raised the term"
            );
            assert!(with.same_leader, "with pre-vote the leader was deposed");
            let without = rejoin::<Cfg>("Test (no pre-vote): a follower rejoins", false).await;
            assert!(
                without.term_after > without.term_before,
                "without pre-vote the rejoining follower comes back with a higher term"
            );
            println!(
                "  terms raised by the rejoining follower: {} with pre-vote, {} without (leader kept: {}, {})",
                with.term_after - with.term_before,
                without.term_after - without.term_before,
                with.same_leader,
                without.same_leader,
            );
        },
    );
}

#[test]
fn rejoining_follower_with_pre_vote_raises_no_term_unreliable_reordering() {
    run_test(
        "rejoining_follower_with_pre_vote_raises_no_term_unreliable_reordering",
        || async {
            let r = rejoin::<PreVoteCfg>(
                "Test (pre-vote): a follower rejoins, unreliable, long reordering",
                true,
            )
            .await;
            // Lost heartbeats may still let a follower's stickiness lapse and
            // an election happen; what pre-vote rules out is the rejoining
            // node's ten-odd timeouts each raising the term.
            assert!(
                r.term_after <= r.term_before + 2,
                "term went from {} to {} after the follower rejoined",
                r.term_before,
                r.term_after
            );
        },
    );
}

/// Every Raft lab test body, with pre-vote on in every node.
#[test]
fn raft_lab_suite_with_pre_vote() {
    for (name, body) in lab_tests::raft::tests::<PreVoteCfg>() {
        run_test(name, body);
    }
}
