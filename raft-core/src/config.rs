//! Static configuration of one node: who it is, who its peers are, its
//! timeouts, and a limit on everything that can grow.

use core::time::Duration;

use crate::types::NodeId;

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must appear in `members` unless that is empty.
    pub id: NodeId,
    /// The cluster's initial voters, this node included, without
    /// duplicates: the configuration in force before the log (or a
    /// snapshot) records one. Every node the cluster was born with must be
    /// given the same list. Empty for a node joining a running cluster: it
    /// knows no configuration, never stands for election, and learns the
    /// configuration from the leader's log or snapshot. Once the log records
    /// a configuration ([`crate::Payload::Membership`]) that one is in force
    /// and this list is not consulted again.
    pub members: Vec<NodeId>,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// How often a leader sends heartbeats (at most 10 per second in the lab).
    pub heartbeat_interval: Duration,
    /// Most entries in one AppendEntries.
    pub max_entries_per_append: usize,
    /// Most entry bytes (by [`crate::Entry::size_hint`]) in one AppendEntries;
    /// a single larger entry is still sent alone.
    pub max_append_bytes: usize,
    /// Most AppendEntries with entries in flight to one peer. With 1 (the
    /// default), a proposal is sent at once when the follower has nothing
    /// outstanding; proposals made while an append is out are batched into
    /// the next one, sent when it is answered. Raise it to pipeline deeper
    /// on high-latency links.
    pub max_inflight_appends: usize,
    /// Most entries a leader holds that are not yet committed; more proposals
    /// are rejected with `RejectReason::TooManyUncommitted`.
    pub max_uncommitted_entries: u64,
    /// Most reads (`Event::ReadRequested`) a leader holds pending; more are
    /// refused with `ReadRefusal::TooManyPendingReads`.
    pub max_pending_reads: usize,
    /// Append a no-op entry ([`crate::Payload::Noop`]) when taking office
    /// (Raft thesis §6.4), so that entries of earlier terms commit without
    /// waiting for the next proposal. It reaches the service in `Apply` like
    /// any entry; only command entries carry anything for it. Off by
    /// default: the MIT lab tests expect exact indices for their commands.
    pub noop_on_election: bool,
    /// Ask before standing (Raft thesis §9.6): when its election timeout
    /// passes, a node first becomes a pre-candidate, which keeps its term
    /// and vote and asks every voter whether it could win the next term
    /// (`Message::PreVote`); only a majority of grants makes it a real
    /// candidate. A voter grants only if the pre-candidate's log is at
    /// least as up-to-date as its own and it has not heard from a leader
    /// within `election_timeout_min` (a leader refuses too). So a node cut
    /// off by a partition, or too stale to win, does not raise the term and
    /// depose a working leader when it comes back. Off by default: the MIT
    /// lab tests count RPCs and terms without it; the KV service turns it on.
    pub pre_vote: bool,
    /// Tell followers of a new commit index at once: when a leader's commit
    /// index moves, each follower in `Replicate` with no append in flight
    /// gets an empty AppendEntries carrying it (at most one per follower
    /// per step that moved it), instead of hearing of it with the next
    /// heartbeat. Followers then apply, and serve follower reads, a round
    /// trip after the commit rather than up to a heartbeat interval later.
    /// Off by default: it costs messages (the MIT lab tests count RPCs),
    /// and only pays where followers serve reads; the KV service turns it
    /// on with its follower reads.
    pub notify_commit: bool,
    /// Leader stickiness for votes (Raft thesis §4.2.3): a node ignores a
    /// `RequestVote` of a newer term (neither adopting the term nor
    /// voting) while it leads, within `election_timeout_min` of hearing
    /// from the leader of its term, or within `election_timeout_min` of its
    /// own start (it may have acknowledged a leader just before it
    /// crashed). A leader transfer's election is exempt
    /// (`RequestVote::transfer`). Lease reads rest on it: a majority that
    /// acknowledged a leader's round cannot elect anyone else for an
    /// election timeout. Off by default (the MIT lab tests expect a vote
    /// request of a newer term to depose the leader at once).
    pub sticky_votes: bool,
    /// Lease reads ([`crate::ReadMode::Lease`], Raft thesis §6.4.1): a
    /// leader answers a lease read from its commit index with no round of
    /// messages while its lease holds. The lease starts when a round that
    /// a quorum acknowledged was *sent*, and lasts
    /// [`Config::lease_duration`]; it needs `sticky_votes` on every voter
    /// (`validate` refuses the lease without it here; the cluster's other
    /// nodes must be configured alike) and CheckQuorum (always on). A
    /// leader drops its lease when its configuration changes and, for the
    /// rest of its term, once it has sent `TimeoutNow` (a transfer's
    /// election is exempt from stickiness). With lease reads on, a leader
    /// starts a round on every heartbeat, so the lease is kept while it
    /// leads. Off by default: without it, `ReadMode::Lease` reads are
    /// served as ReadIndex reads.
    ///
    /// **The clock assumption.** A lease is safe only if, while it runs,
    /// every node's clock advances at a rate within
    /// `max_clock_drift_ppm` of true time. A leader whose clock runs slow
    /// beyond that, or followers whose clocks run fast beyond it, can let
    /// a new leader be elected while the old one still serves from its
    /// lease: a stale read. ReadIndex reads rest on no clock.
    pub lease_reads: bool,
    /// The bound on clock-rate error that lease reads assume, in parts per
    /// million of true time (50 000: every clock runs within 5% of true
    /// time). Shortens the lease: see [`Config::lease_duration`].
    pub max_clock_drift_ppm: u32,
}

