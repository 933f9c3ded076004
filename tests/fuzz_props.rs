//! The fuzzing properties, in one copy shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs` include this file with `#[path]`) and by the
//! corpus replay test (`tests/fuzz_corpus.rs`, plain `cargo test` on stable),
//! so an input saved under `fuzz/corpus/<target>/` fails the test suite
//! exactly as it crashed the fuzzer.
//!
//! Each property takes the fuzzer's raw bytes and panics on a violation:
//!
//! - [`decode_message`]: postcard bytes → `raft_core::Message`; whatever
//!   decodes re-encodes and decodes back to the same value.
//! - [`decode_wire`]: a TCP byte stream → `driver_tokio::wire::read_frame`
//!   (the async reader over `raft-wire`'s frames) of `raft_wire::Hello`, then
//!   `Message`s or `ClientRequest`s (a server's side), or
//!   `ClientResponse`s (a client's side); frames round-trip, consume exactly
//!   their length, and an oversized length is refused before any buffer of
//!   that size is allocated.
//! - [`step_events`]: one `RaftNode` (id 1) of a cluster of 1 to 5 members,
//!   fed arbitrary messages from peers, non-members and itself (terms,
//!   indices and entries near its own state or anywhere in `u64`), answers
//!   from correct peers, timer firings with non-decreasing time, proposals,
//!   durability of writes actually issued, snapshots, restarts from storage,
//!   and misuse (unknown persist ids, snapshots beyond what was applied, time
//!   going backwards, arbitrary configurations and stored states): peer input
//!   never panics it, misuse is an `Err` that changes nothing, and its writes,
//!   applies and answers keep the driver contract.
//! - [`step_cluster`]: 1 to 5 honest nodes, the fuzzer routing, dropping and
//!   duplicating their messages, firing timers, persisting, proposing,
//!   snapshotting and restarting: no panic, `raft_testkit::SafetyChecker`'s
//!   checks after every step, write, send and apply (one leader per term, log
//!   matching, leader completeness, the same entry applied at every index
//!   everywhere, persist before send), the same service state at every
//!   applied index everywhere, and each node's storage image equal to its
//!   memory.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use driver_tokio::wire::{read_frame, read_frame_within, ClientRequest, ClientResponse};
use raft_core::{
    Action, AppendEntries, AppendEntriesReply, AppendOutcome, Config, DurableState, Entry, Error,
    Event, HardState, Index, InstallSnapshot, InstallSnapshotReply, Instant, Message, NodeId,
    Payload, Persist, RaftLog, RaftNode, RequestVote, RequestVoteReply, Role, SnapshotMeta, Term,
};
use raft_testkit::{contract, ContractChecker, SafetyChecker};
use raft_wire::{encode_frame, FrameDecoder, FrameError, Hello, MAX_FRAME, MAX_HELLO_FRAME};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Operations past this many are ignored, so that one input stays fast.
const MAX_OPS: usize = 2_000;

static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints every step (node, time, event, result) of `step_events` and
/// `step_cluster` to stderr, to read what an input does.
pub fn set_trace(on: bool) {
    TRACE.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn tracing() -> bool {
    TRACE.load(std::sync::atomic::Ordering::Relaxed)
}

// ----- decode_message ---------------------------------------------------------

/// Arbitrary bytes as a postcard `Message`: if they decode, the value
/// round-trips.
pub fn decode_message(data: &[u8]) {
    if let Ok(message) = postcard::from_bytes::<Message>(data) {
        roundtrip(&message);
    }
    // What `take_from_bytes` accepts is what `from_bytes` accepts, and it
    // consumes no more than it was given.
    if let Ok((message, rest)) = postcard::take_from_bytes::<Message>(data) {
        assert!(rest.len() < data.len(), "a message takes at least one byte");
        assert_eq!(postcard::from_bytes::<Message>(data).ok(), Some(message));
    }
}

/// `value` encodes, decodes to itself, and encodes the same again.
fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = postcard::to_allocvec(value).expect("every value encodes");
    let back: T = postcard::from_bytes(&bytes).expect("an encoding decodes");
    assert_eq!(&back, value, "decode(encode(v)) != v");
    let again = postcard::to_allocvec(&back).expect("every value encodes");
    assert_eq!(again, bytes, "the encoding is not stable");
}

// ----- decode_wire ------------------------------------------------------------

/// Runs a closure and returns the largest single allocation it made, where
/// the caller can measure it (the fuzz target installs a counting allocator;
/// the stable replay cannot, as the workspace forbids `unsafe`).
pub type AllocMeter = fn(&mut dyn FnMut()) -> Option<usize>;

/// An [`AllocMeter`] that measures nothing.
pub fn unmetered(f: &mut dyn FnMut()) -> Option<usize> {
    f();
    None
}

/// Allocations allowed while refusing an oversized frame: a few small ones
/// (the waker), nothing near the announced size.
const REFUSAL_ALLOC_LIMIT: usize = 4096;

/// Allocations allowed beyond twice the bytes received while reading a
/// frame that never completes: the reader's first reservation (64 KiB) and
/// small change.
const READ_AHEAD_LIMIT: usize = (64 << 10) + 4096;

