//! TCP connections, plaintext or TLS ([`crate::tls`]). Each node dials
//! every member (one outgoing connection per peer, carrying this node's
//! messages to it; the node opens and drops them as the membership changes)
//! and accepts its peers' dials and its clients on two listeners.
//!
//! - Outgoing ([`dial`], which clients use too): connect, the TLS handshake
//!   if configured, our hello, and the acceptor's [`HelloReply`]. Then a
//!   bounded queue per peer. When it is full, or the connection is down,
//!   messages are dropped: Raft retries what matters. A lost or refused
//!   connection is redialled with exponential backoff (50 ms to 1 s); a
//!   refusal is logged with its reason (at `warn` when the reason changes).
//! - Incoming: with TLS, the handshake first (a peer must present a
//!   certificate from the cluster's CA, a client too under
//!   `--client-cert-auth`; a plaintext hello is answered
//!   `Refused(TlsRequired)`, and on a plaintext port a TLS handshake
//!   `Refused(PlaintextOnly)`). Then the first frame must be a [`Hello`] with
//!   our cluster id (and, for peers, a node id other than ours; the core
//!   drops what non-members send), answered `Accepted` or `Refused` with the
//!   reason; a refusal (a failed handshake included) is logged with its
//!   reason. An oversized frame or an undecodable one closes the connection
//!   with a logged reason. Nothing a connection sends can panic or stop the
//!   node.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use raft_core::{Message, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use raft_wire::{ConnectionError, FrameError, HelloError, HelloReply};

use crate::metrics::ClientConnection;
use crate::node::Input;
use crate::tls::{self, ClientTls, NodeTls, Opening, Stream};
use crate::wire::{
    read_frame, read_frame_within, write_frame, ClientRequest, ClientResponse, Hello,
    MAX_HELLO_FRAME,
};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 4096;
/// Responses queued per client connection.
const CLIENT_QUEUE: usize = 1024;
/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a dial did not open a connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The network failed (or nothing listens there).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The acceptor refused our hello, naming why.
    #[error("refused: {0}")]
    Refused(HelloError),
    /// The TLS handshake failed (a certificate refused, on either side).
    #[error("TLS: {0}")]
    Tls(String),
    /// The acceptor's answer to our hello did not decode.
    #[error("an unreadable answer to our hello ({0}): another protocol version?")]
    BadReply(FrameError),
}

impl DialError {
    fn from_io(e: io::Error) -> DialError {
        match tls::tls_error(&e) {
            Some(error) => DialError::Tls(tls::explain(error)),
            None => DialError::Io(e),
        }
    }
}

