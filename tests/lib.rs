//! Shared helpers for the lab suites.
