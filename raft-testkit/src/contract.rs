//! The core/driver contract, checked from the driver's side: what a
//! `RaftNode`'s actions may be, and what its memory must agree with in its
//! storage. The fuzz properties and raft-core's cluster properties check
//! every step with these; any harness may.
//!
//! - [`ContractChecker`]: one node incarnation's view. After every accepted
//!   step: sends go to peers and carry no future term; persist ids grow by
//!   one; applies are non-empty, continue where the service is, and only
//!   apply what is durable; a snapshot moves the service forward; a proposal
//!   is answered exactly once, an acceptance at the node's term and index;
//!   the node's applied index is the service's, its commit index never goes
//!   back.
//! - [`image_after`], [`image_matches_memory`], [`durable_prefix_is_stored`]:
//!   storage against memory (the image the node's writes build is its log and
//!   hard state; what it counts durable is stored).

use raft_core::{
    Action, DurableState, HardState, Index, Instant, Message, NodeId, Persist, RaftLog, RaftNode,
};

/// What storage holds once every write in `pending` is durable too.
pub fn image_after<'a>(
    durable: &DurableState,
    pending: impl IntoIterator<Item = &'a Persist>,
) -> DurableState {
    let mut image = durable.clone();
    for p in pending {
        image.apply(p);
    }
    image
}

/// `image` (storage with every write in flight applied) describes exactly the
/// node's in-memory log and hard state.
pub fn image_matches_memory(image: &DurableState, node: &RaftNode) -> Result<(), String> {
    let restored = RaftLog::restore(
        image.snapshot.clone().unwrap_or_default(),
        image.entries.clone(),
    )
    .ok_or_else(|| format!("the storage image is not a log: {image:?}"))?;
    if &restored != node.log() {
        return Err(format!(
            "storage image != memory log: image {restored:?}, memory {:?}",
            node.log()
        ));
    }
    let memory = HardState {
        term: node.term(),
        voted_for: node.voted_for(),
    };
    if image.hard_state != memory {
        return Err(format!(
            "storage image != memory hard state: image {:?}, memory {memory:?}",
            image.hard_state
        ));
    }
    Ok(())
}

/// Every index the node counts as durable is in `durable` (what storage
/// holds now) with the term memory holds.
pub fn durable_prefix_is_stored(durable: &DurableState, node: &RaftNode) -> Result<(), String> {
    let stored_snap = durable.snapshot.as_ref().map_or(0, |m| m.index);
    let from = node
        .log()
        .snapshot()
        .index
        .max(stored_snap)
        .saturating_add(1);
    for i in from..=node.durable_index() {
        if durable.term_at(i) != node.log().term_at(i) {
            return Err(format!(
                "index {i} counted durable (durable index {}) but stored term {:?} != memory {:?}",
                node.durable_index(),
                durable.term_at(i),
                node.log().term_at(i)
            ));
        }
    }
    Ok(())
}

/// A message carries at most the sender's term, except a pre-vote (the term
/// after it, the one the pre-candidate would stand for) and a pre-vote grant
/// (the term asked about, whatever the voter's own).
fn sent_term_ok(message: &Message, node: &RaftNode) -> bool {
    match message {
        Message::PreVote(m) => m.term <= node.term().saturating_add(1),
        Message::PreVoteReply(m) if m.vote_granted => true,
        _ => message.term() <= node.term(),
    }
}

/// One node incarnation's side of the contract, checked after every step
/// it accepts ([`ContractChecker::accepted`]); a broken rule panics.
#[derive(Clone, Debug)]
pub struct ContractChecker {
    id: NodeId,
    /// The highest persist id this incarnation has issued.
    last_issued: u64,
    /// The time of the last accepted step of this incarnation.
    last_now: Option<Instant>,
    /// Where the service is: the last index applied or installed.
    applied_to: Index,
    /// The commit index after the last step.
    commit: Index,
}

impl ContractChecker {
    /// A node incarnation just built (first boot or recovery) from
    /// `durable`: its service starts at the stored snapshot, or empty.
    pub fn new(node: &RaftNode, durable: &DurableState) -> Self {
        ContractChecker {
            id: node.id(),
            last_issued: 0,
            last_now: None,
            applied_to: durable.snapshot.as_ref().map_or(0, |m| m.index),
            commit: node.commit_index(),
        }
    }

