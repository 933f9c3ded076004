//! Linearizable reads without a log write: ReadIndex (Raft thesis §6.4).
//!
//! A leader takes `Event::ReadRequested`. It serves reads only once an
//! entry of its own term has committed (before that it may not know the
//! cluster's commit index): until then they wait. A read then gets the
//! commit index as its read index and waits for a *round*: the leader sends
//! `Message::ReadRound { term, round }` to every voter, and the round is
//! confirmed once a quorum of its configuration (both halves when joint;
//! the leader counts itself if it votes) has answered with that round or a
//! later one. A confirmed round proves that no other leader had been
//! elected when the round started, so nothing committed before the read
//! arrived lies beyond its index: `Action::ReadReady { id, index }`, and the
//! caller serves the read once its service has applied through `index`.
//!
//! Rules, and why:
//! - Rounds are numbered by the leader (from 1 in each term of office) and
//!   each voter's highest acknowledged round is kept; only a reply echoing a
//!   round counts for it. Keying acknowledgements by the caller's context
//!   instead lets a delayed reply to a retried read confirm a later round
//!   on a stale leader (etcd#20418).
//! - A read is given the round started *after* it arrived. Many reads share
//!   a round; a read does not wait for the next heartbeat: if no round is in
//!   flight one starts at once, otherwise the next starts as soon as the one
//!   in flight is confirmed.
//! - A round in flight is sent again, on each heartbeat, to the voters that
//!   have not answered it, so a lost message delays its reads by at most a
//!   heartbeat interval.
//! - Reads pending when the node stops leading fail with
//!   `ReadRefusal::NotLeader`.
//!
//! Lease reads (`ReadMode::Lease`, with `Config::lease_reads`, thesis
//! §6.4.1): a confirmed round also grants a lease, from the time the round
//! was first *sent* for `Config::lease_duration`. While it holds (and an
//! entry of the leader's term has committed), a lease read is answered at
//! once with the commit index; otherwise it waits for a round like any
//! read. It rests on sticky votes (`Config::sticky_votes`): every voter
//! that acknowledged the round ignores vote requests for an election
//! timeout after receiving it, so no other leader can be elected before
//! the lease ends, given clocks within the drift bound. The lease is
//! dropped when the leader's configuration changes (it was granted by the
//! old one's quorum), and forfeited for the rest of the term once the
//! leader sends `TimeoutNow` (a transfer's election is exempt from
//! stickiness). With lease reads on, every heartbeat starts a round if none
//! is in flight, so an active leader keeps its lease.

use std::collections::{BTreeMap, VecDeque};

use crate::io::{Action, ReadMode, ReadRefusal};
use crate::message::Message;
use crate::role::LeaderState;
use crate::shared::Shared;
use crate::time::Instant;
use crate::types::{Index, NodeId};

/// A leader's reads: the rounds and the reads waiting for them.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// The last round started in this term of office (0: none yet).
    round: u64,
    /// The highest round each voter acknowledged.
    acked: BTreeMap<NodeId, u64>,
    /// Reads waiting, oldest first. Those with `round == 0` wait for a
    /// round to start; the others for their round to be confirmed (rounds
    /// never decrease along the queue).
    pending: VecDeque<PendingRead>,
    /// When each round not yet confirmed was first sent, oldest first.
    sent: VecDeque<(u64, Instant)>,
    /// The lease: reads may be answered without a round before this time,
    /// while the configuration's latest index is the one recorded.
    lease: Option<(Instant, Index)>,
    /// `TimeoutNow` was sent in this term of office: no lease again.
    lease_forfeit: bool,
}

#[derive(Debug)]
struct PendingRead {
    origin: Origin,
    index: Index,
    round: u64,
}

/// Who asked for a read.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Our caller, with its id.
    Local(u64),
    /// A follower's forwarded read, with its number for it.
    Remote(NodeId, u64),
}

/// A follower's reads forwarded to its leader, waiting for the answer.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// The last number given to a forwarded read. Each incarnation starts
    /// from its own point, drawn from its seed (without touching the
    /// node's generator): a reply to a read forwarded before a restart
    /// must not answer a read forwarded after it, whose read index it may
    /// not cover (found by the fuzzer's read-safety property). Drivers give
    /// each incarnation a fresh seed, as `RaftNode::recover` asks.
    next_ctx: u64,
    /// Number -> (the caller's id, the term it was sent in, when).
    pending: BTreeMap<u64, (u64, crate::types::Term, crate::time::Instant)>,
}

