//! The scheduler: a pool's policy, with no process code. It keeps the jobs
//! (calls), their queued chunks, what each worker has in flight, and
//! decides what goes where ([`dispatch`]: which worker, how many chunks
//! ahead at its [`pace`], taking chunks back from behind a long item),
//! when an item has run past its timeout, what a worker's death means for
//! the items it held (blame, requeue, retry), and when a replacement is
//! due. Calls receive their results as [`events`].
//!
//! It sees workers only through [`crate::backend`]: a [`Backend`] starts
//! and replaces them and reports through [`Events`] (implemented here);
//! each worker is held as a [`Link`]. All state sits in one [`State`]
//! behind a mutex; whichever thread has news (a caller submitting, a
//! backend's reader delivering frames, the supervisor) takes the lock,
//! updates the state and dispatches. The supervisor thread starts
//! replacements (with backoff after a failed start), enforces timeouts,
//! takes chunks back from behind long items, and notices exits.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pool_core::ProtocolError;
use pool_core::wire::{self, ToWorker};

use crate::backend::handshake::Launch;
use crate::backend::{Backend, Events, Link, RemoteStart};
pub(crate) use crate::backend::{Body, OneItem};
use crate::error::{Error, ExitCause};
use crate::logging::{emitter, pool_event};
use crate::stats::{PoolStats, WorkerStats};
use crate::sys::now_ns;

mod cancel;
mod dispatch;
mod events;
mod frames;
mod pace;
mod retire;

use dispatch::{kill, stall_limit, sub_chunk};
use events::Outbox;
pub(crate) use events::{Event, EventQueue, Routed, Sink};
pub(crate) use pace::{Pace, ahead};

/// Fixed settings of a pool.
pub(crate) struct Config {
    pub(crate) processes: usize,
    /// Chunks a worker holds at once: one running, the rest queued in its socket.
    pub(crate) depth: usize,
    /// Items a worker runs before it is replaced.
    pub(crate) max_tasks: Option<usize>,
    /// How long a worker lives before it is replaced (see [`retire`]).
    pub(crate) max_lifetime: Option<Duration>,
    /// The backend that starts workers and replaces lost ones; `None`
    /// when `remote` attaches workers that already exist.
    pub(crate) backend: Option<Arc<dyn Backend>>,
    /// A backend whose workers already exist (MPI ranks): it attaches them
    /// (see [`Scheduler::attach`]), and a worker that is lost is not replaced.
    pub(crate) remote: Option<RemoteStart>,
    /// The handshake and initializer every worker gets.
    pub(crate) launch: Launch,
}

/// Failed starts in a row of a slot, with no worker running, after which
/// the pool is broken (about 150 ms of retries).
const BREAK_AFTER: u32 = 5;

/// Encoded work for one worker: `count` items of one job.
pub(crate) struct Chunk {
    pub(crate) job: u64,
    pub(crate) task: u64,
    /// Index within the job of the first item.
    pub(crate) first: usize,
    pub(crate) count: u32,
    pub(crate) body: Arc<Body>,
    /// How many times these items' workers died under them already.
    pub(crate) attempt: u32,
    /// Log records of an earlier run of these items, by a worker that
    /// died, may wait on the [emitting thread](crate::logging::emitter)
    /// until this ticket is done: their results and failures follow it.
    pub(crate) after: Option<usize>,
}

/// A registered call, as the scheduler sees it.
pub(crate) struct JobSpec {
    /// The task's full path, for errors.
    pub(crate) task: &'static str,
    /// Where its consumer receives events.
    pub(crate) events: Sink,
    /// Per-item time limit.
    pub(crate) timeout: Option<Duration>,
    /// An `imap` iterator: its consumer may stop pulling at any time, so
    /// `join` does not wait for it.
    pub(crate) lazy: bool,
    /// Runs an item gets on fresh workers after its worker died under it.
    pub(crate) retries: u32,
    /// Extra runs, in place, for an item that panics.
    pub(crate) panic_retries: u32,
}

struct InFlight {
    id: u64,
    chunk: Chunk,
    received: u32,
    sent: Instant,
    /// When it was sent, on the coarse clock items are timed with: no
    /// item of it can have run longer than since then.
    sent_ns: u64,
    /// The job's per-item timeout, kept here so a cancelled job's stuck
    /// item is still killed.
    timeout: Option<Duration>,
}

