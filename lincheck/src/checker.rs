//! The linearizability check: Wing & Gong's depth-first search over
//! linearizations with Lowe's memoisation ("Testing for linearizability",
//! 2017), the algorithm porcupine uses, run on every partition of the
//! history, interleaved.
//!
//! # Partitions, interleaved
//!
//! [`Model::partition`] splits a history into independent parts (one per
//! key for [`crate::KvModel`]). Their searches take turns, a slice of
//! [`SLICE_STEPS`] steps each in partition order, on the caller's thread,
//! until every one has an answer or one is found not linearizable: a
//! partition whose search explodes cannot hide a violation in a later one
//! that takes a few steps to find. The history is linearizable iff every
//! partition is; [`check_with`] reports each partition's verdict, steps and
//! memory ([`CheckReport`]).
//!
//! # Limits
//!
//! Every check has bounds ([`CheckOptions`]): a time budget (the clock is
//! read between slices, while the memo's table is enlarged, and between the
//! setups of two partitions), a step budget (shared by all partitions, so
//! the verdict does not depend on the machine's speed), and a memory limit
//! on the estimated bytes of every search's memo, stack and event lists. A
//! partition whose memo would grow past the memory limit stops with
//! [`UnknownReason::MemoryLimit`] and frees its memory; the others go on.
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
//! calls before returns, then by operation index), the interleaving only on
//! the step counts, and the cache is only asked for membership, so the
//! verdict, the steps and the violation reported are the same on every run,
//! except that a search cut short by the time budget reports
//! [`Verdict::Unknown`]. With a step budget and no time budget
//! ([`check_steps`]) everything is deterministic.

use std::fmt;
use std::time::{Duration, Instant};

use super::model::{Model, Operation};
use super::search::{Progress, Search};

/// The outcome of [`check`].
pub enum Verdict<M: Model> {
    /// Every partition has a linearization.
    Linearizable,
    /// A partition found to have no linearization (the first found; with
    /// several, which one depends on how many steps each needed).
    NotLinearizable(Box<Violation<M>>),
    /// Some partition has no answer and none is known to be illegal: a
    /// budget ran out, or a memo reached the memory limit or
    /// [`MAX_CACHE_ENTRIES`] ([`CheckReport::unknown_reason`] says which).
    /// The caller decides what this means; the lab tests treat it as a
    /// failure.
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
/// beyond it that partition's verdict is unknown
/// ([`UnknownReason::MemoEntries`]).
pub const MAX_CACHE_ENTRIES: usize = 1 << 26;

/// The default memory limit of a check ([`CheckOptions::memory_limit_bytes`]):
/// 2 GiB of estimated search memory.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 2 << 30;

/// The steps one partition's search takes before the next partition's turn;
/// also how often the clock is read.
pub const SLICE_STEPS: u64 = 1 << 12;

/// The bounds of a check. Every field has a default
/// ([`CheckOptions::default`]: no time or step budget, a memory limit of
/// [`DEFAULT_MEMORY_LIMIT_BYTES`], stop at the first violation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Wall time for the whole check, setup included; `None`: unbounded.
    pub time_budget: Option<Duration>,
    /// Search steps for the whole check, all partitions together; `None`:
    /// unbounded. Unlike time, it makes the verdict independent of the
    /// machine.
    pub max_steps: Option<u64>,
    /// The most memory all searches together may hold, as estimated by
    /// [`PartitionResult::bytes`]; a partition whose memo would need more
    /// stops with [`UnknownReason::MemoryLimit`].
    pub memory_limit_bytes: usize,
    /// Stop at the first partition found not linearizable (the others are
    /// then [`UnknownReason::Stopped`]); if false, search every partition.
    pub stop_at_first_violation: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            time_budget: None,
            max_steps: None,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            stop_at_first_violation: true,
        }
    }
}

impl CheckOptions {
    /// The defaults with a time budget.
    pub fn with_time_budget(budget: Duration) -> Self {
        CheckOptions {
            time_budget: Some(budget),
            ..CheckOptions::default()
        }
    }

    /// The defaults with a step budget.
    pub fn with_max_steps(max_steps: u64) -> Self {
        CheckOptions {
            max_steps: Some(max_steps),
            ..CheckOptions::default()
        }
    }
}

/// Why a verdict is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownReason {
    /// The time budget ran out.
    TimeBudget,
    /// The step budget ran out.
    StepBudget,
    /// The partition's memo would have grown past the memory limit.
    MemoryLimit,
    /// The partition's memo reached [`MAX_CACHE_ENTRIES`].
    MemoEntries,
    /// The check stopped, at another partition's violation, before this
    /// partition had an answer.
    Stopped,
}