    /// The highest persist id issued so far (a `Persisted` beyond it is
    /// misuse).
    pub fn last_issued(&self) -> u64 {
        self.last_issued
    }

    /// Where the service is (a `SnapshotTaken` beyond it is misuse).
    pub fn applied_to(&self) -> Index {
        self.applied_to
    }

    /// The time of the last accepted step (an earlier one is misuse).
    pub fn last_now(&self) -> Option<Instant> {
        self.last_now
    }

    /// The node accepted a step at `now` (a proposal with id `proposal`, if
    /// it was one) and returned `actions`; `durable` is what its storage
    /// holds now. Checks every action, then the node's state.
    pub fn accepted(
        &mut self,
        now: Instant,
        node: &RaftNode,
        proposal: Option<u64>,
        actions: &[Action],
        durable: &DurableState,
    ) {
        self.last_now = Some(now);
        let id = self.id;
        let mut answers = 0;
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    assert!(self.is_peer(*to), "node {id} sent to {to}, not a peer");
                    assert!(sent_term_ok(message, node), "sent a future term");
                }
                Action::Persist(p) => {
                    assert_eq!(
                        Some(p.id),
                        self.last_issued.checked_add(1),
                        "persist ids grow by one"
                    );
                    self.last_issued = p.id;
                    for (to, m) in &p.then_send {
                        assert!(
                            self.is_peer(*to),
                            "node {id} holds a message for {to}, not a peer"
                        );
                        assert!(sent_term_ok(m, node), "sends a future term");
                    }
                }
                Action::Apply { entries } => {
                    assert!(!entries.is_empty(), "an empty Apply");
                    for e in entries {
                        assert_eq!(
                            Some(e.index),
                            self.applied_to.checked_add(1),
                            "node {id}: applies continue where the service is"
                        );
                        let stored_snap = durable.snapshot.as_ref().map_or(0, |m| m.index);
                        assert!(
                            e.index <= stored_snap || durable.term_at(e.index) == Some(e.term),
                            "node {id} applied {} (term {}) before it was durable",
                            e.index,
                            e.term
                        );
                        self.applied_to = e.index;
                    }
                }
                Action::ApplySnapshot { meta } => {
                    assert!(
                        meta.index > self.applied_to,
                        "node {id}: a snapshot at {} moves the service back from {}",
                        meta.index,
                        self.applied_to
                    );
                    self.applied_to = meta.index;
                }
                Action::SendSnapshot { to, message } => {
                    assert!(
                        self.is_peer(*to),
                        "node {id} sent a snapshot to {to}, not a peer"
                    );
                    assert!(
                        node.is_leader(),
                        "node {id} sent a snapshot as a non-leader"
                    );
                    assert_eq!(message.term, node.term(), "a snapshot of another term");
                    assert!(
                        message.last_included_index <= node.log().snapshot().index,
                        "node {id} sent a snapshot it does not hold"
                    );
                }
                Action::SetTimer { .. }
                | Action::LeadershipTransfer { .. }
                | Action::AcceptMembershipChange { .. }
                | Action::RejectMembershipChange { .. }
                | Action::MembershipChanged { .. }
                | Action::ReadReady { .. }
                | Action::RejectRead { .. } => {}
                Action::AcceptProposal {
                    id: pid,
                    index,
                    term,
                } => {
                    answers += 1;
                    assert_eq!(Some(*pid), proposal, "answered a proposal not made");
                    assert_eq!(*term, node.term());
                    assert_eq!(node.log().term_at(*index), Some(*term));
                }
                Action::RejectProposal { id: pid, .. } => {
                    answers += 1;
                    assert_eq!(Some(*pid), proposal, "answered a proposal not made");
                }
            }
        }
        assert_eq!(
            answers,
            usize::from(proposal.is_some()),
            "node {id}: a proposal is answered exactly once"
        );
        self.check_progress(node);
    }

    /// The node's applied index is the service's; its commit index never
    /// went back.
    pub fn check_progress(&mut self, node: &RaftNode) {
        let id = self.id;
        assert_eq!(node.last_applied(), self.applied_to, "node {id}: applied");
        assert!(
            node.commit_index() >= self.commit,
            "node {id}: commit went back"
        );
        self.commit = node.commit_index();
    }

    /// Any other node: with membership changes a node answers leaders it
    /// does not know yet, and a leader replicates to members it added.
    fn is_peer(&self, to: NodeId) -> bool {
        to != self.id
    }
}