/// Arbitrary bytes as a TCP stream. The first byte picks whose side it is:
/// a server reading a handshake and then the frames of that role, a client
/// reading responses, or every wire type straight from postcard, unframed.
pub fn decode_wire(data: &[u8], meter: AllocMeter) {
    let Some((&mode, mut stream)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => match read_one::<Hello>(&mut stream, MAX_HELLO_FRAME, meter) {
            Some(Hello::Peer { .. }) => {
                while read_one::<Message>(&mut stream, MAX_FRAME, meter).is_some() {}
            }
            Some(Hello::Client { .. }) => {
                while read_one::<ClientRequest>(&mut stream, MAX_FRAME, meter).is_some() {}
            }
            _ => {}
        },
        1 => while read_one::<ClientResponse>(&mut stream, MAX_FRAME, meter).is_some() {},
        _ => {
            decode_unframed::<Hello>(stream);
            decode_unframed::<ClientRequest>(stream);
            decode_unframed::<ClientResponse>(stream);
            decode_unframed::<Message>(stream);
        }
    }
    decoder_splits_like_the_stream(&data[1..]);
}

/// `raft_wire::FrameDecoder` (the sans-IO decoder of the mio transport), fed
/// the stream in pieces of 1 to 7 bytes, yields the frames a straight parse
/// of the stream finds, and refuses an oversized length where it does.
fn decoder_splits_like_the_stream(stream: &[u8]) {
    let limit = 1 << 16;
    let mut want = Vec::new();
    let mut rest = stream;
    let mut too_large = false;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > limit {
            too_large = true;
            break;
        }
        if rest.len() - 4 < len {
            break;
        }
        want.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    let mut refused = false;
    let mut at = 0;
    'feed: for piece in (1..=7).cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + piece).min(stream.len());
        decoder.push(&stream[at..end]);
        at = end;
        loop {
            match decoder.next_frame(limit) {
                Ok(Some(body)) => got.push(body.to_vec()),
                Ok(None) => break,
                Err(FrameError::TooLarge { len, .. }) => {
                    assert!(len > limit);
                    refused = true;
                    break 'feed;
                }
                Err(e) => panic!("the decoder fails only on size: {e}"),
            }
        }
    }
    assert_eq!(got, want, "the decoder's frames");
    assert_eq!(refused, too_large, "the decoder's refusal");
}

fn decode_unframed<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    if let Ok(value) = postcard::from_bytes::<T>(bytes) {
        roundtrip(&value);
        let frame = encode_frame(&value).expect("a decoded value fits a frame");
        let mut reader: &[u8] = &frame;
        let back: T = poll_ready(read_frame(&mut reader)).expect("an encoded frame reads back");
        assert_eq!(back, value);
        assert!(reader.is_empty(), "a frame is read whole");
    }
}

/// Reads one frame of `T` (at most `limit` bytes) from `stream` with the
/// driver's `read_frame_within`, checking what it did; `None` when the
/// connection would close.
fn read_one<T>(stream: &mut &[u8], limit: usize, meter: AllocMeter) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let before: &[u8] = stream;
    let announced = before
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let mut result = None;
    let largest =
        meter(&mut || result = Some(poll_ready(read_frame_within::<T, _>(&mut *stream, limit))));
    match result.expect("the meter runs its closure") {
        Ok(value) => {
            let len = announced.expect("a frame has a length");
            assert!(len <= limit);
            assert_eq!(before.len() - stream.len(), 4 + len, "consumed the frame");
            let frame = encode_frame(&value).expect("a decoded value fits a frame");
            let mut reader: &[u8] = &frame;
            let back: T = poll_ready(read_frame(&mut reader)).expect("re-encoded frame reads");
            assert_eq!(back, value, "frame round trip");
            assert!(reader.is_empty());
            Some(value)
        }
        Err(FrameError::TooLarge { len: n, limit: l }) => {
            assert_eq!(Some(n), announced, "TooLarge names the announced length");
            assert_eq!(l, limit, "TooLarge names the limit");
            assert!(n > limit, "refused a frame within the limit: {n}");
            if let Some(largest) = largest {
                assert!(
                    largest <= REFUSAL_ALLOC_LIMIT,
                    "allocated {largest} bytes before refusing a {n}-byte frame"
                );
            }
            None
        }
        Err(FrameError::Io(e)) => {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "an in-memory stream only ends"
            );
            if let Some(len) = announced {
                assert!(len <= limit, "a too-large length is refused, not read");
                assert!(before.len() < 4 + len, "EOF only on a short stream");
            }
            if let Some(largest) = largest {
                // The buffer grows with what arrives, not with what was
                // announced: a short stream costs about its own size.
                let bound = 2 * before.len() + READ_AHEAD_LIMIT;
                assert!(
                    largest <= bound,
                    "allocated {largest} bytes for a stream of {} bytes",
                    before.len()
                );
            }
            None
        }
        Err(FrameError::Decode(_)) => {
            let len = announced.expect("a frame has a length");
            assert!(len <= limit);
            None
        }
        Err(other) => panic!("a reader fails only on I/O, size or decoding: {other}"),
    }
}

/// Polls a future that never waits (an in-memory reader) to its end.
fn poll_ready<F: Future>(fut: F) -> F::Output {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory reader never waits"),
    }
}

// ----- numbers near the node's state -------------------------------------------

/// A `u64` chosen relative to something the node holds (its term, last
/// index, commit index...): mostly within ±2 of it, sometimes small, rarely
/// anywhere in `u64`.
#[derive(Clone, Copy, Debug)]
enum Num {
    Near(i8),
    Small(u8),
    Raw(u64),
}

impl<'a> Arbitrary<'a> for Num {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag: u8 = u.arbitrary()?;
        Ok(match tag {
            0..=199 => Num::Near(i8::arbitrary(u)? % 3),
            200..=249 => Num::Small(u.arbitrary()?),
            _ => Num::Raw(u.arbitrary()?),
        })
    }
}

