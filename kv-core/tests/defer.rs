//! `KvServer::defer_applies`: a step leaves the entries it commits for
//! `apply_pending`, or for the next step, which applies them before anything
//! else. One server, writes durable at once, time moved by hand.

use kv_core::{Command, KvServer, Op, Outcome, Reply, ServerAction, ServerConfig, ServerEvent};
use raft_core::Instant;

struct One {
    server: KvServer,
    now_ms: u64,
}

impl One {
    /// A one-member cluster, elected.
    fn new(defer: bool) -> One {
        let config = ServerConfig::new(raft_core::Config::new(0, vec![0]), None);
        let mut server = KvServer::new(config, 1).expect("server");
        server.defer_applies(defer);
        let mut one = One { server, now_ms: 0 };
        while !one.server.raft().is_leader() {
            one.now_ms += 100;
            one.step(ServerEvent::TimerFired);
        }
        one.apply_pending();
        one
    }

    /// Steps `event`, and each write's `Persisted` at once; the replies of
    /// every step, in order.
    fn step(&mut self, event: ServerEvent) -> Vec<(u64, Reply)> {
        let now = Instant::from_millis(self.now_ms);
        let actions = self.server.step(now, event).expect("step");
        self.execute(actions)
    }

    fn apply_pending(&mut self) -> Vec<(u64, Reply)> {
        let now = Instant::from_millis(self.now_ms);
        let actions = self.server.apply_pending(now).expect("apply");
        self.execute(actions)
    }

    fn execute(&mut self, actions: Vec<ServerAction>) -> Vec<(u64, Reply)> {
        let mut replies = Vec::new();
        for action in actions {
            match action {
                ServerAction::Persist(p) => replies.extend(self.step(ServerEvent::Persisted {
                    upto: p.id,
                    raft_state_bytes: 0,
                })),
                ServerAction::Reply { id, reply } => replies.push((id, reply)),
                _ => {}
            }
        }
        replies
    }

    fn put(&mut self, id: u64, seq: u64, key: &str, value: &str) -> Vec<(u64, Reply)> {
        let op = Op::Put {
            key: key.into(),
            value: value.into(),
        };
        let command = Command { client: 7, seq, op };
        self.step(ServerEvent::RequestReceived { id, command })
    }
}

fn done(id: u64) -> (u64, Reply) {
    (id, Reply::Applied(Outcome::Done))
}

#[test]
fn without_deferral_the_committing_step_answers() {
    let mut one = One::new(false);
    assert_eq!(one.put(1, 1, "k", "v"), [done(1)]);
    assert_eq!(one.server.store().get("k"), Some("v"));
    assert!(!one.server.has_pending_applies());
}

#[test]
fn deferred_entries_wait_for_apply_pending() {
    let mut one = One::new(true);
    assert_eq!(one.put(1, 1, "k", "v"), []);
    assert!(one.server.has_pending_applies());
    assert_eq!(one.server.store().get("k"), None);
    assert_eq!(one.apply_pending(), [done(1)]);
    assert!(!one.server.has_pending_applies());
    assert_eq!(one.server.store().get("k"), Some("v"));
    assert_eq!(one.apply_pending(), []);
}

#[test]
fn the_next_step_applies_what_waits_before_anything_else() {
    let mut one = One::new(true);
    assert_eq!(one.put(1, 1, "k", "v"), []);
    // The second put's step first applies the first: its answer comes
    // first, and the second waits in turn.
    assert_eq!(one.put(2, 2, "k", "w"), [done(1)]);
    assert_eq!(one.server.store().get("k"), Some("v"));
    // A retry of the first is answered from the session the apply wrote.
    assert_eq!(one.put(3, 1, "k", "v"), [done(2)]);
    assert_eq!(one.server.store().get("k"), Some("w"));
    assert_eq!(one.apply_pending(), [done(3)]);
    assert_eq!(one.server.store().get("k"), Some("w"));
}
