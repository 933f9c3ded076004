//! Membership change scenarios in the lab style (issue 12), on the
//! simulator's Raft harness: servers are added, replaced and removed by node
//! id while clients run, the network misbehaves and partitions come and go.
//! The safety checker runs after every step, with its configuration rules
//! (commit quorum, quorum overlap, one change at a time, own-term commit
//! before a change); the lab's appliers check that no two servers apply
//! different commands at one index.
//!
//! The `kv_` scenarios do the same to the KV service on the simulator's KV
//! harness (`driver_sim::KvCfg`), through its administrative requests: the
//! clerks' whole history must be linearizable and every acknowledged write
//! present at the end.
//!
//! Each body is run by `tests/membership.rs` under the seed from
//! `SIM_SEED`, and hunted with each planted bug by `tests/canaries.rs`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use driver_sim::{ms, now, sleep, spawn, Cfg, Cmd, JoinHandle, KvCfg, PreVoteCfg, SimCfg};
use kv_core::MemberRole;
use lab::{KvHarness, RaftHarness};
use raft_core::{ChangeRefusal, Membership, MembershipChange, NodeId};

use MembershipChange::{AddLearner, AddVoter, Promote, Remove};

/// Client tasks that each commit commands (`one`, on at least `expected`
/// servers) until `done` is set; each returns how many it committed.
fn clients<const P: bool>(
    cfg: &SimCfg<P>,
    count: i64,
    expected: usize,
    done: &Rc<Cell<bool>>,
) -> Vec<JoinHandle<u64>> {
    (0..count)
        .map(|c| {
            let (cfg, done) = (cfg.clone(), done.clone());
            spawn(async move {
                let mut k = 0;
                while !done.get() {
                    cfg.one(Cmd::Int(1_000_000 * (c + 1) + k), expected, true)
                        .await;
                    k += 1;
                }
                k as u64
            })
        })
        .collect()
}

/// Stops the clients and returns how many commands they committed.
async fn stop(done: &Rc<Cell<bool>>, clients: Vec<JoinHandle<u64>>) -> u64 {
    done.set(true);
    let mut total = 0;
    for c in clients {
        total += c.await;
    }
    total
}

fn voters(m: &Membership) -> Vec<NodeId> {
    m.voters.iter().copied().collect()
}

/// Replaces every server of an `n`-server cluster, one at a time (a new
/// server joins knowing no configuration, is added as a learner, caught up,
/// then promoted while the old one is removed in one joint change), on an
/// unreliable network with snapshots, while two clients commit commands.
async fn rolling_replacement(n: usize) {
    let cfg = PreVoteCfg::new(n, true, true);
    cfg.begin(&format!(
        "Test (membership): rolling replacement of {n} servers"
    ));
    cfg.check_one_leader().await;
    let done = Rc::new(Cell::new(false));
    let majority = n / 2 + 1;
    let tasks = clients(&cfg, 2, majority, &done);
    for old in 0..n {
        let new = cfg.replace_server(old).await;
        let m = cfg
            .membership(cfg.leader().expect("a leader after the change"))
            .expect("the leader runs");
        assert!(
            m.voters.contains(&(new as NodeId)) && !m.contains(old as NodeId),
            "after replacing {old} by {new}: {m}"
        );
        assert_eq!(m.voters.len(), n, "still {n} voters: {m}");
        cfg.one(Cmd::Int(-(old as i64) - 1), majority, true).await;
    }
    let committed = stop(&done, tasks).await;
    // Every server now is one that joined later, and every one applies.
    let leader = cfg.check_one_leader().await;
    let m = cfg.committed_membership(leader).expect("the leader runs");
    assert_eq!(
        voters(&m),
        (n as NodeId..2 * n as NodeId).collect::<Vec<_>>()
    );
    cfg.one(Cmd::Int(-100), n, true).await;
    println!("  {committed} client commands committed across {n} replacements");
    cfg.end();
}

pub async fn rolling_replacement_3_nodes() {
    rolling_replacement(3).await;
}

pub async fn rolling_replacement_5_nodes() {
    rolling_replacement(5).await;
}

