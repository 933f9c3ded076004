//! What travels over TCP. Frames and the handshake are `raft-wire`'s, the
//! one protocol of every transport (a little-endian `u32` length, then
//! postcard; the first frame a [`Hello`]); this module adds the client
//! protocol (requests and responses between clients and servers, which carry
//! `kv-core` types) and the async adapters that read and write frames on
//! tokio streams.
//!
//! A Get travels as [`ClientRequest::Read`], outside any session: it changes
//! nothing, so it needs no request number, and it never reaches the log
//! (`kv_core::ServerEvent::ReadReceived`). A Get sent as a
//! [`ClientRequest::Command`] is served by the server's read policy instead
//! (through the log with `--read-policy log`).
//!
//! The length is checked against a limit before anything is allocated
//! ([`MAX_FRAME`]; [`MAX_HELLO_FRAME`] for the handshake, the one frame a
//! stranger can send), and the buffer grows with the bytes that actually
//! arrive, so announcing a large frame and sending little costs the reader
//! little. An oversized or undecodable frame closes the connection.

use kv_core::{AdminRequest, Command, MemberList, ReadConsistency, Reply};
pub use raft_wire::{
    encode_frame, FrameError, Hello, HelloError, HelloReply, MAX_FRAME, MAX_HELLO_FRAME,
    PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Buffer space reserved ahead of the bytes that arrive.
const READ_CHUNK: usize = 64 << 10;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Apply a command (through the log).
    Command {
        /// Echoed in the response.
        id: u64,
        /// The command.
        command: Command,
    },
    /// Report this node's Raft state (answered locally).
    Status {
        /// Echoed in the response.
        id: u64,
    },
    /// An administrative request (membership, leadership transfer);
    /// answered with a `Reply` carrying `kv_core::Reply::Admin`.
    Admin {
        /// Echoed in the response.
        id: u64,
        /// The request.
        request: AdminRequest,
    },
    /// Read `key` outside any session, never through the log; answered with
    /// a `Reply` carrying `Reply::Applied(Outcome::Value(_))`, or
    /// `Reply::WrongLeader` from a server that cannot serve it (a follower
    /// without follower reads, a leader that lost its term).
    Read {
        /// Echoed in the response.
        id: u64,
        /// The key.
        key: String,
        /// How it is served: linearizable (ReadIndex), the leader's lease,
        /// or this server's applied state (possibly stale).
        consistency: ReadConsistency,
    },
}

/// A node's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The answer to a `Command`, an `Admin` request or a `Read`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// The answer to a `Status`.
    Status {
        /// The request's id.
        id: u64,
        /// The node's state.
        status: NodeStatus,
    },
}

/// One node's view of the cluster, for `rkv status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: u64,
    /// Its current term.
    pub term: u64,
    /// "leader", "candidate" or "follower".
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its commit index.
    pub commit_index: u64,
    /// Its last applied index.
    pub last_applied: u64,
    /// Its last log index.
    pub last_index: u64,
    /// How it serves Gets sent as commands and lease reads: "read-index",
    /// "lease" or "log" (its `--read-policy`).
    pub read_policy: String,
    /// Whether it serves linearizable reads as a follower (forwarding for
    /// the read index) rather than sending the client to the leader (its
    /// `--follower-reads`).
    pub follower_reads: bool,
    /// Where its snapshot ends.
    pub snapshot_index: u64,
    /// The members as it knows them (with match indices if it leads).
    pub members: MemberList,
    /// Every peer address its driver knows (its address book, see
    /// `driver_tokio::book`): the bootstrap members' as well as recorded ones.
    pub peers: std::collections::BTreeMap<u64, std::net::SocketAddr>,
}

/// Reads one frame of at most [`MAX_FRAME`] bytes and decodes it.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncReadExt + Unpin,
{
    read_frame_within(reader, MAX_FRAME).await
}

/// Reads one frame of at most `limit` bytes and decodes it.
pub async fn read_frame_within<T, R>(reader: &mut R, limit: usize) -> Result<T, FrameError>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncReadExt + Unpin,
{
    let mut prefix = [0; raft_wire::FRAME_HEADER_LEN];
    reader.read_exact(&mut prefix).await?;
    let len = raft_wire::frame_len(prefix, limit)?;
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() < len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    raft_wire::decode(&buf)
}

/// Encodes and writes one frame (not flushed). A value that cannot be
/// framed (over [`MAX_FRAME`]) is an `InvalidInput` error, and nothing is
/// written.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &T,
) -> std::io::Result<()> {
    let frame = encode_frame(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    writer.write_all(&frame).await
}
