//! What clients ask and what they are told: the commands that go through the
//! Raft log and their replies.

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminReply, MemberAddrs};

/// A client's identity, unique per clerk (random 64 bits in practice).
pub type ClientId = u64;

/// One operation on the store.
///
/// It encodes as the log's op (see [`Logged`]): Get, Put and Append as
/// variants 0 to 2, Delete and CompareAndSwap as 4 and 5 (3 is the log's
/// member record, which no `Op` decodes to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "LoggedOp", try_from = "LoggedOp")]
pub enum Op {
    /// Read a key ("" if missing).
    Get {
        /// The key.
        key: String,
    },
    /// Replace a key's value.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Append to a key's value (missing keys count as "").
    Append {
        /// The key.
        key: String,
        /// What to append.
        value: String,
    },
    /// Remove a key; answered [`Outcome::Deleted`] (whether it was set).
    Delete {
        /// The key.
        key: String,
    },
    /// Set a key to `value` if and only if its value is `expected`, where
    /// `None` means the key is not set (a key set to "" is set); answered
    /// [`Outcome::Swapped`] or [`Outcome::NotSwapped`] with the value found.
    CompareAndSwap {
        /// The key.
        key: String,
        /// The value the key must have, or `None`: it must be unset.
        expected: Option<String>,
        /// The new value.
        value: String,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key }
            | Op::Put { key, .. }
            | Op::Append { key, .. }
            | Op::Delete { key }
            | Op::CompareAndSwap { key, .. } => key,
        }
    }

    /// The bytes of its strings: about its encoded size, less the
    /// variant's tag and the lengths' prefixes.
    fn string_bytes(&self) -> usize {
        match self {
            Op::Get { key } | Op::Delete { key } => key.len(),
            Op::Put { key, value } | Op::Append { key, value } => key.len() + value.len(),
            Op::CompareAndSwap {
                key,
                expected,
                value,
            } => key.len() + expected.as_ref().map_or(0, String::len) + value.len(),
        }
    }
}

/// A client request as it travels through the log: who sent it, its request
/// number within that client's session, and the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client.
    pub client: ClientId,
    /// The client's request number, from 1, one outstanding at a time.
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// The bytes of its log entry (postcard), encoded into a buffer sized
    /// for them up front rather than grown (a 256-byte put grew through
    /// six reallocations).
    pub fn encode(&self) -> Vec<u8> {
        // Client id and seq (varints, at most 10 bytes each), the tags and
        // three length prefixes.
        let buf = Vec::with_capacity(self.op.string_bytes() + 40);
        postcard::to_extend(self, buf).expect("commands encode")
    }
}

/// The outcome of an applied command.
///
/// Outcomes are kept in the session table, so they are part of snapshots:
/// new variants go at the end, leaving the encoding of the older ones as it
/// was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A Get's value ("" for a missing key).
    Value(String),
    /// A Put or Append took effect.
    Done,
    /// The client's session was evicted and this request cannot be told
    /// apart from one already applied; it was not applied.
    SessionExpired,
    /// A Delete took effect; `existed` says whether the key was set (the
    /// old value is not returned, so that the session table, which keeps
    /// every client's last outcome, holds no copy of it).
    Deleted {
        /// The key was set before.
        existed: bool,
    },
    /// A CompareAndSwap found the expected value and set the new one.
    Swapped,
    /// A CompareAndSwap found another value and changed nothing.
    NotSwapped {
        /// The key's value at that point, `None` if it was not set.
        current: Option<String>,
    },
}

/// A server's answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The request was applied (or had been already) with this outcome.
    Applied(Outcome),
    /// This server cannot answer: it is not the leader, or lost leadership
    /// before the request committed. Try `leader_hint`, or the next server.
    WrongLeader {
        /// Who this server believes leads, as a Raft node id.
        leader_hint: Option<u64>,
    },
    /// The answer to an administrative request
    /// ([`crate::ServerEvent::AdminReceived`]).
    Admin(AdminReply),
}

