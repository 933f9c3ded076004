//! A linearizability checker in the manner of porcupine: a generic
//! sequential [`Model`], histories of timed [`Operation`]s, a depth-first
//! search over linearizations with memoisation of (linearized set, state)
//! pairs, run on every partition of a history interleaved ([`check`],
//! [`check_steps`], and [`check_with`] for a per-partition
//! [`CheckReport`]), bounds on time, steps and memory whose expiry gives
//! [`Verdict::Unknown`] with an [`UnknownReason`], and an HTML timeline of a
//! violation ([`write_violation_html`]).
//!
//! Two models come with it: [`KvModel`], the lab's key/value store with
//! delete and compare-and-swap added (partitioned by key), and
//! [`RegisterModel`], a read / write / compare-and-set register for Jepsen's etcd histories. [`parse_etcd_log`]
//! and [`parse_kv_edn`] read the reference histories of
//! `../shared/linearizability/`, [`parse_history_jsonl`] the histories the
//! lab tests export; the `lincheck` binary checks such files.
//!
//! An operation whose outcome is unknown has `ret == UNKNOWN_RETURN` and an
//! output every state accepts; see [`model`] for why that covers both
//! "took effect at some point" and "never took effect". Intervals are
//! closed (a return and a call at the same instant count as concurrent);
//! see [`checker`].
//!
//! ```
//! use std::time::Duration;
//! use lincheck::{check, KvInput, KvModel, KvOutput, Operation};
//!
//! let history = vec![
//!     Operation { client: 0, call: 0, ret: 10, input: KvInput::put("k", "a"), output: KvOutput::Value(String::new()) },
//!     Operation { client: 1, call: 5, ret: 6, input: KvInput::get("k"), output: KvOutput::Value("a".into()) },
//! ];
//! assert!(check(&KvModel, &history, Duration::from_secs(1)).is_linearizable());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bitset;
mod cache;
pub mod checker;
pub mod html;
pub mod jsonl;
pub mod kv;
pub mod model;
pub mod parse;
pub mod register;
mod search;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_delete_cas;
#[cfg(test)]
mod tests_limits;
pub mod value;

pub use checker::{
    check, check_steps, check_with, CheckOptions, CheckReport, PartitionResult, PartitionVerdict,
    UnknownReason, Verdict, Violation, DEFAULT_MEMORY_LIMIT_BYTES, MAX_CACHE_ENTRIES, SLICE_STEPS,
};
pub use html::{render_violation_html, write_violation_html, write_violation_html_to_temp};
pub use jsonl::parse_history_jsonl;
pub use kv::{KvInput, KvModel, KvOp, KvOutput};
pub use model::{Model, Operation, UNKNOWN_RETURN};
pub use parse::{parse_etcd_log, parse_kv_edn, KvHistory, ParseError, RegisterHistory};
pub use register::{RegisterInput, RegisterModel, RegisterOutput};
pub use value::AppendValue;
