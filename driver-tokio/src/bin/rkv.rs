//! `rkv`: run a KV server, or talk to a cluster.
//!
//! ```text
//! rkv serve --id 0 --cluster-id 7 --peers 0=127.0.0.1:7000,1=127.0.0.1:7001,2=127.0.0.1:7002 \
//!           --client-addr 127.0.0.1:7100 --data-dir data/0 [--max-raft-state 1048576]
//!           [--read-policy read-index|lease|log] [--follower-reads] [--metrics-addr 127.0.0.1:9100]
//!           [--election-timeout-ms 300] [--heartbeat-ms 100]
//!           [--peer-listen HOST:PORT] [--client-listen HOST:PORT]
//! rkv serve --id 3 --cluster-id 7 --join 127.0.0.1:7100 --peer-addr 127.0.0.1:7003 \
//!           --client-addr 127.0.0.1:7103 --data-dir data/3
//! rkv serve --id 3 --cluster-id 7 --peer-addr 127.0.0.1:7003 --client-addr 127.0.0.1:7103 \
//!           --data-dir data/3                  (a restart: the data directory knows the rest)
//! rkv serve --config node0.toml
//! rkv serve ... --tls-cert node0.pem --tls-key node0.key --tls-ca ca.pem [--client-cert-auth]
//! rkv put KEY VALUE  --servers 127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102 [--cluster-id 7]
//! rkv get KEY        --servers ... [--consistency linearizable|lease|local]
//! rkv append KEY VALUE --servers ...
//! rkv del KEY          --servers ...     (prints deleted / not found; exit 0 either way)
//! rkv cas KEY EXPECTED NEW --servers ... (exit 0 swapped, 3 not swapped, 1 error)
//! rkv cas KEY --expect-absent NEW --servers ...
//! rkv status         --servers ...
//! rkv member list    --servers ...
//! rkv member add-learner ID PEER_ADDR CLIENT_ADDR --servers ...
//! rkv member promote ID --servers ...
//! rkv member remove ID  --servers ...
//! rkv transfer-leader [ID] --servers ...
//!   (every client command also takes --tls-ca ca.pem [--tls-cert client.pem --tls-key client.key])
//! ```
//!
//! `rkv serve` stops on SIGTERM or SIGINT: the write being made durable
//! (and any queued behind it) finishes, then it exits with status 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use driver_tokio::{
    parse_read_policy, start_node, start_node_with, Client, ClientTls, NodeConfig, NodeError,
    NodeHandle, ReadConsistency, ReadPolicy, Swap, TlsFiles,
};
use kv_core::{AdminReply, AdminRequest, MemberAddrs};
use serde::Deserialize;

