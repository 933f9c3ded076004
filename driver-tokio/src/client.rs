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
use raft_wire::HelloError;
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

use crate::tls::{ClientTls, Stream};
use crate::transport::{dial, DialError};
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
    reader: BufReader<ReadHalf<Stream>>,
    writer: WriteHalf<Stream>,
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
    tls: Option<ClientTls>,
    request: AdminRequest,
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

impl Client {
    /// A session with the cluster `cluster_id`, reached through `servers`
    /// (client addresses of some of its servers, in any order; the others
    /// are learned). Connections are made lazily.
    pub async fn connect(cluster_id: u64, servers: Vec<SocketAddr>) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let id = raft_wire::seed_from_entropy(0x6b76);
        Ok(Client {
            cluster_id,
            seeds: servers,
            addrs: BTreeMap::new(),
            conns: BTreeMap::new(),
            clerk: None,
            id,
            next_id: 0,
            leader: None,
            serves_reads: BTreeSet::new(),
            log_reads: false,
            // Clients started together start their reads in different places.
            read_turn: (id % 1024) as usize,
            tls: None,
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
        let started = tokio::time::Instant::now();
        if consistency != ReadConsistency::Local {
            self.await_servers(started).await?;
            if self.log_reads {
                return self.get_in_session(key).await;
            }
        }
        self.read_turn = self.read_turn.wrapping_add(1);
        let mut order = self.read_order(consistency);
        let mut turn = 0;
        let mut hinted: Option<SocketAddr> = None;
        let mut failures = 0usize;
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
            match self.call(addr, request).await {
                Ok(ClientResponse::Reply {
                    reply: Reply::Applied(Outcome::Value(value)),
                    ..
                }) => {
                    self.read_answered(addr, consistency);
                    return Ok(value);
                }
                Ok(ClientResponse::Reply {
                    reply: Reply::WrongLeader { leader_hint },
                    ..
                }) => hinted = self.follow_hint(addr, leader_hint).await,
                Ok(other) => {
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
                if let Some(refusal) = self.discover().await {
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
                if let Some(refusal) = self.discover().await {
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
    /// Returns a refusal if no server answered and some refused.
    async fn discover(&mut self) -> Option<ClientError> {
        let mut targets: BTreeSet<SocketAddr> = self.seeds.iter().copied().collect();
        targets.extend(self.addrs.values().copied());
        let mut asks = tokio::task::JoinSet::new();
        for addr in targets {
            let (cluster_id, timeout) = (self.cluster_id, self.attempt_timeout);
            let tls = self.tls.clone();
            asks.spawn(async move {
                let mut c = Client::connect(cluster_id, vec![addr]).await?.with_tls(tls);
                c.attempt_timeout = timeout;
                c.status_at(addr).await.map(|s| (addr, s))
            });
        }
        let mut refusal = None;
        let mut direct = BTreeMap::new();
        let mut best: Option<MemberList> = None;
        let mut serving = BTreeSet::new();
        let mut log_reads = false;
        // The self-declared leader of the highest term.
        let mut leading: Option<(u64, NodeId)> = None;
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

    /// Waits (within the operation's time) until some server's id is known.
    async fn await_servers(&mut self, started: tokio::time::Instant) -> Result<(), ClientError> {
        while self.clerk.is_none() {
            if started.elapsed() > self.op_timeout {
                return Err(ClientError::Timeout(self.op_timeout));
            }
            let refusal = self.discover().await;
            if self.clerk.is_none() {
                if let Some(refusal) = refusal {
                    return Err(refusal);
                }
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
    /// next, if the hint names another server.
    async fn follow_hint(&mut self, addr: SocketAddr, hint: Option<NodeId>) -> Option<SocketAddr> {
        let Some(hint) = hint else {
            self.forget_leader_at(addr);
            return None;
        };
        if !self.addrs.contains_key(&hint) {
            self.discover().await;
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
        let started = tokio::time::Instant::now();
        self.await_servers(started).await?;
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
                    Progress::Done(outcome) => {
                        self.leader = Some(server);
                        return Ok(outcome);
                    }
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
            | ClientRequest::Admin { id: rid, .. }
            | ClientRequest::Read { id: rid, .. } => *rid = id,
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
                    return Ok::<_, DialError>(response);
                }
                // An answer to a request we gave up on.
            }
        })
        .await;
        let error = match result {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(e)) => ClientError::dialling(addr, e),
            Err(_) => ClientError::Unreachable {
                addr,
                reason: "no answer in time".to_string(),
            },
        };
        self.conns.remove(&addr);
        Err(error)
    }

    async fn conn(&mut self, addr: SocketAddr) -> Result<&mut Conn, DialError> {
        if !self.conns.contains_key(&addr) {
            let hello = Hello::client(self.cluster_id);
            let stream = dial(addr, self.tls.as_ref(), &hello, CONNECT_TIMEOUT).await?;
            let (r, w) = tokio::io::split(stream);
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
