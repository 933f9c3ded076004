//! Cluster membership: who votes, who only learns, and how a configuration
//! may change (Raft thesis §4; etcd-io/raft's `confchange` is the anchor).
//!
//! A [`Membership`] names the voters and the learners. During a joint change
//! it also names the outgoing voters (the configuration being left) and the
//! learners-to-be (outgoing voters that become learners once the change is
//! left: a node cannot be a learner while it still votes in the outgoing
//! half). Elections and commits then need a majority of both the incoming
//! and the outgoing voters ([`Membership::quorum`]).
//!
//! [`Membership::change`] applies a list of [`MembershipChange`]s to a
//! configuration that is not joint:
//!
//! - if the voter set changes by at most one node, the result is a simple
//!   configuration (the single-server path, thesis §4.1): any majority of the
//!   old voters and any majority of the new ones share a node;
//! - otherwise the result is joint (§4.3): the old voters become the outgoing
//!   half, the new voters the incoming one; [`Membership::leave_joint`] then
//!   gives the final configuration.
//!
//! Either way, every quorum of the configuration before intersects every
//! quorum of the configuration after, so two leaders can never be elected,
//! or two different entries committed, by disjoint sets of nodes. A change
//! that would break a rule is refused with a [`ChangeError`] and nothing
//! changes.
//!
//! # When a configuration takes effect (the design the node follows)
//!
//! A configuration travels as a log entry ([`crate::Payload::Membership`])
//! and takes effect **when a node appends it**, committed or not (thesis
//! §4.1, as hashicorp/raft and openraft do; etcd-io/raft applies it when
//! committed instead). A node always uses the latest configuration in its
//! log. What this choice requires:
//!
//! - **Truncation reverts.** A follower that drops an uncommitted
//!   configuration entry (a new leader's log overwrites it) falls back to
//!   the latest configuration left in its log, or the one its snapshot
//!   records.
//! - **One change at a time.** A leader proposes a change only when the
//!   latest configuration in its log is committed, and only once an entry of
//!   its own term has committed (the fix for the single-server bug posted in
//!   2015: a new leader may not yet know of an uncommitted change a previous
//!   leader made). Validation is against the latest configuration in the log.
//! - **Snapshots carry the configuration** in force at their last index, since
//!   the entry that set it may be compacted away; recovery restores it from
//!   there when no configuration entry follows.
//! - **A joint configuration is left by its leader**: once the joint entry
//!   commits, the leader (also a newly elected one that finds it committed)
//!   appends [`Membership::leave_joint`]'s configuration itself.
//! - **A removed leader** keeps replicating, without counting itself, until
//!   the configuration that removes it commits, then steps down.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::quorum::{JointConfig, MajorityConfig};
use crate::types::NodeId;

/// One change to a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A node that is not a member becomes a voter.
    AddVoter(NodeId),
    /// A node that is not a member becomes a learner (it receives the log
    /// and snapshots, and counts for nothing).
    AddLearner(NodeId),
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter becomes a learner.
    Demote(NodeId),
    /// A member (voter or learner) leaves.
    Remove(NodeId),
}

impl MembershipChange {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match *self {
            MembershipChange::AddVoter(n)
            | MembershipChange::AddLearner(n)
            | MembershipChange::Promote(n)
            | MembershipChange::Demote(n)
            | MembershipChange::Remove(n) => n,
        }
    }
}

/// Why a list of changes was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// No changes were given.
    #[error("no changes")]
    Empty,
    /// The configuration is joint: leave it before changing it again.
    #[error("the configuration is joint; leave it first")]
    Joint,
    /// Adding a node that is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// Promoting a node that is not a learner.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// Demoting a node that is not a voter.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// Removing (or changing) a node that is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// The same node is changed twice in one list.
    #[error("node {0} is changed twice")]
    Repeated(NodeId),
    /// The change would leave no voter.
    #[error("the change leaves no voter")]
    NoVoters,
}

