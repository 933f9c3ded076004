//! Plain data shared by messages, events, actions and storage.

use serde::{Deserialize, Serialize};

/// A Raft term. Term 0 is the state before any election.
pub type Term = u64;
/// A log index. Entries start at index 1; index 0 stands before the log.
pub type Index = u64;
/// A node's identity within its cluster.
pub type NodeId = u64;

use crate::membership::Membership;

/// A command's bytes, shared: cloning an entry (into the log, a `Persist`,
/// each follower's AppendEntries, an `Apply`) bumps a count instead of
/// copying the bytes. Encodes as bytes, exactly like a `Vec<u8>`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes(std::sync::Arc<[u8]>);

impl Bytes {
    /// The bytes as a slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v.into())
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes(v.into())
    }
}

/// As the slice (so an entry's `Debug` reads as it did with a `Vec<u8>`).
impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<Vec<u8>> for Bytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self.0 == **other
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_bytes(crate::bytes::SharedVisitor)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload {
    /// A client command: the service's opaque bytes.
    Command(Bytes),
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
    pub fn new(index: Index, term: Term, command: impl Into<Bytes>) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Command(command.into()),
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
