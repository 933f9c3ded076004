//! Prometheus metrics: what a node counts, and the `GET /metrics` endpoint
//! (`rkv serve --metrics-addr`, [`http`]). The exposition format is
//! `prometheus-client`'s (OpenMetrics text); the names and meanings are in
//! the README's "Metrics" section.
//!
//! Two kinds of figure:
//!
//! - **Counted where it happens**, by one-line hooks: replies to clients,
//!   AppendEntries sent, leaders seen (the event loop); group commits and
//!   snapshots (the storage thread); links and client connections (the
//!   transport). These are atomics only: no lock and no allocation on the
//!   put path.
//! - **Read at scrape time**: role, term, the indexes and the leader's
//!   per-peer match index come from the event loop's answer to the same
//!   `Status` request `rkv status` sends ([`Metrics::record_status`]), so
//!   between scrapes the loop does no work for them.
//!
//! One [`Metrics`] per node, shared (`Arc`) by its tasks and threads. It
//! exists whether or not the endpoint is served: the hooks cost a few
//! relaxed atomic additions either way.

pub mod http;
pub mod scrape;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::{Outcome, Reply};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use raft_core::{Message, NodeId, Persist, RaftNode};
use raft_storage::{Committed, Storage, StorageError};

use crate::wire::NodeStatus;

/// What kind of client request a reply answers, for counting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A command (Put, Append, or a Get sent as a command).
    Proposal,
    /// A read without a session ([`crate::wire::ClientRequest::Read`]).
    Read,
    /// An administrative request (not counted).
    Admin,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: NodeId,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// The roles as [`NodeStatus::role`] names them, each a `rkv_role` series.
const ROLES: [&str; 4] = ["leader", "follower", "candidate", "pre-candidate"];

/// One counter per outcome of a kind of request, created up front so that
/// counting is one atomic addition.
#[derive(Debug)]
struct Outcomes {
    ok: Counter,
    wrong_leader: Counter,
    session_expired: Counter,
}

impl Outcomes {
    fn new(family: &Family<OutcomeLabel, Counter>) -> Self {
        let counter = |outcome| family.get_or_create_owned(&OutcomeLabel { outcome });
        Outcomes {
            ok: counter("ok"),
            wrong_leader: counter("wrong_leader"),
            session_expired: counter("session_expired"),
        }
    }

    fn count(&self, reply: &Reply) {
        match reply {
            Reply::Applied(Outcome::SessionExpired) => self.session_expired.inc(),
            Reply::Applied(_) | Reply::Admin(_) => self.ok.inc(),
            Reply::WrongLeader { .. } => self.wrong_leader.inc(),
        };
    }
}

