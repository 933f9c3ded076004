//! The replicated state machine: string keys and values, plus the client
//! session table that makes every request take effect exactly once.
//!
//! # Sessions and their bound
//!
//! Each client numbers its requests 1, 2, 3, … and has at most one
//! outstanding, so the table keeps one entry per client: the last request
//! number applied and its outcome. A request numbered at or below it is a
//! retry: it is answered from the table (the last one) or ignored (older
//! ones, whose answer the client has already seen) and never applied twice.
//!
//! The table holds at most `max_sessions` clients. When full, the session
//! least recently used (by log index of its last request) is evicted. A later
//! request from an evicted client with number > 1 is answered
//! `SessionExpired` and not applied, since it might be a retry. What
//! eviction cannot guard against is a late copy of an evicted client's
//! *first* request: it opens a fresh session at number 1, and copies of that
//! client's later requests still on their way into the log are then applied
//! again. So eviction is safe as long as no client is evicted while copies
//! of its requests may still reach the log, that is unless `max_sessions`
//! other clients make requests while it still has one in flight; the default
//! (100 000) makes that a non-issue for any cluster this code serves.
//! Eviction depends only on the log, so every replica evicts the same
//! sessions at the same index.
//!
//! The bound travels in snapshots: a replica restored from one uses the
//! bound it was taken with, so `max_sessions` must be the same on every
//! replica of a cluster and must not change over its life (it is part of the
//! state machine's definition, like the meaning of a command).
//!
//! # Member addresses
//!
//! The store also holds the members' address table ([`crate::admin`]): one
//! record per node id, set by record entries. It is encoded after the rest
//! of the store, and only when it is not empty, so the snapshot of a store
//! that never recorded an address is byte for byte what it was before the
//! table existed.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use raft_core::NodeId;

use crate::admin::MemberAddrs;
use crate::command::{ClientId, Command, Op, Outcome};

/// The default bound on the session table.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    last_outcome: Outcome,
    last_index: u64,
}

/// The key/value store with its session table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    /// Looked up by key on every operation, never iterated except sorted
    /// (see `sorted_map`), so its random hash seed (which protects it from
    /// crafted colliding keys) never shows in any output.
    #[serde(with = "sorted_map")]
    data: HashMap<String, String>,
    sessions: BTreeMap<ClientId, Session>,
    /// Sessions by last use, for eviction: (last index, client).
    by_use: BTreeMap<(u64, ClientId), ()>,
    max_sessions: usize,
    /// The members' addresses: encoded after the store, only when not empty
    /// (see [`KvStore::snapshot`]).
    #[serde(skip)]
    members: BTreeMap<NodeId, MemberAddrs>,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new(DEFAULT_MAX_SESSIONS)
    }
}

impl KvStore {
    /// An empty store keeping at most `max_sessions` client sessions.
    pub fn new(max_sessions: usize) -> Self {
        assert!(max_sessions > 0, "max_sessions must be positive");
        KvStore {
            data: HashMap::new(),
            sessions: BTreeMap::new(),
            by_use: BTreeMap::new(),
            max_sessions,
            members: BTreeMap::new(),
        }
    }

    /// Sets `node`'s addresses (a record entry, applied in log order).
    pub fn record_member(&mut self, node: NodeId, addrs: MemberAddrs) {
        self.members.insert(node, addrs);
    }

    /// The recorded addresses of every node, by id.
    pub fn member_addrs(&self) -> &BTreeMap<NodeId, MemberAddrs> {
        &self.members
    }

