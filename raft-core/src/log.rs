//! The in-memory log: a snapshot boundary plus the entries after it.
//!
//! Invariants: `entries[k].index == snapshot.index + 1 + k`; terms never
//! decrease along the log; the snapshot's term is at most the first entry's.

use crate::types::{Entry, Index, SnapshotMeta, Term};

/// The log of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftLog {
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
}

impl RaftLog {
    /// An empty log.
    pub fn new() -> Self {
        RaftLog::default()
    }

    /// A log that continues `snapshot` with `entries`, if they are
    /// consecutive, their terms never decrease, and there is room for one
    /// more entry after the last (its index below `u64::MAX`).
    pub fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Option<Self> {
        let room = u64::try_from(entries.len())
            .ok()
            .and_then(|n| snapshot.index.checked_add(n)?.checked_add(1));
        room?;
        let mut term = snapshot.term;
        for (offset, e) in (1..).zip(entries.iter()) {
            if e.index != snapshot.index + offset || e.term < term {
                return None;
            }
            term = e.term;
        }
        Some(RaftLog { snapshot, entries })
    }

    /// Where the compacted prefix ends.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Index of the last entry (the snapshot's if none follow it).
    pub fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Term of the last entry (the snapshot's if none follow it).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    fn offset(&self, index: Index) -> Option<usize> {
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        usize::try_from(index - self.snapshot.index - 1).ok()
    }

    /// The term at `index`, if known: the snapshot boundary counts, the
    /// compacted entries before it do not.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.offset(index).map(|o| self.entries[o].term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.offset(index).map(|o| &self.entries[o])
    }

    /// Entries from `start` on, at most `max_count` of them and at most
    /// `max_bytes` (but always at least one if any exist).
    pub fn entries_from(&self, start: Index, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        let Some(first) = self.offset(start) else {
            return Vec::new();
        };
        let mut bytes = 0;
        let mut out = Vec::with_capacity((self.entries.len() - first).min(max_count));
        for e in self.entries[first..].iter().take(max_count) {
            bytes += e.size_hint();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// All entries in `start..=end` that are held.
    pub fn slice(&self, start: Index, end: Index) -> &[Entry] {
        let lo = start.max(self.snapshot.index + 1);
        let hi = end.min(self.last_index());
        if lo > hi {
            return &[];
        }
        let (a, b) = (self.offset(lo).unwrap(), self.offset(hi).unwrap());
        &self.entries[a..=b]
    }

    /// Appends one entry. Panics if it does not continue the log: callers
    /// have already checked.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "append must continue the log"
        );
        assert!(
            entry.term >= self.last_term(),
            "terms never decrease along the log"
        );
        self.entries.push(entry);
    }

    /// Drops every entry with index `>= from` (`from` past the snapshot).
    pub fn truncate_from(&mut self, from: Index) {
        assert!(
            from > self.snapshot.index,
            "cannot truncate into the snapshot"
        );
        if let Some(o) = self.offset(from) {
            self.entries.truncate(o);
        }
    }

    /// Discards entries through `meta.index`, which becomes the snapshot
    /// boundary. If the log does not hold `meta.index` with `meta.term`, the
    /// whole log is discarded (a leader's snapshot replaces a divergent log).
    pub fn compact_to(&mut self, meta: SnapshotMeta) {
        if meta.index <= self.snapshot.index {
            return;
        }
        if self.term_at(meta.index) == Some(meta.term) {
            let o = self.offset(meta.index).unwrap();
            self.entries.drain(..=o);
        } else {
            self.entries.clear();
        }
        self.snapshot = meta;
    }

    /// The first index of `term` in the run that contains `index` (never below
    /// the first entry after the snapshot). `index` must be held.
    pub fn first_index_of_term_at(&self, index: Index) -> Index {
        let term = self.term_at(index).expect("index must be held");
        let mut i = index;
        while i > self.snapshot.index + 1 && self.term_at(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index holding `term`, if the log (or its snapshot boundary)
    /// holds that term.
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        // Terms never decrease, so search from the end and stop early.
        for e in self.entries.iter().rev() {
            if e.term == term {
                return Some(e.index);
            }
            if e.term < term {
                return None;
            }
        }
        (self.snapshot.term == term && self.snapshot.index > 0).then_some(self.snapshot.index)
    }

    /// True if a log ending at (`last_index`, `last_term`) is at least as
    /// up-to-date as this one (Raft paper §5.4.1, the election restriction).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }
}
