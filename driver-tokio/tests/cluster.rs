//! End-to-end tests of the deployable service: `rkv serve` processes started
//! from the built binary, on loopback, talking over real TCP and writing real
//! files. Each test is bounded in time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver_tokio::wire::{encode_frame, Hello, HelloError, PROTOCOL_VERSION};
use driver_tokio::{Client, SharedConns, Swap};
use raft_storage::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use raft_wire::HelloReply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
#[path = "common/procs.rs"]
mod procs;

use common::{
    check_acked_appends, check_linearizable, check_shared_keys_used, run, workload_op, Record,
};
use procs::ProcCluster;

const CLUSTER_ID: u64 = 77;

/// The newest log segment in a node's data directory.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("log."))
        })
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Where each record's payload lies in a log segment (see the README's
/// "On disk": a header, then `u32 length | u32 crc32 | payload` records).
fn record_payloads(segment: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut payloads = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at + RECORD_HEADER_LEN <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        let start = at + RECORD_HEADER_LEN;
        if len == 0 || start + len > segment.len() {
            break;
        }
        payloads.push(start..start + len);
        at = start + len;
    }
    payloads
}

#[test]
fn cluster_basic_ops() {
    run(Duration::from_secs(60), async {
        let cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        let mut c = cluster.client().await;
        assert_eq!(c.get("missing").await.unwrap(), "");
        c.put("a", "1").await.unwrap();
        assert_eq!(c.get("a").await.unwrap(), "1");
        c.append("a", "2").await.unwrap();
        c.append("b", "x").await.unwrap();
        assert_eq!(c.get("a").await.unwrap(), "12");
        assert_eq!(c.get("b").await.unwrap(), "x");
        c.put("a", "3").await.unwrap();
        assert_eq!(c.get("a").await.unwrap(), "3");
        // Deletes and swaps: unset is not "".
        let not_swapped = |current: Option<&str>| Swap::NotSwapped {
            current: current.map(str::to_string),
        };
        assert!(c.delete("b").await.unwrap());
        assert!(!c.delete("b").await.unwrap());
        assert_eq!(c.get("b").await.unwrap(), "");
        assert_eq!(
            c.compare_and_swap("a", Some("4"), "5").await.unwrap(),
            not_swapped(Some("3"))
        );
        assert_eq!(
            c.compare_and_swap("a", Some("3"), "").await.unwrap(),
            Swap::Swapped
        );
        assert_eq!(
            c.compare_and_swap("a", None, "6").await.unwrap(),
            not_swapped(Some(""))
        );
        assert_eq!(
            c.compare_and_swap("b", Some(""), "7").await.unwrap(),
            not_swapped(None)
        );
        assert_eq!(
            c.compare_and_swap("b", None, "7").await.unwrap(),
            Swap::Swapped
        );
        assert_eq!(c.get("b").await.unwrap(), "7");
        // Every node catches up, and exactly one leads.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut statuses = Vec::new();
            for i in 0..3 {
                statuses.push(c.status(i).await.expect("status"));
            }
            let leaders = statuses.iter().filter(|s| s.role == "leader").count();
            let applied: Vec<u64> = statuses.iter().map(|s| s.last_applied).collect();
            if leaders == 1 && applied.iter().all(|&a| a == applied[0]) && applied[0] >= 13 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not converge: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Runs `rkv` with `args` against `cluster`: exit status and standard
/// output.
fn rkv(cluster: &ProcCluster, args: &[&str]) -> (Option<i32>, String) {
    let servers: Vec<String> = cluster.clients.iter().map(ToString::to_string).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkv"))
        .args(args)
        .args(["--servers", &servers.join(","), "--cluster-id"])
        .arg(CLUSTER_ID.to_string())
        .env("RKV_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run rkv");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    (out.status.code(), stdout)
}

#[test]
fn cli_deletes_and_compares_and_swaps() {
    run(Duration::from_secs(60), async {
        let cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        let ok = |out: &str| (Some(0), format!("{out}\n"));
        let not_swapped = |out: &str| (Some(3), format!("not swapped: {out}\n"));
        assert_eq!(
            rkv(&cluster, &["cas", "k", "--expect-absent", ""]),
            ok("swapped")
        );
        assert_eq!(
            rkv(&cluster, &["cas", "k", "--expect-absent", "a"]),
            not_swapped(r#"current value """#)
        );
        assert_eq!(rkv(&cluster, &["cas", "k", "", "a b"]), ok("swapped"));
        assert_eq!(
            rkv(&cluster, &["cas", "k", "a", "c"]),
            not_swapped(r#"current value "a b""#)
        );
        assert_eq!(rkv(&cluster, &["get", "k"]), ok("a b"));
        assert_eq!(rkv(&cluster, &["del", "k"]), ok("deleted"));
        assert_eq!(rkv(&cluster, &["del", "k"]), ok("not found"));
        assert_eq!(rkv(&cluster, &["cas", "k", "", "x"]), not_swapped("unset"));
        // Usage errors: exit status 2, nothing written.
        assert_eq!(rkv(&cluster, &["cas", "k", "x"]).0, Some(2));
        assert_eq!(
            rkv(&cluster, &["cas", "k", "x", "y", "--expect-absent"]).0,
            Some(2)
        );
        assert_eq!(rkv(&cluster, &["get", "k"]), ok(""));
        assert_eq!(
            rkv(&cluster, &["cas", "k", "--expect-absent", "x"]),
            ok("swapped")
        );
    });
}

#[test]
fn kill_leader_under_load_loses_nothing() {
    kill_leader_under_load(None, 4);
}

/// The same with the clients' sessions sharing connections: a lost
/// connection fails every session on it at once, and each still completes
/// exactly once.
#[test]
fn kill_leader_under_load_with_shared_connections_loses_nothing() {
    kill_leader_under_load(Some(SharedConns::new(CLUSTER_ID, None)), 8);
}

fn kill_leader_under_load(pool: Option<SharedConns>, clients: u64) {
    run(Duration::from_secs(120), async {
        let mut cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        let t0 = Instant::now();
        let history: Arc<Mutex<Vec<Record>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for cli in 0..clients {
            let (history, stop, servers) = (history.clone(), stop.clone(), cluster.clients.clone());
            let pool = pool.clone();
            workers.push(tokio::spawn(async move {
                let session = || async {
                    let mut c = Client::connect(CLUSTER_ID, servers.clone())
                        .await
                        .expect("client");
                    if let Some(pool) = &pool {
                        c = c.with_shared(pool.clone());
                    }
                    c.op_timeout = Duration::from_secs(15);
                    c
                };
                let mut c = session().await;
                let mut acked = Vec::new();
                let mut j = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (record, failed) = workload_op(&mut c, cli, j, t0, &mut acked).await;
                    if failed {
                        // Outcome unknown: a fresh session for the next op.
                        c = session().await;
                    }
                    history.lock().unwrap().push(record);
                    j += 1;
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = cluster.leader().await;
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.start(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for w in workers {
            acked.push(w.await.expect("worker"));
        }
        // Every acknowledged append is present, exactly once, in order.
        let mut c = cluster.client().await;
        let total = check_acked_appends(&mut c, &acked).await;
        assert!(
            total > 50,
            "the workload must actually run ({total} acknowledged appends)"
        );
        // The whole history is linearizable, swaps and deletes included.
        let history = history.lock().unwrap();
        let (swapped, not_swapped, deleted) = check_shared_keys_used(&history);
        let n = check_linearizable(&history, Duration::from_secs(10));
        println!(
            "{n} operations ({swapped} swaps, {not_swapped} refused, {deleted} deletes of a set key), {total} acknowledged appends, leader {leader} killed and restarted, connections {}",
            if pool.is_some() { "shared" } else { "per client" }
        );
    });
}

#[test]
fn restart_all_recovers_from_disk() {
    run(Duration::from_secs(90), async {
        let mut cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        let mut c = cluster.client().await;
        for i in 0..300 {
            c.put(&format!("key{i}"), &format!("value{i}"))
                .await
                .unwrap();
        }
        // Every fifth key deleted, every third of the others swapped (and
        // key1 swapped from "unset", which it is not).
        for i in (0..300).step_by(5) {
            assert!(c.delete(&format!("key{i}")).await.unwrap());
        }
        for i in (1..300).step_by(3).filter(|i: &usize| !i.is_multiple_of(5)) {
            let (key, old, new) = (
                format!("key{i}"),
                format!("value{i}"),
                format!("swapped{i}"),
            );
            let swap = c.compare_and_swap(&key, Some(&old), &new).await;
            assert_eq!(swap.unwrap(), Swap::Swapped);
        }
        let swap = c.compare_and_swap("key1", None, "x").await.unwrap();
        assert_eq!(
            swap,
            Swap::NotSwapped {
                current: Some("swapped1".into())
            }
        );
        cluster.kill_all();
        for i in 0..3 {
            cluster.start(i);
        }
        cluster.leader().await;
        let mut c = cluster.client().await;
        let expected = |i: usize| match i {
            _ if i.is_multiple_of(5) => String::new(),
            _ if i % 3 == 1 => format!("swapped{i}"),
            _ => format!("value{i}"),
        };
        for i in (0..300).step_by(7) {
            assert_eq!(c.get(&format!("key{i}")).await.unwrap(), expected(i));
        }
        assert_eq!(c.get("key299").await.unwrap(), "value299");
        // A deleted key came back unset (not set to ""), the others set.
        assert!(!c.delete("key295").await.unwrap());
        let swap = c.compare_and_swap("key290", None, "new").await.unwrap();
        assert_eq!(swap, Swap::Swapped);
        assert!(c.delete("key298").await.unwrap());
    });
}

#[test]
fn recovers_torn_tail() {
    run(Duration::from_secs(90), async {
        let mut cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        let mut c = cluster.client().await;
        for i in 0..50 {
            c.put(&format!("t{i}"), &i.to_string()).await.unwrap();
        }
        cluster.kill_all();
        // A write cut short: a record header promising 1000 bytes, then 10,
        // where the next record would have gone (after the last one, over
        // the segment's preallocated zeros).
        let seg = newest_segment(&cluster.data_dir(0));
        let end = record_payloads(&std::fs::read(&seg).unwrap())
            .last()
            .expect("records")
            .end;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        let mut torn = 1000u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0xAB; 14]);
        std::os::unix::fs::FileExt::write_all_at(&f, &torn, end as u64).unwrap();
        drop(f);
        for i in 0..3 {
            cluster.start(i);
        }
        cluster.leader().await;
        let mut c = cluster.client().await;
        for i in 0..50 {
            assert_eq!(c.get(&format!("t{i}")).await.unwrap(), i.to_string());
        }
        c.put("after", "ok").await.unwrap();
        let log = std::fs::read_to_string(cluster.log_path(0)).unwrap();
        assert!(
            log.contains("torn"),
            "node 0 should report the truncated tail:\n{log}"
        );
        let mut s = cluster.client().await;
        assert!(s.status(0).await.is_ok(), "node 0 serves after recovery");
    });
}

#[test]
fn refuses_corrupt_log() {
    run(Duration::from_secs(90), async {
        let mut cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        let mut c = cluster.client().await;
        for i in 0..100 {
            c.put(&format!("c{i}"), &"v".repeat(50)).await.unwrap();
        }
        cluster.kill_all();
        // Damage the payload of a record in the middle of the newest
        // segment. Not just any byte there: a record's length has no
        // checksum of its own, so a length made to point past the end of
        // the file is read as a torn final record (the format's documented
        // limit), and where the middle byte falls depends on how writes
        // were grouped.
        let seg = newest_segment(&cluster.data_dir(0));
        let mut bytes = std::fs::read(&seg).unwrap();
        let payloads = record_payloads(&bytes);
        assert!(
            payloads.len() >= 3,
            "{} records in {}",
            payloads.len(),
            seg.display()
        );
        let middle = payloads[payloads.len() / 2].clone();
        bytes[(middle.start + middle.end) / 2] ^= 0xFF;
        std::fs::write(&seg, &bytes).unwrap();
        let out = cluster
            .command(0)
            .stderr(Stdio::piped())
            .output()
            .expect("run rkv serve");
        assert!(!out.status.success(), "a corrupt log must stop start-up");
        let err = String::from_utf8_lossy(&out.stderr);
        let name = seg.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            err.contains(&name) && err.contains("offset"),
            "the error must name the file and offset:\n{err}"
        );
    });
}

#[test]
fn rejects_malformed_frames() {
    run(Duration::from_secs(60), async {
        let cluster = ProcCluster::new(CLUSTER_ID, 3);
        cluster.leader().await;
        // Each of these must make the node close the connection, after
        // answering the hello if there was one (a refusal naming why).
        let refused = |reason| encode_frame(&HelloReply::Refused(reason)).unwrap();
        let wrong_client = refused(HelloError::WrongCluster {
            cluster_id: CLUSTER_ID + 1,
            ours: CLUSTER_ID,
        });
        let wrong_peer = wrong_client.clone();
        let accepted = encode_frame(&HelloReply::Accepted).unwrap();
        let garbage = vec![0xFFu8; 64];
        let oversized = u32::MAX.to_le_bytes().to_vec();
        let wrong_cluster = encode_frame(&Hello::Client {
            version: PROTOCOL_VERSION,
            cluster_id: CLUSTER_ID + 1,
        })
        .unwrap();
        let wrong_peer_cluster = encode_frame(&Hello::Peer {
            version: PROTOCOL_VERSION,
            cluster_id: CLUSTER_ID + 1,
            node_id: 1,
        })
        .unwrap();
        let mut bad_after_hello = encode_frame(&Hello::Client {
            version: PROTOCOL_VERSION,
            cluster_id: CLUSTER_ID,
        })
        .unwrap();
        bad_after_hello.extend_from_slice(&5u32.to_le_bytes());
        bad_after_hello.extend_from_slice(&[0xFF; 5]);
        let (client, peer) = (cluster.clients[0], cluster.peers[0]);
        let cases = [
            (
                client,
                garbage.clone(),
                vec![],
                "garbage to the client port",
            ),
            (
                client,
                oversized.clone(),
                vec![],
                "oversized length to the client port",
            ),
            (
                client,
                wrong_cluster,
                wrong_client,
                "wrong cluster id to the client port",
            ),
            (
                client,
                bad_after_hello,
                accepted,
                "an undecodable request after a good hello",
            ),
            (peer, garbage, vec![], "garbage to the peer port"),
            (peer, oversized, vec![], "oversized length to the peer port"),
            (
                peer,
                wrong_peer_cluster,
                wrong_peer,
                "wrong cluster id to the peer port",
            ),
        ];
        for (addr, bytes, answer, what) in cases {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(&bytes).await.expect("write");
            let mut got = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut got)).await;
            match closed {
                Ok(Ok(_)) => assert_eq!(got, answer, "{what}: the answer"),
                // A reset when the node closed with our bytes unread.
                Ok(Err(_)) => assert!(answer.is_empty(), "{what}: reset before the answer"),
                Err(_) => panic!("{what}: connection not closed"),
            }
        }
        // The node still serves.
        let mut c = cluster.client().await;
        c.put("still", "alive").await.unwrap();
        assert_eq!(c.get("still").await.unwrap(), "alive");
        assert!(c.status(0).await.is_ok());
    });
}
