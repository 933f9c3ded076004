//! The `lincheck` command on small files: its verdict lines and exit
//! statuses (0 linearizable, 1 violation, 2 unknown or error).

use std::path::PathBuf;
use std::process::Command;

/// Writes `text` to a fresh file named `name` in the temp directory.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lincheck-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write the history");
    path
}

/// Runs the command; returns its exit status and standard output.
fn lincheck(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lincheck"))
        .args(args)
        .output()
        .expect("run lincheck");
    (
        out.status.code().expect("an exit status"),
        String::from_utf8(out.stdout).expect("utf-8"),
    )
}

const OK: &str = concat!(
    r#"{"client":0,"call":1,"return":2,"op":"put","key":"a","value":"1","output":""}"#,
    "\n",
    r#"{"client":1,"call":3,"return":4,"op":"get","key":"a","value":"","output":"1"}"#,
    "\n",
);

const BAD_KEY_B: &str = concat!(
    r#"{"client":0,"call":5,"return":6,"op":"append","key":"b","value":"x","output":""}"#,
    "\n",
    r#"{"client":1,"call":7,"return":8,"op":"get","key":"b","value":"","output":"y"}"#,
    "\n",
);

#[test]
fn verdicts_and_exit_statuses() {
    let ok = temp_file("ok.jsonl", OK);
    let bad = temp_file("bad.jsonl", &format!("{OK}{BAD_KEY_B}"));
    let garbage = temp_file("garbage.jsonl", "{not json\n");
    let page = std::env::temp_dir().join(format!("lincheck-cli-{}.html", std::process::id()));

    let (status, out) = lincheck(&[ok.to_str().unwrap()]);
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("  linearizable: 2 operations, 1 partition(s)"),
        "{out}"
    );
    assert!(
        out.contains("partition 0 (key \"a\"): linearizable"),
        "{out}"
    );

    let (status, out) = lincheck(&["--html", page.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains("partition 1 (key \"b\"): not-linearizable"),
        "{out}"
    );
    assert!(out.contains("timeline: "), "{out}");
    let html = std::fs::read_to_string(&page).expect("the timeline page");
    assert!(html.contains("<svg"));

    // Unknown (a zero budget) and unreadable files give 2, as do bad flags.
    let (status, out) = lincheck(&["--budget", "0", ok.to_str().unwrap()]);
    assert_eq!(status, 2, "{out}");
    assert!(out.contains("unknown (time budget)"), "{out}");
    let (status, out) = lincheck(&[ok.to_str().unwrap(), garbage.to_str().unwrap()]);
    assert_eq!(status, 2, "{out}");
    assert!(out.contains("error: line 1"), "{out}");
    assert_eq!(lincheck(&["--format", "nope", "x"]).0, 2);
    assert_eq!(lincheck(&[]).0, 2);

    // The reference formats, by extension or by --format.
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/linearizability");
    let etcd = data.join("etcd/etcd_002.log");
    assert_eq!(lincheck(&[etcd.to_str().unwrap()]).0, 0);
    let kv = data.join("kv/c10-bad.txt");
    assert_eq!(lincheck(&["--format", "kv", kv.to_str().unwrap()]).0, 1);

    for path in [ok, bad, garbage, page] {
        let _ = std::fs::remove_file(path);
    }
}
