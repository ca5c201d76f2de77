//! [`Pool`] and its operations.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pool_core::{IntoArgs, Task, UnaryTask};

use crate::async_result::{AsyncResult, Driver};
use crate::builder::PoolBuilder;
use crate::error::Error;
use crate::in_order::InOrder;
use crate::progress::ProgressHook;
use crate::run::{CallOptions, Indexed, Mode, Run};
use crate::scheduler::Scheduler;

/// A pool of worker processes running `#[task]` functions.
///
/// Each worker is a copy of this very program, started with
/// [`Pool::new`] or [`Pool::builder`]. Calls block until their results are
/// in ([`map`](Pool::map), [`starmap`](Pool::starmap), [`apply`](Pool::apply))
/// or stream them ([`imap`](Pool::imap) and friends). A pool is `Send + Sync`:
/// share it by reference across threads.
///
/// Dropping the pool ends every worker: idle ones exit, busy ones are killed,
/// and every process is reaped before `drop` returns (within about 2 s).
///
/// ```
/// use pool_runtime::prelude::*;
/// use pool_runtime::task;
///
/// #[task]
/// fn power(x: u64, n: u32) -> u64 {
///     x.pow(n)
/// }
///
/// #[pool_runtime::main]
/// fn main() -> Result<(), pool_runtime::Error> {
///     let pool = Pool::new()?;
///     assert_eq!(pool.starmap(task!(power), [(2, 3), (3, 2), (4, 1)])?, [8, 9, 4]);
///     Ok(())
/// }
/// ```
pub struct Pool {
    shared: Arc<Scheduler>,
    /// Options every call starts from.
    defaults: CallOptions,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// The result thread of async calls, started by the first one.
    driver: Mutex<Option<Driver>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool with one worker process per available CPU.
    ///
    /// # Errors
    ///
    /// See [`PoolBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pool = Pool::new()?;
    /// assert!(pool.processes() >= 1); // one per available CPU
    /// # Ok(()) }
    /// ```
    pub fn new() -> Result<Pool, Error> {
        PoolBuilder::new().build()
    }

