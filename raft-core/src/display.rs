//! One-line text forms of messages, events and actions, after
//! etcd-io/raft's interaction-test output, for logs, traces and the golden
//! interaction scripts (`raft-core/testdata/`). The forms are stable: a change
//! shows up as a diff in every script.
//!
//! - An entry is `term/index "command"`, the command's bytes escaped as
//!   ASCII (`1/11 "foo"`); a no-op is `1/11 Noop`, a configuration
//!   `1/11 Voters:{1,2,3}` (with `Outgoing:`, `Learners:` when not empty).
//! - A log position is `term/index` (`Log:1/10`), a snapshot's boundary too.
//! - The core never sees snapshot bytes: a snapshot is its boundary and
//!   configuration (`Snapshot:1/10 Voters:{1,2,3}`).
//! - A persist id is `#id`; an instant is milliseconds since the epoch, with
//!   a fraction only when it is not whole (`300ms`, `812.345678ms`).
//!
//! | value | form |
//! |---|---|
//! | `RequestVote` | `MsgVote Term:2 Log:1/5` (`MsgVote Term:2 Log:1/5 Transfer` after `TimeoutNow`) |
//! | `RequestVoteReply` | `MsgVoteResp Term:2 Granted` / `Rejected` |
//! | `AppendEntries` | `MsgApp Term:1 Log:1/10 Commit:10 Entries:[1/11 "foo"]` (no `Entries` when empty) |
//! | `AppendEntriesReply` | `MsgAppResp Term:1 Index:11`, or `MsgAppResp Term:1 Rejected Prev:10 ConflictTerm:1 ConflictIndex:8` (no `ConflictTerm` when the follower's log is too short) |
//! | `InstallSnapshot` | `MsgSnap Term:2 Snapshot:1/10` |
//! | `InstallSnapshotReply` | `MsgSnapResp Term:2 Index:10` |
//! | `PreVote` | `MsgPreVote Term:2 Log:1/5` |
//! | `PreVoteReply` | `MsgPreVoteResp Term:2 Granted` / `Rejected` |
//! | `TimeoutNow` | `MsgTimeoutNow Term:2` |
//! | `Event` | `Receive from 2: <message>`, `Propose #1 "foo"`, `TimerFired`, `Persisted Upto:#3`, `SnapshotTaken Index:5`, `SnapshotSendEnded To:2 Term:3 Index:10`, `TransferLeadership To:2` (`To:-` for the most up-to-date voter) |
//! | `Action` | `Send to 2: <message>`, `Persist #1 ...`, `Apply Entries:[...]`, `ApplySnapshot Snapshot:1/10`, `SendSnapshot to 2: MsgSnap ...`, `SetTimer 812ms`, `AcceptProposal #1 Index:3 Term:1`, `RejectProposal #1 NotLeader Leader:2`, `LeadershipTransfer To:2 Started` / `TimeoutNowSent` / `Aborted:TimedOut` |
//! | `Persist` | `Persist #1 Term:1 Vote:1 Snapshot:1/10 TruncateFrom:5 Entries:[...] Then:[to 2: <message>, ...]`, each part only when present; `Persist #2 Barrier Then:[...]` when it changes nothing |

use core::fmt::{self, Display, Formatter};

use crate::io::{
    Action, ChangeRefusal, Event, Persist, ReadRefusal, RejectReason, TransferOutcome,
};
use crate::membership::{Membership, MembershipChange};
use crate::message::{AppendOutcome, Message};
use crate::time::Instant;
use crate::types::{Entry, HardState, NodeId, Payload, SnapshotMeta};

/// Bytes as an escaped, quoted string.
struct Quoted<'a>(&'a [u8]);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// A list of entries: `[1/1 "a", 1/2 "b"]`.
struct Entries<'a>(&'a [Entry]);

impl Display for Entries<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (k, e) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            e.fmt(f)?;
        }
        f.write_str("]")
    }
}

impl Display for Entry {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ", self.term, self.index)?;
        match &self.payload {
            Payload::Command(bytes) => Quoted(bytes).fmt(f),
            Payload::Noop => f.write_str("Noop"),
            Payload::Membership(m) => m.fmt(f),
        }
    }
}

