//! Read scenarios (issue 13) in the lab style, on the simulator's KV
//! harness: Gets are served by ReadIndex (no log entry), from the leader or
//! forwarded by a follower. The clerks' whole history is checked for
//! linearizability at the end of each test, as in the lab suites.
//!
//! Each body is run by `tests/reads.rs` under the seed from `SIM_SEED`, and
//! hunted with each planted bug by `tests/canaries.rs`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use driver_sim::{ms, now, sleep, spawn, ClockDrift, KvCfg, SimClerk};
use kv_core::{AdminReply, AdminRequest, MemberAddrs, ReadPolicy};
use lab::{KvHarness, Links};

async fn leader_of(cfg: &KvCfg) -> usize {
    loop {
        if let Some(l) = cfg.leader() {
            return l;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

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
    let old = leader_of(&cfg).await;
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
    let leader = leader_of(&cfg).await;
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
        let got = cfg.get(&reader, "k", 1).await;
        assert_eq!(
            got,
            i.to_string(),
            "stale read: missed an acknowledged write"
        );
    }
    cfg.end();
}

/// Lease reads on a leader cut off from the others stop before the others
/// can elect a leader and commit, with clocks at the edge of the bound the
/// lease assumes (5%): the old leader's runs 5% slow, the others' 5% fast.
/// A clerk that reaches only the old leader reads as fast as it can while
/// the others elect a leader and overwrite the key; every read it got
/// answered must fit the history (checked for linearizability at the end),
/// and once the lease has run out it gets no answer at all.
pub async fn lease_reads_on_a_cut_off_leader_stop_in_time() {
    let cfg = KvCfg::with_reads(5, false, None, ClockDrift::CHAOS, ReadPolicy::Lease);
    cfg.begin("Test (reads): lease reads on a cut-off leader stop in time");
    let ck = cfg.make_client(&cfg.all());
    cfg.put(&ck, "k", "v1", 0).await;
    let old = leader_of(&cfg).await;
    for i in cfg.all() {
        cfg.set_clock_rate(i, if i == old { 950_000 } else { 1_050_000 });
    }
    let stale = cfg.make_client(&[old]);
    assert_eq!(cfg.get(&stale, "k", 1).await, "v1");
    assert_eq!(cfg.get(&stale, "k", 1).await, "v1");
    let others: Vec<usize> = cfg.all().into_iter().filter(|&i| i != old).collect();
    cfg.partition(&[old], &others);
    let cut_at = now();
    let answered = Rc::new(Cell::new(0u32));
    let last_answer = Rc::new(Cell::new(cut_at));
    // Kept to the end: the reader runs as long as the test.
    let _reader = {
        let (cfg, stale) = (cfg.clone(), stale.clone());
        let (answered, last_answer) = (answered.clone(), last_answer.clone());
        spawn(async move {
            loop {
                assert_eq!(cfg.get(&stale, "k", 1).await, "v1");
                answered.set(answered.get() + 1);
                last_answer.set(now());
            }
        })
    };
    let fresh = cfg.make_client(&others);
    cfg.put(&fresh, "k", "v2", 2).await;
    let overwritten = now();
    sleep(Duration::from_secs(1)).await;
    assert!(
        answered.get() > 0,
        "the old leader served lease reads after the cut (the lease was used)"
    );
    let lease = last_answer.get() - cut_at;
    assert!(
        last_answer.get() < overwritten && lease < Duration::from_millis(300),
        "the last lease read was answered {lease:?} after the cut, before the overwrite ({:?} after)",
        overwritten - cut_at
    );
    cfg.check_linearizable();
    cfg.end();
}

/// A client that reads and writes keys of its own and reads the others',
/// checking its own key on every read, until told to stop.
async fn read_heavy_client(cfg: KvCfg, ck: SimClerk, cli: u64, done: Rc<Cell<bool>>) {
    let own = format!("c{cli}");
    let mut last = String::new();
    cfg.put(&ck, &own, "", cli).await;
    let mut n = 0;
    while !done.get() {
        match cfg.rand_below(10) {
            0..2 => {
                n += 1;
                last = format!("{cli}.{n}");
                cfg.put(&ck, &own, &last, cli).await;
            }
            2..6 => assert_eq!(
                cfg.get(&ck, &own, cli).await,
                last,
                "client {cli}'s own key"
            ),
            _ => {
                let other = format!("c{}", cfg.rand_below(4));
                cfg.get(&ck, &other, cli).await;
            }
        }
    }
}

/// Reads (at the leader and, with follower reads, at followers) while the
/// membership changes and leadership moves: four clients read and write
/// while a server is replaced (a learner added, caught up, promoted, an old
/// voter removed) and leadership is handed over a few times, on an
/// unreliable network. Every client sees its own writes; the history is
/// linearizable.
async fn reads_during_replacement_and_transfers(policy: ReadPolicy) {
    let cfg = KvCfg::with_reads(3, true, None, ClockDrift::CHAOS, policy);
    cfg.set_follower_reads(true);
    cfg.begin(&format!(
        "Test (reads): {policy:?} reads during a replacement and leader transfers"
    ));
    let admin = cfg.make_client(&cfg.all());
    let done = Rc::new(Cell::new(false));
    let clients: Vec<_> = (0..4)
        .map(|cli| {
            let ck = cfg.make_client(&cfg.all());
            spawn(read_heavy_client(cfg.clone(), ck, cli, done.clone()))
        })
        .collect();
    sleep(ms(500)).await;
    for _ in 0..3 {
        let reply = cfg
            .admin(&admin, AdminRequest::TransferLeader { to: None })
            .await;
        assert!(
            matches!(reply, AdminReply::Done | AdminReply::Refused(_)),
            "a transfer is answered: {reply:?}"
        );
        sleep(ms(300 + cfg.rand_below(400))).await;
    }
    let old = cfg.rand_below(3) as usize;
    cfg.replace_server(&admin, old).await;
    for _ in 0..2 {
        cfg.admin(&admin, AdminRequest::TransferLeader { to: None })
            .await;
        sleep(ms(300 + cfg.rand_below(400))).await;
    }
    done.set(true);
    for c in clients {
        c.await;
    }
    cfg.check_linearizable();
    cfg.end();
}

pub async fn read_index_reads_during_replacement_and_transfers() {
    reads_during_replacement_and_transfers(ReadPolicy::ReadIndex).await;
}

pub async fn lease_reads_during_replacement_and_transfers() {
    reads_during_replacement_and_transfers(ReadPolicy::Lease).await;
}

/// A learner serves reads too (forwarded to the leader, answered once it
/// has applied through the read index): a clerk that reaches only a new
/// learner reads every write acknowledged before it asks.
pub async fn learner_reads_see_every_acknowledged_write() {
    let cfg = KvCfg::new(3, false, None);
    cfg.set_follower_reads(true);
    cfg.begin("Test (reads): learner reads see every acknowledged write");
    let ck = cfg.make_client(&cfg.all());
    cfg.put(&ck, "k", "0", 0).await;
    let learner = cfg.add_server();
    let addrs = MemberAddrs {
        peer: format!("sim-peer-{learner}"),
        client: format!("sim-client-{learner}"),
    };
    let node = learner as u64;
    cfg.admin_done(&ck, AdminRequest::AddLearner { node, addrs })
        .await;
    cfg.wait_caught_up(&ck, learner).await;
    // The reader opens its session through the log at the leader, then
    // reaches only the learner.
    let reader = cfg.make_client(&cfg.all());
    cfg.put(&reader, "r", "opened", 1).await;
    cfg.connect_client(&reader, &[learner]);
    let started = now();
    for i in 1..=20 {
        cfg.put(&ck, "k", &i.to_string(), 0).await;
        let got = cfg.get(&reader, "k", 1).await;
        assert_eq!(
            got,
            i.to_string(),
            "stale read: missed an acknowledged write"
        );
    }
    // Each read waits at most for the learner to hear of the commit (a
    // heartbeat interval): no read waits for a clerk's retry.
    let took = now() - started;
    assert!(
        took < Duration::from_secs(5),
        "20 writes and learner reads took {took:?}"
    );
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
        ("lease_reads_on_a_cut_off_leader_stop_in_time", || {
            Box::pin(lease_reads_on_a_cut_off_leader_stop_in_time())
        }),
        ("read_index_reads_during_replacement_and_transfers", || {
            Box::pin(read_index_reads_during_replacement_and_transfers())
        }),
        ("lease_reads_during_replacement_and_transfers", || {
            Box::pin(lease_reads_during_replacement_and_transfers())
        }),
        ("learner_reads_see_every_acknowledged_write", || {
            Box::pin(learner_reads_see_every_acknowledged_write())
        }),
    ]
}
