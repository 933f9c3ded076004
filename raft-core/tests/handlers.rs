//! Handler tests: each feeds one event to a node in a known state and asserts
//! the exact actions it returns, in order (after openraft's engine tests).
//!
//! Conventions: node 1 is the node under test unless said otherwise; the
//! cluster is `1..=n`; times are in milliseconds from the epoch; a node's
//! deadlines are read with `RaftNode::next_deadline` (a follower's or
//! candidate's is its election deadline) so that `SetTimer` actions can be
//! compared exactly. Only the public API is used.

use core::time::Duration;

use raft_core::{
    Action, AppendEntries, AppendEntriesReply, AppendOutcome, Config, DurableState, Entry, Error,
    Event, HardState, Index, InstallSnapshot, InstallSnapshotReply, Instant, Message, NodeId,
    Persist, ProgressState, RaftNode, RejectReason, RequestVote, RequestVoteReply, Role,
    SnapshotMeta, Term, TransferAbort, TransferOutcome,
};
use raft_core::{ConfigError, Membership, Payload};

// ----- helpers ---------------------------------------------------------------

const SEED: u64 = 7;

fn ms(t: u64) -> Instant {
    Instant::from_millis(t)
}

fn config(id: NodeId, members: u64) -> Config {
    Config::new(id, (1..=members).collect())
}

/// A node booting for the first time in the cluster `1..=members`.
fn fresh(id: NodeId, members: u64) -> RaftNode {
    RaftNode::new(config(id, members), SEED).expect("valid config")
}

/// A node restarting from storage: hard state, optional snapshot, and the
/// entries after it with the given terms.
fn recovered(
    id: NodeId,
    members: u64,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    terms: &[Term],
) -> RaftNode {
    let first = snapshot.as_ref().map_or(1, |s| s.index + 1);
    let durable = DurableState {
        hard_state,
        snapshot,
        entries: entries_from(first, terms),
    };
    RaftNode::recover(config(id, members), SEED, durable).expect("consistent state")
}

/// A snapshot boundary's (index, term).
fn position(meta: &SnapshotMeta) -> (Index, Term) {
    (meta.index, meta.term)
}

/// The entry the tests place at `index` in `term`: its command names both,
/// so two entries differ whenever their position or term does.
fn entry(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Command((format!("{index}@{term}").into_bytes()).into()),
    }
}

/// Consecutive entries from `first` on, with the given terms.
fn entries_from(first: Index, terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, &t)| entry(first + k as u64, t))
        .collect()
}

fn step(n: &mut RaftNode, now: Instant, event: Event) -> Vec<Action> {
    n.step(now, event).expect("a well-formed event is accepted")
}

fn recv(n: &mut RaftNode, now: Instant, from: NodeId, message: Message) -> Vec<Action> {
    step(n, now, Event::MessageReceived { from, message })
}

/// The first step of a node's life: arms its election timer.
fn boot(n: &mut RaftNode) -> Vec<Action> {
    step(n, ms(0), Event::TimerFired)
}

/// The plain `Send`s among `actions`, in order.
fn sends(actions: &[Action]) -> Vec<(NodeId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

/// The `Persist`s among `actions`, in order.
fn persists(actions: &[Action]) -> Vec<Persist> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The entries of every `Apply` among `actions`, concatenated.
fn applied(actions: &[Action]) -> Vec<Entry> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply { entries } => Some(entries.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Reports every `Persist` in `actions` durable (if there is one).
fn persist_all(n: &mut RaftNode, now: Instant, actions: &[Action]) -> Vec<Action> {
    match persists(actions).iter().map(|p| p.id).max() {
        Some(upto) => step(n, now, Event::Persisted { upto }),
        None => Vec::new(),
    }
}

/// A write with only the given fields set.
fn write(id: u64) -> Persist {
    Persist {
        id,
        hard_state: None,
        snapshot: None,
        truncate_from: None,
        entries: Vec::new(),
        then_send: Vec::new(),
    }
}

fn rv(term: Term, last_log_index: Index, last_log_term: Term) -> Message {
    Message::RequestVote(RequestVote {
        term,
        last_log_index,
        last_log_term,
        transfer: false,
    })
}

fn rvr(term: Term, vote_granted: bool) -> Message {
    Message::RequestVoteReply(RequestVoteReply { term, vote_granted })
}

fn ae(term: Term, prev: Index, prev_term: Term, entries: Vec<Entry>, commit: Index) -> Message {
    Message::AppendEntries(AppendEntries {
        term,
        prev_log_index: prev,
        prev_log_term: prev_term,
        entries,
        leader_commit: commit,
    })
}

fn accepted(term: Term, match_index: Index) -> Message {
    Message::AppendEntriesReply(AppendEntriesReply {
        term,
        outcome: AppendOutcome::Accepted { match_index },
    })
}

fn rejected(
    term: Term,
    prev: Index,
    conflict_term: Option<Term>,
    conflict_index: Index,
) -> Message {
    Message::AppendEntriesReply(AppendEntriesReply {
        term,
        outcome: AppendOutcome::Rejected {
            rejected_prev: prev,
            conflict_term,
            conflict_index,
        },
    })
}

/// An InstallSnapshot header, recording no configuration.
fn snap_header(term: Term, index: Index, snap_term: Term) -> InstallSnapshot {
    InstallSnapshot {
        term,
        last_included_index: index,
        last_included_term: snap_term,
        membership: Membership::default(),
    }
}

fn install(term: Term, index: Index, snap_term: Term) -> Message {
    Message::InstallSnapshot(snap_header(term, index, snap_term))
}

/// The `SendSnapshot`s among `actions`, in order.
fn snapshot_sends(actions: &[Action]) -> Vec<(NodeId, InstallSnapshot)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendSnapshot { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

fn install_reply(term: Term, index: Index) -> Message {
    Message::InstallSnapshotReply(InstallSnapshotReply {
        term,
        last_included_index: index,
    })
}

/// Boots `n` if needed, lets its election deadline pass, and makes the
/// candidacy's write durable. Returns the time of the candidacy.
fn campaign(n: &mut RaftNode) -> Instant {
    if n.next_deadline().is_none() {
        boot(n);
    }
    let now = n.next_deadline().unwrap();
    let actions = step(n, now, Event::TimerFired);
    assert_eq!(n.role(), Role::Candidate);
    persist_all(n, now, &actions);
    now
}

/// Campaigns and collects grants from peers (in configuration order) until
/// `n` leads. Returns the time it took office.
fn elect(n: &mut RaftNode) -> Instant {
    let now = campaign(n);
    let term = n.term();
    let peers: Vec<NodeId> = n.config().peers().collect();
    for peer in peers {
        if n.is_leader() {
            break;
        }
        recv(n, now, peer, rvr(term, true));
    }
    assert!(n.is_leader(), "a majority of grants elects");
    now
}

/// Answers the new leader's probe from every peer with `match_index`, moving
/// them all to `Replicate`.
fn ack_probes(n: &mut RaftNode, now: Instant, match_index: Index) {
    let peers: Vec<NodeId> = n.config().peers().collect();
    for peer in peers {
        recv(n, now, peer, accepted(n.term(), match_index));
        assert_eq!(n.progress(peer).unwrap().state, ProgressState::Replicate);
    }
}

/// The durable image built from every `Persist` in `actions`.
fn durable_image(start: DurableState, actions: &[Action]) -> DurableState {
    let mut d = start;
    for p in persists(actions) {
        d.apply(&p);
    }
    d
}

// ----- timers and elections --------------------------------------------------

#[test]
fn fresh_follower_first_step_only_arms_election_timer() {
    let mut n = fresh(1, 3);
    let actions = boot(&mut n);
    let deadline = n.next_deadline().unwrap();
    assert_eq!(actions, vec![Action::SetTimer { deadline }]);
    assert!(
        deadline >= ms(300) && deadline < ms(600),
        "deadline {deadline:?}"
    );
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), 0);
    assert_eq!(n.voted_for(), None);
}

#[test]
fn early_and_repeated_timer_firings_are_no_ops() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    let deadline = n.next_deadline().unwrap();
    assert_eq!(step(&mut n, ms(0), Event::TimerFired), vec![]);
    assert_eq!(step(&mut n, ms(299), Event::TimerFired), vec![]);
    let just_before = Instant::from_nanos(deadline.as_nanos() - 1);
    assert_eq!(step(&mut n, just_before, Event::TimerFired), vec![]);
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), 0);
}

#[test]
fn election_deadline_passing_persists_own_vote_then_requests_votes() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    let actions = step(&mut n, t, Event::TimerFired);
    let next = n.next_deadline().unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 1,
                    voted_for: Some(1)
                }),
                then_send: vec![(2, rv(1, 0, 0)), (3, rv(1, 0, 0))],
                ..write(1)
            }),
            Action::SetTimer { deadline: next },
        ]
    );
    assert!(next >= t + Duration::from_millis(300) && next < t + Duration::from_millis(600));
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(n.term(), 1);
    assert_eq!(n.voted_for(), Some(1));
    assert_eq!(n.leader_hint(), None);
}

#[test]
fn candidate_request_carries_last_log_position() {
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 2,
            voted_for: None,
        },
        None,
        &[1, 2, 2],
    );
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    let p = persists(&step(&mut n, t, Event::TimerFired)).remove(0);
    assert_eq!(
        p.hard_state,
        Some(HardState {
            term: 3,
            voted_for: Some(1)
        })
    );
    assert_eq!(p.then_send, vec![(2, rv(3, 3, 2)), (3, rv(3, 3, 2))]);
}

#[test]
fn candidate_whose_election_times_out_stands_again_in_next_term() {
    let mut n = fresh(1, 3);
    let t1 = campaign(&mut n);
    let t2 = n.next_deadline().unwrap();
    assert!(t2 > t1);
    let actions = step(&mut n, t2, Event::TimerFired);
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 2,
                    voted_for: Some(1)
                }),
                then_send: vec![(2, rv(2, 0, 0)), (3, rv(2, 0, 0))],
                ..write(2)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.role(), Role::Candidate);
}

#[test]
fn follower_grants_vote_with_hard_state_and_reply_in_then_send() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let actions = recv(&mut n, ms(10), 1, rv(1, 0, 0));
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 1,
                    voted_for: Some(1)
                }),
                then_send: vec![(1, rvr(1, true))],
                ..write(1)
            }),
            // Granting a vote defers our own candidacy.
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert!(n.next_deadline().unwrap() >= ms(310));
    assert_eq!(n.voted_for(), Some(1));
    assert_eq!(n.term(), 1);
    assert_eq!(n.role(), Role::Follower);
}

#[test]
fn repeated_request_from_the_voted_candidate_is_granted_again_without_a_write() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let first = recv(&mut n, ms(10), 1, rv(1, 0, 0));
    persist_all(&mut n, ms(10), &first);
    let actions = recv(&mut n, ms(20), 1, rv(1, 0, 0));
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 1,
                message: rvr(1, true)
            },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
}

#[test]
fn second_candidate_in_same_term_is_refused() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let grant = recv(&mut n, ms(10), 1, rv(1, 0, 0));
    persist_all(&mut n, ms(10), &grant);
    let deadline = n.next_deadline().unwrap();
    let actions = recv(&mut n, ms(20), 3, rv(1, 5, 1));
    // Nothing to write and nothing pending: the refusal goes out at once,
    // and the election timer is not reset.
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 3,
            message: rvr(1, false)
        }]
    );
    assert_eq!(n.next_deadline().unwrap(), deadline);
    assert_eq!(n.voted_for(), Some(1));
}

