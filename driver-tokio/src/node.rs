//! One server: the event loop that owns a `kv_core::KvServer`, a storage
//! thread that group-commits its writes, and the TCP tasks. The loop only
//! moves things between the core and the outside world; every decision is
//! the core's.
//!
//! Time: the core's clock is nanoseconds since the node started, read from
//! the monotonic clock at the edge ([`raft_wire::Clock`]).
//!
//! Durability: `Persist` actions go, in order, to the storage thread. It takes
//! every write waiting and makes them durable with one group commit
//! ([`raft_storage::Storage::commit`]: append them all, one fsync), and only
//! then hands back their `then_send` messages and reports them `Persisted`. Client replies come from applied entries, which the core only
//! applies once they are durable. An I/O error in storage stops the node.
//!
//! Membership: a node starts as one of the initial voters (`peers`), by
//! joining a running cluster (`join`: it asks there for the members' peer
//! addresses and knows no configuration until the leader's log or snapshot
//! reaches it), or from its data directory (the log, the snapshot and the
//! [`crate::book`]). Its links follow the configuration: after every step
//! in which the core's configurations or the member address table may have
//! changed ([`KvServer::peers_version`]) it dials every member it has no
//! link to and drops the links to nodes in neither configuration. A
//! message to a node it has no link to, but an address for, opens one (a
//! joining node's first answer to the leader). A member whose own addresses
//! are not yet recorded asks the leader to record them, at most every
//! 250 ms ([`KvServer::registration`]). Status answers carry the node's
//! address book, so a joining node learns the initial members' peer
//! addresses even before they are recorded.
//!
//! Snapshots ([`crate::snapshot`]): kv-core asks for one with
//! `TakeSnapshot` and a constant-time image of the store; a thread encodes
//! it into a staged file and the loop reports `SnapshotTaken` when it is
//! durable, so the loop never stalls on a snapshot. `SendSnapshot` starts a
//! task streaming the file to the follower on a connection of its own (at
//! most one per follower: the core asks for no more), aborted when this
//! node stops leading that term; its end is reported as `SnapshotSendEnded`.
//! A snapshot that arrives is staged by the peer listener and handed to the
//! loop with its header (`KvServer::install_snapshot`, which restores the
//! store from the file as a stream).
//!
//! Reads: a [`ClientRequest::Read`] becomes `ServerEvent::ReadReceived`,
//! which kv-core serves without a log entry whatever the read policy, so it
//! causes no `Persist` (ReadIndex rounds and forwarded reads are plain
//! messages). A Get sent as a [`ClientRequest::Command`] follows
//! [`NodeConfig::read_policy`]: through the log only with
//! [`ReadPolicy::Log`] (and, on the other policies, for a session's first
//! request, which must create the session).

use kv_core::{KvServer, MemberAddrs, ReadPolicy, Reply, ServerAction, ServerConfig, ServerEvent};
use raft_core::{InstallSnapshot, Message, NodeId, Persist, Role, Term};
use raft_storage::{SnapshotReader, Storage, StorageError};
use raft_wire::{seed_from_entropy, Clock};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;
use tracing::{debug, error, info, warn};

use crate::book::{AddressBook, BookError};
use crate::metrics::{LinkMetric, Metrics, Request};
use crate::tls::{NodeTls, TlsError, TlsFiles};
use crate::transport::{run_client_listener, run_outgoing, run_peer_listener, PEER_QUEUE};
use crate::wire::{ClientRequest, ClientResponse, NodeStatus};

/// How a node is configured.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Connections from another cluster are refused.
    pub cluster_id: u64,
    /// To bootstrap a new cluster: every initial member's peer address, this
    /// node's included. Empty for a node that joins a running cluster or
    /// restarts from its data directory.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where peers connect; `None`: this node's entry in `peers`.
    pub peer_addr: Option<SocketAddr>,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// To join a running cluster with a new data directory: some of its
    /// servers' client addresses, where the members' addresses are asked
    /// for. An operator then adds the node (`rkv member add-learner`).
    pub join: Vec<SocketAddr>,
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// Snapshot once the on-disk Raft state reaches this many bytes.
    pub max_raft_state: Option<usize>,
    /// How Gets sent as commands are served, and whether the leader may
    /// answer lease reads from its lease ([`ReadPolicy::Lease`], which
    /// assumes bounded clock drift and must be set on every server).
    pub read_policy: ReadPolicy,
    /// Serve linearizable reads as a follower too (the read index is asked
    /// of the leader), instead of sending the client to the leader.
    pub follower_reads: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The lower bound of the randomized election timeout (the upper bound
    /// is twice it); `None`: the core's 300 ms. It must exceed a round trip
    /// between peers with room to spare, and be alike on every server.
    pub election_timeout: Option<Duration>,
    /// How often a leader sends heartbeats (less than the election
    /// timeout); `None`: the core's 100 ms.
    pub heartbeat_interval: Option<Duration>,
    /// TLS on every link ([`crate::tls`]); `None`: plaintext.
    pub tls: Option<TlsFiles>,
}

/// The name of a read policy as `rkv serve --read-policy` takes it.
pub fn read_policy_name(policy: ReadPolicy) -> &'static str {
    match policy {
        ReadPolicy::Log => "log",
        ReadPolicy::ReadIndex => "read-index",
        ReadPolicy::Lease => "lease",
        _ => "unknown",
    }
}

