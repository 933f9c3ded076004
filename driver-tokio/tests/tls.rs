//! TLS and refusals on real processes (issue 14, items 3 and 5): `rkv serve`
//! with `--tls-*` serves the CLI and the async client over TLS; a peer whose
//! certificate is from another CA, a plaintext client, and a client without
//! a certificate under `--client-cert-auth` are refused, the acceptor
//! logging why; a client of another cluster is told so, and the CLI prints
//! it and exits non-zero. The certificates are made with rcgen in the test's
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use driver_tokio::wire::HelloError;
use driver_tokio::{Client, ClientError, ClientTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[allow(dead_code)] // this file needs only `run`
mod common;
#[path = "common/procs.rs"]
mod procs;

use common::run;
use procs::ProcCluster;

/// A CA that signs certificates into a directory.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem()).expect("write CA");
        Ca {
            issuer,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate for 127.0.0.1, for servers and clients alike: its
    /// (certificate, key) paths.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// `rkv serve`'s TLS flags for a server with a certificate from this CA
    /// that trusts `trusted`.
    fn serve_args(&self, name: &str, trusted: &Ca) -> Vec<String> {
        let (cert, key) = self.issue(name);
        let mut args = vec![
            "--tls-cert".to_string(),
            path(&cert),
            "--tls-key".to_string(),
            path(&key),
            "--tls-ca".to_string(),
            path(&trusted.cert_path()),
        ];
        args.extend(["--max-raft-state".to_string(), "65536".to_string()]);
        args
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_string()
}

/// Runs an `rkv` client command against `cluster`.
fn cli(cluster: &ProcCluster, args: &[&str], extra: &[String]) -> Output {
    let servers: Vec<String> = cluster.clients.iter().map(|a| a.to_string()).collect();
    Command::new(env!("CARGO_BIN_EXE_rkv"))
        .args(args)
        .args(["--servers", &servers.join(",")])
        .args(extra)
        .args(["--timeout-secs", "20"])
        .stdin(Stdio::null())
        .output()
        .expect("run rkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Runs an `rkv` client command that the servers must refuse: it fails at
/// once (well within its 20 s timeout), non-zero, and its error contains
/// every one of `words`.
fn refused_cli(cluster: &ProcCluster, args: &[&str], extra: &[String], words: &[&str]) {
    let started = Instant::now();
    let out = cli(cluster, args, extra);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    for word in words {
        assert!(
            stderr.contains(word),
            "{args:?} names the reason ({word}): {stderr}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} fails at once"
    );
}

/// Waits (up to 20 s) for a line of one of the cluster's logs that
/// contains every one of `words`; returns it.
fn wait_for_log_line(cluster: &ProcCluster, nodes: &[usize], words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for &i in nodes {
            let log = std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
                return line.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no log line of nodes {nodes:?} has all of {words:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_tls_cluster_serves_the_cli_and_the_async_client_and_refuses_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca");
    let args: Vec<Vec<String>> = (0..3)
        .map(|i| ca.serve_args(&format!("node{i}"), &ca))
        .collect();
    let mut cluster = ProcCluster::in_dir(dir, 51, 3, |i| args[i].clone());
    cluster.client_tls = Some(ClientTls::load(&ca.cert_path(), None).expect("client TLS"));
    let tls_ca = vec!["--tls-ca".to_string(), path(&ca.cert_path())];
    let cluster_id = ["--cluster-id", "51"];

    run(Duration::from_secs(60), async {
        let mut c = cluster.client().await;
        c.put("a", "1").await.expect("a put over TLS");
        assert_eq!(c.get("a").await.expect("a get over TLS"), "1");
    });
    let put = cli(
        &cluster,
        &["put", "b", "2", cluster_id[0], cluster_id[1]],
        &tls_ca,
    );
    assert!(put.status.success(), "CLI put: {}", text(&put.stderr));
    let get = cli(
        &cluster,
        &["get", "b", cluster_id[0], cluster_id[1]],
        &tls_ca,
    );
    assert!(get.status.success(), "CLI get: {}", text(&get.stderr));
    assert_eq!(text(&get.stdout).trim(), "2");
    run(Duration::from_secs(60), async {
        let mut c = cluster.client().await;
        assert_eq!(c.get("b").await.expect("the CLI's put"), "2");
    });
    let status = cli(&cluster, &["status", cluster_id[0], cluster_id[1]], &tls_ca);
    assert!(
        status.status.success(),
        "CLI status: {}",
        text(&status.stderr)
    );
    assert!(
        text(&status.stdout).contains("leader") && !text(&status.stdout).contains("unreachable"),
        "every server answers over TLS: {}",
        text(&status.stdout)
    );

    // A plaintext client is told that the port takes TLS only.
    refused_cli(
        &cluster,
        &["get", "b", cluster_id[0], cluster_id[1]],
        &[],
        &["refused the connection: this port takes TLS connections only"],
    );
    run(Duration::from_secs(30), async {
        let mut c = Client::connect(51, cluster.clients.clone())
            .await
            .expect("client");
        let started = Instant::now();
        match c.get("b").await {
            Err(ClientError::HelloRefused {
                reason: HelloError::TlsRequired,
                ..
            }) => {}
            other => panic!("expected a TlsRequired refusal, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refused at once"
        );
    });
    wait_for_log_line(
        &cluster,
        &[0, 1, 2],
        &["refused a client", "TLS connections only"],
    );
    wait_for_log_line(&cluster, &[0], &["links are TLS"]);
    // The certificates were not from another cluster's CA: no peer refused.
    for i in 0..3 {
        let log = std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default();
        assert!(!log.contains("refused a peer"), "node {i}: {log}");
    }
    cluster.kill_all();
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca");
    let rogue = Ca::new(dir.path(), "rogue");
    // Node 2 trusts the cluster's CA, but its own certificate is another's.
    let args: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let issuer = if i == 2 { &rogue } else { &ca };
            issuer.serve_args(&format!("node{i}"), &ca)
        })
        .collect();
    let mut cluster = ProcCluster::in_dir(dir, 52, 3, |i| args[i].clone());
    cluster.client_tls = Some(ClientTls::load(&ca.cert_path(), None).expect("client TLS"));
    // Nodes 0 and 1 refuse node 2's dials, naming the certificate.
    let line = wait_for_log_line(
        &cluster,
        &[0, 1],
        &["refused a peer", "invalid peer certificate"],
    );
    assert!(line.contains("TLS handshake failed"), "{line}");
    // Node 2 learns that its certificate was refused, and refuses theirs.
    wait_for_log_line(&cluster, &[2], &["the peer refused our connection", "TLS"]);
    // The two good nodes still make a cluster.
    run(Duration::from_secs(60), async {
        let mut c = Client::connect(52, cluster.clients[..2].to_vec())
            .await
            .expect("client")
            .with_tls(cluster.client_tls.clone());
        c.op_timeout = Duration::from_secs(20);
        c.put("k", "v").await.expect("nodes 0 and 1 serve");
        assert_eq!(c.get("k").await.expect("a read"), "v");
    });
    cluster.kill_all();
}

#[test]
fn client_cert_auth_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca");
    let mut args = ca.serve_args("node0", &ca);
    args.push("--client-cert-auth".to_string());
    let (client_cert, client_key) = ca.issue("client");
    let mut cluster = ProcCluster::in_dir(dir, 53, 1, |_| args.clone());
    cluster.client_tls = Some(
        ClientTls::load(&ca.cert_path(), Some((&client_cert, &client_key))).expect("client TLS"),
    );
    let cluster_id = ["--cluster-id", "53"];

    let with_cert = vec![
        "--tls-ca".to_string(),
        path(&ca.cert_path()),
        "--tls-cert".to_string(),
        path(&client_cert),
        "--tls-key".to_string(),
        path(&client_key),
    ];
    let put = cli(
        &cluster,
        &["put", "k", "v", cluster_id[0], cluster_id[1]],
        &with_cert,
    );
    assert!(
        put.status.success(),
        "CLI put with a certificate: {}",
        text(&put.stderr)
    );
    run(Duration::from_secs(60), async {
        let mut c = cluster.client().await;
        assert_eq!(c.get("k").await.expect("a get with a certificate"), "v");
    });

    let without = vec!["--tls-ca".to_string(), path(&ca.cert_path())];
    refused_cli(
        &cluster,
        &["get", "k", cluster_id[0], cluster_id[1]],
        &without,
        &["TLS with", "client certificate"],
    );
    run(Duration::from_secs(30), async {
        let mut c = Client::connect(53, cluster.clients.clone())
            .await
            .expect("client")
            .with_tls(Some(ClientTls::load(&ca.cert_path(), None).expect("TLS")));
        let refused = c.get("k").await;
        assert!(
            matches!(refused, Err(ClientError::Tls { .. })),
            "expected a TLS refusal, got {refused:?}"
        );
    });
    let line = wait_for_log_line(
        &cluster,
        &[0],
        &["refused a client", "TLS handshake failed"],
    );
    assert!(line.contains("certificate"), "{line}");
    cluster.kill_all();
}

#[test]
fn the_cli_prints_the_refusal_of_a_wrong_cluster_id_and_of_tls_to_plaintext() {
    let mut cluster = ProcCluster::new(54, 1);
    run(Duration::from_secs(60), async {
        cluster.leader().await;
    });
    // A TLS client of a plaintext server fails at once, saying so.
    let ca = Ca::new(cluster.dir.path(), "ca");
    let tls_ca = vec!["--tls-ca".to_string(), path(&ca.cert_path())];
    refused_cli(
        &cluster,
        &["get", "k", "--cluster-id", "54"],
        &tls_ca,
        &["TLS with", "does the server speak TLS?"],
    );
    wait_for_log_line(
        &cluster,
        &[0],
        &["refused a client", "takes plaintext connections only"],
    );
    let commands = [
        &["get", "k"][..],
        &["get", "k", "--consistency", "local"],
        &["put", "k", "v"],
        &["status"],
        &["member", "list"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--cluster-id", "55"]);
        refused_cli(
            &cluster,
            &args,
            &[],
            &["refused the connection: cluster id 55 is not ours (54)"],
        );
    }
    wait_for_log_line(&cluster, &[0], &["links are plaintext"]);
    cluster.kill_all();
}
