//! The bounded search, small enough for `cargo test --workspace` in a debug
//! build; `cargo run --release -p model-check -- --depth 14` goes deeper.

mod common;

use common::{drive, pick, ELECT_N0};
use model_check::{explore, format_trace, Choice, Limits, Options, Report, World};
use raft_core::Role;

fn search(depth: usize, limits: Limits) -> Report {
    search_from(depth, limits, Vec::new(), "")
}

/// The search to `depth` after `prefix`, printing each violation with the
/// command (`model-check {flags}--replay ...`) that replays it.
fn search_from(depth: usize, limits: Limits, prefix: Vec<Choice>, flags: &str) -> Report {
    let opts = Options {
        depth,
        limits,
        threads: 2,
        prefix,
        ..Options::default()
    };
    let report = explore(&opts, &mut |_| {});
    for found in &report.violations {
        eprintln!(
            "violation: {}\nreplay: model-check {flags}--replay \"{}\"",
            found.violation,
            format_trace(&found.trace)
        );
    }
    report
}

/// The search found no violation, reached the full `depth`, and covered
/// more than 10,000 distinct states.
fn assert_safe(report: &Report, depth: usize) {
    assert!(report.violations.is_empty(), "an invariant broke");
    assert_eq!(report.max_depth, depth);
    assert!(
        report.stats.distinct > 10_000,
        "only {} states",
        report.stats.distinct
    );
}

/// The whole search to `depth` under `limits` is safe (`assert_safe`) and
/// was not cut short.
fn assert_all_safe(depth: usize, limits: Limits) {
    let report = search(depth, limits);
    assert_safe(&report, depth);
    assert!(!report.truncated);
}

#[test]
fn every_state_within_eight_choices_is_safe() {
    assert_all_safe(8, Limits::default());
}

/// The same with pre-vote on: a pre-vote round before each candidacy, and
/// voters that refuse while they hear from a leader.
#[test]
fn every_state_within_eight_choices_with_pre_vote_is_safe() {
    assert_all_safe(
        8,
        Limits {
            pre_vote: true,
            ..Limits::default()
        },
    );
}

#[test]
fn every_state_within_seven_choices_with_a_crash_and_duplicates_is_safe() {
    let limits = Limits {
        max_crashes: 1,
        duplicates: true,
        ..Limits::default()
    };
    let report = search(7, limits);
    assert!(report.violations.is_empty(), "an invariant broke");
    assert_eq!(report.max_depth, 7);
    assert!(
        report.stats.distinct > 10_000,
        "only {} states",
        report.stats.distinct
    );
}

/// Around the state where node 0 has just won term 1, deep enough to
/// replicate, commit and apply entries and to elect a rival.
#[test]
fn every_state_within_seven_choices_of_a_new_leader_is_safe() {
    let prefix = drive(Limits::default(), ELECT_N0);
    // Losing a message is the same as never delivering it, so leave drops
    // out and spend the depth on deliveries.
    let limits = Limits {
        drops: false,
        ..Limits::default()
    };
    let report = search_from(7, limits, prefix, "--no-drop ");
    assert_safe(&report, 7);
    // It gets as far as an applied commit and a later leader.
    let c = report.coverage;
    assert!(c.applied >= 1 && c.leader_term >= 2, "{c:?}");
}

/// Reads (`--reads`): around the state where node 0 has just won term 1,
/// two client reads may be asked of any node (a follower forwards its read
/// to the leader) between replicating and committing an entry; every read
/// answered covers every entry counted committed before it was asked.
#[test]
fn every_state_within_seven_choices_of_a_new_leader_with_reads_is_safe() {
    let limits = Limits {
        drops: false,
        max_reads: 2,
        max_proposals: 1,
        ..Limits::default()
    };
    let prefix = drive(limits, ELECT_N0);
    let report = search_from(7, limits, prefix, "--no-drop --reads 2 --proposals 1 ");
    assert_safe(&report, 7);
}

/// One membership change (`--membership`): after node 0 has won term 1 and
/// committed an entry of it, the operator may ask it to remove any node,
/// itself included, and every state within eight more choices is safe,
/// with the configuration rules of the shared checker. The search gets as
/// far as the removal committing.
#[test]
fn every_state_within_eight_choices_of_a_removal_is_safe() {
    let limits = Limits {
        drops: false,
        max_proposals: 1,
        membership: true,
        ..Limits::default()
    };
    let commit: &[&[&str]] = &[
        &["deliver", "n0 -> n1 AppendEntries"],
        &["deliver", "n1 -> n0 AppendEntriesReply"],
        &["propose:0"],
        &["persist:0"],
        &["deliver", "n0 -> n1 AppendEntries", "entries: [Entry"],
        &["persist:1"],
        &["deliver", "n1 -> n0 AppendEntriesReply", "Accepted"],
    ];
    let steps: Vec<&[&str]> = ELECT_N0.iter().chain(commit).copied().collect();
    let prefix = drive(limits, &steps);
    // The leader is ready: it takes a removal at once.
    let mut world = World::replay(limits, &prefix).unwrap();
    world.apply(Choice::RemoveMember(0, 2)).unwrap();
    assert!(!world.node(0).membership().contains(2));
    let report = search_from(8, limits, prefix, "--no-drop --proposals 1 --membership ");
    assert_safe(&report, 8);
}

#[test]
fn the_count_does_not_depend_on_threads() {
    let run = |threads| {
        let opts = Options {
            depth: 6,
            threads,
            ..Options::default()
        };
        let r = explore(&opts, &mut |_| {});
        (r.stats.distinct, r.stats.transitions, r.new_per_depth)
    };
    assert_eq!(run(1), run(3));
}

/// The model reaches the interesting states: an election and a commit, and
/// the trace that reaches them replays to the same state.
#[test]
fn a_hand_driven_trace_elects_commits_and_replays() {
    let mut world = World::initial(Limits::default()).unwrap();
    let mut trace = Vec::new();
    let steps: &[&[&str]] = &[
        // The leader probes with an empty append before it streams entries.
        &["deliver", "n0 -> n1 AppendEntries"],
        &["deliver", "n1 -> n0 AppendEntriesReply"],
        &["propose:0"],
        &["persist:0"],
        &["deliver", "n0 -> n1 AppendEntries", "entries: [Entry"],
        &["persist:1"],
        &["deliver", "n1 -> n0 AppendEntriesReply", "Accepted"],
    ];
    for words in ELECT_N0.iter().chain(steps) {
        let choice = pick(&world, words);
        world.apply(choice).unwrap();
        trace.push(choice);
    }
    assert_eq!(world.node(0).role(), Role::Leader);
    assert_eq!(world.node(0).commit_index(), 1);
    assert_eq!(world.node(0).last_applied(), 1);
    let again = World::replay(Limits::default(), &trace).unwrap();
    assert_eq!(again.key_hash(), world.key_hash());
    assert_eq!(again.summary(), world.summary());
}

#[test]
fn a_choice_that_is_not_enabled_is_refused_on_replay() {
    let err = World::replay(Limits::default(), &[Choice::Propose(0)]).unwrap_err();
    assert!(err.contains("not enabled"), "{err}");
}
