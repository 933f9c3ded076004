//! What every test of the Raft core shares, whatever drives the nodes (the
//! simulator, the threads harness, chaos, the fuzz properties):
//!
//! - [`SafetyChecker`]: the one cluster safety checker (Raft paper, Figure
//!   3, plus the persist-before-send contract), fed by the harness after
//!   every step, every write it issues, every send and every apply. It reads
//!   the nodes and their [`raft_core::DurableState`], never a driver's
//!   storage type.
//! - [`contract`]: the core/driver contract from the driver's side
//!   ([`ContractChecker`] on every step's actions, and storage against
//!   memory).
//! - [`Persister`]: in-memory durable storage (the lab's persister), which
//!   round-trips the state through its real encoding on every restart.
//! - [`fnv1a`]: the fingerprint used for commands and traces.
//!
//! No driver is a dependency: drivers depend on this crate, never the other
//! way round.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod contract;
mod persister;
mod safety;

pub use contract::ContractChecker;
pub use persister::Persister;
pub use safety::{fingerprint, fnv1a, SafetyChecker};
