//! Hand-made histories with known verdicts, the parsers on small samples,
//! the HTML page, and a cross-check of the search against brute force on
//! random small histories.

use std::time::Duration;

use super::*;

const BUDGET: Duration = Duration::from_secs(5);

pub(crate) fn op<I, O>(client: u64, call: u64, ret: u64, input: I, output: O) -> Operation<I, O> {
    Operation {
        client,
        call,
        ret,
        input,
        output,
    }
}

pub(crate) type KvOperation = Operation<KvInput, KvOutput>;
type RegOperation = Operation<RegisterInput, RegisterOutput>;

pub(crate) fn put(client: u64, call: u64, ret: u64, key: &str, value: &str) -> KvOperation {
    op(
        client,
        call,
        ret,
        KvInput::put(key, value),
        KvOutput::Value(String::new()),
    )
}

fn append(client: u64, call: u64, ret: u64, key: &str, value: &str) -> KvOperation {
    op(
        client,
        call,
        ret,
        KvInput::append(key, value),
        KvOutput::Value(String::new()),
    )
}

pub(crate) fn get(client: u64, call: u64, ret: u64, key: &str, value: &str) -> KvOperation {
    op(
        client,
        call,
        ret,
        KvInput::get(key),
        KvOutput::Value(value.to_string()),
    )
}

fn open_put(client: u64, call: u64, key: &str, value: &str) -> KvOperation {
    op(
        client,
        call,
        UNKNOWN_RETURN,
        KvInput::put(key, value),
        KvOutput::Unknown,
    )
}

fn read(client: u64, call: u64, ret: u64, value: Option<i64>) -> RegOperation {
    op(
        client,
        call,
        ret,
        RegisterInput::Read,
        RegisterOutput::Read(value),
    )
}

fn write(client: u64, call: u64, ret: u64, value: i64) -> RegOperation {
    op(
        client,
        call,
        ret,
        RegisterInput::Write(value),
        RegisterOutput::Ok,
    )
}

fn open_write(client: u64, call: u64, value: i64) -> RegOperation {
    op(
        client,
        call,
        UNKNOWN_RETURN,
        RegisterInput::Write(value),
        RegisterOutput::Unknown,
    )
}

fn cas(
    client: u64,
    call: u64,
    ret: u64,
    from: i64,
    to: i64,
    output: RegisterOutput,
) -> RegOperation {
    op(client, call, ret, RegisterInput::Cas { from, to }, output)
}

fn kv_verdict(history: &[KvOperation]) -> Verdict<KvModel> {
    check(&KvModel, history, BUDGET)
}

fn reg_verdict(history: &[RegOperation]) -> Verdict<RegisterModel> {
    check(&RegisterModel, history, BUDGET)
}

pub(crate) fn assert_kv(history: &[KvOperation], linearizable: bool) {
    let verdict = kv_verdict(history);
    assert_eq!(
        verdict.is_linearizable(),
        linearizable,
        "{verdict:?} for {history:#?}"
    );
    assert!(!matches!(verdict, Verdict::Unknown));
}

fn assert_reg(history: &[RegOperation], linearizable: bool) {
    let verdict = reg_verdict(history);
    assert_eq!(
        verdict.is_linearizable(),
        linearizable,
        "{verdict:?} for {history:#?}"
    );
    assert!(!matches!(verdict, Verdict::Unknown));
}

#[test]
fn empty_history_is_linearizable() {
    assert_kv(&[], true);
    assert_reg(&[], true);
}

#[test]
fn sequential_histories() {
    assert_kv(
        &[
            put(0, 0, 1, "k", "a"),
            append(1, 2, 3, "k", "b"),
            get(0, 4, 5, "k", "ab"),
            put(1, 6, 7, "k", "c"),
            get(0, 8, 9, "k", "c"),
        ],
        true,
    );
    assert_kv(&[get(0, 0, 1, "k", "")], true);
    assert_kv(&[get(0, 0, 1, "k", "x")], false);
    assert_kv(&[put(0, 0, 1, "k", "a"), get(1, 2, 3, "k", "")], false);
    assert_kv(
        &[
            append(0, 0, 1, "k", "a"),
            append(0, 2, 3, "k", "b"),
            get(1, 4, 5, "k", "ba"),
        ],
        false,
    );
}

