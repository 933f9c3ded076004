//! The keys and values of the store: a hash map cut into shards, each
//! behind an `Arc`, so that a snapshot's copy of the whole map is a copy of
//! the shard pointers, and a change copies only the shard it touches, once
//! per snapshot, and only while a snapshot still holds it.
//!
//! Why not a persistent map (a HAMT or a B-tree whose nodes are shared)?
//! They pay for sharing on every change, shared or not: a B-tree of string
//! keys cost 1.3–1.6 µs per put against 0.63 µs for a plain hash map, a
//! HAMT 0.95 µs (100 000 keys, 256-byte values); here a change to a shard
//! nobody else holds costs a reference-count check on top of the hash
//! map's own work.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// Shards per map: enough that copying one (on the first change to it
/// while a snapshot holds it) is short (a few hundred entries per shard at
/// 100 000 keys: pointer copies), few enough that copying the shard
/// pointers for a snapshot is too.
pub(crate) const SHARDS: usize = 256;

/// The keys' hasher: SipHash keyed by a secret prefix, the store's seed (a
/// server's seed comes from entropy in production and from the run's seed
/// in the simulator), so that no client can choose keys that collide.
/// Nothing observable depends on the hash order: a snapshot is written in
/// key order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyHasher {
    pub(crate) seed: u64,
}

impl BuildHasher for KeyHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.seed);
        h
    }
}

/// A value: one allocation (counts and bytes together), so that reading or
/// dropping one misses the cache once, not twice as an `Arc<String>` did.
pub(crate) type Value = Arc<str>;

/// Longest key held inline in the map's own table.
const INLINE: usize = 22;

/// A key as the map holds it: up to [`INLINE`] bytes in the table's slot
/// itself, longer ones behind an `Arc`. Finding a key compares it with the
/// slot's: an `Arc<str>` key made that comparison a cache miss of its own
/// (on 100 000 random keys, a follower spent a sixth of its CPU in it);
/// inline, the slot's line is already loaded. Copying a shard for a
/// snapshot copies inline keys instead of touching their reference counts.
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Key {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Key::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("made from a str")
            }
            Key::Shared(s) => s,
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Key::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(Arc::from(s))
        }
    }
}

impl std::ops::Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// As the `str`, so that a lookup by `&str` finds it.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

type Shard = HashMap<Key, Value, KeyHasher>;

/// A string-keyed map of string values, cheap to copy (see the module
/// docs).
#[derive(Clone, Debug)]
pub(crate) struct ShardedMap {
    shards: Vec<Arc<Shard>>,
    hasher: KeyHasher,
    len: usize,
}

impl ShardedMap {
    pub(crate) fn with_hasher(hasher: KeyHasher) -> Self {
        ShardedMap {
            shards: (0..SHARDS)
                .map(|_| Arc::new(Shard::with_hasher(hasher)))
                .collect(),
            hasher,
            len: 0,
        }
    }

    pub(crate) fn hasher(&self) -> KeyHasher {
        self.hasher
    }

    fn shard_of(&self, key: &str) -> usize {
        // Middle bits: a shard's own table (hashbrown, with this hasher)
        // takes its bucket from the low bits and its tag from the top
        // seven; keys sharing either would all collide in their shard.
        (self.hasher.hash_one(key) >> 32) as usize % SHARDS
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.shards[self.shard_of(key)].get(key)
    }

    /// The value of `key`, to change in place: the key's shard is copied
    /// first if a snapshot still holds it (even if the key is not there:
    /// the insert that usually follows would copy it anyway).
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let i = self.shard_of(key);
        Arc::make_mut(&mut self.shards[i]).get_mut(key)
    }

    pub(crate) fn insert(&mut self, key: &str, value: Value) -> Option<Value> {
        self.insert_key(Key::from(key), value)
    }

    fn insert_key(&mut self, key: Key, value: Value) -> Option<Value> {
        let i = self.shard_of(&key);
        let old = Arc::make_mut(&mut self.shards[i]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[i]).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every entry, in key order (40 bytes per key, sorted). Each key's
    /// first 16 bytes are sorted inline, so that comparing two keys reads
    /// neither unless those are equal: comparing through the pointers
    /// missed the cache on every comparison, and sorting 100 000 keys so
    /// took several times as long as encoding them.
    pub(crate) fn sorted(&self) -> Vec<(&Key, &Value)> {
        let mut keyed: Vec<([u8; 16], &Key, &Value)> =
            self.iter().map(|(k, v)| (prefix(k), k, v)).collect();
        // Zero-padded prefixes order as the keys do, or tie (a key shorter
        // than 16 bytes against one that continues with zeros, or two that
        // share their first 16 bytes): the full comparison decides those.
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.as_str().cmp(b.1.as_str())));
        keyed.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    /// The same entries in a map hashed with `hasher`.
    pub(crate) fn rehashed(&self, hasher: KeyHasher) -> ShardedMap {
        let mut map = ShardedMap::with_hasher(hasher);
        for (k, v) in self.iter() {
            map.insert_key(k.clone(), v.clone());
        }
        map
    }
}

