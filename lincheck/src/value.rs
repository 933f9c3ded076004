//! [`AppendValue`], the state of one key of the key/value model: a string
//! that grows by appends, stored as a chain of shared pieces so that copying
//! a state is O(1) and comparing two states is usually O(1).
//!
//! A value is its last piece, which points at the value it extended. Every
//! state the search reaches after an append shares the whole chain before
//! it, so the memo holds one small piece per state instead of a copy of a
//! string that may be kilobytes long.
//!
//! Invariants (of every value):
//!
//! * `len` is the length of the text the chain spells, in bytes;
//! * `hash` is the FNV-1a hash of that text, folded byte by byte, so an
//!   append extends it without reading what came before, and equal texts
//!   have equal hashes however they were built.
//!
//! Equality is exact: equal length and hash are followed by a comparison of
//! the texts from their ends, which stops as soon as both sides reach the
//! same shared piece (usual when two states differ only in their last few
//! appends).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// FNV-1a's offset basis: the hash of the empty text.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    hash
}

/// One appended (or put) chunk of text and the value it extended.
struct Piece {
    text: Box<str>,
    /// The value before this piece; `None` at the start of the text.
    before: Option<Arc<Piece>>,
}

impl Drop for Piece {
    /// Frees a chain iteratively: a recursive drop of a long chain of
    /// appends would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.before.take();
        while let Some(piece) = next {
            match Arc::try_unwrap(piece) {
                Ok(mut piece) => next = piece.before.take(),
                Err(_) => break,
            }
        }
    }
}

/// A string value that is cheap to copy, extend, hash and compare: the
/// state of one key of [`crate::KvModel`]. Build it with
/// [`AppendValue::from`] and [`AppendValue::append`]; read it with
/// `to_string()` (it is `Display`) or compare it with
/// [`AppendValue::eq_str`].
#[derive(Clone)]
pub struct AppendValue {
    len: usize,
    hash: u64,
    last: Option<Arc<Piece>>,
}

impl AppendValue {
    /// The empty string.
    pub fn new() -> Self {
        AppendValue {
            len: 0,
            hash: FNV_OFFSET,
            last: None,
        }
    }

    /// The length of the text in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// This value with `suffix` appended; shares all of `self`.
    pub fn append(&self, suffix: &str) -> Self {
        if suffix.is_empty() {
            return self.clone();
        }
        let len = self.len + suffix.len();
        AppendValue {
            len,
            hash: fnv_extend(self.hash, suffix.as_bytes()),
            last: Some(Arc::new(Piece {
                text: suffix.into(),
                before: self.last.clone(),
            })),
        }
    }

    /// The pieces from last to first.
    fn pieces(&self) -> impl Iterator<Item = &Piece> {
        std::iter::successors(self.last.as_deref(), |p| p.before.as_deref())
    }

    /// True if the text is `s` (compared from the end, where two values of
    /// the same key usually differ).
    pub fn eq_str(&self, s: &str) -> bool {
        if s.len() != self.len {
            return false;
        }
        let mut end = s.len();
        for piece in self.pieces() {
            let start = end - piece.text.len();
            if s.as_bytes()[start..end] != *piece.text.as_bytes() {
                return false;
            }
            end = start;
        }
        true
    }

    /// The heap bytes this value's last piece takes (a rough figure, used
    /// for the search's memory estimate: earlier pieces are shared).
    pub(crate) fn last_piece_bytes(&self) -> usize {
        self.last.as_ref().map_or(0, |p| {
            // Arc counts, the piece itself, allocator overhead, the text.
            2 * 8 + std::mem::size_of::<Piece>() + 16 + p.text.len()
        })
    }
}

impl Default for AppendValue {
    fn default() -> Self {
        AppendValue::new()
    }
}

impl From<&str> for AppendValue {
    fn from(s: &str) -> Self {
        AppendValue::new().append(s)
    }
}

impl PartialEq for AppendValue {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len || self.hash != other.hash {
            return false;
        }
        // Walk both chains from the end; `a_left` / `b_left` are the bytes
        // of the current pieces not yet compared (a prefix of each).
        let (mut a, mut b) = (self.last.as_deref(), other.last.as_deref());
        let (mut a_left, mut b_left) =
            (a.map_or(0, |p| p.text.len()), b.map_or(0, |p| p.text.len()));
        loop {
            let (Some(pa), Some(pb)) = (a, b) else {
                // Equal lengths: both texts are used up together.
                return a.is_none() && b.is_none();
            };
            if a_left == pa.text.len() && b_left == pb.text.len() && std::ptr::eq(pa, pb) {
                return true;
            }
            let n = a_left.min(b_left);
            if pa.text.as_bytes()[a_left - n..a_left] != pb.text.as_bytes()[b_left - n..b_left] {
                return false;
            }
            a_left -= n;
            b_left -= n;
            if a_left == 0 {
                a = pa.before.as_deref();
                a_left = a.map_or(0, |p| p.text.len());
            }
            if b_left == 0 {
                b = pb.before.as_deref();
                b_left = b.map_or(0, |p| p.text.len());
            }
        }
    }
}

impl Eq for AppendValue {}

impl Hash for AppendValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
        state.write_usize(self.len);
    }
}

impl fmt::Display for AppendValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pieces: Vec<&Piece> = self.pieces().collect();
        for piece in pieces.iter().rev() {
            f.write_str(&piece.text)?;
        }
        Ok(())
    }
}

impl fmt::Debug for AppendValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_are_equal_however_built() {
        let ab_c = AppendValue::from("ab").append("c");
        let a_bc = AppendValue::from("a").append("bc");
        let abc = AppendValue::from("abc");
        assert_eq!(ab_c, a_bc);
        assert_eq!(ab_c, abc);
        assert_eq!(ab_c.len(), 3);
        assert_eq!(
            crate::bitset::stable_hash(&ab_c),
            crate::bitset::stable_hash(&abc)
        );
        assert_ne!(ab_c, AppendValue::from("abd"));
        assert_ne!(ab_c, AppendValue::from("ab"));
        assert_eq!(AppendValue::new(), AppendValue::from(""));
        assert_eq!(AppendValue::new().append(""), AppendValue::new());
        assert!(ab_c.eq_str("abc"));
        assert!(!ab_c.eq_str("abd"));
        assert!(!ab_c.eq_str("ab"));
        assert_eq!(a_bc.to_string(), "abc");
        assert_eq!(format!("{a_bc:?}"), "\"abc\"");
    }

    #[test]
    fn shared_prefixes_compare_without_reading_them() {
        let base = (0..1000).fold(AppendValue::new(), |v, i| v.append(&format!("x{i} ")));
        let one = base.append("a").append("b");
        let two = base.append("a").append("b");
        assert_eq!(one, two);
        assert_ne!(base.append("ab"), base.append("ba"));
    }

    #[test]
    fn a_long_chain_drops_without_overflowing_the_stack() {
        let long = (0..1_000_000).fold(AppendValue::new(), |v, _| v.append("x"));
        assert_eq!(long.len(), 1_000_000);
        drop(long);
    }
}
