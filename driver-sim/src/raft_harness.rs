//! The Raft lab harness: a port of the 6.5840 (2023) `raft/config.go`
//! (lab-tests.md §2) onto the simulator. Servers are `RaftNode`s hosted in
//! slots; the network follows labrpc; persisters hold encoded state; appliers
//! check what the nodes apply; the safety checker runs after every step.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use raft_core::{Action, Config, Entry, Event, Index, Instant, Message, RaftNode, Term};
use serde::{Deserialize, Serialize};

use crate::executor::{ms, now, schedule_after, schedule_at, sleep, with_rng};
use crate::network::{Network, ReplyFate, RequestFate};
use crate::persister::Persister;
use crate::safety::{fnv1a, SafetyChecker};

/// The lab's `RaftElectionTimeout`.
pub const RAFT_ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
/// The tester snapshots when `(index + 1) % SNAPSHOT_INTERVAL == 0`.
pub const SNAPSHOT_INTERVAL: u64 = 10;
/// The lab's per-test limit, checked at `end`.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(120);

/// A lab command: the Go tests use ints, and strings in the byte test.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cmd {
    /// An integer command.
    Int(i64),
    /// A string command.
    Str(String),
}

impl From<i64> for Cmd {
    fn from(v: i64) -> Self {
        Cmd::Int(v)
    }
}
impl From<String> for Cmd {
    fn from(v: String) -> Self {
        Cmd::Str(v)
    }
}
impl From<&str> for Cmd {
    fn from(v: &str) -> Self {
        Cmd::Str(v.to_string())
    }
}
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmd::Int(v) => write!(f, "{v}"),
            Cmd::Str(s) if s.len() > 20 => write!(f, "{}…", &s[..20]),
            Cmd::Str(s) => write!(f, "{s}"),
        }
    }
}

fn encode_cmd(cmd: &Cmd) -> Vec<u8> {
    postcard::to_allocvec(cmd).expect("commands encode")
}

fn decode_cmd(bytes: &[u8]) -> Cmd {
    postcard::from_bytes(bytes).expect("commands decode")
}

/// A running server: one incarnation of a node.
struct Slot {
    node: RaftNode,
    /// Incarnation number; a restart makes a new one, and messages or timers
    /// for an older one are discarded.
    gen: u64,
    timer: Option<Instant>,
}

/// The mutable state of a cluster (the Go `config` struct).
struct World {
    n: usize,
    slots: Vec<Option<Slot>>,
    gens: Vec<u64>,
    persisters: Vec<Persister>,
    connected: Vec<bool>,
    net: Network,
    rpc_count: Vec<u64>,
    snapshot_applier: bool,
    logs: Vec<BTreeMap<Index, Cmd>>,
    last_applied: Vec<Index>,
    max_index: Index,
    safety: SafetyChecker,
    next_proposal: u64,
    trace: u64,
    start: Instant,
    begin: Option<Begin>,
}

struct Begin {
    name: String,
    t0: Instant,
    rpcs0: u64,
    bytes0: u64,
    max_index0: Index,
}

/// A handle on a simulated Raft cluster, the Rust twin of the Go tests'
/// `cfg`. Cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Cfg {
    world: Rc<RefCell<World>>,
}

/// A follow-up input for a node, produced while executing its actions.
enum FollowUp {
    Persisted(u64),
    Snapshot(Index, Vec<u8>),
}

impl Cfg {
    /// `make_config(n, unreliable, snapshot)`: starts `n` servers (with the
    /// snapshotting applier if `snapshot`), connects them all.
    pub fn new(n: usize, unreliable: bool, snapshot: bool) -> Cfg {
        let world = World {
            n,
            slots: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            persisters: vec![Persister::new(); n],
            connected: vec![false; n],
            net: Network {
                reliable: !unreliable,
                ..Network::default()
            },
            rpc_count: vec![0; n],
            snapshot_applier: snapshot,
            logs: vec![BTreeMap::new(); n],
            last_applied: vec![0; n],
            max_index: 0,
            safety: SafetyChecker::default(),
            next_proposal: 0,
            trace: 0,
            start: now(),
            begin: None,
        };
        let cfg = Cfg {
            world: Rc::new(RefCell::new(world)),
        };
        for i in 0..n {
            cfg.start1(i);
        }
        for i in 0..n {
            cfg.connect(i);
        }
        cfg
    }

