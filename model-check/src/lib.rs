//! A bounded exhaustive search of `raft-core`'s real [`raft_core::RaftNode::step`]
//! on a three-node cluster.
//!
//! The model ([`World`]) is three unmodified nodes and a driver that lets an
//! adversary choose, at every step, any of: deliver, duplicate (optional) or
//! lose any in-flight message; fire any node's timer; make any node's oldest
//! pending write durable; propose a command to a leader (a few per trace);
//! crash and restart a node from its durable image (optional, a few per
//! trace). The search ([`explore`]) visits every state reachable in at most
//! a given number of choices, merging states with the same abstraction (see
//! `key.rs` for what that leaves out), and checks the invariants of
//! `invariants.rs` in every one. A violation comes with the exact trace of
//! choices, which [`World::replay`] (and `model-check --replay`) re-executes.
//!
//! Left out: snapshots (nobody takes one, so `InstallSnapshot` never
//! happens), membership changes, and clusters other than three nodes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod choice;
mod explore;
mod invariants;
mod key;
mod world;

pub use choice::{format_trace, parse_trace, Choice};
pub use explore::{explore, Coverage, Found, Options, Report, Stats};
pub use invariants::Violation;
pub use world::{Envelope, Limits, World, NODES};
