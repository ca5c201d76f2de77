//! The local backend: worker processes of this machine (see
//! [`process`]), each with a reader thread (frames in; it
//! also started the process and reaps it, so the worker's parent-death
//! signal is tied to a thread that lives exactly as long as the worker)
//! and a writer thread (frames out, batched), so a large frame being
//! written never blocks the reading of results.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use pool_core::ProtocolError;
use pool_core::wire::{self, ToWorker};

use super::child::{ChildProc, Signaller};
use super::forkserver::client as forkserver;
use super::handshake::Launch;
use super::process;
use super::process::Spawned;
use super::pull;
use super::shm::Progress;
use super::{Backend, Body, Events, Link, Outgoing};
use crate::error::{Error, ExitCause};

/// Starts and reaps this machine's worker processes for one pool.
pub(crate) struct LocalBackend {
    launch: Launch,
    /// Workers started but not yet attached (handshake, initializer):
    /// shutdown kills them.
    starting: Arc<Mutex<Vec<Signaller>>>,
}

impl LocalBackend {
    pub(crate) fn new(launch: Launch) -> LocalBackend {
        LocalBackend {
            launch,
            starting: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl Backend for LocalBackend {
    /// Starts workers for `slots`, each from its own thread, all at once
    /// (at most 32 starting at a time, process-wide); returns when every
    /// one is ready or has failed (the first failure). Later workers are
    /// forks of the fork server, which is prepared once these are up.
    fn start_all(&self, slots: &[usize], events: &Arc<dyn Events>) -> Result<(), Error> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(slots.len());
        let mut launched = 0;
        let mut first_err = None;
        for &slot in slots {
            if !events.launching() {
                first_err.get_or_insert(Error::Terminated);
                break;
            }
            let starter = self.starter(events);
            let done = done_tx.clone();
            let thread = thread::Builder::new()
                .name(format!("pool-worker-{slot}"))
                .spawn(move || starter.run(slot, Some(done)));
            match thread {
                Ok(_) => launched += 1,
                Err(err) => {
                    events.launched();
                    first_err.get_or_insert(Error::Spawn(err));
                }
            }
        }
        drop(done_tx);
        for _ in 0..launched {
            let outcome = done_rx.recv().unwrap_or_else(|_| {
                Err(Error::Spawn(std::io::Error::other(
                    "a worker's thread ended before it started",
                )))
            });
            if let Err(err) = outcome {
                first_err.get_or_insert(err);
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => {
                // Later workers (replacements, later pools) are forked.
                forkserver::prepare(&self.launch);
                Ok(())
            }
        }
    }

    /// Starts a replacement without waiting for it: the supervisor goes on
    /// enforcing timeouts and noticing exits while it starts (and runs its
    /// initializer); a failure is reported with [`Events::start_failed`].
    fn respawn(&self, slot: usize, events: &Arc<dyn Events>) {
        if !events.launching() {
            return;
        }
        tracing::debug!(slot, "starting a replacement pool worker");
        let starter = self.starter(events);
        let thread = thread::Builder::new()
            .name(format!("pool-worker-{slot}"))
            .spawn(move || starter.run(slot, None));
        if let Err(err) = thread {
            events.launched();
            events.start_failed(slot, Error::Spawn(err));
        }
    }

    fn abort_starts(&self) {
        for worker in lock(&self.starting).iter() {
            // Not attached yet: its handshake or initializer fails at once.
            worker.kill();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalBackend {
    fn starter(&self, events: &Arc<dyn Events>) -> Starter {
        Starter {
            launch: self.launch.clone(),
            starting: Arc::clone(&self.starting),
            events: Arc::clone(events),
        }
    }
}

/// What a worker's thread needs: it starts the worker, then reads its
/// frames until it is gone, and reaps it.
struct Starter {
    launch: Launch,
    starting: Arc<Mutex<Vec<Signaller>>>,
    events: Arc<dyn Events>,
}

impl Starter {
    /// Starts the worker for `slot`, reports how that went (to `done`, or
    /// as a failed replacement), then reads its frames until it is gone.
    fn run(self, slot: usize, done: Option<Sender<Result<(), Error>>>) {
        let started = {
            let _permit = START_PERMITS.acquire();
            self.start(slot)
        };
        // Counted until here, so that shutdown waits for a start under way.
        self.events.launched();
        let report = |outcome: Result<(), Error>| match (&done, outcome) {
            (Some(done), outcome) => {
                let _ = done.send(outcome);
            }
            (None, Ok(())) => {}
            (None, Err(err)) => self.events.start_failed(slot, err),
        };
        match started {
            Ok(Some((pid, stream, child, page))) => {
                report(Ok(()));
                drop(done);
                let signal = child.signaller();
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let worker = Reading {
                        slot,
                        pid,
                        stream: &stream,
                        page: &page,
                    };
                    read_loop(&*self.events, &self.launch, &worker, child);
                }));
                if read.is_err() {
                    after_reader_panic(&*self.events, slot, pid, &signal);
                }
            }
            Ok(None) => report(Ok(())),
            Err(err) => report(Err(err)),
        }
    }

    /// Starts and attaches the worker for `slot`; what its reader needs, or
    /// `None` if the pool was terminated meanwhile.
    #[allow(clippy::type_complexity)] // one use, named by the doc above
    fn start(
        &self,
        slot: usize,
    ) -> Result<Option<(u32, Arc<UnixStream>, ChildProc, Arc<Progress>)>, Error> {
        let events = &*self.events;
        if events.is_stopping() {
            return Err(Error::Terminated);
        }
        let pending = process::start(&self.launch, &|| events.is_stopping())?;
        let pid = pending.pid();
        let signal = pending.signaller();
        lock(&self.starting).push(signal.clone());
        if events.is_stopping() {
            signal.kill();
        }
        // The writer thread starts while the worker boots.
        let writer = start_writer(pid, pending.channel(), self.launch.max_frame);
        let forget = |pid: u32| lock(&self.starting).retain(|s| s.pid != pid);
        let outcome = process::finish(pending, &self.launch, forget);
        forget(pid);
        let spawned = outcome?;
        let Spawned {
            mut child,
            pid,
            to,
            from,
            progress,
        } = spawned;
        drop(to);
        let page = Arc::new(progress);
        let (tx, ends, backlog) = match writer {
            Ok(writer) => writer,
            Err(err) => {
                child.kill();
                child.wait();
                return Err(err);
            }
        };
        let link = LocalLink {
            signal: child.signaller(),
            tx,
            ends,
            backlog,
            page: Arc::clone(&page),
        };
        if !events.attach(slot, pid, Link::Local(link)) {
            child.kill();
            child.wait();
            return Ok(None);
        }
        Ok(Some((pid, from, child, page)))
    }
}

/// Starts the writer thread of the worker `pid` on its channel.
fn start_writer(
    pid: u32,
    (to, from): (&Arc<UnixStream>, &Arc<UnixStream>),
    max: usize,
) -> Result<(Sender<Outgoing>, Ends, Arc<AtomicUsize>), Error> {
    let ends = Ends {
        to: Arc::clone(to),
        from: Arc::clone(from),
    };
    let writer_ends = ends.clone();
    let (tx, rx) = crossbeam_channel::unbounded::<Outgoing>();
    let backlog = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&backlog);
    thread::Builder::new()
        .name(format!("pool-writer-{pid}"))
        .spawn(move || write_loop(rx, &writer_ends, max, &counter))
        .map_err(Error::Spawn)?;
    Ok((tx, ends, backlog))
}

/// A local worker, as the scheduler holds it: its writer thread, its
/// channel's sockets, its progress page, and how to signal it.
pub(crate) struct LocalLink {
    signal: Signaller,
    tx: Sender<Outgoing>,
    /// Both directions, cut when the worker is killed or found dead.
    ends: Ends,
    /// Frames handed to the writer thread and not yet written.
    backlog: Arc<AtomicUsize>,
    /// Shared with its reader thread, which answers its pulls there.
    page: Arc<Progress>,
}

impl LocalLink {
    /// Sends a frame: to an idle worker whose writer thread has nothing
    /// queued, written right here without blocking, which saves a thread
    /// hand-off on the round trip; otherwise, or for what did not fit,
    /// queued to the writer thread.
    /// A body in shared memory is not written: a [`ToWorker::Mapped`]
    /// frame naming it goes first, and the frame follows without it.
    pub(crate) fn send(&self, header: Vec<u8>, body: Arc<Body>, idle: bool, max: usize) {
        if let Some(slab) = body.slab() {
            let mapped = wire::encode_header(&ToWorker::Mapped {
                pid: std::process::id(),
                fd: slab.fd,
                id: slab.id,
                len: slab.len,
            });
            // The chunk in flight keeps the body (and its slab) alive
            // until the worker is done with it.
            self.send(mapped, Arc::new(Body::empty()), idle, max);
            return self.send(header, Arc::new(Body::empty()), idle, max);
        }
        let mut skip = 0;
        let size = header.len() + body.len();
        // Only an idle worker is written to directly: a busy one reads
        // later anyway, and its writer thread batches frames into one call.
        // A large frame goes to the writer thread: its copy into the
        // socket is work the dispatching thread (often the caller,
        // encoding the next chunk) is better spared.
        if idle && self.backlog.load(Ordering::Acquire) == 0 && size <= max.min(DIRECT_MAX) {
            let len = (size as u32).to_le_bytes();
            match send_nowait(&self.ends.to, &[&len, &header, &body]) {
                Some(n) if n == 4 + size => return,
                Some(n) => skip = n,
                None => {}
            }
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Outgoing { header, body, skip });
    }

    /// SIGKILL, and its channel cut (so its reader wakes even if a process
    /// the task forked holds the other ends).
    pub(crate) fn kill(&self) {
        self.signal.kill();
        self.ends.cut();
    }

    /// Cuts its channel if it has exited, so its reader sees the end even
    /// if a process the task forked keeps the channel open.
    pub(crate) fn notice_exit(&self) {
        if self.signal.has_exited() {
            self.ends.cut();
        }
    }

    /// Its progress page.
    pub(crate) fn page(&self) -> &Progress {
        &self.page
    }
}

/// Cleans up after a reader that panicked (a bug): its worker is killed
/// and reaped if it was not yet, and detached if it still is attached, so
/// that shutdown does not wait for it forever.
fn after_reader_panic(events: &dyn Events, slot: usize, pid: u32, signal: &Signaller) {
    tracing::error!(pid, "the reader thread of a pool worker panicked");
    events.mark_dying(slot);
    if signal.is_own_child() {
        crate::sys::kill_and_reap_child(pid);
    } else {
        // A forked worker: its pidfd names it even once its server reaped it.
        signal.kill();
    }
    events.detach(slot, pid, ExitCause::Unknown, None);
}

/// How long a worker whose channel ended mid-frame is given to be seen
/// exited before the frame counts as a broken protocol.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Whether `child` has ended, or ends within `limit`.
fn exits_within(child: &mut ChildProc, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().is_some() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The worker a reader thread reads.
struct Reading<'a> {
    slot: usize,
    pid: u32,
    stream: &'a UnixStream,
    page: &'a Progress,
}

/// Reads the frames of the worker in `slot` until its channel ends; then
/// reaps it and reports its end.
fn read_loop(events: &dyn Events, launch: &Launch, worker: &Reading<'_>, mut child: ChildProc) {
    let &Reading {
        slot,
        pid,
        stream,
        page,
    } = worker;
    let max = launch.max_frame;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut frames = Vec::new();
    let mut pulled = 0;
    let failure = loop {
        // One frame, waiting for it; then every frame already complete
        // in the buffer, all handled under one lock.
        let read = loop {
            let mut frame = Vec::new();
            if let Err(err) = wire::read_frame(&mut reader, max, &mut frame) {
                break Err(err);
            }
            // A large results frame left in the worker's memory is read there.
            let was_pull = frame.first() == Some(&wire::PULL_TAG);
            match pull::resolve(frame, pid, page, max) {
                Ok(Some(frame)) => {
                    if was_pull {
                        pulled += frame.len() as u64;
                    }
                    frames.push(frame);
                }
                Ok(None) => {}
                Err(err) => break Err(err),
            }
            if frames.len() >= 256 || !wire::holds_frame(reader.buffer()) {
                break Ok(());
            }
        };
        if pulled > 0 {
            events.pulled(slot, pid, std::mem::take(&mut pulled));
        }
        if let Err(err) = events.deliver_all(slot, pid, &mut frames) {
            break err;
        }
        if let Err(err) = read {
            break err;
        }
    };
    events.mark_dying(slot);
    let protocol = match failure {
        ProtocolError::Closed => None,
        // A worker that dies with unread input resets the connection.
        ProtocolError::Io(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            None
        }
        // The channel ended in the middle of a frame: if the worker died
        // (a signal, an exit while writing), that is what happened, and
        // its death is reported, not a broken protocol.
        ProtocolError::Truncated { .. } if exits_within(&mut child, EXIT_GRACE) => None,
        other => {
            // The worker broke the protocol: it cannot be trusted further.
            child.kill();
            Some(other)
        }
    };
    // The channel ended; the process normally exits with it. If it does
    // not within a moment (it closed the channel but kept running), it
    // is killed: a worker without its channel is of no use.
    let deadline = Instant::now() + Duration::from_millis(200);
    while child.try_wait().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    child.kill();
    let cause = if events.is_stopping() {
        // Killed by the shutdown: its cause is known well enough, and a
        // fork server that does not report (stopped) must not hold it up.
        child.wait_reported(Duration::from_millis(20))
    } else {
        child.wait()
    };
    events.detach(slot, pid, cause, protocol);
}

/// Worker starts under way at once, in the whole process: each holds a
/// few descriptors and a process being exec'd, so a pool of hundreds
/// starts in waves instead of all at once (which would need 6 descriptors
/// per worker at the peak).
static START_PERMITS: Permits = Permits::new(32);

/// A counting semaphore.
struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    const fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    /// Waits for a permit; it is returned when the guard drops.
    fn acquire(&self) -> PermitGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        PermitGuard(self)
    }
}

