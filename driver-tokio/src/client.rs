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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use kv_core::{AdminReply, AdminRequest, Clerk, MemberList, Op, Outcome, Progress, Refusal, Reply};
use raft_core::NodeId;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::wire::{read_frame, write_frame, ClientRequest, ClientResponse, Hello, NodeStatus};

/// How long to wait for a connection to a server.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The pause before retrying an admin request the leader refused for now.
const ADMIN_RETRY: Duration = Duration::from_millis(200);

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
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// A session with a cluster.
pub struct Client {
    cluster_id: u64,
    /// The addresses given to `connect`, in order.
    seeds: Vec<SocketAddr>,
    /// The client address of every server whose node id is known.
    addrs: BTreeMap<NodeId, SocketAddr>,
    conns: BTreeMap<SocketAddr, Conn>,
    /// Built on the first request, once some server's id is known.
    clerk: Option<Clerk>,
    id: u64,
    next_id: u64,
    /// How long to wait for one server's answer before trying the next.
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
) -> Result<AdminReply, ClientError> {
    let mut c = Client::connect(cluster_id, vec![addr]).await?;
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

impl Client {
    /// A session with the cluster `cluster_id`, reached through `servers`
    /// (client addresses of some of its servers, in any order; the others
    /// are learned). Connections are made lazily.
    pub async fn connect(cluster_id: u64, servers: Vec<SocketAddr>) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        Ok(Client {
            cluster_id,
            seeds: servers,
            addrs: BTreeMap::new(),
            conns: BTreeMap::new(),
            clerk: None,
            id: raft_wire::seed_from_entropy(0x6b76),
            next_id: 0,
            attempt_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(30),
        })
    }

    /// The client address of every server whose node id it knows.
    pub fn known_servers(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.addrs
    }

    /// The value of `key` ("" if it was never set).
    pub async fn get(&mut self, key: &str) -> Result<String, ClientError> {
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
        let started = tokio::time::Instant::now();
        let mut target: Option<NodeId> = None;
        let mut last_refusal = None;
        loop {
            if started.elapsed() > self.op_timeout {
                return Err(last_refusal
                    .map_or(ClientError::Timeout(self.op_timeout), ClientError::Refused));
            }
            if self.addrs.is_empty() || target.is_some_and(|t| !self.addrs.contains_key(&t)) {
                self.discover().await;
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
                self.discover().await;
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Asks every server it knows of for its status: learns their node ids
    /// and, from the most up-to-date view, the members' client addresses.
    async fn discover(&mut self) {
        let mut targets: BTreeSet<SocketAddr> = self.seeds.iter().copied().collect();
        targets.extend(self.addrs.values().copied());
        let mut asks = tokio::task::JoinSet::new();
        for addr in targets {
            let (cluster_id, timeout) = (self.cluster_id, self.attempt_timeout);
            asks.spawn(async move {
                let mut c = Client::connect(cluster_id, vec![addr]).await.ok()?;
                c.attempt_timeout = timeout;
                c.status_at(addr).await.ok().map(|s| (addr, s))
            });
        }
        let mut direct = BTreeMap::new();
        let mut best: Option<MemberList> = None;
        while let Some(result) = asks.join_next().await {
            let Ok(Some((addr, status))) = result else {
                continue;
            };
            direct.insert(status.node_id, addr);
            let newer = best.as_ref().is_none_or(|b| {
                (status.members.term, status.members.commit_index) > (b.term, b.commit_index)
            });
            if newer {
                best = Some(status.members);
            }
        }
        let Some(view) = best else { return };
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
            return;
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
        self.addrs = addrs;
    }

    async fn execute(&mut self, op: Op) -> Result<Outcome, ClientError> {
        let started = tokio::time::Instant::now();
        while self.clerk.is_none() {
            if started.elapsed() > self.op_timeout {
                return Err(ClientError::Timeout(self.op_timeout));
            }
            self.discover().await;
            if self.clerk.is_none() {
                tokio::time::sleep(kv_core::ROUND_BACKOFF).await;
            }
        }
        let mut attempt = self.clerk.as_mut().expect("built").begin(op);
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
                self.discover().await;
            }
            let server = attempt.server;
            let reply = match self.addrs.get(&server).copied() {
                Some(addr) => {
                    let id = self.fresh_id();
                    let request = ClientRequest::Command {
                        id,
                        command: attempt.command.clone(),
                    };
                    match self.call(addr, request).await {
                        Ok(ClientResponse::Reply { reply, .. }) => Some(reply),
                        _ => None,
                    }
                }
                None => None,
            };
            let hint_unknown = matches!(
                &reply,
                Some(Reply::WrongLeader { leader_hint: Some(h) }) if !self.addrs.contains_key(h)
            );
            if hint_unknown {
                self.discover().await;
            }
            let clerk = self.clerk.as_mut().expect("built");
            attempt = match reply {
                Some(reply) => match clerk.on_reply(server, reply) {
                    Progress::Done(Outcome::SessionExpired) => {
                        return Err(ClientError::SessionExpired)
                    }
                    Progress::Done(outcome) => return Ok(outcome),
                    Progress::Retry(next) => next,
                },
                None => clerk.on_failure(server),
            };
        }
    }

    /// One request to one server and the response with its id (`id` is
    /// replaced by a fresh one), within one attempt timeout.
    async fn call(
        &mut self,
        addr: SocketAddr,
        mut request: ClientRequest,
    ) -> Result<ClientResponse, ClientError> {
        let id = self.fresh_id();
        match &mut request {
            ClientRequest::Command { id: rid, .. }
            | ClientRequest::Status { id: rid }
            | ClientRequest::Admin { id: rid, .. } => *rid = id,
        }
        let result = tokio::time::timeout(self.attempt_timeout, async {
            let conn = self.conn(addr).await?;
            write_frame(&mut conn.writer, &request).await?;
            conn.writer.flush().await?;
            loop {
                let response = read_frame::<ClientResponse, _>(&mut conn.reader)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let rid = match &response {
                    ClientResponse::Reply { id, .. } | ClientResponse::Status { id, .. } => *id,
                };
                if rid == id {
                    return Ok::<_, std::io::Error>(response);
                }
                // An answer to a request we gave up on.
            }
        })
        .await;
        let reason = match result {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in time".to_string(),
        };
        self.conns.remove(&addr);
        Err(ClientError::Unreachable { addr, reason })
    }

    async fn conn(&mut self, addr: SocketAddr) -> std::io::Result<&mut Conn> {
        if !self.conns.contains_key(&addr) {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            let (r, mut w) = stream.into_split();
            let hello = Hello::client(self.cluster_id);
            write_frame(&mut w, &hello).await?;
            self.conns.insert(
                addr,
                Conn {
                    reader: BufReader::new(r),
                    writer: w,
                },
            );
        }
        Ok(self.conns.get_mut(&addr).expect("just connected"))
    }
}
