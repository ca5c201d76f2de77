//! The thread that emits what workers' frames had to say, so that a slow
//! or blocked subscriber or logger never holds a thread of the pool.
//!
//! A reader thread keeps the records of a worker's frames ([`Pending`])
//! under the scheduler's lock and says them after it. Said there, a
//! subscriber that blocks (a lock the thread calling `terminate` holds, a
//! full pipe) would hold that reader, and with it the end of the pool: the
//! reader reaps its worker, and shutdown waits for every reader. So the
//! records go to this thread, with the deliveries that must follow them
//! (the results of the same frames: a task's records are seen before its
//! result). While a worker's hand-offs wait here, its later results
//! follow them here too (they may follow records of earlier frames);
//! other results, and whatever ends a call (a failure outside the task,
//! a cancel, terminate), are sent at once by the thread that made them.
//! One thread for the process: records reach the one subscriber in the
//! order they came, so a slow subscriber delays the results behind them,
//! whichever pool they come from, and only those.
//!
//! The pool's own events (a worker died, was killed for a timeout,
//! retired...) are emitted here too ([`later`]): the threads that notice
//! them hold the scheduler's lock, which a blocked subscriber must not
//! hold with them. They follow the records handed off before them.
//!
//! Records waiting here are bounded ([`MAX_QUEUED_RECORDS`],
//! [`MAX_QUEUED_BYTES`]): past that, the records of further frames are
//! dropped and counted, as a worker does when its own buffer is full. The
//! thread ends after [`IDLE`] with nothing to do and starts again on the
//! next hand-off.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::emit::Pending;

/// The most records waiting to be emitted, from every worker.
pub(crate) const MAX_QUEUED_RECORDS: usize = 16 * 1024;
/// The most bytes of records waiting to be emitted (messages and names).
pub(crate) const MAX_QUEUED_BYTES: usize = 16 << 20;
/// How long the thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(5);

/// What a delivery that follows records does.
pub(crate) type Then = Box<dyn FnOnce() + Send>;

/// Records to emit, then what follows them.
type Job = (Pending, Option<Then>);

struct Emitter {
    /// Hand-offs queued and not yet done (read without the lock).
    queued: AtomicUsize,
    /// Hand-offs queued so far: the last one's ticket (see [`handed`]).
    handed: AtomicUsize,
    /// Hand-offs done so far (the thread's progress), in the order queued.
    done: AtomicUsize,
    /// Records queued, and their bytes.
    records: AtomicUsize,
    bytes: AtomicUsize,
    /// The running thread's queue; `None` while no thread runs.
    tx: Mutex<Option<Sender<Job>>>,
}

static EMITTER: Emitter = Emitter {
    queued: AtomicUsize::new(0),
    handed: AtomicUsize::new(0),
    done: AtomicUsize::new(0),
    records: AtomicUsize::new(0),
    bytes: AtomicUsize::new(0),
    tx: Mutex::new(None),
};

fn lock() -> MutexGuard<'static, Option<Sender<Job>>> {
    EMITTER.tx.lock().unwrap_or_else(|p| p.into_inner())
}

/// Emits `pending`, then runs `then`, on the emitting thread, after
/// everything handed off before. Never waits for a subscriber. Records
/// past the bounds are dropped and counted instead.
pub(crate) fn hand_off(mut pending: Pending, then: Option<Then>) {
    let (records, bytes) = pending.size();
    let (records, bytes) = if records > 0
        && (EMITTER.records.load(Ordering::Relaxed) + records > MAX_QUEUED_RECORDS
            || EMITTER.bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES)
    {
        pending.drop_records();
        (0, 0)
    } else {
        (records, bytes)
    };
    let mut tx = lock();
    EMITTER.handed.fetch_add(1, Ordering::AcqRel);
    EMITTER.queued.fetch_add(1, Ordering::AcqRel);
    EMITTER.records.fetch_add(records, Ordering::Relaxed);
    EMITTER.bytes.fetch_add(bytes, Ordering::Relaxed);
    let mut job = (pending, then);
    if let Some(sender) = tx.as_ref() {
        match sender.send(job) {
            Ok(()) => return,
            // The thread ended without clearing its queue (it panicked).
            Err(err) => job = err.into_inner(),
        }
    }
    let (sender, receiver) = crossbeam_channel::unbounded();
    let started = thread::Builder::new()
        .name("pool-log-emitter".to_owned())
        .spawn(move || run(receiver));
    match started {
        Ok(_) => {
            // A new channel: nothing can fail to be received.
            let _ = sender.send(job);
            *tx = Some(sender);
        }
        Err(_) => {
            // No thread: emit here, as without one.
            *tx = None;
            drop(tx);
            finish(job);
        }
    }
}

