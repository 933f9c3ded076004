//! The Raft lab harness on OS threads: `lab::RaftHarness` (as `driver_sim::Cfg`
//! implements it, with the same checks), over real threads and clocks
//! (a port of the 6.5840 (2023) `raft/config.go`, lab-tests.md §2).
//!
//! Each server is a `RaftNode` on its own thread ([`crate::node`]); the
//! network is [`crate::network`] with labrpc's semantics; each persister is
//! `raft_testkit`'s in-memory one, behind a mutex (`harness::Servers`). The appliers
//! (`lab::Appliers`: the Go `applier` and `applierSnap`, with
//! their "apply out of order" and "commit index=…" checks, and the tester's
//! snapshot every [`lab::SNAPSHOT_INTERVAL`] entries) run on the node threads
//! under the harness's mutex; the cluster safety checker runs after every
//! step, as in the simulator. A failure on a node thread fails the test on
//! the body's thread. The waits and checks (`one`, `wait`,
//! `check_one_leader`, …) are the lab crate's, shared with the simulator.
//!
//! Crash and restart follow config.go: `crash1` disconnects the server,
//! deletes it from the network, stops its thread (its incarnation never
//! steps again) and replaces its persister with a copy, so nothing the dead
//! incarnation did can reach the state the next one loads; `start1` builds a
//! new incarnation with `RaftNode::recover` from that copy, not connected.
//!
//! Used inside [`crate::rt::run`]; every sleep is real time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use lab::{Appliers, Cmd, Harness, RaftCounters, RaftHarness, Runtime, TestRun};
use raft_core::{Action, Config, Event, Index, RaftNode, Term};
use raft_testkit::Persister;

use crate::harness::{RealTime, Safety, Servers};
use crate::rt::{lock, with_rng};

struct Inner {
    servers: Servers<RaftNode>,
    appliers: Arc<Mutex<Appliers>>,
    connected: RefCell<Vec<bool>>,
    next_proposal: Cell<u64>,
    run: RefCell<TestRun<RaftCounters>>,
}

/// A Raft cluster on OS threads, the real-time twin of `driver_sim::Cfg`
/// (and of the Go tests' `cfg`). Cheap to clone into spawned tasks; the
/// threads stop when the last clone is dropped.
#[derive(Clone)]
pub struct ThreadCfg {
    inner: Rc<Inner>,
}

/// The appliers, on the node threads: what node `id` gives its service.
/// Stages the tester's snapshot, if it takes one, and returns its
/// `SnapshotTaken` to step next. A snapshot to apply is the one the node
/// thread staged with the `InstallSnapshot` it delivered.
fn apply(
    appliers: &Mutex<Appliers>,
    safety: &Safety,
    id: usize,
    action: Action,
    persister: &mut Persister,
) -> Option<Event> {
    match action {
        Action::Apply { entries } => {
            safety.applied(id, &entries);
            let (index, data) = lock(appliers).apply_entries(id, &entries)?;
            persister.stage(index, data);
            Some(Event::SnapshotTaken { index })
        }
        Action::ApplySnapshot { meta } => {
            let data = persister
                .snapshot_at(meta.index)
                .expect("a delivered snapshot is staged or stored");
            lock(appliers).apply_snapshot(id, data, meta.index);
            None
        }
        Action::Send { .. }
        | Action::SendSnapshot { .. }
        | Action::Persist(_)
        | Action::SetTimer { .. }
        | Action::AcceptProposal { .. }
        | Action::RejectProposal { .. }
        | Action::LeadershipTransfer { .. }
        | Action::AcceptMembershipChange { .. }
        | Action::RejectMembershipChange { .. }
        | Action::MembershipChanged { .. }
        | Action::ReadReady { .. }
        | Action::RejectRead { .. } => None,
    }
}

impl Harness for ThreadCfg {
    type Rt = RealTime;
}

impl RaftHarness for ThreadCfg {
    /// `make_config(n, unreliable, snapshot)`: starts `n` servers (with the
    /// snapshotting applier if `snapshot`), connects them all.
    fn new(n: usize, unreliable: bool, snapshot: bool) -> ThreadCfg {
        // The Raft config turns LongDelays on (lab-tests.md §2.3).
        let servers = Servers::new(n, unreliable, true);
        let inner = Inner {
            servers,
            appliers: Arc::new(Mutex::new(Appliers::new(n, snapshot))),
            connected: RefCell::new(vec![false; n]),
            next_proposal: Cell::new(0),
            run: RefCell::new(TestRun::new(RealTime::now())),
        };
        let cfg = ThreadCfg {
            inner: Rc::new(inner),
        };
        for i in 0..n {
            cfg.start1(i);
        }
        for i in 0..n {
            cfg.connect(i);
        }
        cfg
    }

    /// Number of servers.
    fn n(&self) -> usize {
        self.inner.servers.n
    }

    /// Crash server `i`: disconnect it, delete it from the network, stop its
    /// thread, detach its persister (the next incarnation gets a copy).
    fn crash1(&self, i: usize) {
        self.disconnect(i);
        self.inner.servers.kill(i);
    }

    /// (Re)start server `i` from its persisted state, not connected.
    fn start1(&self, i: usize) {
        self.crash1(i);
        let (storage, state, snapshot) = self.inner.servers.load(i);
        lock(&self.inner.appliers).restarted(i, snapshot.as_deref());
        let members: Vec<u64> = (0..self.n() as u64).collect();
        let config = Config::new(i as u64, members);
        let seed = with_rng(|r| r.next_u64());
        let node =
            RaftNode::recover(config, seed, state).expect("a node recovers from what it persisted");
        let appliers = self.inner.appliers.clone();
        let output = move |safety: &Safety, id, action, persister: &mut Persister| {
            apply(&appliers, safety, id, action, persister)
        };
        self.inner.servers.spawn(i, node, storage, output, false);
    }

