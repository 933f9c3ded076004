//! Applying a durable write to a [`DurableState`] without trusting it.
//!
//! [`DurableState::try_apply`] is the one implementation of a write's
//! semantics. A driver that rebuilds the state from records on disk cannot
//! trust them (they may be damaged, or written by a buggy version), so it
//! uses `try_apply`, which returns a [`DurableError`] and leaves the state
//! unchanged; [`DurableState::apply`] is `try_apply` for writes straight
//! from the core, which never emits a bad one, and panics instead.
//!
//! The semantics of one write, in this order (see [`crate::Persist`]):
//! replace the hard state; install the snapshot boundary (dropping the
//! entries it covers, or every stored entry if the snapshot does not end
//! inside the stored log); drop the entries from `truncate_from` on; append
//! the entries, which must continue the log.

use std::borrow::Cow;

use crate::{DurableState, Entry, HardState, Index, Persist, SnapshotMeta};

/// The durable content of one write: a [`Persist`] without the snapshot's
/// bytes and without the messages that wait for it. It is what a log record
/// stores; [`Persist::durable_write`] borrows one from a `Persist`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableWrite<'a> {
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// The new snapshot boundary, if a snapshot came with the write.
    pub snapshot: Option<SnapshotMeta>,
    /// Drop every stored entry with index `>=` this.
    pub truncate_from: Option<Index>,
    /// Entries to append, consecutive, right after the log that remains.
    /// Owned entries (decoded from a record) are moved in, borrowed ones
    /// cloned.
    pub entries: Cow<'a, [Entry]>,
}

impl Persist {
    /// The durable part of this write, borrowing its entries.
    pub fn durable_write(&self) -> DurableWrite<'_> {
        DurableWrite {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            truncate_from: self.truncate_from,
            entries: Cow::Borrowed(&self.entries),
        }
    }
}

/// Why a write or a stored state is inconsistent. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// An entry of the write does not continue the log that remains once the
    /// snapshot and the truncation are applied (a gap or an overlap).
    #[error(
        "entry {position} of the write, index {index}, does not continue the log \
         (expected index {expected})"
    )]
    Discontinuous {
        /// Its position among the write's entries.
        position: usize,
        /// Its index.
        index: Index,
        /// The index it should have had.
        expected: Index,
    },
    /// The log would grow past the largest index.
    #[error("the log would grow past index {}", Index::MAX)]
    IndexOverflow,
    /// A stored entry is not where the snapshot boundary and its position
    /// say it should be ([`DurableState::check`]).
    #[error("stored entry {position} has index {index} instead of {expected}")]
    NotConsecutive {
        /// Its position among the stored entries.
        position: usize,
        /// Its index.
        index: Index,
        /// The index it should have.
        expected: Index,
    },
}

impl DurableState {
    /// Applies one write with the semantics of [`DurableState::apply`]
    /// (without the snapshot bytes, which the caller stores). If the write's
    /// entries do not continue the log, returns an error and leaves the
    /// state unchanged.
    ///
    /// Expects a state whose entries are consecutive after the snapshot
    /// boundary, as every state built by `try_apply` from the default one is
    /// ([`DurableState::check`] tells).
    pub fn try_apply(&mut self, write: DurableWrite<'_>) -> Result<(), DurableError> {
        let (start, end) = self.surviving(write.snapshot.as_ref(), write.truncate_from);
        let base = write
            .snapshot
            .as_ref()
            .or(self.snapshot.as_ref())
            .map_or(0, |s| s.index);
        let last = self.entries[start..end].last().map_or(base, |e| e.index);
        for (position, entry) in write.entries.iter().enumerate() {
            let expected = u64::try_from(position)
                .ok()
                .and_then(|k| last.checked_add(k))
                .and_then(|i| i.checked_add(1))
                .ok_or(DurableError::IndexOverflow)?;
            if entry.index != expected {
                return Err(DurableError::Discontinuous {
                    position,
                    index: entry.index,
                    expected,
                });
            }
        }
        // Checked: from here on nothing fails.
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        self.entries.truncate(end);
        self.entries.drain(..start);
        if write.snapshot.is_some() {
            self.snapshot = write.snapshot;
        }
        match write.entries {
            Cow::Owned(entries) => self.entries.extend(entries),
            Cow::Borrowed(entries) => self.entries.extend_from_slice(entries),
        }
        Ok(())
    }

