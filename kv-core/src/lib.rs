//! The deduplicating key/value state machine with client sessions, and the sans-IO KV server node and clerk built on `raft-core` (to come, issue 3).
#![forbid(unsafe_code)]
