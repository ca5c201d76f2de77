//! One call's engine: pulls input lazily into chunks within a bounded
//! window, submits them, and decodes results as they come back.

use std::any::TypeId;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use pool_core::encode::EncodeError;
use pool_core::wire::{self, Items};
use pool_core::{IntoArgs, Task, TaskFailure};

use crate::error::Error;
use crate::progress::{ProgressHook, Reporter};
use crate::scheduler::{Body, Chunk, Event, EventQueue, JobSpec, OneItem, Routed, Scheduler, Sink};

/// A chunk is closed early once its encoded arguments reach this size, so
/// large payloads stream instead of piling up in one frame.
const CHUNK_BYTES: usize = 4 << 20;
/// Items whose arguments took at least this many bytes (in the previous
/// chunk) are sent one per chunk, each encoded straight into shared memory
/// for local workers (no copy through the heap).
const LARGE_ITEM: usize = 1 << 20;
/// Encoded arguments a call keeps ahead of its workers, at most (beyond
/// one chunk per worker): large items are not all encoded at once.
const WINDOW_BYTES: usize = 64 << 20;
/// The adaptive chunk size aims at chunks of about this duration per worker.
const TARGET_CHUNK_TIME: Duration = Duration::from_millis(5);
/// Chunks per worker an `imap` keeps pulled ahead of its consumer, at least.
const LAZY_WINDOW: usize = 8;
/// Chunks per worker a blocking call keeps pulled ahead, at least.
const BASE_DEPTH: usize = 32;
/// Encoded arguments per worker a call may pull ahead beyond its base
/// window, for the pipeline of very short chunks.
const DEEP_BYTES: usize = 1 << 20;
/// The largest automatic chunk.
const MAX_AUTO_CHUNK: usize = 1 << 17;
/// How long a one-item call watches for its result before sleeping.
const SPIN_ONE: Duration = Duration::from_micros(100);
/// Spinning only pays with a CPU for it beside the worker's.
static SPIN_WORTH: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
/// How much the automatic chunk size may grow per measurement.
const RAMP: usize = 32;
/// How far the automatic chunk size shrinks at the end of a call.
const TAIL_SHRINK: usize = 16;

/// The first automatic chunk size of a call of task `id`: one item, or,
/// if an earlier call of the task settled on a size, one ramp step below
/// it. A call then reaches its size after one measurement instead of
/// several, while a task that became much slower since still starts on
/// chunks well below the old size.
fn first_auto_chunk(shared: &Scheduler, id: u64) -> usize {
    let sizes = shared.chunk_sizes.lock();
    let last = sizes.ok().and_then(|sizes| sizes.get(&id).copied());
    last.map_or(1, |size| (size / RAMP).max(1))
}

/// Options of one call.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallOptions {
    pub(crate) chunksize: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) retry_panics: bool,
    /// Draw a progress bar (feature `progress`).
    pub(crate) progress_bar: bool,
    /// Dropping the call unfinished kills the workers running its items
    /// (otherwise they finish them, and only its waiting chunks are dropped).
    pub(crate) cancel_on_drop: bool,
}

/// How a call's results are consumed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// A blocking call (or an async one): runs to completion.
    Blocking,
    /// An `imap` iterator: yields in input order.
    Ordered,
    /// An `imap_unordered` iterator: yields in completion order.
    Unordered,
}

/// A decoded result with its index in the call.
pub(crate) type Indexed<O> = (usize, Result<O, Error>);

/// Cancels its job when dropped: chunks not started are dropped (or taken
/// back from the workers), late results ignored, and, with `kill_on_drop`,
/// items running are stopped.
pub(crate) struct JobGuard {
    pub(crate) shared: Arc<Scheduler>,
    pub(crate) job: u64,
    pub(crate) kill_on_drop: bool,
    /// The shared values whose handles the call's arguments carry: kept
    /// until the call is done.
    pins: crate::shared::Pins,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.shared.cancel(self.job, self.kill_on_drop);
    }
}

/// A call whose input was all submitted; its results go to another consumer.
pub(crate) struct Detached {
    pub(crate) guard: JobGuard,
    /// How many items were submitted.
    pub(crate) items: usize,
    /// Items that failed before being sent (arguments that could not be encoded).
    pub(crate) local: Vec<(usize, Error)>,
    /// Why the input was not all read (the pool terminated meanwhile): the
    /// whole call fails with it.
    pub(crate) stopped: Option<Error>,
}

