//! Load generator for comparing our KV cluster (driver-tokio's `rkv`) with
//! etcd, driven by `scripts/bench-vs-etcd`.
//!
//! Subcommands:
//! * `run`     — for each client count N: connect N logical clients, let
//!   each do sequential operations (one outstanding) of the chosen workload
//!   (`put`, `read` or `mixed90`) for a warm-up then a measured window, and
//!   append one CSV row (ops/s, latency percentiles, per-kind percentiles,
//!   CPU use) per N.
//! * `preload` — write every key of the keyspace once, so that reads find
//!   values (run before `run --workload read|mixed90`).
//! * `wait`    — block until a cluster answers (etcd: every member reports
//!   the same leader and a put succeeds; ours: a put succeeds).
//! * `report`  — turn the put CSV into a markdown table and an SVG plot.
//! * `report-reads` — turn the read-matrix CSV into `reads.md` (medians over
//!   repetitions, etcd at its best client model per point, the issue 13
//!   targets hit or missed) and one SVG per workload.
//!
//! The same measuring loop drives both systems through the [`Target`] trait.

mod cpu;
mod floor;
mod open_report;
mod reads_report;
mod report;
mod svg;
mod targets;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// One system under test. `client` is the logical client's index in
/// `0..N`; each logical client issues one request at a time.
pub trait Target: Send + Sync + 'static {
    fn put(
        &self,
        client: usize,
        key: String,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads `key`; `Ok(true)` if it had a value.
    fn get(
        &self,
        client: usize,
        key: String,
        consistency: Consistency,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// What each logical client does, one operation at a time.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Puts only.
    Put,
    /// Gets only, of keys written by `preload`.
    Read,
    /// Each operation a Get with probability 9/10, else a Put (drawn from
    /// the client's seeded generator).
    Mixed90,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Read => "read",
            Workload::Mixed90 => "mixed90",
        }
    }
}

/// How a Get is served.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// ours: ReadIndex (`ReadConsistency::Linearizable`); etcd: a
    /// linearizable Range (etcd's default, itself ReadIndex).
    Linearizable,
    /// ours only: the leader's lease (`ReadConsistency::Lease`, needs
    /// `rkv serve --read-policy lease`); etcd has no counterpart.
    Lease,
    /// ours: the contacted server's applied state (`ReadConsistency::Local`);
    /// etcd: a serializable Range. Possibly stale in both.
    Local,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Local => "local",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    Etcd,
    Ours,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Ours => "ours",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyMode {
    /// Each put picks a uniformly random key out of `--keyspace` keys shared
    /// by all clients.
    Random,
    /// Client c writes its own keys c<c>-<seq % keyspace>, in sequence.
    PerClient,
}

impl KeyMode {
    fn name(self) -> &'static str {
        match self {
            KeyMode::Random => "random",
            KeyMode::PerClient => "per-client",
        }
    }
}