struct PermitGuard<'a>(&'a Permits);

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// The largest frame the dispatching thread writes itself.
const DIRECT_MAX: usize = 64 << 10;

/// Both sockets of a local worker's channel, as the pool holds them: the
/// same descriptors the writer and reader threads use (a worker costs the
/// pool two descriptors, three with the pidfd of a forked one).
#[derive(Clone)]
struct Ends {
    to: Arc<UnixStream>,
    from: Arc<UnixStream>,
}

impl Ends {
    /// Shuts both down, so the worker's reader wakes (and its writer fails)
    /// even if a process the task forked still holds the other ends.
    fn cut(&self) {
        let _ = self.to.shutdown(std::net::Shutdown::Both);
        let _ = self.from.shutdown(std::net::Shutdown::Both);
    }
}

/// One non-blocking `sendmsg` of `parts`; the bytes written, or `None` if
/// none could be (the socket is full, or the worker is gone).
fn send_nowait(stream: &UnixStream, parts: &[&[u8]]) -> Option<usize> {
    use rustix::net::{SendAncillaryBuffer, SendFlags};
    let iov: Vec<std::io::IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| std::io::IoSlice::new(p))
        .collect();
    // MSG_DONTWAIT never blocks; MSG_NOSIGNAL: no SIGPIPE once the worker is gone.
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    let n = rustix::net::sendmsg(stream, &iov, &mut SendAncillaryBuffer::default(), flags);
    n.ok().filter(|&n| n > 0)
}