impl Forwarded {
    pub(crate) fn new(seed: u64) -> Forwarded {
        let start = crate::rng::SplitMix64::new(seed ^ 0x7265_6164_6374_7821).next_u64();
        Forwarded {
            next_ctx: start,
            pending: BTreeMap::new(),
        }
    }
}

/// Answer a read with its index (`Ok`) or refuse it (`Err`): to our caller,
/// or to the follower that forwarded it (which refuses its own caller).
fn answer(s: &mut Shared, origin: Origin, result: Result<Index, ReadRefusal>) {
    match origin {
        Origin::Local(id) => s.out.push(match result {
            Ok(index) => Action::ReadReady { id, index },
            Err(reason) => Action::RejectRead { id, reason },
        }),
        Origin::Remote(to, ctx) => {
            let term = s.hard.term;
            let index = result.ok();
            // Durable first: a leader stepping down fails its reads in a
            // term that may still be on its way to disk.
            s.send_durable(to, Message::ReadIndexReply { term, ctx, index });
        }
    }
}

impl Reads {
    /// The leader sent `TimeoutNow` (a transfer, or its own removal): the
    /// target's election ignores sticky votes, so no lease may be trusted
    /// again in this term.
    pub(crate) fn forfeit_lease(&mut self) {
        self.lease = None;
        self.lease_forfeit = true;
    }

    /// Fail every pending read: the node stopped leading (`leader_hint`:
    /// the new leader, if known).
    pub(crate) fn fail_all(&mut self, s: &mut Shared, leader_hint: Option<NodeId>) {
        let reason = ReadRefusal::NotLeader { leader_hint };
        for read in self.pending.drain(..) {
            answer(s, read.origin, Err(reason));
        }
    }
}

impl LeaderState {
    /// A read arrived at the leader from its caller.
    pub(crate) fn on_read_requested(&mut self, s: &mut Shared, id: u64, mode: ReadMode) {
        if mode == ReadMode::Lease && self.lease_holds(s) {
            answer(s, Origin::Local(id), Ok(s.commit_index));
            return;
        }
        self.take_read(s, Origin::Local(id));
    }

    /// Whether a lease read may be answered now without a round: lease
    /// reads are on, an entry of our term has committed, and a lease
    /// granted under the current configuration has not expired.
    fn lease_holds(&self, s: &Shared) -> bool {
        s.config.lease_reads
            && s.commit_index > self.term_start_index
            && self
                .reads
                .lease
                .is_some_and(|(until, config)| s.now < until && config == s.configs.latest_index())
    }

    /// A follower forwarded a read (of our term: older ones were refused
    /// with our term before dispatch).
    pub(crate) fn on_read_index(&mut self, s: &mut Shared, from: NodeId, ctx: u64) {
        self.take_read(s, Origin::Remote(from, ctx));
    }

    fn take_read(&mut self, s: &mut Shared, origin: Origin) {
        if self.reads.pending.len() >= s.config.max_pending_reads {
            answer(s, origin, Err(ReadRefusal::TooManyPendingReads));
            return;
        }
        self.reads.pending.push_back(PendingRead {
            origin,
            index: 0,
            round: 0,
        });
        self.advance_reads(s);
    }

