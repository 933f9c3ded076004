//! The MIT 6.5840 (Spring 2023) Raft lab suite, 2A–2D: 28 tests ported
//! scenario by scenario and bound by bound from `src/raft/test_test.go` (see
//! `../shared/lab-tests.md` §3), written once against
//! [`RaftHarness`](lab::RaftHarness) and run by every driver: on
//! the deterministic simulator (`tests/raft.rs`, where every sleep and
//! timeout is virtual and a failure prints `SIM_SEED=<n>`, which replays the
//! identical run), on OS threads in real time (`tests/threads.rs`,
//! `threads_suite`), and with planted bugs (`canaries.rs`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::rand_string;
use lab::RaftHarness;
use lab::{ms, Cmd, RAFT_ELECTION_TIMEOUT as RET};

const SNAPSHOT_INTERVAL: u64 = 10;
const MAX_LOG_SIZE: usize = 2000;

fn int(v: i64) -> Cmd {
    Cmd::Int(v)
}

// ---------------------------------------------------------------- 2A

pub async fn initial_election_2a<H: RaftHarness>() {
    let cfg = H::new(3, false, false);
    cfg.begin("Test (2A): initial election");
    cfg.check_one_leader().await;
    // Sleep a bit to avoid racing with followers learning of the election.
    H::sleep(ms(50)).await;
    let term1 = cfg.check_terms();
    assert!(term1 >= 1, "term is {term1}, but should be at least 1");
    // Does the leader stay the leader if there is no network failure?
    H::sleep(2 * RET).await;
    let term2 = cfg.check_terms();
    if term1 != term2 {
        println!("warning: term changed even though there were no failures");
    }
    cfg.check_one_leader().await;
    cfg.end();
}

pub async fn re_election_2a<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2A): election after network failure");
    let leader1 = cfg.check_one_leader().await;
    // If the leader disconnects, a new one should be elected.
    cfg.disconnect(leader1);
    cfg.check_one_leader().await;
    // If the old leader rejoins, that shouldn't disturb the new leader,
    // and the old leader should switch to follower.
    cfg.connect(leader1);
    let leader2 = cfg.check_one_leader().await;
    // If there's no quorum, no new leader should be elected.
    cfg.disconnect(leader2);
    cfg.disconnect((leader2 + 1) % n);
    H::sleep(2 * RET).await;
    // Check that the one connected server does not think it is the leader.
    cfg.check_no_leader();
    // If a quorum arises, it should elect a leader.
    cfg.connect((leader2 + 1) % n);
    cfg.check_one_leader().await;
    // Re-join of the last node shouldn't prevent a leader from existing.
    cfg.connect(leader2);
    cfg.check_one_leader().await;
    cfg.end();
}

pub async fn many_elections_2a<H: RaftHarness>() {
    let n = 7;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2A): multiple elections");
    cfg.check_one_leader().await;
    for _ in 1..10 {
        // Disconnect three nodes (possibly the same one more than once).
        let i1 = cfg.rand_below(n as u64) as usize;
        let i2 = cfg.rand_below(n as u64) as usize;
        let i3 = cfg.rand_below(n as u64) as usize;
        cfg.disconnect(i1);
        cfg.disconnect(i2);
        cfg.disconnect(i3);
        // Either the current leader should still be alive, or the
        // remaining four should elect a new one.
        cfg.check_one_leader().await;
        cfg.connect(i1);
        cfg.connect(i2);
        cfg.connect(i3);
    }
    cfg.check_one_leader().await;
    cfg.end();
}

// ---------------------------------------------------------------- 2B

pub async fn basic_agree_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): basic agreement");
    for index in 1..=3u64 {
        let (nd, _) = cfg.n_committed(index);
        assert!(nd == 0, "some have committed before Start()");
        let xindex = cfg.one(int(index as i64 * 100), n, false).await;
        assert_eq!(xindex, index, "got index {xindex} but expected {index}");
    }
    cfg.end();
}

