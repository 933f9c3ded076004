//! A minimal driver for `raft-core` in plain std: read this to plug the core
//! into your own runtime. Three nodes in one process, one thread each, an
//! `mpsc` inbox per node as the "network", a `DurableState` per node as the
//! "disk". It proposes a few commands to whoever leads, waits until all three
//! nodes applied them, and exits 0 (1 on failure or timeout). Run it with
//! `cargo run -p examples --example custom_driver`.
use std::process::ExitCode;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use raft_core::{Action, Config, DurableState, Event, Message, NodeId, RaftNode};

const COMMANDS: [&str; 3] = ["x=1", "y=2", "z=3"];

/// What a node thread reacts to: everything arrives through its inbox.
enum Input {
    Peer(NodeId, Message),
    Propose(Vec<u8>, Sender<bool>), // answered with "accepted?"
    Stop,
}

/// One node's driver loop: step the core with one event, execute the actions
/// in order, pick the next event. The core decides; the loop only does I/O.
fn node(id: NodeId, peers: Vec<Sender<Input>>, inbox: Receiver<Input>, out: Sender<(u64, String)>) {
    let epoch = Instant::now(); // this node's clock starts with its thread
    let mut raft = RaftNode::new(Config::new(id, vec![0, 1, 2]), 7 + id).expect("valid config");
    // The "disk": a real driver writes and fsyncs a file, and after a crash
    // rebuilds the node with `RaftNode::recover(config, seed, disk)`.
    let mut disk = DurableState::default();
    let send = |to: NodeId, m: Message| drop(peers[to as usize].send(Input::Peer(id, m)));
    let mut timer = epoch; // the deadline of the core's last SetTimer
    let mut answer: Option<Sender<bool>> = None;
    let mut event = Event::TimerFired; // the first step arms the election timer
    loop {
        // Time is an argument: convert the monotonic clock at the edge.
        let now = raft_core::Instant::from_nanos(epoch.elapsed().as_nanos() as u64);
        let mut persisted = None;
        for action in raft.step(now, event).expect("the driver misused the core") {
            match action {
                // May leave at once (the network may drop or reorder it).
                Action::Send { to, message } => send(to, message),
                // Persist before send: write (and in real life fsync), and
                // only then let out the votes and acks that waited for it.
                Action::Persist(write) => {
                    disk.apply(&write);
                    write.then_send.into_iter().for_each(|(to, m)| send(to, m));
                    persisted = Some(write.id);
                }
                // Committed and durable: hand to the application, in order.
                Action::Apply { entries } => {
                    // Only command entries are the application's; no-ops
                    // and configurations are Raft's own.
                    for e in entries {
                        let Some(bytes) = e.command() else { continue };
                        let command = String::from_utf8_lossy(bytes).into_owned();
                        println!("node {id} applied #{}: {command}", e.index);
                        let _ = out.send((id, command));
                    }
                }
                // Nobody snapshots here, so the log is never compacted and
                // no follower needs a snapshot. A driver that snapshots keeps
                // the bytes by index, sends them beside the header on
                // `SendSnapshot` (reporting the end with
                // `Event::SnapshotSendEnded`), and loads the delivered ones
                // on `ApplySnapshot`.
                Action::ApplySnapshot { .. } | Action::SendSnapshot { .. } => {
                    unreachable!("nobody snapshots here")
                }
                // One timer; the last one set wins.
                Action::SetTimer { deadline } => {
                    timer = epoch + Duration::from_nanos(deadline.as_nanos());
                }
                // The answer to a proposal comes in the same step.
                a @ (Action::AcceptProposal { .. } | Action::RejectProposal { .. }) => {
                    let accepted = matches!(a, Action::AcceptProposal { .. });
                    let _ = answer.take().map(|reply| reply.send(accepted));
                }
                // Nobody asks this cluster for a leadership transfer or a
                // membership change, so its peers stay the ones it started with.
                Action::LeadershipTransfer { .. }
                | Action::AcceptMembershipChange { .. }
                | Action::RejectMembershipChange { .. }
                | Action::MembershipChanged { .. }
                | Action::ReadReady { .. }
                | Action::RejectRead { .. } => {}
            }
        }
        // Report the write durable before taking new input.
        if let Some(upto) = persisted {
            event = Event::Persisted { upto };
            continue;
        }
        // Wait for input, or for the timer.
        let wait = timer.saturating_duration_since(Instant::now());
        event = match inbox.recv_timeout(wait) {
            Ok(Input::Peer(from, message)) => Event::MessageReceived { from, message },
            Ok(Input::Propose(command, reply)) => {
                answer = Some(reply);
                Event::ProposalReceived { id: 0, command }
            }
            Err(RecvTimeoutError::Timeout) => Event::TimerFired,
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

/// Runs the cluster until every node applied every command, in one order.
fn run() -> Result<Vec<String>, String> {
    let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| channel()).unzip();
    let (applied_tx, applied) = channel();
    for (id, inbox) in (0..3).zip(receivers) {
        let (peers, applied_tx) = (inboxes.clone(), applied_tx.clone());
        std::thread::spawn(move || node(id, peers, inbox, applied_tx));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut logs: Vec<Vec<String>> = vec![Vec::new(); 3];
    let everywhere = |logs: &[Vec<String>], c| logs.iter().all(|l| l.iter().any(|x| x == c));
    for command in COMMANDS {
        // Offer it to each node until the leader takes it, then collect
        // applies; if leadership changed before it committed, offer again.
        while !everywhere(&logs, command) && Instant::now() < deadline {
            let accepted = inboxes.iter().any(|inbox| {
                let (reply, answer) = channel();
                let _ = inbox.send(Input::Propose(command.as_bytes().to_vec(), reply));
                answer.recv() == Ok(true)
            });
            let until = Instant::now() + Duration::from_millis(if accepted { 2000 } else { 100 });
            while !everywhere(&logs, command) {
                match applied.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok((id, applied)) => logs[id as usize].push(applied),
                    Err(_) => break,
                }
            }
        }
    }
    for inbox in &inboxes {
        let _ = inbox.send(Input::Stop);
    }
    // Every node must have applied every command, all in the same order.
    let n = logs.iter().map(Vec::len).min().unwrap_or(0);
    let same_order = logs.iter().all(|log| log[..n] == logs[0][..n]);
    if same_order && COMMANDS.iter().all(|c| everywhere(&logs, c)) {
        Ok(logs.swap_remove(0))
    } else {
        Err(format!("timed out or diverged: {logs:?}"))
    }
}

/// Public so that `tests/custom_driver.rs` runs this very code.
pub fn main() -> ExitCode {
    match run() {
        Ok(log) => {
            println!("all three nodes applied {log:?}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("custom_driver failed: {why}");
            ExitCode::FAILURE
        }
    }
}