pub(crate) struct Run<T: Task, I> {
    shared: Arc<Scheduler>,
    guard: JobGuard,
    /// `None` when results go to a shared consumer (async calls).
    rx: Option<Arc<EventQueue>>,
    /// Events received and not yet handled.
    pending: VecDeque<Event>,
    input: Option<I>,
    /// The first item, encoded (`u32 length ++ postcard`) and counted in
    /// `pulled`, waiting to start the first chunk.
    first: Option<Vec<u8>>,
    /// Items pulled from the input so far.
    pulled: usize,
    /// Items whose result came back (or failed).
    delivered: usize,
    /// Items the consumer is done with; the window is counted from here.
    released: usize,
    /// An `imap`-family call: it stops reading input once the pool joins.
    lazy: bool,
    /// Whether the consumer releases items itself, in input order (`imap`);
    /// otherwise every delivered item counts as released.
    ordered: bool,
    /// Window size, in chunks, at least: it also covers every worker's
    /// pipeline of chunks as short as the workers' pace makes them.
    window: usize,
    /// The workers' time per item on this call's chunks.
    pace: crate::scheduler::Pace,
    fixed: Option<usize>,
    /// Python's cap when the input length is known.
    cap: usize,
    auto: usize,
    /// A worker's time per item in the last chunk that completed, not yet
    /// used to size a chunk.
    item_time: Option<Duration>,
    /// Encoded bytes per item in the last chunk, to size the next.
    item_bytes: usize,
    local: VecDeque<(usize, Error)>,
    fatal: Option<Error>,
    /// The pool stopped before the input was all read: yielded once every
    /// item pulled so far was delivered.
    stopped: Option<Error>,
    done: bool,
    reporter: Reporter,
    _task: PhantomData<fn() -> T>,
}