    /// Number of servers.
    pub fn n(&self) -> usize {
        self.world.borrow().n
    }

    // ----- lifecycle -----------------------------------------------------

    /// Crash server `i`: disconnect it, delete it from the network, detach its
    /// persister. Its in-flight replies are discarded.
    pub fn crash1(&self, i: usize) {
        self.disconnect(i);
        self.world.borrow_mut().slots[i] = None;
    }

    /// (Re)start server `i` from its persisted state, not connected.
    pub fn start1(&self, i: usize) {
        self.crash1(i);
        let (node, gen) = {
            let mut w = self.world.borrow_mut();
            w.gens[i] += 1;
            w.last_applied[i] = 0;
            w.rpc_count[i] = 0;
            let (state, snapshot) = w.persisters[i].load();
            if let Some(data) = &snapshot {
                if !data.is_empty() {
                    if let Err(e) = w.ingest_snapshot(i, data, None) {
                        panic!("{e}");
                    }
                }
            }
            let members: Vec<u64> = (0..w.n as u64).collect();
            let config = Config::new(i as u64, members);
            let seed = with_rng(|r| r.next_u64());
            let node = RaftNode::recover(config, seed, state, snapshot)
                .expect("a node recovers from what it persisted");
            (node, w.gens[i])
        };
        self.world.borrow_mut().slots[i] = Some(Slot {
            node,
            gen,
            timer: None,
        });
        self.step(i, Event::TimerFired, None);
    }

    /// Is server `i` running (not crashed)?
    pub fn is_alive(&self, i: usize) -> bool {
        self.world.borrow().slots[i].is_some()
    }

    /// Connect server `i` to every other connected server.
    pub fn connect(&self, i: usize) {
        self.world.borrow_mut().connected[i] = true;
    }

    /// Cut server `i` off from every other server.
    pub fn disconnect(&self, i: usize) {
        self.world.borrow_mut().connected[i] = false;
    }

    /// Is server `i` connected?
    pub fn is_connected(&self, i: usize) -> bool {
        self.world.borrow().connected[i]
    }

    /// Turn request/reply loss and short delays on (`false`) or off.
    pub fn set_unreliable(&self, unreliable: bool) {
        self.world.borrow_mut().net.reliable = !unreliable;
    }

    /// Turn long reordering of replies on or off.
    pub fn set_long_reordering(&self, on: bool) {
        self.world.borrow_mut().net.long_reordering = on;
    }

    // ----- the Raft API as the tester sees it -----------------------------

    /// `rf.Start(cmd)` on server `i`: `Some((index, term))` if it is the
    /// leader and accepted the command, `None` otherwise (or if crashed).
    pub fn start(&self, i: usize, cmd: impl Into<Cmd>) -> Option<(Index, Term)> {
        let id = {
            let mut w = self.world.borrow_mut();
            w.slots[i].as_ref()?;
            w.next_proposal += 1;
            w.next_proposal
        };
        let command = encode_cmd(&cmd.into());
        let actions = self.step(i, Event::ProposalReceived { id, command }, None);
        actions.iter().find_map(|a| match *a {
            Action::AcceptProposal {
                id: aid,
                index,
                term,
            } if aid == id => Some((index, term)),
            _ => None,
        })
    }

    /// `rf.GetState()` on server `i`: (term, is leader). A crashed server
    /// answers `(0, false)`.
    pub fn get_state(&self, i: usize) -> (Term, bool) {
        let w = self.world.borrow();
        w.slots[i]
            .as_ref()
            .map_or((0, false), |s| (s.node.term(), s.node.is_leader()))
    }

    // ----- tester helpers (config.go) ------------------------------------

