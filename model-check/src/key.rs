//! The identity of a state for deduplication: a canonical abstraction of
//! everything the model can observe, hashed to 128 bits.
//!
//! Per node: term, vote, role, leader hint, commit, applied and durable
//! indices, log entries, a leader's per-follower progress, its durable image
//! and its writes in flight (without their ids). Then the in-flight messages
//! as a sorted multiset of encodings, the proposals and crashes spent, and
//! the invariants' history.
//!
//! What `raft-core` does not expose is left out: its random generator's
//! state, its clock and its separate deadlines (election, heartbeat, quorum
//! check), whether it has armed a timer since the last change, and the ids of
//! its writes. Two states that agree on the abstraction are merged even if
//! they differ there, so the search may skip behaviour that only such a
//! difference would allow: **every violation it reports is real (it comes
//! with a trace that replays it), but "none found" covers the merged states
//! only approximately.**

use std::hash::{DefaultHasher, Hash, Hasher};

use raft_core::{Entry, HardState, Index, Message, NodeId, ProgressState, Term};
use serde::Serialize;

use crate::invariants::History;
use crate::world::{Envelope, World, NODES};

#[derive(Serialize)]
struct NodeKey<'a> {
    term: Term,
    voted_for: Option<NodeId>,
    role: u8,
    leader_hint: Option<NodeId>,
    commit_index: Index,
    last_applied: Index,
    durable_index: Index,
    log: &'a [Entry],
    progress: Vec<ProgressKey>,
    image_hard_state: HardState,
    image: &'a [Entry],
    pending: Vec<PersistKey<'a>>,
}

#[derive(Serialize)]
struct ProgressKey {
    match_index: Index,
    next_index: Index,
    state: (u8, Index),
    paused: bool,
    inflight: Vec<Index>,
    recent_active: bool,
}

#[derive(Serialize)]
struct PersistKey<'a> {
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    entries: &'a [Entry],
    then_send: &'a [(NodeId, Message)],
}

#[derive(Serialize)]
struct WorldKey<'a> {
    nodes: Vec<NodeKey<'a>>,
    network: &'a [Envelope],
    proposals: u8,
    crashes: u8,
    changes: u8,
    reads: u8,
    history: &'a History,
}

impl World {
    /// The state's canonical abstraction, encoded.
    pub fn key_bytes(&self) -> Vec<u8> {
        let nodes = (0..NODES).map(|n| self.node_key(n)).collect();
        let key = WorldKey {
            nodes,
            network: &self.network,
            proposals: self.proposals,
            crashes: self.crashes,
            changes: self.changes,
            reads: self.reads,
            history: &self.history,
        };
        postcard::to_allocvec(&key).expect("keys encode")
    }

    /// A 128-bit hash of [`World::key_bytes`].
    pub fn key_hash(&self) -> u128 {
        let bytes = self.key_bytes();
        let half = |salt: u64| {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            bytes.hash(&mut h);
            h.finish()
        };
        (u128::from(half(0x5eed_0001)) << 64) | u128::from(half(0x5eed_0002))
    }

    fn node_key(&self, n: usize) -> NodeKey<'_> {
        let node = self.node(n);
        let progress = if node.is_leader() {
            (0..NODES as NodeId)
                .filter_map(|peer| node.progress(peer))
                .map(|p| ProgressKey {
                    match_index: p.match_index,
                    next_index: p.next_index,
                    state: match p.state {
                        ProgressState::Probe => (0, 0),
                        ProgressState::Replicate => (1, 0),
                        ProgressState::Snapshot { index } => (2, index),
                    },
                    paused: p.paused,
                    inflight: p.inflight.iter().copied().collect(),
                    recent_active: p.recent_active,
                })
                .collect()
        } else {
            Vec::new()
        };
        let pending = self.pending[n]
            .iter()
            .map(|p| PersistKey {
                hard_state: p.hard_state,
                truncate_from: p.truncate_from,
                entries: &p.entries,
                then_send: &p.then_send,
            })
            .collect();
        NodeKey {
            term: node.term(),
            voted_for: node.voted_for(),
            role: node.role() as u8,
            leader_hint: node.leader_hint(),
            commit_index: node.commit_index(),
            last_applied: node.last_applied(),
            durable_index: node.durable_index(),
            log: node.log().slice(1, node.log().last_index()),
            progress,
            image_hard_state: self.durable[n].hard_state,
            image: &self.durable[n].entries,
            pending,
        }
    }
}
