//! Snapshots off the event loop, and streamed between nodes.
//!
//! - Taking one ([`write_local`]): the loop hands the store's image
//!   (`kv_core::KvImage`, a constant-time copy) to a thread that encodes it
//!   into a staged snapshot file ([`raft_storage::SnapshotWriter`]: written
//!   as it is encoded, fsynced, renamed, the directory fsynced) and then
//!   tells the loop, which reports `SnapshotTaken`. The loop never waits
//!   for it; kv-core asks for one snapshot at a time.
//! - Sending one ([`send`]): on `SendSnapshot`, a task opens its own
//!   connection to the follower ([`Hello::PeerSnapshot`]), sends
//!   [`SnapshotFrame::Begin`] (the `InstallSnapshot` header and the data's
//!   length), the data in [`CHUNK`]-byte chunks read from the file by a
//!   blocking task two chunks ahead at most (so memory does not grow with
//!   the snapshot; TCP's window is the flow control), and
//!   [`SnapshotFrame::End`] with the data's crc32, then waits for the
//!   receiver's [`SnapshotAck`]. Each frame must move within
//!   [`STALL_TIMEOUT`]. Whatever the outcome, the loop reports
//!   `SnapshotSendEnded` once; it aborts the task when this node stops
//!   leading the term of the transfer.
//! - Receiving one ([`receive`]): the chunks go straight into a staged file
//!   of its own (a temporary name until complete); the length and the
//!   crc32 are checked against `End`, the file is made durable, and the
//!   header and the file go to the loop, which passes them to
//!   `KvServer::install_snapshot`; then the sender gets its ack. A stream
//!   that breaks leaves only a temporary file, deleted here (or at the next
//!   open). A retry starts over.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raft_core::{InstallSnapshot, NodeId, SnapshotMeta};
use raft_storage::{SnapshotReader, SnapshotWriter, StorageError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::node::Input;
use crate::wire::{read_frame, read_frame_within, write_frame, Hello, MAX_FRAME};

/// The size of a data chunk on the wire.
pub const CHUNK: usize = 1 << 20;
/// How long one frame of a transfer may take to move, either way.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dialling the follower may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A frame of a snapshot stream, sender to receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotFrame {
    /// The first frame: the header the receiver's core gets, and how many
    /// data bytes follow.
    Begin {
        /// The leader's `InstallSnapshot`.
        header: InstallSnapshot,
        /// The data's length.
        data_len: u64,
    },
    /// The next data bytes (at most [`CHUNK`]).
    Chunk(#[serde(with = "serde_bytes_vec")] Vec<u8>),
    /// The last frame: the crc32 of the whole data.
    End {
        /// The crc32.
        crc: u32,
    },
}

/// The receiver's answer, once it has the whole snapshot (or gave up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotAck {
    /// Stored durably and handed to the node.
    Received,
    /// Refused, with the reason.
    Refused(String),
}

mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// What a local snapshot write produced.
#[derive(Debug)]
pub struct Written {
    /// The snapshot's index.
    pub index: u64,
    /// Its data length.
    pub bytes: u64,
    /// How long encoding and fsyncing took.
    pub took: Duration,
}

/// Encodes `image` into a staged snapshot file in `dir` on a thread of its
/// own, then sends [`Input::SnapshotWritten`] to the loop.
pub fn write_local(
    dir: PathBuf,
    meta: SnapshotMeta,
    image: kv_core::KvImage,
    node: mpsc::Sender<Input>,
) {
    let spawned = std::thread::Builder::new()
        .name(format!("rkv-snapshot-{}", meta.index))
        .spawn(move || {
            let started = std::time::Instant::now();
            let index = meta.index;
            let result = (|| -> Result<Written, StorageError> {
                let mut w = SnapshotWriter::create(&dir, &meta, "local")?;
                image.write_to(&mut w).map_err(|source| StorageError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let bytes = w.data_len();
                w.finish()?;
                Ok(Written {
                    index,
                    bytes,
                    took: started.elapsed(),
                })
            })();
            let _ = node.blocking_send(Input::SnapshotWritten { index, result });
        });
    if let Err(e) = spawned {
        // Without a thread there is no snapshot; the loop learns of it as
        // of a failed write.
        warn!(error = %e, "cannot start the snapshot writer");
    }
}

/// Why a transfer ended without the receiver's ack.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Connecting, writing or reading failed or stalled.
    #[error("{0}")]
    Link(String),
    /// The snapshot file could not be read.
    #[error("reading the snapshot: {0}")]
    File(String),
    /// The receiver refused it.
    #[error("refused: {0}")]
    Refused(String),
}

fn link<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> SendError {
    move |e| SendError::Link(format!("{what}: {e}"))
}

