//! Reference histories (being written).
