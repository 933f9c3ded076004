//! The safety properties checked in every explored state, and the history
//! some of them need. Beside them, `raft_testkit::SafetyChecker` (the
//! checker every harness runs) watches every step, write, send and apply
//! (`World::apply` reports what it finds after these): these are the
//! whole-state properties only a model checker can afford, over memory and
//! every durable image at once, with a history small enough to be part of
//! a state's identity.
//!
//! Checked after every choice (Raft paper Figure 3, plus what crash recovery
//! and the persist-before-send contract add):
//! - **Election safety**: at most one node is ever leader of a term.
//! - **Log matching**: any two logs (the three in memory and the three
//!   durable images) that hold an entry with the same index and term hold
//!   the same entries up to it.
//! - **Leader completeness**: a leader of a term later than an entry's commit
//!   holds that entry.
//! - **State machine safety**: no two nodes commit or apply different entries
//!   at one index.
//! - **Committed entries survive**: every committed entry is in a majority of
//!   durable images, so no set of crashes can lose it.
//! - **Terms and votes**: a node's term never decreases within an incarnation,
//!   nor its durable term ever; a node never grants two votes in a term, even
//!   across a crash; its term never falls below that of a message it sent.
//! - **Persist before send**: a message leaves only once its term is durable;
//!   a vote only once it is durable; an acknowledgement only once the entries
//!   it acknowledges are durable.
//! - **Apply**: entries are applied in order, only once durable locally.
//! - **Memory agrees with storage**: what a node calls durable is in its image.
//! - The core's own `assert!`s: a panic in `step` (caught by the world) is a
//!   violation too.
//!
//! "Committed" means covered by some node's commit index (a superset of what
//! has been applied). An entry's commit term is not visible from outside, so
//! each committed entry carries a *bound*: the lowest term of any node that
//! has counted it committed. That node learned of the commit in a term no
//! earlier than the commit itself, so every leader of a later term must hold
//! the entry: the check never reports a correct run.

use std::collections::BTreeMap;
use std::fmt;

use raft_core::{
    AppendOutcome, DurableState, Entry, HardState, Index, Message, NodeId, Payload, Term,
};
use serde::Serialize;

use crate::world::{World, NODES};

/// A broken safety property, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What went wrong.
    pub what: String,
}

impl Violation {
    /// A violation described by `what`.
    pub fn new(what: String) -> Self {
        Violation { what }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Violation {}

/// An entry known to be committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Committed {
    term: Term,
    payload: Payload,
    /// A term no earlier than the one it was committed in.
    bound: Term,
}

impl Committed {
    fn is(&self, e: &Entry) -> bool {
        self.term == e.term && self.payload == e.payload
    }
}

/// What the invariants remember along one trace. It is part of the state's
/// identity (two states with different histories are not merged).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct History {
    /// Who led each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Reads asked and not yet answered: (node, read id) -> the highest
    /// index any node had counted committed when the read was asked.
    reads: BTreeMap<(usize, u64), Index>,
    /// Every entry any node has counted committed, by index.
    committed: BTreeMap<Index, Committed>,
    /// Granted votes that reached the network: (voter, term) -> candidate.
    votes: BTreeMap<(NodeId, Term), NodeId>,
    /// The highest term of any message each node has sent.
    sent_term: [Term; NODES],
    /// The last index each node applied in its current incarnation (always
    /// equal to its `last_applied`, so left out of the identity).
    #[serde(skip)]
    applied: [Index; NODES],
}

impl History {
    /// A client asked node `n` for read `id`.
    pub(crate) fn on_read_requested(&mut self, n: usize, id: u64) {
        let needed = self.committed.keys().next_back().copied().unwrap_or(0);
        self.reads.insert((n, id), needed);
    }

    /// Node `n` answered read `id` with its read index: it must cover every
    /// entry counted committed before the read was asked (a write
    /// acknowledged before then would otherwise be missing from it).
    pub(crate) fn on_read_ready(
        &mut self,
        n: usize,
        id: u64,
        index: Index,
    ) -> Result<(), Violation> {
        let Some(needed) = self.reads.remove(&(n, id)) else {
            return Err(Violation::new(format!(
                "node {n} answered read r{id}, which it was not asked or had answered"
            )));
        };
        if index < needed {
            return Err(Violation::new(format!(
                "stale read: node {n} answered read r{id} at index {index}, but index {needed} had committed before it was asked"
            )));
        }
        Ok(())
    }