impl Num {
    fn at(self, base: u64) -> u64 {
        match self {
            Num::Near(d) => base.saturating_add_signed(i64::from(d)),
            Num::Small(v) => u64::from(v),
            Num::Raw(v) => v,
        }
    }
}

/// One entry of a fuzzed AppendEntries or stored log: its index relative to
/// the one expected next, its term relative to the previous entry's.
#[derive(Arbitrary, Clone, Copy, Debug)]
struct FuzzEntry {
    index: Num,
    term: Num,
    len: u8,
}

fn fuzz_entries(spec: &[FuzzEntry], prev_index: Index, prev_term: Term) -> Vec<Entry> {
    let (mut index, mut term) = (prev_index, prev_term);
    spec.iter()
        .take(8)
        .map(|e| {
            index = e.index.at(index.saturating_add(1));
            term = e.term.at(term);
            // A zero length stands for a no-op (as an empty command did).
            let payload = match usize::from(e.len % 16) {
                0 => Payload::Noop,
                len => Payload::Command(vec![e.len; len]),
            };
            Entry {
                index,
                term,
                payload,
            }
        })
        .collect()
}

#[derive(Arbitrary, Debug)]
enum FuzzOutcome {
    Accepted {
        match_index: Num,
    },
    Rejected {
        rejected_prev: Num,
        conflict_term: Option<Num>,
        conflict_index: Num,
    },
}

/// A message whose numbers are resolved against the receiver's state.
#[derive(Arbitrary, Debug)]
enum FuzzMessage {
    RequestVote {
        term: Num,
        last_log_index: Num,
        last_log_term: Num,
    },
    RequestVoteReply {
        term: Num,
        vote_granted: bool,
    },
    AppendEntries {
        term: Num,
        prev_log_index: Num,
        prev_log_term: Num,
        entries: Vec<FuzzEntry>,
        leader_commit: Num,
    },
    AppendEntriesReply {
        term: Num,
        outcome: FuzzOutcome,
    },
    InstallSnapshot {
        term: Num,
        last_included_index: Num,
        last_included_term: Num,
        len: u8,
    },
    InstallSnapshotReply {
        term: Num,
        last_included_index: Num,
    },
    PreVote {
        term: Num,
        last_log_index: Num,
        last_log_term: Num,
    },
    PreVoteReply {
        term: Num,
        vote_granted: bool,
    },
}

impl FuzzMessage {
    fn resolve(&self, node: &RaftNode, from: NodeId) -> Message {
        let log = node.log();
        let last = log.last_index();
        let term_here = |i: Index| log.term_at(i).unwrap_or(log.last_term());
        match self {
            FuzzMessage::RequestVote {
                term,
                last_log_index,
                last_log_term,
            } => Message::RequestVote(RequestVote {
                term: term.at(node.term()),
                last_log_index: last_log_index.at(last),
                last_log_term: last_log_term.at(log.last_term()),
                transfer: false,
            }),
            FuzzMessage::PreVote {
                term,
                last_log_index,
                last_log_term,
            } => Message::PreVote(RequestVote {
                term: term.at(node.term().saturating_add(1)),
                last_log_index: last_log_index.at(last),
                last_log_term: last_log_term.at(log.last_term()),
                transfer: false,
            }),
            FuzzMessage::PreVoteReply { term, vote_granted } => {
                Message::PreVoteReply(RequestVoteReply {
                    term: term.at(node.term().saturating_add(1)),
                    vote_granted: *vote_granted,
                })
            }
            FuzzMessage::RequestVoteReply { term, vote_granted } => {
                Message::RequestVoteReply(RequestVoteReply {
                    term: term.at(node.term()),
                    vote_granted: *vote_granted,
                })
            }
            FuzzMessage::AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                let term = term.at(node.term());
                let prev = prev_log_index.at(last);
                let prev_term = prev_log_term.at(term_here(prev));
                let entries = fuzz_entries(entries, prev, prev_term);
                let end = prev.saturating_add(entries.len() as u64);
                Message::AppendEntries(AppendEntries {
                    term,
                    prev_log_index: prev,
                    prev_log_term: prev_term,
                    entries,
                    leader_commit: leader_commit.at(end),
                })
            }
            FuzzMessage::AppendEntriesReply { term, outcome } => {
                let next = node
                    .progress(from)
                    .map_or(last.saturating_add(1), |p| p.next_index);
                let outcome = match outcome {
                    FuzzOutcome::Accepted { match_index } => AppendOutcome::Accepted {
                        match_index: match_index.at(last),
                    },
                    FuzzOutcome::Rejected {
                        rejected_prev,
                        conflict_term,
                        conflict_index,
                    } => {
                        let rejected_prev = rejected_prev.at(next.saturating_sub(1));
                        AppendOutcome::Rejected {
                            rejected_prev,
                            conflict_term: conflict_term.map(|t| t.at(term_here(rejected_prev))),
                            conflict_index: conflict_index.at(rejected_prev),
                        }
                    }
                };
                Message::AppendEntriesReply(AppendEntriesReply {
                    term: term.at(node.term()),
                    outcome,
                })
            }
            FuzzMessage::InstallSnapshot {
                term,
                last_included_index,
                last_included_term,
                len,
            } => {
                let index = last_included_index.at(node.commit_index());
                Message::InstallSnapshot(InstallSnapshot {
                    term: term.at(node.term()),
                    last_included_index: index,
                    last_included_term: last_included_term.at(term_here(index)),
                    membership: raft_core::Membership::default(),
                    data: vec![*len; usize::from(*len % 16)],
                })
            }
            FuzzMessage::InstallSnapshotReply {
                term,
                last_included_index,
            } => Message::InstallSnapshotReply(InstallSnapshotReply {
                term: term.at(node.term()),
                last_included_index: last_included_index.at(log.snapshot().index),
            }),
        }
    }
}

