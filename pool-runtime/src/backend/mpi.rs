//! The MPI backend (feature `mpi`): the same binary under `mpirun`,
//! `mpiexec` or `srun`; rank 0 runs `main` and owns the pool, every other
//! rank is a worker.
//!
//! - **Start-up.** [`enter`] (called by `init()`) sees the launcher's
//!   variables, initialises MPI with `Threading::Funneled` and checks the
//!   world MPI reports against the launcher's. Rank 0 initialises MPI on a
//!   thread of its own, `pool-mpi`, which then makes every MPI call of the
//!   process; the other ranks initialise it on their main thread and serve
//!   tasks there until rank 0 finalises.
//! - **Frames.** Each direction between rank 0 and a worker rank is a byte
//!   stream of messages (tag [`data_tag`]) carrying the usual frames
//!   (`u32 length ++ header ++ body`); a frame is one message, or several
//!   when it is large, so no message comes near MPI's 2 GiB count limit.
//!   The worker runs the unchanged [`worker::serve_with`] over that stream,
//!   and sends its results in batches while more input is waiting.
//! - **Pools.** A pool's remote start ([`attach_all`]) asks the `pool-mpi`
//!   thread for free ranks; it sends each the handshake, runs the
//!   initializer, and attaches them to the scheduler. A pool's `Exit` frame
//!   ends `serve` on the worker, which answers [`TAG_BYE`] and waits for the
//!   next pool; rank 0 then detaches it.
//! - **End.** When rank 0's process exits (an `atexit` hook), every rank
//!   gets [`TAG_FINALIZE`], answers [`TAG_DONE`] and calls `MPI_Finalize`.
//!   A worker that cannot go on calls `MPI_Abort` instead of hanging in
//!   `MPI_Finalize`.
//! - **Idle ranks** poll with a backoff (spin 1 ms, then sleep up to 1 ms
//!   at a time), so they do not burn a core inside MPI.
//! - **Local workers** ([`node`]). With [`LOCAL_WORKERS_ENV`] set on a
//!   worker rank (`auto`: one per CPU it may use; or a number), the rank
//!   runs no task itself: it starts that many local worker processes, as a
//!   pool without MPI does, and relays each one's frames to rank 0 under a
//!   tag of its own ([`data_tag`]). Every rank reports its count at start-up
//!   ([`TAG_CAPACITY`]), so rank 0 sees one worker per local process (an
//!   *endpoint*), and its scheduler paces and sizes chunks for each as for
//!   a local worker. A local worker that dies (or that rank 0's scheduler
//!   stops for a timeout, with an `Exit` frame the rank turns into
//!   `SIGKILL`) is reported with the item it was running ([`TAG_DIED`]):
//!   rank 0 writes that item into the endpoint's progress page, so its
//!   scheduler blames exactly it (`WorkerDied`, `TaskTimeout`, retries) and
//!   requeues the rest, then asks the rank for a replacement with a new
//!   handshake. For items under a timeout the rank reports each item's
//!   start ([`TAG_START`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};
use mpi::environment::Universe;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, Destination, Equivalence, Source};
use mpi::{Tag, Threading};
use pool_core::ProtocolError;
use pool_core::wire::{self, ToWorker};

use super::Outgoing;
use super::handshake::{self, Launch};
use super::shm::{Progress, now_ns};
use super::{Events, Link, RemoteStart};
use crate::error::{Error, ExitCause};
use crate::worker::{self, WORKER_ENV};

mod node;

/// Worker → rank 0: an endpoint's `serve` ended (the pool said exit);
/// body: `u32` LE local index, `i32` LE code.
const TAG_BYE: Tag = 2;
/// Rank 0 → worker: the job ends; finalise MPI and exit.
const TAG_FINALIZE: Tag = 3;
/// Worker → rank 0: finalising now.
const TAG_DONE: Tag = 4;
/// Worker → rank 0, once at start-up: `u32` LE, its local workers (0: it
/// serves tasks itself, as one endpoint).
const TAG_CAPACITY: Tag = 5;
/// Worker → rank 0: a local worker died; body: see [`Died`].
const TAG_DIED: Tag = 6;
/// Worker → rank 0: a local worker started an item under a timeout; body:
/// `u32` local index, `u64` chunk, `u64` item, all LE.
const TAG_START: Tag = 7;
/// Stream bytes (frames) of endpoint `local` of a rank, in either direction,
/// travel under tag `TAG_DATA_BASE + local`.
const TAG_DATA_BASE: Tag = 64;
/// The most local workers a rank may run (tags stay below 32 767, the
/// smallest `MPI_TAG_UB` the standard allows).
const MAX_LOCAL: usize = 4096;

/// The environment variable that gives a worker rank local worker processes:
/// `auto` (one per CPU the rank may use) or a number; unset or `0`: the rank
/// runs tasks itself.
pub(crate) const LOCAL_WORKERS_ENV: &str = "POOL_RUNTIME_MPI_LOCAL_WORKERS";

/// Set on rank 0: at the end of the job, its MPI thread prints how many
/// messages it sent and received (for benchmarks).
const STATS_ENV: &str = "POOL_RUNTIME_MPI_STATS";

/// The tag of endpoint `local`'s stream.
fn data_tag(local: usize) -> Tag {
    TAG_DATA_BASE + local as Tag
}

/// The largest MPI message sent: a frame above it travels as several
/// messages (MPI counts are C `int`s, so one message stays below 2 GiB).
const MAX_MESSAGE: usize = 1 << 30;
/// A frame body up to this size is copied into the message that carries the
/// header; a larger one is sent from the pool's buffer as messages of its own.
const INLINE_BODY: usize = 64 * 1024;
/// How long rank 0 waits, once `main` has returned, for busy worker ranks
/// to finish their chunks and finalise before it aborts the job.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of a worker rank that broke off (as the local backend's).
const EXIT_PROTOCOL: i32 = 70;

/// What the program was started by, from the launcher's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Launcher {
    /// The variables that identified it, for messages.
    what: &'static str,
    rank: i32,
    /// The world size the launcher announced, if it did.
    size: Option<i32>,
}

impl Launcher {
    /// Reads the launcher's variables; `None` without a launcher.
    fn detect(var: impl Fn(&str) -> Option<String>) -> Option<Launcher> {
        let num = |name: &str| var(name).and_then(|v| v.trim().parse::<i32>().ok());
        if let Some(rank) = num("OMPI_COMM_WORLD_RANK") {
            return Some(Launcher {
                what: "Open MPI's mpirun (OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE)",
                rank,
                size: num("OMPI_COMM_WORLD_SIZE"),
            });
        }
        if let Some(rank) = num("PMIX_RANK") {
            let size = num("PMIX_SIZE")
                .or_else(|| num("SLURM_STEP_NUM_TASKS"))
                .or_else(|| num("SLURM_NTASKS"));
            return Some(Launcher {
                what: "a PMIx launcher such as srun --mpi=pmix (PMIX_RANK, SLURM_NTASKS)",
                rank,
                size,
            });
        }
        if let Some(rank) = num("PMI_RANK") {
            return Some(Launcher {
                what: "a PMI launcher such as MPICH's mpiexec or srun --mpi=pmi2 (PMI_RANK/PMI_SIZE)",
                rank,
                size: num("PMI_SIZE"),
            });
        }
        None
    }

    /// Checks the world MPI reports against the launcher's.
    fn check(&self, rank: i32, size: i32) -> Result<(), String> {
        if rank == self.rank && self.size.is_none_or(|s| s == size) {
            return Ok(());
        }
        let announced = self
            .size
            .map_or_else(|| "an unknown number".to_owned(), |s| s.to_string());
        Err(format!(
            "pool-runtime: started by {} as rank {} of {announced}, but MPI reports rank {rank} of {size}: \
             the MPI library this binary is linked with does not belong to that launcher \
             (each process would run alone). Start it with the mpirun/mpiexec of the MPI library \
             it was built against, or rebuild it against the launcher's.",
            self.what, self.rank
        ))
    }
}

