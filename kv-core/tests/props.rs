//! Property tests (quickcheck) of `KvStore` against simple references, fed
//! the logs that Raft can really deliver to it: several clients, each with one
//! request outstanding at a time, their requests interleaved arbitrarily,
//! every request possibly present several times (client retries, a new leader
//! re-proposing), and log indexes that carry no command in between.
//!
//! What such a log looks like, per client: the first copy of request `n + 1`
//! comes after the first copy of request `n` (the client sends `n + 1` only
//! once `n` was applied and answered), while copies of `n` may come anywhere
//! after its first one, also after `n + 1`, `n + 2`, … (a copy proposed to a
//! deposed leader and committed later).
//!
//! - `the_store_applies_each_request_once`: against a `BTreeMap` model that
//!   applies each (client, seq) at its first copy and keeps no sessions;
//! - `a_snapshot_and_restore_anywhere_changes_nothing`: snapshotting and
//!   continuing from a restored copy gives the same answers and state;
//! - `a_small_session_table_follows_the_documented_eviction_rule`: against an
//!   LRU-list model of the session table, and no request applied twice
//!   except after the documented limit (a copy of a client's first request
//!   arriving after its session was evicted).
//!
//! The requests are gets, puts, appends, deletes and compare-and-swaps (from
//! an unset key, from the value the client itself wrote last, or from a value
//! another client may have written), so that the answers the session table
//! keeps include every outcome, swaps that succeed and swaps that do not.
//!
//! Failures print the shrunk schedule; every run is deterministic given it.
//! `QUICKCHECK_TESTS` overrides the number of cases.

use std::collections::{BTreeMap, BTreeSet};

use kv_core::{ClientId, Command, KvStore, Op, Outcome, DEFAULT_MAX_SESSIONS};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

/// A runner with `tests` cases, unless `QUICKCHECK_TESTS` overrides it.
fn qc(tests: u64) -> QuickCheck {
    let q = QuickCheck::new();
    if std::env::var_os("QUICKCHECK_TESTS").is_some() {
        q
    } else {
        q.tests(tests)
    }
}

// ----- schedules --------------------------------------------------------------

/// The client ids the schedules use, spread over the whole range so that the
/// session table's ordering by id cannot hide behind small numbers.
const CLIENT_IDS: [ClientId; 6] = [0x9e37_79b9_7f4a_7c15, 0, u64::MAX, 7, 1 << 40, 3];

/// The keys: few, so that clients touch each other's keys.
const KEYS: [&str; 3] = ["a", "b", ""];

/// One request a client makes, on key `KEYS[key % 3]`; a swap's second
/// number picks what it expects (see [`command`]).
#[derive(Clone, Copy, Debug)]
enum Request {
    Get(u8),
    Put(u8),
    Append(u8),
    Delete(u8),
    Swap(u8, u8),
}

impl Arbitrary for Request {
    fn arbitrary(g: &mut Gen) -> Self {
        let key = u8::arbitrary(g) % 3;
        match u8::arbitrary(g) % 6 {
            0 => Request::Get(key),
            1 => Request::Put(key),
            2 => Request::Append(key),
            3 => Request::Delete(key),
            _ => Request::Swap(key, u8::arbitrary(g) % 3),
        }
    }
}

/// One step of the log as it reaches the store.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The first copy of the next request of client `client % clients` (a
    /// retry of its current one if it has no more).
    New { client: u8 },
    /// A copy of a request of client `client % clients` already in the log:
    /// its latest (`back == 0`) or one `back` before it.
    Copy { client: u8, back: u8 },
    /// Log indexes that carry no command (a leader's no-op, a configuration
    /// entry): the index jumps.
    Gap { skip: u8 },
    /// Snapshot the store and continue from a restored copy (only the
    /// snapshot property acts on it).
    Snapshot,
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        let client = u8::arbitrary(g);
        match u8::arbitrary(g) % 20 {
            0..=8 => Step::New { client },
            // Mostly the current request: what a retrying client resends.
            9..=12 => Step::Copy { client, back: 0 },
            13..=15 => Step::Copy {
                client,
                back: 1 + u8::arbitrary(g) % 4,
            },
            16..=17 => Step::Gap {
                skip: 1 + u8::arbitrary(g) % 3,
            },
            _ => Step::Snapshot,
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match *self {
            Step::Copy { client, back } if back > 0 => {
                Box::new(std::iter::once(Step::Copy { client, back: 0 }))
            }
            Step::Gap { skip } if skip > 1 => Box::new(std::iter::once(Step::Gap { skip: 1 })),
            _ => quickcheck::empty_shrinker(),
        }
    }
}