    /// Applies the command at log `index`, exactly once per (client, seq).
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        if let Some(s) = self.sessions.get(&command.client) {
            if command.seq == s.last_seq {
                return s.last_outcome.clone();
            }
            if command.seq < s.last_seq {
                // An older retry: its answer was already received.
                return Outcome::Done;
            }
        } else if command.seq > 1 {
            return Outcome::SessionExpired;
        }
        let outcome = self.execute(&command.op);
        if let Some(old) = self.sessions.get(&command.client) {
            self.by_use.remove(&(old.last_index, command.client));
        } else if self.sessions.len() >= self.max_sessions {
            let ((_, evict), ()) = self.by_use.pop_first().expect("a full table has a session");
            self.sessions.remove(&evict);
        }
        self.by_use.insert((index, command.client), ());
        let session = Session {
            last_seq: command.seq,
            last_outcome: outcome.clone(),
            last_index: index,
        };
        self.sessions.insert(command.client, session);
        outcome
    }

    /// Whether the table holds a session for `client`.
    pub fn has_session(&self, client: ClientId) -> bool {
        self.sessions.contains_key(&client)
    }

    fn execute(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Get { key } => Outcome::Value(self.data.get(key).cloned().unwrap_or_default()),
            Op::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
                Outcome::Done
            }
            Op::Append { key, value } => {
                self.data.entry(key.clone()).or_default().push_str(value);
                Outcome::Done
            }
            Op::Delete { key } => Outcome::Deleted {
                existed: self.data.remove(key).is_some(),
            },
            Op::CompareAndSwap {
                key,
                expected,
                value,
            } => self.compare_and_swap(key, expected.as_deref(), value),
        }
    }

    /// Sets `key` to `value` if its value is `expected` (`None`: unset).
    fn compare_and_swap(&mut self, key: &str, expected: Option<&str>, value: &str) -> Outcome {
        let current = self.data.get(key);
        if current.map(String::as_str) != expected {
            return Outcome::NotSwapped {
                current: current.cloned(),
            };
        }
        self.data.insert(key.to_string(), value.to_string());
        Outcome::Swapped
    }

    /// A key's value, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True if no key is set.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of client sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The store, its sessions and (if any) the member addresses, encoded.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = if crate::canary::on(crate::canary::Canary::SessionsLeftOutOfSnapshot) {
            let mut without = self.clone();
            without.sessions.clear();
            without.by_use.clear();
            postcard::to_allocvec(&without).expect("the store encodes")
        } else {
            postcard::to_allocvec(self).expect("the store encodes")
        };
        if !self.members.is_empty() {
            let table = postcard::to_allocvec(&self.members).expect("the table encodes");
            bytes.extend_from_slice(&table);
        }
        bytes
    }

    /// Replaces the store with a decoded snapshot. A snapshot that does not
    /// decode, or decodes to a table this store could not have built (no
    /// room for any session, more sessions than the bound, a use index that
    /// does not match its session), is refused and changes nothing.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), crate::Error> {
        use crate::SnapshotError as E;
        let bad = crate::Error::BadSnapshot;
        let (mut store, rest): (KvStore, _) =
            postcard::take_from_bytes(bytes).map_err(|e| bad(E::Decode(e)))?;
        if !rest.is_empty() {
            // The member table; an empty one is never written.
            let (members, after): (BTreeMap<NodeId, MemberAddrs>, _) =
                postcard::take_from_bytes(rest).map_err(|e| bad(E::Decode(e)))?;
            if members.is_empty() || !after.is_empty() {
                return Err(bad(E::TrailingBytes(rest.len())));
            }
            store.members = members;
        }
        if store.max_sessions == 0 || store.sessions.len() > store.max_sessions {
            return Err(bad(E::SessionBound {
                sessions: store.sessions.len(),
                bound: store.max_sessions,
            }));
        }
        let uses_match = store.by_use.len() == store.sessions.len()
            && store.by_use.keys().all(|&(index, client)| {
                store
                    .sessions
                    .get(&client)
                    .is_some_and(|s| s.last_index == index)
            });
        if !uses_match {
            return Err(bad(E::UseOrder));
        }
        *self = store;
        Ok(())
    }
}

/// Serializes the key/value map sorted by key, so that a snapshot's bytes
/// depend only on the store's contents (every replica, every run).
mod sorted_map {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &HashMap<String, String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&String, &String)> = map.iter().collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_map(pairs)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<String, String>, D::Error> {
        HashMap::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use std::collections::HashMap;

    fn cmd(client: ClientId, seq: u64, op: Op) -> Command {
        Command { client, seq, op }
    }

    #[test]
    fn retries_are_answered_from_the_session_not_reapplied() {
        let mut s = KvStore::default();
        let a = cmd(
            1,
            1,
            Op::Append {
                key: "k".into(),
                value: "x".into(),
            },
        );
        assert_eq!(s.apply(1, &a), Outcome::Done);
        assert_eq!(s.apply(2, &a), Outcome::Done);
        assert_eq!(s.get("k"), Some("x"));
        let g = cmd(1, 2, Op::Get { key: "k".into() });
        assert_eq!(s.apply(3, &g), Outcome::Value("x".into()));
        s.apply(
            4,
            &cmd(
                2,
                1,
                Op::Append {
                    key: "k".into(),
                    value: "y".into(),
                },
            ),
        );
        // The retried Get returns its first answer.
        assert_eq!(s.apply(5, &g), Outcome::Value("x".into()));
        // An older retry does nothing.
        assert_eq!(s.apply(6, &a), Outcome::Done);
        assert_eq!(s.get("k"), Some("xy"));
    }

    fn cas(key: &str, expected: Option<&str>, value: &str) -> Op {
        Op::CompareAndSwap {
            key: key.into(),
            expected: expected.map(Into::into),
            value: value.into(),
        }
    }