impl<T, I> Run<T, I>
where
    T: Task,
    I: Iterator,
    I::Item: IntoArgs<T>,
{
    pub(crate) fn new(
        shared: &Arc<Scheduler>,
        items: I,
        options: CallOptions,
        mode: Mode,
        sink: Option<crossbeam_channel::Sender<Routed>>,
        hook: Option<ProgressHook>,
    ) -> Result<Self, Error> {
        let ordered = mode == Mode::Ordered;
        if options.chunksize == Some(0) {
            return Err(Error::InvalidSetting("chunksize must be at least 1".into()));
        }
        let (tx, rx) = match sink {
            Some(tx) => (Sink::Channel(tx), None),
            None => {
                let (rx, tx) = EventQueue::new();
                (Sink::Queue(Arc::new(tx)), Some(rx))
            }
        };
        let lazy = matches!(mode, Mode::Ordered | Mode::Unordered);
        let job = shared.register(JobSpec {
            task: T::NAME,
            events: tx,
            timeout: options.timeout,
            lazy,
            retries: options.retries,
            panic_retries: if options.retry_panics {
                options.retries
            } else {
                0
            },
        })?;
        let guard = JobGuard {
            shared: Arc::clone(shared),
            job,
            kill_on_drop: options.cancel_on_drop,
            pins: Default::default(),
        };
        let processes = shared.config.processes;
        let total = match items.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        let reporter = Reporter::new(hook, total, options.progress_bar);
        let cap = match items.size_hint() {
            (low, Some(high)) if low == high => {
                low.div_ceil(processes * 4).clamp(1, MAX_AUTO_CHUNK)
            }
            _ => MAX_AUTO_CHUNK,
        };
        Ok(Run {
            shared: Arc::clone(shared),
            guard,
            rx,
            pending: VecDeque::new(),
            input: Some(items),
            first: None,
            pulled: 0,
            delivered: 0,
            released: 0,
            lazy,
            ordered,
            // Blocking calls hold a few chunks per worker more than `imap`,
            // which keeps memory small; both grow to the workers' pipeline
            // for very short chunks (`window_for`).
            window: match mode {
                Mode::Blocking => processes * (shared.config.depth.min(BASE_DEPTH) + 2),
                Mode::Ordered | Mode::Unordered => processes * LAZY_WINDOW,
            },
            pace: crate::scheduler::Pace::default(),
            fixed: options.chunksize,
            cap,
            auto: first_auto_chunk(shared, T::ID),
            item_time: None,
            item_bytes: 0,
            local: VecDeque::new(),
            fatal: None,
            stopped: None,
            done: false,
            reporter,
            _task: PhantomData,
        })
    }

    /// Marks items before `upto` as consumed, freeing window room (ordered consumers).
    pub(crate) fn release(&mut self, upto: usize) {
        self.released = self.released.max(upto);
    }

    /// Items pulled from the input so far.
    pub(crate) fn pulled(&self) -> usize {
        self.pulled
    }

    /// The input's length, when its iterator knows it exactly.
    pub(crate) fn len_hint(&self) -> Option<usize> {
        self.reporter.total()
    }

    /// Pulls and submits the whole input at once, in chunks of the
    /// requested size or Python's automatic size; results go to the sink.
    pub(crate) fn submit_all(mut self) -> Result<Detached, Error> {
        self.window = usize::MAX;
        if self.fixed.is_none() {
            self.auto = self.cap;
        }
        self.fill()?;
        Ok(Detached {
            guard: self.guard,
            items: self.pulled,
            local: self.local.into(),
            stopped: self.stopped.take(),
        })
    }

    fn next_chunk_size(&mut self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        if let Some(per_item) = self.item_time.take() {
            // Sized from the workers' own pace (how long a chunk took them,
            // not how fast results reach this thread, which a busy caller
            // or a gap between chunks would distort).
            let target = TARGET_CHUNK_TIME.as_nanos() / per_item.as_nanos().max(1);
            // A small chunk's time is mostly the round trip, so the
            // estimate errs low: follow it in large steps, or the first
            // tenth of a big call runs on chunks far too small.
            self.auto = (target as usize).clamp(1, self.auto.saturating_mul(RAMP));
            if let Ok(mut sizes) = self.shared.chunk_sizes.lock() {
                sizes.insert(T::ID, self.auto);
            }
        }
        let size = self.auto.min(self.cap);
        match self.reporter.total() {
            // Near the end, smaller chunks, so that the workers finish
            // together instead of one idling while another runs a last
            // large chunk.
            Some(total) => {
                let left = total.saturating_sub(self.pulled);
                let share = left.div_ceil(2 * self.shared.config.processes);
                size.min(share.max(size / TAIL_SHRINK)).max(1)
            }
            None => size,
        }
    }

    /// The window, in chunks of `size` items: beyond the base window, it
    /// grows to cover the pipeline the pool keeps per worker for chunks
    /// under 1 ms (about 1 ms of their work, at most `chunks_in_flight`
    /// chunks and [`DEEP_BYTES`] of encoded arguments), never beyond: input
    /// is not read ahead of what the workers can take.
    fn window_for(&self, size: usize) -> usize {
        let pipeline = match self.pace.average() {
            Some(per_item) => {
                let chunk_time = per_item
                    .checked_mul(u32::try_from(size).unwrap_or(u32::MAX))
                    .unwrap_or(Duration::MAX);
                let chunk_bytes = self.item_bytes.max(1).saturating_mul(size);
                let depth = crate::scheduler::ahead(chunk_time)
                    .min(self.shared.config.depth)
                    .min(DEEP_BYTES / chunk_bytes);
                self.shared.config.processes * (depth + 2)
            }
            None => 0,
        };
        let chunks = self.window.max(pipeline);
        if self.window == usize::MAX {
            return chunks;
        }
        // Large items: at most about WINDOW_BYTES of encoded arguments
        // waiting, but always one chunk queued behind each worker's.
        let chunk_bytes = self.item_bytes.max(1).saturating_mul(size);
        let by_bytes = (WINDOW_BYTES / chunk_bytes).max(self.shared.config.processes + 1);
        chunks.min(by_bytes)
    }

    /// Pulls and submits chunks while the window has room.
    fn fill(&mut self) -> Result<(), Error> {
        let max_item = self.shared.config.launch.max_frame.saturating_sub(64);
        loop {
            if self.input.is_none() {
                return Ok(());
            }
            if !self.shared.takes_input(self.lazy) {
                // Joined or terminated: what was pulled is delivered (or
                // failed), and the rest of the input is not read.
                self.input = None;
                self.stopped = Some(Error::Terminated);
                return Ok(());
            }
            let size = self.next_chunk_size();
            if !self.ordered {
                self.released = self.delivered;
            }
            if self.pulled - self.released >= self.window_for(size).saturating_mul(size) {
                return Ok(());
            }
            let Some(input) = self.input.as_mut() else {
                return Ok(());
            };
            if self.pulled == 0 && self.item_bytes == 0 {
                // The first item is encoded on its own, into shared memory
                // if it turns out large: then it is a chunk of its own;
                // else it starts the first chunk.
                let Some(item) = input.next() else {
                    self.input = None;
                    continue;
                };
                self.fill_one(item.into_args(), max_item, LARGE_ITEM, true);
                if self.first.is_none() {
                    if self.results_waiting() {
                        return Ok(());
                    }
                    continue;
                }
            } else if self.item_bytes >= LARGE_ITEM {
                let Some(item) = input.next() else {
                    self.input = None;
                    continue;
                };
                self.fill_one(item.into_args(), max_item, 0, false);
                if self.results_waiting() {
                    return Ok(());
                }
                continue;
            }
            let Some(input) = self.input.as_mut() else {
                return Ok(());
            };
            // Sized from the previous chunk's bytes per item: no chain of
            // reallocations while encoding.
            let mut body = Vec::with_capacity(
                self.item_bytes
                    .saturating_mul(size)
                    .saturating_add(64)
                    .min(CHUNK_BYTES + (CHUNK_BYTES >> 2)),
            );
            let mut first = self.pulled;
            let mut count = 0u32;
            if let Some(encoded) = self.first.take() {
                first -= 1;
                count = 1;
                body.extend_from_slice(&encoded);
            }
            let mut exhausted = false;
            while (count as usize) < size && body.len() < CHUNK_BYTES {
                let Some(item) = input.next() else {
                    exhausted = true;
                    break;
                };
                let args: T::Args = item.into_args();
                let index = self.pulled;
                self.pulled += 1;
                let mark = body.len();
                let pushed = crate::shared::pinning(&mut self.guard.pins, || {
                    wire::push_arg(&mut body, &args, max_item)
                });
                let failure = pushed.err();
                if failure.is_none() && body.len() > max_item && count > 0 {
                    // The chunk would outgrow a frame: send the items before
                    // this one, and start the next chunk with it.
                    let tail = body.split_off(mark);
                    let head = std::mem::replace(&mut body, tail);
                    let head = self.shared.body(head);
                    let sent = submit::<T>(&self.shared, self.guard.job, first, count, head);
                    if let Err(err) = sent {
                        // Pulled items are failed, in order, with the rest.
                        self.stopped_by(first, count, &err);
                        return Ok(());
                    }
                    first = index;
                    count = 0;
                }
                if let Some(err) = failure {
                    body.truncate(mark);
                    // Items before it in this chunk go first; it stays in order.
                    if count > 0 {
                        self.submit(first, count, std::mem::take(&mut body));
                        if self.stopped.is_some() {
                            // This item too was failed with the rest.
                            return Ok(());
                        }
                    }
                    self.unencodable(index, &err);
                    count = 0;
                    break;
                }
                count += 1;
            }
            if count > 0 {
                self.item_bytes = body.len().div_ceil(count as usize);
                self.submit(first, count, body);
            }
            if exhausted {
                self.input = None;
            }
            if self.results_waiting() {
                // Results first, one chunk for one: a caller that encoded
                // its whole input before decoding any result would leave
                // the workers idle at the end while it decodes the backlog.
                return Ok(());
            }
        }
    }

    /// Encodes `args` (the next index) on its own, into shared memory for
    /// local workers once its encoding passes `spill_at` bytes, and sends
    /// it as a chunk of its own; except, with `may_start`, one that stayed
    /// on the heap, kept in `first` to start the next chunk.
    fn fill_one(&mut self, args: T::Args, max_item: usize, spill_at: usize, may_start: bool) {
        let index = self.pulled;
        self.pulled += 1;
        let shared = &self.shared;
        let encoded = crate::shared::pinning(&mut self.guard.pins, || {
            shared.encode_one(&args, max_item, spill_at)
        });
        let body = match encoded {
            Err(err) => return self.unencodable(index, &err),
            Ok(OneItem::Heap(bytes)) if may_start => {
                self.first = Some(bytes);
                return;
            }
            Ok(OneItem::Heap(bytes)) => self.shared.body(bytes),
            Ok(OneItem::Slab(body)) => Arc::new(body),
        };
        self.item_bytes = body.len();
        if let Err(err) = submit::<T>(&self.shared, self.guard.job, index, 1, body) {
            self.stopped_by(index, 1, &err);
        }
    }

    /// Item `index` could not be encoded: it fails, in its place.
    fn unencodable(&mut self, index: usize, err: &EncodeError) {
        let message = match err {
            EncodeError::TooLarge { limit } => format!(
                "they take more than {limit} bytes, the most one item may take under the frame limit of {} bytes (see PoolBuilder::max_frame_size)",
                self.shared.config.launch.max_frame
            ),
            err => err.to_string(),
        };
        let ty = std::any::type_name::<T::Args>().to_owned();
        let failure = TaskFailure::Unencodable { ty, message };
        let error = Error::Serialization {
            task: T::NAME,
            index,
            failure,
        };
        self.local.push_back((index, error));
        self.delivered += 1;
    }

    /// Whether results wait to be handled by this call's own consumer.
    fn results_waiting(&self) -> bool {
        !self.pending.is_empty() || self.rx.as_ref().is_some_and(|rx| rx.has_events())
    }

    /// Queues a chunk; if the pool stopped meanwhile, its items fail with
    /// the pool's error, and no more input is read.
    fn submit(&mut self, first: usize, count: u32, body: Vec<u8>) {
        let body = self.shared.body(body);
        if let Err(err) = submit::<T>(&self.shared, self.guard.job, first, count, body) {
            self.stopped_by(first, count, &err);
        }
    }

    /// The pool refused items `first .. first + count` with `err`: they,
    /// and every item pulled after them, fail with it; no more input is read.
    fn stopped_by(&mut self, first: usize, count: u32, err: &Error) {
        let error = || match err {
            Error::Closed | Error::Cancelled | Error::Broken { .. } => err.again(),
            _ => Error::Terminated,
        };
        for index in first..self.pulled.max(first + count as usize) {
            self.local.push_back((index, error()));
        }
        self.delivered += self.pulled.max(first + count as usize) - first;
        self.input = None;
        self.stopped.get_or_insert_with(error);
    }

    /// The next results, in completion order; `None` once every item was
    /// delivered; `Some(Err)` once if the whole call failed.
    pub(crate) fn next_batch(&mut self) -> Option<Result<Vec<Indexed<T::Output>>, Error>> {
        let mut batch = Vec::new();
        self.next_with(&mut |index, result| batch.push((index, result)))
            .map(|outcome| outcome.map(|()| batch))
    }

    /// Hands the next results to `sink` as `(index, result)`, in completion
    /// order, without collecting them; `None` once every item was
    /// delivered; `Some(Err)` once if the whole call failed.
    pub(crate) fn next_with(
        &mut self,
        sink: &mut impl FnMut(usize, Result<T::Output, Error>),
    ) -> Option<Result<(), Error>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(err) = self.fatal.take() {
                self.done = true;
                return Some(Err(err));
            }
            if let Err(err) = self.fill() {
                self.done = true;
                return Some(Err(err));
            }
            if let Some((index, err)) = self.local.pop_front() {
                sink(index, Err(err));
                return Some(Ok(()));
            }
            if self.input.is_none() && self.delivered == self.pulled {
                self.done = true;
                self.reporter.finish();
                return self.stopped.take().map(Err);
            }
            if self.pending.is_empty() {
                // A call of one item (`apply`) is all latency: it watches
                // for its result a moment before sleeping, which spares the
                // wake-up of a sleeping thread (tens of µs on a VM). Larger
                // calls sleep at once: the CPUs belong to the workers.
                let spin = if self.reporter.total() == Some(1) && *SPIN_WORTH {
                    SPIN_ONE
                } else {
                    Duration::ZERO
                };
                let live = match &self.rx {
                    Some(rx) => rx.recv_all(&mut self.pending, spin),
                    None => false,
                };
                if !live {
                    self.pending.push_back(Event::Fatal(Error::Terminated));
                }
            }
            let Some(event) = self.pending.pop_front() else {
                continue;
            };
            match event {
                Event::Results {
                    first,
                    count,
                    frame,
                    body_at,
                    pid,
                    chunk_time,
                } => {
                    decode_frame::<T>(first, count, frame, body_at, pid, sink);
                    self.delivered += count as usize;
                    if let Some((took, items)) = chunk_time {
                        self.item_time = Some(took / items.max(1));
                        self.pace.add(took, items);
                    }
                }
                Event::Failed { index, error } => {
                    sink(index, Err(error));
                    self.delivered += 1;
                }
                Event::Fatal(err) => {
                    self.fatal = Some(err);
                    continue;
                }
            }
            self.reporter.update(self.delivered);
            return Some(Ok(()));
        }
    }
}