/// `Voters:{1,2,3}`, with `Outgoing:{..}`, `Learners:{..}` and
/// `LearnersNext:{..}` when not empty.
impl Display for Membership {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let set = |f: &mut Formatter<'_>, name: &str, s: &std::collections::BTreeSet<NodeId>| {
            let ids: Vec<String> = s.iter().map(u64::to_string).collect();
            write!(f, "{name}:{{{}}}", ids.join(","))
        };
        set(f, "Voters", &self.voters)?;
        for (name, s) in [
            ("Outgoing", &self.outgoing),
            ("Learners", &self.learners),
            ("LearnersNext", &self.learners_next),
        ] {
            if !s.is_empty() {
                f.write_str(" ")?;
                set(f, name, s)?;
            }
        }
        Ok(())
    }
}

impl Display for SnapshotMeta {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.term, self.index)
    }
}

/// A snapshot as a persist or an apply names it: `Snapshot:1/10`, then its
/// configuration when one is recorded.
struct SnapshotAt<'a>(&'a SnapshotMeta);

impl Display for SnapshotAt<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "Snapshot:{}", self.0)?;
        Recorded(&self.0.membership).fmt(f)
    }
}

/// A snapshot's configuration, after a space; nothing when none is recorded.
struct Recorded<'a>(&'a Membership);

impl Display for Recorded<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.voters.is_empty() {
            return Ok(());
        }
        write!(f, " {}", self.0)
    }
}

impl Display for ChangeRefusal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            ChangeRefusal::NotLeader { leader_hint } => {
                write!(f, "NotLeader Leader:{}", Target(*leader_hint))
            }
            ChangeRefusal::ChangeInProgress => f.write_str("ChangeInProgress"),
            ChangeRefusal::LeaderNotReady => f.write_str("LeaderNotReady"),
            ChangeRefusal::TransferInProgress => f.write_str("TransferInProgress"),
            ChangeRefusal::Invalid(why) => write!(f, "Invalid ({why})"),
        }
    }
}

impl Display for MembershipChange {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            MembershipChange::AddVoter(n) => write!(f, "v{n}"),
            MembershipChange::AddLearner(n) => write!(f, "l{n}"),
            MembershipChange::Promote(n) => write!(f, "p{n}"),
            MembershipChange::Demote(n) => write!(f, "d{n}"),
            MembershipChange::Remove(n) => write!(f, "r{n}"),
        }
    }
}

impl Display for HardState {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "Term:{} Vote:", self.term)?;
        match self.voted_for {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("-"),
        }
    }
}

impl Display for Instant {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let nanos = self.as_nanos();
        let (ms, frac) = (nanos / 1_000_000, nanos % 1_000_000);
        if frac == 0 {
            write!(f, "{ms}ms")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{ms}.{}ms", digits.trim_end_matches('0'))
        }
    }
}

/// A vote's answer.
fn answer(granted: bool) -> &'static str {
    if granted {
        "Granted"
    } else {
        "Rejected"
    }
}

impl Display for Message {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Message::RequestVote(m) => write!(
                f,
                "MsgVote Term:{} Log:{}/{}{}",
                m.term,
                m.last_log_term,
                m.last_log_index,
                if m.transfer { " Transfer" } else { "" }
            ),
            Message::RequestVoteReply(m) => {
                write!(f, "MsgVoteResp Term:{} {}", m.term, answer(m.vote_granted))
            }
            Message::PreVote(m) => write!(
                f,
                "MsgPreVote Term:{} Log:{}/{}",
                m.term, m.last_log_term, m.last_log_index
            ),
            Message::PreVoteReply(m) => {
                write!(
                    f,
                    "MsgPreVoteResp Term:{} {}",
                    m.term,
                    answer(m.vote_granted)
                )
            }
            Message::AppendEntries(m) => {
                write!(
                    f,
                    "MsgApp Term:{} Log:{}/{} Commit:{}",
                    m.term, m.prev_log_term, m.prev_log_index, m.leader_commit
                )?;
                if !m.entries.is_empty() {
                    write!(f, " Entries:{}", Entries(&m.entries))?;
                }
                Ok(())
            }
            Message::AppendEntriesReply(m) => {
                write!(f, "MsgAppResp Term:{}", m.term)?;
                match m.outcome {
                    AppendOutcome::Accepted { match_index } => write!(f, " Index:{match_index}"),
                    AppendOutcome::Rejected {
                        rejected_prev,
                        conflict_term,
                        conflict_index,
                    } => {
                        write!(f, " Rejected Prev:{rejected_prev}")?;
                        if let Some(t) = conflict_term {
                            write!(f, " ConflictTerm:{t}")?;
                        }
                        write!(f, " ConflictIndex:{conflict_index}")
                    }
                }
            }
            Message::InstallSnapshot(m) => write!(
                f,
                "MsgSnap Term:{} Snapshot:{}/{}{}",
                m.term,
                m.last_included_term,
                m.last_included_index,
                Recorded(&m.membership)
            ),
            Message::InstallSnapshotReply(m) => write!(
                f,
                "MsgSnapResp Term:{} Index:{}",
                m.term, m.last_included_index
            ),
            Message::TimeoutNow { term } => write!(f, "MsgTimeoutNow Term:{term}"),
            Message::ReadRound { term, round } => {
                write!(f, "MsgReadRound Term:{term} Round:{round}")
            }
            Message::ReadRoundReply { term, round } => {
                write!(f, "MsgReadRoundResp Term:{term} Round:{round}")
            }
            Message::ReadIndex { term, ctx } => write!(f, "MsgReadIndex Term:{term} Ctx:{ctx}"),
            Message::ReadIndexReply { term, ctx, index } => match index {
                Some(i) => write!(f, "MsgReadIndexResp Term:{term} Ctx:{ctx} Index:{i}"),
                None => write!(f, "MsgReadIndexResp Term:{term} Ctx:{ctx} Refused"),
            },
        }
    }
}

