//! Where a node thread writes its `Persist` actions and keeps its snapshots:
//! the [`Storage`] trait (implemented for the lab's in-memory
//! `raft_testkit::Persister` with the `lab` feature).
//!
//! A node thread holds its storage as `Arc<Mutex<S>>` and writes each
//! `Persist` synchronously before reporting `Persisted`, so a write is
//! durable (in this process) exactly when the core is told so. A crash
//! detaches the storage: the harness keeps a copy for the restarted node
//! (without the snapshots staged but never named by a write) and the dead
//! incarnation can only write into the old one (lab-tests.md §2.4).
//!
//! The core never holds snapshot bytes: the node thread stages the bytes of
//! a snapshot the service took, or of one a leader sent, under its index
//! ([`Storage::stage`]); the `Persist` naming that index makes it the stored
//! snapshot, atomically with the rest of the write.

use raft_core::{DurableState, Index, Persist};

/// Durable storage for one node: the Raft state built from `Persist`
/// actions, the stored snapshot's bytes and the staged ones.
pub trait Storage: Clone + Send + 'static {
    /// Applies one write atomically; a snapshot it names must be staged.
    fn save(&mut self, persist: &Persist);
    /// Holds `data`, the snapshot through `index`, until a `Persist` names
    /// it (or it is unstaged).
    fn stage(&mut self, index: Index, data: Vec<u8>);
    /// Drops a staged snapshot no `Persist` will name.
    fn unstage(&mut self, index: Index);
    /// The bytes of the snapshot through `index`, staged or stored.
    fn snapshot_at(&self, index: Index) -> Option<Vec<u8>>;
    /// What a restarting node loads: the Raft state and the snapshot bytes
    /// (present exactly when the state names a snapshot).
    fn load(&self) -> (DurableState, Option<Vec<u8>>);
    /// The length of the encoded Raft state (the lab's `RaftStateSize`).
    fn raft_state_size(&self) -> usize;
    /// The length of the stored snapshot (the lab's `SnapshotSize`).
    fn snapshot_size(&self) -> usize;
}

/// The lab's in-memory persister (`raft_testkit::Persister`), as a node
/// thread's storage: the lab harnesses and this crate's tests use it.
#[cfg(any(test, feature = "lab"))]
impl Storage for raft_testkit::Persister {
    fn save(&mut self, persist: &Persist) {
        raft_testkit::Persister::save(self, persist);
    }

    fn stage(&mut self, index: Index, data: Vec<u8>) {
        raft_testkit::Persister::stage(self, index, data);
    }

    fn unstage(&mut self, index: Index) {
        raft_testkit::Persister::unstage(self, index);
    }

    fn snapshot_at(&self, index: Index) -> Option<Vec<u8>> {
        raft_testkit::Persister::snapshot_at(self, index).map(<[u8]>::to_vec)
    }

    fn load(&self) -> (DurableState, Option<Vec<u8>>) {
        raft_testkit::Persister::load(self)
    }

    fn raft_state_size(&self) -> usize {
        raft_testkit::Persister::raft_state_size(self)
    }

    fn snapshot_size(&self) -> usize {
        raft_testkit::Persister::snapshot_size(self)
    }
}