    #[test]
    fn deletes_and_swaps_tell_unset_from_empty() {
        let mut s = KvStore::default();
        let del = |seq| cmd(1, seq, Op::Delete { key: "k".into() });
        assert_eq!(s.apply(1, &del(1)), Outcome::Deleted { existed: false });
        assert_eq!(s.apply(2, &cmd(1, 2, cas("k", Some(""), "a"))), {
            Outcome::NotSwapped { current: None }
        });
        assert_eq!(s.get("k"), None, "a failed swap sets nothing");
        assert_eq!(s.apply(3, &cmd(1, 3, cas("k", None, ""))), Outcome::Swapped);
        assert_eq!(s.get("k"), Some(""));
        assert_eq!(s.apply(4, &cmd(1, 4, cas("k", None, "b"))), {
            Outcome::NotSwapped {
                current: Some(String::new()),
            }
        });
        assert_eq!(
            s.apply(5, &cmd(1, 5, cas("k", Some(""), "b"))),
            Outcome::Swapped
        );
        assert_eq!(s.get("k"), Some("b"));
        assert_eq!(s.apply(6, &del(6)), Outcome::Deleted { existed: true });
        assert_eq!(s.get("k"), None);
        assert!(s.is_empty());
        let get = cmd(1, 7, Op::Get { key: "k".into() });
        assert_eq!(s.apply(7, &get), Outcome::Value(String::new()));
    }

    /// A retried swap or delete is answered as the first time, even after
    /// another client changed the key, and is not applied again.
    #[test]
    fn retried_deletes_and_swaps_are_answered_from_the_session() {
        let mut s = KvStore::default();
        let swap = cmd(1, 1, cas("k", None, "a"));
        assert_eq!(s.apply(1, &swap), Outcome::Swapped);
        let put = Op::Put {
            key: "k".into(),
            value: "b".into(),
        };
        s.apply(2, &cmd(2, 1, put));
        assert_eq!(s.apply(3, &swap), Outcome::Swapped);
        assert_eq!(s.get("k"), Some("b"), "the retry did not swap again");
        let del = cmd(1, 2, Op::Delete { key: "k".into() });
        assert_eq!(s.apply(4, &del), Outcome::Deleted { existed: true });
        s.apply(5, &cmd(2, 2, cas("k", None, "c")));
        assert_eq!(s.apply(6, &del), Outcome::Deleted { existed: true });
        assert_eq!(s.get("k"), Some("c"), "the retry did not delete again");
        // The session's last outcome survives a snapshot.
        let mut t = KvStore::default();
        t.restore(&s.snapshot()).unwrap();
        assert_eq!(t.apply(7, &del), Outcome::Deleted { existed: true });
        assert_eq!(t.get("k"), Some("c"));
    }

    /// Found by the property tests: `[0, 0, 0, 0]` decoded to a store with a
    /// bound of 0, whose next `apply` panicked.
    #[test]
    fn a_snapshot_the_store_could_not_have_built_is_refused() {
        let mut s = KvStore::new(2);
        s.apply(1, &cmd(1, 1, Op::Get { key: "k".into() }));
        let good = s.snapshot();
        let mut bad_bound = KvStore::new(2);
        bad_bound.max_sessions = 0;
        let mut over = s.clone();
        over.max_sessions = 0;
        let mut mismatched = s.clone();
        mismatched.by_use.clear();
        mismatched.by_use.insert((7, 1), ());
        let mut trailing = good.clone();
        trailing.push(0);
        for bytes in [
            vec![0, 0, 0, 0],
            postcard::to_allocvec(&bad_bound).unwrap(),
            postcard::to_allocvec(&over).unwrap(),
            postcard::to_allocvec(&mismatched).unwrap(),
            trailing,
        ] {
            let mut target = s.clone();
            let err = target.restore(&bytes).unwrap_err();
            assert!(matches!(err, crate::Error::BadSnapshot(_)), "{err}");
            assert_eq!(target, s, "a refused snapshot changes nothing");
        }
        let mut fresh = KvStore::default();
        fresh.restore(&good).unwrap();
        assert_eq!(fresh, s);
    }

    #[test]
    fn eviction_is_lru_by_index_and_expired_sessions_are_refused() {
        let mut s = KvStore::new(2);
        let put = |c, seq| {
            cmd(
                c,
                seq,
                Op::Append {
                    key: "k".into(),
                    value: c.to_string(),
                },
            )
        };
        s.apply(1, &put(1, 1));
        s.apply(2, &put(2, 1));
        s.apply(3, &put(1, 2)); // client 1 used more recently than 2
        s.apply(4, &put(3, 1)); // evicts client 2
        assert_eq!(s.session_count(), 2);
        assert_eq!(s.apply(5, &put(2, 2)), Outcome::SessionExpired);
        assert_eq!(s.get("k"), Some("1213"));
    }