    /// Prints nothing yet; records baselines for `end`'s result line.
    pub fn begin(&self, name: &str) {
        let mut w = self.world.borrow_mut();
        w.begin = Some(Begin {
            name: name.to_string(),
            t0: now(),
            rpcs0: w.net.rpc_total,
            bytes0: w.net.bytes_total,
            max_index0: w.max_index,
        });
    }

    /// Checks the time limit and prints the lab's result line: virtual
    /// seconds, peers, RPCs, bytes, commands committed.
    pub fn end(&self) {
        let w = self.world.borrow();
        let elapsed = now() - w.start;
        assert!(
            elapsed <= TEST_TIME_LIMIT,
            "test took longer than 120 seconds"
        );
        let b = w.begin.as_ref().expect("begin() before end()");
        println!(
            "{} ... Passed -- {:4.1} {} {:4} {:7} {:4}",
            b.name,
            (now() - b.t0).as_secs_f64(),
            w.n,
            w.net.rpc_total - b.rpcs0,
            w.net.bytes_total - b.bytes0,
            w.max_index - b.max_index0
        );
    }

    /// Waits for a leader and returns it; fails if a term has two leaders or
    /// none appears within 10 rounds of 450–549 ms.
    pub async fn check_one_leader(&self) -> usize {
        for _ in 0..10 {
            let wait = 450 + with_rng(|r| r.below(100));
            sleep(ms(wait)).await;
            let mut leaders: BTreeMap<Term, Vec<usize>> = BTreeMap::new();
            for i in 0..self.n() {
                if self.is_connected(i) {
                    let (term, leader) = self.get_state(i);
                    if leader {
                        leaders.entry(term).or_default().push(i);
                    }
                }
            }
            for (term, ls) in &leaders {
                assert!(ls.len() <= 1, "term {term} has {} (>1) leaders", ls.len());
            }
            if let Some((_, ls)) = leaders.last_key_value() {
                return ls[0];
            }
        }
        panic!("expected one leader, got none");
    }

    /// All connected servers agree on the term; returns it.
    pub fn check_terms(&self) -> Term {
        let mut term = None;
        for i in 0..self.n() {
            if self.is_connected(i) {
                let (t, _) = self.get_state(i);
                match term {
                    None => term = Some(t),
                    Some(t0) => assert_eq!(t0, t, "servers disagree on term"),
                }
            }
        }
        term.unwrap_or(0)
    }

    /// No connected server claims to lead.
    pub fn check_no_leader(&self) {
        for i in 0..self.n() {
            if self.is_connected(i) {
                let (_, leader) = self.get_state(i);
                assert!(
                    !leader,
                    "expected no leader among connected servers, but {i} claims to be leader"
                );
            }
        }
    }

    /// How many servers have applied `index`, and the command there.
    pub fn n_committed(&self, index: Index) -> (usize, Option<Cmd>) {
        let w = self.world.borrow();
        let mut count = 0;
        let mut cmd: Option<&Cmd> = None;
        for log in &w.logs {
            if let Some(c) = log.get(&index) {
                if let Some(prev) = cmd {
                    assert_eq!(prev, c, "committed values do not match: index {index}");
                }
                count += 1;
                cmd = Some(c);
            }
        }
        (count, cmd.cloned())
    }

    /// Waits (30 polls, back-off from 10 ms to about 1 s) until `n` servers
    /// applied `index`. Returns `None` if some server's term moved past
    /// `start_term` (when given): the caller should retry.
    pub async fn wait(&self, index: Index, n: usize, start_term: Option<Term>) -> Option<Cmd> {
        let mut to = ms(10);
        for _ in 0..30 {
            let (nd, _) = self.n_committed(index);
            if nd >= n {
                break;
            }
            sleep(to).await;
            if to < Duration::from_secs(1) {
                to *= 2;
            }
            if let Some(start_term) = start_term {
                for i in 0..self.n() {
                    if self.is_alive(i) && self.get_state(i).0 > start_term {
                        return None;
                    }
                }
            }
        }
        let (nd, cmd) = self.n_committed(index);
        assert!(nd >= n, "only {nd} decided for index {index}; wanted {n}");
        cmd
    }

