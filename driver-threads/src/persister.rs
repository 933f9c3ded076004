//! Where a node thread writes its `Persist` actions: the [`Storage`] trait
//! (implemented for the lab's in-memory `raft_testkit::Persister` with the
//! `lab` feature, and by the TCP node's durable store).
//!
//! A node thread holds its storage as `Arc<Mutex<S>>` and writes each
//! `Persist` synchronously before reporting `Persisted`, so a write is
//! durable (in this process) exactly when the core is told so. A crash
//! detaches the storage: the harness keeps a copy for the restarted node and
//! the dead incarnation can only write into the old one (lab-tests.md §2.4).

use raft_core::{DurableState, Persist};

/// Durable storage for one node: the Raft state built from `Persist`
/// actions, and the snapshot bytes.
pub trait Storage: Clone + Send + 'static {
    /// Applies one write atomically.
    fn save(&mut self, persist: &Persist);
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
