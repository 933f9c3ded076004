//! Read scenarios on bare Raft nodes (issue 13), driven step by step with
//! exact timing, so that each rule of `raft_core`'s reads is tested where
//! its violation is certain rather than likely: a read before the new
//! leader's own-term commit, a delayed round reply meeting a reused read id,
//! a lease under clocks at the edge of the drift bound, a lease without
//! sticky votes.
//!
//! Every read is checked as it is answered: its read index must cover
//! every entry any node knew to be committed when the read was asked
//! (otherwise a write acknowledged before the read began could be missing
//! from it). The scenarios are deterministic; each is run by
//! `tests/reads.rs` and hunted with each planted bug by `tests/canaries.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use raft_core::{Action, Config, Event, Index, Instant, Message, NodeId, RaftNode, ReadMode};

/// A handful of Raft nodes on a lossless, instantly persisting network that
/// moves only when told; each node's clock runs at its own rate.
struct Cluster {
    nodes: BTreeMap<NodeId, RaftNode>,
    /// Each node's clock: (true time, local time) at its last rate change,
    /// and its rate in millionths of true time.
    clocks: BTreeMap<NodeId, (u64, u64, u64)>,
    /// True time since the start, in nanoseconds.
    real: u64,
    deadlines: BTreeMap<NodeId, Instant>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Pending reads: (node, read id) -> the highest commit index any node
    /// knew when the read was asked.
    reads: BTreeMap<(NodeId, u64), Index>,
    /// Reads answered, in order: (node, read id, read index).
    answered: Vec<(NodeId, u64, Index)>,
    next_read: u64,
}