    /// Node `n` refused read `id` (or failed it).
    pub(crate) fn on_read_refused(&mut self, n: usize, id: u64) -> Result<(), Violation> {
        match self.reads.remove(&(n, id)) {
            Some(_) => Ok(()),
            None => Err(Violation::new(format!(
                "node {n} refused read r{id}, which it was not asked or had answered"
            ))),
        }
    }

    /// A message leaves node `from`, whose durable image is `image`.
    pub(crate) fn on_send(
        &mut self,
        from: usize,
        to: NodeId,
        message: &Message,
        image: &DurableState,
    ) -> Result<(), Violation> {
        let fail = |what: String| {
            Err(Violation::new(format!(
                "node {from} sent {message:?} to {to}: {what}"
            )))
        };
        if to >= NODES as NodeId || to == from as NodeId {
            return fail("not a peer".into());
        }
        let term = message.term();
        // A pre-vote and its grant name a term nobody holds yet.
        if term > image.hard_state.term && !message.is_pre_vote_question() {
            return fail(format!(
                "its durable term is only {}",
                image.hard_state.term
            ));
        }
        if !message.is_pre_vote_question() {
            self.sent_term[from] = self.sent_term[from].max(term);
        }
        match message {
            Message::RequestVote(_)
                if image.hard_state.voted_for != Some(from as NodeId)
                    || image.hard_state.term != term =>
            {
                return fail(format!(
                    "its own vote is not durable (image {:?})",
                    image.hard_state
                ));
            }
            Message::RequestVoteReply(r) if r.vote_granted => {
                if image.hard_state.term != term || image.hard_state.voted_for != Some(to) {
                    return fail(format!(
                        "the vote is not durable (image {:?})",
                        image.hard_state
                    ));
                }
                let candidate = *self.votes.entry((from as NodeId, term)).or_insert(to);
                if candidate != to {
                    return fail(format!("it already voted for {candidate} in term {term}"));
                }
            }
            Message::AppendEntriesReply(r) => {
                if let AppendOutcome::Accepted { match_index } = r.outcome {
                    if image.last_index() < match_index {
                        return fail(format!(
                            "its image holds only {} entries",
                            image.last_index()
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Node `n`'s image moved from hard state `before` to `after`.
    pub(crate) fn on_durable(
        &mut self,
        n: usize,
        before: HardState,
        after: HardState,
    ) -> Result<(), Violation> {
        if after.term < before.term {
            return Err(Violation::new(format!(
                "node {n}'s durable term went from {} down to {}",
                before.term, after.term
            )));
        }
        if after.term == before.term
            && before.voted_for.is_some()
            && after.voted_for != before.voted_for
        {
            return Err(Violation::new(format!(
                "node {n}'s durable vote in term {} changed from {:?} to {:?}",
                after.term, before.voted_for, after.voted_for
            )));
        }
        Ok(())
    }

    /// Node `n` hands `entries` to its service.
    pub(crate) fn on_apply(
        &mut self,
        n: usize,
        entries: &[Entry],
        image: &DurableState,
    ) -> Result<(), Violation> {
        for e in entries {
            let fail = |what: String| {
                Err(Violation::new(format!(
                    "node {n} applied {}@t{}: {what}",
                    e.index, e.term
                )))
            };
            if e.index != self.applied[n] + 1 {
                return fail(format!("after {}", self.applied[n]));
            }
            self.applied[n] = e.index;
            let stored = usize::try_from(e.index - 1)
                .ok()
                .and_then(|o| image.entries.get(o));
            if stored != Some(e) {
                return fail(format!("its image holds {stored:?} there"));
            }
            if let Some(c) = self.committed.get(&e.index) {
                if !c.is(e) {
                    return fail(format!("{c:?} is committed there"));
                }
            }
        }
        Ok(())
    }

    /// Node `n` restarts: its service starts over.
    pub(crate) fn on_crash(&mut self, n: usize) {
        self.applied[n] = 0;
        // Its reads die with it, unanswered.
        self.reads.retain(|&(m, _), _| m != n);
    }
}

impl World {
    /// Every invariant of this module, on the current state.
    pub(crate) fn check(&mut self) -> Result<(), Violation> {
        for n in 0..NODES {
            self.check_node(n)?;
            self.record_leader(n)?;
            self.record_commits(n)?;
        }
        self.check_leader_completeness()?;
        self.check_committed_durable()?;
        self.check_log_matching()
    }

    fn check_node(&self, n: usize) -> Result<(), Violation> {
        let node = self.node(n);
        let image = &self.durable[n];
        let fail = |what: String| Err(Violation::new(format!("node {n}: {what}")));
        if node.term() < self.history.sent_term[n] {
            return fail(format!(
                "its term {} is below the term {} of a message it sent",
                node.term(),
                self.history.sent_term[n]
            ));
        }
        if image.hard_state.term > node.term() {
            return fail(format!(
                "durable term {} is ahead of its term {}",
                image.hard_state.term,
                node.term()
            ));
        }
        if image.hard_state.term == node.term()
            && image.hard_state.voted_for.is_some()
            && image.hard_state.voted_for != node.voted_for()
        {
            return fail(format!(
                "it votes {:?} but its image votes {:?} in term {}",
                node.voted_for(),
                image.hard_state.voted_for,
                node.term()
            ));
        }
        if node.last_applied() > node.commit_index() {
            return fail("applied beyond commit".into());
        }
        let durable = node.durable_index();
        if durable > image.last_index() {
            return fail(format!(
                "durable index {durable} beyond its image's last {}",
                image.last_index()
            ));
        }
        let in_memory = node.log().slice(1, durable);
        let stored = &image.entries[..in_memory.len().min(image.entries.len())];
        if in_memory.len() as u64 != durable || in_memory != stored {
            return fail(format!(
                "its log through durable index {durable} differs from its image"
            ));
        }
        Ok(())
    }

    fn record_leader(&mut self, n: usize) -> Result<(), Violation> {
        let node = self.node(n);
        if !node.is_leader() {
            return Ok(());
        }
        let term = node.term();
        let leader = *self.history.leaders.entry(term).or_insert(n as NodeId);
        if leader != n as NodeId {
            return Err(Violation::new(format!(
                "nodes {leader} and {n} both led term {term}"
            )));
        }
        Ok(())
    }

    fn record_commits(&mut self, n: usize) -> Result<(), Violation> {
        let node = &self.slots[n].node;
        let term = node.term();
        for index in 1..=node.commit_index() {
            let Some(e) = node.log().entry(index) else {
                return Err(Violation::new(format!(
                    "node {n} commits {index} but does not hold it"
                )));
            };
            match self.history.committed.get_mut(&index) {
                Some(c) if !c.is(e) => {
                    return Err(Violation::new(format!(
                        "node {n} commits {index}@t{} but {c:?} was committed there",
                        e.term
                    )))
                }
                Some(c) => c.bound = c.bound.min(term),
                None => {
                    let c = Committed {
                        term: e.term,
                        payload: e.payload.clone(),
                        bound: term,
                    };
                    self.history.committed.insert(index, c);
                }
            }
        }
        Ok(())
    }

    fn check_leader_completeness(&self) -> Result<(), Violation> {
        for n in 0..NODES {
            let node = self.node(n);
            if !node.is_leader() {
                continue;
            }
            for (&index, c) in &self.history.committed {
                if c.bound < node.term() && !node.log().entry(index).is_some_and(|e| c.is(e)) {
                    return Err(Violation::new(format!(
                        "leader {n} of term {} lacks committed entry {index} {c:?}",
                        node.term()
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_committed_durable(&self) -> Result<(), Violation> {
        for (&index, c) in &self.history.committed {
            let holders = self
                .durable
                .iter()
                .filter(|image| {
                    usize::try_from(index - 1)
                        .ok()
                        .and_then(|o| image.entries.get(o))
                        .is_some_and(|e| c.is(e))
                })
                .count();
            if holders < NODES / 2 + 1 {
                return Err(Violation::new(format!(
                    "committed entry {index} {c:?} is durable on only {holders} nodes"
                )));
            }
        }
        Ok(())
    }

    fn check_log_matching(&self) -> Result<(), Violation> {
        let mut logs: Vec<&[Entry]> = Vec::with_capacity(2 * NODES);
        for n in 0..NODES {
            let log = self.node(n).log();
            logs.push(log.slice(1, log.last_index()));
            logs.push(&self.durable[n].entries);
        }
        // Even positions are a node's log, odd ones its image.
        let name = |i: usize| format!("node {}'s {}", i / 2, ["log", "image"][i % 2]);
        for (i, a) in logs.iter().enumerate() {
            for (j, b) in logs.iter().enumerate().skip(i + 1) {
                let shared = a.len().min(b.len());
                let Some(top) = (0..shared).rev().find(|&k| a[k].term == b[k].term) else {
                    continue;
                };
                if a[..=top] != b[..=top] {
                    return Err(Violation::new(format!(
                        "log matching: {} and {} agree on the term at {} but differ at or before it",
                        name(i),
                        name(j),
                        top + 1
                    )));
                }
            }
        }
        Ok(())
    }
}
