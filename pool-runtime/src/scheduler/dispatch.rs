//! Dispatch policy: which worker gets which chunk, how many ahead, and
//! when chunks waiting behind a long item move to an idle worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::wire::{self, Items, ToWorker};

use super::pace::ahead;
use super::{Chunk, Config, InFlight, State, Worker};
use crate::backend::{Body, Running};
use crate::logging::pool_event;
use crate::sys::now_ns;

/// How long an item must have run before nothing more is queued behind
/// it, and the chunks already waiting behind it may move to an idle worker:
/// 5 ms, or twice the resolution of the coarse clock items are timed with.
pub(super) fn stall_limit() -> Duration {
    static LIMIT: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
        let res = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
        let res = Duration::new(res.tv_sec as u64, res.tv_nsec as u32);
        Duration::from_millis(5).max(res * 2)
    });
    *LIMIT
}

impl Worker {
    /// The chunk in flight whose item runs now, and what the worker's page
    /// says of it; `None` between items, or without a page.
    pub(super) fn running(&self) -> Option<(&InFlight, Running)> {
        let page = self.link.running()?;
        if !page.busy() {
            return None;
        }
        self.in_flight
            .iter()
            .find(|f| f.id == page.chunk)
            .map(|f| (f, page))
    }

    /// Adds a chunk sent to it.
    pub(super) fn push_back(&mut self, flight: InFlight) {
        let task = flight.chunk.task;
        match self.tasks.iter_mut().find(|(t, _)| *t == task) {
            Some((_, n)) => *n += 1,
            None => self.tasks.push((task, 1)),
        }
        self.in_flight.push_back(flight);
    }

    /// Removes its oldest chunk (completed).
    pub(super) fn pop_front(&mut self) -> Option<InFlight> {
        let flight = self.in_flight.pop_front()?;
        self.forget_task(flight.chunk.task);
        Some(flight)
    }

    /// Removes its newest chunk (taken back).
    pub(super) fn pop_back(&mut self) -> Option<InFlight> {
        let flight = self.in_flight.pop_back()?;
        self.forget_task(flight.chunk.task);
        Some(flight)
    }

    fn forget_task(&mut self, task: u64) {
        if let Some(at) = self.tasks.iter().position(|(t, _)| *t == task) {
            self.tasks[at].1 -= 1;
            if self.tasks[at].1 == 0 {
                self.tasks.swap_remove(at);
            }
        }
    }

    /// Whether every chunk in flight to it is of `task`.
    pub(super) fn runs_only(&self, task: u64) -> bool {
        match self.tasks.as_slice() {
            [] => true,
            [(only, _)] => *only == task,
            _ => false,
        }
    }

    /// Its time per item on `task`, if `task` is what it last finished.
    pub(super) fn pace_on(&self, task: u64) -> Option<Duration> {
        self.pace
            .and_then(|(last, pace)| pace.per_item().filter(|_| last == task))
    }

    /// Whether its running item has run longer than [`stall_limit`].
    /// (Its page is read only if its oldest chunk in flight was sent
    /// longer ago than that: a cross-CPU read the hot path is spared.)
    pub(super) fn stalled(&self, now: u64) -> bool {
        let limit = stall_limit().as_nanos() as u64;
        let oldest = self.in_flight.front().map_or(now, |f| f.sent_ns);
        now.saturating_sub(oldest) > limit
            && self
                .running()
                .is_some_and(|(_, running)| now.saturating_sub(running.started_ns) > limit)
    }

    /// Sends a frame (written at once to an idle local worker).
    pub(super) fn send(&self, header: Vec<u8>, body: Arc<Body>, max: usize) {
        self.link.send(header, body, self.in_flight.is_empty(), max);
    }
}

impl State {
    /// Hands queued chunks to workers with room, least loaded first; then,
    /// if a worker is idle with nothing queued, takes back the chunks
    /// waiting behind a long-running item on another worker and hands
    /// them out again.
    pub(super) fn dispatch(&mut self, config: &Config) {
        let now = now_ns();
        loop {
            self.dispatch_queued(config, now);
            if !self.queue.is_empty() || !self.steal(now) {
                break;
            }
        }
        // A worker is idle beside one with chunks behind its running item:
        // the supervisor watches at its fast pace from now on (it may be
        // asleep for 100 ms), to take them back once the item runs long.
        if self.queue.is_empty() && !self.watching_steals && self.may_steal() {
            self.watching_steals = true;
            let _ = self.wake.send(super::Supervise::Wake);
        }
    }

    /// Whether some worker is idle while another holds chunks behind the
    /// one it runs: then the supervisor watches for long items often.
    pub(super) fn may_steal(&self) -> bool {
        let workers = || self.workers.iter().flatten().filter(|w| !w.dying);
        workers().any(|w| w.in_flight.is_empty() && !w.spent())
            && workers().any(|w| w.in_flight.len() > 1 && w.link.can_take_back())
    }

