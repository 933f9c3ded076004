//! Membership changes on real processes: `rkv serve` started from the built
//! binary (new servers with `--join`), over real TCP, with real files; the
//! changes go through the service's admin requests, as `rkv member` sends
//! them. Every test is bounded in time, and every history it records is
//! checked for lost acknowledged writes and for linearizability.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver_tokio::Client;
use kv_core::{AdminReply, AdminRequest, MemberAddrs, MemberRole};
use raft_wire::test_util::free_addrs;

mod common;

use common::{
    check_acked_appends, check_linearizable, check_shared_keys_used, run, workload_op, Record,
};

const CLUSTER_ID: u64 = 78;

struct Node {
    peer: SocketAddr,
    client: SocketAddr,
    child: Option<Child>,
}

/// `rkv serve` processes by node id, sharing a temporary directory.
struct Procs {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    /// The client addresses workers (re)connect through: the members'.
    servers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Procs {
    /// A cluster bootstrapped with voters `0..n`.
    fn bootstrap(n: u64) -> Procs {
        let mut p = Procs {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            servers: Arc::default(),
        };
        for id in 0..n {
            p.add_addrs(id);
        }
        let peers: Vec<String> = p
            .nodes
            .iter()
            .map(|(id, n)| format!("{id}={}", n.peer))
            .collect();
        for id in 0..n {
            let mut cmd = p.command(id);
            cmd.args(["--peers", &peers.join(",")]);
            p.spawn(id, cmd);
        }
        p.publish();
        p
    }

    fn add_addrs(&mut self, id: u64) {
        let addrs = free_addrs(2);
        let node = Node {
            peer: addrs[0],
            client: addrs[1],
            child: None,
        };
        self.nodes.insert(id, node);
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// The command for node `id`, without `--peers` or `--join`.
    fn command(&self, id: u64) -> Command {
        let n = &self.nodes[&id];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkv"));
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--cluster-id", &CLUSTER_ID.to_string()])
            .args(["--peer-addr", &n.peer.to_string()])
            .args(["--client-addr", &n.client.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{id}")))
            .args(["--max-raft-state", "65536"])
            .env("RKV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    fn spawn(&mut self, id: u64, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log");
        let child = cmd.stderr(log).spawn().expect("spawn rkv serve");
        self.nodes.get_mut(&id).expect("known").child = Some(child);
    }

    /// Starts a new node `id` that joins through the running members.
    fn join(&mut self, id: u64) {
        self.add_addrs(id);
        let join: Vec<String> = self
            .running_clients()
            .iter()
            .map(|a| a.to_string())
            .collect();
        let mut cmd = self.command(id);
        cmd.args(["--join", &join.join(",")]);
        self.spawn(id, cmd);
    }

    /// Restarts node `id` from its data directory (no `--peers`, no `--join`).
    fn restart(&mut self, id: u64) {
        let cmd = self.command(id);
        self.spawn(id, cmd);
    }

    fn running_clients(&self) -> Vec<SocketAddr> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.client)
            .collect()
    }

    /// Workers reconnect through the running servers.
    fn publish(&self) {
        *self.servers.lock().unwrap() = self.running_clients();
    }

    /// SIGKILL.
    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    fn exited_by_itself(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let child = self.nodes.get_mut(&id)?.child.as_mut()?;
        child.try_wait().expect("try_wait")
    }

    async fn client(&self) -> Client {
        let mut c = Client::connect(CLUSTER_ID, self.running_clients())
            .await
            .expect("client");
        c.op_timeout = Duration::from_secs(20);
        c
    }

    async fn admin(&self, request: AdminRequest) {
        let mut c = self.client().await;
        match c.admin(request.clone()).await {
            Ok(AdminReply::Done) => {}
            other => panic!("{request:?}: {other:?}"),
        }
    }

    /// Adds the already started node `id` as a learner and waits until its
    /// match index reaches the commit index at the time it was added.
    async fn add_learner_and_catch_up(&self, id: u64) {
        let n = &self.nodes[&id];
        let addrs = MemberAddrs {
            peer: n.peer.to_string(),
            client: n.client.to_string(),
        };
        self.admin(AdminRequest::AddLearner { node: id, addrs })
            .await;
        let mut c = self.client().await;
        let target = c.members().await.expect("members").commit_index;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = c.members().await.expect("members");
            let me = list.member(id).expect("a member now");
            assert_eq!(me.role, MemberRole::Learner);
            if me.match_index.is_some_and(|m| m >= target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "learner {id} never caught up: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running member's (term, leader), once they all agree on one
    /// leader that is one of them.
    async fn settled_leader(&self, members: &[u64]) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut c = self.client().await;
        c.attempt_timeout = Duration::from_millis(300);
        loop {
            let mut views = Vec::new();
            for id in members {
                if let Ok(s) = c.status_at(self.nodes[id].client).await {
                    views.push((s.term, s.leader));
                }
            }
            if views.len() == members.len() && views.iter().all(|v| v == &views[0]) {
                // A leader outside `members` is a stale view: a removed and
                // killed leader is still named by its old followers until
                // their election timeout.
                if let (term, Some(leader)) = views[0] {
                    if members.contains(&leader) {
                        return (term, leader);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "members {members:?} never agreed on a leader: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                let exited = match self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()) {
                    Some(c) => match c.try_wait() {
                        Ok(Some(status)) => format!("exited by itself ({status})"),
                        _ => "running".to_string(),
                    },
                    None => "not running".to_string(),
                };
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- node {id}: {exited}; last lines of its log:");
                for line in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("    {line}");
                }
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Clients appending to (and now and then reading) a key each, recording
/// every operation, until stopped.
struct Load {
    t0: Instant,
    history: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(servers: Arc<Mutex<Vec<SocketAddr>>>, clients: u64) -> Load {
        let t0 = Instant::now();
        let history: Arc<Mutex<Vec<Record>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for cli in 0..clients {
            let (history, stop, servers) = (history.clone(), stop.clone(), servers.clone());
            workers.push(tokio::spawn(async move {
                let connect = || async {
                    let seeds = servers.lock().unwrap().clone();
                    let mut c = Client::connect(CLUSTER_ID, seeds).await.expect("client");
                    c.op_timeout = Duration::from_secs(15);
                    c
                };
                let mut c = connect().await;
                let mut acked = Vec::new();
                let mut j = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (record, failed) = workload_op(&mut c, cli, j, t0, &mut acked).await;
                    if failed {
                        // Outcome unknown: a fresh session for the next op.
                        c = connect().await;
                    }
                    history.lock().unwrap().push(record);
                    j += 1;
                }
                acked
            }));
        }
        Load {
            t0,
            history,
            stop,
            workers,
        }
    }

    /// Stops the clients, then checks that every acknowledged append is in
    /// its key exactly once and in order, and that the history is
    /// linearizable. Returns the number of acknowledged appends.
    async fn finish(self, procs: &Procs, at_least: usize) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for w in self.workers {
            acked.push(w.await.expect("worker"));
        }
        let mut c = procs.client().await;
        let total = check_acked_appends(&mut c, &acked).await;
        assert!(
            total >= at_least,
            "the workload must actually run ({total} acknowledged appends)"
        );
        let history = self.history.lock().unwrap();
        check_shared_keys_used(&history);
        let n = check_linearizable(&history, Duration::from_secs(20));
        println!(
            "{n} operations, {total} acknowledged appends in {:?}",
            self.t0.elapsed()
        );
        total
    }
}

#[test]
fn replace_every_server_under_load() {
    run(Duration::from_secs(180), async {
        let mut procs = Procs::bootstrap(3);
        procs.settled_leader(&[0, 1, 2]).await;
        let load = Load::start(procs.servers.clone(), 4);
        tokio::time::sleep(Duration::from_secs(1)).await;
        for old in 0..3u64 {
            let new = old + 3;
            procs.join(new);
            procs.add_learner_and_catch_up(new).await;
            procs.admin(AdminRequest::Promote { node: new }).await;
            procs.admin(AdminRequest::Remove { node: old }).await;
            procs.kill(old);
            procs.publish();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (_, leader) = procs.settled_leader(&[3, 4, 5]).await;
        assert!((3..6).contains(&leader), "leader {leader}");
        let list = procs.client().await.members().await.expect("members");
        let ids: Vec<u64> = list.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert!(list.members.iter().all(|m| m.role == MemberRole::Voter));
        load.finish(&procs, 50).await;
        // The new servers restart from their data directories alone.
        for id in 3..6 {
            procs.kill(id);
        }
        for id in 3..6 {
            procs.restart(id);
        }
        procs.settled_leader(&[3, 4, 5]).await;
        let mut c = procs.client().await;
        c.put("after", "restart").await.expect("put after restart");
        assert_eq!(c.get("after").await.unwrap(), "restart");
    });
}

#[test]
fn transfer_leadership_under_load() {
    run(Duration::from_secs(120), async {
        let procs = Procs::bootstrap(3);
        let (mut term, mut leader) = procs.settled_leader(&[0, 1, 2]).await;
        let load = Load::start(procs.servers.clone(), 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
        for round in 0..4 {
            // To a named voter twice, then to the most up-to-date one.
            let to = (round < 2).then_some((leader + 1) % 3);
            procs.admin(AdminRequest::TransferLeader { to }).await;
            let (t, l) = procs.settled_leader(&[0, 1, 2]).await;
            assert!(t > term, "round {round}: term {t} after {term}");
            assert_ne!(l, leader, "round {round}: leadership did not move");
            if let Some(to) = to {
                assert_eq!(l, to, "round {round}: the wrong node leads");
            }
            (term, leader) = (t, l);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        load.finish(&procs, 30).await;
    });
}

#[test]
fn a_removed_server_that_keeps_running_does_not_disturb_the_cluster() {
    run(Duration::from_secs(150), async {
        let mut procs = Procs::bootstrap(3);
        procs.settled_leader(&[0, 1, 2]).await;
        for new in [3, 4] {
            procs.join(new);
            procs.add_learner_and_catch_up(new).await;
            procs.admin(AdminRequest::Promote { node: new }).await;
        }
        // Keep the removed servers off the leader, so that removing them
        // does not change the term by itself.
        let (_, leader) = procs.settled_leader(&[0, 1, 2, 3, 4]).await;
        let others: Vec<u64> = (0..5).filter(|&i| i != leader).collect();
        let (running, restarted) = (others[0], others[1]);
        // One is removed while it runs (it learns it was removed); the
        // other is removed while it is down and restarted from its data,
        // still believing itself a voter.
        procs.admin(AdminRequest::Remove { node: running }).await;
        procs.kill(restarted);
        procs.admin(AdminRequest::Remove { node: restarted }).await;
        procs.restart(restarted);
        procs.publish();
        let members: Vec<u64> = (0..5).filter(|&i| i != running && i != restarted).collect();
        let before = procs.settled_leader(&members).await;
        let load = Load::start(procs.servers.clone(), 2);
        // Several election timeouts (300-600 ms) with both of them running.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let after = procs.settled_leader(&members).await;
        assert_eq!(after, before, "the term or the leader changed");
        for id in [running, restarted] {
            assert_eq!(procs.exited_by_itself(id), None, "node {id} stopped");
        }
        load.finish(&procs, 10).await;
        let list = procs.client().await.members().await.expect("members");
        let ids: Vec<u64> = list.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, members);
        // Neither fills its log while it is ignored.
        for id in [running, restarted] {
            let log = std::fs::read_to_string(procs.log_path(id)).unwrap();
            let lines = log.lines().count();
            println!("removed node {id}: {lines} log lines");
            assert!(lines < 60, "node {id} logged {lines} lines:\n{log}");
        }
    });
}
