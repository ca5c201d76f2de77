//! [`AsyncResult`]: the outcome of an asynchronous call, waited for,
//! polled, awaited, cancelled, or watched with others ([`Watch`]).
//!
//! Async calls (`map_async`, `starmap_async`, `apply_async`) submit their
//! whole input at once, as Python does, and return at once. One result
//! thread per pool ([`crate::result_thread`]), started by the first async
//! call, completes them and runs their callbacks.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::error::Error;
use crate::result_thread::{Control, Late, ON_RESULT_THREAD, guarded};
use crate::scheduler::Scheduler;

/// Waits on `ready` once, until `deadline` at most; `None` once it passed.
fn wait_until<'a, G>(
    ready: &Condvar,
    guard: MutexGuard<'a, G>,
    deadline: Option<Instant>,
) -> Option<MutexGuard<'a, G>> {
    match deadline {
        None => Some(ready.wait(guard).unwrap_or_else(|p| p.into_inner())),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let waited = ready.wait_timeout(guard, left);
            Some(waited.unwrap_or_else(|p| p.into_inner()).0)
        }
    }
}

pub(crate) type Callback<T> = Box<dyn FnOnce(&Result<T, Error>) + Send>;

pub(crate) struct Slot<T> {
    pub(crate) outcome: Option<Result<T, Error>>,
    /// The outcome was handed out by `get`.
    pub(crate) taken: bool,
    /// Callbacks registered after completion, not yet run: `get` waits for them.
    pub(crate) busy: usize,
    pub(crate) waker: Option<Waker>,
    pub(crate) callbacks: Vec<Callback<T>>,
    /// The result thread took the callbacks to run them with the outcome:
    /// too late to cancel.
    pub(crate) completing: bool,
    /// Waits over several results ([`crate::as_completed`]) to tell once
    /// this one is settled, with its position there.
    pub(crate) watchers: Vec<(Weak<Watch>, usize)>,
}

impl<T> Slot<T> {
    /// Whether `get` would return at once.
    fn settled(&self) -> bool {
        self.taken || (self.outcome.is_some() && self.busy == 0)
    }

    /// Tells the watchers, once settled.
    pub(crate) fn tell_watchers(&mut self) {
        if self.settled() {
            for (watch, position) in self.watchers.drain(..) {
                if let Some(watch) = watch.upgrade() {
                    watch.settled(position);
                }
            }
        }
    }
}

pub(crate) struct ResultCell<T> {
    pub(crate) slot: Mutex<Slot<T>>,
    pub(crate) ready: Condvar,
}

impl<T> ResultCell<T> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the outcome can be taken (or was).
    fn wait_settled(&self, deadline: Option<Instant>) -> Option<MutexGuard<'_, Slot<T>>> {
        let mut slot = self.lock();
        while !slot.settled() {
            slot = wait_until(&self.ready, slot, deadline)?;
        }
        Some(slot)
    }

    /// Runs a callback registered after completion, on the driver thread.
    pub(crate) fn run_late(&self, f: impl FnOnce(&Result<T, Error>)) {
        let outcome = self.lock().outcome.take();
        if let Some(outcome) = outcome {
            guarded(|| f(&outcome));
            self.lock().outcome = Some(outcome);
        }
        let mut slot = self.lock();
        slot.busy -= 1;
        slot.tell_watchers();
        let waker = slot.waker.take();
        drop(slot);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Where results tell, by position, that they are settled.
pub(crate) struct Watch {
    settled: Mutex<VecDeque<usize>>,
    changed: Condvar,
}

impl Watch {
    pub(crate) fn new() -> Arc<Watch> {
        Arc::new(Watch {
            settled: Mutex::new(VecDeque::new()),
            changed: Condvar::new(),
        })
    }

    /// The result at `position` is settled.
    pub(crate) fn settled(&self, position: usize) {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(position);
        self.changed.notify_all();
    }

    /// The next position told, waiting until `deadline` at most.
    pub(crate) fn next(&self, deadline: Option<Instant>) -> Option<usize> {
        let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(position) = settled.pop_front() {
                return Some(position);
            }
            settled = wait_until(&self.changed, settled, deadline)?;
        }
    }
}