    /// The lab's `one()`: submit `cmd` to whoever leads, wait up to 2 s for
    /// `expected` servers to apply it (resubmitting if `retry`), within 10 s
    /// in all. Returns the index.
    pub async fn one(&self, cmd: impl Into<Cmd>, expected: usize, retry: bool) -> Index {
        let cmd = cmd.into();
        let t0 = now();
        let mut starts = 0;
        while now() - t0 < Duration::from_secs(10) {
            let mut index = None;
            for _ in 0..self.n() {
                starts = (starts + 1) % self.n();
                if self.is_connected(starts) {
                    if let Some((i, _)) = self.start(starts, cmd.clone()) {
                        index = Some(i);
                        break;
                    }
                }
            }
            if let Some(index) = index {
                let t1 = now();
                while now() - t1 < Duration::from_secs(2) {
                    let (nd, c) = self.n_committed(index);
                    if nd > 0 && nd >= expected && c.as_ref() == Some(&cmd) {
                        return index;
                    }
                    sleep(ms(20)).await;
                }
                assert!(retry, "one({cmd}) failed to reach agreement");
            } else {
                sleep(ms(50)).await;
            }
        }
        panic!("one({cmd}) failed to reach agreement");
    }

    /// Handler invocations on server `i` since it (re)started.
    pub fn rpc_count(&self, i: usize) -> u64 {
        self.world.borrow().rpc_count[i]
    }

    /// Requests sent so far.
    pub fn rpc_total(&self) -> u64 {
        self.world.borrow().net.rpc_total
    }

    /// Request bytes plus delivered reply bytes so far.
    pub fn bytes_total(&self) -> u64 {
        self.world.borrow().net.bytes_total
    }

    /// The largest encoded Raft state over all servers.
    pub fn log_size(&self) -> usize {
        let w = self.world.borrow();
        w.persisters
            .iter()
            .map(Persister::raft_state_size)
            .max()
            .unwrap_or(0)
    }

    /// The largest snapshot over all servers.
    pub fn snapshot_size(&self) -> usize {
        let w = self.world.borrow();
        w.persisters
            .iter()
            .map(Persister::snapshot_size)
            .max()
            .unwrap_or(0)
    }

    /// A fingerprint of every message delivered so far and when: equal for
    /// two runs of a scenario with the same seed.
    pub fn trace_hash(&self) -> u64 {
        self.world.borrow().trace
    }

    /// A random non-negative integer from the simulation's generator (Go's
    /// `rand.Int()`).
    pub fn rand_int(&self) -> i64 {
        with_rng(|r| (r.next_u64() >> 1) as i64)
    }

    /// A uniform integer in `0..bound` from the simulation's generator.
    pub fn rand_below(&self, bound: u64) -> u64 {
        with_rng(|r| r.below(bound))
    }

    // ----- driving nodes --------------------------------------------------