    /// Takes back, from each worker whose running item has run longer than
    /// [`stall_limit`] and than the chunks behind it are expected to take,
    /// those chunks (it has not started them: it will skip them), and
    /// queues them first. Only while some worker is idle. Returns whether
    /// anything was taken.
    pub(super) fn steal(&mut self, now: u64) -> bool {
        if !self
            .workers
            .iter()
            .flatten()
            .any(|w| !w.dying && w.in_flight.is_empty() && !w.spent())
        {
            return false;
        }
        let mut taken = Vec::new();
        for w in self.workers.iter_mut().flatten() {
            if w.dying || w.in_flight.len() < 2 || !w.stalled(now) {
                continue;
            }
            let Some((flight, running)) = w.running() else {
                continue;
            };
            let running_id = flight.id;
            let behind: Duration = w
                .in_flight
                .iter()
                .filter(|f| f.id > running_id)
                .map(|f| {
                    w.pace_on(f.chunk.task)
                        .and_then(|p| p.checked_mul(f.chunk.count))
                        .unwrap_or(Duration::ZERO)
                })
                .sum();
            let elapsed = Duration::from_nanos(now.saturating_sub(running.started_ns));
            if elapsed <= stall_limit().max(behind) {
                continue;
            }
            let Some(last) = w.in_flight.back().map(|f| f.id) else {
                continue;
            };
            let Some(floor) = w.link.steal_after(running_id, last) else {
                continue;
            };
            let first = taken.len();
            while w.in_flight.back().is_some_and(|f| f.id > floor) {
                if let Some(flight) = w.pop_back() {
                    if let Some(budget) = w.budget.as_mut() {
                        *budget += (flight.chunk.count - flight.received) as usize;
                    }
                    taken.push(flight.chunk);
                }
            }
            taken[first..].reverse();
            let (pid, chunks) = (w.pid, taken.len() - first);
            pool_event!(
                counted by &self.emitting,
                DEBUG,
                pid,
                chunks,
                "chunks waiting behind a long item move to an idle worker"
            );
        }
        let stolen = !taken.is_empty();
        for chunk in taken.into_iter().rev() {
            if self.jobs.contains_key(&chunk.job) {
                self.queue.push_front(chunk);
            }
        }
        stolen
    }

    /// Hands queued chunks to workers with room, least loaded first.
    ///
    /// A worker is given several chunks at once only of the task it runs
    /// and last finished, as many as its pace on that task makes about
    /// [`PIPELINE`](super::pace::PIPELINE) of work, and none while its running item has run
    /// longer than [`stall_limit`]: short work never queues behind a long
    /// item while another worker could take it.
    pub(super) fn dispatch_queued(&mut self, config: &Config, now: u64) {
        let slots = self.workers.len().max(1);
        while let Some(next) = self.queue.front() {
            let (task, count) = (next.task, next.count);
            let best = self
                .workers
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.as_ref().map(|w| (i, w)))
                .filter(|(_, w)| {
                    if w.dying || w.spent() {
                        return false;
                    }
                    if w.in_flight.is_empty() {
                        return true;
                    }
                    if !w.runs_only(task) {
                        return false;
                    }
                    let Some(per_item) = w.pace_on(task) else {
                        return false;
                    };
                    let depth = ahead(per_item.checked_mul(count).unwrap_or(Duration::MAX))
                        .clamp(1, config.depth.max(1));
                    w.in_flight.len() < depth && !w.stalled(now)
                })
                // Ties go to the worker that finished last (still awake,
                // its caches warm), then round the workers.
                .min_by_key(|&(i, w)| {
                    (
                        w.in_flight.len(),
                        std::cmp::Reverse(w.last_done),
                        (i + slots - self.turn) % slots,
                    )
                })
                .map(|(i, _)| i);
            let Some(slot) = best else { break };
            self.turn = (slot + 1) % slots;
            let Some(mut chunk) = self.queue.pop_front() else {
                break;
            };
            if let Some(budget) = self.workers[slot].as_mut().and_then(|w| w.budget.as_mut()) {
                // Never give a worker more than its remaining budget.
                let take = (*budget).min(chunk.count as usize) as u32;
                if take < chunk.count {
                    if let Some(rest) = sub_chunk(&chunk, take, chunk.count) {
                        self.queue.push_front(rest);
                    }
                    match sub_chunk(&chunk, 0, take) {
                        Some(head) => chunk = head,
                        None => continue,
                    }
                }
                *budget -= take as usize;
            }
            let id = self.next_chunk;
            self.next_chunk += 1;
            let job = self.jobs.get(&chunk.job);
            let panic_retries = job.map_or(0, |j| j.panic_retries);
            let timeout = job.and_then(|j| j.timeout);
            let header = wire::encode_header(&ToWorker::Run {
                chunk: id,
                task: chunk.task,
                items: chunk.count,
                panic_retries,
                timed: timeout.is_some(),
            });
            if let Some(worker) = self.workers[slot].as_mut() {
                worker.send(header, Arc::clone(&chunk.body), config.launch.max_frame);
                worker.push_back(InFlight {
                    id,
                    chunk,
                    received: 0,
                    sent: Instant::now(),
                    sent_ns: now,
                    timeout,
                });
            }
        }
    }
}

/// Items `from .. to` of `chunk` as a new chunk, or `None` if empty.
pub(super) fn sub_chunk(chunk: &Chunk, from: u32, to: u32) -> Option<Chunk> {
    if from >= to {
        return None;
    }
    if from == 0 && to == chunk.count {
        return Some(Chunk {
            job: chunk.job,
            task: chunk.task,
            first: chunk.first,
            count: chunk.count,
            body: Arc::clone(&chunk.body),
            attempt: chunk.attempt,
            after: chunk.after,
        });
    }
    let mut items = Items::new(&chunk.body);
    let mut body = Vec::new();
    for i in 0..to {
        let Ok(arg) = items.next_arg() else {
            return None;
        };
        if i >= from {
            body.extend_from_slice(&(arg.len() as u32).to_le_bytes());
            body.extend_from_slice(arg);
        }
    }
    Some(Chunk {
        job: chunk.job,
        task: chunk.task,
        first: chunk.first + from as usize,
        count: to - from,
        body: Arc::new(Body::heap(body)),
        attempt: chunk.attempt,
        after: chunk.after,
    })
}

/// Stops a worker now (see [`Link::kill`](crate::backend::Link::kill)).
pub(super) fn kill(worker: &Worker) {
    worker.link.kill();
}