/// Rank 0's link to its `pool-mpi` thread.
struct Rank0 {
    commands: Sender<Command>,
    size: usize,
    /// Endpoints (workers a pool may use) over all worker ranks.
    endpoints: usize,
}

static RANK0: OnceLock<Rank0> = OnceLock::new();
/// This process's rank, once MPI is initialised by [`enter`].
static RANK: OnceLock<u32> = OnceLock::new();
/// Set once this process called `MPI_Finalize` (or is about to).
static FINALIZED: AtomicBool = AtomicBool::new(false);

/// The MPI rank of this process, when it runs under an MPI launcher.
pub(crate) fn rank() -> Option<u32> {
    RANK.get().copied()
}

/// Under an MPI launcher: initialises MPI; on rank 0 returns, on any other
/// rank serves as a worker and exits. Without a launcher, returns at once.
pub(crate) fn enter() {
    if RANK.get().is_some() {
        return; // called twice
    }
    if std::env::var_os(WORKER_ENV).is_some() {
        // A local worker process (of a rank with local workers): no MPI
        // here, but `mpi_rank()` says which rank it works for.
        if let Some(launcher) = Launcher::detect(|name| std::env::var(name).ok()) {
            let _ = RANK.set(launcher.rank as u32);
        }
        return;
    }
    let Some(launcher) = Launcher::detect(|name| std::env::var(name).ok()) else {
        return;
    };
    if launcher.rank == 0 {
        start_rank0(launcher);
    } else {
        run_worker_rank(&launcher);
    }
}

/// Ranks a new pool may use, and how it attaches them; `None` when this
/// program does not run under an MPI launcher.
///
/// # Errors
///
/// [`Error::NotWorkerCapable`] under a launcher when `init()` never ran;
/// [`Error::InvalidSetting`] when the job has no rank besides rank 0.
pub(crate) fn pool_ranks() -> Result<Option<(usize, RemoteStart)>, Error> {
    let Some(rank0) = RANK0.get() else {
        if Launcher::detect(|name| std::env::var(name).ok()).is_some() {
            // Every rank is running `main`: a pool here would be one of N.
            return Err(Error::NotWorkerCapable);
        }
        return Ok(None);
    };
    if rank0.size < 2 {
        return Err(Error::InvalidSetting(
            "the MPI job has a single rank, so no rank can be a worker: start at least two \
             (mpirun -n 2 ...), or run the program without a launcher for local worker processes"
                .into(),
        ));
    }
    Ok(Some((rank0.endpoints, attach_all)))
}

/// The remote start of a pool under MPI: attaches `processes` free ranks.
fn attach_all(shared: &Arc<dyn Events>) -> Result<(), Error> {
    let stopped = || Error::Spawn(io::Error::other("the pool-mpi thread has stopped"));
    let rank0 = RANK0.get().ok_or_else(stopped)?;
    let (reply, answer) = crossbeam_channel::bounded(1);
    rank0
        .commands
        .send(Command::Attach(AttachRequest {
            shared: Arc::clone(shared),
            reply,
            deadline: Instant::now() + shared.launch().startup_timeout,
        }))
        .map_err(|_| stopped())?;
    answer.recv().unwrap_or_else(|_| Err(stopped()))
}

// ----- start-up -----

fn start_rank0(launcher: Launcher) {
    let (commands, inbox) = crossbeam_channel::unbounded();
    let (started_tx, started) = crossbeam_channel::bounded(1);
    let spawned = thread::Builder::new()
        .name("pool-mpi".into())
        .spawn(move || {
            // The thread that initialises MPI is the one `Funneled` allows
            // to call it: all of rank 0's MPI calls happen here.
            let universe = match init_mpi(&launcher) {
                Ok(universe) => universe,
                Err(message) => {
                    let _ = started_tx.send(Err(message));
                    return;
                }
            };
            let world = universe.world();
            let capacities = match gather_capacities(&world) {
                Ok(capacities) => capacities,
                Err(message) => {
                    eprintln!("{message}");
                    world.abort(1);
                }
            };
            let endpoints = capacities.iter().skip(1).map(|&c| c.max(1)).sum();
            let _ = started_tx.send(Ok((world.size() as usize, endpoints)));
            let mut hub = Hub::new(world, inbox, &capacities);
            let reply = hub.run();
            if std::env::var_os(STATS_ENV).is_some() {
                eprintln!(
                    "pool-runtime: rank 0's MPI thread sent {} messages and received {}",
                    hub.sent, hub.received
                );
            }
            FINALIZED.store(true, Ordering::SeqCst);
            drop(hub);
            drop(universe); // MPI_Finalize
            let _ = reply.send(());
        });
    if let Err(err) = spawned {
        eprintln!("pool-runtime: cannot start the MPI thread: {err}");
        std::process::exit(1);
    }
    match started.recv() {
        Ok(Ok((size, endpoints))) => {
            let _ = RANK.set(0);
            let _ = RANK0.set(Rank0 {
                commands,
                size,
                endpoints,
            });
            // SAFETY: registering a plain `extern "C" fn` with no arguments.
            if unsafe { libc::atexit(finalize_at_exit) } != 0 {
                eprintln!("pool-runtime: cannot register the MPI finalisation at exit");
            }
        }
        Ok(Err(message)) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("pool-runtime: the MPI thread stopped during start-up");
            std::process::exit(1);
        }
    }
}

/// Rank 0 at start-up: how many local workers each rank runs (index 0 is
/// rank 0's, always 0); every worker rank sends [`TAG_CAPACITY`] first.
fn gather_capacities(world: &SimpleCommunicator) -> Result<Vec<usize>, String> {
    let size = world.size() as usize;
    let mut capacities = vec![0usize; size];
    let mut heard = vec![false; size];
    heard[0] = true;
    let mut missing = size - 1;
    let mut backoff = Backoff::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while missing > 0 {
        let Some((message, status)) = world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_CAPACITY)
        else {
            if Instant::now() > deadline {
                return Err(format!(
                    "pool-runtime: {missing} MPI rank(s) did not reach pool_runtime::init() within 120 s"
                ));
            }
            backoff.pause();
            continue;
        };
        backoff.reset();
        let data = receive(message, &status);
        let rank = status.source_rank() as usize;
        let count = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes) as usize;
        if rank < size && !heard[rank] {
            heard[rank] = true;
            capacities[rank] = count.min(MAX_LOCAL);
            missing -= 1;
        }
    }
    Ok(capacities)
}

/// The local workers this worker rank runs, from [`LOCAL_WORKERS_ENV`].
fn local_workers_from_env(value: Option<&str>) -> Result<usize, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    let count = if value.eq_ignore_ascii_case("auto") {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        value.parse::<usize>().map_err(|_| {
            format!("pool-runtime: {LOCAL_WORKERS_ENV}={value:?}: expected `auto` or a number")
        })?
    };
    if count > MAX_LOCAL {
        return Err(format!(
            "pool-runtime: {LOCAL_WORKERS_ENV}={value}: at most {MAX_LOCAL} local workers per rank"
        ));
    }
    Ok(count)
}

/// Initialises MPI on the calling thread and checks the world it reports.
fn init_mpi(launcher: &Launcher) -> Result<Universe, String> {
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Funneled) else {
        return Err(
            "pool-runtime: MPI was initialised before pool_runtime::init(); call init() first in main"
                .to_owned(),
        );
    };
    let world = universe.world();
    launcher.check(world.rank(), world.size())?;
    if threading < Threading::Funneled {
        return Err(format!(
            "pool-runtime: the MPI library offers thread support {threading:?}, below the Funneled this backend needs"
        ));
    }
    let _ = RANK.set(world.rank() as u32);
    Ok(universe)
}

/// `atexit` on rank 0: ends every worker rank and finalises MPI.
extern "C" fn finalize_at_exit() {
    let Some(rank0) = RANK0.get() else { return };
    let (reply, done) = crossbeam_channel::bounded(1);
    if rank0.commands.send(Command::Finalize(reply)).is_ok() {
        let _ = done.recv();
    }
}

