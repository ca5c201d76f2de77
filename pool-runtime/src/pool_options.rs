//! [`Pool`]'s per-call options: [`Pool::call`] and the shortcuts that
//! start a [`Call`] with one option set (`pool.timeout(d).map(..)`), each
//! named as the [`Call`] method it stands for.

use std::time::Duration;

use crate::call::Call;
use crate::pool::Pool;

impl Pool {
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
        Call::new(self, self.defaults)
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

    /// Options for the next call, starting with whether dropping it
    /// unfinished kills the workers running its items:
    /// `pool.cancel_on_drop(true).imap(..)`. See [`Call::cancel_on_drop`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).build()?;
    /// let pending = pool.cancel_on_drop(true).map_async(task!(nap), [60_000, 60_000])?;
    /// drop(pending); // unread and without a callback: cancelled, workers replaced
    /// assert_eq!(pool.apply(task!(nap), 1)?, 1);
    /// # Ok(()) }
    /// ```
    pub fn cancel_on_drop(&self, yes: bool) -> Call<'_> {
        self.call().cancel_on_drop(yes)
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
}
