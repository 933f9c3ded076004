//! Where a node thread writes its `Persist` actions: the [`Storage`] trait
//! and the lab's in-memory [`Persister`].
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

/// The lab's persister, in memory: the `DurableState` the node's writes
/// build, encoded with postcard whenever its size is asked for or the node
/// restarts (so sizes measure the real encoding, and every restart goes
/// through a real encode/decode round trip).
#[derive(Clone, Debug, Default)]
pub struct Persister {
    state: DurableState,
    snapshot: Vec<u8>,
}

impl Persister {
    /// Empty storage.
    pub fn new() -> Self {
        Persister::default()
    }

    /// The stored Raft state, encoded.
    pub fn raft_state(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.state).expect("durable state encodes")
    }

    /// The stored snapshot bytes (empty before the first snapshot).
    pub fn snapshot(&self) -> &[u8] {
        &self.snapshot
    }

    /// The durable state as structured data.
    pub fn state(&self) -> &DurableState {
        &self.state
    }
}

impl Storage for Persister {
    fn save(&mut self, persist: &Persist) {
        if let Some(data) = self.state.apply(persist) {
            self.snapshot = data;
        }
    }

    fn load(&self) -> (DurableState, Option<Vec<u8>>) {
        let state: DurableState =
            postcard::from_bytes(&self.raft_state()).expect("durable state decodes");
        let snapshot = state.snapshot.map(|_| self.snapshot.clone());
        (state, snapshot)
    }

    fn raft_state_size(&self) -> usize {
        self.raft_state().len()
    }

    fn snapshot_size(&self) -> usize {
        self.snapshot.len()
    }
}
