//! A single-threaded async executor whose only clock is virtual.
//!
//! Test bodies are written like the Go tests: `sleep(ms(500)).await`,
//! `spawn(client(..))`. When every task is blocked, the executor jumps the
//! clock to the earliest scheduled event (a timer, a message delivery, a
//! wake-up) and runs it. Tasks run in the order they were woken, and events at
//! the same instant in the order they were scheduled, so a run depends only on
//! the seed.
//!
//! One seeded generator serves every random draw in a run ([`with_rng`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use raft_core::{Instant, SplitMix64};

type Task = Pin<Box<dyn Future<Output = ()>>>;

enum Scheduled {
    Wake(Waker),
    Call(Box<dyn FnOnce()>),
}

struct Runtime {
    now: Cell<Instant>,
    seq: Cell<u64>,
    queue: RefCell<BTreeMap<(Instant, u64), Scheduled>>,
    tasks: RefCell<BTreeMap<u64, Task>>,
    next_task: Cell<u64>,
    ready: Arc<Mutex<VecDeque<u64>>>,
    rng: RefCell<SplitMix64>,
    seed: u64,
    events_run: Cell<u64>,
}

thread_local! {
    static RUNTIME: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
    static LAST_NOW: Cell<Instant> = const { Cell::new(Instant::ZERO) };
}

/// The virtual time the last simulation on this thread had reached (readable
/// after it ended, for failure reports).
pub fn last_virtual_time() -> Instant {
    LAST_NOW.with(Cell::get)
}

fn runtime() -> Rc<Runtime> {
    RUNTIME
        .with(|r| r.borrow().clone())
        .expect("not inside a simulation (driver_sim::run)")
}

struct TaskWaker {
    id: u64,
    ready: Arc<Mutex<VecDeque<u64>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.lock().unwrap().push_back(self.id);
    }
}

/// Clears the thread's runtime even when a test panics.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        // Dropping the runtime drops queued closures and tasks, which may hold
        // handles back into it: take it out first, drop it afterwards.
        let rt = RUNTIME.with(|r| r.borrow_mut().take());
        if let Some(rt) = rt {
            let queue = std::mem::take(&mut *rt.queue.borrow_mut());
            let tasks = std::mem::take(&mut *rt.tasks.borrow_mut());
            drop(queue);
            drop(tasks);
        }
    }
}

/// Runs `future` to completion in a fresh simulation seeded with `seed`, and
/// returns its output. Other tasks still pending when it finishes are dropped.
/// Panics (a failed assertion in a test) propagate to the caller.
pub fn run<F>(seed: u64, future: F) -> F::Output
where
    F: Future + 'static,
    F::Output: 'static,
{
    let rt = Rc::new(Runtime {
        now: Cell::new(Instant::ZERO),
        seq: Cell::new(0),
        queue: RefCell::new(BTreeMap::new()),
        tasks: RefCell::new(BTreeMap::new()),
        next_task: Cell::new(0),
        ready: Arc::new(Mutex::new(VecDeque::new())),
        rng: RefCell::new(SplitMix64::new(seed)),
        seed,
        events_run: Cell::new(0),
    });
    RUNTIME.with(|r| {
        assert!(r.borrow().is_none(), "simulations do not nest");
        *r.borrow_mut() = Some(rt.clone());
    });
    let _installed = Installed;
    let main = spawn(future);
    let progress = std::env::var_os("SIM_PROGRESS").is_some();
    loop {
        loop {
            let next = rt.ready.lock().unwrap().pop_front();
            let Some(id) = next else { break };
            let task = rt.tasks.borrow_mut().remove(&id);
            let Some(mut task) = task else { continue };
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: rt.ready.clone(),
            }));
            if task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
            {
                rt.tasks.borrow_mut().insert(id, task);
            }
        }
        if let Some(output) = main.try_take() {
            return output;
        }
        let next = rt.queue.borrow_mut().pop_first();
        let Some(((at, _), item)) = next else {
            panic!("simulation deadlock: every task is blocked and nothing is scheduled");
        };
        debug_assert!(at >= rt.now.get());
        rt.now.set(at);
        LAST_NOW.with(|n| n.set(at));
        rt.events_run.set(rt.events_run.get() + 1);
        if progress && rt.events_run.get().is_multiple_of(1_000_000) {
            eprintln!(
                "[sim seed {}] {} M events, virtual time {:.3} s, {} queued, {} tasks",
                rt.seed,
                rt.events_run.get() / 1_000_000,
                at.as_nanos() as f64 / 1e9,
                rt.queue.borrow().len(),
                rt.tasks.borrow().len()
            );
        }
        match item {
            Scheduled::Wake(w) => w.wake(),
            Scheduled::Call(f) => f(),
        }
    }
}

