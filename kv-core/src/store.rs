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
use std::io::{self, Read, Write};
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use raft_core::NodeId;

use crate::admin::MemberAddrs;
use crate::command::{ClientId, Command, OpRef, Outcome};
use crate::shards::{KeyHasher, ShardedMap};
use crate::SnapshotError;

/// The default bound on the session table.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    last_outcome: Outcome,
    last_index: u64,
}

type Data = ShardedMap;

/// The key/value store with its session table.
///
/// The keys live in a hash map cut into shards behind `Arc`s
/// ([`crate::shards`]), the sessions in a persistent B-tree
/// (`imbl::OrdMap`): [`KvStore::image`] is a copy that a snapshot writer
/// encodes on another thread while this store goes on changing, made by
/// copying pointers (the shards', and the B-tree's root); a change copies
/// only the shard or nodes it touches that the image still holds. Keys and
/// values are reference counted, so copying a shard copies pointers, not
/// strings. The snapshot writer sorts the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    data: Data,
    sessions: OrdMap<ClientId, Session>,
    /// Sessions by last use, for eviction: (last index, client). Derived
    /// from `sessions`; not in snapshots.
    by_use: BTreeMap<(u64, ClientId), ()>,
    max_sessions: usize,
    /// The members' addresses.
    members: BTreeMap<NodeId, MemberAddrs>,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new(DEFAULT_MAX_SESSIONS)
    }
}

/// A frozen copy of a [`KvStore`] for a snapshot: made in constant time
/// ([`KvStore::image`]), encoded with [`KvImage::write_to`], on any thread.
#[derive(Clone, Debug)]
pub struct KvImage {
    data: Data,
    sessions: OrdMap<ClientId, Session>,
    members: BTreeMap<NodeId, MemberAddrs>,
    max_sessions: usize,
}

/// The start of an encoded snapshot: ten `0xff` bytes (which no snapshot of
/// the earlier, unframed format can start with: its first field is a
/// varint, and ten continuation bytes overflow one), then `rkv-kv` and the
/// format version, 2.
const SNAPSHOT_MAGIC: [u8; 16] = *b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffrkv-kv";

/// The first record of a snapshot: the bound and how many records of each
/// kind follow, in this order.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    version: u32,
    max_sessions: u64,
    keys: u64,
    sessions: u64,
    members: u64,
}

/// The snapshot format [`KvImage::write_to`] writes.
const SNAPSHOT_VERSION: u32 = 2;

/// How much a snapshot reader buffers.
const READ_BUFFER: usize = 64 << 10;

impl KvImage {
    /// Encodes the image, streaming: `SNAPSHOT_MAGIC`, then records, each a
    /// `u32` little-endian length and that many bytes of postcard: a
    /// header (the session bound and the record counts), every (key,
    /// value) in key order, every (client, session) in client order, every
    /// (node, addresses) in node order. The same contents give the same
    /// bytes. Returns the number of bytes written. Sorting the keys takes
    /// 40 bytes per key on the calling thread.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<u64> {
        let leave_out = crate::canary::on(crate::canary::Canary::SessionsLeftOutOfSnapshot);
        let sessions = if leave_out { 0 } else { self.sessions.len() };
        let mut out = RecordWriter {
            w,
            buf: Vec::new(),
            written: 0,
        };
        out.w.write_all(&SNAPSHOT_MAGIC)?;
        out.written += SNAPSHOT_MAGIC.len() as u64;
        out.record(&SnapshotHeader {
            version: SNAPSHOT_VERSION,
            max_sessions: self.max_sessions as u64,
            keys: self.data.len() as u64,
            sessions: sessions as u64,
            members: self.members.len() as u64,
        })?;
        for chunk in self.data.sorted().chunks(TOUCH_AHEAD) {
            // Read a byte of every cache line of the chunk's keys and values
            // first: those loads do not depend on each other, so their
            // misses overlap, where encoding record after record would wait
            // for each in turn (on 100 000 keys of 256 bytes, the fastest of
            // 15 encodings took 28–37 ms against 35–48 ms without).
            let touched = chunk
                .iter()
                .flat_map(|(k, v)| lines(k).chain(lines(v)))
                .fold(0u8, u8::wrapping_add);
            std::hint::black_box(touched);
            for (key, value) in chunk {
                out.record(&(key.as_str(), &***value))?;
            }
        }
        if !leave_out {
            for pair in &self.sessions {
                out.record(&pair)?;
            }
        }
        for pair in &self.members {
            out.record(&pair)?;
        }
        Ok(out.written)
    }
}