/// How long a graceful shutdown waits for a subscriber that takes no
/// record from tasks at all (it waits as long as records are taken).
const EMIT_STALL: Duration = Duration::from_secs(1);

struct Worker {
    pid: u32,
    /// How it is reached, stopped, and watched (its kind).
    link: Link,
    in_flight: VecDeque<InFlight>,
    /// How many chunks of each task are in `in_flight` (kept beside it, so
    /// that dispatch asks "only this task?" without a scan).
    tasks: Vec<(u64, usize)>,
    /// The reader saw the end; the pid may be reaped: never signal it again.
    dying: bool,
    /// Killed by the pool for exceeding this timeout.
    timed_out: Option<Duration>,
    /// Killed by the pool to stop a cancelled call's running item: nothing
    /// it ran is blamed, the other calls' chunks it held are requeued.
    cancelled: bool,
    /// A cancelled call's chunk it runs, to be stopped once the results of
    /// the chunks before it are in (it may hold them in its buffer: a kill
    /// now would lose them, and those items would run again).
    cancel_at: Option<u64>,
    /// When its last chunk completed.
    last_done: Instant,
    /// The task of its last completed chunk, and its time per item on
    /// that task: the pace at which it is given more of it.
    pace: Option<(u64, Pace)>,
    /// Items it may still be given (`max_tasks_per_child`).
    budget: Option<usize>,
    /// When it is to retire (`max_lifetime`).
    retire_at: Option<Instant>,
    /// Deliveries of its frames waiting behind log records on the
    /// emitting thread: its later results of chunks up to `records_upto`
    /// (the last chunk whose records it handed there) follow them.
    emitting: Arc<AtomicUsize>,
    records_upto: u64,
    /// It is being replaced, and why: it gets no more work.
    retiring: Option<retire::Retirement>,
}

pub(crate) struct State {
    /// Wakes the supervisor, so it watches at its fast pace as soon as
    /// chunks may need taking back (see [`State::dispatch`]).
    wake: Sender<Supervise>,
    /// The supervisor was woken for that and has not seen it end yet.
    watching_steals: bool,
    workers: Vec<Option<Worker>>,
    queue: VecDeque<Chunk>,
    jobs: HashMap<u64, JobSpec>,
    next_job: u64,
    next_chunk: u64,
    closed: bool,
    terminated: bool,
    live_readers: usize,
    /// Failed starts in a row, per slot (reset when one starts).
    start_failures: Vec<u32>,
    /// Counters per slot.
    stats: Vec<WorkerStats>,
    /// Why the pool cannot go on, and the error that caused it.
    broken: Option<(String, Arc<Error>)>,
    /// The slot that wins the next tie in [`State::dispatch`].
    turn: usize,
    /// [`Scheduler::emitting`], for the pool's own events.
    emitting: Arc<AtomicUsize>,
    /// Worker threads still starting their worker: shutdown waits for them.
    launching: usize,
    /// Threads waiting on [`Scheduler::changed`]: the hot paths signal it only
    /// when there are some (a signal is a system call even with nobody
    /// waiting).
    waiters: usize,
}

enum Supervise {
    /// Attach a remote backend's workers (local ones are started by
    /// [`Scheduler::start`] itself).
    Initial(Sender<Result<(), Error>>),
    Respawn(usize),
    /// Start a replacement for the slot once this time has passed.
    RespawnAt(usize, Instant),
    /// Re-check whether timeouts need watching.
    Wake,
    Shutdown,
}

/// A pool's shared core.
pub(crate) struct Scheduler {
    state: Mutex<State>,
    changed: Condvar,
    pub(crate) config: Config,
    supervisor: Sender<Supervise>,
    /// The automatic chunk size each task's last call settled on, by task
    /// id: the next call of the task starts from it.
    pub(crate) chunk_sizes: Mutex<HashMap<u64, usize>>,
    /// Set once shutdown begins (read without the lock).
    stopping: AtomicBool,
    /// Set once `join` begins: calls read no more input (read without the
    /// lock).
    joining: AtomicBool,
    /// Threads that made events under the lock and send them after it:
    /// shutdown waits for them before it ends the jobs, so that a job's
    /// end never overtakes its last results (sent, or handed to the
    /// emitting thread, where they may come after it: the call has ended).
    delivering: AtomicUsize,
    /// Deliveries of this pool waiting behind log records on the
    /// [emitting thread](crate::logging::emitter).
    emitting: Arc<AtomicUsize>,
}

