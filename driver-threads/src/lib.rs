//! A driver that runs each node on its own OS thread with real timers, an in-process faulty network and a mio TCP transport (to come, issue 6).

pub mod file_persister;
pub mod tcp;
pub mod tcp_node;

// The in-process driver: a real-time executor for test bodies, the lab's
// faulty network, node threads, and (feature `lab`) the lab harnesses.
#[cfg(feature = "lab")]
pub mod kv_harness;
#[cfg(feature = "lab")]
mod lab;
pub mod network;
pub mod node;
pub mod persister;
#[cfg(feature = "lab")]
pub mod raft_harness;
pub mod rt;

#[cfg(feature = "lab")]
pub use kv_harness::{ThreadClerk, ThreadKvCfg};
#[cfg(feature = "lab")]
pub use lab::RealTime;
#[cfg(feature = "lab")]
pub use raft_harness::ThreadCfg;
