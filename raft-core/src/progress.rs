//! What a leader knows about each follower's log, and the quorum arithmetic
//! that turns match indices into a commit index.
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

/// The highest index replicated on a majority of `match_indices` (one per
/// member, the leader included): the median when sorted in descending order,
/// at position `quorum - 1`. The caller must still check that the entry there
/// is of the current term (Figure 8's rule) before committing it.
pub fn quorum_index(match_indices: &[Index]) -> Index {
    assert!(
        !match_indices.is_empty(),
        "a cluster has at least one member"
    );
    let mut sorted = match_indices.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted[match_indices.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn quorum_index_examples() {
        assert_eq!(quorum_index(&[5]), 5);
        assert_eq!(quorum_index(&[5, 1, 3]), 3);
        assert_eq!(quorum_index(&[9, 9, 1, 1]), 1);
        assert_eq!(quorum_index(&[9, 9, 9, 1, 1]), 9);
    }

    quickcheck! {
        /// Against a brute-force reference: the largest value v such that a
        /// majority of members have match >= v.
        fn quorum_index_is_largest_majority_value(m: Vec<u8>) -> bool {
            if m.is_empty() { return true; }
            let m: Vec<Index> = m.into_iter().map(Index::from).collect();
            let majority = m.len() / 2 + 1;
            let best = (0..=255u64)
                .filter(|&v| m.iter().filter(|&&x| x >= v).count() >= majority)
                .max()
                .unwrap_or(0);
            quorum_index(&m) == best
        }
    }
}
