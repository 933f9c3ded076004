//! The sans-IO clerk: the client side of the KV service, shared by every
//! driver. It numbers requests, remembers which server led last, and decides
//! where to retry. The driver sends, waits (with its own timeout) and reports
//! back.

use std::time::Duration;

use raft_core::NodeId;

use crate::command::{ClientId, Command, Op, Outcome, Reply};

/// How long a clerk pauses after every server in turn failed to take its
/// request (no leader yet, or a partition): long enough for an election to
/// make progress, short next to an election timeout.
pub const ROUND_BACKOFF: Duration = Duration::from_millis(100);

/// Where to send the current request next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The server's Raft node id.
    pub server: NodeId,
    /// The request, identical on every retry.
    pub command: Command,
    /// Wait this long before sending (after a full round of failures).
    pub delay: Option<Duration>,
}

/// What the clerk makes of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The request took effect exactly once with this outcome.
    Done(Outcome),
    /// Send again, there.
    Retry(Attempt),
}

/// A client session with a cluster, known by its members' node ids.
///
/// The clerk tries the members in the order it was given (the driver may
/// shuffle it), starting from its guess of the leader, and follows leader
/// hints that name a member.
#[derive(Clone, Debug)]
pub struct Clerk {
    id: ClientId,
    seq: u64,
    /// The members' node ids, in the order the clerk tries them.
    servers: Vec<NodeId>,
    /// The position in `servers` of the member tried next.
    leader: usize,
    current: Option<Command>,
    /// Failed attempts since the last success.
    failures: usize,
}

impl Clerk {
    /// A clerk with a unique `id` for the cluster of `servers` (node ids,
    /// in the order to try them), first trying the one at position
    /// `first_guess` (modulo their number).
    pub fn new(id: ClientId, servers: Vec<NodeId>, first_guess: usize) -> Self {
        assert!(!servers.is_empty(), "a cluster has servers");
        Clerk {
            id,
            seq: 0,
            leader: first_guess % servers.len(),
            servers,
            current: None,
            failures: 0,
        }
    }

    /// The client id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Starts a new request (the previous one must be done).
    pub fn begin(&mut self, op: Op) -> Attempt {
        assert!(self.current.is_none(), "one outstanding request per clerk");
        self.seq += 1;
        let command = Command {
            client: self.id,
            seq: self.seq,
            op,
        };
        self.current = Some(command.clone());
        Attempt {
            server: self.servers[self.leader],
            command,
            delay: None,
        }
    }

    /// The members' node ids, in the order the clerk tries them.
    pub fn servers(&self) -> &[NodeId] {
        &self.servers
    }

    /// The cluster's members changed (a driver learned them, see
    /// `kv_core::admin`): try `servers` from now on, keeping the leader
    /// guess if it is still among them.
    pub fn set_servers(&mut self, servers: Vec<NodeId>) {
        assert!(!servers.is_empty(), "a cluster has servers");
        let guess = self.servers[self.leader];
        self.leader = servers.iter().position(|&s| s == guess).unwrap_or(0);
        self.servers = servers;
    }

    /// The position of member `server` in the clerk's order (a server the
    /// clerk no longer lists counts as the one before the first).
    fn position(&self, server: NodeId) -> usize {
        self.servers
            .iter()
            .position(|&s| s == server)
            .unwrap_or(self.servers.len() - 1)
    }

    /// Member `server` answered.
    pub fn on_reply(&mut self, server: NodeId, reply: Reply) -> Progress {
        let at = self.position(server);
        match reply {
            // An answer to another kind of request: not this one's.
            Reply::Admin(_) => {
                self.leader = (at + 1) % self.servers.len();
                Progress::Retry(self.attempt())
            }
            Reply::Applied(outcome) => {
                self.leader = at;
                self.current = None;
                self.failures = 0;
                Progress::Done(outcome)
            }
            Reply::WrongLeader { leader_hint } => {
                let hinted = leader_hint.and_then(|h| self.servers.iter().position(|&s| s == h));
                self.leader = match hinted {
                    Some(h) if h != at => h,
                    _ => (at + 1) % self.servers.len(),
                };
                Progress::Retry(self.attempt())
            }
        }
    }

    /// The call to member `server` failed or timed out: try the next one.
    pub fn on_failure(&mut self, server: NodeId) -> Attempt {
        self.leader = (self.position(server) + 1) % self.servers.len();
        self.attempt()
    }

    fn attempt(&mut self) -> Attempt {
        let command = self.current.clone().expect("a request is outstanding");
        self.failures += 1;
        let delay = self
            .failures
            .is_multiple_of(self.servers.len())
            .then_some(ROUND_BACKOFF);
        Attempt {
            server: self.servers[self.leader],
            command,
            delay,
        }
    }
}
