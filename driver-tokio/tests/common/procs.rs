//! `rkv serve` processes started from the built binary, sharing a temporary
//! directory: what the real-process tests of one cluster share. Included by
//! path from the test files that use it (not every file that includes
//! `common` does), and not every test uses every method. The servers log at
//! `info` to `node<i>.log` in the directory (`RKV_TEST_LOG` sets another
//! filter, e.g. `debug`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use driver_tokio::{Client, ClientTls};
use raft_wire::test_util::free_addrs;

/// `n` `rkv serve` processes of one cluster, bootstrapped together.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub cluster_id: u64,
    pub peers: Vec<SocketAddr>,
    pub clients: Vec<SocketAddr>,
    procs: Vec<Option<Child>>,
    /// The flags each server gets after the ones that place it.
    serve_args: Vec<Vec<String>>,
    /// Where each server binds (peer, client), when not at `peers[i]` and
    /// `clients[i]`, the addresses it is known by: behind proxies.
    listen: Vec<(SocketAddr, SocketAddr)>,
    /// How [`ProcCluster::client`] connects (plaintext if `None`).
    pub client_tls: Option<ClientTls>,
}

impl ProcCluster {
    /// `n` servers with `--max-raft-state 65536`.
    pub fn new(cluster_id: u64, n: usize) -> ProcCluster {
        Self::with_args(cluster_id, n, &["--max-raft-state", "65536"])
    }

    /// `n` servers, each also given `serve_args`.
    pub fn with_args(cluster_id: u64, n: usize, serve_args: &[&str]) -> ProcCluster {
        Self::with_node_args(cluster_id, n, serve_args, Vec::new())
    }

    /// `n` servers, each given `serve_args` and then its own `node_args[i]`.
    pub fn with_node_args(
        cluster_id: u64,
        n: usize,
        serve_args: &[&str],
        node_args: Vec<Vec<String>>,
    ) -> ProcCluster {
        let args: Vec<String> = serve_args.iter().map(|a| a.to_string()).collect();
        Self::in_dir(tempfile::tempdir().expect("tempdir"), cluster_id, n, |i| {
            let mut a = args.clone();
            a.extend(node_args.get(i).into_iter().flatten().cloned());
            a
        })
    }

    /// `n` servers in `dir`, server `i` also given `serve_args(i)`.
    pub fn in_dir(
        dir: tempfile::TempDir,
        cluster_id: u64,
        n: usize,
        serve_args: impl Fn(usize) -> Vec<String>,
    ) -> ProcCluster {
        let mut addrs = free_addrs(2 * n);
        let clients = addrs.split_off(n);
        let args = (0..n).map(serve_args).collect();
        Self::build(dir, cluster_id, args, addrs, clients, Vec::new())
    }

    /// Servers known to each other by `peers` and to clients by `clients`,
    /// each also given `serve_args`; server `i` binds its listeners at
    /// `listen[i]` (peer, client) if given (`--peer-listen`,
    /// `--client-listen`), so that something else, a proxy, can stand at
    /// the addresses it is known by.
    pub fn behind(
        cluster_id: u64,
        serve_args: &[&str],
        peers: Vec<SocketAddr>,
        clients: Vec<SocketAddr>,
        listen: Vec<(SocketAddr, SocketAddr)>,
    ) -> ProcCluster {
        let args: Vec<String> = serve_args.iter().map(|a| a.to_string()).collect();
        let args = vec![args; peers.len()];
        let dir = tempfile::tempdir().expect("tempdir");
        Self::build(dir, cluster_id, args, peers, clients, listen)
    }

    fn build(
        dir: tempfile::TempDir,
        cluster_id: u64,
        serve_args: Vec<Vec<String>>,
        peers: Vec<SocketAddr>,
        clients: Vec<SocketAddr>,
        listen: Vec<(SocketAddr, SocketAddr)>,
    ) -> ProcCluster {
        let n = peers.len();
        let mut c = ProcCluster {
            dir,
            cluster_id,
            peers,
            clients,
            procs: (0..n).map(|_| None).collect(),
            serve_args,
            listen,
            client_tls: None,
        };
        for i in 0..n {
            c.start(i);
        }
        c
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.log"))
    }

    pub fn command(&self, i: usize) -> Command {
        let peers: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, a)| format!("{j}={a}"))
            .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkv"));
        cmd.arg("serve")
            .args([
                "--id",
                &i.to_string(),
                "--cluster-id",
                &self.cluster_id.to_string(),
            ])
            .args(["--peers", &peers.join(",")])
            .args(["--client-addr", &self.clients[i].to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(&self.serve_args[i])
            .env(
                "RKV_LOG",
                std::env::var("RKV_TEST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some((peer, client)) = self.listen.get(i) {
            cmd.args(["--peer-listen", &peer.to_string()])
                .args(["--client-listen", &client.to_string()]);
        }
        cmd
    }

    pub fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log");
        let child = self
            .command(i)
            .stderr(log)
            .spawn()
            .expect("spawn rkv serve");
        self.procs[i] = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// Sends SIGTERM (with `kill -TERM`).
    pub fn terminate(&mut self, i: usize) {
        let child = self.procs[i].as_ref().expect("a running server");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// The exit status of server `i` if it has exited (it is then no
    /// longer running; `None` while it runs).
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let status = self.procs[i].as_mut()?.try_wait().expect("try_wait")?;
        self.procs[i] = None;
        Some(status)
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }

    pub async fn client(&self) -> Client {
        let mut c = Client::connect(self.cluster_id, self.clients.clone())
            .await
            .expect("client")
            .with_tls(self.client_tls.clone());
        c.op_timeout = Duration::from_secs(20);
        c
    }

    /// Waits (up to 15 s) for some node to report itself leader.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut c = self.client().await;
        c.attempt_timeout = Duration::from_millis(300);
        loop {
            for i in 0..self.clients.len() {
                if let Ok(s) = c.status(i).await {
                    if s.role == "leader" {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within 15 s; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        // A failing test shows what each node said, and whether it had
        // exited by itself, before its directory goes.
        if std::thread::panicking() {
            for i in 0..self.procs.len() {
                let exited = match self.procs[i].as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => format!("exited by itself ({status})"),
                    Some(_) => "running".to_string(),
                    None => "not running (killed by the test)".to_string(),
                };
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- node {i}: {exited}; last lines of its log:");
                for line in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("    {line}");
                }
            }
        }
        self.kill_all();
    }
}