/// Keys and values the snapshot writer brings into the cache at a time.
const TOUCH_AHEAD: usize = 16;

/// One byte of each 64-byte line of `s`.
fn lines(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.as_bytes().iter().step_by(64).copied()
}

struct RecordWriter<'a> {
    w: &'a mut dyn Write,
    buf: Vec<u8>,
    written: u64,
}

impl RecordWriter<'_> {
    fn record<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        let buf = std::mem::take(&mut self.buf);
        let mut buf = postcard::to_extend(value, buf).map_err(io::Error::other)?;
        let len = u32::try_from(buf.len() - 4).map_err(io::Error::other)?;
        buf[..4].copy_from_slice(&len.to_le_bytes());
        self.w.write_all(&buf)?;
        self.written += buf.len() as u64;
        self.buf = buf;
        Ok(())
    }
}

struct RecordReader<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    fn record<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, SnapshotError> {
        self.fill()?;
        postcard::from_bytes(&self.buf).map_err(SnapshotError::Decode)
    }

    /// Reads the next record's bytes into `buf`.
    fn fill(&mut self) -> Result<(), SnapshotError> {
        let mut len = [0; 4];
        self.r.read_exact(&mut len).map_err(read_error)?;
        let len = u64::from(u32::from_le_bytes(len));
        self.buf.clear();
        // Grows with the bytes that arrive: a bad length costs what is there.
        (&mut self.r)
            .take(len)
            .read_to_end(&mut self.buf)
            .map_err(read_error)?;
        if self.buf.len() as u64 != len {
            return Err(SnapshotError::Truncated);
        }
        Ok(())
    }

    /// [`RecordReader::record`] for a type borrowing from the record.
    fn record_borrowed<'a, T: serde::Deserialize<'a>>(&'a mut self) -> Result<T, SnapshotError> {
        self.fill()?;
        postcard::from_bytes(&self.buf).map_err(SnapshotError::Decode)
    }
}

fn read_error(e: io::Error) -> SnapshotError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotError::Truncated
    } else {
        SnapshotError::Read(e.to_string())
    }
}

/// The store as the first snapshot format encoded it (postcard of the whole
/// store, then the member table if not empty): still read.
#[derive(Deserialize)]
struct LegacyStore {
    data: HashMap<String, String>,
    sessions: BTreeMap<ClientId, Session>,
    by_use: BTreeMap<(u64, ClientId), ()>,
    max_sessions: usize,
}

impl KvStore {
    /// An empty store keeping at most `max_sessions` client sessions, its
    /// keys hashed with seed 0 ([`KvStore::with_seed`]).
    pub fn new(max_sessions: usize) -> Self {
        Self::with_seed(max_sessions, 0)
    }

