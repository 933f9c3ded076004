//! Connections shared by many clients ([`SharedConns`]).
//!
//! A [`Client`](crate::Client) normally owns its connections: one per
//! server, each carrying one outstanding request at a time. An application
//! with many concurrent sessions (hundreds of tasks, each its own `Client`)
//! then holds hundreds of sockets to the leader, and every request costs a
//! `write` and a `read` on each side. Clients given the same `SharedConns`
//! instead share one connection per server: requests from every session
//! travel on it, each writer task sends what is queued in one `write`, and
//! the server reads many requests per `read` and answers many per `write`
//! (as etcd's clients share an HTTP/2 connection). Sessions stay separate:
//! each `Client` keeps its own client id and request numbers, so
//! exactly-once is unchanged.
//!
//! How answers find their client: each client sharing the pool has a slot,
//! and its requests travel under wire ids that carry the slot in their top
//! bits ([`SLOT_SHIFT`]); the connection's reader task hands each response
//! to that slot's inbox (the client's, the same inbox that a lingering
//! connection's reader uses), with the slot bits cleared. A connection that
//! fails tells every slot (`Arrival` with an error and the server's
//! address) and is dialled again by the next request to that server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use raft_wire::{encode_frame_into, FrameDecoder, MAX_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::client::Arrival;
use crate::tls::{ClientTls, StreamRead, StreamWrite};
use crate::transport::{dial, DialError};
use crate::wire::{ClientRequest, ClientResponse, Hello};

/// Where a wire id keeps the client's slot: the low 32 bits are the low
/// bits of the client's own request id (they wrap after 2^32 requests, long
/// after any earlier request with the same bits was answered or given up).
pub(crate) const SLOT_SHIFT: u32 = 32;
const LOCAL_MASK: u64 = (1 << SLOT_SHIFT) - 1;

/// How long to wait for a connection to a server.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// What a reader reads at a time.
const READ_CHUNK: usize = 64 << 10;
/// A writer sends at most this much per `write` before taking more.
const MAX_BATCH: usize = 256 << 10;

/// One connection per server, shared by every [`Client`](crate::Client)
/// given it ([`Client::with_shared`](crate::Client::with_shared)). Cheap to
/// clone (a handle); the connections close when the last handle and the
/// last client using it are dropped.
#[derive(Clone)]
pub struct SharedConns {
    inner: Arc<Pool>,
}

struct Pool {
    cluster_id: u64,
    tls: Option<ClientTls>,
    slots: Arc<Slots>,
    /// Per server: its connection, behind a lock held while dialling (so
    /// that concurrent first requests make one connection).
    conns: Mutex<BTreeMap<SocketAddr, Arc<tokio::sync::Mutex<Option<PoolConn>>>>>,
}

/// The clients' inboxes, by slot. Slots are numbered in order and not
/// reused until the numbers wrap, so a late answer to a client that has
/// gone never reaches the next one.
#[derive(Default)]
struct Slots {
    inboxes: RwLock<SlotTable>,
}

#[derive(Default)]
struct SlotTable {
    by_slot: BTreeMap<u32, mpsc::Sender<Arrival>>,
    next: u32,
}

impl Slots {
    fn deliver(&self, slot: u64, arrival: Arrival) {
        let table = self.inboxes.read().expect("slot table lock");
        if let Some(inbox) = u32::try_from(slot).ok().and_then(|s| table.by_slot.get(&s)) {
            // A full inbox holds only answers the client no longer waits
            // for (it has one operation outstanding): dropping is harmless,
            // and it keeps one slow client from stalling the connection.
            let _ = inbox.try_send(arrival);
        }
    }

    fn broadcast(&self, from: SocketAddr, why: &str) {
        let table = self.inboxes.read().expect("slot table lock");
        for inbox in table.by_slot.values() {
            let _ = inbox.try_send(Arrival {
                from,
                what: Err(why.to_string()),
            });
        }
    }
}

/// A live shared connection: its writer's queue, and its two tasks.
struct PoolConn {
    requests: mpsc::UnboundedSender<ClientRequest>,
    writer: tokio::task::AbortHandle,
    reader: tokio::task::AbortHandle,
}

impl PoolConn {
    fn alive(&self) -> bool {
        !self.requests.is_closed() && !self.reader.is_finished()
    }
}

