//! What the two lab harnesses share: the simulator's persister as node
//! storage (so the safety checker reads the same type it reads in the
//! simulator), the cluster safety checker wired into node steps, and the
//! task that turns a node thread's panic into a test failure.

use std::sync::{Arc, Mutex};

use driver_sim::persister::Persister as SimPersister;
use driver_sim::safety::SafetyChecker;
use raft_core::{DurableState, Message, Persist};

use crate::node::{Failures, Machine};
use crate::persister::Storage;
use crate::rt::{self, lock};

impl Storage for SimPersister {
    fn save(&mut self, persist: &Persist) {
        SimPersister::save(self, persist);
    }

    fn load(&self) -> (DurableState, Option<Vec<u8>>) {
        SimPersister::load(self)
    }

    fn raft_state_size(&self) -> usize {
        SimPersister::raft_state_size(self)
    }

    fn snapshot_size(&self) -> usize {
        SimPersister::snapshot_size(self)
    }
}

/// The safety checker's calls around a node's steps, as the simulator's
/// harnesses make them: after every step; after every write (truncations
/// and written entries); before every send (persist before send).
#[derive(Clone, Default)]
pub(crate) struct Safety {
    checker: Arc<Mutex<SafetyChecker>>,
}

impl Safety {
    pub(crate) fn stepped<M: Machine>(&self, machine: &M) {
        lock(&self.checker).after_step(machine.raft());
    }

    pub(crate) fn persisted<M: Machine>(&self, id: usize, machine: &M, p: &Persist) {
        let node = machine.raft();
        let mut checker = lock(&self.checker);
        if let Some(from) = p.truncate_from {
            checker.log_truncated(id as u64, node.term(), from);
        }
        if let Some(first) = p.entries.first() {
            let prev = node.log().term_at(first.index - 1);
            checker.entries_written(id as u64, &p.entries, prev);
        }
    }

    pub(crate) fn sending(&self, id: usize, to: usize, message: &Message, storage: &SimPersister) {
        lock(&self.checker).check_send(id as u64, to as u64, message, storage);
    }

    pub(crate) fn applied(&self, id: usize, entries: &[raft_core::Entry]) {
        lock(&self.checker).entries_applied(id as u64, entries);
    }
}

/// Spawns the task that fails the test (panics on the body's thread) with
/// the first failure on a node thread.
pub(crate) fn watch_failures(failures: &Failures) {
    let first = failures.wait();
    rt::spawn(async move {
        let message = first.await;
        panic!("a node thread failed: {message}");
    });
}

/// Panics with the first node-thread failure, if there was one.
pub(crate) fn check_failures(failures: &Failures) {
    if let Some(message) = failures.first() {
        panic!("a node thread failed: {message}");
    }
}

/// The running test's name (libtest names each test's thread after it), for
/// file names.
pub(crate) fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.replace("::", "-"),
        _ => "threads".to_string(),
    }
}
