//! One node on its own OS thread, owning its sans-IO state machine (a
//! `RaftNode` or a `kv_core::KvServer`, see [`Machine`]).
//!
//! The thread loops: wait on its inbox until its timer's deadline; step the
//! event with `now` read from the monotonic clock at the edge ([`Clock`]);
//! execute the actions in order: `Send` through the [`Network`], `Persist`
//! written synchronously to its [`Storage`] and then `Persisted` fed back,
//! `SetTimer` kept for the next wait, and everything else (applies, proposal
//! answers) handed to the driver's [`Hooks`], which may feed an event back
//! (the service's snapshot, staged in the storage first).
//!
//! Snapshots, whose bytes the core never holds:
//!
//! - `SendSnapshot`: the bytes of the snapshot at the header's index (staged
//!   or stored in the node's [`Storage`]) leave with the header as one
//!   transfer ([`Network::send_snapshot`]); the network reports its end
//!   once, and the thread steps `SnapshotSendEnded`.
//! - A transfer that arrives is staged under its index (unless the node
//!   holds a snapshot there already), handed to the machine with its bytes
//!   ([`Machine::install`]), and unstaged afterwards unless a `Persist` made
//!   it the node's snapshot.
//! - A KV server's `TakeSnapshot`: a writer thread encodes the image,
//!   stages the bytes and tells the node thread, which steps
//!   `SnapshotTaken` (the server goes on meanwhile).
//!
//! The machine lives behind the node's mutex, held for the whole of a step
//! and its actions (like the Go lab's mutex-protected Raft), so other
//! threads can read it ([`Node::with`]) or step it themselves ([`Node::step`],
//! the lab's `Start`). [`Node::stop`] takes the same mutex, so once it
//! returns the incarnation never steps, sends or writes again: a crash.
//!
//! A panic on a node thread (a failed check in a hook, a broken invariant in
//! the core) ends that thread and is recorded in the cluster's [`Failures`],
//! which a test awaits.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::time::Duration;

use kv_core::{KvServer, ServerAction, ServerEvent};
use raft_core::{
    Action, Event, Index, InstallSnapshot, Instant, Message, NodeId, Persist, RaftNode, Term,
};

use crate::network::{Delivery, Network};
use crate::persister::Storage;
use crate::rt::lock;

/// The monotonic clock, converted at the edge to the core's [`Instant`]
/// (nanoseconds since the clock's epoch). One per cluster, so every node and
/// the harness agree on what an instant means.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// The current time as the core sees it.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// The real instant of a core deadline.
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.epoch + Duration::from_nanos(at.as_nanos())
    }
}

/// Encodes a service's snapshot (on a writer thread).
pub type EncodeSnapshot = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// What a node's I/O action asks of its thread, once the machine's own action
/// type is taken apart.
pub enum Effect<A> {
    /// Send to a peer now.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Send the snapshot at `message.last_included_index` (which the
    /// storage holds) beside its header, and report the transfer's end.
    SendSnapshot {
        /// The follower.
        to: NodeId,
        /// The header.
        message: InstallSnapshot,
    },
    /// Write durably, then send `then_send` and report `Persisted`.
    Persist(Persist),
    /// Encode the service's snapshot through `index` off the node's
    /// thread, stage it, then report it taken.
    TakeSnapshot {
        /// The last index it covers.
        index: Index,
        /// Produces its bytes.
        encode: EncodeSnapshot,
    },
    /// Arm the node's one timer (the last one set wins).
    SetTimer {
        /// When to fire.
        deadline: Instant,
    },
    /// Answer the client call `id` with the encoded reply.
    Reply {
        /// The network's call id.
        id: u64,
        /// The encoded reply.
        bytes: Vec<u8>,
    },
    /// Anything else: for the driver's [`Hooks::output`].
    Other(A),
}

