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
//!   indices, entries, read rounds and read contexts near its own state or
//!   anywhere in `u64`; vote requests with `transfer` either way), answers
//!   from correct peers, timer firings with non-decreasing time, proposals,
//!   reads (`ReadIndex` and `Lease`, under ids of the caller's that may
//!   repeat), leader transfers, durability of writes actually issued,
//!   snapshots, restarts from storage, and misuse (unknown persist ids,
//!   snapshots beyond what was applied, time going backwards, arbitrary
//!   configurations, with `notify_commit`, `sticky_votes`, `lease_reads`,
//!   `max_pending_reads` and the drift bound drawn, and stored states): peer
//!   input never panics it, misuse is an `Err` that changes nothing, and its
//!   writes, applies and answers keep the driver contract, reads included
//!   (`Server::check_reads`: each read asked is taken as leader, forwarded
//!   to the leader it follows or refused at once, and answered at most once;
//!   a forwarded read is ready only with its `ReadIndexReply`'s index; a
//!   leader's read only while it leads the term it was asked in, at an
//!   index of that term no lower than its commit index when asked; pending
//!   reads fail on losing leadership, a forwarded one on a term change or
//!   after an election timeout). The harness is a driver that holds the
//!   snapshot bytes: it stages the service's and the peers' snapshots by
//!   index, a `Persist` must name only a staged one, an `ApplySnapshot`
//!   only the one delivered in that step, and a `SendSnapshot` only one it
//!   holds, from a leader, at most one outstanding per follower and term;
//!   it reports the end of each transfer once (and stale ends, which
//!   change nothing).
//! - [`step_cluster`]: 1 to 5 honest nodes, configured alike (read options
//!   drawn, lease reads always with sticky votes, perfect clocks: time is
//!   the fuzzer's and the same for all), the fuzzer routing, dropping and
//!   duplicating their messages, firing timers, persisting, proposing,
//!   reading, asking for leader transfers, snapshotting and restarting: no
//!   panic, `raft_testkit::SafetyChecker`'s checks after every step, write,
//!   send and apply (one leader per term, log matching, leader completeness,
//!   the same entry applied at every index everywhere, persist before send),
//!   the same service state at every applied index everywhere, each node's
//!   storage image equal to its memory, the read checks above, and read
//!   safety: a `ReadReady { index }` is at least the highest commit index
//!   any node had when the read was asked (else a write acknowledged before
//!   the read began could be missing from it), and a forwarded read is made
//!   ready only by the reply of the node it was forwarded to. Snapshot
//!   transfers travel the network as one item with their bytes, are
//!   delivered with them (installing restores the sender's service state),
//!   and their end is reported to the sending incarnation exactly once when
//!   the item leaves the network (delivered, lost, or pushed out); the
//!   contract checks of `step_events` hold for every node.
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
    Payload, Persist, RaftLog, RaftNode, ReadMode, RequestVote, RequestVoteReply, Role,
    SnapshotMeta, Term,
};
use raft_testkit::{contract, ContractChecker, SafetyChecker};
use raft_wire::{
    encode_frame, FrameDecoder, FrameError, Hello, HelloReply, MAX_FRAME, MAX_HELLO_FRAME,
};
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
            decode_unframed::<HelloReply>(stream);
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
                len => Payload::Command((vec![e.len; len]).into()),
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
        /// An election after `TimeoutNow` (exempt from sticky votes).
        transfer: bool,
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
        /// Never set by a correct pre-candidate.
        transfer: bool,
    },
    PreVoteReply {
        term: Num,
        vote_granted: bool,
    },
    TimeoutNow {
        term: Num,
    },
    /// A leader's read round: `round` near the last one the node sent.
    ReadRound {
        term: Num,
        round: Num,
    },
    ReadRoundReply {
        term: Num,
        round: Num,
    },
    /// A follower's forwarded read.
    ReadIndex {
        term: Num,
        ctx: Num,
    },
    /// A leader's answer to a forwarded read: `ctx` near the last one the
    /// node forwarded, `index` near its commit index.
    ReadIndexReply {
        term: Num,
        ctx: Num,
        index: Option<Num>,
    },
}

/// What the node last sent for reads, so that fuzzed read messages can
/// echo something near it.
#[derive(Clone, Copy, Debug, Default)]
struct ReadHints {
    /// The round of the last `ReadRound` it sent.
    round: u64,
    /// The `ctx` of the last `ReadIndex` it sent.
    ctx: u64,
}

impl ReadHints {
    fn saw(&mut self, message: &Message) {
        match *message {
            Message::ReadRound { round, .. } => self.round = round,
            Message::ReadIndex { ctx, .. } => self.ctx = ctx,
            _ => {}
        }
    }
}

