//! Interaction scripts with golden output (after etcd-io/raft's
//! `testdata/*.txt` and its `rafttest` interaction environment).
//!
//! Every `raft-core/testdata/*.txt` is a script of commands run against a
//! small in-memory cluster of real [`RaftNode`]s; under each command is the
//! output it produced: every event stepped (one line), and under it, indented,
//! every action returned, in the one-line `Display` forms of `raft_core`
//! (`1->2 MsgApp Term:1 Log:1/10 Commit:10 Entries:[1/11 "foo"]`). The test
//! runs every script and fails, printing each command whose output differs
//! (expected, then actual), if anything changed.
//!
//! To accept a deliberate change, regenerate the files and review the diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p raft-core --test interaction
//! git diff raft-core/testdata
//! ```
//!
//! # File format
//!
//! A block is optional `#` comment lines, one command line, a `----` line,
//! and the output up to the next blank line. Regenerating keeps comments and
//! commands and rewrites the output.
//!
//! # The cluster
//!
//! Nodes are numbered from 1 and all seeded alike (their generators differ
//! by id). Time is one virtual clock in milliseconds that moves only when a
//! command moves it; nodes step at the current time. Messages wait in one
//! FIFO queue until a command delivers them; a `Persist` waits until a
//! command makes it durable (then its `then_send` messages join the queue and
//! the node steps `Persisted`). A snapshot transfer (`SendSnapshot`) waits
//! in the queue as its `MsgSnap` header; once delivered or dropped, the
//! sender steps `SnapshotSendEnded` (at once, or when `release-ends` says
//! so after a `hold-ends`). A crashed node loses its unpersisted writes;
//! messages to or from it are dropped on delivery; messages across a
//! partition are dropped when sent and when delivered.
//!
//! # Commands
//!
//! | command | what it does |
//! |---|---|
//! | `add-nodes <n> [noop] [prevote] [notify] [sticky] [lease]` | create and boot nodes 1..=n (`noop`: leaders append an empty entry on election; `prevote`: `Config::pre_vote`; `notify`: `Config::notify_commit`; `sticky`: `Config::sticky_votes`; `lease`: `Config::lease_reads` with sticky votes) |
//! | `load <id> term=<t> [vote=<v>] [snap=<t>/<i>] [log=<t>,<t>,...]` | restart `<id>` from this durable state (entries after the snapshot, with these terms) |
//! | `campaign <id>` | move the clock to `<id>`'s armed deadline and fire its timer (a follower stands for election, or with pre-vote asks for pre-votes) |
//! | `tick-heartbeat <id>` | the same for a leader (its heartbeat or quorum check) |
//! | `advance-time <ms>` | move the clock `<ms>` ahead, firing every timer that falls due, in time order |
//! | `propose <id> <command>` | a client command to `<id>` |
//! | `transfer <id> [<to>]` | ask `<id>` to hand its leadership to `<to>` (default: the most up-to-date voter) |
//! | `join <id>...` | create and boot nodes that know no configuration (empty `Config.members`: they join a running cluster) |
//! | `change <id> <change>...` | ask `<id>` to change the configuration: `v<n>` add voter, `l<n>` add learner, `p<n>` promote, `d<n>` demote, `r<n>` remove, all at once |
//! | `membership [<id>...]` | each node's effective and committed configuration |
//! | `read <id> [lease]` | a linearizable read at `<id>` (ReadIndex, or `lease`: `ReadMode::Lease`) |
//! | `persist [<id>...]` | make every waiting write of these nodes (default all) durable |
//! | `deliver-msgs [<id>...]` | deliver the queued messages to these nodes (default all), in order; messages sent meanwhile wait |
//! | `stabilize` | persist and deliver until nothing waits |
//! | `compact <id> <index>` | the service of `<id>` snapshots through `<index>` |
//! | `hold-ends` / `release-ends` | from now on, hold the senders' `SnapshotSendEnded` of the transfers that end (a driver reporting late) / step the held ones, in order, and stop holding |
//! | `snapshot-send-ended <from> <to> term=<t> index=<i>` | step a hand-written `SnapshotSendEnded` at `<from>` (for a transfer that is not the one awaited) |
//! | `crash <id>` / `restart <id>` | stop a node (unpersisted writes lost) / recover it from what is durable |
//! | `partition <g> <g> ...` | groups of comma-separated ids that cannot reach each other; `isolate <id>`; `heal` |
//! | `send <from> <to> <message>` | queue a hand-written message (see below) |
//! | `drop-msgs [from=<id>] [to=<id>]`, `duplicate-msgs [to=<id>]`, `reverse-msgs` | lose, duplicate or reorder queued messages |
//! | `msgs` | list the queue |
//! | `status [<id>...]`, `log <id>`, `progress <id>` | show nodes, a node's log, a leader's view of its followers |
//!
//! Hand-written messages: `vote term=<t> log=<t>/<i> [transfer]`, `vote-resp term=<t>
//! granted|rejected`, `prevote term=<t> log=<t>/<i>`, `prevote-resp
//! term=<t> granted|rejected`, `app term=<t> log=<t>/<i> commit=<c>
//! [entries=<t>/<i>,...]`, `app-resp term=<t> index=<i>` or `app-resp
//! term=<t> rejected prev=<p> [conflict-term=<t>] conflict-index=<i>`, `snap
//! term=<t> snap=<t>/<i> [voters=<id>,...]`, `snap-resp term=<t> index=<i>`,
//! `timeout-now term=<t>`, `read-round term=<t> round=<r>`,
//! `read-round-resp term=<t> round=<r>`, `read-index term=<t> ctx=<c>`. A
//! term may be `max`. Entries carry the command `<index>@<term>`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use raft_core::{
    Action, AppendEntries, AppendEntriesReply, AppendOutcome, Config, DurableState, Entry, Event,
    HardState, Index, InstallSnapshot, InstallSnapshotReply, Instant, Message, NodeId, Persist,
    RaftNode, ReadMode, RequestVote, RequestVoteReply, SnapshotMeta, Term,
};
use raft_core::{Membership, MembershipChange, Payload};