#[test]
fn violation_reports_the_longest_prefix_and_the_stuck_operations() {
    let history = [
        put(0, 0, 1, "k", "a"),
        put(1, 2, 3, "k", "b"),
        get(0, 4, 5, "k", "a"),
        get(1, 6, 7, "k", "b"),
    ];
    let verdict = kv_verdict(&history);
    let v = verdict.violation().expect("not linearizable");
    assert_eq!(v.partition, 0);
    assert_eq!(v.history_ids, vec![0, 1, 2, 3]);
    assert_eq!(v.longest_prefix, vec![0, 1]);
    assert!(v.state_after_prefix.as_ref().is_some_and(|s| s.eq_str("b")));
    assert_eq!(v.rejected, vec![2]);
    let text = v.describe(&KvModel);
    assert!(text.contains("get(\"k\") -> \"a\""), "{text}");
    assert_eq!(verdict.name(), "not-linearizable");
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // The put spans both reads: the old value, then the new one, is fine.
    assert_kv(
        &[
            put(0, 0, 10, "k", "x"),
            get(1, 1, 2, "k", ""),
            get(1, 3, 4, "k", "x"),
        ],
        true,
    );
    // But once a read has seen the new value, a later read cannot see the
    // old one.
    assert_kv(
        &[
            put(0, 0, 10, "k", "x"),
            get(1, 1, 2, "k", "x"),
            get(1, 3, 4, "k", ""),
        ],
        false,
    );
    // Two concurrent appends, read in the order opposite to their calls.
    assert_kv(
        &[
            append(0, 0, 10, "k", "a"),
            append(1, 1, 9, "k", "b"),
            get(2, 11, 12, "k", "ba"),
        ],
        true,
    );
}

#[test]
fn equal_timestamps_count_as_concurrent() {
    // The get is called at the instant the put returns: either order.
    assert_kv(&[put(0, 0, 5, "k", "a"), get(1, 5, 6, "k", "")], true);
    assert_kv(&[put(0, 0, 5, "k", "a"), get(1, 6, 7, "k", "")], false);
}

#[test]
fn unknown_outcome_writes_may_or_may_not_take_effect() {
    // Taken effect before the read.
    assert_reg(&[open_write(0, 0, 1), read(1, 10, 11, Some(1))], true);
    // Never taken effect.
    assert_reg(
        &[
            open_write(0, 0, 1),
            read(1, 10, 11, None),
            read(1, 12, 13, None),
        ],
        true,
    );
    // Taken effect between the reads.
    assert_reg(
        &[
            open_write(0, 0, 1),
            read(1, 10, 11, None),
            read(1, 12, 13, Some(1)),
        ],
        true,
    );
    // Once seen it cannot be undone.
    assert_reg(
        &[
            open_write(0, 0, 1),
            read(1, 10, 11, Some(1)),
            read(1, 12, 13, None),
        ],
        false,
    );
    // It cannot take effect before its call.
    assert_reg(&[read(1, 0, 1, Some(1)), open_write(0, 5, 1)], false);
    // The same for the key/value model.
    assert_kv(
        &[
            open_put(0, 0, "k", "v"),
            get(1, 3, 4, "k", ""),
            get(1, 5, 6, "k", "v"),
        ],
        true,
    );
    assert_kv(
        &[
            open_put(0, 0, "k", "v"),
            get(1, 3, 4, "k", "v"),
            get(1, 5, 6, "k", ""),
        ],
        false,
    );
    // Two open writes, observed in the order opposite to their calls.
    assert_reg(
        &[
            open_write(0, 0, 1),
            open_write(1, 1, 2),
            read(2, 5, 6, Some(2)),
            read(2, 7, 8, Some(1)),
        ],
        true,
    );
    assert_reg(
        &[
            open_write(0, 0, 1),
            open_write(1, 1, 2),
            read(2, 5, 6, Some(2)),
            read(2, 7, 8, Some(1)),
            read(2, 9, 10, Some(2)),
        ],
        false,
    );
}

