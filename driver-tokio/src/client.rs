//! The async client: the sans-IO `kv_core::Clerk` over TCP. Each `Client` is
//! one session (a random client id, requests numbered from 1, one outstanding
//! at a time), so a retry after a timeout or a leader change is applied
//! exactly once.

use std::net::SocketAddr;
use std::time::Duration;

use kv_core::{Attempt, Clerk, Op, Outcome, Progress, Reply};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::wire::{read_frame, write_frame, ClientRequest, ClientResponse, Hello, NodeStatus};

/// How long to wait for a connection to a server.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

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
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// A session with a cluster.
pub struct Client {
    cluster_id: u64,
    servers: Vec<SocketAddr>,
    conns: Vec<Option<Conn>>,
    clerk: Clerk,
    next_id: u64,
    /// How long to wait for one server's answer before trying the next.
    pub attempt_timeout: Duration,
    /// How long an operation may take in all before failing with `Timeout`.
    pub op_timeout: Duration,
}

/// The node ids of the members served at `servers`: their positions (the
/// addresses are given in node-id order, for a cluster numbered from 0).
fn member_ids(servers: &[SocketAddr]) -> Vec<raft_core::NodeId> {
    (0..servers.len() as u64).collect()
}

impl Client {
    /// A session with the cluster `cluster_id` served at `servers` (their
    /// client addresses, in node-id order). Connections are made lazily.
    pub async fn connect(cluster_id: u64, servers: Vec<SocketAddr>) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let id = raft_wire::seed_from_entropy(servers.len() as u64);
        let first = (id % servers.len() as u64) as usize;
        Ok(Client {
            cluster_id,
            conns: servers.iter().map(|_| None).collect(),
            clerk: Clerk::new(id, member_ids(&servers), first),
            servers,
            next_id: 0,
            attempt_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(30),
        })
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
        self.next_id += 1;
        let id = self.next_id;
        let addr = self.servers[index];
        let result = tokio::time::timeout(self.attempt_timeout, async {
            let conn = self.conn(index).await?;
            write_frame(&mut conn.writer, &ClientRequest::Status { id }).await?;
            conn.writer.flush().await?;
            loop {
                match read_frame::<ClientResponse, _>(&mut conn.reader).await {
                    Ok(ClientResponse::Status { id: rid, status }) if rid == id => {
                        return Ok(status)
                    }
                    Ok(_) => continue, // a stale answer to an earlier request
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        })
        .await;
        match result {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => {
                self.conns[index] = None;
                Err(ClientError::Unreachable {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                self.conns[index] = None;
                Err(ClientError::Unreachable {
                    addr,
                    reason: "no answer in time".into(),
                })
            }
        }
    }

    async fn execute(&mut self, op: Op) -> Result<Outcome, ClientError> {
        let started = tokio::time::Instant::now();
        let mut attempt = self.clerk.begin(op);
        loop {
            if started.elapsed() > self.op_timeout {
                // Leave the clerk usable: the request stays outstanding and
                // the next operation would be refused; start over instead.
                let id = raft_wire::seed_from_entropy(self.next_id);
                let first = attempt.server as usize;
                self.clerk = Clerk::new(id, member_ids(&self.servers), first);
                return Err(ClientError::Timeout(self.op_timeout));
            }
            if let Some(delay) = attempt.delay {
                tokio::time::sleep(delay).await;
            }
            let server = attempt.server;
            attempt = match self.try_once(&attempt).await {
                Some(reply) => match self.clerk.on_reply(server, reply) {
                    Progress::Done(Outcome::SessionExpired) => {
                        return Err(ClientError::SessionExpired)
                    }
                    Progress::Done(outcome) => return Ok(outcome),
                    Progress::Retry(next) => next,
                },
                None => self.clerk.on_failure(server),
            };
        }
    }

    /// One request to one server: its reply, or `None` on any failure.
    async fn try_once(&mut self, attempt: &Attempt) -> Option<Reply> {
        self.next_id += 1;
        let id = self.next_id;
        // Member ids are the servers' positions ([`member_ids`]).
        let index = attempt.server as usize;
        let request = ClientRequest::Command {
            id,
            command: attempt.command.clone(),
        };
        let result = tokio::time::timeout(self.attempt_timeout, async {
            let conn = self.conn(index).await?;
            write_frame(&mut conn.writer, &request).await?;
            conn.writer.flush().await?;
            loop {
                match read_frame::<ClientResponse, _>(&mut conn.reader).await {
                    Ok(ClientResponse::Reply { id: rid, reply }) if rid == id => return Ok(reply),
                    Ok(_) => continue, // an answer to a request we gave up on
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        })
        .await;
        match result {
            Ok(Ok(reply)) => Some(reply),
            _ => {
                self.conns[index] = None;
                None
            }
        }
    }

    async fn conn(&mut self, index: usize) -> std::io::Result<&mut Conn> {
        if self.conns[index].is_none() {
            let addr = self.servers[index];
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            let (r, mut w) = stream.into_split();
            let hello = Hello::client(self.cluster_id);
            write_frame(&mut w, &hello).await?;
            self.conns[index] = Some(Conn {
                reader: BufReader::new(r),
                writer: w,
            });
        }
        Ok(self.conns[index].as_mut().expect("just connected"))
    }
}
