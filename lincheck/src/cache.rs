//! The memo of configurations one partition's search has reached: an
//! open-addressing hash table (linear probing, at most half full) over
//! (linearized set, state) entries stored in flat arrays, only ever asked
//! for membership.
//!
//! It owns its memory accounting: [`Cache::bytes`] is what it holds (array
//! capacities plus the states' heap as the model estimates it), and an
//! insert that would need more than the room it is given fails instead of
//! growing, so the search can stop at its memory limit before allocating
//! past it. Growing the table (a rehash of every entry) watches the clock,
//! so a large rehash cannot overrun the time budget.

use std::time::Instant;

use super::bitset::Bitset;

/// How many entries a rehash moves between two looks at the clock.
const ENTRIES_PER_CLOCK_READ: usize = 1 << 16;

/// The smallest table and the smallest step by which the entry arrays grow.
const MIN_ENTRIES: usize = 512;

/// What [`Cache::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The configuration is new and now stored.
    Added,
    /// The configuration was already stored.
    Present,
    /// Storing it would need more memory than the room given.
    NoRoom,
    /// The deadline passed while the table was being enlarged.
    OutOfTime,
}

/// Sets of at most this many words are stored whole: their windows would
/// save less than the window's own bookkeeping costs. The crate's unit
/// tests store windows always, so the brute-force cross-check covers that
/// layout; the reference-history test (built without `cfg(test)`) covers
/// the whole one on its small partitions.
const WHOLE_SETS_UP_TO_WORDS: usize = 4;

pub(crate) struct Cache<S> {
    /// With `Some(w)`, entry `k`'s set is `sets[k * w..][..w]`, whole, and
    /// `full_below` and `set_start` stay empty. With `None`, entry `k`'s set
    /// is all ones below word `full_below[k]`, then the words
    /// `sets[set_start[k]..set_start[k + 1]]`, then zeros (its
    /// [`Bitset::window`]).
    whole_words: Option<usize>,
    full_below: Vec<u32>,
    set_start: Vec<usize>,
    sets: Vec<u64>,
    states: Vec<S>,
    hashes: Vec<u64>,
    /// 0 for an empty slot, else the hash's top 32 bits above entry index + 1,
    /// so most mismatches are seen without touching the entry.
    slots: Vec<u64>,
    /// The sum of the model's heap estimates of the stored states.
    state_heap_bytes: usize,
}