#[test]
fn keys_are_checked_apart() {
    // Interleaved keys, each legal on its own.
    let legal = [
        put(0, 0, 1, "a", "1"),
        put(1, 0, 1, "b", "2"),
        get(0, 2, 3, "b", "2"),
        get(1, 2, 3, "a", "1"),
    ];
    assert_kv(&legal, true);
    assert_eq!(KvModel.partition(&legal), vec![vec![0, 3], vec![1, 2]]);
    // Only key b is wrong; the violation holds only its operations.
    let history = [
        put(0, 0, 1, "a", "1"),
        put(1, 0, 1, "b", "2"),
        get(0, 2, 3, "a", "1"),
        get(1, 2, 3, "b", "3"),
        append(2, 4, 5, "c", "x"),
        get(2, 6, 7, "c", "y"),
    ];
    let verdict = kv_verdict(&history);
    let v = verdict.violation().expect("key b is not linearizable");
    assert_eq!(v.partition, 1, "b is the second key to appear");
    assert_eq!(v.history_ids, vec![1, 3]);
    assert!(v.ops.iter().all(|o| o.input.key == "b"));
    assert_eq!(v.rejected, vec![1]);
}

#[test]
fn compare_and_set() {
    use RegisterOutput::{Failed, Ok, Unknown};
    let w1 = write(0, 0, 1, 1);
    // Success needs the expected value.
    assert_reg(
        &[w1.clone(), cas(1, 2, 3, 1, 2, Ok), read(0, 4, 5, Some(2))],
        true,
    );
    assert_reg(&[cas(1, 0, 1, 1, 2, Ok)], false);
    assert_reg(&[w1.clone(), cas(1, 2, 3, 3, 2, Ok)], false);
    // Failure needs any other value, nil included, and changes nothing.
    assert_reg(&[cas(1, 0, 1, 1, 2, Failed), read(0, 2, 3, None)], true);
    assert_reg(
        &[
            w1.clone(),
            cas(1, 2, 3, 5, 2, Failed),
            read(0, 4, 5, Some(1)),
        ],
        true,
    );
    assert_reg(&[w1.clone(), cas(1, 2, 3, 1, 2, Failed)], false);
    // A failed cas overlapping the write may precede it.
    assert_reg(
        &[
            write(0, 0, 10, 1),
            cas(1, 2, 3, 1, 2, Failed),
            read(1, 11, 12, Some(1)),
        ],
        true,
    );
    // Unknown cas: may succeed, or not.
    let open_cas = cas(1, 2, UNKNOWN_RETURN, 1, 2, Unknown);
    assert_reg(
        &[
            w1.clone(),
            open_cas.clone(),
            read(0, 5, 6, Some(1)),
            read(0, 7, 8, Some(2)),
        ],
        true,
    );
    assert_reg(
        &[
            w1.clone(),
            open_cas.clone(),
            read(0, 5, 6, Some(1)),
            read(0, 7, 8, Some(1)),
        ],
        true,
    );
    assert_reg(
        &[
            w1.clone(),
            open_cas.clone(),
            read(0, 5, 6, Some(2)),
            read(0, 7, 8, Some(1)),
        ],
        false,
    );
    // An unknown cas whose expected value never appears cannot write.
    assert_reg(
        &[write(0, 0, 1, 3), open_cas, read(0, 5, 6, Some(2))],
        false,
    );
    // A read's output must be a read.
    assert_reg(&[op(0, 0, 1, RegisterInput::Read, Ok)], false);
}

