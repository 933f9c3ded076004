//! The configurations a node knows, following its log (the design is in
//! `membership.rs`): the one in force at the snapshot boundary and every
//! configuration entry after it. The latest of them is the node's
//! *effective* configuration (a configuration takes effect on append); the
//! latest at or below the commit index is the *committed* one.
//!
//! Invariants: `entries` are in increasing index order, all after
//! `base_index`, and each is a configuration entry the log holds.

use crate::membership::Membership;
use crate::types::{Index, SnapshotMeta};

/// The configuration history of one node's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Configs {
    /// The node's initial configuration (`Config::members`), used when the
    /// snapshot records none.
    initial: Membership,
    /// The snapshot boundary.
    base_index: Index,
    /// The configuration in force at the boundary.
    base: Membership,
    /// The configuration entries after the boundary, oldest first.
    entries: Vec<(Index, Membership)>,
}

impl Configs {
    /// The configurations of a log that starts after `snapshot` and holds
    /// the configuration entries `entries` (in index order).
    pub(crate) fn new(
        initial: Membership,
        snapshot: &SnapshotMeta,
        entries: impl IntoIterator<Item = (Index, Membership)>,
    ) -> Self {
        let base = Self::recorded_or(&initial, &snapshot.membership);
        Configs {
            initial,
            base_index: snapshot.index,
            base,
            entries: entries.into_iter().collect(),
        }
    }

    /// A snapshot's configuration, or the initial one if it records none.
    fn recorded_or(initial: &Membership, recorded: &Membership) -> Membership {
        if recorded.voters.is_empty() {
            initial.clone()
        } else {
            recorded.clone()
        }
    }

    /// The effective configuration: the latest in the log.
    pub(crate) fn latest(&self) -> &Membership {
        self.entries.last().map_or(&self.base, |(_, m)| m)
    }

    /// The index of the entry that set the effective configuration (the
    /// snapshot boundary if no entry follows it).
    pub(crate) fn latest_index(&self) -> Index {
        self.entries.last().map_or(self.base_index, |&(i, _)| i)
    }

    /// The configuration in force at `index` (at or after the boundary).
    pub(crate) fn at(&self, index: Index) -> &Membership {
        self.entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.base, |(_, m)| m)
    }

    /// A configuration entry was appended at `index`.
    pub(crate) fn append(&mut self, index: Index, membership: Membership) {
        debug_assert!(index > self.latest_index(), "configurations follow the log");
        self.entries.push((index, membership));
    }

    /// The log lost its entries from `from` on: their configurations go, and
    /// the latest one left is in force again.
    pub(crate) fn truncate(&mut self, from: Index) {
        self.entries.retain(|&(i, _)| i < from);
    }

    /// The log was compacted through `index` (a snapshot of our own, whose
    /// entries through `index` the log held): the configuration there
    /// becomes the base.
    pub(crate) fn compact(&mut self, index: Index) {
        if index <= self.base_index {
            return;
        }
        self.base = self.at(index).clone();
        self.base_index = index;
        self.entries.retain(|&(i, _)| i > index);
    }

    /// A leader's snapshot replaced the log through `meta.index`; if the log
    /// kept its suffix, the configurations after it stay, otherwise they go.
    pub(crate) fn install(&mut self, meta: &SnapshotMeta, keeps_suffix: bool) {
        self.base = Self::recorded_or(&self.initial, &meta.membership);
        self.base_index = meta.index;
        if keeps_suffix {
            self.entries.retain(|&(i, _)| i > meta.index);
        } else {
            self.entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[u64]) -> Membership {
        Membership::with_voters(voters.iter().copied())
    }

    #[test]
    fn truncation_reverts_and_compaction_keeps_the_configuration_in_force() {
        let mut c = Configs::new(m(&[1, 2, 3]), &SnapshotMeta::default(), []);
        assert_eq!(c.latest(), &m(&[1, 2, 3]));
        c.append(4, m(&[1, 2, 3, 4]));
        c.append(6, m(&[1, 2, 3, 4, 5]));
        assert_eq!(c.at(5), &m(&[1, 2, 3, 4]));
        c.truncate(6);
        assert_eq!(c.latest(), &m(&[1, 2, 3, 4]));
        assert_eq!(c.latest_index(), 4);
        c.compact(5);
        assert_eq!(c.latest(), &m(&[1, 2, 3, 4]));
        assert_eq!(c.latest_index(), 5);
        let meta = SnapshotMeta {
            index: 9,
            term: 2,
            membership: m(&[2, 3]),
        };
        c.install(&meta, false);
        assert_eq!(c.latest(), &m(&[2, 3]));
        // A snapshot that records nothing means the initial configuration.
        c.install(&SnapshotMeta::at(10, 2), false);
        assert_eq!(c.latest(), &m(&[1, 2, 3]));
    }
}