pub async fn rpc_bytes_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): RPC byte count");
    cfg.one(int(99), n, false).await;
    let bytes0 = cfg.bytes_total();
    let iters = 10;
    let mut sent = 0u64;
    for index in 2..iters + 2 {
        let cmd = rand_string::<H>(5000);
        sent += cmd.len() as u64;
        let xindex = cfg.one(Cmd::Str(cmd), n, false).await;
        assert_eq!(xindex, index, "got index {xindex} but expected {index}");
    }
    let got = cfg.bytes_total() - bytes0;
    let expected = n as u64 * sent;
    assert!(
        got <= expected + 50_000,
        "too many RPC bytes; got {got}, expected {expected}"
    );
    cfg.end();
}

pub async fn follower_failure_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): test progressive failure of followers");
    cfg.one(int(101), n, false).await;
    // Disconnect one follower from the network.
    let leader1 = cfg.check_one_leader().await;
    cfg.disconnect((leader1 + 1) % n);
    // The leader and remaining follower should be able to agree despite
    // the disconnected follower.
    cfg.one(int(102), n - 1, false).await;
    H::sleep(RET).await;
    cfg.one(int(103), n - 1, false).await;
    // Disconnect the remaining follower.
    let leader2 = cfg.check_one_leader().await;
    cfg.disconnect((leader2 + 1) % n);
    cfg.disconnect((leader2 + 2) % n);
    // Submit a command.
    let (index, _) = cfg
        .start(leader2, int(104))
        .expect("leader rejected Start()");
    assert_eq!(index, 4, "expected index 4, got {index}");
    H::sleep(2 * RET).await;
    // Check that the command did not commit.
    let (nd, _) = cfg.n_committed(index);
    assert!(nd == 0, "{nd} committed but no majority");
    cfg.end();
}

pub async fn leader_failure_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): test failure of leaders");
    cfg.one(int(101), n, false).await;
    // Disconnect the first leader.
    let leader1 = cfg.check_one_leader().await;
    cfg.disconnect(leader1);
    // The remaining followers should elect a new leader.
    cfg.one(int(102), n - 1, false).await;
    H::sleep(RET).await;
    cfg.one(int(103), n - 1, false).await;
    // Disconnect the new leader.
    let leader2 = cfg.check_one_leader().await;
    cfg.disconnect(leader2);
    // Submit a command to each server.
    for i in 0..n {
        let _ = cfg.start(i, int(104));
    }
    H::sleep(2 * RET).await;
    // Check that the command did not commit.
    let (nd, _) = cfg.n_committed(4);
    assert!(nd == 0, "{nd} committed but no majority");
    cfg.end();
}

pub async fn fail_agree_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): agreement after follower reconnects");
    cfg.one(int(101), n, false).await;
    // Disconnect one follower from the network.
    let leader = cfg.check_one_leader().await;
    cfg.disconnect((leader + 1) % n);
    // The leader and remaining follower should be able to agree.
    cfg.one(int(102), n - 1, false).await;
    cfg.one(int(103), n - 1, false).await;
    H::sleep(RET).await;
    cfg.one(int(104), n - 1, false).await;
    cfg.one(int(105), n - 1, false).await;
    // Re-connect; the full set of servers should preserve previous
    // agreements, and be able to agree on new commands.
    cfg.connect((leader + 1) % n);
    cfg.one(int(106), n, true).await;
    H::sleep(RET).await;
    cfg.one(int(107), n, true).await;
    cfg.end();
}

pub async fn fail_no_agree_2b<H: RaftHarness>() {
    let n = 5;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): no agreement if too many followers disconnect");
    cfg.one(int(10), n, false).await;
    // Three of five followers disconnect.
    let leader = cfg.check_one_leader().await;
    cfg.disconnect((leader + 1) % n);
    cfg.disconnect((leader + 2) % n);
    cfg.disconnect((leader + 3) % n);
    let (index, _) = cfg.start(leader, int(20)).expect("leader rejected Start()");
    assert_eq!(index, 2, "expected index 2, got {index}");
    H::sleep(2 * RET).await;
    let (nd, _) = cfg.n_committed(index);
    assert!(nd == 0, "{nd} committed but no majority");
    // Repair.
    cfg.connect((leader + 1) % n);
    cfg.connect((leader + 2) % n);
    cfg.connect((leader + 3) % n);
    // The disconnected majority may have chosen a leader from among their
    // own ranks, forgetting index 2.
    let leader2 = cfg.check_one_leader().await;
    let (index2, _) = cfg
        .start(leader2, int(30))
        .expect("leader2 rejected Start()");
    assert!((2..=3).contains(&index2), "unexpected index {index2}");
    cfg.one(int(1000), n, true).await;
    cfg.end();
}