impl Cluster {
    fn new(n: u64, tune: impl Fn(&mut Config)) -> Cluster {
        let members: Vec<NodeId> = (1..=n).collect();
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            clocks: BTreeMap::new(),
            real: 0,
            deadlines: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            reads: BTreeMap::new(),
            answered: Vec::new(),
            next_read: 0,
        };
        for &id in &members {
            let mut config = Config::new(id, members.clone());
            tune(&mut config);
            let node = RaftNode::new(config, id).expect("valid configuration");
            c.nodes.insert(id, node);
            c.clocks.insert(id, (0, 0, 1_000_000));
        }
        for &id in &members {
            c.step(id, Event::TimerFired);
        }
        c
    }

    fn local_nanos(&self, id: NodeId) -> u64 {
        let (base_real, base_local, rate) = self.clocks[&id];
        let elapsed = u128::from(self.real - base_real) * u128::from(rate) / 1_000_000;
        base_local + u64::try_from(elapsed).expect("fits")
    }

    fn local_now(&self, id: NodeId) -> Instant {
        Instant::from_nanos(self.local_nanos(id))
    }

    /// From now on `id`'s clock runs at `rate` millionths of true time.
    fn set_rate(&mut self, id: NodeId, rate: u64) {
        let local = self.local_nanos(id);
        self.clocks.insert(id, (self.real, local, rate));
    }

    /// Time moves until one of `among` leads.
    fn until_leader_among(&mut self, among: &[NodeId], limit_ms: u64) -> NodeId {
        for _ in 0..limit_ms {
            if let Some(&id) = among.iter().find(|&&i| self.nodes[&i].is_leader()) {
                return id;
            }
            self.advance(1);
        }
        panic!("none of {among:?} leads within {limit_ms} ms");
    }

    fn max_commit(&self) -> Index {
        self.nodes
            .values()
            .map(|n| n.commit_index())
            .max()
            .unwrap_or(0)
    }

    fn step(&mut self, id: NodeId, event: Event) {
        let now = self.local_now(id);
        let actions = self
            .nodes
            .get_mut(&id)
            .expect("a node")
            .step(now, event)
            .expect("a valid step");
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(id, to, message),
                Action::Persist(p) => {
                    // Durable at once.
                    for (to, message) in p.then_send {
                        self.send(id, to, message);
                    }
                    self.step(id, Event::Persisted { upto: p.id });
                }
                Action::SetTimer { deadline } => {
                    self.deadlines.insert(id, deadline);
                }
                Action::ReadReady { id: rid, index } => {
                    let needed = self.reads.remove(&(id, rid)).expect("a read we asked");
                    assert!(
                        index >= needed,
                        "stale read: node {id} answered read #{rid} at index {index}, but index {needed} had committed before it was asked"
                    );
                    self.answered.push((id, rid, index));
                }
                Action::RejectRead { id: rid, .. } => {
                    self.reads.remove(&(id, rid));
                }
                _ => {}
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        if !self.cut.contains(&(from, to)) {
            self.queue.push_back((from, to, message));
        }
    }

    /// Deliver queued messages (and what they cause) until none is left,
    /// except those `hold` keeps back, which are returned.
    fn deliver_except(
        &mut self,
        hold: impl Fn(NodeId, NodeId, &Message) -> bool,
    ) -> Vec<(NodeId, NodeId, Message)> {
        let mut held = Vec::new();
        while let Some((from, to, message)) = self.queue.pop_front() {
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if hold(from, to, &message) {
                held.push((from, to, message));
                continue;
            }
            self.step(to, Event::MessageReceived { from, message });
        }
        held
    }

    fn deliver(&mut self) {
        let held = self.deliver_except(|_, _, _| false);
        debug_assert!(held.is_empty());
    }

    /// True time moves `ms` ahead in 10 µs steps; due timers fire, and
    /// messages are delivered after each step.
    fn advance(&mut self, ms: u64) {
        for _ in 0..ms * 100 {
            self.real += 10_000;
            let due: Vec<NodeId> = self
                .deadlines
                .iter()
                .filter(|&(&id, &d)| self.local_now(id) >= d)
                .map(|(&id, _)| id)
                .collect();
            for id in due {
                self.deadlines.remove(&id);
                self.step(id, Event::TimerFired);
            }
            self.deliver();
        }
    }

    /// Time moves until `id` leads (its own timer, or another's).
    fn until_leader(&mut self, limit_ms: u64) -> NodeId {
        for _ in 0..limit_ms {
            if let Some((&id, _)) = self.nodes.iter().find(|(_, n)| n.is_leader()) {
                return id;
            }
            self.advance(1);
        }
        panic!("no leader within {limit_ms} ms");
    }

    fn propose(&mut self, id: NodeId, command: &str) {
        let next = self.next_read;
        self.next_read += 1;
        let event = Event::ProposalReceived {
            id: 1_000_000 + next,
            command: command.as_bytes().to_vec(),
        };
        self.step(id, event);
    }

    /// Ask `id` to read with `mode`, under the read id `rid` (fresh if
    /// `None`); returns the id.
    fn read(&mut self, id: NodeId, mode: ReadMode, rid: Option<u64>) -> u64 {
        let rid = rid.unwrap_or_else(|| {
            self.next_read += 1;
            self.next_read
        });
        self.reads.insert((id, rid), self.max_commit());
        self.step(id, Event::ReadRequested { id: rid, mode });
        rid
    }

    fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.cut.insert((id, o));
            self.cut.insert((o, id));
        }
    }

    /// For `ms` milliseconds, the old leader `old` (cut off) is asked for
    /// a lease read every millisecond while it believes it leads, and
    /// whichever of `others` leads proposes a write whenever it has none
    /// pending; returns how many lease reads `old` answered at once.
    fn race(&mut self, old: NodeId, others: &[NodeId], ms: u64) -> u32 {
        let mut served = 0;
        for _ in 0..ms {
            self.advance(1);
            if let Some(&new) = others.iter().find(|&&i| self.nodes[&i].is_leader()) {
                if self.nodes[&new].commit_index() == self.nodes[&new].log().last_index() {
                    self.propose(new, "w");
                }
            }
            if self.nodes[&old].is_leader() {
                let rid = self.read(old, ReadMode::Lease, None);
                if self.answered(old, rid) {
                    served += 1;
                }
            }
        }
        served
    }

    fn answered(&self, id: NodeId, rid: u64) -> bool {
        self.answered.iter().any(|&(n, r, _)| n == id && r == rid)
    }
}

fn lease(c: &mut Config) {
    c.lease_reads = true;
    c.sticky_votes = true;
}

