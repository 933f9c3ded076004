//! The lab's persister: the node's durable Raft state and its snapshot. The
//! Raft state is kept as the `DurableState` the node's `Persist` actions
//! build, and encoded with postcard whenever its size is asked for or the
//! node restarts, so size bounds measure the real encoding and every restart
//! goes through a real encode/decode round trip.

use raft_core::{DurableState, Persist};

/// One server's durable storage.
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

    /// Applies one write atomically.
    pub fn save(&mut self, persist: &Persist) {
        if let Some(data) = self.state.apply(persist) {
            self.snapshot = data;
        }
    }

    /// The stored Raft state, encoded.
    pub fn raft_state(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.state).expect("durable state encodes")
    }

    /// The length of the encoded Raft state (the lab's `RaftStateSize`).
    pub fn raft_state_size(&self) -> usize {
        self.raft_state().len()
    }

    /// The stored snapshot bytes (empty before the first snapshot).
    pub fn snapshot(&self) -> &[u8] {
        &self.snapshot
    }

    /// The length of the stored snapshot (the lab's `SnapshotSize`).
    pub fn snapshot_size(&self) -> usize {
        self.snapshot.len()
    }

    /// The durable state as structured data (for the safety checker).
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    /// What a restarting node loads: the decoded Raft state and the snapshot.
    pub fn load(&self) -> (DurableState, Option<Vec<u8>>) {
        let state: DurableState =
            postcard::from_bytes(&self.raft_state()).expect("durable state decodes");
        let snapshot = state.snapshot.as_ref().map(|_| self.snapshot.clone());
        (state, snapshot)
    }
}