impl UnknownReason {
    /// A short name: `time budget`, `step budget`, `memory limit`,
    /// `memo entries` or `stopped`.
    pub fn name(self) -> &'static str {
        match self {
            UnknownReason::TimeBudget => "time budget",
            UnknownReason::StepBudget => "step budget",
            UnknownReason::MemoryLimit => "memory limit",
            UnknownReason::MemoEntries => "memo entries",
            UnknownReason::Stopped => "stopped",
        }
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One partition's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartitionVerdict {
    /// The partition has a linearization.
    Linearizable,
    /// It has none ([`Verdict::NotLinearizable`] holds the details of the
    /// one reported).
    NotLinearizable,
    /// The search has no answer, for this reason.
    Unknown(UnknownReason),
}

impl PartitionVerdict {
    /// `linearizable`, `not-linearizable` or `unknown`, as [`Verdict::name`].
    pub fn name(self) -> &'static str {
        match self {
            PartitionVerdict::Linearizable => "linearizable",
            PartitionVerdict::NotLinearizable => "not-linearizable",
            PartitionVerdict::Unknown(_) => "unknown",
        }
    }
}

/// What the check found for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionResult {
    /// The index of the partition in [`Model::partition`] order.
    pub index: usize,
    /// The index in the history of its first operation (to name it, for
    /// example by that operation's key).
    pub first_op: usize,
    /// How many operations it has.
    pub ops: usize,
    /// Its answer.
    pub verdict: PartitionVerdict,
    /// The search steps it took.
    pub steps: u64,
    /// The configurations its memo held at the end of its search.
    pub memo_entries: usize,
    /// The most memory its search held, in bytes (estimated: arrays exactly,
    /// model states' heap by [`Model::state_heap_bytes`]).
    pub bytes: usize,
}

/// Everything [`check_with`] found: the verdict, why it is unknown if it is,
/// and each partition's result.
pub struct CheckReport<M: Model> {
    /// The verdict on the whole history: not linearizable if any partition
    /// is not, linearizable if every partition is, else unknown.
    pub verdict: Verdict<M>,
    /// With [`Verdict::Unknown`], why (the first reason met, in partition
    /// order); else `None`.
    pub unknown_reason: Option<UnknownReason>,
    /// One result per non-empty partition, in [`Model::partition`] order.
    pub partitions: Vec<PartitionResult>,
    /// The search steps taken, all partitions together.
    pub steps: u64,
    /// The most memory all searches held at once, in bytes (estimated).
    pub peak_bytes: usize,
    /// The wall time the check took.
    pub elapsed: Duration,
}

impl<M: Model> fmt::Debug for CheckReport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckReport")
            .field("verdict", &self.verdict)
            .field("unknown_reason", &self.unknown_reason)
            .field("partitions", &self.partitions)
            .field("steps", &self.steps)
            .field("peak_bytes", &self.peak_bytes)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

/// Checks `history` against `model`, giving up with [`Verdict::Unknown`]
/// once `budget` has elapsed, so a zero budget gives `Unknown` for any
/// non-empty history. The memory limit is [`DEFAULT_MEMORY_LIMIT_BYTES`].
/// [`check_with`] gives the per-partition report and other bounds.
///
/// Panics if an operation returns before it is called.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> Verdict<M> {
    check_with(model, history, &CheckOptions::with_time_budget(budget)).verdict
}

/// Like [`check`], but the budget is a number of search steps instead of
/// time, so the verdict depends only on the history, never on how loaded the
/// machine is. Returns the verdict and the steps used.
pub fn check_steps<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> (Verdict<M>, u64) {
    let report = check_with(model, history, &CheckOptions::with_max_steps(max_steps));
    (report.verdict, report.steps)
}

/// Memo states with drop glue beyond this many are freed on a thread of
/// their own.
const FREE_ON_THREAD_ABOVE: usize = 1 << 16;

/// Frees a memo's states: on another thread if there are many and each
/// needs dropping (the KV model's shared values: about 50 ns each, so
/// seconds for a large memo), so that the check returns within its budget;
/// here if not, or if no thread can be started.
fn free_soon<S: Send + 'static>(states: Vec<S>) {
    if states.len() <= FREE_ON_THREAD_ABOVE || !std::mem::needs_drop::<S>() {
        return;
    }
    // On failure the closure, and the states with it, are dropped here.
    let _ = std::thread::Builder::new()
        .name("lincheck-free".into())
        .spawn(move || drop(states));
}

/// One partition's place in the interleaving.
struct Slot<'a, M: Model> {
    result: PartitionResult,
    ids: Vec<usize>,
    /// Set up on the partition's first turn, dropped when it has an answer.
    search: Option<Search<'a, M>>,
    /// The bytes of `search` counted in the check's total.
    counted_bytes: usize,
    done: bool,
}

