//! The sans-IO clerk: the client side of the KV service, shared by every
//! driver. It numbers requests, remembers which server led last, and decides
//! where to retry. The driver sends, waits (with its own timeout) and reports
//! back.

use std::time::Duration;

use crate::command::{ClientId, Command, Op, Outcome, Reply};

/// How long a clerk pauses after every server in turn failed to take its
/// request (no leader yet, or a partition): long enough for an election to
/// make progress, short next to an election timeout.
pub const ROUND_BACKOFF: Duration = Duration::from_millis(100);

/// Where to send the current request next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The server's index (equal to its Raft node id).
    pub server: usize,
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

/// A client session with a cluster of `servers` servers.
#[derive(Clone, Debug)]
pub struct Clerk {
    id: ClientId,
    seq: u64,
    servers: usize,
    leader: usize,
    current: Option<Command>,
    /// Failed attempts since the last success.
    failures: usize,
}

impl Clerk {
    /// A clerk with a unique `id`, first trying server `first_guess`.
    pub fn new(id: ClientId, servers: usize, first_guess: usize) -> Self {
        assert!(servers > 0, "a cluster has servers");
        Clerk {
            id,
            seq: 0,
            servers,
            leader: first_guess % servers,
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
            server: self.leader,
            command,
            delay: None,
        }
    }

    /// The server answered.
    pub fn on_reply(&mut self, server: usize, reply: Reply) -> Progress {
        match reply {
            Reply::Applied(outcome) => {
                self.leader = server;
                self.current = None;
                self.failures = 0;
                Progress::Done(outcome)
            }
            Reply::WrongLeader { leader_hint } => {
                self.leader = match leader_hint {
                    Some(h) if (h as usize) < self.servers && h as usize != server => h as usize,
                    _ => (server + 1) % self.servers,
                };
                Progress::Retry(self.attempt())
            }
        }
    }

    /// The call failed or timed out: try the next server.
    pub fn on_failure(&mut self, server: usize) -> Attempt {
        self.leader = (server + 1) % self.servers;
        self.attempt()
    }

    fn attempt(&mut self) -> Attempt {
        let command = self.current.clone().expect("a request is outstanding");
        self.failures += 1;
        let delay = self
            .failures
            .is_multiple_of(self.servers)
            .then_some(ROUND_BACKOFF);
        Attempt {
            server: self.leader,
            command,
            delay,
        }
    }
}