const SEED: u64 = 1;

// ----- the cluster -------------------------------------------------------------

struct Node {
    raft: Option<RaftNode>,
    durable: DurableState,
    /// Writes handed out and not yet durable, oldest first.
    pending: VecDeque<Persist>,
    /// The deadline of the last `SetTimer`.
    timer: Option<Instant>,
    /// The last index given to the service.
    applied: Index,
    /// It joined a running cluster: its `Config.members` is empty.
    joined: bool,
}

struct Cluster {
    config: Config,
    nodes: BTreeMap<NodeId, Node>,
    now: Instant,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// Snapshot transfers under way, (from, to) → (term, index): their
    /// `MsgSnap` is in the queue.
    transfers: BTreeMap<(NodeId, NodeId), (Term, Index)>,
    /// While true (`hold-ends`), ended transfers wait in `held_ends`.
    hold_ends: bool,
    /// Ended transfers whose senders have not been told: (from, to, term,
    /// index), oldest first.
    held_ends: Vec<(NodeId, NodeId, Term, Index)>,
    /// Which group each node is in while partitioned (none: all connected).
    groups: BTreeMap<NodeId, usize>,
    next_proposal: u64,
}

type Out = Vec<String>;

fn ms(n: u64) -> core::time::Duration {
    core::time::Duration::from_millis(n)
}

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Command((format!("{index}@{term}").into_bytes()).into()),
    }
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            config: Config::new(1, vec![1]),
            nodes: BTreeMap::new(),
            now: Instant::ZERO,
            queue: VecDeque::new(),
            transfers: BTreeMap::new(),
            hold_ends: false,
            held_ends: Vec::new(),
            groups: BTreeMap::new(),
            next_proposal: 1,
        }
    }

    fn config(&self, id: NodeId) -> Config {
        let joined = self.nodes.get(&id).is_some_and(|n| n.joined);
        Config {
            id,
            members: if joined {
                Vec::new()
            } else {
                self.config.members.clone()
            },
            ..self.config.clone()
        }
    }

    fn node(&mut self, id: NodeId) -> Result<&mut Node, String> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| format!("no node {id}"))
    }

    fn running(&mut self, id: NodeId) -> Result<&mut RaftNode, String> {
        self.node(id)?
            .raft
            .as_mut()
            .ok_or_else(|| format!("node {id} is down"))
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        match (self.groups.get(&a), self.groups.get(&b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
    }

    /// Steps `id` with `event`, printing `header` and then every action.
    fn step(
        &mut self,
        id: NodeId,
        event: Event,
        header: String,
        out: &mut Out,
    ) -> Result<(), String> {
        out.push(header);
        let now = self.now;
        let actions = self
            .running(id)?
            .step(now, event)
            .map_err(|e| format!("step refused: {e}"))?;
        for action in actions {
            self.execute(id, action, out)?;
        }
        Ok(())
    }

    fn execute(&mut self, id: NodeId, action: Action, out: &mut Out) -> Result<(), String> {
        match action {
            Action::Send { to, message } => {
                if self.connected(id, to) {
                    out.push(format!("  {id}->{to} {message}"));
                    self.queue.push_back((id, to, message));
                } else {
                    out.push(format!("  {id}->{to} {message} (dropped: partitioned)"));
                }
            }
            Action::Persist(p) => {
                let header = Persist {
                    then_send: Vec::new(),
                    ..p.clone()
                };
                out.push(format!("  {header}"));
                for (to, m) in &p.then_send {
                    out.push(format!("    then {id}->{to} {m}"));
                }
                self.node(id)?.pending.push_back(p);
            }
            Action::Apply { ref entries } => {
                out.push(format!("  {action}"));
                let node = self.node(id)?;
                for e in entries {
                    if e.index != node.applied + 1 {
                        return Err(format!(
                            "node {id} applied {} after {}",
                            e.index, node.applied
                        ));
                    }
                    node.applied = e.index;
                }
            }
            Action::ApplySnapshot { ref meta } => {
                out.push(format!("  {action}"));
                self.node(id)?.applied = meta.index;
            }
            Action::SendSnapshot { to, message } => {
                let header = Message::InstallSnapshot(message.clone());
                if self.connected(id, to) {
                    out.push(format!("  {id}->{to} {header} (stream)"));
                    let at = (message.term, message.last_included_index);
                    if self.transfers.insert((id, to), at).is_some() {
                        return Err(format!("{id} streams a second snapshot to {to}"));
                    }
                    self.queue.push_back((id, to, header));
                } else {
                    out.push(format!(
                        "  {id}->{to} {header} (stream dropped: partitioned)"
                    ));
                    self.end_transfer(id, to, message.term, message.last_included_index, out)?;
                }
            }
            Action::SetTimer { deadline } => {
                out.push(format!("  {action}"));
                self.node(id)?.timer = Some(deadline);
            }
            Action::AcceptProposal { .. }
            | Action::RejectProposal { .. }
            | Action::LeadershipTransfer { .. }
            | Action::AcceptMembershipChange { .. }
            | Action::RejectMembershipChange { .. }
            | Action::MembershipChanged { .. }
            | Action::ReadReady { .. }
            | Action::RejectRead { .. } => {
                out.push(format!("  {action}"));
            }
        }
        Ok(())
    }

    /// Creates node `id` on first boot (`joined`: it knows no
    /// configuration) and boots it.
    fn create(&mut self, id: NodeId, joined: bool, out: &mut Out) -> Result<(), String> {
        self.nodes.insert(
            id,
            Node {
                raft: None,
                durable: DurableState::default(),
                pending: VecDeque::new(),
                timer: None,
                applied: 0,
                joined,
            },
        );
        let raft = RaftNode::new(self.config(id), SEED).map_err(|e| e.to_string())?;
        self.node(id)?.raft = Some(raft);
        self.boot(id, out)
    }

    /// A node's first step: arms its election timer.
    fn boot(&mut self, id: NodeId, out: &mut Out) -> Result<(), String> {
        self.step(
            id,
            Event::TimerFired,
            format!("{id}: boot, TimerFired"),
            out,
        )
    }

    fn fire_timer(&mut self, id: NodeId, out: &mut Out) -> Result<(), String> {
        let deadline = self.node(id)?.timer.ok_or("no timer armed")?;
        self.now = self.now.max(deadline);
        let header = format!("{id}: TimerFired at {}", self.now);
        self.step(id, Event::TimerFired, header, out)
    }

    fn persist(&mut self, id: NodeId, out: &mut Out) -> Result<(), String> {
        let node = self.node(id)?;
        if node.raft.is_none() || node.pending.is_empty() {
            return Ok(());
        }
        let writes: Vec<Persist> = node.pending.drain(..).collect();
        let mut released = Vec::new();
        for p in &writes {
            node.durable.apply(p);
            released.extend(p.then_send.iter().cloned());
        }
        let upto = writes.last().map(|p| p.id).expect("not empty");
        let event = Event::Persisted { upto };
        let mut lines = vec![format!("{id}: {event}")];
        for (to, m) in released {
            if self.connected(id, to) {
                lines.push(format!("  release {id}->{to} {m}"));
                self.queue.push_back((id, to, m));
            } else {
                lines.push(format!("  release {id}->{to} {m} (dropped: partitioned)"));
            }
        }
        let header = lines.join("\n");
        self.step(id, event, header, out)
    }

    fn deliver(&mut self, to_whom: &BTreeSet<NodeId>, out: &mut Out) -> Result<(), String> {
        let queued: Vec<_> = self.queue.drain(..).collect();
        for (from, to, message) in queued {
            if !to_whom.is_empty() && !to_whom.contains(&to) {
                self.queue.push_back((from, to, message));
                continue;
            }
            let up = |c: &Cluster, n: NodeId| c.nodes.get(&n).is_none_or(|n| n.raft.is_some());
            let why = if !self.nodes.contains_key(&to) {
                Some("no such node")
            } else if !up(self, from) || !up(self, to) {
                Some("node down")
            } else if !self.connected(from, to) {
                Some("partitioned")
            } else {
                None
            };
            let streamed = self.streamed(from, to, &message);
            if let Some(why) = why {
                out.push(format!("{from}->{to} {message} (dropped: {why})"));
            } else {
                let header = format!("{from}->{to} {message}");
                self.step(to, Event::MessageReceived { from, message }, header, out)?;
            }
            if let Some((term, index)) = streamed {
                self.end_transfer(from, to, term, index, out)?;
            }
        }
        Ok(())
    }

    /// If `message` is the header of a transfer under way from `from` to
    /// `to`, the transfer ends with it: its (term, index).
    fn streamed(&mut self, from: NodeId, to: NodeId, message: &Message) -> Option<(Term, Index)> {
        let Message::InstallSnapshot(m) = message else {
            return None;
        };
        let at = (m.term, m.last_included_index);
        if self.transfers.get(&(from, to)) != Some(&at) {
            return None;
        }
        self.transfers.remove(&(from, to));
        Some(at)
    }

    /// The sender, if it is up, learns that its transfer ended.
    fn end_transfer(
        &mut self,
        from: NodeId,
        to: NodeId,
        term: Term,
        index: Index,
        out: &mut Out,
    ) -> Result<(), String> {
        if self.nodes.get(&from).is_none_or(|n| n.raft.is_none()) {
            return Ok(());
        }
        let event = Event::SnapshotSendEnded { to, term, index };
        if self.hold_ends {
            out.push(format!("{from}: {event} (held)"));
            self.held_ends.push((from, to, term, index));
            return Ok(());
        }
        self.step(from, event.clone(), format!("{from}: {event}"), out)
    }

    fn stabilize(&mut self, out: &mut Out) -> Result<(), String> {
        for _ in 0..100 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let waiting = ids.iter().any(|id| {
                let n = &self.nodes[id];
                n.raft.is_some() && !n.pending.is_empty()
            });
            if !waiting && self.queue.is_empty() {
                return Ok(());
            }
            for id in ids {
                self.persist(id, out)?;
            }
            self.deliver(&BTreeSet::new(), out)?;
        }
        Err("did not stabilize in 100 rounds".into())
    }

    fn advance(&mut self, by: u64, out: &mut Out) -> Result<(), String> {
        let target = self.now + ms(by);
        for _ in 0..10_000 {
            let due = self
                .nodes
                .iter()
                .filter(|(_, n)| n.raft.is_some())
                .filter_map(|(&id, n)| n.timer.map(|t| (t, id)))
                .filter(|&(t, _)| t <= target)
                .min();
            let Some((_, id)) = due else {
                self.now = target;
                out.push(format!("now {target}"));
                return Ok(());
            };
            self.fire_timer(id, out)?;
        }
        Err("timers kept firing".into())
    }

    fn restart(&mut self, id: NodeId, out: &mut Out) -> Result<(), String> {
        let config = self.config(id);
        let node = self.node(id)?;
        let raft = RaftNode::recover(config, SEED, node.durable.clone())
            .map_err(|e| format!("recover refused: {e}"))?;
        node.raft = Some(raft);
        node.pending.clear();
        node.timer = None;
        node.applied = node.durable.snapshot.as_ref().map_or(0, |s| s.index);
        self.boot(id, out)
    }

    fn status_line(&self, id: NodeId) -> String {
        let node = &self.nodes[&id];
        let Some(r) = &node.raft else {
            return format!("{id}: down");
        };
        let opt = |v: Option<NodeId>| v.map_or("-".to_string(), |v| v.to_string());
        let snap = r.log().snapshot();
        format!(
            "{id}: {:?} Term:{} Vote:{} Leader:{} Log:{}/{} Commit:{} Applied:{} Durable:{} Snapshot:{}",
            r.role(),
            r.term(),
            opt(r.voted_for()),
            opt(r.leader_hint()),
            r.log().last_term(),
            r.log().last_index(),
            r.commit_index(),
            r.last_applied(),
            r.durable_index(),
            snap,
        )
    }
}

