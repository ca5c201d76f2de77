//! A worker rank with local worker processes (see [`LOCAL_WORKERS_ENV`]):
//! it starts them as a pool without MPI would, relays frames between rank 0
//! and each of them, and reports how each one ends.
//!
//! The rank runs no task. Its main thread makes every MPI call (as
//! `Threading::Funneled` requires) and starts the local workers, so their
//! parent-death signal is tied to a thread that lives as long as the rank;
//! each local worker has a reader thread (frames in, then its reaping) and
//! a writer thread (frames out), so a full socket never stalls the relay.
//!
//! Per local worker, frames from rank 0 are handled as they come:
//! `Hello` starts a process (a fresh run of this binary, handshaken here,
//! answered to rank 0 with a `Ready` carrying the local pid); `Init` and
//! `Run` are passed on; `Exit` is passed on to an idle worker and turned into
//! `SIGKILL` for a busy one (rank 0's scheduler sends it to stop a worker
//! whose item exceeded its timeout, or when the pool is terminated). Frames
//! that arrive for a worker that is gone are dropped: rank 0 requeues them
//! when it learns of the death ([`TAG_DIED`], with the item the worker's
//! progress page names), and sends a new `Hello` for a replacement.
//!
//! [`LOCAL_WORKERS_ENV`]: super::LOCAL_WORKERS_ENV

use std::collections::VecDeque;
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, Destination, Source};
use pool_core::ProtocolError;
use pool_core::wire::{self, FromWorker, ToWorker};

use super::{
    Assembler, BATCH, Backoff, Died, EXIT_PROTOCOL, TAG_BYE, TAG_DATA_BASE, TAG_DIED, TAG_DONE,
    TAG_FINALIZE, TAG_START, bye_body, data_tag, pieces, receive, start_body,
};
use crate::backend::child::Signaller;
use crate::backend::handshake::Launch;
use crate::backend::process::{self, Spawned};
use crate::backend::shm::Progress;
use crate::error::ExitCause;

/// How long a local worker may take to start and answer its handshake.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the rank waits for its local workers to end once the job ends.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of frames a writer thread puts in one write.
const WRITE_BATCH: usize = 1 << 20;

/// News from a local worker's reader thread.
enum Event {
    Frame {
        local: usize,
        generation: u64,
        frame: Vec<u8>,
    },
    Exited {
        local: usize,
        generation: u64,
        cause: ExitCause,
    },
}

/// A chunk passed to a local worker whose results are not all back.
struct Piece {
    chunk: u64,
    count: u32,
    received: u32,
    /// A timeout watches its items: their starts are reported to rank 0.
    timed: bool,
}

/// A running local worker process.
struct Proc {
    pid: u32,
    /// Tells its events from those of the process before it in this place.
    generation: u64,
    signal: Signaller,
    /// Frames (without their length) for its writer thread.
    to: Sender<Vec<u8>>,
    progress: Progress,
    pieces: VecDeque<Piece>,
    /// Sent `Exit` or killed: its end is expected.
    exiting: bool,
    killed: bool,
    /// The item under a timeout last reported to rank 0.
    reported: Option<(u64, u64)>,
}

/// One local worker's place (endpoint) on this rank.
struct Local {
    proc: Option<Proc>,
    /// Frames from rank 0.
    stream: Assembler,
    max_frame: usize,
    /// Frames for rank 0 (with their length), not sent yet.
    out: Vec<u8>,
}

/// A `Hello` from rank 0 for local worker `local`: start a process.
struct Start {
    local: usize,
    fingerprint: u64,
    max_frame: usize,
    /// The level of log records rank 0 wants (the `Hello`'s body).
    log_level: u8,
}

struct Node<'a> {
    world: &'a SimpleCommunicator,
    rank: i32,
    locals: Vec<Local>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    /// Rung by the reader threads when the main thread sleeps.
    doorbell: Arc<Doorbell>,
    next_generation: u64,
}

