//! An in-process network with the lab's labrpc fault model (lab-tests.md
//! §2.1): `lab::net::Faults` decides every loss and delay, with this
//! network's own generator, as it does for the simulator's harnesses; here
//! on real time.
//!
//! The network owns what labrpc owns: which ends are enabled (`links`, per
//! direction, and each client's ends), which incarnation of each server is
//! present, the reliable and long-reordering flags, and the counters (RPCs
//! sent, bytes, handler invocations per server). Every fate is decided here,
//! with the network's own generator:
//!
//! - a request on an enabled end from a live sender to a present server is
//!   delivered after the hop latency plus, when unreliable, 0–26 ms, and is
//!   then dropped with probability 1/10 or handled (counted on the server) if
//!   the server is still the incarnation it was sent to;
//! - a reply is discarded if an end between the two is now disabled, the
//!   caller was restarted or the replier crashed meanwhile (so a dead server
//!   never acknowledges writes that went to a superseded persister); else,
//!   when unreliable, lost with probability 1/10; else, with long reordering,
//!   2/3 of replies are held back 200–2200 ms;
//! - a client call on a disabled end, or to a deleted server, fails after
//!   0–99 ms (0–6999 ms with long delays); a call whose server dies or whose
//!   end is disabled while it is pending fails at the next 100 ms check.
//!
//! Peer traffic is one-way Raft messages, so a failed request is simply lost
//! (nobody blocks on it). A snapshot transfer ([`Network::send_snapshot`])
//! is a request carrying the header and the snapshot's bytes in one
//! delivery, with the same fate as any request; whatever its fate, its end
//! is reported once to the incarnation that sent it
//! ([`Delivery::SnapshotSendEnded`]): when it is refused at send, lost, or
//! pushed into the receiver's inbox. Deliveries go into the receiving node's inbox (a
//! `std::sync::mpsc` channel); delayed ones are scheduled on the network's
//! own thread (a timer queue and a condition variable). A delivery due now
//! is pushed at once from the sending thread.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use lab::net::{Faults, ReplyFate};
use raft_core::{Index, InstallSnapshot, Message, SplitMix64, Term};

use crate::rt::{lock, oneshot, OneshotReceiver, OneshotSender};

/// How often labrpc checks whether the server of a pending call died.
pub const DEAD_POLL: Duration = Duration::from_millis(100);

/// What the network puts into a node's inbox.
#[derive(Debug)]
pub enum Delivery {
    /// A peer's encoded Raft message (a request or a reply).
    Message {
        /// The sending server.
        from: usize,
        /// The sender's incarnation, to address a reply to a request.
        from_gen: u64,
        /// The postcard-encoded `raft_core::Message`.
        bytes: Vec<u8>,
    },
    /// A leader's snapshot, whole: the `InstallSnapshot` header and the
    /// snapshot's bytes, delivered together.
    Snapshot {
        /// The sending server.
        from: usize,
        /// The sender's incarnation, to address the reply.
        from_gen: u64,
        /// The header.
        header: InstallSnapshot,
        /// The snapshot's bytes.
        data: Vec<u8>,
    },
    /// A snapshot transfer this incarnation started
    /// ([`Network::send_snapshot`]) has ended, delivered or not: reported
    /// exactly once per transfer (unless the network shut down first).
    SnapshotSendEnded {
        /// The follower.
        to: usize,
        /// The header's term.
        term: Term,
        /// The header's `last_included_index`.
        index: Index,
    },
    /// Not from the network: the node's own snapshot writer has staged the
    /// service's snapshot through `index`.
    SnapshotTaken {
        /// The snapshot's last index.
        index: Index,
    },
    /// A client's call, to be answered with [`Network::reply`].
    Call {
        /// The network's id for the call.
        id: u64,
        /// The encoded request.
        bytes: Vec<u8>,
    },
    /// Nothing to handle: makes the node thread re-read its timer and its
    /// stop flag.
    Wake,
}

/// How a network behaves at the start.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Servers, numbered `0..servers`.
    pub servers: usize,
    /// False: 0–26 ms request delays, 10% of requests and replies lost.
    pub reliable: bool,
    /// labrpc's LongDelays: failed client calls return after 0–6999 ms
    /// rather than 0–99 ms.
    pub long_delays: bool,
    /// Added to every delivery: the cost of a call in the Go lab (see
    /// `lab::net::HOP_LATENCY`). Zero delivers at once from the
    /// sending thread.
    pub hop_latency: Duration,
    /// Seeds the network's generator (drops and delays).
    pub seed: u64,
}