    /// A builder to choose the number of processes and other settings.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pool = Pool::builder().processes(2).max_tasks_per_child(1000).build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    pub(crate) fn from_parts(
        shared: Arc<Scheduler>,
        supervisor: JoinHandle<()>,
        defaults: CallOptions,
    ) -> Pool {
        Pool {
            shared,
            defaults,
            supervisor: Mutex::new(Some(supervisor)),
            driver: Mutex::new(None),
        }
    }

    /// The number of worker processes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok(()) }
    /// ```
    pub fn processes(&self) -> usize {
        self.shared.config.processes
    }

    /// Counters per worker (items, failures, respawns, busy time) and the
    /// queue depth. See [`PoolStats`](crate::PoolStats).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// pool.map(task!(square), 0..100)?;
    /// let stats = pool.stats();
    /// let items: u64 = stats.workers.iter().map(|w| w.items).sum();
    /// assert_eq!(items, 100);
    /// assert_eq!((stats.queued_items, stats.in_flight_items), (0, 0));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> crate::PoolStats {
        self.shared.stats()
    }

    /// The process ids of the live workers (replaced workers get new ids).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pids = pool.worker_pids();
    /// assert_eq!(pids.len(), 2);
    /// assert!(!pids.contains(&std::process::id())); // separate processes
    /// # Ok(()) }
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.pids()
    }

    /// The same pool with options for the next call: see [`Call`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out = pool
    ///     .call()
    ///     .chunksize(10)
    ///     .timeout(Duration::from_secs(10))
    ///     .retries(1)
    ///     .map(task!(square), 0..100)?;
    /// assert_eq!(out[99], 99 * 99);
    /// # Ok(()) }
    /// ```
    pub fn call(&self) -> Call<'_> {
        Call {
            pool: self,
            options: self.defaults,
            hook: None,
        }
    }

    /// Options for the next call, starting with its chunk size:
    /// `pool.chunksize(2).starmap(task!(f), items)`. See [`Call::chunksize`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out = pool.chunksize(2).starmap(task!(power), [(2, 3), (3, 2), (4, 1)])?;
    /// assert_eq!(out, [8, 9, 4]);
    /// # Ok(()) }
    /// ```
    pub fn chunksize(&self, items: usize) -> Call<'_> {
        self.call().chunksize(items)
    }

    /// Options for the next call, starting with its per-item timeout:
    /// `pool.timeout(d).map(task!(f), items)`. See [`Call::timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// // The second item sleeps for a minute: its worker is killed after 300 ms.
    /// let out: Vec<_> = pool.timeout(Duration::from_millis(300)).imap(task!(nap), [1, 60_000, 2]).collect();
    /// assert!(matches!(out[1], Err(Error::TaskTimeout { index: 1, .. })));
    /// assert_eq!((out[0].as_ref().ok(), out[2].as_ref().ok()), (Some(&1), Some(&2)));
    /// # Ok(()) }
    /// ```
    pub fn timeout(&self, limit: Duration) -> Call<'_> {
        self.call().timeout(limit)
    }

    /// Options for the next call, starting with its retries:
    /// `pool.retries(2).starmap(task!(f), items)`. See [`Call::retries`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// # #[task]
    /// # fn exit_once(x: u64, marker: String) -> u64 {
    /// #     if x == 2 && std::fs::File::create_new(&marker).is_ok() { std::process::exit(3) }
    /// #     x
    /// # }
    /// # let marker = std::env::temp_dir().join(format!("pool-doc-retries-{}", std::process::id()));
    /// # let _ = std::fs::remove_file(&marker);
    /// # let marker = marker.display().to_string();
    /// // `exit_once` ends its worker the first time it sees 2: the item runs
    /// // again on a fresh worker.
    /// let items = (0..4).map(|x| (x, marker.clone()));
    /// assert_eq!(pool.retries(1).starmap(task!(exit_once), items)?, [0, 1, 2, 3]);
    /// # let _ = std::fs::remove_file(&marker);
    /// # Ok(()) }
    /// ```
    pub fn retries(&self, n: u32) -> Call<'_> {
        self.call().retries(n)
    }

    /// Options for the next call, starting with whether a panicking item
    /// is retried: `pool.retries(1).retry_panics(true).map(..)`. See
    /// [`Call::retry_panics`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.retry_panics(true).retries(1).map(task!(square), [2])?, [4]);
    /// # Ok(()) }
    /// ```
    pub fn retry_panics(&self, yes: bool) -> Call<'_> {
        self.call().retry_panics(yes)
    }

    /// Options for the next call, starting with a progress line on the
    /// terminal: `pool.progress(true).map(..)`. See [`Call::progress`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.progress(true).map(task!(square), 0..100)?.len(), 100);
    /// # Ok(()) }
    /// ```
    pub fn progress(&self, on: bool) -> Call<'_> {
        self.call().progress(on)
    }

    /// Options for the next call, starting with a progress hook:
    /// `pool.on_progress(|done, total| ..).map(..)`. See
    /// [`Call::on_progress`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::sync::atomic::{AtomicUsize, Ordering};
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// static DONE: AtomicUsize = AtomicUsize::new(0);
    /// pool.on_progress(|done, _total| DONE.store(done, Ordering::Relaxed)).map(task!(square), 0..10)?;
    /// assert_eq!(DONE.load(Ordering::Relaxed), 10);
    /// # Ok(()) }
    /// ```
    pub fn on_progress(
        &self,
        hook: impl Fn(usize, Option<usize>) + Send + Sync + 'static,
    ) -> Call<'_> {
        self.call().on_progress(hook)
    }

    /// Calls a one-argument task on every item; results in input order.
    /// See [`Call::map`].
    ///
    /// # Errors
    ///
    /// The first item failure that comes back, or a
    /// pool-level error ([`Error::Closed`], [`Error::Terminated`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.map(task!(square), [1, 2, 3])?, [1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().map(task, items)
    }

    /// Calls a task on every tuple of arguments; results in input order.
    /// See [`Call::starmap`].
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.starmap(task!(power), [(2, 3), (3, 2)])?, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn starmap<T, I>(&self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().starmap(task, items)
    }

    /// Calls a task once and waits for its result. See [`Call::apply`].
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.apply(task!(power), (2, 10))?, 1024);
    /// assert_eq!(pool.apply(task!(square), 12)?, 144); // a one-argument task takes its bare argument
    /// # Ok(()) }
    /// ```
    pub fn apply<T, A>(&self, task: T, args: A) -> Result<T::Output, Error>
    where
        T: Task,
        A: IntoArgs<T>,
    {
        self.call().apply(task, args)
    }

    /// Starts a `map` and returns at once. See [`Call::map_async`].
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] or [`Error::Terminated`]; the call's own errors come
    /// from the [`AsyncResult`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.map_async(task!(square), 0..4)?;
    /// // ... other work while the workers run ...
    /// assert_eq!(pending.get()?, [0, 1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map_async<T, I>(&self, task: T, items: I) -> Result<AsyncResult<Vec<T::Output>>, Error>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().map_async(task, items)
    }

    /// Starts a `starmap` and returns at once. See [`Call::starmap_async`].
    ///
    /// # Errors
    ///
    /// As [`Pool::map_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.starmap_async(task!(power), [(2, 3), (3, 2)])?;
    /// assert_eq!(pending.get()?, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn starmap_async<T, I>(
        &self,
        task: T,
        items: I,
    ) -> Result<AsyncResult<Vec<T::Output>>, Error>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().starmap_async(task, items)
    }

    /// Starts one call and returns at once. See [`Call::apply_async`].
    ///
    /// # Errors
    ///
    /// As [`Pool::map_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.apply_async(task!(power), (2, 10))?;
    /// assert_eq!(pending.get()?, 1024);
    /// # Ok(()) }
    /// ```
    pub fn apply_async<T, A>(&self, task: T, args: A) -> Result<AsyncResult<T::Output>, Error>
    where
        T: Task,
        A: IntoArgs<T>,
    {
        self.call().apply_async(task, args)
    }

    /// Lazily maps a one-argument task; yields results in input order.
    /// See [`Call::imap`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut total = 0;
    /// for result in pool.imap(task!(square), 1..=100) {
    ///     total += result?; // in input order, as they come
    /// }
    /// assert_eq!(total, 338_350);
    /// # Ok(()) }
    /// ```
    pub fn imap<T, I>(&self, task: T, items: I) -> Imap<T, I::IntoIter>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().imap(task, items)
    }

    /// Lazily maps a one-argument task; yields results as they complete.
    /// See [`Call::imap_unordered`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut out: Vec<u64> = pool.imap_unordered(task!(square), [3, 1, 2]).collect::<Result<_, _>>()?;
    /// out.sort(); // completion order
    /// assert_eq!(out, [1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<T, I>(&self, task: T, items: I) -> ImapUnordered<T, I::IntoIter>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().imap_unordered(task, items)
    }

    /// [`imap`](Pool::imap) for tasks taking argument tuples.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out: Vec<u64> = pool.istarmap(task!(power), [(2, 3), (3, 2)]).collect::<Result<_, _>>()?;
    /// assert_eq!(out, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn istarmap<T, I>(&self, task: T, items: I) -> Imap<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().istarmap(task, items)
    }

    /// [`imap_unordered`](Pool::imap_unordered) for tasks taking argument tuples.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut out: Vec<u64> =
    ///     pool.istarmap_unordered(task!(power), [(2, 3), (3, 2)]).collect::<Result<_, _>>()?;
    /// out.sort();
    /// assert_eq!(out, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn istarmap_unordered<T, I>(&self, task: T, items: I) -> ImapUnordered<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.call().istarmap_unordered(task, items)
    }

    /// Accepts no new calls; calls already running go on.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.map_async(task!(square), [1, 2])?;
    /// pool.close();
    /// assert!(matches!(pool.map(task!(square), [3]), Err(Error::Closed)));
    /// assert_eq!(pending.get()?, [1, 4]); // work already submitted goes on
    /// # Ok(()) }
    /// ```
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the pool, waits for all submitted work, then stops every
    /// worker and reaps it.
    ///
    /// Every item an [`imap`](Pool::imap) iterator pulled before the join
    /// runs and is delivered; the iterator then yields
    /// [`Error::Terminated`] once (the rest of its input is not read). From
    /// a result callback, `join` waits for the work of every call, and the
    /// results of async calls are delivered once the callback returns.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.map_async(task!(nap), [100, 100])?;
    /// pool.join(); // waits for the two naps, then ends both workers
    /// assert!(pending.ready());
    /// assert_eq!(pending.get()?, [100, 100]);
    /// # Ok(()) }
    /// ```
    pub fn join(&self) {
        self.shared.close();
        self.shared.begin_join();
        let from_results_thread = self
            .driver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(Driver::is_current);
        self.shared.wait_idle(from_results_thread);
        self.stop(true);
    }

    /// Stops at once: every worker is killed and reaped; unfinished calls
    /// get [`Error::Terminated`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.map_async(task!(nap), [60_000, 60_000])?;
    /// pool.terminate(); // does not wait for the naps
    /// assert!(matches!(pending.get(), Err(Error::Terminated)));
    /// # Ok(()) }
    /// ```
    pub fn terminate(&self) {
        self.stop(false);
    }

    /// Whether [`close`](Pool::close), [`join`](Pool::join) or
    /// [`terminate`](Pool::terminate) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert!(!pool.is_closed());
    /// pool.close();
    /// assert!(pool.is_closed());
    /// # Ok(()) }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    fn stop(&self, graceful: bool) {
        let handle = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            self.shared.shutdown(graceful, handle);
        }
        if let Some(mut driver) = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take() {
            driver.stop();
        }
    }

    /// Submits a whole call and tracks it on the result thread.
    fn submit_async<T, I, R>(
        &self,
        items: I,
        options: CallOptions,
        finish: fn(Vec<T::Output>) -> Option<R>,
    ) -> Result<AsyncResult<R>, Error>
    where
        T: Task,
        I: Iterator,
        I::Item: IntoArgs<T>,
        R: Send + 'static,
    {
        let mut driver = self.driver.lock().unwrap_or_else(|p| p.into_inner());
        if driver.is_none() {
            if self
                .supervisor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            {
                return Err(Error::Terminated);
            }
            *driver = Some(Driver::start()?);
        }
        let Some(driver) = driver.as_ref() else {
            return Err(Error::Terminated);
        };
        let run = Run::<T, I>::new(
            &self.shared,
            items,
            options,
            Mode::Blocking,
            Some(driver.sink()),
            None,
        )?;
        let detached = run.submit_all()?;
        Ok(driver.track::<T, R>(detached, finish))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop(true);
    }
}