/// `atexit` on a worker rank: reached only if a task ends the process
/// (`std::process::exit`); under MPI that ends the job, so say so clearly.
extern "C" fn worker_exit_hook() {
    if FINALIZED.load(Ordering::SeqCst) {
        return;
    }
    let rank = rank().unwrap_or(0);
    eprintln!(
        "pool-runtime: worker rank {rank} is exiting in the middle of the job (a task called \
         std::process::exit?): under MPI a lost rank ends the whole job; aborting it"
    );
    SimpleCommunicator::world().abort(EXIT_PROTOCOL);
}

// ----- worker ranks -----

fn run_worker_rank(launcher: &Launcher) -> ! {
    let universe = match init_mpi(launcher) {
        Ok(universe) => universe,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    };
    let world = universe.world();
    let rank = world.rank(); // the launcher's, which is not 0 (`init_mpi` checked)
    // SAFETY: registering a plain `extern "C" fn` with no arguments.
    unsafe { libc::atexit(worker_exit_hook) };
    let setting = std::env::var(LOCAL_WORKERS_ENV).ok();
    let local = match local_workers_from_env(setting.as_deref()) {
        Ok(count) => count,
        Err(message) => {
            eprintln!("{message}");
            world.abort(EXIT_PROTOCOL);
        }
    };
    if local == 1 && setting.is_some_and(|v| v.trim().eq_ignore_ascii_case("auto")) {
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if online > 1 {
            eprintln!(
                "pool-runtime: MPI rank {rank}: {LOCAL_WORKERS_ENV}=auto gives 1 local worker: this \
                 rank may use 1 of the node's {online} CPUs (bound by the launcher: mpirun binds each \
                 rank to a core when it starts 2 or fewer); start it with mpirun --bind-to none, or \
                 srun --cpus-per-task, to use more"
            );
        }
    }
    world
        .process_at_rank(0)
        .send_with_tag(&(local as u32).to_le_bytes()[..], TAG_CAPACITY);
    if local > 0 {
        // Tasks run in local worker processes; this rank relays.
        node::run(&world, local);
        FINALIZED.store(true, Ordering::SeqCst);
        drop(universe); // MPI_Finalize
        std::process::exit(0)
    }
    worker::install_panic_hook();
    let mut reader = RankReader::new(&world);
    let mut writer = RankWriter::new(&world);
    // Another message from rank 0 is waiting (or buffered): results can wait.
    let more_input = |r: &RankReader<'_>| {
        r.pos < r.buf.len() || r.world.process_at_rank(0).immediate_probe().is_some()
    };
    loop {
        let outcome = worker::serve_with(&mut reader, &mut writer, None, more_input);
        if reader.finalize {
            break;
        }
        let code = match outcome {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("pool-runtime worker (MPI rank {rank}): {err}");
                EXIT_PROTOCOL
            }
        };
        // Ready for the next pool: drop whatever a broken exchange left.
        reader.reset();
        writer.buf.clear();
        let _ = io::stdout().flush();
        world
            .process_at_rank(0)
            .send_with_tag(&bye_body(0, code)[..], TAG_BYE);
    }
    let _ = io::stdout().flush();
    world.process_at_rank(0).send_with_tag(&[0u8][..], TAG_DONE);
    FINALIZED.store(true, Ordering::SeqCst);
    drop(universe); // MPI_Finalize
    std::process::exit(0)
}

/// The body of a [`TAG_BYE`] message.
fn bye_body(local: usize, code: i32) -> [u8; 8] {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&(local as u32).to_le_bytes());
    body[4..].copy_from_slice(&code.to_le_bytes());
    body
}

/// Polls without burning a core: spins (yielding) for 1 ms after the last
/// activity, then sleeps for an eighth of the idle time so far, between
/// 10 µs and 1 ms. The spin keeps round trips short (a shorter one, 100 µs,
/// made a round trip under `mpirun -n 3` on two cores ten times slower);
/// the sleeps keep an idle rank at a few percent of a core.
struct Backoff {
    since: Instant,
}

impl Backoff {
    const SPIN: Duration = Duration::from_millis(1);

    fn new() -> Self {
        Backoff {
            since: Instant::now(),
        }
    }

    fn reset(&mut self) {
        self.since = Instant::now();
    }

    /// How long to sleep now; zero while still spinning.
    fn next(&self) -> Duration {
        let idle = self.since.elapsed();
        if idle < Self::SPIN {
            Duration::ZERO
        } else {
            (idle / 8).clamp(Duration::from_micros(10), Duration::from_millis(1))
        }
    }

    fn pause(&self) {
        match self.next() {
            Duration::ZERO => thread::yield_now(),
            nap => thread::sleep(nap),
        }
    }
}

/// Receives a probed message whole.
fn receive(message: mpi::point_to_point::Message, status: &mpi::point_to_point::Status) -> Vec<u8> {
    let count = usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0);
    let mut buf = vec![0u8; count];
    message.matched_receive_into(&mut buf[..]);
    buf
}

/// The worker's side of the stream from rank 0.
struct RankReader<'a> {
    world: &'a SimpleCommunicator,
    buf: Vec<u8>,
    pos: usize,
    /// Rank 0 said finalise: the stream has ended.
    finalize: bool,
}

impl<'a> RankReader<'a> {
    fn new(world: &'a SimpleCommunicator) -> Self {
        RankReader {
            world,
            buf: Vec::new(),
            pos: 0,
            finalize: false,
        }
    }

    fn reset(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }
}

impl Read for RankReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.finalize || out.is_empty() {
                return Ok(0);
            }
            let root = self.world.process_at_rank(0);
            let backoff = Backoff::new();
            let (message, status) = loop {
                if let Some(found) = root.immediate_matched_probe() {
                    break found;
                }
                backoff.pause();
            };
            let data = receive(message, &status);
            match status.tag() {
                tag if tag == data_tag(0) => {
                    self.buf = data;
                    self.pos = 0;
                }
                TAG_FINALIZE => self.finalize = true,
                tag => {
                    return Err(io::Error::other(format!(
                        "an MPI message with unknown tag {tag} from rank 0"
                    )));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The worker's side of the stream to rank 0: keeps whole frames until
/// `flush` (which `serve_with` calls before it would wait for input) or
/// until [`BATCH`] bytes wait, then sends them as one message (several
/// above [`MAX_MESSAGE`]): a rank fed many small chunks answers in batches.
struct RankWriter<'a> {
    world: &'a SimpleCommunicator,
    buf: Vec<u8>,
}

/// Bytes of finished frames a worker rank keeps before sending them anyway.
const BATCH: usize = 256 * 1024;

impl<'a> RankWriter<'a> {
    fn new(world: &'a SimpleCommunicator) -> Self {
        RankWriter {
            world,
            buf: Vec::new(),
        }
    }

    /// Sends the complete frames at the start of the buffer.
    fn send_complete_frames(&mut self) {
        let mut len = 0;
        while let Some(next) = complete_frame_len(&self.buf[len..]) {
            len += next;
        }
        if len == 0 {
            return;
        }
        let root = self.world.process_at_rank(0);
        for piece in pieces(len) {
            root.send_with_tag(&self.buf[piece], data_tag(0));
        }
        self.buf.drain(..len);
    }
}

impl Write for RankWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for data in bufs {
            self.buf.extend_from_slice(data);
            total += data.len();
        }
        if self.buf.len() >= BATCH {
            self.send_complete_frames();
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_complete_frames();
        Ok(())
    }
}

/// The length (prefix included) of the complete frame at the start of `buf`.
fn complete_frame_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = 4 + u32::from_le_bytes(prefix) as usize;
    (buf.len() >= len).then_some(len)
}

/// Splits `0..len` into message-sized ranges (at least one, even if empty).
fn pieces(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = len.div_ceil(MAX_MESSAGE).max(1);
    (0..count).map(move |i| i * MAX_MESSAGE..((i + 1) * MAX_MESSAGE).min(len))
}

/// Reassembles frames from a worker's stream of messages.
#[derive(Default)]
struct Assembler {
    buf: Vec<u8>,
}

