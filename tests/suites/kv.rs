//! The MIT 6.5840 (Spring 2023) kvraft lab suite, 3A–3B: 23 tests ported
//! scenario by scenario and bound by bound from `src/kvraft/test_test.go` (see
//! `../shared/lab-tests.md` §4–§5), written once against
//! [`KvHarness`](lab::KvHarness) and run by every driver: on the
//! deterministic simulator (`tests/kv.rs`, where every sleep and timeout is
//! virtual and a failure prints `SIM_SEED=<n>`), on OS threads in real time
//! (`tests/threads.rs`, `threads_suite`), and with planted bugs
//! (`canaries.rs`). The linearizability check is stricter than the lab's
//! (running out of budget fails).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use lab::KvHarness;
use lab::KV_ELECTION_TIMEOUT as ELECTION_TIMEOUT;

/// `checkClntAppends`: every "x clnt j y" for j < count appears exactly once,
/// in order.
pub(crate) fn check_clnt_appends(clnt: usize, v: &str, count: usize) {
    let mut last: Option<usize> = None;
    for j in 0..count {
        let wanted = format!("x {clnt} {j} y");
        let off = v
            .find(&wanted)
            .unwrap_or_else(|| panic!("{clnt} missing element {wanted} in Append result {v}"));
        let off1 = v.rfind(&wanted).expect("found once already");
        assert_eq!(off1, off, "duplicate element {wanted} in Append result");
        assert!(
            last.is_none_or(|l| off > l),
            "wrong order for element {wanted} in Append result"
        );
        last = Some(off);
    }
}

/// `checkConcurrentAppends`: the same check for each client i with its count.
fn check_concurrent_appends(v: &str, counts: &[usize]) {
    for (i, &count) in counts.iter().enumerate() {
        check_clnt_appends(i, v, count);
    }
}

/// The Go `check`: a Get through `ck` returns `value`.
async fn check<H: KvHarness>(cfg: &H, ck: &H::Clerk, key: &str, value: &str) {
    let v = cfg.get(ck, key, 0).await;
    assert_eq!(v, value, "Get({key}): expected:\n{value}\nreceived:\n{v}");
}

/// Repeatedly partitions the servers at random, every 1–1.2 s.
async fn partitioner<H: KvHarness>(cfg: H, done: Rc<Cell<bool>>) {
    while !done.get() {
        let n = cfg.n();
        let side: Vec<u64> = (0..n).map(|_| cfg.rand_below(2)).collect();
        let pa: Vec<Vec<usize>> = (0..2)
            .map(|s| (0..n).filter(|&j| side[j] == s).collect())
            .collect();
        cfg.partition(&pa[0], &pa[1]);
        H::sleep(ELECTION_TIMEOUT + Duration::from_millis(cfg.rand_below(200))).await;
    }
}

/// One client of `GenericTest`: appends, puts (random keys only) and gets
/// until told to stop; checks every get when keys are its own. Returns the
/// number of appends and puts.
async fn run_client<H: KvHarness>(
    cfg: H,
    cli: usize,
    nclients: usize,
    randomkeys: bool,
    done: Rc<Cell<bool>>,
) -> usize {
    let myck = cfg.make_client(&cfg.all());
    let mut j = 0;
    let mut last = String::new();
    let own = cli.to_string();
    if !randomkeys {
        cfg.put(&myck, &own, &last, cli as u64).await;
    }
    while !done.get() {
        let key = if randomkeys {
            cfg.rand_below(nclients as u64).to_string()
        } else {
            own.clone()
        };
        let nv = format!("x {cli} {j} y");
        if cfg.rand_below(1000) < 500 {
            cfg.append(&myck, &key, &nv, cli as u64).await;
            if !randomkeys {
                last.push_str(&nv);
            }
            j += 1;
        } else if randomkeys && cfg.rand_below(1000) < 100 {
            cfg.put(&myck, &key, &nv, cli as u64).await;
            j += 1;
        } else {
            let v = cfg.get(&myck, &key, cli as u64).await;
            if !randomkeys {
                assert_eq!(
                    v, last,
                    "get wrong value, key {key}, wanted:\n{last}\n, got\n{v}\n"
                );
            }
        }
    }
    j
}

