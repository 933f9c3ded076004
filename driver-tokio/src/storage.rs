//! Durable storage (being written).
