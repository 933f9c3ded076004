//! Plain data shared by messages, events, actions and storage.

use serde::{Deserialize, Serialize};

/// A Raft term. Term 0 is the state before any election.
pub type Term = u64;
/// A log index. Entries start at index 1; index 0 stands before the log.
pub type Index = u64;
/// A node's identity within its cluster.
pub type NodeId = u64;

/// One log entry: the client command the leader of `term` placed at `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: Index,
    /// The term of the leader that created it.
    pub term: Term,
    /// The service's opaque command bytes.
    #[serde(with = "crate::bytes")]
    pub command: Vec<u8>,
}

impl Entry {
    /// An estimate of the entry's wire size, for batching limits.
    pub fn size_hint(&self) -> usize {
        self.command.len() + 16
    }
}

/// The state every node must persist before it answers (Figure 2,
/// "Persistent state on all servers", less the log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate it voted for in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// Where a snapshot ends in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers.
    pub index: Index,
    /// The term of that entry.
    pub term: Term,
}

/// A service snapshot and where it ends in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Where the snapshot ends.
    pub meta: SnapshotMeta,
    /// The service's bytes.
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}
