//! The worker side: [`init`](crate::init), the worker loop and panic capture;
//! how its frames reach the pool is in [`out`].

use std::cell::{Cell, RefCell};
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pool_core::registry::{Batch, Halt, Registry, TaskEntry};
use pool_core::wire::{self, FromWorker, Items, Retire, ToWorker};
use pool_core::{ProtocolError, TaskFailure};

use crate::backend::shm::{Progress, now_ns};
use crate::backend::slab::{MappedBody, Mappings, SlabRef};
use crate::memory::MemoryBound;
use crate::sys;

mod out;
use out::{ResultsOut, SharedOut};

/// The environment variable that tells a process it is a worker.
pub(crate) const WORKER_ENV: &str = "POOL_RUNTIME_WORKER";

/// What a worker needs to know about its parent.
///
/// The channel is two socket pairs, one per direction, so that a side
/// reading frames never wakes the other side's reader (a stream socket
/// wakes its peer's waiters whenever its buffer drains). The worker's stdin
/// is its end of the first; its end of the second, the descriptor of its
/// progress page and, under a test harness, of the real stdout come first
/// on it (see [`send_fds`](crate::sys::send_fds)). Nothing but stdin is inherited, so std starts workers
/// with `posix_spawn` (no copy of the parent's page tables) and no
/// descriptor of a worker can leak into a process started meanwhile.
pub(crate) struct WorkerEnv {
    /// A copy of the real stdout comes after the progress page.
    pub(crate) stdout: bool,
    pub(crate) parent: u32,
}

impl WorkerEnv {
    pub(crate) fn encode(&self) -> String {
        format!("v2:{}:{}", u8::from(self.stdout), self.parent)
    }

    /// Parses the variable's value; `None` if it is not ours.
    pub(crate) fn decode(value: &str) -> Option<WorkerEnv> {
        let mut parts = value.split(':');
        if parts.next()? != "v2" {
            return None;
        }
        let stdout = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let parent = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(WorkerEnv { stdout, parent })
    }
}

/// Set by `init()` in a parent: its `main` reaches `init()`, so workers will too.
pub(crate) static INIT_CALLED: AtomicBool = AtomicBool::new(false);
/// Set in a worker process once the worker loop runs.
pub(crate) static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Exit codes a worker uses when it cannot go on.
pub(crate) const EXIT_PROTOCOL: i32 = 70;
const EXIT_PARENT_GONE: i32 = 71;

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
    /// The message of the panic being unwound, if one is.
    static UNWINDING: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let location = info
                .location()
                .map_or_else(|| "<unknown>".to_owned(), ToString::to_string);
            let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
            let this = format!("{message}, at {location}");
            if let Some(first) = UNWINDING.with(|u| u.borrow_mut().replace(this)) {
                // A panic before the task's first one was caught: in a
                // `Drop` while it unwinds, the process aborts next, and the
                // pool reports SIGABRT. Both messages go to stderr, so that
                // it says which.
                eprintln!(
                    "pool-runtime worker {}: a task panicked ({first}), then panicked again before that panic was caught; a panic in a `Drop` while unwinding aborts the worker",
                    std::process::id()
                );
                default(info);
            }
            let backtrace = std::backtrace::Backtrace::capture();
            let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
                .then(|| backtrace.to_string());
            PANIC.with(|p| *p.borrow_mut() = Some((location, backtrace)));
        } else {
            default(info);
        }
    }));
}

fn panic_failure(payload: Box<dyn std::any::Any + Send>) -> TaskFailure {
    let message = crate::error::panic_message(&*payload);
    UNWINDING.with(|u| u.borrow_mut().take());
    let (location, backtrace) = PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| ("<unknown>".to_owned(), None));
    TaskFailure::Panicked {
        message,
        location,
        backtrace,
    }
}

/// Results are sent when a chunk ends, and in between once this much time
/// passed since the last send, so a worker that dies loses little finished work.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Or once this many result bytes are waiting.
const FLUSH_BYTES: usize = 1 << 20;

