//! The key/value model's delete and compare-and-swap: hand-made histories
//! with known verdicts (unset is not "", a failed swap reports what it
//! found, two swaps from one value cannot both win, open ones may or may
//! not take effect), and the search against brute force on random small
//! histories that mix them with gets and puts.

use super::tests::{
    agrees_with_brute_force, assert_kv, get, op, put, random_times, KvOperation, SplitMix,
};
use super::*;

fn delete(client: u64, call: u64, ret: u64, key: &str, existed: bool) -> KvOperation {
    op(
        client,
        call,
        ret,
        KvInput::delete(key),
        KvOutput::Existed(existed),
    )
}

fn swap(
    client: u64,
    call: u64,
    ret: u64,
    (expected, value): (Option<&str>, &str),
    output: KvOutput,
) -> KvOperation {
    op(
        client,
        call,
        ret,
        KvInput::compare_and_swap("k", expected, value),
        output,
    )
}

fn not_swapped(current: Option<&str>) -> KvOutput {
    KvOutput::NotSwapped(current.map(str::to_string))
}

#[test]
fn deletes_say_whether_the_key_was_set() {
    let history = [
        delete(0, 0, 1, "k", false),
        put(0, 2, 3, "k", ""),
        delete(0, 4, 5, "k", true),
        get(0, 6, 7, "k", ""),
        delete(0, 8, 9, "k", false),
    ];
    assert_kv(&history, true);
    assert_kv(&[delete(0, 0, 1, "k", true)], false);
    assert_kv(
        &[put(0, 0, 1, "k", "a"), delete(0, 2, 3, "k", false)],
        false,
    );
    // A delete makes a later get read "", not the old value.
    let deleted = [put(0, 0, 1, "k", "a"), delete(0, 2, 3, "k", true)];
    assert_kv(&[&deleted[..], &[get(1, 4, 5, "k", "a")]].concat(), false);
    assert_kv(&[&deleted[..], &[get(1, 4, 5, "k", "")]].concat(), true);
    // Of two concurrent deletes of a set key, one finds it.
    let both = [delete(1, 2, 9, "k", true), delete(2, 2, 9, "k", true)];
    assert_kv(&[&deleted[..1], &both].concat(), false);
    let one = [delete(1, 2, 9, "k", true), delete(2, 2, 9, "k", false)];
    assert_kv(&[&deleted[..1], &one].concat(), true);
    // An open delete may take effect, or not.
    let open = op(
        1,
        2,
        UNKNOWN_RETURN,
        KvInput::delete("k"),
        KvOutput::Unknown,
    );
    for read in ["", "a"] {
        let history = [
            put(0, 0, 1, "k", "a"),
            open.clone(),
            get(0, 5, 6, "k", read),
        ];
        assert_kv(&history, true);
    }
    // A delete's output must be a delete's.
    let wrong = op(
        0,
        0,
        1,
        KvInput::delete("k"),
        KvOutput::Value(String::new()),
    );
    assert_kv(&[wrong], false);
}

