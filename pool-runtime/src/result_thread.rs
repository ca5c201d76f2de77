//! The pool's result thread: it receives the scheduler's events for async
//! calls, decodes them, completes each [`AsyncResult`] (waking a waiting
//! thread or task) and runs the callbacks, each under `catch_unwind`: a
//! panicking callback is reported on stderr and changes nothing else.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use crossbeam_channel::{Receiver, Sender, select};
use pool_core::Task;

use crate::async_result::{AsyncResult, CallHandle, ResultCell, Slot};
use crate::error::Error;
use crate::in_order::InOrder;
use crate::run::{Detached, JobGuard, event_batch};
use crate::scheduler::{Event, Routed};

pub(crate) fn guarded(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        let message = crate::error::panic_message(&*payload);
        eprintln!("pool-runtime: a result callback panicked: {message}");
    }
}

/// A typed async call, seen by the driver.
pub(crate) trait Tracked: Send {
    /// Handles one event; returns whether the call is complete.
    fn on_event(&mut self, event: Event) -> bool;
    /// Ends the call with `err`.
    fn fail(&mut self, err: Error);
}

/// Collects the results of one async call of task `T`, then finishes them
/// into `R` (a `Vec` for the map family, one value for `apply_async`).
struct Collect<T: Task, R> {
    shared: Arc<ResultCell<R>>,
    results: InOrder<T::Output>,
    items: usize,
    finish: fn(Vec<T::Output>) -> Option<R>,
    _guard: JobGuard,
}

impl<T: Task, R: Send + 'static> Collect<T, R> {
    /// Runs the callbacks, then publishes the outcome and wakes waiters.
    fn complete(&mut self, outcome: Result<R, Error>) {
        loop {
            let callbacks = {
                let mut slot = self.shared.lock();
                if slot.outcome.is_some() || slot.taken {
                    return;
                }
                if slot.callbacks.is_empty() {
                    slot.outcome = Some(outcome);
                    slot.completing = false;
                    slot.tell_watchers();
                    let waker = slot.waker.take();
                    drop(slot);
                    self.shared.ready.notify_all();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                    return;
                }
                slot.completing = true;
                std::mem::take(&mut slot.callbacks)
            };
            // Outside the lock; callbacks registered meanwhile run next round.
            for f in callbacks {
                guarded(|| f(&outcome));
            }
        }
    }
}

impl<T: Task, R: Send + 'static> Tracked for Collect<T, R> {
    fn on_event(&mut self, event: Event) -> bool {
        let batch = match event_batch::<T>(event) {
            Ok(batch) => batch,
            Err(err) => {
                self.fail(err);
                return true;
            }
        };
        for (index, result) in batch {
            match result {
                Err(err) => {
                    self.fail(err);
                    return true;
                }
                Ok(value) => self.results.put(index, value),
            }
        }
        if self.results.len() == self.items {
            let results = std::mem::replace(&mut self.results, InOrder::with_capacity(0));
            let outcome = results
                .finish(self.items)
                .ok()
                .and_then(self.finish)
                .ok_or_else(|| Error::Broken {
                    reason: "an async result lost its value".into(),
                    source: None,
                });
            self.complete(outcome);
            return true;
        }
        false
    }

    fn fail(&mut self, err: Error) {
        self.complete(Err(err));
    }
}

pub(crate) enum Control {
    Add(u64, Box<dyn Tracked>),
    /// The call was cancelled: stop tracking it.
    Forget(u64),
    Run(Late),
    Stop,
}

/// A callback registered after completion: run by the result thread, or,
/// if that thread is gone, wherever the message is dropped.
pub(crate) struct Late(pub(crate) Option<Box<dyn FnOnce() + Send>>);

