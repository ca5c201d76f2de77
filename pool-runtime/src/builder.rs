//! [`PoolBuilder`]: the settings of a pool.

use std::time::Duration;

use pool_core::registry::Registry;
use pool_core::wire::DEFAULT_MAX_FRAME;

use crate::backend::local::Launch;
use crate::error::Error;
use crate::pool::Pool;
use crate::scheduler::{Config, Shared};
use crate::worker;

/// Settings of a [`Pool`]; made by [`Pool::builder`].
///
/// ```no_run
/// # fn main() -> Result<(), pool_runtime::Error> {
/// let pool = pool_runtime::Pool::builder().processes(4).build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    processes: Option<usize>,
    max_frame: usize,
    startup_timeout: Duration,
    depth: usize,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder::new()
    }
}

impl PoolBuilder {
    /// The default settings.
    pub fn new() -> Self {
        PoolBuilder {
            processes: None,
            max_frame: DEFAULT_MAX_FRAME,
            startup_timeout: Duration::from_secs(10),
            depth: 2,
        }
    }

    /// Number of worker processes. Default: the number of available CPUs
    /// ([`std::thread::available_parallelism`]).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Largest frame (a chunk of arguments or of results) in bytes. A single
    /// argument or result above it fails with [`Error::Serialization`].
    /// Default: 1 GiB; at most 4 GiB − 1.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a new worker may take to answer the handshake. Default: 10 s.
    pub fn startup_timeout(mut self, limit: Duration) -> Self {
        self.startup_timeout = limit;
        self
    }

    /// Chunks each worker holds at once: one running and the rest waiting in
    /// its channel, so it never idles between chunks. Default: 2.
    pub fn chunks_in_flight(mut self, n: usize) -> Self {
        self.depth = n;
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
    ///   a frame limit out of range;
    /// - [`Error::Spawn`] / [`Error::Startup`] if a worker cannot start;
    /// - [`Error::Registry`] if two tasks share an id.
    pub fn build(self) -> Result<Pool, Error> {
        if worker::IN_WORKER.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::NestedPool);
        }
        if worker::spawned_as_worker() {
            return Err(Error::WorkerContext);
        }
        let processes = match self.processes {
            Some(0) => return Err(Error::InvalidSetting("processes must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.depth == 0 {
            return Err(Error::InvalidSetting(
                "chunks_in_flight must be at least 1".into(),
            ));
        }
        if self.max_frame < 4096 || self.max_frame > u32::MAX as usize {
            return Err(Error::InvalidSetting(format!(
                "max_frame_size must be between 4096 and {} bytes, not {}",
                u32::MAX,
                self.max_frame
            )));
        }
        let registry = Registry::collect()?;
        let harness_args = crate::harness_args();
        if harness_args.is_none() && !worker::INIT_CALLED.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::NotWorkerCapable);
        }
        let launch = Launch {
            harness_args,
            fingerprint: registry.fingerprint(),
            max_frame: self.max_frame,
            startup_timeout: self.startup_timeout,
        };
        let config = Config {
            processes,
            depth: self.depth,
            launch,
        };
        let (shared, supervisor) = Shared::start(config)?;
        Ok(Pool::from_parts(shared, supervisor))
    }
}
