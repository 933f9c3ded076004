//! Tests of the limits (placeholder).