/// A sans-IO state machine a node thread can run: `RaftNode` and
/// `kv_core::KvServer` implement it.
pub trait Machine: Send + 'static {
    /// Its input type.
    type Event: Send + 'static;
    /// Its output type.
    type Action: Clone + Send + 'static;
    /// Steps one event. A misuse error is a bug in the driver: it panics.
    fn step(&mut self, now: Instant, event: Self::Event) -> Vec<Self::Action>;
    /// Steps a leader's `InstallSnapshot` that arrived with all of the
    /// snapshot's bytes (`data`, also staged in the node's storage).
    fn install(
        &mut self,
        now: Instant,
        from: NodeId,
        header: InstallSnapshot,
        data: &[u8],
    ) -> Vec<Self::Action>;
    /// The Raft node inside (for status and the safety checker).
    fn raft(&self) -> &RaftNode;
    /// The event for a peer's message.
    fn message_event(from: NodeId, message: Message) -> Self::Event;
    /// The event for the timer's deadline passing.
    fn timer_event() -> Self::Event;
    /// The event for writes through `upto` being durable; `raft_state_bytes`
    /// is the encoded Raft state's size when measured (else 0).
    fn persisted_event(upto: u64, raft_state_bytes: usize) -> Self::Event;
    /// The event for the service's snapshot through `index` being staged.
    fn snapshot_taken_event(index: Index) -> Self::Event;
    /// The event for the end of a transfer `Effect::SendSnapshot` started.
    fn snapshot_send_ended_event(to: NodeId, term: Term, index: Index) -> Self::Event;
    /// The event for a client call, or `None` if this machine takes none
    /// (or the request does not decode: it is dropped).
    fn call_event(id: u64, request: &[u8]) -> Option<Self::Event>;
    /// Takes an action apart into what the thread executes.
    fn effect(action: Self::Action) -> Effect<Self::Action>;
}

impl Machine for RaftNode {
    type Event = Event;
    type Action = Action;

    fn step(&mut self, now: Instant, event: Event) -> Vec<Action> {
        RaftNode::step(self, now, event).expect("the driver uses the node correctly")
    }

    fn install(
        &mut self,
        now: Instant,
        from: NodeId,
        header: InstallSnapshot,
        _data: &[u8],
    ) -> Vec<Action> {
        // The service reads the bytes from the storage on `ApplySnapshot`.
        let message = Message::InstallSnapshot(header);
        Machine::step(self, now, Event::MessageReceived { from, message })
    }

    fn raft(&self) -> &RaftNode {
        self
    }

    fn message_event(from: NodeId, message: Message) -> Event {
        Event::MessageReceived { from, message }
    }

    fn timer_event() -> Event {
        Event::TimerFired
    }

    fn persisted_event(upto: u64, _raft_state_bytes: usize) -> Event {
        Event::Persisted { upto }
    }

    fn snapshot_taken_event(index: Index) -> Event {
        Event::SnapshotTaken { index }
    }

    fn snapshot_send_ended_event(to: NodeId, term: Term, index: Index) -> Event {
        Event::SnapshotSendEnded { to, term, index }
    }

    fn call_event(_id: u64, _request: &[u8]) -> Option<Event> {
        None
    }

    fn effect(action: Action) -> Effect<Action> {
        match action {
            Action::Send { to, message } => Effect::Send { to, message },
            Action::SendSnapshot { to, message } => Effect::SendSnapshot { to, message },
            Action::Persist(p) => Effect::Persist(p),
            Action::SetTimer { deadline } => Effect::SetTimer { deadline },
            other => Effect::Other(other),
        }
    }
}

impl Machine for KvServer {
    type Event = ServerEvent;
    type Action = ServerAction;

    fn step(&mut self, now: Instant, event: ServerEvent) -> Vec<ServerAction> {
        KvServer::step(self, now, event).expect("the driver uses the server correctly")
    }

    fn install(
        &mut self,
        now: Instant,
        from: NodeId,
        header: InstallSnapshot,
        mut data: &[u8],
    ) -> Vec<ServerAction> {
        KvServer::install_snapshot(self, now, from, header, &mut data)
            .expect("the driver uses the server correctly")
    }

    fn raft(&self) -> &RaftNode {
        KvServer::raft(self)
    }

    fn message_event(from: NodeId, message: Message) -> ServerEvent {
        ServerEvent::MessageReceived { from, message }
    }

    fn timer_event() -> ServerEvent {
        ServerEvent::TimerFired
    }

    fn persisted_event(upto: u64, raft_state_bytes: usize) -> ServerEvent {
        ServerEvent::Persisted {
            upto,
            raft_state_bytes,
        }
    }

    fn snapshot_taken_event(index: Index) -> ServerEvent {
        ServerEvent::SnapshotTaken { index }
    }