#[test]
fn refusal_waits_behind_an_unpersisted_grant() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    recv(&mut n, ms(10), 1, rv(1, 0, 0)); // write 1 not yet durable
    let actions = recv(&mut n, ms(20), 3, rv(1, 0, 0));
    // The refusal rests on the grant being durable: it rides in a barrier.
    assert_eq!(
        actions,
        vec![Action::Persist(Persist {
            then_send: vec![(3, rvr(1, false))],
            ..write(2)
        })]
    );
    assert!(persists(&actions)[0].is_barrier());
}

#[test]
fn vote_refused_to_a_candidate_with_an_older_log_but_its_term_is_adopted() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 1,
            voted_for: None,
        },
        None,
        &[1, 1],
    );
    boot(&mut n);
    let deadline = n.next_deadline().unwrap();
    // Longer log but older last term (§5.4.1): refused.
    let actions = recv(&mut n, ms(10), 1, rv(2, 5, 0));
    assert_eq!(
        actions,
        vec![Action::Persist(Persist {
            hard_state: Some(HardState {
                term: 2,
                voted_for: None
            }),
            then_send: vec![(1, rvr(2, false))],
            ..write(1)
        })]
    );
    assert_eq!(
        n.next_deadline().unwrap(),
        deadline,
        "a refusal does not defer the election"
    );
    // Same last term, shorter log: refused too.
    assert_eq!(
        recv(&mut n, ms(20), 3, rv(2, 1, 1)),
        vec![Action::Persist(Persist {
            then_send: vec![(3, rvr(2, false))],
            ..write(2)
        })]
    );
    assert_eq!(n.voted_for(), None);
}

#[test]
fn candidate_refuses_other_candidates_of_its_term() {
    let mut n = fresh(1, 3);
    let t = campaign(&mut n);
    assert_eq!(
        recv(&mut n, t, 2, rv(1, 9, 9)),
        vec![Action::Send {
            to: 2,
            message: rvr(1, false)
        }]
    );
    assert_eq!(n.role(), Role::Candidate);
}

#[test]
fn candidate_with_majority_becomes_leader_and_heartbeats_every_peer() {
    let mut n = fresh(1, 3);
    let t = campaign(&mut n);
    let actions = recv(&mut n, t, 2, rvr(1, true));
    let heartbeat = ae(1, 0, 0, vec![], 0);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 2,
                message: heartbeat.clone()
            },
            Action::Send {
                to: 3,
                message: heartbeat
            },
            Action::SetTimer {
                deadline: t + Duration::from_millis(100)
            },
        ]
    );
    assert!(n.is_leader());
    assert_eq!(n.leader_hint(), Some(1));
    for peer in [2, 3] {
        let pr = n.progress(peer).unwrap();
        assert_eq!(
            (pr.state, pr.next_index, pr.match_index),
            (ProgressState::Probe, 1, 0)
        );
    }
    // A late grant changes nothing.
    assert_eq!(recv(&mut n, t, 3, rvr(1, true)), vec![]);
}

#[test]
fn refusals_and_duplicate_grants_do_not_make_a_leader() {
    let mut n = fresh(1, 5);
    let t = campaign(&mut n);
    assert_eq!(recv(&mut n, t, 2, rvr(1, false)), vec![]);
    assert_eq!(recv(&mut n, t, 3, rvr(1, true)), vec![]);
    assert_eq!(
        recv(&mut n, t, 3, rvr(1, true)),
        vec![],
        "one vote per voter"
    );
    assert_eq!(n.role(), Role::Candidate);
    let actions = recv(&mut n, t, 4, rvr(1, true));
    assert!(n.is_leader());
    assert_eq!(sends(&actions).len(), 4);
}

#[test]
fn leader_heartbeats_when_its_interval_passes() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    let hb = t + Duration::from_millis(100);
    assert_eq!(
        step(
            &mut n,
            Instant::from_nanos(hb.as_nanos() - 1),
            Event::TimerFired
        ),
        vec![]
    );
    // Both peers are still probing with an unanswered message: the heartbeat
    // re-sends the probe without entries.
    let actions = step(&mut n, hb, Event::TimerFired);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 2,
                message: ae(1, 0, 0, vec![], 0)
            },
            Action::Send {
                to: 3,
                message: ae(1, 0, 0, vec![], 0)
            },
            Action::SetTimer {
                deadline: hb + Duration::from_millis(100)
            },
        ]
    );
}

#[test]
fn single_member_cluster_elects_itself_once_its_vote_is_durable_and_commits_on_its_own_durability()
{
    let mut n = fresh(1, 1);
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    let actions = step(&mut n, t, Event::TimerFired);
    assert!(
        !n.is_leader(),
        "alone, it leads only once its vote is durable"
    );
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 1,
                    voted_for: Some(1)
                }),
                ..write(1)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(
        step(&mut n, t, Event::Persisted { upto: 1 }),
        vec![Action::SetTimer {
            deadline: t + Duration::from_millis(100)
        }]
    );
    assert!(n.is_leader());
    let actions = step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 5,
            command: b"x".to_vec(),
        },
    );
    let e = Entry {
        index: 1,
        term: 1,
        payload: Payload::Command((b"x".to_vec()).into()),
    };
    assert_eq!(
        actions,
        vec![
            Action::AcceptProposal {
                id: 5,
                index: 1,
                term: 1
            },
            Action::Persist(Persist {
                entries: vec![e.clone()],
                ..write(2)
            }),
        ]
    );
    assert_eq!(n.commit_index(), 0, "not durable yet");
    assert_eq!(
        step(&mut n, t, Event::Persisted { upto: 2 }),
        vec![Action::Apply { entries: vec![e] }]
    );
    assert_eq!(n.commit_index(), 1);
}

// ----- replication: the leader's side ----------------------------------------

#[test]
fn leader_proposal_is_accepted_persisted_and_sent_to_every_peer_at_once() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let actions = step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 7,
            command: b"set x".to_vec(),
        },
    );
    let e = Entry {
        index: 1,
        term: 1,
        payload: Payload::Command((b"set x".to_vec()).into()),
    };
    let append = ae(1, 0, 0, vec![e.clone()], 0);
    assert_eq!(
        actions,
        vec![
            Action::AcceptProposal {
                id: 7,
                index: 1,
                term: 1
            },
            // The leader's appends may leave before its own write is durable.
            Action::Send {
                to: 2,
                message: append.clone()
            },
            Action::Send {
                to: 3,
                message: append
            },
            Action::Persist(Persist {
                entries: vec![e],
                ..write(2)
            }),
        ]
    );
    assert_eq!(n.progress(2).unwrap().next_index, 2);
    assert_eq!(n.progress(2).unwrap().inflight.len(), 1);
}

#[test]
fn proposal_waits_for_an_unanswered_probe_then_follows_its_answer() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    let actions = step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 1,
            command: b"a".to_vec(),
        },
    );
    let e = Entry {
        index: 1,
        term: 1,
        payload: Payload::Command((b"a".to_vec()).into()),
    };
    assert_eq!(
        actions,
        vec![
            Action::AcceptProposal {
                id: 1,
                index: 1,
                term: 1
            },
            Action::Persist(Persist {
                entries: vec![e.clone()],
                ..write(2)
            }),
        ],
        "both peers are probing with a message out: nothing more is sent yet"
    );
    let actions = recv(&mut n, t, 2, accepted(1, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(1, 0, 0, vec![e], 0)
        }]
    );
    assert_eq!(n.progress(2).unwrap().state, ProgressState::Replicate);
    assert_eq!(n.progress(3).unwrap().state, ProgressState::Probe);
}

#[test]
fn follower_rejects_proposals_naming_the_leader() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    assert_eq!(
        step(
            &mut n,
            ms(1),
            Event::ProposalReceived {
                id: 3,
                command: vec![]
            }
        ),
        vec![Action::RejectProposal {
            id: 3,
            reason: RejectReason::NotLeader { leader_hint: None }
        }]
    );
    let a = recv(&mut n, ms(2), 1, ae(1, 0, 0, vec![], 0));
    persist_all(&mut n, ms(2), &a);
    assert_eq!(
        step(
            &mut n,
            ms(3),
            Event::ProposalReceived {
                id: 4,
                command: vec![]
            }
        ),
        vec![Action::RejectProposal {
            id: 4,
            reason: RejectReason::NotLeader {
                leader_hint: Some(1)
            }
        }]
    );
}

#[test]
fn leader_rejects_proposals_beyond_the_uncommitted_limit() {
    let mut cfg = config(1, 3);
    cfg.max_uncommitted_entries = 2;
    let mut n = RaftNode::new(cfg, SEED).unwrap();
    let t = elect(&mut n);
    for id in 0..2 {
        let actions = step(
            &mut n,
            t,
            Event::ProposalReceived {
                id,
                command: vec![],
            },
        );
        assert!(matches!(actions[0], Action::AcceptProposal { .. }));
    }
    assert_eq!(
        step(
            &mut n,
            t,
            Event::ProposalReceived {
                id: 9,
                command: vec![]
            }
        ),
        vec![Action::RejectProposal {
            id: 9,
            reason: RejectReason::TooManyUncommitted
        }]
    );
    assert_eq!(n.log().last_index(), 2);
}

#[test]
fn leader_inheriting_a_full_window_of_older_term_entries_can_still_make_progress() {
    // Found by `props.rs`'s `three_node_cluster_recovers_once_faults_stop`.
    // The leader of term 1 filled `max_uncommitted_entries` (2 here) and lost
    // office before node 1 learnt that they committed. Node 1 now leads term
    // 2 holding them. It may not commit them by counting replicas (Figure 8)
    // until an entry of term 2 sits on a majority, and it appends none on
    // taking office; but it refuses every proposal while they are
    // uncommitted. Nothing can ever commit: the cluster is unavailable for as
    // long as this leader lives, although every follower holds the whole log.
    let mut cfg = config(1, 3);
    cfg.max_uncommitted_entries = 2;
    let durable = DurableState {
        hard_state: HardState {
            term: 1,
            voted_for: None,
        },
        snapshot: None,
        entries: entries_from(1, &[1, 1]),
    };
    let mut n = RaftNode::recover(cfg, SEED, durable).unwrap();
    let t = elect(&mut n);
    let last = n.log().last_index();
    ack_probes(&mut n, t, last);
    let hb = t + Duration::from_millis(100);
    step(&mut n, hb, Event::TimerFired);
    for peer in [2, 3] {
        recv(&mut n, hb, peer, accepted(2, last));
    }
    let actions = step(
        &mut n,
        hb,
        Event::ProposalReceived {
            id: 1,
            command: b"x".to_vec(),
        },
    );
    let accepted_proposal = actions
        .iter()
        .any(|a| matches!(a, Action::AcceptProposal { .. }));
    assert!(
        n.commit_index() >= 2 || accepted_proposal,
        "leader of term {} with every follower caught up neither commits (commit {}) \
         nor accepts a proposal: {actions:?}",
        n.term(),
        n.commit_index()
    );
}

#[test]
fn leader_after_rejection_skips_a_term_it_does_not_hold() {
    // Leader: terms 1 1 1 3 3 3. Follower: 1 1 1 2 2 2 2 2.
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 3,
            voted_for: None,
        },
        None,
        &[1, 1, 1, 3, 3, 3],
    );
    let t = elect(&mut n);
    assert_eq!(n.term(), 4);
    // The probe went out with prev 6 (term 3); the follower holds term 2
    // there, starting at index 4.
    let actions = recv(&mut n, t, 2, rejected(4, 6, Some(2), 4));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(4, 3, 1, entries_from(4, &[3, 3, 3]), 0)
        }],
        "one round trip skips the follower's whole term 2"
    );
    assert_eq!(n.progress(2).unwrap().next_index, 4);
    assert_eq!(n.progress(2).unwrap().state, ProgressState::Probe);
}