/// The lab's `GenericTest` (lab-tests.md §4.4).
#[allow(clippy::too_many_arguments)]
async fn generic_test<H: KvHarness>(
    part: &str,
    nclients: usize,
    nservers: usize,
    unreliable: bool,
    crash: bool,
    partitions: bool,
    maxraftstate: Option<usize>,
    randomkeys: bool,
) {
    let mut title = String::from("Test: ");
    if unreliable {
        title += "unreliable net, ";
    }
    if crash {
        title += "restarts, ";
    }
    if partitions {
        title += "partitions, ";
    }
    if maxraftstate.is_some() {
        title += "snapshots, ";
    }
    if randomkeys {
        title += "random keys, ";
    }
    title += if nclients > 1 {
        "many clients"
    } else {
        "one client"
    };
    title += &format!(" ({part})");

    let cfg = H::new(nservers, unreliable, maxraftstate);
    cfg.begin(&title);
    let ck = cfg.make_client(&cfg.all());
    for _ in 0..3 {
        let done_clients = Rc::new(Cell::new(false));
        let done_partitioner = Rc::new(Cell::new(false));
        let clients: Vec<_> = (0..nclients)
            .map(|cli| {
                H::spawn(run_client(
                    cfg.clone(),
                    cli,
                    nclients,
                    randomkeys,
                    done_clients.clone(),
                ))
            })
            .collect();
        let mut partitioner_task = None;
        if partitions {
            // Allow the clients to perform some operations without interruption.
            H::sleep(Duration::from_secs(1)).await;
            partitioner_task = Some(H::spawn(partitioner(cfg.clone(), done_partitioner.clone())));
        }
        H::sleep(Duration::from_secs(5)).await;
        done_clients.set(true); // tell clients to quit
        done_partitioner.set(true); // tell partitioner to quit
        if let Some(p) = partitioner_task {
            p.await;
            // Reconnect the network and submit a request. A client may have
            // submitted a request in a minority; that request won't return
            // until that server discovers a new term has started.
            cfg.connect_all();
            // Wait for a while so that we have a new term.
            H::sleep(ELECTION_TIMEOUT).await;
        }
        if crash {
            for i in 0..nservers {
                cfg.shutdown_server(i);
            }
            // Wait for a while for servers to shut down, since shutdown isn't
            // a real crash and isn't instantaneous.
            H::sleep(ELECTION_TIMEOUT).await;
            // Crash and re-start all.
            for i in 0..nservers {
                cfg.start_server(i);
            }
            cfg.connect_all();
        }
        for (i, client) in clients.into_iter().enumerate() {
            let j = client.await;
            let v = cfg.get(&ck, &i.to_string(), 0).await;
            if !randomkeys {
                check_clnt_appends(i, &v, j);
            }
        }
        match maxraftstate {
            Some(max) => {
                // Check that the logs were trimmed.
                let sz = cfg.log_size();
                assert!(sz <= 8 * max, "logs were not trimmed ({sz} > 8*{max})");
            }
            None => {
                // Check that snapshots are not used.
                let ssz = cfg.snapshot_size();
                assert!(
                    ssz == 0,
                    "snapshot too large ({ssz}), should not be used when maxraftstate = -1"
                );
            }
        }
    }
    cfg.check_linearizable();
    cfg.end();
}

/// The lab's `GenericTestSpeed`: 1000 sequential appends at most 33.3 ms
/// each on average.
async fn generic_test_speed<H: KvHarness>(part: &str, maxraftstate: Option<usize>) {
    let nservers = 3;
    let num_ops = 1000;
    let cfg = H::new(nservers, false, maxraftstate);
    let ck = cfg.make_client(&cfg.all());
    cfg.begin(&format!("Test: ops complete fast enough ({part})"));
    // Wait until the first op completes, so we know a leader is elected and
    // the servers are ready to process client requests.
    cfg.get(&ck, "x", 0).await;
    let start = H::now();
    for i in 0..num_ops {
        cfg.append(&ck, "x", &format!("x 0 {i} y"), 0).await;
    }
    let dur = H::now() - start;
    let v = cfg.get(&ck, "x", 0).await;
    check_clnt_appends(0, &v, num_ops);
    // Heartbeat interval should be ~100 ms; require at least 3 ops per.
    let time_per_op = Duration::from_millis(100) / 3;
    let per_op = dur / num_ops as u32;
    println!(
        "speed ({part}): {:.3} ms/op over {num_ops} appends (the harness's clock)",
        per_op.as_secs_f64() * 1e3
    );
    assert!(
        per_op <= time_per_op,
        "Operations completed too slowly {per_op:?}/op > {time_per_op:?}/op"
    );
    cfg.end();
}

