//! `raft-node`: one member of a Raft cluster in its own process, replicating
//! a log of text commands over TCP, with its state on disk.
//!
//! ```text
//! raft-node --id 0 --peers 0=127.0.0.1:7200,1=127.0.0.1:7201,2=127.0.0.1:7202 \
//!           --data-dir data/0 [--cluster-id 1] [--propose-every-ms 200]
//! ```
//!
//! Each line typed on standard input is proposed as a command (only the
//! leader takes it: the others say who leads); with `--propose-every-ms N`
//! the node also proposes a numbered command every N ms while it leads.
//!
//! The replicated service keeps a running digest of the log: the digest at
//! index i hashes the digest at i - 1 with entry i's index and command. Two
//! nodes that print the same digest at an index have applied the same
//! commands in the same order up to there. Standard output has one line per
//! event, as `word key=value ...`:
//!
//! ```text
//! ready node=0 listening=127.0.0.1:7200
//! role leader term=1 leader=0
//! applied index=3 term=1 digest=8c0b5e9d1e2f3a47 command="0.2"
//! snapshot index=1000 digest=1d6e...       (the service was replaced by a snapshot)
//! proposed index=4 term=1                  (a line from stdin was accepted)
//! rejected not-leader leader=2             (a line from stdin was refused)
//! ```
//!
//! Diagnostics (connections, errors) go to standard error.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use driver_threads::tcp_node::{NodeOptions, Proposal, Proposer, Service, TcpNode};
use raft_core::{Entry, NodeId, RejectReason, Role, SnapshotMeta, Term};

/// One member of a Raft cluster replicating text commands over TCP.
#[derive(Parser, Debug)]
#[command(name = "raft-node", version)]
struct Args {
    /// This node's id (one of the ids in --peers).
    #[arg(long)]
    id: NodeId,
    /// Every member as ID=HOST:PORT, comma-separated, this node included.
    #[arg(long, value_parser = parse_peers)]
    peers: Peers,
    /// Where this node keeps its state (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// The cluster's id: connections and data directories of other
    /// clusters are refused.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// While leading, propose a numbered command every this many ms (0: never).
    #[arg(long, default_value_t = 0)]
    propose_every_ms: u64,
    /// Snapshot the service every this many applied entries (0: never).
    #[arg(long, default_value_t = 1000)]
    snapshot_every: u64,
}

#[derive(Clone, Debug)]
struct Peers(BTreeMap<NodeId, SocketAddr>);

fn parse_peers(s: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} in {item:?} is not a node id (a number)"))?;
        let addr = addr
            .trim()
            .to_socket_addrs()
            .map_err(|e| format!("{addr:?} in {item:?} is not an address: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr:?} in {item:?} resolves to no address"))?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("node id {id} appears twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(Peers(peers))
}

/// The replicated service: a running digest of the applied log.
struct DigestLog {
    index: u64,
    digest: u64,
}

impl DigestLog {
    fn chain(digest: u64, entry: &Entry) -> u64 {
        // FNV-1a, 64-bit: enough to tell logs apart, not a cryptographic hash.
        let mut h = 0xcbf2_9ce4_8422_2325_u64;
        let bytes = digest
            .to_le_bytes()
            .into_iter()
            .chain(entry.index.to_le_bytes());
        for b in bytes.chain(entry.command().unwrap_or_default().iter().copied()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl Service for DigestLog {
    fn apply(&mut self, entry: &Entry) {
        self.digest = Self::chain(self.digest, entry);
        self.index = entry.index;
        let command = match entry.command() {
            Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
            None => "noop".to_string(),
        };
        say(format_args!(
            "applied index={} term={} digest={:016x} command={command}",
            entry.index, entry.term, self.digest
        ));
    }

    fn snapshot(&self) -> Vec<u8> {
        [self.index.to_le_bytes(), self.digest.to_le_bytes()].concat()
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &mut dyn Read) -> Result<(), String> {
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)
            .map_err(|e| format!("reading the snapshot through {}: {e}", meta.index))?;
        let data = &bytes[..];
        let words: Vec<u64> = data
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        match words[..] {
            [index, digest] if data.len() == 16 && index == meta.index => {
                self.index = index;
                self.digest = digest;
                say(format_args!("snapshot index={index} digest={digest:016x}"));
                Ok(())
            }
            _ => Err(format!(
                "a snapshot of {} bytes through {} is not this service's",
                data.len(),
                meta.index
            )),
        }
    }

    fn role_changed(&mut self, role: Role, term: Term, leader: Option<NodeId>) {
        let role = match role {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Follower => "follower",
        };
        let leader = leader.map_or("none".to_string(), |l| l.to_string());
        say(format_args!("role {role} term={term} leader={leader}"));
    }
}

/// One line on stdout, flushed (a pipe would otherwise hold it).
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn describe(proposal: Proposal) -> String {
    match proposal {
        Proposal::Accepted { index, term } => format!("proposed index={index} term={term}"),
        Proposal::Rejected(RejectReason::NotLeader { leader_hint }) => format!(
            "rejected not-leader leader={}",
            leader_hint.map_or("unknown".to_string(), |l| l.to_string())
        ),
        Proposal::Rejected(RejectReason::TooManyUncommitted) => {
            "rejected too-many-uncommitted".to_string()
        }
        Proposal::Rejected(RejectReason::TransferInProgress) => {
            "rejected transfer-in-progress".to_string()
        }
    }
}

fn propose_periodically(proposer: Proposer, id: NodeId, every: Duration) {
    let mut seq = 0u64;
    loop {
        std::thread::sleep(every);
        match proposer.propose(format!("{id}.{seq}").into_bytes()) {
            Ok(Proposal::Accepted { .. }) => seq += 1,
            Ok(Proposal::Rejected(_)) => {}
            Err(_) => return,
        }
    }
}

fn propose_stdin(proposer: Proposer) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        match proposer.propose(line.into_bytes()) {
            Ok(answer) => say(format_args!("{}", describe(answer))),
            Err(_) => return,
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let peers = args.peers.0;
    if !peers.contains_key(&args.id) {
        let ids: Vec<String> = peers.keys().map(ToString::to_string).collect();
        return Err(format!(
            "--id {} is not among the ids in --peers ({})",
            args.id,
            ids.join(", ")
        ));
    }
    let mut options = NodeOptions::new(args.id, args.cluster_id, peers, args.data_dir);
    options.snapshot_every = (args.snapshot_every > 0).then_some(args.snapshot_every);
    let service = DigestLog {
        index: 0,
        digest: 0,
    };
    let node = TcpNode::start(options, service).map_err(|e| e.to_string())?;
    say(format_args!(
        "ready node={} listening={}",
        args.id,
        node.local_addr()
    ));
    if args.propose_every_ms > 0 {
        let proposer = node.proposer();
        let every = Duration::from_millis(args.propose_every_ms);
        std::thread::spawn(move || propose_periodically(proposer, args.id, every));
    }
    let proposer = node.proposer();
    std::thread::spawn(move || propose_stdin(proposer));
    node.wait().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-node: error: {e}");
            ExitCode::FAILURE
        }
    }
}