#[test]
fn zero_budget_gives_unknown() {
    let history = [put(0, 0, 1, "k", "a"), get(1, 2, 3, "k", "a")];
    assert!(matches!(
        check(&KvModel, &history, Duration::ZERO),
        Verdict::Unknown
    ));
    assert_eq!(check(&KvModel, &history, Duration::ZERO).name(), "unknown");
    assert!(check(&KvModel, &[], Duration::ZERO).is_linearizable());
}

#[test]
fn budget_runs_out_in_the_middle_of_a_search() {
    // Many concurrent open writes of distinct values and reads that no
    // order satisfies: an exponential search the budget must cut short.
    let mut history: Vec<RegOperation> = (0..40).map(|i| open_write(i, 0, i as i64)).collect();
    history.push(read(100, 1, 2, Some(1000)));
    let verdict = check(&RegisterModel, &history, Duration::from_millis(1));
    assert!(matches!(verdict, Verdict::Unknown), "{verdict:?}");
}

#[test]
#[should_panic(expected = "returns (1) before its call (2)")]
fn return_before_call_is_a_caller_bug() {
    let _ = kv_verdict(&[put(0, 2, 1, "k", "a")]);
}

#[test]
fn verdicts_are_deterministic() {
    let history = [
        put(0, 0, 10, "k", "a"),
        append(1, 1, 9, "k", "b"),
        put(2, 2, 8, "k", "c"),
        get(3, 11, 12, "k", "ab"),
        get(0, 13, 14, "k", "cab"),
    ];
    let first = format!("{:?}", kv_verdict(&history));
    for _ in 0..5 {
        assert_eq!(format!("{:?}", kv_verdict(&history)), first);
    }
}

#[test]
fn html_page_draws_the_violation() {
    let history = [
        put(0, 0, 1, "k", "a"),
        put(1, 2, 3, "k", "<b>"),
        get(0, 4, 5, "k", "a"),
        open_put(2, 1, "k", "z"),
    ];
    let verdict = kv_verdict(&history);
    let v = verdict.violation().expect("not linearizable");
    let path = write_violation_html_to_temp("linearizability-unit-test", &KvModel, v)
        .expect("write the page");
    assert!(path.ends_with("linearizability-unit-test.html"));
    let page = std::fs::read_to_string(&path).expect("read it back");
    let _ = std::fs::remove_file(&path);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        page.matches("class=\"client-row\"").count(),
        3,
        "one row per client"
    );
    assert!(page.contains("get(&quot;k&quot;) -&gt; &quot;a&quot;"));
    assert!(page.contains("put(&quot;k&quot;, &quot;&lt;b&gt;&quot;)"));
    assert!(!page.contains("<b>"), "text is escaped");
    assert!(page.contains("op rejected"));
    assert!(page.contains("op prefix"));
    assert!(page.contains(" open\""), "the open put is drawn as open");
    for external in ["<script", "<link", "src=", "url(", "@import"] {
        assert!(
            !page.contains(external),
            "no external resources: {external}"
        );
    }
}