    /// An empty store keeping at most `max_sessions` client sessions, its
    /// keys hashed with a hasher keyed by `seed` (a secret in production,
    /// so that clients cannot choose colliding keys).
    pub fn with_seed(max_sessions: usize, seed: u64) -> Self {
        assert!(max_sessions > 0, "max_sessions must be positive");
        KvStore {
            data: Data::with_hasher(KeyHasher { seed }),
            sessions: OrdMap::new(),
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
        self.apply_ref(index, command.client, command.seq, OpRef::of(&command.op))
    }

    /// [`KvStore::apply`] of an op borrowed from the log's bytes (never a
    /// member record: the server applies those itself).
    pub(crate) fn apply_ref(
        &mut self,
        index: u64,
        client: ClientId,
        seq: u64,
        op: OpRef<'_>,
    ) -> Outcome {
        let known = match self.sessions.get(&client) {
            Some(s) if seq == s.last_seq => return s.last_outcome.clone(),
            // An older retry: its answer was already received.
            Some(s) if seq < s.last_seq => return Outcome::Done,
            Some(_) => true,
            None if seq > 1 => return Outcome::SessionExpired,
            None => false,
        };
        let outcome = self.execute(op);
        if known {
            let s = self.sessions.get_mut(&client).expect("looked up above");
            self.by_use.remove(&(s.last_index, client));
            s.last_seq = seq;
            s.last_outcome = outcome.clone();
            s.last_index = index;
        } else {
            if self.sessions.len() >= self.max_sessions {
                let ((_, evict), ()) = self.by_use.pop_first().expect("a full table has a session");
                self.sessions.remove(&evict);
            }
            let session = Session {
                last_seq: seq,
                last_outcome: outcome.clone(),
                last_index: index,
            };
            self.sessions.insert(client, session);
        }
        self.by_use.insert((index, client), ());
        outcome
    }

    /// Whether the table holds a session for `client`.
    pub fn has_session(&self, client: ClientId) -> bool {
        self.sessions.contains_key(&client)
    }

    fn execute(&mut self, op: OpRef<'_>) -> Outcome {
        match op {
            OpRef::Get { key } => Outcome::Value(
                self.data
                    .get(key)
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            OpRef::Put { key, value } => {
                match self.data.get_mut(key) {
                    Some(current) => *current = Arc::from(value),
                    None => {
                        self.data.insert(key, Arc::from(value));
                    }
                }
                Outcome::Done
            }
            OpRef::Append { key, value } => {
                match self.data.get_mut(key) {
                    Some(current) => {
                        let mut appended = String::with_capacity(current.len() + value.len());
                        appended.push_str(current);
                        appended.push_str(value);
                        *current = Arc::from(appended);
                    }
                    None => {
                        self.data.insert(key, Arc::from(value));
                    }
                }
                Outcome::Done
            }
            OpRef::Delete { key } => Outcome::Deleted {
                existed: self.data.remove(key).is_some(),
            },
            OpRef::CompareAndSwap {
                key,
                expected,
                value,
            } => self.compare_and_swap(key, expected, value),
            OpRef::RecordMember { .. } => unreachable!("a member record is not a client's op"),
        }
    }

    /// Sets `key` to `value` if its value is `expected` (`None`: unset).
    fn compare_and_swap(&mut self, key: &str, expected: Option<&str>, value: &str) -> Outcome {
        let current = self.data.get_mut(key);
        if current.as_deref().map(|v| &**v) != expected {
            return Outcome::NotSwapped {
                current: current.map(|v| v.to_string()),
            };
        }
        match current {
            Some(current) => *current = Arc::from(value),
            None => {
                self.data.insert(key, Arc::from(value));
            }
        }
        Outcome::Swapped
    }

    /// A key's value, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(|v| &**v)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True if no key is set.
    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }

    /// Number of client sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A constant-time frozen copy for a snapshot ([`KvImage::write_to`]).
    pub fn image(&self) -> KvImage {
        KvImage {
            data: self.data.clone(),
            sessions: self.sessions.clone(),
            members: self.members.clone(),
            max_sessions: self.max_sessions,
        }
    }

    /// The store, its sessions and the member addresses, encoded
    /// ([`KvImage::write_to`]'s format).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.image()
            .write_to(&mut bytes)
            .expect("writing into a Vec cannot fail");
        bytes
    }