    #[test]
    fn snapshots_are_canonical_whatever_the_insertion_order() {
        let mut a = KvStore::new(10);
        let mut b = KvStore::new(10);
        for (i, k) in ["x", "a", "m", "b"].iter().enumerate() {
            a.apply(
                i as u64 + 1,
                &cmd(
                    1,
                    i as u64 + 1,
                    Op::Put {
                        key: (*k).into(),
                        value: "v".into(),
                    },
                ),
            );
        }
        for (i, k) in ["b", "m", "a", "x"].iter().enumerate() {
            b.apply(
                i as u64 + 1,
                &cmd(
                    1,
                    i as u64 + 1,
                    Op::Put {
                        key: (*k).into(),
                        value: "v".into(),
                    },
                ),
            );
        }
        let mut c = KvStore::new(10);
        c.restore(&a.snapshot()).unwrap();
        // Same contents and the same session history: the same bytes.
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(c.snapshot(), a.snapshot());
    }

    #[test]
    fn snapshot_round_trips_data_and_sessions() {
        let mut s = KvStore::new(10);
        let a = cmd(
            9,
            1,
            Op::Put {
                key: "a".into(),
                value: "1".into(),
            },
        );
        s.apply(1, &a);
        let mut t = KvStore::new(1);
        t.restore(&s.snapshot()).unwrap();
        assert_eq!(t, s);
        assert_eq!(t.apply(2, &a), Outcome::Done);
        assert!(t.restore(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn member_addresses_travel_in_the_snapshot_after_the_store() {
        let mut s = KvStore::new(10);
        s.apply(
            1,
            &cmd(
                1,
                1,
                Op::Put {
                    key: "a".into(),
                    value: "1".into(),
                },
            ),
        );
        let without = s.snapshot();
        let addrs = MemberAddrs {
            peer: "10.0.0.1:7000".into(),
            client: "10.0.0.1:7100".into(),
        };
        s.record_member(4, addrs.clone());
        let with = s.snapshot();
        assert!(with.starts_with(&without), "the table follows the store");
        let mut t = KvStore::new(1);
        t.restore(&with).unwrap();
        assert_eq!(t, s);
        assert_eq!(t.member_addrs().get(&4), Some(&addrs));
        let mut u = t.clone();
        u.restore(&without).unwrap();
        assert!(
            u.member_addrs().is_empty(),
            "a snapshot replaces the table too"
        );
    }

    quickcheck! {
        /// Against a HashMap model: applying a random stream of puts,
        /// appends, deletes and swaps (expecting the current value, a
        /// stale one, or an unset key) with random duplicate deliveries
        /// gives the model's state and answers.
        fn matches_a_hashmap_model(ops: Vec<(u8, u8, u8, bool)>) -> bool {
            let mut store = KvStore::default();
            let mut model: HashMap<String, String> = HashMap::new();
            let mut seqs: HashMap<u64, u64> = HashMap::new();
            let mut index = 0;
            for (client, key, kind, dup) in ops {
                let client = u64::from(client % 4);
                let key = format!("k{}", key % 3);
                let seq = { let s = seqs.entry(client).or_insert(0); *s += 1; *s };
                let value = format!("{client}.{seq};");
                let current = model.get(&key).cloned();
                let (op, expected) = match kind % 6 {
                    0 => (Op::Put { key: key.clone(), value: value.clone() }, Outcome::Done),
                    1 => (Op::Append { key: key.clone(), value: value.clone() }, Outcome::Done),
                    2 => (Op::Delete { key: key.clone() }, Outcome::Deleted { existed: current.is_some() }),
                    3 => (cas(&key, current.as_deref(), &value), Outcome::Swapped),
                    4 => (cas(&key, None, &value), if current.is_none() {
                        Outcome::Swapped
                    } else {
                        Outcome::NotSwapped { current: current.clone() }
                    }),
                    _ => (cas(&key, Some("stale"), &value), Outcome::NotSwapped { current: current.clone() }),
                };
                let c = cmd(client, seq, op);
                index += 1;
                if store.apply(index, &c) != expected {
                    return false;
                }
                if dup {
                    index += 1;
                    if store.apply(index, &c) != expected {
                        return false;
                    }
                }
                match (&c.op, &expected) {
                    (Op::Put { .. }, _) | (_, Outcome::Swapped) => { model.insert(key, value); }
                    (Op::Append { .. }, _) => model.entry(key).or_default().push_str(&value),
                    (Op::Delete { .. }, _) => { model.remove(&key); }
                    _ => {}
                }
            }
            model.iter().all(|(k, v)| store.get(k) == Some(v.as_str())) && model.len() == store.len()
        }
    }
}