    /// A voter answered a round.
    pub(crate) fn on_read_round_reply(&mut self, s: &mut Shared, from: NodeId, round: u64) {
        let mut round = round;
        if crate::canary::on(crate::canary::Canary::AcksKeyedByReadId) {
            // The planted bug: the echoed label is a read's id; credit the
            // round of the pending read with that id, whenever it arrived.
            let by_id = self
                .reads
                .pending
                .iter()
                .rev()
                .find(|r| matches!(r.origin, Origin::Local(id) if id == round) && r.round > 0);
            if let Some(read) = by_id {
                round = read.round;
            }
        }
        if round > self.reads.round {
            return; // a round we never started: drop
        }
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.recent_active = true;
        }
        let acked = self.reads.acked.entry(from).or_insert(0);
        *acked = (*acked).max(round);
        self.advance_reads(s);
    }

    /// Answer the reads whose round is confirmed, and start a round for
    /// the reads that wait for one if none is in flight.
    pub(crate) fn advance_reads(&mut self, s: &mut Shared) {
        if self.reads.pending.is_empty() {
            return;
        }
        // Only once an entry of our term has committed does the commit
        // index cover everything committed before us.
        let planted = crate::canary::on(crate::canary::Canary::ReadBeforeOwnTermCommit);
        if s.commit_index <= self.term_start_index && !planted {
            return;
        }
        if crate::canary::on(crate::canary::Canary::ReadWithoutFreshRound) {
            // The planted bug: waiting reads take the round last confirmed.
            let (confirmed, index) = (self.confirmed_round(s), s.commit_index);
            if confirmed > 0 {
                for read in self.reads.pending.iter_mut().filter(|r| r.round == 0) {
                    read.round = confirmed;
                    read.index = index;
                }
            }
        }
        self.release_confirmed(s);
        let waiting = self.reads.pending.back().is_some_and(|r| r.round == 0);
        if waiting && self.confirmed_round(s) >= self.reads.round {
            self.start_round(s);
        }
    }

    /// Start the next round: the reads waiting for one join it, once an
    /// entry of our term has committed (before that they keep waiting: our
    /// commit index may be behind, and a lease renewal may start a round
    /// that early).
    fn start_round(&mut self, s: &mut Shared) {
        self.reads.round += 1;
        let (round, index) = (self.reads.round, s.commit_index);
        if s.commit_index > self.term_start_index
            || crate::canary::on(crate::canary::Canary::ReadBeforeOwnTermCommit)
        {
            for read in self.reads.pending.iter_mut().filter(|r| r.round == 0) {
                read.round = round;
                read.index = index;
            }
        }
        self.reads.sent.push_back((round, s.now));
        let term = s.hard.term;
        let label = self.round_label(round);
        for peer in s.voter_peers() {
            s.send(peer, Message::ReadRound { term, round: label });
        }
        // A leader alone (or whose configuration needs no one else)
        // confirms at once.
        self.release_confirmed(s);
    }

    /// With lease reads on, each heartbeat starts a round if none is in
    /// flight, so that the lease is renewed while the leader leads. Not
    /// before an entry of our term has committed: a round takes the reads
    /// waiting for one, with the commit index as their read index, and
    /// until then a new leader's commit index may lag what its predecessor
    /// committed (`advance_reads` waits for the same reason; no lease is
    /// used before then either).
    pub(crate) fn renew_lease(&mut self, s: &mut Shared) {
        if s.config.lease_reads
            && !self.reads.lease_forfeit
            && s.commit_index > self.term_start_index
            && self.confirmed_round(s) >= self.reads.round
        {
            self.start_round(s);
        }
    }

    /// What a round is called on the wire: its number. (The planted bug
    /// `AcksKeyedByReadId` names it by the caller's id of its newest read
    /// instead, and credits replies to reads by that id.)
    fn round_label(&self, round: u64) -> u64 {
        if crate::canary::on(crate::canary::Canary::AcksKeyedByReadId) {
            let newest = self.reads.pending.iter().rev().find(|r| r.round == round);
            if let Some(PendingRead {
                origin: Origin::Local(id),
                ..
            }) = newest
            {
                return *id;
            }
        }
        round
    }

    /// On each heartbeat: the round in flight, if any, is sent again to the
    /// voters that have not answered it (a lost round would otherwise hold
    /// its reads until the leader steps down).
    pub(crate) fn resend_read_round(&mut self, s: &mut Shared) {
        let round = self.reads.round;
        if round == 0 || self.confirmed_round(s) >= round {
            return;
        }
        let term = s.hard.term;
        for peer in s.voter_peers() {
            if self.reads.acked.get(&peer).is_none_or(|&a| a < round) {
                let label = self.round_label(round);
                s.send(peer, Message::ReadRound { term, round: label });
            }
        }
    }

    /// The highest round a quorum has acknowledged (the leader counts
    /// itself, if it votes, for every round it started).
    fn confirmed_round(&self, s: &Shared) -> u64 {
        let id = s.config.id;
        let confirmed = s.voters.committed_index(|v| {
            if v == id {
                Some(self.reads.round)
            } else {
                self.reads.acked.get(&v).copied()
            }
        });
        confirmed.min(self.reads.round)
    }

    fn release_confirmed(&mut self, s: &mut Shared) {
        let confirmed = self.confirmed_round(s);
        // A confirmed round grants the lease from when it was sent.
        while let Some(&(round, sent)) = self.reads.sent.front() {
            if round > confirmed {
                break;
            }
            self.reads.sent.pop_front();
            if s.config.lease_reads && !self.reads.lease_forfeit {
                let until = sent + s.config.lease_duration();
                self.reads.lease = Some((until, s.configs.latest_index()));
            }
        }
        while let Some(read) = self.reads.pending.front() {
            if read.round == 0 || read.round > confirmed {
                break;
            }
            let read = self.reads.pending.pop_front().expect("front exists");
            answer(s, read.origin, Ok(read.index));
        }
    }
}

