//! Runnable examples live beside this crate's manifest.
