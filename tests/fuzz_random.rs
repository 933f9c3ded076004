//! Runs a fuzzing property (`fuzz_props.rs`) on seeded random inputs, on
//! stable and without libFuzzer: no coverage guidance, but a quick way to
//! put many inputs through the step properties. Not part of CI.
//!
//! ```sh
//! cargo run -p lab-tests --example fuzz_random -- step_cluster 20000
//! cargo run -p lab-tests --example fuzz_random -- step_events 20000 --seed 7 --max-len 4096
//! cargo run -p lab-tests --example fuzz_random -- step_cluster 20000 --structured
//! ```
//!
//! Input `n` of seed `s` is the same bytes on every run: random bytes (their
//! length drawn below `--max-len`, default 4096), or with `--structured`
//! a valid setup followed by random bytes (`step_events`) or by up to
//! `--max-len / 8` ops drawn with weights that keep a cluster moving
//! (`step_cluster`; `fuzz_props::random_cluster_input`): uniform bytes pick
//! every op alike and seldom get a forwarded read answered. Each input that violates the property
//! is written to `target/fuzz_random/<target>-<s>-<n>` (replay it with
//! `fuzz_trace`); the run goes on and exits non-zero at the end. With
//! `--keep <dir>`, the first input that makes a forwarded read ready, the
//! first that serves a lease read in the step that asked, and the first
//! that serves a read as leader are copied there, three different inputs
//! (seeds for the corpus). Prints the read counts over all inputs.

#[path = "fuzz_props.rs"]
mod fuzz_props;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// SplitMix64: the bytes of input `n` from `seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn input(target: &str, structured: bool, seed: u64, n: u64, max_len: usize) -> Vec<u8> {
    let mut rng = Rng(seed ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let len = (rng.next() % (max_len as u64 + 1)) as usize;
    if structured && target == "step_cluster" {
        return fuzz_props::random_cluster_input(&mut || rng.next(), 1 + len / 8);
    }
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        data.extend_from_slice(&rng.next().to_le_bytes());
    }
    data.truncate(len);
    if structured && target == "step_events" {
        return fuzz_props::random_events_input(&mut || rng.next(), &data);
    }
    data
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: fuzz_random <step_events|step_cluster|decode_message|decode_wire> <inputs> [--seed S] [--max-len N] [--structured] [--keep DIR]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(target), Some(Ok(count))) = (args.first(), args.get(1).map(|c| c.parse::<u64>()))
    else {
        return usage();
    };
    let (mut seed, mut max_len, mut keep) = (1u64, 4096usize, None::<PathBuf>);
    let mut structured = false;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        if flag == "--structured" {
            structured = true;
            continue;
        }
        let value = rest.next();
        match (flag.as_str(), value) {
            ("--seed", Some(v)) => seed = v.parse().unwrap_or(seed),
            ("--max-len", Some(v)) => max_len = v.parse().unwrap_or(max_len),
            ("--keep", Some(v)) => keep = Some(PathBuf::from(v)),
            _ => return usage(),
        }
    }
    let property: fn(&[u8]) = match target.as_str() {
        "step_events" => fuzz_props::step_events,
        "step_cluster" => fuzz_props::step_cluster,
        "decode_message" => fuzz_props::decode_message,
        "decode_wire" => |data| fuzz_props::decode_wire(data, fuzz_props::unmetered),
        _ => return usage(),
    };
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz_random");
    let mut kept = [false; 3];
    let mut failures = Vec::new();
    let started = Instant::now();
    for n in 0..count {
        let data = input(target, structured, seed, n, max_len);
        let before = fuzz_props::read_counts();
        if catch_unwind(AssertUnwindSafe(|| property(&data))).is_err() {
            std::fs::create_dir_all(&out).expect("target/fuzz_random");
            let file = out.join(format!("{target}-{seed}-{n}"));
            std::fs::write(&file, &data).expect("write the failing input");
            eprintln!("input {n} fails: {}", file.display());
            failures.push(file);
            continue;
        }
        if let Some(dir) = &keep {
            let after = fuzz_props::read_counts();
            let new = [
                after.ready_forwarded > before.ready_forwarded,
                after.ready_lease_at_once > before.ready_lease_at_once,
                after.ready_leader > before.ready_leader,
            ];
            let names = ["forwarded-read", "lease-read", "read-index"];
            // One name per input: the first it earns.
            if let Some(k) = (0..3).find(|&k| new[k] && !kept[k]) {
                {
                    kept[k] = true;
                    std::fs::create_dir_all(dir).expect("the --keep directory");
                    let file = dir.join(format!("seed-{}", names[k]));
                    std::fs::write(&file, &data).expect("write a kept input");
                    println!("kept input {n} as {}", file.display());
                }
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{target}: {count} {} inputs (seed {seed}, --max-len {max_len}) in {:.1} s, {} failing",
        if structured {
            "structured"
        } else {
            "random-byte"
        },
        elapsed.as_secs_f64(),
        failures.len()
    );
    println!("reads: {:?}", fuzz_props::read_counts());
    println!("snapshot transfers: {:?}", fuzz_props::transfer_counts());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