// ---------------------------------------------------------------- 3A

pub async fn basic_3a<H: KvHarness>() {
    generic_test::<H>("3A", 1, 5, false, false, false, None, false).await
}

pub async fn speed_3a<H: KvHarness>() {
    generic_test_speed::<H>("3A", None).await
}

pub async fn concurrent_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, false, false, false, None, false).await
}

pub async fn unreliable_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, true, false, false, None, false).await
}

pub async fn unreliable_one_key_3a<H: KvHarness>() {
    let nservers = 3;
    let cfg = H::new(nservers, true, None);
    let ck = cfg.make_client(&cfg.all());
    cfg.begin("Test: concurrent append to same key, unreliable (3A)");
    cfg.put(&ck, "k", "", 0).await;
    let nclient = 5;
    let upto = 10;
    let clients: Vec<_> = (0..nclient)
        .map(|me| {
            let cfg = cfg.clone();
            H::spawn(async move {
                let myck = cfg.make_client(&cfg.all());
                for n in 0..upto {
                    cfg.append(&myck, "k", &format!("x {me} {n} y"), me as u64)
                        .await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await;
    }
    let counts = vec![upto; nclient];
    let vx = cfg.get(&ck, "k", 0).await;
    check_concurrent_appends(&vx, &counts);
    cfg.end();
}

pub async fn one_partition_3a<H: KvHarness>() {
    let nservers = 5;
    let cfg = H::new(nservers, false, None);
    let ck = cfg.make_client(&cfg.all());
    cfg.put(&ck, "1", "13", 0).await;

    cfg.begin("Test: progress in majority (3A)");
    let (p1, p2) = cfg.make_partition();
    cfg.partition(&p1, &p2);
    let ckp1 = cfg.make_client(&p1); // connect ckp1 to p1
    let ckp2a = cfg.make_client(&p2); // connect ckp2a to p2
    let ckp2b = cfg.make_client(&p2); // connect ckp2b to p2
    cfg.put(&ckp1, "1", "14", 1).await;
    check(&cfg, &ckp1, "1", "14").await;
    cfg.end();

    cfg.begin("Test: no progress in minority (3A)");
    let done0 = {
        let (cfg, ck) = (cfg.clone(), ckp2a.clone());
        H::spawn(async move { cfg.put(&ck, "1", "15", 2).await })
    };
    let done1 = {
        let (cfg, ck) = (cfg.clone(), ckp2b.clone());
        H::spawn(async move { cfg.get(&ck, "1", 3).await })
    };
    H::sleep(Duration::from_secs(1)).await;
    assert!(!done0.is_finished(), "Put in minority completed");
    assert!(!done1.is_finished(), "Get in minority completed");
    check(&cfg, &ckp1, "1", "14").await;
    cfg.put(&ckp1, "1", "16", 1).await;
    check(&cfg, &ckp1, "1", "16").await;
    cfg.end();

    cfg.begin("Test: completion after heal (3A)");
    cfg.connect_all();
    cfg.connect_client(&ckp2a, &cfg.all());
    cfg.connect_client(&ckp2b, &cfg.all());
    H::sleep(ELECTION_TIMEOUT).await;
    let put_done = H::timeout(Duration::from_millis(30 * 100), done0).await;
    assert!(put_done.is_some(), "Put did not complete");
    // The Go test checks the Get without waiting for it.
    check(&cfg, &ck, "1", "15").await;
    cfg.end();
}

pub async fn many_partitions_one_client_3a<H: KvHarness>() {
    generic_test::<H>("3A", 1, 5, false, false, true, None, false).await
}

pub async fn many_partitions_many_clients_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, false, false, true, None, false).await
}

pub async fn persist_one_client_3a<H: KvHarness>() {
    generic_test::<H>("3A", 1, 5, false, true, false, None, false).await
}

pub async fn persist_concurrent_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, false, true, false, None, false).await
}