/// A ticket for everything handed off so far: once [`emitted`] says so,
/// all of it is done (the thread does its hand-offs in the order queued).
pub(crate) fn handed() -> usize {
    EMITTER.handed.load(Ordering::Acquire)
}

/// Whether everything handed off up to `ticket` (see [`handed`]) is done.
pub(crate) fn emitted(ticket: usize) -> bool {
    EMITTER.done.load(Ordering::Acquire) >= ticket
}

/// Runs `event` (one of the pool's own `tracing` events) on the emitting
/// thread, after what waits there: see [`pool_event!`](crate::logging::pool_event).
/// `count` (a pool's hand-offs not yet done, if given) counts it until it
/// ran. A subscriber that panics on it is caught.
pub(crate) fn later(count: Option<Arc<AtomicUsize>>, event: impl FnOnce() + Send + 'static) {
    if let Some(count) = &count {
        count.fetch_add(1, Ordering::AcqRel);
    }
    hand_off(
        Pending::default(),
        Some(Box::new(move || {
            let _ = panic::catch_unwind(AssertUnwindSafe(event));
            if let Some(count) = count {
                count.fetch_sub(1, Ordering::AcqRel);
            }
        })),
    );
}

/// Waits until `count` (the hand-offs of one pool not yet done) is 0;
/// with `stall`, gives up (`false`) once the emitting thread has finished
/// nothing for that long: a subscriber that blocks, not one that is slow.
pub(crate) fn wait_for(count: &AtomicUsize, stall: Option<Duration>) -> bool {
    let mut seen = EMITTER.done.load(Ordering::Acquire);
    let mut since = Instant::now();
    while count.load(Ordering::Acquire) > 0 {
        // A marker behind them: once it runs, so did they.
        let (done, wait) = crossbeam_channel::bounded(1);
        hand_off(
            Pending::default(),
            Some(Box::new(move || {
                let _ = done.send(());
            })),
        );
        loop {
            match wait.recv_timeout(Duration::from_millis(20)) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = EMITTER.done.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if stall.is_some_and(|stall| since.elapsed() >= stall) {
                return false;
            }
        }
    }
    true
}

fn run(receiver: Receiver<Job>) {
    loop {
        match receiver.recv_timeout(IDLE) {
            Ok(job) => finish(job),
            Err(RecvTimeoutError::Timeout) => {
                // Under the lock no hand-off is being queued: with none
                // queued, the next one starts a new thread.
                let mut tx = lock();
                if EMITTER.queued.load(Ordering::Acquire) == 0 {
                    *tx = None;
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn finish((pending, then): Job) {
    let (records, bytes) = pending.size();
    // A subscriber that panics loses its records, not the deliveries
    // behind them (its panic message is printed by the panic hook).
    let _ = panic::catch_unwind(AssertUnwindSafe(|| pending.emit()));
    EMITTER.records.fetch_sub(records, Ordering::Relaxed);
    EMITTER.bytes.fetch_sub(bytes, Ordering::Relaxed);
    if let Some(then) = then {
        then();
    }
    EMITTER.queued.fetch_sub(1, Ordering::AcqRel);
    EMITTER.done.fetch_add(1, Ordering::Release);
}
