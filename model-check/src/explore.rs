//! Breadth-first search over traces, one depth level at a time.
//!
//! A state is stored as a node of a tree of choices (its parent's id and the
//! choice that leads from it), 8 bytes each; the set of visited states holds
//! their 128-bit hashes. To expand a state the world is rebuilt by replaying
//! its trace from the initial state (siblings share the replay of their
//! parent), then every enabled choice is tried on a copy, the invariants are
//! checked, and each new hash joins the next level.
//!
//! Levels are processed in blocks; the states of a block are expanded on
//! several threads and merged back in order, so the result (counts, ids,
//! the first violation) does not depend on the number of threads.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::choice::Choice;
use crate::invariants::Violation;
use crate::world::{Limits, World, NODES};

/// What to explore.
#[derive(Clone, Debug)]
pub struct Options {
    /// The longest trace, in choices.
    pub depth: usize,
    /// Stop once this many distinct states have been found.
    pub max_states: Option<u64>,
    /// What the environment may do.
    pub limits: Limits,
    /// Worker threads.
    pub threads: usize,
    /// Keep searching after the first violation (up to this many recorded).
    pub max_violations: usize,
    /// Start from the state this trace reaches instead of the initial one
    /// (`depth` counts the choices after it), to search deeper around an
    /// interesting state.
    pub prefix: Vec<Choice>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            depth: 8,
            max_states: None,
            limits: Limits::default(),
            threads: 1,
            max_violations: 1,
            prefix: Vec::new(),
        }
    }
}

/// Counters, reported as the search goes and at its end.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// The depth being generated (the level whose states are being found).
    pub depth: usize,
    /// States whose successors were generated.
    pub expanded: u64,
    /// Successors generated (choices made), duplicates included.
    pub transitions: u64,
    /// Distinct states found, the initial one included.
    pub distinct: u64,
    /// States of the level being expanded that are still waiting.
    pub frontier: u64,
    /// States found so far at the level being generated.
    pub found_at_depth: u64,
    /// Time since the search started.
    pub elapsed: Duration,
}

impl Stats {
    /// Distinct states per second.
    pub fn states_per_second(&self) -> f64 {
        self.distinct as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Transitions per second.
    pub fn transitions_per_second(&self) -> f64 {
        self.transitions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How far into the protocol the explored states reach: the highest value
/// of each quantity over all nodes of all distinct states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// The highest term.
    pub term: u64,
    /// The highest term with a leader.
    pub leader_term: u64,
    /// The longest log.
    pub log: u64,
    /// The highest commit index.
    pub commit: u64,
    /// The highest applied index.
    pub applied: u64,
}

impl Coverage {
    fn of(world: &World) -> Coverage {
        let mut c = Coverage::default();
        for n in 0..NODES {
            let node = world.node(n);
            c.term = c.term.max(node.term());
            if node.is_leader() {
                c.leader_term = c.leader_term.max(node.term());
            }
            c.log = c.log.max(node.log().last_index());
            c.commit = c.commit.max(node.commit_index());
            c.applied = c.applied.max(node.last_applied());
        }
        c
    }

    fn merge(&mut self, o: Coverage) {
        self.term = self.term.max(o.term);
        self.leader_term = self.leader_term.max(o.leader_term);
        self.log = self.log.max(o.log);
        self.commit = self.commit.max(o.commit);
        self.applied = self.applied.max(o.applied);
    }
}

/// A violation and the trace that reaches it.
#[derive(Clone, Debug)]
pub struct Found {
    /// The choices from the initial state (the prefix included); the last
    /// one breaks the invariant.
    pub trace: Vec<Choice>,
    /// What broke.
    pub violation: Violation,
}

/// The result of a search.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Final counters.
    pub stats: Stats,
    /// New distinct states found at each depth (index 0 is the initial state;
    /// the last level is partial if the search stopped early).
    pub new_per_depth: Vec<u64>,
    /// The deepest level with any state.
    pub max_depth: usize,
    /// How far into the protocol the distinct states reach.
    pub coverage: Coverage,
    /// The search stopped at `max_states` before finishing its last level.
    pub truncated: bool,
    /// Violations found, in search order.
    pub violations: Vec<Found>,
}

/// States per block: bounds the memory of a block's results.
const BLOCK: usize = 2048;

/// The tree of explored states: each one's parent and the choice from it.
struct Tree {
    parent: Vec<u32>,
    choice: Vec<Choice>,
}

impl Tree {
    fn push(&mut self, parent: u32, choice: Choice) -> u32 {
        let id = u32::try_from(self.parent.len()).expect("fewer than 2^32 states");
        self.parent.push(parent);
        self.choice.push(choice);
        id
    }