    fn snapshot_send_ended_event(to: NodeId, term: Term, index: Index) -> ServerEvent {
        ServerEvent::SnapshotSendEnded { to, term, index }
    }

    fn call_event(id: u64, request: &[u8]) -> Option<ServerEvent> {
        let command = postcard::from_bytes(request).ok()?;
        Some(ServerEvent::RequestReceived { id, command })
    }

    fn effect(action: ServerAction) -> Effect<ServerAction> {
        match action {
            ServerAction::Send { to, message } => Effect::Send { to, message },
            ServerAction::SendSnapshot { to, message } => Effect::SendSnapshot { to, message },
            ServerAction::TakeSnapshot { index, image } => Effect::TakeSnapshot {
                index,
                encode: Box::new(move || {
                    let mut data = Vec::new();
                    image
                        .write_to(&mut data)
                        .expect("writing into a Vec cannot fail");
                    data
                }),
            },
            ServerAction::Persist(p) => Effect::Persist(p),
            ServerAction::SetTimer { deadline } => Effect::SetTimer { deadline },
            ServerAction::Reply { id, reply } => Effect::Reply {
                id,
                bytes: postcard::to_allocvec(&reply).expect("replies encode"),
            },
        }
    }
}

/// The driver's view into a node's steps, called on whichever thread steps
/// it, with the node's mutex held. Every method has a no-op default.
pub trait Hooks<M: Machine, S: Storage>: Send + 'static {
    /// After every step of node `id`.
    fn stepped(&mut self, id: usize, machine: &M) {
        let _ = (id, machine);
    }
    /// After `persist` was written to `storage`, before its messages leave.
    fn persisted(&mut self, id: usize, machine: &M, persist: &Persist, storage: &S) {
        let _ = (id, machine, persist, storage);
    }
    /// Before node `id` sends `message` to `to`; `storage` is its own.
    fn sending(&mut self, id: usize, to: usize, message: &Message, storage: &S) {
        let _ = (id, to, message, storage);
    }
    /// An action the thread does not execute itself (for a `RaftNode`:
    /// `Apply`, `ApplySnapshot`, proposal answers), with the node's storage
    /// (where the snapshot an `ApplySnapshot` names is, and where the
    /// service's own snapshot is staged). May return an event to step next
    /// (the service's `SnapshotTaken`, once staged).
    fn output(
        &mut self,
        id: usize,
        machine: &M,
        action: M::Action,
        storage: &mut S,
    ) -> Option<M::Event> {
        let _ = (id, machine, action, storage);
        None
    }
}

/// Hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl<M: Machine, S: Storage> Hooks<M, S> for NoHooks {}

/// The first failure on any node thread of a cluster. Clones share it.
#[derive(Clone, Default)]
pub struct Failures {
    inner: Arc<Mutex<FailureState>>,
}

#[derive(Default)]
struct FailureState {
    first: Option<String>,
    waiters: Vec<Waker>,
}

impl Failures {
    /// No failure yet.
    pub fn new() -> Self {
        Failures::default()
    }