/// A cluster configuration. Sets are ordered, so the encoding and every
/// iteration are deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The (incoming) voters.
    pub voters: BTreeSet<NodeId>,
    /// The learners.
    pub learners: BTreeSet<NodeId>,
    /// During a joint change, the voters of the configuration being left;
    /// empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// During a joint change, the outgoing voters that become learners when
    /// the change is left; empty otherwise.
    pub learners_next: BTreeSet<NodeId>,
}

impl Membership {
    /// A simple configuration of `voters` and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// True during a joint change.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Does `node` vote (in either half)?
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.outgoing.contains(&node)
    }

    /// Is `node` a learner (now, or once the joint change is left)?
    pub fn is_learner(&self, node: NodeId) -> bool {
        self.learners.contains(&node) || self.learners_next.contains(&node)
    }

    /// Is `node` a member at all?
    pub fn contains(&self, node: NodeId) -> bool {
        self.is_voter(node) || self.is_learner(node)
    }

    /// Every member, voters and learners, in increasing id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.outgoing);
        all.extend(&self.learners);
        all.extend(&self.learners_next);
        all
    }

    /// The quorums of this configuration: a majority of the voters and,
    /// during a joint change, also of the outgoing voters.
    pub fn quorum(&self) -> JointConfig {
        JointConfig::new(
            MajorityConfig::new(self.voters.iter().copied()),
            MajorityConfig::new(self.outgoing.iter().copied()),
        )
    }

    /// The configuration after `changes`, all applied together: simple if
    /// the voters change by at most one node, joint otherwise. Refused on a
    /// joint configuration, on an empty or repeating list, on a change that
    /// does not fit the node's current role, and if no voter would remain.
    pub fn change(&self, changes: &[MembershipChange]) -> Result<Membership, ChangeError> {
        if self.is_joint() {
            return Err(ChangeError::Joint);
        }
        if changes.is_empty() {
            return Err(ChangeError::Empty);
        }
        let mut seen = BTreeSet::new();
        let mut next = self.clone();
        for &c in changes {
            let node = c.node();
            if !seen.insert(node) {
                return Err(ChangeError::Repeated(node));
            }
            match c {
                MembershipChange::AddVoter(n) | MembershipChange::AddLearner(n)
                    if self.contains(n) =>
                {
                    return Err(ChangeError::AlreadyMember(n))
                }
                MembershipChange::AddVoter(n) => {
                    next.voters.insert(n);
                }
                MembershipChange::AddLearner(n) => {
                    next.learners.insert(n);
                }
                MembershipChange::Promote(n) => {
                    if !next.learners.remove(&n) {
                        return Err(ChangeError::NotALearner(n));
                    }
                    next.voters.insert(n);
                }
                MembershipChange::Demote(n) => {
                    if !next.voters.remove(&n) {
                        return Err(ChangeError::NotAVoter(n));
                    }
                    next.learners.insert(n);
                }
                MembershipChange::Remove(n) => {
                    if !next.voters.remove(&n) && !next.learners.remove(&n) {
                        return Err(ChangeError::NotAMember(n));
                    }
                }
            }
        }
        if next.voters.is_empty() {
            return Err(ChangeError::NoVoters);
        }
        if self.voters.symmetric_difference(&next.voters).count() <= 1 {
            return Ok(next);
        }
        // Joint: the old voters stay voters in the outgoing half until the
        // change is left; those that become learners wait in learners_next.
        let demoted: BTreeSet<NodeId> = next
            .learners
            .iter()
            .copied()
            .filter(|n| self.voters.contains(n))
            .collect();
        Ok(Membership {
            voters: next.voters,
            learners: &next.learners - &demoted,
            outgoing: self.voters.clone(),
            learners_next: demoted,
        })
    }

    /// The configuration a joint change ends in: the incoming voters, and
    /// the learners with those waiting to become learners. A simple
    /// configuration is returned unchanged.
    pub fn leave_joint(&self) -> Membership {
        let mut learners = self.learners.clone();
        learners.extend(&self.learners_next);
        Membership {
            voters: self.voters.clone(),
            learners,
            outgoing: BTreeSet::new(),
            learners_next: BTreeSet::new(),
        }
    }

    /// Checks the configuration's own rules: some voter; a learner is no
    /// voter (in either half); learners-to-be are outgoing voters and only
    /// exist during a joint change.
    pub fn validate(&self) -> Result<(), ChangeError> {
        if self.voters.is_empty() {
            return Err(ChangeError::NoVoters);
        }
        if let Some(&n) = self
            .learners
            .iter()
            .find(|n| self.voters.contains(n) || self.outgoing.contains(n))
        {
            return Err(ChangeError::AlreadyMember(n));
        }
        if let Some(&n) = self
            .learners_next
            .iter()
            .find(|n| !self.outgoing.contains(n) || self.voters.contains(n))
        {
            return Err(ChangeError::NotAVoter(n));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use MembershipChange::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn one_voter_change_is_simple_several_are_joint() {
        let three = Membership::with_voters([1, 2, 3]);
        let four = three.change(&[AddVoter(4)]).unwrap();
        assert!(!four.is_joint());
        assert_eq!(four.voters, set(&[1, 2, 3, 4]));

        let five = three.change(&[AddVoter(4), AddVoter(5)]).unwrap();
        assert!(five.is_joint());
        assert_eq!(five.outgoing, set(&[1, 2, 3]));
        assert_eq!(five.leave_joint(), Membership::with_voters([1, 2, 3, 4, 5]));

        // Replacing a voter changes two: joint.
        let replaced = three.change(&[AddVoter(4), Remove(1)]).unwrap();
        assert!(replaced.is_joint());
        assert_eq!(replaced.voters, set(&[2, 3, 4]));

        // Learners do not count towards the voter difference.
        let with_learners = three.change(&[AddLearner(4), AddLearner(5)]).unwrap();
        assert!(!with_learners.is_joint());
        assert_eq!(with_learners.learners, set(&[4, 5]));
    }

    #[test]
    fn a_demotion_inside_a_joint_change_waits_for_the_leave() {
        let three = Membership::with_voters([1, 2, 3]);
        let joint = three.change(&[Demote(1), AddVoter(4)]).unwrap();
        assert!(joint.is_joint());
        assert!(joint.is_voter(1), "still votes in the outgoing half");
        assert!(joint.learners.is_empty());
        assert_eq!(joint.learners_next, set(&[1]));
        joint.validate().unwrap();
        let after = joint.leave_joint();
        assert_eq!(after.voters, set(&[2, 3, 4]));
        assert_eq!(after.learners, set(&[1]));
        after.validate().unwrap();
    }

    #[test]
    fn bad_changes_are_refused() {
        let m = Membership {
            learners: set(&[9]),
            ..Membership::with_voters([1, 2, 3])
        };
        assert_eq!(m.change(&[]), Err(ChangeError::Empty));
        assert_eq!(m.change(&[AddVoter(2)]), Err(ChangeError::AlreadyMember(2)));
        assert_eq!(
            m.change(&[AddLearner(9)]),
            Err(ChangeError::AlreadyMember(9))
        );
        assert_eq!(m.change(&[Promote(2)]), Err(ChangeError::NotALearner(2)));
        assert_eq!(m.change(&[Demote(9)]), Err(ChangeError::NotAVoter(9)));
        assert_eq!(m.change(&[Remove(7)]), Err(ChangeError::NotAMember(7)));
        assert_eq!(
            m.change(&[Remove(2), AddVoter(2)]),
            Err(ChangeError::Repeated(2))
        );
        assert_eq!(
            m.change(&[Remove(1), Remove(2), Remove(3)]),
            Err(ChangeError::NoVoters)
        );
        let joint = m.change(&[AddVoter(4), AddVoter(5)]).unwrap();
        assert_eq!(joint.change(&[AddVoter(6)]), Err(ChangeError::Joint));
        // A learner can be promoted, and a lone voter demoted only if
        // another voter remains.
        assert!(m.change(&[Promote(9)]).unwrap().is_voter(9));
        let one = Membership::with_voters([1]);
        assert_eq!(one.change(&[Demote(1)]), Err(ChangeError::NoVoters));
    }

    /// Every subset of `universe` that is a quorum of `m`.
    fn quorums(m: &Membership, universe: &[NodeId]) -> Vec<Vec<NodeId>> {
        let q = m.quorum();
        (0u32..1 << universe.len())
            .map(|bits| {
                universe
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| bits & (1 << k) != 0)
                    .map(|(_, &n)| n)
                    .collect::<Vec<_>>()
            })
            .filter(|s| q.is_quorum(s))
            .collect()
    }

    /// Every quorum of `a` shares a node with every quorum of `b`.
    fn quorums_intersect(a: &Membership, b: &Membership, universe: &[NodeId]) -> bool {
        let (qa, qb) = (quorums(a, universe), quorums(b, universe));
        qa.iter()
            .all(|x| qb.iter().all(|y| x.iter().any(|n| y.contains(n))))
    }

    /// A random change list for `m` from `rng`: mostly valid ones.
    fn random_changes(rng: &mut SplitMix64, m: &Membership) -> Vec<MembershipChange> {
        let count = 1 + rng.below(3) as usize;
        let mut nodes: Vec<NodeId> = (1..=7).collect();
        let mut changes = Vec::new();
        for _ in 0..count {
            let at = rng.below(nodes.len() as u64) as usize;
            let n = nodes.remove(at);
            changes.push(if m.voters.contains(&n) {
                if rng.chance(1, 2) {
                    Remove(n)
                } else {
                    Demote(n)
                }
            } else if m.learners.contains(&n) {
                if rng.chance(1, 2) {
                    Promote(n)
                } else {
                    Remove(n)
                }
            } else if rng.chance(2, 3) {
                AddVoter(n)
            } else {
                AddLearner(n)
            });
        }
        changes
    }

    /// Consecutive configurations (a change, and the leave of a joint one)
    /// always have intersecting quorums, every configuration reached keeps
    /// its own rules, and a joint quorum is a quorum of both halves.
    #[test]
    fn consecutive_configurations_have_intersecting_quorums() {
        let universe: Vec<NodeId> = (1..=7).collect();
        let mut steps = 0;
        for seed in 0..200 {
            let mut rng = SplitMix64::new(seed);
            let mut m = Membership::with_voters(1..=1 + rng.below(5));
            for _ in 0..12 {
                let next = if m.is_joint() {
                    m.leave_joint()
                } else {
                    match m.change(&random_changes(&mut rng, &m)) {
                        Ok(next) => next,
                        Err(_) => continue,
                    }
                };
                next.validate().unwrap();
                assert!(
                    quorums_intersect(&m, &next, &universe),
                    "seed {seed}: {m:?} -> {next:?}"
                );
                if next.is_joint() {
                    let (incoming, outgoing) = (
                        Membership::with_voters(next.voters.iter().copied()),
                        Membership::with_voters(next.outgoing.iter().copied()),
                    );
                    for q in quorums(&next, &universe) {
                        assert!(incoming.quorum().is_quorum(&q));
                        assert!(outgoing.quorum().is_quorum(&q));
                    }
                }
                m = next;
                steps += 1;
            }
        }
        assert!(steps > 1000, "only {steps} configurations reached");
    }

    quickcheck::quickcheck! {
        /// The joint committed index is the lower of the two majorities'.
        fn joint_committed_index_is_the_minimum_of_the_halves(
            incoming: Vec<u8>,
            outgoing: Vec<u8>,
            acked: Vec<u8>
        ) -> bool {
            let ids = |v: &[u8]| v.iter().map(|&x| NodeId::from(x % 9)).collect::<Vec<_>>();
            let (a, b) = (
                MajorityConfig::new(ids(&incoming)),
                MajorityConfig::new(ids(&outgoing)),
            );
            let ack = |n: NodeId| acked.get(n as usize).map(|&x| u64::from(x));
            let joint = JointConfig::new(a.clone(), b.clone());
            joint.committed_index(ack) == a.committed_index(ack).min(b.committed_index(ack))
        }
    }
}