pub async fn concurrent_starts_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): concurrent Start()s");
    let mut success = false;
    'attempt: for attempt in 0..5 {
        if attempt > 0 {
            // Give the solution some time to settle.
            H::sleep(Duration::from_secs(3)).await;
        }
        let leader = cfg.check_one_leader().await;
        let Some((_, term)) = cfg.start(leader, int(1)) else {
            continue; // leader moved on really quickly
        };
        let iters = 5;
        let mut handles = Vec::new();
        for ii in 0..iters {
            let cfg = cfg.clone();
            handles.push(H::spawn(async move {
                match cfg.start(leader, int(100 + ii)) {
                    Some((i, term1)) if term1 == term => Some(i),
                    _ => None,
                }
            }));
        }
        let mut indices = Vec::new();
        for h in handles {
            if let Some(i) = h.await {
                indices.push(i);
            }
        }
        for j in 0..n {
            if cfg.get_state(j).0 != term {
                continue 'attempt; // term changed: can't expect low RPC counts
            }
        }
        let mut cmds = Vec::new();
        for index in indices {
            match cfg.wait(index, n, Some(term)).await {
                // Peers have moved on to later terms, so we can't expect
                // all Start()s to have succeeded.
                None => continue 'attempt,
                Some(Cmd::Int(ix)) => cmds.push(ix),
                Some(other) => panic!("value {other} is not an int"),
            }
        }
        for ii in 0..iters {
            let x = 100 + ii;
            assert!(cmds.contains(&x), "cmd {x} missing in {cmds:?}");
        }
        success = true;
        break;
    }
    assert!(success, "term changed too often");
    cfg.end();
}

pub async fn rejoin_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): rejoin of partitioned leader");
    cfg.one(int(101), n, true).await;
    // Leader network failure.
    let leader1 = cfg.check_one_leader().await;
    cfg.disconnect(leader1);
    // Make the old leader try to agree on some entries.
    let _ = cfg.start(leader1, int(102));
    let _ = cfg.start(leader1, int(103));
    let _ = cfg.start(leader1, int(104));
    // The new leader commits, also for index 2.
    cfg.one(int(103), 2, true).await;
    // New leader network failure.
    let leader2 = cfg.check_one_leader().await;
    cfg.disconnect(leader2);
    // Old leader connected again.
    cfg.connect(leader1);
    cfg.one(int(104), 2, true).await;
    // All together now.
    cfg.connect(leader2);
    cfg.one(int(105), n, true).await;
    cfg.end();
}

pub async fn backup_2b<H: RaftHarness>() {
    let n = 5;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): leader backs up quickly over incorrect follower logs");
    cfg.one(int(cfg.rand_int()), n, true).await;
    // Put the leader and one follower in a partition.
    let leader1 = cfg.check_one_leader().await;
    cfg.disconnect((leader1 + 2) % n);
    cfg.disconnect((leader1 + 3) % n);
    cfg.disconnect((leader1 + 4) % n);
    // Submit lots of commands that won't commit.
    for _ in 0..50 {
        let _ = cfg.start(leader1, int(cfg.rand_int()));
    }
    H::sleep(RET / 2).await;
    cfg.disconnect(leader1 % n);
    cfg.disconnect((leader1 + 1) % n);
    // Allow the other partition to recover.
    cfg.connect((leader1 + 2) % n);
    cfg.connect((leader1 + 3) % n);
    cfg.connect((leader1 + 4) % n);
    // Lots of successful commands to the new group.
    for _ in 0..50 {
        cfg.one(int(cfg.rand_int()), 3, true).await;
    }
    // Now another partitioned leader and one follower.
    let leader2 = cfg.check_one_leader().await;
    let mut other = (leader1 + 2) % n;
    if leader2 == other {
        other = (leader2 + 1) % n;
    }
    cfg.disconnect(other);
    // Lots more commands that won't commit.
    for _ in 0..50 {
        let _ = cfg.start(leader2, int(cfg.rand_int()));
    }
    H::sleep(RET / 2).await;
    // Bring the original leader back to life.
    for i in 0..n {
        cfg.disconnect(i);
    }
    cfg.connect(leader1 % n);
    cfg.connect((leader1 + 1) % n);
    cfg.connect(other);
    // Lots of successful commands to the new group.
    for _ in 0..50 {
        cfg.one(int(cfg.rand_int()), 3, true).await;
    }
    // Now everyone.
    for i in 0..n {
        cfg.connect(i);
    }
    cfg.one(int(cfg.rand_int()), n, true).await;
    cfg.end();
}

