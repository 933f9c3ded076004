//! Chaos simulation: each seed draws its own fault mix and runs KV clients
//! through a safety phase full of faults, then heals everything for a
//! liveness phase.
//!
//! Faults: request and reply loss (0–30%), duplication (0–20%), reordering
//! (random delays up to 1–60 ms), symmetric and asymmetric partitions, crashes
//! that lose every write not yet reported `Persisted` (the disk is
//! asynchronous here, with its own latency), and restarts.
//!
//! Checked after every step of every node: at most one leader per term,
//! log matching, leader completeness, state machine safety (the same entry at
//! every committed index on every node), persist-before-send against the
//! durable image, and the core's own invariants. After healing, within 20
//! election timeouts: every client operation completes, exactly one leader,
//! every node has applied the same state, every acknowledged append is
//! present exactly once and in order. Finally the whole history must be
//! linearizable.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use kv_core::{
    Clerk, Command, KvServer, Op, Outcome, Progress, Reply, ServerAction, ServerConfig, ServerEvent,
};
use raft_core::{Config, Index, Instant, Message, Persist};

use crate::executor::{
    ms, now, oneshot, schedule_after, schedule_at, sleep, spawn, timeout, with_rng, OneshotSender,
};
use lincheck::{check, KvInput, KvModel, KvOutput, Operation, Verdict};
use raft_testkit::{Persister, SafetyChecker};

/// The faults one seed runs with.
#[derive(Clone, Debug)]
pub struct FaultMix {
    /// Servers in the cluster (3 or 5).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Per-mille chance that a message is lost.
    pub loss: u64,
    /// Per-mille chance that a message is delivered twice.
    pub dup: u64,
    /// Messages take 1..=this many ms (reordering).
    pub max_delay_ms: u64,
    /// Per-mille chance that a message is held back 200–2000 ms instead
    /// (it may arrive terms later).
    pub long_delay: u64,
    /// A disk write takes 0..=this many ms.
    pub disk_ms: u64,
    /// One node whose disk is slow (50–300 ms a write), if any.
    pub slow_disk: Option<usize>,
    /// Whether partitions may be one-way.
    pub asymmetric: bool,
    /// Per-mille chance per fault tick of crashing a node.
    pub crash: u64,
    /// Per-mille chance that a crash hits the current leader.
    pub crash_leader: u64,
    /// Per-mille chance per fault tick of a new partition.
    pub partition: u64,
    /// Snapshot threshold in bytes (`None`: never).
    pub max_raft_state: Option<usize>,
}

impl FaultMix {
    /// Draws a mix from the simulation's generator.
    pub fn draw() -> FaultMix {
        let mut mix = with_rng(|r| FaultMix {
            nodes: if r.chance(1, 2) { 3 } else { 5 },
            clients: 1 + r.below(4) as usize,
            loss: r.below(301),
            dup: r.below(201),
            max_delay_ms: 1 + r.below(60),
            long_delay: if r.chance(1, 2) { r.below(100) } else { 0 },
            disk_ms: r.below(40),
            slow_disk: None,
            asymmetric: r.chance(1, 2),
            crash: r.below(300),
            crash_leader: r.below(1001),
            partition: r.below(500),
            max_raft_state: if r.chance(1, 2) {
                Some(500 + r.below(3000) as usize)
            } else {
                None
            },
        });
        if with_rng(|r| r.chance(1, 2)) {
            mix.slow_disk = Some(with_rng(|r| r.below(mix.nodes as u64)) as usize);
        }
        mix
    }
}

/// What one seed did.
#[derive(Clone, Debug)]
pub struct ChaosReport {
    /// The fault mix.
    pub mix: FaultMix,
    /// Scheduled events run (deliveries, timers, disk completions, wake-ups).
    pub events: u64,
    /// Client operations recorded.
    pub ops: usize,
    /// Appends acknowledged.
    pub acked: usize,
}

const SAFETY_PHASE: Duration = Duration::from_secs(6);
/// 20 election timeouts (the longest, 600 ms).
const LIVENESS_LIMIT: Duration = Duration::from_millis(20 * 600);
const CALL_TIMEOUT: Duration = Duration::from_millis(400);

struct Node {
    server: KvServer,
    gen: u64,
    timer: Option<Instant>,
    unsynced: VecDeque<Persist>,
    disk_busy: bool,
}

