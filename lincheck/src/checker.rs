//! The linearizability check: Wing & Gong's depth-first search over
//! linearizations with Lowe's memoisation ("Testing for linearizability",
//! 2017), the algorithm porcupine uses, run on each partition in turn.
//!
//! # The search
//!
//! The calls and returns of a partition's operations are sorted by time into
//! one event list. The operations that may take effect next are exactly those
//! whose call comes before the first remaining return. The search walks the
//! list from the front: at a call it asks the model whether the operation can
//! take effect in the current state; if so, and the configuration (set of
//! linearized operations, new state) has not been seen before, it lifts the
//! call and its return out of the list, pushes the old state on a stack and
//! starts again from the front. Reaching a return means no remaining
//! candidate works: the last lifted operation is put back (the list is
//! doubly linked, so putting back is O(1)) and the search tries the next
//! call after it. An empty stack at a return means there is no
//! linearization.
//!
//! The cache of configurations holds every one reached, so no subtree is
//! searched twice: two paths that linearize the same operations into the
//! same state have the same futures.
//!
//! # Operations with unknown outcome
//!
//! An open operation (`ret == UNKNOWN_RETURN`, output accepted in every
//! state) never has to precede anything and can always be linearized last,
//! where it is as good as never having happened. Two refinements follow,
//! each of which only skips configurations from which, if success were
//! possible, it would also be found elsewhere:
//!
//! * success is reached once every completed (not open) operation is
//!   linearized; the open ones left over go last;
//! * an open operation that would leave the state unchanged is not tried:
//!   it might as well go last.
//!
//! Without open operations this is exactly the plain search.
//!
//! # Equal timestamps
//!
//! Intervals are closed: when one operation returns at time `t` and another
//! is called at the same `t`, the two are treated as concurrent (at equal
//! times calls sort before returns), so either may take effect first. This
//! is the conservative reading: it can only accept more histories, never
//! report a violation that a finer clock would not.
//!
//! # Determinism
//!
//! The search order depends only on the history (events sort by time, then
//! calls before returns, then by operation index), and the cache is only
//! asked for membership, so the verdict and the violation reported are the
//! same on every run, except that a search cut short by the time budget
//! reports [`Verdict::Unknown`].

use std::fmt;
use std::time::{Duration, Instant};

use super::bitset::{mix64, stable_hash, Bitset};
use super::model::{Model, Operation};

/// The outcome of [`check`].
pub enum Verdict<M: Model> {
    /// Every partition has a linearization.
    Linearizable,
    /// The first partition (in [`Model::partition`] order) found to have no
    /// linearization.
    NotLinearizable(Box<Violation<M>>),
    /// The time budget ran out (or the cache reached
    /// [`MAX_CACHE_ENTRIES`]) before a verdict. The caller decides what this
    /// means; the lab tests treat it as a failure.
    Unknown,
}

impl<M: Model> Verdict<M> {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// A short name: `linearizable`, `not-linearizable` or `unknown` (the
    /// words `expected.tsv` uses).
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable(_) => "not-linearizable",
            Verdict::Unknown => "unknown",
        }
    }

    /// The violation, if the history is not linearizable.
    pub fn violation(&self) -> Option<&Violation<M>> {
        match self {
            Verdict::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl<M: Model> fmt::Debug for Verdict<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("Linearizable"),
            Verdict::NotLinearizable(v) => f.debug_tuple("NotLinearizable").field(v).finish(),
            Verdict::Unknown => f.write_str("Unknown"),
        }
    }
}

/// A partition with no linearization, and how far the search got.
pub struct Violation<M: Model> {
    /// The index of the partition in [`Model::partition`] order.
    pub partition: usize,
    /// The partition's operations, in history order.
    pub ops: Vec<Operation<M::Input, M::Output>>,
    /// For each of `ops`, its index in the history given to [`check`].
    pub history_ids: Vec<usize>,
    /// The longest linearizable prefix the search found: indices into `ops`,
    /// in linearization order. It is the first path found that linearizes
    /// the most completed operations (operations with an unknown outcome
    /// are optional and not counted).
    pub longest_prefix: Vec<usize>,
    /// The model state after `longest_prefix`.
    pub state_after_prefix: M::State,
    /// The operations that could come next after the prefix (their call
    /// precedes every remaining return) but whose output the model rejects
    /// in `state_after_prefix`: indices into `ops`, in event order. Never
    /// empty.
    pub rejected: Vec<usize>,
}

