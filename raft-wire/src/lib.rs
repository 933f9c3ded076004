//! One wire protocol for every TCP transport of the project: between Raft
//! peers (driver-tokio's `rkv`, driver-threads' `raft-node`) and between the
//! service and its clients.
//!
//! - [`frame`]: length-prefixed postcard frames (`u32` little-endian length,
//!   then the body), the length checked against a limit before anything is
//!   allocated; encoding into a buffer, a [`FrameDecoder`] for event loops
//!   (mio), the two halves an async reader (tokio) calls around its reads,
//!   and blocking `std::io` helpers.
//! - [`hello`]: the handshake, the first frame of every connection
//!   ([`Hello`]: protocol version, cluster id, the peer's node id), and the
//!   acceptor's answer ([`HelloReply`]: accepted, or refused with a
//!   [`HelloError`] naming the reason).
//! - [`host`]: the monotonic clock and the entropy seed at a real driver's
//!   edge, written once for every driver.
//! - [`ConnectionError`]: why a transport closed a connection.
//! - `test_util` (feature `test-util`): free loopback ports for tests.
//!
//! The crate is sans-IO (no sockets, no runtime): it depends on the standard
//! library, serde, postcard, thiserror and raft-core's types only.
//!
//! # Version 4 on the wire
//!
//! ```text
//! frame    = len:u32le body[len]            body = postcard(value), len <= limit
//! peer     : dialler  -> Hello::Peer { version, cluster_id, node_id }, then Message*
//!            acceptor -> HelloReply (Accepted | Refused(HelloError)), then nothing
//! client   : client   -> Hello::Client { version, cluster_id }, then requests
//!            server   -> HelloReply, then responses
//! snapshot : dialler  -> Hello::PeerSnapshot { version, cluster_id, node_id },
//!            then the driver's snapshot frames (driver-tokio: Begin, Chunk*, End)
//!            acceptor -> HelloReply, then one ack
//! ```
//!
//! The hello's and the reply's limit is [`MAX_HELLO_FRAME`]; later frames'
//! is the transport's ([`MAX_FRAME`] by default). A refused hello is
//! answered `Refused`, naming the reason, and the connection closed; an
//! oversized or undecodable frame closes it without a word. Nothing a
//! connection sends panics. The reply's layout is frozen, so a caller of
//! any version can read a refusal ([`hello`]).
//!
//! A driver may carry a connection inside TLS (driver-tokio does, with
//! `--tls-*`): the frames inside are the same. A plaintext hello on a port
//! that takes TLS only is answered, in plaintext, `Refused(TlsRequired)`,
//! and a TLS handshake on a plaintext port `Refused(PlaintextOnly)` (which a
//! TLS caller reads as a corrupt record); [`looks_like_tls`] tells the two
//! apart from a connection's first two bytes. Versions 1 to 3 never answered a hello (a refusal was a close).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod hello;
pub mod host;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use frame::{
    decode, encode_frame, encode_frame_into, encode_frame_within, frame_len, read_frame,
    write_frame, FrameDecoder, FrameError, FRAME_HEADER_LEN, MAX_FRAME,
};
pub use hello::{
    looks_like_tls, Caller, Hello, HelloError, HelloReply, MAX_HELLO_FRAME, PROTOCOL_VERSION,
};
pub use host::{seed_from_entropy, Clock};

/// Why a transport closed an incoming connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The caller did not send its hello in time.
    #[error("no hello within {0:?}")]
    HelloTimeout(std::time::Duration),
    /// The first frame was not a readable hello.
    #[error("bad hello: {0}")]
    BadHello(#[source] FrameError),
    /// The hello was refused.
    #[error("refused hello: {0}")]
    Refused(#[from] HelloError),
    /// A later frame could not be read (or the connection failed).
    #[error(transparent)]
    Frame(#[from] FrameError),
}
