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
//!   ([`Hello`]: protocol version, cluster id, the peer's node id), and its
//!   refusals as [`HelloError`]s.
//! - [`host`]: the monotonic clock and the entropy seed at a real driver's
//!   edge, written once for every driver.
//! - [`ConnectionError`]: why a transport closed a connection.
//! - `test_util` (feature `test-util`): free loopback ports for tests.
//!
//! The crate is sans-IO (no sockets, no runtime): it depends on the standard
//! library, serde, postcard, thiserror and raft-core's types only.
//!
//! # On the wire
//!
//! ```text
//! frame    = len:u32le body[len]            body = postcard(value), len <= limit
//! peer     : Hello::Peer { version, cluster_id, node_id }, then Message*
//! client   : Hello::Client { version, cluster_id }, then requests (responses back)
//! snapshot : Hello::PeerSnapshot { version, cluster_id, node_id }, then the
//!            driver's snapshot frames (driver-tokio: Begin, Chunk*, End; one
//!            ack back)
//! ```
//!
//! The hello frame's limit is [`MAX_HELLO_FRAME`]; later frames' is the
//! transport's ([`MAX_FRAME`] by default). An oversized, undecodable or
//! refused frame closes the connection; nothing a connection sends panics.
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
pub use hello::{Caller, Hello, HelloError, MAX_HELLO_FRAME, PROTOCOL_VERSION};
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