/// Opens a connection to `addr`: TCP (within `connect_within`), the TLS
/// handshake if `tls` is given, `hello`, and the acceptor's reply.
pub async fn dial(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    hello: &Hello,
    connect_within: Duration,
) -> Result<Stream, DialError> {
    let tcp = tokio::time::timeout(connect_within, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let mut stream = match tls {
        Some(tls) => tls.connect(addr, tcp).await.map_err(DialError::from_io)?,
        None => Stream::Plain(tcp),
    };
    let sent = match write_frame(&mut stream, hello).await {
        Ok(()) => stream.flush().await,
        Err(e) => Err(e),
    };
    // Read the answer even if the hello did not go out: an acceptor that
    // refused us (a TLS alert) and closed first still said why.
    let reply = read_frame_within::<HelloReply, _>(&mut stream, MAX_HELLO_FRAME).await;
    match (reply, sent) {
        (Ok(reply), _) => reply.into_result().map_err(DialError::Refused)?,
        (Err(FrameError::Io(e)), sent) => {
            let error = DialError::from_io(e);
            return Err(match (error, sent) {
                (DialError::Io(_), Err(unsent)) => DialError::from_io(unsent),
                (error, _) => error,
            });
        }
        (Err(e), _) => return Err(DialError::BadReply(e)),
    }
    Ok(stream)
}

/// Dials `addr` forever, sending what arrives on `rx` as frames.
pub async fn run_outgoing(
    me: NodeId,
    cluster_id: u64,
    peer: NodeId,
    addr: SocketAddr,
    tls: Option<ClientTls>,
    mut rx: mpsc::Receiver<Message>,
    connected: Gauge,
) {
    let hello = Hello::peer(cluster_id, me);
    let mut backoff = Duration::from_millis(50);
    let mut last_refusal = None;
    loop {
        let dialled = tokio::time::timeout(
            HELLO_TIMEOUT,
            dial(addr, tls.as_ref(), &hello, HELLO_TIMEOUT),
        )
        .await
        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut).into()));
        let stream = match dialled {
            Ok(s) => s,
            Err(e) => {
                match e {
                    DialError::Io(e) => debug!(peer, %addr, error = %e, "dial failed"),
                    refusal => {
                        let reason = refusal.to_string();
                        if last_refusal.as_ref() != Some(&reason) {
                            warn!(peer, %addr, %reason, "the peer refused our connection");
                        } else {
                            debug!(peer, %addr, %reason, "the peer refused our connection");
                        }
                        last_refusal = Some(reason);
                    }
                }
                // Drop what queued up meanwhile: it is stale by now.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut w = BufWriter::new(stream);
        info!(peer, %addr, "connected to peer");
        connected.set(1);
        last_refusal = None;
        backoff = Duration::from_millis(50);
        loop {
            let Some(msg) = rx.recv().await else { return };
            if write_frame(&mut w, &msg).await.is_err() {
                break;
            }
            // Batch whatever else is queued into the same flush.
            let mut ok = true;
            while let Ok(msg) = rx.try_recv() {
                if write_frame(&mut w, &msg).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok || w.flush().await.is_err() {
                break;
            }
        }
        connected.set(0);
        warn!(peer, %addr, "connection to peer lost; redialling");
    }
}

/// The next connection on `listener`; a failed accept (out of file
/// descriptors, say) is logged and retried after a pause.
pub(crate) async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why an incoming connection closed.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error(transparent)]
    Wire(#[from] ConnectionError),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

impl Closed {
    /// The caller was turned away (rather than the connection failing).
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            Closed::Handshake(_) | Closed::Wire(ConnectionError::Refused(_))
        )
    }
}

impl From<FrameError> for Closed {
    fn from(e: FrameError) -> Closed {
        Closed::Wire(e.into())
    }
}

impl From<HelloError> for Closed {
    fn from(e: HelloError) -> Closed {
        Closed::Wire(e.into())
    }
}

/// The accepting side of TLS: the handshake when the port takes TLS
/// (`tls`), a plaintext hello answered `Refused(TlsRequired)`, a TLS
/// handshake on a plaintext port refused.
async fn secure(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Stream, Closed> {
    let _ = tcp.set_nodelay(true);
    let opening = tls::opening(&tcp, HELLO_TIMEOUT)
        .await
        .map_err(|e| ConnectionError::BadHello(e.into()))?;
    match (tls, opening) {
        (None, Opening::Plain) => Ok(Stream::Plain(tcp)),
        (None, Opening::Tls) => {
            // Take the client's hello first, so that closing does not reset
            // the connection under our answer.
            let mut tcp = tcp;
            let mut hello = [0u8; 4096];
            let _ = tokio::time::timeout(HELLO_TIMEOUT, tcp.read(&mut hello)).await;
            refuse(&mut tcp, HelloError::PlaintextOnly).await
        }
        (Some(acceptor), Opening::Tls) => {
            match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream.into()))),
                // A TLS error is a refusal (a certificate, most likely); a
                // caller that went away mid-handshake is not.
                Ok(Err(e)) => Err(match tls::tls_error(&e) {
                    Some(refusal) => Closed::Handshake(refusal.to_string()),
                    None => FrameError::Io(e).into(),
                }),
                Err(_) => Err(ConnectionError::HelloTimeout(HELLO_TIMEOUT).into()),
            }
        }
        (Some(_), Opening::Plain) => {
            let mut tcp = tcp;
            read_hello(&mut tcp).await?;
            refuse(&mut tcp, HelloError::TlsRequired).await
        }
    }
}

/// Answers `Refused(refusal)` in plaintext, and closes.
async fn refuse(tcp: &mut TcpStream, refusal: HelloError) -> Result<Stream, Closed> {
    answer(tcp, &Err::<(), _>(refusal.clone())).await?;
    Err(refusal.into())
}

/// Writes the reply to a hello's outcome.
async fn answer<W, T>(w: &mut W, outcome: &Result<T, HelloError>) -> Result<(), Closed>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    write_frame(w, &HelloReply::answering(outcome))
        .await
        .map_err(FrameError::Io)?;
    w.flush().await.map_err(FrameError::Io)?;
    Ok(())
}

