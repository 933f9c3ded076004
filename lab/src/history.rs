//! The record of every clerk operation of a KV test, with its call and
//! return times, for the linearizability check at the end and for export
//! (`HISTORY_DIR`).
//!
//! Invariant: stamps strictly increase in the order the tester takes them.
//! Every clerk runs on the test body's one thread, so that order is the real
//! order of calls and returns, even when a whole operation completes within
//! one instant of the clock (virtual time often stands still).

use std::time::Duration;

use kv_core::{Op, Outcome};

use lincheck::{
    check_steps, write_violation_html_to_temp, KvInput, KvModel, KvOutput, Operation, Verdict,
};

/// The lab's `linearizabilityCheckTimeout` (1 s), as a number of search
/// steps so that the verdict depends only on the history, never on how
/// loaded the machine is: the checker runs about 7–18 million steps per
/// second on the reference histories here (etcd_002: 659 437 steps in 95 ms),
/// so 10 million is about a second of real search. Running out fails the test
/// (the Go tests pass it).
pub const LINEARIZABILITY_STEPS: u64 = 10_000_000;

/// One recorded clerk operation (times in nanoseconds since the run began).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryOp {
    /// The test's client number (the Go `cli`).
    pub client: u64,
    /// When the clerk was called.
    pub call: u64,
    /// When it returned.
    #[serde(rename = "return")]
    pub ret: u64,
    /// "get", "put" or "append".
    pub op: &'static str,
    /// The key.
    pub key: String,
    /// The value written ("" for get).
    pub value: String,
    /// What a get returned ("" for put and append).
    pub output: String,
}

/// An operation called and not yet returned ([`History::called`]).
pub struct PendingOp {
    client: u64,
    call: u64,
    op: &'static str,
    key: String,
    value: String,
}

/// Every completed clerk operation of a test, in return order.
#[derive(Default)]
pub struct History {
    ops: Vec<HistoryOp>,
    last_stamp: u64,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// A timestamp: `now` in nanoseconds, nudged forward so that it is
    /// strictly later than the previous one.
    fn stamp(&mut self, now: Duration) -> u64 {
        let t = (now.as_nanos() as u64).max(self.last_stamp + 1);
        self.last_stamp = t;
        t
    }

    /// Test client `client` calls its clerk with `op` at `now`.
    pub fn called(&mut self, now: Duration, client: u64, op: &Op) -> PendingOp {
        let call = self.stamp(now);
        let (kind, key, value) = match op {
            Op::Get { key } => ("get", key.clone(), String::new()),
            Op::Put { key, value } => ("put", key.clone(), value.clone()),
            Op::Append { key, value } => ("append", key.clone(), value.clone()),
            Op::Delete { .. } | Op::CompareAndSwap { .. } => {
                unreachable!("the lab's clerks only get, put and append: {op:?}")
            }
        };
        PendingOp {
            client,
            call,
            op: kind,
            key,
            value,
        }
    }

    /// The clerk returned `outcome` at `now`: records the operation and
    /// returns what the Go wrapper returns (a get's value, else "").
    pub fn returned(&mut self, now: Duration, pending: PendingOp, outcome: Outcome) -> String {
        let output = match outcome {
            Outcome::Value(v) => v,
            Outcome::Done => String::new(),
            Outcome::SessionExpired => panic!("clerk session expired"),
            other => unreachable!("a get, put or append answered {other:?}"),
        };
        let ret = self.stamp(now);
        let out = if pending.op == "get" {
            output.clone()
        } else {
            String::new()
        };
        self.ops.push(HistoryOp {
            client: pending.client,
            call: pending.call,
            ret,
            op: pending.op,
            key: pending.key,
            value: pending.value,
            output: out,
        });
        output
    }

    /// The operations so far, in return order.
    pub fn ops(&self) -> &[HistoryOp] {
        &self.ops
    }

    /// How many operations completed.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True before the first operation completes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks the whole history with the KV model (per-key partitioning,
    /// porcupine's search). Unlike the Go tests, running out of the budget
    /// ([`LINEARIZABILITY_STEPS`]) fails. On a violation, writes the
    /// offending key's history as an HTML timeline to the temp directory
    /// (`<run_name>-history`) and names it in the failure.
    pub fn check_linearizable(&self, run_name: &str) {
        let ops: Vec<Operation<KvInput, KvOutput>> = self
            .ops
            .iter()
            .map(|h| Operation {
                client: h.client,
                call: h.call,
                ret: h.ret,
                input: match h.op {
                    "get" => KvInput::get(h.key.clone()),
                    "put" => KvInput::put(h.key.clone(), h.value.clone()),
                    _ => KvInput::append(h.key.clone(), h.value.clone()),
                },
                output: KvOutput::Value(h.output.clone()),
            })
            .collect();
        let started = std::time::Instant::now();
        let (verdict, steps) = check_steps(&KvModel, &ops, LINEARIZABILITY_STEPS);
        match verdict {
            Verdict::Linearizable => println!(
                "linearizability: {} operations checked in {steps} steps, {:.1} ms",
                ops.len(),
                started.elapsed().as_secs_f64() * 1e3
            ),
            Verdict::NotLinearizable(v) => {
                let name = format!("{run_name}-history");
                match write_violation_html_to_temp(&name, &KvModel, &v) {
                    Ok(path) => panic!("history is not linearizable; timeline: {}", path.display()),
                    Err(e) => {
                        panic!("history is not linearizable (could not write the timeline: {e})")
                    }
                }
            }
            Verdict::Unknown => panic!(
                "linearizability check ran out of its budget of {LINEARIZABILITY_STEPS} search steps ({:?}, {} operations): a failure here",
                started.elapsed(),
                ops.len()
            ),
        }
    }

    /// With `HISTORY_DIR` set, writes the history so far as JSON lines
    /// (`client`, `call`, `return`, `op`, `key`, `value`, `output`) to
    /// `<HISTORY_DIR>/<run_name>.jsonl`.
    pub fn export(&self, run_name: &str) {
        let Some(dir) = std::env::var_os("HISTORY_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let path = dir.join(format!("{run_name}.jsonl"));
        let mut text = String::new();
        for op in &self.ops {
            text.push_str(&serde_json::to_string(op).expect("history encodes"));
            text.push('\n');
        }
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            panic!("HISTORY_DIR: cannot write {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    #[test]
    fn stamps_strictly_increase_while_the_clock_stands_still() {
        let mut h = History::new();
        let t = Duration::from_nanos(1_000);
        let a = h.called(t, 0, &put("k", "1"));
        let b = h.called(
            t,
            1,
            &Op::Get {
                key: "k".to_string(),
            },
        );
        assert_eq!(h.returned(t, a, Outcome::Done), "");
        assert_eq!(h.returned(t, b, Outcome::Value("1".into())), "1");
        let ops = h.ops();
        assert_eq!((ops[0].call, ops[1].call), (1_000, 1_001));
        assert_eq!((ops[0].ret, ops[1].ret), (1_002, 1_003));
        assert_eq!((ops[0].op, ops[0].value.as_str()), ("put", "1"));
        assert_eq!((ops[1].op, ops[1].output.as_str()), ("get", "1"));
        assert_eq!(h.len(), 2);
        h.check_linearizable("tester-unit");
    }

    #[test]
    #[should_panic(expected = "clerk session expired")]
    fn an_expired_session_fails_the_test() {
        let mut h = History::new();
        let a = h.called(Duration::ZERO, 0, &put("k", "v"));
        h.returned(Duration::ZERO, a, Outcome::SessionExpired);
    }
}
