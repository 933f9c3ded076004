//! Prints what one fuzz input does, step by step (node, time, event,
//! result), through the same property the fuzzer and the corpus replay run:
//!
//! ```sh
//! cargo run -p lab-tests --example fuzz_trace -- step_events fuzz/corpus/step_events/<file>
//! ```
//!
//! Targets: `decode_message`, `decode_wire`, `step_events`, `step_cluster`.
//! Exits non-zero (with the panic) if the input violates the property.

#[path = "fuzz_props.rs"]
mod fuzz_props;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, input] = args.as_slice() else {
        eprintln!(
            "usage: fuzz_trace <decode_message|decode_wire|step_events|step_cluster> <input file>"
        );
        return ExitCode::from(2);
    };
    let data = match std::fs::read(input) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("fuzz_trace: {input}: {e}");
            return ExitCode::from(2);
        }
    };
    fuzz_props::set_trace(true);
    match target.as_str() {
        "decode_message" => {
            println!("{:?}", postcard::from_bytes::<raft_core::Message>(&data));
            fuzz_props::decode_message(&data);
        }
        "decode_wire" => fuzz_props::decode_wire(&data, fuzz_props::unmetered),
        "step_events" => fuzz_props::step_events(&data),
        "step_cluster" => fuzz_props::step_cluster(&data),
        other => {
            eprintln!("fuzz_trace: unknown target {other}");
            return ExitCode::from(2);
        }
    }
    println!("{target} {input}: the property holds");
    ExitCode::SUCCESS
}
