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
use super::{Body, Events, Link, RemoteStart};
use crate::error::{Error, ExitCause};
use crate::worker::{self, WORKER_ENV};

mod endpoint;
mod hub;
mod node;
mod rank;

use endpoint::*;
use hub::*;
use rank::*;

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
