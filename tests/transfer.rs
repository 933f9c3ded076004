//! Leadership transfer (issue 12 item 5) in a simulated scenario, on the
//! seed from `SIM_SEED` like the lab suites: a 5-node cluster with pre-vote
//! (as the KV service runs) under a steady client load, whose leadership is
//! handed to another server every second
//! (`SimCfg::transfer_leadership`). Each time the target must lead within an
//! election timeout (600 ms) of the request, in the next term (it skips
//! pre-vote, and nobody else stands), and commands must keep committing on
//! every server.

use std::time::Duration;

use driver_sim::{ms, now, run_test, sleep, spawn, Cmd, PreVoteCfg};
use lab::RaftHarness;
use raft_core::TransferOutcome;

/// The leader of the highest term among the servers, if any.
fn leader(cfg: &PreVoteCfg) -> Option<(usize, u64)> {
    (0..cfg.n())
        .map(|i| (i, cfg.get_state(i)))
        .filter(|(_, (_, leads))| *leads)
        .max_by_key(|(_, (term, _))| *term)
        .map(|(i, (term, _))| (i, term))
}

#[test]
fn leadership_moves_every_second_under_client_load_5_nodes() {
    run_test(
        "leadership_moves_every_second_under_client_load_5_nodes",
        || async {
            let n = 5;
            let cfg = PreVoteCfg::new(n, false, false);
            cfg.begin("Test (transfer): leadership moves every second under load");
            cfg.check_one_leader().await;
            let clients: Vec<_> = (0..2)
                .map(|c| {
                    let cfg = cfg.clone();
                    spawn(async move {
                        for k in 0..40 {
                            cfg.one(Cmd::Int(1000 * c + k), n, true).await;
                        }
                    })
                })
                .collect();
            let rounds = 8;
            let mut moved = 0;
            for round in 0..rounds {
                sleep(Duration::from_secs(1)).await;
                let (from, term) = leader(&cfg).expect("a leader between transfers");
                let to = (from + 1 + round % (n - 1)) % n;
                let outcomes = cfg.transfer_leadership(from, Some(to));
                assert_eq!(
                    outcomes.first(),
                    Some(&TransferOutcome::Started),
                    "round {round}: the leader {from} accepts a transfer to {to}"
                );
                let asked = now();
                loop {
                    if let Some((l, t)) = leader(&cfg) {
                        if l == to && t > term {
                            assert_eq!(t, term + 1, "round {round}: the target wins the next term");
                            break;
                        }
                    }
                    assert!(
                        now() - asked < ms(600),
                        "round {round}: {to} did not lead within an election timeout of the request"
                    );
                    sleep(ms(5)).await;
                }
                moved += 1;
                let index = cfg.one(Cmd::Int(100_000 + round as i64), n, true).await;
                assert!(index > 0);
            }
            for c in clients {
                c.await;
            }
            cfg.one(Cmd::Int(-1), n, true).await;
            println!(
                "  {moved} transfers, final term {}, {} RPCs",
                cfg.check_terms(),
                cfg.rpc_total()
            );
            cfg.end();
        },
    );
}
