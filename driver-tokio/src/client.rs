//! The async client: the sans-IO `kv_core::Clerk` over TCP. Each `Client` is
//! one session (a random client id, requests numbered from 1, one outstanding
//! at a time), so a retry after a timeout or a leader change is applied
//! exactly once.
//!
//! The client is given some servers' client addresses and learns the rest:
//! before its first request, and again whenever a leader hint names a node
//! it does not know or a whole round of servers failed, it asks every server
//! it knows for its status, which names the server's node id and its view
//! of the members and their recorded addresses ([`kv_core::admin`]). So it
//! follows membership changes: new servers are found, and a cluster whose
//! original servers have all been replaced is still reached through any
//! server it has met.
//!
//! Writes go to the leader (the clerk's guess, then its hints). Gets
//! ([`Client::get_with`]) carry no session and never reach the log
//! ([`ClientRequest::Read`]); where each goes depends on its consistency:
//!
//! - `Linearizable`: to the leader, unless some members serve follower
//!   reads (`rkv serve --follower-reads`, which their status reports): then
//!   round-robin over those members and the leader, one more step with each
//!   Get, so reads spread over the cluster while writes go to the leader.
//! - `Lease`: to the leader, the only server that holds a lease (a follower
//!   would serve it by ReadIndex).
//! - `Local`: round-robin over the servers given to [`Client::connect`]
//!   (the ones the caller chose to talk to), then the members learned; the
//!   first that answers serves it from its own applied state, possibly
//!   stale.
//!
//! A `WrongLeader` answer sends the read to the server it names, an
//! unreachable server to the next in that order; after a whole round of
//! failures the client pauses ([`kv_core::ROUND_BACKOFF`]), asks for the
//! members again and starts over, until `op_timeout`. If a server reports
//! `--read-policy log`, linearizable and lease Gets go through the log as
//! session commands instead, as that policy asks.
//!
//! Slow commits. An attempt (one request to one server) waits
//! `attempt_timeout` for its answer at first; every attempt of an
//! operation that times out doubles the wait of the next ones, up to what
//! is left of `op_timeout`. And an attempt that timed out is not given up:
//! its connection is kept until the operation ends, and an `Applied`
//! answer to it, or to any attempt of the operation, arriving while a later
//! one waits, is the operation's answer (every attempt carries the same
//! command, session and request number, which the servers apply once and
//! answer from their session table; or the same read, started after the
//! call). So when a commit takes longer than `attempt_timeout` (a slow
//! disk, a WAN), operations still complete, each exactly once. The client
//! reads the connection it waits on itself; a connection kept after its
//! attempt timed out gets a reader task that hands its responses to the
//! client's one inbox, listened to at the same time (no task or channel
//! sits between the socket and the caller in the usual case).
//!
//! Connections are plaintext, or TLS with [`Client::with_tls`] (the servers'
//! certificates verified against a CA and the address dialled, and a client
//! certificate presented if the servers demand one; see [`crate::tls`]). A
//! server that refuses the connection (another cluster id or protocol
//! version, TLS expected, a certificate refused) is a configuration error,
//! not a failure to wait out: once every server has refused, an operation
//! fails at once with [`ClientError::HelloRefused`] or [`ClientError::Tls`]
//! naming the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use kv_core::{
    AdminReply, AdminRequest, Clerk, MemberList, Op, Outcome, Progress, ReadConsistency, Refusal,
    Reply,
};
use raft_core::NodeId;
use raft_wire::{FrameDecoder, HelloError, MAX_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use crate::pool::SharedConns;
use crate::tls::{ClientTls, StreamRead, StreamWrite};
use crate::transport::{dial, DialError};
use crate::wire::{write_frame, ClientRequest, ClientResponse, Hello, NodeStatus};

/// How long to wait for a connection to a server.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The pause before retrying an admin request the leader refused for now.
const ADMIN_RETRY: Duration = Duration::from_millis(200);
/// Responses the connections' readers queue for the client; a full inbox
/// holds the readers back (and, through TCP, the servers).
const INBOX: usize = 256;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server applied the request before the deadline. It may still be
    /// applied later (exactly once): its outcome is unknown.
    #[error("no answer within {0:?}; the operation may or may not take effect")]
    Timeout(Duration),
    /// The session was evicted from the servers' table.
    #[error("session expired; start a new client")]
    SessionExpired,
    /// A server could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The server.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The client was built with no servers.
    #[error("no servers given")]
    NoServers,
    /// The cluster refused an administrative request.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// A server answered with something that is not an answer to the request.
    #[error("unexpected answer from {addr}: {what}")]
    Unexpected {
        /// The server.
        addr: SocketAddr,
        /// What came.
        what: String,
    },
    /// A server refused the connection at the hello, naming why (another
    /// cluster id or protocol version, or TLS expected).
    #[error("{addr} refused the connection: {reason}")]
    HelloRefused {
        /// The server.
        addr: SocketAddr,
        /// Why.
        reason: HelloError,
    },
    /// The TLS handshake with a server failed: its certificate, or ours,
    /// was refused (or it does not speak TLS).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The server.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The server turned the connection away ([`ClientError::HelloRefused`],
    /// [`ClientError::Tls`]): trying again will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::HelloRefused { .. } | ClientError::Tls { .. }
        )
    }

    fn dialling(addr: SocketAddr, e: DialError) -> ClientError {
        match e {
            DialError::Refused(reason) => ClientError::HelloRefused { addr, reason },
            DialError::Tls(reason) => ClientError::Tls { addr, reason },
            other => ClientError::Unreachable {
                addr,
                reason: other.to_string(),
            },
        }
    }
}