// ----- configuration and stored state ---------------------------------------------

/// The configuration and initial state of the node(s) under test.
#[derive(Arbitrary, Debug)]
struct Setup {
    size: u8,
    seed: u64,
    max_entries_per_append: u8,
    max_append_bytes: u8,
    max_inflight_appends: u8,
    max_uncommitted_entries: u8,
    /// Election min/max and heartbeat as (seconds, nanoseconds): any
    /// duration, so `RaftNode::new` must refuse what `validate` refuses.
    timeouts: Option<[(u64, u32); 3]>,
    /// A stored state to recover from instead of booting empty.
    stored: Option<FuzzStored>,
}

#[derive(Arbitrary, Debug)]
struct FuzzStored {
    term: Num,
    voted_for: Option<u8>,
    snapshot: Option<(Num, Num)>,
    entries: Vec<FuzzEntry>,
    with_data: bool,
}

fn cluster_size(size: u8) -> u64 {
    match size % 8 {
        0 => 1,
        1 => 2,
        2 => 4,
        3 => 5,
        _ => 3,
    }
}

impl Setup {
    /// The configuration of node `id`; `None` (after checking that the node
    /// refuses it) when it is invalid.
    fn config(&self, id: NodeId) -> Option<Config> {
        let size = cluster_size(self.size);
        let mut c = Config::new(id, (1..=size).collect());
        c.max_entries_per_append = 1 + usize::from(self.max_entries_per_append % 4);
        c.max_append_bytes = 16 + usize::from(self.max_append_bytes % 64);
        c.max_inflight_appends = 1 + usize::from(self.max_inflight_appends % 3);
        c.max_uncommitted_entries = 1 + u64::from(self.max_uncommitted_entries % 8);
        // Pre-vote in half the setups (one bit of the seed decides).
        c.pre_vote = (self.seed >> 8) & 1 == 1;
        if let Some([min, max, hb]) = self.timeouts {
            let d = |(s, n): (u64, u32)| Duration::new(s % 4, n);
            let raw = |(s, n): (u64, u32)| Duration::new(s, n % 1_000_000_000);
            // Mostly sub-4-second timeouts; when the seed says so, any.
            let pick = if self.seed.is_multiple_of(16) { raw } else { d };
            c.election_timeout_min = pick(min);
            c.election_timeout_max = pick(max);
            c.heartbeat_interval = pick(hb);
        }
        if let Err(e) = c.validate() {
            match RaftNode::new(c, self.seed) {
                Err(Error::InvalidConfig(_)) => {}
                other => panic!("RaftNode::new accepted an invalid config ({e}): {other:?}"),
            }
            return None;
        }
        Some(c)
    }

    /// The fuzzed stored state, if the input has one.
    fn stored(&self) -> Option<(DurableState, Option<Vec<u8>>)> {
        let s = self.stored.as_ref()?;
        let snapshot = s.snapshot.map(|(i, t)| SnapshotMeta::at(i.at(0), t.at(0)));
        let meta = snapshot.clone().unwrap_or_default();
        let durable = DurableState {
            hard_state: HardState {
                term: s.term.at(0),
                voted_for: s.voted_for.map(u64::from),
            },
            snapshot,
            entries: fuzz_entries(&s.entries, meta.index, meta.term),
        };
        Some((durable, s.with_data.then(|| b"stored".to_vec())))
    }
}

// ----- one server: a node and its storage, with the driver contract checked --------

/// A node, what its storage holds, the writes it has issued that are not
/// yet durable, and its service's position; every step is checked against
/// the contract of `raft_core` (ordering, errors, invariants of the image).
struct Server {
    config: Config,
    seed: u64,
    restarts: u64,
    node: RaftNode,
    durable: DurableState,
    durable_snapshot: Option<Vec<u8>>,
    pending: VecDeque<Persist>,
    /// This incarnation's side of the core/driver contract (persist ids,
    /// applies, answers, where the service is).
    contract: ContractChecker,
    deadline: Option<Instant>,
    /// A hash of the service's state (which ends at `contract.applied_to()`).
    service: u64,
    /// True when every peer is honest and snapshots carry the service
    /// state (`step_cluster`), so the service's state can be checked.
    honest: bool,
    /// When honest: each index the service reached since the cluster last
    /// looked, with the entry applied there (none for a snapshot) and the
    /// service state after it.
    journal: Vec<(Index, Option<Entry>, u64)>,
}

/// Snapshot bytes in the honest cluster: the index and the state's hash.
fn encode_service(index: Index, hash: u64) -> Vec<u8> {
    let mut v = index.to_le_bytes().to_vec();
    v.extend_from_slice(&hash.to_le_bytes());
    v
}

fn decode_service(data: &[u8]) -> Option<(Index, u64)> {
    if data.len() != 16 {
        return None;
    }
    let (a, b) = data.split_at(8);
    Some((
        u64::from_le_bytes(a.try_into().ok()?),
        u64::from_le_bytes(b.try_into().ok()?),
    ))
}

