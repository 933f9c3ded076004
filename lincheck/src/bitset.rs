//! The set of linearized operations, as a bitset that keeps its own hash up
//! to date, and a deterministic hasher for model states.
//!
//! The bitset's hash is the XOR of a fixed pseudo-random key per member
//! (Zobrist hashing), so adding or removing a member costs O(1) and the
//! search never rehashes the whole set.

use std::hash::{Hash, Hasher};

/// A fixed-size set of operation indices with an incrementally maintained
/// hash. Two sets with the same members have the same hash.
///
/// It also keeps two hints for [`Bitset::window`]: every word below
/// `full_below` is all ones, and every word from `empty_from` on is zero.
#[derive(Clone, Debug)]
pub(crate) struct Bitset {
    words: Vec<u64>,
    hash: u64,
    full_below: usize,
    empty_from: usize,
}

impl PartialEq for Bitset {
    fn eq(&self, other: &Self) -> bool {
        self.words == other.words
    }
}

impl Eq for Bitset {}

impl Bitset {
    /// An empty set able to hold `0..len`.
    pub(crate) fn new(len: usize) -> Self {
        Bitset {
            words: vec![0; len.div_ceil(64)],
            hash: 0,
            full_below: 0,
            empty_from: 0,
        }
    }

    /// Adds `i`, which must not be a member.
    #[inline]
    pub(crate) fn insert(&mut self, i: usize) {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        debug_assert!(self.words[word] & bit == 0, "{i} already in the set");
        self.words[word] |= bit;
        self.hash ^= member_key(i);
        self.empty_from = self.empty_from.max(word + 1);
    }

    /// Removes `i`, which must be a member.
    #[inline]
    pub(crate) fn remove(&mut self, i: usize) {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        debug_assert!(self.words[word] & bit != 0, "{i} not in the set");
        self.words[word] &= !bit;
        self.hash ^= member_key(i);
        self.full_below = self.full_below.min(word);
    }

    /// The hash of the current members.
    #[inline]
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// The underlying words.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// The set in short: `(f, tail)` where every word before `f` is all
    /// ones, `tail` holds the words from `f` on up to the last nonzero one,
    /// and `tail` is empty or starts with a word that is not all ones. Two
    /// sets are equal iff their windows are. The search linearizes roughly
    /// in history order, so the window is short however long the history.
    #[inline]
    pub(crate) fn window(&mut self) -> (usize, &[u64]) {
        while self.full_below < self.words.len() && self.words[self.full_below] == !0 {
            self.full_below += 1;
        }
        self.empty_from = self.empty_from.max(self.full_below);
        while self.empty_from > self.full_below && self.words[self.empty_from - 1] == 0 {
            self.empty_from -= 1;
        }
        (
            self.full_below,
            &self.words[self.full_below..self.empty_from],
        )
    }
}

/// The Zobrist key of member `i`: a fixed, well-mixed 64-bit value
/// (the splitmix64 finaliser of `i`).
fn member_key(i: usize) -> u64 {
    mix64(
        (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

/// The splitmix64 / murmur3 finaliser: a bijection that spreads every input
/// bit over every output bit.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A fast deterministic hasher (no per-process random keys), so the
/// cache behaves the same on every run. Not resistant to adversarial
/// inputs, which a test history is not.
#[derive(Default)]
pub(crate) struct StableHasher {
    hash: u64,
}

impl StableHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        mix64(self.hash)
    }
}

/// The deterministic hash of a value.
pub(crate) fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = StableHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_only_on_members() {
        let mut a = Bitset::new(130);
        let mut b = Bitset::new(130);
        for i in [3, 64, 129] {
            a.insert(i);
        }
        for i in [129, 7, 3, 64] {
            b.insert(i);
        }
        b.remove(7);
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash());
        a.remove(3);
        a.remove(64);
        a.remove(129);
        assert_eq!(a.hash(), 0);
        assert_eq!(a.words(), &[0, 0, 0]);
        assert_eq!(a.window(), (0, &[][..]));
    }

    #[test]
    fn the_window_skips_full_and_empty_words() {
        let mut a = Bitset::new(300);
        for i in 0..130 {
            a.insert(i);
        }
        assert_eq!(a.window(), (2, &[0b11][..]));
        a.insert(200);
        assert_eq!(a.window(), (2, &[0b11, 1 << 8][..]));
        a.remove(5);
        assert_eq!(a.window(), (0, &[!(1 << 5), !0, 0b11, 1 << 8][..]));
        a.insert(5);
        a.remove(200);
        assert_eq!(a.window(), (2, &[0b11][..]));
        for i in 130..192 {
            a.insert(i);
        }
        assert_eq!(a.window(), (3, &[][..]));
    }

    #[test]
    fn stable_hash_separates_strings() {
        assert_ne!(stable_hash("ab"), stable_hash("ba"));
        assert_ne!(stable_hash(""), stable_hash("\0"));
        assert_eq!(
            stable_hash("x 1 0 y"),
            stable_hash(&String::from("x 1 0 y"))
        );
    }
}