#[derive(Parser)]
#[command(about = "KV load generator: our rkv cluster vs etcd")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// System under test.
    #[arg(long)]
    target: System,
    /// Comma-separated host:port client addresses of all members.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Cluster id passed to our client (ignored for etcd).
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Ours only: connect over TLS, the servers' certificates checked
    /// against this CA (PEM) (servers run with `rkv serve --tls-*`).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure each client count and append rows to a CSV file.
    Run {
        #[command(flatten)]
        t: TargetArgs,
        /// Client counts to measure, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        /// Measured seconds per point.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Warm-up seconds per point (ops run, not recorded).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Value size in bytes (ASCII, so also a valid string for our API).
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        #[arg(long, value_enum, default_value_t = KeyMode::Random)]
        keys: KeyMode,
        /// Number of distinct keys (random mode: shared; per-client: per client).
        #[arg(long, default_value_t = 100_000)]
        keyspace: u64,
        /// Connections shared round-robin by the logical clients; 0 = one
        /// per logical client. etcd: that many etcd_client::Client instances
        /// (each a balanced gRPC channel to all endpoints), as etcd's
        /// `benchmark --conns`; ours: that many driver_tokio::SharedConns
        /// pools (each one connection per server), every logical client
        /// still its own session.
        #[arg(long, alias = "etcd-conns", default_value_t = 0)]
        conns: usize,
        /// Per-op timeout in seconds; a timed-out op counts as an error.
        #[arg(long, default_value_t = 10.0)]
        op_timeout: f64,
        #[arg(long, value_enum, default_value_t = Workload::Put)]
        workload: Workload,
        /// How Gets are served (read and mixed90 workloads).
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
        /// Seed of the clients' key and operation generators.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Repetition number, only recorded in the CSV (the report takes
        /// medians over repetitions).
        #[arg(long, default_value_t = 1)]
        rep: u32,
        /// Open loop: offer this many operations per second on a fixed
        /// schedule, the clients taking them in turn, each latency measured
        /// from when its operation was due (0: closed loop, each client
        /// sending its next operation when the last one is answered).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Server process ids whose CPU time over each measured window is
        /// recorded (comma-separated; optional).
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<u32>,
        /// CSV file to append rows to (header written if new or empty).
        #[arg(long)]
        csv: PathBuf,
    },
    /// Write every key k0000000000..k<keyspace-1> once (values as `run`
    /// writes them), so that reads return values.
    Preload {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 100_000)]
        keyspace: u64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        op_timeout: f64,
    },
    /// Measure what a put cannot go below here: a loopback hop, a
    /// thread handoff, a group commit's fdatasync (see `floor.rs`). Prints
    /// one `key=value` line on stdout.
    Floor {
        /// Where the fsyncs are measured (the data directories' disk).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Wait until the cluster serves writes.
    Wait {
        #[command(flatten)]
        t: TargetArgs,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Render results.csv into markdown and SVG.
    Report {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        md: PathBuf,
        #[arg(long)]
        svg: PathBuf,
        /// etcd version string, for the machine description.
        #[arg(long, default_value = "")]
        etcd_version: String,
        /// Extra lines for the "setup" section (repeatable).
        #[arg(long)]
        note: Vec<String>,
    },
    /// Render the open-loop CSV into open-loop.md and open-loop.svg.
    ReportOpen {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        md: PathBuf,
        #[arg(long)]
        svg: PathBuf,
        #[arg(long, default_value = "")]
        etcd_version: String,
        /// Extra lines for the "setup" section (repeatable).
        #[arg(long)]
        note: Vec<String>,
    },
    /// Render the read-matrix CSV into reads.md and one SVG per workload
    /// (`<svg-prefix>-<workload>.svg`).
    ReportReads {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        md: PathBuf,
        /// Path prefix of the SVG files.
        #[arg(long)]
        svg_prefix: PathBuf,
        #[arg(long, default_value = "")]
        etcd_version: String,
        /// Extra lines for the "setup" section (repeatable).
        #[arg(long)]
        note: Vec<String>,
    },
}

#[derive(Clone)]
struct RunCfg {
    seconds: Duration,
    warmup: Duration,
    keys: KeyMode,
    keyspace: u64,
    op_timeout: Duration,
    workload: Workload,
    consistency: Consistency,
    seed: u64,
    server_pids: Vec<u32>,
    /// Open loop: operations offered per second (0: closed loop).
    rate: f64,
}

/// The outcome of one (system, N) point.
pub struct Point {
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub first_error: Option<String>,
    pub gets: KindStats,
    pub puts: KindStats,
    /// Gets in the window that found no value (should be 0 after preload).
    pub get_empty: u64,
    pub cpu: cpu::WindowCpu,
    /// Open loop: operations intended in the window that had not completed
    /// by its end plus the grace period (counted in the latencies at that
    /// lower bound).
    pub unfinished: u64,
}

/// Count and percentiles of one operation kind.
#[derive(Clone, Copy, Debug)]
pub struct KindStats {
    pub ops: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl KindStats {
    fn of(sorted_us: &[u32]) -> Self {
        KindStats {
            ops: sorted_us.len() as u64,
            p50_ms: percentile(sorted_us, 0.50),
            p99_ms: percentile(sorted_us, 0.99),
        }
    }
}

/// xorshift64*: a tiny deterministic per-client key generator.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The key `run` and `preload` use for index `i` of a shared keyspace.
fn shared_key(i: u64) -> String {
    format!("k{i:010}")
}

/// Whether the next operation is a put, for `workload`.
fn next_is_put(workload: Workload, ops_rng: &mut Rng) -> bool {
    match workload {
        Workload::Put => true,
        Workload::Read => false,
        Workload::Mixed90 => ops_rng.next().is_multiple_of(10),
    }
}

/// A printable ASCII value of `len` bytes (varies per client, so no two
/// clients write byte-identical payloads; neither system compresses).
fn make_value(client: usize, len: usize) -> Vec<u8> {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = Rng::new(0xC0FFEE + client as u64);
    (0..len)
        .map(|_| ALPHA[(rng.next() % ALPHA.len() as u64) as usize])
        .collect()
}

fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    // Nearest-rank.
    let rank = (p * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
}

/// Run one point: N logical clients, each a task doing sequential
/// operations of `cfg.workload`. Ops that complete inside the measured
/// window count towards throughput and the latency distributions; each op's
/// latency is its own start-to-completion time.
async fn run_point<T: Target>(
    target: Arc<T>,
    n: usize,
    cfg: &RunCfg,
    value_size: usize,
) -> Result<Point> {
    let begin = Instant::now();
    let measure_start = begin + cfg.warmup;
    let end = measure_start + cfg.seconds;
    let cpu_task = tokio::spawn(cpu::sample_window(
        cfg.server_pids.clone(),
        measure_start,
        end,
    ));
    let mut set = tokio::task::JoinSet::new();
    for c in 0..n {
        let target = target.clone();
        let cfg = cfg.clone();
        let value = make_value(c, value_size);
        set.spawn(async move {
            let expected = 2000 * cfg.seconds.as_secs_f64().ceil() as usize;
            let mut get_us: Vec<u32> = Vec::new();
            let mut put_us: Vec<u32> = Vec::new();
            match cfg.workload {
                Workload::Put => put_us.reserve(expected.min(1 << 20)),
                _ => get_us.reserve(expected.min(1 << 20)),
            }
            let mut errors = 0u64;
            let mut get_empty = 0u64;
            let mut first_error = None;
            let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003) + c as u64 + 1);
            let mut ops_rng = Rng::new(cfg.seed.wrapping_mul(7_000_001) + c as u64 + 0x5EED);
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let key = match cfg.keys {
                    KeyMode::Random => shared_key(rng.next() % cfg.keyspace),
                    KeyMode::PerClient => format!("c{c:04}-{:010}", seq % cfg.keyspace),
                };
                seq += 1;
                let is_put = next_is_put(cfg.workload, &mut ops_rng);
                // The clients enforce op_timeout themselves; this outer bound
                // only guards against a hung client.
                let outer = cfg.op_timeout + Duration::from_secs(2);
                let r: Result<Result<bool>, _> = if is_put {
                    tokio::time::timeout(outer, async {
                        target.put(c, key, value.clone()).await.map(|()| true)
                    })
                    .await
                } else {
                    tokio::time::timeout(outer, target.get(c, key, cfg.consistency)).await
                };
                let t1 = Instant::now();
                let in_window = t1 >= measure_start && t1 <= end;
                let err = match r {
                    Ok(Ok(found)) => {
                        if in_window && !found {
                            get_empty += 1;
                        }
                        None
                    }
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some(format!("no answer within {outer:?} (outer bound)")),
                };
                match err {
                    None => {
                        if in_window {
                            let us = (t1 - t0).as_micros().min(u32::MAX as u128) as u32;
                            if is_put {
                                put_us.push(us);
                            } else {
                                get_us.push(us);
                            }
                        }
                    }
                    Some(e) => {
                        if in_window {
                            errors += 1;
                        }
                        first_error.get_or_insert(e);
                        // Don't spin on a failing cluster.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            Tally {
                get_us,
                put_us,
                errors,
                get_empty,
                unfinished: 0,
                first_error,
            }
        });
    }
    let mut tallies = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        tallies.push(r.context("client task panicked")?);
    }
    let cpu = cpu_task.await.context("cpu sampler panicked")?;
    Ok(point_from(tallies, cpu, cfg.seconds))
}