    fn trace(&self, mut id: u32) -> Vec<Choice> {
        let mut trace = Vec::new();
        while id != 0 {
            trace.push(self.choice[id as usize]);
            id = self.parent[id as usize];
        }
        trace.reverse();
        trace
    }
}

/// What one successor turned out to be.
enum Outcome {
    State(u128, Coverage),
    Broken(Violation),
}

/// Runs the search, calling `progress` about once a second.
pub fn explore(opts: &Options, progress: &mut dyn FnMut(&Stats)) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let mut stats = Stats::default();
    let root = match World::replay(opts.limits, &opts.prefix) {
        Ok(world) => world,
        Err(what) => {
            report.violations.push(Found {
                trace: opts.prefix.clone(),
                violation: Violation::new(what),
            });
            return report;
        }
    };
    let mut seen: HashSet<u128> = HashSet::new(); // membership only, never iterated
    seen.insert(root.key_hash());
    report.coverage = Coverage::of(&root);
    let mut tree = Tree {
        parent: vec![0],
        choice: vec![Choice::Drop(0)], // the root's, never read
    };
    stats.distinct = 1;
    report.new_per_depth.push(1);
    let mut frontier: Vec<u32> = vec![0];
    let mut last_progress = Instant::now();
    for depth in 1..=opts.depth {
        stats.depth = depth;
        stats.frontier = frontier.len() as u64;
        let mut next = Vec::new();
        let mut stop = false;
        for block in frontier.chunks(BLOCK) {
            let results = expand_block(&tree, block, opts);
            stats.expanded += block.len() as u64;
            stats.frontier -= block.len() as u64;
            for (parent, choice, outcome) in results {
                stats.transitions += 1;
                match outcome {
                    Outcome::State(hash, coverage) => {
                        if seen.insert(hash) {
                            report.coverage.merge(coverage);
                            next.push(tree.push(parent, choice));
                            stats.distinct += 1;
                        }
                    }
                    Outcome::Broken(violation) => {
                        let mut trace = opts.prefix.clone();
                        trace.extend(tree.trace(parent));
                        trace.push(choice);
                        report.violations.push(Found { trace, violation });
                    }
                }
            }
            stats.elapsed = started.elapsed();
            stats.found_at_depth = next.len() as u64;
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress(&stats);
                last_progress = Instant::now();
            }
            if report.violations.len() >= opts.max_violations.max(1) {
                report.violations.truncate(opts.max_violations.max(1));
                stop = true;
            } else if opts.max_states.is_some_and(|cap| stats.distinct >= cap) {
                report.truncated = true;
                stop = true;
            }
            if stop {
                break;
            }
        }
        report.new_per_depth.push(next.len() as u64);
        if next.is_empty() && !stop {
            break; // nothing is reachable in one more choice
        }
        report.max_depth = depth;
        if stop {
            break;
        }
        frontier = next;
    }
    stats.elapsed = started.elapsed();
    stats.frontier = 0;
    progress(&stats);
    report.stats = stats;
    report
}

/// Expands a block of states on `opts.threads` threads, results in order.
fn expand_block(tree: &Tree, block: &[u32], opts: &Options) -> Vec<(u32, Choice, Outcome)> {
    let threads = opts.threads.max(1);
    if threads == 1 || block.len() < 2 {
        return expand_all(tree, block, opts);
    }
    let chunk = block.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = block
            .chunks(chunk)
            .map(|part| s.spawn(move || expand_all(tree, part, opts)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a worker panicked outside step"))
            .collect()
    })
}

/// Expands states in order. Consecutive siblings reuse their parent's
/// replayed world.
fn expand_all(tree: &Tree, ids: &[u32], opts: &Options) -> Vec<(u32, Choice, Outcome)> {
    let replay = |id: u32| {
        let mut trace = opts.prefix.clone();
        trace.extend(tree.trace(id));
        World::replay(opts.limits, &trace).expect("explored states replay")
    };
    let mut out = Vec::new();
    let mut cached: Option<(u32, World)> = None;
    for &id in ids {
        let parent = tree.parent[id as usize];
        if id != 0 && cached.as_ref().is_none_or(|(p, _)| *p != parent) {
            cached = Some((parent, replay(parent)));
        }
        let world = if id == 0 {
            replay(0)
        } else {
            let (_, parent_world) = cached.as_ref().expect("just cached");
            let mut world = parent_world.clone();
            world
                .apply(tree.choice[id as usize])
                .expect("explored states replay");
            world
        };
        for choice in world.choices() {
            let mut child = world.clone();
            let outcome = match child.apply(choice) {
                Ok(()) => Outcome::State(child.key_hash(), Coverage::of(&child)),
                Err(v) => Outcome::Broken(v),
            };
            out.push((id, choice, outcome));
        }
    }
    out
}