fn chain(hash: u64, e: &Entry) -> u64 {
    let mut h = hash ^ 0xcbf2_9ce4_8422_2325;
    for b in e
        .index
        .to_le_bytes()
        .iter()
        .chain(e.term.to_le_bytes().iter())
        .chain(e.command().unwrap_or_default().iter())
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The error a step must return, from what the harness knows.
#[derive(Debug)]
enum Misuse {
    Backwards,
    UnknownPersist,
    SnapshotBeyondApplied,
}

/// What `step` must leave untouched when it refuses an event.
#[derive(Debug, PartialEq)]
struct Observable {
    hard: HardState,
    role: Role,
    leader: Option<NodeId>,
    commit: Index,
    applied: Index,
    durable: Index,
    log: RaftLog,
    snapshot: Option<Vec<u8>>,
}

fn observe(n: &RaftNode) -> Observable {
    Observable {
        hard: HardState {
            term: n.term(),
            voted_for: n.voted_for(),
        },
        role: n.role(),
        leader: n.leader_hint(),
        commit: n.commit_index(),
        applied: n.last_applied(),
        durable: n.durable_index(),
        log: n.log().clone(),
        snapshot: n.snapshot_data().map(<[u8]>::to_vec),
    }
}

impl Server {
    fn boot(
        config: Config,
        seed: u64,
        durable: DurableState,
        durable_snapshot: Option<Vec<u8>>,
        honest: bool,
    ) -> Self {
        let node = RaftNode::recover(
            config.clone(),
            seed,
            durable.clone(),
            durable_snapshot.clone(),
        )
        .expect("a node recovers from its own storage");
        let contract = ContractChecker::new(&node, &durable);
        let mut s = Server {
            config,
            seed,
            restarts: 0,
            node,
            durable,
            durable_snapshot,
            pending: VecDeque::new(),
            contract,
            deadline: None,
            service: 0,
            honest,
            journal: Vec::new(),
        };
        s.restore_service();
        s
    }

    fn id(&self) -> NodeId {
        self.config.id
    }

    /// The service restarts from the stored snapshot (or empty).
    fn restore_service(&mut self) {
        self.contract = ContractChecker::new(&self.node, &self.durable);
        self.service = 0;
        if self.honest {
            if let Some(data) = &self.durable_snapshot {
                let (index, hash) = decode_service(data).expect("our own snapshot bytes");
                assert_eq!(
                    index,
                    self.contract.applied_to(),
                    "stored snapshot bytes and meta agree"
                );
                self.service = hash;
            }
        }
        self.contract.check_progress(&self.node);
        self.check_state();
    }

    /// Crash (writes in flight are lost) and recover from storage.
    fn restart(&mut self) {
        if tracing() {
            eprintln!("node {} restarts", self.id());
        }
        self.restarts += 1;
        self.pending.clear();
        self.deadline = None;
        self.node = RaftNode::recover(
            self.config.clone(),
            self.seed.wrapping_add(self.restarts),
            self.durable.clone(),
            self.durable_snapshot.clone(),
        )
        .unwrap_or_else(|e| panic!("node {} cannot recover its own storage: {e}", self.id()));
        self.restore_service();
    }

    fn misuse(&self, now: Instant, event: &Event) -> Option<Misuse> {
        if self.contract.last_now().is_some_and(|last| now < last) {
            return Some(Misuse::Backwards);
        }
        match *event {
            Event::Persisted { upto } if upto > self.contract.last_issued() => {
                Some(Misuse::UnknownPersist)
            }
            Event::SnapshotTaken { index, .. } if index > self.contract.applied_to() => {
                Some(Misuse::SnapshotBeyondApplied)
            }
            _ => None,
        }
    }

    /// Steps the node and checks what it returns. `Err` only for misuse the
    /// harness predicted (and then nothing changed); any other error, or
    /// misuse accepted, is a failure.
    fn step(&mut self, now: Instant, event: Event) -> Result<Vec<Action>, Error> {
        let misuse = self.misuse(now, &event);
        let before = misuse.as_ref().map(|_| observe(&self.node));
        let proposal = match &event {
            Event::ProposalReceived { id, .. } => Some(*id),
            _ => None,
        };
        let desc = event.clone();
        if tracing() {
            eprintln!("node {} at {} ns: {desc:?}", self.id(), now.as_nanos());
        }
        let result = self.node.step(now, event);
        if tracing() {
            eprintln!("  -> {result:?}");
        }
        match result {
            Err(e) => {
                let ok = matches!(
                    (&misuse, &e),
                    (Some(Misuse::Backwards), Error::TimeWentBackwards { .. })
                        | (Some(Misuse::UnknownPersist), Error::UnknownPersist { .. })
                        | (
                            Some(Misuse::SnapshotBeyondApplied),
                            Error::SnapshotBeyondApplied { .. }
                        )
                );
                assert!(
                    ok,
                    "node {}: {desc:?} at {now:?} refused with {e:?}, expected {misuse:?}",
                    self.id()
                );
                assert_eq!(
                    before.as_ref(),
                    Some(&observe(&self.node)),
                    "a refused step changed the node"
                );
                Err(e)
            }
            Ok(actions) => {
                assert!(
                    misuse.is_none(),
                    "node {}: {desc:?} at {now:?} accepted, but it is {misuse:?}",
                    self.id()
                );
                self.contract
                    .accepted(now, &self.node, proposal, &actions, &self.durable);
                self.execute(&actions);
                self.check_state();
                Ok(actions)
            }
        }
    }

    /// What the harness does with a step's actions (the contract itself is
    /// checked by `contract`): queue the writes, follow the service, arm
    /// the timer.
    fn execute(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::Persist(p) => self.pending.push_back(p.clone()),
                Action::Apply { entries } => {
                    for e in entries {
                        self.service = chain(self.service, e);
                        if self.honest {
                            self.journal.push((e.index, Some(e.clone()), self.service));
                        }
                    }
                }
                Action::ApplySnapshot { snapshot } => {
                    self.service = 0;
                    if self.honest {
                        let (index, hash) =
                            decode_service(&snapshot.data).expect("a snapshot some service took");
                        assert_eq!(index, snapshot.meta.index, "snapshot bytes and meta agree");
                        self.service = hash;
                        self.journal.push((index, None, hash));
                    }
                }
                Action::SetTimer { deadline } => self.deadline = Some(*deadline),
                Action::Send { .. }
                | Action::AcceptProposal { .. }
                | Action::RejectProposal { .. }
                | Action::LeadershipTransfer { .. }
                | Action::AcceptMembershipChange { .. }
                | Action::RejectMembershipChange { .. }
                | Action::MembershipChanged { .. }
                | Action::ReadReady { .. }
                | Action::RejectRead { .. } => {}
            }
        }
    }

    /// Storage against memory: the image the writes build is the node's
    /// log and hard state, and what it counts durable is stored.
    fn check_state(&self) {
        let id = self.id();
        let image = contract::image_after(&self.durable, &self.pending);
        contract::image_matches_memory(&image, &self.node)
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        contract::durable_prefix_is_stored(&self.durable, &self.node)
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
    }

    /// Writes through id `upto` become durable (applied to storage, their
    /// `then_send` released), then `Persisted { upto }` is stepped.
    #[allow(clippy::type_complexity)]
    fn persist_through(
        &mut self,
        now: Instant,
        upto: u64,
    ) -> (Vec<(NodeId, Message)>, Result<Vec<Action>, Error>) {
        let mut released = Vec::new();
        if upto <= self.contract.last_issued() {
            while self.pending.front().is_some_and(|p| p.id <= upto) {
                let p = self.pending.pop_front().expect("checked");
                if let Some(data) = self.durable.apply(&p) {
                    self.durable_snapshot = Some(data);
                }
                released.extend(p.then_send);
            }
        }
        (released, self.step(now, Event::Persisted { upto }))
    }
}

