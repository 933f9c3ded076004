//! A TCP transport between Raft nodes in separate processes, on one mio
//! event-loop thread.
//!
//! The thread owns every socket of the node: a listener for its peers'
//! connections, one incoming connection per peer (the peer's messages to
//! us) and one outgoing connection per peer (our messages to it). The node
//! thread hands it messages through an [`Outbox`] (a bounded channel and a
//! [`mio::Waker`]); what arrives is given to a `deliver` callback, which
//! typically forwards it to the node thread's inbox.
//!
//! # Wire format
//!
//! `raft-wire`'s, the one protocol of every TCP transport (driver-tokio's
//! `rkv` speaks it too): every frame is a little-endian `u32` length
//! followed by that many bytes of postcard. The first frame on a connection
//! is a [`Hello::Peer`]: protocol version, cluster id and the sender's node
//! id. Every later frame is one [`raft_core::Message`], except that an
//! `InstallSnapshot` (a header) is always followed by one frame holding the
//! snapshot's bytes, raw (this transport's way of sending a snapshot beside
//! its header: whole, on the message connection; driver-tokio streams it on
//! a connection of its own). A connection carries messages one way: the
//! acceptor writes one frame only, its [`HelloReply`] to the hello, which
//! the dialler does not wait for (its messages queue behind the hello) but
//! reads, to log a refusal's reason.
//!
//! # Snapshot transfers
//!
//! [`Outbox::send_snapshot`] queues the header and the bytes as one unit,
//! kept or dropped whole. The receiving side delivers the header only with
//! all of its bytes ([`Arrival::Snapshot`]). The sending side reports the
//! end of every transfer exactly once ([`Arrival::SnapshotSendEnded`]): when
//! its last byte has been written to the socket, or when it is dropped (no
//! connection, backing off, buffer full, too large) or its connection fails
//! before that. A transfer written to the socket may still be lost with the
//! connection; the core's probe after the end finds out.
//!
//! The acceptor refuses (answers `Refused` naming the reason, closes, and
//! logs a line on stderr) a hello of another version or cluster, or from an
//! id that is not a peer ([`Hello::accept_peer`]); it closes the connection
//! on any frame longer than its limit
//! ([`MAX_HELLO_FRAME`] before the hello, [`TcpConfig::max_frame_bytes`]
//! after) — checked on the length prefix, before anything is allocated
//! ([`FrameDecoder`]), and the read buffer grows only with the bytes that
//! actually arrive. An undecodable frame closes the connection too. Nothing
//! a connection sends can panic or stop the node.
//!
//! # Outgoing connections
//!
//! Dialled lazily, when the first message for the peer is sent. While the
//! connection is being set up, messages queue behind the hello; after a
//! failure (refused, reset, closed by the peer, connect timeout) the
//! connection is dropped with its buffer and messages to that peer are
//! dropped until a back-off (50 ms doubling to 1 s) has passed, when the next
//! message dials again. The back-off starts over only once a connection has
//! stayed up for a second, so a peer that refuses our hello (and closes at
//! once) is not redialled in a tight loop; failures (a refusal with its
//! reason) are logged on the first,
//! second, fourth, eighth... in a row. Each connection has a bounded write buffer
//! ([`TcpConfig::max_buffered_bytes`]); a message that does not fit is
//! dropped, since Raft retransmits what matters. Writes are non-blocking and
//! the socket is registered for write readiness only while its buffer is not
//! empty.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use raft_core::{Index, InstallSnapshot, Message, NodeId, Term};
use raft_wire::{ConnectionError, FrameDecoder, HelloReply};
pub use raft_wire::{Hello, MAX_HELLO_FRAME};

/// The default [`TcpConfig::max_frame_bytes`] (snapshots travel whole).
pub const DEFAULT_MAX_FRAME: usize = raft_wire::MAX_FRAME;
/// The default [`TcpConfig::max_buffered_bytes`].
pub const DEFAULT_MAX_BUFFERED: usize = 8 << 20;
/// How many messages the node thread may queue for the network thread.
const OUTBOX_CAPACITY: usize = 16 * 1024;
/// How long a new incoming connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connection up this long counts as a success: the back-off starts over.
/// (The dialler does not wait for the acceptor's answer, so a refused hello
/// shows as a refusal and a close soon after connecting.)
const STABLE_AFTER: Duration = Duration::from_secs(1);
/// How often timeouts are checked when nothing happens.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
const READ_CHUNK: usize = 64 * 1024;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Outgoing connections use `FIRST_OUTGOING + their index among the peers`;
/// incoming ones are numbered from `FIRST_INCOMING` up.
const FIRST_OUTGOING: usize = 2;
const FIRST_INCOMING: usize = 1 << 20;