    /// Steps server `i` (if running) and executes its actions, including any
    /// follow-up inputs they cause. Returns the actions of the first step.
    /// `caller` is the (server, incarnation) whose request is being handled.
    fn step(&self, i: usize, event: Event, caller: Option<(usize, u64)>) -> Vec<Action> {
        let mut first = None;
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = {
                let mut w = self.world.borrow_mut();
                let w = &mut *w;
                let Some(slot) = w.slots[i].as_mut() else {
                    break;
                };
                let actions = slot
                    .node
                    .step(now(), event)
                    .expect("the harness uses the node correctly");
                w.safety.after_step(&slot.node);
                actions
            };
            for follow in self.execute(i, &actions, caller) {
                queue.push_back(match follow {
                    FollowUp::Persisted(upto) => Event::Persisted { upto },
                    FollowUp::Snapshot(index, data) => Event::SnapshotTaken { index, data },
                });
            }
            first.get_or_insert(actions);
        }
        first.unwrap_or_default()
    }

    fn execute(&self, i: usize, actions: &[Action], caller: Option<(usize, u64)>) -> Vec<FollowUp> {
        let mut follow = Vec::new();
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(i, *to as usize, message, caller),
                Action::Persist(p) => {
                    {
                        let mut w = self.world.borrow_mut();
                        let w = &mut *w;
                        w.persisters[i].save(p);
                        if let (Some(from), Some(slot)) = (p.truncate_from, w.slots[i].as_ref()) {
                            w.safety.log_truncated(i as u64, slot.node.term(), from);
                        }
                        if let (Some(first), Some(slot)) = (p.entries.first(), w.slots[i].as_ref())
                        {
                            let prev = slot.node.log().term_at(first.index - 1);
                            w.safety.entries_written(i as u64, &p.entries, prev);
                        }
                    }
                    for (to, message) in &p.then_send {
                        self.send(i, *to as usize, message, caller);
                    }
                    follow.push(FollowUp::Persisted(p.id));
                }
                Action::Apply { entries } => {
                    let mut w = self.world.borrow_mut();
                    w.safety.entries_applied(i as u64, entries);
                    if let Some(snap) = w.apply_entries(i, entries) {
                        follow.push(snap);
                    }
                }
                Action::ApplySnapshot { snapshot } => {
                    let mut w = self.world.borrow_mut();
                    if w.snapshot_applier {
                        if let Err(e) =
                            w.ingest_snapshot(i, &snapshot.data, Some(snapshot.meta.index))
                        {
                            panic!("{e}");
                        }
                    }
                }
                Action::SetTimer { deadline } => self.set_timer(i, *deadline),
                Action::AcceptProposal { .. } | Action::RejectProposal { .. } => {}
            }
        }
        follow
    }

    fn set_timer(&self, i: usize, deadline: Instant) {
        let gen = {
            let mut w = self.world.borrow_mut();
            let Some(slot) = w.slots[i].as_mut() else {
                return;
            };
            slot.timer = Some(deadline);
            slot.gen
        };
        let cfg = self.clone();
        schedule_at(deadline, move || {
            let current = {
                let w = cfg.world.borrow();
                w.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.gen == gen && s.timer == Some(deadline))
            };
            if current {
                cfg.step(i, Event::TimerFired, None);
            }
        });
    }

    /// Server `from` sends `message` to `to` with labrpc semantics: requests
    /// start a call; replies answer the call being handled (`caller`).
    fn send(&self, from: usize, to: usize, message: &Message, caller: Option<(usize, u64)>) {
        let bytes = postcard::to_allocvec(message).expect("messages encode");
        let mut w = self.world.borrow_mut();
        let w = &mut *w;
        w.safety
            .check_send(from as u64, to as u64, message, &w.persisters[from]);
        let from_gen = w.gens[from];
        if message.is_request() {
            let enabled = w.connected[from] && w.connected[to] && w.slots[to].is_some();
            let to_gen = w.gens[to];
            match w.net.send_request(bytes.len(), enabled) {
                RequestFate::Fail => {}
                RequestFate::Deliver { delay } => {
                    let cfg = self.clone();
                    schedule_after(delay, move || {
                        cfg.request_arrived(from, from_gen, to, to_gen, bytes)
                    });
                }
            }
        } else {
            let caller_gen = match caller {
                Some((c, g)) if c == to => g,
                _ => w.gens[to],
            };
            let alive = w.connected[from]
                && w.connected[to]
                && w.gens[to] == caller_gen
                && w.slots[from].as_ref().is_some_and(|s| s.gen == from_gen);
            match w.net.send_reply(alive) {
                ReplyFate::Drop => {}
                ReplyFate::Deliver { delay } => {
                    let cfg = self.clone();
                    schedule_after(delay, move || {
                        cfg.reply_arrived(from, to, caller_gen, bytes)
                    });
                }
            }
        }
    }

    fn request_arrived(&self, from: usize, from_gen: u64, to: usize, to_gen: u64, bytes: Vec<u8>) {
        {
            let mut w = self.world.borrow_mut();
            if w.net.drop_request_now() {
                return;
            }
            // The server was replaced meanwhile: the old instance handles it
            // and its reply is discarded; nothing observable remains.
            if w.slots[to].as_ref().is_none_or(|s| s.gen != to_gen) {
                return;
            }
            w.rpc_count[to] += 1;
            w.trace = fnv1a(w.trace, &now().as_nanos().to_le_bytes());
            w.trace = fnv1a(w.trace, &[from as u8, to as u8]);
            w.trace = fnv1a(w.trace, &bytes);
        }
        let message: Message = postcard::from_bytes(&bytes).expect("messages decode");
        self.step(
            to,
            Event::MessageReceived {
                from: from as u64,
                message,
            },
            Some((from, from_gen)),
        );
    }

    fn reply_arrived(&self, from: usize, to: usize, to_gen: u64, bytes: Vec<u8>) {
        {
            let mut w = self.world.borrow_mut();
            w.net.reply_delivered(bytes.len());
            if w.slots[to].as_ref().is_none_or(|s| s.gen != to_gen) {
                return;
            }
            w.trace = fnv1a(w.trace, &now().as_nanos().to_le_bytes());
            w.trace = fnv1a(w.trace, &[from as u8, to as u8]);
            w.trace = fnv1a(w.trace, &bytes);
        }
        let message: Message = postcard::from_bytes(&bytes).expect("messages decode");
        self.step(
            to,
            Event::MessageReceived {
                from: from as u64,
                message,
            },
            None,
        );
    }
}