#[test]
fn parses_etcd_logs() {
    let log = "\
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 1\t:invoke\t:write\t4
INFO  jepsen.util - 2\t:invoke\t:cas\t[4 5]
INFO  jepsen.util - 0\t:ok\t:read\tnil
INFO  jepsen.util - 1\t:ok\t:write\t4
INFO  jepsen.util - 2\t:fail\t:cas\t[4 5]
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:fail\t:read\t:timed-out
INFO  jepsen.util - 1\t:invoke\t:cas\t[4 6]
INFO  jepsen.util - 1\t:info\t:cas\t:timed-out
INFO  jepsen.util - 3\t:invoke\t:write\t7
INFO  jepsen.util - 4\t:invoke\t:read\tnil
INFO  jepsen.util - 5\t:invoke\t:read\tnil
INFO  jepsen.util - 5\t:ok\t:read\t6
";
    let ops = parse_etcd_log(log).expect("parses");
    // The same log with runs of spaces between the fields parses alike.
    let spaced = log.replace('\t', "   ");
    assert_eq!(parse_etcd_log(&spaced).expect("spaces parse"), ops);
    assert_eq!(
        ops,
        vec![
            read(0, 1, 4, None),
            write(1, 2, 5, 4),
            cas(2, 3, 6, 4, 5, RegisterOutput::Failed),
            cas(1, 9, UNKNOWN_RETURN, 4, 6, RegisterOutput::Unknown),
            open_write(3, 11, 7),
            read(5, 13, 14, Some(6)),
        ]
    );
    // The failed cas overlaps the write, so it may precede it; the open cas
    // explains the read of 6.
    assert!(check(&RegisterModel, &ops, BUDGET).is_linearizable());

    let bad = "INFO  jepsen.util - 0\t:ok\t:read\tnil\n";
    let e = parse_etcd_log(bad).expect_err("nothing pending");
    assert_eq!(e.line, 1);
    assert!(parse_etcd_log("INFO  jepsen.util - 0\t:invoke\t:cas\t[1]\n").is_err());
    assert!(
        parse_etcd_log("INFO  jepsen.util - 0 :invoke :read\n").is_err(),
        "no value"
    );
}

#[test]
fn parses_kv_edn() {
    let text = r#"{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :invoke, :f :get, :key "0", :value nil}
{:process 0, :type :ok, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :ok, :f :get, :key "0", :value "x 0 0 y"}

{:process 2, :type :invoke, :f :put, :key "1", :value "a \"q\", b"}
{:process 2, :type :ok, :f :put, :key "1", :value "a \"q\", b"}
{:process 3, :type :invoke, :f :get, :key "1", :value nil}
{:process 4, :type :invoke, :f :put, :key "1", :value "z"}
"#;
    let ops = parse_kv_edn(text).expect("parses");
    assert_eq!(
        ops,
        vec![
            append(0, 1, 3, "0", "x 0 0 y"),
            get(1, 2, 4, "0", "x 0 0 y"),
            put(2, 6, 7, "1", "a \"q\", b"),
            open_put(4, 9, "1", "z"),
        ]
    );
    assert!(check(&KvModel, &ops, BUDGET).is_linearizable());
    assert!(parse_kv_edn("{:process 0, :type :invoke, :f :get, :key \"0\"").is_err());
    assert!(parse_kv_edn("{:process 0, :type :ok, :f :get, :key \"0\", :value nil}").is_err());
}

