//! [`PoolStats`]: what [`Pool::stats`](crate::Pool::stats) reports.

use std::time::Duration;

/// Counters of one worker slot, across the processes that filled it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The process in the slot now, if one is running.
    pub pid: Option<u32>,
    /// Items whose results came back from this slot (including failed ones).
    pub items: u64,
    /// Items that failed here: panics, serialization errors, and the item
    /// a worker died or timed out on.
    pub failures: u64,
    /// Times the slot's worker was replaced (death, timeout,
    /// `max_tasks_per_child`, and the retirements counted below).
    pub respawns: u64,
    /// Times the slot's worker was replaced because its resident memory was
    /// above [`max_memory_per_child`](crate::PoolBuilder::max_memory_per_child)
    /// after an item. Each is also one of `respawns`, so `respawns` is at
    /// least `memory_retirements + lifetime_retirements`; the rest are
    /// deaths, timeouts and `max_tasks_per_child`. Like `respawns`, it is
    /// counted once the worker has exited (a call whose last item that
    /// worker ran may return just before), and not while the pool shuts down.
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).max_memory_per_child(1 << 30).build()?;
    /// assert_eq!(pool.map(task!(square), 0..100)?.len(), 100);
    /// let stats = pool.stats();
    /// let retired: u64 = stats.workers.iter().map(|w| w.memory_retirements).sum();
    /// let respawns: u64 = stats.workers.iter().map(|w| w.respawns).sum();
    /// assert!(retired <= respawns); // every retirement is also a respawn
    /// # Ok(()) }
    /// ```
    pub memory_retirements: u64,
    /// Times the slot's worker was replaced because it reached its
    /// [`max_lifetime`](crate::PoolBuilder::max_lifetime) and exited
    /// cleanly. Each is also one of `respawns` (see `memory_retirements`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(2).max_lifetime(Duration::from_secs(3600)).build()?;
    /// assert_eq!(pool.map(task!(square), 0..100)?.len(), 100);
    /// assert!(pool.stats().workers.iter().all(|w| w.lifetime_retirements == 0)); // an hour is long
    /// # Ok(()) }
    /// ```
    pub lifetime_retirements: u64,
    /// Times a worker for this slot failed to start (each is retried with
    /// backoff; see [`Error::Broken`](crate::Error::Broken)).
    pub start_failures: u64,
    /// Bytes of results this pool read straight from the memory of this
    /// slot's workers, instead of through their sockets: results frames
    /// of 256 KiB or more, each copied once. 0 if the pool's process may
    /// not read its workers' memory (`process_vm_readv` refused, as under
    /// some seccomp filters or a Yama policy): such results come through
    /// the socket.
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # use pool_runtime::task;
    /// # #[task] fn zeros(n: usize) -> Vec<u8> { vec![0; n] }
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(1).build()?;
    /// assert_eq!(pool.apply(task!(zeros), (1 << 20,))?.len(), 1 << 20);
    /// println!("read in place: {} bytes", pool.stats().workers[0].pulled_bytes);
    /// # Ok(()) }
    /// ```
    pub pulled_bytes: u64,
    /// Time spent running chunks.
    pub busy: Duration,
}

/// A snapshot of a pool's activity.
///
/// ```
/// # use pool_runtime::prelude::*;
/// # #[pool_runtime::main]
/// # fn main() -> Result<(), Error> {
/// # let pool = Pool::new()?;
/// let stats = pool.stats();
/// for (slot, w) in stats.workers.iter().enumerate() {
///     println!("worker {slot} (pid {:?}): {} items, {} failed, {} respawns", w.pid, w.items, w.failures, w.respawns);
/// }
/// println!("{} items waiting", stats.queued_items);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
    /// Items submitted and waiting for a worker (the queue depth).
    pub queued_items: usize,
    /// Items sent to workers whose results have not come back yet.
    pub in_flight_items: usize,
}