/// What one logical client's task measured in the window.
struct Tally {
    get_us: Vec<u32>,
    put_us: Vec<u32>,
    errors: u64,
    get_empty: u64,
    /// Open loop only: operations counted at their lower bound.
    unfinished: u64,
    first_error: Option<String>,
}

/// The point the clients' tallies make over a window of `seconds`.
fn point_from(tallies: Vec<Tally>, cpu: cpu::WindowCpu, seconds: Duration) -> Point {
    let mut gets: Vec<u32> = Vec::new();
    let mut puts: Vec<u32> = Vec::new();
    let (mut errors, mut get_empty, mut unfinished) = (0, 0, 0);
    let mut first_error = None;
    for t in tallies {
        gets.extend_from_slice(&t.get_us);
        puts.extend_from_slice(&t.put_us);
        errors += t.errors;
        get_empty += t.get_empty;
        unfinished += t.unfinished;
        if first_error.is_none() {
            first_error = t.first_error;
        }
    }
    gets.sort_unstable();
    puts.sort_unstable();
    let mut all = Vec::with_capacity(gets.len() + puts.len());
    all.extend_from_slice(&gets);
    all.extend_from_slice(&puts);
    all.sort_unstable();
    // Unfinished operations count in the latencies, not as done.
    let ops = all.len() as u64 - unfinished;
    let mean_ms = if all.is_empty() {
        f64::NAN
    } else {
        all.iter().map(|&u| u as f64).sum::<f64>() / all.len() as f64 / 1000.0
    };
    Point {
        ops,
        errors,
        ops_per_sec: ops as f64 / seconds.as_secs_f64(),
        mean_ms,
        p50_ms: percentile(&all, 0.50),
        p90_ms: percentile(&all, 0.90),
        p99_ms: percentile(&all, 0.99),
        p999_ms: percentile(&all, 0.999),
        max_ms: all.last().map_or(f64::NAN, |&u| u as f64 / 1000.0),
        first_error,
        gets: KindStats::of(&gets),
        puts: KindStats::of(&puts),
        get_empty,
        cpu,
        unfinished,
    }
}