impl<S: Clone + Eq> Cache<S> {
    pub(crate) fn new(ops: usize) -> Self {
        assert!(
            ops.div_ceil(64) < u32::MAX as usize,
            "a set's word index fits 32 bits"
        );
        let words = ops.div_ceil(64);
        let whole_words = (!cfg!(test) && words <= WHOLE_SETS_UP_TO_WORDS).then_some(words);
        Cache {
            whole_words,
            full_below: Vec::new(),
            set_start: if whole_words.is_some() {
                Vec::new()
            } else {
                vec![0]
            },
            sets: Vec::new(),
            states: Vec::new(),
            hashes: Vec::new(),
            slots: vec![0; 2 * MIN_ENTRIES],
            state_heap_bytes: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    /// Takes the stored states out (leaving the cache empty of them), so
    /// that the caller can free them where it likes.
    pub(crate) fn take_states(&mut self) -> Vec<S> {
        self.state_heap_bytes = 0;
        std::mem::take(&mut self.states)
    }

    /// The memory the cache holds, in bytes (an estimate: exact for its
    /// arrays, the model's figure for the states' heap).
    pub(crate) fn bytes(&self) -> usize {
        8 * (self.slots.capacity()
            + self.sets.capacity()
            + self.hashes.capacity()
            + self.set_start.capacity())
            + 4 * self.full_below.capacity()
            + std::mem::size_of::<S>() * self.states.capacity()
            + self.state_heap_bytes
    }

    fn slot(hash: u64, entry: usize) -> u64 {
        (hash & !0xffff_ffff) | (entry as u64 + 1)
    }

    /// The bytes that adding one more entry would allocate beyond
    /// [`Cache::bytes`] at its peak (a new table while the old one is still
    /// held, or the entry arrays' next step).
    fn growth_bytes(&self, tail_words: usize) -> usize {
        let mut bytes = 0;
        if (self.len() + 1) * 2 > self.slots.len() {
            bytes += 8 * 2 * self.slots.len();
        }
        if self.states.len() == self.states.capacity() {
            let more = self.states.capacity().max(MIN_ENTRIES);
            let set_index = if self.whole_words.is_some() { 0 } else { 8 + 4 };
            bytes += more * (std::mem::size_of::<S>() + 8 + set_index);
        }
        if self.sets.len() + tail_words > self.sets.capacity() {
            bytes += 8 * self.sets_growth(tail_words);
        }
        bytes
    }

    /// How many words the set store grows by to take `tail_words` more.
    fn sets_growth(&self, tail_words: usize) -> usize {
        self.sets.capacity().max(tail_words).max(MIN_ENTRIES)
    }

    /// Adds the configuration unless it is present, or unless adding it
    /// needs more than `room` bytes beyond [`Cache::bytes`] (counting
    /// `state_heap`, the model's estimate for `state`).
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        set: &mut Bitset,
        state: &S,
        state_heap: usize,
        room: usize,
        deadline: Option<Instant>,
    ) -> Inserted {
        let (full_below, tail) = match self.whole_words {
            Some(_) => (0, set.words()),
            None => set.window(),
        };
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                break;
            }
            if (slot ^ hash) >> 32 == 0 {
                let k = (slot & 0xffff_ffff) as usize - 1;
                let (stored_full_below, stored) = match self.whole_words {
                    Some(w) => (0, &self.sets[k * w..(k + 1) * w]),
                    None => (
                        self.full_below[k] as usize,
                        &self.sets[self.set_start[k]..self.set_start[k + 1]],
                    ),
                };
                // Word by word: the sets are short, and a call to memcmp
                // costs more than comparing them.
                if stored_full_below == full_below
                    && stored.len() == tail.len()
                    && stored.iter().zip(tail).all(|(a, b)| a == b)
                    && self.states[k] == *state
                {
                    return Inserted::Present;
                }
            }
            i = (i + 1) & mask;
        }
        if self.growth_bytes(tail.len()) + state_heap > room {
            return Inserted::NoRoom;
        }
        assert!(
            self.len() < u32::MAX as usize,
            "cache entry index fits 32 bits"
        );
        if self.states.len() == self.states.capacity() {
            let more = self.states.capacity().max(MIN_ENTRIES);
            self.states.reserve_exact(more);
            self.hashes.reserve_exact(more);
            if self.whole_words.is_none() {
                self.full_below.reserve_exact(more);
                self.set_start.reserve_exact(more);
            }
        }
        if self.sets.len() + tail.len() > self.sets.capacity() {
            self.sets.reserve_exact(self.sets_growth(tail.len()));
        }
        if (self.len() + 1) * 2 > self.slots.len() {
            if !self.grow(deadline) {
                return Inserted::OutOfTime;
            }
            // Find the empty slot again in the new table.
            let mask = self.slots.len() - 1;
            i = hash as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
        }
        self.slots[i] = Self::slot(hash, self.len());
        self.hashes.push(hash);
        self.sets.extend_from_slice(tail);
        if self.whole_words.is_none() {
            self.full_below.push(full_below as u32);
            self.set_start.push(self.sets.len());
        }
        self.states.push(state.clone());
        self.state_heap_bytes += state_heap;
        Inserted::Added
    }

    /// Doubles the table; false (leaving the table as it was) if the
    /// deadline passes first.
    fn grow(&mut self, deadline: Option<Instant>) -> bool {
        let size = self.slots.len() * 2;
        let mask = size - 1;
        let mut slots = vec![0u64; size];
        for (k, &hash) in self.hashes.iter().enumerate() {
            if k % ENTRIES_PER_CLOCK_READ == ENTRIES_PER_CLOCK_READ - 1
                && deadline.is_some_and(|d| Instant::now() >= d)
            {
                return false;
            }
            let mut i = hash as usize & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = Self::slot(hash, k);
        }
        self.slots = slots;
        true
    }
}
