//! The sans-IO clerk: the client side of the KV service, shared by every
//! driver. It numbers requests, remembers which server led last, and decides
//! where to retry. The driver sends, waits (with its own timeout) and reports
//! back.

use crate::command::{ClientId, Command, Op, Outcome, Reply};

/// Where to send the current request next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The server's index (equal to its Raft node id).
    pub server: usize,
    /// The request, identical on every retry.
    pub command: Command,
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
}

impl Clerk {
    /// A clerk with a unique `id`, first trying server `first_guess`.
    pub fn new(id: ClientId, servers: usize, first_guess: usize) -> Self {
        assert!(servers > 0, "a cluster has servers");
        Clerk { id, seq: 0, servers, leader: first_guess % servers, current: None }
    }

    /// The client id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Starts a new request (the previous one must be done).
    pub fn begin(&mut self, op: Op) -> Attempt {
        assert!(self.current.is_none(), "one outstanding request per clerk");
        self.seq += 1;
        let command = Command { client: self.id, seq: self.seq, op };
        self.current = Some(command.clone());
        Attempt { server: self.leader, command }
    }

    /// The server answered.
    pub fn on_reply(&mut self, server: usize, reply: Reply) -> Progress {
        match reply {
            Reply::Applied(outcome) => {
                self.leader = server;
                self.current = None;
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

    fn attempt(&self) -> Attempt {
        let command = self.current.clone().expect("a request is outstanding");
        Attempt { server: self.leader, command }
    }
}