impl NetConfig {
    /// A reliable network of `servers` servers, no hop latency.
    pub fn new(servers: usize, seed: u64) -> Self {
        NetConfig {
            servers,
            reliable: true,
            long_delays: false,
            hop_latency: Duration::ZERO,
            seed,
        }
    }
}

/// A handle on the network; clones share it. Call [`Network::shutdown`]
/// when the cluster ends (dropping the last handle does the same).
#[derive(Clone)]
pub struct Network {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    scheduler: Scheduler,
    /// This network's number in the process (see [`Network::instance`]).
    instance: u64,
}

/// Numbers the networks of a process, for the names of their threads.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Drop for Shared {
    fn drop(&mut self) {
        self.scheduler.stop();
    }
}

struct Server {
    gen: u64,
    inbox: Sender<Delivery>,
}

struct Call {
    client: u64,
    server: usize,
    server_gen: u64,
    reply: OneshotSender<Option<Vec<u8>>>,
}

/// Something to do at delivery time, with the network locked.
type Job = Box<dyn FnOnce(&Arc<Shared>, &mut State) + Send>;

struct State {
    /// labrpc's losses and delays (`lab::net`).
    faults: Faults,
    long_delays: bool,
    /// `links[from][to]`: the end from `from` to `to` is enabled.
    links: Vec<Vec<bool>>,
    /// The incarnation of each server present on the network.
    servers: Vec<Option<Server>>,
    /// The latest incarnation number of each server (present or not).
    gens: Vec<u64>,
    rpc_total: u64,
    bytes_total: u64,
    rpc_count: Vec<u64>,
    rng: SplitMix64,
    /// Each client's ends: which servers they reach.
    clients: BTreeMap<u64, Vec<bool>>,
    next_client: u64,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    shut_down: bool,
}

impl State {
    fn is_current(&self, server: usize, gen: u64) -> bool {
        self.servers[server].as_ref().is_some_and(|s| s.gen == gen)
    }

    fn push(&self, to: usize, delivery: Delivery) {
        if let Some(server) = &self.servers[to] {
            // A node that stopped has dropped its receiver: nothing to do.
            let _ = server.inbox.send(delivery);
        }
    }

    /// Pushes into incarnation `gen` of server `i`'s inbox, if it is the
    /// one present.
    fn push_if_current(&self, i: usize, gen: u64, delivery: Delivery) {
        if self.is_current(i, gen) {
            self.push(i, delivery);
        }
    }

    fn call_alive(&self, call: &Call) -> bool {
        self.clients
            .get(&call.client)
            .is_some_and(|ends| ends[call.server])
            && self.is_current(call.server, call.server_gen)
    }

    fn fail_call(&mut self, id: u64) {
        if let Some(call) = self.calls.remove(&id) {
            call.reply.send(None);
        }
    }
}