/// The result of an asynchronous call: `map_async`, `starmap_async` or
/// `apply_async`.
///
/// Wait for it with [`get`](AsyncResult::get) or
/// [`get_timeout`](AsyncResult::get_timeout), poll it with
/// [`ready`](AsyncResult::ready), or `.await` it: it is a [`Future`] that
/// blocks no executor thread. Attach [`callback`](AsyncResult::callback) and
/// [`error_callback`](AsyncResult::error_callback) to be called once, on the
/// pool's result thread, when it completes.
///
/// If the pool is terminated or dropped first, the result is
/// [`Error::Terminated`]: it never hangs.
///
/// ```
/// # use pool_runtime::prelude::*;
/// # use pool_runtime::task;
/// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
/// # #[pool_runtime::main]
/// # fn main() -> Result<(), pool_runtime::Error> {
/// # let pool = Pool::new()?;
/// let mut pending = pool.starmap_async(task!(power), [(2, 3), (3, 2)])?;
/// // ... other work ...
/// assert_eq!(pending.get_timeout(std::time::Duration::from_secs(2))?, [8, 9]);
/// # Ok(()) }
/// ```
#[must_use = "an AsyncResult dropped unread, with no callback, cancels its call"]
pub struct AsyncResult<T> {
    pub(crate) shared: Arc<ResultCell<T>>,
    pub(crate) driver: Sender<Control>,
    /// Its call in the scheduler, to cancel it.
    pub(crate) call: Option<CallHandle>,
}

/// What an [`AsyncResult`] needs to cancel its call.
pub(crate) struct CallHandle {
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) job: u64,
    pub(crate) kill_on_drop: bool,
}

impl<T> Drop for AsyncResult<T> {
    /// Dropped unread with no callback, nobody can see the outcome: the
    /// call's chunks that no worker started are withdrawn (and its running
    /// items stopped, with [`Call::cancel_on_drop`](crate::Call::cancel_on_drop)).
    fn drop(&mut self) {
        let unread = {
            let slot = self.shared.lock();
            !(slot.taken || slot.outcome.is_some() || slot.completing || slot.busy > 0)
                && slot.callbacks.is_empty()
        };
        if unread && let Some(call) = &self.call {
            call.scheduler.cancel(call.job, call.kill_on_drop);
            let _ = self.driver.send(Control::Forget(call.job));
        }
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = self.shared.lock();
        let ready = slot.outcome.is_some() || slot.taken || slot.busy > 0 || slot.completing;
        f.debug_struct("AsyncResult")
            .field("ready", &ready)
            .finish()
    }
}

