//! Waiting on several [`AsyncResult`]s at once, for code that is not
//! async: [`as_completed`] yields each outcome as it completes, with its
//! position; [`wait_any`] and [`wait_all`] wait, with an optional limit.
//!
//! In async code, [`AsyncResult`]s are futures: see [`as_completed`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::async_result::{AsyncResult, Watch};
use crate::error::Error;

/// Yields the outcome of each of `results` as it completes, with its
/// position in `results`: `concurrent.futures.as_completed`, for results of
/// one type (of any calls, on any pools).
///
/// Each outcome is yielded once; one already taken with
/// [`AsyncResult::get_timeout`] is yielded as [`Error::AlreadyRetrieved`].
/// Dropping the iterator drops the results not yet yielded, which cancels
/// those calls' queued items (see [`AsyncResult`]); call
/// [`AsCompleted::cancel_remaining`] to stop their running items too.
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
/// let pool = Pool::builder().processes(3).build()?;
/// let calls = [400, 10, 150]
///     .into_iter()
///     .map(|ms| pool.apply_async(task!(nap), ms))
///     .collect::<Result<Vec<_>, _>>()?;
/// let order: Vec<usize> = pool_runtime::as_completed(calls).map(|(at, _)| at).collect();
/// assert_eq!(order, [1, 2, 0]); // the 10 ms call first
/// # Ok(()) }
/// ```
///
/// In async code, an [`AsyncResult`] is a [`Future`](std::future::Future):
/// `futures::future::select_all`, `FuturesUnordered` or `tokio::select!`
/// over them do the same on the executor, blocking none of its threads:
///
/// ```
/// # use std::time::Duration;
/// # use pool_runtime::prelude::*;
/// # use pool_runtime::task;
/// # #[task] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// use futures::stream::{FuturesUnordered, StreamExt};
///
/// #[pool_runtime::main]
/// fn main() -> Result<(), Error> {
///     let pool = Pool::builder().processes(2).build()?;
///     let calls = [300, 10, 100].map(|ms| pool.apply_async(task!(nap), ms));
///     let mut running: FuturesUnordered<_> = calls.into_iter().collect::<Result<_, _>>()?;
///     let first = futures::executor::block_on(running.next());
///     assert_eq!(first.transpose()?, Some(10));
///     Ok(())
/// }
/// ```
pub fn as_completed<T, I>(results: I) -> AsCompleted<T>
where
    T: Send + 'static,
    I: IntoIterator<Item = AsyncResult<T>>,
{
    let watch = Watch::new();
    let results: Vec<Option<AsyncResult<T>>> = results.into_iter().map(Some).collect();
    for (position, result) in results.iter().enumerate() {
        if let Some(result) = result {
            result.watch(&watch, position);
        }
    }
    AsCompleted {
        left: results.len(),
        results,
        watch,
    }
}

/// The iterator of [`as_completed`]: `(position, outcome)` pairs in
/// completion order.
pub struct AsCompleted<T> {
    results: Vec<Option<AsyncResult<T>>>,
    watch: Arc<Watch>,
    left: usize,
}

impl<T> std::fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.left)
            .finish()
    }
}

