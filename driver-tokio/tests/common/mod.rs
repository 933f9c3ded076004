//! What the real-process tests share: the runtime with a time limit, the
//! record of one client operation, the workload (appends, gets, and on
//! shared keys compare-and-swaps and deletes), and the two end-of-run checks
//! (every acknowledged append present exactly once and in order; the
//! history linearizable, every answer of every kind checked).

use std::time::Duration;

use driver_tokio::{Client, Swap};
use lincheck::{check, KvInput, KvModel, KvOutput, Operation, Verdict, UNKNOWN_RETURN};

/// Runs `f` on a 2-thread runtime, failing if it takes longer than `limit`.
pub fn run<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(limit, f)
            .await
            .expect("test exceeded its time limit");
    });
}

/// One client operation as the history records it.
#[derive(Clone)]
pub struct Record {
    pub client: u64,
    pub call: u64,
    /// When it returned; `None` if its outcome is unknown.
    pub ret: Option<u64>,
    pub input: KvInput,
    /// What it answered; `None` if its outcome is unknown.
    pub output: Option<KvOutput>,
}

/// Every acknowledged append of client `cli` (`acked[cli]`, in the order
/// acknowledged) is in key `k{cli}` exactly once and in order. Returns the
/// number of acknowledged appends.
pub async fn check_acked_appends(c: &mut Client, acked: &[Vec<String>]) -> usize {
    let mut total = 0;
    for (cli, values) in acked.iter().enumerate() {
        let v = c.get(&format!("k{cli}")).await.expect("final get");
        let mut last = 0;
        for value in values {
            let off = v
                .find(value.as_str())
                .unwrap_or_else(|| panic!("acknowledged {value:?} lost"));
            assert_eq!(
                v.rfind(value.as_str()),
                Some(off),
                "{value:?} applied twice"
            );
            assert!(off >= last, "{value:?} out of order");
            last = off;
        }
        total += values.len();
    }
    total
}

/// The history is linearizable (checked within `budget`). Returns its
/// number of operations.
pub fn check_linearizable(history: &[Record], budget: Duration) -> usize {
    let ops: Vec<Operation<KvInput, KvOutput>> = history
        .iter()
        .map(|r| Operation {
            client: r.client,
            call: r.call,
            ret: r.ret.unwrap_or(UNKNOWN_RETURN),
            input: r.input.clone(),
            output: r.output.clone().unwrap_or(KvOutput::Unknown),
        })
        .collect();
    let n = ops.len();
    match check(&KvModel, &ops, budget) {
        Verdict::Linearizable => {}
        other => panic!("history of {n} operations: {}", other.name()),
    }
    n
}

/// Client `cli`'s `j`th operation of the shared workload, timed from `t0`:
/// mostly an append of a value unique to (`cli`, `j`) to its own key
/// `k{cli}`, with every fourth a get of that key instead; and on the key
/// `s{cli % 2}`, which it shares with other clients, every eighth a
/// compare-and-swap to a value unique to (`cli`, `j`), expecting its own
/// previous swap's value there (or, every third time, the key unset), and
/// every sixteenth a delete. An acknowledged append's value is pushed to
/// `acked`. Returns the record and whether the call failed (its outcome
/// unknown: the caller should go on with a fresh session).
pub async fn workload_op(
    c: &mut Client,
    cli: u64,
    j: u64,
    t0: std::time::Instant,
    acked: &mut Vec<String>,
) -> (Record, bool) {
    let key = format!("k{cli}");
    let shared = format!("s{}", cli % 2);
    let value = format!("x {cli} {j} y");
    let call = t0.elapsed().as_nanos() as u64;
    let (input, result) = match j % 16 {
        3 | 7 | 11 | 15 => {
            let got = c.get(&key).await.map(KvOutput::Value);
            (KvInput::get(key), got)
        }
        5 | 13 => {
            let expected =
                (j >= 8 && !(j / 8).is_multiple_of(3)).then(|| format!("x {cli} {} y", j - 8));
            let expected = expected.as_deref();
            let swap = c.compare_and_swap(&shared, expected, &value).await;
            let output = swap.map(|s| match s {
                Swap::Swapped => KvOutput::Swapped,
                Swap::NotSwapped { current } => KvOutput::NotSwapped(current),
            });
            (KvInput::compare_and_swap(shared, expected, value), output)
        }
        9 => {
            let existed = c.delete(&shared).await.map(KvOutput::Existed);
            (KvInput::delete(shared), existed)
        }
        _ => {
            let appended = c.append(&key, &value).await;
            if appended.is_ok() {
                acked.push(value.clone());
            }
            let output = appended.map(|()| KvOutput::Value(String::new()));
            (KvInput::append(key, value), output)
        }
    };
    let ret = t0.elapsed().as_nanos() as u64;
    let failed = result.is_err();
    let record = Record {
        client: cli,
        call,
        ret: result.is_ok().then_some(ret),
        input,
        output: result.ok(),
    };
    (record, failed)
}

/// The workload's shared-key operations ran both ways: some acknowledged
/// swaps swapped and some did not, and some acknowledged delete found its
/// key set (each client's own sequence of them does so even alone, within
/// 30 operations). Returns those three counts.
#[allow(dead_code)] // not every test binary checks shared keys
pub fn check_shared_keys_used(history: &[Record]) -> (usize, usize, usize) {
    let count = |f: fn(&KvOutput) -> bool| {
        history
            .iter()
            .filter(|r| r.output.as_ref().is_some_and(f))
            .count()
    };
    let swapped = count(|o| *o == KvOutput::Swapped);
    let not_swapped = count(|o| matches!(o, KvOutput::NotSwapped(_)));
    let deleted = count(|o| *o == KvOutput::Existed(true));
    assert!(
        swapped > 0 && not_swapped > 0 && deleted > 0,
        "the shared-key operations must run both ways: {swapped} swapped, {not_swapped} not, {deleted} deletes of a set key"
    );
    (swapped, not_swapped, deleted)
}
