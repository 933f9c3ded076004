//! The small async pieces every lab executor needs, written once: a task
//! whose output can be awaited ([`joinable`], [`JoinHandle`]), a
//! single-value channel ([`oneshot`]) that any thread may complete, and
//! [`timeout`], a future raced against a timer. Neither reads a clock: the
//! executor supplies the timer (virtual in the simulator, real on threads),
//! so both stay deterministic under a deterministic executor.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct JoinState<T> {
    output: Option<T>,
    finished: bool,
    waiter: Option<Waker>,
}

/// A spawned task's output: await it. Single-threaded, like the lab
/// executors' tasks.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// True once the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().finished
    }

    /// The output, if the task has finished and it was not taken yet (for
    /// an executor's `run`, which polls no handle).
    pub fn try_take(&self) -> Option<T> {
        self.state.borrow_mut().output.take()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.output.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// `future` as a task for an executor to run (it returns nothing), and the
/// handle that yields its output and wakes whoever awaits it.
pub fn joinable<F>(future: F) -> (impl Future<Output = ()> + 'static, JoinHandle<F::Output>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        output: None,
        finished: false,
        waiter: None,
    }));
    let done = state.clone();
    let task = async move {
        let v = future.await;
        let waiter = {
            let mut s = done.borrow_mut();
            s.output = Some(v);
            s.finished = true;
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    };
    (task, JoinHandle { state })
}

/// `future`'s output, or `None` if `timer` completes first (the future is
/// dropped). `future` is polled before `timer` each time.
pub async fn timeout<F: Future, T: Future<Output = ()>>(timer: T, future: F) -> Option<F::Output> {
    // Declared in this order, the future is dropped before the timer.
    let mut timer = std::pin::pin!(timer);
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

struct OneshotState<T> {
    value: Option<T>,
    waiter: Option<Waker>,
    closed: bool,
    receiver_gone: bool,
}

/// The sending half of a [`oneshot`] channel; `Send` (for `T: Send`), so
/// any thread may complete it.
pub struct OneshotSender<T> {
    state: Arc<Mutex<OneshotState<T>>>,
}

/// The receiving half of a [`oneshot`] channel: resolves to `Some(value)`,
/// or `None` if the sender was dropped without sending.
pub struct OneshotReceiver<T> {
    state: Arc<Mutex<OneshotState<T>>>,
}

/// A single-value channel into a task: from a task, a scheduled event, or
/// any thread (a node or network thread completing a call).
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let state = Arc::new(Mutex::new(OneshotState {
        value: None,
        waiter: None,
        closed: false,
        receiver_gone: false,
    }));
    (
        OneshotSender {
            state: state.clone(),
        },
        OneshotReceiver { state },
    )
}

/// The state, even if a thread panicked holding it (the panic is reported
/// where it happened; the channel's state is always consistent).
fn lock<T>(state: &Mutex<OneshotState<T>>) -> MutexGuard<'_, OneshotState<T>> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> OneshotSender<T> {
    /// Delivers `value` and wakes the receiver.
    pub fn send(self, value: T) {
        let waiter = {
            let mut s = lock(&self.state);
            s.value = Some(value);
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// True once the receiver was dropped: nobody waits for the value.
    pub fn is_abandoned(&self) -> bool {
        lock(&self.state).receiver_gone
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let waiter = {
            let mut s = lock(&self.state);
            s.closed = true;
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<T> Drop for OneshotReceiver<T> {
    fn drop(&mut self) {
        lock(&self.state).receiver_gone = true;
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.state);
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waiter = Some(cx.waker().clone());
        Poll::Pending
    }
}