impl Config {
    /// The defaults used by the lab harness: 100 ms heartbeats, 300–600 ms
    /// election timeouts, 256 entries or 1 MiB per append, 1 append in
    /// flight per peer, 10 000 uncommitted entries, 10 000 pending reads.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        Config {
            id,
            members,
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            heartbeat_interval: Duration::from_millis(100),
            max_entries_per_append: 256,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 1,
            max_uncommitted_entries: 10_000,
            max_pending_reads: 10_000,
            noop_on_election: false,
            pre_vote: false,
            notify_commit: false,
            sticky_votes: false,
            lease_reads: false,
            max_clock_drift_ppm: 50_000,
        }
    }

    /// How long a lease lasts from the sending of the round that grants it,
    /// by the leader's clock: `election_timeout_min × (1 − ρ) / (1 + ρ)`
    /// with ρ = `max_clock_drift_ppm` / 10⁶. A voter that acknowledged the
    /// round received it no earlier than it was sent, and refuses votes for
    /// `election_timeout_min` of its own clock after that, at least
    /// `election_timeout_min / (1 + ρ)` of true time; the lease lasts at
    /// most `lease_duration / (1 − ρ)` of true time, which is no longer.
    pub fn lease_duration(&self) -> Duration {
        let rho = u128::from(self.max_clock_drift_ppm.min(999_999));
        let min = self.election_timeout_min.as_nanos();
        if crate::canary::on(crate::canary::Canary::LeaseIgnoresDrift) {
            return self.election_timeout_min;
        }
        let nanos = min * (1_000_000 - rho) / (1_000_000 + rho);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Checks the configuration, naming the first problem found.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::ConfigError as E;
        let bad = |why: E| Err(crate::Error::InvalidConfig(why));
        if !self.members.is_empty() && !self.members.contains(&self.id) {
            return bad(E::NotAMember);
        }
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.members.len() {
            return bad(E::RepeatedMember);
        }
        if self.election_timeout_min.is_zero()
            || self.election_timeout_max <= self.election_timeout_min
        {
            return bad(E::ElectionTimeouts);
        }
        if u64::try_from(self.election_timeout_max.as_nanos()).is_err() {
            return bad(E::ElectionTimeoutTooLong);
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.election_timeout_min
        {
            return bad(E::HeartbeatInterval);
        }
        if self.max_entries_per_append == 0
            || self.max_append_bytes == 0
            || self.max_inflight_appends == 0
            || self.max_uncommitted_entries == 0
            || self.max_pending_reads == 0
        {
            return bad(E::ZeroLimit);
        }
        if self.max_clock_drift_ppm >= 1_000_000 {
            return bad(E::ClockDriftBound);
        }
        let planted = crate::canary::on(crate::canary::Canary::LeaseWithoutStickyVotes);
        if self.lease_reads && !self.sticky_votes && !planted {
            return bad(E::LeaseWithoutStickyVotes);
        }
        Ok(())
    }

    /// How many of the initial members make a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// The initial members other than this node, in configuration order
    /// (the node's current peers are `RaftNode::membership`'s).
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().copied().filter(move |&m| m != self.id)
    }
}