struct Call {
    reply: OneshotSender<Reply>,
}

struct World {
    mix: FaultMix,
    nodes: Vec<Option<Node>>,
    gens: Vec<u64>,
    disks: Vec<Persister>,
    blocked: Vec<Vec<bool>>,
    healed: bool,
    safety: SafetyChecker,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    history: Vec<(u64, u64, u64, KvInput, String)>,
    last_stamp: u64,
}

#[derive(Clone)]
struct Chaos {
    w: Rc<RefCell<World>>,
}

/// Runs one seed. Returns the report, or panics (with what broke) on any
/// violation; the caller catches it and prints the replay command.
pub fn run_seed(seed: u64) -> ChaosReport {
    crate::executor::run(seed, async move {
        let mix = FaultMix::draw();
        let n = mix.nodes;
        let chaos = Chaos {
            w: Rc::new(RefCell::new(World {
                nodes: (0..n).map(|_| None).collect(),
                gens: vec![0; n],
                disks: vec![Persister::new(); n],
                blocked: vec![vec![false; n]; n],
                healed: false,
                safety: SafetyChecker::default(),
                calls: BTreeMap::new(),
                next_call: 0,
                history: Vec::new(),
                last_stamp: 0,
                mix: mix.clone(),
            })),
        };
        for i in 0..n {
            chaos.start(i);
        }
        let done = Rc::new(std::cell::Cell::new(false));
        let clients: Vec<_> = (0..mix.clients)
            .map(|c| spawn(chaos.clone().client(c as u64, done.clone())))
            .collect();
        let faults = spawn(chaos.clone().faults(done.clone()));
        sleep(SAFETY_PHASE).await;
        done.set(true);
        faults.await;
        chaos.heal();
        let healed_at = now();
        let mut acked = Vec::new();
        for c in clients {
            match timeout(LIVENESS_LIMIT, c).await {
                Some(a) => acked.push(a),
                None => panic!("liveness: a client operation did not complete within 20 election timeouts of healing\n{}", chaos.status()),
            }
        }
        chaos.check_converged(healed_at).await;
        chaos.check_acknowledged(&acked).await;
        chaos.check_linearizable();
        let ops = chaos.w.borrow().history.len();
        ChaosReport {
            mix,
            events: crate::executor::events_run(),
            ops,
            acked: acked.iter().map(Vec::len).sum(),
        }
    })
}

impl Chaos {
    fn start(&self, i: usize) {
        {
            let mut w = self.w.borrow_mut();
            w.gens[i] += 1;
            let (state, snapshot) = w.disks[i].load();
            let members = (0..w.mix.nodes as u64).collect();
            let config = ServerConfig::new(Config::new(i as u64, members), w.mix.max_raft_state);
            let seed = with_rng(|r| r.next_u64());
            let server =
                KvServer::recover(config, seed, state, snapshot).expect("recovers from its disk");
            let gen = w.gens[i];
            w.nodes[i] = Some(Node {
                server,
                gen,
                timer: None,
                unsynced: VecDeque::new(),
                disk_busy: false,
            });
        }
        self.step(i, ServerEvent::TimerFired);
    }

    /// A crash: the process and every write not yet durable are gone.
    fn crash(&self, i: usize) {
        self.w.borrow_mut().nodes[i] = None;
    }

    fn heal(&self) {
        let n = {
            let mut w = self.w.borrow_mut();
            w.healed = true;
            w.mix.loss = 0;
            w.mix.dup = 0;
            w.mix.max_delay_ms = 1;
            w.mix.long_delay = 0;
            for row in w.blocked.iter_mut() {
                row.iter_mut().for_each(|b| *b = false);
            }
            w.nodes.len()
        };
        for i in 0..n {
            if self.w.borrow().nodes[i].is_none() {
                self.start(i);
            }
        }
    }

