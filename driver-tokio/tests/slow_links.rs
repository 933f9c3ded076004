//! A client outwaits commits slower than its attempt timeout (issue 14):
//! every link between the `rkv serve` processes, and every client link,
//! runs through a proxy in this test that delays each byte by 1.5 s, so a
//! round trip takes 3 s and a commit about twice that, while the client
//! keeps its default 1 s attempt timeout. Its operations complete, each
//! exactly once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver_tokio::Client;
use raft_wire::test_util::free_addrs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

mod common;
#[path = "common/procs.rs"]
mod procs;

use common::{check_acked_appends, check_linearizable, run, workload_op, Record};
use procs::ProcCluster;

const CLUSTER_ID: u64 = 53;
/// One way, on every link.
const DELAY: Duration = Duration::from_millis(1500);

/// Accepts connections at `listener` and joins each to a new connection to
/// `target`, delaying every byte by `delay` in each direction (order kept,
/// no limit on bandwidth).
async fn delaying_proxy(listener: TcpListener, target: SocketAddr, delay: Duration) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return; // the server is not up yet: the dialler retries
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(delayed_pipe(in_read, out_write, delay));
            delayed_pipe(out_read, in_write, delay).await;
        });
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; then ends
/// `to` as `from` ended.
async fn delayed_pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((read_at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((tokio::time::Instant::now(), buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Waits (up to `limit`) until some server, asked at its own client port
/// rather than through its proxy, reports itself leader.
async fn await_leader(direct: &[SocketAddr], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut c = Client::connect(CLUSTER_ID, direct.to_vec())
        .await
        .expect("client");
    c.attempt_timeout = Duration::from_millis(500);
    loop {
        for &addr in direct {
            if c.status_at(addr).await.is_ok_and(|s| s.role == "leader") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_client_with_the_default_attempt_timeout_outwaits_slow_commits() {
    run(Duration::from_secs(400), async {
        let n = 3;
        // Where the servers are known (the proxies) and where they listen.
        let mut addrs = free_addrs(4 * n);
        let real_clients = addrs.split_off(3 * n);
        let real_peers = addrs.split_off(2 * n);
        let clients = addrs.split_off(n);
        let peers = addrs;
        for i in 0..n {
            for (at, to) in [(peers[i], real_peers[i]), (clients[i], real_clients[i])] {
                let listener = TcpListener::bind(at).await.expect("bind a proxy");
                tokio::spawn(delaying_proxy(listener, to, DELAY));
            }
        }
        // Elections over 3 s round trips need election timeouts well above
        // them (CheckQuorum wants a reply within the longest one).
        let listen = real_peers.iter().copied().zip(real_clients.iter().copied());
        let cluster = ProcCluster::behind(
            CLUSTER_ID,
            &["--election-timeout-ms", "5000", "--heartbeat-ms", "500"],
            peers,
            clients.clone(),
            listen.collect(),
        );
        let booted = Instant::now();
        await_leader(&real_clients, Duration::from_secs(120)).await;
        let election = booted.elapsed();

        let t0 = Instant::now();
        let history: Arc<Mutex<Vec<Record>>> = Arc::default();
        let mut workers = Vec::new();
        for cli in 0..3u64 {
            let (history, clients) = (history.clone(), clients.clone());
            workers.push(tokio::spawn(async move {
                let mut c = Client::connect(CLUSTER_ID, clients).await.expect("client");
                assert_eq!(c.attempt_timeout, Duration::from_secs(1), "the default");
                c.op_timeout = Duration::from_secs(150);
                let mut acked = Vec::new();
                // Three appends, then a get (`workload_op`'s pattern).
                for j in 0..4 {
                    let started = Instant::now();
                    let (record, failed) = workload_op(&mut c, cli, j, t0, &mut acked).await;
                    assert!(!failed, "client {cli}'s operation {j} failed");
                    // Every link really is slow: an append commits, and a
                    // get is confirmed by a ReadIndex round, only with a
                    // follower's answer, so no operation completes sooner
                    // than a round trip through the client's proxy and
                    // one through the peers'.
                    assert!(
                        started.elapsed() >= 4 * DELAY,
                        "answered in {:?}, under two round trips",
                        started.elapsed()
                    );
                    history.lock().unwrap().push(record);
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for w in workers {
            acked.push(w.await.expect("worker"));
        }
        let elapsed = t0.elapsed();
        // Every append present exactly once, in order, and the history
        // linearizable.
        let mut c = Client::connect(CLUSTER_ID, cluster.clients.clone())
            .await
            .expect("client");
        c.op_timeout = Duration::from_secs(150);
        assert_eq!(check_acked_appends(&mut c, &acked).await, 9);
        let ops = check_linearizable(&history.lock().unwrap(), Duration::from_secs(10));
        println!(
            "a leader after {election:?}; {ops} operations over links delayed {DELAY:?} each way, in {elapsed:?}"
        );
    });
}
