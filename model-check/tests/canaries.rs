//! The search catches bugs planted in the core (`raft_core::canary`). The
//! tests are built with the `canaries` feature (the crate's dev-dependency on
//! itself), so `cargo test -p model-check` runs these.
//!
//! Two planted bugs break an invariant within a few choices of the initial
//! state; the others need a stage set first (an election, a rival leader),
//! given as a prefix, and the search finds the rest on its own.
#![cfg(feature = "canaries")]

mod common;

use common::{drive, ELECT_N0};
use model_check::{explore, format_trace, Choice, Limits, Options, Report};
use raft_core::canary::Canary;

/// The search with `canary` planted, after a control run without it that
/// must find nothing.
fn search(canary: Canary, prefix_steps: &[&[&str]], depth: usize) -> Report {
    search_with(canary, prefix_steps, depth, false)
}

/// [`search`], with pre-vote on in every node if `pre_vote`.
fn search_with(canary: Canary, prefix_steps: &[&[&str]], depth: usize, pre_vote: bool) -> Report {
    let control = run(None, prefix_steps, depth, pre_vote);
    assert!(control.violations.is_empty(), "the control run broke");
    run(Some(canary), prefix_steps, depth, pre_vote)
}

fn run(canary: Option<Canary>, prefix_steps: &[&[&str]], depth: usize, pre_vote: bool) -> Report {
    let limits = Limits {
        canary,
        drops: false,
        pre_vote,
        ..Limits::default()
    };
    let prefix: Vec<Choice> = drive(limits, prefix_steps);
    let opts = Options {
        depth,
        limits,
        threads: 2,
        prefix,
        ..Options::default()
    };
    let report = explore(&opts, &mut |_| {});
    for found in &report.violations {
        let mut flag = canary.map_or(String::new(), |c| format!(" --canary {c:?}"));
        if pre_vote {
            flag += " --pre-vote";
        }
        eprintln!(
            "{}\nmodel-check --no-drop{flag} --replay \"{}\"",
            found.violation,
            format_trace(&found.trace)
        );
    }
    report
}

fn caught(report: &Report, words: &str) {
    let found = report
        .violations
        .first()
        .expect("the planted bug is caught");
    assert!(found.violation.what.contains(words), "{}", found.violation);
}

#[test]
fn a_vote_sent_before_it_is_durable() {
    let report = search(Canary::VoteBeforePersist, &[], 4);
    caught(&report, "RequestVoteReply");
}

#[test]
fn applying_what_is_not_committed() {
    let report = search(Canary::ApplyUncommitted, &[], 8);
    caught(&report, "applied <= commit");
}

#[test]
fn a_leader_counting_its_own_unsynced_write() {
    let report = search(Canary::AckBeforePersist, ELECT_N0, 7);
    caught(&report, "is durable on only 1 nodes");
}

#[test]
fn a_follower_taking_a_stale_leaders_append() {
    let stage: &[&[&str]] = &[
        // n0 leads term 1 and sends c1 towards n2, where it stays in flight.
        &["deliver", "n0 -> n2 AppendEntries"],
        &["persist:2"],
        &["deliver", "n2 -> n0 AppendEntriesReply"],
        &["propose:0"],
        // n1 wins term 2 with n2's vote and replicates c2 towards n2.
        &["timer:1"],
        &["persist:1"],
        &["deliver", "n1 -> n2 RequestVote"],
        &["persist:2"],
        &["deliver", "n2 -> n1 RequestVoteReply"],
        &["deliver", "n1 -> n2 AppendEntries", "term: 2"],
        &["deliver", "n2 -> n1 AppendEntriesReply", "term: 2"],
        &["propose:1"],
    ];
    let steps: Vec<&[&str]> = ELECT_N0.iter().chain(stage).copied().collect();
    let report = search(Canary::AcceptStaleAppend, &steps, 6);
    // The shared safety checker sees it first: n2, having acknowledged n1's
    // entry in term 2, drops it for the stale leader's. (Before that checker
    // ran here, this crate's own invariant caught it: an entry counted
    // committed was durable on only one node.)
    caught(&report, "acknowledged entries kept");
}