impl Assembler {
    /// Appends one message; pushes every frame it completes (without the
    /// length prefix) to `frames`.
    fn push(
        &mut self,
        message: Vec<u8>,
        max: usize,
        frames: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            self.buf = message;
        } else {
            self.buf.extend_from_slice(&message);
        }
        loop {
            let Some(prefix) = self.buf.get(..4) else {
                return Ok(());
            };
            let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if size > max {
                return Err(ProtocolError::TooLarge { size, limit: max });
            }
            if self.buf.len() < 4 + size {
                self.buf.reserve(4 + size - self.buf.len());
                return Ok(());
            }
            let rest = self.buf.split_off(4 + size);
            let mut frame = std::mem::replace(&mut self.buf, rest);
            frame.drain(..4);
            frames.push(frame);
        }
    }

    fn clear(&mut self) {
        self.buf = Vec::new();
    }
}

// ----- rank 0: the pool-mpi thread -----

enum Command {
    Attach(AttachRequest),
    Finalize(Sender<()>),
}

struct AttachRequest {
    shared: Arc<dyn Events>,
    reply: Sender<Result<(), Error>>,
    deadline: Instant,
}

/// What a rank reports of a local worker that died ([`TAG_DIED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Died {
    /// Its index among the rank's local workers.
    pub(crate) local: u32,
    pub(crate) pid: u32,
    pub(crate) cause: ExitCause,
    /// The `(chunk, item)` its progress page says it was running.
    pub(crate) running: Option<(u64, u64)>,
}

impl Died {
    const LEN: usize = 30;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, value) = match self.cause {
            ExitCause::Code(code) => (0u8, code),
            ExitCause::Signal(signal) => (1, signal),
            _ => (2, 0),
        };
        let (busy, chunk, item) = match self.running {
            Some((chunk, item)) => (1u8, chunk, item),
            None => (0, 0, 0),
        };
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.local.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&value.to_le_bytes());
        out.push(busy);
        out.extend_from_slice(&chunk.to_le_bytes());
        out.extend_from_slice(&item.to_le_bytes());
        out
    }

    fn decode(data: &[u8]) -> Option<Died> {
        if data.len() != Self::LEN {
            return None;
        }
        let u32_at = |at: usize| {
            data.get(at..at + 4)?
                .try_into()
                .ok()
                .map(u32::from_le_bytes)
        };
        let u64_at = |at: usize| {
            data.get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_le_bytes)
        };
        let value = u32_at(9)? as i32;
        let cause = match data[8] {
            0 => ExitCause::Code(value),
            1 => ExitCause::Signal(value),
            _ => ExitCause::Unknown,
        };
        let running = match data[13] {
            0 => None,
            _ => Some((u64_at(14)?, u64_at(22)?)),
        };
        Some(Died {
            local: u32_at(0)?,
            pid: u32_at(4)?,
            cause,
            running,
        })
    }
}

/// The body of a [`TAG_START`] message.
pub(crate) fn start_body(local: u32, chunk: u64, item: u64) -> [u8; 20] {
    let mut body = [0u8; 20];
    body[..4].copy_from_slice(&local.to_le_bytes());
    body[4..12].copy_from_slice(&chunk.to_le_bytes());
    body[12..].copy_from_slice(&item.to_le_bytes());
    body
}

fn parse_start(data: &[u8]) -> Option<(u32, u64, u64)> {
    if data.len() != 20 {
        return None;
    }
    Some((
        u32::from_le_bytes(data.get(..4)?.try_into().ok()?),
        u64::from_le_bytes(data.get(4..12)?.try_into().ok()?),
        u64::from_le_bytes(data.get(12..20)?.try_into().ok()?),
    ))
}

/// Where an endpoint stands, seen from rank 0.
enum Phase {
    /// Serving no pool.
    Free,
    /// Sent the handshake of batch `batch`; waiting for `Ready`.
    Hello { batch: u64, slot: usize },
    /// Sent the initializer; waiting for `InitDone`.
    Init { batch: u64, slot: usize },
    /// Handshake done; waiting for the rest of its batch.
    Ready { batch: u64, slot: usize },
    /// The replacement of a local worker that died, in its handshake
    /// (`init`: the initializer was sent): it takes `slot` of the pool.
    Rejoin {
        shared: Arc<dyn Events>,
        slot: usize,
        init: bool,
    },
    /// A worker of a pool: frames for it arrive on `rx`.
    Attached {
        shared: Arc<dyn Events>,
        slot: usize,
        rx: Receiver<Outgoing>,
    },
    /// Sent `Exit`; waiting for `BYE` (or, for a local worker that was
    /// busy, its death), then detached from `pool` if any.
    Releasing {
        pool: Option<(Arc<dyn Events>, usize)>,
    },
    /// Broke the protocol: never given work again.
    Lost,
    /// Its rank acknowledged the end of the job.
    Done,
}

/// One worker a pool may use: a worker rank that runs tasks itself, or one
/// local worker process of a rank.
struct Endpoint {
    rank: usize,
    /// Its index among its rank's local workers (0 for a rank serving itself).
    local: usize,
    /// One of a rank's local workers (not the rank itself).
    relayed: bool,
    phase: Phase,
    stream: Assembler,
    /// The pid its pool knows it by: the rank for a rank serving itself,
    /// the local process's pid otherwise.
    pid: u32,
    /// A local worker's progress page on rank 0, given to its pool: it
    /// stays idle, except where the rank reports an item under a timeout
    /// and, at a death, the item that was running, so the scheduler reads
    /// what a local worker's own page would say.
    page: Option<Arc<Progress>>,
}

impl Endpoint {
    /// How messages name it.
    fn name(&self) -> String {
        if self.relayed {
            format!("local worker {} of MPI rank {}", self.local, self.rank)
        } else {
            format!("MPI rank {}", self.rank)
        }
    }
}

/// A worker rank: its endpoints are `first .. first + count`.
struct RankInfo {
    first: usize,
    count: usize,
    /// Acknowledged the end of the job.
    done: bool,
}

/// A progress page for a relayed endpoint, which the scheduler can never
/// take chunks back through (nothing on rank 0 claims them: the local
/// worker's claims happen on its own page).
fn relay_page() -> Option<Arc<Progress>> {
    let mut page = Progress::create().ok()?;
    // Only rank 0 maps it: no descriptor per endpoint stays open.
    page.forget_fd();
    // A claim far above any chunk id: the pool's `steal_after` sees the
    // worker past every chunk, so it never takes back work sent to a rank.
    page.claim(1 << 62);
    Some(Arc::new(page))
}

/// The order in which free endpoints, given as `(rank, local)`, go to a
/// pool: the first local worker of every rank, then the second, ..., so a
/// pool smaller than the job spreads over the ranks.
fn endpoint_order(places: &[(usize, usize)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..places.len()).collect();
    order.sort_by_key(|&e| (places[e].1, places[e].0));
    order
}

/// A pool being attached: its ranks go through the handshake together.
struct Batch {
    id: u64,
    shared: Arc<dyn Events>,
    reply: Sender<Result<(), Error>>,
    deadline: Instant,
    endpoints: Vec<usize>,
}

/// A send in progress, with the buffer it reads from.
struct PendingSend {
    request: Option<Request<'static, [u8]>>,
    _keep: Keep,
}

// Never read: each variant only keeps a buffer alive while MPI reads it.
#[allow(dead_code)]
enum Keep {
    Owned(Box<[u8]>),
    Shared(Arc<Vec<u8>>),
}

/// The state of rank 0's MPI thread.
struct Hub {
    world: SimpleCommunicator,
    inbox: Receiver<Command>,
    endpoints: Vec<Endpoint>,
    /// Indexed by rank; rank 0's entry has no endpoints.
    ranks: Vec<RankInfo>,
    /// The order in which free endpoints are given to a pool: the first
    /// local worker of every rank, then the second, ...
    order: Vec<usize>,
    waiting: VecDeque<AttachRequest>,
    batches: Vec<Batch>,
    next_batch: u64,
    pending: Vec<PendingSend>,
    finalizing: Option<(Instant, Sender<()>)>,
    /// Messages sent and received, for [`STATS_ENV`].
    sent: u64,
    received: u64,
}