fn write_loop(rx: Receiver<Outgoing>, ends: &Ends, max: usize, backlog: &AtomicUsize) {
    let mut out: &UnixStream = &ends.to;
    let mut batch: Vec<Outgoing> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Whatever else is already queued goes out in the same system call.
        batch.push(first);
        let mut bytes = batch[0].body.len();
        while batch.len() < 64 && bytes < (1 << 20) {
            match rx.try_recv() {
                Ok(msg) => {
                    bytes += msg.body.len();
                    batch.push(msg);
                }
                Err(_) => break,
            }
        }
        let written = write_frames(&mut out, &batch, max);
        backlog.fetch_sub(batch.len(), Ordering::AcqRel);
        if let Err(err) = written {
            tracing::debug!(error = %err, "writing to a pool worker failed");
            // The worker is gone or broken; its reader reports it. Later
            // frames are dropped with the channel (the backlog stays up, so
            // nothing more is written directly either).
            backlog.fetch_add(1, Ordering::AcqRel);
            ends.cut();
            return;
        }
        batch.clear();
    }
}

/// Writes frames back to back with as few system calls as possible.
fn write_frames(
    out: &mut impl std::io::Write,
    frames: &[Outgoing],
    max: usize,
) -> Result<(), ProtocolError> {
    if let [one] = frames
        && one.skip == 0
    {
        return wire::write_frame(out, &one.header, &one.body, max);
    }
    let mut lens = Vec::with_capacity(frames.len());
    for f in frames {
        let size = f.header.len() + f.body.len();
        if size > max || size > u32::MAX as usize {
            return Err(ProtocolError::TooLarge { size, limit: max });
        }
        lens.push((size as u32).to_le_bytes());
    }
    let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(frames.len() * 3);
    for (f, len) in frames.iter().zip(&lens) {
        slices.push(std::io::IoSlice::new(len));
        slices.push(std::io::IoSlice::new(&f.header));
        if !f.body.is_empty() {
            slices.push(std::io::IoSlice::new(&f.body));
        }
    }
    let mut parts: &mut [std::io::IoSlice<'_>] = &mut slices;
    // Only the first frame can have been started directly (the direct path
    // is taken only while nothing is queued).
    let skip = frames.first().map_or(0, |f| f.skip);
    std::io::IoSlice::advance_slices(&mut parts, skip);
    while !parts.is_empty() {
        match out.write_vectored(parts) {
            Ok(0) => return Err(ProtocolError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => std::io::IoSlice::advance_slices(&mut parts, n),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ProtocolError::Io(err)),
        }
    }
    Ok(())
}
