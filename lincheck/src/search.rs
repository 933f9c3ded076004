//! One partition's search (see [`crate::checker`] for the algorithm), as a
//! value that runs for a given number of steps and can be resumed, so that
//! the checker can interleave the partitions of a history.
//!
//! Invariants between two calls of [`Search::run`]: the event list holds
//! exactly the operations not on the stack; `linearized` is the set of the
//! stack's operations; `state` is the model state after them; `known_left`
//! counts the completed operations not on the stack.

use std::time::Instant;

use super::bitset::{mix64, stable_hash, Bitset};
use super::cache::{Cache, Inserted};
use super::model::{Model, Operation};

/// Marks the end of the event list.
const NIL: u32 = u32::MAX;
/// The list's head sentinel.
const HEAD: u32 = 0;

/// Where a search stands after [`Search::run`].
pub(crate) enum Progress<S> {
    /// The steps given are used up; call `run` again.
    Paused,
    /// Every completed operation is linearized.
    Linearizable,
    /// No linearization exists.
    Illegal {
        /// The longest linearizable prefix found (indices into the ops).
        prefix: Vec<usize>,
        /// The state after it.
        state: S,
    },
    /// The memo would need more memory than the room given.
    OutOfMemory,
    /// The memo holds as many entries as it may.
    CacheFull,
    /// The deadline passed while the memo was being enlarged.
    OutOfTime,
}

/// A call or a return of operation `op`.
#[derive(Clone, Copy)]
struct Event {
    op: u32,
    is_call: bool,
}

/// One partition's search. Nodes `1..=2n` of the list are the events in time
/// order; node 0 is the head sentinel.
pub(crate) struct Search<'a, M: Model> {
    model: &'a M,
    ops: Vec<&'a Operation<M::Input, M::Output>>,
    /// The events in sorted order (`events[k]` is node `k + 1`).
    events: Vec<Event>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// The node of each operation's return event.
    return_node: Vec<u32>,
    state: M::State,
    linearized: Bitset,
    cache: Cache<M::State>,
    /// (call node of the lifted operation, state before it)
    stack: Vec<(u32, M::State)>,
    known_count: usize,
    known_left: usize,
    best_prefix: Vec<usize>,
    /// The lowest the stack has been since `best_prefix` was recorded: the
    /// two agree below it, so a new best copies only the stack above it
    /// (keeping the record O(1) per step, amortised).
    best_agrees_below: usize,
    best_state: M::State,
    best_known: usize,
    /// The node the search looks at next.
    node: u32,
    /// The steps taken so far.
    steps: u64,
    /// The most entries the memo may hold.
    max_entries: usize,
}

impl<'a, M: Model> Search<'a, M> {
    /// Sets up the search of `ops` (one partition, in history order).
    pub(crate) fn new(
        model: &'a M,
        ops: Vec<&'a Operation<M::Input, M::Output>>,
        max_entries: usize,
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
        let state = model.init();
        let known_count = ops.iter().filter(|o| !o.is_open()).count();
        Search {
            model,
            events,
            node: next[HEAD as usize],
            next,
            prev,
            return_node,
            best_state: state.clone(),
            state,
            linearized: Bitset::new(n),
            cache: Cache::new(n),
            stack: Vec::with_capacity(n),
            known_count,
            known_left: known_count,
            best_prefix: Vec::new(),
            best_agrees_below: 0,
            best_known: 0,
            steps: 0,
            max_entries,
            ops,
        }
    }

