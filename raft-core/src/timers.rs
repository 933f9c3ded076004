//! The timer table: every deadline a node keeps, in one place, and the one
//! the driver's timer is armed for.
//!
//! A follower or candidate waits for its election deadline; a leader for its
//! next heartbeat and its next check that a majority still answers
//! (CheckQuorum), and, during a leadership transfer, for the transfer to
//! give up. The leader's deadlines exist exactly while the node
//! leads ([`Timers::lead`] sets them, [`Timers::unlead`] clears them), so
//! [`Timers::next_deadline`] needs no role. The node emits `SetTimer` only
//! when the next deadline differs from the one it last reported.

use crate::time::Instant;

/// A leader's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaderTimers {
    /// When the next heartbeat round is due.
    pub(crate) heartbeat: Instant,
    /// When the leader next checks that a majority answered it.
    pub(crate) check_quorum: Instant,
    /// When the leadership transfer in progress, if any, gives up.
    pub(crate) transfer: Option<Instant>,
}

/// Every deadline of one node.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timers {
    /// When a follower or candidate stands for election (kept, unused, while
    /// leading; reset when the node steps down).
    pub(crate) election: Instant,
    /// Only while leading.
    pub(crate) leader: Option<LeaderTimers>,
    /// The deadline of the last `SetTimer` emitted, if any.
    reported: Option<Instant>,
}

impl Timers {
    /// Start the leader's deadlines.
    pub(crate) fn lead(&mut self, heartbeat: Instant, check_quorum: Instant) {
        self.leader = Some(LeaderTimers {
            heartbeat,
            check_quorum,
            transfer: None,
        });
    }

    /// Drop the leader's deadlines (stepping down).
    pub(crate) fn unlead(&mut self) {
        self.leader = None;
    }

    /// The leader's deadlines. Panics if the node does not lead: only leader
    /// code calls it.
    pub(crate) fn leader_mut(&mut self) -> &mut LeaderTimers {
        self.leader
            .as_mut()
            .expect("leader timers exist while leading")
    }

    /// The earliest deadline that matters in the current role.
    pub(crate) fn next_deadline(&self) -> Instant {
        match self.leader {
            Some(l) => {
                let next = l.heartbeat.min(l.check_quorum);
                l.transfer.map_or(next, |t| next.min(t))
            }
            None => self.election,
        }
    }

    /// The `SetTimer` deadline to emit now, if the next deadline changed
    /// since the last one reported.
    pub(crate) fn take_changed(&mut self) -> Option<Instant> {
        let deadline = self.next_deadline();
        if self.reported == Some(deadline) {
            return None;
        }
        self.reported = Some(deadline);
        Some(deadline)
    }
}
