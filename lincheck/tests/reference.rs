//! The linearizability checker against the reference histories of
//! `../shared/linearizability/` (Jepsen etcd logs and key/value histories
//! with known verdicts, from porcupine's test data), found from this crate's
//! directory as `../../shared/linearizability`.
//!
//! ```sh
//! cargo test --release -p lincheck --test reference -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lincheck::{
    check_with, parse_etcd_log, parse_kv_edn, render_violation_html, CheckOptions, KvModel, Model,
    RegisterModel, Verdict,
};

/// The budget for one file; running out of it is a failure.
const BUDGET: Duration = Duration::from_secs(10);

/// `<workspace>/../shared/linearizability` (the crate is one level below the
/// workspace root), where CI lays the data.
fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/linearizability");
    assert!(
        dir.join("expected.tsv").is_file(),
        "reference histories not found: expected {}/expected.tsv \
         (the folder ../shared/linearizability next to the project root)",
        dir.display()
    );
    dir
}

/// The verdict's name, the time the check (not the parse) took and the
/// steps; for a violation, also renders its HTML page, so the renderer meets
/// real data.
fn run<M: Model>(
    model: &M,
    history: &[lincheck::Operation<M::Input, M::Output>],
) -> (&'static str, Duration, u64) {
    let start = Instant::now();
    let report = check_with(model, history, &CheckOptions::with_time_budget(BUDGET));
    let took = start.elapsed();
    if let Verdict::NotLinearizable(violation) = &report.verdict {
        let page = render_violation_html(model, violation);
        assert!(page.contains("<svg"), "the violation renders");
    }
    (report.verdict.name(), took, report.steps)
}

#[test]
fn checker_agrees_with_reference_histories() {
    let dir = data_dir();
    let expected = std::fs::read_to_string(dir.join("expected.tsv")).expect("read expected.tsv");
    let mut failures = Vec::new();
    let mut total = Duration::ZERO;
    let mut files = 0;
    for line in expected.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (file, want) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("expected.tsv: bad line {line:?}"));
        let text =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let (got, took, steps) = if file.starts_with("etcd/") {
            let history = parse_etcd_log(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            run(&RegisterModel, &history)
        } else if file.starts_with("kv/") {
            let history = parse_kv_edn(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            run(&KvModel, &history)
        } else {
            panic!("expected.tsv: no parser for {file}");
        };
        total += took;
        files += 1;
        let mark = if got == want { "ok" } else { "WRONG" };
        println!(
            "{file:<20} {got:<17} {:>9.3} ms {steps:>9} steps  {mark}",
            took.as_secs_f64() * 1e3
        );
        if got != want {
            failures.push(format!("{file}: expected {want}, got {got}"));
        }
    }
    println!(
        "{files} files checked in {:.3} ms in total",
        total.as_secs_f64() * 1e3
    );
    assert!(files > 0, "expected.tsv lists no files");
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );
}
