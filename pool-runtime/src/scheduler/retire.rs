//! Workers replaced before a leak or a long life hurts:
//!
//! - memory ([`PoolBuilder::max_memory_per_child`]): the worker measures
//!   itself after every item and, above its bound, sends what it finished,
//!   then [`FromWorker::Retiring`], and exits. It stopped between items, so
//!   nothing is blamed: the chunks it held that it did not finish are
//!   requeued whole, or from the first item it did not run.
//! - lifetime ([`PoolBuilder::max_lifetime`]): each worker draws its own
//!   limit when it is attached; once past it, the supervisor gives it no
//!   more work and tells it to exit ([`ToWorker::Exit`]) when it has none,
//!   at once if it is idle, else when its last chunk completes.
//!
//! Either way the worker exits cleanly, its death is no failure (logged at
//! debug level), it is counted in its slot's [`WorkerStats`] and replaced
//! like any other.
//!
//! [`PoolBuilder::max_memory_per_child`]: crate::PoolBuilder::max_memory_per_child
//! [`PoolBuilder::max_lifetime`]: crate::PoolBuilder::max_lifetime
//! [`FromWorker::Retiring`]: pool_core::wire::FromWorker::Retiring
//! [`WorkerStats`]: crate::WorkerStats

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::wire::{self, Retire, ToWorker};

use super::{Scheduler, State, Supervise, Worker};
use crate::backend::Body;
use crate::error::ExitCause;
use crate::logging::pool_event;
use crate::stats::WorkerStats;

/// Why a worker is being replaced though nothing went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retirement {
    /// It said its resident memory was above the bound.
    Memory,
    /// It outlived its lifetime.
    Lifetime,
}

/// A worker's own lifetime, drawn uniformly from `[0.9 × limit, limit]`,
/// so that workers started together do not all leave together.
fn draw_lifetime(limit: Duration) -> Duration {
    // A fresh random key per call (std's `RandomState`): enough for a spread.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    // In millionths of the limit, in integers: no limit overflows.
    let millionths = 900_000 + u128::from(random % 100_001);
    let nanos = limit.as_nanos() * millionths / 1_000_000;
    Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    )
}

impl Worker {
    /// Whether it takes no more work: its `max_tasks_per_child` budget is
    /// spent, or it retires.
    pub(super) fn spent(&self) -> bool {
        self.budget == Some(0) || self.retiring.is_some()
    }

    /// Whether the pool tells it to exit now: it holds no chunk, and the
    /// pool retires it (its budget, its lifetime). One retiring for its
    /// memory exits on its own.
    pub(super) fn exit_due(&self) -> bool {
        self.in_flight.is_empty()
            && (self.budget == Some(0) || self.retiring == Some(Retirement::Lifetime))
    }

    /// Why it ended, if it retired: for its memory once it said so (it ran
    /// nothing after), for its lifetime if it exited cleanly with nothing
    /// in flight (else it died, e.g. on its last item).
    pub(super) fn retired(&self, cause: ExitCause) -> Option<Retirement> {
        match self.retiring? {
            Retirement::Memory => Some(Retirement::Memory),
            Retirement::Lifetime => (cause == ExitCause::Code(0) && self.in_flight.is_empty())
                .then_some(Retirement::Lifetime),
        }
    }
}

impl WorkerStats {
    /// Counts a retirement of this slot's worker.
    pub(super) fn count_retirement(&mut self, why: Retirement) {
        match why {
            Retirement::Memory => self.memory_retirements += 1,
            Retirement::Lifetime => self.lifetime_retirements += 1,
        }
    }
}

impl State {
    /// The worker in `slot` said it retires: it gets nothing more.
    pub(super) fn on_retiring(&mut self, slot: usize, pid: u32, reason: &Retire) {
        let Some(worker) = self.workers[slot].as_mut() else {
            return;
        };
        match *reason {
            Retire::Memory { resident, limit } => {
                pool_event!(
                    counted by &self.emitting,
                    DEBUG,
                    pid,
                    resident,
                    limit,
                    "pool worker retiring: its resident memory is above max_memory_per_child"
                );
                worker.retiring = Some(Retirement::Memory);
            }
        }
    }
}

impl Scheduler {
    /// When a worker attached now is to retire (`None`: never), and the
    /// supervisor is woken to watch for it.
    pub(super) fn retire_at(&self) -> Option<Instant> {
        let limit = self.config.max_lifetime?;
        let _ = self.supervisor.send(Supervise::Wake);
        Instant::now().checked_add(draw_lifetime(limit))
    }

    /// Supervisor: retires every worker past its lifetime (see the module
    /// docs); returns when the next one is due.
    pub(super) fn retire_expired(&self) -> Option<Instant> {
        self.config.max_lifetime?;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut st = self.lock();
        let emitting = Arc::clone(&st.emitting);
        for worker in st.workers.iter_mut().flatten() {
            let Some(due) = worker.retire_at else {
                continue;
            };
            if worker.dying || worker.spent() {
                continue;
            }
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let pid = worker.pid;
            pool_event!(
                counted by &emitting,
                DEBUG,
                pid,
                "pool worker retiring: it reached its max_lifetime"
            );
            worker.retiring = Some(Retirement::Lifetime);
            if worker.exit_due() {
                let header = wire::encode_header(&ToWorker::Exit);
                worker.send(
                    header,
                    Arc::new(Body::empty()),
                    self.config.launch.max_frame,
                );
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_drawn_between_nine_tenths_and_the_whole() {
        let limit = Duration::from_secs(100);
        let drawn: Vec<Duration> = (0..200).map(|_| draw_lifetime(limit)).collect();
        assert!(
            drawn
                .iter()
                .all(|d| *d >= Duration::from_secs(90) && *d <= limit),
            "{drawn:?}"
        );
        // Spread, not all the same.
        let distinct: std::collections::BTreeSet<_> = drawn.iter().collect();
        assert!(distinct.len() > 100, "{} distinct", distinct.len());
        // The longest limit is drawn without overflow.
        assert!(draw_lifetime(Duration::MAX) >= Duration::MAX.mul_f64(0.89));
    }
}