// ----- step_events: one node, arbitrary peers ------------------------------------

#[derive(Arbitrary, Debug)]
enum PeerOp {
    /// A message from a peer, from a non-member, or from the node itself.
    Deliver { from: u8, message: FuzzMessage },
    /// A peer answers something the node sent it, as a correct peer could.
    Answer { pick: u8, agree: bool },
    /// Time passes and the timer fires (early firings are harmless).
    Tick { millis: u16 },
    /// Time jumps to the last deadline set, which fires.
    Deadline,
    /// A client proposes a command.
    Propose { len: u8 },
    /// The oldest `count + 1` writes in flight become durable.
    Persist { count: u8 },
    /// `Persisted` with an id near the last issued: an error iff never issued.
    PersistAny { upto: Num },
    /// The service snapshots through an index near `last_applied`: an error
    /// iff beyond it.
    Snapshot { index: Num, len: u8 },
    /// A step with a time before the last one: an error that changes nothing.
    Backwards { millis: u16 },
    /// Crash (writes in flight are lost) and recover from storage.
    Restart,
}

struct Single {
    server: Server,
    now: Instant,
    /// Messages the node sent (and, for `then_send`, released), for `Answer`.
    outbox: VecDeque<(NodeId, Message)>,
    proposals: u64,
}

impl Single {
    fn absorb(&mut self, actions: Result<Vec<Action>, Error>) {
        for action in actions.into_iter().flatten() {
            if let Action::Send { to, message } = action {
                self.post(to, message);
            }
        }
    }

    fn post(&mut self, to: NodeId, message: Message) {
        if self.outbox.len() >= 64 {
            self.outbox.pop_front();
        }
        self.outbox.push_back((to, message));
    }

    fn sender(&self, k: u8) -> NodeId {
        let me = self.server.id();
        let members = &self.server.config.members;
        match k % 8 {
            0 => me,
            1 => members.len() as u64 + 1,
            _ if members.len() > 1 => {
                let peers: Vec<NodeId> = members.iter().copied().filter(|&m| m != me).collect();
                peers[usize::from(k) % peers.len()]
            }
            _ => me,
        }
    }

