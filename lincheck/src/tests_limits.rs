//! The check's bounds and its interleaving of partitions: a hard partition
//! does not hide a quick violation in a later one, the time budget is
//! honoured, the memory limit gives a clean unknown, and a long append-only
//! history on one key is cheap per step.

use std::time::{Duration, Instant};

use super::*;

type KvOperation = Operation<KvInput, KvOutput>;

fn kv(client: u64, call: u64, ret: u64, input: KvInput, output: &str) -> KvOperation {
    Operation {
        client,
        call,
        ret,
        input,
        output: KvOutput::Value(output.to_string()),
    }
}

/// `n` appends to `key`, all concurrent, then a get no order of them can
/// answer: the search tries every order (no two reach the same state), so
/// it cannot finish.
fn hard_partition(key: &str, n: u64, t0: u64) -> Vec<KvOperation> {
    let mut ops: Vec<KvOperation> = (0..n)
        .map(|i| kv(i, t0, t0 + 100, KvInput::append(key, format!("<{i}>")), ""))
        .collect();
    ops.push(kv(
        n,
        t0 + 200,
        t0 + 201,
        KvInput::get(key),
        "nothing like it",
    ));
    ops
}

/// A put of "1" then a get of "2", one after the other: not linearizable,
/// found in a couple of steps.
fn quick_violation(key: &str, t0: u64) -> Vec<KvOperation> {
    vec![
        kv(100, t0, t0 + 1, KvInput::put(key, "1"), ""),
        kv(100, t0 + 2, t0 + 3, KvInput::get(key), "2"),
    ]
}

/// Wall time of `f`, with what it returned.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[test]
fn a_hard_first_partition_does_not_hide_a_quick_violation_in_a_later_one() {
    let mut history = hard_partition("hard", 30, 0);
    history.extend(quick_violation("easy", 1_000));
    let options = CheckOptions::with_time_budget(Duration::from_secs(60));
    let (report, took) = timed(|| check_with(&KvModel, &history, &options));
    // The violation needs 3 steps, and the hard partition one slice first.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(report.steps <= SLICE_STEPS + 10, "{report:?}");
    let v = report.verdict.violation().expect("not linearizable");
    assert_eq!(v.partition, 1);
    assert_eq!(report.unknown_reason, None);
    let verdicts: Vec<PartitionVerdict> = report.partitions.iter().map(|p| p.verdict).collect();
    assert_eq!(
        verdicts,
        [
            PartitionVerdict::Unknown(UnknownReason::Stopped),
            PartitionVerdict::NotLinearizable
        ]
    );
    assert_eq!(report.partitions[0].steps, SLICE_STEPS);
    assert_eq!(report.partitions[1].first_op, 31);
    assert_eq!(report.partitions[1].ops, 2);
    // The same with a step budget, as the simulator checks.
    let (verdict, steps) = check_steps(&KvModel, &history, 10_000_000);
    assert!(verdict.violation().is_some_and(|v| v.partition == 1));
    assert_eq!(steps, report.steps);
}

#[test]
fn every_partition_is_searched_when_asked_and_answers_for_itself() {
    let mut history = quick_violation("a", 0);
    history.push(kv(7, 10, 11, KvInput::put("b", "x"), ""));
    history.push(kv(7, 12, 13, KvInput::get("b"), "x"));
    history.extend(hard_partition("c", 30, 20));
    let options = CheckOptions {
        max_steps: Some(50_000),
        stop_at_first_violation: false,
        ..CheckOptions::default()
    };
    let report = check_with(&KvModel, &history, &options);
    let verdicts: Vec<PartitionVerdict> = report.partitions.iter().map(|p| p.verdict).collect();
    assert_eq!(
        verdicts,
        [
            PartitionVerdict::NotLinearizable,
            PartitionVerdict::Linearizable,
            PartitionVerdict::Unknown(UnknownReason::StepBudget)
        ]
    );
    assert_eq!(report.steps, 50_000);
    assert!(report.verdict.violation().is_some_and(|v| v.partition == 0));
    // Without the violating key the verdict is unknown, for the budget.
    let report = check_with(&KvModel, &history[2..], &options);
    assert!(matches!(report.verdict, Verdict::Unknown));
    assert_eq!(report.unknown_reason, Some(UnknownReason::StepBudget));
}

