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

use kv_core::{KvServer, Reply, ServerAction, ServerConfig, ServerEvent};
use raft_core::{Message, NodeId, Persist, Role};
use raft_storage::{Storage, StorageError};
use raft_wire::{seed_from_entropy, Clock};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;
use tracing::{error, info, warn};

use crate::transport::{run_client_listener, run_outgoing, run_peer_listener, PEER_QUEUE};
use crate::wire::{ClientRequest, ClientResponse, NodeStatus};

/// How a node is configured.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (a key of `peers`).
    pub id: NodeId,
    /// Connections from another cluster are refused.
    pub cluster_id: u64,
    /// Every member's peer address, this node's included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// Snapshot once the on-disk Raft state reaches this many bytes.
    pub max_raft_state: Option<usize>,
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
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    tasks: JoinSet<()>,
    done: oneshot::Receiver<Result<(), NodeError>>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops every task and the storage thread (writes already handed to
    /// storage finish first), releasing ports and files.
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
    let peer_addr = *config
        .peers
        .get(&config.id)
        .ok_or_else(|| NodeError::Config(format!("node {} is not among the peers", config.id)))?;
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
    if !config.peers.contains_key(&config.id) {
        return Err(NodeError::Config(format!(
            "node {} is not among the peers",
            config.id
        )));
    }
    let (storage, recovered) = Storage::open(&config.data_dir)?;
    if let Some((path, offset)) = &recovered.truncated_torn_tail {
        warn!(path = %path.display(), offset, "truncated a torn record at the end of the log");
    }
    let members: Vec<NodeId> = config.peers.keys().copied().collect();
    let raft = raft_core::Config::new(config.id, members.clone());
    let seed = seed_from_entropy(config.id);
    let server = KvServer::recover(
        ServerConfig::new(raft, config.max_raft_state),
        seed,
        recovered.state,
        recovered.snapshot,
    )?;
    info!(
        id = config.id,
        term = server.raft().term(),
        last_index = server.raft().log().last_index(),
        data_dir = %config.data_dir.display(),
        "node starting"
    );

    let (input_tx, input_rx) = mpsc::channel::<Input>(8192);
    let mut tasks = JoinSet::new();
    let mut peers = BTreeMap::new();
    for (&peer, &addr) in &config.peers {
        if peer == config.id {
            continue;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        peers.insert(peer, tx);
        tasks.spawn(run_outgoing(config.id, config.cluster_id, peer, addr, rx));
    }
    tasks.spawn(run_peer_listener(
        peer_listener,
        config.id,
        config.cluster_id,
        members,
        input_tx.clone(),
    ));
    tasks.spawn(run_client_listener(
        client_listener,
        config.cluster_id,
        input_tx.clone(),
    ));

    let (storage_tx, storage_rx) = std_mpsc::channel::<Persist>();
    let storage_thread = {
        let input_tx = input_tx.clone();
        std::thread::Builder::new()
            .name(format!("rkv-storage-{}", config.id))
            .spawn(move || storage_loop(storage, storage_rx, input_tx, recovered.raft_state_bytes))
            .expect("spawn the storage thread")
    };

    let (done_tx, done_rx) = oneshot::channel();
    let event_loop = EventLoop {
        server,
        clock: Clock::start(),
        deadline: None,
        peers,
        storage: storage_tx,
        waiting: BTreeMap::new(),
        next_request: 0,
    };
    tasks.spawn(async move {
        let result = event_loop.run(input_rx).await;
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

/// Group commit: block for one write, take every other write already queued,
/// append them all, fsync once, then report them durable (with the messages
/// that waited for them).
fn storage_loop(
    mut storage: Storage,
    rx: std_mpsc::Receiver<Persist>,
    node: mpsc::Sender<Input>,
    _initial_bytes: usize,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let input = match storage.commit(batch) {
            Ok(Some(committed)) => Input::Persisted {
                upto: committed.upto,
                then_send: committed.then_send,
                raft_state_bytes: storage.raft_state_bytes(),
            },
            Ok(None) => unreachable!("the batch holds at least one write"),
            Err(e) => Input::StorageFailed(e),
        };
        let failed = matches!(input, Input::StorageFailed(_));
        if node.blocking_send(input).is_err() || failed {
            return;
        }
    }
}

struct EventLoop {
    server: KvServer,
    clock: Clock,
    deadline: Option<TokioInstant>,
    peers: BTreeMap<NodeId, mpsc::Sender<Message>>,
    storage: std_mpsc::Sender<Persist>,
    /// Client requests waiting for the core's reply: our id → (their id, queue).
    waiting: BTreeMap<u64, (u64, mpsc::Sender<ClientResponse>)>,
    next_request: u64,
}

impl EventLoop {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) -> Result<(), NodeError> {
        self.step(ServerEvent::TimerFired)?;
        loop {
            let sleep = async {
                match self.deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { return Ok(()) };
                    self.handle(input)?;
                }
                () = sleep => {
                    self.deadline = None;
                    self.step(ServerEvent::TimerFired)?;
                }
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
                self.waiting.insert(ours, (id, respond));
                self.step(ServerEvent::RequestReceived { id: ours, command })
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
                for (to, message) in then_send {
                    self.send(to, message);
                }
                self.step(ServerEvent::Persisted {
                    upto,
                    raft_state_bytes,
                })
            }
            Input::StorageFailed(why) => Err(NodeError::Storage(why)),
        }
    }

    fn step(&mut self, event: ServerEvent) -> Result<(), NodeError> {
        let actions = self.server.step(self.clock.now(), event)?;
        for action in actions {
            match action {
                ServerAction::Send { to, message } => self.send(to, message),
                ServerAction::Persist(p) => {
                    self.storage.send(p).map_err(|_| NodeError::StorageGone)?;
                }
                ServerAction::SetTimer { deadline } => {
                    self.deadline = Some(TokioInstant::from_std(self.clock.deadline(deadline)));
                }
                ServerAction::Reply { id, reply } => self.reply(id, reply),
            }
        }
        Ok(())
    }

    fn send(&self, to: NodeId, message: Message) {
        if let Some(q) = self.peers.get(&to) {
            // A full queue means the peer is slow or gone: drop, Raft retries.
            let _ = q.try_send(message);
        }
    }

    fn reply(&mut self, id: u64, reply: Reply) {
        if let Some((their_id, respond)) = self.waiting.remove(&id) {
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
            snapshot_index: r.log().snapshot().index,
        }
    }
}
