//! Read scenarios (issue 13) in the lab style, on the simulator's KV
//! harness: Gets are served by ReadIndex (no log entry), from the leader or
//! forwarded by a follower. The clerks' whole history is checked for
//! linearizability at the end of each test, as in the lab suites.
//!
//! Each body is run by `tests/reads.rs` under the seed from `SIM_SEED`, and
//! hunted with each planted bug by `tests/canaries.rs`.

use std::time::Duration;

use driver_sim::{sleep, spawn, KvCfg};
use lab::{KvHarness, Links};

/// A leader cut off from the others never answers a read, however long it
/// goes on believing it leads: it cannot get a round confirmed. Its clock
/// is slowed (ReadIndex rests on no clock) so that it keeps believing for
/// seconds, while the majority elects another leader and overwrites the
/// key; a read served from the old leader's state would be stale.
pub async fn partitioned_leader_never_answers_reads() {
    let cfg = KvCfg::new(5, false, None);
    cfg.begin("Test (reads): a partitioned leader never answers a read");
    let ck = cfg.make_client(&cfg.all());
    cfg.put(&ck, "k", "v1", 0).await;
    let old = loop {
        if let Some(l) = cfg.leader() {
            break l;
        }
        sleep(Duration::from_millis(10)).await;
    };
    // A clerk that reaches only the old leader: its first Get opens its
    // session through the log, the second is a ReadIndex read (a confirmed
    // round the old leader remembers).
    let stale = cfg.make_client(&[old]);
    assert_eq!(cfg.get(&stale, "k", 1).await, "v1");
    assert_eq!(cfg.get(&stale, "k", 1).await, "v1");
    // A tenth of real speed: its CheckQuorum waits ten election timeouts.
    cfg.set_clock_rate(old, 100_000);
    let others: Vec<usize> = cfg.all().into_iter().filter(|&i| i != old).collect();
    cfg.partition(&[old], &others);
    let fresh = cfg.make_client(&others);
    cfg.put(&fresh, "k", "v2", 2).await;
    let read = {
        let (cfg, stale) = (cfg.clone(), stale.clone());
        spawn(async move { cfg.get(&stale, "k", 1).await })
    };
    sleep(Duration::from_secs(1)).await;
    assert!(
        !read.is_finished(),
        "a partitioned leader answered a read (it could only have been stale)"
    );
    cfg.end();
}

/// A read at a follower is forwarded to the leader and served once the
/// follower has applied through the read index: a clerk that reaches only
/// a follower reads every write acknowledged before it asks.
pub async fn follower_reads_see_every_acknowledged_write() {
    let cfg = KvCfg::new(3, true, None);
    cfg.set_follower_reads(true);
    cfg.begin("Test (reads): follower reads see every acknowledged write");
    let ck = cfg.make_client(&cfg.all());
    cfg.put(&ck, "k", "0", 0).await;
    let leader = loop {
        if let Some(l) = cfg.leader() {
            break l;
        }
        sleep(Duration::from_millis(10)).await;
    };
    let follower = cfg
        .all()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    // The reader's first request goes through the log (it opens its
    // session), so it reaches the leader; then it reaches only the follower.
    let reader = cfg.make_client(&cfg.all());
    cfg.put(&reader, "r", "opened", 1).await;
    cfg.connect_client(&reader, &[follower]);
    for i in 1..=20 {
        cfg.put(&ck, "k", &i.to_string(), 0).await;
        assert_eq!(cfg.get(&reader, "k", 1).await, i.to_string());
    }
    cfg.end();
}

/// The registry of this suite's tests, by name.
pub fn tests() -> Vec<(&'static str, crate::Body)> {
    vec![
        ("partitioned_leader_never_answers_reads", || {
            Box::pin(partitioned_leader_never_answers_reads())
        }),
        ("follower_reads_see_every_acknowledged_write", || {
            Box::pin(follower_reads_see_every_acknowledged_write())
        }),
    ]
}