impl FuzzMessage {
    fn resolve(&self, node: &RaftNode, from: NodeId, hints: ReadHints) -> Message {
        let log = node.log();
        let last = log.last_index();
        let term_here = |i: Index| log.term_at(i).unwrap_or(log.last_term());
        match self {
            FuzzMessage::RequestVote {
                term,
                last_log_index,
                last_log_term,
                transfer,
            } => Message::RequestVote(RequestVote {
                term: term.at(node.term()),
                last_log_index: last_log_index.at(last),
                last_log_term: last_log_term.at(log.last_term()),
                transfer: *transfer,
            }),
            FuzzMessage::PreVote {
                term,
                last_log_index,
                last_log_term,
                transfer,
            } => Message::PreVote(RequestVote {
                term: term.at(node.term().saturating_add(1)),
                last_log_index: last_log_index.at(last),
                last_log_term: last_log_term.at(log.last_term()),
                transfer: *transfer,
            }),
            FuzzMessage::TimeoutNow { term } => Message::TimeoutNow {
                term: term.at(node.term()),
            },
            FuzzMessage::ReadRound { term, round } => Message::ReadRound {
                term: term.at(node.term()),
                round: round.at(hints.round),
            },
            FuzzMessage::ReadRoundReply { term, round } => Message::ReadRoundReply {
                term: term.at(node.term()),
                round: round.at(hints.round),
            },
            FuzzMessage::ReadIndex { term, ctx } => Message::ReadIndex {
                term: term.at(node.term()),
                ctx: ctx.at(hints.ctx),
            },
            FuzzMessage::ReadIndexReply { term, ctx, index } => Message::ReadIndexReply {
                term: term.at(node.term()),
                ctx: ctx.at(hints.ctx),
                index: index.map(|i| i.at(node.commit_index())),
            },
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
                len: _,
            } => {
                let index = last_included_index.at(node.commit_index());
                Message::InstallSnapshot(InstallSnapshot {
                    term: term.at(node.term()),
                    last_included_index: index,
                    last_included_term: last_included_term.at(term_here(index)),
                    membership: raft_core::Membership::default(),
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
    /// Read options, by bit: 0 `notify_commit`, 1 `sticky_votes`, 2
    /// `lease_reads`, 3-5 `max_pending_reads` (1, 2, 3, else the default), 7
    /// `max_clock_drift_ppm` anywhere in `u32` (else below 20%).
    reads: u8,
    drift: u32,
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
        c.notify_commit = self.reads & 1 != 0;
        c.sticky_votes = self.reads & 2 != 0;
        // Without sticky votes, `validate` refuses it (checked below).
        c.lease_reads = self.reads & 4 != 0;
        if let small @ 1..=3 = 1 + usize::from((self.reads >> 3) % 8) {
            c.max_pending_reads = small;
        }
        c.max_clock_drift_ppm = if self.reads & 0x80 != 0 {
            self.drift
        } else {
            self.drift % 200_000
        };
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
        // A driver without the bytes of the snapshot its state names boots
        // empty (the core cannot tell: it never sees snapshot bytes).
        if durable.snapshot.is_some() && !s.with_data {
            return Some((DurableState::default(), None));
        }
        let data = durable.snapshot.as_ref().map(|_| b"stored".to_vec());
        Some((durable, data))
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
    /// The stored snapshot's bytes.
    durable_snapshot: Option<Vec<u8>>,
    /// Snapshots staged (the service's, or delivered by a leader) and not
    /// yet stored, by index: kept while a pending write names them.
    staged: BTreeMap<Index, Vec<u8>>,
    /// The index of the snapshot being delivered in the current step.
    delivering: Option<Index>,
    /// Transfers this incarnation asked for whose end is not reported yet:
    /// (follower, term) -> index.
    transfers: BTreeMap<(NodeId, Term), Index>,
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
    /// The reads this incarnation was asked for and has not answered, by
    /// the caller's id (several may share one).
    reads: BTreeMap<u64, Vec<AskedRead>>,
    /// The commit index a read asked now must see at least, besides the
    /// node's own: the highest any node of the cluster has had
    /// (`step_cluster` sets it before each read).
    read_floor: Index,
    /// Steps accepted, to tell an answer in the step that asked.
    steps: u64,
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
        let node = RaftNode::recover(config.clone(), seed, durable.clone())
            .expect("a node recovers from its own storage");
        let contract = ContractChecker::new(&node, &durable);
        let mut s = Server {
            config,
            seed,
            restarts: 0,
            node,
            durable,
            durable_snapshot,
            staged: BTreeMap::new(),
            delivering: None,
            transfers: BTreeMap::new(),
            pending: VecDeque::new(),
            contract,
            deadline: None,
            service: 0,
            honest,
            journal: Vec::new(),
            reads: BTreeMap::new(),
            read_floor: 0,
            steps: 0,
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
        // The new incarnation owes no answer to the old one's reads, and is
        // told of no transfer the old one started; staged snapshots are lost.
        self.reads.clear();
        self.transfers.clear();
        self.staged.clear();
        self.node = RaftNode::recover(
            self.config.clone(),
            self.seed.wrapping_add(self.restarts),
            self.durable.clone(),
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
            Event::SnapshotTaken { index } if index > self.contract.applied_to() => {
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
        let unchanged = misuse.as_ref().map(|_| observe(&self.node));
        let proposal = match &event {
            Event::ProposalReceived { id, .. } => Some(*id),
            _ => None,
        };
        let desc = event.clone();
        if tracing() {
            eprintln!("node {} at {} ns: {desc:?}", self.id(), now.as_nanos());
        }
        let before = ReadsBefore {
            led: self.node.is_leader().then(|| self.node.term()),
            commit: self.node.commit_index(),
            leader: self.node.leader_hint(),
        };
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
                    unchanged.as_ref(),
                    Some(&observe(&self.node)),
                    "a refused step changed the node"
                );
                self.unstage_unnamed();
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
                if let Event::SnapshotSendEnded { to, term, .. } = desc {
                    self.transfers.remove(&(to, term));
                }
                self.execute(&actions);
                self.unstage_unnamed();
                self.check_state();
                self.check_reads(now, &desc, before, &actions);
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
                Action::ApplySnapshot { meta } => {
                    assert_eq!(
                        self.delivering,
                        Some(meta.index),
                        "node {}: installs a snapshot it was not delivered in this step",
                        self.id()
                    );
                    let data = self
                        .staged
                        .get(&meta.index)
                        .expect("a delivered snapshot is staged");
                    self.service = 0;
                    if self.honest {
                        let (index, hash) =
                            decode_service(data).expect("a snapshot some service took");
                        assert_eq!(index, meta.index, "snapshot bytes and meta agree");
                        self.service = hash;
                        self.journal.push((index, None, hash));
                    }
                }
                Action::SendSnapshot { to, message } => {
                    assert!(
                        self.node.is_leader(),
                        "node {}: SendSnapshot from a non-leader",
                        self.id()
                    );
                    let index = message.last_included_index;
                    assert!(
                        self.snapshot_at(index).is_some(),
                        "node {}: asked to send the snapshot at {index}, which its driver does not hold",
                        self.id()
                    );
                    let key = (*to, message.term);
                    if let Some(other) = self.transfers.insert(key, index) {
                        panic!(
                            "node {}: a second transfer to {to} in term {} (at {index}) while the one at {other} has not ended",
                            self.id(),
                            message.term
                        );
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

    /// The bytes of the snapshot through `index` this driver holds: staged
    /// or stored.
    fn snapshot_at(&self, index: Index) -> Option<&[u8]> {
        if let Some(data) = self.staged.get(&index) {
            return Some(data);
        }
        let stored = self.durable.snapshot.as_ref().map(|m| m.index);
        (stored == Some(index))
            .then_some(self.durable_snapshot.as_deref())
            .flatten()
    }

    /// Drops the staged snapshots no pending write names (the core did not
    /// take them, or took a newer one).
    fn unstage_unnamed(&mut self) {
        let pending = &self.pending;
        self.staged.retain(|&index, _| {
            pending
                .iter()
                .any(|p| p.snapshot.as_ref().is_some_and(|m| m.index == index))
        });
    }

    /// A leader's snapshot arrives with its bytes: staged, the header
    /// stepped (an `ApplySnapshot` may name only this one).
    fn install(
        &mut self,
        now: Instant,
        from: NodeId,
        header: InstallSnapshot,
        data: Vec<u8>,
    ) -> Result<Vec<Action>, Error> {
        let index = header.last_included_index;
        // A snapshot this driver holds there already is the same state.
        if self.snapshot_at(index).is_none() {
            self.staged.insert(index, data);
        }
        self.delivering = Some(index);
        let message = Message::InstallSnapshot(header);
        let r = self.step(now, Event::MessageReceived { from, message });
        self.delivering = None;
        r
    }

    /// The service's snapshot through `index`: staged, then reported.
    fn snapshot_taken(
        &mut self,
        now: Instant,
        index: Index,
        data: Vec<u8>,
    ) -> Result<Vec<Action>, Error> {
        if self.snapshot_at(index).is_none() {
            self.staged.insert(index, data);
        }
        self.step(now, Event::SnapshotTaken { index })
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
                self.durable.apply(&p);
                if let Some(meta) = &p.snapshot {
                    let data = self.staged.remove(&meta.index);
                    self.durable_snapshot = Some(data.unwrap_or_else(|| {
                        panic!(
                            "node {}: a write names the snapshot at {}, never staged",
                            self.config.id, meta.index
                        )
                    }));
                    self.staged.retain(|&i, _| i > meta.index);
                }
                released.extend(p.then_send);
            }
        }
        (released, self.step(now, Event::Persisted { upto }))
    }
}

// ----- reads: each asked read answered at most once, and not stale -------------------

/// A read a node incarnation was asked for and has not answered yet.
#[derive(Clone, Copy, Debug)]
struct AskedRead {
    /// The server's step that asked (an answer in it came at once).
    step: u64,
    /// The commit index the read must see: the highest known when it was
    /// asked (the node's own in `step_events`, the cluster's in
    /// `step_cluster`).
    floor: Index,
    lease: bool,
    how: Asked,
}

/// What the node did with a read when it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// It led `term`: it serves the read itself, after a round or from its
    /// lease.
    Leader { term: Term },
    /// It sent `ReadIndex { term, ctx }` to `to`, the leader it follows, at
    /// `at`.
    Forwarded {
        to: NodeId,
        term: Term,
        ctx: u64,
        at: Instant,
    },
    /// Neither: it must refuse the read in the same step.
    AtOnce,
}

/// What the read checks need from before a step.
#[derive(Clone, Copy, Debug)]
struct ReadsBefore {
    /// The term the node led, if it led.
    led: Option<Term>,
    commit: Index,
    leader: Option<NodeId>,
}

/// How the reads of the inputs run so far were answered (to tell that the
/// properties are exercised: the random runner prints them).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadCounts {
    /// `Event::ReadRequested` accepted.
    pub asked: u64,
    /// Served by the node as leader (after a round, or from its lease).
    pub ready_leader: u64,
    /// Lease reads served as leader in the step that asked (with more than
    /// one voter: from the lease).
    pub ready_lease_at_once: u64,
    /// Forwarded reads made ready by the leader's reply.
    pub ready_forwarded: u64,
    /// `RejectRead`s with `NotLeader`.
    pub refused_not_leader: u64,
    /// `RejectRead`s with `TooManyPendingReads`.
    pub refused_too_many: u64,
}

thread_local! {
    static READ_COUNTS: std::cell::Cell<ReadCounts> = const {
        std::cell::Cell::new(ReadCounts {
            asked: 0,
            ready_leader: 0,
            ready_lease_at_once: 0,
            ready_forwarded: 0,
            refused_not_leader: 0,
            refused_too_many: 0,
        })
    };
}

/// The read counts of this thread so far.
pub fn read_counts() -> ReadCounts {
    READ_COUNTS.with(std::cell::Cell::get)
}

fn count_read(f: impl FnOnce(&mut ReadCounts)) {
    READ_COUNTS.with(|c| {
        let mut counts = c.get();
        f(&mut counts);
        c.set(counts);
    });
}

/// Every message a step sends, now or once a write is durable.
fn sent(actions: &[Action]) -> impl Iterator<Item = (NodeId, &Message)> {
    actions.iter().flat_map(|a| {
        let held: &[(NodeId, Message)] = match a {
            Action::Persist(p) => &p.then_send,
            _ => &[],
        };
        let now = match a {
            Action::Send { to, message } => Some((*to, message)),
            _ => None,
        };
        now.into_iter().chain(held.iter().map(|(to, m)| (*to, m)))
    })
}

impl Server {
    /// The reads of an accepted step: a read asked is taken (as leader),
    /// forwarded to the leader the node follows, or refused at once; each
    /// is answered at most once (`ReadReady` or `RejectRead`); a forwarded
    /// read is ready only with its own `ReadIndexReply`'s index; a read
    /// served as leader is ready only while the node still leads the term
    /// it was asked in, at an index of that term (an entry of its term has
    /// committed) no lower than the commit index when it was asked; and
    /// none is left pending that the node must have failed.
    fn check_reads(
        &mut self,
        now: Instant,
        event: &Event,
        before: ReadsBefore,
        actions: &[Action],
    ) {
        self.steps += 1;
        let id = self.id();
        let forwards: Vec<(NodeId, Term, u64)> = sent(actions)
            .filter_map(|(to, m)| match *m {
                Message::ReadIndex { term, ctx } => Some((to, term, ctx)),
                _ => None,
            })
            .collect();
        if let Event::ReadRequested { id: rid, mode } = *event {
            count_read(|c| c.asked += 1);
            let how = match (before.led, forwards.as_slice()) {
                (Some(term), []) => Asked::Leader { term },
                (None, []) => Asked::AtOnce,
                (None, &[(to, term, ctx)]) => {
                    assert_eq!(
                        Some(to),
                        before.leader,
                        "node {id} forwarded read {rid} to {to}, not to the leader it follows"
                    );
                    Asked::Forwarded {
                        to,
                        term,
                        ctx,
                        at: now,
                    }
                }
                _ => panic!(
                    "node {id}: read {rid} (led: {:?}) sent {forwards:?}",
                    before.led
                ),
            };
            self.reads.entry(rid).or_default().push(AskedRead {
                step: self.steps,
                floor: self.read_floor.max(before.commit),
                lease: mode == ReadMode::Lease,
                how,
            });
        } else {
            assert!(
                forwards.is_empty(),
                "node {id} sent {forwards:?} with no read asked ({event:?})"
            );
        }
        let reply = match *event {
            Event::MessageReceived {
                from,
                message: Message::ReadIndexReply { ctx, index, .. },
            } => Some((from, ctx, index)),
            _ => None,
        };
        for action in actions {
            match *action {
                Action::ReadReady { id: rid, index } => self.read_ready(rid, index, reply),
                Action::RejectRead { id: rid, reason } => {
                    self.read_refused(now, rid, reply, reason)
                }
                _ => {}
            }
        }
        self.reads.retain(|_, asked| !asked.is_empty());
        self.check_reads_pending(now);
    }

    /// `ReadReady { id: rid, index }`, in a step that delivered `reply`
    /// (sender, ctx, index) if it delivered a `ReadIndexReply`.
    fn read_ready(&mut self, rid: u64, index: Index, reply: Option<(NodeId, u64, Option<Index>)>) {
        let (id, strict, steps) = (self.id(), self.honest, self.steps);
        let asked = self.reads.get_mut(&rid).filter(|a| !a.is_empty());
        let asked = asked.unwrap_or_else(|| {
            panic!("node {id}: ReadReady for read {rid}, which is not pending (never asked, or answered already)")
        });
        if let Some((from, ctx, given)) = reply {
            let mine = |r: &AskedRead| matches!(r.how, Asked::Forwarded { ctx: c, .. } if c == ctx);
            if let Some(k) = asked.iter().position(mine) {
                let r = asked.remove(k);
                let Asked::Forwarded { to, .. } = r.how else {
                    unreachable!("found as forwarded")
                };
                assert_eq!(
                    given,
                    Some(index),
                    "node {id}: forwarded read {rid} ready at {index}, its leader's reply said {given:?}"
                );
                if strict {
                    assert_eq!(
                        from, to,
                        "node {id}: read {rid} forwarded to {to} (ctx {ctx}) made ready by a reply from {from}"
                    );
                    assert!(
                        index >= r.floor,
                        "node {id}: stale read {rid}: forwarded, ready at index {index}, but index {} was committed when it was asked",
                        r.floor
                    );
                }
                count_read(|c| c.ready_forwarded += 1);
                return;
            }
        }
        // Otherwise only a read the node took as leader may be ready. With
        // several pending under this id, the one asked under the highest
        // commit index the answer covers (which leaves the others the most
        // room).
        let (term, leading) = (self.node.term(), self.node.is_leader());
        let taken = |r: &&AskedRead| matches!(r.how, Asked::Leader { .. });
        assert!(
            asked.iter().any(|r| taken(&r)),
            "node {id}: read {rid} ready at {index} without being taken as leader or its leader's ReadIndexReply: {asked:?}"
        );
        let best = asked
            .iter()
            .enumerate()
            .filter(|(_, r)| taken(r) && r.floor <= index)
            .max_by_key(|(_, r)| r.floor)
            .map(|(k, _)| k);
        let Some(k) = best else {
            panic!(
                "node {id}: stale read {rid}: ready at index {index}, below what was committed when it was asked: {asked:?}"
            )
        };
        let r = asked.remove(k);
        let Asked::Leader { term: asked_in } = r.how else {
            unreachable!("filtered as taken")
        };
        assert!(
            leading && term == asked_in,
            "node {id}: read {rid} asked as leader of term {asked_in} is ready in term {term} (leading: {leading})"
        );
        assert!(
            index <= self.node.commit_index(),
            "node {id}: read {rid} ready at {index}, beyond the commit index {}",
            self.node.commit_index()
        );
        let at = self.node.log().term_at(index);
        assert!(
            at.is_none_or(|t| t == term),
            "node {id}: read {rid} ready at index {index} of term {at:?}: before an entry of its term {term} committed"
        );
        count_read(|c| {
            c.ready_leader += 1;
            if r.lease && r.step == steps {
                c.ready_lease_at_once += 1;
            }
        });
    }

    /// `RejectRead { id: rid, reason }`: one pending read under `rid` that
    /// the node had a cause to refuse now (asked in this step and neither
    /// taken nor forwarded; its `ReadIndexReply` said no; forwarded in an
    /// older term or over an election timeout ago; asked as leader in this
    /// step, or of a term it no longer leads).
    fn read_refused(
        &mut self,
        now: Instant,
        rid: u64,
        reply: Option<(NodeId, u64, Option<Index>)>,
        reason: raft_core::ReadRefusal,
    ) {
        let (id, steps) = (self.id(), self.steps);
        let (term, leading) = (self.node.term(), self.node.is_leader());
        let limit = self.config.election_timeout_max;
        let asked = self.reads.get_mut(&rid).filter(|a| !a.is_empty());
        let asked = asked.unwrap_or_else(|| {
            panic!("node {id}: RejectRead ({reason:?}) for read {rid}, which is not pending (never asked, or answered already)")
        });
        let refused_ctx = reply.and_then(|(_, ctx, index)| index.is_none().then_some(ctx));
        let k = asked
            .iter()
            .position(|r| r.step == steps && r.how == Asked::AtOnce)
            .or_else(|| {
                asked.iter().position(|r| {
                    matches!(r.how, Asked::Forwarded { ctx, .. } if Some(ctx) == refused_ctx)
                })
            })
            .or_else(|| {
                asked.iter().position(|r| {
                    matches!(r.how, Asked::Forwarded { term: t, at, .. } if t != term || now >= at + limit)
                })
            })
            .or_else(|| {
                asked.iter().rposition(|r| {
                    matches!(r.how, Asked::Leader { term: t } if r.step == steps || !(leading && t == term))
                })
            });
        let Some(k) = k else {
            panic!("node {id}: read {rid} refused ({reason:?}) for no cause: {asked:?}")
        };
        asked.remove(k);
        count_read(|c| match reason {
            raft_core::ReadRefusal::TooManyPendingReads => c.refused_too_many += 1,
            _ => c.refused_not_leader += 1,
        });
    }

    /// After a step: no read is pending that the node had to refuse at
    /// once, that it took as leader of a term it no longer leads, or that
    /// it forwarded in an older term or over an election timeout ago.
    fn check_reads_pending(&self, now: Instant) {
        let id = self.id();
        let (term, leading) = (self.node.term(), self.node.is_leader());
        let limit = self.config.election_timeout_max;
        for (rid, asked) in &self.reads {
            for r in asked {
                match r.how {
                    Asked::AtOnce => {
                        panic!("node {id}: read {rid} neither taken as leader, forwarded, nor refused")
                    }
                    Asked::Leader { term: t } => assert!(
                        leading && t == term,
                        "node {id}: read {rid} asked as leader of term {t} still pending in term {term} (leading: {leading})"
                    ),
                    Asked::Forwarded { term: t, at, .. } => {
                        assert_eq!(
                            t, term,
                            "node {id}: read {rid} forwarded in term {t} still pending in term {term}"
                        );
                        assert!(
                            now < at + limit,
                            "node {id}: read {rid} forwarded at {at:?} still pending at {now:?}"
                        );
                    }
                }
            }
        }
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
    /// A client reads, under an id near the number of reads asked so far
    /// (ids are the caller's: they may repeat, even while one is pending).
    Read { id: Num, lease: bool },
    /// The caller asks for a leadership transfer to a peer, a non-member or
    /// the node itself, or (`None`) to the most up-to-date voter.
    Transfer { to: Option<u8> },
    /// The driver reports the end of one of the snapshot transfers the
    /// node asked for and that has not ended.
    SnapshotEnded { pick: u8 },
    /// `SnapshotSendEnded` for no outstanding transfer (a peer, a
    /// non-member or the node itself; terms and indices near its own).
    SnapshotEndedStale { to: u8, term: Num, index: Num },
}

struct Single {
    server: Server,
    now: Instant,
    /// Messages the node sent (and, for `then_send`, released), for `Answer`.
    outbox: VecDeque<(NodeId, Message)>,
    proposals: u64,
    reads: u64,
    hints: ReadHints,
}

impl Single {
    fn absorb(&mut self, actions: Result<Vec<Action>, Error>) {
        for action in actions.into_iter().flatten() {
            match action {
                Action::Send { to, message } => self.post(to, message),
                // The peer may answer the header (`Answer`); the end is
                // reported by `SnapshotEnded`.
                Action::SendSnapshot { to, message } => {
                    self.post(to, Message::InstallSnapshot(message))
                }
                _ => {}
            }
        }
    }

    fn post(&mut self, to: NodeId, message: Message) {
        self.hints.saw(&message);
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
                let message = message.resolve(&self.server.node, from, self.hints);
                let r = match message {
                    // A snapshot arrives with its bytes.
                    Message::InstallSnapshot(header) => {
                        let len = header.last_included_index % 16;
                        let data = vec![header.last_included_term as u8; len as usize];
                        self.server.install(now, from, header, data)
                    }
                    message => self
                        .server
                        .step(now, Event::MessageReceived { from, message }),
                };
                self.absorb(r);
            }
            PeerOp::SnapshotEnded { pick } => {
                // The driver reports the end of one outstanding transfer.
                let transfers: Vec<((NodeId, Term), Index)> = self
                    .server
                    .transfers
                    .iter()
                    .map(|(&k, &i)| (k, i))
                    .collect();
                if transfers.is_empty() {
                    return;
                }
                let ((to, term), index) = transfers[usize::from(pick) % transfers.len()];
                let r = self
                    .server
                    .step(now, Event::SnapshotSendEnded { to, term, index });
                self.absorb(r);
            }
            PeerOp::SnapshotEndedStale { to, term, index } => {
                // An end the node never asked for (or reported already):
                // accepted, and nothing but a probe may follow.
                let to = self.sender(to);
                let term = term.at(self.server.node.term());
                let index = index.at(self.server.node.log().snapshot().index);
                if self.server.transfers.contains_key(&(to, term)) {
                    return; // that one is outstanding: not stale
                }
                let r = self
                    .server
                    .step(now, Event::SnapshotSendEnded { to, term, index });
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
                    Message::ReadRound { term, round } => Message::ReadRoundReply { term, round },
                    // A leader of the node's term, serving the read or not.
                    Message::ReadIndex { term, ctx } => Message::ReadIndexReply {
                        term,
                        ctx,
                        index: agree.then(|| self.server.node.commit_index()),
                    },
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
                let r = self.server.snapshot_taken(now, index, data);
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
            PeerOp::Read { id, lease } => {
                self.reads += 1;
                let id = id.at(self.reads);
                let mode = if lease {
                    ReadMode::Lease
                } else {
                    ReadMode::ReadIndex
                };
                let r = self.server.step(now, Event::ReadRequested { id, mode });
                self.absorb(r);
            }
            PeerOp::Transfer { to } => {
                let to = to.map(|k| self.sender(k));
                let r = self
                    .server
                    .step(now, Event::LeadershipTransferRequested { to });
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
            match RaftNode::recover(config.clone(), setup.seed, durable.clone()) {
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
        reads: 0,
        hints: ReadHints::default(),
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
    /// A client reads at a node, mostly the leader of the highest term
    /// (`.0`); `.1`: bit 0 a lease read, bits 1-3 an id of 1 to 4 if the
    /// node has no read pending under it (ids repeat, as a retrying client's
    /// do), else a fresh one.
    Read(u8, u8),
    /// The leader of the highest term (or node `.0`) is asked to hand over
    /// to node `.1` (for `.1 % 6 == 0`: to the most up-to-date voter).
    Transfer(u8, u8),
}

/// What the cluster's network carries.
#[derive(Clone, Debug)]
enum Packet {
    Message(Message),
    /// A snapshot transfer: the header with the bytes, from the sender's
    /// incarnation `gen` (its restart count), whose end it is told of.
    Snapshot {
        header: InstallSnapshot,
        data: Vec<u8>,
        gen: u64,
    },
}

struct Cluster {
    servers: Vec<Server>,
    net: VecDeque<(NodeId, NodeId, Packet)>,
    now: Instant,
    proposals: u64,
    /// Election safety, log matching, leader completeness, state machine
    /// safety and persist before send, as every harness checks them.
    safety: SafetyChecker,
    /// The entry applied at each index, and the service state after it.
    applied: BTreeMap<Index, (Option<Entry>, u64)>,
    /// The highest commit index any node has had: every read asked from
    /// now on must see it.
    max_commit: Index,
    reads: u64,
}

/// How the cluster's snapshot transfers went, over this thread's inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferCounts {
    /// `SendSnapshot`s executed.
    pub sent: u64,
    /// Delivered with their bytes.
    pub delivered: u64,
    /// Of those, installed (an `ApplySnapshot` followed).
    pub installed: u64,
    /// Ends reported to the sender.
    pub ended: u64,
}

thread_local! {
    static TRANSFER_COUNTS: std::cell::Cell<TransferCounts> =
        const { std::cell::Cell::new(TransferCounts { sent: 0, delivered: 0, installed: 0, ended: 0 }) };
}

/// The transfer counts of this thread so far.
pub fn transfer_counts() -> TransferCounts {
    TRANSFER_COUNTS.with(std::cell::Cell::get)
}

fn count_transfer(f: impl FnOnce(&mut TransferCounts)) {
    TRANSFER_COUNTS.with(|c| {
        let mut v = c.get();
        f(&mut v);
        c.set(v);
    });
}

impl Cluster {
    fn server(&mut self, id: NodeId) -> &mut Server {
        &mut self.servers[id as usize - 1]
    }

    fn node_of(&self, k: u8) -> NodeId {
        u64::from(k) % self.servers.len() as u64 + 1
    }

    /// The leader of the highest term, if any node leads.
    fn leader(&self) -> Option<NodeId> {
        self.servers
            .iter()
            .filter(|s| s.node.is_leader())
            .max_by_key(|s| s.node.term())
            .map(Server::id)
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
        self.max_commit = self.max_commit.max(s.node.commit_index());
        for action in &actions {
            if let Action::Persist(p) = action {
                self.safety.persist_issued(id, &s.node, p);
            }
        }
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(id, to, message),
                Action::SendSnapshot { to, message } => {
                    // The sender's driver holds the bytes (checked in
                    // `Server::execute`): they travel with the header.
                    let s = &self.servers[id as usize - 1];
                    let data = s
                        .snapshot_at(message.last_included_index)
                        .expect("checked when executed")
                        .to_vec();
                    let gen = s.restarts;
                    let header = Message::InstallSnapshot(message.clone());
                    self.safety.check_send(id, to, &header, &s.durable);
                    count_transfer(|c| c.sent += 1);
                    self.post(
                        id,
                        to,
                        Packet::Snapshot {
                            header: message,
                            data,
                            gen,
                        },
                    );
                }
                _ => {}
            }
        }
        self.drain_journal(id);
    }

    /// A transfer's item left the network: its sender is told, if the
    /// incarnation that sent it still runs.
    fn transfer_ended(&mut self, from: NodeId, to: NodeId, header: &InstallSnapshot, gen: u64) {
        if self.server(from).restarts != gen {
            return;
        }
        count_transfer(|c| c.ended += 1);
        let (term, index) = (header.term, header.last_included_index);
        self.step(from, Event::SnapshotSendEnded { to, term, index });
    }

    /// Delivers a transfer's header and bytes to `to`.
    fn install(&mut self, from: NodeId, to: NodeId, header: InstallSnapshot, data: Vec<u8>) {
        let now = self.now;
        count_transfer(|c| c.delivered += 1);
        let actions = self
            .server(to)
            .install(now, from, header, data)
            .unwrap_or_else(|e| panic!("node {to} refused a snapshot: {e}"));
        if actions
            .iter()
            .any(|a| matches!(a, Action::ApplySnapshot { .. }))
        {
            count_transfer(|c| c.installed += 1);
        }
        self.route(to, actions);
    }

    /// Persist before send, checked against what node `from` has stored.
    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        let durable = &self.servers[from as usize - 1].durable;
        self.safety.check_send(from, to, &message, durable);
        self.post(from, to, Packet::Message(message));
    }

    /// Puts a packet on the network; a full network loses its oldest (a
    /// transfer lost so has ended).
    fn post(&mut self, from: NodeId, to: NodeId, packet: Packet) {
        self.net.push_back((from, to, packet));
        if self.net.len() > 256 {
            if let Some((f, t, Packet::Snapshot { header, gen, .. })) = self.net.pop_front() {
                self.transfer_ended(f, t, &header, gen);
            }
        }
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
                let (from, to, packet) = match op {
                    NetOp::Duplicate(_) => self.net[at].clone(),
                    _ => self.net.remove(at).expect("in range"),
                };
                match packet {
                    Packet::Message(message) => {
                        if !matches!(op, NetOp::Drop(_)) {
                            self.step(to, Event::MessageReceived { from, message });
                        }
                    }
                    Packet::Snapshot { header, data, gen } => {
                        if !matches!(op, NetOp::Drop(_)) {
                            self.install(from, to, header.clone(), data);
                        }
                        // A copy delivered leaves the original in flight.
                        if !matches!(op, NetOp::Duplicate(_)) {
                            self.transfer_ended(from, to, &header, gen);
                        }
                    }
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
                let id = match self.leader() {
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
                    let now = self.now;
                    let actions = self
                        .server(id)
                        .snapshot_taken(now, index, data)
                        .unwrap_or_else(|e| panic!("node {id} refused its snapshot: {e}"));
                    self.route(id, actions);
                }
            }
            NetOp::Restart(k) => {
                let id = self.node_of(k);
                self.server(id).restart();
                self.step(id, Event::TimerFired);
            }
            NetOp::Read(k, how) => {
                let id = match self.leader() {
                    Some(leader) if k % 3 != 0 => leader,
                    _ => self.node_of(k),
                };
                let mode = if how & 1 != 0 {
                    ReadMode::Lease
                } else {
                    ReadMode::ReadIndex
                };
                let reuse = 1 + u64::from((how >> 1) % 8);
                let rid = if reuse <= 4 && !self.server(id).reads.contains_key(&reuse) {
                    reuse
                } else {
                    self.reads += 1;
                    100 + self.reads
                };
                let floor = self.max_commit;
                self.server(id).read_floor = floor;
                self.step(id, Event::ReadRequested { id: rid, mode });
            }
            NetOp::Transfer(k, t) => {
                let id = self.leader().unwrap_or_else(|| self.node_of(k));
                let to = (t % 6 != 0).then(|| self.node_of(t));
                self.step(id, Event::LeadershipTransferRequested { to });
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
    // Every node configured alike, validly: the lease with sticky votes,
    // a drift bound below 20%.
    setup.reads &= 0x7f;
    if setup.reads & 4 != 0 {
        setup.reads |= 2;
    }
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
        max_commit: 0,
        reads: 0,
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

// ----- structured random inputs, for the stable random runner -----------------------

/// Writes the bytes that `Unstructured` decodes to given values, for the
/// derived `Arbitrary` impls used here: integers little-endian, a bool as a
/// byte, `None` as a zero byte, variant `k` of an enum of `n` as the
/// smallest `u32` tag `t` with `t * n >> 32 == k`.
#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn variant(&mut self, k: u32, n: u32) {
        let tag = (u64::from(k) << 32).div_ceil(u64::from(n));
        self.u32(u32::try_from(tag).expect("k < n"));
    }
}

impl Setup {
    /// A setup with default timeouts and no stored state, drawn from `next`.
    fn draw(next: &mut dyn FnMut() -> u64) -> Setup {
        let w = next();
        Setup {
            size: w as u8,
            seed: next(),
            max_entries_per_append: (w >> 8) as u8,
            max_append_bytes: (w >> 16) as u8,
            max_inflight_appends: (w >> 24) as u8,
            max_uncommitted_entries: (w >> 32) as u8,
            timeouts: None,
            stored: None,
            reads: (w >> 40) as u8,
            drift: (w >> 48) as u32,
        }
    }

    fn encode(&self, e: &mut Encoder) {
        assert!(self.timeouts.is_none() && self.stored.is_none());
        e.u8(self.size);
        e.u64(self.seed);
        e.u8(self.max_entries_per_append);
        e.u8(self.max_append_bytes);
        e.u8(self.max_inflight_appends);
        e.u8(self.max_uncommitted_entries);
        e.u8(0); // timeouts: None
        e.u8(0); // stored: None
        e.u8(self.reads);
        e.u32(self.drift);
    }
}

impl NetOp {
    /// One op, weighted towards what moves a cluster along (deliveries,
    /// half of them of one of the four oldest messages, writes becoming
    /// durable, timers), with reads and proposals often.
    fn draw(w: u64) -> NetOp {
        let (a, b) = ((w >> 8) as u8, (w >> 16) as u8);
        match w % 100 {
            0..=19 => NetOp::Deliver(a % 4),
            20..=39 => NetOp::Deliver(a),
            40..=43 => NetOp::Drop(a),
            44..=46 => NetOp::Duplicate(a),
            47..=61 => NetOp::Persist(a, b),
            62..=71 => NetOp::NextTimer,
            72..=73 => NetOp::Timer(a),
            74..=81 => NetOp::Propose(a),
            82..=83 => NetOp::Snapshot(a),
            84..=85 => NetOp::Restart(a),
            86..=97 => NetOp::Read(a, b),
            _ => NetOp::Transfer(a, b),
        }
    }

    fn encode(&self, e: &mut Encoder) {
        const VARIANTS: u32 = 11;
        let (k, args) = match *self {
            NetOp::Deliver(a) => (0, vec![a]),
            NetOp::Drop(a) => (1, vec![a]),
            NetOp::Duplicate(a) => (2, vec![a]),
            NetOp::Persist(a, b) => (3, vec![a, b]),
            NetOp::NextTimer => (4, vec![]),
            NetOp::Timer(a) => (5, vec![a]),
            NetOp::Propose(a) => (6, vec![a]),
            NetOp::Snapshot(a) => (7, vec![a]),
            NetOp::Restart(a) => (8, vec![a]),
            NetOp::Read(a, b) => (9, vec![a, b]),
            NetOp::Transfer(a, b) => (10, vec![a, b]),
        };
        e.variant(k, VARIANTS);
        args.into_iter().for_each(|a| e.u8(a));
    }
}

/// A `step_cluster` input of `ops` ops drawn from `next`: a setup with
/// default timeouts, then weighted ops. Checks that the bytes decode back
/// to what was drawn (so the encoding follows the types).
pub fn random_cluster_input(next: &mut dyn FnMut() -> u64, ops: usize) -> Vec<u8> {
    let setup = Setup::draw(next);
    let drawn: Vec<NetOp> = (0..ops).map(|_| NetOp::draw(next())).collect();
    let mut e = Encoder::default();
    setup.encode(&mut e);
    drawn.iter().for_each(|op| op.encode(&mut e));
    let mut u = Unstructured::new(&e.0);
    let back = Setup::arbitrary(&mut u).expect("an encoded setup decodes");
    assert_eq!(format!("{back:?}"), format!("{setup:?}"), "setup encoding");
    for op in &drawn {
        let back = NetOp::arbitrary(&mut u).expect("an encoded op decodes");
        assert_eq!(format!("{back:?}"), format!("{op:?}"), "op encoding");
    }
    assert!(u.is_empty(), "every byte decoded");
    e.0
}

/// A `step_events` input: a setup with default timeouts and no stored
/// state (most fully random setups are invalid or short-lived), then
/// `rest` as the ops.
pub fn random_events_input(next: &mut dyn FnMut() -> u64, rest: &[u8]) -> Vec<u8> {
    let setup = Setup::draw(next);
    let mut e = Encoder::default();
    setup.encode(&mut e);
    let mut u = Unstructured::new(&e.0);
    let back = Setup::arbitrary(&mut u).expect("an encoded setup decodes");
    assert_eq!(format!("{back:?}"), format!("{setup:?}"), "setup encoding");
    e.0.extend_from_slice(rest);
    e.0
}
