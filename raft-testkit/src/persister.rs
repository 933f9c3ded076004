//! The lab's persister: the node's durable Raft state and its snapshot. The
//! Raft state is kept as the `DurableState` the node's `Persist` actions
//! build, and encoded with postcard whenever its size is asked for or the
//! node restarts, so size bounds measure the real encoding and every restart
//! goes through a real encode/decode round trip.
//!
//! Snapshot bytes never pass through the core: a driver stages the bytes of
//! a snapshot the service took, or of one a leader sent, under its index
//! ([`Persister::stage`]); the `Persist` that names that index makes it the
//! stored snapshot, atomically with the rest of the write.

use std::collections::BTreeMap;

use raft_core::{DurableState, Index, Persist};

/// One server's durable storage.
#[derive(Clone, Debug, Default)]
pub struct Persister {
    state: DurableState,
    snapshot: Vec<u8>,
    /// Snapshots written but not yet named by a `Persist`, by index.
    staged: BTreeMap<Index, Vec<u8>>,
}

impl Persister {
    /// Empty storage.
    pub fn new() -> Self {
        Persister::default()
    }

    /// Holds `data`, the snapshot through `index`, until a `Persist` names it.
    pub fn stage(&mut self, index: Index, data: Vec<u8>) {
        self.staged.insert(index, data);
    }

    /// Drops a staged snapshot that no `Persist` will name (a leader's
    /// snapshot the core did not install). The stored one stays.
    pub fn unstage(&mut self, index: Index) {
        self.staged.remove(&index);
    }

    /// Applies one write atomically. Panics if it names a snapshot that was
    /// not staged: the driver must stage it first.
    pub fn save(&mut self, persist: &Persist) {
        self.state.apply(persist);
        if let Some(meta) = &persist.snapshot {
            let data = self.staged.remove(&meta.index).unwrap_or_else(|| {
                panic!(
                    "a persist names the snapshot at {}, never staged",
                    meta.index
                )
            });
            self.snapshot = data;
            self.staged.retain(|&i, _| i > meta.index);
        }
    }

    /// The bytes of the snapshot through `index`: the stored one or a staged
    /// one (a leader sends its newest, which may not be stored yet).
    pub fn snapshot_at(&self, index: Index) -> Option<&[u8]> {
        if let Some(data) = self.staged.get(&index) {
            return Some(data);
        }
        let stored = self.state.snapshot.as_ref().map(|m| m.index);
        (stored == Some(index)).then_some(self.snapshot.as_slice())
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

    /// What a restarting node loads: the decoded Raft state and the stored
    /// snapshot's bytes. Staged snapshots do not survive a crash.
    pub fn load(&self) -> (DurableState, Option<Vec<u8>>) {
        let state: DurableState =
            postcard::from_bytes(&self.raft_state()).expect("durable state decodes");
        let snapshot = state.snapshot.as_ref().map(|_| self.snapshot.clone());
        (state, snapshot)
    }

    /// The storage a restarted node finds: this one without its staged
    /// snapshots.
    pub fn after_crash(&self) -> Persister {
        Persister {
            state: self.state.clone(),
            snapshot: self.snapshot.clone(),
            staged: BTreeMap::new(),
        }
    }
}
