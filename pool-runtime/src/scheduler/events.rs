//! What a call's consumer receives from the scheduler, and how: events
//! routed by job to a channel (async calls) or to one call's own queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::Scheduler;
use crate::error::Error;
use crate::logging::emit::Pending;
use crate::logging::emitter;

/// An event with the id of the job it belongs to.
pub(crate) type Routed = (u64, Event);

/// What a job's consumer receives.
pub(crate) enum Event {
    /// Results of items `first .. first + count`, in `frame[body_at..]`.
    Results {
        first: usize,
        count: u32,
        frame: Vec<u8>,
        body_at: usize,
        pid: u32,
        /// Set on a chunk's last results: how long its worker took for it,
        /// and how many items it had (for automatic chunk sizes).
        chunk_time: Option<(Duration, u32)>,
    },
    /// Item `index` failed outside the task (its worker died or timed out).
    Failed { index: usize, error: Error },
    /// The whole job ended (pool terminated, broken).
    Fatal(Error),
}

/// Where a job's events go.
#[derive(Clone)]
pub(crate) enum Sink {
    /// A consumer shared by several jobs (the async driver, which selects
    /// over this channel and its control channel).
    Channel(Sender<Routed>),
    /// One call's own consumer (shared without touching the sender count:
    /// the queue closes when the job's own handle goes).
    Queue(Arc<QueueTx>),
}

impl Sink {
    /// Delivers `events` of `job`, in order.
    pub(super) fn send(&self, job: u64, events: Vec<Event>) {
        match self {
            Sink::Channel(tx) => {
                for event in events {
                    let _ = tx.send((job, event));
                }
            }
            Sink::Queue(tx) => tx.push(events),
        }
    }
}

/// The events of one call, waited for by its consumer.
///
/// A mutex and a condition variable rather than a channel: the consumer
/// sleeps at once instead of spinning and yielding the CPU that the worker
/// and the reader thread need, and a reader delivers every frame of one
/// read with one lock and at most one wake-up.
pub(crate) struct EventQueue {
    inner: Mutex<QueueInner>,
    ready: Condvar,
    /// Set while events are queued: lets the consumer watch for them
    /// without taking the lock.
    queued: std::sync::atomic::AtomicBool,
}

struct QueueInner {
    events: VecDeque<Event>,
    /// The [`QueueTx`] is gone: once the queue is empty, no event can
    /// come any more.
    closed: bool,
    /// The consumer sleeps on the condition variable: only then does a
    /// sender pay for a wake-up (a system call even with nobody waiting).
    sleeping: bool,
}

/// The sending side of an [`EventQueue`]; dropping it closes the queue.
pub(crate) struct QueueTx(Arc<EventQueue>);

impl EventQueue {
    /// A queue and its first sender.
    pub(crate) fn new() -> (Arc<EventQueue>, QueueTx) {
        let queue = Arc::new(EventQueue {
            inner: Mutex::new(QueueInner {
                events: VecDeque::new(),
                closed: false,
                sleeping: false,
            }),
            ready: Condvar::new(),
            queued: std::sync::atomic::AtomicBool::new(false),
        });
        let tx = QueueTx(Arc::clone(&queue));
        (queue, tx)
    }

    fn lock(&self) -> MutexGuard<'_, QueueInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether events are queued now (without taking the lock).
    pub(crate) fn has_events(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// Moves every queued event to `out`, waiting for one if there is none
    /// (first spinning up to `spin`); `false` once none is queued and the
    /// sender is gone.
    pub(crate) fn recv_all(&self, out: &mut VecDeque<Event>, spin: Duration) -> bool {
        if !spin.is_zero() && !self.queued.load(Ordering::Acquire) {
            let start = Instant::now();
            while !self.queued.load(Ordering::Acquire) && start.elapsed() < spin {
                std::hint::spin_loop();
            }
        }
        let mut inner = self.lock();
        loop {
            if !inner.events.is_empty() {
                out.append(&mut inner.events);
                self.queued.store(false, Ordering::Release);
                return true;
            }
            if inner.closed {
                return false;
            }
            inner.sleeping = true;
            inner = self.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
            inner.sleeping = false;
        }
    }
}

impl QueueTx {
    pub(super) fn push(&self, events: Vec<Event>) {
        let mut inner = self.0.lock();
        inner.events.extend(events);
        let wake = inner.sleeping;
        drop(inner);
        // Set after the unlock, so that a spinning consumer seeing it does
        // not then block on the lock. A late store after the consumer took
        // the events only costs it one look at an empty queue.
        self.0.queued.store(true, Ordering::Release);
        if wake {
            self.0.ready.notify_one();
        }
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.closed = true;
        if inner.sleeping {
            drop(inner);
            self.0.ready.notify_one();
        }
    }
}

/// Deliveries made after the state lock is released: consecutive events
/// of one job travel together.
#[derive(Default)]
pub(super) struct Outbox(Vec<(Sink, u64, Vec<Event>)>);

impl Outbox {
    /// Counts this outbox as [`Scheduler::delivering`] (call under the lock);
    /// [`Outbox::deliver`] sends it and ends the count.
    pub(super) fn count(&self, shared: &Scheduler) -> bool {
        let counted = !self.0.is_empty();
        if counted {
            shared.delivering.fetch_add(1, Ordering::AcqRel);
        }
        counted
    }

    /// Sends the events at once, and ends the count taken by
    /// [`Outbox::count`].
    pub(super) fn deliver(self, shared: &Scheduler, counted: bool) {
        self.send();
        if counted {
            shared.delivering.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Hands the events to the [emitting thread](emitter), to be sent
    /// after `logs` (records of the frames that made them) and after what
    /// waits there already; ends the count taken by [`Outbox::count`].
    /// `worker` counts the hand-offs of the worker whose frames these
    /// are, and [`Scheduler::emitting`] those of the pool, until done.
    pub(super) fn deliver_after(
        self,
        shared: &Scheduler,
        logs: Pending,
        worker: Option<Arc<AtomicUsize>>,
        counted: bool,
    ) {
        let pool = Arc::clone(&shared.emitting);
        pool.fetch_add(1, Ordering::AcqRel);
        if let Some(worker) = &worker {
            worker.fetch_add(1, Ordering::AcqRel);
        }
        emitter::hand_off(
            logs,
            Some(Box::new(move || {
                self.send();
                if let Some(worker) = worker {
                    worker.fetch_sub(1, Ordering::AcqRel);
                }
                pool.fetch_sub(1, Ordering::AcqRel);
            })),
        );
        if counted {
            shared.delivering.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn push(&mut self, sink: &Sink, job: u64, event: Event) {
        match self.0.last_mut() {
            Some((_, last, events)) if *last == job => events.push(event),
            _ => self.0.push((sink.clone(), job, vec![event])),
        }
    }

    fn send(self) {
        for (sink, job, events) in self.0 {
            sink.send(job, events);
        }
    }
}
