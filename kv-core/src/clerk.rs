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

/// How many times the clerk follows leader hints to the same member within
/// one request before it stops believing them (two servers with stale views,
/// say both removed from the cluster, that name each other would otherwise
/// bounce it between them forever).
pub const MAX_FOLLOWS: usize = 3;

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
/// hints that name a member, but to each member at most
/// [`MAX_FOLLOWS`] times per request: past that, a hint to it is taken as
/// stale, and the clerk tries the next member in order instead (it still
/// reaches that member in its turn). Otherwise two servers with stale views (say, both
/// removed from the cluster) that name each other as leader would keep it
/// bouncing between them forever.
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
    /// The members hints sent the clerk to since the last success (with
    /// repeats).
    followed: Vec<NodeId>,
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
            followed: Vec::new(),
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
        self.followed.clear();
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
                self.followed.clear();
                Progress::Done(outcome)
            }
            Reply::WrongLeader { leader_hint } => {
                let fresh =
                    |h: &NodeId| self.followed.iter().filter(|&&f| f == *h).count() < MAX_FOLLOWS;
                let hinted = leader_hint
                    .filter(fresh)
                    .and_then(|h| self.servers.iter().position(|&s| s == h));
                self.leader = match hinted {
                    Some(h) if h != at => {
                        self.followed.push(self.servers[h]);
                        h
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_at(p: Progress) -> NodeId {
        match p {
            Progress::Retry(a) => a.server,
            Progress::Done(o) => panic!("done: {o:?}"),
        }
    }

    /// Two servers with stale views naming each other (chaos seed 4598 with
    /// membership changes: both were removed) no longer trap the clerk.
    #[test]
    fn stale_hints_between_two_servers_do_not_trap_the_clerk() {
        let mut ck = Clerk::new(7, vec![0, 1, 2], 0);
        let first = ck.begin(Op::Get { key: "k".into() });
        assert_eq!(first.server, 0);
        let none = || Reply::WrongLeader { leader_hint: None };
        let to0 = || Reply::WrongLeader {
            leader_hint: Some(0),
        };
        for _ in 0..MAX_FOLLOWS {
            assert_eq!(retry_at(ck.on_reply(0, none())), 1);
            assert_eq!(retry_at(ck.on_reply(1, to0())), 0, "the hint is followed");
        }
        // Once more is once too many: the clerk moves on to 2.
        assert_eq!(retry_at(ck.on_reply(0, none())), 1);
        assert_eq!(retry_at(ck.on_reply(1, to0())), 2);
    }

    /// A fresh hint is followed as before.
    #[test]
    fn a_hint_to_a_new_leader_is_followed() {
        let mut ck = Clerk::new(7, vec![0, 1, 2], 0);
        ck.begin(Op::Get { key: "k".into() });
        let reply = Reply::WrongLeader {
            leader_hint: Some(2),
        };
        assert_eq!(retry_at(ck.on_reply(0, reply)), 2);
    }
}