impl Scheduler {
    /// Starts the supervisor and the workers; returns once all are ready.
    pub(crate) fn start(config: Config) -> Result<(Arc<Scheduler>, thread::JoinHandle<()>), Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let emitting = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Scheduler {
            state: Mutex::new(State {
                wake: tx.clone(),
                watching_steals: false,
                workers: (0..config.processes).map(|_| None).collect(),
                queue: VecDeque::new(),
                jobs: HashMap::new(),
                next_job: 0,
                next_chunk: 1,
                closed: false,
                terminated: false,
                live_readers: 0,
                start_failures: vec![0; config.processes],
                stats: vec![WorkerStats::default(); config.processes],
                broken: None,
                turn: 0,
                emitting: Arc::clone(&emitting),
                launching: 0,
                waiters: 0,
            }),
            changed: Condvar::new(),
            config,
            supervisor: tx.clone(),
            chunk_sizes: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            joining: AtomicBool::new(false),
            delivering: AtomicUsize::new(0),
            emitting,
        });
        let sup = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("pool-supervisor".into())
            .spawn(move || sup.supervise(rx))
            .map_err(Error::Spawn)?;
        let started = match &shared.config.backend {
            // Started from here (by the backend's threads), so no other
            // thread of the pool needs to be involved (or woken).
            Some(backend) => {
                let slots: Vec<usize> = (0..shared.config.processes).collect();
                let events: Arc<dyn Events> = Arc::clone(&shared) as Arc<dyn Events>;
                backend.start_all(&slots, &events)
            }
            None => {
                let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
                let _ = tx.send(Supervise::Initial(reply_tx));
                reply_rx.recv().unwrap_or(Err(Error::Terminated))
            }
        };
        match started {
            Ok(()) => Ok((shared, handle)),
            Err(err) => {
                shared.shutdown(false, handle);
                Err(err)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single step), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a job; its events go to `events`.
    pub(crate) fn register(&self, spec: JobSpec) -> Result<u64, Error> {
        let mut st = self.lock();
        // A pool joined (closed, then stopped once its work was done)
        // refuses new work as closed; a terminated one as terminated.
        let joined = self.joining.load(Ordering::Acquire);
        if st.terminated && !joined {
            return Err(Error::Terminated);
        }
        if st.closed {
            return Err(Error::Closed);
        }
        if let Some((reason, source)) = &st.broken {
            return Err(Error::Broken {
                reason: reason.clone(),
                source: Some(Arc::clone(source)),
            });
        }
        let id = st.next_job;
        st.next_job += 1;
        if spec.timeout.is_some() {
            // Let the supervisor start watching at its fast pace.
            let _ = self.supervisor.send(Supervise::Wake);
        }
        st.jobs.insert(id, spec);
        Ok(id)
    }

    /// Queues a chunk of a registered job.
    /// A chunk's encoded arguments as the workers will be sent them: for
    /// local workers, large ones in shared memory (see [`Body`]).
    pub(crate) fn body(&self, bytes: Vec<u8>) -> Arc<Body> {
        Arc::new(if self.config.remote.is_none() {
            Body::for_local(bytes)
        } else {
            Body::heap(bytes)
        })
    }

    /// `value` encoded as a chunk body of its own: for local workers, into
    /// shared memory once its encoding passes `spill_at` bytes (and is
    /// large enough to be worth it); else on the heap.
    pub(crate) fn encode_one<A: serde::Serialize>(
        &self,
        value: &A,
        limit: usize,
        spill_at: usize,
    ) -> Result<OneItem, pool_core::encode::EncodeError> {
        if self.config.remote.is_some() {
            let mut body = Vec::new();
            return wire::push_arg(&mut body, value, limit).map(|()| OneItem::Heap(body));
        }
        Body::encode_one(value, limit, spill_at)
    }

    pub(crate) fn submit(&self, chunk: Chunk) -> Result<(), Error> {
        let mut st = self.lock();
        if st.terminated {
            return Err(Error::Terminated);
        }
        if !st.jobs.contains_key(&chunk.job) {
            // Ended by `cancel_all` (or the pool broke) while it read input.
            return Err(match &st.broken {
                Some((reason, source)) => Error::Broken {
                    reason: reason.clone(),
                    source: Some(Arc::clone(source)),
                },
                None => Error::Cancelled,
            });
        }
        st.queue.push_back(chunk);
        st.dispatch(&self.config);
        Ok(())
    }

    /// A worker start begins (see [`Events::launching`]).
    fn launch_begin(&self) -> bool {
        let mut st = self.lock();
        if st.terminated {
            return false;
        }
        st.launching += 1;
        true
    }

    /// Waits for a change of the state (see [`State::waiters`]).
    fn wait_changed<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        st.waiters += 1;
        let mut st = match timeout {
            None => self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.changed
                    .wait_timeout(st, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        st.waiters -= 1;
        st
    }

    /// Stops accepting new jobs.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Whether the pool is shutting down (or has): no work is accepted.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// `join` begins: calls read no more of their input (an `imap` whose
    /// consumer keeps pulling would otherwise keep the pool busy for ever),
    /// and what they pulled runs to its end.
    pub(crate) fn begin_join(&self) {
        self.joining.store(true, Ordering::Release);
    }

    /// Whether a call may still read input: not once the pool is shutting
    /// down, nor a `lazy` one (an `imap`) once it is joining (a blocking
    /// call was submitted whole before the join, as in Python, and runs to
    /// its end).
    pub(crate) fn takes_input(&self, lazy: bool) -> bool {
        let joined = lazy && self.joining.load(Ordering::Acquire);
        !(joined || self.is_stopping())
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        let st = self.lock();
        st.closed || st.terminated
    }

    /// Waits until no chunk is queued or running and every call but the
    /// lazy iterators has finished; with `from_results_thread` (a callback
    /// joining the pool), async calls count as finished once their work is
    /// done, since that thread would deliver them. Then waits until the
    /// events made so far have reached their calls (some may wait behind
    /// log records on the [emitting thread](crate::logging::emitter), for
    /// as long as the subscriber takes).
    pub(crate) fn wait_idle(&self, from_results_thread: bool) {
        let mut st = self.lock();
        while !st.terminated
            && (st.jobs.values().any(|j| {
                let delivered_here = from_results_thread && matches!(j.events, Sink::Channel(_));
                !(j.lazy || delivered_here)
            }) || !st.queue.is_empty()
                || st.workers.iter().flatten().any(|w| !w.in_flight.is_empty()))
        {
            st = self.wait_changed(st, None);
        }
        drop(st);
        emitter::wait_for(&self.emitting, None);
    }

    /// Ends every worker and thread. `graceful`: idle workers get an exit
    /// frame, busy ones are killed, and records from tasks still waiting
    /// to be emitted are waited for while the subscriber takes them
    /// (see [`EMIT_STALL`]); otherwise all are killed. Returns when
    /// every worker process has been reaped.
    pub(crate) fn shutdown(&self, graceful: bool, supervisor: thread::JoinHandle<()>) {
        let mut outbox = Outbox::default();
        self.stopping.store(true, Ordering::Release);
        {
            let mut st = self.lock();
            st.terminated = true;
            st.queue.clear();
            for (id, job) in st.jobs.drain() {
                outbox.push(&job.events, id, Event::Fatal(Error::Terminated));
            }
            for worker in st.workers.iter_mut().flatten() {
                if graceful && worker.in_flight.is_empty() {
                    let header = wire::encode_header(&ToWorker::Exit);
                    worker.send(
                        header,
                        Arc::new(Body::empty()),
                        self.config.launch.max_frame,
                    );
                } else if !worker.dying {
                    kill(worker);
                }
            }
        }
        if let Some(backend) = &self.config.backend {
            backend.abort_starts();
        }
        self.changed.notify_all();
        while self.delivering.load(Ordering::Acquire) > 0 {
            thread::yield_now();
        }
        // The program may end next: the records of work done, and the
        // results behind them, go first, unless the subscriber is stuck.
        let emitting = graceful && emitter::wait_for(&self.emitting, Some(EMIT_STALL));
        outbox.deliver(self, false);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut st = self.lock();
        while st.live_readers > 0 || st.launching > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for worker in st.workers.iter_mut().flatten() {
                    if !worker.dying {
                        kill(worker);
                    }
                }
                st = self.wait_changed(st, None);
            } else {
                st = self.wait_changed(st, Some(left));
            }
        }
        drop(st);
        let _ = self.supervisor.send(Supervise::Shutdown);
        let _ = supervisor.join();
        if emitting {
            // And the pool's own events, of the workers' ends among them.
            emitter::wait_for(&self.emitting, Some(EMIT_STALL));
        }
        // An idle program keeps no shared memory for large chunks.
        crate::backend::trim_bodies();
    }

    /// A snapshot of the counters and queue.
    pub(crate) fn stats(&self) -> PoolStats {
        let st = self.lock();
        let in_flight_items = st
            .workers
            .iter()
            .flatten()
            .flat_map(|w| &w.in_flight)
            .map(|f| (f.chunk.count - f.received) as usize)
            .sum();
        PoolStats {
            workers: st.stats.clone(),
            queued_items: st.queue.iter().map(|c| c.count as usize).sum(),
            in_flight_items,
        }
    }

    /// Process ids of the live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.lock()
            .workers
            .iter()
            .flatten()
            .filter(|w| !w.dying)
            .map(|w| w.pid)
            .collect()
    }

    // ----- supervisor -----

    fn supervise(self: Arc<Self>, rx: Receiver<Supervise>) {
        // Replacements to start later (after a failed start), by due time.
        let mut delayed: Vec<(Instant, usize)> = Vec::new();
        // When the next worker reaches its lifetime.
        let mut next_retirement: Option<Instant> = None;
        loop {
            // Fast ticks while an item with a timeout runs; slow ones to
            // notice workers that exited while something kept their channel open.
            // And fast ones while an idle worker may take chunks waiting
            // behind a long item.
            let tick = {
                let mut st = self.lock();
                st.watching_steals = st.may_steal();
                if st.watching_steals {
                    stall_limit().min(Duration::from_millis(10))
                } else if st
                    .workers
                    .iter()
                    .flatten()
                    .any(|w| w.in_flight.iter().any(|f| f.timeout.is_some()))
                {
                    Duration::from_millis(10)
                } else {
                    Duration::from_millis(100)
                }
            };
            let now = Instant::now();
            let tick = delayed
                .iter()
                .map(|&(due, _)| due.saturating_duration_since(now))
                .chain(next_retirement.map(|due| due.saturating_duration_since(now)))
                .fold(tick, Duration::min);
            let msg = match rx.recv_timeout(tick) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match msg {
                Some(Supervise::Initial(reply)) => {
                    let started = match self.config.remote {
                        Some(attach_all) => attach_all(&(Arc::clone(&self) as Arc<dyn Events>)),
                        None => Ok(()),
                    };
                    let _ = reply.send(started);
                }
                Some(Supervise::Respawn(slot)) => self.respawn(slot),
                Some(Supervise::RespawnAt(slot, due)) => delayed.push((due, slot)),
                Some(Supervise::Shutdown) => return,
                Some(Supervise::Wake) | None => {}
            }
            let now = Instant::now();
            delayed.retain(|&(due, slot)| {
                if due <= now {
                    self.respawn(slot);
                }
                due > now
            });
            self.enforce_timeouts();
            next_retirement = self.retire_expired();
            self.rebalance();
            self.notice_exits();
        }
    }

    /// Moves chunks waiting behind long items to idle workers.
    fn rebalance(&self) {
        let mut st = self.lock();
        if st.may_steal() {
            st.dispatch(&self.config);
        }
    }

    /// Cuts the channel of any local worker that has exited, so its reader
    /// sees the end even if a process the task forked keeps the channel open.
    fn notice_exits(&self) {
        let st = self.lock();
        for worker in st.workers.iter().flatten().filter(|w| !w.dying) {
            worker.link.notice_exit();
        }
    }

    /// Starts a replacement for the worker of `slot` without waiting for
    /// it: the supervisor goes on enforcing timeouts and noticing exits
    /// while the replacement starts (and runs its initializer).
    fn respawn(self: &Arc<Self>, slot: usize) {
        if let Some(backend) = &self.config.backend {
            let events: Arc<dyn Events> = Arc::clone(self) as Arc<dyn Events>;
            backend.respawn(slot, &events);
        }
    }

    /// A replacement worker failed to start: it is tried again after a
    /// delay that doubles with each failure in a row (10 ms to 1 s). While
    /// other workers run, the pool goes on with them; once no worker runs
    /// and the slot failed [`BREAK_AFTER`] times in a row, the pool is
    /// broken: its calls end with [`Error::Broken`], which keeps `err`.
    fn replacement_failed(&self, slot: usize, err: Error) {
        let mut st = self.lock();
        if st.terminated {
            return;
        }
        st.stats[slot].start_failures += 1;
        st.start_failures[slot] += 1;
        let failures = st.start_failures[slot];
        let message = err.to_string();
        pool_event!(
            counted by &st.emitting,
            WARN,
            slot,
            failures,
            error = %message,
            "a replacement pool worker failed to start"
        );
        let running = st.workers.iter().flatten().any(|w| !w.dying) || st.launching > 0;
        let mut outbox = Outbox::default();
        if !running && failures >= BREAK_AFTER {
            let reason = format!(
                "no worker is running and its replacement failed to start {failures} times in a row: {err}"
            );
            let source = Arc::new(err);
            st.broken = Some((reason.clone(), Arc::clone(&source)));
            st.queue.clear();
            for (id, job) in st.jobs.drain() {
                let error = Error::Broken {
                    reason: reason.clone(),
                    source: Some(Arc::clone(&source)),
                };
                outbox.push(&job.events, id, Event::Fatal(error));
            }
        } else {
            let delay = Duration::from_millis(10)
                .saturating_mul(1 << (failures - 1).min(7))
                .min(Duration::from_secs(1));
            let _ = self
                .supervisor
                .send(Supervise::RespawnAt(slot, Instant::now() + delay));
        }
        let counted = outbox.count(self);
        drop(st);
        outbox.deliver(self, counted);
        self.changed.notify_all();
    }

    /// A worker thread is done starting its worker (attached or failed).
    fn launch_done(&self) {
        let mut st = self.lock();
        st.launching -= 1;
        let wake = st.waiters > 0;
        drop(st);
        if wake {
            self.changed.notify_all();
        }
    }

    fn attach_link(&self, slot: usize, pid: u32, link: Link) -> bool {
        let mut st = self.lock();
        if st.terminated {
            return false;
        }
        st.live_readers += 1;
        st.start_failures[slot] = 0;
        st.stats[slot].pid = Some(pid);
        pool_event!(counted by &st.emitting, DEBUG, pid, slot, "pool worker started");
        st.workers[slot] = Some(Worker {
            pid,
            link,
            in_flight: VecDeque::new(),
            tasks: Vec::new(),
            dying: false,
            timed_out: None,
            cancelled: false,
            cancel_at: None,
            last_done: Instant::now(),
            pace: None,
            budget: self.config.max_tasks,
            retire_at: self.retire_at(),
            retiring: None,
            emitting: Arc::new(AtomicUsize::new(0)),
            records_upto: 0,
        });
        st.dispatch(&self.config);
        true
    }

    /// Kills every worker whose running item, wherever its chunk sits in
    /// the worker's pipeline, has run longer than its call's timeout.
    fn enforce_timeouts(&self) {
        let now = now_ns();
        let mut st = self.lock();
        for worker in st.workers.iter_mut().flatten() {
            if worker.dying || worker.timed_out.is_some() {
                continue;
            }
            if !worker.in_flight.iter().any(|f| f.timeout.is_some()) {
                continue;
            }
            let Some((flight, running)) = worker.running() else {
                continue;
            };
            let Some(timeout) = flight.timeout else {
                continue;
            };
            if now.saturating_sub(running.started_ns) > timeout.as_nanos() as u64 {
                worker.timed_out = Some(timeout);
                kill(worker);
            }
        }
    }
}