    /// Checks that the stored entries are `base + 1, base + 2, …`, `base`
    /// being the snapshot's last index (0 without one): what a state loaded
    /// whole from disk must satisfy before it is trusted.
    pub fn check(&self) -> Result<(), DurableError> {
        let base = self.snapshot.as_ref().map_or(0, |s| s.index);
        for (position, entry) in self.entries.iter().enumerate() {
            let expected = u64::try_from(position)
                .ok()
                .and_then(|k| base.checked_add(k))
                .and_then(|i| i.checked_add(1))
                .ok_or(DurableError::IndexOverflow)?;
            if entry.index != expected {
                return Err(DurableError::NotConsecutive {
                    position,
                    index: entry.index,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// The range of `self.entries` that survives installing `snapshot` and
    /// truncating from `truncate_from`, computed as `apply` does it.
    fn surviving(
        &self,
        snapshot: Option<&SnapshotMeta>,
        truncate_from: Option<Index>,
    ) -> (usize, usize) {
        let (mut start, mut end) = (0, self.entries.len());
        if let Some(meta) = snapshot {
            if let Some(first) = self.entries.first() {
                // The entries the snapshot covers go.
                let covered = meta.index.saturating_sub(first.index.saturating_sub(1));
                start = usize::try_from(covered).unwrap_or(usize::MAX).min(end);
            }
            if self.entries[start..end]
                .first()
                .is_some_and(|e| meta.index.checked_add(1) != Some(e.index))
            {
                // The snapshot lies beyond (or before) the stored log:
                // nothing stored survives.
                start = end;
            }
        }
        if let Some(from) = truncate_from {
            end = start + self.entries[start..end].partition_point(|e| e.index < from);
        }
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payload, SplitMix64};

    fn entry(index: Index, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Command((index.to_le_bytes().to_vec()).into()),
        }
    }

    fn write(entries: Vec<Entry>) -> DurableWrite<'static> {
        DurableWrite {
            entries: Cow::Owned(entries),
            ..DurableWrite::default()
        }
    }

    /// A random write, mostly one the core could emit, sometimes one whose
    /// entries leave a gap or overlap.
    fn random_persist(rng: &mut SplitMix64, state: &DurableState, id: u64) -> Persist {
        let base = state.snapshot.as_ref().map_or(0, |s| s.index);
        let last = state.last_index();
        let hard_state = rng.chance(1, 3).then(|| HardState {
            term: state.hard_state.term + rng.below(2),
            voted_for: rng.chance(1, 2).then(|| rng.below(5)),
        });
        let snapshot = rng.chance(1, 6).then(|| {
            let index = match rng.below(4) {
                0 => base.saturating_sub(rng.below(3)), // older or equal
                1 => last + rng.range(1, 4),            // beyond the log
                _ => rng.range(base, last + 1),         // inside the log
            };
            SnapshotMeta::at(index, rng.below(9))
        });
        let truncate_from = rng.chance(1, 5).then(|| rng.range(0, last + 3));
        let mut probe = state.clone();
        let meta = snapshot.clone();
        probe
            .try_apply(DurableWrite {
                snapshot: meta,
                truncate_from,
                ..DurableWrite::default()
            })
            .expect("no entries always fit");
        let mut start = probe.last_index() + 1;
        if rng.chance(1, 10) {
            start = start + 1 - rng.below(3); // a gap, an overlap or fine
        }
        let entries = (0..rng.below(4)).map(|k| entry(start + k, 1)).collect();
        Persist {
            id,
            hard_state,
            snapshot,
            truncate_from,
            entries,
            then_send: Vec::new(),
        }
    }

    /// The semantics of one write, written plainly (entry by entry, with
    /// `retain`): the specification `try_apply` is checked against.
    fn reference_apply(state: &mut DurableState, persist: &Persist) {
        if let Some(hs) = persist.hard_state {
            state.hard_state = hs;
        }
        if let Some(snap) = &persist.snapshot {
            let first = state.entries.first().map(|e| e.index);
            if let Some(first) = first {
                let drop = snap.index.saturating_sub(first - 1);
                let drop = usize::try_from(drop)
                    .unwrap_or(usize::MAX)
                    .min(state.entries.len());
                state.entries.drain(..drop);
            }
            state.snapshot = Some(snap.clone());
            if state
                .entries
                .first()
                .is_some_and(|e| e.index != snap.index + 1)
            {
                // The snapshot lies beyond the stored log: nothing stored survives.
                state.entries.clear();
            }
        }
        if let Some(from) = persist.truncate_from {
            state.entries.retain(|e| e.index < from);
        }
        for entry in &persist.entries {
            assert_eq!(
                entry.index,
                state.last_index() + 1,
                "persisted entries must continue the stored log"
            );
            state.entries.push(entry.clone());
        }
    }

    /// `try_apply` agrees with the plain specification on every write the
    /// core could emit, and refuses the others without a change.
    #[test]
    fn try_apply_agrees_with_the_plain_semantics_and_refuses_without_change() {
        for seed in 0..300 {
            let mut rng = SplitMix64::new(seed);
            let mut reference = DurableState::default();
            let mut mine = DurableState::default();
            for id in 0..60 {
                let p = random_persist(&mut rng, &reference, id);
                let before = mine.clone();
                match mine.try_apply(p.durable_write()) {
                    Ok(()) => {
                        reference_apply(&mut reference, &p);
                        assert_eq!(mine, reference, "seed {seed} write {id}: {p:?}");
                        mine.check()
                            .expect("try_apply keeps the entries consecutive");
                    }
                    Err(e) => {
                        assert_eq!(mine, before, "a refused write changes nothing");
                        // Refused rightly: without its entries the write
                        // leaves a log that they do not continue.
                        let mut rest = reference.clone();
                        reference_apply(
                            &mut rest,
                            &Persist {
                                entries: Vec::new(),
                                ..p.clone()
                            },
                        );
                        let continues = p
                            .entries
                            .iter()
                            .zip(rest.last_index() + 1..)
                            .all(|(e, want)| e.index == want);
                        assert!(!continues, "seed {seed} write {id}: refused {p:?}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_gap_or_an_overlap_is_refused() {
        let mut state = DurableState::default();
        state
            .try_apply(write((1..=3).map(|i| entry(i, 1)).collect()))
            .unwrap();
        assert_eq!(
            state.clone().try_apply(write(vec![entry(5, 1)])),
            Err(DurableError::Discontinuous {
                position: 0,
                index: 5,
                expected: 4
            })
        );
        assert!(state.clone().try_apply(write(vec![entry(3, 1)])).is_err());
        let mut truncated = state.clone();
        truncated
            .try_apply(DurableWrite {
                truncate_from: Some(3),
                ..write(vec![entry(3, 2)])
            })
            .unwrap();
        assert_eq!(truncated.last_index(), 3);
        assert_eq!(truncated.term_at(3), Some(2));
        let snap = SnapshotMeta::at(10, 2);
        state
            .try_apply(DurableWrite {
                snapshot: Some(snap.clone()),
                ..write(vec![entry(11, 2)])
            })
            .unwrap();
        assert_eq!(state.snapshot, Some(snap));
        assert_eq!(state.entries, vec![entry(11, 2)]);
    }

    #[test]
    fn the_largest_index_is_the_end_of_the_log() {
        let mut state = DurableState {
            snapshot: Some(SnapshotMeta::at(Index::MAX, 1)),
            ..DurableState::default()
        };
        assert_eq!(
            state.try_apply(write(vec![entry(0, 1)])),
            Err(DurableError::IndexOverflow)
        );
        assert!(state.check().is_ok());
    }

    #[test]
    fn check_finds_a_misplaced_entry() {
        let state = DurableState {
            snapshot: Some(SnapshotMeta::at(4, 1)),
            entries: vec![entry(5, 1), entry(7, 1)],
            ..DurableState::default()
        };
        assert_eq!(
            state.check(),
            Err(DurableError::NotConsecutive {
                position: 1,
                index: 7,
                expected: 6
            })
        );
    }
}