    async fn faults(self, done: Rc<std::cell::Cell<bool>>) {
        while !done.get() {
            sleep(ms(200 + with_rng(|r| r.below(600)))).await;
            if done.get() {
                break;
            }
            let (n, mix) = {
                let w = self.w.borrow();
                (w.nodes.len(), w.mix.clone())
            };
            if with_rng(|r| r.chance(mix.partition, 1000)) {
                let mut w = self.w.borrow_mut();
                let side: Vec<bool> = (0..n).map(|_| with_rng(|r| r.chance(1, 2))).collect();
                for a in 0..n {
                    for b in 0..n {
                        let cut = side[a] != side[b];
                        w.blocked[a][b] = cut && (!mix.asymmetric || with_rng(|r| r.chance(1, 2)));
                    }
                }
            } else if with_rng(|r| r.chance(300, 1000)) {
                let mut w = self.w.borrow_mut();
                w.blocked
                    .iter_mut()
                    .for_each(|row| row.iter_mut().for_each(|b| *b = false));
            }
            if with_rng(|r| r.chance(mix.crash, 1000)) {
                let leader = {
                    let w = self.w.borrow();
                    (0..n).find(|&i| {
                        w.nodes[i]
                            .as_ref()
                            .is_some_and(|nd| nd.server.raft().is_leader())
                    })
                };
                let i = match leader {
                    Some(l) if with_rng(|r| r.chance(mix.crash_leader, 1000)) => l,
                    _ => with_rng(|r| r.below(n as u64)) as usize,
                };
                self.crash(i);
                let me = self.clone();
                let down = ms(with_rng(|r| r.range(50, 1500)));
                schedule_after(down, move || {
                    if me.w.borrow().nodes[i].is_none() && !me.w.borrow().healed {
                        me.start(i);
                    }
                });
            }
        }
    }

    fn status(&self) -> String {
        let w = self.w.borrow();
        let mut s = format!("mix {:?}\n", w.mix);
        for (i, node) in w.nodes.iter().enumerate() {
            match node {
                None => s += &format!("  node {i}: down\n"),
                Some(nd) => {
                    let r = nd.server.raft();
                    s += &format!(
                        "  node {i}: term {} {:?} commit {} applied {} last {} waiting {}\n",
                        r.term(),
                        r.role(),
                        r.commit_index(),
                        r.last_applied(),
                        r.log().last_index(),
                        nd.server.waiting()
                    );
                }
            }
        }
        s
    }

    // ----- nodes ------------------------------------------------------------