/// How the transport of one node is set up.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// This node's id.
    pub id: NodeId,
    /// Connections from another cluster are refused.
    pub cluster_id: u64,
    /// Every member's address, this node's included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The largest message frame sent or accepted.
    pub max_frame_bytes: usize,
    /// The most bytes queued on one outgoing connection; a message that
    /// would exceed it is dropped (a message larger than it still goes when
    /// the buffer is empty).
    pub max_buffered_bytes: usize,
}

impl TcpConfig {
    /// A configuration with the default limits.
    pub fn new(id: NodeId, cluster_id: u64, peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        TcpConfig {
            id,
            cluster_id,
            peers,
            max_frame_bytes: DEFAULT_MAX_FRAME,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED,
        }
    }
}

/// What the network thread hands to `deliver`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A peer's message (never an `InstallSnapshot`: see `Snapshot`).
    Message {
        /// The peer.
        from: NodeId,
        /// Its message.
        message: Message,
    },
    /// A peer's snapshot, header and bytes, all arrived.
    Snapshot {
        /// The peer (its leader).
        from: NodeId,
        /// The header.
        header: InstallSnapshot,
        /// The snapshot's bytes.
        data: Vec<u8>,
    },
    /// A transfer queued with [`Outbox::send_snapshot`] ended, written out
    /// or dropped (reported once per transfer).
    SnapshotSendEnded {
        /// The follower.
        to: NodeId,
        /// The header's term.
        term: Term,
        /// The header's `last_included_index`.
        index: Index,
    },
}

/// What `deliver` tells the network thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Keep going (the message was taken, or dropped because the node is busy).
    Continue,
    /// The node is gone: stop the network thread.
    Stop,
}

enum Command {
    Send(NodeId, Message),
    SendSnapshot(NodeId, InstallSnapshot, Vec<u8>),
    Stop,
}

/// The node thread's handle for sending messages: cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: SyncSender<Command>,
    waker: Arc<Waker>,
}