impl<T: Send + 'static> AsCompleted<T> {
    /// How many outcomes are still to be yielded.
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
    /// let mut done = pool_runtime::as_completed([pool.apply_async(task!(square), 3)?]);
    /// assert_eq!(done.remaining(), 1);
    /// assert_eq!(done.next().map(|(_, r)| r.ok()), Some(Some(9)));
    /// assert_eq!(done.remaining(), 0);
    /// # Ok(()) }
    /// ```
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// The next outcome, waiting at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::WaitTimeout`] if none completed in time: nothing is lost,
    /// call again. `None` once every outcome was yielded.
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
    /// let mut done = pool_runtime::as_completed([pool.apply_async(task!(nap), 300)?]);
    /// assert!(matches!(done.next_timeout(Duration::from_millis(1)), Some(Err(Error::WaitTimeout(_)))));
    /// let next = done.next_timeout(Duration::from_secs(10));
    /// assert!(matches!(next, Some(Ok((0, Ok(300))))));
    /// # Ok(()) }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn next_timeout(
        &mut self,
        limit: Duration,
    ) -> Option<Result<(usize, Result<T, Error>), Error>> {
        self.next_until(Some(Instant::now() + limit))
            .map(|next| next.ok_or(Error::WaitTimeout(limit)))
    }

    /// Cancels every call whose outcome was not yielded yet (see
    /// [`AsyncResult::cancel`]); their outcomes, `Err(Error::Cancelled)`,
    /// are still yielded. Returns how many had something pending.
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
    /// let calls = [60_000, 10].map(|ms| pool.apply_async(task!(nap), ms));
    /// let mut done = pool_runtime::as_completed(calls.into_iter().collect::<Result<Vec<_>, _>>()?);
    /// let first = done.next();
    /// assert!(matches!(first, Some((1, Ok(10)))));
    /// assert_eq!(done.cancel_remaining(), 1); // the minute-long one
    /// assert!(matches!(done.next(), Some((0, Err(Error::Cancelled)))));
    /// # Ok(()) }
    /// ```
    pub fn cancel_remaining(&mut self) -> usize {
        self.results
            .iter()
            .flatten()
            .filter(|result| result.cancel())
            .count()
    }

    /// `Some(None)`: nothing by the deadline.
    fn next_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Option<Option<(usize, Result<T, Error>)>> {
        loop {
            if self.left == 0 {
                return None;
            }
            let Some(position) = self.watch.next(deadline) else {
                return Some(None);
            };
            // A position is told once; its result is taken here only.
            let Some(result) = self.results.get_mut(position).and_then(Option::take) else {
                continue;
            };
            self.left -= 1;
            return Some(Some((position, result.get())));
        }
    }
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = (usize, Result<T, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_until(None).flatten()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// Waits until one of `results` is ready, at most `limit` if given;
/// returns its position, or `None` if none was ready in time (or `results`
/// is empty). A result already ready counts at once.
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
/// let calls = vec![pool.apply_async(task!(nap), 60_000)?, pool.apply_async(task!(nap), 10)?];
/// assert_eq!(pool_runtime::wait_any(&calls, Some(Duration::from_secs(30))), Some(1));
/// assert_eq!(pool_runtime::wait_any(&calls[..1], Some(Duration::from_millis(1))), None);
/// # Ok(()) }
/// ```
pub fn wait_any<T: Send + 'static>(
    results: &[AsyncResult<T>],
    limit: Option<Duration>,
) -> Option<usize> {
    if let Some(position) = results.iter().position(AsyncResult::settled) {
        return Some(position);
    }
    let deadline = limit.map(|limit| Instant::now() + limit);
    let watch = Watch::new();
    for (position, result) in results.iter().enumerate() {
        result.watch(&watch, position);
    }
    if results.is_empty() {
        return None;
    }
    watch.next(deadline)
}

/// Waits until every one of `results` is ready, at most `limit` if given;
/// returns whether they all are.
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
/// let calls = vec![pool.apply_async(task!(nap), 50)?, pool.apply_async(task!(nap), 10)?];
/// assert!(pool_runtime::wait_all(&calls, None));
/// assert!(calls.iter().all(|c| c.ready()));
/// # Ok(()) }
/// ```
pub fn wait_all<T: Send + 'static>(results: &[AsyncResult<T>], limit: Option<Duration>) -> bool {
    let deadline = limit.map(|limit| Instant::now() + limit);
    results.iter().all(|result| match deadline {
        None => {
            result.wait();
            true
        }
        Some(deadline) => result.wait_timeout(deadline.saturating_duration_since(Instant::now())),
    })
}
