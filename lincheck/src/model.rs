//! The sequential specification a history is checked against ([`Model`]) and
//! the shape of one recorded operation ([`Operation`]).
//!
//! # Unknown outcomes
//!
//! An operation whose outcome is unknown (the client never saw a reply, or
//! Jepsen logged it as `:info`) is recorded with `ret == UNKNOWN_RETURN`
//! (`u64::MAX`) and an output the model accepts in every state (the
//! `Unknown` variants of [`super::KvOutput`] and [`super::RegisterOutput`]).
//! Its return event sorts after every other event, so the search may
//! linearize it at any point after its call, including after every other
//! operation, which is the same as its never having taken effect.

use std::fmt::Debug;
use std::hash::Hash;

/// The return time of an operation whose outcome is unknown: it may take
/// effect at any point after its call, or never.
pub const UNKNOWN_RETURN: u64 = u64::MAX;

/// One operation of a history: who issued it, when it was called and when it
/// returned (nanoseconds on any clock shared by all clients), what was asked
/// and what was answered.
///
/// `ret >= call` must hold. `ret == UNKNOWN_RETURN` marks an operation whose
/// outcome is unknown; its `output` must then be one the model accepts in
/// every state (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client (process) that issued the operation; one timeline row each.
    pub client: u64,
    /// When the call was made.
    pub call: u64,
    /// When the reply arrived, or [`UNKNOWN_RETURN`].
    pub ret: u64,
    /// What was asked.
    pub input: I,
    /// What was answered.
    pub output: O,
}

impl<I, O> Operation<I, O> {
    /// True if the outcome is unknown (`ret == UNKNOWN_RETURN`).
    pub fn is_open(&self) -> bool {
        self.ret == UNKNOWN_RETURN
    }
}

/// A sequential specification: a deterministic state machine that says,
/// for a state and an operation's input and output, whether that output is
/// possible and which state follows.
///
/// A nondeterministic outcome (an operation that may or may not have taken
/// effect) is not modelled inside `step`: it is expressed by the operation's
/// position, since an open operation can be linearized last (see
/// [`UNKNOWN_RETURN`]).
pub trait Model {
    /// The state of the specified object. Compared and hashed by the
    /// checker's cache, so equal states must mean equal futures. `Send +
    /// 'static` so that a large memo can be freed on another thread after
    /// the check returns, keeping the time budget.
    type State: Clone + Eq + Hash + Debug + Send + 'static;
    /// What a client asks.
    type Input: Clone + Debug;
    /// What a client is answered.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after applying `input` in `state` and answering `output`;
    /// `None` if `output` is impossible for `input` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Splits a history into independent sub-histories (for example one per
    /// key), each a list of indices into `ops`, each in increasing order. The
    /// history is linearizable iff every sub-history is. The order of the
    /// partitions is the order in which they are checked, so it must not
    /// depend on anything but `ops`. The default is one partition.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        if ops.is_empty() {
            Vec::new()
        } else {
            vec![(0..ops.len()).collect()]
        }
    }

    /// An estimate of the heap memory `state` holds that the states it was
    /// stepped from do not share, in bytes: the checker adds it up for every
    /// state its memo keeps, to honour its memory limit. The default, 0,
    /// fits states without heap data.
    fn state_heap_bytes(&self, state: &Self::State) -> usize {
        let _ = state;
        0
    }

    /// A short human-readable description of an operation, for reports.
    fn describe_operation(&self, input: &Self::Input, output: &Self::Output) -> String;

    /// A short human-readable description of a state, for reports.
    fn describe_state(&self, state: &Self::State) -> String;
}
