//! One move of the model: which nondeterministic thing happens next.
//!
//! A state is named by the sequence of choices that reaches it from the
//! initial state, so a choice must mean the same thing every time the
//! sequence is replayed: messages are named by their position in the
//! network's canonical (sorted) order, nodes by their id.

use std::fmt;
use std::str::FromStr;

/// One nondeterministic step of the cluster's environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Deliver the in-flight message at this position (it leaves the network).
    Deliver(u16),
    /// Deliver a copy of the message at this position and keep the original
    /// in flight (the network duplicates it).
    Duplicate(u16),
    /// Lose the message at this position.
    Drop(u16),
    /// The node's timer fires at its last `SetTimer` deadline.
    FireTimer(u8),
    /// The node's oldest pending `Persist` becomes durable.
    CompletePersist(u8),
    /// A client proposes a fresh command to the node (offered only to leaders).
    Propose(u8),
    /// The node crashes and restarts from its durable image.
    Crash(u8),
    /// The operator asks the first node (offered only to leaders) to
    /// remove the second from the configuration.
    RemoveMember(u8, u8),
    /// A client asks the node for a linearizable read (ReadIndex; a
    /// follower forwards it to its leader).
    Read(u8),
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Choice::Deliver(k) => write!(f, "deliver:{k}"),
            Choice::Duplicate(k) => write!(f, "dup:{k}"),
            Choice::Drop(k) => write!(f, "drop:{k}"),
            Choice::FireTimer(n) => write!(f, "timer:{n}"),
            Choice::CompletePersist(n) => write!(f, "persist:{n}"),
            Choice::Propose(n) => write!(f, "propose:{n}"),
            Choice::Crash(n) => write!(f, "crash:{n}"),
            Choice::RemoveMember(n, m) => write!(f, "remove:{n}.{m}"),
            Choice::Read(n) => write!(f, "read:{n}"),
        }
    }
}

impl FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s
            .split_once(':')
            .ok_or_else(|| format!("choice {s:?} is not kind:number"))?;
        let bad = |_| format!("choice {s:?}: bad number");
        Ok(match kind {
            "deliver" => Choice::Deliver(arg.parse().map_err(bad)?),
            "dup" => Choice::Duplicate(arg.parse().map_err(bad)?),
            "drop" => Choice::Drop(arg.parse().map_err(bad)?),
            "timer" => Choice::FireTimer(arg.parse().map_err(bad)?),
            "persist" => Choice::CompletePersist(arg.parse().map_err(bad)?),
            "propose" => Choice::Propose(arg.parse().map_err(bad)?),
            "crash" => Choice::Crash(arg.parse().map_err(bad)?),
            "read" => Choice::Read(arg.parse().map_err(bad)?),
            "remove" => {
                let (n, m) = arg
                    .split_once('.')
                    .ok_or_else(|| format!("choice {s:?}: not remove:N.M"))?;
                Choice::RemoveMember(n.parse().map_err(bad)?, m.parse().map_err(bad)?)
            }
            _ => return Err(format!("choice {s:?}: unknown kind {kind:?}")),
        })
    }
}

/// Formats a trace as the space-separated list `--replay` accepts.
pub fn format_trace(trace: &[Choice]) -> String {
    let parts: Vec<String> = trace.iter().map(Choice::to_string).collect();
    parts.join(" ")
}

/// Parses a trace written by [`format_trace`] (spaces or commas between choices).
pub fn parse_trace(s: &str) -> Result<Vec<Choice>, String> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_round_trip() {
        let trace = vec![
            Choice::FireTimer(0),
            Choice::CompletePersist(0),
            Choice::Deliver(1),
            Choice::Duplicate(2),
            Choice::Drop(0),
            Choice::Propose(1),
            Choice::Crash(2),
            Choice::RemoveMember(0, 2),
            Choice::Read(1),
        ];
        assert_eq!(parse_trace(&format_trace(&trace)).unwrap(), trace);
        assert!(parse_trace("fly:1").is_err());
        assert!(parse_trace("timer:x").is_err());
    }
}