impl<M: Model> fmt::Debug for Violation<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Violation")
            .field("partition", &self.partition)
            .field("ops", &self.ops)
            .field("history_ids", &self.history_ids)
            .field("longest_prefix", &self.longest_prefix)
            .field("state_after_prefix", &self.state_after_prefix)
            .field("rejected", &self.rejected)
            .finish()
    }
}

impl<M: Model> Violation<M> {
    /// A plain-text summary: the prefix, the state after it and the
    /// operations that cannot follow it.
    pub fn describe(&self, model: &M) -> String {
        let op = |i: usize| {
            let o = &self.ops[i];
            format!(
                "client {} {}",
                o.client,
                model.describe_operation(&o.input, &o.output)
            )
        };
        let mut s = format!(
            "partition {} ({} operations): longest linearizable prefix has {} operations, \
             ending in state {}; none of these can come next:",
            self.partition,
            self.ops.len(),
            self.longest_prefix.len(),
            model.describe_state(&self.state_after_prefix)
        );
        for &i in &self.rejected {
            s.push_str("\n  ");
            s.push_str(&op(i));
        }
        s
    }
}

/// The most (linearized set, state) pairs one partition's cache may hold;
/// beyond it the check gives up with [`Verdict::Unknown`] rather than
/// exhaust memory.
pub const MAX_CACHE_ENTRIES: usize = 1 << 26;

/// How many search steps pass between two looks at the clock.
const STEPS_PER_CLOCK_READ: u32 = 1 << 12;

/// Checks `history` against `model`, partition by partition in
/// [`Model::partition`] order, stopping at the first partition with no
/// linearization. Gives up with [`Verdict::Unknown`] once `budget` has
/// elapsed (checked before each partition and every few thousand search
/// steps), so a zero budget gives `Unknown` for any non-empty history.
///
/// Panics if an operation returns before it is called.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> Verdict<M> {
    check_within(model, history, Instant::now().checked_add(budget), None).0
}

/// Like [`check`], but the budget is a number of search steps instead of
/// time, so the verdict depends only on the history, never on how loaded the
/// machine is. Returns the verdict and the steps used.
pub fn check_steps<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> (Verdict<M>, u64) {
    let (verdict, left) = check_within(model, history, None, Some(max_steps));
    (verdict, max_steps - left.unwrap_or(0))
}

fn check_within<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
    mut steps_left: Option<u64>,
) -> (Verdict<M>, Option<u64>) {
    for (i, op) in history.iter().enumerate() {
        assert!(
            op.ret >= op.call,
            "operation {i} returns ({}) before its call ({})",
            op.ret,
            op.call
        );
    }
    for (index, ids) in model.partition(history).into_iter().enumerate() {
        if ids.is_empty() {
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || steps_left == Some(0) {
            return (Verdict::Unknown, steps_left);
        }
        let ops: Vec<&Operation<M::Input, M::Output>> = ids.iter().map(|&i| &history[i]).collect();
        let mut search = Search::new(model, &ops, deadline);
        search.steps_left = steps_left;
        let outcome = search.run();
        steps_left = search.steps_left;
        match outcome {
            Outcome::Linearizable => {}
            Outcome::GaveUp => return (Verdict::Unknown, steps_left),
            Outcome::Illegal { prefix, state } => {
                let rejected = search.rejected_after(&prefix, &state);
                return (
                    Verdict::NotLinearizable(Box::new(Violation {
                        partition: index,
                        ops: ops.into_iter().cloned().collect(),
                        history_ids: ids,
                        longest_prefix: prefix,
                        state_after_prefix: state,
                        rejected,
                    })),
                    steps_left,
                );
            }
        }
    }
    (Verdict::Linearizable, steps_left)
}

/// How one partition's search ended.
enum Outcome<S> {
    Linearizable,
    Illegal { prefix: Vec<usize>, state: S },
    GaveUp,
}

/// Marks the end of the event list.
const NIL: u32 = u32::MAX;
/// The list's head sentinel.
const HEAD: u32 = 0;

/// One partition's search state. Nodes `1..=2n` of the list are the events
/// in time order; node 0 is the head sentinel.
struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
    /// With a step budget: steps still allowed.
    steps_left: Option<u64>,
    /// The events in sorted order (`events[k]` is node `k + 1`).
    events: Vec<Event>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// The node of each operation's return event.
    return_node: Vec<u32>,
}

