//! Reads on real processes: `rkv serve` started from the built binary, over
//! real TCP, with real files. Every consistency of `rkv get` returns what
//! was written; Gets write nothing (neither the Raft log nor any file of a
//! data directory changes) on every read policy but `log`; a follower
//! answers local reads, and linearizable ones only with `--follower-reads`;
//! a local read on a server cut off from the rest is served, and stale;
//! lease reads work with `--read-policy lease`; bad flag values are refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use driver_tokio::wire::NodeStatus;
use driver_tokio::wire::{
    read_frame, write_frame, ClientRequest, ClientResponse, Hello, HelloReply,
};
use driver_tokio::{Client, ClientError, ReadConsistency};
use kv_core::{Outcome, Reply};
use raft_wire::test_util::free_addrs;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod common;
#[path = "common/procs.rs"]
mod procs;

use common::{
    check_acked_appends, check_linearizable, check_shared_keys_used, run, workload_op, Record,
};
use procs::ProcCluster;

const CLUSTER_ID: u64 = 79;

const EVERY_CONSISTENCY: [ReadConsistency; 3] = [
    ReadConsistency::Linearizable,
    ReadConsistency::Lease,
    ReadConsistency::Local,
];

/// The CLI name of a consistency.
fn cli_name(c: ReadConsistency) -> &'static str {
    match c {
        ReadConsistency::Linearizable => "linearizable",
        ReadConsistency::Lease => "lease",
        ReadConsistency::Local => "local",
    }
}

/// Runs the `rkv` binary with `args`.
fn rkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rkv"))
        .args(args)
        .env("RKV_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run rkv")
}