    /// Records `message` (if it is the first) and wakes whoever waits.
    pub fn record(&self, message: String) {
        let waiters = {
            let mut f = lock(&self.inner);
            f.first.get_or_insert(message);
            std::mem::take(&mut f.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }

    /// The first failure, if any.
    pub fn first(&self) -> Option<String> {
        lock(&self.inner).first.clone()
    }

    /// Resolves to the first failure once there is one.
    pub fn wait(&self) -> impl Future<Output = String> + 'static {
        let inner = self.inner.clone();
        std::future::poll_fn(move |cx| {
            let mut f = lock(&inner);
            match &f.first {
                Some(m) => Poll::Ready(m.clone()),
                None => {
                    f.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}

/// A node's setup: what [`Node::spawn`] runs.
pub struct NodeSpec<M: Machine, S: Storage> {
    /// The server's number on the network (its Raft id).
    pub id: usize,
    /// The state machine, new or recovered from `storage`.
    pub machine: M,
    /// Where its writes go (the harness keeps another handle).
    pub storage: Arc<Mutex<S>>,
    /// The driver's hooks.
    pub hooks: Box<dyn Hooks<M, S>>,
    /// Measure the encoded Raft state after every write and report it in
    /// `persisted_event` (the KV server snapshots by it); costs an encode.
    pub measure_raft_state: bool,
}

struct Cell<M: Machine, S: Storage> {
    machine: M,
    hooks: Box<dyn Hooks<M, S>>,
    timer: Option<Instant>,
    stopped: bool,
    /// The index of the service snapshot a writer thread is staging.
    writing: Option<Index>,
}

struct NodeShared<M: Machine, S: Storage> {
    id: usize,
    gen: u64,
    /// The node's own inbox, for its snapshot writer's report.
    inbox: Sender<Delivery>,
    cell: Mutex<Cell<M, S>>,
    storage: Arc<Mutex<S>>,
    net: Network,
    clock: Clock,
    measure_raft_state: bool,
    /// Set by the thread as its last act on the node, before it reports a
    /// panic: whoever sees the failure also sees the node not running,
    /// however the OS schedules the thread's exit.
    ended: AtomicBool,
}

/// A running node: one incarnation of a server, on its own thread. Dropping
/// it stops it.
pub struct Node<M: Machine, S: Storage> {
    shared: Arc<NodeShared<M, S>>,
    wake: Sender<Delivery>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<M: Machine, S: Storage> Node<M, S> {
    /// Joins `spec.machine` to `net` as a new incarnation of server
    /// `spec.id`, steps a first `TimerFired` on the calling thread (so its
    /// timer is armed when this returns), and starts its thread. A panic on
    /// the thread is recorded in `failures`.
    pub fn spawn(spec: NodeSpec<M, S>, net: &Network, clock: Clock, failures: &Failures) -> Self {
        let (tx, rx) = mpsc::channel();
        let gen = net.attach(spec.id, tx.clone());
        let shared = Arc::new(NodeShared {
            id: spec.id,
            gen,
            inbox: tx.clone(),
            cell: Mutex::new(Cell {
                machine: spec.machine,
                hooks: spec.hooks,
                timer: None,
                stopped: false,
                writing: None,
            }),
            storage: spec.storage,
            net: net.clone(),
            clock,
            measure_raft_state: spec.measure_raft_state,
            ended: AtomicBool::new(false),
        });
        shared.step(M::timer_event(), None, false);
        let on_thread = shared.clone();
        let failures = failures.clone();
        #[cfg(feature = "canaries")]
        let canary = kv_core::canary::Planted::active();
        let thread = thread::Builder::new()
            .name(format!("node-{}.{}.{gen}", net.instance(), spec.id))
            .spawn(move || {
                // Planted bugs are per thread: inherit the spawner's.
                #[cfg(feature = "canaries")]
                kv_core::canary::Planted::set(canary);
                let id = on_thread.id;
                let run = catch_unwind(AssertUnwindSafe(|| on_thread.run(&rx)));
                on_thread.ended.store(true, Ordering::SeqCst);
                if let Err(panic) = run {
                    failures.record(format!("server {id}: {}", panic_message(&*panic)));
                }
            })
            .expect("spawn a node thread");
        Node {
            shared,
            wake: tx,
            thread: Some(thread),
        }
    }

    /// The server's number.
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// This incarnation's number on the network.
    pub fn generation(&self) -> u64 {
        self.shared.gen
    }

    /// Steps `event` on the calling thread (waiting for the thread's current
    /// step to end), executes the actions as the thread would, and returns
    /// the first step's actions; `None` once stopped.
    pub fn step(&self, event: M::Event) -> Option<Vec<M::Action>> {
        let actions = self.shared.step(event, None, true);
        // The step may have moved the timer: let the thread re-read it.
        let _ = self.wake.send(Delivery::Wake);
        actions
    }

    /// Reads the machine under the node's mutex; `None` once stopped.
    pub fn with<R>(&self, f: impl FnOnce(&M) -> R) -> Option<R> {
        let cell = lock(&self.shared.cell);
        (!cell.stopped).then(|| f(&cell.machine))
    }

    /// Is it still running (not stopped, and its thread not dead of a
    /// panic)? False from the moment a panic is recorded in [`Failures`].
    pub fn is_running(&self) -> bool {
        !lock(&self.shared.cell).stopped && !self.shared.ended.load(Ordering::SeqCst)
    }

    /// Crashes the node: after this returns it never steps, sends or writes
    /// again. Deletes it from the network and joins its thread. Idempotent.
    pub fn stop(&mut self) {
        lock(&self.shared.cell).stopped = true;
        self.shared.net.detach(self.shared.id, self.shared.gen);
        let _ = self.wake.send(Delivery::Wake);
        if let Some(thread) = self.thread.take() {
            // A thread that died of a panic has reported it already.
            let _ = thread.join();
        }
    }
}

impl<M: Machine, S: Storage> Drop for Node<M, S> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<M: Machine, S: Storage> NodeShared<M, S> {
    /// The thread's loop: until stopped or cut off.
    fn run(&self, inbox: &Receiver<Delivery>) {
        loop {
            let timer = {
                let cell = lock(&self.cell);
                if cell.stopped {
                    return;
                }
                cell.timer
            };
            let delivery = match timer.map(|t| self.clock.to_std(t)) {
                Some(due) => {
                    let now = std::time::Instant::now();
                    if due <= now {
                        None
                    } else {
                        match inbox.recv_timeout(due - now) {
                            Ok(d) => Some(d),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
                None => match inbox.recv() {
                    Ok(d) => Some(d),
                    Err(_) => return,
                },
            };
            match delivery {
                None => self.fire_timer(),
                Some(Delivery::Wake) => {}
                Some(Delivery::Message {
                    from,
                    from_gen,
                    bytes,
                }) => {
                    let Ok(message) = postcard::from_bytes::<Message>(&bytes) else {
                        continue;
                    };
                    let caller = message.is_request().then_some((from, from_gen));
                    self.step(M::message_event(from as NodeId, message), caller, false);
                }
                Some(Delivery::Snapshot {
                    from,
                    from_gen,
                    header,
                    data,
                }) => self.install(from, from_gen, header, data),
                Some(Delivery::SnapshotSendEnded { to, term, index }) => {
                    let event = M::snapshot_send_ended_event(to as NodeId, term, index);
                    self.step(event, None, false);
                }
                Some(Delivery::SnapshotTaken { index }) => {
                    lock(&self.cell).writing = None;
                    self.step(M::snapshot_taken_event(index), None, false);
                }
                Some(Delivery::Call { id, bytes }) => {
                    if let Some(event) = M::call_event(id, &bytes) {
                        self.step(event, None, false);
                    }
                }
            }
        }
    }

    /// The timer's deadline passed: it fires once per `SetTimer`, as in the
    /// simulator (the core re-arms it whenever its deadline moves).
    fn fire_timer(&self) {
        let mut guard = lock(&self.cell);
        let due = guard.timer.is_some_and(|t| t <= self.clock.now());
        if due && !guard.stopped {
            guard.timer = None;
            self.step_locked(&mut guard, M::timer_event(), None, false);
        }
    }

    /// Steps `event` and every follow-up it causes, executing the actions.
    /// `caller` is the (server, incarnation) whose request is being handled.
    /// Returns the first step's actions if `want_actions`; `None` once
    /// stopped.
    fn step(
        &self,
        event: M::Event,
        caller: Option<(usize, u64)>,
        want_actions: bool,
    ) -> Option<Vec<M::Action>> {
        let mut guard = lock(&self.cell);
        self.step_locked(&mut guard, event, caller, want_actions)
    }

    fn step_locked(
        &self,
        cell: &mut Cell<M, S>,
        event: M::Event,
        caller: Option<(usize, u64)>,
        want_actions: bool,
    ) -> Option<Vec<M::Action>> {
        if cell.stopped {
            return None;
        }
        let mut first = None;
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            // Read under the mutex: steps of one node see time only grow.
            let now = self.clock.now();
            let actions = cell.machine.step(now, event);
            cell.hooks.stepped(self.id, &cell.machine);
            if want_actions && first.is_none() {
                first = Some(actions.clone());
            }
            for action in actions {
                self.execute(cell, action, caller, &mut queue);
            }
        }
        Some(first.unwrap_or_default())
    }

    /// A leader's snapshot arrived whole: stage it, hand it to the machine
    /// with its bytes, execute what follows, and unstage it unless a write
    /// made it the node's snapshot. A snapshot the node holds already at
    /// that index (its own: staged, stored, or being written) is left as it
    /// is: the leader's is the same state, and the core will not install it
    /// (it installs only beyond its commit index).
    fn install(&self, from: usize, from_gen: u64, header: InstallSnapshot, data: Vec<u8>) {
        let mut guard = lock(&self.cell);
        let cell = &mut *guard;
        if cell.stopped {
            return;
        }
        let index = header.last_included_index;
        let staged = {
            let mut storage = lock(&self.storage);
            // The writer may be about to stage the node's own one there.
            let fresh = storage.snapshot_at(index).is_none() && cell.writing != Some(index);
            if fresh {
                storage.stage(index, data.clone());
            }
            fresh
        };
        let now = self.clock.now();
        let actions = cell.machine.install(now, from as NodeId, header, &data);
        drop(data);
        cell.hooks.stepped(self.id, &cell.machine);
        let caller = Some((from, from_gen));
        let mut queue = VecDeque::new();
        for action in actions {
            self.execute(cell, action, caller, &mut queue);
        }
        if staged {
            // Installed (now stored, no longer staged) or not wanted.
            lock(&self.storage).unstage(index);
        }
        while let Some(event) = queue.pop_front() {
            let now = self.clock.now();
            let actions = cell.machine.step(now, event);
            cell.hooks.stepped(self.id, &cell.machine);
            for action in actions {
                self.execute(cell, action, caller, &mut queue);
            }
        }
    }

    fn execute(
        &self,
        cell: &mut Cell<M, S>,
        action: M::Action,
        caller: Option<(usize, u64)>,
        queue: &mut VecDeque<M::Event>,
    ) {
        match M::effect(action) {
            Effect::Send { to, message } => self.send(cell, to as usize, &message, caller),
            Effect::SendSnapshot { to, message } => {
                let to = to as usize;
                let data = {
                    let storage = lock(&self.storage);
                    let header = Message::InstallSnapshot(message.clone());
                    cell.hooks.sending(self.id, to, &header, &storage);
                    storage
                        .snapshot_at(message.last_included_index)
                        .expect("a leader holds the snapshot it sends")
                };
                self.net.send_snapshot(self.id, self.gen, to, message, data);
            }
            Effect::TakeSnapshot { index, encode } => {
                cell.writing = Some(index);
                self.write_snapshot(index, encode);
            }
            Effect::Persist(p) => {
                let size = {
                    let mut storage = lock(&self.storage);
                    storage.save(&p);
                    cell.hooks.persisted(self.id, &cell.machine, &p, &storage);
                    if self.measure_raft_state {
                        storage.raft_state_size()
                    } else {
                        0
                    }
                };
                for (to, message) in &p.then_send {
                    self.send(cell, *to as usize, message, caller);
                }
                queue.push_back(M::persisted_event(p.id, size));
            }
            Effect::SetTimer { deadline } => cell.timer = Some(deadline),
            Effect::Reply { id, bytes } => self.net.reply(id, bytes),
            Effect::Other(action) => {
                let mut storage = lock(&self.storage);
                let event = cell
                    .hooks
                    .output(self.id, &cell.machine, action, &mut storage);
                if let Some(event) = event {
                    queue.push_back(event);
                }
            }
        }
    }

    /// The service's snapshot, on a writer thread of its own: encoded,
    /// staged, then reported to the node thread, which steps `SnapshotTaken`
    /// (this incarnation only: a stopped one's inbox is gone, and what it
    /// stages lands in storage the next incarnation does not load).
    fn write_snapshot(&self, index: Index, encode: EncodeSnapshot) {
        let storage = self.storage.clone();
        let inbox = self.inbox.clone();
        let name = format!("snapshot-{}.{}.{}", self.net.instance(), self.id, self.gen);
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let data = encode();
            lock(&storage).stage(index, data);
            let _ = inbox.send(Delivery::SnapshotTaken { index });
        });
        spawned.expect("spawn a snapshot writer");
    }

    fn send(
        &self,
        cell: &mut Cell<M, S>,
        to: usize,
        message: &Message,
        caller: Option<(usize, u64)>,
    ) {
        {
            let storage = lock(&self.storage);
            cell.hooks.sending(self.id, to, message, &storage);
        }
        self.net.send(self.id, self.gen, to, message, caller);
    }
}

/// The text of a panic's payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::network::NetConfig;
    use crate::rt::{ms, run, sleep, timeout};
    use raft_testkit::Persister;

    /// Tests that run a real-time cluster take turns, as the lab's tests do,
    /// so that one cluster's load is not another's network delay.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    /// The names of the live threads of network `instance` and its nodes
    /// (`net-<instance>`, `node-<instance>.<id>.<gen>`): only this cluster's,
    /// whatever other tests run beside it.
    pub(crate) fn driver_threads(instance: u64) -> Vec<String> {
        let net = format!("net-{instance}");
        let node = format!("node-{instance}.");
        let mut names = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("Linux /proc") {
            let comm = task.expect("a task").path().join("comm");
            if let Ok(name) = std::fs::read_to_string(comm) {
                let name = name.trim().to_string();
                if name.starts_with(&node) || name == net {
                    names.push(name);
                }
            }
        }
        names
    }

    /// [`driver_threads`] once every thread of `instance` has left
    /// `/proc`, or as they are after 10 s. A joined thread can still be
    /// listed for a moment: `join` returns when the thread has cleared its
    /// tid, which the kernel does before it removes the task, and a busy
    /// machine may preempt the thread between the two (the CI saw `net-6`
    /// listed right after its join).
    pub(crate) fn threads_left(instance: u64) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = driver_threads(instance);
            if left.is_empty() || std::time::Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A one-member cluster: it elects itself and then only heartbeats.
    fn single(
        hooks: Box<dyn Hooks<RaftNode, Persister>>,
    ) -> (Network, Failures, Node<RaftNode, Persister>) {
        let net = Network::new(NetConfig::new(1, 7));
        let failures = Failures::new();
        let spec = NodeSpec {
            id: 0,
            machine: RaftNode::new(raft_core::Config::new(0, vec![0]), 1).unwrap(),
            storage: Arc::new(Mutex::new(Persister::new())),
            hooks,
            measure_raft_state: false,
        };
        let node = Node::spawn(spec, &net, Clock::new(), &failures);
        (net, failures, node)
    }

    struct PanicWhenLeading;

    impl Hooks<RaftNode, Persister> for PanicWhenLeading {
        fn stepped(&mut self, _id: usize, node: &RaftNode) {
            assert!(!node.is_leader(), "planted: leader in term {}", node.term());
        }
    }

    #[test]
    fn a_panic_on_a_node_thread_is_recorded_and_awaitable() {
        let _serial = lock(&SERIAL);
        let (net, failures, mut node) = single(Box::new(PanicWhenLeading));
        let failed = run(async move { timeout(ms(5000), failures.wait()).await });
        let message = failed.expect("the node failed within 5 s");
        assert!(
            message.starts_with("server 0: planted: leader in term"),
            "{message}"
        );
        assert!(!node.is_running());
        node.stop();
        net.shutdown();
    }

    struct CountSteps(Arc<AtomicU64>);

    impl Hooks<RaftNode, Persister> for CountSteps {
        fn stepped(&mut self, _id: usize, _node: &RaftNode) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_stopped_node_never_steps_again_and_its_threads_end() {
        let _serial = lock(&SERIAL);
        let steps = Arc::new(AtomicU64::new(0));
        let (net, failures, mut node) = single(Box::new(CountSteps(steps.clone())));
        let counted = steps.clone();
        let (before, after, leader) = run(async move {
            // Elected after its 300-600 ms timeout, then heartbeat timers:
            // waited for, not assumed after a fixed sleep (a busy machine
            // may run the thread late).
            let elected = async {
                while !(node.with(|n| n.is_leader()) == Some(true)
                    && counted.load(Ordering::SeqCst) > 3)
                {
                    sleep(ms(10)).await;
                }
            };
            timeout(ms(30_000), elected).await;
            let leader = node.with(|n| n.is_leader());
            node.stop();
            let before = counted.load(Ordering::SeqCst);
            assert_eq!(node.with(|n| n.term()), None);
            assert_eq!(node.step(Event::TimerFired), None);
            sleep(ms(300)).await;
            (before, counted.load(Ordering::SeqCst), leader)
        });
        assert_eq!(leader, Some(true));
        assert!(before > 3, "{before} steps");
        assert_eq!(before, after, "steps after stop");
        assert!(failures.first().is_none());
        net.shutdown();
        assert_eq!(threads_left(net.instance()), Vec::<String>::new());
    }
}
