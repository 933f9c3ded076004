//! The key/value store model of the lab (`models/kv.go`): get, put and
//! append on string keys and values, every key starting as the empty string,
//! each key checked on its own.

use std::collections::BTreeMap;

use super::model::{Model, Operation};

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

/// The lab's key/value model: the state of one key is a string, starting
/// empty; a get must return it, a put replaces it, an append extends it.
/// Partitioned by key, in order of each key's first appearance.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = String;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvInput, output: &KvOutput) -> Option<String> {
        match (input.op, output) {
            (KvOp::Get, KvOutput::Value(v)) => (v == state).then(|| state.clone()),
            (KvOp::Get, KvOutput::Unknown) => Some(state.clone()),
            (KvOp::Put, _) => Some(input.value.clone()),
            (KvOp::Append, _) => {
                let mut s = String::with_capacity(state.len() + input.value.len());
                s.push_str(state);
                s.push_str(&input.value);
                Some(s)
            }
        }
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

    fn describe_state(&self, state: &String) -> String {
        format!("{state:?}")
    }
}
