//! Arbitrary bytes as a postcard `raft_core::Message`; what decodes must
//! round-trip. The property is in tests/fuzz_props.rs (shared with the
//! corpus replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_props.rs"]
mod props;

fuzz_target!(|data: &[u8]| props::decode_message(data));
