//! Prometheus metrics on real processes (issue 14, item 4): three `rkv
//! serve` processes with `--metrics-addr`, some puts and gets, then
//! `GET /metrics` on each over HTTP, parsed strictly, checked by name and
//! value against what the test did.
//!
//! The figures that settle a moment after the operations (the followers'
//! match indices reaching the leader, a snapshot written, connections
//! closed) are polled for, up to a deadline, never slept for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use driver_tokio::metrics::scrape::Scrape;
use raft_wire::test_util::free_addrs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)] // this file needs only `run`
mod common;
#[path = "common/procs.rs"]
mod procs;

use common::run;
use procs::ProcCluster;

const PUTS: usize = 200;
const GETS: usize = 20;

/// One HTTP/1.1 request; the status line, the headers and the body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head in {response:?}")))?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((status.to_string(), headers.to_string(), body.to_string()))
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get(addr, "/metrics").await.expect("scrape");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: application/openmetrics-text"),
        "{headers}"
    );
    Scrape::parse(&body).unwrap_or_else(|e| panic!("{addr}: {e}\n{body}"))
}

/// Every node's scrape, repeated until `done` holds of them all (15 s).
async fn scrape_until(
    addrs: &[SocketAddr],
    what: &str,
    done: impl Fn(&[Scrape]) -> bool,
) -> Vec<Scrape> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut scrapes = Vec::new();
        for &a in addrs {
            scrapes.push(scrape(a).await);
        }
        if done(&scrapes) {
            return scrapes;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.value(name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
}

fn is_leader(s: &Scrape) -> bool {
    s.value("rkv_role", &[("role", "leader")]) == Some(1.0)
}

/// One leader and two followers in one term; the leader's view of both
/// followers caught up with the puts; every link up; every node has
/// written a snapshot.
fn settled(s: &[Scrape]) -> bool {
    let puts = PUTS as f64;
    let leaders: Vec<&Scrape> = s.iter().filter(|s| is_leader(s)).collect();
    let followers = s
        .iter()
        .filter(|s| s.value("rkv_role", &[("role", "follower")]) == Some(1.0))
        .count();
    let one_term = s
        .windows(2)
        .all(|w| w[0].value("rkv_term", &[]) == w[1].value("rkv_term", &[]));
    let caught_up = leaders.len() == 1 && {
        let matched: Vec<f64> = leaders[0]
            .series("rkv_peer_match_index")
            .map(|m| m.value)
            .collect();
        matched.len() == 2 && matched.iter().all(|&m| m >= puts)
    };
    let linked = s.iter().all(|s| {
        let up: Vec<f64> = s.series("rkv_peer_connected").map(|m| m.value).collect();
        up == [1.0, 1.0]
    });
    let snapshotted = s
        .iter()
        .all(|s| s.value("rkv_snapshot_write_seconds_count", &[]) > Some(0.0));
    followers == 2 && one_term && caught_up && linked && snapshotted
}

#[test]
fn metrics_report_what_the_cluster_did() {
    let metrics = free_addrs(3);
    let node_args = metrics
        .iter()
        .map(|a| vec!["--metrics-addr".to_string(), a.to_string()])
        .collect();
    // A small snapshot threshold, so that the puts snapshot every node.
    let cluster = ProcCluster::with_node_args(44, 3, &["--max-raft-state", "16384"], node_args);
    run(Duration::from_secs(120), async {
        let mut client = cluster.client().await;
        let value = "v".repeat(256);
        for i in 0..PUTS {
            client.put(&format!("k{i}"), &value).await.expect("put");
        }
        for i in 0..GETS {
            assert_eq!(client.get(&format!("k{i}")).await.expect("get"), value);
        }

        let s = scrape_until(&metrics, "a settled cluster", settled).await;
        let leader = s.iter().position(is_leader).expect("a leader");
        let l = &s[leader];
        let puts = PUTS as f64;
        for (i, n) in s.iter().enumerate() {
            let roles: f64 = n.series("rkv_role").map(|m| m.value).sum();
            assert_eq!(roles, 1.0, "node {i} has exactly one role");
            if i != leader {
                assert_eq!(
                    n.series("rkv_peer_match_index").count(),
                    0,
                    "only the leader"
                );
            }
            assert!(get(n, "rkv_term", &[]) >= 1.0);
            assert!(get(n, "rkv_leader_changes_total", &[]) >= 1.0);
            assert!(get(n, "rkv_storage_commit_seconds_count", &[]) > 0.0);
            assert!(get(n, "rkv_snapshot_bytes", &[]) > 0.0);
            assert!(get(n, "rkv_snapshot_index", &[]) > 0.0);
        }
        // The client sends every request to the leader, over one connection
        // it keeps.
        assert!(get(l, "rkv_client_connections", &[]) >= 1.0);
        assert!(get(l, "rkv_commit_index", &[]) >= puts);
        assert!(get(l, "rkv_applied_index", &[]) >= puts);
        assert!(get(l, "rkv_last_index", &[]) >= get(l, "rkv_commit_index", &[]));
        // The leader wrote every entry; some leader sent each to a follower
        // (a commit needs one); every acknowledged put and get was answered
        // ok by some leader.
        assert!(get(l, "rkv_storage_commit_entries_sum", &[]) >= puts);
        let total =
            |name, labels: &[(&str, &str)]| s.iter().map(|n| get(n, name, labels)).sum::<f64>();
        assert!(total("rkv_append_entries_sent_entries_sum", &[]) >= puts);
        let ok = [("outcome", "ok")];
        assert!(total("rkv_proposals_total", &ok) >= puts);
        assert!(total("rkv_reads_total", &ok) >= GETS as f64);
        for i in 0..3 {
            if i != leader {
                let peer = i.to_string();
                assert!(get(l, "rkv_peer_match_index", &[("peer", &peer)]) >= puts);
                assert_eq!(get(l, "rkv_peer_connected", &[("peer", &peer)]), 1.0);
            }
        }

        // Closing the client closes its connections.
        drop(client);
        scrape_until(&metrics, "no client connections", |s| {
            s.iter()
                .all(|s| s.value("rkv_client_connections", &[]) == Some(0.0))
        })
        .await;

        let (status, _, _) = http_get(metrics[0], "/other").await.expect("get");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
    });
}
