//! Quorum arithmetic: which sets of voters decide an election, a commit, or a
//! leader's check that it is still heard (after etcd-io/raft's `quorum`).
//!
//! A cluster's voters decide by a [`MajorityConfig`]; during a membership
//! change by joint consensus (Raft thesis §4.3) by a [`JointConfig`], two
//! majorities that must both agree: the joint commit index is the lower of
//! the two, and a joint vote is won only when both halves win and lost as
//! soon as either half loses. Outside a change the outgoing half is empty,
//! and an empty majority never holds the other back.

use crate::types::{Index, NodeId};

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority said yes.
    Won,
    /// Too many said no (or cannot answer) for a majority to say yes.
    Lost,
    /// Neither yet.
    Pending,
}

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MajorityConfig {
    /// Sorted and without duplicates.
    voters: Vec<NodeId>,
}

impl MajorityConfig {
    /// The majority configuration of `voters` (order and repeats do not
    /// matter).
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        MajorityConfig { voters }
    }

    /// The voters, in increasing id order.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// How many voters make a majority (`n / 2 + 1`; 0 for no voters).
    pub fn quorum(&self) -> usize {
        if self.voters.is_empty() {
            0
        } else {
            self.voters.len() / 2 + 1
        }
    }

    /// The highest index that a majority of voters has acknowledged, given
    /// each voter's acknowledged index (`None`, an unknown voter, counts as
    /// 0). With no voters it is `Index::MAX`, so that in a joint
    /// configuration an empty half never holds the other back.
    ///
    /// The caller must still check that the entry there is of the current
    /// term before committing it (the Figure 8 rule).
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
        if self.voters.is_empty() {
            return Index::MAX;
        }
        let mut indexes: Vec<Index> = self.voters.iter().map(|&v| acked(v).unwrap_or(0)).collect();
        // Descending: the quorum-th highest is held by a majority.
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[self.quorum() - 1]
    }

    /// The result of a vote in which `vote(voter)` is `Some(true)` for a yes,
    /// `Some(false)` for a no and `None` for no answer yet. With no voters
    /// the vote is won (again for the joint case).
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for &v in &self.voters {
            match vote(v) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.quorum();
        if yes >= q {
            VoteResult::Won
        } else if yes + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The voters of a configuration as quorums see them: the incoming
/// majority, and during a joint change the outgoing one (empty otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    incoming: MajorityConfig,
    outgoing: MajorityConfig,
}

impl Default for MajorityConfig {
    fn default() -> Self {
        MajorityConfig::new([])
    }
}

impl JointConfig {
    /// The quorums of `incoming` and, if it is not empty, also of
    /// `outgoing`.
    pub fn new(incoming: MajorityConfig, outgoing: MajorityConfig) -> Self {
        JointConfig { incoming, outgoing }
    }

    /// The incoming (or only) majority.
    pub fn incoming(&self) -> &MajorityConfig {
        &self.incoming
    }

    /// The outgoing majority (empty outside a joint change).
    pub fn outgoing(&self) -> &MajorityConfig {
        &self.outgoing
    }

    /// True during a joint change.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters().is_empty()
    }

    /// Every voter of either half, in increasing id order.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self.incoming.voters().to_vec();
        all.extend_from_slice(self.outgoing.voters());
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The highest index both halves have acknowledged by majority: the
    /// lower of the two halves' committed indexes.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
        let a = self.incoming.committed_index(&acked);
        let b = self.outgoing.committed_index(&acked);
        a.min(b)
    }

    /// Won when both halves won, lost as soon as either lost.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let a = self.incoming.vote_result(&vote);
        let b = self.outgoing.vote_result(&vote);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Is `nodes` a quorum: a majority of each half?
    pub fn is_quorum(&self, nodes: &[NodeId]) -> bool {
        self.vote_result(|v| Some(nodes.contains(&v))) == VoteResult::Won
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    /// The committed index of voters 1..=n acknowledging `acked` in order.
    fn committed(acked: &[Index]) -> Index {
        let config = MajorityConfig::new(1..=acked.len() as NodeId);
        config.committed_index(|v| acked.get(v as usize - 1).copied())
    }

    #[test]
    fn committed_index_examples() {
        assert_eq!(committed(&[5]), 5);
        assert_eq!(committed(&[5, 1, 3]), 3);
        assert_eq!(committed(&[9, 9, 1, 1]), 1);
        assert_eq!(committed(&[9, 9, 9, 1, 1]), 9);
        // An unknown voter counts as 0; no voters never hold anyone back.
        let three = MajorityConfig::new([1, 2, 3]);
        assert_eq!(three.committed_index(|v| (v == 1).then_some(7)), 0);
        assert_eq!(
            MajorityConfig::new([]).committed_index(|_| None),
            Index::MAX
        );
    }

    #[test]
    fn vote_result_examples() {
        let three = MajorityConfig::new([3, 1, 2, 2]);
        assert_eq!(three.voters(), &[1, 2, 3]);
        assert_eq!(three.quorum(), 2);
        assert_eq!(
            three.vote_result(|v| (v == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(
            three.vote_result(|v| (v != 3).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(three.vote_result(|v| Some(v == 1)), VoteResult::Lost);
        assert_eq!(
            MajorityConfig::new([]).vote_result(|_| None),
            VoteResult::Won
        );
    }

    quickcheck! {
        /// Against a brute-force reference: the largest value v such that a
        /// majority of members have match >= v.
        fn committed_index_is_largest_majority_value(m: Vec<u8>) -> bool {
            if m.is_empty() { return true; }
            let m: Vec<Index> = m.into_iter().map(Index::from).collect();
            let majority = m.len() / 2 + 1;
            let best = (0..=255u64)
                .filter(|&v| m.iter().filter(|&&x| x >= v).count() >= majority)
                .max()
                .unwrap_or(0);
            committed(&m) == best
        }

        /// Won exactly when the yes votes reach a majority, lost exactly when
        /// the yes votes and the missing ones together cannot.
        fn vote_result_counts(votes: Vec<Option<bool>>) -> bool {
            let n = votes.len();
            let config = MajorityConfig::new(1..=n as NodeId);
            let yes = votes.iter().filter(|v| **v == Some(true)).count();
            let missing = votes.iter().filter(|v| v.is_none()).count();
            let q = n / 2 + 1;
            let expected = if n == 0 || yes >= q {
                VoteResult::Won
            } else if yes + missing >= q {
                VoteResult::Pending
            } else {
                VoteResult::Lost
            };
            config.vote_result(|v| votes[v as usize - 1]) == expected
        }
    }
}