/// The requests of each client (at most `CLIENT_IDS.len()` clients) and the
/// order in which copies of them reach the store.
#[derive(Clone, Debug)]
struct Schedule {
    requests: Vec<Vec<Request>>,
    steps: Vec<Step>,
}

impl Arbitrary for Schedule {
    fn arbitrary(g: &mut Gen) -> Self {
        let clients = 1 + usize::from(u8::arbitrary(g)) % CLIENT_IDS.len();
        let requests: Vec<Vec<Request>> = (0..clients)
            .map(|_| {
                let n = usize::from(u8::arbitrary(g)) % 10;
                (0..n).map(|_| Request::arbitrary(g)).collect()
            })
            .collect();
        let total: usize = requests.iter().map(Vec::len).sum();
        // Enough steps that most requests get delivered, with copies.
        let steps = 2 * total + usize::from(u8::arbitrary(g)) % 16;
        Schedule {
            requests,
            steps: (0..steps).map(|_| Step::arbitrary(g)).collect(),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let me = self.clone();
        let fewer_steps = self.steps.shrink().map(move |steps| Schedule {
            steps,
            ..me.clone()
        });
        let me = self.clone();
        let fewer_requests = self
            .requests
            .shrink()
            .filter(|r| !r.is_empty() && r.len() <= CLIENT_IDS.len())
            .map(move |requests| Schedule {
                requests,
                ..me.clone()
            });
        Box::new(fewer_steps.chain(fewer_requests))
    }
}

/// What reaches the store: a command at a log index, or a snapshot point.
#[derive(Clone, Debug)]
enum Event {
    Apply(u64, Command),
    Snapshot,
}

/// The command for request `seq` (from 1) of client `c`: appends, puts and
/// swaps write a value unique to the request, so a second application
/// shows. A swap expects the key unset (`from` 0), the value of the
/// client's previous request (1: what it wrote last, if it wrote), or that
/// of the next client's request of the same number (2).
fn command(c: usize, seq: u64, request: Request) -> Command {
    let client = CLIENT_IDS[c];
    let value = format!("{c}.{seq};");
    let key = |k: u8| KEYS[usize::from(k) % KEYS.len()].to_string();
    let op = match request {
        Request::Get(k) => Op::Get { key: key(k) },
        Request::Put(k) => Op::Put { key: key(k), value },
        Request::Append(k) => Op::Append { key: key(k), value },
        Request::Delete(k) => Op::Delete { key: key(k) },
        Request::Swap(k, from) => Op::CompareAndSwap {
            key: key(k),
            expected: match from {
                0 => None,
                1 => Some(format!("{c}.{};", seq - 1)),
                _ => Some(format!("{}.{seq};", (c + 1) % CLIENT_IDS.len())),
            },
            value,
        },
    };
    Command { client, seq, op }
}

impl Schedule {
    /// The log the schedule describes. By construction, per client, the
    /// first copy of request `n + 1` follows the first copy of request `n`.
    fn events(&self) -> Vec<Event> {
        let clients = self.requests.len();
        // Per client: how many of its requests have a copy in the log.
        let mut sent = vec![0u64; clients];
        let mut index = 0;
        let mut events = Vec::new();
        for step in &self.steps {
            let (c, seq) = match *step {
                Step::Gap { skip } => {
                    index += u64::from(skip);
                    continue;
                }
                Step::Snapshot => {
                    events.push(Event::Snapshot);
                    continue;
                }
                Step::New { client } => {
                    let c = usize::from(client) % clients;
                    if (sent[c] as usize) < self.requests[c].len() {
                        sent[c] += 1;
                    }
                    (c, sent[c])
                }
                Step::Copy { client, back } => {
                    let c = usize::from(client) % clients;
                    (c, sent[c].saturating_sub(u64::from(back)).max(1))
                }
            };
            if sent[c] == 0 {
                continue; // nothing of this client's in the log yet
            }
            index += 1;
            let request = self.requests[c][(seq - 1) as usize];
            events.push(Event::Apply(index, command(c, seq, request)));
        }
        events
    }
}

// ----- the plain model --------------------------------------------------------

/// The store without sessions: a map, and the answer each (client, seq) got
/// at its first copy.
#[derive(Default)]
struct PlainModel {
    data: BTreeMap<String, String>,
    first_answer: BTreeMap<(ClientId, u64), Outcome>,
    /// Per client, the highest request number applied.
    latest: BTreeMap<ClientId, u64>,
}

impl PlainModel {
    /// The answer the store owes to `command`: see the contract on
    /// [`prop_the_store_applies_each_request_once`].
    fn apply(&mut self, command: &Command) -> Outcome {
        let key = (command.client, command.seq);
        if let Some(first) = self.first_answer.get(&key) {
            if self.latest.get(&command.client) == Some(&command.seq) {
                return first.clone();
            }
            return Outcome::Done;
        }
        let outcome = execute(&mut self.data, &command.op);
        self.first_answer.insert(key, outcome.clone());
        self.latest.insert(command.client, command.seq);
        outcome
    }
}

/// The store holds exactly `data`.
fn check_data(store: &KvStore, data: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in data {
        if store.get(k) != Some(v.as_str()) {
            return Err(format!(
                "key {k:?}: the store holds {:?}, the model {v:?}",
                store.get(k)
            ));
        }
    }
    if store.len() != data.len() {
        return Err(format!(
            "the store holds {} keys, the model {}",
            store.len(),
            data.len()
        ));
    }
    Ok(())
}

/// The contract tested, for a log as Raft delivers it (see the module doc)
/// and a session table large enough for every client:
///
/// - the first copy of (client, seq) is applied, with the answer a plain map
///   gives when each request is applied once, at its first copy;
/// - a later copy of a client's latest applied request is not applied again
///   and gets the answer of its first copy, also for a Get (the value read
///   then, even if the key changed since);
/// - a later copy of an older request of the client (whose answer the client
///   has already received) is not applied and gets `Done`, also for a Get;
/// - the final data equals the map's, and the store keeps one session per
///   client that has a request in the log.
fn prop_the_store_applies_each_request_once(schedule: Schedule) -> TestResult {
    let mut store = KvStore::new(DEFAULT_MAX_SESSIONS);
    let mut model = PlainModel::default();
    for event in schedule.events() {
        let Event::Apply(index, command) = event else {
            continue;
        };
        let got = store.apply(index, &command);
        let want = model.apply(&command);
        if got != want {
            return TestResult::error(format!(
                "index {index}, {command:?}: the store answered {got:?}, the model {want:?}"
            ));
        }
    }
    if let Err(why) = check_data(&store, &model.data) {
        return TestResult::error(why);
    }
    if store.session_count() != model.latest.len() {
        return TestResult::error(format!(
            "{} sessions, {} clients in the log",
            store.session_count(),
            model.latest.len()
        ));
    }
    TestResult::passed()
}

#[test]
fn the_store_applies_each_request_once() {
    qc(300).quickcheck(prop_the_store_applies_each_request_once as fn(Schedule) -> TestResult);
}

// ----- snapshots --------------------------------------------------------------

/// Snapshot and restore at every `Step::Snapshot` of the schedule, into a
/// store created with a session bound of 1: the snapshot carries the data,
/// the session table (last request, its answer and its log index, so also
/// the eviction order) and the bound itself. Property: every answer, the
/// final store and its snapshot bytes equal those of the same store run
/// without snapshots, so duplicate detection and eviction work across a
/// snapshot. Run with `max_sessions = 1 + bound % 7`, so that eviction
/// happens in some cases and not in others.
fn prop_a_snapshot_and_restore_anywhere_changes_nothing(
    schedule: Schedule,
    bound: u8,
) -> TestResult {
    let max_sessions = 1 + usize::from(bound) % 7;
    let mut reference = KvStore::new(max_sessions);
    let mut store = KvStore::new(max_sessions);
    let mut snapshots = 0;
    for event in schedule.events() {
        match event {
            Event::Snapshot => {
                let bytes = store.snapshot();
                let mut restored = KvStore::new(1);
                if let Err(e) = restored.restore(&bytes) {
                    return TestResult::error(format!("restore failed: {e}"));
                }
                if restored != store {
                    return TestResult::error(format!(
                        "snapshot {snapshots}: the restored store differs: {restored:?} vs {store:?}"
                    ));
                }
                store = restored;
                snapshots += 1;
            }
            Event::Apply(index, command) => {
                let got = store.apply(index, &command);
                let want = reference.apply(index, &command);
                if got != want {
                    return TestResult::error(format!(
                        "index {index} after {snapshots} snapshots, {command:?}: \
                         {got:?}, without snapshots {want:?}"
                    ));
                }
            }
        }
    }
    if store != reference {
        return TestResult::error(format!(
            "after {snapshots} snapshots: {store:?}, without snapshots {reference:?}"
        ));
    }
    if store.snapshot() != reference.snapshot() {
        return TestResult::error("equal stores with different snapshot bytes");
    }
    TestResult::passed()
}

#[test]
fn a_snapshot_and_restore_anywhere_changes_nothing() {
    qc(300).quickcheck(
        prop_a_snapshot_and_restore_anywhere_changes_nothing as fn(Schedule, u8) -> TestResult,
    );
}

/// With the planted bug that leaves the sessions out of the snapshot, the
/// snapshot property fails: it does test duplicate detection across a
/// snapshot.
#[cfg(feature = "canaries")]
#[test]
fn the_snapshot_property_catches_sessions_left_out_of_the_snapshot() {
    use kv_core::canary::{set, Canary};
    set(Some(Canary::SessionsLeftOutOfSnapshot));
    let result = QuickCheck::new().tests(300).quicktest(
        prop_a_snapshot_and_restore_anywhere_changes_nothing as fn(Schedule, u8) -> TestResult,
    );
    set(None);
    assert!(result.is_err(), "the canary went unnoticed");
}

// ----- eviction ---------------------------------------------------------------

/// The documented session rule (see `kv_core::KvStore`), written as an LRU
/// list instead of the store's index-keyed maps.
struct SessionModel {
    data: BTreeMap<String, String>,
    /// Client sessions, least recently used first: (client, last applied
    /// seq, its answer). A session is used when a new request is applied,
    /// not when a copy is answered from it.
    lru: Vec<(ClientId, u64, Outcome)>,
    max_sessions: usize,
    /// Clients whose first request was applied again after their session was
    /// evicted (a copy of it still in the log): the documented limit.
    reopened: BTreeSet<ClientId>,
    /// Clients with a request applied.
    seen: BTreeSet<ClientId>,
}

impl SessionModel {
    fn new(max_sessions: usize) -> Self {
        SessionModel {
            data: BTreeMap::new(),
            lru: Vec::new(),
            max_sessions,
            reopened: BTreeSet::new(),
            seen: BTreeSet::new(),
        }
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        let at = self.lru.iter().position(|s| s.0 == command.client);
        match at {
            Some(at) if command.seq == self.lru[at].1 => return self.lru[at].2.clone(),
            Some(at) if command.seq < self.lru[at].1 => return Outcome::Done,
            // No session: a first request opens one; any later one might be
            // a retry of a request applied before the eviction.
            None if command.seq > 1 => return Outcome::SessionExpired,
            _ => {}
        }
        let outcome = execute(&mut self.data, &command.op);
        if at.is_none() && !self.seen.insert(command.client) {
            self.reopened.insert(command.client);
        }
        match at {
            Some(at) => {
                self.lru.remove(at);
            }
            None if self.lru.len() == self.max_sessions => {
                self.lru.remove(0);
            }
            None => {}
        }
        self.lru
            .push((command.client, command.seq, outcome.clone()));
        outcome
    }
}

/// With a session bound of `1 + bound % 4` and up to six clients:
///
/// - every answer and the final data equal those of the documented rule:
///   when the table is full, a new client's first request evicts the session
///   whose last applied request is oldest in the log (copies answered from a
///   session do not count as use); a request numbered above 1 from a client
///   without a session gets `SessionExpired` and is not applied;
/// - the table never holds more than the bound;
/// - no request of a client is applied twice (each Append appends a token
///   unique to its request, so no value may hold a token twice),
///   unless a copy of the client's first request reached the store after its
///   session was evicted: the documented limit of the bound. Such a copy is
///   applied again and reopens the session at request 1, after which copies
///   of the client's later requests still in the log are applied again too.
/// - with no more clients than the bound, every answer is the plain
///   model's (nothing is evicted).
fn prop_a_small_session_table_follows_the_documented_eviction_rule(
    schedule: Schedule,
    bound: u8,
) -> TestResult {
    let max_sessions = 1 + usize::from(bound) % 4;
    let mut store = KvStore::new(max_sessions);
    let mut model = SessionModel::new(max_sessions);
    let clients = schedule.requests.len();
    let mut plain = (clients <= max_sessions).then(PlainModel::default);
    for event in schedule.events() {
        let Event::Apply(index, command) = event else {
            continue;
        };
        let got = store.apply(index, &command);
        let want = model.apply(&command);
        if got != want {
            return TestResult::error(format!(
                "index {index}, {command:?}: the store answered {got:?}, the model {want:?}"
            ));
        }
        if let Some(plain) = &mut plain {
            let want = plain.apply(&command);
            if got != want {
                return TestResult::error(format!(
                    "index {index}, {command:?}: {got:?} with room for every client, \
                     the plain model {want:?}"
                ));
            }
        }
        if store.session_count() > max_sessions {
            return TestResult::error(format!(
                "{} sessions over the bound of {max_sessions}",
                store.session_count()
            ));
        }
    }
    if let Err(why) = check_data(&store, &model.data) {
        return TestResult::error(why);
    }
    for (c, requests) in schedule.requests.iter().enumerate() {
        if model.reopened.contains(&CLIENT_IDS[c]) {
            continue;
        }
        for seq in 1..=requests.len() as u64 {
            let token = format!("{c}.{seq};");
            for key in KEYS {
                let count = store.get(key).map_or(0, |v| v.matches(&token).count());
                if count > 1 {
                    return TestResult::error(format!(
                        "request {seq} of client {c} applied {count} times to key {key:?}"
                    ));
                }
            }
        }
    }
    TestResult::passed()
}

#[test]
fn a_small_session_table_follows_the_documented_eviction_rule() {
    qc(300).quickcheck(
        prop_a_small_session_table_follows_the_documented_eviction_rule
            as fn(Schedule, u8) -> TestResult,
    );
}

/// A plain map's answer to `op`: what every model here applies.
fn execute(data: &mut BTreeMap<String, String>, op: &Op) -> Outcome {
    match op {
        Op::Get { key } => Outcome::Value(data.get(key).cloned().unwrap_or_default()),
        Op::Put { key, value } => {
            data.insert(key.clone(), value.clone());
            Outcome::Done
        }
        Op::Append { key, value } => {
            data.entry(key.clone()).or_default().push_str(value);
            Outcome::Done
        }
        Op::Delete { key } => Outcome::Deleted {
            existed: data.remove(key).is_some(),
        },
        Op::CompareAndSwap {
            key,
            expected,
            value,
        } => match data.get(key) {
            current if current == expected.as_ref() => {
                data.insert(key.clone(), value.clone());
                Outcome::Swapped
            }
            current => Outcome::NotSwapped {
                current: current.cloned(),
            },
        },
    }
}