/// A call or a return of operation `op`.
#[derive(Clone, Copy)]
struct Event {
    op: u32,
    is_call: bool,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(
        model: &'a M,
        ops: &'a [&'a Operation<M::Input, M::Output>],
        deadline: Option<Instant>,
    ) -> Self {
        let n = ops.len();
        assert!(
            n < (NIL as usize) / 2,
            "partition too large: {n} operations"
        );
        // Sort key: time, then calls (0) before returns (1), then op index.
        let mut keys: Vec<(u64, u8, u32)> = Vec::with_capacity(2 * n);
        for (i, op) in ops.iter().enumerate() {
            keys.push((op.call, 0, i as u32));
            keys.push((op.ret, 1, i as u32));
        }
        keys.sort_unstable();
        let events: Vec<Event> = keys
            .iter()
            .map(|&(_, kind, op)| Event {
                op,
                is_call: kind == 0,
            })
            .collect();
        let nodes = events.len() + 1;
        let next: Vec<u32> = (0..nodes)
            .map(|k| if k + 1 < nodes { (k + 1) as u32 } else { NIL })
            .collect();
        let prev: Vec<u32> = (0..nodes)
            .map(|k| if k == 0 { NIL } else { (k - 1) as u32 })
            .collect();
        let mut return_node = vec![NIL; n];
        for (k, e) in events.iter().enumerate() {
            if !e.is_call {
                return_node[e.op as usize] = (k + 1) as u32;
            }
        }
        Search {
            model,
            ops,
            deadline,
            steps_left: None,
            events,
            next,
            prev,
            return_node,
        }
    }

    fn event(&self, node: u32) -> Event {
        self.events[node as usize - 1]
    }

    fn unlink(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = n;
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }

    /// Puts back a node removed by `unlink`; nodes must be put back in the
    /// reverse order of their removal.
    fn relink(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = node;
        if n != NIL {
            self.prev[n as usize] = node;
        }
    }

    /// Takes an operation's call and return out of the list.
    fn lift(&mut self, call_node: u32) {
        let ret = self.return_node[self.event(call_node).op as usize];
        self.unlink(call_node);
        self.unlink(ret);
    }

    /// Undoes the latest `lift`.
    fn unlift(&mut self, call_node: u32) {
        let ret = self.return_node[self.event(call_node).op as usize];
        self.relink(ret);
        self.relink(call_node);
    }

    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn run(&mut self) -> Outcome<M::State> {
        let mut state = self.model.init();
        let known_count = self.ops.iter().filter(|o| !o.is_open()).count();
        let mut linearized = Bitset::new(self.ops.len());
        let mut cache = Cache::new(self.ops.len());
        // (call node of the lifted operation, state before it)
        let mut stack: Vec<(u32, M::State)> = Vec::with_capacity(self.ops.len());
        let mut best_prefix: Vec<usize> = Vec::new();
        let mut best_state = state.clone();
        let mut best_known = 0;
        let mut known_left = known_count;
        let mut steps_to_clock = STEPS_PER_CLOCK_READ;
        let mut node = self.next[HEAD as usize];
        while known_left > 0 {
            if let Some(left) = self.steps_left.as_mut() {
                if *left == 0 {
                    return Outcome::GaveUp;
                }
                *left -= 1;
            }
            steps_to_clock -= 1;
            if steps_to_clock == 0 {
                steps_to_clock = STEPS_PER_CLOCK_READ;
                if self.out_of_time() {
                    return Outcome::GaveUp;
                }
            }
            let event = self.event(node);
            if event.is_call {
                let i = event.op as usize;
                let op = self.ops[i];
                let after = self
                    .model
                    .step(&state, &op.input, &op.output)
                    .filter(|after| !(op.is_open() && *after == state));
                if let Some(after) = after {
                    linearized.insert(i);
                    let hash = linearized.hash() ^ mix64(stable_hash(&after));
                    if cache.insert(hash, &linearized, &after) {
                        if cache.len() > MAX_CACHE_ENTRIES {
                            return Outcome::GaveUp;
                        }
                        let before = std::mem::replace(&mut state, after);
                        stack.push((node, before));
                        self.lift(node);
                        if !op.is_open() {
                            known_left -= 1;
                            if known_count - known_left > best_known {
                                best_known = known_count - known_left;
                                best_prefix = self.stack_ops(&stack);
                                best_state = state.clone();
                            }
                        }
                        node = self.next[HEAD as usize];
                        continue;
                    }
                    linearized.remove(i);
                }
                node = self.next[node as usize];
            } else {
                // An operation that must precede everything after this
                // return could not be linearized here: backtrack.
                let Some((call_node, before)) = stack.pop() else {
                    return Outcome::Illegal {
                        prefix: best_prefix,
                        state: best_state,
                    };
                };
                state = before;
                let undone = self.event(call_node).op as usize;
                linearized.remove(undone);
                known_left += usize::from(!self.ops[undone].is_open());
                self.unlift(call_node);
                node = self.next[call_node as usize];
            }
        }
        Outcome::Linearizable
    }

    fn stack_ops(&self, stack: &[(u32, M::State)]) -> Vec<usize> {
        stack
            .iter()
            .map(|&(node, _)| self.event(node).op as usize)
            .collect()
    }

    /// The operations that may come right after `prefix` (called before the
    /// first remaining return) whose output the model rejects in `state`.
    fn rejected_after(&self, prefix: &[usize], state: &M::State) -> Vec<usize> {
        let mut in_prefix = vec![false; self.ops.len()];
        for &i in prefix {
            in_prefix[i] = true;
        }
        let mut rejected = Vec::new();
        for e in &self.events {
            if in_prefix[e.op as usize] {
                continue;
            }
            if !e.is_call {
                break;
            }
            let op = self.ops[e.op as usize];
            if self.model.step(state, &op.input, &op.output).is_none() {
                rejected.push(e.op as usize);
            }
        }
        debug_assert!(
            !rejected.is_empty(),
            "the longest prefix ends where every completed candidate is rejected"
        );
        rejected
    }
}

