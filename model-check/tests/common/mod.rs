//! Helpers to steer the model by hand.

#![allow(dead_code)] // each test file uses its own subset

use model_check::{Choice, Limits, World};

/// The first enabled choice whose name and description contain every one of
/// `words` (for example `["deliver", "n0 -> n1 RequestVote"]`).
pub fn pick(world: &World, words: &[&str]) -> Choice {
    world
        .choices()
        .into_iter()
        .find(|&c| {
            let text = format!("{c} {}", world.describe(c));
            words.iter().all(|w| text.contains(w))
        })
        .unwrap_or_else(|| panic!("no choice matches {words:?}:\n{}", world.summary()))
}

/// The trace that makes, at each step, the first choice matching the words.
pub fn drive(limits: Limits, steps: &[&[&str]]) -> Vec<Choice> {
    let mut world = World::initial(limits).unwrap();
    let mut trace = Vec::new();
    for words in steps {
        let choice = pick(&world, words);
        world.apply(choice).unwrap();
        trace.push(choice);
    }
    trace
}

/// Node 0 wins term 1 with node 1's vote.
pub const ELECT_N0: &[&[&str]] = &[
    &["timer:0"],
    &["persist:0"],
    &["deliver", "n0 -> n1 RequestVote"],
    &["persist:1"],
    &["deliver", "n1 -> n0 RequestVoteReply"],
];