impl Drop for PoolConn {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

impl SharedConns {
    /// Connections to the servers of cluster `cluster_id`, over TLS if
    /// `tls` is given; made lazily, on each server's first request.
    pub fn new(cluster_id: u64, tls: Option<ClientTls>) -> SharedConns {
        SharedConns {
            inner: Arc::new(Pool {
                cluster_id,
                tls,
                slots: Arc::new(Slots::default()),
                conns: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub(crate) fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    pub(crate) fn tls(&self) -> Option<ClientTls> {
        self.inner.tls.clone()
    }

    /// A slot for a client whose responses go to `inbox`.
    pub(crate) fn register(&self, inbox: mpsc::Sender<Arrival>) -> u32 {
        let mut t = self.inner.slots.inboxes.write().expect("slot table lock");
        loop {
            let slot = t.next;
            t.next = t.next.wrapping_add(1);
            if let std::collections::btree_map::Entry::Vacant(e) = t.by_slot.entry(slot) {
                e.insert(inbox);
                return slot;
            }
        }
    }

    pub(crate) fn unregister(&self, slot: u32) {
        let mut t = self.inner.slots.inboxes.write().expect("slot table lock");
        t.by_slot.remove(&slot);
    }

    /// Queues `request` (its id already a wire id, see [`wire_id`]) on the
    /// connection to `addr`, dialling it first if there is none.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        request: ClientRequest,
    ) -> Result<(), DialError> {
        let cell = {
            let mut conns = self.inner.conns.lock().expect("pool lock");
            conns.entry(addr).or_default().clone()
        };
        let mut conn = cell.lock().await;
        if !conn.as_ref().is_some_and(PoolConn::alive) {
            *conn = None;
            let hello = Hello::client(self.inner.cluster_id);
            let stream = dial(addr, self.inner.tls.as_ref(), &hello, CONNECT_TIMEOUT).await?;
            let (r, w) = stream.split();
            let (tx, rx) = mpsc::unbounded_channel();
            let slots = self.inner.slots.clone();
            let writer = tokio::spawn(write_requests(w, rx, addr, slots.clone()));
            let reader = tokio::spawn(read_responses(r, addr, slots));
            *conn = Some(PoolConn {
                requests: tx,
                writer: writer.abort_handle(),
                reader: reader.abort_handle(),
            });
        }
        let live = conn.as_ref().expect("just made");
        live.requests.send(request).map_err(|_| {
            DialError::Io(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the shared connection closed",
            ))
        })
    }
}

/// The id a request of the client in `slot` travels under.
pub(crate) fn wire_id(slot: u32, local: u64) -> u64 {
    (u64::from(slot) << SLOT_SHIFT) | (local & LOCAL_MASK)
}

/// Sends what is queued, as many requests per `write` as are waiting.
async fn write_requests(
    mut w: StreamWrite,
    mut rx: mpsc::UnboundedReceiver<ClientRequest>,
    addr: SocketAddr,
    slots: Arc<Slots>,
) {
    let mut buf = Vec::with_capacity(16 << 10);
    while let Some(first) = rx.recv().await {
        // Let the other clients woken with this one (by a batch of answers)
        // queue their next requests first, so one write carries them all.
        tokio::task::yield_now().await;
        buf.clear();
        let mut next = Some(first);
        while let Some(request) = next {
            // An unframable request (over MAX_FRAME) is dropped; its client
            // times out, as it would on a lost connection.
            let _ = encode_frame_into(&mut buf, &request, MAX_FRAME);
            next = if buf.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let sent = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        if let Err(e) = sent.await {
            slots.broadcast(addr, &e.to_string());
            return;
        }
    }
}

/// Hands every response to its client's inbox; tells every client when the
/// connection ends.
async fn read_responses(mut r: StreamRead, addr: SocketAddr, slots: Arc<Slots>) {
    let mut frames = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK].into_boxed_slice();
    let why = loop {
        match frames.next::<ClientResponse>(MAX_FRAME) {
            Ok(Some(mut response)) => {
                let id = match &mut response {
                    ClientResponse::Reply { id, .. } | ClientResponse::Status { id, .. } => id,
                };
                let slot = *id >> SLOT_SHIFT;
                *id &= LOCAL_MASK;
                slots.deliver(
                    slot,
                    Arrival {
                        from: addr,
                        what: Ok(response),
                    },
                );
            }
            Err(e) => break e.to_string(),
            Ok(None) => match r.read(&mut chunk).await {
                Ok(0) => break "the server closed the connection".to_string(),
                Ok(n) => frames.push(&chunk[..n]),
                Err(e) => break e.to_string(),
            },
        }
    };
    slots.broadcast(addr, &why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_ids_carry_the_slot_above_the_local_id() {
        let id = wire_id(3, 77);
        assert_eq!(id >> SLOT_SHIFT, 3);
        assert_eq!(id & LOCAL_MASK, 77);
        assert_eq!(wire_id(0, 5), 5);
    }

    #[test]
    fn a_slot_is_not_reused_by_the_next_client() {
        let pool = SharedConns::new(1, None);
        let (tx, _rx) = mpsc::channel(1);
        let a = pool.register(tx.clone());
        pool.unregister(a);
        let b = pool.register(tx);
        assert_ne!(a, b);
    }
}
