//! A data directory is used by one server at a time (issue 14, item 5): a
//! second `rkv serve` on a directory in use exits at once, non-zero, with an
//! error naming the lock, and the first server goes on serving.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raft_wire::test_util::free_addrs;

#[allow(dead_code)] // this file needs only `run`
mod common;
#[path = "common/procs.rs"]
mod procs;

use common::run;
use procs::ProcCluster;

#[test]
fn a_second_server_on_a_data_directory_in_use_exits_naming_the_lock() {
    let mut cluster = ProcCluster::new(41, 3);
    run(Duration::from_secs(60), async {
        let mut client = cluster.client().await;
        client.put("k", "v1").await.expect("the cluster serves");
    });
    // Node 0's directory, under other addresses (so that nothing but the
    // directory is shared).
    let addrs = free_addrs(4);
    let peers = format!(
        "0={},1={},2={}",
        addrs[0], cluster.peers[1], cluster.peers[2]
    );
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rkv"))
        .arg("serve")
        .args(["--id", "0", "--cluster-id", "41", "--peers", &peers])
        .args(["--client-addr", &addrs[1].to_string()])
        .arg("--data-dir")
        .arg(cluster.data_dir(0))
        .stdin(Stdio::null())
        .output()
        .expect("run rkv serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second server started: {stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("LOCK"),
        "the error names the lock: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it exits at once"
    );
    // The first server still serves.
    run(Duration::from_secs(60), async {
        let mut client = cluster.client().await;
        client
            .put("k", "v2")
            .await
            .expect("the cluster still serves");
        assert_eq!(client.get("k").await.expect("a read"), "v2");
    });
    cluster.kill_all();
}