impl<T: Send + 'static> AsyncResult<T> {
    /// Waits for the result and returns it.
    ///
    /// # Errors
    ///
    /// The call's error (the first failing item, [`Error::Terminated`], ...),
    /// or [`Error::AlreadyRetrieved`] if a
    /// [`get_timeout`](AsyncResult::get_timeout) already returned it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.apply_async(task!(power), (2, 10))?;
    /// assert_eq!(pending.get()?, 1024);
    /// # Ok(()) }
    /// ```
    pub fn get(self) -> Result<T, Error> {
        match self.shared.wait_settled(None) {
            Some(mut slot) => take(&mut slot),
            None => Err(Error::AlreadyRetrieved),
        }
    }

    /// Waits at most `limit` for the result.
    ///
    /// # Errors
    ///
    /// [`Error::WaitTimeout`] if the result is not ready in time; it stays
    /// retrievable, so call again. Otherwise as [`get`](AsyncResult::get);
    /// once returned, the outcome is gone and a later call gives
    /// [`Error::AlreadyRetrieved`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut pending = pool.apply_async(task!(nap), 500)?;
    /// // Not ready after 1 ms: `Error::WaitTimeout`, and the result stays retrievable.
    /// assert!(matches!(pending.get_timeout(Duration::from_millis(1)), Err(Error::WaitTimeout(_))));
    /// assert_eq!(pending.get_timeout(Duration::from_secs(10))?, 500);
    /// assert!(matches!(pending.get_timeout(Duration::ZERO), Err(Error::AlreadyRetrieved)));
    /// # Ok(()) }
    /// ```
    pub fn get_timeout(&mut self, limit: Duration) -> Result<T, Error> {
        match self.shared.wait_settled(Some(Instant::now() + limit)) {
            Some(mut slot) => take(&mut slot),
            None => Err(Error::WaitTimeout(limit)),
        }
    }

    /// Waits until the result is ready.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.apply_async(task!(nap), 50)?;
    /// pending.wait();
    /// assert!(pending.ready());
    /// assert_eq!(pending.successful(), Some(true));
    /// assert_eq!(pending.get()?, 50);
    /// # Ok(()) }
    /// ```
    pub fn wait(&self) {
        drop(self.shared.wait_settled(None));
    }

    /// Waits at most `limit`; returns whether the result is ready.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.apply_async(task!(nap), 500)?;
    /// assert!(!pending.wait_timeout(Duration::from_millis(1)));
    /// assert!(pending.wait_timeout(Duration::from_secs(10)));
    /// # Ok(()) }
    /// ```
    pub fn wait_timeout(&self, limit: Duration) -> bool {
        self.shared
            .wait_settled(Some(Instant::now() + limit))
            .is_some()
    }

    /// Whether the call completed (successfully or not).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.apply_async(task!(nap), 500)?;
    /// assert!(!pending.ready()); // half a second to go
    /// pending.wait();
    /// assert!(pending.ready());
    /// # Ok(()) }
    /// ```
    pub fn ready(&self) -> bool {
        let slot = self.shared.lock();
        slot.outcome.is_some() || slot.taken || slot.busy > 0
    }

    /// Whether the call completed successfully; `None` while it runs or
    /// after the outcome was taken.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// # #[task] fn fail(x: u64) -> u64 { panic!("no {x}") }
    /// let good = pool.apply_async(task!(square), 3)?;
    /// let bad = pool.apply_async(task!(fail), 3)?;
    /// good.wait();
    /// bad.wait();
    /// assert_eq!((good.successful(), bad.successful()), (Some(true), Some(false)));
    /// assert!(matches!(bad.get(), Err(Error::TaskPanicked { .. })));
    /// # Ok(()) }
    /// ```
    pub fn successful(&self) -> Option<bool> {
        self.shared.lock().outcome.as_ref().map(Result::is_ok)
    }

    /// Calls `f` with the result once the call succeeds, on the pool's
    /// result thread (never the caller's). Keep it short: it delays other
    /// async results. A panic in it is caught and reported on stderr.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let pending = pool.apply_async(task!(square), 12)?.callback(move |v: &u64| {
    ///     let _ = tx.send(*v);
    /// });
    /// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).ok(), Some(144));
    /// assert_eq!(pending.get()?, 144); // the value is still there
    /// # Ok(()) }
    /// ```
    pub fn callback(self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        self.register(move |outcome| {
            if let Ok(value) = outcome {
                f(value);
            }
        })
    }

    /// Calls `f` with the error once the call fails, on the pool's result
    /// thread (never the caller's). A panic in it is caught and reported.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// # #[task] fn fail(x: u64) -> u64 { panic!("no {x}") }
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let pending = pool.apply_async(task!(fail), 3)?.error_callback(move |e| {
    ///     let _ = tx.send(e.to_string());
    /// });
    /// let message = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    /// assert!(message.contains("panicked"), "{message}");
    /// assert!(pending.get().is_err());
    /// # Ok(()) }
    /// ```
    pub fn error_callback(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.register(move |outcome| {
            if let Err(err) = outcome {
                f(err);
            }
        })
    }

    /// Cancels the call: its queued items are dropped, and items running
    /// are stopped by killing their workers, which are replaced (the only
    /// way to stop arbitrary code). The result is then
    /// `Err(`[`Error::Cancelled`]`)`, and nothing of the call is delivered
    /// afterwards: its error callbacks get `Cancelled`, on the result
    /// thread. Returns whether anything was still pending: `false` if the
    /// call had completed (its outcome stays) or was cancelled already.
    ///
    /// Under the MPI backend, ranks are not replaced, so an item already
    /// running on one finishes (its result is dropped).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let long = pool.map_async(task!(nap), [60_000; 10])?;
    /// assert!(long.cancel()); // both workers killed and replaced
    /// assert!(!long.cancel()); // nothing left to cancel
    /// assert!(matches!(long.get(), Err(Error::Cancelled)));
    /// assert_eq!(pool.apply(task!(square), 7)?, 49); // at once, not in a minute
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self) -> bool {
        let callbacks = {
            let mut slot = self.shared.lock();
            if slot.taken || slot.outcome.is_some() || slot.completing || slot.busy > 0 {
                return false;
            }
            // The scheduler first, under this lock (no outcome lands
            // meanwhile): a call it no longer knows has ended (completed,
            // cancelled by `cancel_all`, terminated), and the result thread
            // settles it with that outcome.
            if let Some(call) = &self.call
                && !call.scheduler.cancel(call.job, true)
            {
                return false;
            }
            slot.outcome = Some(Err(Error::Cancelled));
            let callbacks = std::mem::take(&mut slot.callbacks);
            if callbacks.is_empty() {
                slot.tell_watchers();
                let waker = slot.waker.take();
                drop(slot);
                self.shared.ready.notify_all();
                if let Some(waker) = waker {
                    waker.wake();
                }
            } else {
                // `get` waits for the error callbacks, run on the result thread.
                slot.busy += 1;
            }
            callbacks
        };
        if let Some(call) = &self.call {
            let _ = self.driver.send(Control::Forget(call.job));
        }
        if !callbacks.is_empty() {
            let shared = Arc::clone(&self.shared);
            self.on_result_thread(move || {
                shared.run_late(move |outcome| {
                    for f in callbacks {
                        guarded(|| f(outcome));
                    }
                })
            });
        }
        true
    }

    /// Runs `f` on the result thread: here if this is it (a callback
    /// runs: it must not wait for itself), else queued to it, or here if
    /// it is gone.
    fn on_result_thread(&self, f: impl FnOnce() + Send + 'static) {
        if ON_RESULT_THREAD.with(Cell::get) {
            f();
            return;
        }
        // Runs even if the result thread is gone: dropping an undelivered
        // message runs it too, so `get` never waits for it in vain.
        let late = Late(Some(Box::new(f)));
        if let Err(crossbeam_channel::SendError(Control::Run(mut late))) =
            self.driver.send(Control::Run(late))
        {
            late.run();
        }
    }

    /// Asks `watch` to be told, with `position`, once this result is settled.
    pub(crate) fn watch(&self, watch: &Arc<Watch>, position: usize) {
        let mut slot = self.shared.lock();
        slot.watchers.retain(|(w, _)| w.strong_count() > 0);
        slot.watchers.push((Arc::downgrade(watch), position));
        slot.tell_watchers();
    }

    /// Whether `get` would return at once.
    pub(crate) fn settled(&self) -> bool {
        self.shared.lock().settled()
    }

    fn register(self, f: impl FnOnce(&Result<T, Error>) + Send + 'static) -> Self {
        {
            let mut slot = self.shared.lock();
            if slot.taken {
                drop(slot);
                return self;
            }
            if slot.outcome.is_none() && slot.busy == 0 {
                slot.callbacks.push(Box::new(f));
                drop(slot);
                return self;
            }
            // Already complete: run it on the driver thread; `get` waits for it.
            slot.busy += 1;
        }
        let shared = Arc::clone(&self.shared);
        self.on_result_thread(move || shared.run_late(f));
        self
    }
}

