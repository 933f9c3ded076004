//! Replays the fuzzing corpus (`fuzz/corpus/<target>/`: seeds, inputs the
//! fuzzer kept, and any crash reproducers) through the same properties the
//! cargo-fuzz targets check (`fuzz_props.rs`, one copy for both), on stable
//! and without libFuzzer. Run the fuzzer itself with `cargo +nightly fuzz run
//! <target>` from the repository root (see `fuzz/README.md`), and trace one
//! input step by step with `cargo run -p lab-tests --example fuzz_trace --
//! <target> <file>`.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

#[path = "fuzz_props.rs"]
mod fuzz_props;

thread_local! {
    /// Where this thread last panicked.
    static PANIC_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records each panic's location (for the report), then prints it as usual.
fn record_panic_locations() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            PANIC_AT.with(|p| *p.borrow_mut() = at);
            default(info);
        }));
    });
}

/// Runs `property` on every file of `fuzz/corpus/<target>/` and reports each
/// file that panicked, by name, panic location and message.
fn replay(target: &str, property: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    replay_dir(&dir, target, property);
}

fn replay_dir(dir: &Path, target: &str, property: impl Fn(&[u8])) {
    record_panic_locations();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("readable corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| property(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = PANIC_AT.with(|p| p.borrow().clone());
            failures.push(format!("{}: panicked at {at}: {message}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn decode_message_corpus() {
    replay("decode_message", fuzz_props::decode_message);
}

#[test]
fn decode_wire_corpus() {
    replay("decode_wire", |data| {
        fuzz_props::decode_wire(data, fuzz_props::unmetered)
    });
}

#[test]
fn step_events_corpus() {
    replay("step_events", fuzz_props::step_events);
}

#[test]
fn step_cluster_corpus() {
    replay("step_cluster", fuzz_props::step_cluster);
}
