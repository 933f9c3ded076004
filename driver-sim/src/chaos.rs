//! Chaos simulation: each seed draws its own fault mix and runs KV clients
//! through a safety phase full of faults, then heals everything for a
//! liveness phase.
//!
//! Faults: request and reply loss (0–30%), duplication (0–20%), reordering
//! (random delays up to 1–60 ms), symmetric and asymmetric partitions, crashes
//! that lose every write not yet reported `Persisted` (the disk is
//! asynchronous here, with its own latency), and restarts. In two seeds of
//! three, also membership changes and leadership transfers, asked of the
//! leader: add a learner (a new server that knows no configuration, or one
//! removed earlier), promote, demote, remove, replace (promote a learner and
//! remove a voter at once), other joint changes (several changes at once),
//! a transfer to a voter or to the most up-to-date one, and a crash of the
//! leader right after it took a change. Servers are known by node id: the
//! ids `0..nodes` start the cluster, [`SPARE_IDS`] more may join.
//!
//! Clocks drift ([`ChaosOptions::drift`], `crate::clock`): in one seed of
//! three (those divisible by three, [`drifts`]), every node's clock runs at
//! its own rate, drawn uniformly within the bound (±5% by default), from its
//! own epoch; the node is stepped with its local time and its timers fire by
//! it. [`ChaosOptions::beyond`] draws rates beyond the bound instead, for a
//! lease canary. The other seeds, and every seed with a bound of zero, draw
//! nothing for clocks and run exactly as they did before clocks drifted.
//!
//! Reads ([`ChaosOptions::reads`], [`ReadSetup`]): each seed draws how the
//! cluster serves Gets (through the log, ReadIndex at the leader, ReadIndex
//! with follower reads, or lease reads), or runs with the one the options
//! name. Besides the clerks' Gets, 1–2 readers send sessionless reads
//! (`ServerEvent::ReadReceived`, linearizable, and on lease seeds half of
//! them by lease) to random servers (of those deployed, up or down),
//! following a refusal's leader hint for up to three attempts; a read
//! served is recorded in the history as a Get, one refused or unanswered is
//! dropped (it had no effect). Once healed, a read of every key must be
//! served each of those ways. Lease seeds
//! assume the drift bound their clocks are actually drawn within:
//! `max_clock_drift_ppm` is the options' bound in the seeds that drift and
//! zero in the others, whose clocks are perfect, so each lease runs at the
//! very edge of its assumption (with [`ChaosOptions::beyond`], beyond it).
//!
//! Writes ([`ChaosOptions::swaps`], on by default): besides appending to
//! its own key and reading, every clerk deletes, puts and compares and
//! swaps the shared keys [`SHARED_KEYS`], each swap expecting the value the
//! clerk last saw there (unset at first), so that clerks race for them and
//! swaps both succeed and fail. The history checks every answer: whether a
//! delete found the key, whether a swap swapped, and the value it found if
//! not. Without it, the clerks only append and read, as chaos ran before
//! deletes and swaps existed (every seed pinned before then replays so).
//!
//! Checked after every step of every node: at most one leader per term,
//! log matching, leader completeness, state machine safety (the same entry at
//! every committed index on every node), persist-before-send against the
//! durable image, the configuration rules (commit quorum, quorum overlap,
//! one change at a time, own-term commit before a change), and the core's
//! own invariants. After healing, within 20 election timeouts: every client
//! operation completes, exactly one leader, every member of the leader's
//! configuration has applied the same state, every acknowledged append is
//! present exactly once and in order. Finally the whole history must be
//! linearizable.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use kv_core::{
    Clerk, Command, KvServer, Op, Outcome, Progress, ReadConsistency, ReadPolicy, Reply,
    ServerAction, ServerConfig, ServerEvent,
};
use raft_core::{
    Config, Event, Index, InstallSnapshot, Instant, MembershipChange, Message, NodeId, Persist,
};

use crate::clock::{ClockDrift, NodeClock};

use crate::executor::{
    ms, now, oneshot, schedule_after, schedule_at, sleep, spawn, timeout, with_rng, OneshotSender,
};
use lincheck::{check, KvInput, KvModel, KvOutput, Model, Operation, Verdict};
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
    /// Per-mille chance per fault tick of asking the leader for a
    /// membership change.
    pub reconfig: u64,
    /// Per-mille chance per fault tick of asking the leader to transfer
    /// its leadership.
    pub transfer: u64,
    /// Per-mille chance that the leader crashes right after taking a
    /// membership change.
    pub crash_after_change: u64,
    /// Every node id's clock (the initial ids, then the spares); empty
    /// when clocks are perfect.
    pub clocks: Vec<NodeClock>,
    /// How the cluster serves reads.
    pub reads: ReadSetup,
    /// Tasks sending sessionless reads to random members (1 or 2).
    pub readers: usize,
    /// Whether the servers defer their applies
    /// (`KvServer::defer_applies`, as `rkv` runs them), each applying a
    /// moment after its step unless another step comes first: the seed's
    /// own choice ([`defers`], with [`ChaosOptions::defer`]), not a draw:
    /// the seeds that do not defer run as they did before.
    pub defer_applies: bool,
    /// The clock-rate bound lease reads assume
    /// (`raft_core::Config::max_clock_drift_ppm`) on a lease seed: the
    /// bound the clocks were drawn within, zero when they are perfect.
    pub assumed_drift_ppm: u32,
    /// Whether clerks also delete, put and swap the shared keys (the
    /// options' [`ChaosOptions::swaps`], not a draw).
    pub swaps: bool,
}

/// How one seed's cluster serves Gets (every server alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadSetup {
    /// Through the log, like a write ([`ReadPolicy::Log`]).
    Log,
    /// ReadIndex at the leader ([`ReadPolicy::ReadIndex`], the service's
    /// default); followers send clients to the leader.
    ReadIndex,
    /// ReadIndex, and followers serve reads themselves, forwarding them to
    /// the leader for the read index (`ServerConfig::follower_reads`).
    Follower,
    /// Lease reads ([`ReadPolicy::Lease`]), assuming the seed's drift
    /// bound ([`FaultMix::assumed_drift_ppm`]).
    Lease,
}