/// What a command entry of the log carries: a client's [`Command`], or a
/// record the service writes itself (a member's addresses, see
/// [`crate::admin`]).
///
/// The op variants are, in order: Get, Put, Append (as they were before
/// records existed, so the log of a cluster that never records an address
/// is byte for byte what it was then), the record, then Delete and
/// CompareAndSwap, which came later. A variant is never reordered, so old
/// logs and snapshots decode unchanged. [`Op`] encodes as this enum, so a
/// client's command encodes the same as a [`Command`] and as a `Logged`,
/// and a record decodes as no [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Logged {
    pub(crate) client: ClientId,
    pub(crate) seq: u64,
    pub(crate) op: LoggedOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LoggedOp {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Append {
        key: String,
        value: String,
    },
    RecordMember {
        node: NodeId,
        addrs: MemberAddrs,
    },
    Delete {
        key: String,
    },
    CompareAndSwap {
        key: String,
        expected: Option<String>,
        value: String,
    },
}

/// [`Logged`] borrowing its strings from the entry's bytes: what a store
/// applies needs no copy of them (a value is copied once, into the store).
#[derive(Deserialize)]
pub(crate) struct LoggedRef<'a> {
    pub(crate) client: ClientId,
    pub(crate) seq: u64,
    #[serde(borrow)]
    pub(crate) op: OpRef<'a>,
}

/// [`LoggedOp`], borrowed: the same variants in the same order.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum OpRef<'a> {
    Get {
        key: &'a str,
    },
    Put {
        key: &'a str,
        value: &'a str,
    },
    Append {
        key: &'a str,
        value: &'a str,
    },
    RecordMember {
        node: NodeId,
        addrs: MemberAddrs,
    },
    Delete {
        key: &'a str,
    },
    CompareAndSwap {
        key: &'a str,
        expected: Option<&'a str>,
        value: &'a str,
    },
}

impl<'a> OpRef<'a> {
    /// `op`, borrowed.
    pub(crate) fn of(op: &'a Op) -> OpRef<'a> {
        match op {
            Op::Get { key } => OpRef::Get { key },
            Op::Put { key, value } => OpRef::Put { key, value },
            Op::Append { key, value } => OpRef::Append { key, value },
            Op::Delete { key } => OpRef::Delete { key },
            Op::CompareAndSwap {
                key,
                expected,
                value,
            } => OpRef::CompareAndSwap {
                key,
                expected: expected.as_deref(),
                value,
            },
        }
    }
}

impl Logged {
    /// The bytes of a record entry.
    pub(crate) fn record(node: NodeId, addrs: MemberAddrs) -> Vec<u8> {
        let logged = Logged {
            client: 0,
            seq: 0,
            op: LoggedOp::RecordMember { node, addrs },
        };
        postcard::to_allocvec(&logged).expect("records encode")
    }
}

impl From<Op> for LoggedOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Get { key } => LoggedOp::Get { key },
            Op::Put { key, value } => LoggedOp::Put { key, value },
            Op::Append { key, value } => LoggedOp::Append { key, value },
            Op::Delete { key } => LoggedOp::Delete { key },
            Op::CompareAndSwap {
                key,
                expected,
                value,
            } => LoggedOp::CompareAndSwap {
                key,
                expected,
                value,
            },
        }
    }
}

impl TryFrom<LoggedOp> for Op {
    type Error = &'static str;