// ----- commands ---------------------------------------------------------------

fn id_arg(s: &str) -> Result<NodeId, String> {
    s.parse().map_err(|_| format!("not a node id: {s:?}"))
}

fn ids(args: &[&str]) -> Result<BTreeSet<NodeId>, String> {
    args.iter().map(|a| id_arg(a)).collect()
}

fn num(s: &str) -> Result<u64, String> {
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

/// `t/i` as (term, index).
fn position(s: &str) -> Result<(Term, Index), String> {
    let (t, i) = s
        .split_once('/')
        .ok_or_else(|| format!("not term/index: {s:?}"))?;
    Ok((num(t)?, num(i)?))
}

/// The `key=value` arguments, and the bare words.
fn keyed<'a>(args: &[&'a str]) -> (BTreeMap<&'a str, &'a str>, Vec<&'a str>) {
    let mut keys = BTreeMap::new();
    let mut words = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => {
                keys.insert(k, v);
            }
            None => words.push(*a),
        }
    }
    (keys, words)
}

fn need<'a>(keys: &BTreeMap<&str, &'a str>, key: &str) -> Result<&'a str, String> {
    keys.get(key)
        .copied()
        .ok_or_else(|| format!("missing {key}="))
}

fn parse_message(args: &[&str]) -> Result<Message, String> {
    let (kind, rest) = args.split_first().ok_or("missing message kind")?;
    let (keys, words) = keyed(rest);
    let term = num(need(&keys, "term")?)?;
    Ok(match *kind {
        "vote" => {
            let (last_log_term, last_log_index) = position(need(&keys, "log")?)?;
            Message::RequestVote(RequestVote {
                term,
                last_log_index,
                last_log_term,
                transfer: words.contains(&"transfer"),
            })
        }
        "vote-resp" => Message::RequestVoteReply(RequestVoteReply {
            term,
            vote_granted: words.contains(&"granted"),
        }),
        "prevote" => {
            let (last_log_term, last_log_index) = position(need(&keys, "log")?)?;
            Message::PreVote(RequestVote {
                term,
                last_log_index,
                last_log_term,
                transfer: false,
            })
        }
        "prevote-resp" => Message::PreVoteReply(RequestVoteReply {
            term,
            vote_granted: words.contains(&"granted"),
        }),
        "app" => {
            let (prev_log_term, prev_log_index) = position(need(&keys, "log")?)?;
            let entries = match keys.get("entries") {
                Some(list) => list
                    .split(',')
                    .map(|p| position(p).map(|(t, i)| entry(i, t)))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            Message::AppendEntries(AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: num(need(&keys, "commit")?)?,
            })
        }
        "app-resp" if words.contains(&"rejected") => {
            Message::AppendEntriesReply(AppendEntriesReply {
                term,
                outcome: AppendOutcome::Rejected {
                    rejected_prev: num(need(&keys, "prev")?)?,
                    conflict_term: keys.get("conflict-term").map(|t| num(t)).transpose()?,
                    conflict_index: num(need(&keys, "conflict-index")?)?,
                },
            })
        }
        "app-resp" => Message::AppendEntriesReply(AppendEntriesReply {
            term,
            outcome: AppendOutcome::Accepted {
                match_index: num(need(&keys, "index")?)?,
            },
        }),
        "snap" => {
            let (last_included_term, last_included_index) = position(need(&keys, "snap")?)?;
            Message::InstallSnapshot(InstallSnapshot {
                term,
                last_included_index,
                last_included_term,
                membership: match keys.get("voters") {
                    Some(list) => Membership::with_voters(
                        list.split(',').map(num).collect::<Result<Vec<_>, _>>()?,
                    ),
                    None => Membership::default(),
                },
            })
        }
        "snap-resp" => Message::InstallSnapshotReply(InstallSnapshotReply {
            term,
            last_included_index: num(need(&keys, "index")?)?,
        }),
        "timeout-now" => Message::TimeoutNow { term },
        "read-round" => Message::ReadRound {
            term,
            round: num(need(&keys, "round")?)?,
        },
        "read-index" => Message::ReadIndex {
            term,
            ctx: num(need(&keys, "ctx")?)?,
        },
        "read-round-resp" => Message::ReadRoundReply {
            term,
            round: num(need(&keys, "round")?)?,
        },
        other => return Err(format!("unknown message kind {other:?}")),
    })
}