/// Wakes the main thread, sleeping between polls of MPI, when a local
/// worker has news; costs the reader threads nothing while it is awake.
/// (A channel's `recv_timeout` spins and yields before it blocks, which
/// doubled an idle rank's CPU time.)
#[derive(Default)]
struct Doorbell {
    rung: Mutex<bool>,
    ready: Condvar,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// Reader thread, after sending an event.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            *self.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.ready.notify_one();
        }
    }

    /// Main thread: sleeps up to `nap` unless `events` has news or the
    /// bell rings; `true` if it was rung (or news was waiting).
    fn wait(&self, nap: Duration, events: &Receiver<Event>) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let woken = if events.is_empty() {
            let mut rung = self.rung.lock().unwrap_or_else(|p| p.into_inner());
            if !*rung {
                rung = self
                    .ready
                    .wait_timeout(rung, nap)
                    .map_or_else(|p| p.into_inner().0, |(guard, _)| guard);
            }
            std::mem::replace(&mut *rung, false)
        } else {
            true
        };
        self.sleeping.store(false, Ordering::SeqCst);
        woken
    }
}

/// Serves as a rank with `count` local workers until rank 0 ends the job;
/// then ends the local workers and acknowledges (`TAG_DONE`).
pub(super) fn run(world: &SimpleCommunicator, count: usize) {
    let (events_tx, events) = crossbeam_channel::unbounded();
    let mut node = Node {
        world,
        rank: world.rank(),
        locals: (0..count)
            .map(|_| Local {
                proc: None,
                stream: Assembler::default(),
                max_frame: 4096,
                out: Vec::new(),
            })
            .collect(),
        events_tx,
        events,
        doorbell: Arc::default(),
        next_generation: 1,
    };
    node.serve();
    node.shut_down();
    let _ = io::stdout().flush();
    world.process_at_rank(0).send_with_tag(&[0u8][..], TAG_DONE);
}