    fn try_from(op: LoggedOp) -> Result<Self, Self::Error> {
        Ok(match op {
            LoggedOp::Get { key } => Op::Get { key },
            LoggedOp::Put { key, value } => Op::Put { key, value },
            LoggedOp::Append { key, value } => Op::Append { key, value },
            LoggedOp::Delete { key } => Op::Delete { key },
            LoggedOp::CompareAndSwap {
                key,
                expected,
                value,
            } => Op::CompareAndSwap {
                key,
                expected,
                value,
            },
            LoggedOp::RecordMember { .. } => return Err("a member record is not a client op"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(seq: u64, op: Op) -> Command {
        Command { client: 7, seq, op }
    }

    /// Whether `bytes` decode, as the log's entry, to `command`.
    fn logs_as(bytes: &[u8], command: &Command) -> bool {
        matches!(
            postcard::from_bytes::<LoggedRef<'_>>(bytes),
            Ok(LoggedRef { client, seq, op })
                if client == command.client && seq == command.seq && op == OpRef::of(&command.op)
        )
    }

    fn kv(key: &str, value: &str) -> (String, String) {
        (key.into(), value.into())
    }

    #[test]
    fn encode_is_postcard_and_fits_its_buffer() {
        let ops = [
            Op::Get { key: "k".into() },
            Op::Put {
                key: "k0000000001".into(),
                value: "v".repeat(256),
            },
            Op::Append {
                key: "a".into(),
                value: "b".repeat(1000),
            },
            Op::Delete { key: "d".into() },
            Op::CompareAndSwap {
                key: "c".into(),
                expected: Some("x".repeat(130)),
                value: "y".repeat(70),
            },
            Op::CompareAndSwap {
                key: "c".into(),
                expected: None,
                value: String::new(),
            },
        ];
        for op in ops {
            let c = Command {
                client: u64::MAX,
                seq: u64::MAX,
                op,
            };
            let bytes = c.encode();
            assert_eq!(bytes, postcard::to_allocvec(&c).unwrap());
            assert!(bytes.len() <= c.op.string_bytes() + 40, "{c:?}");
        }
    }

    /// The log of a cluster without records, deletes or swaps is unchanged:
    /// a Get, Put or Append entry is the same bytes as before either
    /// existed (pinned here byte for byte), and the same as its `Command`.
    #[test]
    fn client_commands_encode_as_before() {
        let (k, v) = kv("k", "v");
        let cases: [(Op, &[u8]); 3] = [
            (Op::Get { key: k.clone() }, &[7, 1, 0, 1, b'k']),
            (Op::Put { key: k, value: v }, &[7, 2, 1, 1, b'k', 1, b'v']),
            (
                Op::Append {
                    key: "key".into(),
                    value: "value".into(),
                },
                b"\x07\x03\x02\x03key\x05value",
            ),
        ];
        for (i, (op, pinned)) in cases.into_iter().enumerate() {
            let command = command(i as u64 + 1, op);
            let bytes = postcard::to_allocvec(&command).unwrap();
            assert_eq!(bytes, pinned, "{command:?}");
            assert!(logs_as(&bytes, &command));
        }
        let addrs = MemberAddrs {
            peer: "p".into(),
            client: "c".into(),
        };
        let record = Logged::record(3, addrs.clone());
        assert_eq!(record, [0, 0, 3, 3, 1, b'p', 1, b'c']);
        assert!(postcard::from_bytes::<Command>(&record).is_err());
        assert!(matches!(
            postcard::from_bytes::<LoggedRef<'_>>(&record),
            Ok(LoggedRef { op: OpRef::RecordMember { node: 3, addrs: a }, .. }) if a == addrs
        ));
    }

    /// Delete and CompareAndSwap take the log's fifth and sixth variants,
    /// after the record's: a Command encodes as its log entry, never reads
    /// as a record, and round-trips.
    #[test]
    fn deletes_and_swaps_are_logged_after_the_record_variant() {
        let delete = command(4, Op::Delete { key: "k".into() });
        let swap = |expected: Option<&str>| {
            command(
                5,
                Op::CompareAndSwap {
                    key: "k".into(),
                    expected: expected.map(Into::into),
                    value: "n".into(),
                },
            )
        };
        let cases: [(Command, &[u8]); 3] = [
            (delete, &[7, 4, 4, 1, b'k']),
            (swap(None), &[7, 5, 5, 1, b'k', 0, 1, b'n']),
            (swap(Some("o")), &[7, 5, 5, 1, b'k', 1, 1, b'o', 1, b'n']),
        ];
        for (command, pinned) in cases {
            let bytes = postcard::to_allocvec(&command).unwrap();
            assert_eq!(bytes, pinned, "{command:?}");
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
            assert!(logs_as(&bytes, &command));
        }
    }

    /// Outcomes live in the session table of every snapshot: the old ones
    /// encode as before, the new ones after them.
    #[test]
    fn outcomes_encode_as_before_and_new_ones_after() {
        let cases: [(Outcome, &[u8]); 7] = [
            (Outcome::Value("x".into()), &[0, 1, b'x']),
            (Outcome::Done, &[1]),
            (Outcome::SessionExpired, &[2]),
            (Outcome::Deleted { existed: true }, &[3, 1]),
            (Outcome::Swapped, &[4]),
            (Outcome::NotSwapped { current: None }, &[5, 0]),
            (
                Outcome::NotSwapped {
                    current: Some("v".into()),
                },
                &[5, 1, 1, b'v'],
            ),
        ];
        for (outcome, pinned) in cases {
            assert_eq!(postcard::to_allocvec(&outcome).unwrap(), pinned);
            assert_eq!(postcard::from_bytes::<Outcome>(pinned).unwrap(), outcome);
        }
    }
}