pub async fn count_2b<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2B): RPC counts aren't too high");
    let rpcs = |cfg: &H| (0..n).map(|j| cfg.rpc_count(j)).sum::<u64>();
    cfg.check_one_leader().await;
    let total1 = rpcs(&cfg);
    assert!(
        (1..=30).contains(&total1),
        "too many or few RPCs ({total1}) to elect initial leader"
    );
    let mut total2 = 0;
    let mut success = false;
    'attempt: for attempt in 0..5 {
        if attempt > 0 {
            H::sleep(Duration::from_secs(3)).await;
        }
        let leader = cfg.check_one_leader().await;
        let total1 = rpcs(&cfg);
        let iters = 10;
        let Some((starti, term)) = cfg.start(leader, int(1)) else {
            continue; // leader moved on really quickly
        };
        let mut cmds = Vec::new();
        for i in 1..iters + 2 {
            let x = cfg.rand_int();
            cmds.push(x);
            match cfg.start(leader, int(x)) {
                Some((index1, term1)) if term1 == term => {
                    assert_eq!(starti + i, index1, "Start() failed");
                }
                _ => continue 'attempt, // term changed while starting
            }
        }
        for i in 1..iters + 1 {
            match cfg.wait(starti + i, n, Some(term)).await {
                None => continue 'attempt, // term changed: try again
                Some(cmd) => assert_eq!(
                    cmd,
                    int(cmds[(i - 1) as usize]),
                    "wrong value {cmd} committed for index {}; expected {}",
                    starti + i,
                    cmds[(i - 1) as usize]
                ),
            }
        }
        let mut failed = false;
        total2 = 0;
        for j in 0..n {
            if cfg.get_state(j).0 != term {
                // Term changed: can't expect low RPC counts; need to keep
                // going to update total2.
                failed = true;
            }
            total2 += cfg.rpc_count(j);
        }
        if failed {
            continue;
        }
        assert!(
            total2 - total1 <= (iters + 1 + 3) * 3,
            "too many RPCs ({}) for {iters} entries",
            total2 - total1
        );
        success = true;
        break;
    }
    assert!(success, "term changed too often");
    H::sleep(RET).await;
    let total3 = rpcs(&cfg);
    assert!(
        total3 - total2 <= 3 * 20,
        "too many RPCs ({}) for 1 second of idleness",
        total3 - total2
    );
    cfg.end();
}

// ---------------------------------------------------------------- 2C

pub async fn persist1_2c<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2C): basic persistence");
    cfg.one(int(11), n, true).await;
    // Crash and re-start all.
    for i in 0..n {
        cfg.start1(i);
    }
    for i in 0..n {
        cfg.disconnect(i);
        cfg.connect(i);
    }
    cfg.one(int(12), n, true).await;
    let leader1 = cfg.check_one_leader().await;
    cfg.disconnect(leader1);
    cfg.start1(leader1);
    cfg.connect(leader1);
    cfg.one(int(13), n, true).await;
    let leader2 = cfg.check_one_leader().await;
    cfg.disconnect(leader2);
    cfg.one(int(14), n - 1, true).await;
    cfg.start1(leader2);
    cfg.connect(leader2);
    cfg.wait(4, n, None).await; // wait for leader2 to join before killing i3
    let i3 = (cfg.check_one_leader().await + 1) % n;
    cfg.disconnect(i3);
    cfg.one(int(15), n - 1, true).await;
    cfg.start1(i3);
    cfg.connect(i3);
    cfg.one(int(16), n, true).await;
    cfg.end();
}