/// Accepts peers on `listener`, forwarding their messages to the node (and
/// receiving the snapshots they stream into `data_dir`).
pub async fn run_peer_listener(
    listener: TcpListener,
    me: NodeId,
    cluster_id: u64,
    data_dir: std::path::PathBuf,
    tls: Option<NodeTls>,
    node: mpsc::Sender<Input>,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, addr) = accept(&listener, "peer").await;
        let node = node.clone();
        let tls = tls.clone();
        let dir = data_dir.clone();
        conns.spawn(async move {
            let acceptor = tls.as_ref().map(NodeTls::peer_acceptor);
            match serve_peer(stream, acceptor, me, cluster_id, &dir, node).await {
                Ok(()) => {}
                Err(reason) if reason.is_refusal() => warn!(%addr, %reason, "refused a peer"),
                Err(reason) => warn!(%addr, %reason, "closed peer connection"),
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_peer(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    me: NodeId,
    cluster_id: u64,
    data_dir: &std::path::Path,
    node: mpsc::Sender<Input>,
) -> Result<(), Closed> {
    let mut r = BufReader::new(secure(stream, tls).await?);
    let hello = read_hello(&mut r).await?;
    // Any node of our cluster but ourselves: the membership changes, and
    // the core drops what a non-member sends.
    let outcome = hello.accept_peer(cluster_id, me, |_| true);
    answer(r.get_mut(), &outcome).await?;
    let from = outcome?;
    if let Hello::PeerSnapshot { .. } = hello {
        let (r, w) = tokio::io::split(r);
        if let Err(why) = crate::snapshot::receive(r, BufWriter::new(w), from, data_dir, node).await
        {
            warn!(from, reason = %why, "refused a snapshot stream");
        }
        return Ok(());
    }
    loop {
        let message: Message = read_frame(&mut r).await?;
        if node.send(Input::Peer { from, message }).await.is_err() {
            return Ok(()); // node stopped
        }
    }
}

/// Reads the first frame of a connection, which must be a hello, in time.
async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> Result<Hello, ConnectionError> {
    tokio::time::timeout(HELLO_TIMEOUT, read_frame_within(r, MAX_HELLO_FRAME))
        .await
        .map_err(|_| ConnectionError::HelloTimeout(HELLO_TIMEOUT))?
        .map_err(ConnectionError::BadHello)
}

/// Accepts clients on `listener`.
pub async fn run_client_listener(
    listener: TcpListener,
    cluster_id: u64,
    tls: Option<NodeTls>,
    node: mpsc::Sender<Input>,
    connections: Gauge,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, addr) = accept(&listener, "client").await;
        let node = node.clone();
        let tls = tls.clone();
        let open = ClientConnection::open(&connections);
        conns.spawn(async move {
            let _open = open;
            let acceptor = tls.as_ref().map(NodeTls::client_acceptor);
            match serve_client(stream, acceptor, cluster_id, node).await {
                Ok(()) => {}
                Err(reason) if reason.is_refusal() => warn!(%addr, %reason, "refused a client"),
                Err(reason) => debug!(%addr, %reason, "closed client connection"),
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_client(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    cluster_id: u64,
    node: mpsc::Sender<Input>,
) -> Result<(), Closed> {
    let (r, mut w) = secure(stream, tls).await?.split();
    let mut r = BufReader::new(r);
    let hello = read_hello(&mut r).await?;
    let outcome = hello.accept_client(cluster_id);
    answer(&mut w, &outcome).await?;
    outcome?;
    let (tx, mut rx) = mpsc::channel::<ClientResponse>(CLIENT_QUEUE);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::new(w);
        while let Some(resp) = rx.recv().await {
            if write_frame(&mut w, &resp).await.is_err() {
                return;
            }
            while let Ok(resp) = rx.try_recv() {
                if write_frame(&mut w, &resp).await.is_err() {
                    return;
                }
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    });
    let result = loop {
        let request: ClientRequest = match read_frame(&mut r).await {
            Ok(req) => req,
            Err(e) => break Err(Closed::from(e)),
        };
        if node
            .send(Input::Client {
                request,
                respond: tx.clone(),
            })
            .await
            .is_err()
        {
            break Ok(());
        }
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// The outgoing queues, by peer.
pub type PeerQueues = BTreeMap<NodeId, mpsc::Sender<Message>>;