/// Options for one call, then the call itself.
///
/// Made by [`Pool::call`] or by any per-call shortcut of [`Pool`] (the
/// same name as the option: [`Pool::chunksize`], [`Pool::timeout`],
/// [`Pool::retries`], [`Pool::retry_panics`], [`Pool::progress`],
/// [`Pool::on_progress`]); the operations are the same as on [`Pool`]. An
/// option not set here takes the pool's default from its [`PoolBuilder`],
/// which has a setter of the same name for every option but the call's
/// own `chunksize` and `on_progress` hook.
///
/// ```
/// # use pool_runtime::prelude::*;
/// # use pool_runtime::task;
/// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
/// # #[pool_runtime::main]
/// # fn main() -> Result<(), pool_runtime::Error> {
/// # let pool = Pool::new()?;
/// let out = pool.chunksize(2).starmap(task!(power), [(2, 3), (3, 2), (4, 1)])?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Call<'p> {
    pool: &'p Pool,
    options: CallOptions,
    hook: Option<ProgressHook>,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'p> Call<'p> {
    /// Items per chunk sent to a worker at once (Python's `chunksize`).
    ///
    /// Default: automatic. With a known input length it never exceeds
    /// Python's choice (`len / (4 × processes)`, rounded up), and it starts
    /// small and grows with the measured throughput, so slow tasks keep
    /// every worker busy and tiny tasks travel in large chunks.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out = pool.call().chunksize(100).map(task!(square), 0..10_000)?;
    /// assert_eq!(out[9_999], 9_999 * 9_999);
    /// # Ok(()) }
    /// ```
    pub fn chunksize(mut self, items: usize) -> Self {
        self.options.chunksize = Some(items);
        self
    }

    /// A limit on how long one item may run. An item over the limit fails
    /// with [`Error::TaskTimeout`]; its worker is killed and replaced, and
    /// the other items go on. Default: none. Checked every ~10 ms.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let r = pool.call().timeout(Duration::from_millis(300)).apply(task!(nap), 60_000);
    /// assert!(matches!(r, Err(Error::TaskTimeout { .. })));
    /// assert_eq!(pool.apply(task!(nap), 1)?, 1); // the worker was replaced
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.options.timeout = Some(limit);
        self
    }

    /// Re-runs an item up to `n` times, each time on a fresh worker, when
    /// its worker dies under it (a signal, an abort, `process::exit`) before
    /// reporting [`Error::WorkerDied`]. Timeouts are not retried; panics
    /// only with [`retry_panics`](Call::retry_panics). Default: 0.
    ///
    /// A retried item may have run partly (or, if its worker died just
    /// after it, completely) before: retry idempotent work only.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// // Retries cover a worker dying under an item; a healthy call is unchanged.
    /// assert_eq!(pool.call().retries(2).map(task!(square), [1, 2])?, [1, 4]);
    /// # Ok(()) }
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.options.retries = n;
        self
    }

    /// Also re-run an item that panics, in place, up to the
    /// [`retries`](Call::retries) count, before reporting
    /// [`Error::TaskPanicked`]. Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// # #[task]
    /// # fn panic_once(x: u64, marker: String) -> u64 {
    /// #     if x == 1 && std::fs::File::create_new(&marker).is_ok() { panic!("first try of item 1") }
    /// #     x
    /// # }
    /// # let marker = std::env::temp_dir().join(format!("pool-doc-retry-panics-{}", std::process::id()));
    /// # let _ = std::fs::remove_file(&marker);
    /// # let marker = marker.display().to_string();
    /// // `panic_once` panics the first time it sees 1; the second try succeeds.
    /// let items = || (0..3).map(|x| (x, marker.clone()));
    /// let out = pool.call().retries(1).retry_panics(true).starmap(task!(panic_once), items())?;
    /// assert_eq!(out, [0, 1, 2]);
    /// # let _ = std::fs::remove_file(&marker);
    /// # Ok(()) }
    /// ```
    pub fn retry_panics(mut self, yes: bool) -> Self {
        self.options.retry_panics = yes;
        self
    }

    /// Calls `hook(done, total)` as results come back (`total` when the
    /// input's length is known): for the blocking calls and the `imap`
    /// family; async calls do not report progress. Runs on the thread that
    /// waits for the results; keep it short.
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// # let pool = Pool::new()?;
    /// let squares = pool.call().on_progress(|done, total| eprintln!("{done}/{total:?}")).map(task!(square), 0..1000)?;
    /// # Ok(()) }
    /// ```
    pub fn on_progress(
        mut self,
        hook: impl Fn(usize, Option<usize>) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(std::sync::Arc::new(hook));
        self
    }

    /// Whether to draw a progress line with rate, elapsed time and ETA on
    /// the terminal's last row while the call runs; lines the program and
    /// its tasks print scroll above it. Only when stderr is a terminal
    /// (redirected output gets no escape codes). With the `progress`
    /// feature the line is an `indicatif` bar; without it, plain text with
    /// the same numbers. Default: the pool's
    /// ([`PoolBuilder::progress`], off).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out = pool.call().progress(true).map(task!(nap), [10; 20])?;
    /// assert_eq!(out.len(), 20);
    /// # Ok(()) }
    /// ```
    pub fn progress(mut self, on: bool) -> Self {
        self.options.progress_bar = on;
        self
    }

    /// Calls a one-argument task on every item, in parallel; returns the
    /// results in input order.
    ///
    /// # Errors
    ///
    /// On the first failing item the call stops and returns its error
    /// ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...), with the item's
    /// index; the rest of the input is not sent. Use [`Call::imap`] to get a
    /// result per item instead.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.call().chunksize(1).map(task!(square), [1, 2, 3])?, [1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map<T, I>(self, task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.starmap(task, items)
    }

    /// Calls a task on every tuple of arguments, in parallel; returns the
    /// results in input order.
    ///
    /// # Errors
    ///
    /// As [`Call::map`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.call().chunksize(1).starmap(task!(power), [(2, 3), (3, 2)])?, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn starmap<T, I>(self, _task: T, items: I) -> Result<Vec<T::Output>, Error>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        let mut run = Run::<T, _>::new(
            &self.pool.shared,
            items.into_iter(),
            self.options,
            Mode::Blocking,
            None,
            self.hook,
        )?;
        let mut results = InOrder::with_capacity(run.len_hint().unwrap_or(0));
        let mut failed: Option<Error> = None;
        while let Some(outcome) = run.next_with(&mut |index, result| match result {
            Ok(value) => results.put(index, value),
            Err(err) => {
                failed.get_or_insert(err);
            }
        }) {
            outcome?;
            if let Some(err) = failed {
                return Err(err);
            }
        }
        results
            .finish(run.pulled())
            .map_err(|missing| lost(T::NAME, missing))
    }

    /// Calls a task once and waits for its result.
    ///
    /// # Errors
    ///
    /// As [`Call::map`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.call().timeout(Duration::from_secs(10)).apply(task!(power), (2, 10))?, 1024);
    /// # Ok(()) }
    /// ```
    pub fn apply<T, A>(self, task: T, args: A) -> Result<T::Output, Error>
    where
        T: Task,
        A: IntoArgs<T>,
    {
        let mut out = self.chunksize(1).starmap(task, [args])?;
        out.pop().ok_or_else(|| lost(T::NAME, 0))
    }

    /// Starts a [`map`](Call::map) and returns at once with an
    /// [`AsyncResult`]. The whole input is read and sent now, as in Python.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Terminated`] or an invalid option; the
    /// call's own errors come from the [`AsyncResult`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.call().chunksize(2).map_async(task!(square), 0..4)?;
    /// assert_eq!(pending.get()?, [0, 1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map_async<T, I>(self, task: T, items: I) -> Result<AsyncResult<Vec<T::Output>>, Error>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.starmap_async(task, items)
    }

    /// Starts a [`starmap`](Call::starmap) and returns at once with an
    /// [`AsyncResult`].
    ///
    /// # Errors
    ///
    /// As [`Call::map_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.call().chunksize(1).starmap_async(task!(power), [(2, 3), (3, 2)])?;
    /// assert_eq!(pending.get()?, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn starmap_async<T, I>(
        self,
        _task: T,
        items: I,
    ) -> Result<AsyncResult<Vec<T::Output>>, Error>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.pool
            .submit_async::<T, _, _>(items.into_iter(), self.options, Some)
    }

    /// Starts one call and returns at once with an [`AsyncResult`].
    ///
    /// # Errors
    ///
    /// As [`Call::map_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.call().timeout(Duration::from_secs(10)).apply_async(task!(square), 7)?;
    /// assert_eq!(pending.get()?, 49);
    /// # Ok(()) }
    /// ```
    pub fn apply_async<T, A>(self, _task: T, args: A) -> Result<AsyncResult<T::Output>, Error>
    where
        T: Task,
        A: IntoArgs<T>,
    {
        self.pool
            .submit_async::<T, _, _>(std::iter::once(args), self.options, |mut v| v.pop())
    }

    /// Lazily calls a one-argument task on every item; yields one `Result`
    /// per item, in input order.
    ///
    /// The input is pulled only as workers need it, within a window of 8
    /// chunks per worker; for chunks that take the workers well under 1 ms,
    /// of about 1 ms of their work, at most
    /// [`chunks_in_flight`](crate::PoolBuilder::chunks_in_flight) + 2 chunks
    /// and 1 MiB of encoded arguments per worker. An endless iterator
    /// works, and stopping the iteration stops the pulling. Dropping the
    /// iterator cancels the rest (chunks already sent to a worker still
    /// run).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let first: Vec<u64> = pool.call().chunksize(4).imap(task!(square), 0u64..).take(3).collect::<Result<_, _>>()?;
    /// assert_eq!(first, [0, 1, 4]); // an endless input is read only as far as needed
    /// # Ok(()) }
    /// ```
    pub fn imap<T, I>(self, task: T, items: I) -> Imap<T, I::IntoIter>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.istarmap(task, items)
    }

    /// As [`Call::imap`], but yields results as they complete.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let n = pool.call().chunksize(1).imap_unordered(task!(square), 0..10).filter(Result::is_ok).count();
    /// assert_eq!(n, 10);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<T, I>(self, task: T, items: I) -> ImapUnordered<T, I::IntoIter>
    where
        T: UnaryTask,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        self.istarmap_unordered(task, items)
    }

    /// [`imap`](Call::imap) for tasks taking argument tuples.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let out: Vec<u64> = pool.call().chunksize(1).istarmap(task!(power), [(2, 3), (3, 2)]).collect::<Result<_, _>>()?;
    /// assert_eq!(out, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn istarmap<T, I>(self, _task: T, items: I) -> Imap<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        let run = Run::new(
            &self.pool.shared,
            items.into_iter(),
            self.options,
            Mode::Ordered,
            None,
            self.hook,
        );
        Imap {
            inner: run.map_err(Some),
            buffer: VecDeque::new(),
            next: 0,
        }
    }

    /// [`imap_unordered`](Call::imap_unordered) for tasks taking argument tuples.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn power(x: u64, n: u32) -> u64 { x.pow(n) }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let mut out: Vec<u64> = pool.call().chunksize(1).istarmap_unordered(task!(power), [(2, 3), (3, 2)]).collect::<Result<_, _>>()?;
    /// out.sort();
    /// assert_eq!(out, [8, 9]);
    /// # Ok(()) }
    /// ```
    pub fn istarmap_unordered<T, I>(self, _task: T, items: I) -> ImapUnordered<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator,
        I::Item: IntoArgs<T>,
    {
        let run = Run::new(
            &self.pool.shared,
            items.into_iter(),
            self.options,
            Mode::Unordered,
            None,
            self.hook,
        );
        ImapUnordered {
            inner: run.map_err(Some),
            ready: VecDeque::new(),
        }
    }
}

