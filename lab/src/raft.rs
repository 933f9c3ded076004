//! The Raft tester's waits and checks (config.go's `one`, `wait`,
//! `checkOneLeader`, `checkTerms`, `checkNoLeader`), over any driver's
//! [`RaftHarness`]. Bounds and back-offs are the lab's (lab-tests.md §2).

use std::collections::BTreeMap;
use std::time::Duration;

use raft_core::{Index, Term};

use crate::{Cmd, RaftHarness, Runtime};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Waits for a leader and returns it; fails if a term has two leaders or
/// none appears within 10 rounds of 450–549 ms.
pub async fn check_one_leader<H: RaftHarness>(cluster: &H) -> usize {
    for _ in 0..10 {
        let wait = 450 + H::Rt::random_below(100);
        H::Rt::sleep(ms(wait)).await;
        let mut leaders: BTreeMap<Term, Vec<usize>> = BTreeMap::new();
        for i in 0..cluster.n() {
            if cluster.is_connected(i) {
                let (term, leader) = cluster.get_state(i);
                if leader {
                    leaders.entry(term).or_default().push(i);
                }
            }
        }
        for (term, ls) in &leaders {
            assert!(ls.len() <= 1, "term {term} has {} (>1) leaders", ls.len());
        }
        if let Some((_, ls)) = leaders.last_key_value() {
            return ls[0];
        }
    }
    panic!("expected one leader, got none");
}

/// All connected servers agree on the term; returns it.
pub fn check_terms<H: RaftHarness>(cluster: &H) -> Term {
    let mut term = None;
    for i in 0..cluster.n() {
        if cluster.is_connected(i) {
            let (t, _) = cluster.get_state(i);
            match term {
                None => term = Some(t),
                Some(t0) => assert_eq!(t0, t, "servers disagree on term"),
            }
        }
    }
    term.unwrap_or(0)
}

/// No connected server claims to lead.
pub fn check_no_leader<H: RaftHarness>(cluster: &H) {
    for i in 0..cluster.n() {
        if cluster.is_connected(i) {
            let (_, leader) = cluster.get_state(i);
            assert!(
                !leader,
                "expected no leader among connected servers, but {i} claims to be leader"
            );
        }
    }
}

/// Waits (30 polls, back-off from 10 ms to about 1 s) until `n` servers
/// applied `index`. Returns `None` if some server's term moved past
/// `start_term` (when given): the caller should retry.
pub async fn wait<H: RaftHarness>(
    cluster: &H,
    index: Index,
    n: usize,
    start_term: Option<Term>,
) -> Option<Cmd> {
    let mut to = ms(10);
    for _ in 0..30 {
        let (nd, _) = cluster.n_committed(index);
        if nd >= n {
            break;
        }
        H::Rt::sleep(to).await;
        if to < Duration::from_secs(1) {
            to *= 2;
        }
        if let Some(start_term) = start_term {
            for i in 0..cluster.n() {
                if cluster.is_alive(i) && cluster.get_state(i).0 > start_term {
                    return None;
                }
            }
        }
    }
    let (nd, cmd) = cluster.n_committed(index);
    assert!(nd >= n, "only {nd} decided for index {index}; wanted {n}");
    cmd
}

/// The lab's `one()`: submit `cmd` to whoever leads, wait up to 2 s for
/// `expected` servers to apply it (resubmitting if `retry`), within 10 s in
/// all. Returns the index.
pub async fn one<H: RaftHarness>(cluster: &H, cmd: Cmd, expected: usize, retry: bool) -> Index {
    let t0 = H::Rt::now();
    let mut starts = 0;
    while H::Rt::now() - t0 < Duration::from_secs(10) {
        let mut index = None;
        for _ in 0..cluster.n() {
            starts = (starts + 1) % cluster.n();
            if cluster.is_connected(starts) {
                if let Some((i, _)) = cluster.start(starts, cmd.clone()) {
                    index = Some(i);
                    break;
                }
            }
        }
        if let Some(index) = index {
            let t1 = H::Rt::now();
            while H::Rt::now() - t1 < Duration::from_secs(2) {
                let (nd, c) = cluster.n_committed(index);
                if nd > 0 && nd >= expected && c.as_ref() == Some(&cmd) {
                    return index;
                }
                H::Rt::sleep(ms(20)).await;
            }
            assert!(retry, "one({cmd}) failed to reach agreement");
        } else {
            H::Rt::sleep(ms(50)).await;
        }
    }
    panic!("one({cmd}) failed to reach agreement");
}