    fn run(&mut self, op: PeerOp) {
        let now = self.now;
        match op {
            PeerOp::Deliver { from, message } => {
                let from = self.sender(from);
                let message = message.resolve(&self.server.node, from);
                let r = self
                    .server
                    .step(now, Event::MessageReceived { from, message });
                self.absorb(r);
            }
            PeerOp::Answer { pick, agree } => {
                if self.outbox.is_empty() {
                    return;
                }
                let at = usize::from(pick) % self.outbox.len();
                let (peer, sent) = self.outbox.remove(at).expect("in range");
                let reply = match sent {
                    Message::RequestVote(m) => Message::RequestVoteReply(RequestVoteReply {
                        term: m.term,
                        vote_granted: agree,
                    }),
                    Message::AppendEntries(m) => {
                        let outcome = if agree {
                            AppendOutcome::Accepted {
                                match_index: m
                                    .prev_log_index
                                    .saturating_add(m.entries.len() as u64),
                            }
                        } else {
                            AppendOutcome::Rejected {
                                rejected_prev: m.prev_log_index,
                                conflict_term: None,
                                conflict_index: m
                                    .prev_log_index
                                    .min(m.leader_commit.saturating_add(1)),
                            }
                        };
                        Message::AppendEntriesReply(AppendEntriesReply {
                            term: m.term,
                            outcome,
                        })
                    }
                    Message::InstallSnapshot(m) => {
                        Message::InstallSnapshotReply(InstallSnapshotReply {
                            term: m.term,
                            last_included_index: m.last_included_index,
                        })
                    }
                    Message::PreVote(m) => Message::PreVoteReply(RequestVoteReply {
                        term: m.term,
                        vote_granted: agree,
                    }),
                    _ => return,
                };
                let r = self.server.step(
                    now,
                    Event::MessageReceived {
                        from: peer,
                        message: reply,
                    },
                );
                self.absorb(r);
            }
            PeerOp::Tick { millis } => {
                self.now = now + Duration::from_millis(u64::from(millis));
                let r = self.server.step(self.now, Event::TimerFired);
                self.absorb(r);
            }
            PeerOp::Deadline => {
                if let Some(d) = self.server.deadline {
                    self.now = self.now.max(d);
                }
                let r = self.server.step(self.now, Event::TimerFired);
                self.absorb(r);
            }
            PeerOp::Propose { len } => {
                self.proposals += 1;
                let command = vec![self.proposals as u8; usize::from(len % 32)];
                let r = self.server.step(
                    now,
                    Event::ProposalReceived {
                        id: self.proposals,
                        command,
                    },
                );
                self.absorb(r);
            }
            PeerOp::Persist { count } => {
                let k = usize::from(count % 4);
                let upto = match self.server.pending.get(k).or(self.server.pending.back()) {
                    Some(p) => p.id,
                    None => self.server.contract.last_issued(),
                };
                self.persist(upto);
            }
            PeerOp::PersistAny { upto } => {
                let upto = upto.at(self.server.contract.last_issued());
                self.persist(upto);
            }
            PeerOp::Snapshot { index, len } => {
                let index = index.at(self.server.node.last_applied());
                let data = vec![len; usize::from(len % 16)];
                let r = self.server.step(now, Event::SnapshotTaken { index, data });
                self.absorb(r);
            }
            PeerOp::Backwards { millis } => {
                let back = Duration::from_millis(1 + u64::from(millis));
                if now.as_nanos() > 0 {
                    let earlier =
                        Instant::from_nanos(now.as_nanos().saturating_sub(back.as_nanos() as u64));
                    let r = self.server.step(earlier, Event::TimerFired);
                    self.absorb(r);
                }
            }
            PeerOp::Restart => {
                self.server.restart();
                let r = self.server.step(now, Event::TimerFired);
                self.absorb(r);
            }
        }
    }

    fn persist(&mut self, upto: u64) {
        let (released, r) = self.server.persist_through(self.now, upto);
        for (to, m) in released {
            self.post(to, m);
        }
        self.absorb(r);
    }
}

/// One node (id 1) under arbitrary peer input and misuse. See the module doc.
pub fn step_events(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    if tracing() {
        eprintln!("{setup:?}");
    }
    let Some(config) = setup.config(1) else {
        return;
    };
    let (durable, snapshot) = match setup.stored() {
        Some((durable, snapshot)) => {
            match RaftNode::recover(
                config.clone(),
                setup.seed,
                durable.clone(),
                snapshot.clone(),
            ) {
                Ok(_) => (durable, snapshot),
                Err(Error::InvalidDurableState(_)) => (DurableState::default(), None),
                Err(e) => panic!("recover refused a stored state with {e:?}"),
            }
        }
        None => (DurableState::default(), None),
    };
    let server = Server::boot(config, setup.seed, durable, snapshot, false);
    let mut single = Single {
        server,
        now: Instant::ZERO,
        outbox: VecDeque::new(),
        proposals: 0,
    };
    let r = single.server.step(Instant::ZERO, Event::TimerFired);
    single.absorb(r);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = PeerOp::arbitrary(&mut u) else {
            break;
        };
        single.run(op);
    }
}

// ----- step_cluster: honest nodes, the fuzzer as the network ------------------------

#[derive(Arbitrary, Debug)]
enum NetOp {
    /// Deliver the message at this position of the network.
    Deliver(u8),
    /// Lose it.
    Drop(u8),
    /// Deliver a copy, leaving it in the network.
    Duplicate(u8),
    /// Node `.0`'s oldest `.1 % 3 + 1` writes in flight become durable.
    Persist(u8, u8),
    /// Time jumps to the earliest deadline, which fires.
    NextTimer,
    /// Time jumps to this node's deadline, which fires.
    Timer(u8),
    /// A client proposes, mostly to the leader of the highest term.
    Propose(u8),
    /// This node's service snapshots everything it was given.
    Snapshot(u8),
    /// This node crashes and recovers from storage.
    Restart(u8),
}

struct Cluster {
    servers: Vec<Server>,
    net: VecDeque<(NodeId, NodeId, Message)>,
    now: Instant,
    proposals: u64,
    /// Election safety, log matching, leader completeness, state machine
    /// safety and persist before send, as every harness checks them.
    safety: SafetyChecker,
    /// The entry applied at each index, and the service state after it.
    applied: BTreeMap<Index, (Option<Entry>, u64)>,
}

impl Cluster {
    fn server(&mut self, id: NodeId) -> &mut Server {
        &mut self.servers[id as usize - 1]
    }

    fn node_of(&self, k: u8) -> NodeId {
        u64::from(k) % self.servers.len() as u64 + 1
    }

    fn step(&mut self, id: NodeId, event: Event) {
        let now = self.now;
        let actions = self
            .server(id)
            .step(now, event)
            .unwrap_or_else(|e| panic!("node {id} refused a correct event: {e}"));
        self.route(id, actions);
    }

