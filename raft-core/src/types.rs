//! Plain data shared by messages, events, actions and storage.

use serde::{Deserialize, Serialize};

/// A Raft term. Term 0 is the state before any election.
pub type Term = u64;
/// A log index. Entries start at index 1; index 0 stands before the log.
pub type Index = u64;
/// A node's identity within its cluster.
pub type NodeId = u64;

use crate::membership::Membership;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload {
    /// A client command: the service's opaque bytes.
    Command(#[serde(with = "crate::bytes")] Vec<u8>),
    /// Nothing for the service: the entry a new leader appends so that
    /// entries of earlier terms commit (thesis §6.4, `Config::noop_on_election`).
    Noop,
    /// A new cluster configuration.
    Membership(Membership),
}

/// One log entry: what the leader of `term` placed at `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: Index,
    /// The term of the leader that created it.
    pub term: Term,
    /// What it carries.
    pub payload: Payload,
}

impl Entry {
    /// A command entry.
    pub fn new(index: Index, term: Term, command: Vec<u8>) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Command(command),
        }
    }

    /// The command's bytes, if this is a command entry.
    pub fn command(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Command(bytes) => Some(bytes),
            Payload::Noop | Payload::Membership(_) => None,
        }
    }

    /// An estimate of the entry's wire size, for batching limits.
    pub fn size_hint(&self) -> usize {
        match &self.payload {
            Payload::Command(bytes) => bytes.len() + 16,
            Payload::Noop => 16,
            Payload::Membership(m) => 16 + 8 * m.members().len(),
        }
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

/// Where a snapshot ends in the log, and the configuration in force there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers.
    pub index: Index,
    /// The term of that entry.
    pub term: Term,
    /// The latest configuration at `index` (the entry that set it may be
    /// compacted away). Empty (no voters) means "none recorded": the node's
    /// initial configuration (`Config::members`) applies. Snapshots written
    /// before configurations were recorded decode as empty.
    pub membership: Membership,
}

impl SnapshotMeta {
    /// A boundary at (`index`, `term`) with no configuration recorded.
    pub fn at(index: Index, term: Term) -> Self {
        SnapshotMeta {
            index,
            term,
            membership: Membership::default(),
        }
    }
}
