//! [`Call`]: the options of one call, then the call itself.

use std::time::Duration;

use pool_core::{IntoArgs, Task, UnaryTask};

use crate::async_result::AsyncResult;
use crate::error::Error;
use crate::imap::{Imap, ImapUnordered};
use crate::in_order::InOrder;
use crate::pool::Pool;
use crate::progress::ProgressHook;
use crate::run::{CallOptions, Mode, Run};

/// Options for one call, then the call itself.
///
/// Made by [`Pool::call`] or by any per-call shortcut of [`Pool`] (the
/// same name as the option: [`Pool::chunksize`], [`Pool::timeout`],
/// [`Pool::retries`], [`Pool::retry_panics`], [`Pool::progress`],
/// [`Pool::on_progress`]); the operations are the same as on [`Pool`]. An
/// option not set here takes the pool's default from its [`PoolBuilder`](crate::PoolBuilder),
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
    /// The options of a call on `pool`, starting from `options`.
    pub(crate) fn new(pool: &'p Pool, options: CallOptions) -> Call<'p> {
        Call {
            pool,
            options,
            hook: None,
        }
    }

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
    /// ([`PoolBuilder::progress`](crate::PoolBuilder::progress), off).
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

    /// Whether dropping the call before its end also stops the items
    /// running for it, by killing their workers (which are replaced).
    /// Either way, dropping an [`imap`](Call::imap)-family iterator or an
    /// unread [`AsyncResult`] (one with no callback) withdraws its chunks
    /// that no worker started: queued ones, and those waiting on a worker
    /// behind its running item. Default: `false`: running items finish and
    /// their results are dropped. (Under the MPI backend, ranks are not
    /// replaced, so their running items always finish.)
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
    /// let mut naps = pool.call().cancel_on_drop(true).chunksize(1).imap(task!(nap), [60_000; 100]);
    /// drop(naps); // both workers are killed and replaced: no minute-long wait
    /// assert_eq!(pool.map(task!(square), [1, 2, 3])?, [1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn cancel_on_drop(mut self, yes: bool) -> Self {
        self.options.cancel_on_drop = yes;
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
    /// and 1 MiB of encoded arguments per worker; for large items, at most
    /// about 64 MiB of encoded arguments in all, or one chunk per worker
    /// and one more if that is more. An endless iterator works, and
    /// stopping the iteration stops the pulling. Dropping the iterator
    /// cancels the rest (chunks already sent to a worker still run).
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
        Imap::new(run)
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
        ImapUnordered::new(run)
    }
}

fn lost(task: &'static str, index: usize) -> Error {
    Error::Broken {
        reason: format!("the result of task `{task}` on item {index} never arrived"),
        source: None,
    }
}