/// `rkv get KEY --consistency C` against `servers`: its standard output.
fn rkv_get(servers: &[SocketAddr], key: &str, consistency: ReadConsistency) -> String {
    let servers: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
    let out = rkv(&[
        "get",
        key,
        "--consistency",
        cli_name(consistency),
        "--servers",
        &servers.join(","),
        "--cluster-id",
        &CLUSTER_ID.to_string(),
        "--timeout-secs",
        "10",
    ]);
    assert!(
        out.status.success(),
        "rkv get --consistency {}: {}",
        cli_name(consistency),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One `ClientRequest::Read` to the server at `addr` on a connection of its
/// own, and its answer: what a server does with a read itself, with no
/// client retrying elsewhere.
async fn raw_read(addr: SocketAddr, key: &str, consistency: ReadConsistency) -> Reply {
    let ask = async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (r, mut w) = stream.into_split();
        write_frame(&mut w, &Hello::client(CLUSTER_ID))
            .await
            .expect("hello");
        let request = ClientRequest::Read {
            id: 9,
            key: key.to_string(),
            consistency,
        };
        write_frame(&mut w, &request).await.expect("request");
        w.flush().await.expect("flush");
        let mut r = BufReader::new(r);
        let answer = read_frame::<HelloReply, _>(&mut r).await;
        assert_eq!(
            answer.expect("an answer to the hello"),
            HelloReply::Accepted
        );
        match read_frame::<ClientResponse, _>(&mut r).await {
            Ok(ClientResponse::Reply { id: 9, reply }) => reply,
            other => panic!("not an answer to the read: {other:?}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .expect("the server answers a read within 5 s")
}

fn value(v: &str) -> Reply {
    Reply::Applied(Outcome::Value(v.to_string()))
}

/// Every node's status once all report one leader and the same term,
/// commit, applied and last index, unchanged over 300 ms.
async fn settled(c: &mut Client, n: usize) -> Vec<NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut previous = None;
    loop {
        let mut all = Vec::new();
        for i in 0..n {
            if let Ok(s) = c.status(i).await {
                all.push(s);
            }
        }
        let key: Vec<(u64, u64, u64, u64)> = all
            .iter()
            .map(|s| (s.term, s.commit_index, s.last_applied, s.last_index))
            .collect();
        let agreed = all.len() == n
            && key.windows(2).all(|w| w[0] == w[1])
            && key[0].1 == key[0].3
            && key[0].2 == key[0].3
            && all.iter().filter(|s| s.role == "leader").count() == 1;
        if agreed && previous.as_ref() == Some(&key) {
            return all;
        }
        previous = agreed.then_some(key);
        assert!(Instant::now() < deadline, "did not settle: {all:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every file of a data directory: its size and when it last changed.
fn disk_image(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    std::fs::read_dir(dir)
        .expect("data dir")
        .map(|e| {
            let e = e.expect("entry");
            let meta = e.metadata().expect("metadata");
            let name = e.file_name().to_string_lossy().to_string();
            (name, (meta.len(), meta.modified().expect("mtime")))
        })
        .collect()
}

/// How a Get of the measured batch is sent.
#[derive(Clone, Copy, Debug)]
enum How {
    /// `Client::get_with`: a sessionless read.
    With(ReadConsistency),
    /// `Client::get_in_session`: a Get as a command of the client's session.
    InSession,
}

/// Sends `count` Gets of `key` of each kind in `plan`, each answered
/// `want`, between two settled states of the cluster, and returns (before,
/// after): every node's status and the image of its data directory. An
/// election in between (the term moved: a new leader writes a no-op) makes
/// the measurement worthless, so it is taken again, up to three times.
#[allow(clippy::type_complexity)]
async fn measure_gets(
    cluster: &ProcCluster,
    key: &str,
    want: &str,
    plan: &[(How, usize)],
) -> (
    Vec<(NodeStatus, BTreeMap<String, (u64, SystemTime)>)>,
    Vec<(NodeStatus, BTreeMap<String, (u64, SystemTime)>)>,
) {
    let n = cluster.clients.len();
    let mut c = cluster.client().await;
    // A session of its own before measuring: a session's first request
    // goes through the log whatever the policy.
    c.put("measuring", "1").await.unwrap();
    for attempt in 1..=3 {
        let snap = |statuses: Vec<NodeStatus>| {
            statuses
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s, disk_image(&cluster.data_dir(i))))
                .collect::<Vec<_>>()
        };
        let before = snap(settled(&mut c, n).await);
        for &(how, count) in plan {
            for _ in 0..count {
                let got = match how {
                    How::With(consistency) => c.get_with(key, consistency).await,
                    How::InSession => c.get_in_session(key).await,
                };
                assert_eq!(got.expect("get"), want, "{how:?}");
            }
        }
        let after = snap(settled(&mut c, n).await);
        if before.iter().zip(&after).all(|(b, a)| b.0.term == a.0.term) {
            return (before, after);
        }
        eprintln!("attempt {attempt}: an election during the Gets; measuring again");
    }
    panic!("an election during every attempt");
}

/// On the default policy (read-index), without follower reads: every
/// consistency returns the written value, through the library and through
/// `rkv get`; 600 sessionless Gets and 50 session Gets write nothing; a
/// follower answers a local read itself and sends a linearizable one to
/// the leader.
#[test]
fn every_consistency_reads_the_write_and_gets_write_nothing() {
    run(Duration::from_secs(120), async {
        let cluster = ProcCluster::new(CLUSTER_ID, 3);
        let leader = cluster.leader().await;
        let mut c = cluster.client().await;
        c.put("k", "v1").await.unwrap();
        c.append("k", "+2").await.unwrap();
        // A local read is stale until the server it reaches has applied the
        // append (a follower hears of the commit with the next heartbeat).
        settled(&mut c, 3).await;
        for consistency in EVERY_CONSISTENCY {
            // A fresh client each: no session, no leader known.
            let mut fresh = cluster.client().await;
            assert_eq!(
                fresh.get_with("k", consistency).await.unwrap(),
                "v1+2",
                "{consistency:?}"
            );
        }
        let plan = [
            (How::With(ReadConsistency::Linearizable), 200),
            (How::With(ReadConsistency::Lease), 200),
            (How::With(ReadConsistency::Local), 200),
            (How::InSession, 50),
        ];
        let (before, after) = measure_gets(&cluster, "k", "v1+2", &plan).await;
        for (i, ((b, b_disk), (a, a_disk))) in before.iter().zip(&after).enumerate() {
            assert_eq!(b.read_policy, "read-index");
            assert!(!b.follower_reads);
            assert_eq!(
                (a.last_index, a.commit_index),
                (b.last_index, b.commit_index),
                "node {i}: Gets grew the Raft log"
            );
            assert_eq!(a_disk, b_disk, "node {i}: Gets changed the data directory");
        }
        for consistency in EVERY_CONSISTENCY {
            assert_eq!(rkv_get(&cluster.clients, "k", consistency), "v1+2\n");
        }
        // What a follower does with a read itself.
        let follower = (leader + 1) % 3;
        let at = cluster.clients[follower];
        assert_eq!(
            raw_read(at, "k", ReadConsistency::Local).await,
            value("v1+2")
        );
        let to_leader = Reply::WrongLeader {
            leader_hint: Some(leader as u64),
        };
        assert_eq!(
            raw_read(at, "k", ReadConsistency::Linearizable).await,
            to_leader
        );
        assert_eq!(raw_read(at, "k", ReadConsistency::Lease).await, to_leader);
        assert_eq!(
            raw_read(cluster.clients[leader], "k", ReadConsistency::Linearizable).await,
            value("v1+2")
        );
        println!(
            "650 Gets: last index {} on every node before and after",
            before[0].0.last_index
        );
    });
}

/// With `--read-policy log`, Gets go through the log (the old path, for
/// comparison): linearizable ones grow it by one entry each, local ones
/// still write nothing.
#[test]
fn read_policy_log_sends_gets_through_the_log() {
    run(Duration::from_secs(90), async {
        let cluster = ProcCluster::with_args(
            CLUSTER_ID,
            3,
            &["--max-raft-state", "65536", "--read-policy", "log"],
        );
        cluster.leader().await;
        let mut c = cluster.client().await;
        c.put("k", "v").await.unwrap();
        let (before, after) = measure_gets(
            &cluster,
            "k",
            "v",
            &[(How::With(ReadConsistency::Linearizable), 20)],
        )
        .await;
        assert_eq!(before[0].0.read_policy, "log");
        assert_eq!(after[0].0.last_index, before[0].0.last_index + 20);
        let (before, after) = measure_gets(
            &cluster,
            "k",
            "v",
            &[(How::With(ReadConsistency::Local), 20)],
        )
        .await;
        for ((b, b_disk), (a, a_disk)) in before.iter().zip(&after) {
            assert_eq!(a.last_index, b.last_index, "local Gets grew the log");
            assert_eq!(a_disk, b_disk, "local Gets changed the data directory");
        }
    });
}

/// With `--follower-reads`, a follower answers linearizable reads itself,
/// and sees every write acknowledged before the read; clients spreading
/// Gets over every member under a concurrent workload keep the history
/// linearizable.
#[test]
fn follower_reads_serve_linearizable_gets_on_every_member() {
    run(Duration::from_secs(120), async {
        let cluster = ProcCluster::with_args(
            CLUSTER_ID,
            3,
            &["--max-raft-state", "65536", "--follower-reads"],
        );
        let leader = cluster.leader().await;
        let mut c = cluster.client().await;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        for j in 0..60 {
            c.put("k", &j.to_string()).await.unwrap();
            let at = cluster.clients[followers[j % 2]];
            assert_eq!(
                raw_read(at, "k", ReadConsistency::Linearizable).await,
                value(&j.to_string()),
                "a follower's linearizable read missed an acknowledged write ({j})"
            );
        }
        for i in 0..3 {
            let s = c.status(i).await.unwrap();
            assert!(s.follower_reads, "node {i}: {s:?}");
        }
        // Concurrent appends and Gets (every fourth operation), the Gets
        // round-robin over the members.
        let t0 = Instant::now();
        let history: Arc<Mutex<Vec<Record>>> = Arc::default();
        let mut workers = Vec::new();
        for cli in 0..3u64 {
            let (history, servers) = (history.clone(), cluster.clients.clone());
            workers.push(tokio::spawn(async move {
                let mut c = Client::connect(CLUSTER_ID, servers).await.expect("client");
                c.op_timeout = Duration::from_secs(15);
                let mut acked = Vec::new();
                for j in 0..120 {
                    let (record, failed) = workload_op(&mut c, cli, j, t0, &mut acked).await;
                    assert!(!failed, "an operation failed on a healthy cluster");
                    history.lock().unwrap().push(record);
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for w in workers {
            acked.push(w.await.expect("worker"));
        }
        let total = check_acked_appends(&mut c, &acked).await;
        let history = history.lock().unwrap();
        check_shared_keys_used(&history);
        let n = check_linearizable(&history, Duration::from_secs(10));
        println!("{n} operations ({total} acknowledged appends) linearizable with follower reads");
    });
}

/// A local read is answered by a server cut off from the rest, from its own
/// applied state, and may be stale; linearizable and lease reads there
/// are not answered at all. The follower is cut off by killing it, writing
/// without it, killing the others and restarting it alone: it restores the
/// snapshot it took before (a tiny `--max-raft-state`), which holds the old
/// value.
#[test]
fn local_reads_on_a_cut_off_follower_are_possibly_stale() {
    run(Duration::from_secs(120), async {
        let mut cluster = ProcCluster::with_args(CLUSTER_ID, 3, &["--max-raft-state", "4096"]);
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;
        let mut c = cluster.client().await;
        c.put("k", "old").await.unwrap();
        let old_at = c.status(leader).await.unwrap().commit_index;
        for i in 0..40 {
            c.put(&format!("filler{i}"), &"x".repeat(200))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = c.status(follower).await.unwrap();
            if s.snapshot_index >= old_at {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot on the follower: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let at = cluster.clients[follower];
        assert_eq!(rkv_get(&[at], "k", ReadConsistency::Local), "old\n");

        cluster.kill(follower);
        c.put("k", "new").await.unwrap();
        for i in (0..3).filter(|&i| i != follower) {
            cluster.kill(i);
        }
        cluster.start(follower);

        let mut alone = Client::connect(CLUSTER_ID, vec![at]).await.unwrap();
        alone.op_timeout = Duration::from_secs(10);
        assert_eq!(
            alone.get_with("k", ReadConsistency::Local).await.unwrap(),
            "old",
            "the cut-off follower serves its own (stale) state"
        );
        assert_eq!(rkv_get(&[at], "k", ReadConsistency::Local), "old\n");
        alone.op_timeout = Duration::from_secs(2);
        for consistency in [ReadConsistency::Linearizable, ReadConsistency::Lease] {
            let got = alone.get_with("k", consistency).await;
            assert!(
                matches!(got, Err(ClientError::Timeout(_))),
                "{consistency:?} answered without a quorum: {got:?}"
            );
        }
    });
}

/// With `--read-policy lease` on every server, lease reads return what was
/// written and write nothing; a leader cut off from both followers stops
/// answering them.
#[test]
fn lease_reads_with_read_policy_lease() {
    run(Duration::from_secs(120), async {
        let mut cluster = ProcCluster::with_args(
            CLUSTER_ID,
            3,
            &["--max-raft-state", "65536", "--read-policy", "lease"],
        );
        let leader = cluster.leader().await;
        let mut c = cluster.client().await;
        c.put("k", "leased").await.unwrap();
        let plan = [
            (How::With(ReadConsistency::Lease), 200),
            (How::With(ReadConsistency::Linearizable), 50),
            (How::With(ReadConsistency::Local), 50),
        ];
        let (before, after) = measure_gets(&cluster, "k", "leased", &plan).await;
        for (i, ((b, b_disk), (a, a_disk))) in before.iter().zip(&after).enumerate() {
            assert_eq!(b.read_policy, "lease", "node {i}");
            assert_eq!(a.last_index, b.last_index, "node {i}: Gets grew the log");
            assert_eq!(a_disk, b_disk, "node {i}: Gets changed the data directory");
        }
        assert_eq!(
            rkv_get(&cluster.clients, "k", ReadConsistency::Lease),
            "leased\n"
        );
        let leader = after
            .iter()
            .position(|(s, _)| s.role == "leader")
            .unwrap_or(leader);
        for i in (0..3).filter(|&i| i != leader) {
            cluster.kill(i);
        }
        // Well past the lease (under the 300 ms minimum election timeout).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut cut_off = Client::connect(CLUSTER_ID, vec![cluster.clients[leader]])
            .await
            .unwrap();
        cut_off.op_timeout = Duration::from_secs(2);
        let got = cut_off.get_with("k", ReadConsistency::Lease).await;
        assert!(
            matches!(got, Err(ClientError::Timeout(_))),
            "a leader cut off from its followers answered a lease read: {got:?}"
        );
    });
}

/// A server process that is killed when the test is done with it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bad values of the read flags are refused with a clear error; the TOML
/// file takes them too; the help names local reads as possibly stale.
#[test]
fn read_flags_are_checked() {
    run(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let addrs = free_addrs(2);
        let data = dir.path().join("data");
        let peers = format!("0={}", addrs[0]);
        let client = addrs[1].to_string();
        let serve = |extra: &[&str]| {
            let mut args = vec![
                "serve",
                "--id",
                "0",
                "--peers",
                &peers,
                "--client-addr",
                &client,
                "--data-dir",
                data.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            rkv(&args)
        };
        let out = serve(&["--read-policy", "fast"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("\"fast\"") && err.contains("read-index, lease or log"),
            "{err}"
        );

        let bad_file = dir.path().join("bad.toml");
        std::fs::write(&bad_file, "read_policy = \"fast\"\n").unwrap();
        let out = serve(&["--config", bad_file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("read_policy") && err.contains("\"fast\""),
            "{err}"
        );

        let out = rkv(&["get", "k", "--servers", &client, "--consistency", "stale"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("linearizable, lease, local"), "{err}");

        let help = String::from_utf8(rkv(&["get", "--help"]).stdout).unwrap();
        assert!(help.contains("POSSIBLY STALE"), "{help}");
        let help = String::from_utf8(rkv(&["serve", "--help"]).stdout).unwrap();
        assert!(
            help.contains("--read-policy") && help.contains("--follower-reads"),
            "{help}"
        );

        // A one-server cluster configured by file: both settings reach it.
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "read_policy = \"lease\"\nfollower_reads = true\n").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rkv"))
            .args([
                "serve",
                "--id",
                "0",
                "--peers",
                &peers,
                "--client-addr",
                &client,
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&file)
            .env("RKV_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rkv serve");
        let _server = KillOnDrop(child);
        let mut c = Client::connect(1, vec![addrs[1]]).await.unwrap();
        c.attempt_timeout = Duration::from_millis(300);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(s) = c.status(0).await {
                break s;
            }
            assert!(Instant::now() < deadline, "the server never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status.read_policy, "lease");
        assert!(status.follower_reads);
    });
}