/// A key's first 16 bytes, zero-padded.
fn prefix(key: &str) -> [u8; 16] {
    let mut p = [0; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key.as_bytes()[..n]);
    p
}

impl PartialEq for ShardedMap {
    /// The same entries (whatever the hashers).
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for ShardedMap {}

impl<'a> FromIterator<(&'a str, Value)> for ShardedMap {
    fn from_iter<I: IntoIterator<Item = (&'a str, Value)>>(iter: I) -> Self {
        let mut map = ShardedMap::with_hasher(KeyHasher::default());
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Arc::from(v)
    }

    #[test]
    fn a_copy_does_not_see_later_changes_and_shares_untouched_shards() {
        let mut m = ShardedMap::with_hasher(KeyHasher { seed: 7 });
        for i in 0..2000 {
            m.insert(&format!("k{i}"), s("old"));
        }
        let copy = m.clone();
        *m.get_mut("k1").unwrap() = s("new");
        m.insert("fresh", s("x"));
        assert_eq!(m.remove("k2").as_deref(), Some("old"));
        assert_eq!(m.remove("missing"), None);
        assert_eq!(m.get_mut("missing"), None);
        assert_eq!(&**copy.get("k1").unwrap(), "old");
        assert_eq!(&**copy.get("k2").unwrap(), "old");
        assert!(copy.get("fresh").is_none());
        assert_eq!((m.len(), copy.len()), (2000, 2000));
        // At most the four touched shards were copied (a get_mut copies its shard, found or not).
        let shared = m
            .shards
            .iter()
            .zip(&copy.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 4, "{shared} shards still shared");
        assert_ne!(m, copy);
    }

    #[test]
    fn keys_inline_or_shared_are_found_by_their_str() {
        let mut m = ShardedMap::with_hasher(KeyHasher { seed: 5 });
        let keys = [
            "",
            "k",
            &"a".repeat(INLINE),
            &"b".repeat(INLINE + 1),
            &"é".repeat(40),
        ];
        for k in keys {
            assert!(m.insert(k, s(k)).is_none());
        }
        for k in keys {
            assert_eq!(m.get(k).map(|v| &**v), Some(k), "{k:?}");
            let inline = matches!(Key::from(k), Key::Inline { .. });
            assert_eq!(inline, k.len() <= INLINE, "{k:?}");
        }
        assert_eq!(m.insert(keys[2], s("new")).as_deref(), Some(keys[2]));
        assert!(m.get(&"a".repeat(INLINE - 1)).is_none());
        assert_eq!(m.len(), keys.len());
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn sorted_is_key_order_around_the_inline_prefix() {
        let mut m = ShardedMap::with_hasher(KeyHasher { seed: 3 });
        let keys = [
            "",
            "a",
            "a\0",
            "a\0\0",
            "a\u{1}",
            "b",
            "0123456789abcdef",
            "0123456789abcdef\0",
            "0123456789abcdefg",
            "0123456789abcdeg",
            "0123456789abcde",
            "\u{ff}",
            "zz",
        ];
        for k in keys {
            m.insert(k, s(k));
        }
        let mut want: Vec<&str> = keys.to_vec();
        want.sort();
        let got: Vec<&str> = m.sorted().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn equality_and_order_do_not_depend_on_the_hasher() {
        let mut a = ShardedMap::with_hasher(KeyHasher { seed: 1 });
        for k in ["b", "a", "c"] {
            a.insert(k, s(k));
        }
        let b = a.rehashed(KeyHasher { seed: 2 });
        assert_eq!(a, b);
        let keys = |m: &ShardedMap| {
            m.sorted()
                .iter()
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&a), ["a", "b", "c"]);
        assert_eq!(keys(&b), keys(&a));
    }
}