#[test]
fn leader_after_rejection_resumes_after_its_last_entry_of_the_conflicting_term() {
    // Leader: terms 1 1 2 2 3 3. Follower: 1 1 2 2 2 2 2.
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 3,
            voted_for: None,
        },
        None,
        &[1, 1, 2, 2, 3, 3],
    );
    let t = elect(&mut n);
    let actions = recv(&mut n, t, 2, rejected(4, 6, Some(2), 3));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(4, 4, 2, entries_from(5, &[3, 3]), 0)
        }]
    );
    // The follower now accepts: replication streams from there on.
    let actions = recv(&mut n, t, 2, accepted(4, 6));
    assert_eq!(actions, vec![]);
    let pr = n.progress(2).unwrap();
    assert_eq!(
        (pr.state, pr.match_index, pr.next_index),
        (ProgressState::Replicate, 6, 7)
    );
}

#[test]
fn leader_after_rejection_from_a_short_log_resumes_at_its_end() {
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 1,
            voted_for: None,
        },
        None,
        &[1, 1, 1, 1],
    );
    let t = elect(&mut n);
    let actions = recv(&mut n, t, 3, rejected(2, 4, None, 2));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 3,
            message: ae(2, 1, 1, entries_from(2, &[1, 1, 1]), 0)
        }]
    );
}

#[test]
fn appends_carry_at_most_max_entries_per_append() {
    let mut cfg = config(1, 3);
    cfg.max_entries_per_append = 2;
    let durable = DurableState {
        hard_state: HardState {
            term: 1,
            voted_for: None,
        },
        snapshot: None,
        entries: entries_from(1, &[1, 1, 1, 1, 1]),
    };
    let mut n = RaftNode::recover(cfg, SEED, durable).unwrap();
    let t = elect(&mut n);
    let actions = recv(&mut n, t, 2, rejected(2, 5, None, 1));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(2, 0, 0, entries_from(1, &[1, 1]), 0)
        }]
    );
    // Each acknowledgement moves the window on, two entries at a time.
    let actions = recv(&mut n, t, 2, accepted(2, 2));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(2, 2, 1, entries_from(3, &[1, 1]), 0)
        }]
    );
}

#[test]
fn stale_rejections_are_ignored() {
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 1,
            voted_for: None,
        },
        None,
        &[1, 1, 1, 1],
    );
    let t = elect(&mut n);
    // Probing at next 5: a rejection of prev 2 answers an older probe.
    assert_eq!(recv(&mut n, t, 2, rejected(2, 2, None, 1)), vec![]);
    assert_eq!(n.progress(2).unwrap().next_index, 5);
}

#[test]
fn figure_8_older_term_entry_commits_only_under_a_current_term_entry() {
    // A leader of term 3 holding an entry of term 2 at index 2.
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 2,
            voted_for: None,
        },
        None,
        &[1, 2],
    );
    let t = elect(&mut n);
    assert_eq!(n.term(), 3);
    // Both followers hold index 2: a majority (all three) has it, but it is
    // of term 2, so counting replicas does not commit it (Figure 8).
    assert_eq!(recv(&mut n, t, 2, accepted(3, 2)), vec![]);
    assert_eq!(recv(&mut n, t, 3, accepted(3, 2)), vec![]);
    assert_eq!(n.commit_index(), 0);
    // An entry of term 3 on a majority commits it, and everything before.
    let actions = step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 1,
            command: b"c".to_vec(),
        },
    );
    let e3 = Entry {
        index: 3,
        term: 3,
        payload: Payload::Command((b"c".to_vec()).into()),
    };
    assert_eq!(
        sends(&actions),
        vec![
            (2, ae(3, 2, 2, vec![e3.clone()], 0)),
            (3, ae(3, 2, 2, vec![e3.clone()], 0)),
        ]
    );
    assert_eq!(step(&mut n, t, Event::Persisted { upto: 2 }), vec![]);
    assert_eq!(n.commit_index(), 0);
    let actions = recv(&mut n, t, 2, accepted(3, 3));
    assert_eq!(n.commit_index(), 3);
    assert_eq!(
        actions,
        vec![Action::Apply {
            entries: vec![entry(1, 1), entry(2, 2), e3]
        }]
    );
    // Followers learn the commit on the next heartbeat.
    let hb = t + Duration::from_millis(100);
    let actions = step(&mut n, hb, Event::TimerFired);
    assert_eq!(
        sends(&actions),
        vec![(2, ae(3, 3, 3, vec![], 3)), (3, ae(3, 3, 3, vec![], 3))]
    );
}

#[test]
fn leader_counts_itself_toward_commit_only_once_persisted() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 1,
            command: b"a".to_vec(),
        },
    );
    // One follower holds it; the leader's own copy is not durable yet.
    assert_eq!(recv(&mut n, t, 2, accepted(1, 1)), vec![]);
    assert_eq!(n.commit_index(), 0);
    assert_eq!(n.durable_index(), 0);
    let actions = step(&mut n, t, Event::Persisted { upto: 2 });
    assert_eq!(n.commit_index(), 1);
    assert_eq!(
        actions,
        vec![Action::Apply {
            entries: vec![Entry {
                index: 1,
                term: 1,
                payload: Payload::Command((b"a".to_vec()).into())
            }]
        }]
    );
}

#[test]
fn leader_durability_alone_does_not_commit_in_a_three_member_cluster() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 1,
            command: b"a".to_vec(),
        },
    );
    assert_eq!(step(&mut n, t, Event::Persisted { upto: 2 }), vec![]);
    assert_eq!(n.commit_index(), 0);
    assert_eq!(n.durable_index(), 1);
    // A duplicate acknowledgement of nothing new changes nothing either.
    assert_eq!(recv(&mut n, t, 2, accepted(1, 0)), vec![]);
    assert_eq!(n.commit_index(), 0);
}

#[test]
fn leader_drops_acknowledgements_of_entries_it_never_sent() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    assert_eq!(recv(&mut n, t, 2, accepted(1, 5)), vec![]);
    assert_eq!(n.progress(2).unwrap().match_index, 0);
    assert_eq!(n.commit_index(), 0);
}

#[test]
fn leader_streams_at_most_max_inflight_appends_per_peer() {
    let mut cfg = config(1, 3);
    cfg.max_inflight_appends = 2;
    let mut n = RaftNode::new(cfg, SEED).unwrap();
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let mut sent = Vec::new();
    for id in 0..3 {
        let actions = step(
            &mut n,
            t,
            Event::ProposalReceived {
                id,
                command: vec![id as u8],
            },
        );
        sent.push(sends(&actions).iter().filter(|(to, _)| *to == 2).count());
    }
    assert_eq!(sent, vec![1, 1, 0], "the third append waits for an answer");
    // The answer frees a slot: the held entry follows.
    let actions = recv(&mut n, t, 2, accepted(1, 1));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(
                1,
                2,
                1,
                vec![Entry {
                    index: 3,
                    term: 1,
                    payload: Payload::Command((vec![2]).into())
                }],
                0
            )
        }]
    );
}

// ----- replication: the follower's side --------------------------------------

#[test]
fn follower_accepting_entries_persists_them_and_acknowledges_once_durable() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let first = recv(&mut n, ms(1), 1, rv(1, 0, 0));
    persist_all(&mut n, ms(1), &first);
    let es = entries_from(1, &[1, 1]);
    let actions = recv(&mut n, ms(5), 1, ae(1, 0, 0, es.clone(), 0));
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                entries: es,
                then_send: vec![(1, accepted(1, 2))],
                ..write(2)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.leader_hint(), Some(1));
    assert_eq!(n.log().last_index(), 2);
    assert_eq!(n.durable_index(), 0);
    assert_eq!(step(&mut n, ms(6), Event::Persisted { upto: 2 }), vec![]);
    assert_eq!(n.durable_index(), 2);
}

#[test]
fn follower_whose_log_is_too_short_rejects_with_its_end() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 1,
            voted_for: Some(1),
        },
        None,
        &[1, 1],
    );
    boot(&mut n);
    let actions = recv(&mut n, ms(5), 1, ae(1, 5, 1, entries_from(6, &[1]), 0));
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 1,
                message: rejected(1, 5, None, 3)
            },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.log().last_index(), 2);
}

#[test]
fn follower_with_conflicting_term_rejects_with_that_term_and_its_first_index() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 2,
            voted_for: None,
        },
        None,
        &[1, 1, 2, 2, 2],
    );
    boot(&mut n);
    let actions = recv(&mut n, ms(5), 1, ae(3, 5, 3, vec![], 0));
    assert_eq!(
        actions,
        vec![
            // The new term is adopted: the rejection waits for it to be durable.
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 3,
                    voted_for: None
                }),
                then_send: vec![(1, rejected(3, 5, Some(2), 3))],
                ..write(1)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.log().last_index(), 5, "a rejection truncates nothing");
    assert_eq!(n.leader_hint(), Some(1));
}

#[test]
fn follower_truncates_a_conflicting_suffix_and_appends_the_leaders_entries() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 2,
            voted_for: None,
        },
        None,
        &[1, 1, 2, 2, 2],
    );
    boot(&mut n);
    let new = entries_from(3, &[3, 3]);
    let actions = recv(&mut n, ms(5), 1, ae(3, 2, 1, new.clone(), 0));
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 3,
                    voted_for: None
                }),
                truncate_from: Some(3),
                entries: new,
                then_send: vec![(1, accepted(3, 4))],
                ..write(1)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.log().last_index(), 4);
    assert_eq!(n.log().term_at(3), Some(3));
    assert_eq!(
        n.durable_index(),
        2,
        "only the common prefix is known durable"
    );
}

#[test]
fn follower_keeps_entries_past_a_stale_append_that_matches() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 1,
            voted_for: Some(1),
        },
        None,
        &[1, 1, 1],
    );
    boot(&mut n);
    // An old, reordered append carrying a prefix of what we hold.
    let actions = recv(&mut n, ms(5), 1, ae(1, 0, 0, entries_from(1, &[1]), 0));
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 1,
                message: accepted(1, 1)
            },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.log().last_index(), 3);
}

#[test]
fn follower_applies_only_what_is_both_committed_and_durable() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let es = entries_from(1, &[1, 1]);
    let actions = recv(&mut n, ms(5), 1, ae(1, 0, 0, es.clone(), 2));
    assert!(applied(&actions).is_empty(), "committed but not durable");
    assert_eq!(n.commit_index(), 2);
    assert_eq!(n.last_applied(), 0);
    assert_eq!(
        step(&mut n, ms(6), Event::Persisted { upto: 1 }),
        vec![Action::Apply { entries: es }]
    );
    assert_eq!(n.last_applied(), 2);
}

#[test]
fn follower_applies_durable_entries_once_the_leader_commits_them() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let es = entries_from(1, &[1, 1, 1]);
    let a = recv(&mut n, ms(5), 1, ae(1, 0, 0, es.clone(), 0));
    assert_eq!(persist_all(&mut n, ms(5), &a), vec![]);
    assert_eq!(n.commit_index(), 0);
    // A heartbeat that only covers index 2 commits no further than 2.
    let actions = recv(&mut n, ms(6), 1, ae(1, 2, 1, vec![], 3));
    assert_eq!(n.commit_index(), 2);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 1,
                message: accepted(1, 2)
            },
            Action::Apply {
                entries: es[..2].to_vec()
            },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
}

