//! One Raft node in its own process: a node thread that owns the
//! [`RaftNode`] and the application's [`Service`], a mio network thread
//! ([`crate::tcp`], on `raft-wire`) and durable storage in a directory
//! (`raft-storage`'s [`Storage`], the store driver-tokio uses too).
//!
//! # The node thread
//!
//! It waits on its inbox (peer messages from the network thread, proposals
//! from [`Proposer`]s) with `recv_timeout` until the deadline of the core's
//! last `SetTimer`, and steps the core with what arrives (a batch of whatever
//! is queued) or with `TimerFired`. Time is the monotonic clock, converted at
//! the edge ([`raft_wire::Clock`]): `raft_core::Instant` counts nanoseconds
//! since the node started.
//!
//! Each round executes the actions in order: `Send`s are handed to the
//! network thread at once (a leader's appends leave while its own write is
//! in progress); `Persist`s are collected, and at the end of the round
//! written together by [`Storage::commit`] (one group commit); only
//! then are their `then_send` messages handed to the network and
//! `Persisted` stepped (which may produce more writes: the loop repeats
//! until none is left). `Apply` and `ApplySnapshot` go to the service in
//! order; after an apply, the node snapshots the service every
//! [`NodeOptions::snapshot_every`] entries.
//!
//! # Snapshots
//!
//! The core never holds snapshot bytes; they live in `raft-storage`'s
//! staged snapshot files, by index:
//!
//! - Taking one: the service's bytes ([`Service::snapshot`]) go to a writer
//!   thread, which writes and fsyncs a staged file ([`SnapshotWriter`]) and
//!   tells the node thread, which then steps `SnapshotTaken` (its `Persist`
//!   makes the file the node's snapshot). One is written at a time.
//! - Sending one (`SendSnapshot`): the file at the header's index is read
//!   and handed to the network thread with the header, which sends both and
//!   reports the end of the transfer ([`crate::tcp`]), stepped as
//!   `SnapshotSendEnded`.
//! - Receiving one: if it goes beyond the commit index (else the core only
//!   answers it), the bytes are staged in a file first; the header is
//!   stepped; `ApplySnapshot` restores the service from that file
//!   ([`SnapshotReader`]); a staged file the core did not install is
//!   deleted.
//! - At start, the service is restored from the snapshot recovery opened.
//!
//! A storage error stops the node: it cannot promise anything any more.
#![warn(missing_docs)]

use raft_core::{
    Action, Config, Entry, Event, Index, InstallSnapshot, Message, NodeId, Persist, RaftNode,
    RejectReason, Role, SnapshotMeta, Term,
};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;

use raft_storage::{Owner, SnapshotReader, SnapshotWriter, Storage, StorageError};
use raft_wire::{seed_from_entropy, Clock};

use crate::tcp::{Arrival, Delivery, Outbox, TcpConfig, TcpTransport};

/// How many inputs queue for the node thread before peer messages are
/// dropped (Raft retransmits).
const INBOX_CAPACITY: usize = 8192;
/// Most inputs stepped in one round before their writes are made durable.
const MAX_ROUND: usize = 256;

/// The replicated application on top of the log.
pub trait Service: Send + 'static {
    /// A committed entry, in index order with no gaps (entries with an empty
    /// command are the leaders' no-ops: they carry no request).
    fn apply(&mut self, entry: &Entry);
    /// The service's state through the last applied entry (written to disk
    /// off the node thread).
    fn snapshot(&self) -> Vec<u8>;
    /// Replace the state with a snapshot through `meta.index`, read from
    /// `data` (a file, checked against its crc as it is read): the node's
    /// own at startup, or one its leader sent. Bytes that [`Service::snapshot`]
    /// did not produce, or a failed read, are an error (and stop the node).
    fn restore(&mut self, meta: &SnapshotMeta, data: &mut dyn Read) -> Result<(), String>;
    /// The node's role, term or known leader changed.
    fn role_changed(&mut self, _role: Role, _term: Term, _leader: Option<NodeId>) {}
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub id: NodeId,
    /// The cluster's id, checked on every connection and in the data
    /// directory.
    pub cluster_id: u64,
    /// Every member's address, this node's included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where its state is stored.
    pub data_dir: PathBuf,
    /// Snapshot the service every this many applied entries (`None`: never,
    /// and the log grows without bound).
    pub snapshot_every: Option<u64>,
    /// The core's configuration; its `id` and `members` must match the
    /// fields above.
    pub raft: Config,
    /// The seed of the core's election jitter.
    pub seed: u64,
}