impl Shared {
    /// A read at a node that does not lead: forwarded to the leader it
    /// follows (follower reads), or refused if it knows none.
    pub(crate) fn forward_read(&mut self, id: u64, following: bool) {
        let leader = self.leader_hint.filter(|&l| l != self.config.id);
        let Some(leader) = leader.filter(|_| following) else {
            let reason = ReadRefusal::NotLeader {
                leader_hint: self.leader_hint,
            };
            self.out.push(Action::RejectRead { id, reason });
            return;
        };
        if crate::canary::on(crate::canary::Canary::FollowerReadsOwnCommit) {
            let index = self.commit_index;
            self.out.push(Action::ReadReady { id, index });
            return;
        }
        if self.forwarded.pending.len() >= self.config.max_pending_reads {
            let reason = ReadRefusal::TooManyPendingReads;
            self.out.push(Action::RejectRead { id, reason });
            return;
        }
        self.forwarded.next_ctx = self.forwarded.next_ctx.wrapping_add(1);
        let ctx = self.forwarded.next_ctx;
        let term = self.hard.term;
        self.forwarded.pending.insert(ctx, (id, term, self.now));
        // It names our term, which may still be on its way to disk.
        self.send_durable(leader, Message::ReadIndex { term, ctx });
    }

    /// The leader answered a forwarded read (of our term).
    pub(crate) fn on_read_index_reply(&mut self, ctx: u64, index: Option<Index>) {
        let Some((id, _, _)) = self.forwarded.pending.remove(&ctx) else {
            return; // answered already, or given up on
        };
        match index {
            Some(index) => self.out.push(Action::ReadReady { id, index }),
            None => {
                let reason = ReadRefusal::NotLeader {
                    leader_hint: self.leader_hint,
                };
                self.out.push(Action::RejectRead { id, reason });
            }
        }
    }

    /// Forwarded reads sent in an older term, or unanswered for an election
    /// timeout (the request or its answer was lost), fail: the caller may
    /// retry.
    pub(crate) fn expire_forwarded_reads(&mut self) {
        let (term, now) = (self.hard.term, self.now);
        let limit = self.config.election_timeout_max;
        let expired: Vec<u64> = self
            .forwarded
            .pending
            .iter()
            .filter(|(_, &(_, t, at))| t != term || now >= at + limit)
            .map(|(&ctx, _)| ctx)
            .collect();
        let reason = ReadRefusal::NotLeader {
            leader_hint: self.leader_hint,
        };
        for ctx in expired {
            let (id, _, _) = self.forwarded.pending.remove(&ctx).expect("listed");
            self.out.push(Action::RejectRead { id, reason });
        }
    }

    /// A follower answers its leader's round (older terms were answered
    /// with our term before dispatch). It is a leader's message: it counts
    /// as contact and defers our election.
    pub(crate) fn on_read_round(&mut self, from: NodeId, round: u64) {
        self.leader_hint = Some(from);
        self.reset_election_deadline();
        let reply = Message::ReadRoundReply {
            term: self.hard.term,
            round,
        };
        self.send_durable(from, reply);
    }
}