impl Hub {
    /// `capacities[rank]`: the local workers of each rank (0: it serves
    /// tasks itself).
    fn new(world: SimpleCommunicator, inbox: Receiver<Command>, capacities: &[usize]) -> Hub {
        let mut endpoints = Vec::new();
        let mut ranks = Vec::new();
        for (rank, &capacity) in capacities.iter().enumerate() {
            let count = if rank == 0 { 0 } else { capacity.max(1) };
            ranks.push(RankInfo {
                first: endpoints.len(),
                count,
                done: false,
            });
            for local in 0..count {
                endpoints.push(Endpoint {
                    rank,
                    local,
                    relayed: capacity > 0,
                    phase: Phase::Free,
                    stream: Assembler::default(),
                    pid: rank as u32,
                    page: None,
                });
            }
        }
        let places: Vec<(usize, usize)> = endpoints.iter().map(|e| (e.rank, e.local)).collect();
        let order = endpoint_order(&places);
        Hub {
            world,
            inbox,
            endpoints,
            ranks,
            order,
            waiting: VecDeque::new(),
            batches: Vec::new(),
            next_batch: 0,
            pending: Vec::new(),
            finalizing: None,
            sent: 0,
            received: 0,
        }
    }

    /// The endpoint of `rank`'s local worker `local`.
    fn endpoint(&self, rank: usize, local: usize) -> Option<usize> {
        let info = self.ranks.get(rank)?;
        (local < info.count).then_some(info.first + local)
    }

    /// Runs until every rank acknowledged the end of the job; returns whom
    /// to tell once MPI is finalised.
    fn run(&mut self) -> Sender<()> {
        let mut backoff = Backoff::new();
        loop {
            let mut busy = false;
            loop {
                match self.inbox.try_recv() {
                    Ok(Command::Attach(request)) => self.waiting.push_back(request),
                    Ok(Command::Finalize(reply)) => self.begin_finalize(reply),
                    Err(TryRecvError::Empty) => break,
                    // Unreachable: RANK0 keeps the sender for good.
                    Err(TryRecvError::Disconnected) => break,
                }
                busy = true;
            }
            busy |= self.start_waiting();
            busy |= self.forward_frames();
            busy |= self.receive_messages();
            self.complete_sends();
            self.check_deadlines();
            if let Some(deadline) = self.finalizing.as_ref().map(|(d, _)| *d) {
                let all_done = self.ranks[1..].iter().all(|r| r.done);
                if all_done
                    && self.pending.is_empty()
                    && let Some((_, reply)) = self.finalizing.take()
                {
                    return reply;
                }
                if Instant::now() > deadline {
                    let busy: Vec<usize> = (1..self.ranks.len())
                        .filter(|&r| !self.ranks[r].done)
                        .collect();
                    eprintln!(
                        "pool-runtime: MPI rank(s) {busy:?} still had work {FINALIZE_TIMEOUT:?} after main \
                         returned; aborting the MPI job"
                    );
                    self.world.abort(1);
                }
            }
            if busy {
                backoff.reset();
            } else {
                self.idle(backoff.next());
            }
        }
    }

    /// Waits for a command or an outgoing frame, at most `nap`.
    fn idle(&self, nap: Duration) {
        if nap.is_zero() {
            thread::yield_now();
            return;
        }
        let mut select = Select::new();
        select.recv(&self.inbox);
        for endpoint in &self.endpoints {
            if let Phase::Attached { rx, .. } = &endpoint.phase {
                select.recv(rx);
            }
        }
        let _ = select.ready_timeout(nap);
    }

    // ----- attaching pools -----

    /// Starts the handshakes of waiting pools whose endpoints are free.
    fn start_waiting(&mut self) -> bool {
        let mut progressed = false;
        while let Some(request) = self.waiting.pop_front() {
            if self.finalizing.is_some() {
                let _ = request.reply.send(Err(Error::Terminated));
                progressed = true;
                continue;
            }
            let wanted = request.shared.processes();
            let free: Vec<usize> = self
                .order
                .iter()
                .copied()
                .filter(|&e| matches!(self.endpoints[e].phase, Phase::Free))
                .take(wanted)
                .collect();
            if free.len() < wanted {
                // Endpoints still leaving a pool become free shortly; wait for them.
                let soon = self
                    .endpoints
                    .iter()
                    .filter(|e| {
                        matches!(
                            e.phase,
                            Phase::Free
                                | Phase::Releasing { .. }
                                | Phase::Hello { .. }
                                | Phase::Init { .. }
                        )
                    })
                    .count();
                if soon >= wanted && Instant::now() < request.deadline {
                    self.waiting.push_front(request);
                    break;
                }
                let total = self.endpoints.len();
                let busy = total - free.len();
                let _ = request.reply.send(Err(Error::Spawn(io::Error::other(format!(
                    "a pool of {wanted} needs {wanted} free MPI worker ranks (or local workers of ranks), \
                     but {busy} of the {total} serve another pool"
                )))));
                progressed = true;
                continue;
            }
            let id = self.next_batch;
            self.next_batch += 1;
            let hello = handshake::hello_header(request.shared.launch());
            for (slot, &e) in free.iter().enumerate() {
                self.endpoints[e].phase = Phase::Hello { batch: id, slot };
                self.endpoints[e].stream.clear();
                self.send_frame(e, &hello, &Arc::new(Vec::new()));
            }
            self.batches.push(Batch {
                id,
                shared: request.shared,
                reply: request.reply,
                deadline: request.deadline,
                endpoints: free,
            });
            progressed = true;
        }
        progressed
    }

    fn batch(&self, id: u64) -> Option<&Batch> {
        self.batches.iter().find(|b| b.id == id)
    }

    /// A handshake frame from endpoint `e`, in phase Hello or Init.
    fn on_handshake(&mut self, e: usize, frame: &[u8]) {
        let (batch_id, slot, init_phase) = match self.endpoints[e].phase {
            Phase::Hello { batch, slot } => (batch, slot, false),
            Phase::Init { batch, slot } => (batch, slot, true),
            _ => return,
        };
        let Some(batch) = self.batch(batch_id) else {
            // Its pool gave up on it (a timeout or another rank failed).
            self.release(e, None);
            return;
        };
        let launch: &Launch = batch.shared.launch();
        let init = launch.init.clone();
        let pid = self.endpoints[e].pid;
        let outcome = if init_phase {
            match &init {
                Some(spec) => handshake::check_init_done(frame, spec)
                    .map(|()| pid)
                    .map_err(|reason| Error::Initializer {
                        task: spec.name,
                        pid,
                        reason,
                    }),
                None => Err(Error::Startup {
                    pid,
                    reason: "an answer to an initializer that was never sent".into(),
                }),
            }
        } else {
            handshake::check_ready(frame, launch).map_err(|reason| Error::Startup {
                pid,
                reason: format!("{}: {reason}", self.endpoints[e].name()),
            })
        };
        match outcome {
            Err(err) => {
                self.release(e, None);
                self.fail_batch(batch_id, err);
            }
            Ok(reported) => {
                if self.endpoints[e].relayed && !init_phase {
                    // A local process: the pool knows it by its own pid.
                    self.endpoints[e].pid = reported;
                }
                match (&init, init_phase) {
                    (Some(spec), false) => {
                        let header = wire::encode_header(&ToWorker::Init { task: spec.task });
                        let body = Arc::new(spec.body.clone());
                        self.endpoints[e].phase = Phase::Init {
                            batch: batch_id,
                            slot,
                        };
                        self.send_frame(e, &header, &body);
                    }
                    _ => {
                        self.endpoints[e].phase = Phase::Ready {
                            batch: batch_id,
                            slot,
                        };
                        self.finish_batch_if_ready(batch_id);
                    }
                }
            }
        }
    }