struct Conn {
    writer: StreamWrite,
    reader: ConnReader,
}

/// Who reads a connection's responses.
enum ConnReader {
    /// The client itself, while it waits for an answer on it (the usual
    /// case: no task and no channel between the socket and the caller).
    /// Reads go through the decoder, so a wait cut short (a timeout, an
    /// answer on another connection) loses nothing.
    Inline {
        read: StreamRead,
        frames: FrameDecoder,
        /// What each read reads into (allocated once per connection).
        chunk: Box<[u8]>,
    },
    /// A task that hands them to the client's inbox: a connection kept for
    /// a late answer after its attempt timed out.
    Task(tokio::task::AbortHandle),
    /// Being handed from one to the other.
    Moving,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let ConnReader::Task(task) = &self.reader {
            task.abort();
        }
    }
}

impl Conn {
    /// From now on a task reads this connection into `inbox`, starting
    /// with what the client had read and not yet taken.
    fn hand_to_task(&mut self, from: SocketAddr, inbox: mpsc::Sender<Arrival>) {
        self.reader = match std::mem::replace(&mut self.reader, ConnReader::Moving) {
            ConnReader::Inline {
                read,
                frames,
                chunk,
            } => {
                let task = tokio::spawn(read_responses(from, read, frames, chunk, inbox));
                ConnReader::Task(task.abort_handle())
            }
            // Already read by a task: it stays (and is aborted with the
            // connection).
            other => other,
        };
    }
}

/// How much the client reads from a connection at a time.
const READ_CHUNK: usize = 16 << 10;

/// What a lingering connection's reader (or a shared connection's,
/// [`SharedConns`]) hands the client: a response, or why the connection
/// ended, and the server it came from.
pub(crate) struct Arrival {
    pub(crate) from: SocketAddr,
    pub(crate) what: Result<ClientResponse, String>,
}

/// Why a request got no answer.
enum CallFailure {
    TimedOut,
    Failed(String),
    /// The server turned us away ([`ClientError::is_refusal`]).
    Refused(ClientError),
}

impl CallFailure {
    fn reason(&self) -> String {
        match self {
            CallFailure::TimedOut => "no answer in time".to_string(),
            CallFailure::Failed(why) => why.clone(),
            CallFailure::Refused(e) => e.to_string(),
        }
    }
}

/// The attempts of one operation (see the module doc): the requests sent so
/// far, by id, with the server each went to, and how long the next attempt
/// waits.
struct Attempts {
    /// (id, server) in the order sent: a handful at most, searched in line.
    sent: Vec<(u64, SocketAddr)>,
    wait: Duration,
    deadline: Instant,
}

impl Attempts {
    fn new(first_wait: Duration, deadline: Instant) -> Attempts {
        Attempts {
            sent: Vec::new(),
            wait: first_wait,
            deadline,
        }
    }

    /// How long the next attempt waits: never past the deadline.
    fn wait(&self) -> Duration {
        self.wait
            .min(self.deadline.saturating_duration_since(Instant::now()))
    }

    fn timed_out(&mut self) {
        self.wait = self.wait.saturating_mul(2);
    }
}

/// A session with a cluster.
pub struct Client {
    cluster_id: u64,
    /// The addresses given to `connect`, in order.
    seeds: Vec<SocketAddr>,
    /// The client address of every server whose node id is known.
    addrs: BTreeMap<NodeId, SocketAddr>,
    conns: BTreeMap<SocketAddr, Conn>,
    /// The connections of attempts that timed out in the current operation,
    /// kept for their late answers; dropped when it ends.
    lingering: Vec<Conn>,
    /// Where every connection's reader puts what arrives.
    inbox: mpsc::Receiver<Arrival>,
    inbox_tx: mpsc::Sender<Arrival>,
    /// Built on the first request, once some server's id is known.
    clerk: Option<Clerk>,
    id: u64,
    next_id: u64,
    /// The leader as last seen: a status, a hint, or a server that answered
    /// what only a leader answers.
    leader: Option<NodeId>,
    /// The members whose status says they serve follower reads.
    serves_reads: BTreeSet<NodeId>,
    /// Some server runs `--read-policy log`: Gets go through the log.
    log_reads: bool,
    /// Where successive reads start their round-robin.
    read_turn: usize,
    /// TLS on every connection, if given.
    tls: Option<ClientTls>,
    /// The connections shared with other clients, and this client's slot
    /// in them ([`Client::with_shared`]); `None`: its own connections.
    shared: Option<(SharedConns, u32)>,
    /// How long an operation's first attempt waits for one server's answer
    /// before it also tries the next; each attempt that times out doubles
    /// the wait of the later ones, and keeps listening (see the module doc).
    /// A status or admin request waits this long.
    pub attempt_timeout: Duration,
    /// How long an operation may take in all before failing with `Timeout`.
    pub op_timeout: Duration,
}

/// Sends one admin request to the server at `addr` and returns its answer
/// (no retries, one attempt timeout).
pub async fn admin_once(
    cluster_id: u64,
    addr: SocketAddr,
    request: AdminRequest,
    tls: Option<ClientTls>,
) -> Result<AdminReply, ClientError> {
    let mut c = Client::connect(cluster_id, vec![addr]).await?.with_tls(tls);
    match c
        .call(addr, ClientRequest::Admin { id: 0, request })
        .await?
    {
        ClientResponse::Reply {
            reply: Reply::Admin(reply),
            ..
        } => Ok(reply),
        other => Err(ClientError::Unexpected {
            addr,
            what: format!("{other:?}"),
        }),
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some((pool, slot)) = self.shared.take() {
            pool.unregister(slot);
        }
    }
}