/// mimalloc, not the system allocator: glibc's malloc and free were a fifth
/// of the event loop's CPU under load, and a snapshot thread freeing the
/// store's old values (allocated by the loop) took the loop's arena lock
/// for each one, stalling the loop for milliseconds per snapshot.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rkv",
    version,
    about = "A replicated, linearizable key/value store on Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one server of a cluster.
    Serve(Box<ServeArgs>),
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the value of KEY ("" if unset). Never writes to the log.
    Get {
        /// The key.
        key: String,
        /// linearizable: the latest value (ReadIndex: the leader confirms
        /// with a quorum round that it still leads; no clock assumed).
        /// lease: the same from the leader's lease, with no round, if every
        /// server runs --read-policy lease (assumes bounded clock drift);
        /// otherwise as linearizable. local: POSSIBLY STALE, the answering
        /// server's own applied state, with no contact with the leader
        /// (like etcd's serializable reads); answered even by a server cut
        /// off from the rest; served by one of --servers (give just one to
        /// read that server's state).
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
        #[command(flatten)]
        target: Target,
    },
    /// Append VALUE to KEY.
    Append {
        /// The key.
        key: String,
        /// What to append.
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove KEY. Prints "deleted" if it was set, "not found" if not;
    /// exit status 0 either way (1 on an error: then the delete may or may
    /// not have taken effect).
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set KEY to NEW if and only if it holds EXPECTED, atomically and
    /// exactly once; with --expect-absent, if and only if KEY is unset (a
    /// key set to "" is set; `rkv get` prints "" for both). Prints
    /// "swapped", or "not swapped: unset" / "not swapped: current value
    /// \"...\"" (quoted with escapes) and changes nothing. Exit status: 0
    /// swapped, 3 not swapped, 1 error (then the swap may or may not have
    /// taken effect), 2 bad usage.
    Cas(CasArgs),
    /// Show each server's role, term, commit and applied index, its part in
    /// the configuration, (from the leader) its match index, and how it
    /// serves reads (its --read-policy, and +follower with --follower-reads).
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// List or change the cluster's members.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Hand leadership to server ID (default: the most up-to-date voter).
    TransferLeader {
        /// The new leader.
        id: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
}

/// `rkv cas`.
#[derive(Args)]
struct CasArgs {
    /// The key.
    key: String,
    /// EXPECTED NEW, or only NEW with --expect-absent.
    #[arg(value_name = "EXPECTED NEW", num_args = 1..=2, required = true)]
    values: Vec<String>,
    /// Swap only if KEY is unset (give only NEW).
    #[arg(long)]
    expect_absent: bool,
    #[command(flatten)]
    target: Target,
}

/// `rkv cas`'s exit status when the key did not hold the expected value.
const NOT_SWAPPED_EXIT: u8 = 3;
/// The exit status of a command line that does not parse (clap's).
const USAGE_EXIT: u8 = 2;

/// Runs `rkv cas`: the exit status, or why it failed.
async fn cas(args: CasArgs) -> Result<ExitCode, String> {
    let (expected, new) = match (args.expect_absent, args.values.as_slice()) {
        (false, [expected, new]) => (Some(expected.as_str()), new),
        (true, [new]) => (None, new),
        (absent, _) => {
            let usage = if absent {
                "with --expect-absent, give only NEW"
            } else {
                "give EXPECTED and NEW (or --expect-absent NEW)"
            };
            eprintln!("rkv cas: {usage}");
            return Ok(ExitCode::from(USAGE_EXIT));
        }
    };
    let swap = client(&args.target)
        .await?
        .compare_and_swap(&args.key, expected, new)
        .await
        .map_err(|e| e.to_string())?;
    match swap {
        Swap::Swapped => {
            println!("swapped");
            Ok(ExitCode::SUCCESS)
        }
        Swap::NotSwapped { current } => {
            match current {
                Some(v) => println!("not swapped: current value {v:?}"),
                None => println!("not swapped: unset"),
            }
            Ok(ExitCode::from(NOT_SWAPPED_EXIT))
        }
    }
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Each member's id, role, addresses and (from the leader) match index.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Record a new server's addresses and add it as a learner (it receives
    /// the log and votes for nothing). Start it with `rkv serve --join`.
    AddLearner {
        /// The new server's node id.
        id: u64,
        /// Its peer address (its `--peer-addr`).
        peer_addr: SocketAddr,
        /// Its client address (its `--client-addr`).
        client_addr: SocketAddr,
        #[command(flatten)]
        target: Target,
    },
    /// Make learner ID a voter (wait until its match index has caught up).
    Promote {
        /// The learner.
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Remove member ID (a voter or a learner; the leader hands over first).
    Remove {
        /// The member.
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

/// `rkv get --consistency`.
#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    /// The latest value, by ReadIndex (no clock assumed).
    Linearizable,
    /// The latest value, by the leader's lease (bounded clock drift).
    Lease,
    /// Possibly stale: the answering server's applied state.
    Local,
}

impl From<Consistency> for ReadConsistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => ReadConsistency::Linearizable,
            Consistency::Lease => ReadConsistency::Lease,
            Consistency::Local => ReadConsistency::Local,
        }
    }
}

#[derive(Args)]
struct Target {
    /// Some servers' client addresses, comma-separated (the others are
    /// learned from them).
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddr>,
    /// The cluster id the servers were started with.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// A client's TLS (for servers run with --tls-cert).
#[derive(Args)]
struct ClientTlsArgs {
    /// Connect over TLS: the CA certificate(s) (PEM) that the servers'
    /// certificates must chain to (each must name the address dialled).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, for servers run with
    /// --client-cert-auth.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn load(&self) -> Result<Option<ClientTls>, String> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        ClientTls::load(ca, identity)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

#[derive(Args, Default)]
struct ServeArgs {
    /// A TOML file with any of the settings below (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    id: Option<u64>,
    /// The cluster id (connections from other clusters are refused).
    #[arg(long)]
    cluster_id: Option<u64>,
    /// To bootstrap a new cluster: every initial member's peer address,
    /// this node's included: ID=HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where peers connect (default: this node's entry in --peers).
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// To join a running cluster with a new data directory: some of its
    /// servers' client addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    join: Vec<SocketAddr>,
    /// Where clients connect.
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Where the log and snapshots are kept.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Snapshot once the on-disk log reaches this many bytes (default 64 MiB; 0: never).
    #[arg(long)]
    max_raft_state: Option<usize>,
    /// How reads are served. read-index (the default): the leader confirms
    /// it still leads with a quorum round, nothing is written, no clock is
    /// assumed. lease: as read-index, but the leader answers
    /// `get --consistency lease` from its lease with no round; it assumes
    /// every clock runs within 5% of true time, and must be given to every
    /// server of the cluster. log: Gets go through the log like writes.
    #[arg(long, value_parser = parse_read_policy)]
    read_policy: Option<ReadPolicy>,
    /// Serve linearizable reads on a follower too (it asks the leader for
    /// the read index and answers once it has applied that far), so that
    /// clients spread reads over every member.
    #[arg(long)]
    follower_reads: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: off).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// The election timeout's lower bound in milliseconds (each wait is
    /// drawn from [MS, 2·MS); default 300). Give every server the same, well
    /// above the round trip between peers (slow links, a WAN).
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// How often the leader sends heartbeats, in milliseconds (default
    /// 100; below the election timeout).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Bind the peer listener here rather than at the peer address, which
    /// stays what the other servers are told (a proxy or NAT in front).
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Bind the client listener here rather than at --client-addr, which
    /// stays what clients are told.
    #[arg(long)]
    client_listen: Option<SocketAddr>,
    /// TLS on every link: this node's certificate chain (PEM), naming its
    /// peer and client addresses' IPs, usable as server and client
    /// certificate. Needs --tls-key and --tls-ca. Without it, every link is
    /// plaintext (fine on loopback only).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The cluster's CA certificate(s) (PEM): peers must present a
    /// certificate from it, and the servers dialled must too.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Demand a client certificate from the CA on the client port too
    /// (with --tls-cert).
    #[arg(long)]
    client_cert_auth: bool,
}

/// The TOML form of `serve`'s settings.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    cluster_id: Option<u64>,
    peers: Option<BTreeMap<String, SocketAddr>>,
    peer_addr: Option<SocketAddr>,
    join: Option<Vec<SocketAddr>>,
    client_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    max_raft_state: Option<usize>,
    read_policy: Option<String>,
    follower_reads: Option<bool>,
    metrics_addr: Option<SocketAddr>,
    election_timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    peer_listen: Option<SocketAddr>,
    client_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    client_cert_auth: Option<bool>,
}

/// `--tls-cert`, `--tls-key` and `--tls-ca` (or the file's), all or none.
fn tls_files(args: &ServeArgs, file: &FileConfig) -> Result<Option<TlsFiles>, String> {
    let cert = args.tls_cert.clone().or(file.tls_cert.clone());
    let key = args.tls_key.clone().or(file.tls_key.clone());
    let ca = args.tls_ca.clone().or(file.tls_ca.clone());
    let client_cert_auth = args.client_cert_auth || file.client_cert_auth.unwrap_or(false);
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
            cert,
            key,
            ca,
            client_cert_auth,
        })),
        (None, None, None) if client_cert_auth => {
            Err("--client-cert-auth needs TLS: give --tls-cert, --tls-key and --tls-ca".into())
        }
        (None, None, None) => Ok(None),
        _ => Err("TLS needs all of --tls-cert, --tls-key and --tls-ca".into()),
    }
}

