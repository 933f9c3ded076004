//! What clients ask and what they are told: the commands that go through the
//! Raft log and their replies.

use serde::{Deserialize, Serialize};

/// A client's identity, unique per clerk (random 64 bits in practice).
pub type ClientId = u64;

/// One operation on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read a key ("" if missing).
    Get {
        /// The key.
        key: String,
    },
    /// Replace a key's value.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Append to a key's value (missing keys count as "").
    Append {
        /// The key.
        key: String,
        /// What to append.
        value: String,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Append { key, .. } => key,
        }
    }
}

/// A client request as it travels through the log: who sent it, its request
/// number within that client's session, and the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client.
    pub client: ClientId,
    /// The client's request number, from 1, one outstanding at a time.
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

/// The outcome of an applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A Get's value ("" for a missing key).
    Value(String),
    /// A Put or Append took effect.
    Done,
    /// The client's session was evicted and this request cannot be told
    /// apart from one already applied; it was not applied.
    SessionExpired,
}

/// A server's answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The request was applied (or had been already) with this outcome.
    Applied(Outcome),
    /// This server cannot answer: it is not the leader, or lost leadership
    /// before the request committed. Try `leader_hint`, or the next server.
    WrongLeader {
        /// Who this server believes leads, as a Raft node id.
        leader_hint: Option<u64>,
    },
}