/// `v<id>` add voter, `l<id>` add learner, `p<id>` promote, `d<id>` demote,
/// `r<id>` remove.
fn parse_change(s: &str) -> Result<MembershipChange, String> {
    let (kind, id) = s.split_at(1.min(s.len()));
    let id = id_arg(id)?;
    Ok(match kind {
        "v" => MembershipChange::AddVoter(id),
        "l" => MembershipChange::AddLearner(id),
        "p" => MembershipChange::Promote(id),
        "d" => MembershipChange::Demote(id),
        "r" => MembershipChange::Remove(id),
        _ => return Err(format!("not a change: {s:?} (v/l/p/d/r and an id)")),
    })
}

fn run_command(c: &mut Cluster, line: &str, out: &mut Out) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (cmd, args) = words.split_first().ok_or("empty command")?;
    let arg = |k: usize| {
        args.get(k)
            .copied()
            .ok_or(format!("{cmd}: missing argument"))
    };
    match *cmd {
        "add-nodes" => {
            let n = num(arg(0)?)?;
            let first = c.nodes.keys().next_back().map_or(1, |l| l + 1);
            let members: Vec<NodeId> = (1..first + n).collect();
            c.config = Config {
                noop_on_election: args.contains(&"noop"),
                pre_vote: args.contains(&"prevote"),
                notify_commit: args.contains(&"notify"),
                sticky_votes: args.contains(&"sticky") || args.contains(&"lease"),
                lease_reads: args.contains(&"lease"),
                ..Config::new(1, members)
            };
            for id in first..first + n {
                c.create(id, false, out)?;
            }
        }
        "join" => {
            for id in ids(args)? {
                if c.nodes.contains_key(&id) {
                    return Err(format!("node {id} exists"));
                }
                c.create(id, true, out)?;
            }
        }
        "change" => {
            let id = id_arg(arg(0)?)?;
            let changes = args[1..]
                .iter()
                .map(|a| parse_change(a))
                .collect::<Result<Vec<_>, _>>()?;
            let rid = c.next_proposal;
            c.next_proposal += 1;
            let event = Event::MembershipChangeRequested { id: rid, changes };
            c.step(id, event.clone(), format!("{id}: {event}"), out)?;
        }
        "read" => {
            let id = id_arg(arg(0)?)?;
            let rid = c.next_proposal;
            c.next_proposal += 1;
            let mode = if args.get(1) == Some(&"lease") {
                ReadMode::Lease
            } else {
                ReadMode::ReadIndex
            };
            let event = Event::ReadRequested { id: rid, mode };
            c.step(id, event.clone(), format!("{id}: {event}"), out)?;
        }
        "membership" => {
            let chosen = ids(args)?;
            let all: Vec<NodeId> = c.nodes.keys().copied().collect();
            for id in all {
                if !chosen.is_empty() && !chosen.contains(&id) {
                    continue;
                }
                match &c.nodes[&id].raft {
                    None => out.push(format!("{id}: down")),
                    Some(r) => out.push(format!(
                        "{id}: {} (committed: {})",
                        r.membership(),
                        r.committed_membership()
                    )),
                }
            }
        }
        "load" => {
            let id = id_arg(arg(0)?)?;
            let (keys, _) = keyed(&args[1..]);
            let snapshot = keys
                .get("snap")
                .map(|s| position(s).map(|(term, index)| SnapshotMeta::at(index, term)))
                .transpose()?;
            let first = snapshot.as_ref().map_or(1, |s| s.index + 1);
            let entries = match keys.get("log") {
                Some(list) => list
                    .split(',')
                    .enumerate()
                    .map(|(k, t)| num(t).map(|t| entry(first + k as u64, t)))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let hard_state = HardState {
                term: num(need(&keys, "term")?)?,
                voted_for: keys.get("vote").map(|v| id_arg(v)).transpose()?,
            };
            let node = c.node(id)?;
            node.durable = DurableState {
                hard_state,
                snapshot,
                entries,
            };
            c.restart(id, out)?;
        }
        "campaign" | "tick-heartbeat" => {
            let id = id_arg(arg(0)?)?;
            let leads = c.running(id)?.is_leader();
            if leads != (*cmd == "tick-heartbeat") {
                return Err(format!("{cmd}: node {id} leads: {leads}"));
            }
            c.fire_timer(id, out)?;
        }
        "advance-time" => c.advance(num(arg(0)?)?, out)?,
        "propose" => {
            let id = id_arg(arg(0)?)?;
            let command = arg(1)?.as_bytes().to_vec();
            let pid = c.next_proposal;
            c.next_proposal += 1;
            let event = Event::ProposalReceived { id: pid, command };
            c.step(id, event.clone(), format!("{id}: {event}"), out)?;
        }
        "transfer" => {
            let id = id_arg(arg(0)?)?;
            let to = args.get(1).map(|a| id_arg(a)).transpose()?;
            let event = Event::LeadershipTransferRequested { to };
            c.step(id, event.clone(), format!("{id}: {event}"), out)?;
        }
        "persist" => {
            let chosen = ids(args)?;
            let all: Vec<NodeId> = c.nodes.keys().copied().collect();
            for id in all {
                if chosen.is_empty() || chosen.contains(&id) {
                    c.persist(id, out)?;
                }
            }
        }
        "deliver-msgs" => c.deliver(&ids(args)?, out)?,
        "stabilize" => c.stabilize(out)?,
        "compact" => {
            let id = id_arg(arg(0)?)?;
            let index = num(arg(1)?)?;
            let event = Event::SnapshotTaken { index };
            c.step(id, event.clone(), format!("{id}: {event}"), out)?;
        }
        "hold-ends" => {
            c.hold_ends = true;
            out.push("holding transfer ends".to_string());
        }
        "release-ends" => {
            c.hold_ends = false;
            let held: Vec<_> = c.held_ends.drain(..).collect();
            if held.is_empty() {
                out.push("no transfer ends held".to_string());
            }
            for (from, to, term, index) in held {
                c.end_transfer(from, to, term, index, out)?;
            }
        }
        "snapshot-send-ended" => {
            let from = id_arg(arg(0)?)?;
            let to = id_arg(arg(1)?)?;
            let (keys, _) = keyed(&args[2..]);
            let key = |k: &str| -> Result<u64, String> {
                num(keys.get(k).ok_or_else(|| format!("{k}= missing"))?)
            };
            let event = Event::SnapshotSendEnded {
                to,
                term: key("term")?,
                index: key("index")?,
            };
            c.step(from, event.clone(), format!("{from}: {event}"), out)?;
        }
        "crash" => {
            let id = id_arg(arg(0)?)?;
            c.transfers.retain(|&(from, _), _| from != id);
            c.held_ends.retain(|&(from, ..)| from != id);
            let node = c.node(id)?;
            node.raft = None;
            node.timer = None;
            let lost = node.pending.len();
            node.pending.clear();
            out.push(format!("{id} crashed, {lost} unpersisted writes lost"));
        }
        "restart" => {
            let id = id_arg(arg(0)?)?;
            if c.node(id)?.raft.is_some() {
                return Err(format!("node {id} is running"));
            }
            c.restart(id, out)?;
        }
        "partition" => {
            c.groups.clear();
            for (g, group) in args.iter().enumerate() {
                for id in group.split(',') {
                    c.groups.insert(id_arg(id)?, g);
                }
            }
            out.push(format!("partitioned {}", args.join(" | ")));
        }
        "isolate" => {
            let id = id_arg(arg(0)?)?;
            c.groups = c.nodes.keys().map(|&n| (n, usize::from(n == id))).collect();
            out.push(format!("isolated {id}"));
        }
        "heal" => {
            c.groups.clear();
            out.push("healed".to_string());
        }
        "send" => {
            let from = id_arg(arg(0)?)?;
            let to = id_arg(arg(1)?)?;
            let message = parse_message(&args[2..])?;
            out.push(format!("queued {from}->{to} {message}"));
            c.queue.push_back((from, to, message));
        }
        "drop-msgs" | "duplicate-msgs" => {
            let (keys, _) = keyed(args);
            let from = keys.get("from").map(|v| id_arg(v)).transpose()?;
            let to = keys.get("to").map(|v| id_arg(v)).transpose()?;
            let hit =
                |f: NodeId, t: NodeId| from.is_none_or(|x| x == f) && to.is_none_or(|x| x == t);
            let queued: Vec<_> = c.queue.drain(..).collect();
            let mut copies = Vec::new();
            for (f, t, m) in queued {
                if !hit(f, t) {
                    c.queue.push_back((f, t, m));
                } else if *cmd == "drop-msgs" {
                    out.push(format!("dropped {f}->{t} {m}"));
                    if let Some((term, index)) = c.streamed(f, t, &m) {
                        c.end_transfer(f, t, term, index, out)?;
                    }
                } else {
                    out.push(format!("duplicated {f}->{t} {m}"));
                    copies.push((f, t, m.clone()));
                    c.queue.push_back((f, t, m));
                }
            }
            c.queue.extend(copies);
        }
        "reverse-msgs" => {
            let reversed: VecDeque<_> = c.queue.drain(..).rev().collect();
            c.queue = reversed;
            out.push(format!("reversed {} messages", c.queue.len()));
        }
        "msgs" => {
            for (f, t, m) in &c.queue {
                out.push(format!("{f}->{t} {m}"));
            }
        }
        "status" => {
            let chosen = ids(args)?;
            let all: Vec<NodeId> = c.nodes.keys().copied().collect();
            for id in all {
                if chosen.is_empty() || chosen.contains(&id) {
                    out.push(c.status_line(id));
                }
            }
        }
        "log" => {
            let id = id_arg(arg(0)?)?;
            let log = c.running(id)?.log().clone();
            let mut line = format!("{id}: Snapshot:{}", log.snapshot());
            for i in log.snapshot().index + 1..=log.last_index() {
                let e = log.entry(i).expect("held");
                let _ = write!(line, " {}/{}", e.term, e.index);
            }
            out.push(line);
        }
        "progress" => {
            let id = id_arg(arg(0)?)?;
            let r = c.running(id)?;
            let peers: Vec<NodeId> = r
                .membership()
                .members()
                .into_iter()
                .filter(|&p| p != id)
                .collect();
            for p in peers {
                match r.progress(p) {
                    Some(pr) => out.push(format!(
                        "{p}: {:?} Match:{} Next:{} Paused:{} Inflight:{} Active:{}",
                        pr.state,
                        pr.match_index,
                        pr.next_index,
                        pr.paused,
                        pr.inflight.len(),
                        pr.recent_active
                    )),
                    None => out.push(format!("{p}: no progress (not leader)")),
                }
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    }
    Ok(())
}

// ----- scripts ----------------------------------------------------------------

struct Block {
    comments: Vec<String>,
    command: String,
    output: Vec<String>,
}

fn parse_script(text: &str, path: &Path) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().peekable();
    let mut comments = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            comments.push(line.to_string());
            continue;
        }
        let command = line.to_string();
        let mut output = Vec::new();
        if lines.peek() == Some(&"----") {
            lines.next();
            while let Some(l) = lines.peek() {
                if l.trim().is_empty() {
                    break;
                }
                output.push(l.to_string());
                lines.next();
            }
        } else {
            assert!(
                std::env::var_os("UPDATE_GOLDEN").is_some(),
                "{}: command {command:?} has no ---- line (run with UPDATE_GOLDEN=1 to fill it in)",
                path.display()
            );
        }
        blocks.push(Block {
            comments: std::mem::take(&mut comments),
            command,
            output,
        });
    }
    blocks
}

