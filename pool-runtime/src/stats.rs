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
    /// `max_tasks_per_child`).
    pub respawns: u64,
    /// Times a worker for this slot failed to start (each is retried with
    /// backoff; see [`Error::Broken`](crate::Error::Broken)).
    pub start_failures: u64,
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