/// Takes the channel's input from stdin, moving it to a close-on-exec
/// descriptor and giving stdin `/dev/null` (so tasks, and programs they
/// start, never see it); then receives the descriptors the pool sends
/// first: the channel's output, the progress page, and the real stdout
/// under a test harness.
fn take_channel(env: &WorkerEnv) -> std::io::Result<(UnixStream, UnixStream, Progress)> {
    let channel = sys::take_stdin()?;
    let mut fds = sys::recv_fds(&channel, 2 + usize::from(env.stdout))?.into_iter();
    let output = fds
        .next()
        .ok_or_else(|| std::io::Error::other("no output channel"))?;
    let progress = fds
        .next()
        .ok_or_else(|| std::io::Error::other("no progress page"))?;
    let progress = Progress::open(progress)?;
    if let Some(stdout) = fds.next() {
        // Under a test harness: the real stdout, in place of /dev/null.
        sys::dup_onto(&stdout, 1)?;
    }
    Ok((
        UnixStream::from(channel),
        UnixStream::from(output),
        progress,
    ))
}

/// Ties this process's life to the pool's: killed when the thread that
/// started it ends (it lives as long as this worker, or the pool process
/// dies); exits at once if the pool's process is already gone.
pub(crate) fn die_with_parent(parent: u32) {
    // Set only now, after `exec` and the code of `main` before `init()`;
    // set before the parent check, so that a pool dying in between is seen
    // by one of the two. It cannot fail with these arguments; without it,
    // the end of the channel still ends the worker at its next read.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::Pid::as_raw(rustix::process::getppid()) as u32 != parent {
        std::process::exit(EXIT_PARENT_GONE);
    }
}

/// A worker forked by the fork server, on the descriptors of its request.
pub(crate) fn run_forked(
    input: std::os::fd::OwnedFd,
    output: std::os::fd::OwnedFd,
    progress: std::os::fd::OwnedFd,
    stdio: [std::os::fd::OwnedFd; 2],
    parent: u32,
) -> ! {
    IN_WORKER.store(true, Ordering::Relaxed);
    die_with_parent(parent);
    let progress = Progress::open(progress);
    // The pool's current stdout and stderr, as a worker started now would have.
    let restored = stdio
        .iter()
        .zip([1, 2])
        .try_for_each(|(fd, to)| sys::dup_onto(fd, to));
    drop(stdio);
    let progress = match (progress, restored) {
        (Ok(progress), Ok(())) => progress,
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("pool-runtime worker: cannot set up the channel to the pool: {err}");
            std::process::exit(EXIT_PROTOCOL);
        }
    };
    serve_process(UnixStream::from(input), UnixStream::from(output), progress)
}

pub(crate) fn run(env: WorkerEnv) -> ! {
    IN_WORKER.store(true, Ordering::Relaxed);
    // SAFETY: removing our own variable so that programs a task launches do
    // not become workers. Called before any task runs; the only other thread
    // that can exist here is a test harness's main thread, which is blocked.
    unsafe { std::env::remove_var(WORKER_ENV) };
    die_with_parent(env.parent);
    let (input, output, progress) = match take_channel(&env) {
        Ok(parts) => parts,
        Err(err) => {
            eprintln!("pool-runtime worker: cannot set up the channel to the pool: {err}");
            std::process::exit(EXIT_PROTOCOL);
        }
    };
    serve_process(input, output, progress)
}

