//! `model-check`: run the bounded exhaustive search from the command line.
//!
//! ```text
//! model-check --depth D [--max-states N] [--crash | --crashes C] [--proposals K]
//!             [--no-drop] [--dup] [--pre-vote] [--membership] [--reads R] [--threads T] [--keep-going N] [--from TRACE]
//!             [--canary NAME]   (with `--features canaries`)
//! model-check --replay "timer:0 persist:0 deliver:1 ..." [--crash ...]
//! ```
//!
//! Exits with status 1 if an invariant broke, 2 on bad arguments.

use std::process::ExitCode;

use model_check::{explore, format_trace, parse_trace, Limits, Options, Stats, World};
use raft_core::canary::Canary;

const USAGE: &str = "usage: model-check --depth D [--max-states N] [--crash | --crashes C] \
[--proposals K] [--no-drop] [--dup] [--pre-vote] [--membership] [--reads R] [--threads T] [--keep-going N] [--from TRACE] \
[--canary NAME]\n       \
model-check --replay TRACE [same environment flags as the search that found it]";

struct Args {
    opts: Options,
    replay: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut opts = Options {
        depth: 10,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Options::default()
    };
    let mut replay = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{v:?}: {e}"));
        match arg.as_str() {
            "--depth" => opts.depth = number(value("--depth")?)? as usize,
            "--max-states" => opts.max_states = Some(number(value("--max-states")?)?),
            "--crash" => opts.limits.max_crashes = 1,
            "--crashes" => opts.limits.max_crashes = small(number(value("--crashes")?)?)?,
            "--proposals" => opts.limits.max_proposals = small(number(value("--proposals")?)?)?,
            "--no-drop" => opts.limits.drops = false,
            "--dup" => opts.limits.duplicates = true,
            "--pre-vote" => opts.limits.pre_vote = true,
            "--membership" => opts.limits.membership = true,
            "--reads" => opts.limits.max_reads = small(number(value("--reads")?)?)?,
            "--threads" => opts.threads = number(value("--threads")?)?.max(1) as usize,
            "--keep-going" => opts.max_violations = number(value("--keep-going")?)? as usize,
            "--replay" => replay = Some(value("--replay")?),
            "--from" => opts.prefix = parse_trace(&value("--from")?)?,
            "--canary" => opts.limits.canary = Some(canary(&value("--canary")?)?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(Args { opts, replay })
}

fn canary(name: &str) -> Result<Canary, String> {
    if !cfg!(feature = "canaries") {
        return Err("--canary needs a build with `--features canaries`".into());
    }
    Canary::ALL
        .iter()
        .copied()
        .find(|c| format!("{c:?}") == name)
        .ok_or_else(|| format!("no canary {name:?}; there are {:?}", Canary::ALL))
}

fn small(n: u64) -> Result<u8, String> {
    u8::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match args.replay {
        Some(trace) => replay(args.opts.limits, &trace),
        None => search(&args.opts),
    }
}

fn search(opts: &Options) -> ExitCode {
    let l = opts.limits;
    println!(
        "model-check: 3 nodes, depth {}, proposals {}, crashes {}, drops {}, duplicates {}, \
         max states {}, {} threads{}{}",
        opts.depth,
        l.max_proposals,
        l.max_crashes,
        l.drops,
        l.duplicates,
        opts.max_states
            .map_or("none".to_string(), |n| n.to_string()),
        opts.threads,
        if opts.prefix.is_empty() {
            String::new()
        } else {
            format!(", from \"{}\"", format_trace(&opts.prefix))
        },
        l.canary
            .map_or(String::new(), |c| format!(", CANARY {c:?} planted"))
    );
    let report = explore(opts, &mut |s: &Stats| {
        println!(
            "  depth {:>2}  found {:>10} (frontier {:>10} left)  expanded {:>10}  distinct {:>11}  \
             {:>7.0} states/s  {:>6.1}s",
            s.depth,
            s.found_at_depth,
            s.frontier,
            s.expanded,
            s.distinct,
            s.states_per_second(),
            s.elapsed.as_secs_f64()
        );
    });
    let s = &report.stats;
    println!("new distinct states per depth: {:?}", report.new_per_depth);
    println!(
        "done: max depth {}{}, {} distinct states, {} expanded, {} transitions, {:.2}s, \
         {:.0} states/s, {:.0} transitions/s",
        report.max_depth,
        if report.truncated {
            " (stopped at --max-states)"
        } else {
            ""
        },
        s.distinct,
        s.expanded,
        s.transitions,
        s.elapsed.as_secs_f64(),
        s.states_per_second(),
        s.transitions_per_second()
    );
    let c = report.coverage;
    println!(
        "coverage: highest term {}, highest term with a leader {}, longest log {}, \
         highest commit {}, highest applied {}",
        c.term, c.leader_term, c.log, c.commit, c.applied
    );
    if report.violations.is_empty() {
        println!("no invariant violated");
        return ExitCode::SUCCESS;
    }
    for found in &report.violations {
        println!(
            "\nVIOLATION after {} choices: {}",
            found.trace.len(),
            found.violation
        );
        println!(
            "replay with:\n  model-check --replay \"{}\"{}",
            format_trace(&found.trace),
            flags(l)
        );
        match World::initial(l) {
            Ok(mut world) => {
                for &choice in &found.trace {
                    println!("  {choice:<12} {}", world.describe(choice));
                    if world.apply(choice).is_err() {
                        break;
                    }
                }
            }
            Err(e) => println!("  the initial state is already broken: {e}"),
        }
    }
    ExitCode::from(1)
}

/// The environment flags a replay needs to see the same choices.
fn flags(l: Limits) -> String {
    let mut s = String::new();
    if l.max_crashes > 0 {
        s += &format!(" --crashes {}", l.max_crashes);
    }
    if l.max_proposals != Limits::default().max_proposals {
        s += &format!(" --proposals {}", l.max_proposals);
    }
    if !l.drops {
        s += " --no-drop";
    }
    if l.duplicates {
        s += " --dup";
    }
    if l.pre_vote {
        s += " --pre-vote";
    }
    if l.max_reads > 0 {
        s += &format!(" --reads {}", l.max_reads);
    }
    if l.membership {
        s += " --membership";
    }
    if let Some(c) = l.canary {
        s += &format!(" --canary {c:?}");
    }
    s
}

/// Re-executes a trace step by step, narrating events, actions and states.
fn replay(limits: Limits, trace: &str) -> ExitCode {
    let trace = match parse_trace(trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut world = match World::initial(limits) {
        Ok(w) => w,
        Err(e) => {
            println!("the initial state is broken: {e}");
            return ExitCode::from(1);
        }
    };
    println!("initial state:\n{}", world.summary());
    world.narrate();
    for (i, &choice) in trace.iter().enumerate() {
        let result = world.apply_checked(choice);
        for line in world.take_narration() {
            println!("{line}");
        }
        if let Err(e) = result {
            println!("\nstep {} ({choice}): {e}", i + 1);
            println!("state:\n{}", world.summary());
            return ExitCode::from(1);
        }
        println!("state after step {}:\n{}", i + 1, world.summary());
    }
    println!("the trace replays with no violation");
    ExitCode::SUCCESS
}
