//! [`Pool`] and its operations.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pool_core::{IntoArgs, Task, UnaryTask};

use crate::async_result::AsyncResult;
use crate::builder::PoolBuilder;
use crate::error::Error;
use crate::imap::{Imap, ImapUnordered};
use crate::result_thread::Driver;
use crate::run::{CallOptions, Mode, Run};
use crate::scheduler::Scheduler;
use crate::shared::{Plain, Shared, SharedSlice};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
/// Like [`terminate`](Pool::terminate), `drop` also waits for the callback
/// or async result decoding the pool's result thread is running. Log
/// records from tasks still waiting for this process's subscriber are
/// waited for while it takes them (not for one stuck for 1 s).
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
    pub(crate) shared: Arc<Scheduler>,
    /// Options every call starts from.
    pub(crate) defaults: CallOptions,
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

    /// Calls a one-argument task on every item; results in input order.
    /// See [`Call::map`](crate::Call::map).
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
    /// See [`Call::starmap`](crate::Call::starmap).
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

    /// Calls a task once and waits for its result. See [`Call::apply`](crate::Call::apply).
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

    /// Starts a `map` and returns at once. See [`Call::map_async`](crate::Call::map_async).
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

    /// Starts a `starmap` and returns at once. See [`Call::starmap_async`](crate::Call::starmap_async).
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

    /// Starts one call and returns at once. See [`Call::apply_async`](crate::Call::apply_async).
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
    /// See [`Call::imap`](crate::Call::imap).
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
    /// See [`Call::imap_unordered`](crate::Call::imap_unordered).
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
    /// Results follow the log records of their tasks: `join` also waits
    /// until this process's subscriber has taken those.
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
    /// Once it returns, no callback of this pool runs any more: it waits
    /// for the one the result thread may be running, and for the decoding
    /// of an async call's result there (its type's `Deserialize`). So a
    /// callback or a `Deserialize` must not wait for a lock the thread
    /// calling `terminate` (or dropping the pool) holds: that deadlocks,
    /// as joining any thread would. Called from a callback, it does not
    /// wait for that callback. The subscriber that shows log records from
    /// tasks may block, though: it runs on a thread `terminate` does not
    /// wait for; calls whose results wait behind its records end with
    /// `Terminated`, and records still waiting are shown later (or lost if
    /// the program ends first; dropping the pool instead waits for them
    /// while the subscriber takes them).
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

    /// Cancels every call submitted so far and keeps the pool open
    /// (`concurrent.futures`' `shutdown(cancel_futures=True)` without the
    /// shutdown): queued items are dropped, items running are stopped by
    /// killing their workers, which are replaced. Each cancelled call ends
    /// with [`Error::Cancelled`]: blocking calls in other threads return
    /// it, `imap` iterators yield it once, async results hold it (and
    /// their error callbacks get it). Returns how many calls it cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let a = pool.map_async(task!(nap), [60_000, 60_000])?;
    /// let b = pool.apply_async(task!(nap), 60_000)?;
    /// assert_eq!(pool.cancel_all(), 2);
    /// assert!(matches!(a.get(), Err(Error::Cancelled)));
    /// assert!(matches!(b.get(), Err(Error::Cancelled)));
    /// assert_eq!(pool.map(task!(square), [4])?, [16]); // still open
    /// # Ok(()) }
    /// ```
    pub fn cancel_all(&self) -> usize {
        self.shared.cancel_all()
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
    pub(crate) fn submit_async<T, I, R>(
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

    /// Shares `value` once with every worker: the typed answer to
    /// `ray.put`. Tasks take the returned [`Shared`] as an argument
    /// (`#[task] fn f(model: Shared<Model>, x: f64)`), which travels as a
    /// small handle; each worker decodes the value once and reads it as
    /// `&T`. For arrays of numbers or bytes, [`share_slice`](Pool::share_slice)
    /// avoids the per-worker copy. The value stays readable here too
    /// (`Deref`). See [`Shared`] for lifetime and reach.
    ///
    /// # Errors
    ///
    /// [`Error::Share`] if the value cannot be encoded (postcard), or its
    /// memfd cannot be created or written (out of memory).
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_runtime::prelude::*;
    /// use pool_runtime::task;
    ///
    /// #[task]
    /// fn lookup(table: Shared<Vec<String>>, i: usize) -> String {
    ///     table[i].clone()
    /// }
    ///
    /// #[pool_runtime::main]
    /// fn main() -> Result<(), Error> {
    ///     let pool = Pool::builder().processes(2).build()?;
    ///     let table = pool.share(vec!["zero".to_owned(), "one".to_owned()])?;
    ///     let out = pool.starmap(task!(lookup), [(table.clone(), 1), (table, 0)])?;
    ///     assert_eq!(out, ["one", "zero"]);
    ///     Ok(())
    /// }
    /// ```
    pub fn share<T>(&self, value: T) -> Result<Shared<T>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        crate::shared::share(value)
    }

    /// Shares an array of numbers or bytes once with every worker, read in
    /// place: the typed answer to joblib's memmapping. The elements are
    /// copied once into a sealed memfd; workers map it read-only and a
    /// task reads `&[E]` with no decoding and no copy, each worker's
    /// memory growing only by the pages it touches. The caller may drop
    /// `data` afterwards. See [`SharedSlice`].
    ///
    /// # Errors
    ///
    /// [`Error::Share`] if the memfd cannot be created, written or mapped
    /// (out of memory).
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_runtime::prelude::*;
    /// use pool_runtime::task;
    ///
    /// #[task]
    /// fn count(bytes: SharedSlice<u8>, byte: u8) -> usize {
    ///     bytes.iter().filter(|&&b| b == byte).count()
    /// }
    ///
    /// #[pool_runtime::main]
    /// fn main() -> Result<(), Error> {
    ///     let pool = Pool::builder().processes(2).build()?;
    ///     let text = pool.share_slice(b"abracadabra")?;
    ///     let out = pool.starmap(task!(count), [(text.clone(), b'a'), (text, b'b')])?;
    ///     assert_eq!(out, [5, 2]);
    ///     Ok(())
    /// }
    /// ```
    pub fn share_slice<E: Plain>(&self, data: &[E]) -> Result<SharedSlice<E>, Error> {
        crate::shared::share_slice(data)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop(true);
    }
}