#[test]
fn candidate_hearing_from_the_leader_of_its_term_steps_down() {
    let mut n = fresh(1, 3);
    let t = campaign(&mut n);
    let actions = recv(&mut n, t, 2, ae(1, 0, 0, vec![], 0));
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.leader_hint(), Some(2));
    assert_eq!(n.voted_for(), Some(1), "its vote stands");
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 2,
                message: accepted(1, 0)
            },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
}

#[test]
fn follower_never_truncates_committed_entries() {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let a = recv(&mut n, ms(5), 1, ae(1, 0, 0, entries_from(1, &[1, 1]), 2));
    persist_all(&mut n, ms(5), &a);
    assert_eq!(n.commit_index(), 2);
    // A message that would replace committed index 2 cannot come from a real
    // leader: it is dropped without an answer.
    let actions = recv(&mut n, ms(6), 3, ae(2, 1, 1, entries_from(2, &[2]), 0));
    assert_eq!(
        persists(&actions),
        vec![Persist {
            hard_state: Some(HardState {
                term: 2,
                voted_for: None
            }),
            ..write(2)
        }]
    );
    assert!(sends(&actions).is_empty());
    assert_eq!(n.log().term_at(2), Some(1));
}

// ----- snapshots ---------------------------------------------------------------

/// A follower holding entries 1..=3 of term 1, all committed, durable and
/// applied; its persist ids 1 and 2 are used.
fn follower_with_three_applied() -> RaftNode {
    let mut n = fresh(2, 3);
    boot(&mut n);
    let a = recv(
        &mut n,
        ms(5),
        1,
        ae(1, 0, 0, entries_from(1, &[1, 1, 1]), 3),
    );
    let applied_now = persist_all(&mut n, ms(5), &a);
    assert_eq!(applied(&applied_now).len(), 3);
    n
}

#[test]
fn snapshot_taken_compacts_the_log_and_persists_the_snapshot() {
    let mut n = follower_with_three_applied();
    let actions = step(&mut n, ms(10), Event::SnapshotTaken { index: 2 });
    let snapshot = SnapshotMeta {
        membership: Membership::with_voters([1, 2, 3]),
        ..SnapshotMeta::at(2, 1)
    };
    assert_eq!(
        actions,
        vec![Action::Persist(Persist {
            snapshot: Some(snapshot),
            ..write(2)
        })]
    );
    assert_eq!(position(n.log().snapshot()), (2, 1));
    assert_eq!(n.log().entry(2), None);
    assert_eq!(n.log().term_at(2), Some(1));
    assert_eq!(n.log().entry(3), Some(&entry(3, 1)));
    // An older snapshot is ignored.
    assert_eq!(
        step(&mut n, ms(11), Event::SnapshotTaken { index: 1 }),
        vec![]
    );
    assert_eq!(n.log().snapshot().index, 2);
}

/// Node 1 leading term 2 from a snapshot at 3/1 (no entries after it),
/// which has just asked to stream it to follower 2 (whose log is empty) and
/// heard nothing from 3 yet. Returns the time it took office.
fn leader_streaming_a_snapshot_to_2() -> (RaftNode, Instant) {
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 1,
            voted_for: None,
        },
        Some(SnapshotMeta::at(3, 1)),
        &[],
    );
    assert_eq!(n.commit_index(), 3);
    let t = elect(&mut n);
    // The probe went out at prev 3; follower 2 has an empty log.
    let actions = recv(&mut n, t, 2, rejected(2, 3, None, 1));
    assert_eq!(
        actions,
        vec![Action::SendSnapshot {
            to: 2,
            message: snap_header(2, 3, 1)
        }]
    );
    assert_eq!(
        n.progress(2).unwrap().state,
        ProgressState::Snapshot { index: 3 }
    );
    (n, t)
}

#[test]
fn leader_sends_install_snapshot_to_a_follower_behind_its_snapshot() {
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    // Once installed, replication resumes after it.
    let actions = recv(&mut n, t, 2, install_reply(2, 3));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(2, 3, 1, vec![], 3)
        }]
    );
    let pr = n.progress(2).unwrap();
    assert_eq!(
        (pr.state, pr.match_index, pr.next_index),
        (ProgressState::Probe, 3, 4)
    );
    let actions = recv(&mut n, t, 2, accepted(2, 3));
    assert!(snapshot_sends(&actions).is_empty());
    assert_eq!(n.progress(2).unwrap().state, ProgressState::Replicate);
}

#[test]
fn a_snapshot_in_flight_is_never_resent_heartbeats_go_from_the_snapshot() {
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    // Two heartbeats during the transfer: to 2 an empty append from the
    // snapshot's index, like any other follower's, never the snapshot.
    for k in 1..=2 {
        let hb = t + Duration::from_millis(100 * k);
        let actions = step(&mut n, hb, Event::TimerFired);
        assert_eq!(
            actions,
            vec![
                Action::Send {
                    to: 2,
                    message: ae(2, 3, 1, vec![], 3)
                },
                Action::Send {
                    to: 3,
                    message: ae(2, 3, 1, vec![], 3)
                },
                Action::SetTimer {
                    deadline: hb + Duration::from_millis(100)
                },
            ]
        );
        assert_eq!(
            n.progress(2).unwrap().state,
            ProgressState::Snapshot { index: 3 }
        );
        // Follower 2 rejects it (it has not installed the snapshot yet):
        // the transfer is already under way, so nothing is sent.
        assert_eq!(recv(&mut n, hb, 2, rejected(2, 3, None, 1)), vec![]);
        assert_eq!(
            n.progress(2).unwrap().state,
            ProgressState::Snapshot { index: 3 }
        );
    }
}

#[test]
fn the_end_of_a_transfer_probes_the_follower_right_after_the_snapshot() {
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    let ended = Event::SnapshotSendEnded {
        to: 2,
        term: 2,
        index: 3,
    };
    let actions = step(&mut n, t, ended.clone());
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(2, 3, 1, vec![], 3)
        }]
    );
    let pr = n.progress(2).unwrap();
    assert_eq!(
        (pr.state, pr.next_index, pr.paused),
        (ProgressState::Probe, 4, true)
    );
    // Reported twice (a driver bug), the second changes nothing.
    assert_eq!(step(&mut n, t, ended), vec![]);
    // The follower never got it: it rejects the probe, and one new
    // transfer starts.
    let actions = recv(&mut n, t, 2, rejected(2, 3, None, 1));
    assert_eq!(
        actions,
        vec![Action::SendSnapshot {
            to: 2,
            message: snap_header(2, 3, 1)
        }]
    );
    assert_eq!(
        n.progress(2).unwrap().state,
        ProgressState::Snapshot { index: 3 }
    );
}

#[test]
fn the_end_of_a_transfer_the_follower_installed_leads_to_replicate() {
    // Its InstallSnapshotReply was lost: the probe finds the logs agree.
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    let ended = Event::SnapshotSendEnded {
        to: 2,
        term: 2,
        index: 3,
    };
    assert_eq!(
        sends(&step(&mut n, t, ended)),
        vec![(2, ae(2, 3, 1, vec![], 3))]
    );
    let actions = recv(&mut n, t, 2, accepted(2, 3));
    assert_eq!(actions, vec![]);
    let pr = n.progress(2).unwrap();
    assert_eq!(
        (pr.state, pr.match_index, pr.next_index),
        (ProgressState::Replicate, 3, 4)
    );
}

#[test]
fn an_accepted_heartbeat_during_the_transfer_ends_the_snapshot_state() {
    // The follower installed it, its reply was lost, and the driver has not
    // reported the end yet: its answer to a heartbeat tells.
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    let hb = t + Duration::from_millis(100);
    step(&mut n, hb, Event::TimerFired);
    let actions = recv(&mut n, hb, 2, accepted(2, 3));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: ae(2, 3, 1, vec![], 3)
        }]
    );
    let pr = n.progress(2).unwrap();
    assert_eq!(
        (pr.state, pr.match_index, pr.next_index),
        (ProgressState::Probe, 3, 4)
    );
    // The end of the transfer, reported late, changes nothing.
    let ended = Event::SnapshotSendEnded {
        to: 2,
        term: 2,
        index: 3,
    };
    let before = n.progress(2).unwrap().clone();
    assert_eq!(step(&mut n, hb, ended), vec![]);
    assert_eq!(n.progress(2).unwrap(), &before);
}

#[test]
fn a_newer_snapshot_waits_for_the_end_of_the_transfer_in_flight() {
    // Follower 2 answers a heartbeat through the snapshot at 3 before the
    // driver reports that transfer's end; it then needs the leader's newer
    // snapshot (at 5). One transfer at a time: the leader waits for the end
    // of the first, whose probe then asks for the second.
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    let hb = t + Duration::from_millis(100);
    step(&mut n, hb, Event::TimerFired);
    recv(&mut n, hb, 2, accepted(2, 3));
    recv(&mut n, hb, 2, accepted(2, 3));
    recv(&mut n, hb, 3, accepted(2, 3));
    for peer in [2, 3] {
        assert_eq!(n.progress(peer).unwrap().state, ProgressState::Replicate);
    }
    for id in 0..2 {
        let command = vec![id as u8];
        let a = step(&mut n, hb, Event::ProposalReceived { id, command });
        persist_all(&mut n, hb, &a);
    }
    recv(&mut n, hb, 3, accepted(2, 4));
    recv(&mut n, hb, 3, accepted(2, 5));
    assert_eq!(n.last_applied(), 5);
    step(&mut n, hb, Event::SnapshotTaken { index: 5 });
    assert_eq!(position(n.log().snapshot()), (5, 2));
    // Follower 2 lost its log (it crashed before installing durably).
    let actions = recv(&mut n, hb, 2, rejected(2, 3, None, 1));
    assert_eq!(actions, vec![]);
    assert_eq!(
        n.progress(2).unwrap().state,
        ProgressState::Snapshot { index: 3 }
    );
    // Heartbeats meanwhile, from the leader's snapshot.
    let hb2 = hb + Duration::from_millis(100);
    let actions = step(&mut n, hb2, Event::TimerFired);
    assert!(snapshot_sends(&actions).is_empty());
    assert!(sends(&actions).contains(&(2, ae(2, 5, 2, vec![], 5))));
    // The first transfer ends: a probe after the newer snapshot, and its
    // rejection asks for the newer one.
    let ended = Event::SnapshotSendEnded {
        to: 2,
        term: 2,
        index: 3,
    };
    assert_eq!(
        step(&mut n, hb2, ended),
        vec![Action::Send {
            to: 2,
            message: ae(2, 5, 2, vec![], 5)
        }]
    );
    let actions = recv(&mut n, hb2, 2, rejected(2, 5, None, 1));
    let sent: Vec<(NodeId, Index, Term)> = snapshot_sends(&actions)
        .into_iter()
        .map(|(to, m)| (to, m.last_included_index, m.last_included_term))
        .collect();
    assert_eq!(sent, vec![(2, 5, 2)]);
    assert_eq!(actions.len(), 1);
    assert_eq!(
        n.progress(2).unwrap().state,
        ProgressState::Snapshot { index: 5 }
    );
    // A late answer to the first transfer does not end the wait for the
    // second, and asks for nothing.
    assert_eq!(recv(&mut n, hb2, 2, install_reply(2, 3)), vec![]);
    assert_eq!(
        n.progress(2).unwrap().state,
        ProgressState::Snapshot { index: 5 }
    );
}