/// A new leader does not know the whole commit index until an entry of its
/// own term commits: a read it answered before that could miss a write its
/// predecessor committed. Node 1 commits an entry that node 3 holds but
/// does not know committed; node 3 then wins the next election, and a read
/// there must wait.
pub async fn read_waits_for_the_new_leaders_own_term_commit() {
    read_waits_for_own_term_commit(ReadMode::ReadIndex).await;
}

/// The same with lease reads on: the new leader's heartbeats start rounds
/// to renew its lease before its term has committed; a read waiting then
/// must not join such a round with the stale commit index as its read
/// index (a bug the KV lab suite found under the lease policy).
pub async fn lease_read_waits_for_the_new_leaders_own_term_commit() {
    read_waits_for_own_term_commit(ReadMode::Lease).await;
}

async fn read_waits_for_own_term_commit(mode: ReadMode) {
    let mut c = Cluster::new(3, |cfg| {
        if mode == ReadMode::Lease {
            lease(cfg);
        }
    });
    let first = c.until_leader(2_000);
    c.propose(first, "a");
    c.deliver();
    c.advance(150); // every node knows "a" committed
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != first).collect();
    let (quiet, next) = (others[0], others[1]);
    // "b" reaches `next` but the commit does not: `quiet` is cut off, and
    // the leader is cut off once "b" has reached `next`.
    c.cut.insert((first, quiet));
    c.cut.insert((quiet, first));
    c.propose(first, "b");
    let held =
        c.deliver_except(|from, _, m| from == next && matches!(m, Message::AppendEntriesReply(_)));
    // The leader hears `next`'s acknowledgement and commits "b"; nobody
    // else learns it.
    c.isolate(first);
    for (from, to, message) in held {
        c.step(to, Event::MessageReceived { from, message });
    }
    c.queue.clear();
    c.cut.clear();
    c.isolate(first);
    // `next` has the longer log, so only it can win between the two.
    let leader = c.until_leader_among(&others, 5_000);
    assert_eq!(leader, next, "the node holding \"b\" wins");
    assert!(c.nodes[&next].commit_index() < c.max_commit());
    let rid = c.read(next, mode, None);
    c.advance(200);
    assert!(
        !c.answered(next, rid),
        "the read waits for an entry of the new term"
    );
    c.propose(next, "c");
    c.advance(200);
    assert!(
        c.answered(next, rid),
        "the read is answered once the new leader's term has committed"
    );
}

/// A round's reply that arrives late, or twice, never confirms a later
/// round: a read asked of a deposed leader (here reusing the id of an
/// answered read) must not be answered by a stale acknowledgement of an
/// earlier round (etcd#20418). Acknowledgements keyed by the read's id
/// would confirm it, serving a read that misses the new leader's write.
pub async fn delayed_round_replies_never_confirm_a_later_read() {
    let mut c = Cluster::new(3, |cfg| cfg.noop_on_election = true);
    let old = c.until_leader(2_000);
    c.advance(50);
    let rid = c.read(old, ReadMode::ReadIndex, None);
    // Keep copies of the round's replies (a duplicating network).
    let mut copies = Vec::new();
    let held = c.deliver_except(|_, _, m| matches!(m, Message::ReadRoundReply { .. }));
    for (from, to, message) in held {
        copies.push((from, to, message.clone()));
        c.step(to, Event::MessageReceived { from, message });
    }
    c.deliver();
    assert!(c.answered(old, rid), "the first read is answered");
    // The old leader is cut off, its clock slowed to a tenth (ReadIndex
    // rests on no clock) so that it goes on believing it leads; the others
    // elect a leader, which commits a write.
    c.set_rate(old, 100_000);
    c.isolate(old);
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != old).collect();
    let new = c.until_leader_among(&others, 5_000);
    c.propose(new, "w");
    c.advance(50);
    assert!(c.max_commit() > c.nodes[&old].commit_index());
    // The same read id again at the old leader, which still believes it
    // leads; then the copies of the old round's replies arrive.
    assert!(c.nodes[&old].is_leader());
    let again = c.read(old, ReadMode::ReadIndex, Some(rid));
    c.cut.clear();
    for (from, to, message) in copies {
        c.step(to, Event::MessageReceived { from, message });
    }
    assert_eq!(
        c.answered
            .iter()
            .filter(|&&(n, r, _)| n == old && r == again)
            .count(),
        1,
        "only the first read under that id was answered"
    );
}

