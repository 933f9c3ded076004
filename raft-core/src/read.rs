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

use std::collections::{BTreeMap, VecDeque};

use crate::io::{Action, ReadRefusal};
use crate::message::Message;
use crate::role::LeaderState;
use crate::shared::Shared;
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
}

#[derive(Debug)]
struct PendingRead {
    id: u64,
    index: Index,
    round: u64,
}

impl Reads {
    /// Fail every pending read: the node stopped leading (`leader_hint`:
    /// the new leader, if known).
    pub(crate) fn fail_all(&mut self, s: &mut Shared, leader_hint: Option<NodeId>) {
        let reason = ReadRefusal::NotLeader { leader_hint };
        for read in self.pending.drain(..) {
            s.out.push(Action::RejectRead {
                id: read.id,
                reason,
            });
        }
    }
}

impl LeaderState {
    /// A read arrived at the leader.
    pub(crate) fn on_read_requested(&mut self, s: &mut Shared, id: u64) {
        if self.reads.pending.len() >= s.config.max_pending_reads {
            let reason = ReadRefusal::TooManyPendingReads;
            s.out.push(Action::RejectRead { id, reason });
            return;
        }
        self.reads.pending.push_back(PendingRead {
            id,
            index: 0,
            round: 0,
        });
        self.advance_reads(s);
    }

    /// A voter answered a round.
    pub(crate) fn on_read_round_reply(&mut self, s: &mut Shared, from: NodeId, round: u64) {
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
        if s.commit_index <= self.term_start_index {
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
            self.reads.round += 1;
            let (round, index) = (self.reads.round, s.commit_index);
            for read in self.reads.pending.iter_mut().filter(|r| r.round == 0) {
                read.round = round;
                read.index = index;
            }
            let term = s.hard.term;
            for peer in s.voter_peers() {
                s.send(peer, Message::ReadRound { term, round });
            }
            // A leader alone (or whose configuration needs no one else)
            // confirms at once.
            self.release_confirmed(s);
        }
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
                s.send(peer, Message::ReadRound { term, round });
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
        while let Some(read) = self.reads.pending.front() {
            if read.round == 0 || read.round > confirmed {
                break;
            }
            let read = self.reads.pending.pop_front().expect("front exists");
            s.out.push(Action::ReadReady {
                id: read.id,
                index: read.index,
            });
        }
    }
}

impl Shared {
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