/// Removes the leader of a 5-server cluster under load, twice: each time
/// the change commits, the removed leader steps down (it keeps replicating
/// until then without counting itself), another server leads, and commands
/// keep committing on every remaining server.
pub async fn remove_leader_under_load() {
    let n = 5;
    let cfg = Cfg::new(n, false, false);
    cfg.begin("Test (membership): remove the leader under load");
    cfg.check_one_leader().await;
    let mut remaining = n;
    for round in 0..2 {
        let done = Rc::new(Cell::new(false));
        let tasks = clients(&cfg, 2, remaining / 2 + 1, &done);
        sleep(ms(300 + cfg.rand_below(400))).await;
        let old = cfg.leader().expect("a leader");
        let m = cfg
            .change_membership(&[Remove(old as NodeId)])
            .await
            .unwrap_or_else(|r| panic!("round {round}: removing leader {old} refused: {r:?}"));
        remaining -= 1;
        assert_eq!(m.voters.len(), remaining);
        // It hands over once the change commits; whoever leads now is
        // another server.
        let asked = now();
        while cfg.leader().is_none_or(|l| l == old) {
            assert!(
                now() - asked < Duration::from_secs(5),
                "round {round}: the removed leader {old} is still the only leader"
            );
            sleep(ms(10)).await;
        }
        assert!(!cfg.get_state(old).1, "the removed server no longer leads");
        cfg.crash1(old);
        let committed = stop(&done, tasks).await;
        cfg.one(Cmd::Int(-1 - round), remaining, true).await;
        println!("  round {round}: removed leader {old}, {committed} client commands committed");
    }
    cfg.end();
}

/// Cuts off a random group of the running servers (the leader among them
/// half the time) for 200–1000 ms, then reconnects them.
async fn partition_for_a_while(cfg: &Cfg) {
    let mut cut = Vec::new();
    if cfg.rand_below(2) == 0 {
        if let Some(l) = cfg.leader() {
            cut.push(l);
        }
    }
    for i in 0..cfg.n() {
        if cfg.is_alive(i) && !cut.contains(&i) && cfg.rand_below(3) == 0 {
            cut.push(i);
        }
    }
    for &i in &cut {
        cfg.disconnect(i);
    }
    sleep(ms(200 + cfg.rand_below(800))).await;
    for i in cut {
        if cfg.is_alive(i) {
            cfg.connect(i);
        }
    }
}

/// Joint changes of a 5-server cluster on an unreliable network (two
/// voters out and two new ones in, and back; learners added and promoted
/// two at a time), each with a partition starting within 40 ms of the
/// request, while the change is in its joint phase: a random group of
/// servers, the leader among them half the time, is cut off for a while.
/// Each change must still settle (the joint configuration committed on both
/// majorities, then left), and commands keep committing.
pub async fn partitions_during_joint_change() {
    let n = 5;
    let cfg = Cfg::new(n, true, false);
    cfg.begin("Test (membership): partitions during joint changes");
    cfg.check_one_leader().await;
    let (a, b) = (cfg.add_server() as NodeId, cfg.add_server() as NodeId);
    let rounds: [Vec<MembershipChange>; 8] = [
        vec![AddVoter(a), AddVoter(b), Remove(3), Remove(4)],
        vec![Remove(a), Remove(b)],
        vec![AddLearner(3), AddLearner(4)],
        vec![Promote(3), Promote(4)],
        vec![AddLearner(a), AddLearner(b)],
        vec![Promote(a), Promote(b), Remove(0), Remove(1)],
        vec![AddLearner(0), AddLearner(1), Remove(a), Remove(b)],
        vec![Promote(0), Promote(1)],
    ];
    let mut settled = Vec::new();
    for (round, changes) in rounds.into_iter().enumerate() {
        let change = {
            let (cfg, changes) = (cfg.clone(), changes.clone());
            spawn(async move { cfg.change_membership(&changes).await })
        };
        sleep(ms(cfg.rand_below(40))).await;
        partition_for_a_while(&cfg).await;
        let m = change
            .await
            .unwrap_or_else(|r| panic!("round {round}: {changes:?} refused: {r:?}"));
        assert!(!m.is_joint(), "change_membership settles: {m}");
        let majority = m.voters.len() / 2 + 1;
        cfg.one(Cmd::Int(round as i64), majority, true).await;
        settled.push(m.to_string());
    }
    // a and b are out; 0..5 are the voters again, and all of them apply.
    cfg.one(Cmd::Int(100), n, true).await;
    println!("  configurations: {}", settled.join(" -> "));
    cfg.end();
}