/// One point, closed or open loop as `cfg.rate` says.
async fn point_of<T: Target>(
    target: Arc<T>,
    n: usize,
    cfg: &RunCfg,
    value_size: usize,
) -> Result<Point> {
    if cfg.rate > 0.0 {
        run_point_open(target, n, cfg, value_size).await
    } else {
        run_point(target, n, cfg, value_size).await
    }
}

/// How long after the window an open-loop point waits for the operations
/// still queued or in flight.
const OPEN_GRACE: Duration = Duration::from_secs(2);

/// One open-loop point: operations are offered at `cfg.rate` per second on
/// a fixed schedule (operation k is due at start + k / rate), whatever the
/// system does; `n` logical clients (sessions) take them in turn, one
/// outstanding each. An operation's latency runs from when it was due, not
/// from when a client got to send it, so a stall shows in the latencies of
/// every operation that waited behind it (no coordinated omission).
/// Operations due in the measured window count; one that has not completed
/// by the window's end plus [`OPEN_GRACE`] is `unfinished` and counted at
/// that lower bound.
async fn run_point_open<T: Target>(
    target: Arc<T>,
    n: usize,
    cfg: &RunCfg,
    value_size: usize,
) -> Result<Point> {
    let begin = Instant::now();
    let measure_start = begin + cfg.warmup;
    let end = measure_start + cfg.seconds;
    let give_up = end + OPEN_GRACE;
    let cpu_task = tokio::spawn(cpu::sample_window(
        cfg.server_pids.clone(),
        measure_start,
        end,
    ));
    let (tx, rx) = async_channel::unbounded::<(u64, Instant)>();
    let rate = cfg.rate;
    // The schedule: every millisecond, whatever has come due since.
    let dispatcher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut k = 0u64;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let due = ((now - begin).as_secs_f64() * rate) as u64;
            while k < due {
                let at = begin + Duration::from_secs_f64(k as f64 / rate);
                if at >= end {
                    return;
                }
                if tx.send((k, at)).await.is_err() {
                    return;
                }
                k += 1;
            }
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for c in 0..n {
        let target = target.clone();
        let cfg = cfg.clone();
        let rx = rx.clone();
        let value = make_value(c, value_size);
        set.spawn(async move {
            let mut get_us: Vec<u32> = Vec::new();
            let mut put_us: Vec<u32> = Vec::new();
            let (mut errors, mut get_empty, mut unfinished) = (0u64, 0u64, 0u64);
            let mut first_error = None;
            let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003) + c as u64 + 1);
            let mut ops_rng = Rng::new(cfg.seed.wrapping_mul(7_000_001) + c as u64 + 0x5EED);
            let lower_bound =
                |due: Instant| (give_up - due).as_micros().min(u32::MAX as u128) as u32;
            while let Ok((k, due)) = rx.recv().await {
                let counted = due >= measure_start;
                let is_put = next_is_put(cfg.workload, &mut ops_rng);
                let key = match cfg.keys {
                    KeyMode::Random => shared_key(rng.next() % cfg.keyspace),
                    KeyMode::PerClient => format!("c{c:04}-{:010}", k % cfg.keyspace),
                };
                if Instant::now() >= give_up {
                    // Still queued at the end: never sent.
                    if counted {
                        unfinished += 1;
                        if is_put {
                            put_us.push(lower_bound(due))
                        } else {
                            get_us.push(lower_bound(due))
                        }
                    }
                    continue;
                }
                let left = give_up.saturating_duration_since(Instant::now());
                let r = if is_put {
                    tokio::time::timeout(left, async {
                        target.put(c, key, value.clone()).await.map(|()| true)
                    })
                    .await
                } else {
                    tokio::time::timeout(left, target.get(c, key, cfg.consistency)).await
                };
                let done = Instant::now();
                let us = (done - due).as_micros().min(u32::MAX as u128) as u32;
                match r {
                    Ok(Ok(found)) => {
                        if counted {
                            get_empty += u64::from(!found);
                            if is_put {
                                put_us.push(us)
                            } else {
                                get_us.push(us)
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        if counted {
                            errors += 1;
                        }
                        first_error.get_or_insert(format!("{e:#}"));
                    }
                    Err(_) => {
                        if counted {
                            unfinished += 1;
                            if is_put {
                                put_us.push(lower_bound(due))
                            } else {
                                get_us.push(lower_bound(due))
                            }
                        }
                    }
                }
            }
            Tally {
                get_us,
                put_us,
                errors,
                get_empty,
                unfinished,
                first_error,
            }
        });
    }
    drop(rx);
    dispatcher.await.context("dispatcher panicked")?;
    let mut tallies = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        tallies.push(r.context("client task panicked")?);
    }
    let cpu = cpu_task.await.context("cpu sampler panicked")?;
    Ok(point_from(tallies, cpu, cfg.seconds))
}