/// Queues `count` encoded items of `job`, the first being item `first`.
fn submit<T: Task>(
    shared: &Scheduler,
    job: u64,
    first: usize,
    count: u32,
    body: Arc<Body>,
) -> Result<(), Error> {
    shared.submit(Chunk {
        job,
        task: T::ID,
        first,
        count,
        body,
        attempt: 0,
        after: None,
    })
}

/// The results an event carries, or the error that ends the whole call.
pub(crate) fn event_batch<T: Task>(event: Event) -> Result<Vec<Indexed<T::Output>>, Error> {
    match event {
        Event::Results {
            first,
            count,
            frame,
            body_at,
            pid,
            ..
        } => {
            // On the result thread, which serves every async call: a
            // `Deserialize` that panics fails this call, not the thread.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut out = Vec::with_capacity(count as usize);
                decode_frame::<T>(first, count, frame, body_at, pid, &mut |index, result| {
                    out.push((index, result))
                });
                out
            }));
            decoded.map_err(|payload| {
                let message = crate::error::panic_message(&*payload);
                Error::Serialization {
                    task: T::NAME,
                    index: first,
                    failure: TaskFailure::BadOutput {
                        ty: std::any::type_name::<T::Output>().to_owned(),
                        message: format!(
                            "the parent could not decode it: its Deserialize panicked: {message}"
                        ),
                    },
                }
            })
        }
        Event::Failed { index, error } => Ok(vec![(index, Err(error))]),
        Event::Fatal(err) => Err(err),
    }
}

