//! What a leader knows about each follower's log. The arithmetic that turns
//! match indices into a commit index is in `quorum.rs`.
//!
//! A follower is in one of three states (after etcd-io/raft's `tracker`):
//! - `Probe`: the leader does not know where the logs agree. It sends one
//!   AppendEntries and waits for the answer (or the next heartbeat).
//! - `Replicate`: the logs agree through `match_index`; the leader streams new
//!   entries optimistically, up to `max_inflight_appends` unanswered.
//! - `Snapshot`: the entries the follower needs were compacted; an
//!   InstallSnapshot is on its way.

use std::collections::VecDeque;

use crate::types::Index;

/// The replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Finding the point where the logs agree, one message at a time.
    Probe,
    /// Streaming entries after an agreed point.
    Replicate,
    /// Waiting for the answer to an InstallSnapshot covering `index`.
    Snapshot {
        /// The snapshot's last included index.
        index: Index,
    },
}

/// A leader's view of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// How the leader is talking to it.
    pub state: ProgressState,
    /// In `Probe` and `Snapshot`: a message is out and unanswered.
    pub paused: bool,
    /// In `Replicate`: last index of each unanswered append with entries.
    pub inflight: VecDeque<Index>,
    /// The follower answered since the leader's last quorum check.
    pub recent_active: bool,
}

impl Progress {
    /// The state of a follower when a leader takes office.
    pub fn new(last_index: Index) -> Self {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            paused: false,
            inflight: VecDeque::new(),
            recent_active: false,
        }
    }

    /// Go back to probing from `next_index`.
    pub fn become_probe(&mut self, next_index: Index) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.paused = false;
        self.inflight.clear();
    }

    /// The follower acknowledged its log through `index`. Returns true if
    /// that was news.
    pub fn acknowledge(&mut self, index: Index) -> bool {
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        self.paused = false;
        if index > self.match_index {
            self.match_index = index;
            self.next_index = self.next_index.max(index + 1);
            true
        } else {
            false
        }
    }
}