/// Checks `history` against `model` within `options`' bounds, every
/// partition's search interleaved with the others' (see the module
/// documentation), and reports the verdict and each partition's result.
///
/// Panics if an operation returns before it is called.
pub fn check_with<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    options: &CheckOptions,
) -> CheckReport<M> {
    let started = Instant::now();
    let deadline = options.time_budget.and_then(|b| started.checked_add(b));
    let out_of_time = || deadline.is_some_and(|d| Instant::now() >= d);
    for (i, op) in history.iter().enumerate() {
        assert!(
            op.ret >= op.call,
            "operation {i} returns ({}) before its call ({})",
            op.ret,
            op.call
        );
    }
    let mut slots: Vec<Slot<'_, M>> = model
        .partition(history)
        .into_iter()
        .enumerate()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(index, ids)| Slot {
            result: PartitionResult {
                index,
                first_op: ids[0],
                ops: ids.len(),
                verdict: PartitionVerdict::Unknown(UnknownReason::Stopped),
                steps: 0,
                memo_entries: 0,
                bytes: 0,
            },
            ids,
            search: None,
            counted_bytes: 0,
            done: false,
        })
        .collect();
    let mut steps = 0u64;
    let mut held = 0usize;
    let mut peak_bytes = 0usize;
    let mut violation: Option<Box<Violation<M>>> = None;
    // Why the whole check stopped early, if it did.
    let mut stopped: Option<UnknownReason> = None;
    'rounds: while slots.iter().any(|s| !s.done) {
        for slot in slots.iter_mut().filter(|s| !s.done) {
            if out_of_time() {
                stopped = Some(UnknownReason::TimeBudget);
                break 'rounds;
            }
            let slice = match options.max_steps {
                Some(max) if steps >= max => {
                    stopped = Some(UnknownReason::StepBudget);
                    break 'rounds;
                }
                Some(max) => SLICE_STEPS.min(max - steps),
                None => SLICE_STEPS,
            };
            let search = slot.search.get_or_insert_with(|| {
                let ops = slot.ids.iter().map(|&i| &history[i]).collect();
                Search::new(model, ops, MAX_CACHE_ENTRIES)
            });
            let others = held - slot.counted_bytes;
            let before_steps = search.steps();
            let room = options
                .memory_limit_bytes
                .saturating_sub(others.saturating_add(search.bytes()));
            let progress = search.run(slice, room, deadline);
            steps += search.steps() - before_steps;
            slot.counted_bytes = search.bytes();
            held = others + slot.counted_bytes;
            peak_bytes = peak_bytes.max(held);
            slot.result.steps = search.steps();
            slot.result.memo_entries = search.memo_entries();
            slot.result.bytes = slot.result.bytes.max(slot.counted_bytes);
            let verdict = match progress {
                Progress::Paused => continue,
                Progress::Linearizable => PartitionVerdict::Linearizable,
                Progress::OutOfMemory => PartitionVerdict::Unknown(UnknownReason::MemoryLimit),
                Progress::CacheFull => PartitionVerdict::Unknown(UnknownReason::MemoEntries),
                Progress::OutOfTime => {
                    stopped = Some(UnknownReason::TimeBudget);
                    break 'rounds;
                }
                Progress::Illegal { prefix, state } => {
                    let rejected = search.rejected_after(&prefix, &state);
                    if violation.is_none() {
                        violation = Some(Box::new(Violation {
                            partition: slot.result.index,
                            ops: slot.ids.iter().map(|&i| history[i].clone()).collect(),
                            history_ids: slot.ids.clone(),
                            longest_prefix: prefix,
                            state_after_prefix: state,
                            rejected,
                        }));
                    }
                    PartitionVerdict::NotLinearizable
                }
            };
            slot.result.verdict = verdict;
            slot.done = true;
            if let Some(search) = slot.search.as_mut() {
                free_soon(search.take_memo_states());
            }
            slot.search = None;
            held -= slot.counted_bytes;
            slot.counted_bytes = 0;
            if verdict == PartitionVerdict::NotLinearizable && options.stop_at_first_violation {
                break 'rounds;
            }
        }
    }
    if let Some(reason) = stopped {
        for slot in slots.iter_mut().filter(|s| !s.done) {
            slot.result.verdict = PartitionVerdict::Unknown(reason);
        }
    }
    for search in slots.iter_mut().filter_map(|s| s.search.as_mut()) {
        free_soon(search.take_memo_states());
    }
    let partitions: Vec<PartitionResult> = slots.into_iter().map(|s| s.result).collect();
    let unknown_reason = partitions.iter().find_map(|p| match p.verdict {
        PartitionVerdict::Unknown(r) if r != UnknownReason::Stopped => Some(r),
        _ => None,
    });
    let (verdict, unknown_reason) = match (violation, unknown_reason) {
        (Some(v), _) => (Verdict::NotLinearizable(v), None),
        (None, Some(r)) => (Verdict::Unknown, Some(r)),
        (None, None) => (Verdict::Linearizable, None),
    };
    CheckReport {
        verdict,
        unknown_reason,
        partitions,
        steps,
        peak_bytes,
        elapsed: started.elapsed(),
    }
}