#[test]
fn a_stale_end_of_transfer_changes_nothing() {
    let (mut n, t) = leader_streaming_a_snapshot_to_2();
    let waiting = n.progress(2).unwrap().clone();
    for (to, term, index) in [
        (2, 1, 3), // a transfer of an earlier term
        (2, 3, 3), // of a term the leader has not reached
        (2, 2, 2), // of another snapshot
        (3, 2, 3), // to a follower not in Snapshot
        (9, 2, 3), // to a node it does not track
    ] {
        let before3 = n.progress(3).unwrap().clone();
        let event = Event::SnapshotSendEnded { to, term, index };
        assert_eq!(step(&mut n, t, event), vec![], "({to}, {term}, {index})");
        assert_eq!(n.progress(2).unwrap(), &waiting);
        assert_eq!(n.progress(3).unwrap(), &before3);
    }
    assert_eq!((n.term(), n.role()), (2, Role::Leader));
    // After the follower's answer, the transfer's end is stale too.
    recv(&mut n, t, 2, install_reply(2, 3));
    let answered = n.progress(2).unwrap().clone();
    let ended = Event::SnapshotSendEnded {
        to: 2,
        term: 2,
        index: 3,
    };
    assert_eq!(step(&mut n, t, ended), vec![]);
    assert_eq!(n.progress(2).unwrap(), &answered);
}

#[test]
fn an_end_of_transfer_at_a_follower_is_ignored() {
    // A leader that lost office before its transfer ended.
    let mut n = follower_with_three_applied();
    let ended = Event::SnapshotSendEnded {
        to: 3,
        term: 1,
        index: 2,
    };
    assert_eq!(step(&mut n, ms(10), ended), vec![]);
    assert_eq!((n.role(), n.term()), (Role::Follower, 1));
}

#[test]
fn leader_compacting_past_a_followers_next_entry_switches_it_to_snapshot() {
    // Pipelining: the three appends all leave before any answer.
    let mut c = config(1, 3);
    c.max_inflight_appends = 16;
    let mut n = RaftNode::new(c, SEED).expect("valid config");
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    for id in 0..3 {
        let command = vec![id as u8];
        step(&mut n, t, Event::ProposalReceived { id, command });
    }
    // Writes 2, 3 and 4 carry the three entries.
    step(&mut n, t, Event::Persisted { upto: 4 });
    recv(&mut n, t, 2, accepted(1, 3));
    assert_eq!(n.last_applied(), 3);
    step(&mut n, t, Event::SnapshotTaken { index: 3 });
    assert_eq!(position(n.log().snapshot()), (3, 1));
    // Peer 3 lost all three appends; the heartbeat (prev 3) tells.
    let hb = t + Duration::from_millis(100);
    let actions = step(&mut n, hb, Event::TimerFired);
    assert_eq!(
        sends(&actions),
        vec![(2, ae(1, 3, 1, vec![], 3)), (3, ae(1, 3, 1, vec![], 3))]
    );
    // Its entries are compacted away: only the snapshot can bring it up.
    let actions = recv(&mut n, hb, 3, rejected(1, 3, None, 1));
    assert_eq!(
        actions,
        vec![Action::SendSnapshot {
            to: 3,
            // The snapshot records the configuration in force at its index.
            message: InstallSnapshot {
                membership: Membership::with_voters([1, 2, 3]),
                ..snap_header(1, 3, 1)
            }
        }]
    );
    assert_eq!(
        n.progress(3).unwrap().state,
        ProgressState::Snapshot { index: 3 }
    );
    // An answer to an InstallSnapshot of an older term (index 0)
    // acknowledges nothing.
    let actions = recv(&mut n, hb, 3, install_reply(1, 0));
    assert_eq!(sends(&actions), vec![]);
    assert_eq!(n.progress(3).unwrap().match_index, 0);
    assert_eq!(
        n.progress(3).unwrap().state,
        ProgressState::Snapshot { index: 3 }
    );
}

#[test]
fn follower_installing_a_snapshot_discards_a_log_that_does_not_hold_it() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 1,
            voted_for: Some(1),
        },
        None,
        &[1, 1],
    );
    boot(&mut n);
    let actions = recv(&mut n, ms(5), 1, install(2, 5, 2));
    let snapshot = SnapshotMeta::at(5, 2);
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 2,
                    voted_for: None
                }),
                snapshot: Some(snapshot.clone()),
                truncate_from: Some(6),
                then_send: vec![(1, install_reply(2, 5))],
                ..write(1)
            }),
            Action::ApplySnapshot { meta: snapshot },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!((n.commit_index(), n.last_applied()), (5, 5));
    assert_eq!(n.log().last_index(), 5);
    assert_eq!(position(n.log().snapshot()), (5, 2));
    // The durable image agrees with memory.
    let start = DurableState {
        hard_state: HardState {
            term: 1,
            voted_for: Some(1),
        },
        snapshot: None,
        entries: entries_from(1, &[1, 1]),
    };
    let image = durable_image(start, &actions);
    assert_eq!(image.snapshot.as_ref().map(position), Some((5, 2)));
    assert_eq!(image.entries, vec![]);
    // The next Apply continues right after the snapshot.
    persist_all(&mut n, ms(5), &actions);
    let a = recv(&mut n, ms(6), 1, ae(2, 5, 2, entries_from(6, &[2]), 6));
    assert_eq!(applied(&persist_all(&mut n, ms(6), &a)), vec![entry(6, 2)]);
}

#[test]
fn follower_installing_a_snapshot_keeps_the_entries_that_follow_it() {
    let mut n = recovered(
        2,
        3,
        HardState {
            term: 1,
            voted_for: Some(1),
        },
        None,
        &[1, 1, 1, 1, 1],
    );
    boot(&mut n);
    let actions = recv(&mut n, ms(5), 1, install(1, 3, 1));
    let snapshot = SnapshotMeta::at(3, 1);
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                snapshot: Some(snapshot.clone()),
                then_send: vec![(1, install_reply(1, 3))],
                ..write(1)
            }),
            Action::ApplySnapshot { meta: snapshot },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.log().last_index(), 5);
    assert_eq!(n.log().entry(4), Some(&entry(4, 1)));
    assert_eq!(n.last_applied(), 3);
}

#[test]
fn follower_answers_a_snapshot_it_already_covers_without_installing_it() {
    let mut n = follower_with_three_applied();
    let actions = recv(&mut n, ms(10), 1, install(1, 2, 1));
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 1,
                message: install_reply(1, 2)
            },
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.log().snapshot().index, 0);
}

// ----- misuse ------------------------------------------------------------------

#[test]
fn time_going_backwards_is_an_error_and_changes_nothing() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    step(&mut n, ms(100), Event::TimerFired);
    let deadline = n.next_deadline().unwrap();
    assert_eq!(
        n.step(
            ms(50),
            Event::ProposalReceived {
                id: 1,
                command: vec![]
            }
        ),
        Err(Error::TimeWentBackwards {
            now: ms(50),
            last: ms(100)
        })
    );
    assert_eq!(n.now(), ms(100));
    assert_eq!(n.next_deadline().unwrap(), deadline);
    // Still usable: it campaigns as before.
    let actions = step(&mut n, deadline, Event::TimerFired);
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(persists(&actions)[0].id, 1);
}

#[test]
fn snapshot_beyond_applied_is_an_error_and_changes_nothing() {
    let mut n = follower_with_three_applied();
    assert_eq!(
        n.step(ms(10), Event::SnapshotTaken { index: 4 }),
        Err(Error::SnapshotBeyondApplied {
            index: 4,
            applied: 3
        })
    );
    assert_eq!(n.log().snapshot().index, 0);
    let actions = step(&mut n, ms(10), Event::SnapshotTaken { index: 3 });
    assert_eq!(
        persists(&actions)[0].id,
        2,
        "no persist id was consumed by the error"
    );
}

#[test]
fn unknown_persist_id_is_an_error_and_changes_nothing() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    assert_eq!(
        n.step(ms(1), Event::Persisted { upto: 1 }),
        Err(Error::UnknownPersist { id: 1 })
    );
    let t = campaign(&mut n); // issues and completes id 1
    assert_eq!(
        n.step(t, Event::Persisted { upto: 2 }),
        Err(Error::UnknownPersist { id: 2 })
    );
    assert_eq!(n.role(), Role::Candidate);
    recv(&mut n, t, 2, rvr(1, true));
    assert!(n.is_leader());
}

#[test]
fn invalid_configs_are_refused() {
    let bad = |c: Config| matches!(RaftNode::new(c, 0), Err(Error::InvalidConfig(_)));
    assert!(bad(Config::new(4, vec![1, 2, 3])));
    assert!(bad(Config::new(1, vec![1, 2, 2])));
    let mut c = config(1, 3);
    c.heartbeat_interval = c.election_timeout_min;
    assert!(bad(c));
    let mut c = config(1, 3);
    c.max_inflight_appends = 0;
    assert!(bad(c));
    // Lease reads rest on sticky votes, and a clock-rate bound below 100%.
    let mut c = config(1, 3);
    c.lease_reads = true;
    assert_eq!(
        c.validate(),
        Err(Error::InvalidConfig(ConfigError::LeaseWithoutStickyVotes))
    );
    c.sticky_votes = true;
    assert_eq!(c.validate(), Ok(()));
    c.max_clock_drift_ppm = 1_000_000;
    assert_eq!(
        c.validate(),
        Err(Error::InvalidConfig(ConfigError::ClockDriftBound))
    );
}

#[test]
fn the_lease_is_shorter_than_the_minimum_election_timeout_by_the_drift_bound() {
    let mut c = config(1, 3);
    c.max_clock_drift_ppm = 50_000;
    // 300 ms × 0.95 / 1.05
    assert_eq!(c.lease_duration(), Duration::from_nanos(271_428_571));
    c.max_clock_drift_ppm = 0;
    assert_eq!(c.lease_duration(), c.election_timeout_min);
}

// ----- peer input that must not panic -----------------------------------------

#[test]
fn messages_from_itself_and_non_leader_messages_from_non_members_are_dropped() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    for m in [
        rv(5, 9, 9),
        rvr(5, true),
        ae(5, 0, 0, entries_from(1, &[5]), 1),
        accepted(5, 1),
        install(5, 9, 5),
        install_reply(5, 9),
    ] {
        assert_eq!(recv(&mut n, ms(1), 1, m), vec![]);
    }
    // A removed node cannot disturb a cluster whose leader works: while we
    // hear from ours, its votes, pre-votes and replies are dropped (a
    // leader's messages are not: a node added after our latest
    // configuration may lead).
    let actions = recv(&mut n, ms(1), 2, ae(1, 0, 0, vec![], 0));
    persist_all(&mut n, ms(1), &actions);
    assert_eq!(n.leader_hint(), Some(2));
    for from in [4, 99] {
        for m in [
            rv(5, 9, 9),
            rvr(5, true),
            accepted(5, 1),
            install_reply(5, 9),
        ] {
            assert_eq!(recv(&mut n, ms(2), from, m), vec![]);
        }
    }
    assert_eq!(n.term(), 1);
    assert_eq!(n.log().last_index(), 0);
    // Without a working leader (nothing heard for the minimum election
    // timeout) a candidate outside our configuration is answered: our
    // configuration may be behind, and it may need our vote (thesis
    // 4.2.2).
    let actions = recv(&mut n, ms(400), 4, rv(5, 9, 9));
    assert_eq!(n.term(), 5);
    let granted = persists(&actions)
        .iter()
        .flat_map(|p| p.then_send.clone())
        .any(|(to, m)| to == 4 && m == rvr(5, true));
    assert!(granted, "the vote is granted once durable: {actions:?}");
}

