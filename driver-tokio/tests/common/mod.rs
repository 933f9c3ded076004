//! What the real-process tests share: the runtime with a time limit, the
//! record of one client operation, and the two end-of-run checks (every
//! acknowledged append present exactly once and in order; the history
//! linearizable).

use std::time::Duration;

use driver_tokio::Client;
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
    pub output: Option<String>,
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
            output: r.output.clone().map_or(KvOutput::Unknown, KvOutput::Value),
        })
        .collect();
    let n = ops.len();
    match check(&KvModel, &ops, budget) {
        Verdict::Linearizable => {}
        other => panic!("history of {n} operations: {}", other.name()),
    }
    n
}

/// Client `cli`'s `j`th operation of the shared workload: an append of a
/// value unique to (`cli`, `j`) to its key `k{cli}`, every fourth a get of
/// that key instead, timed from `t0`. An acknowledged append's value is
/// pushed to `acked`. Returns the record and whether the call failed (its
/// outcome unknown: the caller should go on with a fresh session).
pub async fn workload_op(
    c: &mut Client,
    cli: u64,
    j: u64,
    t0: std::time::Instant,
    acked: &mut Vec<String>,
) -> (Record, bool) {
    let key = format!("k{cli}");
    let value = format!("x {cli} {j} y");
    let is_get = j % 4 == 3;
    let input = if is_get {
        KvInput::get(key.clone())
    } else {
        KvInput::append(key.clone(), value.clone())
    };
    let call = t0.elapsed().as_nanos() as u64;
    let result = if is_get {
        c.get(&key).await.map(Some)
    } else {
        c.append(&key, &value).await.map(|()| None)
    };
    let ret = t0.elapsed().as_nanos() as u64;
    let failed = result.is_err();
    if result.is_ok() && !is_get {
        acked.push(value);
    }
    let record = Record {
        client: cli,
        call,
        ret: result.is_ok().then_some(ret),
        input,
        output: result.ok().map(Option::unwrap_or_default),
    };
    (record, failed)
}