fn lost(task: &'static str, index: usize) -> Error {
    Error::Broken {
        reason: format!("the result of task `{task}` on item {index} never arrived"),
        source: None,
    }
}

/// The iterator of [`Pool::imap`]: one `Result` per input item, in input order.
///
/// A pool-level failure ([`Error::Terminated`], ...) is yielded once, then
/// the iterator ends.
pub struct Imap<T: Task, I> {
    inner: Result<Run<T, I>, Option<Error>>,
    /// Results from index `next` on; `None` where not yet arrived.
    buffer: VecDeque<Option<Result<T::Output, Error>>>,
    next: usize,
}

impl<T, I> Iterator for Imap<T, I>
where
    T: Task,
    I: Iterator,
    I::Item: IntoArgs<T>,
{
    type Item = Result<T::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let run = match &mut self.inner {
            Ok(run) => run,
            Err(err) => return err.take().map(Err),
        };
        loop {
            if let Some(Some(_)) = self.buffer.front() {
                let item = self.buffer.pop_front().flatten();
                self.next += 1;
                run.release(self.next);
                return item;
            }
            match run.next_batch()? {
                Err(err) => return Some(Err(err)),
                Ok(batch) => place(&mut self.buffer, self.next, batch),
            }
        }
    }
}

fn place<O>(buffer: &mut VecDeque<Option<Result<O, Error>>>, next: usize, batch: Vec<Indexed<O>>) {
    for (index, result) in batch {
        let Some(offset) = index.checked_sub(next) else {
            continue;
        };
        if buffer.len() <= offset {
            buffer.resize_with(offset + 1, || None);
        }
        buffer[offset] = Some(result);
    }
}

/// The iterator of [`Pool::imap_unordered`]: one `Result` per input item,
/// in completion order.
pub struct ImapUnordered<T: Task, I> {
    inner: Result<Run<T, I>, Option<Error>>,
    ready: VecDeque<Result<T::Output, Error>>,
}

impl<T, I> Iterator for ImapUnordered<T, I>
where
    T: Task,
    I: Iterator,
    I::Item: IntoArgs<T>,
{
    type Item = Result<T::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let run = match &mut self.inner {
            Ok(run) => run,
            Err(err) => return err.take().map(Err),
        };
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            match run.next_batch()? {
                Err(err) => return Some(Err(err)),
                Ok(batch) => self.ready.extend(batch.into_iter().map(|(_, r)| r)),
            }
        }
    }
}