pub async fn persist2_2c<H: RaftHarness>() {
    let n = 5;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2C): more persistence");
    let mut index = 1;
    for _ in 0..5 {
        cfg.one(int(10 + index), n, true).await;
        index += 1;
        let leader1 = cfg.check_one_leader().await;
        cfg.disconnect((leader1 + 1) % n);
        cfg.disconnect((leader1 + 2) % n);
        cfg.one(int(10 + index), n - 2, true).await;
        index += 1;
        cfg.disconnect(leader1 % n);
        cfg.disconnect((leader1 + 3) % n);
        cfg.disconnect((leader1 + 4) % n);
        cfg.start1((leader1 + 1) % n);
        cfg.start1((leader1 + 2) % n);
        cfg.connect((leader1 + 1) % n);
        cfg.connect((leader1 + 2) % n);
        H::sleep(RET).await;
        cfg.start1((leader1 + 3) % n);
        cfg.connect((leader1 + 3) % n);
        cfg.one(int(10 + index), n - 2, true).await;
        index += 1;
        cfg.connect((leader1 + 4) % n);
        cfg.connect(leader1 % n);
    }
    cfg.one(int(1000), n, true).await;
    cfg.end();
}

pub async fn persist3_2c<H: RaftHarness>() {
    let n = 3;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2C): partitioned leader and one follower crash, leader restarts");
    cfg.one(int(101), 3, true).await;
    let leader = cfg.check_one_leader().await;
    cfg.disconnect((leader + 2) % n);
    cfg.one(int(102), 2, true).await;
    cfg.crash1(leader % n);
    cfg.crash1((leader + 1) % n);
    cfg.connect((leader + 2) % n);
    cfg.start1(leader % n);
    cfg.connect(leader % n);
    cfg.one(int(103), 2, true).await;
    cfg.start1((leader + 1) % n);
    cfg.connect((leader + 1) % n);
    cfg.one(int(104), n, true).await;
    cfg.end();
}

/// Figure 8's sleep: 10% of the time up to half an election timeout,
/// otherwise up to 12 ms.
async fn figure8_sleep<H: RaftHarness>(cfg: &H) {
    if cfg.rand_below(1000) < 100 {
        H::sleep(ms(cfg.rand_below(RET.as_millis() as u64 / 2))).await;
    } else {
        H::sleep(ms(cfg.rand_below(13))).await;
    }
}

pub async fn figure8_2c<H: RaftHarness>() {
    let n = 5;
    let cfg = H::new(n, false, false);
    cfg.begin("Test (2C): Figure 8");
    cfg.one(int(cfg.rand_int()), 1, true).await;
    let mut nup = n;
    for _ in 0..1000 {
        let mut leader = None;
        for i in 0..n {
            if cfg.is_alive(i) && cfg.start(i, int(cfg.rand_int())).is_some() {
                leader = Some(i);
            }
        }
        figure8_sleep(&cfg).await;
        if let Some(leader) = leader {
            cfg.crash1(leader);
            nup -= 1;
        }
        if nup < 3 {
            let s = cfg.rand_below(n as u64) as usize;
            if !cfg.is_alive(s) {
                cfg.start1(s);
                cfg.connect(s);
                nup += 1;
            }
        }
    }
    for i in 0..n {
        if !cfg.is_alive(i) {
            cfg.start1(i);
            cfg.connect(i);
        }
    }
    cfg.one(int(cfg.rand_int()), n, true).await;
    cfg.end();
}

pub async fn unreliable_agree_2c<H: RaftHarness>() {
    let n = 5;
    let cfg = H::new(n, true, false);
    cfg.begin("Test (2C): unreliable agreement");
    let mut handles = Vec::new();
    for iters in 1..50i64 {
        for j in 0..4i64 {
            let cfg = cfg.clone();
            handles.push(H::spawn(async move {
                cfg.one(int(100 * iters + j), 1, true).await;
            }));
        }
        cfg.one(int(iters), 1, true).await;
    }
    cfg.set_unreliable(false);
    for h in handles {
        h.await;
    }
    cfg.one(int(100), n, true).await;
    cfg.end();
}