    /// Is server `i` running (not crashed)?
    fn is_alive(&self, i: usize) -> bool {
        self.inner.servers.is_alive(i)
    }

    /// Connect server `i` to every other connected server.
    fn connect(&self, i: usize) {
        let mut connected = self.inner.connected.borrow_mut();
        connected[i] = true;
        for (j, &on) in connected.iter().enumerate() {
            if on {
                self.inner.servers.net.set_link(i, j, true);
                self.inner.servers.net.set_link(j, i, true);
            }
        }
    }

    /// Cut server `i` off from every other server.
    fn disconnect(&self, i: usize) {
        self.inner.connected.borrow_mut()[i] = false;
        for j in 0..self.n() {
            self.inner.servers.net.set_link(i, j, false);
            self.inner.servers.net.set_link(j, i, false);
        }
    }

    /// Is server `i` connected?
    fn is_connected(&self, i: usize) -> bool {
        self.inner.connected.borrow()[i]
    }

    /// Turn request/reply loss and short delays on (`true`) or off.
    fn set_unreliable(&self, unreliable: bool) {
        self.inner.servers.net.set_reliable(!unreliable);
    }

    /// Turn long reordering of replies on or off.
    fn set_long_reordering(&self, on: bool) {
        self.inner.servers.net.set_long_reordering(on);
    }

    /// `rf.Start(cmd)` on server `i`: `Some((index, term))` if it is the
    /// leader and accepted the command, `None` otherwise (or if crashed).
    /// Steps the node on the calling thread, like Go's `Start` under `rf.mu`.
    fn start(&self, i: usize, cmd: impl Into<Cmd>) -> Option<(Index, Term)> {
        let command = cmd.into().encode();
        let stepped = self.inner.servers.node(i, |node| {
            let id = self.inner.next_proposal.get() + 1;
            self.inner.next_proposal.set(id);
            let actions = node.step(Event::ProposalReceived { id, command })?;
            Some((id, actions))
        });
        let (id, actions) = stepped.flatten()?;
        actions.iter().find_map(|a| match *a {
            Action::AcceptProposal {
                id: aid,
                index,
                term,
            } if aid == id => Some((index, term)),
            _ => None,
        })
    }

    /// `rf.GetState()` on server `i`: (term, is leader). A crashed server
    /// answers `(0, false)`.
    fn get_state(&self, i: usize) -> (Term, bool) {
        self.inner
            .servers
            .node(i, |n| n.with(|node| (node.term(), node.is_leader())))
            .flatten()
            .unwrap_or((0, false))
    }

    /// Prints nothing yet; records baselines for `end`'s result line.
    fn begin(&self, name: &str) {
        let mut run = self.inner.run.borrow_mut();
        run.begin(name, RealTime::now(), self.counters());
    }

    /// Checks that no node thread failed and the time limit, and prints the
    /// lab's result line: real seconds, peers, RPCs, bytes, commands
    /// committed.
    fn end(&self) {
        self.inner.servers.check_failures();
        let run = self.inner.run.borrow();
        run.end(RealTime::now(), self.n(), self.counters());
    }

    /// How many servers have applied `index`, and the command there.
    fn n_committed(&self, index: Index) -> (usize, Option<Cmd>) {
        lock(&self.inner.appliers).n_committed(index)
    }

    /// Handler invocations on server `i` since it (re)started.
    fn rpc_count(&self, i: usize) -> u64 {
        self.inner.servers.net.rpc_count(i)
    }

    /// Requests sent so far.
    fn rpc_total(&self) -> u64 {
        self.inner.servers.net.rpc_total()
    }

    /// Request bytes plus delivered reply bytes so far.
    fn bytes_total(&self) -> u64 {
        self.inner.servers.net.bytes_total()
    }

    /// The largest encoded Raft state over all servers.
    fn log_size(&self) -> usize {
        self.inner.servers.log_size()
    }

    /// The largest snapshot over all servers.
    fn snapshot_size(&self) -> usize {
        self.inner.servers.snapshot_size()
    }
}

impl ThreadCfg {
    /// The result line's counters now.
    fn counters(&self) -> RaftCounters {
        RaftCounters {
            rpcs: self.inner.servers.net.rpc_total(),
            bytes: self.inner.servers.net.bytes_total(),
            max_index: lock(&self.inner.appliers).max_index(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{driver_threads, threads_left, SERIAL};
    use crate::rt::run;

    #[test]
    fn crashes_restarts_and_the_end_of_a_test_leave_no_threads() {
        let _serial = lock(&SERIAL);
        let instance = run(async {
            let cfg = ThreadCfg::new(3, false, false);
            let instance = cfg.inner.servers.net.instance();
            cfg.begin("threads: crash, restart, end");
            cfg.one(11, 3, true).await;
            let leader = cfg.check_one_leader().await;
            cfg.crash1(leader);
            assert!(!cfg.is_alive(leader));
            assert_eq!(cfg.get_state(leader), (0, false));
            assert_eq!(cfg.start(leader, 1), None);
            cfg.one(12, 2, true).await;
            cfg.start1(leader);
            cfg.connect(leader);
            cfg.one(13, 3, true).await;
            // A restarted server re-applies from the start (no snapshot).
            assert_eq!(cfg.wait(1, 3, None).await, Some(Cmd::Int(11)));
            assert_eq!(driver_threads(instance).len(), 3 + 1);
            cfg.end();
            instance
        });
        assert_eq!(threads_left(instance), Vec::<String>::new());
    }
}