impl ReadSetup {
    /// Every setup, in the order seeds draw them.
    pub const ALL: [ReadSetup; 4] = [
        ReadSetup::Log,
        ReadSetup::ReadIndex,
        ReadSetup::Follower,
        ReadSetup::Lease,
    ];

    /// Its name on the command line (`chaos --reads NAME`).
    pub const fn name(self) -> &'static str {
        match self {
            ReadSetup::Log => "log",
            ReadSetup::ReadIndex => "read-index",
            ReadSetup::Follower => "follower",
            ReadSetup::Lease => "lease",
        }
    }

    /// The setup called `name`.
    pub fn by_name(name: &str) -> Option<ReadSetup> {
        ReadSetup::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Where it sits in [`ReadSetup::ALL`].
    pub fn position(self) -> usize {
        ReadSetup::ALL
            .iter()
            .position(|&r| r == self)
            .expect("listed")
    }
}

impl std::fmt::Display for ReadSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which read setup the seeds of a run use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reads {
    /// Each seed draws its own, uniformly.
    #[default]
    Drawn,
    /// Every seed uses this one. The draw is still made (and discarded), so
    /// a seed that drew this setup runs exactly as under `Drawn`.
    Only(ReadSetup),
}

/// How a chaos run treats clocks; the default drifts within
/// [`ClockDrift::CHAOS`] (±5%) in one seed of three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChaosOptions {
    /// The bound clock rates are drawn within, in the seeds that draw
    /// drift. [`ClockDrift::NONE`]: perfect clocks in every seed, and
    /// nothing drawn for them (each seed runs as it did before clocks
    /// drifted).
    pub drift: ClockDrift,
    /// `Some(factor)`: the seeds that draw drift draw every rate *beyond*
    /// the bound instead, its distance from perfect time in `(bound,
    /// factor * bound]` ([`ClockDrift::draw_rate_beyond`]). This breaks the
    /// clock assumption a lease rests on: for a lease canary, which chaos
    /// must then catch. Without leases nothing rests on clocks, and chaos
    /// passes with these rates too. With [`ReadSetup::Lease`] the catch is
    /// rare: it takes a leader whose clock runs near a tenth of real time,
    /// cut off while its lease outlasts the new leader's election and a
    /// clerk's retry there (factor 20: seeds 3993 and 8235 of 1-30,000;
    /// factors 2, 4, 10, 40: none of 1-10,000).
    pub beyond: Option<u64>,
    /// How seeds serve reads ([`Reads::Drawn`] by default).
    pub reads: Reads,
    /// Whether clerks also delete, put and compare-and-swap the shared
    /// keys (on by default; off, each seed runs as it did before deletes
    /// and swaps existed). See the module documentation.
    pub swaps: bool,
    /// Whether the odd seeds ([`defers`]) run servers that defer their
    /// applies (`kv_core::KvServer::defer_applies`, as `rkv` runs them; on
    /// by default; off, each seed runs as it did before deferred applies
    /// existed).
    pub defer: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions::DRIFT
    }
}

impl ChaosOptions {
    /// Chaos as it runs by default: clocks drift within ±5% in one seed of
    /// three.
    pub const DRIFT: ChaosOptions = ChaosOptions {
        drift: ClockDrift::CHAOS,
        beyond: None,
        reads: Reads::Drawn,
        swaps: true,
        defer: true,
    };

    /// Perfect clocks in every seed (chaos as it was before clocks drifted).
    pub const PERFECT_CLOCKS: ChaosOptions = ChaosOptions {
        drift: ClockDrift::NONE,
        beyond: None,
        reads: Reads::Drawn,
        swaps: true,
        defer: true,
    };

    /// For a lease canary: in one seed of three, every clock's rate beyond
    /// ±5%, up to `factor` times that.
    pub const fn beyond_the_bound(factor: u64) -> ChaosOptions {
        ChaosOptions {
            drift: ClockDrift::CHAOS,
            beyond: Some(factor),
            reads: Reads::Drawn,
            swaps: true,
            defer: true,
        }
    }

    /// These options with every seed's reads as `reads` says.
    pub const fn with_reads(self, reads: Reads) -> ChaosOptions {
        ChaosOptions { reads, ..self }
    }

    /// These options with the clerks' deletes and swaps on or off.
    pub const fn with_swaps(self, swaps: bool) -> ChaosOptions {
        ChaosOptions { swaps, ..self }
    }

    /// These options with deferred applies (in the odd seeds) on or off.
    pub const fn with_defer(self, defer: bool) -> ChaosOptions {
        ChaosOptions { defer, ..self }
    }
}

/// Whether seed `seed` runs with drifting clocks (when the options give a
/// bound): one seed of three, those divisible by three.
pub fn drifts(seed: u64) -> bool {
    seed.is_multiple_of(3)
}

/// Whether seed `seed` runs servers that defer their applies: the odd ones.
pub fn defers(seed: u64) -> bool {
    seed % 2 == 1
}

/// Node ids beyond the initial ones that may join a seed's cluster.
pub const SPARE_IDS: usize = 3;

