//! SIGTERM stops `rkv serve` cleanly (issue 14): the write being made
//! durable finishes, the process exits with status 0, and nothing that was
//! acknowledged is lost; the restarted servers find no torn record, and
//! `rkv status` still prints its table.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver_tokio::Client;

#[allow(dead_code)] // this file needs only `run`
mod common;
#[path = "common/procs.rs"]
mod procs;

use common::run;
use procs::ProcCluster;

const CLUSTER_ID: u64 = 29;

#[test]
fn sigterm_during_a_put_load_exits_0_and_keeps_every_acknowledged_put() {
    let mut cluster = ProcCluster::new(CLUSTER_ID, 3);
    run(Duration::from_secs(180), async {
        cluster.leader().await;
        let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let signalled = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for cli in 0..4 {
            let (acked, signalled) = (acked.clone(), signalled.clone());
            let servers = cluster.clients.clone();
            let session = move || {
                let servers = servers.clone();
                async move {
                    let mut c = Client::connect(CLUSTER_ID, servers).await.expect("client");
                    c.op_timeout = Duration::from_secs(5);
                    c
                }
            };
            let mut c = session().await;
            workers.push(tokio::spawn(async move {
                for j in 0.. {
                    let (key, value) = (format!("c{cli}-{j}"), format!("v{j}"));
                    match c.put(&key, &value).await {
                        Ok(()) => acked.lock().unwrap().push((key, value)),
                        // The servers are going: its outcome is unknown.
                        Err(_) if signalled.load(Ordering::Relaxed) => break,
                        // A stall on a loaded machine: its outcome is
                        // unknown, go on in a new session.
                        Err(_) => c = session().await,
                    }
                }
            }));
        }
        // Let the load build up, then stop every server in the middle of it.
        while acked.lock().unwrap().len() < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        signalled.store(true, Ordering::Relaxed);
        for i in 0..3 {
            cluster.terminate(i);
        }
        let signalled = Instant::now();
        let acked_before_the_signal = acked.lock().unwrap().len();
        let mut running: Vec<usize> = (0..3).collect();
        while !running.is_empty() {
            assert!(
                signalled.elapsed() < Duration::from_secs(20),
                "servers {running:?} still running 20 s after SIGTERM"
            );
            let mut still = Vec::new();
            for i in running {
                match cluster.exited(i) {
                    Some(status) => assert!(status.success(), "server {i}: {status}"),
                    None => still.push(i),
                }
            }
            running = still;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for w in workers {
            w.await.expect("worker");
        }
        for i in 0..3 {
            let log = std::fs::read_to_string(cluster.log_path(i)).unwrap();
            assert!(log.contains("SIGTERM"), "server {i} names the signal");
            cluster.start(i);
        }
        cluster.leader().await;
        // Every put acknowledged, before the signal or after it, is there.
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= acked_before_the_signal);
        let mut c = cluster.client().await;
        for (key, value) in &acked {
            assert_eq!(&c.get(key).await.expect("a read"), value, "{key}");
        }
        // A clean stop leaves no torn record to truncate.
        for i in 0..3 {
            let log = std::fs::read_to_string(cluster.log_path(i)).unwrap();
            assert!(!log.contains("torn"), "server {i} found a torn record");
        }
        // `rkv status` still prints its table: a header, and a row per
        // server with every column.
        let servers: Vec<String> = cluster.clients.iter().map(|a| a.to_string()).collect();
        let status_table = || {
            let out = Command::new(env!("CARGO_BIN_EXE_rkv"))
                .args(["status", "--servers", &servers.join(",")])
                .args(["--cluster-id", &CLUSTER_ID.to_string()])
                .output()
                .expect("run rkv status");
            assert!(out.status.success(), "rkv status: {out:?}");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        // (A server that misses the command's 700 ms timeout on a loaded
        // machine shows as unreachable: ask again.)
        let mut table = status_table();
        for _ in 0..10 {
            if !table.contains("unreachable") {
                break;
            }
            table = status_table();
        }
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "a header and three rows:\n{table}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header[..3], ["node", "address", "role"], "{table}");
        assert_eq!(header.last(), Some(&"reads"), "{table}");
        for (row, addr) in lines[1..].iter().zip(&servers) {
            let fields: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(fields.len(), header.len(), "{row}");
            assert!(fields[0].parse::<u64>().is_ok_and(|id| id < 3), "{row}");
            assert_eq!(fields[1], addr.as_str(), "{row}");
        }
        println!(
            "{} puts acknowledged ({acked_before_the_signal} before the signal), all kept",
            acked.len()
        );
    });
}
