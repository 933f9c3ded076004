//! `rkv`: run a KV server, or talk to a cluster.
//!
//! ```text
//! rkv serve --id 0 --cluster-id 7 --peers 0=127.0.0.1:7000,1=127.0.0.1:7001,2=127.0.0.1:7002 \
//!           --client-addr 127.0.0.1:7100 --data-dir data/0 [--max-raft-state 1048576]
//! rkv serve --config node0.toml
//! rkv put KEY VALUE  --servers 127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102 [--cluster-id 7]
//! rkv get KEY        --servers ...
//! rkv append KEY VALUE --servers ...
//! rkv status         --servers ...
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use driver_tokio::{start_node, Client, NodeConfig};
use serde::Deserialize;

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
    Serve(ServeArgs),
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the value of KEY ("" if unset).
    Get {
        /// The key.
        key: String,
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
    /// Show each server's role, term, commit and applied index.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
struct Target {
    /// The servers' client addresses, in node-id order, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddr>,
    /// The cluster id the servers were started with.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
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
    /// Every member's peer address, this node's included: ID=HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where clients connect.
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Where the log and snapshots are kept.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Snapshot once the on-disk log reaches this many bytes (default 64 MiB; 0: never).
    #[arg(long)]
    max_raft_state: Option<usize>,
}

/// The TOML form of `serve`'s settings.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    cluster_id: Option<u64>,
    peers: Option<BTreeMap<String, SocketAddr>>,
    client_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    max_raft_state: Option<usize>,
}

fn node_config(args: ServeArgs) -> Result<NodeConfig, String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
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
    if peers.is_empty() {
        return Err("--peers is required (every member, this node included)".into());
    }
    if !peers.contains_key(&id) {
        return Err(format!("--peers must include this node ({id})"));
    }
    let max = args
        .max_raft_state
        .or(file.max_raft_state)
        .unwrap_or(64 << 20);
    Ok(NodeConfig {
        id,
        cluster_id: args.cluster_id.or(file.cluster_id).unwrap_or(1),
        peers,
        client_addr: args
            .client_addr
            .or(file.client_addr)
            .ok_or("--client-addr is required")?,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .ok_or("--data-dir is required")?,
        max_raft_state: (max > 0).then_some(max),
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match node_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rkv serve: {e}");
            return ExitCode::from(2);
        }
    };
    let mut node = match start_node(config).await {
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
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; shutting down");
        }
    }
    node.shutdown().await;
    ExitCode::SUCCESS
}

async fn client(target: &Target) -> Result<Client, String> {
    let mut c = Client::connect(target.cluster_id, target.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
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
        Command::Get { key, target } => {
            let v = client(&target)
                .await?
                .get(&key)
                .await
                .map_err(|e| e.to_string())?;
            println!("{v}");
            Ok(())
        }
        Command::Status { target } => {
            let mut c = client(&target).await?;
            c.attempt_timeout = Duration::from_millis(700);
            println!(
                "{:<5} {:<22} {:<10} {:>5} {:>7} {:>10} {:>10} {:>10} {:>9}",
                "node",
                "address",
                "role",
                "term",
                "leader",
                "commit",
                "applied",
                "last",
                "snapshot"
            );
            for (i, addr) in target.servers.iter().enumerate() {
                match c.status(i).await {
                    Ok(s) => println!(
                        "{:<5} {:<22} {:<10} {:>5} {:>7} {:>10} {:>10} {:>10} {:>9}",
                        s.node_id,
                        addr.to_string(),
                        s.role,
                        s.term,
                        s.leader.map_or("-".to_string(), |l| l.to_string()),
                        s.commit_index,
                        s.last_applied,
                        s.last_index,
                        s.snapshot_index
                    ),
                    Err(e) => println!("{:<5} {:<22} unreachable ({e})", "?", addr.to_string()),
                }
            }
            Ok(())
        }
    }
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
            Command::Serve(args) => serve(args).await,
            other => match run_client_command(other).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rkv: {e}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}
