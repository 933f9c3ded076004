//! A single-threaded async executor on the real, monotonic clock, for test
//! bodies written like the Go tests: `sleep(ms(500)).await`,
//! `spawn(client(..))`, `timeout(d, f).await`.
//!
//! It mirrors `driver_sim::executor` with real time in place of virtual time:
//! [`run`] polls the tasks on the calling thread (bodies are `!Send`: they
//! share `Rc`s and `Cell`s) and, when every task is blocked, waits on a
//! condition variable until the earliest timer is due or a waker fires. Wakers
//! are `Send`, so a node thread can complete a [`oneshot`] and the executor
//! wakes at once.
//!
//! One generator serves the body's random draws ([`with_rng`]), seeded from
//! `THREADS_SEED` if set, else from the clock; the seed is printed when the
//! body panics. Real time makes runs irreproducible anyway; the seed only
//! replays the body's own choices.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use raft_core::SplitMix64;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Locks `mutex`, ignoring poisoning: a panic elsewhere has already failed
/// the test, and the data under these locks stays consistent step by step.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The part of the runtime other threads touch: the queue of woken tasks.
struct Ready {
    queue: Mutex<VecDeque<u64>>,
    woken: Condvar,
}

struct Runtime {
    start: Instant,
    seed: u64,
    rng: RefCell<SplitMix64>,
    tasks: RefCell<BTreeMap<u64, Task>>,
    next_task: Cell<u64>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    ready: Arc<Ready>,
}

thread_local! {
    static RUNTIME: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
}

fn runtime() -> Rc<Runtime> {
    RUNTIME
        .with(|r| r.borrow().clone())
        .expect("not inside a real-time run (driver_threads::rt::run)")
}

struct TaskWaker {
    id: u64,
    ready: Arc<Ready>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.ready.queue).push_back(self.id);
        self.ready.woken.notify_one();
    }
}

/// Clears the thread's runtime when `run` ends, normally or by a panic, and
/// prints the seed if it is a panic.
struct Installed {
    seed: u64,
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Dropping tasks drops the harnesses they hold (which join their
        // threads) and may touch the runtime: take it out first.
        let rt = RUNTIME.with(|r| r.borrow_mut().take());
        if let Some(rt) = rt {
            if std::thread::panicking() {
                eprintln!(
                    "real-time run failed after {:.3} s; its random choices replay with THREADS_SEED={}",
                    rt.start.elapsed().as_secs_f64(),
                    self.seed
                );
            }
            let timers = std::mem::take(&mut *rt.timers.borrow_mut());
            let tasks = std::mem::take(&mut *rt.tasks.borrow_mut());
            drop(timers);
            drop(tasks);
        }
    }
}

/// The seed for a run: `THREADS_SEED` if set (a number, else a panic), else
/// drawn from the clock.
pub fn seed_from_env() -> u64 {
    match std::env::var("THREADS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("THREADS_SEED={s:?} is not a number")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            SplitMix64::new(nanos).next_u64()
        }
    }
}

/// Runs `future` on the calling thread until it completes and returns its
/// output; tasks still pending then are dropped. Panics (a failed assertion
/// in a body or a task) propagate to the caller, after printing the seed.
pub fn run<F>(future: F) -> F::Output
where
    F: Future + 'static,
    F::Output: 'static,
{
    let seed = seed_from_env();
    let rt = Rc::new(Runtime {
        start: Instant::now(),
        seed,
        rng: RefCell::new(SplitMix64::new(seed)),
        tasks: RefCell::new(BTreeMap::new()),
        next_task: Cell::new(0),
        timers: RefCell::new(BTreeMap::new()),
        next_timer: Cell::new(0),
        ready: Arc::new(Ready {
            queue: Mutex::new(VecDeque::new()),
            woken: Condvar::new(),
        }),
    });
    RUNTIME.with(|r| {
        assert!(r.borrow().is_none(), "real-time runs do not nest");
        *r.borrow_mut() = Some(rt.clone());
    });
    let _installed = Installed { seed };
    let main = spawn(future);
    loop {
        poll_ready(&rt);
        if let Some(output) = main.try_take() {
            return output;
        }
        fire_due_timers(&rt);
        wait_for_work(&rt);
    }
}

