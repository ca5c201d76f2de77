//! What a worker's frames and its end mean for the items it held:
//! results delivered to their calls, chunks completed (and the worker's
//! pace), log records and failed items emitted as events, and at a death,
//! the running item blamed (or retried) and the others requeued.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use pool_core::ProtocolError;
use pool_core::wire::{self, FromWorker, ToWorker};

use super::retire::Retirement;
use super::{Event, InFlight, Outbox, Pace, Scheduler, State, Supervise, sub_chunk};
use crate::backend::Body;
use crate::error::{Error, ExitCause};
use crate::logging::emit::Pending;
use crate::logging::emitter;
use crate::logging::pool_event;

impl Scheduler {
    /// Handles frames from the worker in `slot`, in order, under one lock,
    /// draining `frames`. On a bad frame, those before it are delivered.
    pub(crate) fn deliver_all(
        &self,
        slot: usize,
        pid: u32,
        frames: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        let mut outbox = Outbox::default();
        let mut logs = Pending::default();
        let mut finished = false;
        let mut wake = false;
        let counted;
        let mut queue = None;
        // The first chunk whose results these frames hold, and whether
        // records of an earlier run of their items wait still.
        let mut lowest_chunk = u64::MAX;
        let mut earlier_run = false;
        let mut outcome = Ok(());
        {
            let mut st = self.lock();
            for frame in frames.drain(..) {
                let outputs = (
                    &mut outbox,
                    &mut logs,
                    (&mut lowest_chunk, &mut earlier_run),
                );
                match self.on_frame(&mut st, slot, pid, frame, outputs) {
                    Ok(done) => finished |= done,
                    Err(err) => {
                        outcome = Err(err);
                        break;
                    }
                }
            }
            if finished {
                st.dispatch(&self.config);
                wake = st.waiters > 0;
            }
            counted = outbox.count(self);
            // Results follow the records of their items: those of these
            // frames, those of this worker's earlier frames still waiting
            // to be emitted (records of the same chunk or a later one; a
            // worker runs its chunks in order), and those of an earlier run
            // by a worker that died.
            let worker = st.workers[slot].as_mut().filter(|w| w.pid == pid);
            match worker {
                Some(w) => {
                    let behind = earlier_run
                        || (w.emitting.load(Ordering::Acquire) > 0
                            && lowest_chunk <= w.records_upto);
                    if !logs.is_empty() || behind {
                        queue = Some(Some(Arc::clone(&w.emitting)));
                    }
                    // Records naming no chunk may be from any chunk it was sent.
                    let sent = w.in_flight.back().map_or(0, |f| f.id);
                    w.records_upto = w.records_upto.max(logs.last_chunk(sent));
                }
                None if !logs.is_empty() => queue = Some(None),
                None => {}
            }
        }
        frames.clear();
        match queue {
            None => outbox.deliver(self, counted),
            Some(worker) => outbox.deliver_after(self, logs, worker, counted),
        }
        if wake {
            self.changed.notify_all();
        }
        outcome
    }

    /// Applies one results or log frame; `true` if it completed a chunk.
    fn on_frame(
        &self,
        st: &mut State,
        slot: usize,
        pid: u32,
        frame: Vec<u8>,
        (outbox, logs, (lowest_chunk, earlier_run)): (
            &mut Outbox,
            &mut Pending,
            (&mut u64, &mut bool),
        ),
    ) -> Result<bool, ProtocolError> {
        let (header, body_len) = match wire::split_frame::<FromWorker>(&frame) {
            Ok((header, body)) => (header, body.len()),
            Err(err) => return Err(err),
        };
        if let FromWorker::Retiring { reason } = &header {
            st.on_retiring(slot, pid, reason);
            return Ok(false);
        }
        if let FromWorker::Log { records, dropped } = header {
            let body = &frame[frame.len() - body_len..];
            let locate = |chunk, item| item_of(st, slot, chunk, item);
            logs.add_log(pid, (records, dropped), body, &locate)?;
            return Ok(false);
        }
        let FromWorker::Results {
            chunk,
            first,
            count,
        } = header
        else {
            return Err(ProtocolError::Unexpected("a frame other than results"));
        };
        *lowest_chunk = (*lowest_chunk).min(chunk);
        let body_at = frame.len() - body_len;
        let worker = st.workers[slot]
            .as_mut()
            .ok_or(ProtocolError::Unexpected("results from a removed worker"))?;
        let front = worker
            .in_flight
            .front_mut()
            .ok_or(ProtocolError::Unexpected("results with no chunk in flight"))?;
        if front.id != chunk
            || first != front.received
            || count > front.chunk.count - front.received
        {
            return Err(ProtocolError::Unexpected(
                "results for another chunk or range",
            ));
        }
        *earlier_run |= records_wait(&front.chunk);
        let failed = wire::count_failed(&frame[body_at..]).ok_or_else(|| {
            ProtocolError::Malformed("a results body overruns its frame".to_owned())
        })?;
        front.received += count;
        let stats = &mut st.stats[slot];
        stats.items += u64::from(count);
        stats.failures += failed as u64;
        if failed > 0 {
            pool_event!(
                counted by &st.emitting,
                DEBUG,
                pid,
                failed,
                "items failed in a pool worker"
            );
            let task = st.jobs.get(&front.chunk.job).map(|job| job.task);
            let first_index = front.chunk.first + first as usize;
            logs.add_failures(pid, task, first_index, &frame[body_at..]);
        }
        let job = front.chunk.job;
        let start = front.chunk.first + first as usize;
        let mut finished = false;
        let mut chunk_time = None;
        if front.received == front.chunk.count {
            let now = Instant::now();
            let took = now - front.sent.max(worker.last_done);
            chunk_time = Some((took, front.chunk.count));
            let task = front.chunk.task;
            let mut pace = match worker.pace {
                Some((last, pace)) if last == task => pace,
                _ => Pace::default(),
            };
            pace.add(took, front.chunk.count);
            worker.pace = Some((task, pace));
            worker.last_done = now;
            st.stats[slot].busy += took;
            worker.pop_front();
            worker.stop_if_due();
            if worker.exit_due() {
                // Spent or retiring: it exits, its reader sees the end, and
                // the supervisor starts a replacement.
                let header = wire::encode_header(&ToWorker::Exit);
                worker.send(
                    header,
                    Arc::new(Body::empty()),
                    self.config.launch.max_frame,
                );
            }
            finished = true;
        }
        if let Some(spec) = st.jobs.get(&job) {
            let event = Event::Results {
                first: start,
                count,
                frame,
                body_at,
                pid,
                chunk_time,
            };
            outbox.push(&spec.events, job, event);
        }
        Ok(finished)
    }