#[test]
fn swaps_need_the_expected_value_and_unset_is_not_empty() {
    use KvOutput::Swapped;
    let from_unset = swap(0, 0, 1, (None, "a"), Swapped);
    assert_kv(&[from_unset.clone(), get(0, 2, 3, "k", "a")], true);
    assert_kv(&[swap(0, 0, 1, (Some(""), "a"), Swapped)], false);
    assert_kv(&[swap(0, 0, 1, (Some(""), "a"), not_swapped(None))], true);
    let empty = put(0, 0, 1, "k", "");
    assert_kv(&[empty.clone(), swap(0, 2, 3, (None, "a"), Swapped)], false);
    let found_empty = swap(0, 2, 3, (None, "a"), not_swapped(Some("")));
    assert_kv(&[empty.clone(), found_empty.clone()], true);
    assert_kv(&[empty.clone(), found_empty, get(0, 4, 5, "k", "")], true);
    assert_kv(&[empty, swap(0, 2, 3, (Some(""), "a"), Swapped)], true);
    // A failed swap reports the value it found, and could not have swapped.
    let x = put(0, 0, 1, "k", "x");
    let found = |current| swap(0, 2, 3, (Some("y"), "a"), not_swapped(current));
    assert_kv(&[x.clone(), found(Some("x"))], true);
    assert_kv(&[x.clone(), found(Some("z"))], false);
    assert_kv(&[x.clone(), found(None)], false);
    let refused = swap(0, 2, 3, (Some("x"), "a"), not_swapped(Some("x")));
    assert_kv(&[x.clone(), refused], false);
    // Of two concurrent swaps from one value, one wins; the other sees it.
    let a = swap(1, 0, 5, (None, "a"), Swapped);
    assert_kv(&[a.clone(), swap(2, 0, 5, (None, "b"), Swapped)], false);
    let saw_a = swap(2, 0, 5, (None, "b"), not_swapped(Some("a")));
    assert_kv(&[a.clone(), saw_a], true);
    assert_kv(&[a, swap(2, 0, 5, (None, "b"), not_swapped(None))], false);
    // An open swap takes effect if it may, and only then.
    let open = |expected| swap(1, 2, UNKNOWN_RETURN, (expected, "a"), KvOutput::Unknown);
    assert_kv(&[x.clone(), open(Some("x")), get(0, 5, 6, "k", "a")], true);
    assert_kv(&[x.clone(), open(Some("x")), get(0, 5, 6, "k", "x")], true);
    assert_kv(&[x.clone(), open(Some("y")), get(0, 5, 6, "k", "a")], false);
    assert_kv(&[x, open(None), get(0, 5, 6, "k", "a")], false);
    // A swap's output must be a swap's.
    assert_kv(
        &[swap(0, 0, 1, (None, "a"), KvOutput::Existed(false))],
        false,
    );
}

#[test]
fn descriptions_name_deletes_and_swaps() {
    let described = [
        (
            KvInput::delete("k"),
            KvOutput::Existed(true),
            r#"delete("k") -> existed true"#,
        ),
        (KvInput::delete("k"), KvOutput::Unknown, r#"delete("k") ?"#),
        (
            KvInput::compare_and_swap("k", None, "a"),
            KvOutput::Swapped,
            r#"cas("k", None, "a") -> swapped"#,
        ),
        (
            KvInput::compare_and_swap("k", Some("b"), "a"),
            not_swapped(Some("c")),
            r#"cas("k", Some("b"), "a") -> not swapped, Some("c")"#,
        ),
    ];
    for (input, output, text) in described {
        assert_eq!(KvModel.describe_operation(&input, &output), text);
    }
    assert_eq!(KvModel.describe_state(&None), "unset");
}

#[test]
fn agrees_with_brute_force_on_random_histories_with_deletes_and_swaps() {
    let values = ["", "a", "b"];
    let pick = |rng: &mut SplitMix| -> Option<&str> {
        let i = rng.below(values.len() as u64 + 1) as usize;
        values.get(i).copied()
    };
    agrees_with_brute_force(&KvModel, 13, |rng| {
        let n = 1 + rng.below(6) as usize;
        (0..n)
            .map(|c| {
                let (call, ret) = random_times(rng);
                let (input, output) = match rng.below(4) {
                    0 => {
                        let read = pick(rng).unwrap_or("a");
                        (KvInput::get("k"), KvOutput::Value(read.into()))
                    }
                    1 => {
                        let value = pick(rng).unwrap_or("b");
                        (KvInput::put("k", value), KvOutput::Value(String::new()))
                    }
                    2 => (KvInput::delete("k"), KvOutput::Existed(rng.below(2) == 0)),
                    _ => {
                        let expected = pick(rng);
                        let input = KvInput::compare_and_swap("k", expected, "b");
                        let output = match pick(rng) {
                            Some("") => KvOutput::Swapped,
                            current => KvOutput::NotSwapped(current.map(str::to_string)),
                        };
                        (input, output)
                    }
                };
                let output = if ret == UNKNOWN_RETURN {
                    KvOutput::Unknown
                } else {
                    output
                };
                op(c as u64, call, ret, input, output)
            })
            .collect()
    });
}
