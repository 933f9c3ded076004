//! The deployable KV service on tokio: TCP between nodes and to clients, the
//! Raft log and snapshots durable on disk, the `rkv` server binary and CLI.
#![forbid(unsafe_code)]

pub mod storage;
