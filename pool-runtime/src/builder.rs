//! [`PoolBuilder`]: the settings of a pool.

use std::time::Duration;

use std::sync::Arc;

use pool_core::registry::Registry;
use pool_core::wire::{self, DEFAULT_MAX_FRAME};
use pool_core::{InitOutput, IntoArgs, Task, TaskFailure};

use crate::backend::Backend;
use crate::backend::handshake::{InitSpec, Launch};
use crate::backend::local::LocalBackend;
use crate::error::Error;
use crate::pool::Pool;
use crate::run::CallOptions;
use crate::scheduler::{Config, Scheduler};
use crate::worker;

/// The largest [`PoolBuilder::chunks_in_flight`].
const MAX_CHUNKS_IN_FLIGHT: usize = 1024;
/// The smallest [`PoolBuilder::max_memory_per_child`]: 1 MiB.
const MIN_MEMORY_PER_CHILD: u64 = 1 << 20;
/// The shortest [`PoolBuilder::max_lifetime`].
const MIN_LIFETIME: Duration = Duration::from_millis(10);

/// Settings of a [`Pool`]; made by [`Pool::builder`].
///
/// ```
/// # #[pool_runtime::main]
/// # fn main() -> Result<(), pool_runtime::Error> {
/// let pool = pool_runtime::Pool::builder().processes(4).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PoolBuilder {
    processes: Option<usize>,
    max_frame: usize,
    startup_timeout: Duration,
    depth: usize,
    max_tasks: Option<usize>,
    max_memory: Option<u64>,
    max_lifetime: Option<Duration>,
    fork_server: bool,
    defaults: CallOptions,
    /// The initializer, or why its arguments could not be encoded.
    init: Option<Result<Arc<InitSpec>, (&'static str, TaskFailure)>>,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("max_frame", &self.max_frame)
            .field("startup_timeout", &self.startup_timeout)
            .field("chunks_in_flight", &self.depth)
            .field("max_tasks_per_child", &self.max_tasks)
            .field("max_memory_per_child", &self.max_memory)
            .field("max_lifetime", &self.max_lifetime)
            .field("fork_server", &self.fork_server)
            .field(
                "initializer",
                &self.init.as_ref().map(|i| i.as_ref().map(|s| s.name).ok()),
            )
            .finish()
    }
}

/// Decodes an initializer's result and asks it whether it failed.
fn check_init<T: Task>(bytes: &[u8]) -> Result<(), String>
where
    T::Output: InitOutput,
{
    let output: T::Output = pool_core::decode::from_bytes(bytes)
        .map_err(|err| format!("its result could not be decoded: {err}"))?;
    output.failure().map_or(Ok(()), Err)
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder::new()
    }
}