    /// Attaches endpoint `e` to `slot` of `shared`'s pool; releases it if
    /// the pool was terminated meanwhile.
    fn attach(&mut self, e: usize, shared: Arc<dyn Events>, slot: usize) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let page = if self.endpoints[e].relayed {
            relay_page()
        } else {
            None
        };
        let pid = self.endpoints[e].pid;
        if shared.attach(
            slot,
            pid,
            Link::Remote {
                tx,
                page: page.clone(),
            },
        ) {
            self.endpoints[e].page = page;
            self.endpoints[e].phase = Phase::Attached { shared, slot, rx };
        } else {
            self.release(e, None);
        }
    }

    /// Attaches the endpoints of a batch once all of them are ready.
    fn finish_batch_if_ready(&mut self, id: u64) {
        let Some(index) = self.batches.iter().position(|b| b.id == id) else {
            return;
        };
        let ready = self.batches[index]
            .endpoints
            .iter()
            .all(|&e| matches!(self.endpoints[e].phase, Phase::Ready { .. }));
        if !ready {
            return;
        }
        let batch = self.batches.swap_remove(index);
        for &e in &batch.endpoints {
            let Phase::Ready { slot, .. } = self.endpoints[e].phase else {
                continue;
            };
            self.attach(e, Arc::clone(&batch.shared), slot);
        }
        let _ = batch.reply.send(Ok(()));
    }

    /// Gives up a batch: its pool fails to start with `err`; its endpoints
    /// that finished the handshake are released now, the others when they
    /// answer.
    fn fail_batch(&mut self, id: u64, err: Error) {
        let Some(index) = self.batches.iter().position(|b| b.id == id) else {
            return;
        };
        let batch = self.batches.swap_remove(index);
        for &e in &batch.endpoints {
            if matches!(self.endpoints[e].phase, Phase::Ready { .. }) {
                self.release(e, None);
            }
        }
        let _ = batch.reply.send(Err(err));
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let late: Vec<(u64, usize)> = self
            .batches
            .iter()
            .filter(|b| now > b.deadline)
            .filter_map(|b| {
                let e = b.endpoints.iter().copied().find(|&e| {
                    matches!(
                        self.endpoints[e].phase,
                        Phase::Hello { .. } | Phase::Init { .. }
                    )
                })?;
                Some((b.id, e))
            })
            .collect();
        for (id, e) in late {
            let timeout = self
                .batch(id)
                .map_or(Duration::ZERO, |b| b.shared.launch().startup_timeout);
            let err = Error::Startup {
                pid: self.endpoints[e].pid,
                reason: format!(
                    "{} did not complete the handshake within {timeout:?}: does `main` call \
                     `pool_runtime::init()` before anything slow?",
                    self.endpoints[e].name()
                ),
            };
            self.fail_batch(id, err);
        }
    }

    /// Sends `Exit` to endpoint `e`; once it says goodbye it is free again
    /// (and detached from `pool`).
    fn release(&mut self, e: usize, pool: Option<(Arc<dyn Events>, usize)>) {
        let header = wire::encode_header(&ToWorker::Exit);
        self.send_frame(e, &header, &Arc::new(Vec::new()));
        self.endpoints[e].phase = Phase::Releasing { pool };
    }

    // ----- local workers that die -----

    /// A rank's local worker died: its pool blames the item it ran (its
    /// page says which) and requeues the rest, as for a local worker; a
    /// pool still running gets a replacement in the same slot.
    fn on_died(&mut self, e: usize, died: Died) {
        self.endpoints[e].stream.clear();
        let page = self.endpoints[e].page.take();
        if let Some(page) = &page {
            match died.running {
                Some((chunk, item)) => page.start(chunk, item, now_ns()),
                None => page.idle(0),
            }
        }
        let name = self.endpoints[e].name();
        let phase = std::mem::replace(&mut self.endpoints[e].phase, Phase::Free);
        match phase {
            Phase::Attached { shared, slot, .. }
            | Phase::Releasing {
                pool: Some((shared, slot)),
            } => {
                shared.mark_dying(slot);
                shared.detach(slot, died.pid, died.cause, None);
                drop(page);
                if !shared.is_stopping() {
                    // The rank starts a new process on a new handshake.
                    let hello = handshake::hello_header(shared.launch());
                    self.endpoints[e].phase = Phase::Rejoin {
                        shared,
                        slot,
                        init: false,
                    };
                    self.send_frame(e, &hello, &Arc::new(Vec::new()));
                }
            }
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } | Phase::Ready { batch, .. } => {
                let err = Error::Startup {
                    pid: died.pid,
                    reason: format!("{name} {} during the handshake", died.cause),
                };
                self.fail_batch(batch, err);
            }
            Phase::Rejoin { .. } => {
                tracing::warn!(
                    pid = died.pid,
                    cause = %died.cause,
                    "{name}: the replacement of a local worker died in its handshake; the pool goes on without it"
                );
            }
            Phase::Lost => self.endpoints[e].phase = Phase::Lost,
            Phase::Done => self.endpoints[e].phase = Phase::Done,
            Phase::Free | Phase::Releasing { pool: None } => {}
        }
    }

    /// A handshake frame from the replacement of a local worker.
    fn on_rejoin(&mut self, e: usize, frame: &[u8]) {
        let Phase::Rejoin { shared, slot, init } = &self.endpoints[e].phase else {
            return;
        };
        let (shared, slot, init) = (Arc::clone(shared), *slot, *init);
        let launch = shared.launch();
        let name = self.endpoints[e].name();
        let outcome = if init {
            match &launch.init {
                Some(spec) => handshake::check_init_done(frame, spec).map(|()| None),
                None => Err("an answer to an initializer that was never sent".to_owned()),
            }
        } else {
            handshake::check_ready(frame, launch).map(Some)
        };
        match outcome {
            Err(reason) => {
                tracing::warn!(
                    "{name}: the replacement of a local worker failed to start ({reason}); the pool goes on without it"
                );
                self.release(e, None);
            }
            Ok(Some(pid)) => {
                self.endpoints[e].pid = pid;
                if let Some(spec) = &launch.init {
                    let header = wire::encode_header(&ToWorker::Init { task: spec.task });
                    let body = Arc::new(spec.body.clone());
                    self.endpoints[e].phase = Phase::Rejoin {
                        shared: Arc::clone(&shared),
                        slot,
                        init: true,
                    };
                    self.send_frame(e, &header, &body);
                } else {
                    self.attach(e, shared, slot);
                }
            }
            Ok(None) => self.attach(e, shared, slot),
        }
    }

    /// A local worker started an item under a timeout.
    fn on_start(&mut self, e: usize, chunk: u64, item: u64) {
        if let (Phase::Attached { .. }, Some(page)) =
            (&self.endpoints[e].phase, &self.endpoints[e].page)
        {
            page.start(chunk, item, now_ns());
        }
    }

    // ----- frames out -----

    /// Forwards the frames pools queued for their endpoints.
    fn forward_frames(&mut self) -> bool {
        let mut progressed = false;
        for e in 0..self.endpoints.len() {
            while let Phase::Attached { rx, .. } = &self.endpoints[e].phase {
                let Ok(out) = rx.try_recv() else { break };
                progressed = true;
                self.forward(e, out);
            }
        }
        progressed
    }

    fn forward(&mut self, e: usize, out: Outgoing) {
        let Phase::Attached { shared, slot, .. } = &self.endpoints[e].phase else {
            return;
        };
        let (shared, slot) = (Arc::clone(shared), *slot);
        let size = out.header.len() + out.body.len();
        let max = shared.launch().max_frame;
        if size > max {
            // As a failed write does locally: the worker is lost to the pool.
            shared.mark_dying(slot);
            let limit = max.min(u32::MAX as usize);
            shared.detach(
                slot,
                self.endpoints[e].pid,
                ExitCause::Unknown,
                Some(ProtocolError::TooLarge { size, limit }),
            );
            self.release(e, None);
            return;
        }
        let exit = matches!(
            wire::split_frame::<ToWorker>(&out.header),
            Ok((ToWorker::Exit, _))
        );
        self.send_frame(e, &out.header, &out.body);
        if exit {
            // Anything the pool sends after its exit frame is dropped: the
            // worker would read it as the start of the next pool.
            self.endpoints[e].phase = Phase::Releasing {
                pool: Some((shared, slot)),
            };
        }
    }

    /// Sends one frame to endpoint `e` without waiting: small frames as one
    /// message, large ones as a header message and body pieces.
    fn send_frame(&mut self, e: usize, header: &[u8], body: &Arc<Vec<u8>>) {
        let (rank, tag) = (self.endpoints[e].rank, data_tag(self.endpoints[e].local));
        let len = ((header.len() + body.len()) as u32).to_le_bytes();
        if body.len() <= INLINE_BODY {
            let mut message = Vec::with_capacity(4 + header.len() + body.len());
            message.extend_from_slice(&len);
            message.extend_from_slice(header);
            message.extend_from_slice(body);
            self.isend_owned(rank, message.into_boxed_slice(), tag);
        } else {
            let mut head = Vec::with_capacity(4 + header.len());
            head.extend_from_slice(&len);
            head.extend_from_slice(header);
            self.isend_owned(rank, head.into_boxed_slice(), tag);
            for piece in pieces(body.len()) {
                let slice = &body[piece];
                // SAFETY: the slice points into `body`'s heap buffer, which the
                // pending send keeps alive (an `Arc` clone) until MPI reports
                // the send complete; nothing writes to it meanwhile.
                let data: &'static [u8] =
                    unsafe { std::slice::from_raw_parts(slice.as_ptr(), slice.len()) };
                let request = self
                    .world
                    .process_at_rank(rank as i32)
                    .immediate_send_with_tag(StaticScope, data, tag);
                self.sent += 1;
                self.pending.push(PendingSend {
                    request: Some(request),
                    _keep: Keep::Shared(Arc::clone(body)),
                });
            }
        }
    }

    fn isend_owned(&mut self, rank: usize, message: Box<[u8]>, tag: Tag) {
        // SAFETY: the boxed buffer moves into the pending send, which keeps it
        // (at the same heap address) until MPI reports the send complete.
        let data: &'static [u8] =
            unsafe { std::slice::from_raw_parts(message.as_ptr(), message.len()) };
        let request = self
            .world
            .process_at_rank(rank as i32)
            .immediate_send_with_tag(StaticScope, data, tag);
        self.sent += 1;
        self.pending.push(PendingSend {
            request: Some(request),
            _keep: Keep::Owned(message),
        });
    }

    fn complete_sends(&mut self) {
        self.pending.retain_mut(|send| match send.request.take() {
            Some(request) => match request.test() {
                Ok(_) => false,
                Err(request) => {
                    send.request = Some(request);
                    true
                }
            },
            None => false,
        });
    }

    // ----- messages in -----

    fn receive_messages(&mut self) -> bool {
        let mut progressed = false;
        while let Some((message, status)) = self.world.any_process().immediate_matched_probe() {
            progressed = true;
            self.received += 1;
            let data = receive(message, &status);
            let rank = status.source_rank() as usize;
            if rank == 0 || rank >= self.ranks.len() {
                continue;
            }
            let local_of = |data: &[u8]| {
                data.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
            };
            match status.tag() {
                tag if tag >= TAG_DATA_BASE => {
                    if let Some(e) = self.endpoint(rank, (tag - TAG_DATA_BASE) as usize) {
                        self.on_data(e, data);
                    }
                }
                TAG_BYE => {
                    let code = data
                        .get(4..8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(EXIT_PROTOCOL, i32::from_le_bytes);
                    let local = local_of(&data).map_or(0, |l| l as usize);
                    if let Some(e) = self.endpoint(rank, local) {
                        self.on_bye(e, code);
                    }
                }
                TAG_DIED => {
                    let died = Died::decode(&data);
                    match died.and_then(|d| Some((self.endpoint(rank, d.local as usize)?, d))) {
                        Some((e, died)) => self.on_died(e, died),
                        None => eprintln!(
                            "pool-runtime: ignoring a malformed report of a dead local worker from rank {rank}"
                        ),
                    }
                }
                TAG_START => {
                    if let Some((local, chunk, item)) = parse_start(&data)
                        && let Some(e) = self.endpoint(rank, local as usize)
                    {
                        self.on_start(e, chunk, item);
                    }
                }
                TAG_DONE => {
                    self.ranks[rank].done = true;
                    let RankInfo { first, count, .. } = self.ranks[rank];
                    for endpoint in &mut self.endpoints[first..first + count] {
                        endpoint.phase = Phase::Done;
                    }
                }
                tag => eprintln!(
                    "pool-runtime: ignoring an MPI message with tag {tag} from rank {rank}"
                ),
            }
        }
        progressed
    }

    fn on_data(&mut self, e: usize, data: Vec<u8>) {
        if self.finalizing.is_some() {
            return; // the job is ending: late results have no reader
        }
        let max = match &self.endpoints[e].phase {
            Phase::Attached { shared, .. }
            | Phase::Releasing {
                pool: Some((shared, _)),
            } => shared.launch().max_frame,
            _ => 4096,
        };
        let mut frames = Vec::new();
        let pushed = self.endpoints[e].stream.push(data, max, &mut frames);
        for frame in frames {
            match &self.endpoints[e].phase {
                Phase::Attached { shared, slot, .. }
                | Phase::Releasing {
                    pool: Some((shared, slot)),
                } => {
                    let (shared, slot) = (Arc::clone(shared), *slot);
                    if let Err(err) = shared.deliver(slot, self.endpoints[e].pid, frame) {
                        self.lose(e, err);
                        return;
                    }
                }
                Phase::Hello { .. } | Phase::Init { .. } => self.on_handshake(e, &frame),
                Phase::Rejoin { .. } => self.on_rejoin(e, &frame),
                Phase::Releasing { pool: None } => {} // e.g. a late `Ready`
                Phase::Free | Phase::Ready { .. } | Phase::Lost | Phase::Done => {
                    self.lose(
                        e,
                        ProtocolError::Unexpected("a frame from an idle MPI worker"),
                    );
                    return;
                }
            }
        }
        if let Err(err) = pushed {
            self.lose(e, err);
        }
    }

    /// Endpoint `e` broke the protocol: its pool (if any) sees a protocol
    /// error, and it gets no more work.
    fn lose(&mut self, e: usize, err: ProtocolError) {
        let phase = std::mem::replace(&mut self.endpoints[e].phase, Phase::Lost);
        self.endpoints[e].stream.clear();
        let pid = self.endpoints[e].pid;
        match phase {
            Phase::Attached { shared, slot, .. }
            | Phase::Releasing {
                pool: Some((shared, slot)),
            } => {
                shared.mark_dying(slot);
                shared.detach(slot, pid, ExitCause::Unknown, Some(err));
            }
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } | Phase::Ready { batch, .. } => {
                self.fail_batch(batch, Error::Protocol { pid, source: err });
            }
            _ => eprintln!("pool-runtime: {}: {err}", self.endpoints[e].name()),
        }
    }

    fn on_bye(&mut self, e: usize, code: i32) {
        self.endpoints[e].stream.clear();
        self.endpoints[e].page = None;
        let pid = self.endpoints[e].pid;
        let phase = std::mem::replace(&mut self.endpoints[e].phase, Phase::Free);
        match phase {
            Phase::Attached { shared, slot, .. }
            | Phase::Releasing {
                pool: Some((shared, slot)),
            } => {
                shared.mark_dying(slot);
                shared.detach(slot, pid, ExitCause::Code(code), None);
            }
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } | Phase::Ready { batch, .. } => {
                let err = Error::Startup {
                    pid,
                    reason: format!(
                        "{} left the handshake (code {code})",
                        self.endpoints[e].name()
                    ),
                };
                self.fail_batch(batch, err);
            }
            Phase::Rejoin { .. } => tracing::warn!(
                "{}: the replacement of a local worker could not start; the pool goes on without it",
                self.endpoints[e].name()
            ),
            Phase::Done => self.endpoints[e].phase = Phase::Done,
            Phase::Lost => self.endpoints[e].phase = Phase::Lost,
            Phase::Free | Phase::Releasing { pool: None } => {}
        }
    }

    // ----- the end -----

    fn begin_finalize(&mut self, reply: Sender<()>) {
        if self.finalizing.is_some() {
            return;
        }
        for request in self.waiting.drain(..) {
            let _ = request.reply.send(Err(Error::Terminated));
        }
        let ids: Vec<u64> = self.batches.iter().map(|b| b.id).collect();
        for id in ids {
            self.fail_batch(id, Error::Terminated);
        }
        for e in 0..self.endpoints.len() {
            if let Phase::Attached { shared, slot, .. } = &self.endpoints[e].phase {
                // A pool still alive at exit: its calls end now.
                let (shared, slot) = (Arc::clone(shared), *slot);
                shared.mark_dying(slot);
                shared.detach(slot, self.endpoints[e].pid, ExitCause::Unknown, None);
            }
            if !matches!(self.endpoints[e].phase, Phase::Done) {
                self.endpoints[e].phase = Phase::Releasing { pool: None };
            }
        }
        for rank in 1..self.ranks.len() {
            self.isend_owned(rank, Box::new([]), TAG_FINALIZE);
        }
        self.finalizing = Some((Instant::now() + FINALIZE_TIMEOUT, reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        assert_eq!(Launcher::detect(vars(&[])), None);
        // Inside an sbatch script but not under srun: no MPI.
        assert_eq!(
            Launcher::detect(vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")])),
            None
        );
        let ompi = Launcher::detect(vars(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("PMIX_RANK", "2"),
        ]))
        .expect("mpirun");
        assert_eq!((ompi.rank, ompi.size), (2, Some(3)));
        let srun = Launcher::detect(vars(&[("PMIX_RANK", "0"), ("SLURM_NTASKS", "64")]))
            .expect("srun --mpi=pmix");
        assert_eq!((srun.rank, srun.size), (0, Some(64)));
        let hydra =
            Launcher::detect(vars(&[("PMI_RANK", "1"), ("PMI_SIZE", "8")])).expect("mpiexec");
        assert_eq!((hydra.rank, hydra.size), (1, Some(8)));
    }

    #[test]
    fn a_world_that_does_not_match_the_launcher_is_an_error() {
        let launcher = Launcher {
            what: "test",
            rank: 0,
            size: Some(3),
        };
        assert!(launcher.check(0, 3).is_ok());
        let err = launcher.check(0, 1).expect_err("singleton");
        assert!(
            err.contains("rank 0 of 3") && err.contains("rank 0 of 1"),
            "{err}"
        );
        let unknown = Launcher {
            size: None,
            ..launcher
        };
        assert!(unknown.check(0, 5).is_ok());
    }

    #[test]
    fn large_frames_are_split_below_the_mpi_count_limit() {
        assert_eq!(
            pieces(0).map(|r| (r.start, r.end)).collect::<Vec<_>>(),
            [(0, 0)]
        );
        assert_eq!(
            pieces(10).map(|r| (r.start, r.end)).collect::<Vec<_>>(),
            [(0, 10)]
        );
        let big = 2 * MAX_MESSAGE + 5;
        let parts: Vec<_> = pieces(big).collect();
        assert_eq!(
            parts,
            [
                0..MAX_MESSAGE,
                MAX_MESSAGE..2 * MAX_MESSAGE,
                2 * MAX_MESSAGE..big
            ]
        );
        assert!(parts.iter().all(|p| p.len() <= i32::MAX as usize));
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_are_reassembled_from_any_split() {
        let mut stream = frame(b"first");
        stream.extend(frame(b""));
        stream.extend(frame(&[7; 300]));
        for cut in [1, 3, 4, 7, 100, stream.len()] {
            let mut assembler = Assembler::default();
            let mut frames = Vec::new();
            for message in stream.chunks(cut) {
                assembler
                    .push(message.to_vec(), 4096, &mut frames)
                    .expect("well formed");
            }
            assert_eq!(
                frames,
                [b"first".to_vec(), Vec::new(), vec![7; 300]],
                "cut {cut}"
            );
            assert!(assembler.buf.is_empty());
        }
        let mut assembler = Assembler::default();
        let err = assembler
            .push(frame(&[0; 5000]), 4096, &mut Vec::new())
            .expect_err("too large");
        assert!(matches!(
            err,
            ProtocolError::TooLarge {
                size: 5000,
                limit: 4096
            }
        ));
    }

    #[test]
    fn complete_frames_are_found_by_their_prefix() {
        assert_eq!(complete_frame_len(&[]), None);
        assert_eq!(complete_frame_len(&[2, 0, 0]), None);
        assert_eq!(complete_frame_len(&[2, 0, 0, 0, 9]), None);
        assert_eq!(complete_frame_len(&[2, 0, 0, 0, 9, 9, 1]), Some(6));
    }

    #[test]
    fn the_local_worker_count_comes_from_the_environment() {
        assert_eq!(local_workers_from_env(None), Ok(0));
        assert_eq!(local_workers_from_env(Some("")), Ok(0));
        assert_eq!(local_workers_from_env(Some("0")), Ok(0));
        assert_eq!(local_workers_from_env(Some(" 8 ")), Ok(8));
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(local_workers_from_env(Some("auto")), Ok(cpus));
        assert_eq!(local_workers_from_env(Some("AUTO")), Ok(cpus));
        let err = local_workers_from_env(Some("lots")).expect_err("not a number");
        assert!(err.contains("expected `auto` or a number"), "{err}");
        let err = local_workers_from_env(Some("5000")).expect_err("too many");
        assert!(err.contains("at most 4096"), "{err}");
        // Every endpoint's tag stays below the smallest MPI_TAG_UB allowed.
        assert!(data_tag(MAX_LOCAL - 1) <= 32767);
    }

    #[test]
    fn reports_of_local_workers_round_trip_and_reject_garbage() {
        for died in [
            Died {
                local: 3,
                pid: 4242,
                cause: ExitCause::Signal(9),
                running: Some((17, 5)),
            },
            Died {
                local: 0,
                pid: 1,
                cause: ExitCause::Code(-3),
                running: None,
            },
            Died {
                local: 4095,
                pid: u32::MAX,
                cause: ExitCause::Unknown,
                running: Some((u64::MAX, 0)),
            },
        ] {
            let bytes = died.encode();
            assert_eq!(Died::decode(&bytes), Some(died));
            assert_eq!(Died::decode(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(Died::decode(&[]), None);
        assert_eq!(parse_start(&start_body(7, 99, 3)), Some((7, 99, 3)));
        assert_eq!(parse_start(&[0; 19]), None);
        let bye = bye_body(5, -1);
        assert_eq!(bye[..4], 5u32.to_le_bytes());
        assert_eq!(bye[4..], (-1i32).to_le_bytes());
    }

    #[test]
    fn a_pool_gets_the_first_local_worker_of_every_rank_first() {
        // Rank 1 with 2 local workers, rank 2 serving itself, rank 3 with 3.
        let places = [(1, 0), (1, 1), (2, 0), (3, 0), (3, 1), (3, 2)];
        let ordered: Vec<(usize, usize)> =
            endpoint_order(&places).iter().map(|&e| places[e]).collect();
        assert_eq!(ordered, [(1, 0), (2, 0), (3, 0), (1, 1), (3, 1), (3, 2)]);
    }

    #[test]
    fn a_relay_page_never_gives_work_back() {
        let page = relay_page().expect("a page");
        assert_eq!(page.fd(), None);
        assert!(!page.read().busy());
        // Even while it reports a running item, nothing can be taken back
        // from a rank: its worker claims chunks on a page of its own.
        page.start(5, 0, now_ns());
        assert!(page.read().busy());
        assert_eq!(page.steal_after(5, 9), None);
    }

    #[test]
    fn backoff_spins_then_sleeps_at_most_a_millisecond() {
        let mut backoff = Backoff::new();
        assert_eq!(backoff.next(), Duration::ZERO);
        backoff.since = Instant::now() - Duration::from_secs(60);
        assert_eq!(backoff.next(), Duration::from_millis(1));
        backoff.since = Instant::now() - Duration::from_millis(2);
        assert!(backoff.next() >= Duration::from_micros(10));
        backoff.reset();
        assert_eq!(backoff.next(), Duration::ZERO);
    }
}
