//! Honest RaftNodes with the fuzzer as their network, clock and disks. The
//! property is in tests/fuzz_props.rs (shared with the corpus replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_props.rs"]
mod props;

fuzz_target!(|data: &[u8]| props::step_cluster(data));