#[test]
fn stale_term_requests_get_our_term_and_stale_replies_are_dropped() {
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 3,
            voted_for: None,
        },
        None,
        &[1, 2],
    );
    boot(&mut n);
    let deadline = n.next_deadline().unwrap();
    assert_eq!(
        recv(&mut n, ms(1), 2, ae(2, 2, 2, entries_from(3, &[2]), 3)),
        vec![Action::Send {
            to: 2,
            message: rejected(3, 2, None, 0)
        }]
    );
    assert_eq!(
        recv(&mut n, ms(1), 2, rv(2, 10, 2)),
        vec![Action::Send {
            to: 2,
            message: rvr(3, false)
        }]
    );
    // A stale InstallSnapshot is answered with index 0, acknowledging
    // nothing: its sender may lead our term by the time the answer arrives
    // (simulated seed 571 of snapshot_install_unreliable_2d: the answer
    // carried the snapshot's index and counted as an install that never
    // happened).
    assert_eq!(
        recv(&mut n, ms(1), 2, install(1, 9, 1)),
        vec![Action::Send {
            to: 2,
            message: install_reply(3, 0)
        }]
    );
    assert_eq!(recv(&mut n, ms(1), 2, rvr(2, true)), vec![]);
    assert_eq!(recv(&mut n, ms(1), 2, accepted(2, 2)), vec![]);
    assert_eq!(recv(&mut n, ms(1), 2, install_reply(1, 2)), vec![]);
    assert_eq!(
        (n.term(), n.role(), n.log().last_index()),
        (3, Role::Follower, 2)
    );
    assert_eq!(
        n.next_deadline().unwrap(),
        deadline,
        "stale messages do not defer an election"
    );
    assert_eq!(n.leader_hint(), None);
}

#[test]
fn leader_seeing_a_newer_term_steps_down_and_persists_it() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    let actions = recv(&mut n, t, 2, rejected(5, 0, None, 1));
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 5,
                    voted_for: None
                }),
                ..write(2)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.leader_hint(), None);
    assert!(n.progress(2).is_none());
    assert_eq!(
        step(
            &mut n,
            t,
            Event::ProposalReceived {
                id: 1,
                command: vec![]
            }
        ),
        vec![Action::RejectProposal {
            id: 1,
            reason: RejectReason::NotLeader { leader_hint: None }
        }]
    );
}

#[test]
fn leader_drops_an_append_from_another_leader_of_its_term() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    assert_eq!(
        recv(&mut n, t, 2, ae(1, 0, 0, entries_from(1, &[1]), 1)),
        vec![]
    );
    assert_eq!(recv(&mut n, t, 2, install(1, 4, 1)), vec![]);
    assert!(n.is_leader());
    assert_eq!(n.log().last_index(), 0);
}

#[test]
fn replies_to_a_node_that_is_not_leader_are_dropped() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    assert_eq!(recv(&mut n, ms(1), 2, accepted(0, 3)), vec![]);
    assert_eq!(recv(&mut n, ms(1), 2, rejected(0, 3, Some(1), 1)), vec![]);
    assert_eq!(recv(&mut n, ms(1), 2, install_reply(0, 3)), vec![]);
    assert_eq!(recv(&mut n, ms(1), 2, rvr(0, true)), vec![]);
    assert_eq!(n.role(), Role::Follower);
}

// Malformed messages from members. The contract (lib.rs: "Peer input never
// panics the node (bad messages are dropped)") covers these too: a buggy or
// corrupted peer must not be able to crash its neighbours.

#[test]
fn append_with_a_gap_in_its_entries_does_not_panic() {
    // Today: `on_append_entries` hands index 5 to `RaftLog::append`, whose
    // "append must continue the log" assert fires.
    let mut n = fresh(2, 3);
    boot(&mut n);
    let mut es = entries_from(1, &[1]);
    es.push(entry(5, 1));
    let _ = recv(&mut n, ms(1), 1, ae(1, 0, 0, es, 0));
    assert!(n.log().last_index() <= 1);
}

#[test]
fn append_whose_entries_claim_a_newer_term_than_the_message_does_not_panic() {
    // Today: the entry of term 7 is stored by a follower of term 1, and the
    // end-of-step "no entry from a future term" invariant fires.
    let mut n = fresh(2, 3);
    boot(&mut n);
    let _ = recv(&mut n, ms(1), 1, ae(1, 0, 0, entries_from(1, &[7]), 0));
    assert!(n.log().last_term() <= n.term());
}

#[test]
fn install_snapshot_claiming_a_newer_term_than_the_message_does_not_panic() {
    // Today: the snapshot of term 9 is installed by a follower of term 1, and
    // the "no entry from a future term" invariant fires.
    let mut n = fresh(2, 3);
    boot(&mut n);
    let _ = recv(&mut n, ms(1), 1, install(1, 4, 9));
    assert!(n.log().last_term() <= n.term());
}

#[test]
fn rejection_naming_an_index_beyond_the_leaders_log_does_not_panic() {
    // Today: a Replicate peer's rejection is not checked against the log, so
    // the leader probes from 50 and `send_append_from`'s
    // `expect("prev is held")` fires.
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0); // peer 2 in Replicate, match 0
    let _ = recv(&mut n, t, 2, rejected(1, 50, None, 50));
    assert!(n.is_leader());
}

// ----- restart ---------------------------------------------------------------

#[test]
fn recover_resumes_from_the_durable_state() {
    let durable = DurableState {
        hard_state: HardState {
            term: 3,
            voted_for: Some(2),
        },
        snapshot: Some(SnapshotMeta::at(4, 2)),
        entries: vec![entry(5, 2), entry(6, 3)],
    };
    let mut n = RaftNode::recover(config(1, 3), SEED, durable).unwrap();
    assert_eq!(
        (n.term(), n.voted_for(), n.role()),
        (3, Some(2), Role::Follower)
    );
    assert_eq!((n.commit_index(), n.last_applied()), (4, 4));
    assert_eq!((n.log().last_index(), n.log().last_term()), (6, 3));
    assert_eq!(n.durable_index(), 6);
    assert_eq!(position(n.log().snapshot()), (4, 2));
    assert_eq!(
        boot(&mut n),
        vec![Action::SetTimer {
            deadline: n.next_deadline().unwrap()
        }]
    );
    // Committing through 6 applies exactly 5 and 6: what follows the snapshot.
    let actions = recv(&mut n, ms(1), 2, ae(3, 6, 3, vec![], 6));
    assert_eq!(applied(&actions), vec![entry(5, 2), entry(6, 3)]);
    // Its vote in term 3 stands: another candidate of term 3 is refused.
    assert_eq!(
        sends(&recv(&mut n, ms(2), 3, rv(3, 9, 3))),
        vec![(3, rvr(3, false))]
    );
}

#[test]
fn recovered_node_campaigns_with_its_stored_log() {
    let mut n = recovered(
        1,
        3,
        HardState {
            term: 3,
            voted_for: Some(2),
        },
        Some(SnapshotMeta::at(4, 2)),
        &[2, 3],
    );
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    let p = persists(&step(&mut n, t, Event::TimerFired)).remove(0);
    assert_eq!(
        p,
        Persist {
            hard_state: Some(HardState {
                term: 4,
                voted_for: Some(1)
            }),
            then_send: vec![(2, rv(4, 6, 3)), (3, rv(4, 6, 3))],
            ..write(1)
        }
    );
}

#[test]
fn recover_rejects_inconsistent_state() {
    let hs = |term, voted_for| HardState { term, voted_for };
    let try_recover = |d: DurableState| RaftNode::recover(config(1, 3), SEED, d);
    let invalid = |r: Result<RaftNode, Error>| matches!(r, Err(Error::InvalidDurableState(_)));
    let snap = Some(SnapshotMeta::at(2, 1));
    // A snapshot and no entries after it is a whole log (the driver holds
    // the snapshot's bytes; the core never asks for them).
    let d = DurableState {
        hard_state: hs(1, None),
        snapshot: snap.clone(),
        entries: vec![],
    };
    assert_eq!(try_recover(d).unwrap().log().last_index(), 2);
    // A vote for a node outside the initial configuration is fine (it may
    // have been added since).
    assert!(try_recover(DurableState {
        hard_state: hs(1, Some(9)),
        ..Default::default()
    })
    .is_ok());
    // Entries that do not continue the snapshot.
    let d = DurableState {
        hard_state: hs(1, None),
        snapshot: snap.clone(),
        entries: vec![entry(4, 1)],
    };
    assert!(invalid(try_recover(d)));
    // Entries with a gap.
    let d = DurableState {
        hard_state: hs(1, None),
        snapshot: None,
        entries: vec![entry(1, 1), entry(3, 1)],
    };
    assert!(invalid(try_recover(d)));
    // Terms going down along the log.
    let d = DurableState {
        hard_state: hs(2, None),
        snapshot: None,
        entries: vec![entry(1, 2), entry(2, 1)],
    };
    assert!(invalid(try_recover(d)));
    // A log newer than the current term.
    let d = DurableState {
        hard_state: hs(1, None),
        snapshot: None,
        entries: entries_from(1, &[1, 2]),
    };
    assert!(invalid(try_recover(d)));
    let d = DurableState {
        hard_state: hs(1, None),
        snapshot: Some(SnapshotMeta::at(2, 5)),
        entries: vec![],
    };
    assert!(invalid(try_recover(d)));
    // And the consistent version of the same is accepted.
    let d = DurableState {
        hard_state: hs(2, Some(1)),
        snapshot: snap.clone(),
        entries: entries_from(3, &[2]),
    };
    assert!(try_recover(d).is_ok());
}

#[test]
fn a_restart_replays_to_the_same_image_the_writes_describe() {
    // Drive a follower through votes, appends, a truncation and a snapshot,
    // persisting as it asks; then recover from the image and compare.
    let mut n = fresh(2, 3);
    let mut image = DurableState::default();
    let mut record = |n: &mut RaftNode, now: Instant, event: Event| {
        let actions = step(n, now, event);
        for p in persists(&actions) {
            image.apply(&p);
        }
        if let Some(upto) = persists(&actions).last().map(|p| p.id) {
            step(n, now, Event::Persisted { upto });
        }
    };
    record(&mut n, ms(0), Event::TimerFired);
    record(
        &mut n,
        ms(1),
        Event::MessageReceived {
            from: 1,
            message: rv(1, 0, 0),
        },
    );
    record(
        &mut n,
        ms(2),
        Event::MessageReceived {
            from: 1,
            message: ae(1, 0, 0, entries_from(1, &[1, 1, 1]), 1),
        },
    );
    record(
        &mut n,
        ms(3),
        Event::MessageReceived {
            from: 3,
            message: ae(2, 1, 1, entries_from(2, &[2, 2]), 2),
        },
    );
    record(&mut n, ms(4), Event::SnapshotTaken { index: 2 });
    let r = RaftNode::recover(config(2, 3), SEED, image.clone()).unwrap();
    assert_eq!(r.log(), n.log());
    assert_eq!((r.term(), r.voted_for()), (n.term(), n.voted_for()));
    assert_eq!((r.term(), r.voted_for()), (2, None));
    assert_eq!(r.commit_index(), 2);
    assert_eq!(image.last_index(), 3);
}