pub async fn figure8_unreliable_2c<H: RaftHarness>() {
    let n = 5;
    let cfg = H::new(n, true, false);
    cfg.begin("Test (2C): Figure 8 (unreliable)");
    cfg.one(int(cfg.rand_int() % 10000), 1, true).await;
    let mut nup = n;
    for iters in 0..1000 {
        if iters == 200 {
            cfg.set_long_reordering(true);
        }
        let mut leader = None;
        for i in 0..n {
            if cfg.start(i, int(cfg.rand_int() % 10000)).is_some() && cfg.is_connected(i) {
                leader = Some(i);
            }
        }
        figure8_sleep(&cfg).await;
        if let Some(leader) = leader {
            if cfg.rand_below(1000) < RET.as_millis() as u64 / 2 {
                cfg.disconnect(leader);
                nup -= 1;
            }
        }
        if nup < 3 {
            let s = cfg.rand_below(n as u64) as usize;
            if !cfg.is_connected(s) {
                cfg.connect(s);
                nup += 1;
            }
        }
    }
    for i in 0..n {
        if !cfg.is_connected(i) {
            cfg.connect(i);
        }
    }
    cfg.one(int(cfg.rand_int() % 10000), n, true).await;
    cfg.end();
}

async fn internal_churn<H: RaftHarness>(unreliable: bool) {
    let n = 5;
    let cfg = H::new(n, unreliable, false);
    cfg.begin(if unreliable {
        "Test (2C): unreliable churn"
    } else {
        "Test (2C): churn"
    });
    let stop = Rc::new(Cell::new(false));
    // A client submits commands to every server and remembers those it saw
    // committed.
    let client = |me: u64, cfg: H, stop: Rc<Cell<bool>>| async move {
        let mut ret = Vec::new();
        while !stop.get() {
            let x = cfg.rand_int();
            let mut index = None;
            for i in 0..cfg.n() {
                if let Some((index1, _)) = cfg.start(i, int(x)) {
                    index = Some(index1);
                }
            }
            if let Some(index) = index {
                // Maybe leader will commit our value, maybe not. But don't
                // wait forever.
                for to in [10, 20, 50, 100, 200] {
                    let (nd, cmd) = cfg.n_committed(index);
                    if nd > 0 {
                        match cmd {
                            Some(Cmd::Int(xx)) if xx == x => ret.push(xx),
                            Some(Cmd::Int(_)) => {}
                            other => panic!("wrong command type {other:?}"),
                        }
                        break;
                    }
                    H::sleep(ms(to)).await;
                }
            } else {
                H::sleep(ms(79 + me * 17)).await;
            }
        }
        ret
    };
    let handles: Vec<_> = (0..3)
        .map(|me| H::spawn(client(me, cfg.clone(), stop.clone())))
        .collect();
    for _ in 0..20 {
        if cfg.rand_below(1000) < 200 {
            let i = cfg.rand_below(n as u64) as usize;
            cfg.disconnect(i);
        }
        if cfg.rand_below(1000) < 500 {
            let i = cfg.rand_below(n as u64) as usize;
            if !cfg.is_alive(i) {
                cfg.start1(i);
            }
            cfg.connect(i);
        }
        if cfg.rand_below(1000) < 200 {
            let i = cfg.rand_below(n as u64) as usize;
            if cfg.is_alive(i) {
                cfg.crash1(i);
            }
        }
        // Make crash/restart infrequent enough that the peers can often keep
        // up, but not so infrequent that everything has settled down from one
        // change to the next. Pick a value smaller than the election timeout,
        // but not hugely smaller.
        H::sleep(RET * 7 / 10).await;
    }
    H::sleep(RET).await;
    cfg.set_unreliable(false);
    for i in 0..n {
        if !cfg.is_alive(i) {
            cfg.start1(i);
        }
        cfg.connect(i);
    }
    stop.set(true);
    let mut values = Vec::new();
    for h in handles {
        let vv = h.await;
        assert!(!vv.is_empty(), "client failed");
        values.extend(vv);
    }
    H::sleep(RET).await;
    let last_index = cfg.one(int(cfg.rand_int()), n, true).await;
    let mut really = Vec::new();
    for index in 1..=last_index {
        match cfg.wait(index, n, None).await {
            Some(Cmd::Int(v)) => really.push(v),
            other => panic!("not an int: {other:?}"),
        }
    }
    for v1 in values {
        assert!(really.contains(&v1), "didn't find a value");
    }
    cfg.end();
}