impl FaultMix {
    /// Draws a mix from the simulation's generator, its clocks as `options`
    /// say.
    pub fn draw(options: ChaosOptions) -> FaultMix {
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
            reconfig: 0,
            transfer: 0,
            crash_after_change: 0,
            clocks: Vec::new(),
            reads: ReadSetup::ReadIndex,
            readers: 1,
            assumed_drift_ppm: 0,
            defer_applies: options.defer && defers(crate::executor::seed()),
            swaps: options.swaps,
        });
        if with_rng(|r| r.chance(1, 2)) {
            mix.slow_disk = Some(with_rng(|r| r.below(mix.nodes as u64)) as usize);
        }
        if with_rng(|r| r.chance(2, 3)) {
            with_rng(|r| {
                mix.reconfig = 100 + r.below(700);
                mix.transfer = r.below(300);
                mix.crash_after_change = r.below(400);
            });
        }
        // Drawn whatever the options say, so that a seed run with the setup
        // it would draw anyway runs as it does when drawing.
        let drawn = ReadSetup::ALL[with_rng(|r| r.below(ReadSetup::ALL.len() as u64)) as usize];
        mix.reads = match options.reads {
            Reads::Drawn => drawn,
            Reads::Only(setup) => setup,
        };
        mix.readers = 1 + with_rng(|r| r.below(2)) as usize;
        // Which seeds drift is the seed's own choice, not a draw, and their
        // clocks are drawn last: every other seed, and every seed without a
        // bound, runs as it does with perfect clocks.
        if options.drift.is_on() && drifts(crate::executor::seed()) {
            mix.assumed_drift_ppm =
                u32::try_from(options.drift.max_ppm).expect("a bound below one million");
            let ids = mix.nodes + SPARE_IDS;
            mix.clocks = with_rng(|r| {
                (0..ids)
                    .map(|_| {
                        let rate = match options.beyond {
                            None => options.drift.draw_rate(r),
                            Some(factor) => options.drift.draw_rate_beyond(factor, r),
                        };
                        let offset = Instant::from_nanos(r.below(1_000_000_000));
                        NodeClock::new(Instant::ZERO, offset, rate)
                    })
                    .collect()
            });
        }
        mix
    }

    /// Node `i`'s clock.
    pub fn clock(&self, i: usize) -> NodeClock {
        self.clocks.get(i).copied().unwrap_or_default()
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
    /// Membership changes the leader took.
    pub changes: usize,
    /// What the reads did.
    pub reads: ReadTally,
    /// What the deletes and swaps did.
    pub swaps: SwapTally,
    /// What deferred applies did (zero unless the seed defers).
    pub deferred: DeferTally,
}

/// What a seed's deferred applies did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeferTally {
    /// Steps that left committed entries to apply later.
    pub left: u64,
    /// Steps whose event found entries still waiting, and applied them first.
    pub applied_first: u64,
}

impl DeferTally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DeferTally) {
        self.left += other.left;
        self.applied_first += other.applied_first;
    }
}

/// What a seed's deletes and compare-and-swaps did (acknowledged ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapTally {
    /// Swaps that found the expected value.
    pub swapped: u64,
    /// Swaps that found another value.
    pub not_swapped: u64,
    /// Deletes that found the key set.
    pub deleted: u64,
    /// Deletes that found it unset.
    pub absent: u64,
}

impl SwapTally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &SwapTally) {
        self.swapped += other.swapped;
        self.not_swapped += other.not_swapped;
        self.deleted += other.deleted;
        self.absent += other.absent;
    }
}

/// What a seed's reads did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadTally {
    /// Sessionless reads served (none of them written to the log), and
    /// recorded in the history.
    pub served: u64,
    /// Sessionless read attempts refused (`WrongLeader`).
    pub refused: u64,
    /// Sessionless read attempts that got no answer in time.
    pub unanswered: u64,
    /// Reads (sessionless, or a clerk's Get) answered in the very step
    /// they arrived: with no round trip, so by the leader's lease (or by a
    /// leader that is its configuration's only voter).
    pub at_once: u64,
}

impl ReadTally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ReadTally) {
        self.served += other.served;
        self.refused += other.refused;
        self.unanswered += other.unanswered;
        self.at_once += other.at_once;
    }
}

const SAFETY_PHASE: Duration = Duration::from_secs(6);
/// 20 election timeouts (the longest, 600 ms).
const LIVENESS_LIMIT: Duration = Duration::from_millis(20 * 600);
const CALL_TIMEOUT: Duration = Duration::from_millis(400);
/// Attempts of one sessionless read (the first at a random member, then
/// wherever a refusal points).
const READ_ATTEMPTS: usize = 3;
/// History client ids: readers from here; the final reads of
/// [`Chaos::check_reads_served`] just below.
const READER_BASE: u64 = 100;
/// The keys every clerk deletes, puts and swaps ([`ChaosOptions::swaps`]);
/// the appends go to keys of their own, `k0`, `k1`, ….
pub const SHARED_KEYS: [&str; 2] = ["s0", "s1"];
const FINAL_READER: u64 = 98;

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

/// How one attempt of a sessionless read ended.
enum ReadAttempt {
    Served,
    Refused(Option<NodeId>),
    Unanswered,
}

/// What a node is stepped with.
enum Input {
    Server(ServerEvent),
    Raft(Event),
    /// A leader's snapshot, header and bytes, all arrived.
    Snapshot {
        from: u64,
        header: InstallSnapshot,
        data: Vec<u8>,
    },
    /// The committed entries a deferring server left.
    ApplyPending,
}

struct World {
    mix: FaultMix,
    /// By node id: every id that may ever run (the initial ones, then the
    /// spares); `None` while down or never started.
    nodes: Vec<Option<Node>>,
    /// The `Config::members` each id starts with: the initial voters, or
    /// none for a spare (it learns the configuration from the leader).
    members: Vec<Vec<NodeId>>,
    /// Ids that have run at least once (healing restarts only those).
    started: Vec<bool>,
    /// Membership changes the leader took.
    changes: usize,
    gens: Vec<u64>,
    disks: Vec<Persister>,
    blocked: Vec<Vec<bool>>,
    healed: bool,
    safety: SafetyChecker,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    history: Vec<(u64, u64, u64, KvInput, KvOutput)>,
    last_stamp: u64,
    reads: ReadTally,
    swaps: SwapTally,
    deferred: DeferTally,
}

#[derive(Clone)]
struct Chaos {
    w: Rc<RefCell<World>>,
}

/// Runs one seed with the default options ([`ChaosOptions::DRIFT`]).
/// Returns the report, or panics (with what broke) on any violation; the
/// caller catches it and prints the replay command.
pub fn run_seed(seed: u64) -> ChaosReport {
    run_seed_with(seed, ChaosOptions::default())
}