/// Polls every woken task, including those woken while polling.
fn poll_ready(rt: &Runtime) {
    loop {
        let next = lock(&rt.ready.queue).pop_front();
        let Some(id) = next else { return };
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
}

fn fire_due_timers(rt: &Runtime) {
    let now = Instant::now();
    loop {
        let due = {
            let mut timers = rt.timers.borrow_mut();
            match timers.first_key_value() {
                Some((&(at, _), _)) if at <= now => timers.pop_first(),
                _ => None,
            }
        };
        match due {
            Some((_, waker)) => waker.wake(),
            None => return,
        }
    }
}

/// Blocks until a task is woken or the earliest timer is due.
fn wait_for_work(rt: &Runtime) {
    let deadline = rt.timers.borrow().first_key_value().map(|(&(at, _), _)| at);
    let mut queue = lock(&rt.ready.queue);
    while queue.is_empty() {
        match deadline {
            None => {
                queue = rt
                    .ready
                    .woken
                    .wait(queue)
                    .unwrap_or_else(|e| e.into_inner());
            }
            Some(at) => {
                let now = Instant::now();
                if at <= now {
                    return;
                }
                queue = rt
                    .ready
                    .woken
                    .wait_timeout(queue, at - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// Time since [`run`] started, on the monotonic clock.
pub fn now() -> Duration {
    runtime().start.elapsed()
}

/// The seed of the running body's generator.
pub fn seed() -> u64 {
    runtime().seed
}

/// Draws from the run's one generator (the body's random choices).
pub fn with_rng<T>(f: impl FnOnce(&mut SplitMix64) -> T) -> T {
    let rt = runtime();
    let mut rng = rt.rng.borrow_mut();
    f(&mut rng)
}

/// Shorthand for `Duration::from_millis`.
pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

pub use lab::sync::JoinHandle;

/// Starts `future` as a concurrent task (a "goroutine") on the run's thread.
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
    lock(&rt.ready.queue).push_back(id);
    handle
}

/// Completes once `duration` of real time has passed.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + duration,
        timer: None,
    }
}

/// The future returned by [`sleep`]. Dropping it cancels its timer.
pub struct Sleep {
    deadline: Instant,
    /// The key of its registered timer, if any.
    timer: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.cancel();
            return Poll::Ready(());
        }
        let rt = runtime();
        let key = match self.timer {
            Some(key) => key,
            None => {
                let seq = rt.next_timer.get();
                rt.next_timer.set(seq + 1);
                (self.deadline, seq)
            }
        };
        // Re-register on every poll: the timer may have fired (a spurious
        // wake-up of a timer that raced the clock) or the waker changed.
        rt.timers.borrow_mut().insert(key, cx.waker().clone());
        self.timer = Some(key);
        Poll::Pending
    }
}

impl Sleep {
    fn cancel(&mut self) {
        if let Some(key) = self.timer.take() {
            // Outside a run (the runtime already torn down) there is nothing to cancel.
            if let Some(rt) = RUNTIME.with(|r| r.borrow().clone()) {
                rt.timers.borrow_mut().remove(&key);
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Runs `future` for at most `duration` of real time: `Some(output)` if
/// it finished, `None` if time ran out first (the future is dropped).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    lab::sync::timeout(sleep(duration), future).await
}

pub use lab::sync::{oneshot, OneshotReceiver, OneshotSender};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_sleep_in_real_time_and_interleave() {
        let (order, elapsed) = run(async {
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut handles = Vec::new();
            // Deadlines from one start, so however late a task is first
            // polled (a busy machine), they stay 30 ms apart and in order.
            let start = now();
            for i in 0..3u64 {
                let log = log.clone();
                handles.push(spawn(async move {
                    sleep(ms(30 * (3 - i)).saturating_sub(now() - start)).await;
                    log.borrow_mut().push(i);
                    i
                }));
            }
            let mut sum = 0;
            for h in handles {
                sum += h.await;
            }
            assert_eq!(sum, 3);
            let order = log.borrow().clone();
            (order, now())
        });
        assert_eq!(order, vec![2, 1, 0]);
        // Never early; how late depends on the machine, so it is not bounded.
        assert!(elapsed >= ms(90), "{elapsed:?}");
    }

    #[test]
    fn a_oneshot_completed_by_another_thread_wakes_the_executor() {
        let got = run(async {
            let (tx, rx) = oneshot();
            let t = std::thread::spawn(move || {
                std::thread::sleep(ms(20));
                tx.send(7u32);
            });
            let v = timeout(ms(5000), rx).await;
            t.join().unwrap();
            v
        });
        assert_eq!(got, Some(Some(7)));
    }

    #[test]
    fn timeouts_expire_and_dropped_senders_close() {
        run(async {
            let (tx, rx) = oneshot::<u8>();
            let t0 = now();
            assert_eq!(timeout(ms(20), sleep(ms(10_000))).await, None);
            assert!(now() - t0 >= ms(20));
            drop(tx);
            assert_eq!(rx.await, None);
            let h = spawn(async { 5 });
            assert!(!h.is_finished());
            sleep(ms(1)).await;
            assert!(h.is_finished());
            assert_eq!(h.await, 5);
        });
    }

    #[test]
    fn pending_tasks_are_dropped_when_main_ends() {
        let out = run(async {
            spawn(async {
                sleep(Duration::from_secs(3600)).await;
            });
            with_rng(|r| r.below(10)) < 10
        });
        assert!(out);
    }
}