/// Parses a read policy by the name [`read_policy_name`] gives it
/// (`read_index` is taken for `read-index`).
pub fn parse_read_policy(name: &str) -> Result<ReadPolicy, String> {
    match name {
        "read-index" | "read_index" => Ok(ReadPolicy::ReadIndex),
        "lease" => Ok(ReadPolicy::Lease),
        "log" => Ok(ReadPolicy::Log),
        other => Err(format!(
            "unknown read policy {other:?}: expected read-index, lease or log"
        )),
    }
}

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory could not be opened or is corrupt.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The core refused its input (a bug: the driver misused it).
    #[error("core: {0}")]
    Core(#[from] kv_core::Error),
    /// The storage thread stopped without reporting why.
    #[error("the storage thread is gone")]
    StorageGone,
    /// The address book in the data directory.
    #[error(transparent)]
    Book(#[from] BookError),
    /// The cluster to join could not be asked for its members.
    #[error("cannot join: {0}")]
    Join(String),
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What the event loop reacts to.
#[derive(Debug)]
pub enum Input {
    /// A peer's message.
    Peer {
        /// The sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A client's request, and where to send the answer.
    Client {
        /// The request.
        request: ClientRequest,
        /// The connection's response queue.
        respond: mpsc::Sender<ClientResponse>,
    },
    /// Writes up to `upto` are durable.
    Persisted {
        /// The highest durable persist id.
        upto: u64,
        /// Their `then_send` messages, in order.
        then_send: Vec<(NodeId, Message)>,
        /// The on-disk Raft state size now.
        raft_state_bytes: usize,
    },
    /// Storage failed: the node must stop.
    StorageFailed(StorageError),
    /// The snapshot asked for by `TakeSnapshot` is staged (or failed).
    SnapshotWritten {
        /// Its index.
        index: u64,
        /// What was written.
        result: Result<crate::snapshot::Written, StorageError>,
    },
    /// A leader's snapshot arrived whole and is staged at `path`.
    SnapshotReceived {
        /// The leader.
        from: NodeId,
        /// Its `InstallSnapshot`.
        header: InstallSnapshot,
        /// The staged file.
        path: PathBuf,
        /// Told once the loop has stepped it.
        done: oneshot::Sender<()>,
    },
    /// A transfer this node started ended.
    SnapshotSent {
        /// The follower.
        to: NodeId,
        /// The transfer's number.
        id: u64,
        /// The bytes sent, or why it failed.
        result: Result<u64, crate::snapshot::SendError>,
    },
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`]
/// (which `rkv serve` does on SIGTERM or SIGINT).
pub struct NodeHandle {
    tasks: JoinSet<()>,
    done: oneshot::Receiver<Result<(), NodeError>>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops every task, then the storage thread once every write handed to
    /// it is durable (the fsync in progress finishes, and the writes queued
    /// behind it are committed; none is torn), releasing ports and files.
    /// Nothing is answered meanwhile: what was acknowledged was durable
    /// already, and what was not may or may not be kept, as in a crash.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(t) = self.storage_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Waits until the node stops by itself (a storage failure): returns why.
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        (&mut self.done).await.unwrap_or(Ok(()))
    }
}

/// Binds the node's listeners and starts it.
pub async fn start_node(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let peer_addr = config
        .peer_addr
        .or_else(|| config.peers.get(&config.id).copied())
        .ok_or_else(|| NodeError::Config("no peer address: give --peer-addr".into()))?;
    let peer_listener = TcpListener::bind(peer_addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: peer_addr,
            source,
        })?;
    let client_listener = TcpListener::bind(config.client_addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.client_addr,
            source,
        })?;
    start_node_with(config, peer_listener, client_listener).await
}

/// Starts a node on listeners the caller already bound (tests and the quick
/// start bind port 0 first to learn their addresses).
pub async fn start_node_with(
    config: NodeConfig,
    peer_listener: TcpListener,
    client_listener: TcpListener,
) -> Result<NodeHandle, NodeError> {
    if !config.peers.is_empty() && !config.join.is_empty() {
        return Err(NodeError::Config(
            "give --peers (a new cluster) or --join (a running one), not both".into(),
        ));
    }
    if !config.peers.is_empty() && !config.peers.contains_key(&config.id) {
        return Err(NodeError::Config(format!(
            "node {} is not among the peers",
            config.id
        )));
    }
    let peer_addr = match peer_listener.local_addr() {
        Ok(bound) => config.peer_addr.unwrap_or(bound),
        Err(e) => return Err(NodeError::Config(format!("peer listener: {e}"))),
    };
    if let Some(&listed) = config.peers.get(&config.id) {
        if listed != peer_addr {
            return Err(NodeError::Config(format!(
                "--peer-addr {peer_addr} differs from this node's entry in --peers ({listed})"
            )));
        }
    }
    let tls = config.tls.as_ref().map(NodeTls::load).transpose()?;
    crate::tls::log_link_security(config.tls.as_ref(), &[peer_addr, config.client_addr]);
    let (storage, recovered) = Storage::open(&config.data_dir)?;
    if let Some((path, offset)) = &recovered.truncated_torn_tail {
        warn!(path = %path.display(), offset, "truncated a torn record at the end of the log");
    }
    let fresh = recovered.state == raft_core::DurableState::default();
    let book = initial_book(&config, fresh, tls.as_ref()).await?;
    book.store(&config.data_dir)?;
    let mut raft = raft_core::Config::new(config.id, book.bootstrap.clone());
    if let Some(min) = config.election_timeout {
        raft.election_timeout_min = min;
        raft.election_timeout_max = min * 2;
    }
    if let Some(interval) = config.heartbeat_interval {
        raft.heartbeat_interval = interval;
    }
    let seed = seed_from_entropy(config.id);
    let mut server_config = ServerConfig::new(raft, config.max_raft_state);
    server_config.addresses = Some(MemberAddrs {
        peer: peer_addr.to_string(),
        client: config.client_addr.to_string(),
    });
    server_config.read_policy = config.read_policy;
    server_config.follower_reads = config.follower_reads;
    let mut snapshot = recovered.snapshot;
    let reader = snapshot.as_mut().map(|r| r as &mut dyn std::io::Read);
    let mut server = KvServer::recover(server_config, seed, recovered.state, reader)?;
    server.defer_applies(true);
    drop(snapshot);
    info!(
        id = config.id,
        term = server.raft().term(),
        last_index = server.raft().log().last_index(),
        members = ?server.raft().membership().members(),
        known_peers = ?book.peers,
        data_dir = %config.data_dir.display(),
        read_policy = read_policy_name(config.read_policy),
        follower_reads = config.follower_reads,
        "node starting"
    );

    let (input_tx, input_rx) = mpsc::channel::<Input>(8192);
    // Peers' messages and the storage thread's reports: the replication
    // round's own steps, taken before any client request (see `run`).
    let (urgent_tx, urgent_rx) = mpsc::channel::<Input>(8192);
    let mut tasks = JoinSet::new();
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = config.metrics_addr {
        let listener = crate::metrics::http::bind(addr).await?;
        tasks.spawn(crate::metrics::http::serve(
            listener,
            metrics.clone(),
            input_tx.clone(),
        ));
    }
    tasks.spawn(run_peer_listener(
        peer_listener,
        config.id,
        config.cluster_id,
        config.data_dir.clone(),
        tls.clone(),
        urgent_tx.clone(),
    ));
    tasks.spawn(run_client_listener(
        client_listener,
        config.cluster_id,
        tls.clone(),
        input_tx.clone(),
        metrics.client_connections(),
    ));

    let (storage_tx, storage_rx) = std_mpsc::channel::<Vec<Persist>>();
    let disk = Arc::new(std::sync::Mutex::new(Disk::new(storage, metrics.clone())));
    let storage_thread = {
        let input_tx = urgent_tx;
        let disk = disk.clone();
        std::thread::Builder::new()
            .name(format!("rkv-storage-{}", config.id))
            .spawn(move || storage_loop(disk, storage_rx, input_tx))
            .expect("spawn the storage thread")
    };

    let (done_tx, done_rx) = oneshot::channel();
    let mut event_loop = EventLoop {
        server,
        clock: Clock::start(),
        deadline: None,
        me: config.id,
        cluster_id: config.cluster_id,
        data_dir: config.data_dir.clone(),
        book,
        links: BTreeMap::new(),
        seen_peers_version: None,
        registering: None,
        storage: storage_tx,
        disk,
        handed_upto: 0,
        reported_upto: 0,
        zero_ahead_due: false,
        writes: Vec::new(),
        waiting: BTreeMap::new(),
        next_request: 0,
        read_policy: config.read_policy,
        follower_reads: config.follower_reads,
        inputs: input_tx.clone(),
        transfers: BTreeMap::new(),
        next_transfer: 0,
        deferred: std::collections::VecDeque::new(),
        metrics,
        tls,
        sent_to_peer: false,
    };
    event_loop.follow_membership()?;
    tasks.spawn(async move {
        let result = event_loop.run(urgent_rx, input_rx).await;
        if let Err(e) = &result {
            error!(error = %e, "node stopping");
        }
        let _ = done_tx.send(result);
    });
    Ok(NodeHandle {
        tasks,
        done: done_rx,
        storage_thread: Some(storage_thread),
    })
}

/// What the node starts from: its data directory's book, or (a new data
/// directory) the bootstrap peers, or the members of the cluster it joins.
async fn initial_book(
    config: &NodeConfig,
    fresh: bool,
    tls: Option<&NodeTls>,
) -> Result<AddressBook, NodeError> {
    if let Some(mut book) = AddressBook::load(&config.data_dir)? {
        if !config.peers.is_empty() {
            let given: Vec<NodeId> = config.peers.keys().copied().collect();
            if given != book.bootstrap {
                warn!(
                    ?given,
                    recorded = ?book.bootstrap,
                    "--peers differs from the data directory's bootstrap members; using the recorded ones"
                );
            }
        }
        book.peers
            .extend(config.peers.iter().map(|(&i, &a)| (i, a)));
        return Ok(book);
    }
    if !config.peers.is_empty() {
        // A new cluster, or a data directory from before the book existed.
        return Ok(AddressBook {
            bootstrap: config.peers.keys().copied().collect(),
            peers: config.peers.clone(),
        });
    }
    if !fresh {
        return Err(NodeError::Config(format!(
            "{} holds a log but no {}: give --peers as when it was created",
            config.data_dir.display(),
            crate::book::FILE_NAME
        )));
    }
    if config.join.is_empty() {
        return Err(NodeError::Config(
            "a new data directory needs --peers (a new cluster) or --join (a running one)".into(),
        ));
    }
    // Every server answers with its view of the members and its address
    // book; the most up-to-date view decides, the books are merged (so the
    // initial members' peer addresses are known even before they are
    // recorded).
    let mut client = crate::Client::connect(config.cluster_id, config.join.clone())
        .await
        .map_err(|e| NodeError::Join(e.to_string()))?
        .with_tls(tls.map(|t| t.dialler().clone()));
    let deadline = TokioInstant::now() + Duration::from_secs(30);
    let (view, mut peers) = loop {
        let mut best: Option<kv_core::MemberList> = None;
        let mut peers = BTreeMap::new();
        let mut errors = Vec::new();
        for &addr in &config.join {
            match client.status_at(addr).await {
                Ok(status) => {
                    peers.extend(status.peers);
                    let newer = best.as_ref().is_none_or(|b| {
                        (status.members.term, status.members.commit_index)
                            > (b.term, b.commit_index)
                    });
                    if newer {
                        best = Some(status.members);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        match best {
            Some(view) if !view.members.is_empty() => break (view, peers),
            _ if TokioInstant::now() > deadline => {
                return Err(NodeError::Join(format!(
                    "no server of {:?} answered with a configuration: {}",
                    config.join,
                    errors.join("; ")
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if view
        .member(config.id)
        .is_some_and(|m| m.role != kv_core::MemberRole::Learner)
    {
        return Err(NodeError::Join(format!(
            "node {} is already a voter of that cluster; pick a new id",
            config.id
        )));
    }
    for m in &view.members {
        if let Some(addr) = m.addrs.as_ref().and_then(|a| a.peer.parse().ok()) {
            peers.insert(m.id, addr);
        }
    }
    peers.remove(&config.id);
    info!(leader = ?view.leader, ?peers, "joining a running cluster");
    Ok(AddressBook {
        bootstrap: Vec::new(),
        peers,
    })
}

/// The log on disk, shared by the storage thread and (for a follower's
/// inline commits, see `EventLoop::hand_over`) the event loop: whoever
/// commits holds the lock, and the loop only takes it when the thread has
/// nothing in hand, so the two never wait for each other.
struct Disk {
    storage: Storage,
    /// Where a snapshot's deletions go (the old segment, the older snapshot
    /// file: an unlink of tens of MB and a directory fsync), so that no
    /// group commit waits for them; `None`: run inline.
    cleanups: Option<std_mpsc::Sender<raft_storage::Cleanup>>,
    metrics: Arc<Metrics>,
}

impl Disk {
    fn new(mut storage: Storage, metrics: Arc<Metrics>) -> Disk {
        storage.defer_cleanup();
        let (cleanups, cleanup_rx) = std_mpsc::channel::<raft_storage::Cleanup>();
        let cleaner = std::thread::Builder::new()
            .name("rkv-cleanup".into())
            .spawn(move || {
                while let Ok(cleanup) = cleanup_rx.recv() {
                    if let Err(e) = cleanup.run() {
                        // Left for the next start, which deletes them.
                        warn!(error = %e, "cannot delete obsolete log or snapshot files");
                    }
                }
            });
        let cleanups = match cleaner {
            Ok(_) => Some(cleanups),
            Err(e) => {
                warn!(error = %e, "cannot start the cleanup thread: deleting in the storage thread");
                None
            }
        };
        Disk {
            storage,
            cleanups,
            metrics,
        }
    }

    /// One group commit of `batch` (append it all, one fsync), reported as
    /// the loop's input.
    fn commit(&mut self, batch: Vec<Persist>) -> Input {
        let input = match self.metrics.commit(&mut self.storage, batch) {
            Ok(Some(committed)) => Input::Persisted {
                upto: committed.upto,
                then_send: committed.then_send,
                raft_state_bytes: self.storage.raft_state_bytes(),
            },
            Ok(None) => unreachable!("the batch holds at least one write"),
            Err(e) => Input::StorageFailed(e),
        };
        if let Some(cleanup) = self.storage.take_cleanup() {
            match &self.cleanups {
                Some(tx) => {
                    let _ = tx.send(cleanup);
                }
                None => {
                    if let Err(e) = cleanup.run() {
                        warn!(error = %e, "cannot delete obsolete log or snapshot files");
                    }
                }
            }
        }
        input
    }
}

/// Group commit: block for one write, take every other write already queued,
/// append them all, fsync once, then report them durable (with the messages
/// that waited for them). Once the event loop is gone (a shutdown), it
/// commits what is still queued, reporting nothing, and returns.
fn storage_loop(
    disk: Arc<std::sync::Mutex<Disk>>,
    rx: std_mpsc::Receiver<Vec<Persist>>,
    node: mpsc::Sender<Input>,
) {
    while let Ok(mut batch) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let input = disk.lock().expect("disk lock").commit(batch);
        let failed = matches!(input, Input::StorageFailed(_));
        // A closed channel means the node is shutting down: what is queued
        // still goes to disk, until the event loop's sender is gone too.
        let _ = node.blocking_send(input);
        if failed {
            return;
        }
        // Zeros ahead of the log, once per ZERO_AHEAD / 2 of records, after
        // the report (so off this commit's path).
        if let Err(e) = disk.lock().expect("disk lock").storage.zero_ahead() {
            let _ = node.blocking_send(Input::StorageFailed(e));
            return;
        }
    }
}

/// How often, at most, a member whose addresses are not recorded asks the
/// leader to record them.
const REGISTRATION_INTERVAL: Duration = Duration::from_millis(250);

/// Most inputs the loop takes in one turn before it looks at its timer.
const MAX_INPUTS_PER_TURN: usize = 64;

/// Most writes the loop holds back from the storage thread (see
/// `EventLoop::hand_over`).
const MAX_HELD_WRITES: usize = 256;

/// An outgoing connection to a peer: its queue and its dialling task,
/// stopped when the link is dropped.
struct Link {
    addr: SocketAddr,
    queue: mpsc::Sender<Message>,
    task: tokio::task::AbortHandle,
    _connected: LinkMetric,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct EventLoop {
    server: KvServer,
    clock: Clock,
    deadline: Option<TokioInstant>,
    me: NodeId,
    cluster_id: u64,
    data_dir: PathBuf,
    /// Every known node's peer address, as stored in the data directory.
    book: AddressBook,
    links: BTreeMap<NodeId, Link>,
    /// The core's `peers_version` the links were last matched against.
    seen_peers_version: Option<u64>,
    /// The latest registration task and when it started.
    registering: Option<(TokioInstant, tokio::task::JoinHandle<()>)>,
    storage: std_mpsc::Sender<Vec<Persist>>,
    /// The log, for a follower's inline commits (see `hand_over`).
    disk: Arc<std::sync::Mutex<Disk>>,
    /// The last persist id handed to the storage thread, and the highest
    /// its reports said durable: equal when the thread has nothing in hand.
    handed_upto: u64,
    reported_upto: u64,
    /// An inline commit happened since the loop last wrote zeros ahead.
    zero_ahead_due: bool,
    /// Writes not yet handed to the storage thread (see `hand_over`).
    writes: Vec<Persist>,
    /// Client requests waiting for the core's reply: our id → (their id, queue).
    waiting: BTreeMap<u64, (u64, mpsc::Sender<ClientResponse>, Request)>,
    next_request: u64,
    /// As configured, for status answers.
    read_policy: ReadPolicy,
    follower_reads: bool,
    metrics: Arc<Metrics>,
    /// The loop's own input queue, for the tasks it starts.
    inputs: mpsc::Sender<Input>,
    /// Snapshot transfers under way, by follower.
    transfers: BTreeMap<NodeId, Transfer>,
    next_transfer: u64,
    /// Events for the server that arose while executing a step's actions,
    /// stepped once they are all done (actions run in order).
    deferred: std::collections::VecDeque<ServerEvent>,
    tls: Option<NodeTls>,
    /// A message for a peer was queued in this turn (see `run`).
    sent_to_peer: bool,
}

/// A snapshot transfer under way.
struct Transfer {
    id: u64,
    term: Term,
    index: u64,
    task: tokio::task::AbortHandle,
}

impl EventLoop {
    /// The loop: `urgent` (peers' messages, the storage thread's reports)
    /// before `inputs` (clients, snapshot tasks, metrics); the server
    /// defers applies (`KvServer::defer_applies`), which a turn does last.
    ///
    /// A replication round waits on the urgent inputs only: a follower's
    /// acknowledgement queued behind a turn's worth of client requests
    /// delayed the commit, and the next AppendEntries, by that turn. And
    /// once a turn has queued a message for a peer, the loop yields, so that
    /// the link's writer sends it now rather than after the rest of the
    /// queue (this runtime has one thread: a queued message waits for the
    /// loop to yield).
    async fn run(
        mut self,
        mut urgent: mpsc::Receiver<Input>,
        mut inputs: mpsc::Receiver<Input>,
    ) -> Result<(), NodeError> {
        self.step(ServerEvent::TimerFired)?;
        let mut urgent_open = true;
        loop {
            let sleep = async {
                match self.deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                input = urgent.recv(), if urgent_open => match input {
                    Some(input) => self.handle(input)?,
                    // The storage thread and the peer listener are gone:
                    // the node is stopping, the loop's own queue says when.
                    None => urgent_open = false,
                },
                input = inputs.recv() => {
                    let Some(input) = input else { return self.hand_over_now() };
                    self.handle(input)?;
                }
                () = sleep => {
                    self.deadline = None;
                    self.step(ServerEvent::TimerFired)?;
                }
            }
            // What else is queued, up to a bound (so that a timer is not
            // starved), without a select per input; urgent inputs first,
            // and the turn ends once a message for a peer is queued.
            for _ in 1..MAX_INPUTS_PER_TURN {
                if self.sent_to_peer || self.server.has_pending_applies() {
                    break;
                }
                let input = match urgent.try_recv() {
                    Ok(input) => input,
                    Err(_) => match inputs.try_recv() {
                        Ok(input) => input,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            return self.hand_over_now();
                        }
                    },
                };
                self.handle(input)?;
            }
            if inputs.is_empty() && urgent.is_empty() {
                self.hand_over_now()?;
            }
            if std::mem::take(&mut self.sent_to_peer) {
                tokio::task::yield_now().await;
            }
            // Then the store's work on what committed, off the round's path.
            if self.server.has_pending_applies() {
                let actions = self.server.apply_pending(self.clock.now())?;
                self.execute(actions)?;
            }
            // After an inline commit, and once its messages are out: the
            // log's zeros ahead (see `Storage::zero_ahead`), while the
            // storage thread has nothing in hand.
            if self.zero_ahead_due && self.reported_upto >= self.handed_upto {
                self.zero_ahead_due = false;
                self.disk.lock().expect("disk lock").storage.zero_ahead()?;
            }
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), NodeError> {
        match input {
            Input::Peer { from, message } => {
                self.step(ServerEvent::MessageReceived { from, message })
            }
            Input::Client {
                request: ClientRequest::Command { id, command },
                respond,
            } => {
                self.next_request += 1;
                let ours = self.next_request;
                self.waiting.insert(ours, (id, respond, Request::Proposal));
                self.step(ServerEvent::RequestReceived { id: ours, command })
            }
            Input::Client {
                request:
                    ClientRequest::Read {
                        id,
                        key,
                        consistency,
                    },
                respond,
            } => {
                self.next_request += 1;
                let ours = self.next_request;
                self.waiting.insert(ours, (id, respond, Request::Read));
                self.step(ServerEvent::ReadReceived {
                    id: ours,
                    key,
                    consistency,
                })
            }
            Input::Client {
                request: ClientRequest::Admin { id, request },
                respond,
            } => {
                self.next_request += 1;
                let ours = self.next_request;
                self.waiting.insert(ours, (id, respond, Request::Admin));
                self.step(ServerEvent::AdminReceived { id: ours, request })
            }
            Input::Client {
                request: ClientRequest::Status { id },
                respond,
            } => {
                let status = self.status();
                let _ = respond.try_send(ClientResponse::Status { id, status });
                Ok(())
            }
            Input::Persisted {
                upto,
                then_send,
                raft_state_bytes,
            } => {
                let event = self.persisted(upto, then_send, raft_state_bytes);
                self.step(event)
            }
            Input::StorageFailed(why) => Err(NodeError::Storage(why)),
            Input::SnapshotWritten { index, result } => {
                let written = result?;
                self.metrics.snapshot_written(written.took, written.bytes);
                info!(
                    index,
                    bytes = written.bytes,
                    ms = written.took.as_millis() as u64,
                    "snapshot written"
                );
                self.step(ServerEvent::SnapshotTaken { index })
            }
            Input::SnapshotReceived {
                from,
                header,
                path,
                done,
            } => {
                let result = self.install(from, header, &path);
                let _ = done.send(());
                result
            }
            Input::SnapshotSent { to, id, result } => {
                let Some(t) = self.transfers.get(&to).filter(|t| t.id == id) else {
                    return Ok(()); // aborted, and reported, already
                };
                let (term, index) = (t.term, t.index);
                self.transfers.remove(&to);
                match result {
                    Ok(bytes) => info!(peer = to, index, bytes, "snapshot sent"),
                    Err(e) => warn!(peer = to, index, error = %e, "snapshot transfer failed"),
                }
                self.step(ServerEvent::SnapshotSendEnded { to, term, index })
            }
        }
    }

    fn step(&mut self, event: ServerEvent) -> Result<(), NodeError> {
        let actions = self.server.step(self.clock.now(), event)?;
        self.execute(actions)
    }

    /// Hands the held writes to the storage thread, in order, as one batch.
    ///
    /// The loop holds a step's writes while more inputs are queued, and hands
    /// them over when the queue is empty, when an AppendEntries with entries
    /// leaves (so a leader's own write starts with its followers'), when a
    /// write carries messages that wait for it (`then_send`: votes, append
    /// acknowledgements) or a snapshot, and once `MAX_HELD_WRITES` are held.
    /// A leader under load so makes one group commit per round of appends
    /// rather than one per fsync's worth of proposals (at 256 clients, 0.02
    /// fdatasyncs per put against 0.03–0.04, and a quarter of the futex
    /// calls: 4% more puts per second). Nothing waits on a held write: it is
    /// not durable yet, so nothing was acknowledged because of it, and
    /// holding it changes no order (writes stay FIFO, `then_send` still
    /// leaves after its write).
    ///
    /// A follower commits on the loop itself (`commit_inline`) when the
    /// storage thread has nothing in hand: its writes are acknowledgements
    /// that wait for the fsync anyway, and nothing else it does is urgent,
    /// so the two thread handoffs of a round (loop to storage thread and
    /// back, each a wakeup and, on a busy machine, a wait for a core) are
    /// saved. The AppendEntries that arrive meanwhile wait in their socket
    /// and make the next group commit. A leader keeps the thread: its
    /// fsync runs while its AppendEntries travel.
    fn hand_over(&mut self) -> Result<(), NodeError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        // The next batch starts at this one's size, not grown from empty.
        let next = Vec::with_capacity(self.writes.len());
        let writes = std::mem::replace(&mut self.writes, next);
        if self.reported_upto >= self.handed_upto
            && self.server.raft().role() == Role::Follower
            && writes.iter().all(|p| p.snapshot.is_none())
        {
            return self.commit_inline(writes);
        }
        self.handed_upto = writes.last().map_or(self.handed_upto, |p| p.id);
        self.storage
            .send(writes)
            .map_err(|_| NodeError::StorageGone)
    }

    /// Commits `writes` here (see `hand_over`): their messages leave now,
    /// and `Persisted` is stepped once the current step's actions are done.
    fn commit_inline(&mut self, writes: Vec<Persist>) -> Result<(), NodeError> {
        let input = self.disk.lock().expect("disk lock").commit(writes);
        match input {
            Input::Persisted {
                upto,
                then_send,
                raft_state_bytes,
            } => {
                self.zero_ahead_due = true;
                let event = self.persisted(upto, then_send, raft_state_bytes);
                self.deferred.push_back(event);
                Ok(())
            }
            Input::StorageFailed(why) => Err(NodeError::Storage(why)),
            _ => unreachable!("a commit reports Persisted or StorageFailed"),
        }
    }

    /// Writes through `upto` are durable (the storage thread's report, or an
    /// inline commit): their messages leave, and the event to step.
    fn persisted(
        &mut self,
        upto: u64,
        then_send: Vec<(NodeId, Message)>,
        raft_state_bytes: usize,
    ) -> ServerEvent {
        self.reported_upto = self.reported_upto.max(upto);
        for (to, message) in then_send {
            self.send(to, message);
        }
        ServerEvent::Persisted {
            upto,
            raft_state_bytes,
        }
    }

    /// Hands the held writes over (see `hand_over`) outside a step, and
    /// steps what an inline commit left.
    fn hand_over_now(&mut self) -> Result<(), NodeError> {
        self.hand_over()?;
        while let Some(event) = self.deferred.pop_front() {
            self.step(event)?;
        }
        Ok(())
    }

    /// A leader's snapshot, staged at `path`, goes to the server with its
    /// header; the store is restored from the file if Raft installs it.
    fn install(
        &mut self,
        from: NodeId,
        header: InstallSnapshot,
        path: &std::path::Path,
    ) -> Result<(), NodeError> {
        let mut file = match SnapshotReader::open(path) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot read a received snapshot; dropped");
                return Ok(());
            }
        };
        let index = header.last_included_index;
        let started = std::time::Instant::now();
        let actions = self
            .server
            .install_snapshot(self.clock.now(), from, header, &mut file)?;
        let installed = actions.iter().any(|a| {
            matches!(a, ServerAction::Persist(p) if p.snapshot.as_ref().is_some_and(|m| m.index == index))
        });
        if installed {
            self.metrics
                .snapshot_written(started.elapsed(), file.data_len());
            info!(
                from,
                index,
                ms = started.elapsed().as_millis() as u64,
                "installed a snapshot"
            );
        }
        self.execute(actions)
    }

    fn execute(&mut self, actions: Vec<ServerAction>) -> Result<(), NodeError> {
        self.metrics.observe_leader(self.server.raft());
        for action in actions {
            match action {
                ServerAction::Send { to, message } => {
                    if matches!(&message, Message::AppendEntries(a) if !a.entries.is_empty()) {
                        self.hand_over()?;
                    }
                    self.send(to, message)
                }
                ServerAction::Persist(p) => {
                    let urgent = !p.then_send.is_empty() || p.snapshot.is_some();
                    self.writes.push(p);
                    if urgent || self.writes.len() >= MAX_HELD_WRITES {
                        self.hand_over()?;
                    }
                }
                ServerAction::SetTimer { deadline } => {
                    self.deadline = Some(TokioInstant::from_std(self.clock.deadline(deadline)));
                }
                ServerAction::Reply { id, reply } => self.reply(id, reply),
                ServerAction::TakeSnapshot { index, image } => {
                    let meta = self
                        .server
                        .raft()
                        .snapshot_meta_at(index)
                        .expect("kv-core snapshots an index the log holds");
                    crate::snapshot::write_local(
                        self.data_dir.clone(),
                        meta,
                        image,
                        self.inputs.clone(),
                    );
                }
                ServerAction::SendSnapshot { to, message } => self.send_snapshot(to, message),
            }
        }
        self.abort_stale_transfers();
        self.register();
        self.follow_membership()?;
        while let Some(event) = self.deferred.pop_front() {
            self.step(event)?;
        }
        Ok(())
    }

    /// Starts streaming our snapshot at `message.last_included_index` to
    /// `to`. The file is opened here, before anything can delete it (an
    /// open file stays readable after a newer snapshot replaces it).
    fn send_snapshot(&mut self, to: NodeId, message: InstallSnapshot) {
        let (term, index) = (message.term, message.last_included_index);
        let ended = ServerEvent::SnapshotSendEnded { to, term, index };
        let path = self.data_dir.join(raft_storage::snapshot_file_name(index));
        let (Some(&addr), Ok(file)) = (self.book.peers.get(&to), SnapshotReader::open(&path))
        else {
            warn!(
                peer = to,
                index, "cannot send a snapshot (no address, or no file)"
            );
            self.deferred.push_back(ended);
            return;
        };
        if let Some(old) = self.transfers.remove(&to) {
            // The core asks for one at a time; never leave one unreported.
            old.task.abort();
            self.deferred.push_back(ServerEvent::SnapshotSendEnded {
                to,
                term: old.term,
                index: old.index,
            });
        }
        self.next_transfer += 1;
        let id = self.next_transfer;
        info!(
            peer = to,
            index,
            bytes = file.data_len(),
            "sending a snapshot"
        );
        let (me, cluster_id, inputs) = (self.me, self.cluster_id, self.inputs.clone());
        let tls = self.tls.as_ref().map(|t| t.dialler().clone());
        let task = tokio::spawn(async move {
            let result = crate::snapshot::send(me, cluster_id, addr, tls, message, file).await;
            let _ = inputs.send(Input::SnapshotSent { to, id, result }).await;
        });
        let task = task.abort_handle();
        self.transfers.insert(
            to,
            Transfer {
                id,
                term,
                index,
                task,
            },
        );
    }

    /// A leader change mid-stream aborts the transfers of the old term.
    fn abort_stale_transfers(&mut self) {
        if self.transfers.is_empty() {
            return;
        }
        let (leader, term) = (self.server.raft().is_leader(), self.server.raft().term());
        let stale: Vec<NodeId> = self
            .transfers
            .iter()
            .filter(|(_, t)| !leader || t.term != term)
            .map(|(&to, _)| to)
            .collect();
        for to in stale {
            let t = self.transfers.remove(&to).expect("listed");
            t.task.abort();
            info!(
                peer = to,
                index = t.index,
                "snapshot transfer aborted: no longer leading its term"
            );
            self.deferred.push_back(ServerEvent::SnapshotSendEnded {
                to,
                term: t.term,
                index: t.index,
            });
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.metrics.message_sent(&message);
        if !self.links.contains_key(&to) {
            // Not a member we know of (a joining node answering the leader
            // before it has the configuration): link if we have an address.
            let Some(&addr) = self.book.peers.get(&to) else {
                return;
            };
            self.link(to, addr);
        }
        if let Some(link) = self.links.get(&to) {
            // A full queue means the peer is slow or gone: drop, Raft retries.
            let _ = link.queue.try_send(message);
            self.sent_to_peer = true;
        }
    }

    fn link(&mut self, to: NodeId, addr: SocketAddr) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let connected = self.metrics.link(to);
        let tls = self.tls.as_ref().map(|t| t.dialler().clone());
        let task = tokio::spawn(run_outgoing(
            self.me,
            self.cluster_id,
            to,
            addr,
            tls,
            rx,
            connected.gauge(),
        ));
        info!(peer = to, %addr, "linking to peer");
        let link = Link {
            addr,
            queue: tx,
            task: task.abort_handle(),
            _connected: connected,
        };
        self.links.insert(to, link);
    }

    /// Match the links to the configurations and the address table, if
    /// either may have changed; store new addresses in the book.
    fn follow_membership(&mut self) -> Result<(), NodeError> {
        let version = self.server.peers_version();
        if self.seen_peers_version == Some(version) {
            return Ok(());
        }
        self.seen_peers_version = Some(version);
        let mut book_changed = false;
        for (&id, addrs) in self.server.member_addrs() {
            let Ok(addr) = addrs.peer.parse::<SocketAddr>() else {
                warn!(node = id, peer = %addrs.peer, "recorded peer address does not parse");
                continue;
            };
            if id != self.me && self.book.peers.insert(id, addr) != Some(addr) {
                book_changed = true;
            }
        }
        if book_changed {
            self.book.store(&self.data_dir)?;
        }
        let raft = self.server.raft();
        let mut wanted = raft.membership().members();
        wanted.extend(raft.committed_membership().members());
        wanted.remove(&self.me);
        let knows_config = !raft.membership().voters.is_empty();
        let stale: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(id, link)| {
                let moved = self.book.peers.get(id).is_some_and(|&a| a != link.addr);
                moved || (knows_config && !wanted.contains(id))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            info!(
                peer = id,
                "dropping the link to a node that is no longer a member"
            );
            self.links.remove(&id);
        }
        for id in wanted {
            if self.links.contains_key(&id) {
                continue;
            }
            match self.book.peers.get(&id) {
                Some(&addr) => self.link(id, addr),
                None => debug!(peer = id, "a member whose address is not known yet"),
            }
        }
        Ok(())
    }

    /// A follower whose addresses are not recorded asks the leader (at its
    /// recorded client address) to record them.
    fn register(&mut self) {
        let recent = self
            .registering
            .as_ref()
            .is_some_and(|(at, task)| !task.is_finished() || at.elapsed() < REGISTRATION_INTERVAL);
        if recent {
            return;
        }
        let Some(request) = self.server.registration() else {
            return;
        };
        let leader = self.server.raft().leader_hint();
        let Some(addr) = leader
            .and_then(|l| self.server.member_addrs().get(&l))
            .and_then(|a| a.client.parse::<SocketAddr>().ok())
        else {
            return;
        };
        let cluster_id = self.cluster_id;
        let tls = self.tls.as_ref().map(|t| t.dialler().clone());
        let started = TokioInstant::now();
        self.registering = Some((
            started,
            tokio::spawn(async move {
                match crate::client::admin_once(cluster_id, addr, request, tls).await {
                    Ok(reply) => debug!(?reply, "asked the leader to record our addresses"),
                    Err(e) => {
                        debug!(error = %e, "could not ask the leader to record our addresses")
                    }
                }
            }),
        ));
    }

    fn reply(&mut self, id: u64, reply: Reply) {
        if let Some((their_id, respond, request)) = self.waiting.remove(&id) {
            self.metrics.replied(request, &reply);
            let _ = respond.try_send(ClientResponse::Reply {
                id: their_id,
                reply,
            });
        }
    }

    fn status(&self) -> NodeStatus {
        let r = self.server.raft();
        NodeStatus {
            node_id: r.id(),
            term: r.term(),
            role: match r.role() {
                Role::Leader => "leader",
                Role::Candidate => "candidate",
                Role::PreCandidate => "pre-candidate",
                Role::Follower => "follower",
            }
            .to_string(),
            leader: r.leader_hint(),
            commit_index: r.commit_index(),
            last_applied: r.last_applied(),
            last_index: r.log().last_index(),
            read_policy: read_policy_name(self.read_policy).to_string(),
            follower_reads: self.follower_reads,
            snapshot_index: r.log().snapshot().index,
            members: self.server.member_list(),
            peers: self.book.peers.clone(),
        }
    }
}