pub async fn persist_concurrent_unreliable_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, true, true, false, None, false).await
}

pub async fn persist_partition_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, false, true, true, None, false).await
}

pub async fn persist_partition_unreliable_3a<H: KvHarness>() {
    generic_test::<H>("3A", 5, 5, true, true, true, None, false).await
}

pub async fn persist_partition_unreliable_linearizable_3a<H: KvHarness>() {
    generic_test::<H>("3A", 15, 7, true, true, true, None, true).await
}

// ---------------------------------------------------------------- 3B

pub async fn snapshot_rpc_3b<H: KvHarness>() {
    let nservers = 3;
    let maxraftstate = 1000;
    let cfg = H::new(nservers, false, Some(maxraftstate));
    let ck = cfg.make_client(&cfg.all());
    cfg.begin("Test: InstallSnapshot RPC (3B)");
    cfg.put(&ck, "a", "A", 0).await;
    check(&cfg, &ck, "a", "A").await;
    // A bunch of puts into the majority partition.
    cfg.partition(&[0, 1], &[2]);
    {
        let ck1 = cfg.make_client(&[0, 1]);
        for i in 0..50 {
            cfg.put(&ck1, &i.to_string(), &i.to_string(), 1).await;
        }
        H::sleep(ELECTION_TIMEOUT).await;
        cfg.put(&ck1, "b", "B", 1).await;
    }
    // Check that the majority partition has thrown away most of its log
    // entries.
    let sz = cfg.log_size();
    assert!(
        sz <= 8 * maxraftstate,
        "logs were not trimmed ({sz} > 8*{maxraftstate})"
    );
    // Now make a group that requires participation of the lagging server,
    // so that it has to catch up.
    cfg.partition(&[0, 2], &[1]);
    {
        let ck1 = cfg.make_client(&[0, 2]);
        cfg.put(&ck1, "c", "C", 2).await;
        cfg.put(&ck1, "d", "D", 2).await;
        check(&cfg, &ck1, "a", "A").await;
        check(&cfg, &ck1, "b", "B").await;
        check(&cfg, &ck1, "1", "1").await;
        check(&cfg, &ck1, "49", "49").await;
    }
    // Now everybody.
    cfg.partition(&[0, 1, 2], &[]);
    cfg.put(&ck, "e", "E", 0).await;
    check(&cfg, &ck, "c", "C").await;
    check(&cfg, &ck, "e", "E").await;
    check(&cfg, &ck, "1", "1").await;
    cfg.end();
}

pub async fn snapshot_size_3b<H: KvHarness>() {
    let nservers = 3;
    let maxraftstate = 1000;
    let maxsnapshotstate = 500;
    let cfg = H::new(nservers, false, Some(maxraftstate));
    let ck = cfg.make_client(&cfg.all());
    cfg.begin("Test: snapshot size is reasonable (3B)");
    for _ in 0..200 {
        cfg.put(&ck, "x", "0", 0).await;
        check(&cfg, &ck, "x", "0").await;
        cfg.put(&ck, "x", "1", 0).await;
        check(&cfg, &ck, "x", "1").await;
    }
    // Check that servers have thrown away most of their log entries.
    let sz = cfg.log_size();
    assert!(
        sz <= 8 * maxraftstate,
        "logs were not trimmed ({sz} > 8*{maxraftstate})"
    );
    // Check that the snapshots are not unreasonably large.
    let ssz = cfg.snapshot_size();
    assert!(
        ssz <= maxsnapshotstate,
        "snapshot too large ({ssz} > {maxsnapshotstate})"
    );
    println!(
        "snapshot_size_3b: log_size {sz} bytes (bound 8000), snapshot_size {ssz} bytes (bound 500)"
    );
    cfg.end();
}