    /// After node `id` stepped: the safety checks, then its messages onto
    /// the network and its applies into the journal.
    fn route(&mut self, id: NodeId, actions: Vec<Action>) {
        let s = &self.servers[id as usize - 1];
        self.safety.after_step(&s.node);
        for action in &actions {
            if let Action::Persist(p) = action {
                self.safety.persist_issued(id, &s.node, p);
            }
        }
        for action in actions {
            if let Action::Send { to, message } = action {
                self.send(id, to, message);
            }
        }
        self.drain_journal(id);
    }

    /// Persist before send, checked against what node `from` has stored.
    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        let durable = &self.servers[from as usize - 1].durable;
        self.safety.check_send(from, to, &message, durable);
        self.post(from, to, message);
    }

    fn post(&mut self, from: NodeId, to: NodeId, message: Message) {
        if self.net.len() >= 256 {
            self.net.pop_front();
        }
        self.net.push_back((from, to, message));
    }

    /// What node `id` applied since the last call, against what every other
    /// node applied at the same indices: the same entry, the same state.
    fn drain_journal(&mut self, id: NodeId) {
        let journal = std::mem::take(&mut self.servers[id as usize - 1].journal);
        for (index, entry, hash) in journal {
            match self.applied.get_mut(&index) {
                Some((known_entry, known_hash)) => {
                    assert_eq!(
                        *known_hash, hash,
                        "node {id}'s service state after index {index} differs from another node's"
                    );
                    if let Some(e) = &entry {
                        self.safety.entries_applied(id, std::slice::from_ref(e));
                    }
                    match (known_entry.as_ref(), entry) {
                        (Some(a), Some(b)) => {
                            assert_eq!(a, &b, "node {id} applied a different entry at {index}")
                        }
                        (None, Some(b)) => *known_entry = Some(b),
                        _ => {}
                    }
                }
                None => {
                    if let Some(e) = &entry {
                        self.safety.entries_applied(id, std::slice::from_ref(e));
                    }
                    self.applied.insert(index, (entry, hash));
                }
            }
        }
    }

    fn run(&mut self, op: NetOp) {
        match op {
            NetOp::Deliver(k) | NetOp::Drop(k) | NetOp::Duplicate(k) => {
                if self.net.is_empty() {
                    return;
                }
                let at = usize::from(k) % self.net.len();
                let (from, to, message) = match op {
                    NetOp::Duplicate(_) => self.net[at].clone(),
                    _ => self.net.remove(at).expect("in range"),
                };
                if !matches!(op, NetOp::Drop(_)) {
                    self.step(to, Event::MessageReceived { from, message });
                }
            }
            NetOp::Persist(k, count) => {
                let id = self.node_of(k);
                let s = self.server(id);
                let Some(p) = s.pending.get(usize::from(count % 3)).or(s.pending.back()) else {
                    return;
                };
                let upto = p.id;
                let now = self.now;
                let (released, r) = self.server(id).persist_through(now, upto);
                for (to, m) in released {
                    self.send(id, to, m);
                }
                let actions = r.unwrap_or_else(|e| panic!("node {id} refused Persisted: {e}"));
                self.route(id, actions);
            }
            NetOp::NextTimer => {
                let next = self
                    .servers
                    .iter()
                    .filter_map(|s| s.deadline.map(|d| (d, s.id())))
                    .min();
                if let Some((deadline, id)) = next {
                    self.now = self.now.max(deadline);
                    self.step(id, Event::TimerFired);
                }
            }
            NetOp::Timer(k) => {
                let id = self.node_of(k);
                if let Some(deadline) = self.server(id).deadline {
                    self.now = self.now.max(deadline);
                    self.step(id, Event::TimerFired);
                }
            }
            NetOp::Propose(k) => {
                let leader = self
                    .servers
                    .iter()
                    .filter(|s| s.node.is_leader())
                    .max_by_key(|s| s.node.term())
                    .map(Server::id);
                let id = match leader {
                    Some(leader) if k % 4 != 0 => leader,
                    _ => self.node_of(k),
                };
                self.proposals += 1;
                let command = self.proposals.to_le_bytes().to_vec();
                let pid = self.proposals;
                self.step(id, Event::ProposalReceived { id: pid, command });
            }
            NetOp::Snapshot(k) => {
                let id = self.node_of(k);
                let s = self.server(id);
                if s.contract.applied_to() > s.node.log().snapshot().index {
                    let (index, data) = (
                        s.contract.applied_to(),
                        encode_service(s.contract.applied_to(), s.service),
                    );
                    self.step(id, Event::SnapshotTaken { index, data });
                }
            }
            NetOp::Restart(k) => {
                let id = self.node_of(k);
                self.server(id).restart();
                self.step(id, Event::TimerFired);
            }
        }
    }
}

/// Honest nodes, the fuzzer as their network and clock. See the module doc.
pub fn step_cluster(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(mut setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    setup.timeouts = None;
    setup.stored = None;
    let size = cluster_size(setup.size);
    let mut servers = Vec::new();
    for id in 1..=size {
        let config = setup.config(id).expect("the default timeouts are valid");
        servers.push(Server::boot(
            config,
            setup.seed,
            DurableState::default(),
            None,
            true,
        ));
    }
    let mut cluster = Cluster {
        servers,
        net: VecDeque::new(),
        now: Instant::ZERO,
        proposals: 0,
        safety: SafetyChecker::default(),
        applied: BTreeMap::new(),
    };
    for id in 1..=size {
        cluster.step(id, Event::TimerFired);
    }
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = NetOp::arbitrary(&mut u) else {
            break;
        };
        cluster.run(op);
    }
}
