//! The key/value store model of the lab (`models/kv.go`): get, put and
//! append on string keys and values, each key checked on its own; and
//! beyond the lab, delete and compare-and-swap. A key's state is unset
//! (`None`, which a get reads as the empty string, as the lab's missing
//! keys) or an [`AppendValue`], so the search copies and compares states in
//! O(1) however long appends make them. Unset and set to "" differ only to
//! a delete (which says whether the key was set) and a compare-and-swap
//! (which may expect it unset).

use std::collections::BTreeMap;

use super::model::{Model, Operation};
use super::value::AppendValue;

/// What a key/value operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Read the key's value.
    Get,
    /// Replace the key's value.
    Put,
    /// Concatenate onto the key's value.
    Append,
    /// Unset the key, answering whether it was set.
    Delete,
    /// Set the key to `value` if its value is `expected`.
    CompareAndSwap,
}

/// A key/value request. `value` is ignored for a get and a delete,
/// `expected` for everything but a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvInput {
    /// What to do.
    pub op: KvOp,
    /// The key.
    pub key: String,
    /// The value to put or append, or a compare-and-swap's new value.
    pub value: String,
    /// The value a compare-and-swap expects; `None`: the key unset.
    pub expected: Option<String>,
}

impl KvInput {
    /// A get of `key`.
    pub fn get(key: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Get,
            key: key.into(),
            value: String::new(),
            expected: None,
        }
    }

    /// A put of `value` at `key`.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Put,
            key: key.into(),
            value: value.into(),
            expected: None,
        }
    }

    /// An append of `value` to `key`.
    pub fn append(key: impl Into<String>, value: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Append,
            key: key.into(),
            value: value.into(),
            expected: None,
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Delete,
            key: key.into(),
            value: String::new(),
            expected: None,
        }
    }

    /// A compare-and-swap of `key` from `expected` (`None`: unset) to
    /// `value`.
    pub fn compare_and_swap(
        key: impl Into<String>,
        expected: Option<&str>,
        value: impl Into<String>,
    ) -> Self {
        KvInput {
            op: KvOp::CompareAndSwap,
            key: key.into(),
            value: value.into(),
            expected: expected.map(str::to_string),
        }
    }
}

/// A key/value reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The operation returned; for a get, the value read (ignored for put
    /// and append, which conventionally carry the empty string).
    Value(String),
    /// A delete returned: whether the key was set.
    Existed(bool),
    /// A compare-and-swap found the expected value and set the new one.
    Swapped,
    /// A compare-and-swap found this value instead (`None`: unset) and
    /// changed nothing.
    NotSwapped(Option<String>),
    /// The outcome is unknown (no reply): accepted in every state. Use it
    /// with `ret == UNKNOWN_RETURN`.
    Unknown,
}

/// The key/value model: the state of one key is unset (`None`, where every
/// key starts) or a string (an [`AppendValue`]); a get must return it (""
/// if unset), a put replaces it, an append extends it (an unset key as
/// ""), a delete unsets it and must say whether it was set, and a
/// compare-and-swap replaces it if and only if it equals the expected
/// value (or is unset when `None` is expected) and must say which. An
/// operation whose outcome is unknown takes its effect without a check.
/// Partitioned by key, in order of each key's first appearance.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

/// Whether `state` is `expected` (`None`: unset; set to "" is set).
fn state_is(state: &Option<AppendValue>, expected: Option<&str>) -> bool {
    match (state, expected) {
        (None, None) => true,
        (Some(v), Some(e)) => v.eq_str(e),
        _ => false,
    }
}

impl Model for KvModel {
    type State = Option<AppendValue>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<AppendValue> {
        None
    }

    fn step(
        &self,
        state: &Option<AppendValue>,
        input: &KvInput,
        output: &KvOutput,
    ) -> Option<Option<AppendValue>> {
        let swaps = state_is(state, input.expected.as_deref());
        let swapped = || Some(Some(AppendValue::from(input.value.as_str())));
        match (input.op, output) {
            (KvOp::Get, KvOutput::Value(v)) => match state {
                Some(s) => s.eq_str(v),
                None => v.is_empty(),
            }
            .then(|| state.clone()),
            (KvOp::Get, KvOutput::Unknown) => Some(state.clone()),
            (KvOp::Put, _) => Some(Some(AppendValue::from(input.value.as_str()))),
            (KvOp::Append, _) => Some(Some(state.clone().unwrap_or_default().append(&input.value))),
            (KvOp::Delete, KvOutput::Existed(e)) => (state.is_some() == *e).then_some(None),
            (KvOp::Delete, KvOutput::Unknown) => Some(None),
            (KvOp::CompareAndSwap, KvOutput::Swapped) if swaps => swapped(),
            (KvOp::CompareAndSwap, KvOutput::NotSwapped(current)) if !swaps => {
                state_is(state, current.as_deref()).then(|| state.clone())
            }
            (KvOp::CompareAndSwap, KvOutput::Unknown) if swaps => swapped(),
            (KvOp::CompareAndSwap, KvOutput::Unknown) => Some(state.clone()),
            (KvOp::Get | KvOp::Delete | KvOp::CompareAndSwap, _) => None,
        }
    }

    fn state_heap_bytes(&self, state: &Option<AppendValue>) -> usize {
        state.as_ref().map_or(0, AppendValue::last_piece_bytes)
    }

    fn partition(&self, ops: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        let mut index_of_key: BTreeMap<&str, usize> = BTreeMap::new();
        let mut partitions: Vec<Vec<usize>> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let p = *index_of_key.entry(&op.input.key).or_insert_with(|| {
                partitions.push(Vec::new());
                partitions.len() - 1
            });
            partitions[p].push(i);
        }
        partitions
    }

    fn describe_operation(&self, input: &KvInput, output: &KvOutput) -> String {
        let (k, v) = (&input.key, &input.value);
        let call = match input.op {
            KvOp::Get => format!("get({k:?})"),
            KvOp::Put => format!("put({k:?}, {v:?})"),
            KvOp::Append => format!("append({k:?}, {v:?})"),
            KvOp::Delete => format!("delete({k:?})"),
            KvOp::CompareAndSwap => format!("cas({k:?}, {:?}, {v:?})", input.expected),
        };
        match (input.op, output) {
            (KvOp::Get, KvOutput::Unknown) => format!("{call} -> ?"),
            (_, KvOutput::Unknown) => format!("{call} ?"),
            (KvOp::Get, KvOutput::Value(out)) => format!("{call} -> {out:?}"),
            (_, KvOutput::Value(_)) => call,
            (_, KvOutput::Existed(e)) => format!("{call} -> existed {e}"),
            (_, KvOutput::Swapped) => format!("{call} -> swapped"),
            (_, KvOutput::NotSwapped(current)) => format!("{call} -> not swapped, {current:?}"),
        }
    }

    fn describe_state(&self, state: &Option<AppendValue>) -> String {
        match state {
            Some(v) => format!("{v:?}"),
            None => "unset".to_string(),
        }
    }
}