#[test]
fn proposals_while_an_append_is_in_flight_ride_together_in_the_next_one() {
    // The default: one append in flight per follower; whatever is proposed
    // meanwhile is batched into the next append, sent when the answer comes.
    let mut n = fresh(1, 3);
    assert_eq!(n.config().max_inflight_appends, 1);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let first = step(
        &mut n,
        t,
        Event::ProposalReceived {
            id: 0,
            command: vec![0],
        },
    );
    assert_eq!(sends(&first).len(), 2, "the first proposal leaves at once");
    for id in 1..4 {
        let more = step(
            &mut n,
            t,
            Event::ProposalReceived {
                id,
                command: vec![id as u8],
            },
        );
        assert!(
            sends(&more).is_empty(),
            "held back while an append is in flight"
        );
    }
    let actions = recv(&mut n, t, 2, accepted(1, 1));
    let batch: Vec<_> = sends(&actions)
        .into_iter()
        .filter(|(to, _)| *to == 2)
        .collect();
    assert_eq!(batch.len(), 1);
    match &batch[0].1 {
        Message::AppendEntries(m) => {
            assert_eq!(m.prev_log_index, 1);
            assert_eq!(
                m.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
                vec![2, 3, 4]
            );
        }
        other => panic!("expected AppendEntries, got {other:?}"),
    }
}

#[test]
fn leader_that_hears_from_no_majority_for_an_election_timeout_steps_down() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    let term = n.term();
    // Nobody answers. Just before the check it still leads...
    let almost = t + Duration::from_millis(599);
    let _ = step(&mut n, almost, Event::TimerFired);
    assert!(n.is_leader());
    // ...and at the check it steps down, keeping its term and vote.
    let _ = step(&mut n, t + Duration::from_millis(600), Event::TimerFired);
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), term);
    assert_eq!(n.voted_for(), Some(1));
    let actions = step(
        &mut n,
        t + Duration::from_millis(601),
        Event::ProposalReceived {
            id: 9,
            command: vec![1],
        },
    );
    assert_eq!(
        actions,
        vec![Action::RejectProposal {
            id: 9,
            reason: RejectReason::NotLeader { leader_hint: None }
        }]
    );
}

#[test]
fn leader_answered_by_a_majority_keeps_leading_across_quorum_checks() {
    let mut n = fresh(1, 5);
    let t = elect(&mut n);
    let term = n.term();
    // Two of four followers answer in every check interval: with the leader
    // that is a majority of five.
    for k in 1..=5u64 {
        let now = t + Duration::from_millis(600 * k - 50);
        recv(&mut n, now, 2, accepted(term, 0));
        recv(&mut n, now, 3, rejected(term, 0, None, 1));
        let _ = step(
            &mut n,
            t + Duration::from_millis(600 * k),
            Event::TimerFired,
        );
        assert!(n.is_leader(), "still leader after check {k}");
    }
    // One follower alone is not enough.
    let now = t + Duration::from_millis(600 * 6 - 50);
    recv(&mut n, now, 2, accepted(term, 0));
    let _ = step(
        &mut n,
        t + Duration::from_millis(600 * 6),
        Event::TimerFired,
    );
    assert!(!n.is_leader());
}

// ----- pre-vote (thesis §9.6) ---------------------------------------------------

fn pre_vote_config(id: NodeId, members: u64) -> Config {
    Config {
        pre_vote: true,
        ..config(id, members)
    }
}

/// A node with pre-vote on, booting for the first time.
fn fresh_pre_vote(id: NodeId, members: u64) -> RaftNode {
    RaftNode::new(pre_vote_config(id, members), SEED).expect("valid config")
}

/// A node with pre-vote on, restarting from this hard state and log.
fn recovered_pre_vote(id: NodeId, members: u64, hard_state: HardState, terms: &[Term]) -> RaftNode {
    let durable = DurableState {
        hard_state,
        snapshot: None,
        entries: entries_from(1, terms),
    };
    RaftNode::recover(pre_vote_config(id, members), SEED, durable).expect("consistent state")
}

fn pv(term: Term, last_log_index: Index, last_log_term: Term) -> Message {
    Message::PreVote(RequestVote {
        term,
        last_log_index,
        last_log_term,
        transfer: false,
    })
}

fn pvr(term: Term, vote_granted: bool) -> Message {
    Message::PreVoteReply(RequestVoteReply { term, vote_granted })
}

/// Boots `n` and lets its election deadline pass: it becomes a
/// pre-candidate. Returns the time.
fn pre_campaign(n: &mut RaftNode) -> Instant {
    boot(n);
    let now = n.next_deadline().unwrap();
    step(n, now, Event::TimerFired);
    assert_eq!(n.role(), Role::PreCandidate);
    now
}

#[test]
fn pre_vote_timeout_asks_for_next_term_with_plain_sends_and_persists_nothing() {
    let mut n = recovered_pre_vote(
        1,
        3,
        HardState {
            term: 2,
            voted_for: Some(2),
        },
        &[1, 2],
    );
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    let actions = step(&mut n, t, Event::TimerFired);
    let next = n.next_deadline().unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Send {
                to: 2,
                message: pv(3, 2, 2)
            },
            Action::Send {
                to: 3,
                message: pv(3, 2, 2)
            },
            Action::SetTimer { deadline: next },
        ]
    );
    assert!(next >= t + Duration::from_millis(300) && next < t + Duration::from_millis(600));
    assert_eq!(n.role(), Role::PreCandidate);
    assert_eq!(
        (n.term(), n.voted_for()),
        (2, Some(2)),
        "term and vote kept"
    );
}

#[test]
fn pre_candidate_forgets_its_leader() {
    let mut n = fresh_pre_vote(1, 3);
    boot(&mut n);
    recv(&mut n, ms(10), 2, ae(1, 0, 0, vec![], 0));
    assert_eq!(n.leader_hint(), Some(2));
    let t = n.next_deadline().unwrap();
    step(&mut n, t, Event::TimerFired);
    assert_eq!(n.role(), Role::PreCandidate);
    assert_eq!(n.leader_hint(), None, "etcd#9586");
    assert_eq!(n.term(), 1);
}

#[test]
fn majority_of_pre_votes_starts_the_real_election() {
    let mut n = fresh_pre_vote(1, 3);
    let t = pre_campaign(&mut n);
    let actions = recv(&mut n, t, 2, pvr(1, true));
    let next = n.next_deadline().unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 1,
                    voted_for: Some(1)
                }),
                then_send: vec![(2, rv(1, 0, 0)), (3, rv(1, 0, 0))],
                ..write(1)
            }),
            Action::SetTimer { deadline: next },
        ]
    );
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(n.term(), 1);
}

#[test]
fn pre_vote_grant_for_another_term_or_a_refusal_is_not_a_win() {
    let mut n = fresh_pre_vote(1, 3);
    let t = pre_campaign(&mut n);
    // A grant for a term it did not ask about answers an earlier round.
    assert_eq!(recv(&mut n, t, 2, pvr(5, true)), vec![]);
    assert_eq!(recv(&mut n, t, 3, pvr(0, false)), vec![]);
    assert_eq!((n.role(), n.term()), (Role::PreCandidate, 0));
}

#[test]
fn pre_vote_refusal_with_a_higher_term_is_adopted() {
    let mut n = fresh_pre_vote(1, 3);
    let t = pre_campaign(&mut n);
    let actions = recv(&mut n, t, 2, pvr(4, false));
    let next = n.next_deadline().unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 4,
                    voted_for: None
                }),
                ..write(1)
            }),
            Action::SetTimer { deadline: next },
        ]
    );
    assert_eq!((n.role(), n.term()), (Role::Follower, 4));
}

#[test]
fn pre_candidate_follows_a_leader_of_its_term() {
    let mut n = recovered_pre_vote(
        1,
        3,
        HardState {
            term: 2,
            voted_for: None,
        },
        &[],
    );
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    step(&mut n, t, Event::TimerFired);
    assert_eq!(n.role(), Role::PreCandidate);
    recv(&mut n, t, 3, ae(2, 0, 0, vec![], 0));
    assert_eq!(
        (n.role(), n.term(), n.leader_hint()),
        (Role::Follower, 2, Some(3))
    );
}

#[test]
fn pre_vote_is_granted_without_changing_term_vote_or_deadline() {
    let mut n = fresh_pre_vote(1, 3);
    boot(&mut n);
    let deadline = n.next_deadline();
    let actions = recv(&mut n, ms(10), 2, pv(1, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: pvr(1, true)
        }]
    );
    assert_eq!(
        (n.term(), n.voted_for(), n.next_deadline()),
        (0, None, deadline)
    );
    // Far in the future: still only a question.
    let actions = recv(&mut n, ms(20), 3, pv(9, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 3,
            message: pvr(9, true)
        }]
    );
    assert_eq!((n.term(), n.role()), (0, Role::Follower));
}

#[test]
fn pre_vote_is_refused_within_the_minimum_election_timeout_of_the_leader() {
    let mut n = fresh_pre_vote(1, 3);
    boot(&mut n);
    let actions = recv(&mut n, ms(100), 2, ae(1, 0, 0, vec![], 0));
    persist_all(&mut n, ms(100), &actions);
    let actions = recv(&mut n, ms(399), 3, pv(2, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 3,
            message: pvr(1, false)
        }]
    );
    let actions = recv(&mut n, ms(400), 3, pv(2, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 3,
            message: pvr(2, true)
        }]
    );
    assert_eq!((n.term(), n.leader_hint()), (1, Some(2)));
}

#[test]
fn pre_vote_is_refused_for_a_stale_log() {
    let mut n = recovered_pre_vote(
        1,
        3,
        HardState {
            term: 2,
            voted_for: None,
        },
        &[1, 2],
    );
    boot(&mut n);
    // Shorter log in the same last term, then an older last term.
    let actions = recv(&mut n, ms(10), 2, pv(3, 1, 2));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: pvr(2, false)
        }]
    );
    let actions = recv(&mut n, ms(10), 2, pv(3, 5, 1));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: pvr(2, false)
        }]
    );
    assert_eq!(n.term(), 2);
}

#[test]
fn pre_vote_from_a_lower_term_is_refused_with_the_voters_term() {
    let mut n = recovered_pre_vote(
        1,
        3,
        HardState {
            term: 3,
            voted_for: None,
        },
        &[],
    );
    boot(&mut n);
    let actions = recv(&mut n, ms(10), 2, pv(2, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: pvr(3, false)
        }]
    );
}

#[test]
fn pre_vote_for_the_current_term_needs_a_free_vote() {
    // Term 2, voted for 3: a pre-vote for term 2 (from a node in term 1)
    // could only win with our vote, which is taken.
    let mut n = recovered_pre_vote(
        1,
        3,
        HardState {
            term: 2,
            voted_for: Some(3),
        },
        &[],
    );
    boot(&mut n);
    let actions = recv(&mut n, ms(10), 2, pv(2, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 2,
            message: pvr(2, false)
        }]
    );
    let actions = recv(&mut n, ms(10), 3, pv(2, 0, 0));
    assert_eq!(
        actions,
        vec![Action::Send {
            to: 3,
            message: pvr(2, true)
        }]
    );
}

#[test]
fn leader_refuses_a_pre_vote_and_keeps_leading() {
    let mut n = RaftNode::new(pre_vote_config(1, 3), SEED).unwrap();
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    step(&mut n, t, Event::TimerFired);
    let actions = recv(&mut n, t, 2, pvr(1, true));
    persist_all(&mut n, t, &actions);
    recv(&mut n, t, 2, rvr(1, true));
    assert!(n.is_leader());
    let actions = recv(&mut n, t, 3, pv(2, 0, 0));
    assert_eq!(
        sends(&actions),
        vec![(3, pvr(1, false))],
        "refused with the leader's term"
    );
    assert!(n.is_leader());
    assert_eq!(n.term(), 1);
}