/// Results bodies of at least this size that hold one `Vec<u8>` result
/// become that result (see [`decode_frame`]).
const IN_PLACE_MIN: usize = 64 << 10;

/// Decodes the results body of `frame` (from `body_at`), handing each
/// `(index, result)` to `sink`. A large `Vec<u8>` result alone in its
/// frame is the frame's own buffer, its bytes moved to the front, rather
/// than a copy into a new allocation: the caller writes no fresh pages.
fn decode_frame<T: Task>(
    first: usize,
    count: u32,
    frame: Vec<u8>,
    body_at: usize,
    pid: u32,
    sink: &mut impl FnMut(usize, Result<T::Output, Error>),
) {
    let bytes_out = TypeId::of::<T::Output>() == TypeId::of::<Vec<u8>>();
    let frame = match frame.get(body_at..) {
        Some(body) if bytes_out && count == 1 && body.len() >= IN_PLACE_MIN => {
            let mut items = Items::new(body);
            match items.next_result() {
                Ok(Ok(value)) if items.is_empty() => {
                    let at = body_at + (value.as_ptr() as usize - body.as_ptr() as usize);
                    let len = value.len();
                    match pool_core::decode::bytes_value_in_place::<T::Output>(frame, at, len) {
                        Ok(value) => return sink(first, Ok(value)),
                        Err(frame) => frame,
                    }
                }
                _ => frame,
            }
        }
        _ => frame,
    };
    decode_into::<T>(first, count, frame.get(body_at..).unwrap_or(&[]), pid, sink);
}

/// Decodes a results body, handing each `(index, result)` to `sink`.
fn decode_into<T: Task>(
    first: usize,
    count: u32,
    body: &[u8],
    pid: u32,
    sink: &mut impl FnMut(usize, Result<T::Output, Error>),
) {
    let mut items = Items::new(body);
    for i in 0..count as usize {
        let index = first + i;
        let result = match items.next_result() {
            Err(source) => Err(Error::Protocol { pid, source }),
            Ok(Err(failure)) => Err(Error::from_failure(T::NAME, index, failure)),
            Ok(Ok(bytes)) => {
                pool_core::decode::value_from_bytes::<T::Output>(bytes).map_err(|err| {
                    Error::Serialization {
                        task: T::NAME,
                        index,
                        failure: TaskFailure::BadOutput {
                            ty: std::any::type_name::<T::Output>().to_owned(),
                            message: format!("the parent could not decode it: {err}"),
                        },
                    }
                })
            }
        };
        sink(index, result);
    }
}
