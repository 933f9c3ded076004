//! The cluster safety checker, run after every step of every node (Raft
//! paper, Figure 3): election safety, log matching, leader completeness,
//! state machine safety, the persist-before-send contract, and term origin
//! (every term a node holds is one some candidate stood for). A violation
//! panics with what broke, so the test fails with its seed.
//!
//! It understands configurations (Raft thesis §4; the core's design is in
//! `raft_core::membership`), with four rules, each named in its message:
//!
//! - **commit quorum**: every index a leader commits was acknowledged, in
//!   its term, by a quorum of the configuration in force at the leader when
//!   it decided (a majority of both halves when joint; learners never
//!   count; a leader that is not a voter of it does not count itself), and a
//!   configuration entry's own commit by a quorum of the configuration it
//!   sets;
//! - **quorum overlap**: when a leader appends a configuration entry, every
//!   quorum of the latest committed configuration it knows shares a node
//!   with every quorum of the new one (checked by brute force over the
//!   subsets of their members);
//! - **one change at a time**: a leader appends a configuration entry only
//!   when the configuration entry before it in its log is committed;
//! - **own-term commit before a change**: a configuration entry of term `T`
//!   is appended only once an entry of term `T` has committed (the
//!   single-server bug of 2015). The leave of a committed joint
//!   configuration is exempt: it is the only configuration any leader may
//!   append after that joint one, so an earlier leader's uncommitted entry
//!   can only be the same configuration.

use std::collections::{BTreeMap, BTreeSet};