    /// The worker in `slot` is ending: nothing more is sent to it, and its
    /// pid is no longer signalled.
    pub(crate) fn mark_dying(&self, slot: usize) {
        if let Some(w) = self.lock().workers[slot].as_mut() {
            w.dying = true;
        }
    }

    /// The worker in `slot` is gone: its running item fails (or is retried),
    /// its other work is requeued, and a replacement is started.
    pub(crate) fn detach(
        &self,
        slot: usize,
        pid: u32,
        cause: ExitCause,
        protocol: Option<ProtocolError>,
    ) {
        let attached = self.lock().workers[slot]
            .as_ref()
            .is_some_and(|w| w.pid == pid);
        if !attached {
            // Detached already (a reader that panicked after its end).
            return;
        }
        self.on_death(slot, pid, cause, protocol);
        let mut st = self.lock();
        st.live_readers -= 1;
        drop(st);
        self.changed.notify_all();
    }

    fn on_death(&self, slot: usize, pid: u32, cause: ExitCause, protocol: Option<ProtocolError>) {
        let mut outbox = Outbox::default();
        let mut st = self.lock();
        let Some(worker) = st.workers[slot].take() else {
            return;
        };
        st.stats[slot].pid = None;
        let retired = worker.retired(cause);
        if !st.terminated && st.broken.is_none() && self.config.backend.is_some() {
            st.stats[slot].respawns += 1;
            if let Some(why) = retired {
                st.stats[slot].count_retirement(why);
            }
        }
        let (running_chunk, running_item) = match worker.link.running() {
            // Killed for a cancelled call: what it ran is not blamed, even
            // if it moved on to another call's item meanwhile.
            _ if worker.cancelled => (0, 0),
            Some(page) => {
                // Between items: nothing is blamed, everything requeued.
                if page.busy() {
                    (page.chunk, page.item)
                } else {
                    (0, 0)
                }
            }
            // Without a progress page, blame the first unreported item.
            None => worker
                .in_flight
                .front()
                .map_or((0, 0), |f| (f.id, u64::from(f.received))),
        };
        // Its failures follow the event that tells of its end.
        let told = if st.terminated {
            pool_event!(counted by &st.emitting, DEBUG, pid, %cause, "pool worker exited")
        } else if worker.cancelled {
            pool_event!(
                counted by &st.emitting,
                DEBUG,
                pid,
                "pool worker stopped for a cancelled call"
            )
        } else if let Some(timeout) = worker.timed_out {
            pool_event!(
                counted by &st.emitting,
                WARN,
                pid,
                ?timeout,
                "pool worker killed: a task exceeded its timeout"
            )
        } else if let Some(err) = &protocol {
            let err = err.to_string();
            pool_event!(
                counted by &st.emitting,
                WARN,
                pid,
                error = %err,
                "pool worker killed: it broke the protocol"
            )
        } else if let Some(why) = retired {
            pool_event!(counted by &st.emitting, DEBUG, pid, ?why, "pool worker retired")
        } else if worker.budget == Some(0) {
            pool_event!(
                counted by &st.emitting,
                DEBUG,
                pid,
                "pool worker retired after max_tasks_per_child items"
            )
        } else {
            let signal = cause.signal_name();
            // The item it was running, if one was.
            let running = worker.in_flight.iter().find(|f| {
                f.id == running_chunk
                    && running_item >= u64::from(f.received)
                    && running_item < u64::from(f.chunk.count)
            });
            let task = running.and_then(|f| st.jobs.get(&f.chunk.job).map(|job| job.task));
            let item = running.map(|f| f.chunk.first + running_item as usize);
            pool_event!(
                counted by &st.emitting,
                WARN,
                pid,
                slot,
                task,
                item,
                %cause,
                signal,
                "pool worker died"
            )
        };
        // One that retired for its memory stopped between items.
        let (running_chunk, running_item) = match retired {
            Some(Retirement::Memory) => (0, 0),
            _ => (running_chunk, running_item),
        };
        // Items of its chunks up to `records_upto` may have sent records
        // that still wait to be emitted: their failures follow them, and
        // so do their results when they run again elsewhere (they wait for
        // a ticket for everything handed off so far: the emitting thread
        // keeps order). Later chunks never logged here. Terminate waits
        // for nothing.
        let ticket = (worker.emitting.load(Ordering::Acquire) > 0).then(emitter::handed);
        let mut behind = told && !st.terminated;
        let mut requeue = Vec::new();
        let mut blamed = 0;
        let mut protocol = protocol;
        // The worker runs its chunks in order and may not have sent the
        // results of finished ones yet (it batches them): the chunks before
        // the running one are requeued whole, and in the running one only
        // the running item is blamed.
        for flight in worker.in_flight {
            let InFlight {
                id,
                chunk,
                received,
                ..
            } = flight;
            let job = st.jobs.get(&chunk.job);
            let Some(job) = job else { continue };
            let mut chunk = chunk;
            if let Some(ticket) = ticket.filter(|_| id <= worker.records_upto) {
                // Its sub-chunks carry it (the later ticket covers both).
                chunk.after = Some(chunk.after.map_or(ticket, |t| t.max(ticket)));
            }
            if id == running_chunk
                && (running_item as u32) >= received
                && (running_item as u32) < chunk.count
            {
                let k = running_item as u32;
                requeue.extend(sub_chunk(&chunk, received, k));
                let index = chunk.first + k as usize;
                let died = worker.timed_out.is_none() && protocol.is_none();
                if died && chunk.attempt < job.retries {
                    // Opt-in retry: the item runs again, alone, on a fresh worker.
                    if let Some(mut again) = sub_chunk(&chunk, k, k + 1) {
                        again.attempt += 1;
                        requeue.push(again);
                    }
                    requeue.extend(sub_chunk(&chunk, k + 1, chunk.count));
                    continue;
                }
                let error = match (worker.timed_out, protocol.take()) {
                    (Some(timeout), _) => Error::TaskTimeout {
                        task: job.task,
                        index,
                        pid,
                        timeout,
                    },
                    (None, Some(source)) => Error::Protocol { pid, source },
                    (None, None) => Error::WorkerDied {
                        task: job.task,
                        index,
                        pid,
                        cause,
                    },
                };
                let (task, message) = (job.task, error.to_string());
                pool_event!(
                    counted by &st.emitting,
                    DEBUG,
                    pid,
                    task,
                    index,
                    error = %message,
                    "item failed with its worker"
                );
                blamed += 1;
                behind |= !st.terminated && records_wait(&chunk);
                outbox.push(&job.events, chunk.job, Event::Failed { index, error });
                requeue.extend(sub_chunk(&chunk, k + 1, chunk.count));
            } else {
                requeue.extend(sub_chunk(&chunk, received, chunk.count));
            }
        }
        st.stats[slot].failures += blamed;
        for chunk in requeue.into_iter().rev() {
            st.queue.push_front(chunk);
        }
        if !st.terminated && st.broken.is_none() {
            let _ = self.supervisor.send(Supervise::Respawn(slot));
        }
        st.dispatch(&self.config);
        let counted = outbox.count(self);
        drop(st);
        // (`counted`: there are failures to deliver.)
        if behind && counted {
            outbox.deliver_after(self, Pending::default(), None, counted);
        } else {
            outbox.deliver(self, counted);
        }
        self.changed.notify_all();
    }
}

/// Whether log records of an earlier run of `chunk`'s items may still
/// wait to be emitted.
fn records_wait(chunk: &super::Chunk) -> bool {
    chunk.after.is_some_and(|ticket| !emitter::emitted(ticket))
}

/// The task and input index of item `item` of chunk `chunk` in flight to
/// the worker in `slot`; `None`s if it is not (any more).
fn item_of(
    st: &State,
    slot: usize,
    chunk: u64,
    item: u32,
) -> (Option<&'static str>, Option<usize>) {
    let flight = st.workers[slot]
        .as_ref()
        .and_then(|w| w.in_flight.iter().find(|f| f.id == chunk));
    match flight {
        Some(f) if item < f.chunk.count => (
            st.jobs.get(&f.chunk.job).map(|job| job.task),
            Some(f.chunk.first + item as usize),
        ),
        _ => (None, None),
    }
}