#[test]
fn the_time_budget_is_honoured() {
    // Budget 1 s; the bound, 1.5 s, leaves room for a loaded machine: the
    // clock is read every slice (a few milliseconds at most) and while the
    // memo grows, and the memo is freed (tens of milliseconds) after.
    let history = hard_partition("k", 40, 0);
    let budget = Duration::from_secs(1);
    let (report, took) =
        timed(|| check_with(&KvModel, &history, &CheckOptions::with_time_budget(budget)));
    assert!(matches!(report.verdict, Verdict::Unknown), "{report:?}");
    assert_eq!(report.unknown_reason, Some(UnknownReason::TimeBudget));
    assert!(took >= budget, "took {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    eprintln!(
        "1 s budget: returned after {took:?} (report {:?}), {} steps, {} memo entries, {} MB",
        report.elapsed,
        report.steps,
        report.partitions[0].memo_entries,
        report.peak_bytes >> 20
    );
}

#[test]
fn the_memory_limit_gives_a_clean_unknown() {
    let history = hard_partition("k", 40, 0);
    let limit = 16 << 20;
    let options = CheckOptions {
        time_budget: Some(Duration::from_secs(60)),
        memory_limit_bytes: limit,
        ..CheckOptions::default()
    };
    let (report, took) = timed(|| check_with(&KvModel, &history, &options));
    assert!(matches!(report.verdict, Verdict::Unknown), "{report:?}");
    assert_eq!(report.unknown_reason, Some(UnknownReason::MemoryLimit));
    assert!(report.peak_bytes <= limit, "{report:?}");
    assert!(report.peak_bytes > limit / 4, "{report:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    eprintln!(
        "16 MB limit: stopped after {took:?}, {} steps, {} memo entries, {} bytes",
        report.steps, report.partitions[0].memo_entries, report.peak_bytes
    );
}

/// `clients` clients, each appending `per_client` distinct values to one
/// key back to back, all running at once; with `read_every`, a client reads
/// the key after every that many appends of its own. Each operation takes
/// effect at a pseudo-random point of its interval, and a read is answered
/// what that order gives, so the search must find the order of the appends
/// between two reads (by trying orders: the first it tries is call order).
fn append_only_history(clients: u64, per_client: u64, read_every: Option<u64>) -> Vec<KvOperation> {
    // Client c's j-th operation runs from 10 * (j * clients + c) for 25 ns,
    // overlapping the two or three operations called around it.
    let mut calls: Vec<(u64, u64, KvInput)> = Vec::new();
    for c in 0..clients {
        let mut t = 0;
        for j in 0..per_client {
            calls.push((
                10 * (t * clients + c),
                c,
                KvInput::append("k", format!("x {c} {j} y")),
            ));
            t += 1;
            if read_every.is_some_and(|r| (j + 1) % r == 0) {
                calls.push((10 * (t * clients + c), c, KvInput::get("k")));
                t += 1;
            }
        }
    }
    // The point where each takes effect: 1..=24 ns after its call.
    let point =
        |call: u64, c: u64| call + 1 + (call ^ (c * 0x9e37_79b9)).wrapping_mul(0x2545_f491) % 24;
    calls.sort_by_key(|&(call, c, _)| (point(call, c), c));
    let mut value = String::new();
    let mut ops: Vec<KvOperation> = calls
        .into_iter()
        .map(|(call, client, input)| {
            let output = match input.op {
                KvOp::Get => value.clone(),
                _ => {
                    value.push_str(&input.value);
                    String::new()
                }
            };
            kv(client, call, call + 25, input, &output)
        })
        .collect();
    ops.sort_by_key(|o| (o.call, o.client));
    ops
}