impl Display for Event {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Event::MessageReceived { from, message } => write!(f, "Receive from {from}: {message}"),
            Event::ProposalReceived { id, command } => {
                write!(f, "Propose #{id} {}", Quoted(command))
            }
            Event::TimerFired => f.write_str("TimerFired"),
            Event::Persisted { upto } => write!(f, "Persisted Upto:#{upto}"),
            Event::SnapshotTaken { index } => write!(f, "SnapshotTaken Index:{index}"),
            Event::SnapshotSendEnded { to, term, index } => {
                write!(f, "SnapshotSendEnded To:{to} Term:{term} Index:{index}")
            }
            Event::LeadershipTransferRequested { to } => {
                write!(f, "TransferLeadership To:{}", Target(*to))
            }
            Event::ReadRequested { id, mode } => match mode {
                crate::ReadMode::ReadIndex => write!(f, "Read #{id}"),
                crate::ReadMode::Lease => write!(f, "LeaseRead #{id}"),
            },
            Event::MembershipChangeRequested { id, changes } => {
                let list: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                write!(f, "ChangeMembership #{id} {}", list.join(" "))
            }
        }
    }
}

impl Display for Persist {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "Persist #{}", self.id)?;
        if self.is_barrier() {
            f.write_str(" Barrier")?;
        }
        if let Some(hs) = self.hard_state {
            write!(f, " {hs}")?;
        }
        if let Some(s) = &self.snapshot {
            write!(f, " {}", SnapshotAt(s))?;
        }
        if let Some(t) = self.truncate_from {
            write!(f, " TruncateFrom:{t}")?;
        }
        if !self.entries.is_empty() {
            write!(f, " Entries:{}", Entries(&self.entries))?;
        }
        if !self.then_send.is_empty() {
            f.write_str(" Then:[")?;
            for (k, (to, m)) in self.then_send.iter().enumerate() {
                if k > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "to {to}: {m}")?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

impl Display for RejectReason {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::NotLeader {
                leader_hint: Some(l),
            } => write!(f, "NotLeader Leader:{l}"),
            RejectReason::NotLeader { leader_hint: None } => f.write_str("NotLeader Leader:-"),
            RejectReason::TooManyUncommitted => f.write_str("TooManyUncommitted"),
            RejectReason::TransferInProgress => f.write_str("TransferInProgress"),
        }
    }
}

/// A transfer target, `-` when none was named or could be chosen.
struct Target(Option<NodeId>);

impl Display for Target {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}

impl Display for TransferOutcome {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            TransferOutcome::Started => f.write_str("Started"),
            TransferOutcome::TimeoutNowSent => f.write_str("TimeoutNowSent"),
            TransferOutcome::Aborted(why) => write!(f, "Aborted:{why:?}"),
        }
    }
}