pub async fn speed_3b<H: KvHarness>() {
    generic_test_speed::<H>("3B", Some(1000)).await
}

pub async fn snapshot_recover_3b<H: KvHarness>() {
    generic_test::<H>("3B", 1, 5, false, true, false, Some(1000), false).await
}

pub async fn snapshot_recover_many_clients_3b<H: KvHarness>() {
    generic_test::<H>("3B", 20, 5, false, true, false, Some(1000), false).await
}

pub async fn snapshot_unreliable_3b<H: KvHarness>() {
    generic_test::<H>("3B", 5, 5, true, false, false, Some(1000), false).await
}

pub async fn snapshot_unreliable_recover_3b<H: KvHarness>() {
    generic_test::<H>("3B", 5, 5, true, true, false, Some(1000), false).await
}

pub async fn snapshot_unreliable_recover_concurrent_partition_3b<H: KvHarness>() {
    generic_test::<H>("3B", 5, 5, true, true, true, Some(1000), false).await
}

pub async fn snapshot_unreliable_recover_concurrent_partition_linearizable_3b<H: KvHarness>() {
    generic_test::<H>("3B", 15, 7, true, true, true, Some(1000), true).await
}

/// Every test of this suite, by name, in the lab's order, for harness `H`.
pub fn tests<H: KvHarness>() -> Vec<(&'static str, crate::Body)> {
    vec![
        ("basic_3a", || Box::pin(basic_3a::<H>())),
        ("speed_3a", || Box::pin(speed_3a::<H>())),
        ("concurrent_3a", || Box::pin(concurrent_3a::<H>())),
        ("unreliable_3a", || Box::pin(unreliable_3a::<H>())),
        ("unreliable_one_key_3a", || {
            Box::pin(unreliable_one_key_3a::<H>())
        }),
        ("one_partition_3a", || Box::pin(one_partition_3a::<H>())),
        ("many_partitions_one_client_3a", || {
            Box::pin(many_partitions_one_client_3a::<H>())
        }),
        ("many_partitions_many_clients_3a", || {
            Box::pin(many_partitions_many_clients_3a::<H>())
        }),
        ("persist_one_client_3a", || {
            Box::pin(persist_one_client_3a::<H>())
        }),
        ("persist_concurrent_3a", || {
            Box::pin(persist_concurrent_3a::<H>())
        }),
        ("persist_concurrent_unreliable_3a", || {
            Box::pin(persist_concurrent_unreliable_3a::<H>())
        }),
        ("persist_partition_3a", || {
            Box::pin(persist_partition_3a::<H>())
        }),
        ("persist_partition_unreliable_3a", || {
            Box::pin(persist_partition_unreliable_3a::<H>())
        }),
        ("persist_partition_unreliable_linearizable_3a", || {
            Box::pin(persist_partition_unreliable_linearizable_3a::<H>())
        }),
        ("snapshot_rpc_3b", || Box::pin(snapshot_rpc_3b::<H>())),
        ("snapshot_size_3b", || Box::pin(snapshot_size_3b::<H>())),
        ("speed_3b", || Box::pin(speed_3b::<H>())),
        ("snapshot_recover_3b", || {
            Box::pin(snapshot_recover_3b::<H>())
        }),
        ("snapshot_recover_many_clients_3b", || {
            Box::pin(snapshot_recover_many_clients_3b::<H>())
        }),
        ("snapshot_unreliable_3b", || {
            Box::pin(snapshot_unreliable_3b::<H>())
        }),
        ("snapshot_unreliable_recover_3b", || {
            Box::pin(snapshot_unreliable_recover_3b::<H>())
        }),
        (
            "snapshot_unreliable_recover_concurrent_partition_3b",
            || Box::pin(snapshot_unreliable_recover_concurrent_partition_3b::<H>()),
        ),
        (
            "snapshot_unreliable_recover_concurrent_partition_linearizable_3b",
            || Box::pin(snapshot_unreliable_recover_concurrent_partition_linearizable_3b::<H>()),
        ),
    ]
}