fn render(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        for c in &b.comments {
            s.push_str(c);
            s.push('\n');
        }
        s.push_str(&b.command);
        s.push_str("\n----\n");
        for l in &b.output {
            s.push_str(l);
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// Runs one script. Returns the differences found (empty: as expected).
fn run_script(path: &Path, update: bool) -> String {
    let text = std::fs::read_to_string(path).expect("readable script");
    let mut blocks = parse_script(&text, path);
    let mut cluster = Cluster::new();
    let mut diff = String::new();
    for b in &mut blocks {
        let mut out = Vec::new();
        if let Err(e) = run_command(&mut cluster, &b.command, &mut out) {
            out.push(format!("error: {e}"));
        }
        // Multi-line headers (a Persisted step with its releases) count as
        // several lines; an empty output is written as `ok`.
        let mut actual: Vec<String> = out
            .iter()
            .flat_map(|l| l.lines())
            .map(String::from)
            .collect();
        if actual.is_empty() {
            actual.push("ok".to_string());
        }
        if actual != b.output {
            let _ = writeln!(diff, "--- {}: {}", path.display(), b.command);
            for l in &b.output {
                let _ = writeln!(diff, "-{l}");
            }
            for l in &actual {
                let _ = writeln!(diff, "+{l}");
            }
        }
        b.output = actual;
    }
    if update && !diff.is_empty() {
        std::fs::write(path, render(&blocks)).expect("writable script");
    }
    diff
}

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("raft-core/testdata exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn interaction_scripts_match_their_golden_output() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let paths = scripts();
    assert!(
        paths.len() >= 12,
        "expected at least 12 scripts, found {}",
        paths.len()
    );
    let mut failures = String::new();
    for path in &paths {
        failures.push_str(&run_script(path, update));
    }
    if update {
        if !failures.is_empty() {
            eprintln!("rewrote the golden output:\n{failures}");
        }
        return;
    }
    assert!(
        failures.is_empty(),
        "interaction output differs (expected -, actual +); if the change is \
         intended, run UPDATE_GOLDEN=1 cargo test -p raft-core --test interaction \
         and review the diff:\n{failures}"
    );
}

#[test]
fn scripts_are_deterministic() {
    // Running a script twice gives the same output (no hidden state).
    for path in scripts().iter().take(3) {
        let text = std::fs::read_to_string(path).expect("readable script");
        let run = || {
            let blocks = parse_script(&text, path);
            let mut c = Cluster::new();
            let mut all = Vec::new();
            for b in &blocks {
                let _ = run_command(&mut c, &b.command, &mut all);
            }
            all
        };
        assert_eq!(run(), run(), "{}", path.display());
    }
}