#[test]
fn a_long_append_only_history_on_one_key_is_cheap_per_step() {
    // 2,000 concurrent appends (10 clients) without reads, then with a read
    // every 100 appends per client, within 64 MB of estimated memory, then
    // with 10 M steps (the simulator's budget) within 512 MB: each within
    // 20 s of wall time, with an answer or a clean unknown. Before states
    // were shared, each step copied a value of up to 13 KB, and 10 M steps
    // took a minute.
    for (read_every, limit, max_steps) in [
        (None, 64 << 20, 2_000_000),
        (Some(100), 64 << 20, 2_000_000),
        (Some(100), 512 << 20, 10_000_000),
    ] {
        let history = append_only_history(10, 200, read_every);
        let options = CheckOptions {
            time_budget: Some(Duration::from_secs(20)),
            max_steps: Some(max_steps),
            memory_limit_bytes: limit,
            ..CheckOptions::default()
        };
        let (report, took) = timed(|| check_with(&KvModel, &history, &options));
        eprintln!(
            "{} ops, read every {read_every:?}, {} MB, {max_steps} steps: {} ({:?}) in {took:?}, \
             {} steps, {} memo entries, {} KB",
            history.len(),
            limit >> 20,
            report.verdict.name(),
            report.unknown_reason,
            report.steps,
            report.partitions[0].memo_entries,
            report.peak_bytes >> 10
        );
        assert!(report.peak_bytes <= limit, "{report:?}");
        assert!(took < Duration::from_secs(21), "took {took:?}");
        assert!(
            report.verdict.is_linearizable() || report.unknown_reason.is_some(),
            "{:?}",
            report.verdict.name()
        );
    }
    // Without reads the first order tried works: 2,000 steps.
    let history = append_only_history(10, 200, None);
    let (verdict, steps) = check_steps(&KvModel, &history, 10_000_000);
    assert!(verdict.is_linearizable());
    assert_eq!(steps, 2_000);
}

#[test]
fn a_long_sequential_history_is_linear_in_its_length() {
    // 200,000 operations one after another on one key: every step records a
    // new longest prefix, which must not cost the prefix's length each time.
    let mut history = Vec::new();
    let mut value = String::new();
    for i in 0..100_000u64 {
        let piece = format!("{}", i % 10);
        history.push(kv(
            0,
            4 * i,
            4 * i + 1,
            KvInput::append("k", piece.clone()),
            "",
        ));
        value.push_str(&piece);
        let read = if i % 1000 == 0 { value.as_str() } else { "" };
        let get = if i % 1000 == 0 {
            KvInput::get("k")
        } else {
            KvInput::append("k", "")
        };
        history.push(kv(0, 4 * i + 2, 4 * i + 3, get, read));
    }
    let (report, took) = timed(|| {
        check_with(
            &KvModel,
            &history,
            &CheckOptions::with_time_budget(Duration::from_secs(20)),
        )
    });
    assert!(report.verdict.is_linearizable(), "{report:?}");
    assert_eq!(report.steps, 200_000);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn long_partitions_store_set_windows_and_keep_their_verdicts() {
    // 3 clients, 100 appends each, a read every 2: 450 operations, past the
    // size (256) from which the memo stores windows of the linearized sets.
    let history = append_only_history(3, 100, Some(2));
    assert_eq!(history.len(), 450);
    let options = CheckOptions {
        time_budget: Some(Duration::from_secs(60)),
        memory_limit_bytes: 256 << 20,
        ..CheckOptions::default()
    };
    let report = check_with(&KvModel, &history, &options);
    assert!(report.verdict.is_linearizable(), "{report:?}");
    // The last read misses its last append: no order explains it.
    let mut bad = history.clone();
    let last_read = bad
        .iter()
        .rposition(|o| o.input.op == KvOp::Get)
        .expect("a read");
    let KvOutput::Value(v) = &bad[last_read].output else {
        unreachable!("reads are answered")
    };
    let cut = v[..v.len() - 1].rfind('x').expect("an append was read");
    bad[last_read].output = KvOutput::Value(v[..cut].to_string());
    let report = check_with(&KvModel, &bad, &options);
    let violation = report.verdict.violation().expect("not linearizable");
    assert!(violation.rejected.contains(&last_read));
}
