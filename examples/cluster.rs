//! Quick start: a real 3-node cluster on loopback TCP with its data on disk,
//! a short workload, a leader crash and restart, and a final check.
//!
//! ```text
//! cargo run --release -p examples --example cluster
//! ```
//!
//! The nodes run in this process (each with its own event loop, storage
//! thread and listeners); `rkv serve` runs the same code as separate
//! processes (see the README).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use driver_tokio::{start_node_with, Client, NodeConfig, NodeHandle};
use tokio::net::TcpListener;

const NODES: u64 = 3;
const CLUSTER_ID: u64 = 42;
const CLIENTS: usize = 8;
const OPS_PER_CLIENT: usize = 100;

struct Cluster {
    dir: PathBuf,
    peers: BTreeMap<u64, SocketAddr>,
    clients: Vec<SocketAddr>,
    nodes: BTreeMap<u64, NodeHandle>,
}

impl Cluster {
    fn config(&self, id: u64) -> NodeConfig {
        NodeConfig {
            id,
            cluster_id: CLUSTER_ID,
            peers: self.peers.clone(),
            peer_addr: None,
            client_addr: self.clients[id as usize],
            join: Vec::new(),
            data_dir: self.dir.join(format!("node{id}")),
            max_raft_state: Some(64 << 10),
            read_policy: driver_tokio::ReadPolicy::ReadIndex,
            follower_reads: false,
            metrics_addr: None,
            election_timeout: None,
            heartbeat_interval: None,
            tls: None,
        }
    }

    async fn start(&mut self, id: u64) -> Result<(), String> {
        let peer = TcpListener::bind(self.peers[&id])
            .await
            .map_err(|e| e.to_string())?;
        let client = TcpListener::bind(self.clients[id as usize])
            .await
            .map_err(|e| e.to_string())?;
        let node = start_node_with(self.config(id), peer, client)
            .await
            .map_err(|e| e.to_string())?;
        self.nodes.insert(id, node);
        Ok(())
    }

    async fn leader(&self) -> Option<u64> {
        let mut c = Client::connect(CLUSTER_ID, self.clients.clone())
            .await
            .ok()?;
        c.attempt_timeout = Duration::from_millis(300);
        for i in 0..self.clients.len() {
            if let Ok(s) = c.status(i).await {
                if s.role == "leader" {
                    return Some(s.node_id);
                }
            }
        }
        None
    }

    async fn print_status(&self) {
        let Ok(mut c) = Client::connect(CLUSTER_ID, self.clients.clone()).await else {
            return;
        };
        c.attempt_timeout = Duration::from_millis(300);
        for i in 0..self.clients.len() {
            match c.status(i).await {
                Ok(s) => println!(
                    "    node {}  {:<9} term {:<3} commit {:<5} applied {:<5} snapshot at {}",
                    s.node_id, s.role, s.term, s.commit_index, s.last_applied, s.snapshot_index
                ),
                Err(_) => println!("    node {i}  down"),
            }
        }
    }
}

async fn free_addr() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

async fn workload(
    servers: Vec<SocketAddr>,
    round: usize,
) -> Result<(usize, Vec<Duration>), String> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let servers = servers.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(CLUSTER_ID, servers)
                .await
                .map_err(|e| e.to_string())?;
            let mut latencies = Vec::with_capacity(OPS_PER_CLIENT);
            for i in 0..OPS_PER_CLIENT {
                let t = Instant::now();
                client
                    .append(&format!("k{c}"), &format!("[{round}.{i}]"))
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok((all.len(), all))
}

fn summarize(what: &str, ops: usize, elapsed: Duration, mut lat: Vec<Duration>) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    println!(
        "  {what}: {ops} appends by {CLIENTS} clients in {:.2} s ({:.0} ops/s), latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
}

async fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("rkv-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut peers = BTreeMap::new();
    let mut clients = Vec::new();
    for id in 0..NODES {
        peers.insert(id, free_addr().await?);
        clients.push(free_addr().await?);
    }
    let mut cluster = Cluster {
        dir: dir.clone(),
        peers,
        clients,
        nodes: BTreeMap::new(),
    };
    println!(
        "starting {NODES} nodes on loopback, data under {}",
        dir.display()
    );
    for id in 0..NODES {
        cluster.start(id).await?;
        println!(
            "  node {id}: peers on {}, clients on {}",
            cluster.peers[&id], cluster.clients[id as usize]
        );
    }
    let t = Instant::now();
    let leader = loop {
        if let Some(l) = cluster.leader().await {
            break l;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err("no leader elected within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "  node {leader} was elected leader after {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let (ops, lat) = workload(cluster.clients.clone(), 1).await?;
    summarize("round 1", ops, t.elapsed(), lat);

    println!("  stopping the leader, node {leader}");
    cluster
        .nodes
        .remove(&leader)
        .expect("running")
        .shutdown()
        .await;
    let t = Instant::now();
    let (ops, lat) = workload(cluster.clients.clone(), 2).await?;
    summarize("round 2 (one node down)", ops, t.elapsed(), lat);

    println!(
        "  restarting node {leader} from {}",
        cluster.config(leader).data_dir.display()
    );
    cluster.start(leader).await?;
    let t = Instant::now();
    let (ops, lat) = workload(cluster.clients.clone(), 3).await?;
    summarize("round 3", ops, t.elapsed(), lat);

    // Every append is there exactly once and in order.
    let mut c = Client::connect(CLUSTER_ID, cluster.clients.clone())
        .await
        .map_err(|e| e.to_string())?;
    for k in 0..CLIENTS {
        let v = c.get(&format!("k{k}")).await.map_err(|e| e.to_string())?;
        let expected: String = (1..=3)
            .flat_map(|round| (0..OPS_PER_CLIENT).map(move |i| format!("[{round}.{i}]")))
            .collect();
        if v != expected {
            return Err(format!(
                "k{k} holds {} bytes, expected {}",
                v.len(),
                expected.len()
            ));
        }
    }
    println!(
        "  checked: all {} appends present exactly once, in order",
        3 * CLIENTS * OPS_PER_CLIENT
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // let followers learn the last commit
    cluster.print_status().await;
    for (_, node) in std::mem::take(&mut cluster.nodes) {
        node.shutdown().await;
    }
    println!(
        "done; the nodes' logs and snapshots are in {} (safe to delete)",
        dir.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