impl Network {
    /// A network of `config.servers` servers, none present, every end
    /// disabled; starts its delivery thread.
    pub fn new(config: NetConfig) -> Network {
        let n = config.servers;
        let state = State {
            faults: Faults {
                reliable: config.reliable,
                long_reordering: false,
                hop_latency: config.hop_latency,
            },
            long_delays: config.long_delays,
            links: vec![vec![false; n]; n],
            servers: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            rpc_total: 0,
            bytes_total: 0,
            rpc_count: vec![0; n],
            rng: SplitMix64::new(config.seed),
            clients: BTreeMap::new(),
            next_client: 0,
            calls: BTreeMap::new(),
            next_call: 0,
            shut_down: false,
        };
        let instance = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Network {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                scheduler: Scheduler::start(instance),
                instance,
            }),
        }
    }

    /// This network's number in the process, unique while it lives and
    /// after. Its delivery thread is named `net-<instance>` and its nodes'
    /// threads `node-<instance>.<server>.<incarnation>`, so the threads of
    /// one cluster can be told from another's running beside it.
    pub fn instance(&self) -> u64 {
        self.shared.instance
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Runs `job` with the network locked after `delay`: at once (on this
    /// thread, `state` being the locked network) if there is none, else on
    /// the delivery thread.
    fn after(&self, state: &mut State, delay: Duration, job: Job) {
        if delay.is_zero() {
            job(&self.shared, state);
        } else {
            schedule(&self.shared, delay, job);
        }
    }

    // ----- servers ----------------------------------------------------------

    /// A new incarnation of server `i` joins, receiving into `inbox`; returns
    /// its incarnation number. Replaces any earlier one (which then receives
    /// nothing more) and resets the server's handler count, as labrpc's
    /// `AddServer` does.
    pub fn attach(&self, i: usize, inbox: Sender<Delivery>) -> u64 {
        let mut s = self.state();
        s.gens[i] += 1;
        let gen = s.gens[i];
        s.rpc_count[i] = 0;
        if !s.shut_down {
            s.servers[i] = Some(Server { gen, inbox });
        }
        gen
    }

    /// Deletes server `i`'s incarnation `gen` (a crash): it receives nothing
    /// more, its sends and replies are discarded, and calls pending on it
    /// fail at their next check. No-op if a newer one replaced it.
    pub fn detach(&self, i: usize, gen: u64) {
        let mut s = self.state();
        if s.is_current(i, gen) {
            s.servers[i] = None;
        }
    }

    /// Is incarnation `gen` of server `i` the one present?
    pub fn is_current(&self, i: usize, gen: u64) -> bool {
        self.state().is_current(i, gen)
    }

    // ----- ends and flags -----------------------------------------------------

    /// Enables or disables the end from server `from` to server `to`.
    pub fn set_link(&self, from: usize, to: usize, enabled: bool) {
        self.state().links[from][to] = enabled;
    }

    /// Is the end from `from` to `to` enabled?
    pub fn link(&self, from: usize, to: usize) -> bool {
        self.state().links[from][to]
    }

    /// Turns loss and short delays off (`true`) or on.
    pub fn set_reliable(&self, reliable: bool) {
        self.state().faults.reliable = reliable;
    }

    /// Turns long reordering of replies on or off.
    pub fn set_long_reordering(&self, on: bool) {
        self.state().faults.long_reordering = on;
    }

    // ----- counters -----------------------------------------------------------

    /// Requests sent (counted at send, delivered or not), peers' and clients'.
    pub fn rpc_total(&self) -> u64 {
        self.state().rpc_total
    }

    /// Request bytes at send plus reply bytes at delivery.
    pub fn bytes_total(&self) -> u64 {
        self.state().bytes_total
    }

    /// Handler invocations on server `i` since its incarnation joined.
    pub fn rpc_count(&self, i: usize) -> u64 {
        self.state().rpc_count[i]
    }

    /// Client calls sent and not yet answered or failed.
    pub fn pending_calls(&self) -> usize {
        self.state().calls.len()
    }

    // ----- peer traffic ---------------------------------------------------------

    /// Incarnation `from_gen` of server `from` sends `message` to `to`.
    /// Requests start a call; replies answer `caller`, the (server,
    /// incarnation) whose request the sender is handling, if it is `to`.
    pub fn send(
        &self,
        from: usize,
        from_gen: u64,
        to: usize,
        message: &Message,
        caller: Option<(usize, u64)>,
    ) {
        let bytes = postcard::to_allocvec(message).expect("messages encode");
        let len = bytes.len() as u64;
        let mut guard = self.state();
        let s = &mut *guard;
        if message.is_request() {
            s.rpc_total += 1;
            s.bytes_total += len;
            let enabled =
                s.links[from][to] && s.is_current(from, from_gen) && s.servers[to].is_some();
            if !enabled {
                return;
            }
            let to_gen = s.gens[to];
            let delay = s.faults.request_delay(&mut s.rng);
            self.after(
                s,
                delay,
                Box::new(move |_, s| {
                    if s.faults.drop_request_now(&mut s.rng) || !s.is_current(to, to_gen) {
                        return;
                    }
                    s.rpc_count[to] += 1;
                    s.push(
                        to,
                        Delivery::Message {
                            from,
                            from_gen,
                            bytes,
                        },
                    );
                }),
            );
        } else {
            let caller_gen = match caller {
                Some((c, g)) if c == to => g,
                _ => s.gens[to],
            };
            let alive = s.links[from][to]
                && s.links[to][from]
                && s.gens[to] == caller_gen
                && s.is_current(from, from_gen);
            if let ReplyFate::Deliver { delay } = s.faults.send_reply(alive, &mut s.rng) {
                self.after(
                    s,
                    delay,
                    Box::new(move |_, s| {
                        s.bytes_total += len;
                        if s.is_current(to, caller_gen) {
                            s.push(
                                to,
                                Delivery::Message {
                                    from,
                                    from_gen,
                                    bytes,
                                },
                            );
                        }
                    }),
                );
            }
        }
    }

    /// Incarnation `from_gen` of server `from` sends `to` a snapshot: the
    /// header and `data` travel as one request (counted as one, with both
    /// lengths in the bytes) and arrive together. The end of the transfer is
    /// reported to the sender exactly once ([`Delivery::SnapshotSendEnded`],
    /// if that incarnation is still present then): at once if the request
    /// cannot leave, else when it is lost or delivered.
    pub fn send_snapshot(
        &self,
        from: usize,
        from_gen: u64,
        to: usize,
        header: InstallSnapshot,
        data: Vec<u8>,
    ) {
        let header_len = postcard::to_allocvec(&Message::InstallSnapshot(header.clone()))
            .expect("messages encode")
            .len();
        let mut guard = self.state();
        let s = &mut *guard;
        s.rpc_total += 1;
        s.bytes_total += (header_len + data.len()) as u64;
        let ended = Delivery::SnapshotSendEnded {
            to,
            term: header.term,
            index: header.last_included_index,
        };
        let enabled = s.links[from][to] && s.is_current(from, from_gen) && s.servers[to].is_some();
        if !enabled {
            s.push_if_current(from, from_gen, ended);
            return;
        }
        let to_gen = s.gens[to];
        let delay = s.faults.request_delay(&mut s.rng);
        self.after(
            s,
            delay,
            Box::new(move |_, s| {
                if !s.faults.drop_request_now(&mut s.rng) && s.is_current(to, to_gen) {
                    s.rpc_count[to] += 1;
                    s.push(
                        to,
                        Delivery::Snapshot {
                            from,
                            from_gen,
                            header,
                            data,
                        },
                    );
                }
                s.push_if_current(from, from_gen, ended);
            }),
        );
    }

    // ----- client calls -----------------------------------------------------------

    /// A new client whose ends reach the servers `enabled[i]`; returns its id.
    pub fn add_client(&self, enabled: Vec<bool>) -> u64 {
        let mut s = self.state();
        assert_eq!(enabled.len(), s.servers.len(), "one end per server");
        let id = s.next_client;
        s.next_client += 1;
        s.clients.insert(id, enabled);
        id
    }

    /// Enables or disables client `client`'s end to server `server`.
    pub fn set_client_link(&self, client: u64, server: usize, enabled: bool) {
        let mut s = self.state();
        let ends = s
            .clients
            .get_mut(&client)
            .expect("a client of this network");
        ends[server] = enabled;
    }

    /// Client `client` calls server `server` with the encoded `request`: the
    /// receiver resolves to `Some(Some(reply))`, or `Some(None)` when labrpc's
    /// `Call` would return false (`None` if the network shut down).
    pub fn call(
        &self,
        client: u64,
        server: usize,
        request: Vec<u8>,
    ) -> OneshotReceiver<Option<Vec<u8>>> {
        let (tx, rx) = oneshot();
        let mut guard = self.state();
        let s = &mut *guard;
        s.rpc_total += 1;
        s.bytes_total += request.len() as u64;
        let enabled =
            s.clients.get(&client).is_some_and(|ends| ends[server]) && s.servers[server].is_some();
        if !enabled {
            let delay = Faults::failed_call_delay(s.long_delays, &mut s.rng);
            self.after(s, delay, Box::new(move |_, _| tx.send(None)));
            return rx;
        }
        let id = s.next_call;
        s.next_call += 1;
        let server_gen = s.gens[server];
        s.calls.insert(
            id,
            Call {
                client,
                server,
                server_gen,
                reply: tx,
            },
        );
        let delay = s.faults.request_delay(&mut s.rng);
        self.after(
            s,
            delay,
            Box::new(move |shared, s| {
                if !s.calls.contains_key(&id) {
                    return;
                }
                let dropped = s.faults.drop_request_now(&mut s.rng);
                let call = &s.calls[&id];
                if dropped || !s.call_alive(call) {
                    s.fail_call(id);
                    return;
                }
                let server = call.server;
                s.rpc_count[server] += 1;
                s.push(server, Delivery::Call { id, bytes: request });
                watch_call(shared, id);
            }),
        );
        rx
    }

    /// The server answers call `id` with the encoded `reply`. Ignored if the
    /// call already failed.
    pub fn reply(&self, id: u64, reply: Vec<u8>) {
        let mut guard = self.state();
        let s = &mut *guard;
        let Some(call) = s.calls.remove(&id) else {
            return;
        };
        let alive = s.call_alive(&call);
        match s.faults.send_reply(alive, &mut s.rng) {
            ReplyFate::Drop => call.reply.send(None),
            ReplyFate::Deliver { delay } => {
                let len = reply.len() as u64;
                self.after(
                    s,
                    delay,
                    Box::new(move |_, s| {
                        s.bytes_total += len;
                        call.reply.send(Some(reply));
                    }),
                );
            }
        }
    }

    /// Stops the delivery thread, drops every pending delivery, fails every
    /// pending call and deletes every server. Idempotent.
    pub fn shutdown(&self) {
        {
            let mut s = self.state();
            s.shut_down = true;
            for server in s.servers.iter_mut() {
                *server = None;
            }
            let calls = std::mem::take(&mut s.calls);
            drop(s);
            // Dropping the senders completes the receivers with `None`.
            drop(calls);
        }
        self.shared.scheduler.stop();
    }
}

/// labrpc checks a pending call every 100 ms: if its end was disabled or its
/// server killed, the call fails. A call nobody waits for any more (the
/// clerk timed out) is forgotten.
fn watch_call(shared: &Arc<Shared>, id: u64) {
    schedule(
        shared,
        DEAD_POLL,
        Box::new(move |shared, s| {
            let Some(call) = s.calls.get(&id) else { return };
            if !s.call_alive(call) {
                s.fail_call(id);
            } else if call.reply.is_abandoned() {
                s.calls.remove(&id);
            } else {
                watch_call(shared, id);
            }
        }),
    );
}

/// Queues `job` on the delivery thread, `delay` from now. The job holds the
/// network weakly: a network dropped meanwhile runs nothing.
fn schedule(shared: &Arc<Shared>, delay: Duration, job: Job) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    shared.scheduler.at(
        Instant::now() + delay,
        Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                let mut state = lock(&shared.state);
                if !state.shut_down {
                    job(&shared, &mut state);
                }
            }
        }),
    );
}

