//! Log compaction (Raft paper §7): the service's snapshots, and
//! InstallSnapshot for followers whose next entry was compacted away.
//!
//! The core never holds a snapshot's bytes: the driver keeps them by index.
//! It writes the service's snapshot, then reports `SnapshotTaken`; it
//! streams a snapshot to a follower on `Action::SendSnapshot` and delivers
//! the `InstallSnapshot` header once the bytes are all there; and it makes
//! a snapshot the node's own on the `Persist` that names it. A leader has
//! at most one transfer in flight per follower: it waits for the driver's
//! `SnapshotSendEnded` (or the follower's answer) and meanwhile only sends
//! heartbeats, which keep the follower from standing for election during a
//! long transfer.

use crate::io::Action;
use crate::message::{InstallSnapshot, InstallSnapshotReply, Message};
use crate::progress::ProgressState;
use crate::role::LeaderState;
use crate::shared::Shared;
use crate::types::{Index, NodeId, SnapshotMeta};

impl Shared {
    /// The service snapshotted through `index` (checked `<= last_applied` by
    /// `step`): discard the log up to there and persist the snapshot with it.
    pub(crate) fn on_snapshot_taken(&mut self, index: Index) {
        if index <= self.snapshot_meta().index {
            return; // older than what we hold: nothing to do
        }
        let term = self.log.term_at(index).expect("applied entries are held");
        let meta = SnapshotMeta {
            index,
            term,
            membership: self.configs.at(index).clone(),
        };
        self.configs.compact(index);
        self.log.compact_to(meta.clone());
        self.pending.snapshot = Some(meta);
    }

    /// Follower side: adopt a snapshot that goes beyond our commit index. If
    /// our log holds its last entry, keep what follows; otherwise discard the
    /// whole log. The service is told to load it.
    pub(crate) fn on_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot) {
        if !well_formed(&m) {
            return; // not from a correct leader: drop
        }
        self.leader_hint = Some(from);
        self.reset_election_deadline();
        let meta = SnapshotMeta {
            index: m.last_included_index,
            term: m.last_included_term,
            membership: m.membership,
        };
        let index = meta.index;
        if meta.index > self.commit_index {
            let keeps_suffix = self.log.term_at(meta.index) == Some(meta.term);
            self.configs.install(&meta, keeps_suffix);
            self.sync_voters();
            self.log.compact_to(meta.clone());
            if !keeps_suffix {
                self.pending.entries.clear();
                self.pending.truncate_from = Some(index + 1);
                self.lower_durable_index(index);
            }
            self.pending.snapshot = Some(meta.clone());
            self.commit_index = index;
            if !crate::canary::on(crate::canary::Canary::KeepAppliedAfterSnapshot) {
                self.last_applied = index;
            }
            self.pending_apply_snapshot = Some(meta);
        }
        let reply = InstallSnapshotReply {
            term: self.hard.term,
            last_included_index: index,
        };
        self.send_durable(from, Message::InstallSnapshotReply(reply));
    }
}

impl LeaderState {
    /// Ask the driver to stream our snapshot to `peer`, and wait for the
    /// transfer's end (`SnapshotSendEnded`) or the follower's answer. It is
    /// never resent while in flight. If an earlier transfer to `peer` has
    /// not ended yet (the follower answered before the driver reported its
    /// end, and now needs a newer snapshot), wait for that end instead: it
    /// probes the follower, whose rejection then asks for this one.
    pub(crate) fn send_snapshot(&mut self, s: &mut Shared, peer: NodeId) {
        let meta = s.snapshot_meta().clone();
        let pr = self
            .progress
            .get_mut(&peer)
            .expect("leader tracks every peer");
        pr.paused = true;
        pr.inflight.clear();
        if let Some(&index) = self.snapshots_in_flight.get(&peer) {
            pr.state = ProgressState::Snapshot { index };
            return;
        }
        pr.state = ProgressState::Snapshot { index: meta.index };
        self.snapshots_in_flight.insert(peer, meta.index);
        let message = InstallSnapshot {
            term: s.hard.term,
            last_included_index: meta.index,
            last_included_term: meta.term,
            membership: meta.membership,
        };
        s.out.push(Action::SendSnapshot { to: peer, message });
    }

    /// The driver's transfer to `to` of the snapshot at `index`, sent in
    /// `term`, ended. If it is still the one we wait for (and the follower
    /// has not answered), probe the follower right after the snapshot: its
    /// answer tells whether it installed it (it accepts), or still needs
    /// one (it rejects, and the rejection sends a snapshot again).
    pub(crate) fn on_snapshot_send_ended(
        &mut self,
        s: &mut Shared,
        to: NodeId,
        term: crate::Term,
        index: Index,
    ) {
        if term != s.hard.term {
            return; // a transfer of an earlier term of ours
        }
        if self.snapshots_in_flight.get(&to) == Some(&index) {
            self.snapshots_in_flight.remove(&to);
        }
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        if pr.state != (ProgressState::Snapshot { index }) {
            return; // answered already, or another transfer
        }
        pr.become_probe(s.snapshot_meta().index + 1);
        self.send_append(s, to, false);
    }

    pub(crate) fn on_install_snapshot_reply(
        &mut self,
        s: &mut Shared,
        from: NodeId,
        m: InstallSnapshotReply,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if m.last_included_index == 0 {
            // The answer to an InstallSnapshot of an older term (ours, sent
            // while we led it): it acknowledges nothing.
            return;
        }
        if m.last_included_index > s.log.last_index() {
            return; // not a snapshot we could have sent
        }
        pr.acknowledge(m.last_included_index);
        // Only an answer that ends the wait sends: after the driver's
        // `SnapshotSendEnded`, the probe it sent is still out, and its
        // answer goes on from there.
        let ended = matches!(pr.state, ProgressState::Snapshot { .. });
        if ended {
            pr.become_probe(pr.match_index + 1);
        }
        self.maybe_commit(s);
        if ended {
            self.send_append(s, from, false);
        }
    }
}

/// An InstallSnapshot a correct leader could have sent.
pub(crate) fn well_formed(m: &InstallSnapshot) -> bool {
    m.last_included_term <= m.term
        && m.last_included_index != 0
        && m.last_included_index != Index::MAX
}