/// The current virtual time.
pub fn now() -> Instant {
    runtime().now.get()
}

/// The seed of the running simulation.
pub fn seed() -> u64 {
    runtime().seed
}

/// How many scheduled events have run so far.
pub fn events_run() -> u64 {
    runtime().events_run.get()
}

/// Draws from the simulation's one generator.
pub fn with_rng<T>(f: impl FnOnce(&mut SplitMix64) -> T) -> T {
    let rt = runtime();
    let mut rng = rt.rng.borrow_mut();
    f(&mut rng)
}

/// Runs `f` at `at` (or now, if `at` has passed), after every event already
/// scheduled for that instant.
pub fn schedule_at(at: Instant, f: impl FnOnce() + 'static) {
    let rt = runtime();
    let at = at.max(rt.now.get());
    let seq = rt.seq.get();
    rt.seq.set(seq + 1);
    rt.queue
        .borrow_mut()
        .insert((at, seq), Scheduled::Call(Box::new(f)));
}

/// Runs `f` after `delay` of virtual time.
pub fn schedule_after(delay: Duration, f: impl FnOnce() + 'static) {
    schedule_at(now() + delay, f);
}

fn schedule_wake(at: Instant, waker: Waker) {
    let rt = runtime();
    let seq = rt.seq.get();
    rt.seq.set(seq + 1);
    rt.queue
        .borrow_mut()
        .insert((at, seq), Scheduled::Wake(waker));
}

pub use lab::sync::JoinHandle;

/// Starts `future` as a concurrent task (a "goroutine").
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let rt = runtime();
    let (task, handle) = lab::sync::joinable(future);
    let task: Task = Box::pin(task);
    let id = rt.next_task.get();
    rt.next_task.set(id + 1);
    rt.tasks.borrow_mut().insert(id, task);
    rt.ready.lock().unwrap().push_back(id);
    handle
}

/// Completes once `duration` of virtual time has passed.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: now() + duration,
        registered: false,
    }
}

/// The future returned by [`sleep`].
pub struct Sleep {
    deadline: Instant,
    registered: bool,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now() >= self.deadline {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            schedule_wake(self.deadline, cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Runs `future` for at most `duration` of virtual time: `Some(output)` if
/// it finished, `None` if time ran out first (the future is dropped).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    lab::sync::timeout(sleep(duration), future).await
}

pub use lab::sync::{oneshot, OneshotReceiver, OneshotSender};

/// Shorthand for `Duration::from_millis`.
pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The simulator's executor as the lab tester's [`lab::Runtime`]:
/// virtual time, the simulation's one generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimRuntime;

impl lab::Runtime for SimRuntime {
    const CLOCK: &'static str = "virtual";

    fn now() -> Duration {
        now() - Instant::ZERO
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        sleep(duration)
    }

    fn timeout<F: Future>(
        duration: Duration,
        future: F,
    ) -> impl Future<Output = Option<F::Output>> {
        timeout(duration, future)
    }

    fn spawn(future: impl Future<Output = ()> + 'static) {
        spawn(future);
    }

    fn random_below(bound: u64) -> u64 {
        with_rng(|r| r.below(bound))
    }

    fn random_u64() -> u64 {
        with_rng(|r| r.next_u64())
    }

    fn run_name() -> String {
        let test = match crate::current_test_name() {
            name if name.is_empty() => "sim".to_string(),
            name => name,
        };
        format!("{test}-seed{}", seed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_jumps_and_tasks_interleave_deterministically() {
        let out = run(1, async {
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut handles = Vec::new();
            for i in 0..3u64 {
                let log = log.clone();
                handles.push(spawn(async move {
                    sleep(ms(100 * (3 - i))).await;
                    log.borrow_mut().push((i, now().as_nanos() / 1_000_000));
                    i
                }));
            }
            let mut sum = 0;
            for h in handles {
                sum += h.await;
            }
            let v = log.borrow().clone();
            (sum, v, now())
        });
        assert_eq!(out.0, 3);
        assert_eq!(out.1, vec![(2, 100), (1, 200), (0, 300)]);
        assert_eq!(out.2, Instant::from_millis(300));
    }
}