/// The delivery thread: runs jobs at their instants.
struct Scheduler {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Queue {
    jobs: BTreeMap<(Instant, u64), Box<dyn FnOnce() + Send>>,
    seq: u64,
    stopped: bool,
}

impl Scheduler {
    fn start(instance: u64) -> Scheduler {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let q = queue.clone();
        let thread = thread::Builder::new()
            .name(format!("net-{instance}"))
            .spawn(move || Self::run(&q))
            .expect("spawn the network thread");
        Scheduler {
            queue,
            thread: Mutex::new(Some(thread)),
        }
    }

    fn run(queue: &(Mutex<Queue>, Condvar)) {
        let (mutex, cond) = queue;
        let mut q = lock(mutex);
        loop {
            if q.stopped {
                return;
            }
            let now = Instant::now();
            match q.jobs.first_key_value().map(|(&(at, _), _)| at) {
                Some(at) if at <= now => {
                    let (_, job) = q.jobs.pop_first().expect("a first job");
                    drop(q);
                    job();
                    q = lock(mutex);
                }
                Some(at) => {
                    q = cond
                        .wait_timeout(q, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => q = cond.wait(q).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn at(&self, at: Instant, job: Box<dyn FnOnce() + Send>) {
        let (mutex, cond) = &*self.queue;
        let mut q = lock(mutex);
        if q.stopped {
            return;
        }
        let seq = q.seq;
        q.seq += 1;
        let earliest = q.jobs.first_key_value().is_none_or(|(&(t, _), _)| at < t);
        q.jobs.insert((at, seq), job);
        if earliest {
            cond.notify_one();
        }
    }

    fn stop(&self) {
        let jobs = {
            let (mutex, cond) = &*self.queue;
            let mut q = lock(mutex);
            q.stopped = true;
            cond.notify_one();
            std::mem::take(&mut q.jobs)
        };
        drop(jobs);
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            // The last handle may be dropped by a job on the thread itself.
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Receiver};

    use raft_core::{RequestVote, RequestVoteReply};

    use super::*;
    use crate::rt::{ms, now, run, timeout};

    fn request() -> Message {
        Message::RequestVote(RequestVote {
            term: 1,
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        })
    }

    fn reply() -> Message {
        Message::RequestVoteReply(RequestVoteReply {
            term: 1,
            vote_granted: true,
        })
    }

    /// Two servers, both attached and linked both ways.
    fn pair(config: NetConfig) -> (Network, [(u64, Receiver<Delivery>); 2]) {
        let net = Network::new(config);
        let attach = |i| {
            let (tx, rx) = channel();
            (net.attach(i, tx), rx)
        };
        let servers = [attach(0), attach(1)];
        for (a, b) in [(0, 1), (1, 0)] {
            net.set_link(a, b, true);
        }
        (net, servers)
    }

    fn received(rx: &Receiver<Delivery>) -> usize {
        rx.try_iter()
            .filter(|d| !matches!(d, Delivery::Wake))
            .count()
    }

    #[test]
    fn requests_count_at_send_and_replies_reach_only_the_caller_incarnation() {
        let (net, [(g0, rx0), (g1, rx1)]) = pair(NetConfig::new(2, 1));
        net.send(0, g0, 1, &request(), None);
        assert_eq!(
            (net.rpc_total(), net.rpc_count(1), received(&rx1)),
            (1, 1, 1)
        );
        // A reply to the caller's incarnation arrives.
        net.send(1, g1, 0, &reply(), Some((0, g0)));
        assert_eq!(received(&rx0), 1);
        // The caller restarts: a reply to its old incarnation is discarded.
        let (tx, rx0b) = channel();
        let g0b = net.attach(0, tx);
        net.send(1, g1, 0, &reply(), Some((0, g0)));
        assert_eq!((received(&rx0), received(&rx0b)), (0, 0));
        // The old incarnation's requests are lost, though counted.
        net.send(0, g0, 1, &request(), None);
        assert_eq!((net.rpc_total(), received(&rx1)), (2, 0));
        net.send(0, g0b, 1, &request(), None);
        assert_eq!(received(&rx1), 1);
        // A disabled end loses requests and replies.
        net.set_link(0, 1, false);
        net.send(0, g0b, 1, &request(), None);
        net.send(1, g1, 0, &reply(), Some((0, g0b)));
        assert_eq!((received(&rx0b), received(&rx1)), (0, 0));
        assert_eq!(net.rpc_count(1), 2);
        net.shutdown();
    }

    #[test]
    fn client_calls_fail_fast_on_disabled_ends_and_when_the_server_dies() {
        run(async {
            let (net, [(_, _rx0), (g1, rx1)]) = pair(NetConfig::new(2, 3));
            let client = net.add_client(vec![true, false]);
            // A disabled end: false within 100 ms, no handler.
            let t0 = now();
            let got = timeout(ms(2000), net.call(client, 1, vec![1])).await;
            assert_eq!(got, Some(Some(None)));
            assert!(now() - t0 < ms(200), "{:?}", now() - t0);
            // A call the server answers.
            net.set_client_link(client, 1, true);
            let call = net.call(client, 1, vec![2]);
            let Ok(Delivery::Call { id, bytes }) = rx1.try_recv() else {
                panic!("the call reached the server");
            };
            assert_eq!(bytes, vec![2]);
            net.reply(id, vec![3]);
            assert_eq!(call.await, Some(Some(vec![3])));
            // The server dies while the call is pending: it fails at the
            // next check, and a late reply is ignored.
            let call = net.call(client, 1, vec![4]);
            let Ok(Delivery::Call { id, .. }) = rx1.try_recv() else {
                panic!("the call reached the server");
            };
            net.detach(1, g1);
            let t0 = now();
            assert_eq!(timeout(ms(2000), call).await, Some(Some(None)));
            assert!(now() - t0 <= ms(150), "{:?}", now() - t0);
            net.reply(id, vec![5]);
            assert_eq!(net.pending_calls(), 0);
            assert_eq!(net.rpc_total(), 3);
            assert_eq!(net.bytes_total(), 3 + 1);
            net.shutdown();
        });
    }

    #[test]
    fn shutdown_fails_pending_calls() {
        run(async {
            let (net, [_, (_, _rx1)]) = pair(NetConfig::new(2, 5));
            let client = net.add_client(vec![true, true]);
            let call = net.call(client, 1, vec![1]);
            net.shutdown();
            assert_eq!(call.await, None);
        });
    }
}
