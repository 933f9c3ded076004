//! What clients ask and what they are told: the commands that go through the
//! Raft log and their replies.

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminReply, MemberAddrs};

/// A client's identity, unique per clerk (random 64 bits in practice).
pub type ClientId = u64;

/// One operation on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Append { key, .. } => key,
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

/// The outcome of an applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A Get's value ("" for a missing key).
    Value(String),
    /// A Put or Append took effect.
    Done,
    /// The client's session was evicted and this request cannot be told
    /// apart from one already applied; it was not applied.
    SessionExpired,
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
/// The first three op variants are [`Op`]'s, in the same order with the same
/// fields, so a client's command encodes exactly as a [`Command`] does (the
/// log of a cluster that never records an address is byte for byte what it
/// was before records existed); a record uses a fourth variant, which no
/// [`Command`] decodes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Logged {
    pub(crate) client: ClientId,
    pub(crate) seq: u64,
    pub(crate) op: LoggedOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LoggedOp {
    Get { key: String },
    Put { key: String, value: String },
    Append { key: String, value: String },
    RecordMember { node: NodeId, addrs: MemberAddrs },
}

/// A decoded command entry.
pub(crate) enum Decoded {
    Client(Command),
    Record { node: NodeId, addrs: MemberAddrs },
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

    /// Decodes a command entry's bytes (`None` if they are not one).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Decoded> {
        let Logged { client, seq, op } = postcard::from_bytes(bytes).ok()?;
        let op = match op {
            LoggedOp::Get { key } => Op::Get { key },
            LoggedOp::Put { key, value } => Op::Put { key, value },
            LoggedOp::Append { key, value } => Op::Append { key, value },
            LoggedOp::RecordMember { node, addrs } => return Some(Decoded::Record { node, addrs }),
        };
        Some(Decoded::Client(Command { client, seq, op }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log of a cluster without records is unchanged: a client command
    /// encodes the same as a `Command` and as a `Logged`.
    #[test]
    fn client_commands_encode_as_before() {
        let ops = [
            Op::Get { key: "k".into() },
            Op::Put {
                key: "k".into(),
                value: "v".into(),
            },
            Op::Append {
                key: "key".into(),
                value: "value".into(),
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let command = Command {
                client: 1 << 40,
                seq: i as u64 + 1,
                op,
            };
            let bytes = postcard::to_allocvec(&command).unwrap();
            let logged_op = match command.op.clone() {
                Op::Get { key } => LoggedOp::Get { key },
                Op::Put { key, value } => LoggedOp::Put { key, value },
                Op::Append { key, value } => LoggedOp::Append { key, value },
            };
            let logged = Logged {
                client: command.client,
                seq: command.seq,
                op: logged_op,
            };
            assert_eq!(postcard::to_allocvec(&logged).unwrap(), bytes);
            assert!(matches!(Logged::decode(&bytes), Some(Decoded::Client(c)) if c == command));
        }
        let addrs = MemberAddrs {
            peer: "127.0.0.1:1".into(),
            client: "127.0.0.1:2".into(),
        };
        let record = Logged::record(3, addrs.clone());
        assert!(postcard::from_bytes::<Command>(&record).is_err());
        assert!(
            matches!(Logged::decode(&record), Some(Decoded::Record { node: 3, addrs: a }) if a == addrs)
        );
    }
}