/// A histogram over whole numbers in a base unit (nanoseconds, entries,
/// bytes) with fixed buckets, kept in atomics: observing is a bucket
/// search and two additions, never a lock. Encoded divided by `per_unit`
/// (1e9 turns nanoseconds into seconds).
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in the base unit, increasing; a last bucket, `+Inf`,
    /// follows them.
    bounds: &'static [u64],
    /// Per bucket (not cumulative), `bounds.len() + 1` of them.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    per_unit: f64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (increasing, in the base unit).
    pub fn new(bounds: &'static [u64], per_unit: f64) -> Self {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds must increase"
        );
        AtomicHistogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            per_unit,
        }))
    }

    /// Counts one value.
    pub fn observe(&self, value: u64) {
        let h = &self.0;
        let bucket = h.bounds.partition_point(|&b| b < value);
        h.counts[bucket].fetch_add(1, Ordering::Relaxed);
        h.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts one duration, in nanoseconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let h = &self.0;
        // The count is the buckets' total as read, so `_count` always equals
        // the `+Inf` bucket even while observations race the scrape.
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .map(|&b| b as f64 / h.per_unit)
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = h.sum.load(Ordering::Relaxed) as f64 / h.per_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Seconds buckets for the storage thread's commits, in nanoseconds: 20 µs
/// (a fast fdatasync) to 1 s.
const COMMIT_NANOS: &[u64] = &[
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// Seconds buckets for snapshot writes, in nanoseconds: 1 ms to 30 s.
const SNAPSHOT_NANOS: &[u64] = &[
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    30_000_000_000,
];

/// Entries per batch: 0 (a heartbeat, or a commit of only a hard state) up
/// to the largest AppendEntries and group commits.
const ENTRY_COUNTS: &[u64] = &[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    leader_changes: Counter,
    /// The latest term in which a leader was known (one leader per term,
    /// so a new such term is a new leader).
    leader_term: AtomicU64,
    proposals: Outcomes,
    reads: Outcomes,
    append_entries_sent: AtomicHistogram,
    commit_entries: AtomicHistogram,
    commit_seconds: AtomicHistogram,
    snapshot_seconds: AtomicHistogram,
    snapshot_bytes: Gauge<u64, AtomicU64>,
    client_connections: Gauge,
    links: Family<PeerLabel, Gauge>,
    role: Family<RoleLabel, Gauge>,
    term: Gauge<u64, AtomicU64>,
    commit_index: Gauge<u64, AtomicU64>,
    applied_index: Gauge<u64, AtomicU64>,
    last_index: Gauge<u64, AtomicU64>,
    snapshot_index: Gauge<u64, AtomicU64>,
    match_index: Family<PeerLabel, Gauge<u64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `rkv_` prefix.
    pub fn new() -> Self {
        let proposals = Family::<OutcomeLabel, Counter>::default();
        let reads = Family::<OutcomeLabel, Counter>::default();
        let mut m = Metrics {
            registry: Registry::with_prefix("rkv"),
            leader_changes: Counter::default(),
            leader_term: AtomicU64::new(0),
            proposals: Outcomes::new(&proposals),
            reads: Outcomes::new(&reads),
            append_entries_sent: AtomicHistogram::new(ENTRY_COUNTS, 1.0),
            commit_entries: AtomicHistogram::new(ENTRY_COUNTS, 1.0),
            commit_seconds: AtomicHistogram::new(COMMIT_NANOS, 1e9),
            snapshot_seconds: AtomicHistogram::new(SNAPSHOT_NANOS, 1e9),
            snapshot_bytes: Gauge::default(),
            client_connections: Gauge::default(),
            links: Family::default(),
            role: Family::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            match_index: Family::default(),
        };
        for role in ROLES {
            let _ = m.role.get_or_create_owned(&RoleLabel { role });
        }
        let r = &mut m.registry;
        r.register(
            "role",
            "1 for this node's current Raft role, 0 for the others",
            m.role.clone(),
        );
        r.register("term", "The current Raft term", m.term.clone());
        r.register(
            "leader_changes",
            "Leaders this node has learned of (itself included): terms in which it knew a leader",
            m.leader_changes.clone(),
        );
        r.register(
            "commit_index",
            "The highest log index known committed",
            m.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "The highest log index applied to the store",
            m.applied_index.clone(),
        );
        r.register("last_index", "The last log index", m.last_index.clone());
        r.register(
            "snapshot_index",
            "Where the latest snapshot ends",
            m.snapshot_index.clone(),
        );
        r.register(
            "proposals",
            "Client commands answered, by outcome (ok, wrong_leader, session_expired)",
            proposals,
        );
        r.register(
            "reads",
            "Session-less client reads answered, by outcome (ok, wrong_leader)",
            reads,
        );
        r.register(
            "append_entries_sent_entries",
            "Log entries per AppendEntries message sent (0: a heartbeat)",
            m.append_entries_sent.clone(),
        );
        r.register(
            "storage_commit_entries",
            "Log entries written per group commit of the storage thread",
            m.commit_entries.clone(),
        );
        r.register_with_unit(
            "storage_commit",
            "Duration of one group commit: append the waiting writes, one fdatasync",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register_with_unit(
            "snapshot_write",
            "Time to make a snapshot durable: encoding and fsyncing one taken here (the writer thread), or restoring one installed from the leader",
            Unit::Seconds,
            m.snapshot_seconds.clone(),
        );
        r.register_with_unit(
            "snapshot",
            "Size of the latest snapshot written",
            Unit::Bytes,
            m.snapshot_bytes.clone(),
        );
        r.register(
            "peer_match_index",
            "On the leader: the highest log index known replicated on each peer",
            m.match_index.clone(),
        );
        r.register(
            "peer_connected",
            "1 while the outgoing connection to the peer is up, 0 while it is redialled",
            m.links.clone(),
        );
        r.register(
            "client_connections",
            "Client connections open",
            m.client_connections.clone(),
        );
        m
    }

    /// The exposition: every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// After every step of the event loop: counts a leader in a new term.
    pub fn observe_leader(&self, raft: &RaftNode) {
        let term = raft.term();
        if raft.leader_hint().is_some() && term > self.leader_term.load(Ordering::Relaxed) {
            self.leader_term.store(term, Ordering::Relaxed);
            self.leader_changes.inc();
        }
    }

    /// Every message the event loop sends to a peer.
    pub fn message_sent(&self, message: &Message) {
        if let Message::AppendEntries(append) = message {
            self.append_entries_sent
                .observe(append.entries.len() as u64);
        }
    }

    /// Every reply to a client request of kind `request`.
    pub fn replied(&self, request: Request, reply: &Reply) {
        match request {
            Request::Proposal => self.proposals.count(reply),
            Request::Read => self.reads.count(reply),
            Request::Admin => {}
        }
    }

    /// The storage thread's group commit of `batch`, timed: its duration
    /// and its entries.
    pub fn commit(
        &self,
        storage: &mut Storage,
        batch: Vec<Persist>,
    ) -> Result<Option<Committed>, StorageError> {
        let entries: usize = batch.iter().map(|p| p.entries.len()).sum();
        let started = Instant::now();
        let result = storage.commit(batch);
        self.commit_seconds.observe_duration(started.elapsed());
        self.commit_entries.observe(entries as u64);
        result
    }

    /// A snapshot of `bytes` was made durable in `elapsed`: one this node
    /// took (encoded and fsynced by the writer thread), or one it installed
    /// from its leader (restored from the received file).
    pub fn snapshot_written(&self, elapsed: Duration, bytes: u64) {
        self.snapshot_seconds.observe_duration(elapsed);
        self.snapshot_bytes.set(bytes);
    }

    /// The gauge an outgoing link to `peer` keeps (1 connected, 0 not);
    /// dropping the returned guard (with the link) removes the series.
    pub fn link(self: &Arc<Self>, peer: NodeId) -> LinkMetric {
        let gauge = self.links.get_or_create_owned(&PeerLabel { peer });
        gauge.set(0);
        LinkMetric {
            metrics: Arc::clone(self),
            peer,
            gauge,
        }
    }

    /// The gauge of open client connections, for the client listener
    /// ([`ClientConnection`]).
    pub fn client_connections(&self) -> Gauge {
        self.client_connections.clone()
    }

    /// The node's state as its status answer gives it, at scrape time.
    pub fn record_status(&self, status: &NodeStatus) {
        for role in ROLES {
            let on = i64::from(status.role == role);
            self.role.get_or_create(&RoleLabel { role }).set(on);
        }
        self.term.set(status.term);
        self.commit_index.set(status.commit_index);
        self.applied_index.set(status.last_applied);
        self.last_index.set(status.last_index);
        self.snapshot_index.set(status.snapshot_index);
        // Only a leader's answer carries match indices; a follower's clears
        // them, so a deposed leader's stale view does not linger.
        self.match_index.clear();
        for m in &status.members.members {
            if let (true, Some(index)) = (m.id != status.node_id, m.match_index) {
                self.match_index
                    .get_or_create(&PeerLabel { peer: m.id })
                    .set(index);
            }
        }
    }
}

/// The connection state of one outgoing link, removed from the exposition
/// when the link is dropped.
#[derive(Debug)]
pub struct LinkMetric {
    metrics: Arc<Metrics>,
    peer: NodeId,
    gauge: Gauge,
}

impl LinkMetric {
    /// The gauge the link's dialling task sets.
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }
}

impl Drop for LinkMetric {
    fn drop(&mut self) {
        self.metrics.links.remove(&PeerLabel { peer: self.peer });
    }
}

/// Counts one open client connection while it lives.
#[derive(Debug)]
pub struct ClientConnection(Gauge);

impl ClientConnection {
    /// A connection opened: counted until dropped.
    pub fn open(gauge: &Gauge) -> Self {
        gauge.inc();
        ClientConnection(gauge.clone())
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::scrape::Scrape;
    use super::*;
    use kv_core::{MemberInfo, MemberList, MemberRole};
    use raft_core::{AppendEntries, Entry};

    fn status(node_id: u64, role: &str, matches: &[(u64, Option<u64>)]) -> NodeStatus {
        NodeStatus {
            node_id,
            term: 7,
            role: role.to_string(),
            leader: Some(node_id),
            commit_index: 41,
            last_applied: 40,
            last_index: 42,
            read_policy: "read-index".into(),
            follower_reads: false,
            snapshot_index: 30,
            members: MemberList {
                from: node_id,
                term: 7,
                leader: Some(node_id),
                commit_index: 41,
                committed: true,
                members: matches
                    .iter()
                    .map(|&(id, match_index)| MemberInfo {
                        id,
                        role: MemberRole::Voter,
                        addrs: None,
                        match_index,
                    })
                    .collect(),
            },
            peers: Default::default(),
        }
    }

    fn append(entries: usize) -> Message {
        Message::AppendEntries(AppendEntries {
            term: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: (1..=entries as u64)
                .map(|index| Entry::new(index, 1, Vec::new()))
                .collect(),
            leader_commit: 0,
        })
    }

    fn scrape(m: &Metrics) -> Scrape {
        let text = m.encode();
        Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_exposition_parses_and_carries_every_figure() {
        let m = Arc::new(Metrics::new());
        m.replied(Request::Proposal, &Reply::Applied(Outcome::Done));
        m.replied(Request::Proposal, &Reply::Applied(Outcome::Done));
        m.replied(Request::Proposal, &Reply::WrongLeader { leader_hint: None });
        m.replied(Request::Read, &Reply::Applied(Outcome::Value("v".into())));
        m.replied(Request::Read, &Reply::Applied(Outcome::SessionExpired));
        m.message_sent(&append(0));
        m.message_sent(&append(3));
        m.message_sent(&Message::TimeoutNow { term: 1 });
        m.commit_seconds
            .observe_duration(Duration::from_micros(150));
        m.commit_entries.observe(5);
        m.snapshot_written(Duration::from_millis(3), 1234);
        let link = m.link(2);
        link.gauge().set(1);
        let _other = m.link(3);
        let open = ClientConnection::open(&m.client_connections());
        let _open2 = ClientConnection::open(&m.client_connections());
        drop(open);
        m.record_status(&status(
            1,
            "leader",
            &[(1, Some(42)), (2, Some(42)), (3, Some(17))],
        ));

        let s = scrape(&m);
        assert_eq!(s.value("rkv_role", &[("role", "leader")]), Some(1.0));
        assert_eq!(s.value("rkv_role", &[("role", "follower")]), Some(0.0));
        assert_eq!(s.value("rkv_term", &[]), Some(7.0));
        assert_eq!(s.value("rkv_commit_index", &[]), Some(41.0));
        assert_eq!(s.value("rkv_applied_index", &[]), Some(40.0));
        assert_eq!(s.value("rkv_last_index", &[]), Some(42.0));
        assert_eq!(s.value("rkv_snapshot_index", &[]), Some(30.0));
        let ok = [("outcome", "ok")];
        assert_eq!(s.value("rkv_proposals_total", &ok), Some(2.0));
        let wrong = [("outcome", "wrong_leader")];
        assert_eq!(s.value("rkv_proposals_total", &wrong), Some(1.0));
        assert_eq!(s.value("rkv_reads_total", &ok), Some(1.0));
        let expired = [("outcome", "session_expired")];
        assert_eq!(s.value("rkv_reads_total", &expired), Some(1.0));
        let sent = "rkv_append_entries_sent_entries";
        assert_eq!(s.value(&format!("{sent}_count"), &[]), Some(2.0));
        assert_eq!(s.value(&format!("{sent}_sum"), &[]), Some(3.0));
        assert_eq!(
            s.value(&format!("{sent}_bucket"), &[("le", "0.0")]),
            Some(1.0)
        );
        assert_eq!(
            s.value(&format!("{sent}_bucket"), &[("le", "2.0")]),
            Some(1.0)
        );
        assert_eq!(
            s.value(&format!("{sent}_bucket"), &[("le", "4.0")]),
            Some(2.0)
        );
        let commit = "rkv_storage_commit_seconds";
        assert_eq!(s.value(&format!("{commit}_count"), &[]), Some(1.0));
        let sum = s.value(&format!("{commit}_sum"), &[]).unwrap();
        assert!((sum - 150e-6).abs() < 1e-12, "{sum}");
        assert_eq!(
            s.value(&format!("{commit}_bucket"), &[("le", "0.0001")]),
            Some(0.0)
        );
        assert_eq!(
            s.value(&format!("{commit}_bucket"), &[("le", "0.0002")]),
            Some(1.0)
        );
        assert_eq!(s.value("rkv_storage_commit_entries_sum", &[]), Some(5.0));
        assert_eq!(s.value("rkv_snapshot_write_seconds_count", &[]), Some(1.0));
        assert_eq!(s.value("rkv_snapshot_bytes", &[]), Some(1234.0));
        assert_eq!(s.value("rkv_peer_connected", &[("peer", "2")]), Some(1.0));
        assert_eq!(s.value("rkv_peer_connected", &[("peer", "3")]), Some(0.0));
        assert_eq!(
            s.value("rkv_peer_match_index", &[("peer", "2")]),
            Some(42.0)
        );
        assert_eq!(
            s.value("rkv_peer_match_index", &[("peer", "3")]),
            Some(17.0)
        );
        assert_eq!(s.value("rkv_peer_match_index", &[("peer", "1")]), None);
        assert_eq!(s.value("rkv_client_connections", &[]), Some(1.0));
        assert_eq!(s.value("rkv_leader_changes_total", &[]), Some(0.0));
    }

    #[test]
    fn a_dropped_link_and_a_followers_status_remove_their_series() {
        let m = Arc::new(Metrics::new());
        let link = m.link(2);
        m.record_status(&status(1, "leader", &[(1, Some(9)), (2, Some(9))]));
        assert_eq!(
            scrape(&m).value("rkv_peer_connected", &[("peer", "2")]),
            Some(0.0)
        );
        drop(link);
        m.record_status(&status(1, "follower", &[(1, None), (2, None)]));
        let s = scrape(&m);
        assert_eq!(s.value("rkv_peer_connected", &[("peer", "2")]), None);
        assert_eq!(s.value("rkv_peer_match_index", &[("peer", "2")]), None);
        assert_eq!(s.value("rkv_role", &[("role", "leader")]), Some(0.0));
        assert_eq!(s.value("rkv_role", &[("role", "follower")]), Some(1.0));
    }

    #[test]
    fn histogram_buckets_hold_values_up_to_their_bound() {
        let h = AtomicHistogram::new(&[1, 10], 1.0);
        for v in [0, 1, 2, 10, 11, u64::MAX / 2] {
            h.observe(v);
        }
        let counts: Vec<u64> =
            h.0.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
        assert_eq!(counts, [2, 2, 2]);
        assert_eq!(h.count(), 6);
    }
}