#[test]
fn single_node_with_pre_vote_stands_at_once() {
    let mut n = fresh_pre_vote(1, 1);
    boot(&mut n);
    let t = n.next_deadline().unwrap();
    let actions = step(&mut n, t, Event::TimerFired);
    assert_eq!(persists(&actions).len(), 1);
    assert_eq!((n.role(), n.term()), (Role::Candidate, 1));
    persist_all(&mut n, t, &actions);
    assert!(n.is_leader());
}

#[test]
fn late_vote_grants_still_elect_a_candidate_that_went_back_to_pre_vote() {
    let mut n = fresh_pre_vote(1, 3);
    let t = pre_campaign(&mut n);
    let actions = recv(&mut n, t, 2, pvr(1, true));
    persist_all(&mut n, t, &actions);
    assert_eq!((n.role(), n.term()), (Role::Candidate, 1));
    // The candidacy times out before any grant arrives: a new pre-vote
    // round for term 2, still in term 1 with its vote for itself.
    let t2 = n.next_deadline().unwrap();
    let actions = step(&mut n, t2, Event::TimerFired);
    assert_eq!(sends(&actions), vec![(2, pv(2, 0, 0)), (3, pv(2, 0, 0))]);
    assert_eq!(
        (n.role(), n.term(), n.voted_for()),
        (Role::PreCandidate, 1, Some(1))
    );
    // A late grant of term 1 completes that candidacy.
    recv(&mut n, t2, 3, rvr(1, true));
    assert!(n.is_leader());
    assert_eq!(n.term(), 1);
}

// ----- leadership transfer -----------------------------------------------------

fn transfer(to: Option<NodeId>) -> Event {
    Event::LeadershipTransferRequested { to }
}

fn report(to: NodeId, outcome: TransferOutcome) -> Action {
    Action::LeadershipTransfer {
        to: Some(to),
        outcome,
    }
}

fn aborted(to: NodeId, why: TransferAbort) -> Action {
    report(to, TransferOutcome::Aborted(why))
}

fn propose(n: &mut RaftNode, now: Instant, id: u64) -> Vec<Action> {
    let command = format!("cmd{id}").into_bytes();
    step(n, now, Event::ProposalReceived { id, command })
}

#[test]
fn transfer_to_an_up_to_date_target_sends_timeout_now_at_once_and_refuses_proposals() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let actions = step(&mut n, t, transfer(Some(2)));
    // The deadline (t + 600 ms) is later than the next heartbeat: no SetTimer.
    assert_eq!(
        actions,
        vec![
            report(2, TransferOutcome::Started),
            Action::Send {
                to: 2,
                message: Message::TimeoutNow { term: 1 }
            },
            report(2, TransferOutcome::TimeoutNowSent),
        ]
    );
    assert_eq!(
        propose(&mut n, t, 5),
        vec![Action::RejectProposal {
            id: 5,
            reason: RejectReason::TransferInProgress
        }]
    );
    assert_eq!(n.log().last_index(), 0);
}

#[test]
fn transfer_to_a_lagging_target_appends_first_and_sends_timeout_now_once_it_caught_up() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let accepted_actions = propose(&mut n, t, 1);
    persist_all(&mut n, t, &accepted_actions);
    // Node 2 has not acknowledged entry 1; its one append slot is full, so
    // the leader sends it an empty append (a heartbeat) now.
    let actions = step(&mut n, t, transfer(Some(2)));
    assert_eq!(
        actions,
        vec![
            report(2, TransferOutcome::Started),
            Action::Send {
                to: 2,
                message: ae(1, 1, 1, vec![], 0)
            },
        ]
    );
    // Its acknowledgement of entry 1 shows it caught up.
    let actions = recv(&mut n, t, 2, accepted(1, 1));
    assert_eq!(
        sends(&actions),
        vec![(2, Message::TimeoutNow { term: 1 })],
        "nothing more to append: only TimeoutNow"
    );
    assert!(actions.contains(&report(2, TransferOutcome::TimeoutNowSent)));
    // A duplicate acknowledgement sends no second TimeoutNow.
    let actions = recv(&mut n, t, 2, accepted(1, 1));
    assert!(sends(&actions).is_empty());
}

#[test]
fn transfer_without_a_target_picks_the_highest_match_index_then_the_lowest_id() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let actions = propose(&mut n, t, 1);
    persist_all(&mut n, t, &actions);
    recv(&mut n, t, 3, accepted(1, 1));
    let actions = step(&mut n, t, transfer(None));
    assert_eq!(actions[0], report(3, TransferOutcome::Started));
    assert_eq!(sends(&actions), vec![(3, Message::TimeoutNow { term: 1 })]);

    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let actions = step(&mut n, t, transfer(None));
    assert_eq!(actions[0], report(2, TransferOutcome::Started));
}

#[test]
fn transfer_requests_that_cannot_be_honoured_are_refused() {
    let mut f = fresh(2, 3);
    boot(&mut f);
    assert_eq!(
        step(&mut f, ms(1), transfer(Some(3))),
        vec![aborted(3, TransferAbort::NotLeader)]
    );
    assert_eq!(
        step(&mut f, ms(1), transfer(None)),
        vec![Action::LeadershipTransfer {
            to: None,
            outcome: TransferOutcome::Aborted(TransferAbort::NotLeader)
        }]
    );
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    assert_eq!(
        step(&mut n, t, transfer(Some(1))),
        vec![aborted(1, TransferAbort::InvalidTarget)]
    );
    assert_eq!(
        step(&mut n, t, transfer(Some(9))),
        vec![aborted(9, TransferAbort::InvalidTarget)]
    );
    let _ = step(&mut n, t, transfer(Some(2)));
    assert_eq!(
        step(&mut n, t, transfer(Some(3))),
        vec![aborted(3, TransferAbort::InProgress)]
    );
    // A lone node has nobody to hand over to.
    let mut solo = fresh(1, 1);
    boot(&mut solo);
    let t = solo.next_deadline().unwrap();
    let actions = step(&mut solo, t, Event::TimerFired);
    persist_all(&mut solo, t, &actions);
    assert!(solo.is_leader());
    assert_eq!(
        step(&mut solo, t, transfer(None)),
        vec![Action::LeadershipTransfer {
            to: None,
            outcome: TransferOutcome::Aborted(TransferAbort::InvalidTarget)
        }]
    );
}

#[test]
fn transfer_aborts_at_its_own_deadline_and_proposals_are_taken_again() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    // Requested half a heartbeat after taking office, so its deadline is
    // neither a heartbeat nor a quorum check.
    let t1 = t + Duration::from_millis(50);
    let _ = step(&mut n, t1, transfer(Some(2)));
    let deadline = t1 + Duration::from_millis(600);
    loop {
        let next = n.next_deadline().unwrap();
        assert!(next <= deadline, "the transfer deadline is in the table");
        let actions = step(&mut n, next, Event::TimerFired);
        // Keep a majority active for the quorum checks.
        recv(&mut n, next, 3, accepted(1, 0));
        if next == deadline {
            assert_eq!(actions[0], aborted(2, TransferAbort::TimedOut));
            break;
        }
        assert!(!actions.contains(&aborted(2, TransferAbort::TimedOut)));
    }
    assert!(n.is_leader());
    let actions = propose(&mut n, deadline, 1);
    assert!(matches!(actions[0], Action::AcceptProposal { id: 1, .. }));
}

#[test]
fn transfer_ends_when_the_leader_steps_down() {
    let mut n = fresh(1, 3);
    let t = elect(&mut n);
    ack_probes(&mut n, t, 0);
    let _ = step(&mut n, t, transfer(Some(2)));
    // The target's election reaches the leader.
    let actions = recv(&mut n, t, 2, rv(2, 0, 0));
    assert_eq!(actions[0], aborted(2, TransferAbort::SteppedDown));
    assert_eq!((n.role(), n.term()), (Role::Follower, 2));
}

#[test]
fn follower_receiving_timeout_now_from_its_leader_stands_at_once_skipping_pre_vote() {
    let mut n = fresh_pre_vote(1, 3);
    boot(&mut n);
    let actions = recv(&mut n, ms(10), 2, ae(1, 0, 0, vec![], 0));
    persist_all(&mut n, ms(10), &actions);
    let actions = recv(&mut n, ms(20), 2, Message::TimeoutNow { term: 1 });
    assert_eq!(
        (n.role(), n.term(), n.voted_for()),
        (Role::Candidate, 2, Some(1))
    );
    // The request says it follows the leader's TimeoutNow, so voters set
    // leader stickiness aside.
    let request = match rv(2, 0, 0) {
        Message::RequestVote(m) => Message::RequestVote(RequestVote {
            transfer: true,
            ..m
        }),
        other => other,
    };
    assert_eq!(
        actions,
        vec![
            Action::Persist(Persist {
                hard_state: Some(HardState {
                    term: 2,
                    voted_for: Some(1)
                }),
                then_send: vec![(2, request.clone()), (3, request)],
                ..write(2)
            }),
            Action::SetTimer {
                deadline: n.next_deadline().unwrap()
            },
        ]
    );
}

#[test]
fn timeout_now_is_ignored_unless_from_the_known_leader_of_the_current_term() {
    let mut n = fresh(1, 3);
    boot(&mut n);
    // No leader known yet.
    assert!(recv(&mut n, ms(5), 2, Message::TimeoutNow { term: 0 }).is_empty());
    let actions = recv(&mut n, ms(10), 2, ae(1, 0, 0, vec![], 0));
    persist_all(&mut n, ms(10), &actions);
    // Not from the leader.
    assert!(recv(&mut n, ms(20), 3, Message::TimeoutNow { term: 1 }).is_empty());
    // A stale term gets no answer (TimeoutNow has no reply).
    assert!(recv(&mut n, ms(20), 2, Message::TimeoutNow { term: 0 }).is_empty());
    assert_eq!((n.role(), n.term()), (Role::Follower, 1));
    // A newer term is adopted, but its sender is not known to lead it.
    let actions = recv(&mut n, ms(30), 2, Message::TimeoutNow { term: 3 });
    assert_eq!(
        (n.role(), n.term(), n.voted_for()),
        (Role::Follower, 3, None)
    );
    assert!(sends(&actions).is_empty());
}

/// A leader of `{1, 2}` that demoted itself (`{1}`, learner 2) and crashed
/// before the entry reached node 1 stands again after restarting: the
/// demotion is not known to be committed and the committed configuration
/// still counts it. Node 1, which lacks the entry, cannot win without its
/// vote (node 2's log is longer), so if node 2 never stood the cluster
/// would be stuck (chaos seed 541). It wins on node 1's vote (a quorum of
/// `{1}`), then, not a voter of the configuration once that commits, hands
/// over.
#[test]
fn a_demoted_leader_whose_demotion_is_uncommitted_still_stands() {
    let demoted = Membership {
        learners: [2].into_iter().collect(),
        ..Membership::with_voters([1])
    };
    let durable = DurableState {
        hard_state: HardState {
            term: 1,
            voted_for: Some(2),
        },
        snapshot: None,
        entries: vec![
            entry(1, 1),
            Entry {
                index: 2,
                term: 1,
                payload: Payload::Membership(demoted.clone()),
            },
        ],
    };
    let mut n = RaftNode::recover(config(2, 2), SEED, durable).expect("consistent state");
    assert_eq!(n.membership(), &demoted);
    assert!(!n.is_voter());
    let now = campaign(&mut n);
    assert_eq!(n.term(), 2);
    recv(&mut n, now, 1, rvr(2, true));
    assert!(n.is_leader(), "node 1's vote is a quorum of {{1}}");
}