/// The memo of configurations reached: an open-addressing hash table
/// (linear probing, at most half full) over (linearized set, state) entries
/// stored in flat arrays. Only ever asked for membership.
struct Cache<S> {
    words_per_set: usize,
    /// Entry `k`'s set is `sets[k * words_per_set..][..words_per_set]`.
    sets: Vec<u64>,
    states: Vec<S>,
    hashes: Vec<u64>,
    /// 0 for an empty slot, else the hash's top 32 bits above entry index + 1,
    /// so most mismatches are seen without touching the entry.
    slots: Vec<u64>,
}

impl<S: Clone + Eq> Cache<S> {
    fn new(ops: usize) -> Self {
        Cache {
            words_per_set: ops.div_ceil(64),
            sets: Vec::new(),
            states: Vec::new(),
            hashes: Vec::new(),
            slots: vec![0; 1024],
        }
    }

    fn len(&self) -> usize {
        self.states.len()
    }

    fn slot(hash: u64, entry: usize) -> u64 {
        (hash & !0xffff_ffff) | (entry as u64 + 1)
    }

    /// Adds the configuration; false if it was already present.
    fn insert(&mut self, hash: u64, set: &Bitset, state: &S) -> bool {
        if (self.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let w = self.words_per_set;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                break;
            }
            if (slot ^ hash) >> 32 == 0 {
                let k = (slot & 0xffff_ffff) as usize - 1;
                let stored = &self.sets[k * w..(k + 1) * w];
                if stored.iter().zip(set.words()).all(|(a, b)| a == b) && self.states[k] == *state {
                    return false;
                }
            }
            i = (i + 1) & mask;
        }
        assert!(
            self.len() < u32::MAX as usize,
            "cache entry index fits 32 bits"
        );
        self.slots[i] = Self::slot(hash, self.len());
        self.hashes.push(hash);
        self.sets.extend_from_slice(set.words());
        self.states.push(state.clone());
        true
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let mask = size - 1;
        let mut slots = vec![0u64; size];
        for (k, &hash) in self.hashes.iter().enumerate() {
            let mut i = hash as usize & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = Self::slot(hash, k);
        }
        self.slots = slots;
    }
}