use raft_core::{
    AppendOutcome, DurableState, Entry, Index, Membership, Message, NodeId, Payload, Persist,
    RaftNode, Term,
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

/// What a leader held at the end of its previous step, for the commit
/// quorum rule.
#[derive(Clone, Debug)]
struct Leading {
    term: Term,
    commit: Index,
    last_index: Index,
    /// The latest configuration in its log, and the index of the entry that
    /// set it (the snapshot boundary if none follows it).
    config: (Index, Membership),
    /// Its progress: each member's match index.
    matched: BTreeMap<NodeId, Index>,
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
    /// Who was leader after its previous step, and what it held then.
    leading: BTreeMap<NodeId, Leading>,
    /// The highest index each node acknowledged to the leader of each term,
    /// by (term, node).
    acked: BTreeMap<(Term, NodeId), Index>,
    /// Every entry ever covered by a node's commit index, by index: (term,
    /// fingerprint) ([`Self::check_committed_log`]).
    log_committed: BTreeMap<Index, (Term, u64)>,
    /// Every term some node stood for (voted for itself in), for
    /// [`Self::check_term_origin`].
    stood: BTreeSet<Term>,
}

impl SafetyChecker {
    /// Called after node `id` stepped.
    pub fn after_step(&mut self, node: &RaftNode) {
        let id = node.id();
        self.check_term_origin(node);
        if !node.is_leader() {
            // A leader that stepped down in its own term (removed, its
            // removal committed) may have committed in its last step.
            if let Some(before) = self.leading.remove(&id) {
                if before.term == node.term() {
                    self.check_commit_quorum(node, &before);
                }
            }
            return;
        }
        let term = node.term();
        let holder = *self.leaders.entry(term).or_insert(id);
        assert_eq!(
            holder, id,
            "election safety: nodes {holder} and {id} both lead term {term}"
        );
        let before = self.leading.remove(&id).filter(|l| l.term == term);
        let config = match &before {
            // Continuing in office: only the entries appended since the
            // previous step can change the latest configuration.
            Some(before) => {
                self.check_commit_quorum(node, before);
                appended_configs(node, before.last_index)
                    .last()
                    .map_or_else(|| before.config.clone(), |(i, m)| (*i, (*m).clone()))
            }
            None => {
                self.check_leader_completeness(node);
                latest_config(node)
            }
        };
        let matched = config
            .1
            .members()
            .into_iter()
            .filter_map(|n| node.progress(n).map(|p| (n, p.match_index)))
            .collect();
        self.leading.insert(
            id,
            Leading {
                term,
                commit: node.commit_index(),
                last_index: node.log().last_index(),
                config,
                matched,
            },
        );
    }

    /// Could the leader `node` (or the leader it was before this step, if
    /// it stepped down in it) have counted a quorum of `config` having
    /// `index`? Counted are the nodes that sent an acknowledgement of it
    /// in the leader's term and that the leader's progress shows (a leader
    /// counts only what it received), and the leader itself if its log is
    /// durable there (a quorum check ignores it if it does not vote). A
    /// node the leader no longer tracks counts if it sent one. A leader
    /// that stepped down has no progress left: its progress at the end of
    /// its previous step counts, plus any one node (a step handles one
    /// message). Returns the nodes counted, for the message.
    fn counted_quorum(
        &self,
        node: &RaftNode,
        before: &Leading,
        config: &Membership,
        index: Index,
    ) -> Result<(), Vec<NodeId>> {
        let term = node.term();
        let sent: Vec<NodeId> = self
            .acked
            .range((term, 0)..=(term, NodeId::MAX))
            .filter(|&(_, &acked)| acked >= index)
            .map(|(&(_, n), _)| n)
            .collect();
        let received = |n: NodeId| {
            if node.is_leader() {
                node.progress(n).is_none_or(|p| p.match_index >= index)
            } else {
                before.matched.get(&n).is_some_and(|&m| m >= index)
            }
        };
        let mut counted: Vec<NodeId> = sent.iter().copied().filter(|&n| received(n)).collect();
        if node.durable_index() >= index {
            counted.push(node.id());
        }
        let quorum = config.quorum();
        if quorum.is_quorum(&counted) {
            return Ok(());
        }
        if !node.is_leader() {
            for &extra in sent.iter().filter(|n| !counted.contains(n)) {
                let mut with = counted.clone();
                with.push(extra);
                if quorum.is_quorum(&with) {
                    return Ok(());
                }
            }
        }
        Err(counted)
    }

    /// Commit quorum: a leader that moved its commit index in a step (and
    /// was leader of that term in its previous step) had it acknowledged by
    /// a quorum of a configuration in force at it during the step (the
    /// latest before the step, or one appended in it); if the commit passed
    /// the entry of the configuration in force before the step, that entry
    /// had a quorum of its own configuration (nothing else can commit it:
    /// the next configuration is appended only after it commits).
    fn check_commit_quorum(&self, node: &RaftNode, before: &Leading) {
        let commit = node.commit_index();
        if commit <= before.commit {
            return;
        }
        let (id, term) = (node.id(), node.term());
        let mut in_force: Vec<&Membership> = vec![&before.config.1];
        in_force.extend(
            appended_configs(node, before.last_index)
                .into_iter()
                .map(|(_, m)| m),
        );
        let mut counted = Vec::new();
        let ok = in_force
            .iter()
            .any(|m| match self.counted_quorum(node, before, m, commit) {
                Ok(()) => true,
                Err(c) => {
                    counted = c;
                    false
                }
            });
        assert!(
            ok,
            "commit quorum: leader {id} of term {term} committed index {commit} counting only {counted:?} (itself if durable), no quorum of its configuration {}",
            before.config.1
        );
        let (config_index, config) = &before.config;
        if before.commit < *config_index && *config_index <= commit {
            if let Err(counted) = self.counted_quorum(node, before, config, *config_index) {
                panic!(
                    "commit quorum: leader {id} of term {term} committed the configuration entry {config_index} ({config}) counting only {counted:?} (itself if durable), no quorum of that configuration"
                );
            }
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
        if let Some(&acked) = self.acked.get(&(term, id)) {
            assert!(
                from > acked,
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
        if node.is_leader() {
            for e in &p.entries {
                if let Payload::Membership(m) = &e.payload {
                    if e.term == node.term() {
                        self.check_configuration_appended(node, e, m);
                    }
                }
            }
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
                    let acked = self.acked.entry((m.term, from)).or_insert(0);
                    *acked = (*acked).max(match_index);
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
            Message::InstallSnapshotReply(m) => {
                let acked = self.acked.entry((m.term, from)).or_insert(0);
                *acked = (*acked).max(m.last_included_index);
            }
            _ => {}
        }
    }

    /// A leader appended the configuration entry `e` (of its term) to its
    /// log: the rules for appending one (module doc).
    fn check_configuration_appended(&self, node: &RaftNode, e: &Entry, next: &Membership) {
        let (id, term) = (node.id(), node.term());
        let log = node.log();
        let commit = node.commit_index();
        // The configuration before this entry, and the entry that set it.
        let (prev_index, prev) = config_before(node, e.index);
        assert!(
            prev_index <= commit,
            "one change at a time: leader {id} of term {term} appended configuration {next} at {} while the configuration entry at {prev_index} ({prev}) is not committed (commit index {commit})",
            e.index
        );
        let is_leave = prev.is_joint() && prev.leave_joint() == *next;
        assert!(
            is_leave || log.term_at(commit) == Some(term),
            "own-term commit before a change: leader {id} appended configuration {next} at {} in term {term} before any entry of term {term} committed (commit index {commit}, of term {:?})",
            e.index,
            log.term_at(commit)
        );
        let committed = if prev_index <= commit {
            prev
        } else {
            node.committed_membership().clone()
        };
        if let Some((a, b)) = disjoint_quorums(&committed, next) {
            panic!(
                "quorum overlap: leader {id} of term {term} appended configuration {next} at {} after committed configuration {committed}: quorums {a:?} and {b:?} share no node",
                e.index
            );
        }
    }
}

/// The configuration entries in a node's log after `index`, in order.
fn appended_configs(node: &RaftNode, index: Index) -> Vec<(Index, &Membership)> {
    let log = node.log();
    (index + 1..=log.last_index())
        .filter_map(|i| match log.entry(i) {
            Some(Entry {
                payload: Payload::Membership(m),
                ..
            }) => Some((i, m)),
            _ => None,
        })
        .collect()
}

/// The latest configuration in a node's log and the index of the entry
/// that set it (the snapshot boundary if none follows it).
fn latest_config(node: &RaftNode) -> (Index, Membership) {
    config_before(node, node.log().last_index() + 1)
}

/// The configuration in force just before `index` in a node's log, and the
/// index of the entry that set it (the snapshot boundary if no entry after
/// it does).
fn config_before(node: &RaftNode, index: Index) -> (Index, Membership) {
    let log = node.log();
    let boundary = log.snapshot().index;
    for i in (boundary + 1..index).rev() {
        if let Some(Entry {
            payload: Payload::Membership(m),
            ..
        }) = log.entry(i)
        {
            return (i, m.clone());
        }
    }
    // Nothing after the boundary: the snapshot's configuration, or, if it
    // records none, the node's initial one.
    let recorded = &log.snapshot().membership;
    if recorded.voters.is_empty() {
        (
            boundary,
            Membership::with_voters(node.config().members.iter().copied()),
        )
    } else {
        (boundary, recorded.clone())
    }
}

/// Two disjoint quorums, one of `a` and one of `b`, if there are any: by
/// brute force over the subsets of their members (a quorum of `a` whose
/// complement holds a quorum of `b`; quorums are closed under supersets).
fn disjoint_quorums(a: &Membership, b: &Membership) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
    let universe: Vec<NodeId> = a.members().union(&b.members()).copied().collect();
    assert!(
        universe.len() <= 16,
        "quorum overlap: {} members are too many to check",
        universe.len()
    );
    let (qa, qb) = (a.quorum(), b.quorum());
    for bits in 0u32..1 << universe.len() {
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for (k, &n) in universe.iter().enumerate() {
            if bits & (1 << k) != 0 {
                inside.push(n);
            } else {
                outside.push(n);
            }
        }
        if qa.is_quorum(&inside) && qb.is_quorum(&outside) {
            return Some((inside, outside));
        }
    }
    None
}