/// Where `serve` binds its listeners, when not at the addresses it is known
/// by.
#[derive(Default)]
struct Listen {
    peer: Option<SocketAddr>,
    client: Option<SocketAddr>,
}

fn node_config(args: ServeArgs) -> Result<(NodeConfig, Listen), String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let tls = tls_files(&args, &file)?;
    let mut peers = BTreeMap::new();
    for (id, addr) in file.peers.unwrap_or_default() {
        let id: u64 = id
            .parse()
            .map_err(|_| format!("peers: {id:?} is not a node id"))?;
        peers.insert(id, addr);
    }
    for spec in &args.peers {
        let (id, addr) = spec
            .split_once('=')
            .ok_or_else(|| format!("--peers: expected ID=HOST:PORT, got {spec:?}"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--peers: {id:?} is not a node id"))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("--peers: {addr:?} is not HOST:PORT"))?;
        peers.insert(id, addr);
    }
    let id = args.id.or(file.id).ok_or("--id is required")?;
    let join = if args.join.is_empty() {
        file.join.unwrap_or_default()
    } else {
        args.join
    };
    let peer_addr = args.peer_addr.or(file.peer_addr);
    if !peers.is_empty() && !join.is_empty() {
        return Err("give --peers (a new cluster) or --join (a running one), not both".into());
    }
    if !peers.is_empty() && !peers.contains_key(&id) {
        return Err(format!("--peers must include this node ({id})"));
    }
    if peers.is_empty() && peer_addr.is_none() {
        return Err(
            "--peer-addr is required without --peers (a joining or restarting node)".into(),
        );
    }
    let read_policy = match (args.read_policy, &file.read_policy) {
        (Some(p), _) => p,
        (None, Some(name)) => parse_read_policy(name).map_err(|e| format!("read_policy: {e}"))?,
        (None, None) => ReadPolicy::default(),
    };
    let max = args
        .max_raft_state
        .or(file.max_raft_state)
        .unwrap_or(64 << 20);
    let election = args.election_timeout_ms.or(file.election_timeout_ms);
    let heartbeat = args.heartbeat_ms.or(file.heartbeat_ms);
    if election == Some(0) || heartbeat == Some(0) {
        return Err("--election-timeout-ms and --heartbeat-ms must be above 0".into());
    }
    if heartbeat.unwrap_or(100) >= election.unwrap_or(300) {
        return Err("--heartbeat-ms must be below --election-timeout-ms".into());
    }
    let listen = Listen {
        peer: args.peer_listen.or(file.peer_listen),
        client: args.client_listen.or(file.client_listen),
    };
    // Bound elsewhere, the node is told its peer address.
    let peer_addr = peer_addr.or_else(|| listen.peer.and(peers.get(&id).copied()));
    let config = NodeConfig {
        id,
        cluster_id: args.cluster_id.or(file.cluster_id).unwrap_or(1),
        peers,
        peer_addr,
        join,
        client_addr: args
            .client_addr
            .or(file.client_addr)
            .ok_or("--client-addr is required")?,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .ok_or("--data-dir is required")?,
        max_raft_state: (max > 0).then_some(max),
        read_policy,
        follower_reads: args.follower_reads || file.follower_reads.unwrap_or(false),
        metrics_addr: args.metrics_addr.or(file.metrics_addr),
        election_timeout: election.map(Duration::from_millis),
        heartbeat_interval: heartbeat.map(Duration::from_millis),
        tls,
    };
    Ok((config, listen))
}

/// Starts the node, on listeners bound at `listen` where given.
async fn start(config: NodeConfig, listen: Listen) -> Result<NodeHandle, NodeError> {
    if listen.peer.is_none() && listen.client.is_none() {
        return start_node(config).await;
    }
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Bind { addr, source })
    };
    let peer_addr = config
        .peer_addr
        .or_else(|| config.peers.get(&config.id).copied())
        .ok_or_else(|| NodeError::Config("no peer address: give --peer-addr".into()))?;
    let peer = bind(listen.peer.unwrap_or(peer_addr)).await?;
    let client = bind(listen.client.unwrap_or(config.client_addr)).await?;
    start_node_with(config, peer, client).await
}

