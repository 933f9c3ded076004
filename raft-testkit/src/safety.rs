//! The cluster safety checker, run after every step of every node (Raft
//! paper, Figure 3): election safety, log matching, leader completeness,
//! state machine safety, the persist-before-send contract, and term origin
//! (every term a node holds is one some candidate stood for). A violation
//! panics with what broke, so the test fails with its seed.

use std::collections::BTreeMap;

use raft_core::{
    AppendOutcome, DurableState, Entry, Index, Message, NodeId, Payload, Persist, RaftNode, Term,
};

/// 64-bit FNV-1a, for fingerprints of commands and traces.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    if hash == 0 {
        hash = 0xcbf2_9ce4_8422_2325;
    }
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A fingerprint of what an entry carries: of a command, its bytes; of
/// anything else, its encoding (so a no-op never passes for an empty
/// command).
pub fn fingerprint(e: &Entry) -> u64 {
    match &e.payload {
        Payload::Command(bytes) => fnv1a(0, bytes),
        other => fnv1a(1, &postcard::to_allocvec(other).expect("payloads encode")),
    }
}

/// What the checker has seen across the whole run, every incarnation of
/// every node included.
#[derive(Clone, Debug, Default)]
pub struct SafetyChecker {
    /// The leader of each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry ever written to a log, by (index, term): its command's
    /// fingerprint and the term of the entry before it (when known).
    entries: BTreeMap<(Index, Term), (u64, Option<Term>)>,
    /// Every entry ever applied, by index: (term, fingerprint).
    committed: BTreeMap<Index, (Term, u64)>,
    /// Who was leader in which term after its previous step.
    was_leader: BTreeMap<NodeId, Term>,
    /// The highest index each node acknowledged to a leader, and the term.
    acked: BTreeMap<NodeId, (Term, Index)>,
    /// Every entry ever covered by a node's commit index, by index: (term,
    /// fingerprint) ([`Self::check_committed_log`]).
    log_committed: BTreeMap<Index, (Term, u64)>,
    /// Every term some node stood for (voted for itself in), for
    /// [`Self::check_term_origin`].
    stood: std::collections::BTreeSet<Term>,
}

impl SafetyChecker {
    /// Called after node `id` stepped.
    pub fn after_step(&mut self, node: &RaftNode) {
        let id = node.id();
        self.check_term_origin(node);
        if !node.is_leader() {
            self.was_leader.remove(&id);
            return;
        }
        let term = node.term();
        let holder = *self.leaders.entry(term).or_insert(id);
        assert_eq!(
            holder, id,
            "election safety: nodes {holder} and {id} both lead term {term}"
        );
        if self.was_leader.insert(id, term) != Some(term) {
            self.check_leader_completeness(node);
        }
    }

    /// Term origin: a term comes into being only when a candidate stands for
    /// it (votes for itself); every other node holding it learned it from a
    /// message. A node holding a term nobody stood for raised it some other
    /// way, for example a pre-vote that bumped the term, which is exactly
    /// what pre-vote exists to prevent (thesis §9.6).
    fn check_term_origin(&mut self, node: &RaftNode) {
        let term = node.term();
        if node.voted_for() == Some(node.id()) {
            self.stood.insert(term);
        }
        assert!(
            term == 0 || self.stood.contains(&term),
            "term origin: node {} holds term {term}, which no node stood for (a term rises only by a candidacy)",
            node.id()
        );
    }

    /// A new leader holds every entry ever committed (§5.4, Leader
    /// Completeness).
    fn check_leader_completeness(&self, node: &RaftNode) {
        let log = node.log();
        for (&index, &(term, _)) in self.committed.range(log.snapshot().index + 1..) {
            assert_eq!(
                log.term_at(index),
                Some(term),
                "leader completeness: node {} leads term {} without committed entry {index} (term {term})",
                node.id(),
                node.term()
            );
        }
    }

    /// Node `id` wrote `entries` to its log; `prev_term` is the term of the
    /// entry before the first one, if the node still holds it.
    pub fn entries_written(&mut self, id: NodeId, entries: &[Entry], mut prev_term: Option<Term>) {
        for e in entries {
            let fp = fingerprint(e);
            let seen = *self
                .entries
                .entry((e.index, e.term))
                .or_insert((fp, prev_term));
            assert_eq!(
                seen.0, fp,
                "log matching: node {id} holds a different command at index {} term {}",
                e.index, e.term
            );
            if let (Some(a), Some(b)) = (seen.1, prev_term) {
                assert_eq!(
                    a, b,
                    "log matching: node {id}'s entry {} term {} follows a different history",
                    e.index, e.term
                );
            }
            prev_term = Some(e.term);
        }
    }