/// Streams the snapshot `file` (already open) to the peer at `addr`.
pub async fn send(
    me: NodeId,
    cluster_id: u64,
    addr: std::net::SocketAddr,
    header: InstallSnapshot,
    file: SnapshotReader,
) -> Result<u64, SendError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(link("connect"))?
        .map_err(link("connect"))?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut w = BufWriter::with_capacity(CHUNK + 64, w);
    let data_len = file.data_len();
    let crc = file.data_crc();
    let timed = |what: &'static str| {
        move |r: Result<std::io::Result<()>, tokio::time::error::Elapsed>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SendError::Link(format!("{what}: {e}"))),
            Err(_) => Err(SendError::Link(format!("{what}: stalled"))),
        }
    };
    let hello = Hello::peer_snapshot(cluster_id, me);
    timed("hello")(tokio::time::timeout(STALL_TIMEOUT, write_frame(&mut w, &hello)).await)?;
    let begin = SnapshotFrame::Begin { header, data_len };
    timed("begin")(tokio::time::timeout(STALL_TIMEOUT, write_frame(&mut w, &begin)).await)?;
    // A blocking reader two chunks ahead: the file is read at the pace the
    // network takes it.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut chunk = vec![0; CHUNK];
            let mut filled = 0;
            let result = loop {
                match file.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            chunk.truncate(filled);
            let done = filled == 0;
            let item = result.map(|()| chunk);
            let failed = item.is_err();
            if done && !failed {
                // Reading past the end checked the crc: the end.
                return;
            }
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| SendError::File(e.to_string()))?;
        sent += chunk.len() as u64;
        let frame = SnapshotFrame::Chunk(chunk);
        timed("chunk")(tokio::time::timeout(STALL_TIMEOUT, write_frame(&mut w, &frame)).await)?;
    }
    let _ = reader.await;
    if sent != data_len {
        return Err(SendError::File(format!(
            "read {sent} bytes of a {data_len}-byte snapshot"
        )));
    }
    let end = SnapshotFrame::End { crc };
    timed("end")(tokio::time::timeout(STALL_TIMEOUT, write_frame(&mut w, &end)).await)?;
    tokio::time::timeout(STALL_TIMEOUT, w.flush())
        .await
        .map_err(link("flush"))?
        .map_err(link("flush"))?;
    let ack: SnapshotAck = tokio::time::timeout(STALL_TIMEOUT, read_frame(&mut r))
        .await
        .map_err(link("ack"))?
        .map_err(link("ack"))?;
    match ack {
        SnapshotAck::Received => Ok(sent),
        SnapshotAck::Refused(why) => Err(SendError::Refused(why)),
    }
}

/// Numbers the temporary files of concurrent receptions.
static RECEPTIONS: AtomicU64 = AtomicU64::new(0);

/// Receives one snapshot from peer `from` after its hello: stages it in
/// `dir`, hands it to the loop, and acks.
pub async fn receive<R, W>(
    mut r: R,
    mut w: W,
    from: NodeId,
    dir: &Path,
    node: mpsc::Sender<Input>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let result = receive_file(&mut r, from, dir).await;
    let ack = match result {
        Ok((header, path, bytes)) => {
            info!(
                from,
                index = header.last_included_index,
                bytes,
                "received a snapshot"
            );
            let (done, wait) = oneshot::channel();
            let input = Input::SnapshotReceived {
                from,
                header,
                path,
                done,
            };
            if node.send(input).await.is_err() {
                return Ok(()); // the node stopped
            }
            // Handed over (the loop has stepped it): the leader's probe
            // that follows our ack comes after the install.
            let _ = wait.await;
            SnapshotAck::Received
        }
        Err(why) => SnapshotAck::Refused(why),
    };
    let refused = match &ack {
        SnapshotAck::Refused(why) => Some(why.clone()),
        SnapshotAck::Received => None,
    };
    let _ = tokio::time::timeout(STALL_TIMEOUT, async {
        write_frame(&mut w, &ack).await?;
        w.flush().await
    })
    .await;
    match refused {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

async fn receive_file<R: AsyncRead + Unpin>(
    r: &mut R,
    from: NodeId,
    dir: &Path,
) -> Result<(InstallSnapshot, PathBuf, u64), String> {
    let first: SnapshotFrame = tokio::time::timeout(STALL_TIMEOUT, read_frame_within(r, MAX_FRAME))
        .await
        .map_err(|_| "no Begin frame in time".to_string())?
        .map_err(|e| format!("reading Begin: {e}"))?;
    let SnapshotFrame::Begin { header, data_len } = first else {
        return Err("the stream did not start with Begin".into());
    };
    let meta = SnapshotMeta {
        index: header.last_included_index,
        term: header.last_included_term,
        membership: header.membership.clone(),
    };
    let tag = format!(
        "from{from}-{}",
        RECEPTIONS.fetch_add(1, Ordering::Relaxed)
    );
    let writer = tokio::task::block_in_place(|| SnapshotWriter::create(dir, &meta, &tag))
        .map_err(|e| format!("creating the file: {e}"))?;
    let mut writer = Some(writer);
    let outcome = async {
        loop {
            let frame: SnapshotFrame =
                tokio::time::timeout(STALL_TIMEOUT, read_frame_within(r, CHUNK + 64))
                    .await
                    .map_err(|_| "stalled".to_string())?
                    .map_err(|e| format!("reading: {e}"))?;
            let w = writer.as_mut().expect("open until the end");
            match frame {
                SnapshotFrame::Chunk(bytes) => {
                    if w.data_len() + bytes.len() as u64 > data_len {
                        return Err(format!("more than the {data_len} bytes announced"));
                    }
                    tokio::task::block_in_place(|| w.write_all(&bytes))
                        .map_err(|e| format!("writing: {e}"))?;
                }
                SnapshotFrame::End { crc } => {
                    if w.data_len() != data_len {
                        return Err(format!(
                            "ended after {} of {data_len} bytes",
                            w.data_len()
                        ));
                    }
                    if w.data_crc() != crc {
                        return Err("data checksum mismatch".into());
                    }
                    let w = writer.take().expect("open until the end");
                    let path = tokio::task::block_in_place(|| w.finish())
                        .map_err(|e| format!("storing: {e}"))?;
                    return Ok(path);
                }
                SnapshotFrame::Begin { .. } => return Err("a second Begin".into()),
            }
        }
    }
    .await;
    match outcome {
        Ok(path) => Ok((header, path, data_len)),
        Err(why) => {
            if let Some(w) = writer.take() {
                w.abandon();
            }
            Err(why)
        }
    }
}