impl Client {
    /// A session with the cluster `cluster_id`, reached through `servers`
    /// (client addresses of some of its servers, in any order; the others
    /// are learned). Connections are made lazily.
    pub async fn connect(cluster_id: u64, servers: Vec<SocketAddr>) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let id = raft_wire::seed_from_entropy(0x6b76);
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        Ok(Client {
            cluster_id,
            seeds: servers,
            addrs: BTreeMap::new(),
            conns: BTreeMap::new(),
            lingering: Vec::new(),
            inbox,
            inbox_tx,
            clerk: None,
            id,
            next_id: 0,
            leader: None,
            serves_reads: BTreeSet::new(),
            log_reads: false,
            // Clients started together start their reads in different places.
            read_turn: (id % 1024) as usize,
            tls: None,
            shared: None,
            attempt_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(30),
        })
    }

    /// The same client, its connections over TLS (`Some`) or plaintext.
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Client {
        self.tls = tls;
        self.conns.clear();
        self
    }

    /// The same client, its requests carried by `pool`'s connections, shared
    /// with every other client given it (see [`SharedConns`]): one
    /// connection per server for all of them, rather than one each. The
    /// session is still this client's own. Status requests made while it
    /// learns the members use connections of their own; TLS is the pool's.
    pub fn with_shared(mut self, pool: SharedConns) -> Client {
        if let Some((old, slot)) = self.shared.take() {
            old.unregister(slot);
        }
        self.conns.clear();
        self.cluster_id = pool.cluster_id();
        // Its own status requests use the pool's TLS too.
        self.tls = pool.tls();
        let slot = pool.register(self.inbox_tx.clone());
        self.shared = Some((pool, slot));
        self
    }

    /// The client address of every server whose node id it knows.
    pub fn known_servers(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.addrs
    }

    /// The value of `key` ("" if it was never set), linearizable: a
    /// [`ReadConsistency::Linearizable`] read, which writes nothing.
    pub async fn get(&mut self, key: &str) -> Result<String, ClientError> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// The value of `key` ("" if it was never set), read with the given
    /// consistency, outside any session and never through the log, unless
    /// the servers run `--read-policy log` (see the module doc for where
    /// each read goes):
    ///
    /// - `Linearizable`: the latest value at some instant between the call
    ///   and its return (ReadIndex: the leader confirms it still leads with a
    ///   quorum round; rests on no clock).
    /// - `Lease`: the same, by the leader's lease when every server runs
    ///   `--read-policy lease` (rests on bounded clock drift); served as
    ///   `Linearizable` otherwise.
    /// - `Local`: the answering server's applied state, possibly stale: it
    ///   may miss acknowledged writes, and a later read may return an older
    ///   value. Served by any server, even one cut off from the others.
    ///
    /// A read has no effect, so a `Timeout` here leaves nothing undecided.
    pub async fn get_with(
        &mut self,
        key: &str,
        consistency: ReadConsistency,
    ) -> Result<String, ClientError> {
        let started = Instant::now();
        if consistency != ReadConsistency::Local {
            self.await_servers(started).await?;
            if self.log_reads {
                return self.get_in_session(key).await;
            }
        }
        self.drop_lingering();
        let result = self.read(key, consistency, started).await;
        self.drop_lingering();
        result
    }

    /// The attempts of [`Client::get_with`] once the servers are known.
    async fn read(
        &mut self,
        key: &str,
        consistency: ReadConsistency,
        started: Instant,
    ) -> Result<String, ClientError> {
        self.read_turn = self.read_turn.wrapping_add(1);
        let mut order = self.read_order(consistency);
        let mut turn = 0;
        let mut hinted: Option<SocketAddr> = None;
        let mut failures = 0usize;
        let mut attempts = Attempts::new(self.attempt_timeout, started + self.op_timeout);
        loop {
            if started.elapsed() > self.op_timeout {
                return Err(ClientError::Timeout(self.op_timeout));
            }
            let addr = hinted.take().unwrap_or_else(|| {
                turn += 1;
                order[(turn - 1) % order.len()]
            });
            let request = ClientRequest::Read {
                id: 0,
                key: key.to_string(),
                consistency,
            };
            match self.attempt(addr, request, &mut attempts).await {
                Ok((
                    from,
                    ClientResponse::Reply {
                        reply: Reply::Applied(Outcome::Value(value)),
                        ..
                    },
                )) => {
                    self.read_answered(from, consistency);
                    return Ok(value);
                }
                Ok((
                    _,
                    ClientResponse::Reply {
                        reply: Reply::WrongLeader { leader_hint },
                        ..
                    },
                )) => hinted = self.follow_hint(addr, leader_hint, attempts.wait()).await,
                Ok((_, other)) => {
                    return Err(ClientError::Unexpected {
                        addr,
                        what: format!("{other:?}"),
                    })
                }
                Err(_) => self.forget_leader_at(addr),
            }
            failures += 1;
            if failures.is_multiple_of(order.len()) {
                // A whole round failed: no leader yet, or the membership
                // moved. Start over from what the servers say now.
                tokio::time::sleep(kv_core::ROUND_BACKOFF).await;
                if let Some(refusal) = self.discover(attempts.wait()).await {
                    return Err(refusal);
                }
                order = self.read_order(consistency);
                (turn, hinted) = (0, None);
            }
        }
    }

    /// The value of `key` read as a command of this session, which the
    /// server serves by its read policy: through the log with
    /// `--read-policy log`, by ReadIndex (or lease) otherwise, except for a
    /// session's first request, which goes through the log to create the
    /// session. [`Client::get`] writes nothing on any policy but `log`.
    pub async fn get_in_session(&mut self, key: &str) -> Result<String, ClientError> {
        match self
            .execute(Op::Get {
                key: key.to_string(),
            })
            .await?
        {
            Outcome::Value(v) => Ok(v),
            _ => Ok(String::new()),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        self.execute(Op::Put {
            key: key.to_string(),
            value: value.to_string(),
        })
        .await
        .map(drop)
    }

    /// Appends `value` to `key`.
    pub async fn append(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        self.execute(Op::Append {
            key: key.to_string(),
            value: value.to_string(),
        })
        .await
        .map(drop)
    }

    /// Removes `key`; answers whether it was set. Exactly once, like every
    /// write: a retry is answered as the first attempt was.
    pub async fn delete(&mut self, key: &str) -> Result<bool, ClientError> {
        let op = Op::Delete {
            key: key.to_string(),
        };
        match self.execute(op).await? {
            Outcome::Deleted { existed } => Ok(existed),
            other => Err(self.unexpected(other)),
        }
    }

    /// Sets `key` to `value` if and only if it holds `expected` (`None`:
    /// if it is unset; a key set to "" is set), atomically and exactly
    /// once; otherwise changes nothing and answers the value found.
    pub async fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<Swap, ClientError> {
        let op = Op::CompareAndSwap {
            key: key.to_string(),
            expected: expected.map(str::to_string),
            value: value.to_string(),
        };
        match self.execute(op).await? {
            Outcome::Swapped => Ok(Swap::Swapped),
            Outcome::NotSwapped { current } => Ok(Swap::NotSwapped { current }),
            other => Err(self.unexpected(other)),
        }
    }

    /// The error for an outcome that does not answer the request sent
    /// (named after the server that answered, the leader now).
    fn unexpected(&self, outcome: Outcome) -> ClientError {
        let addr = self.leader.and_then(|l| self.addrs.get(&l).copied());
        ClientError::Unexpected {
            addr: addr.unwrap_or(self.seeds[0]),
            what: format!("{outcome:?}"),
        }
    }

    /// Asks server `index` (in the order given to `connect`) for its state.
    pub async fn status(&mut self, index: usize) -> Result<NodeStatus, ClientError> {
        self.status_at(self.seeds[index]).await
    }

    /// Asks the server at `addr` for its state.
    pub async fn status_at(&mut self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        match self.call(addr, ClientRequest::Status { id: 0 }).await? {
            ClientResponse::Status { status, .. } => Ok(status),
            other => Err(ClientError::Unexpected {
                addr,
                what: format!("{other:?}"),
            }),
        }
    }

    /// The members as the leader knows them (with match indices).
    pub async fn members(&mut self) -> Result<MemberList, ClientError> {
        match self.admin(AdminRequest::Members).await? {
            AdminReply::Members(list) => Ok(list),
            other => Err(ClientError::Unexpected {
                addr: self.seeds[0],
                what: format!("{other:?}"),
            }),
        }
    }

    /// Sends an administrative request to the leader, following leader
    /// hints and retrying refusals that may pass later (a change in
    /// progress, a leader not ready yet) until `op_timeout`. A member list
    /// is only taken from the leader.
    pub async fn admin(&mut self, request: AdminRequest) -> Result<AdminReply, ClientError> {
        let started = Instant::now();
        let mut target: Option<NodeId> = None;
        let mut last_refusal = None;
        loop {
            if started.elapsed() > self.op_timeout {
                return Err(last_refusal
                    .map_or(ClientError::Timeout(self.op_timeout), ClientError::Refused));
            }
            if self.addrs.is_empty() || target.is_some_and(|t| !self.addrs.contains_key(&t)) {
                if let Some(refusal) = self.discover(self.attempt_timeout).await {
                    return Err(refusal);
                }
            }
            let candidates: Vec<(NodeId, SocketAddr)> = match target {
                Some(t) if self.addrs.contains_key(&t) => vec![(t, self.addrs[&t])],
                _ => self.addrs.iter().map(|(&i, &a)| (i, a)).collect(),
            };
            target = None;
            let mut pause = true;
            for (_, addr) in candidates {
                let id = self.fresh_id();
                let request = ClientRequest::Admin {
                    id,
                    request: request.clone(),
                };
                let reply = match self.call(addr, request).await {
                    Ok(ClientResponse::Reply {
                        reply: Reply::Admin(reply),
                        ..
                    }) => reply,
                    _ => continue,
                };
                match reply {
                    AdminReply::Members(list) if !list.from_leader() => {
                        target = list.leader;
                        pause = target.is_none();
                        break;
                    }
                    AdminReply::Refused(Refusal::NotLeader { leader_hint }) => {
                        if leader_hint.is_some() {
                            target = leader_hint;
                            pause = false;
                            break;
                        }
                    }
                    AdminReply::Refused(r) if r.is_retryable() => {
                        last_refusal = Some(r);
                        break;
                    }
                    AdminReply::Refused(r) => return Err(ClientError::Refused(r)),
                    done => return Ok(done),
                }
            }
            if pause {
                tokio::time::sleep(ADMIN_RETRY).await;
            }
            if target.is_none() {
                self.discover(self.attempt_timeout).await;
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Asks every server it knows of for its status, waiting up to `wait`
    /// for the answers: learns their node ids and, from the most up-to-date
    /// view, the members' client addresses.
    /// Returns a refusal if no server answered and some refused.
    async fn discover(&mut self, wait: Duration) -> Option<ClientError> {
        let mut targets: BTreeSet<SocketAddr> = self.seeds.iter().copied().collect();
        targets.extend(self.addrs.values().copied());
        let mut asks = tokio::task::JoinSet::new();
        for addr in targets {
            let (cluster_id, timeout) = (self.cluster_id, wait);
            let tls = self.tls.clone();
            asks.spawn(async move {
                let mut c = Client::connect(cluster_id, vec![addr]).await?.with_tls(tls);
                c.attempt_timeout = timeout;
                c.status_at(addr).await.map(|s| (addr, s))
            });
        }
        let mut direct = BTreeMap::new();
        let mut best: Option<MemberList> = None;
        let mut serving = BTreeSet::new();
        let mut log_reads = false;
        // The self-declared leader of the highest term.
        let mut leading: Option<(u64, NodeId)> = None;
        let mut refusal = None;
        while let Some(result) = asks.join_next().await {
            let (addr, status) = match result {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) if e.is_refusal() => {
                    refusal = Some(e);
                    continue;
                }
                _ => continue,
            };
            direct.insert(status.node_id, addr);
            if status.follower_reads {
                serving.insert(status.node_id);
            }
            log_reads |= status.read_policy == crate::read_policy_name(kv_core::ReadPolicy::Log);
            if status.role == "leader" && leading.is_none_or(|(t, _)| status.term > t) {
                leading = Some((status.term, status.node_id));
            }
            let newer = best.as_ref().is_none_or(|b| {
                (status.members.term, status.members.commit_index) > (b.term, b.commit_index)
            });
            if newer {
                best = Some(status.members);
            }
        }
        let Some(view) = best else { return refusal };
        let mut addrs = BTreeMap::new();
        for m in &view.members {
            let recorded = m.addrs.as_ref().and_then(|a| a.client.parse().ok());
            if let Some(addr) = direct.get(&m.id).copied().or(recorded) {
                addrs.insert(m.id, addr);
            }
        }
        if addrs.is_empty() {
            // No member is reachable by a known address (a cluster still
            // recording them): use whoever answered.
            addrs = direct;
        }
        if addrs.is_empty() {
            return None;
        }
        let ids: Vec<NodeId> = addrs.keys().copied().collect();
        match &mut self.clerk {
            Some(clerk) => clerk.set_servers(ids),
            None => {
                let first = (self.id % ids.len() as u64) as usize;
                self.clerk = Some(Clerk::new(self.id, ids, first));
            }
        }
        self.conns.retain(|a, _| addrs.values().any(|b| b == a));
        serving.retain(|id| addrs.contains_key(id));
        self.serves_reads = serving;
        self.log_reads = log_reads;
        self.leader = leading
            .map(|(_, id)| id)
            .or(view.leader)
            .or(self.leader)
            .filter(|id| addrs.contains_key(id));
        self.addrs = addrs;
        None
    }

    /// Waits (within the operation's time) until some server's id is known,
    /// doubling the wait for answers after every round without one.
    async fn await_servers(&mut self, started: Instant) -> Result<(), ClientError> {
        let mut rounds = Attempts::new(self.attempt_timeout, started + self.op_timeout);
        while self.clerk.is_none() {
            if started.elapsed() > self.op_timeout {
                return Err(ClientError::Timeout(self.op_timeout));
            }
            let refusal = self.discover(rounds.wait()).await;
            if self.clerk.is_none() {
                if let Some(refusal) = refusal {
                    return Err(refusal);
                }
                rounds.timed_out();
                tokio::time::sleep(kv_core::ROUND_BACKOFF).await;
            }
        }
        Ok(())
    }

    /// The servers a read tries, in order (see the module doc).
    fn read_order(&self, consistency: ReadConsistency) -> Vec<SocketAddr> {
        let mut first: Vec<SocketAddr> = match consistency {
            ReadConsistency::Local => self.seeds.clone(),
            ReadConsistency::Linearizable if !self.serves_reads.is_empty() => self
                .addrs
                .iter()
                .filter(|(id, _)| self.serves_reads.contains(id) || self.leader == Some(**id))
                .map(|(_, &a)| a)
                .collect(),
            _ => self
                .leader
                .and_then(|l| self.addrs.get(&l).copied())
                .into_iter()
                .collect(),
        };
        if !first.is_empty() {
            let n = first.len();
            first.rotate_left(self.read_turn % n);
        }
        for &a in self.addrs.values() {
            if !first.contains(&a) {
                first.push(a);
            }
        }
        first
    }

    /// A read was answered by `addr`: if only a leader could have answered
    /// it, that server leads.
    fn read_answered(&mut self, addr: SocketAddr, consistency: ReadConsistency) {
        if consistency == ReadConsistency::Local {
            return;
        }
        let id = self.addrs.iter().find(|(_, &a)| a == addr).map(|(&i, _)| i);
        if let Some(id) = id.filter(|i| !self.serves_reads.contains(i)) {
            self.leader = Some(id);
        }
    }

    /// `addr` answered `WrongLeader` with `hint`: where to send the read
    /// next, if the hint names another server (asking the servers, waiting
    /// up to `wait`, if it names one not known).
    async fn follow_hint(
        &mut self,
        addr: SocketAddr,
        hint: Option<NodeId>,
        wait: Duration,
    ) -> Option<SocketAddr> {
        let Some(hint) = hint else {
            self.forget_leader_at(addr);
            return None;
        };
        if !self.addrs.contains_key(&hint) {
            self.discover(wait).await;
        }
        let to = self.addrs.get(&hint).copied()?;
        self.leader = Some(hint);
        (to != addr).then_some(to)
    }

    /// `addr` failed or does not lead: stop taking it for the leader.
    fn forget_leader_at(&mut self, addr: SocketAddr) {
        if self
            .leader
            .is_some_and(|l| self.addrs.get(&l) == Some(&addr))
        {
            self.leader = None;
        }
    }

    async fn execute(&mut self, op: Op) -> Result<Outcome, ClientError> {
        let started = Instant::now();
        self.await_servers(started).await?;
        self.drop_lingering();
        let result = self.command(op, started).await;
        self.drop_lingering();
        result
    }

    /// The attempts of one command, once the servers are known.
    async fn command(&mut self, op: Op, started: Instant) -> Result<Outcome, ClientError> {
        let mut attempt = self.clerk.as_mut().expect("built").begin(op);
        let mut attempts = Attempts::new(self.attempt_timeout, started + self.op_timeout);
        loop {
            if started.elapsed() > self.op_timeout {
                // Leave the clerk usable: the request stays outstanding and
                // the next operation would be refused; start over instead.
                self.id = raft_wire::seed_from_entropy(self.next_id);
                let ids: Vec<NodeId> = self.addrs.keys().copied().collect();
                self.clerk = Some(Clerk::new(self.id, ids, 0));
                return Err(ClientError::Timeout(self.op_timeout));
            }
            if let Some(delay) = attempt.delay {
                // A whole round failed: the membership may have moved.
                tokio::time::sleep(delay).await;
                self.discover(attempts.wait()).await;
            }
            let server = attempt.server;
            let reply = match self.addrs.get(&server).copied() {
                Some(addr) => {
                    let request = ClientRequest::Command {
                        id: 0,
                        command: attempt.command.clone(),
                    };
                    match self.attempt(addr, request, &mut attempts).await {
                        Ok((from, ClientResponse::Reply { reply, .. })) => {
                            // An earlier attempt's answer comes from where
                            // that attempt went.
                            let by = self.addrs.iter().find(|(_, &a)| a == from);
                            Some((by.map_or(server, |(&id, _)| id), reply))
                        }
                        _ => None,
                    }
                }
                None => None,
            };
            let hint_unknown = matches!(
                &reply,
                Some((_, Reply::WrongLeader { leader_hint: Some(h) })) if !self.addrs.contains_key(h)
            );
            if hint_unknown {
                self.discover(attempts.wait()).await;
            }
            let clerk = self.clerk.as_mut().expect("built");
            attempt = match reply {
                Some((by, reply)) => match clerk.on_reply(by, reply) {
                    Progress::Done(Outcome::SessionExpired) => {
                        return Err(ClientError::SessionExpired)
                    }
                    Progress::Done(outcome) => {
                        self.leader = Some(by);
                        return Ok(outcome);
                    }
                    Progress::Retry(next) => next,
                },
                None => clerk.on_failure(server),
            };
        }
    }

    /// One request to one server and its response, within one attempt
    /// timeout (a request that times out loses its connection).
    async fn call(
        &mut self,
        addr: SocketAddr,
        request: ClientRequest,
    ) -> Result<ClientResponse, ClientError> {
        let id = self.fresh_id();
        let wait = self.attempt_timeout;
        match self.exchange(addr, request, id, wait, &[]).await {
            Ok((_, response)) => Ok(response),
            Err(CallFailure::Refused(e)) => {
                self.conns.remove(&addr);
                Err(e)
            }
            Err(failure) => {
                self.conns.remove(&addr);
                Err(ClientError::Unreachable {
                    addr,
                    reason: failure.reason(),
                })
            }
        }
    }

    /// One attempt of an operation (see the module doc): `request` to
    /// `addr`, waiting [`Attempts::wait`] for its answer or an `Applied`
    /// answer to an earlier attempt. Returns who answered, and what. One
    /// that times out keeps its connection until the operation ends, and
    /// doubles the next attempt's wait.
    async fn attempt(
        &mut self,
        addr: SocketAddr,
        request: ClientRequest,
        attempts: &mut Attempts,
    ) -> Result<(SocketAddr, ClientResponse), CallFailure> {
        let id = self.fresh_id();
        attempts.sent.push((id, addr));
        let result = self
            .exchange(addr, request, id, attempts.wait(), &attempts.sent)
            .await;
        match &result {
            Ok(_) => {}
            Err(CallFailure::TimedOut) => {
                attempts.timed_out();
                // (A shared connection stays: its late answers reach the
                // inbox anyway.)
                if let Some(mut conn) = self.conns.remove(&addr) {
                    conn.hand_to_task(addr, self.inbox_tx.clone());
                    self.lingering.push(conn);
                }
            }
            Err(CallFailure::Failed(_) | CallFailure::Refused(_)) => {
                self.conns.remove(&addr);
            }
        }
        result
    }

    /// Sends `request` to `addr` under the id `id`, and waits up to `wait`
    /// for the answer to it, or for an `Applied` answer to another request
    /// in `sent` (id → where it went). Returns who answered, and what; a
    /// response to anything else is dropped.
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        mut request: ClientRequest,
        id: u64,
        wait: Duration,
        sent: &[(u64, SocketAddr)],
    ) -> Result<(SocketAddr, ClientResponse), CallFailure> {
        if self.shared.is_some() {
            return self.exchange_shared(addr, request, id, wait, sent).await;
        }
        // One timer for the whole exchange, sending and waiting.
        let timer = tokio::time::sleep(wait);
        tokio::pin!(timer);
        set_request_id(&mut request, id);
        let sending = async {
            let conn = self.conn(addr).await.map_err(|e| match e {
                e @ (DialError::Refused(_) | DialError::Tls(_)) => {
                    CallFailure::Refused(ClientError::dialling(addr, e))
                }
                e => CallFailure::Failed(e.to_string()),
            })?;
            let sent = async {
                write_frame(&mut conn.writer, &request).await?;
                conn.writer.flush().await
            };
            sent.await.map_err(|e| CallFailure::Failed(e.to_string()))?;
            Ok::<_, CallFailure>(())
        };
        tokio::select! {
            biased;
            sent = sending => sent?,
            () = &mut timer => return Err(CallFailure::TimedOut),
        }
        let conn = self.conns.get_mut(&addr).expect("just used");
        let ConnReader::Inline {
            read,
            frames,
            chunk,
        } = &mut conn.reader
        else {
            unreachable!("a connection in use is read inline");
        };
        let inbox = &mut self.inbox;
        // Only a lingering connection's reader task puts anything there.
        let lingering = !self.lingering.is_empty();
        loop {
            // What this connection already brought, then whichever comes
            // first: more of it, a late answer on a lingering connection,
            // or the deadline. Each of those waits is cancel-safe.
            let response = match frames.next::<ClientResponse>(MAX_FRAME) {
                Ok(Some(response)) => response,
                Err(e) => return Err(CallFailure::Failed(e.to_string())),
                Ok(None) => {
                    tokio::select! {
                        biased;
                        got = read.read(chunk) => match got {
                            Ok(0) => return Err(CallFailure::Failed("the server closed the connection".into())),
                            Ok(n) => {
                                frames.push(&chunk[..n]);
                                continue;
                            }
                            Err(e) => return Err(CallFailure::Failed(e.to_string())),
                        },
                        arrival = inbox.recv(), if lingering => {
                            let arrival = arrival.expect("the client holds a sender: the inbox stays open");
                            match arrival.what {
                                // Only Applied answers to earlier attempts count.
                                Ok(response) => match late_answer(&response, sent) {
                                    Some(from) => return Ok((from, response)),
                                    None => continue,
                                },
                                // A lingering connection ended.
                                Err(_) => continue,
                            }
                        }
                        () = &mut timer => return Err(CallFailure::TimedOut),
                    }
                }
            };
            if answer_id(&response) == id {
                return Ok((addr, response));
            }
            if let Some(from) = late_answer(&response, sent) {
                return Ok((from, response));
            }
            // An answer to a request given up on.
        }
    }

    /// [`Client::exchange`] over the shared connections: the request goes
    /// out under its wire id, and every answer arrives in the inbox.
    async fn exchange_shared(
        &mut self,
        addr: SocketAddr,
        mut request: ClientRequest,
        id: u64,
        wait: Duration,
        sent: &[(u64, SocketAddr)],
    ) -> Result<(SocketAddr, ClientResponse), CallFailure> {
        let (pool, slot) = self.shared.as_ref().expect("shared");
        let timer = tokio::time::sleep(wait);
        tokio::pin!(timer);
        set_request_id(&mut request, crate::pool::wire_id(*slot, id));
        let local = id & ((1 << crate::pool::SLOT_SHIFT) - 1);
        tokio::select! {
            biased;
            sent = pool.send(addr, request) => sent.map_err(|e| match e {
                e @ (DialError::Refused(_) | DialError::Tls(_)) => {
                    CallFailure::Refused(ClientError::dialling(addr, e))
                }
                e => CallFailure::Failed(e.to_string()),
            })?,
            () = &mut timer => return Err(CallFailure::TimedOut),
        }
        loop {
            let arrival = tokio::select! {
                biased;
                arrival = self.inbox.recv() => arrival.expect("the client holds a sender: the inbox stays open"),
                () = &mut timer => return Err(CallFailure::TimedOut),
            };
            match arrival.what {
                Ok(response) => {
                    if answer_id(&response) == local && arrival.from == addr {
                        return Ok((addr, response));
                    }
                    // Only Applied answers to earlier attempts count (their
                    // ids, like the answers', are the local bits).
                    if let Some(from) = late_answer_masked(&response, sent) {
                        return Ok((from, response));
                    }
                }
                Err(why) if arrival.from == addr => return Err(CallFailure::Failed(why)),
                // Another server's connection ended.
                Err(_) => {}
            }
        }
    }

    /// Drops the connections kept for late answers, and whatever their
    /// readers queued: an answer to an operation that ended.
    fn drop_lingering(&mut self) {
        self.lingering.clear();
        while self.inbox.try_recv().is_ok() {}
    }

    async fn conn(&mut self, addr: SocketAddr) -> Result<&mut Conn, DialError> {
        if !self.conns.contains_key(&addr) {
            let hello = Hello::client(self.cluster_id);
            let stream = dial(addr, self.tls.as_ref(), &hello, CONNECT_TIMEOUT).await?;
            let (r, w) = stream.split();
            self.conns.insert(
                addr,
                Conn {
                    writer: w,
                    reader: ConnReader::Inline {
                        read: r,
                        frames: FrameDecoder::new(),
                        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
                    },
                },
            );
        }
        Ok(self.conns.get_mut(&addr).expect("just connected"))
    }
}

/// Gives `request` the id `id`.
fn set_request_id(request: &mut ClientRequest, id: u64) {
    match request {
        ClientRequest::Command { id: rid, .. }
        | ClientRequest::Status { id: rid }
        | ClientRequest::Admin { id: rid, .. }
        | ClientRequest::Read { id: rid, .. } => *rid = id,
    }
}

/// [`late_answer`] for an answer that came over a shared connection, which
/// carries only the low bits of the request's id.
fn late_answer_masked(response: &ClientResponse, sent: &[(u64, SocketAddr)]) -> Option<SocketAddr> {
    let mask = (1u64 << crate::pool::SLOT_SHIFT) - 1;
    let masked: Vec<(u64, SocketAddr)> = sent.iter().map(|&(i, a)| (i & mask, a)).collect();
    late_answer(response, &masked)
}

/// The id a response answers.
fn answer_id(response: &ClientResponse) -> u64 {
    match response {
        ClientResponse::Reply { id, .. } | ClientResponse::Status { id, .. } => *id,
    }
}

/// Where the request `response` answers went, if it is an `Applied`
/// answer to one of `sent` (an attempt of the same operation): such an
/// answer ends the operation, whichever attempt it answers.
fn late_answer(response: &ClientResponse, sent: &[(u64, SocketAddr)]) -> Option<SocketAddr> {
    let applied = matches!(
        response,
        ClientResponse::Reply {
            reply: Reply::Applied(_),
            ..
        }
    );
    let id = answer_id(response);
    sent.iter()
        .find(|&&(sent_id, _)| sent_id == id)
        .map(|&(_, addr)| addr)
        .filter(|_| applied)
}

/// A lingering connection's reader: hands every response to the client's
/// inbox (first those the client had read and not taken), then why the
/// connection ended.
async fn read_responses(
    from: SocketAddr,
    mut read: StreamRead,
    mut frames: FrameDecoder,
    mut chunk: Box<[u8]>,
    inbox: mpsc::Sender<Arrival>,
) {
    loop {
        let what = match frames.next::<ClientResponse>(MAX_FRAME) {
            Ok(Some(response)) => Ok(response),
            Err(e) => Err(e.to_string()),
            Ok(None) => match read.read(&mut chunk).await {
                Ok(0) => Err("the server closed the connection".to_string()),
                Ok(n) => {
                    frames.push(&chunk[..n]);
                    continue;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        let ended = what.is_err();
        if inbox.send(Arrival { from, what }).await.is_err() || ended {
            return;
        }
    }
}

/// What [`Client::compare_and_swap`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The key held the expected value; it holds the new one now.
    Swapped,
    /// The key held `current` (`None`: it was unset); nothing changed.
    NotSwapped {
        /// The value found.
        current: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::read_frame;
    use kv_core::Command;
    use tokio::io::BufReader;
    use tokio::net::TcpListener;

    #[test]
    fn each_timed_out_attempt_doubles_the_wait_up_to_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(100);
        let mut attempts = Attempts::new(Duration::from_secs(1), deadline);
        assert_eq!(attempts.wait(), Duration::from_secs(1));
        attempts.timed_out();
        assert_eq!(attempts.wait(), Duration::from_secs(2));
        for _ in 0..6 {
            attempts.timed_out();
        }
        // 128 s, but only what is left until the deadline.
        assert!(attempts.wait() <= Duration::from_secs(100));
        assert!(attempts.wait() > Duration::from_secs(90));
    }

    /// A server that answers an operation's first attempt only once its
    /// retry has arrived: the retry takes that answer.
    #[tokio::test]
    async fn a_late_answer_to_a_timed_out_attempt_answers_the_operation() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let accept = || async {
                let (stream, _) = listener.accept().await.expect("accept");
                let (r, w) = stream.into_split();
                let mut r = BufReader::new(r);
                let _: Hello = read_frame(&mut r).await.expect("hello");
                let mut w = w;
                let accepted = raft_wire::HelloReply::answering(&Ok::<(), HelloError>(()));
                write_frame(&mut w, &accepted).await.expect("hello answer");
                w.flush().await.expect("flush");
                let request: ClientRequest = read_frame(&mut r).await.expect("request");
                (request, r, w)
            };
            let (first, _r1, mut w1) = accept().await;
            let retry = accept().await;
            let ClientRequest::Command { id, .. } = first else {
                panic!("not a command: {first:?}");
            };
            let answer = ClientResponse::Reply {
                id,
                reply: Reply::Applied(Outcome::Done),
            };
            write_frame(&mut w1, &answer).await.expect("answer");
            w1.flush().await.expect("flush");
            // Keep both connections open, the retry unanswered.
            (retry, _r1, w1)
        });
        let mut c = Client::connect(1, vec![addr]).await.expect("client");
        let wait = Duration::from_secs(3);
        let mut attempts = Attempts::new(wait, Instant::now() + Duration::from_secs(60));
        let command = || ClientRequest::Command {
            id: 0,
            command: Command {
                client: 9,
                seq: 1,
                op: Op::Put {
                    key: "k".into(),
                    value: "v".into(),
                },
            },
        };
        let first = c.attempt(addr, command(), &mut attempts).await;
        assert!(matches!(first, Err(CallFailure::TimedOut)));
        assert_eq!(c.lingering.len(), 1, "the timed-out connection is kept");
        let (from, response) = match c.attempt(addr, command(), &mut attempts).await {
            Ok(answer) => answer,
            Err(e) => panic!("no answer: {}", e.reason()),
        };
        assert_eq!(from, addr);
        let first_id = attempts.sent.first().expect("two attempts").0;
        assert_eq!(attempts.sent.len(), 2);
        assert_eq!(
            response,
            ClientResponse::Reply {
                id: first_id,
                reply: Reply::Applied(Outcome::Done)
            }
        );
        drop(server.await.expect("the server"));
    }
}