/// The fault mix seed `seed` draws under `options` (what [`run_seed_with`]
/// runs it with), without running it.
pub fn mix_of(seed: u64, options: ChaosOptions) -> FaultMix {
    crate::executor::run(seed, async move { FaultMix::draw(options) })
}

/// Runs one seed with its clocks as `options` say (see [`run_seed`]).
pub fn run_seed_with(seed: u64, options: ChaosOptions) -> ChaosReport {
    crate::executor::run(seed, async move {
        let mix = FaultMix::draw(options);
        let n = mix.nodes;
        let ids = n + SPARE_IDS;
        let initial: Vec<NodeId> = (0..n as NodeId).collect();
        let chaos = Chaos {
            w: Rc::new(RefCell::new(World {
                nodes: (0..ids).map(|_| None).collect(),
                members: (0..ids)
                    .map(|i| if i < n { initial.clone() } else { Vec::new() })
                    .collect(),
                started: vec![false; ids],
                changes: 0,
                gens: vec![0; ids],
                disks: vec![Persister::new(); ids],
                blocked: vec![vec![false; ids]; ids],
                healed: false,
                safety: SafetyChecker::default(),
                calls: BTreeMap::new(),
                next_call: 0,
                history: Vec::new(),
                last_stamp: 0,
                reads: ReadTally::default(),
                swaps: SwapTally::default(),
                deferred: DeferTally::default(),
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
        let readers: Vec<_> = (0..mix.readers)
            .map(|r| spawn(chaos.clone().reader(READER_BASE + r as u64, done.clone())))
            .collect();
        let faults = spawn(chaos.clone().faults(done.clone()));
        sleep(SAFETY_PHASE).await;
        done.set(true);
        faults.await;
        chaos.heal();
        let healed_at = now();
        // Like an operator, shut down servers whose removal has committed
        // (during the fault phase they kept running, and must not have
        // disturbed the cluster): a clerk that still tries them would
        // otherwise follow their stale leader hints.
        let liveness = Rc::new(std::cell::Cell::new(true));
        let retirer = spawn(chaos.clone().retire_removed(liveness.clone()));
        let mut acked = Vec::new();
        for c in clients {
            match timeout(LIVENESS_LIMIT, c).await {
                Some(a) => acked.push(a),
                None => panic!("liveness: a client operation did not complete within 20 election timeouts of healing\n{}", chaos.status()),
            }
        }
        for r in readers {
            // A read gives up after three attempts of CALL_TIMEOUT each.
            if timeout(LIVENESS_LIMIT, r).await.is_none() {
                panic!(
                    "liveness: a reader did not stop within 20 election timeouts of healing\n{}",
                    chaos.status()
                );
            }
        }
        chaos.check_converged(healed_at).await;
        chaos.check_acknowledged(&acked).await;
        chaos.check_reads_served().await;
        liveness.set(false);
        retirer.await;
        chaos.check_linearizable();
        let (ops, changes, reads, swaps, deferred) = {
            let w = chaos.w.borrow();
            (w.history.len(), w.changes, w.reads, w.swaps, w.deferred)
        };
        ChaosReport {
            mix,
            events: crate::executor::events_run(),
            ops,
            acked: acked.iter().map(Vec::len).sum(),
            changes,
            reads,
            swaps,
            deferred,
        }
    })
}

/// A clerk operation as the KV model of the history sees it.
fn history_input(op: &Op) -> KvInput {
    match op {
        Op::Get { key } => KvInput::get(key.clone()),
        Op::Put { key, value } => KvInput::put(key.clone(), value.clone()),
        Op::Append { key, value } => KvInput::append(key.clone(), value.clone()),
        Op::Delete { key } => KvInput::delete(key.clone()),
        Op::CompareAndSwap {
            key,
            expected,
            value,
        } => KvInput::compare_and_swap(key.clone(), expected.as_deref(), value.clone()),
    }
}

impl Chaos {
    fn start(&self, i: usize) {
        {
            let mut w = self.w.borrow_mut();
            w.gens[i] += 1;
            w.started[i] = true;
            // Snapshots staged but never named by a write do not survive.
            w.disks[i] = w.disks[i].after_crash();
            let (state, snapshot) = w.disks[i].load();
            let members = w.members[i].clone();
            let mut config =
                ServerConfig::new(Config::new(i as u64, members), w.mix.max_raft_state);
            match w.mix.reads {
                ReadSetup::Log => config.read_policy = ReadPolicy::Log,
                ReadSetup::ReadIndex => config.read_policy = ReadPolicy::ReadIndex,
                ReadSetup::Follower => {
                    config.read_policy = ReadPolicy::ReadIndex;
                    config.follower_reads = true;
                }
                ReadSetup::Lease => {
                    config.read_policy = ReadPolicy::Lease;
                    config.raft.max_clock_drift_ppm = w.mix.assumed_drift_ppm;
                }
            }
            let seed = with_rng(|r| r.next_u64());
            let mut data = snapshot.as_deref();
            let reader = data.as_mut().map(|d| d as &mut dyn std::io::Read);
            let mut server =
                KvServer::recover(config, seed, state, reader).expect("recovers from its disk");
            server.defer_applies(w.mix.defer_applies);
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
            let down = {
                let w = self.w.borrow();
                w.started[i] && w.nodes[i].is_none()
            };
            if down {
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
            if with_rng(|r| r.chance(mix.reconfig, 1000)) {
                self.change_membership();
            }
            if with_rng(|r| r.chance(mix.transfer, 1000)) {
                self.transfer_leadership();
            }
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
                self.crash_for_a_while(i);
            }
        }
    }

    /// Crashes node `i` (if it has ever run) and restarts it 50–1500 ms
    /// later, unless healing has restarted it already.
    fn crash_for_a_while(&self, i: usize) {
        if !self.w.borrow().started[i] {
            return;
        }
        self.crash(i);
        let me = self.clone();
        let down = ms(with_rng(|r| r.range(50, 1500)));
        schedule_after(down, move || {
            if me.w.borrow().nodes[i].is_none() && !me.w.borrow().healed {
                me.start(i);
            }
        });
    }

    /// Every 50 ms while `running`: crashes, for good, each running server
    /// that neither the leader's latest nor its committed configuration
    /// names.
    async fn retire_removed(self, running: Rc<std::cell::Cell<bool>>) {
        while running.get() {
            if let Some(leader) = self.leader() {
                let mut w = self.w.borrow_mut();
                let raft = w.nodes[leader].as_ref().expect("running").server.raft();
                let (latest, committed) = (
                    raft.membership().clone(),
                    raft.committed_membership().clone(),
                );
                for i in 0..w.nodes.len() {
                    let id = i as NodeId;
                    if w.nodes[i].is_some() && !latest.contains(id) && !committed.contains(id) {
                        w.nodes[i] = None;
                        w.started[i] = false;
                    }
                }
            }
            sleep(ms(50)).await;
        }
    }

    /// The running node that leads the highest term, if any.
    fn leader(&self) -> Option<usize> {
        let w = self.w.borrow();
        (0..w.nodes.len())
            .filter_map(|i| w.nodes[i].as_ref().map(|nd| (i, nd.server.raft())))
            .filter(|(_, r)| r.is_leader())
            .max_by_key(|(_, r)| r.term())
            .map(|(i, _)| i)
    }

    /// Draws a membership change against the leader's latest configuration
    /// and asks the leader for it (it may refuse: one change at a time, not
    /// before its own entry commits, or an invalid one); a spare id it adds
    /// is started first, knowing no configuration. If the leader takes it,
    /// it may crash at once.
    fn change_membership(&self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let (latest, ids) = {
            let w = self.w.borrow();
            let raft = w.nodes[leader].as_ref().expect("running").server.raft();
            (raft.membership().clone(), w.nodes.len())
        };
        let voters: Vec<NodeId> = latest.voters.iter().copied().collect();
        let learners: Vec<NodeId> = latest.learners.iter().copied().collect();
        let outsiders: Vec<NodeId> = (0..ids as NodeId)
            .filter(|&i| !latest.contains(i))
            .collect();
        let pick = |from: &[NodeId]| -> Option<NodeId> {
            (!from.is_empty()).then(|| from[with_rng(|r| r.below(from.len() as u64)) as usize])
        };
        use MembershipChange::*;
        let changes: Vec<MembershipChange> = match with_rng(|r| r.below(8)) {
            0 | 1 => pick(&outsiders).map(AddLearner).into_iter().collect(),
            2 => pick(&learners).map(Promote).into_iter().collect(),
            3 => pick(&voters).map(Remove).into_iter().collect(),
            4 => pick(&voters).map(Demote).into_iter().collect(),
            // Replace: a learner in, a voter out, in one joint change.
            5 => match (pick(&learners), pick(&voters)) {
                (Some(l), Some(v)) => vec![Promote(l), Remove(v)],
                _ => Vec::new(),
            },
            // Grow by two at once (a new voter straight away, and a
            // learner promoted), or shrink by two.
            6 => match (pick(&outsiders), pick(&learners)) {
                (Some(o), Some(l)) => vec![AddVoter(o), Promote(l)],
                (Some(o), None) => vec![AddVoter(o), AddLearner(o + 1)]
                    .into_iter()
                    .filter(|c| outsiders.contains(&c.node()))
                    .collect(),
                _ => Vec::new(),
            },
            _ => {
                let (a, b) = (pick(&voters), pick(&voters));
                match (a, b) {
                    (Some(a), Some(b)) if a != b => vec![Remove(a), Demote(b)],
                    _ => Vec::new(),
                }
            }
        };
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            let i = c.node() as usize;
            if !self.w.borrow().started[i] {
                self.start(i);
            }
        }
        let id = {
            let mut w = self.w.borrow_mut();
            w.next_call += 1;
            w.next_call
        };
        self.step_raft(leader, Event::MembershipChangeRequested { id, changes });
        let took = {
            let w = self.w.borrow();
            w.nodes[leader]
                .as_ref()
                .is_some_and(|nd| *nd.server.raft().membership() != latest)
        };
        if took {
            self.w.borrow_mut().changes += 1;
            let crash = self.w.borrow().mix.crash_after_change;
            if with_rng(|r| r.chance(crash, 1000)) {
                self.crash_for_a_while(leader);
            }
        }
    }

    /// Asks the leader to hand over to a random voter, or (half the time)
    /// to the most up-to-date one.
    fn transfer_leadership(&self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let voters: Vec<NodeId> = {
            let w = self.w.borrow();
            let raft = w.nodes[leader].as_ref().expect("running").server.raft();
            raft.membership().voters.iter().copied().collect()
        };
        let to = if with_rng(|r| r.chance(1, 2)) {
            None
        } else {
            Some(voters[with_rng(|r| r.below(voters.len() as u64)) as usize])
        };
        self.step_raft(leader, Event::LeadershipTransferRequested { to });
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
                        "  node {i}: {} term {} {:?} commit {} applied {} last {} waiting {}\n",
                        r.membership(),
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
        self.step_with(i, Input::Server(event));
    }

    /// Steps node `i` with a Raft event the service does not issue itself
    /// (a membership change or a transfer).
    fn step_raft(&self, i: usize, event: Event) {
        self.step_with(i, Input::Raft(event));
    }

    fn step_with(&self, i: usize, input: Input) {
        // A read's request id: answered in this very step, it was served
        // with no round trip.
        let read_id = match &input {
            Input::Server(ServerEvent::ReadReceived { id, .. }) => Some(*id),
            Input::Server(ServerEvent::RequestReceived { id, command })
                if matches!(command.op, Op::Get { .. }) =>
            {
                Some(*id)
            }
            _ => None,
        };
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let actions = {
                let mut w = self.w.borrow_mut();
                let w = &mut *w;
                let local_now = w.mix.clock(i).local(now());
                let Some(node) = w.nodes[i].as_mut() else {
                    return;
                };
                let mut staged = None;
                if node.server.has_pending_applies() && !matches!(input, Input::ApplyPending) {
                    w.deferred.applied_first += 1;
                }
                let actions = match input {
                    Input::Server(event) => node.server.step(local_now, event),
                    Input::Raft(event) => node.server.step_raft_event(local_now, event),
                    Input::Snapshot { from, header, data } => {
                        let index = header.last_included_index;
                        // One held already at that index (our own, being
                        // written) stays ours.
                        if w.disks[i].snapshot_at(index).is_none() {
                            w.disks[i].stage(index, data.clone());
                            staged = Some(index);
                        }
                        node.server
                            .install_snapshot(local_now, from, header, &mut &data[..])
                    }
                    Input::ApplyPending => node.server.apply_pending(local_now),
                }
                .expect("the harness uses the server correctly");
                if let Some(index) = staged {
                    // Kept until the write that names it reaches the disk.
                    let named = actions.iter().any(|a| {
                        matches!(a, ServerAction::Persist(p)
                            if p.snapshot.as_ref().is_some_and(|m| m.index == index))
                    });
                    if !named {
                        w.disks[i].unstage(index);
                    }
                }
                let raft = node.server.raft();
                w.safety.after_step(raft);
                // State machine safety: the committed prefix is the same everywhere.
                w.safety.check_committed_log(raft);
                actions
            };
            for action in actions {
                match action {
                    ServerAction::Send { to, message } => self.send_peer(i, to as usize, message),
                    ServerAction::SendSnapshot { to, message } => {
                        self.send_snapshot(i, to as usize, message)
                    }
                    ServerAction::TakeSnapshot { index, image } => {
                        self.take_snapshot(i, index, image)
                    }
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
                    ServerAction::Reply { id, reply } => {
                        if read_id == Some(id) && matches!(reply, Reply::Applied(_)) {
                            self.w.borrow_mut().reads.at_once += 1;
                        }
                        self.send_reply(id, reply)
                    }
                }
            }
        }
        self.apply_later(i);
    }

    /// A server that deferred its applies does them 0–2 ms after its step,
    /// unless a step comes first (which applies them before its event).
    fn apply_later(&self, i: usize) {
        let gen = {
            let mut w = self.w.borrow_mut();
            let gen = match w.nodes[i].as_ref() {
                Some(node) if node.server.has_pending_applies() => node.gen,
                _ => return,
            };
            w.deferred.left += 1;
            gen
        };
        let me = self.clone();
        schedule_after(ms(with_rng(|r| r.below(3))), move || {
            let current = me.w.borrow().nodes[i]
                .as_ref()
                .is_some_and(|n| n.gen == gen);
            if current {
                me.step_with(i, Input::ApplyPending);
            }
        });
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

    /// Arms node `i`'s timer for `deadline`, an instant of its own clock:
    /// it fires once that clock reads `deadline` (never earlier).
    fn set_timer(&self, i: usize, deadline: Instant) {
        let (gen, at) = {
            let mut w = self.w.borrow_mut();
            let at = w.mix.clock(i).global_at(deadline);
            let Some(node) = w.nodes[i].as_mut() else {
                return;
            };
            node.timer = Some(deadline);
            (node.gen, at)
        };
        let me = self.clone();
        schedule_at(at, move || {
            let current = me.w.borrow().nodes[i]
                .as_ref()
                .is_some_and(|n| n.gen == gen && n.timer == Some(deadline));
            if current {
                let local = me.w.borrow().mix.clock(i).local(now());
                assert!(local >= deadline, "a timer fired early");
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

    /// A snapshot transfer: the header and the bytes arrive together after
    /// one delay, or not at all (a stream is neither duplicated nor split);
    /// either way the sender hears of its end then.
    fn send_snapshot(&self, from: usize, to: usize, header: InstallSnapshot) {
        let (data, gen) = {
            let w = self.w.borrow();
            let data = w.disks[from]
                .snapshot_at(header.last_included_index)
                .expect("a leader holds the snapshot it sends")
                .to_vec();
            (data, w.gens[from])
        };
        let blocked = self.w.borrow().blocked[from][to];
        let fate = if blocked {
            None
        } else {
            self.fates().first().copied()
        };
        let delay = fate.unwrap_or(ms(1));
        let me = self.clone();
        schedule_after(delay, move || {
            let (term, index) = (header.term, header.last_included_index);
            if fate.is_some() && !me.w.borrow().blocked[from][to] {
                let from = from as u64;
                me.step_with(to, Input::Snapshot { from, header, data });
            }
            let running = me.w.borrow().nodes[from]
                .as_ref()
                .is_some_and(|n| n.gen == gen);
            if running {
                let to = to as u64;
                let ended = ServerEvent::SnapshotSendEnded { to, term, index };
                me.step(from, ended);
            }
        });
    }

    /// The snapshot writer: the image is encoded and staged on the disk, and
    /// reported taken after a disk-like delay (the server goes on meanwhile).
    fn take_snapshot(&self, i: usize, index: u64, image: kv_core::KvImage) {
        let mut data = Vec::new();
        image
            .write_to(&mut data)
            .expect("writing into a Vec cannot fail");
        let (gen, delay) = {
            let mut w = self.w.borrow_mut();
            w.disks[i].stage(index, data);
            let disk_ms = w.mix.disk_ms;
            (w.gens[i], ms(with_rng(|r| r.below(disk_ms + 1))))
        };
        let me = self.clone();
        schedule_after(delay, move || {
            let current = me.w.borrow().nodes[i]
                .as_ref()
                .is_some_and(|n| n.gen == gen);
            if current {
                me.step(i, ServerEvent::SnapshotTaken { index });
            }
        });
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
        self.call_with(server, move |id| ServerEvent::RequestReceived {
            id,
            command: command.clone(),
        })
    }

    /// Sends server `server` the request `request(id)` under a fresh id
    /// (through the lossy network), and waits for its answer.
    fn call_with(
        &self,
        server: usize,
        request: impl Fn(u64) -> ServerEvent + Clone + 'static,
    ) -> crate::executor::OneshotReceiver<Reply> {
        let (tx, rx) = oneshot();
        let id = {
            let mut w = self.w.borrow_mut();
            w.next_call += 1;
            let id = w.next_call;
            w.calls.insert(id, Call { reply: tx });
            id
        };
        for delay in self.fates() {
            let (me, request) = (self.clone(), request.clone());
            schedule_after(delay, move || me.step(server, request(id)));
        }
        rx
    }

    /// One attempt of a sessionless read at `server`; a value served is
    /// recorded in the history as client `client`'s Get.
    async fn read_once(
        &self,
        client: u64,
        server: usize,
        key: &str,
        consistency: ReadConsistency,
    ) -> ReadAttempt {
        let call = self.stamp();
        let k = key.to_string();
        let rx = self.call_with(server, move |id| ServerEvent::ReadReceived {
            id,
            key: k.clone(),
            consistency,
        });
        match timeout(CALL_TIMEOUT, rx).await.flatten() {
            Some(Reply::Applied(Outcome::Value(value))) => {
                let ret = self.stamp();
                let mut w = self.w.borrow_mut();
                w.reads.served += 1;
                let (input, output) = (KvInput::get(key.to_string()), KvOutput::Value(value));
                w.history.push((client, call, ret, input, output));
                ReadAttempt::Served
            }
            Some(Reply::WrongLeader { leader_hint }) => {
                self.w.borrow_mut().reads.refused += 1;
                ReadAttempt::Refused(leader_hint)
            }
            Some(other) => panic!("a sessionless read of {key:?} was answered {other:?}"),
            None => {
                self.w.borrow_mut().reads.unanswered += 1;
                ReadAttempt::Unanswered
            }
        }
    }

    /// A sessionless read of `key`: at a random server, then (for up to
    /// [`READ_ATTEMPTS`] attempts) at the leader a refusal names, or at
    /// another random member. Served or not, it changes nothing.
    async fn sessionless_read(&self, client: u64, key: &str, consistency: ReadConsistency) -> bool {
        let n = self.w.borrow().nodes.len();
        let mut server = self.some_member();
        for _ in 0..READ_ATTEMPTS {
            server = match self.read_once(client, server, key, consistency).await {
                ReadAttempt::Served => return true,
                ReadAttempt::Refused(Some(hint)) if (hint as usize) < n => hint as usize,
                ReadAttempt::Refused(_) => {
                    // No leader known: give an election a moment.
                    sleep(ms(with_rng(|r| r.range(10, 51)))).await;
                    self.some_member()
                }
                ReadAttempt::Unanswered => self.some_member(),
            };
        }
        false
    }

    /// A random server of those deployed (every id that has run and has
    /// not been retired, up or down): where a client may send a read.
    fn some_member(&self) -> usize {
        let deployed: Vec<usize> = {
            let w = self.w.borrow();
            (0..w.nodes.len()).filter(|&i| w.started[i]).collect()
        };
        deployed[with_rng(|r| r.below(deployed.len() as u64)) as usize]
    }

    /// How a seed's sessionless reads are asked for: linearizable, and on
    /// a lease seed half of them by lease.
    fn draw_consistency(&self) -> ReadConsistency {
        let lease = self.w.borrow().mix.reads == ReadSetup::Lease;
        if lease && with_rng(|r| r.chance(1, 2)) {
            ReadConsistency::Lease
        } else {
            ReadConsistency::Linearizable
        }
    }

    /// Sends sessionless reads of random keys to random members until told
    /// to stop.
    async fn reader(self, client: u64, done: Rc<std::cell::Cell<bool>>) {
        while !done.get() {
            let key = format!("k{}", with_rng(|r| r.below(4)));
            let consistency = self.draw_consistency();
            self.sessionless_read(client, &key, consistency).await;
        }
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

    /// Runs `op` through `clerk` as client `client` and records it in the
    /// history.
    async fn record(&self, clerk: &mut Clerk, client: u64, op: Op) -> Outcome {
        let input = history_input(&op);
        let call = self.stamp();
        let outcome = self.execute(clerk, op).await;
        let ret = self.stamp();
        let output = match &outcome {
            Outcome::Value(v) => KvOutput::Value(v.clone()),
            Outcome::Done => KvOutput::Value(String::new()),
            Outcome::SessionExpired => panic!("session expired"),
            Outcome::Deleted { existed } => KvOutput::Existed(*existed),
            Outcome::Swapped => KvOutput::Swapped,
            Outcome::NotSwapped { current } => KvOutput::NotSwapped(current.clone()),
        };
        let mut w = self.w.borrow_mut();
        let tally = &mut w.swaps;
        match &outcome {
            Outcome::Deleted { existed: true } => tally.deleted += 1,
            Outcome::Deleted { existed: false } => tally.absent += 1,
            Outcome::Swapped => tally.swapped += 1,
            Outcome::NotSwapped { .. } => tally.not_swapped += 1,
            _ => {}
        }
        w.history.push((client, call, ret, input, output));
        outcome
    }

    /// A Get's value through `clerk`, recorded.
    async fn record_get(&self, clerk: &mut Clerk, client: u64, key: String) -> String {
        match self.record(clerk, client, Op::Get { key }).await {
            Outcome::Value(v) => v,
            other => panic!("a Get was answered {other:?}"),
        }
    }

    /// Appends to its own key and reads keys at random until told to stop;
    /// with [`ChaosOptions::swaps`], also writes the shared keys (see
    /// [`Chaos::shared_write`]). Returns the appends acknowledged, in order.
    async fn client(self, c: u64, done: Rc<std::cell::Cell<bool>>) -> Vec<String> {
        let n = self.w.borrow().nodes.len();
        let swaps = self.w.borrow().mix.swaps;
        let mut clerk = Clerk::new(
            with_rng(|r| r.next_u64()),
            (0..n as u64).collect(),
            c as usize,
        );
        let mut acked = Vec::new();
        // The value last seen in each shared key (`None`: unset).
        let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut j = 0;
        while !done.get() {
            if swaps && with_rng(|r| r.chance(1, 3)) {
                self.shared_write(&mut clerk, c, j, &mut seen).await;
                j += 1;
            } else if with_rng(|r| r.chance(1, 2)) {
                let v = format!("{c}.{j};");
                let key = format!("k{c}");
                let append = Op::Append {
                    key,
                    value: v.clone(),
                };
                self.record(&mut clerk, c, append).await;
                acked.push(v);
                j += 1;
            } else {
                let k = with_rng(|r| r.below(4));
                self.record_get(&mut clerk, c, format!("k{k}")).await;
            }
        }
        acked
    }

    /// One write of a random shared key by client `c` (its `j`th
    /// operation): half the time a compare-and-swap from the value it last
    /// saw there to a value of its own, otherwise a delete, a put or a get.
    /// What the answer shows of the key goes into `seen`.
    async fn shared_write(
        &self,
        clerk: &mut Clerk,
        c: u64,
        j: u64,
        seen: &mut BTreeMap<String, Option<String>>,
    ) {
        let key = SHARED_KEYS[with_rng(|r| r.below(SHARED_KEYS.len() as u64)) as usize];
        let last = seen.entry(key.to_string()).or_default();
        let value = format!("{c}.{j}");
        let op = match with_rng(|r| r.below(6)) {
            0..=2 => Op::CompareAndSwap {
                key: key.to_string(),
                expected: last.clone(),
                value: value.clone(),
            },
            3 => Op::Delete {
                key: key.to_string(),
            },
            4 => Op::Put {
                key: key.to_string(),
                value: value.clone(),
            },
            _ => Op::Get {
                key: key.to_string(),
            },
        };
        // A Get cannot tell unset from "", but no client writes "".
        *last = match self.record(clerk, c, op).await {
            Outcome::Swapped | Outcome::Done => Some(value),
            Outcome::NotSwapped { current } => current,
            Outcome::Deleted { .. } => None,
            Outcome::Value(v) => Some(v).filter(|v| !v.is_empty()),
            Outcome::SessionExpired => unreachable!("record panics first"),
        };
    }

    // ----- end checks -----------------------------------------------------------

    /// Waits for one leader of the highest term whose configuration's
    /// members (voters and learners) all run and have applied the same
    /// state as it. Servers outside that configuration (removed ones that
    /// keep running) are not waited for.
    async fn check_converged(&self, healed_at: Instant) {
        loop {
            let (ok, detail) = {
                let w = self.w.borrow();
                let running = || w.nodes.iter().flatten().map(|n| n.server.raft());
                let max_term = running().map(|r| r.term()).max().unwrap_or(0);
                let leaders: Vec<&raft_core::RaftNode> = running()
                    .filter(|r| r.is_leader() && r.term() == max_term)
                    .collect();
                match leaders.as_slice() {
                    [leader] => {
                        let members = leader.membership().members();
                        let nodes: Vec<Option<&Node>> = members
                            .iter()
                            .map(|&m| w.nodes[m as usize].as_ref())
                            .collect();
                        let applied: Vec<Option<Index>> = nodes
                            .iter()
                            .map(|n| n.map(|n| n.server.raft().last_applied()))
                            .collect();
                        let stores: Vec<Option<Vec<u8>>> = nodes
                            .iter()
                            .map(|n| n.map(|n| n.server.store().snapshot()))
                            .collect();
                        let same = applied.iter().all(|a| a.is_some())
                            && applied.windows(2).all(|p| p[0] == p[1])
                            && stores.windows(2).all(|p| p[0] == p[1]);
                        (
                            same,
                            format!(
                                "leader {} of {}, applied {applied:?}",
                                leader.id(),
                                leader.membership()
                            ),
                        )
                    }
                    _ => (false, format!("{} leaders", leaders.len())),
                }
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
            let v = self.record_get(&mut clerk, 99, format!("k{c}")).await;
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

    /// Once the cluster has converged, a sessionless read of every key is
    /// served (each way the seed asks for them), each within 20 election
    /// timeouts. (A read starts at a random id, which may be down or
    /// retired: then it tries another.)
    async fn check_reads_served(&self) {
        let lease = self.w.borrow().mix.reads == ReadSetup::Lease;
        let mut ways = vec![ReadConsistency::Linearizable];
        if lease {
            ways.push(ReadConsistency::Lease);
        }
        for k in 0..4 {
            for &consistency in &ways {
                let key = format!("k{k}");
                let started = now();
                while !self.sessionless_read(FINAL_READER, &key, consistency).await {
                    assert!(
                        now() - started <= LIVENESS_LIMIT,
                        "liveness: no {consistency:?} read of {key:?} served within 20 election timeouts of a converged cluster\n{}",
                        self.status()
                    );
                }
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
                output: out.clone(),
            })
            .collect();
        match check(&KvModel, &ops, Duration::from_secs(10)) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(v) => {
                // The partition's operations, by call time (clients from
                // READER_BASE are sessionless readers, FINAL_READER the
                // final reads, 99 the final check's clerk).
                let mut listed: Vec<usize> = (0..v.ops.len()).collect();
                listed.sort_by_key(|&i| (v.ops[i].call, i));
                let lines: Vec<String> = listed
                    .iter()
                    .map(|&i| {
                        let o = &v.ops[i];
                        format!(
                            "  [{:.6} s, {:.6} s] client {} {}",
                            o.call as f64 / 1e9,
                            o.ret as f64 / 1e9,
                            o.client,
                            KvModel.describe_operation(&o.input, &o.output)
                        )
                    })
                    .collect();
                panic!(
                    "linearizability: the history of {} operations is not-linearizable\n{}\n{}",
                    ops.len(),
                    v.describe(&KvModel),
                    lines.join("\n")
                )
            }
            other => panic!(
                "linearizability: the history of {} operations is {}",
                ops.len(),
                other.name()
            ),
        }
    }
}
