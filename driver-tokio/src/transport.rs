//! TCP connections. Each node dials every member (one outgoing connection
//! per peer, carrying this node's messages to it; the node opens and drops
//! them as the membership changes) and accepts its peers' dials
//! and its clients on two listeners.
//!
//! - Outgoing: a bounded queue per peer. When it is full, or the connection
//!   is down, messages are dropped: Raft retries what matters. A lost
//!   connection is redialled with exponential backoff (50 ms to 1 s).
//! - Incoming: the first frame must be a [`Hello`] with our cluster id (and,
//!   for peers, a node id other than ours; the core drops what non-members
//!   send); anything else, an oversized
//!   frame or an undecodable one closes that connection with a logged reason.
//!   Nothing a connection sends can panic or stop the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use raft_core::{Message, NodeId};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use raft_wire::ConnectionError;

use crate::metrics::ClientConnection;
use crate::node::Input;
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

/// Dials `addr` forever, sending what arrives on `rx` as frames.
pub async fn run_outgoing(
    me: NodeId,
    cluster_id: u64,
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Message>,
    connected: Gauge,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer, %addr, error = %e, "dial failed");
                // Drop what queued up meanwhile: it is stale by now.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut w = BufWriter::new(stream);
        let hello = Hello::peer(cluster_id, me);
        if write_frame(&mut w, &hello).await.is_err() || w.flush().await.is_err() {
            tokio::time::sleep(backoff).await;
            continue;
        }
        info!(peer, %addr, "connected to peer");
        connected.set(1);
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

/// Accepts peers on `listener`, forwarding their messages to the node (and
/// receiving the snapshots they stream into `data_dir`).
pub async fn run_peer_listener(
    listener: TcpListener,
    me: NodeId,
    cluster_id: u64,
    data_dir: std::path::PathBuf,
    node: mpsc::Sender<Input>,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, addr) = accept(&listener, "peer").await;
        let node = node.clone();
        let dir = data_dir.clone();
        conns.spawn(async move {
            if let Err(reason) = serve_peer(stream, me, cluster_id, &dir, node).await {
                warn!(%addr, %reason, "closed peer connection");
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_peer(
    stream: TcpStream,
    me: NodeId,
    cluster_id: u64,
    data_dir: &std::path::Path,
    node: mpsc::Sender<Input>,
) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let hello = read_hello(&mut r).await?;
    // Any node of our cluster but ourselves: the membership changes, and
    // the core drops what a non-member sends.
    let from = hello.accept_peer(cluster_id, me, |_| true)?;
    if let Hello::PeerSnapshot { .. } = hello {
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
async fn read_hello<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Hello, ConnectionError> {
    tokio::time::timeout(HELLO_TIMEOUT, read_frame_within(r, MAX_HELLO_FRAME))
        .await
        .map_err(|_| ConnectionError::HelloTimeout(HELLO_TIMEOUT))?
        .map_err(ConnectionError::BadHello)
}

/// Accepts clients on `listener`.
pub async fn run_client_listener(
    listener: TcpListener,
    cluster_id: u64,
    node: mpsc::Sender<Input>,
    connections: Gauge,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, addr) = accept(&listener, "client").await;
        let node = node.clone();
        let open = ClientConnection::open(&connections);
        conns.spawn(async move {
            let _open = open;
            if let Err(reason) = serve_client(stream, cluster_id, node).await {
                debug!(%addr, %reason, "closed client connection");
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_client(
    stream: TcpStream,
    cluster_id: u64,
    node: mpsc::Sender<Input>,
) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let hello = read_hello(&mut r).await?;
    if let Err(refusal) = hello.accept_client(cluster_id) {
        warn!(%refusal, "refused a client's hello");
        return Err(refusal.into());
    }
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
            Err(e) => break Err(ConnectionError::Frame(e)),
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