    /// Node `id`, now in `term`, is dropping its log from index `from` on.
    ///
    /// Within one term a follower takes entries only from that term's one
    /// leader, whose log only grows: so it never drops an entry it has
    /// acknowledged to that leader in the same term. If it did, the leader
    /// may already have counted the entry to commit it, and a committed
    /// entry would be held by fewer nodes than the count said.
    pub fn log_truncated(&mut self, id: NodeId, term: Term, from: Index) {
        if let Some(&(acked_term, acked)) = self.acked.get(&id) {
            assert!(
                acked_term != term || from > acked,
                "acknowledged entries kept: node {id} drops its log from index {from} in term {term}, after acknowledging through {acked} to that term's leader"
            );
        }
    }

    /// Node `id` (in the state `node` is in right after the step that
    /// issued it) issued the write `p`: notes its truncation
    /// ([`Self::log_truncated`]) and the entries it writes
    /// ([`Self::entries_written`]). Every harness calls this once per
    /// `Persist`, when the node issues it.
    pub fn persist_issued(&mut self, id: NodeId, node: &RaftNode, p: &Persist) {
        if let Some(from) = p.truncate_from {
            self.log_truncated(id, node.term(), from);
        }
        if let Some(first) = p.entries.first() {
            let prev = node.log().term_at(first.index - 1);
            self.entries_written(id, &p.entries, prev);
        }
    }

    /// State machine safety on a node's own log: every entry it holds up to
    /// its commit index is the entry every other node committed there.
    /// Rescans the whole committed suffix of the log, so it also catches an
    /// entry changed after it was first seen committed.
    pub fn check_committed_log(&mut self, node: &RaftNode) {
        let log = node.log();
        for index in log.snapshot().index + 1..=node.commit_index() {
            let e = log
                .entry(index)
                .expect("committed entries after the snapshot are held");
            let fp = fingerprint(e);
            let seen = *self.log_committed.entry(index).or_insert((e.term, fp));
            assert_eq!(
                seen,
                (e.term, fp),
                "state machine safety: node {} committed a different entry at {index}",
                node.id()
            );
        }
    }

    /// Node `id` applied `entries` (committed, by the core's account).
    pub fn entries_applied(&mut self, id: NodeId, entries: &[Entry]) {
        for e in entries {
            let fp = fingerprint(e);
            let seen = *self.committed.entry(e.index).or_insert((e.term, fp));
            assert_eq!(
                seen,
                (e.term, fp),
                "state machine safety: node {id} applied a different entry at index {}",
                e.index
            );
        }
    }

    /// Persist before send: a message that claims durable state may leave
    /// only once that state is in the sender's storage (`durable`: what its
    /// storage holds now). Also notes what each node acknowledges, for
    /// [`Self::log_truncated`].
    pub fn check_send(
        &mut self,
        from: NodeId,
        to: NodeId,
        message: &Message,
        durable: &DurableState,
    ) {
        match message {
            // A durable term past the message's also vouches for it: a node
            // that has moved on never votes in that term again (a group
            // commit can make several writes durable at once).
            Message::RequestVote(m) => {
                self.stood.insert(m.term);
                let hs = durable.hard_state;
                assert!(
                    hs.term > m.term || (hs.term == m.term && hs.voted_for == Some(from)),
                    "persist before send: node {from} asked for votes in term {} before its own vote was durable",
                    m.term
                );
            }
            Message::RequestVoteReply(m) if m.vote_granted => {
                let hs = durable.hard_state;
                assert!(
                    hs.term > m.term || (hs.term == m.term && hs.voted_for == Some(to)),
                    "persist before send: node {from} granted {to} a vote in term {} before it was durable",
                    m.term
                );
            }
            Message::AppendEntriesReply(m) => {
                if let AppendOutcome::Accepted { match_index } = m.outcome {
                    let acked = self.acked.entry(from).or_insert((m.term, 0));
                    if acked.0 != m.term {
                        *acked = (m.term, 0);
                    }
                    acked.1 = acked.1.max(match_index);
                    let snap = durable.snapshot.as_ref().map_or(0, |s| s.index);
                    // As for votes: a node whose durable term has moved past
                    // the message's acknowledged before it learned the new
                    // term; the new term's leader may then truncate what it
                    // acknowledged (it cannot have been committed).
                    assert!(
                        durable.hard_state.term > m.term
                            || match_index <= snap
                            || durable.term_at(match_index).is_some(),
                        "persist before send: node {from} acknowledged index {match_index} before it was durable"
                    );
                }
            }
            _ => {}
        }
    }
}