pub(crate) fn take<T>(slot: &mut Slot<T>) -> Result<T, Error> {
    match slot.outcome.take() {
        Some(outcome) => {
            slot.taken = true;
            outcome
        }
        None => Err(Error::AlreadyRetrieved),
    }
}

/// `.await` an [`AsyncResult`] in async code, on any executor; the waiting
/// happens on the pool's result thread, not the executor's.
///
/// ```
/// # use pool_runtime::prelude::*;
/// # use pool_runtime::task;
/// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
/// async fn two_calls(pool: &Pool) -> Result<u64, Error> {
///     let a = pool.apply_async(task!(power), (2, 10))?;
///     let b = pool.apply_async(task!(power), (3, 3))?;
///     Ok(a.await? + b.await?)
/// }
///
/// #[pool_runtime::main]
/// fn main() -> Result<(), Error> {
///     let pool = Pool::builder().processes(2).build()?;
///     // tokio's `block_on`, or any other executor's, does the same.
///     assert_eq!(block_on(two_calls(&pool))?, 1024 + 27);
///     Ok(())
/// }
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     use std::sync::Arc;
/// #     use std::task::{Context, Poll, Wake};
/// #     struct Unpark(std::thread::Thread);
/// #     impl Wake for Unpark {
/// #         fn wake(self: Arc<Self>) { self.0.unpark() }
/// #     }
/// #     let waker = Arc::new(Unpark(std::thread::current())).into();
/// #     let mut cx = Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop {
/// #         if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #         std::thread::park();
/// #     }
/// # }
/// ```
impl<T: Send + 'static> Future for AsyncResult<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.shared.lock();
        if slot.settled() {
            return Poll::Ready(take(&mut slot));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