/// Writes keys `shared_key(0..keyspace)` once each with `concurrency`
/// concurrent writers.
async fn preload<T: Target>(
    target: Arc<T>,
    concurrency: usize,
    keyspace: u64,
    value_size: usize,
) -> Result<()> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let target = target.clone();
        let value = make_value(c, value_size);
        set.spawn(async move {
            let mut i = c as u64;
            while i < keyspace {
                let mut tries = 0;
                loop {
                    match target.put(c, shared_key(i), value.clone()).await {
                        Ok(()) => break,
                        Err(e) if tries < 5 => {
                            tries += 1;
                            eprintln!("preload: put {} failed ({e:#}); retrying", shared_key(i));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.context(format!("preload put {}", shared_key(i)))),
                    }
                }
                i += concurrency as u64;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("preload task panicked")??;
    }
    eprintln!(
        "preloaded {keyspace} keys ({value_size}-byte values) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub const CSV_HEADER: &str = "target,clients,seconds,warmup_s,value_size,keys,etcd_conns,ops,errors,ops_per_sec,mean_ms,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,workload,consistency,rep,get_ops,get_p50_ms,get_p99_ms,put_ops,put_p50_ms,put_p99_ms,get_empty,gen_cpu,server_cpu,other_cpu,offered_rate,unfinished";

#[allow(clippy::too_many_arguments)]
async fn run(
    t: TargetArgs,
    clients: Vec<usize>,
    cfg: RunCfg,
    value_size: usize,
    etcd_conns: usize,
    rep: u32,
    csv: PathBuf,
) -> Result<()> {
    use std::io::Write;
    if clients.is_empty() || clients.contains(&0) {
        bail!("--clients must be a non-empty list of positive counts");
    }
    if cfg.keyspace == 0 {
        bail!("--keyspace must be positive");
    }
    if cfg.workload != Workload::Put && cfg.keys != KeyMode::Random {
        bail!(
            "--workload {} reads the preloaded shared keyspace: use --keys random",
            cfg.workload.name()
        );
    }
    if t.target == System::Etcd
        && cfg.consistency == Consistency::Lease
        && cfg.workload != Workload::Put
    {
        bail!("etcd has no lease read (its linearizable Range is ReadIndex): use --consistency linearizable or local");
    }
    let need_header = std::fs::metadata(&csv)
        .map(|m| m.len() == 0)
        .unwrap_or(true);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&csv)
        .with_context(|| format!("opening {}", csv.display()))?;
    if need_header {
        writeln!(out, "{CSV_HEADER}")?;
    }
    for &n in &clients {
        let t_connect = Instant::now();
        let (point, connect_secs) = match t.target {
            System::Etcd => {
                let target =
                    targets::EtcdTarget::connect(&t.endpoints, n, etcd_conns, cfg.op_timeout)
                        .await?;
                let connect_secs = t_connect.elapsed().as_secs_f64();
                (
                    point_of(Arc::new(target), n, &cfg, value_size).await?,
                    connect_secs,
                )
            }
            System::Ours => {
                #[cfg(feature = "ours")]
                {
                    let target = targets::OursTarget::connect(
                        &t.endpoints,
                        t.cluster_id,
                        t.tls_ca.as_deref(),
                        n,
                        etcd_conns,
                        cfg.op_timeout,
                    )
                    .await?;
                    let connect_secs = t_connect.elapsed().as_secs_f64();
                    (
                        point_of(Arc::new(target), n, &cfg, value_size).await?,
                        connect_secs,
                    )
                }
                #[cfg(not(feature = "ours"))]
                bail!("built without the `ours` feature; rebuild with default features")
            }
        };
        let consistency = match cfg.workload {
            Workload::Put => "-",
            _ => cfg.consistency.name(),
        };
        eprintln!(
            "{:>4} {:<7} {:<12} conns={:<4} clients={:<4} {}ops/s={:>9.1}  p50={:>8.3} ms  p99={:>8.3} ms  p99.9={:>8.3} ms  max={:>8.3} ms  errors={} {}empty={}  cpu gen/srv/other={:.2}/{:.2}/{:.2}  (connect {:.2} s)",
            t.target.name(),
            cfg.workload.name(),
            consistency,
            etcd_conns,
            n,
            if cfg.rate > 0.0 { format!("offered={:.0}/s ", cfg.rate) } else { String::new() },
            point.ops_per_sec,
            point.p50_ms,
            point.p99_ms,
            point.p999_ms,
            point.max_ms,
            point.errors,
            if cfg.rate > 0.0 { format!("unfinished={} ", point.unfinished) } else { String::new() },
            point.get_empty,
            point.cpu.gen_cores,
            point.cpu.server_cores,
            point.cpu.other_cores,
            connect_secs,
        );
        if let Some(e) = &point.first_error {
            eprintln!("      first error: {e}");
        }
        let conns = if etcd_conns == 0 {
            n
        } else {
            etcd_conns.min(n)
        };
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{:.3},{:.3},{},{:.3},{:.3},{},{:.3},{:.3},{:.3},{},{}",
            t.target.name(),
            n,
            cfg.seconds.as_secs_f64(),
            cfg.warmup.as_secs_f64(),
            value_size,
            cfg.keys.name(),
            conns,
            point.ops,
            point.errors,
            point.ops_per_sec,
            point.mean_ms,
            point.p50_ms,
            point.p90_ms,
            point.p99_ms,
            point.p999_ms,
            point.max_ms,
            cfg.workload.name(),
            consistency,
            rep,
            point.gets.ops,
            point.gets.p50_ms,
            point.gets.p99_ms,
            point.puts.ops,
            point.puts.p50_ms,
            point.puts.p99_ms,
            point.get_empty,
            point.cpu.gen_cores,
            point.cpu.server_cores,
            point.cpu.other_cores,
            cfg.rate,
            point.unfinished,
        )?;
        out.flush()?;
        if point.ops == 0 {
            bail!(
                "{} with {n} clients completed no operation{}",
                t.target.name(),
                point
                    .first_error
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn wait(t: TargetArgs, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = match t.target {
            System::Etcd => targets::etcd_ready(&t.endpoints).await,
            System::Ours => {
                #[cfg(feature = "ours")]
                {
                    targets::ours_ready(&t.endpoints, t.cluster_id, t.tls_ca.as_deref()).await
                }
                #[cfg(not(feature = "ours"))]
                bail!("built without the `ours` feature; rebuild with default features")
            }
        };
        let last_err = match attempt {
            Ok(()) => {
                eprintln!(
                    "{} cluster at {} is ready",
                    t.target.name(),
                    t.endpoints.join(",")
                );
                return Ok(());
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} cluster not ready after {:?}: {last_err}",
                t.target.name(),
                timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            t,
            clients,
            seconds,
            warmup,
            value_size,
            keys,
            keyspace,
            conns: etcd_conns,
            op_timeout,
            workload,
            consistency,
            seed,
            rep,
            rate,
            server_pids,
            csv,
        } => {
            let cfg = RunCfg {
                seconds: Duration::from_secs_f64(seconds),
                warmup: Duration::from_secs_f64(warmup),
                keys,
                keyspace,
                op_timeout: Duration::from_secs_f64(op_timeout),
                workload,
                consistency,
                seed,
                server_pids,
                rate,
            };
            if cfg.seconds.is_zero() {
                bail!("--seconds must be positive");
            }
            run(t, clients, cfg, value_size, etcd_conns, rep, csv).await
        }
        Cmd::Preload {
            t,
            keyspace,
            value_size,
            concurrency,
            op_timeout,
        } => {
            if concurrency == 0 || keyspace == 0 {
                bail!("--concurrency and --keyspace must be positive");
            }
            let op_timeout = Duration::from_secs_f64(op_timeout);
            match t.target {
                System::Etcd => {
                    let target =
                        targets::EtcdTarget::connect(&t.endpoints, concurrency, 0, op_timeout)
                            .await?;
                    preload(Arc::new(target), concurrency, keyspace, value_size).await
                }
                System::Ours => {
                    #[cfg(feature = "ours")]
                    {
                        let target = targets::OursTarget::connect(
                            &t.endpoints,
                            t.cluster_id,
                            t.tls_ca.as_deref(),
                            concurrency,
                            0,
                            op_timeout,
                        )
                        .await?;
                        preload(Arc::new(target), concurrency, keyspace, value_size).await
                    }
                    #[cfg(not(feature = "ours"))]
                    bail!("built without the `ours` feature; rebuild with default features")
                }
            }
        }
        Cmd::Wait { t, timeout } => wait(t, Duration::from_secs_f64(timeout)).await,
        Cmd::Floor { dir } => tokio::task::spawn_blocking(move || floor::floor(&dir))
            .await
            .context("floor panicked")?,
        Cmd::Report {
            csv,
            md,
            svg,
            etcd_version,
            note,
        } => report::report(&csv, &md, &svg, &etcd_version, &note),
        Cmd::ReportOpen {
            csv,
            md,
            svg,
            etcd_version,
            note,
        } => open_report::report(&csv, &md, &svg, &etcd_version, &note),
        Cmd::ReportReads {
            csv,
            md,
            svg_prefix,
            etcd_version,
            note,
        } => reads_report::report(&csv, &md, &svg_prefix, &etcd_version, &note),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7000], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn mixed90_is_about_one_put_in_ten_and_seeded() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let draws: Vec<bool> = (0..10_000)
            .map(|_| next_is_put(Workload::Mixed90, &mut a))
            .collect();
        let again: Vec<bool> = (0..10_000)
            .map(|_| next_is_put(Workload::Mixed90, &mut b))
            .collect();
        assert_eq!(draws, again);
        let puts = draws.iter().filter(|p| **p).count();
        assert!((900..1100).contains(&puts), "{puts} puts in 10 000");
        assert!(!next_is_put(Workload::Read, &mut a));
        assert!(next_is_put(Workload::Put, &mut a));
    }

    #[test]
    fn values_are_ascii_of_requested_length() {
        let v = make_value(3, 256);
        assert_eq!(v.len(), 256);
        assert!(std::str::from_utf8(&v).is_ok());
        assert!(v.iter().all(|b| b.is_ascii_alphanumeric()));
    }
}
