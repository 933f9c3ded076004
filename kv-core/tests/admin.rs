//! The admin path of the sans-IO server (`kv_core::admin`), on a tiny
//! in-memory cluster: messages delivered at once, writes durable at once,
//! time moved by hand. Grow a one-server cluster, replace its first server,
//! hand leadership over, and check what the member table and the answers say.

use std::collections::{BTreeMap, VecDeque};

use kv_core::{
    AdminReply, AdminRequest, Command, KvServer, MemberAddrs, MemberRole, Op, Outcome, Refusal,
    Reply, ServerAction, ServerConfig, ServerEvent,
};
use raft_core::{Instant, Message, NodeId};

fn addrs(id: NodeId) -> MemberAddrs {
    MemberAddrs {
        peer: format!("10.0.0.{id}:7000"),
        client: format!("10.0.0.{id}:7100"),
    }
}

struct Cluster {
    now_ms: u64,
    servers: BTreeMap<NodeId, KvServer>,
    net: VecDeque<(NodeId, NodeId, Message)>,
    replies: BTreeMap<u64, Reply>,
    next_id: u64,
    seq: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let mut c = Cluster {
            now_ms: 0,
            servers: BTreeMap::new(),
            net: VecDeque::new(),
            replies: BTreeMap::new(),
            next_id: 0,
            seq: 0,
        };
        c.start(0, vec![0]);
        c
    }

    fn start(&mut self, id: NodeId, members: Vec<NodeId>) {
        let mut config = ServerConfig::new(raft_core::Config::new(id, members), None);
        config.addresses = Some(addrs(id));
        self.servers
            .insert(id, KvServer::new(config, id + 1).expect("server"));
        self.step(id, ServerEvent::TimerFired);
    }

    fn step(&mut self, id: NodeId, event: ServerEvent) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let Some(server) = self.servers.get_mut(&id) else {
                return;
            };
            let now = Instant::from_millis(self.now_ms);
            for action in server.step(now, event).expect("step") {
                match action {
                    ServerAction::Send { to, message } => self.net.push_back((id, to, message)),
                    ServerAction::Persist(p) => {
                        for (to, message) in p.then_send {
                            self.net.push_back((id, to, message));
                        }
                        queue.push_back(ServerEvent::Persisted {
                            upto: p.id,
                            raft_state_bytes: 0,
                        });
                    }
                    ServerAction::SetTimer { .. } => {}
                    ServerAction::Reply { id, reply } => {
                        self.replies.insert(id, reply);
                    }
                    // Servers here never snapshot (max_raft_state None).
                    ServerAction::TakeSnapshot { .. } | ServerAction::SendSnapshot { .. } => {
                        unreachable!("no snapshots in this cluster")
                    }
                }
            }
        }
    }

    /// Delivers messages and fires timers for `ms` milliseconds.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now_ms += 10;
            while let Some((from, to, message)) = self.net.pop_front() {
                self.step(to, ServerEvent::MessageReceived { from, message });
            }
            let ids: Vec<NodeId> = self.servers.keys().copied().collect();
            for id in ids {
                let due = self.servers[&id]
                    .raft()
                    .next_deadline()
                    .is_some_and(|d| d <= Instant::from_millis(self.now_ms));
                if due {
                    self.step(id, ServerEvent::TimerFired);
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .servers
            .iter()
            .filter(|(_, s)| s.raft().is_leader())
            .map(|(&i, _)| i)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Sends `request` to the leader until it is answered with something
    /// other than a retryable refusal.
    fn admin(&mut self, request: AdminRequest) -> AdminReply {
        for _ in 0..50 {
            self.run(200);
            let Some(leader) = self.leader() else {
                continue;
            };
            self.next_id += 1;
            let id = self.next_id;
            let event = ServerEvent::AdminReceived {
                id,
                request: request.clone(),
            };
            self.step(leader, event);
            for _ in 0..100 {
                if self.replies.contains_key(&id) {
                    break;
                }
                self.run(10);
            }
            match self.replies.remove(&id) {
                Some(Reply::Admin(AdminReply::Refused(r))) if r.is_retryable() => continue,
                Some(Reply::Admin(reply)) => return reply,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        panic!("{request:?} never answered");
    }

    fn put(&mut self, key: &str, value: &str) {
        self.seq += 1;
        let command = Command {
            client: 99,
            seq: self.seq,
            op: Op::Put {
                key: key.into(),
                value: value.into(),
            },
        };
        for _ in 0..50 {
            self.run(100);
            let Some(leader) = self.leader() else {
                continue;
            };
            self.next_id += 1;
            let id = self.next_id;
            let event = ServerEvent::RequestReceived {
                id,
                command: command.clone(),
            };
            self.step(leader, event);
            self.run(100);
            if let Some(Reply::Applied(Outcome::Done)) = self.replies.remove(&id) {
                return;
            }
        }
        panic!("put {key} never applied");
    }

    fn members(&mut self, at: NodeId) -> kv_core::MemberList {
        self.next_id += 1;
        let id = self.next_id;
        self.step(
            at,
            ServerEvent::AdminReceived {
                id,
                request: AdminRequest::Members,
            },
        );
        match self.replies.remove(&id) {
            Some(Reply::Admin(AdminReply::Members(list))) => list,
            other => panic!("no member list: {other:?}"),
        }
    }
}

#[test]
fn grow_replace_and_transfer_through_the_service() {
    let mut c = Cluster::new();
    c.run(2000);
    assert_eq!(c.leader(), Some(0));
    c.put("a", "1");
    // The leader recorded its own addresses.
    assert_eq!(c.servers[&0].member_addrs().get(&0), Some(&addrs(0)));

    // Node 1 joins knowing no configuration, and is added as a learner.
    c.start(1, vec![]);
    let add = AdminRequest::AddLearner {
        node: 1,
        addrs: addrs(1),
    };
    assert_eq!(c.admin(add.clone()), AdminReply::Done);
    // A retry of a change that holds is done at once.
    assert_eq!(c.admin(add), AdminReply::Done);
    c.run(500);
    let list = c.members(0);
    assert!(list.from_leader() && list.committed);
    let learner = list.member(1).expect("a member");
    assert_eq!(learner.role, MemberRole::Learner);
    assert_eq!(learner.addrs, Some(addrs(1)));
    assert_eq!(
        learner.match_index,
        Some(c.servers[&0].raft().log().last_index())
    );
    // The learner applied the records and the data.
    assert_eq!(c.servers[&1].member_addrs().get(&0), Some(&addrs(0)));
    assert_eq!(c.servers[&1].store().get("a"), Some("1"));
    assert_eq!(c.servers[&1].registration(), None, "its record is in");

    // Promote it, then remove the original server (the leader).
    assert_eq!(c.admin(AdminRequest::Promote { node: 1 }), AdminReply::Done);
    assert!(matches!(
        c.admin(AdminRequest::Promote { node: 7 }),
        AdminReply::Refused(Refusal::Invalid(_))
    ));
    c.start(2, vec![]);
    let add2 = AdminRequest::AddLearner {
        node: 2,
        addrs: addrs(2),
    };
    assert_eq!(c.admin(add2), AdminReply::Done);
    assert_eq!(c.admin(AdminRequest::Promote { node: 2 }), AdminReply::Done);
    assert_eq!(c.admin(AdminRequest::Remove { node: 0 }), AdminReply::Done);
    c.run(3000);
    let leader = c.leader().expect("a leader among 1 and 2");
    assert_ne!(leader, 0);
    let list = c.members(leader);
    let ids: Vec<NodeId> = list.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 2]);
    c.put("b", "2");
    c.run(500);
    assert_eq!(c.servers[&2].store().get("b"), Some("2"));

    // Hand leadership to the other voter.
    let other = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        c.admin(AdminRequest::TransferLeader { to: Some(other) }),
        AdminReply::Done
    );
    c.run(1000);
    assert_eq!(c.leader(), Some(other));
    assert!(matches!(
        c.admin(AdminRequest::TransferLeader { to: Some(0) }),
        AdminReply::Refused(Refusal::Invalid(_))
    ));
}