    fn step(&self, i: usize, event: ServerEvent) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = {
                let mut w = self.w.borrow_mut();
                let w = &mut *w;
                let Some(node) = w.nodes[i].as_mut() else {
                    return;
                };
                let actions = node
                    .server
                    .step(now(), event)
                    .expect("the harness uses the server correctly");
                let raft = node.server.raft();
                w.safety.after_step(raft);
                // State machine safety: the committed prefix is the same everywhere.
                w.safety.check_committed_log(raft);
                actions
            };
            for action in actions {
                match action {
                    ServerAction::Send { to, message } => self.send_peer(i, to as usize, message),
                    ServerAction::Persist(p) => {
                        {
                            let mut w = self.w.borrow_mut();
                            let w = &mut *w;
                            if let Some(node) = w.nodes[i].as_ref() {
                                w.safety.persist_issued(i as u64, node.server.raft(), &p);
                            }
                            w.nodes[i].as_mut().expect("running").unsynced.push_back(p);
                        }
                        self.kick_disk(i);
                    }
                    ServerAction::SetTimer { deadline } => self.set_timer(i, deadline),
                    ServerAction::Reply { id, reply } => self.send_reply(id, reply),
                }
            }
        }
    }

    /// The disk writes everything queued after a delay (group commit); a
    /// crash before then loses it all.
    fn kick_disk(&self, i: usize) {
        let (gen, delay) = {
            let mut w = self.w.borrow_mut();
            let (disk_ms, slow) = (w.mix.disk_ms, w.mix.slow_disk == Some(i));
            let Some(node) = w.nodes[i].as_mut() else {
                return;
            };
            if node.disk_busy || node.unsynced.is_empty() {
                return;
            }
            node.disk_busy = true;
            let delay = if slow {
                with_rng(|r| r.range(50, 301))
            } else {
                with_rng(|r| r.below(disk_ms + 1))
            };
            (node.gen, ms(delay))
        };
        let me = self.clone();
        schedule_after(delay, move || {
            let batch: Vec<Persist> = {
                let mut w = me.w.borrow_mut();
                let w = &mut *w;
                let Some(node) = w.nodes[i].as_mut().filter(|n| n.gen == gen) else {
                    return;
                };
                node.disk_busy = false;
                let batch: Vec<Persist> = node.unsynced.drain(..).collect();
                for p in &batch {
                    w.disks[i].save(p);
                }
                batch
            };
            let size = me.w.borrow().disks[i].raft_state_size();
            let upto = batch.last().expect("non-empty").id;
            for p in batch {
                for (to, message) in p.then_send {
                    me.send_peer(i, to as usize, message);
                }
            }
            me.step(
                i,
                ServerEvent::Persisted {
                    upto,
                    raft_state_bytes: size,
                },
            );
            me.kick_disk(i);
        });
    }

    fn set_timer(&self, i: usize, deadline: Instant) {
        let gen = {
            let mut w = self.w.borrow_mut();
            let Some(node) = w.nodes[i].as_mut() else {
                return;
            };
            node.timer = Some(deadline);
            node.gen
        };
        let me = self.clone();
        schedule_at(deadline, move || {
            let current = me.w.borrow().nodes[i]
                .as_ref()
                .is_some_and(|n| n.gen == gen && n.timer == Some(deadline));
            if current {
                me.step(i, ServerEvent::TimerFired);
            }
        });
    }

    /// Copies of a message that survive loss and duplication, each with its
    /// own delay.
    fn fates(&self) -> Vec<Duration> {
        let w = self.w.borrow();
        let mix = &w.mix;
        if with_rng(|r| r.chance(mix.loss, 1000)) {
            return Vec::new();
        }
        let copies = if with_rng(|r| r.chance(mix.dup, 1000)) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                if with_rng(|r| r.chance(mix.long_delay, 1000)) {
                    ms(with_rng(|r| r.range(200, 2001)))
                } else {
                    ms(with_rng(|r| r.range(1, mix.max_delay_ms + 1)))
                }
            })
            .collect()
    }

    fn send_peer(&self, from: usize, to: usize, message: Message) {
        {
            let mut w = self.w.borrow_mut();
            let w = &mut *w;
            w.safety
                .check_send(from as u64, to as u64, &message, w.disks[from].state());
            if w.blocked[from][to] {
                return;
            }
        }
        let bytes = postcard::to_allocvec(&message).expect("messages encode");
        for delay in self.fates() {
            let (me, bytes) = (self.clone(), bytes.clone());
            schedule_after(delay, move || {
                let message: Message = postcard::from_bytes(&bytes).expect("messages decode");
                if !me.w.borrow().blocked[from][to] {
                    me.step(
                        to,
                        ServerEvent::MessageReceived {
                            from: from as u64,
                            message,
                        },
                    );
                }
            });
        }
    }

    fn send_reply(&self, id: u64, reply: Reply) {
        for delay in self.fates() {
            let (me, reply) = (self.clone(), reply.clone());
            schedule_after(delay, move || {
                let call = me.w.borrow_mut().calls.remove(&id);
                if let Some(call) = call {
                    call.reply.send(reply);
                }
            });
        }
    }

    // ----- clients ------------------------------------------------------------

    fn call(&self, server: usize, command: Command) -> crate::executor::OneshotReceiver<Reply> {
        let (tx, rx) = oneshot();
        let id = {
            let mut w = self.w.borrow_mut();
            w.next_call += 1;
            let id = w.next_call;
            w.calls.insert(id, Call { reply: tx });
            id
        };
        for delay in self.fates() {
            let (me, command) = (self.clone(), command.clone());
            schedule_after(delay, move || {
                me.step(server, ServerEvent::RequestReceived { id, command })
            });
        }
        rx
    }

    async fn execute(&self, clerk: &mut Clerk, op: Op) -> Outcome {
        let mut attempt = clerk.begin(op);
        loop {
            if let Some(d) = attempt.delay {
                sleep(d).await;
            }
            // Server i is Raft node i.
            let rx = self.call(attempt.server as usize, attempt.command.clone());
            attempt = match timeout(CALL_TIMEOUT, rx).await.flatten() {
                Some(reply) => match clerk.on_reply(attempt.server, reply) {
                    Progress::Done(outcome) => return outcome,
                    Progress::Retry(a) => a,
                },
                None => clerk.on_failure(attempt.server),
            };
        }
    }

    fn stamp(&self) -> u64 {
        let mut w = self.w.borrow_mut();
        let t = now().as_nanos().max(w.last_stamp + 1);
        w.last_stamp = t;
        t
    }

    async fn record(&self, clerk: &mut Clerk, client: u64, op: Op) -> String {
        let input = match &op {
            Op::Get { key } => KvInput::get(key.clone()),
            Op::Put { key, value } => KvInput::put(key.clone(), value.clone()),
            Op::Append { key, value } => KvInput::append(key.clone(), value.clone()),
        };
        let call = self.stamp();
        let out = match self.execute(clerk, op).await {
            Outcome::Value(v) => v,
            Outcome::Done => String::new(),
            Outcome::SessionExpired => panic!("session expired"),
        };
        let ret = self.stamp();
        self.w
            .borrow_mut()
            .history
            .push((client, call, ret, input, out.clone()));
        out
    }

    /// Appends to its own key and reads keys at random until told to stop;
    /// returns the appends acknowledged, in order.
    async fn client(self, c: u64, done: Rc<std::cell::Cell<bool>>) -> Vec<String> {
        let n = self.w.borrow().nodes.len();
        let mut clerk = Clerk::new(
            with_rng(|r| r.next_u64()),
            (0..n as u64).collect(),
            c as usize,
        );
        let mut acked = Vec::new();
        let mut j = 0;
        while !done.get() {
            if with_rng(|r| r.chance(1, 2)) {
                let v = format!("{c}.{j};");
                self.record(
                    &mut clerk,
                    c,
                    Op::Append {
                        key: format!("k{c}"),
                        value: v.clone(),
                    },
                )
                .await;
                acked.push(v);
                j += 1;
            } else {
                let k = with_rng(|r| r.below(4));
                self.record(
                    &mut clerk,
                    c,
                    Op::Get {
                        key: format!("k{k}"),
                    },
                )
                .await;
            }
        }
        acked
    }

    // ----- end checks -----------------------------------------------------------

    async fn check_converged(&self, healed_at: Instant) {
        loop {
            let (ok, detail) = {
                let w = self.w.borrow();
                let nodes: Vec<&Node> = w.nodes.iter().flatten().collect();
                let max_term = nodes
                    .iter()
                    .map(|n| n.server.raft().term())
                    .max()
                    .unwrap_or(0);
                let leaders = nodes
                    .iter()
                    .filter(|n| n.server.raft().is_leader() && n.server.raft().term() == max_term)
                    .count();
                let applied: Vec<Index> = nodes
                    .iter()
                    .map(|n| n.server.raft().last_applied())
                    .collect();
                let stores: Vec<Vec<u8>> =
                    nodes.iter().map(|n| n.server.store().snapshot()).collect();
                let same = applied.windows(2).all(|p| p[0] == p[1])
                    && stores.windows(2).all(|p| p[0] == p[1]);
                (
                    leaders == 1 && same && nodes.len() == w.nodes.len(),
                    format!("leaders {leaders}, applied {applied:?}"),
                )
            };
            if ok {
                return;
            }
            assert!(
                now() - healed_at <= LIVENESS_LIMIT,
                "liveness: no single leader with identical applied state within 20 election timeouts ({detail})\n{}",
                self.status()
            );
            sleep(ms(50)).await;
        }
    }

    async fn check_acknowledged(&self, acked: &[Vec<String>]) {
        let n = self.w.borrow().nodes.len();
        let mut clerk = Clerk::new(with_rng(|r| r.next_u64()), (0..n as u64).collect(), 0);
        for (c, values) in acked.iter().enumerate() {
            let v = self
                .record(
                    &mut clerk,
                    99,
                    Op::Get {
                        key: format!("k{c}"),
                    },
                )
                .await;
            let mut last = 0;
            for value in values {
                let off = v
                    .find(value.as_str())
                    .unwrap_or_else(|| panic!("acknowledged append {value:?} lost"));
                assert_eq!(
                    v.rfind(value.as_str()),
                    Some(off),
                    "append {value:?} applied twice"
                );
                assert!(off >= last, "append {value:?} out of order");
                last = off;
            }
        }
    }

    fn check_linearizable(&self) {
        let ops: Vec<Operation<KvInput, KvOutput>> = self
            .w
            .borrow()
            .history
            .iter()
            .map(|(client, call, ret, input, out)| Operation {
                client: *client,
                call: *call,
                ret: *ret,
                input: input.clone(),
                output: KvOutput::Value(out.clone()),
            })
            .collect();
        match check(&KvModel, &ops, Duration::from_secs(10)) {
            Verdict::Linearizable => {}
            other => panic!(
                "linearizability: the history of {} operations is {}",
                ops.len(),
                other.name()
            ),
        }
    }
}