pub async fn reliable_churn_2c<H: RaftHarness>() {
    internal_churn::<H>(false).await
}

pub async fn unreliable_churn_2c<H: RaftHarness>() {
    internal_churn::<H>(true).await
}

// ---------------------------------------------------------------- 2D

async fn snapcommon<H: RaftHarness>(name: &str, disconnect: bool, reliable: bool, crash: bool) {
    let iters = 30;
    let servers = 3;
    let cfg = H::new(servers, !reliable, true);
    cfg.begin(name);
    cfg.one(int(cfg.rand_int()), servers, true).await;
    let mut leader1 = cfg.check_one_leader().await;
    for i in 0..iters {
        let mut victim = (leader1 + 1) % servers;
        let mut sender = leader1;
        if i % 3 == 1 {
            sender = (leader1 + 1) % servers;
            victim = leader1;
        }
        if disconnect {
            cfg.disconnect(victim);
            cfg.one(int(cfg.rand_int()), servers - 1, true).await;
        }
        if crash {
            cfg.crash1(victim);
            cfg.one(int(cfg.rand_int()), servers - 1, true).await;
        }
        // Perhaps send enough to get a snapshot.
        let nn = SNAPSHOT_INTERVAL / 2 + cfg.rand_below(SNAPSHOT_INTERVAL);
        for _ in 0..nn {
            let _ = cfg.start(sender, int(cfg.rand_int()));
        }
        // Let applier threads catch up with the Start()'s.
        if !disconnect && !crash {
            // Make sure all followers have caught up, so that an
            // InstallSnapshot RPC isn't required for TestSnapshotBasic2D().
            cfg.one(int(cfg.rand_int()), servers, true).await;
        } else {
            cfg.one(int(cfg.rand_int()), servers - 1, true).await;
        }
        let size = cfg.log_size();
        assert!(size < MAX_LOG_SIZE, "Log size too large: {size}");
        if disconnect {
            // Reconnect a follower, who maybe behind and needs to receive a
            // snapshot to catch up.
            cfg.connect(victim);
            cfg.one(int(cfg.rand_int()), servers, true).await;
            leader1 = cfg.check_one_leader().await;
        }
        if crash {
            cfg.start1(victim);
            cfg.connect(victim);
            cfg.one(int(cfg.rand_int()), servers, true).await;
            leader1 = cfg.check_one_leader().await;
        }
    }
    cfg.end();
}

pub async fn snapshot_basic_2d<H: RaftHarness>() {
    snapcommon::<H>("Test (2D): snapshots basic", false, true, false).await
}

pub async fn snapshot_install_2d<H: RaftHarness>() {
    snapcommon::<H>(
        "Test (2D): install snapshots (disconnect)",
        true,
        true,
        false,
    )
    .await
}

pub async fn snapshot_install_unreliable_2d<H: RaftHarness>() {
    snapcommon::<H>(
        "Test (2D): install snapshots (disconnect+unreliable)",
        true,
        false,
        false,
    )
    .await
}

pub async fn snapshot_install_crash_2d<H: RaftHarness>() {
    snapcommon::<H>("Test (2D): install snapshots (crash)", false, true, true).await
}

pub async fn snapshot_install_un_crash_2d<H: RaftHarness>() {
    snapcommon::<H>(
        "Test (2D): install snapshots (unreliable+crash)",
        false,
        false,
        true,
    )
    .await
}

pub async fn snapshot_all_crash_2d<H: RaftHarness>() {
    let servers = 3;
    let iters = 5;
    let cfg = H::new(servers, false, true);
    cfg.begin("Test (2D): crash and restart all servers");
    cfg.one(int(cfg.rand_int()), servers, true).await;
    for _ in 0..iters {
        // Perhaps enough to get a snapshot.
        let nn = SNAPSHOT_INTERVAL / 2 + cfg.rand_below(SNAPSHOT_INTERVAL);
        for _ in 0..nn {
            cfg.one(int(cfg.rand_int()), servers, true).await;
        }
        let index1 = cfg.one(int(cfg.rand_int()), servers, true).await;
        // Crash all.
        for i in 0..servers {
            cfg.crash1(i);
        }
        // Revive all.
        for i in 0..servers {
            cfg.start1(i);
            cfg.connect(i);
        }
        let index2 = cfg.one(int(cfg.rand_int()), servers, true).await;
        assert!(index2 > index1, "index decreased from {index1} to {index2}");
    }
    cfg.end();
}