impl Late {
    pub(crate) fn run(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for Late {
    fn drop(&mut self) {
        self.run();
    }
}

/// The pool's result thread for async calls.
pub(crate) struct Driver {
    events: Sender<Routed>,
    control: Sender<Control>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Driver {
    pub(crate) fn start() -> Result<Driver, Error> {
        let (events, events_rx) = crossbeam_channel::unbounded();
        let (control, control_rx) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("pool-results".into())
            .spawn(move || drive(events_rx, control_rx))
            .map_err(Error::Spawn)?;
        Ok(Driver {
            events,
            control,
            thread: Some(thread),
        })
    }

    /// Where async calls' scheduler events go.
    pub(crate) fn sink(&self) -> Sender<Routed> {
        self.events.clone()
    }

    /// Starts tracking a detached call of task `T`.
    pub(crate) fn track<T: Task, R: Send + 'static>(
        &self,
        detached: Detached,
        finish: fn(Vec<T::Output>) -> Option<R>,
    ) -> AsyncResult<R> {
        let shared = Arc::new(ResultCell {
            slot: Mutex::new(Slot {
                outcome: None,
                taken: false,
                busy: 0,
                waker: None,
                callbacks: Vec::new(),
                completing: false,
                watchers: Vec::new(),
            }),
            ready: Condvar::new(),
        });
        let job = detached.guard.job;
        let call = CallHandle {
            scheduler: Arc::clone(&detached.guard.shared),
            job,
            kill_on_drop: detached.guard.kill_on_drop,
        };
        let mut collect = Collect::<T, R> {
            shared: Arc::clone(&shared),
            results: InOrder::with_capacity(detached.items),
            items: detached.items,
            finish,
            _guard: detached.guard,
        };
        // A call whose input was not all read (the pool terminated while it
        // was submitted) fails as a whole, even if the items it sent
        // succeed; and so does one with an item that could not be sent.
        let failed = detached
            .stopped
            .or_else(|| detached.local.into_iter().next().map(|(_, err)| err));
        if let Some(err) = failed {
            collect.fail(err);
        } else if detached.items == 0 {
            let outcome = finish(Vec::new()).ok_or_else(|| Error::Broken {
                reason: "an async call had no input".into(),
                source: None,
            });
            collect.complete(outcome);
        } else {
            let _ = self.control.send(Control::Add(job, Box::new(collect)));
        }
        AsyncResult {
            shared,
            driver: self.control.clone(),
            call: Some(call),
        }
    }

    /// Whether the calling thread is this result thread (a callback runs).
    pub(crate) fn is_current(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|t| t.thread().id() == thread::current().id())
    }

    /// Completes every call still pending with [`Error::Terminated`] and
    /// stops the thread. Call after the scheduler shut down. From a
    /// callback (on this very thread), the thread stops once the callback
    /// returns, without being waited for.
    pub(crate) fn stop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

thread_local! {
    /// Set on a pool's result thread (where callbacks run).
    pub(crate) static ON_RESULT_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn drive(events: Receiver<Routed>, control: Receiver<Control>) {
    ON_RESULT_THREAD.with(|on| on.set(true));
    let mut pending: HashMap<u64, Box<dyn Tracked>> = HashMap::new();
    // Events can overtake the `Add` of their job: keep them until it comes.
    // Jobs are added in id order, so events of a job at or below the last
    // added id that is not pending belong to a finished call: dropped.
    let mut early: HashMap<u64, Vec<Event>> = HashMap::new();
    let mut last_added: Option<u64> = None;
    let handle = |pending: &mut HashMap<u64, Box<dyn Tracked>>,
                  early: &mut HashMap<u64, Vec<Event>>,
                  job: u64,
                  event: Event| {
        match pending.get_mut(&job) {
            Some(call) => {
                if call.on_event(event) {
                    pending.remove(&job);
                }
            }
            None => early.entry(job).or_default().push(event),
        }
    };
    let forget_finished = |early: &mut HashMap<u64, Vec<Event>>, last_added: Option<u64>| {
        if let Some(last) = last_added {
            early.retain(|&job, _| job > last);
        }
    };
    loop {
        select! {
            recv(events) -> msg => match msg {
                Ok((job, event)) => {
                    handle(&mut pending, &mut early, job, event);
                    forget_finished(&mut early, last_added);
                }
                Err(_) => break,
            },
            recv(control) -> msg => match msg {
                Ok(Control::Add(job, mut call)) => {
                    let mut done = false;
                    for event in early.remove(&job).unwrap_or_default() {
                        if !done {
                            done = call.on_event(event);
                        }
                    }
                    if !done {
                        pending.insert(job, call);
                    }
                    last_added = Some(job);
                    forget_finished(&mut early, last_added);
                }
                Ok(Control::Forget(job)) => {
                    pending.remove(&job);
                    early.remove(&job);
                }
                Ok(Control::Run(mut late)) => late.run(),
                Ok(Control::Stop) | Err(_) => break,
            },
        }
    }
    // The scheduler has shut down: its last events are in the channel.
    while let Ok((job, event)) = events.try_recv() {
        handle(&mut pending, &mut early, job, event);
    }
    while let Ok(msg) = control.try_recv() {
        match msg {
            Control::Add(job, call) => {
                pending.insert(job, call);
            }
            Control::Forget(job) => {
                pending.remove(&job);
            }
            Control::Run(mut late) => late.run(),
            Control::Stop => {}
        }
    }
    for (_, mut call) in pending {
        call.fail(Error::Terminated);
    }
}