impl PoolBuilder {
    /// The default settings.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = pool_runtime::PoolBuilder::new().processes(2).build()?; // the same as Pool::builder()
    /// # let _ = pool;
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        PoolBuilder {
            processes: None,
            max_frame: DEFAULT_MAX_FRAME,
            startup_timeout: Duration::from_secs(10),
            depth: 256,
            max_tasks: None,
            max_memory: None,
            max_lifetime: None,
            fork_server: true,
            defaults: CallOptions::default(),
            init: None,
        }
    }

    /// Number of worker processes. Default: the number of available CPUs
    /// ([`std::thread::available_parallelism`]). Under an MPI launcher
    /// (feature `mpi`): the world size minus one, and a larger `n` is
    /// capped to that.
    ///
    /// A local worker costs this process at most 3 file descriptors (its
    /// two sockets, and a pidfd when it was forked by the fork server). If
    /// the soft `RLIMIT_NOFILE` leaves too little room for them, `build`
    /// raises it, up to the hard limit (as Go's runtime does for every
    /// program); it never lowers it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(3).build()?;
    /// assert_eq!(pool.worker_pids().len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Largest frame (a chunk of arguments or of results) in bytes. A single
    /// argument or result above it fails with [`Error::Serialization`].
    /// Default: 1 GiB; at most 4 GiB − 1.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// # #[task] fn len(s: String) -> usize { s.len() }
    /// let pool = Pool::builder().processes(1).max_frame_size(64 * 1024).build()?;
    /// assert_eq!(pool.apply(task!(len), "x".repeat(1000))?, 1000);
    /// let err = pool.apply(task!(len), "x".repeat(100_000)).expect_err("above the limit");
    /// assert!(matches!(err, Error::Serialization { .. }), "{err}");
    /// # Ok(()) }
    /// ```
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a new worker may take to answer the handshake. Default: 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).startup_timeout(Duration::from_secs(30)).build()?;
    /// # let _ = pool;
    /// # Ok(()) }
    /// ```
    pub fn startup_timeout(mut self, limit: Duration) -> Self {
        self.startup_timeout = limit;
        self
    }

    /// Whether workers may be forked by the fork server. Default: `true`.
    ///
    /// A worker is normally a fresh run of this binary, which costs an
    /// `exec` and the program's start-up (~1.3 ms on a small VM). Once the
    /// first pool of the process is ready, one more such process is started
    /// in the background, the fork server, which waits in `init()`; later
    /// workers (replacements after a crash or
    /// [`max_tasks_per_child`](Self::max_tasks_per_child), and the workers
    /// of later pools) are forks of it (~0.2 ms). It ends with the process,
    /// and so do the workers it forked.
    ///
    /// A forked worker gets this process's current stdout and stderr, and
    /// sees the environment, working directory, credentials, umask, limits
    /// and other process attributes this process has when the worker
    /// starts, as a fresh one does: when one of them changed since the fork
    /// server started, the worker starts afresh and a new server replaces
    /// the old one. Turn the server off for a program whose workers must
    /// inherit something else that changes between pools (descriptors
    /// opened without close-on-exec, a seccomp filter installed later).
    ///
    /// ```
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), pool_runtime::Error> {
    /// let pool = pool_runtime::Pool::builder().fork_server(false).build()?;
    /// # Ok(()) }
    /// ```
    pub fn fork_server(mut self, enabled: bool) -> Self {
        self.fork_server = enabled;
        self
    }

    /// The most chunks a worker holds at once: one running and the rest
    /// waiting in its channel, so it never idles between chunks. The pool
    /// gives a worker about 1 ms of work ahead, by its time per item on the
    /// task it last ran, within this limit; a worker whose chunks take
    /// longer, or that has not run that task last, gets one at a time. The limit matters for chunks of a few microseconds (tiny tasks
    /// with `chunksize(1)`): the more of them travel together, the fewer
    /// wake-ups per item. Default: 256; at most 1024.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).chunks_in_flight(4).build()?;
    /// assert_eq!(pool.map(task!(square), 0..1000)?.len(), 1000);
    /// # Ok(()) }
    /// ```
    pub fn chunks_in_flight(mut self, n: usize) -> Self {
        self.depth = n;
        self
    }

    /// A `#[task]` run once in every worker, before its first task, with
    /// `args` (Python's `initializer` and `initargs`); e.g. to load
    /// read-only data into a worker-global `OnceLock`.
    ///
    /// It must return `()` or `Result<(), E>`. If it panics, returns `Err`
    /// or kills its worker, [`build`](PoolBuilder::build) fails with
    /// [`Error::Initializer`]; if that happens to a replacement worker
    /// later, the pool retries twice, then fails its calls with
    /// [`Error::Broken`] instead of respawning forever.
    ///
    /// ```
    /// use std::sync::OnceLock;
    /// use pool_runtime::prelude::*;
    /// use pool_runtime::task;
    ///
    /// static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    ///
    /// #[task]
    /// fn load(len: usize) {
    ///     TABLE.get_or_init(|| vec![1.5; len]);
    /// }
    ///
    /// #[task]
    /// fn lookup(i: usize) -> f64 {
    ///     TABLE.get().map_or(f64::NAN, |t| t[i])
    /// }
    ///
    /// #[pool_runtime::main]
    /// fn main() -> Result<(), Error> {
    ///     let pool = Pool::builder().initializer(task!(load), 1000).build()?;
    ///     assert_eq!(pool.map(task!(lookup), [0, 999])?, [1.5, 1.5]);
    ///     Ok(())
    /// }
    /// ```
    pub fn initializer<T, A>(mut self, _task: T, args: A) -> Self
    where
        T: Task,
        T::Output: InitOutput,
        A: IntoArgs<T>,
    {
        let mut body = Vec::new();
        let spec = match wire::push_arg(&mut body, &args.into_args(), usize::MAX) {
            Ok(()) => Ok(Arc::new(InitSpec {
                task: T::ID,
                name: T::NAME,
                body,
                check: check_init::<T>,
            })),
            Err(err) => Err((
                T::NAME,
                TaskFailure::Unencodable {
                    ty: std::any::type_name::<T::Args>().to_owned(),
                    message: err.to_string(),
                },
            )),
        };
        self.init = Some(spec);
        self
    }

    /// Replaces a worker with a fresh process after it ran `n` items
    /// (Python's `maxtasksperchild`, counted in items, not chunks), to bound
    /// what a leaking task can accumulate. Chunks are split so that no
    /// worker runs more than `n`; work in flight is never lost. Default: no
    /// limit.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// # #[task] fn pid(_item: u64) -> u32 { std::process::id() }
    /// let pool = Pool::builder().processes(1).max_tasks_per_child(1).build()?;
    /// let pids = pool.call().chunksize(1).map(task!(pid), [0, 1, 2])?;
    /// assert!(pids[0] != pids[1] && pids[1] != pids[2]); // a fresh worker for each item
    /// # Ok(()) }
    /// ```
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// Replaces a worker whose resident memory is above `bytes` after an
    /// item, before it runs another (loky's memory-leak protection, checked
    /// after every item rather than now and then). Default: no bound; at
    /// least 1 MiB.
    ///
    /// The worker measures itself, on the thread that runs the items and
    /// with no thread of its own, as `/proc/self/statm` reports it
    /// (resident pages times the page size, file-backed and shared pages
    /// included: what `ps` shows as RSS). Above the bound it stops before
    /// its next item, even in the middle of a chunk: it sends the results
    /// of the items it ran, tells the pool it retires, and exits cleanly.
    /// The pool runs the items it did not run on other workers, blames no
    /// item, logs the retirement at debug level, counts it in
    /// [`WorkerStats::memory_retirements`](crate::WorkerStats::memory_retirements),
    /// and starts a replacement (a fork of the fork server, if it runs). No
    /// item is lost or run twice. Every worker runs at least one item, so
    /// a bound below what a fresh worker (and its
    /// [`initializer`](Self::initializer)) holds replaces it after every
    /// item, like `max_tasks_per_child(1)`.
    ///
    /// The cost: items run one at a time instead of in batches of up to
    /// 32, and each is followed by one `getrusage` call (well under a
    /// microsecond); the file is read (about 2 µs) only once the worker's
    /// peak resident size has been above the bound. Memory a task frees
    /// counts only if the allocator gives it back to the system.
    ///
    /// Works together with [`max_tasks_per_child`](Self::max_tasks_per_child)
    /// and [`max_lifetime`](Self::max_lifetime): whichever comes first
    /// replaces the worker. Under an MPI launcher (feature `mpi`) it has no
    /// effect: a rank is not replaced by a fresh process.
    ///
    /// # Examples
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// /// Leaks 4 MiB it has written to (so it is resident); returns its
    /// /// worker's pid.
    /// #[task]
    /// fn leaky(_item: u32) -> u32 {
    ///     std::hint::black_box(Box::leak(vec![1u8; 4 << 20].into_boxed_slice()));
    ///     std::process::id()
    /// }
    ///
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(1).max_memory_per_child(64 << 20).build()?;
    /// let pids = pool.map(task!(leaky), 0..40)?; // 160 MiB leaked in all
    /// assert_eq!(pids.len(), 40);
    /// assert!(pool.stats().workers[0].memory_retirements >= 1);
    /// let workers: std::collections::HashSet<u32> = pids.into_iter().collect();
    /// assert!(workers.len() >= 3); // none held more than 64 MiB after an item
    /// # Ok(()) }
    /// ```
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// Replaces a worker once it has lived about `limit` (dask's
    /// `--lifetime` with its stagger): for slow leaks that no bound
    /// catches, or resources that age. Default: no limit; at least 10 ms.
    ///
    /// Each worker draws its own limit uniformly between 90% and 100% of
    /// `limit`, counted from when it is ready (after its
    /// [`initializer`](Self::initializer)), so workers started together do
    /// not all leave together. Past it, the worker gets no more chunks; it
    /// is told to exit once it holds none: at once if it is idle, else
    /// after its current chunk (never in the middle of an item, nor of a
    /// chunk: a chunk of long items can keep it a while longer). Its exit
    /// is logged at debug level, counted in
    /// [`WorkerStats::lifetime_retirements`](crate::WorkerStats::lifetime_retirements),
    /// and a replacement is started. A limit too large to be reached is
    /// no limit.
    ///
    /// Works together with [`max_tasks_per_child`](Self::max_tasks_per_child)
    /// and [`max_memory_per_child`](Self::max_memory_per_child): whichever
    /// comes first replaces the worker. Under an MPI launcher (feature
    /// `mpi`) it has no effect: a rank is not replaced by a fresh process.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// #[task]
    /// fn pid_after(ms: u64) -> u32 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     std::process::id()
    /// }
    ///
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(1).max_lifetime(Duration::from_millis(100)).build()?;
    /// let pids = pool.call().chunksize(1).map(task!(pid_after), vec![20; 30])?; // 600 ms of work
    /// assert_ne!(pids.first(), pids.last()); // the first worker was replaced
    /// # Ok(()) }
    /// ```
    pub fn max_lifetime(mut self, limit: Duration) -> Self {
        self.max_lifetime = Some(limit);
        self
    }

    /// A default per-item timeout for every call; see
    /// [`Call::timeout`](crate::Call::timeout). Default: none.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// let pool = Pool::builder().processes(1).timeout(Duration::from_millis(300)).build()?;
    /// assert!(matches!(pool.apply(task!(nap), 60_000), Err(Error::TaskTimeout { .. })));
    /// // One call may set its own.
    /// assert_eq!(pool.timeout(Duration::from_secs(10)).apply(task!(nap), 500)?, 500);
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.defaults.timeout = Some(limit);
        self
    }

    /// Default retries for every call; see
    /// [`Call::retries`](crate::Call::retries). Default: 0.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).retries(2).build()?;
    /// assert_eq!(pool.map(task!(square), [1, 2])?, [1, 4]); // retried only if a worker dies
    /// # Ok(()) }
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.defaults.retries = n;
        self
    }

    /// Also retry panicking items, for every call (up to its
    /// [`retries`](PoolBuilder::retries)); see
    /// [`Call::retry_panics`](crate::Call::retry_panics). Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).retries(1).retry_panics(true).build()?;
    /// assert_eq!(pool.map(task!(square), [1, 2])?, [1, 4]);
    /// # Ok(()) }
    /// ```
    pub fn retry_panics(mut self, yes: bool) -> Self {
        self.defaults.retry_panics = yes;
        self
    }

    /// Draw a progress line for every blocking call and `imap`; see
    /// [`Call::progress`](crate::Call::progress). Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).progress(true).build()?;
    /// assert_eq!(pool.map(task!(square), 0..100)?.len(), 100); // a bar while it runs, on a terminal
    /// # Ok(()) }
    /// ```
    pub fn progress(mut self, on: bool) -> Self {
        self.defaults.progress_bar = on;
        self
    }

    /// Starts the workers and returns once every one is ready.
    ///
    /// # Errors
    ///
    /// - [`Error::NotWorkerCapable`] if `main` did not call
    ///   [`init`](crate::init) (or use [`#[main]`](crate::main)), and this is
    ///   no test binary with [`test_support!`](crate::test_support);
    /// - [`Error::WorkerContext`] / [`Error::NestedPool`] inside a worker;
    /// - [`Error::InvalidSetting`] for zero processes, chunks in flight or
    ///   a frame limit out of range, `max_tasks_per_child(0)`, a
    ///   `max_memory_per_child` below 1 MiB or a `max_lifetime` below 10 ms;
    /// - [`Error::Spawn`] / [`Error::Startup`] if a worker cannot start;
    /// - [`Error::Initializer`] if the initializer fails in a worker;
    /// - [`Error::Registry`] if two tasks share an id.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.processes(), 2);
    /// assert!(matches!(Pool::builder().processes(0).build(), Err(Error::InvalidSetting(_))));
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<Pool, Error> {
        if worker::IN_WORKER.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::NestedPool);
        }
        if crate::entry::spawned_as_worker() {
            return Err(Error::WorkerContext);
        }
        // Under an MPI launcher the workers are the other ranks.
        #[cfg(feature = "mpi")]
        let mpi = crate::backend::mpi::pool_ranks()?;
        #[cfg(not(feature = "mpi"))]
        let mpi: Option<(usize, crate::backend::RemoteStart)> = None;
        let processes = match (self.processes, mpi) {
            (Some(0), _) => {
                return Err(Error::InvalidSetting("processes must be at least 1".into()));
            }
            (Some(n), Some((ranks, _))) => n.min(ranks),
            (Some(n), None) => n,
            (None, Some((ranks, _))) => ranks,
            (None, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.depth == 0 || self.depth > MAX_CHUNKS_IN_FLIGHT {
            return Err(Error::InvalidSetting(format!(
                "chunks_in_flight must be between 1 and {MAX_CHUNKS_IN_FLIGHT}, not {}",
                self.depth
            )));
        }
        if self.max_frame < 4096 || self.max_frame > u32::MAX as usize {
            return Err(Error::InvalidSetting(format!(
                "max_frame_size must be between 4096 and {} bytes, not {}",
                u32::MAX,
                self.max_frame
            )));
        }
        if self.max_tasks == Some(0) {
            return Err(Error::InvalidSetting(
                "max_tasks_per_child must be at least 1".into(),
            ));
        }
        if let Some(bytes) = self.max_memory.filter(|&b| b < MIN_MEMORY_PER_CHILD) {
            return Err(Error::InvalidSetting(format!(
                "max_memory_per_child must be at least 1 MiB ({MIN_MEMORY_PER_CHILD} bytes; a fresh worker alone holds a few MiB), not {bytes} bytes"
            )));
        }
        if let Some(limit) = self.max_lifetime.filter(|&d| d < MIN_LIFETIME) {
            return Err(Error::InvalidSetting(format!(
                "max_lifetime must be at least {MIN_LIFETIME:?} (a worker takes about a millisecond to start), not {limit:?}"
            )));
        }
        let init = self
            .init
            .transpose()
            .map_err(|(task, failure)| Error::Serialization {
                task,
                index: 0,
                failure,
            })?;
        let registry = Registry::collect()?;
        let harness_args = crate::harness_args();
        if mpi.is_none()
            && harness_args.is_none()
            && !worker::INIT_CALLED.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::NotWorkerCapable);
        }
        let launch = Launch {
            init,
            harness_args,
            fingerprint: registry.fingerprint(),
            max_frame: self.max_frame,
            startup_timeout: self.startup_timeout,
            fork_server: self.fork_server,
            // An MPI rank cannot be replaced by a fresh process.
            max_memory: self.max_memory.filter(|_| mpi.is_none()),
            log_level: None,
            // Local workers' channels are read here, large results pulled.
            pull_results: mpi.is_none(),
        };
        let config = Config {
            processes,
            depth: self.depth,
            // An MPI rank cannot be replaced by a fresh process.
            max_tasks: self.max_tasks.filter(|_| mpi.is_none()),
            max_lifetime: self.max_lifetime.filter(|_| mpi.is_none()),
            backend: match mpi {
                Some(_) => None,
                None => Some(Arc::new(LocalBackend::new(launch.clone())) as Arc<dyn Backend>),
            },
            remote: mpi.map(|(_, start)| start),
            launch,
        };
        if config.remote.is_none() {
            make_room_for_descriptors(processes);
        }
        let (shared, supervisor) = Scheduler::start(config)?;
        Ok(Pool::from_parts(shared, supervisor, self.defaults))
    }
}

/// Raises the soft descriptor limit, up to the hard one, if it leaves less
/// than 3 descriptors per worker (and some to spare) beside those open now.
fn make_room_for_descriptors(processes: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |dir| dir.count());
    let wanted = (open + 3 * processes + 64) as u64;
    let limit = getrlimit(Resource::Nofile);
    // `None` is no limit (RLIM_INFINITY).
    let (current, maximum) = (
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    );
    let target = wanted.min(maximum);
    if current >= wanted || target <= current {
        return;
    }
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        tracing::debug!(
            from = current,
            to = target,
            "raised the soft limit on open files for the pool's workers"
        );
    }
}