/// Learners never count: a 3-voter cluster with two learners whose leader
/// is cut off from the other voters commits nothing (the learners
/// acknowledge everything), and the learners with one voter elect nobody;
/// once the voters are back, everything commits and reaches the learners.
pub async fn learners_never_counted() {
    let cfg = Cfg::new(3, false, false);
    cfg.begin("Test (membership): learners never count for commit or election");
    cfg.check_one_leader().await;
    cfg.one(Cmd::Int(1), 3, true).await;
    let (l1, l2) = (cfg.add_server(), cfg.add_server());
    cfg.change_membership(&[AddLearner(l1 as NodeId), AddLearner(l2 as NodeId)])
        .await
        .expect("adding two learners");
    cfg.one(Cmd::Int(2), 5, true).await;

    let leader = cfg.leader().expect("a leader");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &others {
        cfg.disconnect(i);
    }
    let (index, _) = cfg
        .start(leader, Cmd::Int(3))
        .expect("the leader takes a command");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cfg.n_committed(index).0,
        0,
        "index {index} committed with only the leader and learners"
    );
    // The learners hold it (the leader, hearing from no other voter, has
    // stepped down by now: learners do not count for CheckQuorum either).
    for i in [l1, l2] {
        assert!(
            cfg.last_index(i).is_some_and(|last| last >= index),
            "learner {i} holds index {index}"
        );
    }

    // Now the leader goes too: one voter and two learners elect nobody.
    cfg.disconnect(leader);
    cfg.connect(others[0]);
    sleep(Duration::from_secs(3)).await;
    for i in [l1, l2] {
        assert!(!cfg.get_state(i).1, "learner {i} leads");
    }
    assert!(
        !cfg.get_state(others[0]).1,
        "voter {} leads alone",
        others[0]
    );

    for i in 0..cfg.n() {
        cfg.connect(i);
    }
    cfg.one(Cmd::Int(4), 5, true).await;
    cfg.end();
}

/// One change at a time, and none before the leader's own entry commits:
/// a second change requested while the first is uncommitted is refused
/// (`ChangeInProgress`), and a newly elected leader refuses a change until
/// an entry of its term has committed (`LeaderNotReady`: the single-server
/// bug of 2015), then takes it.
pub async fn one_change_at_a_time() {
    let cfg = Cfg::new(3, false, false);
    cfg.begin("Test (membership): one change at a time, none before the leader's own entry");
    cfg.check_one_leader().await;
    cfg.one(Cmd::Int(1), 3, true).await;
    let (a, b) = (cfg.add_server() as NodeId, cfg.add_server() as NodeId);
    let leader = cfg.leader().expect("a leader");
    let first = cfg.request_membership_change(leader, &[AddLearner(a)]);
    assert!(first.is_ok(), "the first change is taken: {first:?}");
    let second = cfg.request_membership_change(leader, &[AddLearner(b)]);
    assert_eq!(
        second,
        Err(ChangeRefusal::ChangeInProgress),
        "a second change while the first is uncommitted"
    );
    cfg.change_membership(&[AddLearner(b)])
        .await
        .expect("the second change once the first committed");

    // A new leader has committed nothing of its own term.
    cfg.crash1(leader);
    let asked = now();
    let next = loop {
        if let Some(l) = cfg.leader().filter(|&l| l != leader) {
            break l;
        }
        assert!(now() - asked < Duration::from_secs(5), "no new leader");
        sleep(ms(1)).await;
    };
    assert_eq!(
        cfg.request_membership_change(next, &[Promote(a)]),
        Err(ChangeRefusal::LeaderNotReady),
        "a new leader before an entry of its term committed"
    );
    let m = cfg
        .change_membership(&[Promote(a)])
        .await
        .expect("the change once the leader is ready");
    assert!(m.voters.contains(&a));
    cfg.start1(leader);
    cfg.connect(leader);
    cfg.one(Cmd::Int(2), 5, true).await;
    cfg.end();
}

/// What one client of the KV scenarios had acknowledged when it stopped.
struct Acked {
    /// Its own key's value: every append it made, in order.
    appended: String,
    /// How many appends that is.
    appends: usize,
    /// The last value it put to its put key, if any.
    put: Option<String>,
}

/// A client of the KV scenarios: appends to its own key (checking on every
/// get of it that it holds exactly what it appended), puts to a key of its
/// own (`p<cli>`), and reads the other clients' keys, until told to stop.
/// Every operation completes (the clerk retries until it does), so all it
/// did was acknowledged.
async fn kv_client(
    cfg: KvCfg,
    ck: driver_sim::SimClerk,
    cli: usize,
    nclients: usize,
    done: Rc<Cell<bool>>,
) -> Acked {
    let (own, put_key) = (cli.to_string(), format!("p{cli}"));
    let mut acked = Acked {
        appended: String::new(),
        appends: 0,
        put: None,
    };
    cfg.put(&ck, &own, "", cli as u64).await;
    let mut puts = 0;
    while !done.get() {
        match cfg.rand_below(100) {
            0..45 => {
                let nv = format!("x {cli} {} y", acked.appends);
                cfg.append(&ck, &own, &nv, cli as u64).await;
                acked.appended.push_str(&nv);
                acked.appends += 1;
            }
            45..55 => {
                let nv = format!("put {cli} {puts}");
                puts += 1;
                cfg.put(&ck, &put_key, &nv, cli as u64).await;
                acked.put = Some(nv);
            }
            55..80 => {
                let v = cfg.get(&ck, &own, cli as u64).await;
                assert_eq!(v, acked.appended, "client {cli}: get of its own key");
            }
            _ => {
                let other = cfg.rand_below(nclients as u64).to_string();
                cfg.get(&ck, &other, cli as u64).await;
            }
        }
    }
    acked
}