    /// The steps taken so far.
    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }

    /// The entries in the memo.
    pub(crate) fn memo_entries(&self) -> usize {
        self.cache.len()
    }

    /// Takes the memo's states out, to free them elsewhere; the search
    /// must not run again.
    pub(crate) fn take_memo_states(&mut self) -> Vec<M::State> {
        self.cache.take_states()
    }

    /// The memory the search holds, in bytes (an estimate: its arrays
    /// exactly, the states' heap as the model estimates it).
    pub(crate) fn bytes(&self) -> usize {
        let per_state = std::mem::size_of::<M::State>();
        self.cache.bytes()
            + 4 * (self.next.capacity() + self.prev.capacity() + self.return_node.capacity())
            + std::mem::size_of::<Event>() * self.events.capacity()
            + (4 + per_state) * self.stack.capacity()
            + 8 * (self.linearized.words().len() + self.best_prefix.capacity())
            + std::mem::size_of::<&Operation<M::Input, M::Output>>() * self.ops.capacity()
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

    /// Runs at most `steps` steps. The memo may grow by at most `room`
    /// bytes; `deadline` is watched while the memo's table is enlarged
    /// (the caller watches it between runs).
    pub(crate) fn run(
        &mut self,
        steps: u64,
        room: usize,
        deadline: Option<Instant>,
    ) -> Progress<M::State> {
        // The hot counters live in locals during the loop and are written
        // back on every way out.
        let mut node = self.node;
        let mut steps_left = steps;
        let progress = self.run_from(&mut node, &mut steps_left, room, deadline);
        self.node = node;
        self.steps += steps - steps_left;
        progress
    }

    fn run_from(
        &mut self,
        node_at: &mut u32,
        steps_left: &mut u64,
        mut room: usize,
        deadline: Option<Instant>,
    ) -> Progress<M::State> {
        let mut node = *node_at;
        let mut left = *steps_left;
        let progress = loop {
            if self.known_left == 0 {
                break Progress::Linearizable;
            }
            if left == 0 {
                break Progress::Paused;
            }
            left -= 1;
            let event = self.event(node);
            if !event.is_call {
                // An operation that must precede everything after this
                // return could not be linearized here: backtrack.
                let Some((call_node, before)) = self.stack.pop() else {
                    break Progress::Illegal {
                        prefix: std::mem::take(&mut self.best_prefix),
                        state: self.best_state.clone(),
                    };
                };
                self.state = before;
                self.best_agrees_below = self.best_agrees_below.min(self.stack.len());
                let undone = self.event(call_node).op as usize;
                self.linearized.remove(undone);
                self.known_left += usize::from(!self.ops[undone].is_open());
                self.unlift(call_node);
                node = self.next[call_node as usize];
                continue;
            }
            let i = event.op as usize;
            let op = self.ops[i];
            let after = self
                .model
                .step(&self.state, &op.input, &op.output)
                .filter(|after| !(op.is_open() && *after == self.state));
            let Some(after) = after else {
                node = self.next[node as usize];
                continue;
            };
            self.linearized.insert(i);
            let hash = self.linearized.hash() ^ mix64(stable_hash(&after));
            let heap = self.model.state_heap_bytes(&after);
            match self
                .cache
                .insert(hash, &mut self.linearized, &after, heap, room, deadline)
            {
                Inserted::Present => {
                    self.linearized.remove(i);
                    node = self.next[node as usize];
                    continue;
                }
                Inserted::NoRoom => break Progress::OutOfMemory,
                Inserted::OutOfTime => break Progress::OutOfTime,
                Inserted::Added => {}
            }
            if self.cache.len() > self.max_entries {
                break Progress::CacheFull;
            }
            room = room.saturating_sub(heap);
            let before = std::mem::replace(&mut self.state, after);
            self.stack.push((node, before));
            self.lift(node);
            if !op.is_open() {
                self.known_left -= 1;
                let known = self.known_count - self.known_left;
                if known > self.best_known {
                    self.best_known = known;
                    self.record_best_prefix();
                    self.best_state = self.state.clone();
                }
            }
            node = self.next[HEAD as usize];
        };
        *node_at = node;
        *steps_left = left;
        progress
    }

    /// Makes `best_prefix` the stack's operations.
    fn record_best_prefix(&mut self) {
        let agree = self.best_agrees_below;
        self.best_prefix.truncate(agree);
        for k in agree..self.stack.len() {
            let op = self.event(self.stack[k].0).op as usize;
            self.best_prefix.push(op);
        }
        self.best_agrees_below = self.stack.len();
        debug_assert_eq!(self.best_prefix.len(), self.stack.len());
    }

    /// The operations that may come right after `prefix` (called before the
    /// first remaining return) whose output the model rejects in `state`.
    pub(crate) fn rejected_after(&self, prefix: &[usize], state: &M::State) -> Vec<usize> {
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