impl Outbox {
    /// Queues messages for their peers and wakes the network thread once.
    /// Never blocks: if the network thread is behind by more than a few
    /// thousand messages, the rest are dropped (Raft retransmits).
    pub fn send_all(&self, messages: impl IntoIterator<Item = (NodeId, Message)>) {
        let mut queued = false;
        for (to, message) in messages {
            match self.tx.try_send(Command::Send(to, message)) {
                Ok(()) => queued = true,
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        if queued {
            // Failing to wake means the poller is gone, as is the thread.
            let _ = self.waker.wake();
        }
    }

    /// Queues one message; see [`Outbox::send_all`].
    pub fn send(&self, to: NodeId, message: Message) {
        self.send_all([(to, message)]);
    }

    /// Queues a snapshot transfer to `to`: the header, then the snapshot's
    /// bytes. Its end is reported to `deliver` ([`Arrival::SnapshotSendEnded`])
    /// if this returns true; false if it could not even be queued (the
    /// network thread is behind or gone): the caller reports the end itself.
    pub fn send_snapshot(&self, to: NodeId, header: InstallSnapshot, data: Vec<u8>) -> bool {
        match self.tx.try_send(Command::SendSnapshot(to, header, data)) {
            Ok(()) => {
                let _ = self.waker.wake();
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A running network thread. Dropping it leaves the thread running; call
/// [`TcpTransport::shutdown`] to stop it.
pub struct TcpTransport {
    outbox: Outbox,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl TcpTransport {
    /// Binds this node's address (from `config.peers`) and starts the
    /// network thread. Messages and snapshots from peers go to `deliver`,
    /// on that thread, in the order each peer sent them, and so do the ends
    /// of our snapshot transfers.
    pub fn start<F>(config: TcpConfig, deliver: F) -> io::Result<TcpTransport>
    where
        F: FnMut(Arrival) -> Delivery + Send + 'static,
    {
        let addr = *config.peers.get(&config.id).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {} is not among the peers", config.id),
            )
        })?;
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Self::start_with(config, listener, deliver)
    }

    /// Starts the network thread on a listener the caller bound.
    pub fn start_with<F>(
        config: TcpConfig,
        mut listener: TcpListener,
        deliver: F,
    ) -> io::Result<TcpTransport>
    where
        F: FnMut(Arrival) -> Delivery + Send + 'static,
    {
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::sync_channel(OUTBOX_CAPACITY);
        let peers = config
            .peers
            .iter()
            .filter(|(&id, _)| id != config.id)
            .enumerate()
            .map(|(i, (&id, &addr))| (id, Peer::new(id, addr, Token(FIRST_OUTGOING + i))))
            .collect();
        let net = Network {
            hello: Hello::peer(config.cluster_id, config.id),
            config,
            poll,
            listener,
            commands: rx,
            peers,
            ended: Vec::new(),
            incoming: BTreeMap::new(),
            next_incoming: FIRST_INCOMING,
            deliver,
            scratch: vec![0; READ_CHUNK],
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-net-{}", net.config.id))
            .spawn(move || net.run())?;
        Ok(TcpTransport {
            outbox: Outbox { tx, waker },
            local_addr,
            thread: Some(thread),
        })
    }

    /// A handle for sending messages.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the network thread and closes every connection. Messages still
    /// queued are dropped.
    pub fn shutdown(mut self) {
        // A blocking send: the stop must not be dropped on a full queue.
        if self.outbox.tx.send(Command::Stop).is_ok() {
            let _ = self.outbox.waker.wake();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where an outgoing connection stands.
enum Link {
    /// No connection; the next message may dial once `retry_at` has passed.
    Down { retry_at: Option<Instant> },
    /// Dialled at `since`, not yet established.
    Connecting { stream: TcpStream, since: Instant },
    /// Established at `since`.
    Up { stream: TcpStream, since: Instant },
}

/// Our connection to one peer.
struct Peer {
    id: NodeId,
    addr: SocketAddr,
    token: Token,
    link: Link,
    out: OutBuf,
    /// Whether the socket is registered for write readiness.
    write_interest: bool,
    backoff: Duration,
    /// Failures since the connection was last stable (the first, second,
    /// fourth, ... are logged).
    failures: u32,
    /// The acceptor's answer to our hello as it arrives; `None` once it
    /// accepted.
    reply: Option<FrameDecoder>,
    /// Snapshot transfers in `out`, in order: where each ends (in
    /// [`OutBuf::pushed`] counts), its term and index.
    transfers: std::collections::VecDeque<(u64, Term, Index)>,
}

impl Peer {
    fn new(id: NodeId, addr: SocketAddr, token: Token) -> Self {
        Peer {
            id,
            addr,
            token,
            link: Link::Down { retry_at: None },
            out: OutBuf::default(),
            write_interest: false,
            backoff: BACKOFF_MIN,
            failures: 0,
            reply: None,
            transfers: std::collections::VecDeque::new(),
        }
    }

    /// The transfers whose last byte the socket has taken, and with
    /// `all`, every other one too (the buffer is gone): they have ended.
    fn ended_transfers(&mut self, all: bool, ended: &mut Vec<(NodeId, Term, Index)>) {
        while let Some(&(end, term, index)) = self.transfers.front() {
            if !all && end > self.out.written {
                break;
            }
            self.transfers.pop_front();
            ended.push((self.id, term, index));
        }
    }
}

/// A write buffer: bytes from `start` on are still to be written.
#[derive(Default)]
struct OutBuf {
    bytes: Vec<u8>,
    start: usize,
    /// Bytes ever pushed, and ever written (or dropped with the buffer).
    pushed: u64,
    written: u64,
}

impl OutBuf {
    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }
    fn clear(&mut self) {
        if self.bytes.capacity() > READ_CHUNK * 16 {
            self.bytes = Vec::new(); // do not keep a snapshot's worth of memory
        } else {
            self.bytes.clear();
        }
        self.start = 0;
        self.written = self.pushed;
    }
    fn push(&mut self, frame: &[u8]) {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(frame);
        self.pushed += frame.len() as u64;
    }
    /// Writes until the buffer is empty or the socket would block.
    fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        while self.len() > 0 {
            match stream.write(&self.bytes[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.start += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.clear();
        Ok(())
    }
}

/// A peer's connection to us.
struct Incoming {
    stream: TcpStream,
    addr: SocketAddr,
    /// Who it is, once its hello was accepted.
    from: Option<NodeId>,
    /// Bytes received and not yet parsed: at most one partial frame.
    frames: FrameDecoder,
    /// A snapshot's header, waiting for the frame of its bytes.
    snapshot_header: Option<InstallSnapshot>,
    opened: Instant,
}

struct Network<F> {
    config: TcpConfig,
    hello: Hello,
    poll: Poll,
    listener: TcpListener,
    commands: Receiver<Command>,
    peers: BTreeMap<NodeId, Peer>,
    /// Transfers that ended and are not yet reported: (to, term, index).
    ended: Vec<(NodeId, Term, Index)>,
    incoming: BTreeMap<Token, Incoming>,
    next_incoming: usize,
    deliver: F,
    /// Where reads land before they join a connection's buffer.
    scratch: Vec<u8>,
}

fn log(id: NodeId, what: std::fmt::Arguments<'_>) {
    eprintln!("[node {id} net] {what}");
}

impl<F> Network<F>
where
    F: FnMut(Arrival) -> Delivery,
{
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(HOUSEKEEPING)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log(self.config.id, format_args!("poll failed, stopping: {e}"));
                return;
            }
            for event in &events {
                let keep_going = match event.token() {
                    LISTENER => {
                        self.accept();
                        true
                    }
                    WAKER => true, // the commands are drained below
                    token if token.0 < FIRST_INCOMING => {
                        self.on_outgoing_event(token);
                        true
                    }
                    token => self.on_incoming_event(token),
                };
                if !keep_going {
                    return;
                }
            }
            if !self.drain_commands() {
                return;
            }
            self.check_timeouts();
            if !self.report_ended() {
                return;
            }
        }
    }

    /// Reports the transfers that ended; false once `deliver` asks to stop.
    fn report_ended(&mut self) -> bool {
        for peer in self.peers.values_mut() {
            let all = matches!(peer.link, Link::Down { .. });
            peer.ended_transfers(all, &mut self.ended);
        }
        for (to, term, index) in std::mem::take(&mut self.ended) {
            let ended = Arrival::SnapshotSendEnded { to, term, index };
            if (self.deliver)(ended) == Delivery::Stop {
                return false;
            }
        }
        true
    }

    /// Takes every queued command; false once told to stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Send(to, message)) => self.send(to, &message),
                Ok(Command::SendSnapshot(to, header, data)) => {
                    self.send_snapshot(to, header, &data)
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn send(&mut self, to: NodeId, message: &Message) {
        if matches!(message, Message::InstallSnapshot(_)) {
            // Never without its bytes: a receiver would take the next
            // message for them.
            log(
                self.config.id,
                format_args!("dropped an InstallSnapshot to {to} sent without its bytes"),
            );
            return;
        }
        let frame = match raft_wire::encode_frame_within(message, self.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) => {
                log(
                    self.config.id,
                    format_args!("dropped a message to {to}: {e}"),
                );
                return;
            }
        };
        self.send_frame(to, &frame, None);
    }

    /// Queues a snapshot transfer: the header's frame and the bytes' frame,
    /// as one unit; its end is reported whatever happens to it.
    fn send_snapshot(&mut self, to: NodeId, header: InstallSnapshot, data: &[u8]) {
        let (term, index) = (header.term, header.last_included_index);
        let limit = self.config.max_frame_bytes;
        let message = Message::InstallSnapshot(header);
        let frames = raft_wire::encode_frame_within(&message, limit).and_then(|mut frames| {
            let len = u32::try_from(data.len())
                .ok()
                .filter(|&len| len as usize <= limit)
                .ok_or(raft_wire::FrameError::TooLarge {
                    len: data.len(),
                    limit,
                })?;
            frames.extend_from_slice(&len.to_le_bytes());
            frames.extend_from_slice(data);
            Ok(frames)
        });
        let queued = match frames {
            Ok(frames) => self.send_frame(to, &frames, Some((term, index))),
            Err(e) => {
                log(
                    self.config.id,
                    format_args!("dropped a snapshot to {to}: {e}"),
                );
                false
            }
        };
        if !queued {
            self.ended.push((to, term, index));
        }
    }

    /// Queues `frame` for `to`, dialling if needed; a snapshot `transfer`
    /// is tracked until it is written out. False if it was dropped.
    fn send_frame(&mut self, to: NodeId, frame: &[u8], transfer: Option<(Term, Index)>) -> bool {
        let hello = raft_wire::encode_frame(&self.hello).expect("a hello fits its frame");
        let max_buffered = self.config.max_buffered_bytes;
        let registry = self.poll.registry();
        let Some(peer) = self.peers.get_mut(&to) else {
            return false; // not a peer: drop
        };
        match &mut peer.link {
            Link::Down { retry_at } => {
                if retry_at.is_some_and(|t| Instant::now() < t) {
                    return false; // backing off: drop
                }
                match TcpStream::connect(peer.addr) {
                    Ok(mut stream) => {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if let Err(e) = registry.register(&mut stream, peer.token, interest) {
                            fail(self.config.id, registry, peer, &e.to_string());
                            return false;
                        }
                        peer.write_interest = true;
                        peer.out.clear();
                        peer.out.push(&hello);
                        peer.out.push(frame);
                        peer.reply = Some(FrameDecoder::new());
                        if let Some((term, index)) = transfer {
                            peer.transfers.push_back((peer.out.pushed, term, index));
                        }
                        peer.link = Link::Connecting {
                            stream,
                            since: Instant::now(),
                        };
                        true
                    }
                    Err(e) => {
                        fail(self.config.id, registry, peer, &format!("dial: {e}"));
                        false
                    }
                }
            }
            Link::Connecting { .. } | Link::Up { .. } => {
                if peer.out.len() > 0 && peer.out.len() + frame.len() > max_buffered {
                    return false; // the peer is not keeping up: drop
                }
                peer.out.push(frame);
                if let Some((term, index)) = transfer {
                    peer.transfers.push_back((peer.out.pushed, term, index));
                }
                if matches!(peer.link, Link::Up { .. }) && !peer.write_interest {
                    self.flush_peer(to);
                }
                true
            }
        }
    }

    /// Writes what the socket takes and keeps write interest only while
    /// something is left.
    fn flush_peer(&mut self, id: NodeId) {
        let registry = self.poll.registry();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Link::Up { stream, .. } = &mut peer.link else {
            return;
        };
        let result = peer.out.write_to(stream).and_then(|()| {
            let want = peer.out.len() > 0;
            if want != peer.write_interest {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                registry.reregister(stream, peer.token, interest)?;
                peer.write_interest = want;
            }
            Ok(())
        });
        if let Err(e) = result {
            fail(self.config.id, registry, peer, &format!("write: {e}"));
        }
        peer.ended_transfers(false, &mut self.ended);
    }

    fn on_outgoing_event(&mut self, token: Token) {
        let me = self.config.id;
        let registry = self.poll.registry();
        let Some(peer) = self.peers.values_mut().find(|p| p.token == token) else {
            return;
        };
        let id = peer.id;
        match &mut peer.link {
            Link::Down { .. } => {}
            Link::Connecting { stream, .. } => match connect_result(stream) {
                Ok(false) => {}
                Ok(true) => {
                    let Link::Connecting { stream, .. } =
                        std::mem::replace(&mut peer.link, Link::Down { retry_at: None })
                    else {
                        unreachable!("matched above");
                    };
                    peer.link = Link::Up {
                        stream,
                        since: Instant::now(),
                    };
                    self.flush_peer(id);
                }
                Err(e) => fail(me, registry, peer, &format!("connect: {e}")),
            },
            Link::Up { stream, .. } => {
                // The acceptor writes its answer to our hello, then nothing:
                // readable after the answer means closed (or junk).
                let read = drain_reads(stream, peer.reply.as_mut());
                let refusal = match peer.reply.as_mut().map(|r| r.next(MAX_HELLO_FRAME)) {
                    Some(Ok(Some(HelloReply::Accepted))) => {
                        peer.reply = None;
                        None
                    }
                    Some(Ok(Some(HelloReply::Refused(why)))) => {
                        Some(format!("refused our hello: {why}"))
                    }
                    Some(Err(e)) => Some(format!("an unreadable answer to our hello: {e}")),
                    Some(Ok(None)) | None => None,
                };
                match (refusal, read) {
                    (Some(why), _) => fail(me, registry, peer, &why),
                    (None, Ok(true)) => fail(
                        me,
                        registry,
                        peer,
                        "closed by the peer (it stopped or restarted)",
                    ),
                    (None, Ok(false)) => self.flush_peer(id),
                    (None, Err(e)) => fail(me, registry, peer, &format!("read: {e}")),
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, addr)) => {
                    // A limit on connections that have not said hello yet:
                    // one per peer is normal, a few more ride out restarts.
                    let unidentified = self.incoming.values().filter(|c| c.from.is_none()).count();
                    if unidentified >= 4 * self.config.peers.len() + 4 {
                        log(
                            self.config.id,
                            format_args!("refused {addr}: too many unidentified connections"),
                        );
                        continue;
                    }
                    let token = Token(self.next_incoming);
                    self.next_incoming += 1;
                    let _ = stream.set_nodelay(true);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        log(self.config.id, format_args!("cannot register {addr}: {e}"));
                        continue;
                    }
                    self.incoming.insert(
                        token,
                        Incoming {
                            stream,
                            addr,
                            from: None,
                            frames: FrameDecoder::new(),
                            snapshot_header: None,
                            opened: Instant::now(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, for instance: try again at the next event.
                    log(self.config.id, format_args!("accept failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Reads what a peer sent and delivers every whole frame; false once
    /// `deliver` asks to stop.
    fn on_incoming_event(&mut self, token: Token) -> bool {
        loop {
            let Some(conn) = self.incoming.get_mut(&token) else {
                return true;
            };
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.close_incoming(token, None);
                    return true;
                }
                Ok(n) => {
                    conn.frames.push(&self.scratch[..n]);
                    match self.parse_frames(token) {
                        Ok(Delivery::Continue) => {}
                        Ok(Delivery::Stop) => return false,
                        Err(why) => {
                            self.close_incoming(token, Some(&why.to_string()));
                            return true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close_incoming(token, Some(&format!("read: {e}")));
                    return true;
                }
            }
        }
    }

    /// Takes every whole frame off the front of the connection's buffer.
    fn parse_frames(&mut self, token: Token) -> Result<Delivery, ConnectionError> {
        let conn = self.incoming.get_mut(&token).expect("the caller checked");
        let mut identified = None;
        loop {
            match conn.from {
                None => {
                    let hello = match conn.frames.next::<Hello>(MAX_HELLO_FRAME) {
                        Ok(Some(hello)) => hello,
                        Ok(None) => break,
                        Err(e) => return Err(ConnectionError::BadHello(e)),
                    };
                    let peers = &self.config.peers;
                    let outcome = hello.accept_peer(self.config.cluster_id, self.config.id, |id| {
                        peers.contains_key(&id)
                    });
                    let reply = raft_wire::encode_frame(&HelloReply::answering(&outcome))
                        .expect("a reply fits its frame");
                    // A few bytes on a new socket fit its buffer; were they
                    // to block, the dialler, which does not wait for them,
                    // would only miss a refusal's reason.
                    let _ = conn.stream.write_all(&reply);
                    let from = outcome?;
                    conn.from = Some(from);
                    identified = Some(from);
                }
                Some(from) => {
                    let limit = self.config.max_frame_bytes;
                    let arrival = if conn.snapshot_header.is_some() {
                        let Some(data) = conn.frames.next_frame(limit)? else {
                            break;
                        };
                        let data = data.to_vec();
                        let header = conn.snapshot_header.take().expect("checked");
                        Arrival::Snapshot { from, header, data }
                    } else {
                        let Some(message) = conn.frames.next::<Message>(limit)? else {
                            break;
                        };
                        if let Message::InstallSnapshot(header) = message {
                            conn.snapshot_header = Some(header);
                            continue; // its bytes follow
                        }
                        Arrival::Message { from, message }
                    };
                    if (self.deliver)(arrival) == Delivery::Stop {
                        return Ok(Delivery::Stop);
                    }
                }
            }
        }
        // The peer just identified itself: an older connection from the
        // same peer is dead (it restarted); let it go.
        if let Some(from) = identified {
            let stale: Vec<Token> = self
                .incoming
                .iter()
                .filter(|(&t, c)| t != token && c.from == Some(from))
                .map(|(&t, _)| t)
                .collect();
            for t in stale {
                self.close_incoming(t, None);
            }
        }
        Ok(Delivery::Continue)
    }

    fn close_incoming(&mut self, token: Token, why: Option<&str>) {
        if let Some(mut conn) = self.incoming.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(why) = why {
                let who = conn
                    .from
                    .map_or("unidentified".to_string(), |id| format!("node {id}"));
                log(
                    self.config.id,
                    format_args!("closed connection from {} ({who}): {why}", conn.addr),
                );
            }
        }
    }

    fn check_timeouts(&mut self) {
        let now = Instant::now();
        let late: Vec<Token> = self
            .incoming
            .iter()
            .filter(|(_, c)| c.from.is_none() && now - c.opened > HELLO_TIMEOUT)
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            self.close_incoming(token, Some("no hello in time"));
        }
        let registry = self.poll.registry();
        for peer in self.peers.values_mut() {
            match peer.link {
                Link::Connecting { since, .. } if now - since > CONNECT_TIMEOUT => {
                    fail(self.config.id, registry, peer, "connect: timed out");
                }
                Link::Up { since, .. } if peer.failures > 0 && now - since >= STABLE_AFTER => {
                    log(
                        self.config.id,
                        format_args!(
                            "connected to node {} at {} (after {} failed attempt(s))",
                            peer.id, peer.addr, peer.failures
                        ),
                    );
                    peer.failures = 0;
                    peer.backoff = BACKOFF_MIN;
                }
                _ => {}
            }
        }
    }
}

/// Drops a peer's connection and its buffer, and starts the back-off.
fn fail(me: NodeId, registry: &Registry, peer: &mut Peer, why: &str) {
    let old = std::mem::replace(&mut peer.link, Link::Down { retry_at: None });
    if let Link::Connecting { mut stream, .. } | Link::Up { mut stream, .. } = old {
        let _ = registry.deregister(&mut stream);
    }
    peer.failures += 1;
    if peer.failures.is_power_of_two() {
        log(
            me,
            format_args!(
                "connection to node {} at {} failed ({} in a row): {why}; retrying with back-off",
                peer.id, peer.addr, peer.failures
            ),
        );
    }
    peer.link = Link::Down {
        retry_at: Some(Instant::now() + peer.backoff),
    };
    peer.backoff = (peer.backoff * 2).min(BACKOFF_MAX);
    peer.out.clear();
    peer.write_interest = false;
}

/// Whether a non-blocking connect has completed (the steps of
/// `mio::net::TcpStream::connect`'s documentation).
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads until the socket would block, into `keep` if given (discarded
/// otherwise); true if it closed.
fn drain_reads(stream: &mut TcpStream, mut keep: Option<&mut FrameDecoder>) -> io::Result<bool> {
    let mut scratch = [0u8; 512];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                if let Some(keep) = keep.as_mut() {
                    keep.push(&scratch[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::RequestVote;

    fn vote(term: u64) -> Message {
        Message::RequestVote(RequestVote {
            term,
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        })
    }

    fn two_nodes() -> (BTreeMap<NodeId, SocketAddr>, [TcpListener; 2]) {
        let a = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let peers = [(0, a.local_addr().unwrap()), (1, b.local_addr().unwrap())]
            .into_iter()
            .collect();
        (peers, [a, b])
    }

    #[test]
    fn messages_cross_and_wrong_cluster_is_refused() {
        let (peers, [a, b]) = two_nodes();
        let (tx, rx) = mpsc::channel();
        let t1 = TcpTransport::start_with(TcpConfig::new(1, 7, peers.clone()), b, move |arrival| {
            if let Arrival::Message { from, message } = arrival {
                let _ = tx.send((from, message));
            }
            Delivery::Continue
        })
        .unwrap();
        let t0 = TcpTransport::start_with(TcpConfig::new(0, 7, peers.clone()), a, |_| {
            Delivery::Continue
        })
        .unwrap();
        for term in 1..=100 {
            t0.outbox().send(1, vote(term));
        }
        for term in 1..=100 {
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, (0, vote(term)), "in order, from node 0");
        }

        // A stranger from cluster 8 claiming to be node 0 is refused with
        // the reason, and a frame announcing more than the hello limit
        // without a word.
        let wrong_cluster = HelloReply::Refused(raft_wire::HelloError::WrongCluster {
            cluster_id: 8,
            ours: 7,
        });
        for (bytes, answer) in [
            (
                raft_wire::encode_frame(&Hello::peer(8, 0)).unwrap(),
                raft_wire::encode_frame(&wrong_cluster).unwrap(),
            ),
            (u32::MAX.to_le_bytes().to_vec(), Vec::new()),
        ] {
            let mut s = std::net::TcpStream::connect(peers[&1]).unwrap();
            s.write_all(&bytes).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0u8; answer.len()];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, answer);
            // Then closed by the acceptor.
            let mut buf = [0u8; 1];
            match s.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("expected the connection closed, got {other:?}"),
            }
        }
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        t0.shutdown();
        t1.shutdown();
    }

    fn header(term: u64, index: u64) -> InstallSnapshot {
        InstallSnapshot {
            term,
            last_included_index: index,
            last_included_term: term,
            membership: raft_core::Membership::default(),
        }
    }

    /// Collects what `deliver` is given, on a channel.
    fn collector() -> (
        impl FnMut(Arrival) -> Delivery + Send + 'static,
        mpsc::Receiver<Arrival>,
    ) {
        let (tx, rx) = mpsc::channel();
        let deliver = move |arrival| {
            let _ = tx.send(arrival);
            Delivery::Continue
        };
        (deliver, rx)
    }

    #[test]
    fn a_snapshot_arrives_with_its_bytes_and_its_end_is_reported_once() {
        let (peers, [a, b]) = two_nodes();
        let (deliver1, rx1) = collector();
        let t1 =
            TcpTransport::start_with(TcpConfig::new(1, 7, peers.clone()), b, deliver1).unwrap();
        let (deliver0, rx0) = collector();
        let t0 =
            TcpTransport::start_with(TcpConfig::new(0, 7, peers.clone()), a, deliver0).unwrap();
        // Larger than a read chunk, so that it arrives in pieces; messages
        // before and after keep their places around it.
        let data: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let out = t0.outbox();
        out.send(1, vote(1));
        assert!(out.send_snapshot(1, header(2, 40), data.clone()));
        out.send(1, vote(3));
        let wait = Duration::from_secs(10);
        let got: Vec<Arrival> = (0..3).map(|_| rx1.recv_timeout(wait).unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Arrival::Message {
                    from: 0,
                    message: vote(1)
                },
                Arrival::Snapshot {
                    from: 0,
                    header: header(2, 40),
                    data
                },
                Arrival::Message {
                    from: 0,
                    message: vote(3)
                },
            ]
        );
        let ended = Arrival::SnapshotSendEnded {
            to: 1,
            term: 2,
            index: 40,
        };
        assert_eq!(rx0.recv_timeout(wait).unwrap(), ended);
        assert!(rx0.recv_timeout(Duration::from_millis(300)).is_err());
        // An InstallSnapshot without its bytes never leaves (a receiver
        // would take the next frame for them).
        out.send(1, Message::InstallSnapshot(header(2, 41)));
        out.send(1, vote(4));
        let next = rx1.recv_timeout(wait).unwrap();
        assert_eq!(
            next,
            Arrival::Message {
                from: 0,
                message: vote(4)
            }
        );
        t0.shutdown();
        t1.shutdown();
    }

    #[test]
    fn a_snapshot_to_an_unreachable_peer_ends_once() {
        let (peers, [a, b]) = two_nodes();
        drop(b); // nobody listens for node 1
        let (deliver0, rx0) = collector();
        let t0 =
            TcpTransport::start_with(TcpConfig::new(0, 7, peers.clone()), a, deliver0).unwrap();
        let out = t0.outbox();
        // Dialled and refused, or dropped while backing off: each ends once.
        for index in 1..=3 {
            assert!(out.send_snapshot(1, header(1, index), vec![7; 100]));
        }
        let wait = Duration::from_secs(10);
        let mut ended: Vec<Arrival> = (0..3).map(|_| rx0.recv_timeout(wait).unwrap()).collect();
        ended.sort_by_key(|a| match a {
            Arrival::SnapshotSendEnded { index, .. } => *index,
            _ => 0,
        });
        let expected: Vec<Arrival> = (1..=3)
            .map(|index| Arrival::SnapshotSendEnded {
                to: 1,
                term: 1,
                index,
            })
            .collect();
        assert_eq!(ended, expected);
        assert!(rx0.recv_timeout(Duration::from_millis(300)).is_err());
        t0.shutdown();
    }

    #[test]
    fn reconnects_after_the_peer_restarts() {
        let (peers, [a, b]) = two_nodes();
        let t0 = TcpTransport::start_with(TcpConfig::new(0, 7, peers.clone()), a, |_| {
            Delivery::Continue
        })
        .unwrap();
        let receive_on = |listener: TcpListener| {
            let (tx, rx) = mpsc::channel();
            let t = TcpTransport::start_with(TcpConfig::new(1, 7, peers.clone()), listener, {
                move |arrival| {
                    if let Arrival::Message { from, message } = arrival {
                        let _ = tx.send((from, message));
                    }
                    Delivery::Continue
                }
            })
            .unwrap();
            (t, rx)
        };
        let (t1, rx) = receive_on(b);
        t0.outbox().send(1, vote(1));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().1, vote(1));
        t1.shutdown();
        let (t1, rx) = receive_on(TcpListener::bind(peers[&1]).unwrap());
        // Keep sending until one arrives over the new connection.
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            assert!(Instant::now() < deadline, "never reconnected");
            t0.outbox().send(1, vote(2));
            if let Ok(got) = rx.recv_timeout(Duration::from_millis(50)) {
                break got;
            }
        };
        assert_eq!(got, (0, vote(2)));
        t0.shutdown();
        t1.shutdown();
    }
}