/// Resolves on the first SIGTERM or SIGINT after the call (the handlers
/// are installed at once, so none is missed in between), naming it.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let (config, listen) = match node_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rkv serve: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("rkv serve: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::pin!(stop);
    let started = tokio::select! {
        started = start(config, listen) => started,
        signal = &mut stop => {
            tracing::info!(signal, "stopped while starting");
            return ExitCode::SUCCESS;
        }
    };
    let mut node = match started {
        Ok(n) => n,
        Err(e) => {
            eprintln!("rkv serve: {e}");
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        result = node.wait() => {
            if let Err(e) = result {
                eprintln!("rkv serve: {e}");
                return ExitCode::FAILURE;
            }
        }
        signal = &mut stop => {
            tracing::info!(signal, "shutting down: finishing the writes in progress");
        }
    }
    node.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn client(target: &Target) -> Result<Client, String> {
    let mut c = Client::connect(target.cluster_id, target.servers.clone())
        .await
        .map_err(|e| e.to_string())?
        .with_tls(target.tls.load()?);
    c.op_timeout = Duration::from_secs(target.timeout_secs);
    Ok(c)
}

async fn run_client_command(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(_) => unreachable!("handled by main"),
        Command::Put { key, value, target } => client(&target)
            .await?
            .put(&key, &value)
            .await
            .map_err(|e| e.to_string()),
        Command::Append { key, value, target } => client(&target)
            .await?
            .append(&key, &value)
            .await
            .map_err(|e| e.to_string()),
        Command::Get {
            key,
            consistency,
            target,
        } => {
            let v = client(&target)
                .await?
                .get_with(&key, consistency.into())
                .await
                .map_err(|e| e.to_string())?;
            println!("{v}");
            Ok(())
        }
        Command::Del { key, target } => {
            let existed = client(&target)
                .await?
                .delete(&key)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", if existed { "deleted" } else { "not found" });
            Ok(())
        }
        Command::Cas(_) => unreachable!("handled by main"),
        Command::Status { target } => status(&target).await,
        Command::Member { command } => member(command).await,
        Command::TransferLeader { id, target } => {
            let mut c = client(&target).await?;
            admin(&mut c, AdminRequest::TransferLeader { to: id }).await?;
            // Report who leads now, once someone does.
            for _ in 0..50 {
                if let Ok(list) = c.members().await {
                    if let Some(leader) = list.leader {
                        println!("leader: node {leader} (term {})", list.term);
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("leadership left the old leader");
            Ok(())
        }
    }
}

async fn admin(c: &mut Client, request: AdminRequest) -> Result<AdminReply, String> {
    c.admin(request).await.map_err(|e| e.to_string())
}

async fn member(command: MemberCommand) -> Result<(), String> {
    let (target, request) = match command {
        MemberCommand::List { target } => {
            let list = client(&target)
                .await?
                .members()
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{:<5} {:<8} {:<22} {:<22} {:>10}",
                "node", "role", "peer address", "client address", "match"
            );
            for m in &list.members {
                let (peer, client) = m.addrs.as_ref().map_or(("-".into(), "-".into()), |a| {
                    (a.peer.clone(), a.client.clone())
                });
                let leader = if list.leader == Some(m.id) {
                    " (leader)"
                } else {
                    ""
                };
                println!(
                    "{:<5} {:<8} {:<22} {:<22} {:>10}{leader}",
                    m.id,
                    m.role.name(),
                    peer,
                    client,
                    m.match_index.map_or("-".to_string(), |i| i.to_string()),
                );
            }
            if !list.committed {
                println!("(the latest configuration is not yet committed)");
            }
            return Ok(());
        }
        MemberCommand::AddLearner {
            id,
            peer_addr,
            client_addr,
            target,
        } => {
            let addrs = MemberAddrs {
                peer: peer_addr.to_string(),
                client: client_addr.to_string(),
            };
            (target, AdminRequest::AddLearner { node: id, addrs })
        }
        MemberCommand::Promote { id, target } => (target, AdminRequest::Promote { node: id }),
        MemberCommand::Remove { id, target } => (target, AdminRequest::Remove { node: id }),
    };
    let mut c = client(&target).await?;
    admin(&mut c, request).await?;
    println!("ok");
    Ok(())
}

/// The status table: every server given, and every other member whose
/// client address is recorded.
async fn status(target: &Target) -> Result<(), String> {
    let mut c = client(target).await?;
    c.attempt_timeout = Duration::from_millis(700);
    let mut addrs: Vec<SocketAddr> = target.servers.clone();
    let mut rows = Vec::new();
    let mut leader_view: Option<kv_core::MemberList> = None;
    let mut refusal = None;
    let mut i = 0;
    while i < addrs.len() {
        let addr = addrs[i];
        i += 1;
        let result = c.status_at(addr).await;
        match &result {
            Err(e) if e.is_refusal() => {
                refusal.get_or_insert_with(|| e.to_string());
            }
            _ => {}
        }
        if let Ok(s) = &result {
            for m in &s.members.members {
                let recorded = m.addrs.as_ref().and_then(|a| a.client.parse().ok());
                if let Some(a) = recorded.filter(|a| !addrs.contains(a)) {
                    addrs.push(a);
                }
            }
            if s.members.from_leader() {
                leader_view = Some(s.members.clone());
            }
        }
        rows.push((addr, result));
    }
    println!(
        "{:<5} {:<22} {:<10} {:>5} {:>7} {:>10} {:>10} {:>10} {:>9}  {:<8} {:>10}  reads",
        "node",
        "address",
        "role",
        "term",
        "leader",
        "commit",
        "applied",
        "last",
        "snapshot",
        "member",
        "match",
    );
    for (addr, result) in rows {
        match result {
            Ok(s) => {
                let me = leader_view
                    .as_ref()
                    .unwrap_or(&s.members)
                    .member(s.node_id)
                    .cloned();
                let member = me.as_ref().map_or("-", |m| m.role.name());
                let matched = me
                    .and_then(|m| m.match_index)
                    .map_or("-".to_string(), |i| i.to_string());
                let reads = if s.follower_reads {
                    format!("{} +follower", s.read_policy)
                } else {
                    s.read_policy.clone()
                };
                println!(
                    "{:<5} {:<22} {:<10} {:>5} {:>7} {:>10} {:>10} {:>10} {:>9}  {:<8} {:>10}  {}",
                    s.node_id,
                    addr.to_string(),
                    s.role,
                    s.term,
                    s.leader.map_or("-".to_string(), |l| l.to_string()),
                    s.commit_index,
                    s.last_applied,
                    s.last_index,
                    s.snapshot_index,
                    member,
                    matched,
                    reads,
                )
            }
            Err(e) => println!("{:<5} {:<22} unreachable ({e})", "?", addr.to_string()),
        }
    }
    // A server that turns us away is misconfiguration, not an outage.
    refusal.map_or(Ok(()), Err)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RKV_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread runs the node's event loop and connections (storage has its
    // own thread): on a small machine shared by several nodes this beats a
    // work-stealing pool, which spends its time handing tasks between cores.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            other => {
                let result = match other {
                    Command::Cas(args) => cas(args).await,
                    other => run_client_command(other).await.map(|()| ExitCode::SUCCESS),
                };
                result.unwrap_or_else(|e| {
                    eprintln!("rkv: {e}");
                    ExitCode::FAILURE
                })
            }
        }
    })
}