pub async fn snapshot_init_2d<H: RaftHarness>() {
    let servers = 3;
    let cfg = H::new(servers, false, true);
    cfg.begin("Test (2D): snapshot initialization after crash");
    cfg.one(int(cfg.rand_int()), servers, true).await;
    // Enough ops to make a snapshot.
    let nn = SNAPSHOT_INTERVAL + 1;
    for _ in 0..nn {
        cfg.one(int(cfg.rand_int()), servers, true).await;
    }
    // Crash all, then revive all.
    for i in 0..servers {
        cfg.crash1(i);
    }
    for i in 0..servers {
        cfg.start1(i);
        cfg.connect(i);
    }
    // A single op, to get something to be written back to persistent
    // storage.
    cfg.one(int(cfg.rand_int()), servers, true).await;
    for i in 0..servers {
        cfg.crash1(i);
    }
    for i in 0..servers {
        cfg.start1(i);
        cfg.connect(i);
    }
    // Do another op to trigger potential bug.
    cfg.one(int(cfg.rand_int()), servers, true).await;
    cfg.end();
}

/// Every test of this suite, by name, in the lab's order, for harness `H`.
pub fn tests<H: RaftHarness>() -> Vec<(&'static str, crate::Body)> {
    vec![
        ("initial_election_2a", || {
            Box::pin(initial_election_2a::<H>())
        }),
        ("re_election_2a", || Box::pin(re_election_2a::<H>())),
        ("many_elections_2a", || Box::pin(many_elections_2a::<H>())),
        ("basic_agree_2b", || Box::pin(basic_agree_2b::<H>())),
        ("rpc_bytes_2b", || Box::pin(rpc_bytes_2b::<H>())),
        ("follower_failure_2b", || {
            Box::pin(follower_failure_2b::<H>())
        }),
        ("leader_failure_2b", || Box::pin(leader_failure_2b::<H>())),
        ("fail_agree_2b", || Box::pin(fail_agree_2b::<H>())),
        ("fail_no_agree_2b", || Box::pin(fail_no_agree_2b::<H>())),
        ("concurrent_starts_2b", || {
            Box::pin(concurrent_starts_2b::<H>())
        }),
        ("rejoin_2b", || Box::pin(rejoin_2b::<H>())),
        ("backup_2b", || Box::pin(backup_2b::<H>())),
        ("count_2b", || Box::pin(count_2b::<H>())),
        ("persist1_2c", || Box::pin(persist1_2c::<H>())),
        ("persist2_2c", || Box::pin(persist2_2c::<H>())),
        ("persist3_2c", || Box::pin(persist3_2c::<H>())),
        ("figure8_2c", || Box::pin(figure8_2c::<H>())),
        ("unreliable_agree_2c", || {
            Box::pin(unreliable_agree_2c::<H>())
        }),
        ("figure8_unreliable_2c", || {
            Box::pin(figure8_unreliable_2c::<H>())
        }),
        ("reliable_churn_2c", || Box::pin(reliable_churn_2c::<H>())),
        ("unreliable_churn_2c", || {
            Box::pin(unreliable_churn_2c::<H>())
        }),
        ("snapshot_basic_2d", || Box::pin(snapshot_basic_2d::<H>())),
        ("snapshot_install_2d", || {
            Box::pin(snapshot_install_2d::<H>())
        }),
        ("snapshot_install_unreliable_2d", || {
            Box::pin(snapshot_install_unreliable_2d::<H>())
        }),
        ("snapshot_install_crash_2d", || {
            Box::pin(snapshot_install_crash_2d::<H>())
        }),
        ("snapshot_install_un_crash_2d", || {
            Box::pin(snapshot_install_un_crash_2d::<H>())
        }),
        ("snapshot_all_crash_2d", || {
            Box::pin(snapshot_all_crash_2d::<H>())
        }),
        ("snapshot_init_2d", || Box::pin(snapshot_init_2d::<H>())),
    ]
}
