//! Cancelling calls: a cancelled call's queued chunks are dropped, the
//! chunks it has waiting on a worker that has not started them are taken
//! back (with the claim gate of the worker's page, as [`steal`] does), and,
//! if asked, its running items are stopped by killing their workers, which
//! are replaced. The only way to stop arbitrary code is to end its process.
//!
//! [`steal`]: State::steal

use super::dispatch::kill;
use super::{Event, Outbox, Scheduler, State, Worker};
use crate::error::Error;
use crate::logging::pool_event;

impl Scheduler {
    /// Ends job `job`: its consumer receives nothing more (its sink is
    /// released), its chunks are withdrawn ([`State::withdraw`]), and with
    /// `kill_running` the workers running its items are killed and
    /// replaced. Returns whether the job was still registered (its results
    /// were not all in).
    pub(crate) fn cancel(&self, job: u64, kill_running: bool) -> bool {
        let mut st = self.lock();
        let Some(spec) = st.jobs.remove(&job) else {
            return false;
        };
        st.withdraw(kill_running && self.replaces_workers());
        st.dispatch(&self.config);
        let wake = st.waiters > 0;
        drop(st);
        // Its event sink is released outside the lock.
        drop(spec);
        if wake {
            self.changed.notify_all();
        }
        true
    }

    /// Cancels every call registered so far: each ends with
    /// [`Error::Cancelled`], its queued chunks are dropped and its running
    /// items stopped. The pool stays open. Returns how many calls ended.
    pub(crate) fn cancel_all(&self) -> usize {
        let mut outbox = Outbox::default();
        let mut st = self.lock();
        let jobs: Vec<_> = st.jobs.drain().collect();
        for (id, spec) in &jobs {
            outbox.push(&spec.events, *id, Event::Fatal(Error::Cancelled));
        }
        st.withdraw(self.replaces_workers());
        st.dispatch(&self.config);
        let counted = outbox.count(self);
        drop(st);
        outbox.deliver(self, counted);
        let ended = jobs.len();
        drop(jobs);
        self.changed.notify_all();
        ended
    }

    /// Whether a killed worker is replaced (not so for workers that
    /// already existed, as MPI ranks: cancelling does not kill those).
    fn replaces_workers(&self) -> bool {
        self.config.backend.is_some()
    }
}

impl State {
    /// Withdraws the chunks of calls no longer registered: queued ones are
    /// dropped; on each worker, the chunks after the one it runs are taken
    /// back if one of them is such a call's (those of live calls are
    /// queued again, first); with `kill`, a worker whose running item is
    /// such a call's is killed (see [`super::Worker::cancelled`]).
    pub(super) fn withdraw(&mut self, kill_running: bool) {
        let State {
            workers,
            jobs,
            queue,
            ..
        } = self;
        queue.retain(|c| jobs.contains_key(&c.job));
        let mut requeue = Vec::new();
        for w in workers.iter_mut().flatten() {
            let gone = |job: u64| !jobs.contains_key(&job);
            if w.dying || !w.in_flight.iter().any(|f| gone(f.chunk.job)) {
                continue;
            }
            let Some(page) = w.link.running() else {
                // No page to read what it runs: its chunks run, and their
                // results are ignored.
                continue;
            };
            let waiting = w
                .in_flight
                .iter()
                .any(|f| f.id > page.chunk && gone(f.chunk.job));
            let last = w.in_flight.back().map_or(0, |f| f.id);
            if waiting
                && w.link.can_take_back()
                && let Some(floor) = w.link.steal_after(page.chunk, last)
            {
                let first = requeue.len();
                while w.in_flight.back().is_some_and(|f| f.id > floor) {
                    if let Some(flight) = w.pop_back() {
                        if let Some(budget) = w.budget.as_mut() {
                            *budget += (flight.chunk.count - flight.received) as usize;
                        }
                        if !gone(flight.chunk.job) {
                            requeue.push(flight.chunk);
                        }
                    }
                }
                requeue[first..].reverse();
            }
            let running_gone = page.busy()
                && w.in_flight
                    .iter()
                    .any(|f| f.id == page.chunk && gone(f.chunk.job));
            if kill_running && running_gone {
                w.cancel_at = Some(page.chunk);
                w.stop_if_due();
            }
        }
        for chunk in requeue.into_iter().rev() {
            queue.push_front(chunk);
        }
    }
}

impl Worker {
    /// Kills it for the cancelled call's chunk it runs ([`Worker::cancel_at`])
    /// once that chunk is its oldest in flight: every chunk before it has
    /// sent its results, so nothing finished is lost and runs again. (It
    /// sends them within its flush interval, 5 ms, while the item runs.)
    /// Forgets the chunk if the worker moved past it.
    pub(super) fn stop_if_due(&mut self) {
        let Some(at) = self.cancel_at else { return };
        match self.in_flight.front() {
            Some(front) if front.id == at => {
                self.cancel_at = None;
                let running = self.link.running();
                if running.is_some_and(|p| p.busy() && p.chunk == at) && !self.dying {
                    // Uncounted: the event of its end, which its pool
                    // waits for, follows.
                    let pid = self.pid;
                    pool_event!(DEBUG, pid, "pool worker killed: its call was cancelled");
                    self.cancelled = true;
                    kill(self);
                }
            }
            Some(front) if front.id < at => {}
            _ => self.cancel_at = None,
        }
    }
}