impl Events for Scheduler {
    fn launch(&self) -> &Launch {
        &self.config.launch
    }

    fn processes(&self) -> usize {
        self.config.processes
    }

    fn is_stopping(&self) -> bool {
        Scheduler::is_stopping(self)
    }

    fn launching(&self) -> bool {
        self.launch_begin()
    }

    fn launched(&self) {
        self.launch_done();
    }

    fn start_failed(&self, slot: usize, err: Error) {
        self.replacement_failed(slot, err);
    }

    fn attach(&self, slot: usize, pid: u32, link: Link) -> bool {
        self.attach_link(slot, pid, link)
    }

    fn deliver_all(
        &self,
        slot: usize,
        pid: u32,
        frames: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        Scheduler::deliver_all(self, slot, pid, frames)
    }

    fn pulled(&self, slot: usize, pid: u32, bytes: u64) {
        let mut st = self.lock();
        if st.workers[slot].as_ref().is_some_and(|w| w.pid == pid) {
            st.stats[slot].pulled_bytes += bytes;
        }
    }

    fn mark_dying(&self, slot: usize) {
        Scheduler::mark_dying(self, slot);
    }

    fn detach(&self, slot: usize, pid: u32, cause: ExitCause, protocol: Option<ProtocolError>) {
        Scheduler::detach(self, slot, pid, cause, protocol);
    }
}