impl World {
    /// The Go `checkLogs`: no other server applied something else at `index`.
    fn check_logs(&mut self, i: usize, index: Index, cmd: Cmd) -> Result<bool, String> {
        for (j, log) in self.logs.iter().enumerate() {
            if let Some(old) = log.get(&index) {
                if *old != cmd {
                    return Err(format!(
                        "commit index={index} server={i} {cmd} != server={j} {old}"
                    ));
                }
            }
        }
        let prev_ok = self.logs[i].contains_key(&(index - 1));
        self.logs[i].insert(index, cmd);
        self.max_index = self.max_index.max(index);
        Ok(prev_ok)
    }

    /// The plain or snapshotting applier (lab-tests.md §2.6). Returns the
    /// snapshot the tester takes, if this batch reached one.
    fn apply_entries(&mut self, i: usize, entries: &[Entry]) -> Option<FollowUp> {
        let mut snap = None;
        for e in entries {
            let cmd = decode_cmd(&e.command);
            if self.snapshot_applier && e.index != self.last_applied[i] + 1 {
                panic!(
                    "server {i} apply out of order, expected index {}, got {}",
                    self.last_applied[i] + 1,
                    e.index
                );
            }
            match self.check_logs(i, e.index, cmd) {
                Err(err) => panic!("{err}"),
                Ok(prev_ok) => {
                    if e.index > 1 && !prev_ok {
                        panic!("server {i} apply out of order {}", e.index);
                    }
                }
            }
            self.last_applied[i] = e.index;
            if self.snapshot_applier && (e.index + 1) % SNAPSHOT_INTERVAL == 0 {
                let xlog: Vec<Option<Cmd>> = (0..=e.index)
                    .map(|k| self.logs[i].get(&k).cloned())
                    .collect();
                let data = postcard::to_allocvec(&(e.index, xlog)).expect("snapshots encode");
                snap = Some(FollowUp::Snapshot(e.index, data));
            }
        }
        snap
    }

    /// The Go `ingestSnap`: load the tester's snapshot into server `i`'s log.
    fn ingest_snapshot(
        &mut self,
        i: usize,
        data: &[u8],
        index: Option<Index>,
    ) -> Result<(), String> {
        let (last_included, xlog): (Index, Vec<Option<Cmd>>) =
            postcard::from_bytes(data).map_err(|e| format!("snapshot decode error: {e}"))?;
        if let Some(index) = index {
            if index != last_included {
                return Err(format!("server {i} snapshot doesn't match m.SnapshotIndex"));
            }
        }
        self.logs[i] = xlog
            .into_iter()
            .enumerate()
            .filter_map(|(k, c)| c.map(|c| (k as Index, c)))
            .collect();
        self.last_applied[i] = last_included;
        self.max_index = self.max_index.max(last_included);
        Ok(())
    }
}