/// Figure 8 of the Raft paper, on three nodes.
#[test]
fn committing_an_older_terms_entry_by_counting() {
    let stage: &[&[&str]] = &[
        // n0 leads term 1 and appends c1 only locally.
        &["deliver", "n0 -> n2 AppendEntries"],
        &["persist:2"],
        &["deliver", "n2 -> n0 AppendEntriesReply"],
        &["propose:0"],
        &["persist:0"],
        // n1 leads term 2 with n2's vote and appends c2 only locally.
        &["timer:1"],
        &["persist:1"],
        &["deliver", "n1 -> n2 RequestVote", "term: 2"],
        &["persist:2"],
        &["deliver", "n2 -> n1 RequestVoteReply", "term: 2"],
        &["deliver", "n1 -> n2 AppendEntries", "term: 2"],
        &["deliver", "n2 -> n1 AppendEntriesReply", "term: 2"],
        &["propose:1"],
        &["persist:1"],
        // n0 leads term 3 with n2's vote and copies c1 to n2.
        &["deliver", "n1 -> n0 RequestVote", "term: 2"],
        &["persist:0"],
        &["timer:0"],
        &["persist:0"],
        &["deliver", "n0 -> n2 RequestVote", "term: 3"],
        &["persist:2"],
        &["deliver", "n2 -> n0 RequestVoteReply", "term: 3"],
        &["deliver", "n0 -> n1 RequestVote", "term: 3"],
        &["persist:1"],
        &["deliver", "n0 -> n2 AppendEntries", "term: 3"],
        &["deliver", "n2 -> n0 AppendEntriesReply", "Rejected"],
        &[
            "deliver",
            "n0 -> n2 AppendEntries",
            "term: 3",
            "entries: [Entry",
        ],
        &["persist:2"],
        &["deliver", "n2 -> n0 AppendEntriesReply", "Accepted"],
        // The search finds n1 winning term 4 without c1, which n0 counted
        // committed.
    ];
    let steps: Vec<&[&str]> = ELECT_N0.iter().chain(stage).copied().collect();
    let report = search(Canary::CommitOlderTermByCounting, &steps, 6);
    caught(&report, "lacks committed entry");
}

/// A pre-candidate that raises its own term: the shared safety checker's
/// term-origin check sees it within a few choices of the start.
#[test]
fn a_pre_vote_that_bumps_the_term() {
    let report = search_with(Canary::PreVoteBumpsTerm, &[], 4, true);
    caught(&report, "term origin");
}

/// A membership change taken by a new leader before an entry of its term
/// committed (`--membership`): the shared checker's own-term rule.
#[test]
fn a_change_before_the_leaders_own_entry_commits() {
    let limits = |canary| Limits {
        canary,
        drops: false,
        membership: true,
        ..Limits::default()
    };
    let search = |canary| {
        let opts = Options {
            depth: 2,
            limits: limits(canary),
            threads: 2,
            prefix: drive(limits(canary), ELECT_N0),
            ..Options::default()
        };
        explore(&opts, &mut |_| {})
    };
    assert!(search(None).violations.is_empty(), "the control run broke");
    caught(
        &search(Some(Canary::ChangeBeforeOwnTermCommit)),
        "own-term commit before a change",
    );
}

/// A follower answering a read from its own commit index (`--reads`): once
/// node 0 has won term 1, the search proposes, commits on node 1's
/// acknowledgement, and asks node 2 (which has not heard of the commit)
/// for a read: the read misses the committed entry.
#[test]
fn a_follower_reading_its_own_commit_index() {
    let limits = |canary| Limits {
        canary,
        drops: false,
        max_reads: 1,
        max_proposals: 1,
        ..Limits::default()
    };
    // Node 0 leads term 1; node 1 takes a proposal, and both have it
    // durable: node 0 is one step from counting it committed.
    let stage: Vec<&[&str]> = ELECT_N0
        .iter()
        .copied()
        .chain([
            &["deliver", "n0 -> n1 AppendEntries"][..],
            &["deliver", "n1 -> n0 AppendEntriesReply"][..],
            &["propose:0"][..],
            &["deliver", "n0 -> n1 AppendEntries"][..],
            &["persist:1"][..],
            &["persist:0"][..],
        ])
        .collect();
    let search = |canary| {
        let opts = Options {
            depth: 4,
            limits: limits(canary),
            threads: 2,
            prefix: drive(limits(canary), &stage),
            ..Options::default()
        };
        explore(&opts, &mut |_| {})
    };
    assert!(search(None).violations.is_empty(), "the control run broke");
    caught(&search(Some(Canary::FollowerReadsOwnCommit)), "stale read");
}