/// Lease reads under clocks at the edge of the bound: the leader's clock
/// runs 5% slow and the followers' 5% fast (`max_clock_drift_ppm` is 5%).
/// The leader is cut off just after a round is confirmed; the others elect
/// a leader as soon as sticky votes let them and commit a write, while the
/// old leader answers lease reads every millisecond until its lease runs
/// out. None may miss the write; a lease of the whole minimum election
/// timeout would.
pub async fn lease_reads_stop_before_a_new_leader_can_be_elected() {
    let mut c = Cluster::new(3, |cfg| {
        lease(cfg);
        cfg.noop_on_election = true;
        // Every election timeout within 0.5 ms of its minimum: elections
        // come as early as sticky votes allow.
        cfg.election_timeout_max = cfg.election_timeout_min + Duration::from_micros(500);
    });
    let old = c.until_leader(2_000);
    for id in 1..=3 {
        c.set_rate(id, if id == old { 950_000 } else { 1_050_000 });
    }
    c.advance(150);
    let rid = c.read(old, ReadMode::Lease, None);
    c.deliver();
    assert!(
        c.answered(old, rid),
        "a lease read on a healthy cluster is answered"
    );
    // Cut off right after the heartbeat's round is confirmed.
    let next_heartbeat = c.deadlines[&old];
    while c.local_now(old) < next_heartbeat {
        c.advance(1);
    }
    c.isolate(old);
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != old).collect();
    let served = c.race(old, &others, 1_000);
    assert!(
        served > 0,
        "the old leader served lease reads after the cut"
    );
    assert!(
        others.iter().any(|&i| c.nodes[&i].is_leader()),
        "the others elected a leader"
    );
}

/// A lease needs sticky votes: a node whose election timer fired (it lost
/// touch with the leader) asks a voter that acknowledged the leader's round
/// a moment ago; with stickiness the vote request is ignored until the
/// lease must have run out, without it the voter grants, a new leader
/// commits a write, and the old leader's lease read misses it.
pub async fn lease_reads_need_sticky_votes() {
    let mut c = Cluster::new(3, |cfg| {
        lease(cfg);
        cfg.noop_on_election = true;
    });
    let old = c.until_leader(2_000);
    c.advance(150);
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != old).collect();
    let rebel = others[1];
    // The rebel loses touch with the leader (both ways) and waits out its
    // election timer; the other follower keeps acknowledging the leader's
    // rounds.
    c.cut.insert((old, rebel));
    c.cut.insert((rebel, old));
    let mut asked = false;
    for _ in 0..2_000 {
        c.advance(1);
        if c.nodes[&rebel].term() > c.nodes[&old].term() {
            asked = true;
            break;
        }
    }
    assert!(asked, "the rebel stood for election");
    // From now on the old leader is alone; it answers lease reads while
    // its lease holds.
    c.isolate(old);
    c.race(old, &others, 1_000);
    assert!(
        others.iter().any(|&i| c.nodes[&i].is_leader()),
        "the others elected a leader once the lease ran out"
    );
}

/// The registry of this suite's scenarios, by name.
pub fn tests() -> Vec<(&'static str, crate::Body)> {
    vec![
        ("read_waits_for_the_new_leaders_own_term_commit", || {
            Box::pin(read_waits_for_the_new_leaders_own_term_commit())
        }),
        (
            "lease_read_waits_for_the_new_leaders_own_term_commit",
            || Box::pin(lease_read_waits_for_the_new_leaders_own_term_commit()),
        ),
        ("delayed_round_replies_never_confirm_a_later_read", || {
            Box::pin(delayed_round_replies_never_confirm_a_later_read())
        }),
        (
            "lease_reads_stop_before_a_new_leader_can_be_elected",
            || Box::pin(lease_reads_stop_before_a_new_leader_can_be_elected()),
        ),
        ("lease_reads_need_sticky_votes", || {
            Box::pin(lease_reads_need_sticky_votes())
        }),
    ]
}
