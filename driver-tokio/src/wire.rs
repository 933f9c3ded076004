//! What travels over TCP: length-prefixed postcard frames, a handshake that
//! names the cluster (and, for peers, the sender), Raft messages between
//! peers, and requests and responses between clients and servers.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of
//! postcard. The length is checked against a limit before anything is
//! allocated ([`MAX_FRAME`]; [`MAX_HELLO_FRAME`] for the handshake, the one
//! frame a stranger can send), and the buffer grows with the bytes that
//! actually arrive, so announcing a large frame and sending little costs the
//! reader little. An oversized or undecodable frame closes the connection.

use kv_core::{Command, Reply};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame accepted (snapshots travel whole in one frame).
pub const MAX_FRAME: usize = 64 << 20;

/// The largest handshake frame accepted: a [`Hello`] is a few varints.
pub const MAX_HELLO_FRAME: usize = 256;

/// Buffer space reserved ahead of the bytes that arrive.
const READ_CHUNK: usize = 64 << 10;

/// Protocol version carried in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    /// A Raft peer: it sends `raft_core::Message` frames afterwards.
    Peer {
        /// Protocol version.
        version: u32,
        /// The cluster it belongs to.
        cluster_id: u64,
        /// Its node id.
        node_id: u64,
    },
    /// A client: it sends [`ClientRequest`] frames and reads [`ClientResponse`]s.
    Client {
        /// Protocol version.
        version: u32,
        /// The cluster it wants.
        cluster_id: u64,
    },
}

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
}

/// A node's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The answer to a `Command`.
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
    /// Where its snapshot ends.
    pub snapshot_index: u64,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than the limit.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The bytes are not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
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
    let len = reader.read_u32_le().await? as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() < len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(postcard::from_bytes(&buf)?)
}

/// Encodes `value` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T) -> Vec<u8> {
    let body = postcard::to_allocvec(value).expect("wire types encode");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Encodes and writes one frame (not flushed).
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &T,
) -> std::io::Result<()> {
    writer.write_all(&encode_frame(value)).await
}
