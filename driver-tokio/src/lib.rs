//! The deployable KV service on tokio: TCP (optionally TLS) between nodes
//! and to clients, the Raft log and snapshots durable on disk, the `rkv`
//! server binary and CLI.
//!
//! - [`node`]: one server (event loop, group-commit storage thread, TCP).
//! - [`client`]: the async client over the sans-IO clerk; many clients may
//!   share connections ([`SharedConns`]).
//! - [`wire`]: the client protocol and async frame adapters over
//!   `raft-wire` (frames and handshake, shared with every TCP transport).
//! - [`transport`]: the connections between peers and to clients.
//! - [`tls`]: TLS on those connections (rustls), and what is verified.
//! - [`book`]: the peer addresses a node keeps in its data directory.
//! - [`snapshot`]: snapshots written off the event loop, and streamed
//!   between nodes.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//!
//! The log and snapshots on disk are `raft-storage`'s.
//!
//! No consensus or KV logic lives here: it moves bytes, keeps time and writes
//! storage; `raft-core` and `kv-core` decide.
#![forbid(unsafe_code)]

pub mod book;
pub mod client;
pub mod metrics;
pub mod node;
mod pool;
pub mod snapshot;
pub mod tls;
pub mod transport;
pub mod wire;

pub use client::{Client, ClientError, SharedConns, Swap};
pub use kv_core::{ReadConsistency, ReadPolicy};
pub use node::{
    parse_read_policy, read_policy_name, start_node, start_node_with, NodeConfig, NodeError,
    NodeHandle,
};
pub use tls::{ClientTls, TlsFiles};