impl NodeOptions {
    /// Options with the core's defaults (plus a no-op entry at each
    /// election, so that a new leader commits its predecessors' entries
    /// without waiting for a proposal), a snapshot every 1000 entries and a
    /// seed from the environment's entropy.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        peers: BTreeMap<NodeId, SocketAddr>,
        data_dir: PathBuf,
    ) -> Self {
        let mut raft = Config::new(id, peers.keys().copied().collect());
        raft.noop_on_election = true;
        NodeOptions {
            id,
            cluster_id,
            peers,
            data_dir,
            snapshot_every: Some(1000),
            raft,
            seed: seed_from_entropy(id),
        }
    }
}

/// Why a node could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The options are inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory could not be opened or written.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The network could not be set up (the listener's address is taken, say).
    #[error("network: {0}")]
    Network(std::io::Error),
    /// The core refused its input: a bug in this driver, or a data
    /// directory the core finds inconsistent.
    #[error("raft: {0}")]
    Core(#[from] raft_core::Error),
    /// The service refused a snapshot.
    #[error("service: {0}")]
    Service(String),
}

/// The answer to a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// This node leads and appended the command at `index` in `term`. It is
    /// not committed yet: the service sees it in `apply` once it is (if
    /// leadership is lost first, another command may take that index).
    Accepted {
        /// Where it was placed.
        index: raft_core::Index,
        /// The leader's term.
        term: Term,
    },
    /// This node cannot take it.
    Rejected(RejectReason),
}

/// The node thread has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node has stopped")]
pub struct Stopped;

enum Input {
    Peer {
        from: NodeId,
        message: Message,
    },
    Snapshot {
        from: NodeId,
        header: InstallSnapshot,
        data: Vec<u8>,
    },
    SnapshotSendEnded {
        to: NodeId,
        term: Term,
        index: Index,
    },
    /// The writer thread staged the service's snapshot through `index` (or
    /// failed to).
    SnapshotWritten {
        index: Index,
        result: Result<(), StorageError>,
    },
    Propose {
        command: Vec<u8>,
        reply: SyncSender<Proposal>,
    },
    Stop,
}

/// Submits commands to a node: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Proposer {
    inbox: SyncSender<Input>,
}

impl Proposer {
    /// Proposes `command` and waits for the node's answer (not for the
    /// commit).
    pub fn propose(&self, command: Vec<u8>) -> Result<Proposal, Stopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.inbox
            .send(Input::Propose { command, reply })
            .map_err(|_| Stopped)?;
        answer.recv().map_err(|_| Stopped)
    }
}

/// A running node: its node thread and network thread.
pub struct TcpNode {
    inbox: SyncSender<Input>,
    thread: JoinHandle<Result<(), NodeError>>,
    transport: TcpTransport,
}