impl Node<'_> {
    fn serve(&mut self) {
        let mut backoff = Backoff::new();
        let root = self.world.process_at_rank(0);
        loop {
            let mut busy = false;
            let mut starts = Vec::new();
            while let Some((message, status)) = root.immediate_matched_probe() {
                busy = true;
                let data = receive(message, &status);
                match status.tag() {
                    TAG_FINALIZE => return,
                    tag if tag >= TAG_DATA_BASE
                        && ((tag - TAG_DATA_BASE) as usize) < self.locals.len() =>
                    {
                        self.on_data((tag - TAG_DATA_BASE) as usize, data, &mut starts);
                    }
                    tag => eprintln!(
                        "pool-runtime: MPI rank {}: ignoring a message with tag {tag} from rank 0",
                        self.rank
                    ),
                }
            }
            if !starts.is_empty() {
                self.start(starts);
            }
            while let Ok(event) = self.events.try_recv() {
                busy = true;
                self.on_event(event);
            }
            self.report_timed_starts();
            self.flush_all();
            if busy {
                backoff.reset();
                continue;
            }
            match backoff.next() {
                Duration::ZERO => thread::yield_now(),
                // Woken at once by a local worker's frame or end.
                nap => {
                    if self.doorbell.wait(nap, &self.events) {
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// Bytes from rank 0 for local worker `local`.
    fn on_data(&mut self, local: usize, data: Vec<u8>, starts: &mut Vec<Start>) {
        let mut frames = Vec::new();
        let max = self.locals[local].max_frame;
        let pushed = self.locals[local].stream.push(data, max, &mut frames);
        for frame in frames {
            self.on_frame(local, frame, starts);
        }
        if let Err(err) = pushed {
            self.broken(&format!("a bad frame from rank 0: {err}"));
        }
    }

    /// A frame from rank 0 (without its length) for local worker `local`.
    fn on_frame(&mut self, local: usize, frame: Vec<u8>, starts: &mut Vec<Start>) {
        let (header, log_level) = match wire::split_frame::<ToWorker>(&frame) {
            Ok((header, body)) => (header, body.first().copied().unwrap_or(wire::LOG_OFF)),
            Err(err) => self.broken(&format!("a bad frame from rank 0: {err}")),
        };
        let place = &mut self.locals[local];
        match header {
            ToWorker::Hello {
                fingerprint,
                max_frame,
                ..
            } => {
                if let Some(old) = place.proc.take() {
                    // Cannot happen (rank 0 says hello to a free place): the
                    // old process is not left running unseen.
                    old.signal.kill();
                }
                place.max_frame = usize::try_from(max_frame).unwrap_or(usize::MAX);
                starts.push(Start {
                    local,
                    fingerprint,
                    max_frame: place.max_frame,
                    log_level,
                });
            }
            ToWorker::Run {
                chunk,
                items,
                timed,
                ..
            } => {
                // Without a process, the frame is for one that died: rank 0
                // requeues its chunks when it hears of the death.
                if let Some(proc) = place.proc.as_mut().filter(|p| !p.exiting) {
                    proc.pieces.push_back(Piece {
                        chunk,
                        count: items,
                        received: 0,
                        timed,
                    });
                    let _ = proc.to.send(frame);
                }
            }
            ToWorker::Mapped { .. } => {
                self.broken("rank 0 sent a chunk whose body is in its own shared memory, which other ranks cannot map")
            }
            ToWorker::Init { .. } => {
                if let Some(proc) = place.proc.as_mut().filter(|p| !p.exiting) {
                    let _ = proc.to.send(frame);
                }
            }
            ToWorker::Exit => {
                if let Some(proc) = place.proc.as_mut().filter(|p| !p.exiting) {
                    proc.exiting = true;
                    if proc.pieces.is_empty() {
                        let _ = proc.to.send(frame);
                    } else {
                        // Stopped in the middle of its work: a timeout, or
                        // the pool was terminated.
                        proc.killed = true;
                        proc.signal.kill();
                    }
                }
            }
        }
    }

    /// Starts a local worker for each `Hello`, all at once, and answers
    /// each `Hello` with a `Ready` (or a `BYE` if it failed).
    fn start(&mut self, starts: Vec<Start>) {
        let mut pending = Vec::new();
        for start in starts {
            let launch = Launch {
                init: None,
                harness_args: None,
                fingerprint: start.fingerprint,
                max_frame: start.max_frame,
                startup_timeout: STARTUP_TIMEOUT,
                fork_server: false,
                // Not offered under MPI (see `PoolBuilder::max_memory_per_child`).
                max_memory: None,
                log_level: Some(start.log_level),
                // Their frames are forwarded to rank 0 as they come.
                pull_results: false,
            };
            match process::start(&launch, &|| false) {
                Ok(started) => pending.push((start.local, launch, started)),
                Err(err) => self.start_failed(start.local, &err),
            }
        }
        for (local, launch, started) in pending {
            match process::finish(started, &launch, |_| {}) {
                Ok(spawned) => self.install(local, spawned, launch.fingerprint),
                Err(err) => self.start_failed(local, &err),
            }
        }
    }

    fn start_failed(&mut self, local: usize, err: &crate::Error) {
        eprintln!(
            "pool-runtime: MPI rank {}: local worker {local} failed to start: {err}",
            self.rank
        );
        self.send_control(local, TAG_BYE, &bye_body(local, EXIT_PROTOCOL));
    }

    /// Takes a started worker into place `local`, with its reader and
    /// writer threads, and tells rank 0 it is ready.
    fn install(&mut self, local: usize, spawned: Spawned, fingerprint: u64) {
        let Spawned {
            mut child,
            pid,
            to,
            from,
            progress,
        } = spawned;
        let generation = self.next_generation;
        self.next_generation += 1;
        let signal = child.signaller();
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let writer = thread::Builder::new()
            .name(format!("pool-relay-out-{local}"))
            .spawn(move || write_loop(&rx, &to));
        let events = self.events_tx.clone();
        let doorbell = Arc::clone(&self.doorbell);
        let max = self.locals[local].max_frame;
        let reader = thread::Builder::new()
            .name(format!("pool-relay-in-{local}"))
            .spawn(move || {
                let clean = read_loop(&from, max, &events, &doorbell, local, generation);
                if !clean {
                    // It broke the protocol: it cannot be trusted further.
                    child.kill();
                }
                // Its channel ended; it normally exits with it. If it does
                // not within a moment, it is killed.
                let deadline = Instant::now() + Duration::from_millis(200);
                while child.try_wait().is_none() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(2));
                }
                child.kill();
                let cause = child.wait();
                let _ = events.send(Event::Exited {
                    local,
                    generation,
                    cause,
                });
                doorbell.ring();
            });
        let failed = writer.is_err() || reader.is_err();
        if failed {
            // Without its threads it is of no use.
            signal.kill();
            if reader.is_err() {
                // Nobody reports its end: rank 0 hears of it from here.
                self.send_control(local, TAG_BYE, &bye_body(local, EXIT_PROTOCOL));
                return;
            }
        }
        self.locals[local].proc = Some(Proc {
            pid,
            generation,
            signal,
            to: tx,
            progress,
            pieces: VecDeque::new(),
            exiting: failed,
            killed: failed,
            reported: None,
        });
        if failed {
            return; // its reader reports the death, failing the handshake
        }
        let ready = FromWorker::Ready {
            protocol: wire::PROTOCOL_VERSION,
            fingerprint,
            pid,
        };
        self.push_out(local, &wire::encode_header(&ready));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Frame {
                local,
                generation,
                frame,
            } => {
                let Some(proc) = self.locals[local]
                    .proc
                    .as_mut()
                    .filter(|p| p.generation == generation)
                else {
                    return;
                };
                if let Ok((
                    FromWorker::Results {
                        chunk,
                        first,
                        count,
                    },
                    _,
                )) = wire::split_frame::<FromWorker>(&frame)
                    && let Some(front) = proc.pieces.front_mut()
                    && front.chunk == chunk
                {
                    front.received = first.saturating_add(count);
                    if front.received >= front.count {
                        proc.pieces.pop_front();
                    }
                }
                // Rank 0 checks every frame, as it would a local worker's.
                self.push_out(local, &frame);
            }
            Event::Exited {
                local,
                generation,
                cause,
            } => {
                let place = &mut self.locals[local];
                if place.proc.as_ref().map(|p| p.generation) != Some(generation) {
                    return;
                }
                let Some(proc) = place.proc.take() else {
                    return;
                };
                place.stream.clear();
                let clean = proc.exiting
                    && !proc.killed
                    && proc.pieces.is_empty()
                    && cause == ExitCause::Code(0);
                if clean {
                    self.send_control(local, TAG_BYE, &bye_body(local, 0));
                    return;
                }
                let page = proc.progress.read();
                let died = Died {
                    local: local as u32,
                    pid: proc.pid,
                    cause,
                    running: page.busy().then_some((page.chunk, page.item)),
                };
                self.send_control(local, TAG_DIED, &died.encode());
            }
        }
    }

    /// Reports to rank 0 the start of each item a timeout watches.
    fn report_timed_starts(&mut self) {
        for local in 0..self.locals.len() {
            let Some(proc) = self.locals[local].proc.as_mut() else {
                continue;
            };
            if proc.exiting || !proc.pieces.iter().any(|p| p.timed) {
                continue;
            }
            let page = proc.progress.read();
            let now = (page.chunk, page.item);
            if !page.busy() || proc.reported == Some(now) {
                continue;
            }
            proc.reported = Some(now);
            self.send_control(local, TAG_START, &start_body(local as u32, now.0, now.1));
        }
    }

    /// Queues a frame (without its length) for rank 0.
    fn push_out(&mut self, local: usize, frame: &[u8]) {
        let out = &mut self.locals[local].out;
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
        if out.len() >= BATCH {
            self.flush(local);
        }
    }

    /// Sends the frames queued for rank 0 from local worker `local`.
    fn flush(&mut self, local: usize) {
        let out = std::mem::take(&mut self.locals[local].out);
        if out.is_empty() {
            return;
        }
        let root = self.world.process_at_rank(0);
        for piece in pieces(out.len()) {
            root.send_with_tag(&out[piece], data_tag(local));
        }
        let mut out = out;
        out.clear();
        self.locals[local].out = out;
    }

    fn flush_all(&mut self) {
        for local in 0..self.locals.len() {
            self.flush(local);
        }
    }

    /// Sends a control message about `local`, after its frames.
    fn send_control(&mut self, local: usize, tag: mpi::Tag, body: &[u8]) {
        self.flush(local);
        self.world.process_at_rank(0).send_with_tag(body, tag);
    }

    /// The stream from rank 0 is corrupt: nothing can go on.
    fn broken(&self, what: &str) -> ! {
        eprintln!(
            "pool-runtime: MPI rank {}: {what}; aborting the job",
            self.rank
        );
        for place in &self.locals {
            if let Some(proc) = &place.proc {
                proc.signal.kill();
            }
        }
        self.world.abort(EXIT_PROTOCOL)
    }

    /// The job ends: idle local workers are told to exit, busy ones are
    /// killed; returns once all have ended (killing the late ones).
    fn shut_down(&mut self) {
        let exit = wire::encode_header(&ToWorker::Exit);
        let mut live = 0;
        for place in &mut self.locals {
            let Some(proc) = place.proc.as_mut() else {
                continue;
            };
            live += 1;
            if proc.pieces.is_empty() && !proc.exiting {
                let _ = proc.to.send(exit.clone());
            } else {
                proc.signal.kill();
            }
            proc.exiting = true;
        }
        let mut deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let mut killed = false;
        while live > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(Event::Exited {
                    local, generation, ..
                }) => {
                    let place = &mut self.locals[local];
                    if place.proc.as_ref().map(|p| p.generation) == Some(generation) {
                        place.proc = None;
                        live -= 1;
                    }
                }
                Ok(Event::Frame { .. }) => {}
                Err(_) if !killed => {
                    // Late: killed, then given a moment to be reaped.
                    killed = true;
                    deadline = Instant::now() + Duration::from_secs(2);
                    for place in &self.locals {
                        if let Some(proc) = &place.proc {
                            proc.signal.kill();
                        }
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// A local worker's writer thread: writes the frames it is given, as many
/// at once as are waiting, until the channel or the socket ends.
fn write_loop(frames: &Receiver<Vec<u8>>, to: &UnixStream) {
    let mut buf = Vec::new();
    let mut writer = to;
    for frame in frames.iter() {
        buf.clear();
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            buf.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            buf.extend_from_slice(&frame);
            if buf.len() < WRITE_BATCH {
                next = frames.try_recv().ok();
            }
        }
        if writer.write_all(&buf).is_err() {
            return; // the worker is gone: its reader reports it
        }
    }
}

/// A local worker's reader thread: passes its frames on until its channel
/// ends; `false` if it broke the protocol.
fn read_loop(
    from: &UnixStream,
    max: usize,
    events: &Sender<Event>,
    doorbell: &Doorbell,
    local: usize,
    generation: u64,
) -> bool {
    let mut reader = BufReader::with_capacity(64 * 1024, from);
    loop {
        let mut frame = Vec::new();
        match wire::read_frame(&mut reader, max, &mut frame) {
            Ok(()) => {
                let event = Event::Frame {
                    local,
                    generation,
                    frame,
                };
                if events.send(event).is_err() {
                    return true;
                }
                doorbell.ring();
            }
            Err(ProtocolError::Closed) => return true,
            // A worker that dies with unread input resets the connection.
            Err(ProtocolError::Io(err))
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                return true;
            }
            Err(err) => {
                eprintln!("pool-runtime: local worker {local}: {err}");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doorbell_wakes_a_sleeping_relay_at_once() {
        let bell = Arc::new(Doorbell::default());
        let (tx, rx) = crossbeam_channel::unbounded::<Event>();
        // Nobody rings: the nap runs its course.
        let start = Instant::now();
        assert!(!bell.wait(Duration::from_millis(20), &rx));
        assert!(start.elapsed() >= Duration::from_millis(20));
        // News already waiting: no sleep at all.
        tx.send(Event::Exited {
            local: 0,
            generation: 1,
            cause: ExitCause::Code(0),
        })
        .expect("send");
        assert!(bell.wait(Duration::from_secs(60), &rx));
        let _ = rx.try_recv();
        // A reader rings while the relay sleeps: it wakes long before the nap ends.
        let ringer = {
            let bell = Arc::clone(&bell);
            thread::spawn(move || {
                while !bell.sleeping.load(Ordering::SeqCst) {
                    thread::yield_now();
                }
                bell.ring();
            })
        };
        let start = Instant::now();
        assert!(bell.wait(Duration::from_secs(60), &rx));
        assert!(start.elapsed() < Duration::from_secs(30));
        ringer.join().expect("ringer");
    }

    #[test]
    fn frames_are_written_with_their_length() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(b"one".to_vec()).expect("send");
        tx.send(Vec::new()).expect("send");
        drop(tx);
        write_loop(&rx, &a);
        drop(a);
        let mut reader = BufReader::new(&b);
        let mut frame = Vec::new();
        wire::read_frame(&mut reader, 64, &mut frame).expect("first");
        assert_eq!(frame, b"one");
        wire::read_frame(&mut reader, 64, &mut frame).expect("second");
        assert!(frame.is_empty());
        assert!(matches!(
            wire::read_frame(&mut reader, 64, &mut frame),
            Err(ProtocolError::Closed)
        ));
    }
}
