//! `raft-core` and `kv-core` on OS threads, in real time.
//!
//! Two ways to run a cluster:
//!
//! - **In one process** (the lab tests in real time): [`rt`] is a real-time
//!   executor for test bodies, [`network`] an in-process network with the
//!   lab's faults (loss, delays, long reordering, disconnects, partitions),
//!   [`node`] runs each server (a `RaftNode` or a `KvServer`) on its own
//!   thread with real timers and a [`persister`]; with the `lab` feature,
//!   [`ThreadCfg`] and [`ThreadKvCfg`] are the MIT 6.5840 lab harnesses on
//!   top, with the same methods as the simulator's.
//! - **In separate processes**: [`tcp`] is a mio TCP transport between
//!   nodes (on `raft-wire`, the protocol driver-tokio speaks too), and
//!   [`tcp_node`] the node thread that ties it and `raft-storage`'s durable
//!   store to a replicated [`tcp_node::Service`]; the
//!   `raft-node` binary is a small replicated log service built on them.
//!
//! In both, the monotonic clock is converted to `raft_core::Instant` at the
//! edge, and a node's writes are durable before the messages that depend on
//! them leave (persist before send).

pub mod tcp;
pub mod tcp_node;

// The in-process driver: a real-time executor for test bodies, the lab's
// faulty network, node threads, and (feature `lab`) the lab harnesses.
#[cfg(feature = "lab")]
mod harness;
#[cfg(feature = "lab")]
pub mod kv_harness;
pub mod network;
pub mod node;
pub mod persister;
#[cfg(feature = "lab")]
pub mod raft_harness;
pub mod rt;

#[cfg(feature = "lab")]
pub use harness::RealTime;
#[cfg(feature = "lab")]
pub use kv_harness::{ThreadClerk, ThreadKvCfg};
#[cfg(feature = "lab")]
pub use raft_harness::ThreadCfg;