impl TcpNode {
    /// Opens the data directory, recovers the node and its service from it,
    /// binds the listener and starts both threads.
    pub fn start<S: Service>(options: NodeOptions, mut service: S) -> Result<TcpNode, NodeError> {
        let members: Vec<NodeId> = options.peers.keys().copied().collect();
        if options.raft.id != options.id || options.raft.members != members {
            return Err(NodeError::Config(
                "the raft config's id and members must match the node's id and peers".into(),
            ));
        }
        if !options.peers.contains_key(&options.id) {
            return Err(NodeError::Config(format!(
                "node {} is not among the peers {members:?}",
                options.id
            )));
        }
        options.raft.validate()?;
        let owner = Owner {
            node_id: options.id,
            cluster_id: options.cluster_id,
        };
        let (storage, recovered) = Storage::open_owned(&options.data_dir, owner)?;
        if let Some((path, offset)) = &recovered.truncated_torn_tail {
            eprintln!(
                "[node {}] truncated a torn record at the end of the log: {} at offset {offset}",
                options.id,
                path.display()
            );
        }
        let mut recovered_file = None;
        if let (Some(meta), Some(mut data)) = (&recovered.state.snapshot, recovered.snapshot) {
            recovered_file = Some((meta.index, data.path().to_path_buf()));
            service
                .restore(meta, &mut data)
                .map_err(NodeError::Service)?;
        }
        let raft = RaftNode::recover(options.raft.clone(), options.seed, recovered.state)?;

        let (inbox, inputs) = mpsc::sync_channel(INBOX_CAPACITY);
        let to_node = inbox.clone();
        let transport = TcpTransport::start(
            TcpConfig::new(options.id, options.cluster_id, options.peers.clone()),
            move |arrival| {
                let input = match arrival {
                    Arrival::Message { from, message } => Input::Peer { from, message },
                    Arrival::Snapshot { from, header, data } => {
                        Input::Snapshot { from, header, data }
                    }
                    Arrival::SnapshotSendEnded { to, term, index } => {
                        // Never dropped: the core waits for it.
                        return match to_node.send(Input::SnapshotSendEnded { to, term, index }) {
                            Ok(()) => Delivery::Continue,
                            Err(_) => Delivery::Stop,
                        };
                    }
                };
                match to_node.try_send(input) {
                    Ok(()) | Err(TrySendError::Full(_)) => Delivery::Continue,
                    Err(TrySendError::Disconnected(_)) => Delivery::Stop,
                }
            },
        )
        .map_err(NodeError::Network)?;
        let node = NodeLoop {
            inbox: inbox.clone(),
            recovered_file,
            writing: None,
            followups: VecDeque::new(),
            role: (raft.role(), raft.term(), raft.leader_hint()),
            raft,
            service,
            storage,
            outbox: transport.outbox(),
            clock: Clock::start(),
            deadline: None,
            unsent: Vec::new(),
            unwritten: Vec::new(),
            proposals: BTreeMap::new(),
            next_proposal: 0,
            snapshot_every: options.snapshot_every,
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-node-{}", options.id))
            .spawn(move || node.run(inputs))
            .map_err(NodeError::Network)?;
        Ok(TcpNode {
            inbox,
            thread,
            transport,
        })
    }

    /// A handle for proposing commands.
    pub fn proposer(&self) -> Proposer {
        Proposer {
            inbox: self.inbox.clone(),
        }
    }

    /// The address the node listens on for its peers.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Waits until the node thread stops by itself (a storage error, a
    /// service that refused a snapshot), then stops the network.
    pub fn wait(self) -> Result<(), NodeError> {
        let result = self.thread.join().unwrap_or_else(|panic| {
            std::panic::resume_unwind(panic);
        });
        self.transport.shutdown();
        result
    }

    /// Stops both threads (writes already made durable stay so; nothing
    /// else is promised about work in progress).
    pub fn stop(self) -> Result<(), NodeError> {
        let _ = self.inbox.send(Input::Stop);
        self.wait()
    }
}

struct NodeLoop<S> {
    /// The node's own inbox, for the snapshot writer's report.
    inbox: SyncSender<Input>,
    /// The snapshot file recovery opened, by index (a directory of the
    /// earlier formats keeps it under another name than the staged files').
    recovered_file: Option<(Index, PathBuf)>,
    /// The index of the service snapshot being written, if one is.
    writing: Option<Index>,
    /// Events the node owes its core (a transfer that could not even be
    /// queued has ended), stepped after the current step.
    followups: VecDeque<Event>,
    raft: RaftNode,
    service: S,
    storage: Storage,
    outbox: Outbox,
    clock: Clock,
    /// When to step `TimerFired` (the core's last `SetTimer`).
    deadline: Option<std::time::Instant>,
    /// Messages to hand to the network at the end of the round.
    unsent: Vec<(NodeId, Message)>,
    /// Writes to make durable at the end of the round.
    unwritten: Vec<Persist>,
    /// Proposals waiting for the core's answer, by our id.
    proposals: BTreeMap<u64, SyncSender<Proposal>>,
    next_proposal: u64,
    snapshot_every: Option<u64>,
    role: (Role, Term, Option<NodeId>),
}

impl<S: Service> NodeLoop<S> {
    fn run(mut self, inputs: Receiver<Input>) -> Result<(), NodeError> {
        self.step(Event::TimerFired)?; // arms the election timer
        loop {
            self.finish_round()?;
            let first = match self.deadline {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(std::time::Instant::now());
                    match inputs.recv_timeout(wait) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                }
                None => match inputs.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return Ok(()),
                },
            };
            if let Some(input) = first {
                if !self.handle(input)? {
                    return Ok(());
                }
                // Take whatever else is queued into the same round, so that
                // its writes share one group commit.
                for input in inputs.try_iter().take(MAX_ROUND) {
                    if !self.handle(input)? {
                        return Ok(());
                    }
                }
            }
            if self
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
            {
                self.deadline = None;
                self.step(Event::TimerFired)?;
            }
        }
    }

    /// Steps one input; false when told to stop.
    fn handle(&mut self, input: Input) -> Result<bool, NodeError> {
        match input {
            Input::Peer { from, message } => self.step(Event::MessageReceived { from, message })?,
            Input::Snapshot { from, header, data } => self.receive_snapshot(from, header, &data)?,
            Input::SnapshotSendEnded { to, term, index } => {
                self.step(Event::SnapshotSendEnded { to, term, index })?;
            }
            Input::SnapshotWritten { index, result } => {
                result?;
                self.writing = None;
                self.step(Event::SnapshotTaken { index })?;
            }
            Input::Propose { command, reply } => {
                self.next_proposal += 1;
                let id = self.next_proposal;
                self.proposals.insert(id, reply);
                self.step(Event::ProposalReceived { id, command })?;
            }
            Input::Stop => return Ok(false),
        }
        Ok(true)
    }

    /// Sends what is ready, then makes the round's writes durable, then
    /// lets out what waited for them, until nothing is left to write.
    fn finish_round(&mut self) -> Result<(), NodeError> {
        loop {
            self.outbox.send_all(self.unsent.drain(..));
            let batch = std::mem::take(&mut self.unwritten);
            let Some(committed) = self.storage.commit(batch)? else {
                return Ok(());
            };
            self.unsent.extend(committed.then_send);
            self.step(Event::Persisted {
                upto: committed.upto,
            })?;
        }
    }

    /// Steps the core and executes its actions in order (and the events
    /// they lead to); starts a snapshot when one is due.
    fn step(&mut self, event: Event) -> Result<(), NodeError> {
        let actions = self.raft.step(self.clock.now(), event)?;
        self.execute(actions)?;
        while let Some(event) = self.followups.pop_front() {
            let actions = self.raft.step(self.clock.now(), event)?;
            self.execute(actions)?;
        }
        let applied = self.raft.last_applied();
        let due = self
            .snapshot_every
            .is_some_and(|every| applied >= self.raft.log().snapshot().index + every);
        if due && self.writing.is_none() {
            self.write_snapshot(applied)?;
        }
        let role = (self.raft.role(), self.raft.term(), self.raft.leader_hint());
        if role != self.role {
            self.role = role;
            self.service.role_changed(role.0, role.1, role.2);
        }
        Ok(())
    }

    /// The service's snapshot through `index` (the last applied entry),
    /// written and fsynced as a staged file on a writer thread, which
    /// reports back (`Input::SnapshotWritten`).
    fn write_snapshot(&mut self, index: Index) -> Result<(), NodeError> {
        let meta = self
            .raft
            .snapshot_meta_at(index)
            .expect("the log holds the last applied entry");
        let data = self.service.snapshot();
        let dir = self.storage.dir().to_path_buf();
        let inbox = self.inbox.clone();
        self.writing = Some(index);
        let writer = move || {
            let result = SnapshotWriter::create(&dir, &meta, "own").and_then(|mut w| {
                w.write_all(&data).map_err(|source| StorageError::Io {
                    path: dir.clone(),
                    source,
                })?;
                w.finish().map(|_| ())
            });
            // A node that stopped meanwhile no longer listens.
            let _ = inbox.send(Input::SnapshotWritten { index, result });
        };
        std::thread::Builder::new()
            .name(format!("raft-snapshot-{}", self.raft.id()))
            .spawn(writer)
            .map_err(NodeError::Network)?;
        Ok(())
    }

    /// A leader's snapshot arrived whole. One that goes beyond the commit
    /// index is staged on disk first (the core installs only those); then
    /// the header is stepped, and the staged file is deleted if the core
    /// did not make it the node's snapshot.
    fn receive_snapshot(
        &mut self,
        from: NodeId,
        header: InstallSnapshot,
        data: &[u8],
    ) -> Result<(), NodeError> {
        let index = header.last_included_index;
        let staged = index > self.raft.commit_index();
        if staged {
            let meta = SnapshotMeta {
                index,
                term: header.last_included_term,
                membership: header.membership.clone(),
            };
            let dir = self.storage.dir().to_path_buf();
            let mut writer = SnapshotWriter::create(&dir, &meta, "received")?;
            writer
                .write_all(data)
                .map_err(|source| StorageError::Io { path: dir, source })?;
            writer.finish()?;
        }
        let message = Message::InstallSnapshot(header);
        self.step(Event::MessageReceived { from, message })?;
        if staged && self.raft.log().snapshot().index != index {
            let _ = std::fs::remove_file(self.storage.snapshot_path(index));
        }
        Ok(())
    }

    fn execute(&mut self, actions: Vec<Action>) -> Result<(), NodeError> {
        for action in actions {
            match action {
                Action::Send { to, message } => self.unsent.push((to, message)),
                Action::SendSnapshot { to, message } => self.send_snapshot(to, message)?,
                Action::Persist(persist) => self.unwritten.push(persist),
                Action::Apply { entries } => {
                    for entry in &entries {
                        self.service.apply(entry);
                    }
                }
                Action::ApplySnapshot { meta } => {
                    // Staged by `receive_snapshot` before the header was
                    // stepped.
                    let mut data = SnapshotReader::open(&self.storage.snapshot_path(meta.index))?;
                    self.service
                        .restore(&meta, &mut data)
                        .map_err(NodeError::Service)?;
                }
                Action::SetTimer { deadline } => {
                    self.deadline = Some(self.clock.deadline(deadline));
                }
                Action::AcceptProposal { id, index, term } => {
                    if let Some(reply) = self.proposals.remove(&id) {
                        let _ = reply.try_send(Proposal::Accepted { index, term });
                    }
                }
                Action::RejectProposal { id, reason } => {
                    if let Some(reply) = self.proposals.remove(&id) {
                        let _ = reply.try_send(Proposal::Rejected(reason));
                    }
                }
                // This node requests no transfers or membership changes,
                // and its peers are fixed at start.
                Action::LeadershipTransfer { .. }
                | Action::AcceptMembershipChange { .. }
                | Action::RejectMembershipChange { .. }
                | Action::MembershipChanged { .. }
                | Action::ReadReady { .. }
                | Action::RejectRead { .. } => {}
            }
        }
        Ok(())
    }

    /// Reads the snapshot file at the header's index (this node's own, or a
    /// newer one being made its own) and hands it to the network thread
    /// with the header. If it cannot go, the transfer has ended at once.
    fn send_snapshot(&mut self, to: NodeId, header: InstallSnapshot) -> Result<(), NodeError> {
        let (term, index) = (header.term, header.last_included_index);
        let mut path = self.storage.snapshot_path(index);
        if !path.exists() {
            if let Some((_, old)) = self.recovered_file.as_ref().filter(|(i, _)| *i == index) {
                path = old.clone();
            }
        }
        let data = SnapshotReader::open(&path).and_then(SnapshotReader::read_all)?;
        // Messages queued before it leave before it.
        self.outbox.send_all(self.unsent.drain(..));
        if !self.outbox.send_snapshot(to, header, data) {
            self.followups
                .push_back(Event::SnapshotSendEnded { to, term, index });
        }
        Ok(())
    }
}