    /// Replaces the store with a decoded snapshot. A snapshot that does not
    /// decode, or decodes to a table this store could not have built (no
    /// room for any session, more sessions than the bound, two sessions
    /// last used at one index, keys out of order), is refused and changes
    /// nothing.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), crate::Error> {
        self.restore_from(&mut &bytes[..])
    }

    /// [`KvStore::restore`] from a stream (read through a buffer of its
    /// own), so that a snapshot on disk or arriving from a leader is never
    /// held whole in memory; the stream must end where the snapshot does.
    pub fn restore_from(&mut self, r: &mut dyn Read) -> Result<(), crate::Error> {
        let mut r = io::BufReader::with_capacity(READ_BUFFER, r);
        let mut magic = [0; SNAPSHOT_MAGIC.len()];
        let mut got = 0;
        while got < magic.len() {
            match r.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e).into()),
            }
        }
        let hasher = self.data.hasher();
        let mut store = if got == magic.len() && magic == SNAPSHOT_MAGIC {
            Self::decode_records(&mut r, hasher.seed)?
        } else {
            let mut bytes = magic[..got].to_vec();
            r.read_to_end(&mut bytes).map_err(read_error)?;
            Self::decode_legacy(&bytes)?
        };
        if store.data.hasher() != hasher {
            store.data = store.data.rehashed(hasher);
        }
        *self = store;
        Ok(())
    }

    fn decode_records(r: &mut impl Read, seed: u64) -> Result<KvStore, SnapshotError> {
        let mut records = RecordReader { r, buf: Vec::new() };
        let header: SnapshotHeader = records.record()?;
        if header.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(header.version));
        }
        let max_sessions = usize::try_from(header.max_sessions).unwrap_or(usize::MAX);
        if max_sessions == 0 || header.sessions > header.max_sessions {
            return Err(SnapshotError::SessionBound {
                sessions: usize::try_from(header.sessions).unwrap_or(usize::MAX),
                bound: max_sessions,
            });
        }
        let mut store = KvStore::with_seed(max_sessions, seed);
        let mut last: Option<String> = None;
        for _ in 0..header.keys {
            let (key, value): (&str, &str) = records.record_borrowed()?;
            if last.as_deref().is_some_and(|last| last >= key) {
                return Err(SnapshotError::Unsorted);
            }
            store.data.insert(key, Arc::from(value));
            match &mut last {
                Some(l) => {
                    l.clear();
                    l.push_str(key);
                }
                None => last = Some(key.to_string()),
            }
        }
        for _ in 0..header.sessions {
            let (client, session): (ClientId, Session) = records.record()?;
            if store
                .sessions
                .get_max()
                .is_some_and(|(last, _)| *last >= client)
            {
                return Err(SnapshotError::Unsorted);
            }
            let at = session.last_index;
            if store
                .by_use
                .range((at, 0)..=(at, ClientId::MAX))
                .next()
                .is_some()
            {
                return Err(SnapshotError::UseOrder);
            }
            store.by_use.insert((at, client), ());
            store.sessions.insert(client, session);
        }
        for _ in 0..header.members {
            let (node, addrs): (NodeId, MemberAddrs) = records.record()?;
            if store
                .members
                .last_key_value()
                .is_some_and(|(&last, _)| last >= node)
            {
                return Err(SnapshotError::Unsorted);
            }
            store.members.insert(node, addrs);
        }
        let mut rest = [0; 1];
        match records.r.read(&mut rest) {
            Ok(0) => Ok(store),
            Ok(_) => Err(SnapshotError::TrailingBytes(1)),
            Err(e) => Err(read_error(e)),
        }
    }

    fn decode_legacy(bytes: &[u8]) -> Result<KvStore, SnapshotError> {
        use SnapshotError as E;
        let (old, rest): (LegacyStore, _) = postcard::take_from_bytes(bytes).map_err(E::Decode)?;
        let mut members = BTreeMap::new();
        if !rest.is_empty() {
            // The member table; an empty one is never written.
            let (table, after): (BTreeMap<NodeId, MemberAddrs>, _) =
                postcard::take_from_bytes(rest).map_err(E::Decode)?;
            if table.is_empty() || !after.is_empty() {
                return Err(E::TrailingBytes(rest.len()));
            }
            members = table;
        }
        if old.max_sessions == 0 || old.sessions.len() > old.max_sessions {
            return Err(E::SessionBound {
                sessions: old.sessions.len(),
                bound: old.max_sessions,
            });
        }
        let uses_match = old.by_use.len() == old.sessions.len()
            && old.by_use.keys().all(|&(index, client)| {
                old.sessions
                    .get(&client)
                    .is_some_and(|s| s.last_index == index)
            });
        if !uses_match {
            return Err(E::UseOrder);
        }
        Ok(KvStore {
            data: old
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), Arc::from(v.as_str())))
                .collect(),
            sessions: old.sessions.into_iter().collect(),
            by_use: old.by_use,
            max_sessions: old.max_sessions,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;
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

    /// A snapshot in the current format, written record by record.
    fn framed(header: (u64, u64, u64, u64), records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        let mut w = RecordWriter {
            w: &mut bytes,
            buf: Vec::new(),
            written: 0,
        };
        let (max_sessions, keys, sessions, members) = header;
        w.record(&SnapshotHeader {
            version: SNAPSHOT_VERSION,
            max_sessions,
            keys,
            sessions,
            members,
        })
        .unwrap();
        for r in records {
            bytes.extend_from_slice(&(r.len() as u32).to_le_bytes());
            bytes.extend_from_slice(r);
        }
        bytes
    }

    fn session(last_index: u64) -> Session {
        Session {
            last_seq: 1,
            last_outcome: Outcome::Done,
            last_index,
        }
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
    /// bound of 0, whose next `apply` panicked. Every snapshot this store
    /// could not have built is refused.
    #[test]
    fn a_snapshot_the_store_could_not_have_built_is_refused() {
        let mut s = KvStore::new(2);
        s.apply(1, &cmd(1, 1, Op::Get { key: "k".into() }));
        let good = s.snapshot();
        let enc = |v: &dyn erased::Enc| v.enc();
        let kv = |k: &str| enc(&(k.to_string(), "v".to_string()));
        let mut trailing = good.clone();
        trailing.push(0);
        let mut cut = good.clone();
        cut.pop();
        let mut version = good.clone();
        version[SNAPSHOT_MAGIC.len() + 4] = 9; // the header's version varint
        for (why, bytes) in [
            ("legacy garbage", vec![0, 0, 0, 0]),
            ("a bound of zero", framed((0, 0, 0, 0), &[])),
            ("more sessions than the bound", framed((1, 0, 2, 0), &[])),
            (
                "two sessions last used at one index",
                framed(
                    (5, 0, 2, 0),
                    &[enc(&(1u64, session(3))), enc(&(2u64, session(3)))],
                ),
            ),
            (
                "keys out of order",
                framed((5, 2, 0, 0), &[kv("b"), kv("a")]),
            ),
            ("a key twice", framed((5, 2, 0, 0), &[kv("a"), kv("a")])),
            (
                "fewer records than announced",
                framed((5, 3, 0, 0), &[kv("a")]),
            ),
            ("a record cut short", cut),
            ("a byte after the end", trailing),
            ("an unknown version", version),
        ] {
            let mut target = s.clone();
            let Err(err) = target.restore(&bytes) else {
                panic!("{why}: accepted");
            };
            assert!(matches!(err, crate::Error::BadSnapshot(_)), "{why}: {err}");
            assert_eq!(target, s, "{why}: a refused snapshot changes nothing");
        }
        let mut fresh = KvStore::default();
        fresh.restore(&good).unwrap();
        assert_eq!(fresh, s);
    }

    /// Encoding any serializable value, for hand-made records.
    mod erased {
        pub trait Enc {
            fn enc(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Enc for T {
            fn enc(&self) -> Vec<u8> {
                postcard::to_allocvec(self).unwrap()
            }
        }
    }

    /// A snapshot of the first format (postcard of the whole store, then
    /// the member table) still restores.
    #[test]
    fn a_snapshot_of_the_first_format_is_read() {
        #[derive(Serialize)]
        struct Old {
            data: BTreeMap<String, String>,
            sessions: BTreeMap<ClientId, Session>,
            by_use: BTreeMap<(u64, ClientId), ()>,
            max_sessions: usize,
        }
        let old = Old {
            data: [("a".to_string(), "1".to_string())].into(),
            sessions: [(7, session(4))].into(),
            by_use: [((4, 7), ())].into(),
            max_sessions: 10,
        };
        let addrs = MemberAddrs {
            peer: "p".into(),
            client: "c".into(),
        };
        let mut bytes = postcard::to_allocvec(&old).unwrap();
        bytes.extend(postcard::to_allocvec(&BTreeMap::from([(3u64, addrs.clone())])).unwrap());
        let mut s = KvStore::default();
        s.restore(&bytes).unwrap();
        assert_eq!(s.get("a"), Some("1"));
        assert!(s.has_session(7));
        assert_eq!(s.member_addrs().get(&3), Some(&addrs));
        // Written again in the current format, it reads back the same.
        let mut t = KvStore::default();
        t.restore(&s.snapshot()).unwrap();
        assert_eq!(t, s);
    }

    /// An image is a snapshot of the store when it was taken, whatever the
    /// store does afterwards.
    #[test]
    fn an_image_does_not_see_later_changes() {
        let mut s = KvStore::new(10);
        let put = |seq, k: &str, v: &str| {
            cmd(
                1,
                seq,
                Op::Put {
                    key: k.into(),
                    value: v.into(),
                },
            )
        };
        s.apply(1, &put(1, "a", "1"));
        let before = s.snapshot();
        let image = s.image();
        s.apply(2, &put(2, "a", "2"));
        s.apply(3, &put(3, "b", "3"));
        let mut from_image = Vec::new();
        let n = image.write_to(&mut from_image).unwrap();
        assert_eq!(n, from_image.len() as u64);
        assert_eq!(from_image, before);
        assert_ne!(s.snapshot(), before);
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

    /// The snapshot encoding, byte for byte: a change of representation in
    /// memory must not change what is on disk or on the wire.
    #[test]
    fn snapshot_bytes_are_pinned() {
        let mut s = KvStore::new(10);
        let ops = [
            Op::Put {
                key: "k".into(),
                value: "v1".into(),
            },
            Op::Append {
                key: "k".into(),
                value: "+2".into(),
            },
            Op::Append {
                key: "a".into(),
                value: "x".into(),
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            s.apply(i as u64 + 1, &cmd(3, i as u64 + 1, op));
        }
        let hex: String = s.snapshot().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ffffffffffffffffffff726b762d6b7605000000020a020100040000000161017807000000016b0476312b320400000003030103");
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
        assert_ne!(with, without);
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