/// Replaces every server of an `n`-server KV cluster, one at a time, on an
/// unreliable network with snapshots (maxraftstate 1000 bytes), while five
/// clients run: once every server has compacted its log, through the
/// service, a new server (knowing no configuration) is added as a learner,
/// waited for until its match index reaches the commit index (it catches
/// up by InstallSnapshot), promoted; then the old one is removed and
/// stopped. The clerks are told the members after each change. At the end
/// the configuration is exactly the new servers, all voters; every
/// acknowledged append and put is in the final state; the history is
/// linearizable.
async fn kv_rolling_replacement(n: usize) {
    let nclients = 5;
    let maxraftstate = 1000;
    let cfg = KvCfg::new(n, true, Some(maxraftstate));
    cfg.begin(&format!(
        "Test (membership): KV rolling replacement of {n} servers, unreliable net, snapshots, many clients"
    ));
    let admin = cfg.make_client(&cfg.all());
    let done = Rc::new(Cell::new(false));
    let clients: Vec<_> = (0..nclients)
        .map(|cli| {
            let ck = cfg.make_client(&cfg.all());
            spawn(kv_client(cfg.clone(), ck, cli, nclients, done.clone()))
        })
        .collect();
    // Load first, until every server has compacted its log: then whoever
    // leads when the first server joins must send it a snapshot.
    let loaded = now();
    while (0..n).any(|i| cfg.snapshot_index(i).is_some_and(|s| s == 0)) {
        assert!(
            now() - loaded < Duration::from_secs(20),
            "the servers never snapshotted\n{}",
            cfg.status()
        );
        sleep(ms(50)).await;
    }
    sleep(ms(cfg.rand_below(500))).await;
    let mut replaced = Vec::new();
    for old in 0..n {
        let new = cfg.replace_server(&admin, old).await;
        assert!(!cfg.is_running(old), "{old} stopped once removed");
        replaced.push(new);
        sleep(ms(500 + cfg.rand_below(1000))).await;
    }
    done.set(true);
    let mut acked = Vec::new();
    for c in clients {
        acked.push(c.await);
    }

    let list = cfg.members(&admin).await;
    let ids: Vec<u64> = list.members.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        replaced.iter().map(|&i| i as u64).collect::<Vec<_>>(),
        "the members are the new servers: {list:?}"
    );
    assert!(
        list.committed && list.members.iter().all(|m| m.role == MemberRole::Voter),
        "every new server is a voter, committed: {list:?}"
    );
    let ck = cfg.make_client(&cfg.all());
    cfg.tell_clerks(&ids);
    for (cli, a) in acked.iter().enumerate() {
        let v = cfg.get(&ck, &cli.to_string(), 0).await;
        crate::kv::check_clnt_appends(cli, &v, a.appends);
        assert_eq!(v, a.appended, "client {cli}'s appends, exactly");
        let p = cfg.get(&ck, &format!("p{cli}"), 0).await;
        assert_eq!(
            p,
            a.put.clone().unwrap_or_default(),
            "client {cli}'s last put"
        );
    }
    for &new in &replaced {
        assert!(
            cfg.snapshots_received(new) > 0,
            "server {new} caught up without an InstallSnapshot"
        );
    }
    let sz = cfg.log_size();
    assert!(
        sz <= 8 * maxraftstate,
        "logs were not trimmed ({sz} > 8*{maxraftstate})"
    );
    let ops: usize = acked.iter().map(|a| a.appends).sum();
    println!("  {ops} appends acknowledged across {n} replacements");
    cfg.check_linearizable();
    cfg.end();
}

pub async fn kv_rolling_replacement_3_nodes() {
    kv_rolling_replacement(3).await;
}

pub async fn kv_rolling_replacement_5_nodes() {
    kv_rolling_replacement(5).await;
}

/// Every body, by name.
pub fn tests() -> Vec<(&'static str, crate::Body)> {
    vec![
        ("rolling_replacement_3_nodes", || {
            Box::pin(rolling_replacement_3_nodes())
        }),
        ("rolling_replacement_5_nodes", || {
            Box::pin(rolling_replacement_5_nodes())
        }),
        ("remove_leader_under_load", || {
            Box::pin(remove_leader_under_load())
        }),
        ("partitions_during_joint_change", || {
            Box::pin(partitions_during_joint_change())
        }),
        ("learners_never_counted", || {
            Box::pin(learners_never_counted())
        }),
        ("one_change_at_a_time", || Box::pin(one_change_at_a_time())),
        ("kv_rolling_replacement_3_nodes", || {
            Box::pin(kv_rolling_replacement_3_nodes())
        }),
        ("kv_rolling_replacement_5_nodes", || {
            Box::pin(kv_rolling_replacement_5_nodes())
        }),
    ]
}
