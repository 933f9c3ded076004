//! The deployable KV service: tokio, TCP between nodes and clients, a durable log and snapshots on disk, the server binary and its CLI (to come, issue 4).