impl Display for Action {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Action::Send { to, message } => write!(f, "Send to {to}: {message}"),
            Action::Persist(p) => p.fmt(f),
            Action::Apply { entries } => write!(f, "Apply Entries:{}", Entries(entries)),
            Action::ApplySnapshot { meta } => write!(f, "ApplySnapshot {}", SnapshotAt(meta)),
            Action::SendSnapshot { to, message } => write!(
                f,
                "SendSnapshot to {to}: {}",
                Message::InstallSnapshot(message.clone())
            ),
            Action::SetTimer { deadline } => write!(f, "SetTimer {deadline}"),
            Action::AcceptProposal { id, index, term } => {
                write!(f, "AcceptProposal #{id} Index:{index} Term:{term}")
            }
            Action::RejectProposal { id, reason } => write!(f, "RejectProposal #{id} {reason}"),
            Action::LeadershipTransfer { to, outcome } => {
                write!(f, "LeadershipTransfer To:{} {outcome}", Target(*to))
            }
            Action::AcceptMembershipChange {
                id,
                index,
                term,
                membership,
            } => write!(
                f,
                "AcceptMembershipChange #{id} Index:{index} Term:{term} {membership}"
            ),
            Action::ReadReady { id, index } => write!(f, "ReadReady #{id} Index:{index}"),
            Action::RejectRead { id, reason } => match reason {
                ReadRefusal::NotLeader { leader_hint } => write!(
                    f,
                    "RejectRead #{id} NotLeader Leader:{}",
                    Target(*leader_hint)
                ),
                ReadRefusal::TooManyPendingReads => {
                    write!(f, "RejectRead #{id} TooManyPendingReads")
                }
            },
            Action::RejectMembershipChange { id, reason } => {
                write!(f, "RejectMembershipChange #{id} {reason}")
            }
            Action::MembershipChanged {
                effective,
                committed,
            } => {
                if effective == committed {
                    write!(f, "MembershipChanged {effective} (committed)")
                } else {
                    write!(f, "MembershipChanged {effective} (committed: {committed})")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    fn e(index: Index, term: Term, command: &[u8]) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Command((command.to_vec()).into()),
        }
    }

    #[test]
    fn messages_read_like_etcd_interaction_output() {
        let app = Message::AppendEntries(AppendEntries {
            term: 1,
            prev_log_index: 10,
            prev_log_term: 1,
            entries: vec![e(11, 1, b"foo"), e(12, 1, b"\x00\n")],
            leader_commit: 10,
        });
        assert_eq!(
            app.to_string(),
            r#"MsgApp Term:1 Log:1/10 Commit:10 Entries:[1/11 "foo", 1/12 "\x00\n"]"#
        );
        let rejected = Message::AppendEntriesReply(AppendEntriesReply {
            term: 2,
            outcome: AppendOutcome::Rejected {
                rejected_prev: 10,
                conflict_term: Some(1),
                conflict_index: 8,
            },
        });
        assert_eq!(
            rejected.to_string(),
            "MsgAppResp Term:2 Rejected Prev:10 ConflictTerm:1 ConflictIndex:8"
        );
        let snap = Message::InstallSnapshot(InstallSnapshot {
            term: 2,
            last_included_index: 10,
            last_included_term: 1,
            membership: Membership::default(),
        });
        assert_eq!(snap.to_string(), "MsgSnap Term:2 Snapshot:1/10");
    }

    #[test]
    fn actions_and_events_are_one_line() {
        let p = Action::Persist(Persist {
            id: 3,
            hard_state: Some(HardState {
                term: 2,
                voted_for: None,
            }),
            snapshot: None,
            truncate_from: Some(5),
            entries: vec![e(5, 2, b"x")],
            then_send: vec![(
                1,
                Message::RequestVoteReply(RequestVoteReply {
                    term: 2,
                    vote_granted: true,
                }),
            )],
        });
        assert_eq!(
            p.to_string(),
            r#"Persist #3 Term:2 Vote:- TruncateFrom:5 Entries:[2/5 "x"] Then:[to 1: MsgVoteResp Term:2 Granted]"#
        );
        let t = Action::SetTimer {
            deadline: Instant::from_nanos(812_345_000),
        };
        assert_eq!(t.to_string(), "SetTimer 812.345ms");
        assert_eq!(
            Event::Persisted { upto: 4 }.to_string(),
            "Persisted Upto:#4"
        );
    }
}
