//! The key/value store model of the lab (`models/kv.go`): get, put and
//! append on string keys and values, every key starting as the empty string,
//! each key checked on its own. A key's state is an [`AppendValue`], so the
//! search copies and compares states in O(1) however long appends make
//! them.

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
}

/// A key/value request. `value` is ignored for a get.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvInput {
    /// What to do.
    pub op: KvOp,
    /// The key.
    pub key: String,
    /// The value to put or append.
    pub value: String,
}

impl KvInput {
    /// A get of `key`.
    pub fn get(key: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Get,
            key: key.into(),
            value: String::new(),
        }
    }

    /// A put of `value` at `key`.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Put,
            key: key.into(),
            value: value.into(),
        }
    }

    /// An append of `value` to `key`.
    pub fn append(key: impl Into<String>, value: impl Into<String>) -> Self {
        KvInput {
            op: KvOp::Append,
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A key/value reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The operation returned; for a get, the value read (ignored for put
    /// and append, which conventionally carry the empty string).
    Value(String),
    /// The outcome is unknown (no reply): accepted in every state. Use it
    /// with `ret == UNKNOWN_RETURN`.
    Unknown,
}

/// The lab's key/value model: the state of one key is a string (an
/// [`AppendValue`]), starting empty; a get must return it, a put replaces
/// it, an append extends it.
/// Partitioned by key, in order of each key's first appearance.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = AppendValue;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> AppendValue {
        AppendValue::new()
    }

    fn step(&self, state: &AppendValue, input: &KvInput, output: &KvOutput) -> Option<AppendValue> {
        match (input.op, output) {
            (KvOp::Get, KvOutput::Value(v)) => state.eq_str(v).then(|| state.clone()),
            (KvOp::Get, KvOutput::Unknown) => Some(state.clone()),
            (KvOp::Put, _) => Some(AppendValue::from(input.value.as_str())),
            (KvOp::Append, _) => Some(state.append(&input.value)),
        }
    }

    fn state_heap_bytes(&self, state: &AppendValue) -> usize {
        state.last_piece_bytes()
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
        match (input.op, output) {
            (KvOp::Get, KvOutput::Value(out)) => format!("get({k:?}) -> {out:?}"),
            (KvOp::Get, KvOutput::Unknown) => format!("get({k:?}) -> ?"),
            (KvOp::Put, KvOutput::Value(_)) => format!("put({k:?}, {v:?})"),
            (KvOp::Put, KvOutput::Unknown) => format!("put({k:?}, {v:?}) ?"),
            (KvOp::Append, KvOutput::Value(_)) => format!("append({k:?}, {v:?})"),
            (KvOp::Append, KvOutput::Unknown) => format!("append({k:?}, {v:?}) ?"),
        }
    }

    fn describe_state(&self, state: &AppendValue) -> String {
        format!("{state:?}")
    }
}