/// The worker loop on a channel to the pool, then the process's exit.
fn serve_process(input: UnixStream, output: UnixStream, progress: Progress) -> ! {
    install_panic_hook();
    // Kept until the process exits: log records read the running item from it.
    let progress: &'static Progress = Box::leak(Box::new(progress));
    crate::logging::capture::watch(progress);
    let mut reader = BufReader::with_capacity(256 * 1024, &input);
    // Results are buffered and written in one system call once no more work
    // is waiting: a worker fed many small chunks answers them in batches.
    // While a chunk runs, a flusher thread sends results that waited longer
    // than `FLUSH_AFTER`, so those of finished chunks never wait behind a
    // long item.
    let mut writer = SharedOut::new(output);
    if let Err(err) = writer.start_flusher() {
        eprintln!("pool-runtime worker: cannot start its flusher thread: {err}");
        std::process::exit(EXIT_PROTOCOL);
    }
    crate::logging::capture::set_sender(Box::new(writer.clone()));
    let more_input = |r: &BufReader<&UnixStream>, wait: Duration| {
        !r.buffer().is_empty() || sys::readable_within(r.get_ref(), wait)
    };
    let served = serve_hooked(
        &mut reader,
        &mut writer,
        Some(progress),
        more_input,
        SharedOut::arm,
        input_spin(),
    );
    let code = match served {
        Ok(()) => 0,
        Err(ProtocolError::Closed) => 0,
        Err(err) => {
            eprintln!("pool-runtime worker {}: {err}", std::process::id());
            EXIT_PROTOCOL
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// How long a local worker out of input watches for the next frame
/// before it sleeps: [`INPUT_SPIN`] with a CPU to spare for it, else none
/// (on one CPU, watching takes the time from the pool's process, which
/// would send that frame).
fn input_spin() -> Duration {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 { INPUT_SPIN } else { Duration::ZERO }
}

/// How long a worker waits for input before it first lets go of the slab
/// mappings it kept whose slab the pool has dropped (then it looks again
/// once it has been idle twice as long, and so on).
const IDLE_UNMAP: Duration = Duration::from_millis(100);
/// How long a worker without input keeps any slab mapping.
const IDLE_KEEP: Duration = Duration::from_secs(2);

/// See [`input_spin`]. Measured on 2 CPUs (`bench roundtrip`): an `apply`
/// round trip from 23 µs to 7.5 µs, chunk size 1 from ~600 k to ~720 k
/// items/s; longer watches bought nothing more.
const INPUT_SPIN: Duration = Duration::from_micros(50);

/// Serves tasks over a channel until the parent says exit or goes away.
///
/// `reader` and `writer` carry the frames (a socket locally; a backend's
/// adapter elsewhere); `progress`, if any, is the page shared with the pool.
#[allow(dead_code)] // the seam for backends that need no batching; MPI uses `serve_with`
pub(crate) fn serve(
    reader: &mut impl Read,
    writer: &mut impl Write,
    progress: Option<&Progress>,
) -> Result<(), ProtocolError> {
    serve_with(reader, writer, progress, |_| false)
}

/// [`serve`], where `more_input(reader)` says whether another frame is
/// already waiting: the writer is flushed only before reading would block.
pub(crate) fn serve_with<R: Read, W: Write>(
    reader: &mut R,
    writer: &mut W,
    progress: Option<&Progress>,
    more_input: impl Fn(&R) -> bool,
) -> Result<(), ProtocolError> {
    let more_input = move |r: &R, _: Duration| more_input(r);
    serve_hooked(reader, writer, progress, more_input, |_| {}, Duration::ZERO)
}

/// [`serve_with`], calling `before_chunk(writer)` before each chunk runs,
/// and where `more_input(reader, wait)` may wait that long for a frame.
fn serve_hooked<R: Read, W: Write>(
    reader: &mut R,
    writer: &mut W,
    progress: Option<&Progress>,
    more_input: impl Fn(&R, Duration) -> bool,
    before_chunk: impl Fn(&W),
    spin: Duration,
) -> Result<(), ProtocolError> {
    IN_WORKER.store(true, Ordering::Relaxed);
    let registry = Registry::collect().map_err(|err| ProtocolError::Malformed(err.to_string()))?;
    let mut frame = Vec::new();

    // Handshake: read the parent's limits first.
    wire::read_frame(reader, 4096, &mut frame)?;
    let (mut results, mut memory) = match wire::split_frame::<ToWorker>(&frame)? {
        (
            ToWorker::Hello {
                protocol,
                max_frame,
                max_memory,
                ..
            },
            settings,
        ) => {
            let ready = FromWorker::Ready {
                protocol: wire::PROTOCOL_VERSION,
                fingerprint: registry.fingerprint(),
                pid: std::process::id(),
            };
            wire::write_frame(writer, &wire::encode_header(&ready), &[], 4096)?;
            writer.flush()?;
            if protocol != wire::PROTOCOL_VERSION {
                return Err(ProtocolError::Version {
                    ours: wire::PROTOCOL_VERSION,
                    theirs: protocol,
                });
            }
            let max_frame = usize::try_from(max_frame).unwrap_or(usize::MAX);
            let log_level = settings.first().copied().unwrap_or(wire::LOG_OFF);
            crate::logging::capture::install(log_level, max_frame);
            let flags = settings.get(1).copied().unwrap_or(0);
            let results = ResultsOut {
                max_frame,
                pull: flags & wire::HELLO_PULL_RESULTS != 0 && progress.is_some(),
                seq: 0,
                parent: std::os::unix::process::parent_id(),
            };
            (results, max_memory.map(MemoryBound::new))
        }
        _ => return Err(ProtocolError::Unexpected("expected the handshake")),
    };

    let max_frame = results.max_frame;
    let mut out = Vec::with_capacity(64 * 1024);
    // Where the next chunk's body is, when it is in shared memory.
    let mut mapped_next: Option<(u32, SlabRef)> = None;
    let mut mappings = Mappings::new(memory.is_none());
    loop {
        if !more_input(reader, Duration::ZERO) {
            // Out of input, before the results go: a worker kept busy by
            // small chunks lets go of the slabs the pool has dropped too.
            mappings.prune_dropped();
            crate::logging::capture::send(writer)?;
            writer.flush()?;
            // The next frame often follows at once (a caller's next
            // call, the next chunk): watching for it a moment saves the
            // wake-up of a sleeping process, the longest part of a round
            // trip. `more_input` polls; another runnable thread of this CPU
            // gets it meanwhile.
            if !spin.is_zero() {
                let since = std::time::Instant::now();
                while !more_input(reader, Duration::ZERO) && since.elapsed() < spin {
                    std::thread::yield_now();
                }
            }
            // An idle worker keeps its mappings of the slabs the pool still
            // holds (its next call reuses them, and they cost no memory the
            // pool does not hold anyway), looking for slabs the pool let go
            // of after IDLE_UNMAP of idle time, then each time it has been
            // idle twice as long; after IDLE_KEEP, it lets go of them all.
            // (Idle time by the clock: a signal cuts a wait short.)
            let idle_since = std::time::Instant::now();
            let mut wait = IDLE_UNMAP;
            while mappings.holds_any() && !more_input(reader, wait) {
                let idle = idle_since.elapsed();
                if idle >= IDLE_KEEP {
                    mappings.clear();
                } else {
                    mappings.prune_dropped();
                    let next = idle_since + IDLE_UNMAP.max(idle * 2).min(IDLE_KEEP);
                    wait = next.saturating_duration_since(std::time::Instant::now());
                }
            }
        }
        wire::read_frame(reader, max_frame, &mut frame)?;
        let (header, body) = wire::split_frame::<ToWorker>(&frame)?;
        let mapped = mapped_next.take();
        match header {
            ToWorker::Mapped { pid, fd, id, len } => {
                mapped_next = Some((pid, SlabRef { fd, id, len }));
            }
            ToWorker::Run {
                chunk,
                task,
                items,
                panic_retries,
                timed,
            } => {
                if progress.is_some_and(|p| !p.claim(chunk)) {
                    // Taken back by the pool (it runs elsewhere): skipped.
                    continue;
                }
                before_chunk(writer);
                // Opened only once claimed: a chunk taken back may have
                // had its slab reused by the pool already.
                let slab = match mapped.map(|(pid, slab)| mappings.open(pid, &slab)) {
                    Some(Ok(slab)) => Some(slab),
                    Some(Err(message)) => {
                        // Each item fails with why; the worker goes on.
                        let name = registry.get(task).map_or("?", |e| e.name);
                        let failure = TaskFailure::BadArguments {
                            ty: format!("{name}'s arguments"),
                            message,
                        };
                        fail_chunk(writer, chunk, items, &failure, max_frame)?;
                        continue;
                    }
                    None => None,
                };
                let body = slab.as_ref().map_or(body, MappedBody::bytes);
                let work = ChunkWork {
                    chunk,
                    task,
                    timed,
                    count: items,
                    panic_retries,
                    body,
                };
                let memory = memory.as_mut();
                if let Some(reason) = run_chunk(
                    &registry,
                    writer,
                    &mut results,
                    progress,
                    &mut out,
                    &work,
                    memory,
                )? {
                    return retire(writer, reason, max_frame);
                }
            }
            ToWorker::Init { task } => {
                let failure = match registry.get(task) {
                    None => Some(TaskFailure::UnknownTask { id: task }),
                    Some(entry) => {
                        let arg = Items::new(body).next_arg()?;
                        out.clear();
                        IN_TASK.with(|f| f.set(true));
                        let outcome = call(entry.run, arg, &mut out);
                        IN_TASK.with(|f| f.set(false));
                        outcome.err()
                    }
                };
                let body = if failure.is_none() { &out[..] } else { &[][..] };
                crate::logging::capture::send(writer)?;
                let done = FromWorker::InitDone { failure };
                wire::write_frame(writer, &wire::encode_header(&done), body, max_frame)?;
                let _ = std::io::stdout().flush();
            }
            ToWorker::Exit => {
                writer.flush()?;
                return Ok(());
            }
            ToWorker::Hello { .. } => return Err(ProtocolError::Unexpected("a second handshake")),
        }
    }
}

/// Sends every item of `chunk` (of `count`) as failed with `failure`.
fn fail_chunk(
    writer: &mut impl Write,
    chunk: u64,
    count: u32,
    failure: &TaskFailure,
    max_frame: usize,
) -> Result<(), ProtocolError> {
    let mut body = Vec::new();
    for _ in 0..count {
        wire::push_failure(&mut body, failure);
    }
    let header = FromWorker::Results {
        chunk,
        first: 0,
        count,
    };
    wire::write_frame(writer, &wire::encode_header(&header), &body, max_frame)
}

/// Tells the pool this worker runs nothing more, and why; it then exits.
fn retire(writer: &mut impl Write, reason: Retire, max_frame: usize) -> Result<(), ProtocolError> {
    let header = wire::encode_header(&FromWorker::Retiring { reason });
    wire::write_frame(writer, &header, &[], max_frame)?;
    writer.flush()?;
    Ok(())
}

/// Runs one item, catching panics from the task and from serde impls.
/// The caller sets `IN_TASK` around it, so the panic hook records locations.
fn call(run: pool_core::registry::RunFn, arg: &[u8], out: &mut Vec<u8>) -> Result<(), TaskFailure> {
    let mark = out.len();
    let result = catch_unwind(AssertUnwindSafe(|| run(arg, out)));
    match result {
        Ok(outcome) => outcome,
        Err(payload) => {
            out.truncate(mark);
            Err(panic_failure(payload))
        }
    }
}

/// Runs again an item whose first run panicked, up to `retries` times;
/// appends its result, or the last failure.
fn retry(entry: &TaskEntry, arg: &[u8], out: &mut Vec<u8>, mut failure: TaskFailure, retries: u32) {
    for _ in 0..retries {
        let start = wire::begin_result(out);
        match call(entry.run, arg, out) {
            Ok(()) => {
                wire::finish_result(out, start, wire::ITEM_OK);
                return;
            }
            Err(again) => {
                out.truncate(start);
                let panicked = matches!(again, TaskFailure::Panicked { .. });
                failure = again;
                if !panicked {
                    break;
                }
            }
        }
    }
    wire::push_failure(out, &failure);
}

/// The failure of an item whose result does not fit in a frame. `size`
/// counts the result's 5-byte item header, which the message leaves out:
/// it speaks of the encoded result alone, as the user knows it.
fn too_large(entry: &TaskEntry, size: usize, max_frame: usize) -> TaskFailure {
    const HEAD: usize = 5;
    let most = max_frame.saturating_sub(64).saturating_sub(HEAD);
    let size = size.saturating_sub(HEAD);
    TaskFailure::BadOutput {
        ty: (entry.output_type)().to_owned(),
        message: format!(
            "the encoded result takes {}{} bytes, above the frame limit of {max_frame} \
             (a result may take {most} bytes under it; raise it with \
             PoolBuilder::max_frame_size)",
            if size > most { "more than " } else { "" },
            size.min(most)
        ),
    }
}

/// One `Run` frame.
struct ChunkWork<'a> {
    chunk: u64,
    task: u64,
    timed: bool,
    count: u32,
    panic_retries: u32,
    body: &'a [u8],
}

/// Runs a chunk and sends its results. With a memory bound, it stops after
/// the first item that leaves the worker above it, and returns why: the
/// results of the items it ran are sent, the rest of the chunk is not run.
fn run_chunk(
    registry: &Registry,
    writer: &mut impl Write,
    results: &mut ResultsOut,
    progress: Option<&Progress>,
    out: &mut Vec<u8>,
    work: &ChunkWork<'_>,
    mut memory: Option<&mut MemoryBound>,
) -> Result<Option<Retire>, ProtocolError> {
    let max_frame = results.max_frame;
    let ChunkWork {
        chunk,
        task,
        timed,
        count,
        panic_retries,
        body,
    } = *work;
    let entry = registry.get(task);
    let mut items = Items::new(body);
    out.clear();
    let mut first = 0u32;
    // The coarse clock read for the progress page also paces partial sends.
    let mut last_flush = now_ns();
    let interval = FLUSH_INTERVAL.as_nanos() as u64;
    let max_result = max_frame.saturating_sub(64);
    // Results stop a batch once they need a send: a partial one, or one
    // before the frame limit is reached.
    let out_limit = FLUSH_BYTES.min(max_result);
    // Panics are caught per run of items; the hook records their location while
    // this chunk runs (a panic a task caught itself is forgotten here).
    UNWINDING.with(|u| u.borrow_mut().take());
    IN_TASK.with(|f| f.set(true));
    let mut i = 0u32;
    let mut retiring = None;
    // Items run one at a time under a timeout (each one's start is
    // recorded) and under a memory bound (checked after each one).
    let one_by_one = timed || memory.is_some();
    while i < count {
        // The clock is read for every item only then; otherwise every 32nd
        // item, to pace partial sends. Items between two reads run as one
        // batch, in a loop compiled for the task.
        let now = now_ns();
        let span = if one_by_one { 1 } else { 32 - i % 32 }.min(count - i);
        let mut mark = out.len();
        // Whether item `i` ended outside a batch: it failed, or its task
        // is unknown. Its record was appended at `mark`.
        let single = match entry {
            None => {
                if let Some(progress) = progress {
                    progress.start(chunk, u64::from(i), now);
                }
                items.next_arg()?;
                wire::push_failure(out, &TaskFailure::UnknownTask { id: task });
                true
            }
            Some(entry) => {
                if let Some(progress) = progress {
                    progress.start(chunk, u64::from(i), now);
                }
                let mut batch = Batch {
                    items: &mut items,
                    limit: span,
                    out,
                    out_limit,
                    max_result,
                    progress: progress.map(Progress::item_slot),
                    first_index: u64::from(i),
                    ran: 0,
                    last_mark: mark,
                };
                let halt = (entry.run_batch)(&mut batch);
                let (ran, last_mark) = (batch.ran, batch.last_mark);
                i += ran;
                mark = if halt.is_some() { out.len() } else { last_mark };
                match halt {
                    None => false,
                    Some(Halt::Protocol(err)) => return Err(err),
                    Some(Halt::Failed(failure)) => {
                        wire::push_failure(out, &failure);
                        true
                    }
                    Some(Halt::TooLarge { size }) => {
                        wire::push_failure(out, &too_large(entry, size, max_frame));
                        true
                    }
                    Some(Halt::Panicked { arg, payload }) => {
                        let failure = panic_failure(payload);
                        retry(entry, arg, out, failure, panic_retries);
                        let size = out.len() - mark;
                        if size > max_result {
                            out.truncate(mark);
                            wire::push_failure(out, &too_large(entry, size, max_frame));
                        }
                        true
                    }
                }
            }
        };
        if single {
            i += 1;
        }
        retiring = memory.as_deref_mut().and_then(MemoryBound::exceeded);
        if out.len() + 64 > max_frame && mark > 0 {
            // The last result does not fit beside the ones waiting: send
            // those first.
            crate::logging::capture::send(writer)?;
            let header = FromWorker::Results {
                chunk,
                first,
                count: i - 1 - first,
            };
            results.send(writer, progress, &header, &out[..mark])?;
            out.drain(..mark);
            first = i - 1;
            last_flush = now;
        }
        let partial = out.len() >= FLUSH_BYTES || now.saturating_sub(last_flush) >= interval;
        if i == count || partial || retiring.is_some() {
            let _ = std::io::stdout().flush();
            crate::logging::capture::send(writer)?;
            let header = FromWorker::Results {
                chunk,
                first,
                count: i - first,
            };
            results.send(writer, progress, &header, out)?;
            if i < count {
                // Mid-chunk: send now, so a long chunk reports as it goes.
                writer.flush()?;
            }
            out.clear();
            first = i;
            last_flush = now;
        }
        if retiring.is_some() {
            break;
        }
    }
    IN_TASK.with(|f| f.set(false));
    if let Some(progress) = progress {
        progress.idle(chunk);
    }
    if retiring.is_none() && !items.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes after the last item".to_owned(),
        ));
    }
    Ok(retiring)
}