/// A small deterministic generator for the random histories.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        bitset::mix64(self.0)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Linearizability by brute force: some order of all completed operations
/// and any of the open ones, respecting real time (a before b whenever a
/// returns strictly before b is called), that the model accepts.
fn brute_force<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>]) -> bool {
    fn go<M: Model>(
        model: &M,
        ops: &[Operation<M::Input, M::Output>],
        done: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        if ops.iter().zip(done.iter()).all(|(o, &d)| d || o.is_open()) {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            let blocked = (0..ops.len()).any(|j| !done[j] && j != i && ops[j].ret < ops[i].call);
            if blocked {
                continue;
            }
            if let Some(next) = model.step(state, &ops[i].input, &ops[i].output) {
                done[i] = true;
                let ok = go(model, ops, done, &next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    let mut done = vec![false; ops.len()];
    go(model, ops, &mut done, &model.init())
}

/// Random intervals on a coarse clock (so ties happen); one op in five open.
pub(crate) fn random_times(rng: &mut SplitMix) -> (u64, u64) {
    let call = rng.below(8);
    if rng.below(5) == 0 {
        (call, UNKNOWN_RETURN)
    } else {
        (call, call + rng.below(5))
    }
}

/// Checks that a violation is self-consistent: the prefix replays to the
/// reported state and every rejected operation is rejected there.
fn assert_violation_consistent<M: Model>(model: &M, v: &Violation<M>) {
    let mut state = model.init();
    for &i in &v.longest_prefix {
        state = model
            .step(&state, &v.ops[i].input, &v.ops[i].output)
            .expect("the prefix replays");
    }
    assert_eq!(state, v.state_after_prefix);
    assert!(!v.rejected.is_empty());
    for &i in &v.rejected {
        assert!(model
            .step(&state, &v.ops[i].input, &v.ops[i].output)
            .is_none());
    }
}

/// The search agrees with brute force on 3000 random small histories that
/// `history` draws from a generator seeded with `seed`, of which more than
/// 300 are linearizable and more than 300 not; each violation is
/// self-consistent.
pub(crate) fn agrees_with_brute_force<M: Model>(
    model: &M,
    seed: u64,
    mut history: impl FnMut(&mut SplitMix) -> Vec<Operation<M::Input, M::Output>>,
) {
    let mut rng = SplitMix(seed);
    let (mut legal, mut illegal) = (0, 0);
    for _ in 0..3000 {
        let history = history(&mut rng);
        let expected = brute_force(model, &history);
        let verdict = check(model, &history, BUDGET);
        assert_eq!(verdict.is_linearizable(), expected, "{history:#?}");
        match verdict {
            Verdict::Linearizable => legal += 1,
            Verdict::NotLinearizable(v) => {
                assert_violation_consistent(model, &v);
                illegal += 1;
            }
            Verdict::Unknown => panic!("tiny history ran out of budget"),
        }
    }
    assert!(
        legal > 300 && illegal > 300,
        "{legal} legal, {illegal} illegal"
    );
}

#[test]
fn agrees_with_brute_force_on_random_kv_histories() {
    let values = ["", "a", "b", "ab", "ba", "aa"];
    agrees_with_brute_force(&KvModel, 7, |rng| {
        let n = 1 + rng.below(6) as usize;
        (0..n)
            .map(|c| {
                let (call, ret) = random_times(rng);
                let input = match rng.below(3) {
                    0 => KvInput::get("k"),
                    1 => KvInput::put("k", values[1 + rng.below(2) as usize]),
                    _ => KvInput::append("k", values[1 + rng.below(2) as usize]),
                };
                let output = if ret == UNKNOWN_RETURN {
                    KvOutput::Unknown
                } else if input.op == KvOp::Get {
                    KvOutput::Value(values[rng.below(values.len() as u64) as usize].into())
                } else {
                    KvOutput::Value(String::new())
                };
                op(c as u64, call, ret, input, output)
            })
            .collect()
    });
}

#[test]
fn agrees_with_brute_force_on_random_register_histories() {
    agrees_with_brute_force(&RegisterModel, 11, |rng| {
        let n = 1 + rng.below(7) as usize;
        (0..n)
            .map(|c| {
                let (call, ret) = random_times(rng);
                let value = |rng: &mut SplitMix| rng.below(3) as i64;
                let input = match rng.below(3) {
                    0 => RegisterInput::Read,
                    1 => RegisterInput::Write(value(rng)),
                    _ => RegisterInput::Cas {
                        from: value(rng),
                        to: value(rng),
                    },
                };
                let output = match (ret == UNKNOWN_RETURN, input) {
                    (true, _) => RegisterOutput::Unknown,
                    (false, RegisterInput::Read) => {
                        RegisterOutput::Read(Some(value(rng)).filter(|_| rng.below(4) != 0))
                    }
                    (false, RegisterInput::Write(_)) => RegisterOutput::Ok,
                    (false, RegisterInput::Cas { .. }) => {
                        if rng.below(2) == 0 {
                            RegisterOutput::Ok
                        } else {
                            RegisterOutput::Failed
                        }
                    }
                };
                op(c as u64, call, ret, input, output)
            })
            .collect()
    });
}
