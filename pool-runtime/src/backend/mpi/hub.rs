//! Rank 0's `pool-mpi` thread: attaches ranks (and their local workers) to
//! pools, sends them frames, and delivers what comes back through each
//! pool's events.

#[allow(clippy::wildcard_imports)]
use super::*;
/// The state of rank 0's MPI thread.
pub(super) struct Hub {
    pub(super) world: SimpleCommunicator,
    pub(super) inbox: Receiver<Command>,
    pub(super) endpoints: Vec<Endpoint>,
    /// Indexed by rank; rank 0's entry has no endpoints.
    pub(super) ranks: Vec<RankInfo>,
    /// The order in which free endpoints are given to a pool: the first
    /// local worker of every rank, then the second, ...
    pub(super) order: Vec<usize>,
    pub(super) waiting: VecDeque<AttachRequest>,
    pub(super) batches: Vec<Batch>,
    pub(super) next_batch: u64,
    pub(super) pending: Vec<PendingSend>,
    pub(super) finalizing: Option<(Instant, Sender<()>)>,
    /// Messages sent and received, for [`STATS_ENV`].
    pub(super) sent: u64,
    pub(super) received: u64,
}

impl Hub {
    /// `capacities[rank]`: the local workers of each rank (0: it serves
    /// tasks itself).
    pub(super) fn new(
        world: SimpleCommunicator,
        inbox: Receiver<Command>,
        capacities: &[usize],
    ) -> Hub {
        let mut endpoints = Vec::new();
        let mut ranks = Vec::new();
        for (rank, &capacity) in capacities.iter().enumerate() {
            let count = if rank == 0 { 0 } else { capacity.max(1) };
            ranks.push(RankInfo {
                first: endpoints.len(),
                count,
                done: false,
            });
            for local in 0..count {
                endpoints.push(Endpoint {
                    rank,
                    local,
                    relayed: capacity > 0,
                    phase: Phase::Free,
                    stream: Assembler::default(),
                    pid: rank as u32,
                    page: None,
                });
            }
        }
        let places: Vec<(usize, usize)> = endpoints.iter().map(|e| (e.rank, e.local)).collect();
        let order = endpoint_order(&places);
        Hub {
            world,
            inbox,
            endpoints,
            ranks,
            order,
            waiting: VecDeque::new(),
            batches: Vec::new(),
            next_batch: 0,
            pending: Vec::new(),
            finalizing: None,
            sent: 0,
            received: 0,
        }
    }

    /// The endpoint of `rank`'s local worker `local`.
    pub(super) fn endpoint(&self, rank: usize, local: usize) -> Option<usize> {
        let info = self.ranks.get(rank)?;
        (local < info.count).then_some(info.first + local)
    }

    /// Runs until every rank acknowledged the end of the job; returns whom
    /// to tell once MPI is finalised.
    pub(super) fn run(&mut self) -> Sender<()> {
        let mut backoff = Backoff::new();
        loop {
            let mut busy = false;
            loop {
                match self.inbox.try_recv() {
                    Ok(Command::Attach(request)) => self.waiting.push_back(request),
                    Ok(Command::Finalize(reply)) => self.begin_finalize(reply),
                    Err(TryRecvError::Empty) => break,
                    // Unreachable: RANK0 keeps the sender for good.
                    Err(TryRecvError::Disconnected) => break,
                }
                busy = true;
            }
            busy |= self.start_waiting();
            busy |= self.forward_frames();
            busy |= self.receive_messages();
            self.complete_sends();
            self.check_deadlines();
            if let Some(deadline) = self.finalizing.as_ref().map(|(d, _)| *d) {
                let all_done = self.ranks[1..].iter().all(|r| r.done);
                if all_done
                    && self.pending.is_empty()
                    && let Some((_, reply)) = self.finalizing.take()
                {
                    return reply;
                }
                if Instant::now() > deadline {
                    let busy: Vec<usize> = (1..self.ranks.len())
                        .filter(|&r| !self.ranks[r].done)
                        .collect();
                    eprintln!(
                        "pool-runtime: MPI rank(s) {busy:?} still had work {FINALIZE_TIMEOUT:?} after main \
                         returned; aborting the MPI job"
                    );
                    self.world.abort(1);
                }
            }
            if busy {
                backoff.reset();
            } else {
                self.idle(backoff.next());
            }
        }
    }

    /// Waits for a command or an outgoing frame, at most `nap`.
    pub(super) fn idle(&self, nap: Duration) {
        if nap.is_zero() {
            thread::yield_now();
            return;
        }
        let mut select = Select::new();
        select.recv(&self.inbox);
        for endpoint in &self.endpoints {
            if let Phase::Attached { rx, .. } = &endpoint.phase {
                select.recv(rx);
            }
        }
        let _ = select.ready_timeout(nap);
    }

    // ----- attaching pools -----

    /// Starts the handshakes of waiting pools whose endpoints are free.
    pub(super) fn start_waiting(&mut self) -> bool {
        let mut progressed = false;
        while let Some(request) = self.waiting.pop_front() {
            if self.finalizing.is_some() {
                let _ = request.reply.send(Err(Error::Terminated));
                progressed = true;
                continue;
            }
            let wanted = request.shared.processes();
            let free: Vec<usize> = self
                .order
                .iter()
                .copied()
                .filter(|&e| matches!(self.endpoints[e].phase, Phase::Free))
                .take(wanted)
                .collect();
            if free.len() < wanted {
                // Endpoints still leaving a pool become free shortly; wait for them.
                let soon = self
                    .endpoints
                    .iter()
                    .filter(|e| {
                        matches!(
                            e.phase,
                            Phase::Free
                                | Phase::Releasing { .. }
                                | Phase::Hello { .. }
                                | Phase::Init { .. }
                        )
                    })
                    .count();
                if soon >= wanted && Instant::now() < request.deadline {
                    self.waiting.push_front(request);
                    break;
                }
                let total = self.endpoints.len();
                let busy = total - free.len();
                let _ = request.reply.send(Err(Error::Spawn(io::Error::other(format!(
                    "a pool of {wanted} needs {wanted} free MPI worker ranks (or local workers of ranks), \
                     but {busy} of the {total} serve another pool"
                )))));
                progressed = true;
                continue;
            }
            let id = self.next_batch;
            self.next_batch += 1;
            let hello = handshake::hello_header(request.shared.launch());
            let settings = Arc::new(Body::heap(handshake::hello_body(request.shared.launch())));
            for (slot, &e) in free.iter().enumerate() {
                self.endpoints[e].phase = Phase::Hello { batch: id, slot };
                self.endpoints[e].stream.clear();
                self.send_frame(e, &hello, &settings);
            }
            self.batches.push(Batch {
                id,
                shared: request.shared,
                reply: request.reply,
                deadline: request.deadline,
                endpoints: free,
            });
            progressed = true;
        }
        progressed
    }

    pub(super) fn batch(&self, id: u64) -> Option<&Batch> {
        self.batches.iter().find(|b| b.id == id)
    }

    /// A handshake frame from endpoint `e`, in phase Hello or Init.
    pub(super) fn on_handshake(&mut self, e: usize, frame: &[u8]) {
        let (batch_id, slot, init_phase) = match self.endpoints[e].phase {
            Phase::Hello { batch, slot } => (batch, slot, false),
            Phase::Init { batch, slot } => (batch, slot, true),
            _ => return,
        };
        let Some(batch) = self.batch(batch_id) else {
            // Its pool gave up on it (a timeout or another rank failed).
            self.release(e, None);
            return;
        };
        let launch: &Launch = batch.shared.launch();
        let init = launch.init.clone();
        let pid = self.endpoints[e].pid;
        let outcome = if init_phase {
            match &init {
                Some(spec) => handshake::check_init_done(frame, spec)
                    .map(|()| pid)
                    .map_err(|reason| Error::Initializer {
                        task: spec.name,
                        pid,
                        reason,
                    }),
                None => Err(Error::Startup {
                    pid,
                    reason: "an answer to an initializer that was never sent".into(),
                }),
            }
        } else {
            handshake::check_ready(frame, launch).map_err(|reason| Error::Startup {
                pid,
                reason: format!("{}: {reason}", self.endpoints[e].name()),
            })
        };
        match outcome {
            Err(err) => {
                self.release(e, None);
                self.fail_batch(batch_id, err);
            }
            Ok(reported) => {
                if self.endpoints[e].relayed && !init_phase {
                    // A local process: the pool knows it by its own pid.
                    self.endpoints[e].pid = reported;
                }
                match (&init, init_phase) {
                    (Some(spec), false) => {
                        let header = wire::encode_header(&ToWorker::Init { task: spec.task });
                        let body = Arc::new(Body::heap(spec.body.clone()));
                        self.endpoints[e].phase = Phase::Init {
                            batch: batch_id,
                            slot,
                        };
                        self.send_frame(e, &header, &body);
                    }
                    _ => {
                        self.endpoints[e].phase = Phase::Ready {
                            batch: batch_id,
                            slot,
                        };
                        self.finish_batch_if_ready(batch_id);
                    }
                }
            }
        }
    }

    /// Attaches endpoint `e` to `slot` of `shared`'s pool; releases it if
    /// the pool was terminated meanwhile.
    pub(super) fn attach(&mut self, e: usize, shared: Arc<dyn Events>, slot: usize) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let page = if self.endpoints[e].relayed {
            relay_page()
        } else {
            None
        };
        let pid = self.endpoints[e].pid;
        if shared.attach(
            slot,
            pid,
            Link::Remote {
                tx,
                page: page.clone(),
            },
        ) {
            self.endpoints[e].page = page;
            self.endpoints[e].phase = Phase::Attached { shared, slot, rx };
        } else {
            self.release(e, None);
        }
    }

    /// Attaches the endpoints of a batch once all of them are ready.
    pub(super) fn finish_batch_if_ready(&mut self, id: u64) {
        let Some(index) = self.batches.iter().position(|b| b.id == id) else {
            return;
        };
        let ready = self.batches[index]
            .endpoints
            .iter()
            .all(|&e| matches!(self.endpoints[e].phase, Phase::Ready { .. }));
        if !ready {
            return;
        }
        let batch = self.batches.swap_remove(index);
        for &e in &batch.endpoints {
            let Phase::Ready { slot, .. } = self.endpoints[e].phase else {
                continue;
            };
            self.attach(e, Arc::clone(&batch.shared), slot);
        }
        let _ = batch.reply.send(Ok(()));
    }

    /// Gives up a batch: its pool fails to start with `err`; its endpoints
    /// that finished the handshake are released now, the others when they
    /// answer.
    pub(super) fn fail_batch(&mut self, id: u64, err: Error) {
        let Some(index) = self.batches.iter().position(|b| b.id == id) else {
            return;
        };
        let batch = self.batches.swap_remove(index);
        for &e in &batch.endpoints {
            if matches!(self.endpoints[e].phase, Phase::Ready { .. }) {
                self.release(e, None);
            }
        }
        let _ = batch.reply.send(Err(err));
    }

    pub(super) fn check_deadlines(&mut self) {
        let now = Instant::now();
        let late: Vec<(u64, usize)> = self
            .batches
            .iter()
            .filter(|b| now > b.deadline)
            .filter_map(|b| {
                let e = b.endpoints.iter().copied().find(|&e| {
                    matches!(
                        self.endpoints[e].phase,
                        Phase::Hello { .. } | Phase::Init { .. }
                    )
                })?;
                Some((b.id, e))
            })
            .collect();
        for (id, e) in late {
            let timeout = self
                .batch(id)
                .map_or(Duration::ZERO, |b| b.shared.launch().startup_timeout);
            let err = Error::Startup {
                pid: self.endpoints[e].pid,
                reason: format!(
                    "{} did not complete the handshake within {timeout:?}: does `main` call \
                     `pool_runtime::init()` before anything slow?",
                    self.endpoints[e].name()
                ),
            };
            self.fail_batch(id, err);
        }
    }

    /// Sends `Exit` to endpoint `e`; once it says goodbye it is free again
    /// (and detached from `pool`).
    pub(super) fn release(&mut self, e: usize, pool: Option<(Arc<dyn Events>, usize)>) {
        let header = wire::encode_header(&ToWorker::Exit);
        self.send_frame(e, &header, &Arc::new(Body::empty()));
        self.endpoints[e].phase = Phase::Releasing { pool };
    }

    // ----- local workers that die -----

    /// A rank's local worker died: its pool blames the item it ran (its
    /// page says which) and requeues the rest, as for a local worker; a
    /// pool still running gets a replacement in the same slot.
    pub(super) fn on_died(&mut self, e: usize, died: Died) {
        self.endpoints[e].stream.clear();
        let page = self.endpoints[e].page.take();
        if let Some(page) = &page {
            match died.running {
                Some((chunk, item)) => page.start(chunk, item, now_ns()),
                None => page.idle(0),
            }
        }
        let name = self.endpoints[e].name();
        let phase = std::mem::replace(&mut self.endpoints[e].phase, Phase::Free);
        match phase {
            Phase::Attached { shared, slot, .. }
            | Phase::Releasing {
                pool: Some((shared, slot)),
            } => {
                shared.mark_dying(slot);
                shared.detach(slot, died.pid, died.cause, None);
                drop(page);
                if !shared.is_stopping() {
                    // The rank starts a new process on a new handshake.
                    let hello = handshake::hello_header(shared.launch());
                    let settings = Arc::new(Body::heap(handshake::hello_body(shared.launch())));
                    self.endpoints[e].phase = Phase::Rejoin {
                        shared,
                        slot,
                        init: false,
                    };
                    self.send_frame(e, &hello, &settings);
                }
            }
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } | Phase::Ready { batch, .. } => {
                let err = Error::Startup {
                    pid: died.pid,
                    reason: format!("{name} {} during the handshake", died.cause),
                };
                self.fail_batch(batch, err);
            }
            Phase::Rejoin { .. } => {
                tracing::warn!(
                    pid = died.pid,
                    cause = %died.cause,
                    "{name}: the replacement of a local worker died in its handshake; the pool goes on without it"
                );
            }
            Phase::Lost => self.endpoints[e].phase = Phase::Lost,
            Phase::Done => self.endpoints[e].phase = Phase::Done,
            Phase::Free | Phase::Releasing { pool: None } => {}
        }
    }

    /// Emits the log records of a starting worker (those of its
    /// initializer); `false` if `frame` holds none.
    pub(super) fn on_start_log(&self, e: usize, frame: &[u8]) -> bool {
        let init = match &self.endpoints[e].phase {
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } => self
                .batch(*batch)
                .and_then(|b| b.shared.launch().init.as_ref().map(|i| i.name)),
            Phase::Rejoin { shared, .. } => shared.launch().init.as_ref().map(|i| i.name),
            _ => None,
        };
        crate::logging::emit::emit_start_frame(frame, self.endpoints[e].pid, init)
    }

    /// A handshake frame from the replacement of a local worker.
    pub(super) fn on_rejoin(&mut self, e: usize, frame: &[u8]) {
        let Phase::Rejoin { shared, slot, init } = &self.endpoints[e].phase else {
            return;
        };
        let (shared, slot, init) = (Arc::clone(shared), *slot, *init);
        let launch = shared.launch();
        let name = self.endpoints[e].name();
        let outcome = if init {
            match &launch.init {
                Some(spec) => handshake::check_init_done(frame, spec).map(|()| None),
                None => Err("an answer to an initializer that was never sent".to_owned()),
            }
        } else {
            handshake::check_ready(frame, launch).map(Some)
        };
        match outcome {
            Err(reason) => {
                tracing::warn!(
                    "{name}: the replacement of a local worker failed to start ({reason}); the pool goes on without it"
                );
                self.release(e, None);
            }
            Ok(Some(pid)) => {
                self.endpoints[e].pid = pid;
                if let Some(spec) = &launch.init {
                    let header = wire::encode_header(&ToWorker::Init { task: spec.task });
                    let body = Arc::new(Body::heap(spec.body.clone()));
                    self.endpoints[e].phase = Phase::Rejoin {
                        shared: Arc::clone(&shared),
                        slot,
                        init: true,
                    };
                    self.send_frame(e, &header, &body);
                } else {
                    self.attach(e, shared, slot);
                }
            }
            Ok(None) => self.attach(e, shared, slot),
        }
    }

    /// A local worker started an item under a timeout.
    pub(super) fn on_start(&mut self, e: usize, chunk: u64, item: u64) {
        if let (Phase::Attached { .. }, Some(page)) =
            (&self.endpoints[e].phase, &self.endpoints[e].page)
        {
            page.start(chunk, item, now_ns());
        }
    }

    // ----- frames out -----

    /// Forwards the frames pools queued for their endpoints.
    pub(super) fn forward_frames(&mut self) -> bool {
        let mut progressed = false;
        for e in 0..self.endpoints.len() {
            while let Phase::Attached { rx, .. } = &self.endpoints[e].phase {
                let Ok(out) = rx.try_recv() else { break };
                progressed = true;
                self.forward(e, out);
            }
        }
        progressed
    }

    pub(super) fn forward(&mut self, e: usize, out: Outgoing) {
        let Phase::Attached { shared, slot, .. } = &self.endpoints[e].phase else {
            return;
        };
        let (shared, slot) = (Arc::clone(shared), *slot);
        let size = out.header.len() + out.body.len();
        let max = shared.launch().max_frame;
        if size > max {
            // As a failed write does locally: the worker is lost to the pool.
            shared.mark_dying(slot);
            let limit = max.min(u32::MAX as usize);
            shared.detach(
                slot,
                self.endpoints[e].pid,
                ExitCause::Unknown,
                Some(ProtocolError::TooLarge { size, limit }),
            );
            self.release(e, None);
            return;
        }
        let exit = matches!(
            wire::split_frame::<ToWorker>(&out.header),
            Ok((ToWorker::Exit, _))
        );
        self.send_frame(e, &out.header, &out.body);
        if exit {
            // Anything the pool sends after its exit frame is dropped: the
            // worker would read it as the start of the next pool.
            self.endpoints[e].phase = Phase::Releasing {
                pool: Some((shared, slot)),
            };
        }
    }

    /// Sends one frame to endpoint `e` without waiting: small frames as one
    /// message, large ones as a header message and body pieces.
    pub(super) fn send_frame(&mut self, e: usize, header: &[u8], body: &Arc<Body>) {
        let (rank, tag) = (self.endpoints[e].rank, data_tag(self.endpoints[e].local));
        let len = ((header.len() + body.len()) as u32).to_le_bytes();
        if body.len() <= INLINE_BODY {
            let mut message = Vec::with_capacity(4 + header.len() + body.len());
            message.extend_from_slice(&len);
            message.extend_from_slice(header);
            message.extend_from_slice(body);
            self.isend_owned(rank, message.into_boxed_slice(), tag);
        } else {
            let mut head = Vec::with_capacity(4 + header.len());
            head.extend_from_slice(&len);
            head.extend_from_slice(header);
            self.isend_owned(rank, head.into_boxed_slice(), tag);
            for piece in pieces(body.len()) {
                let slice = &body[piece];
                // SAFETY: the slice points into `body`'s bytes (a heap buffer,
                // or a mapping that lives as long as the body), which the
                // pending send keeps alive (an `Arc` clone) until MPI reports
                // the send complete; nothing writes to them meanwhile.
                let data: &'static [u8] =
                    unsafe { std::slice::from_raw_parts(slice.as_ptr(), slice.len()) };
                let request = self
                    .world
                    .process_at_rank(rank as i32)
                    .immediate_send_with_tag(StaticScope, data, tag);
                self.sent += 1;
                self.pending.push(PendingSend {
                    request: Some(request),
                    _keep: Keep::Shared(Arc::clone(body)),
                });
            }
        }
    }

    pub(super) fn isend_owned(&mut self, rank: usize, message: Box<[u8]>, tag: Tag) {
        // SAFETY: the boxed buffer moves into the pending send, which keeps it
        // (at the same heap address) until MPI reports the send complete.
        let data: &'static [u8] =
            unsafe { std::slice::from_raw_parts(message.as_ptr(), message.len()) };
        let request = self
            .world
            .process_at_rank(rank as i32)
            .immediate_send_with_tag(StaticScope, data, tag);
        self.sent += 1;
        self.pending.push(PendingSend {
            request: Some(request),
            _keep: Keep::Owned(message),
        });
    }

    pub(super) fn complete_sends(&mut self) {
        self.pending.retain_mut(|send| match send.request.take() {
            Some(request) => match request.test() {
                Ok(_) => false,
                Err(request) => {
                    send.request = Some(request);
                    true
                }
            },
            None => false,
        });
    }

    // ----- messages in -----

    pub(super) fn receive_messages(&mut self) -> bool {
        let mut progressed = false;
        while let Some((message, status)) = self.world.any_process().immediate_matched_probe() {
            progressed = true;
            self.received += 1;
            let data = receive(message, &status);
            let rank = status.source_rank() as usize;
            if rank == 0 || rank >= self.ranks.len() {
                continue;
            }
            let local_of = |data: &[u8]| {
                data.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
            };
            match status.tag() {
                tag if tag >= TAG_DATA_BASE => {
                    if let Some(e) = self.endpoint(rank, (tag - TAG_DATA_BASE) as usize) {
                        self.on_data(e, data);
                    }
                }
                TAG_BYE => {
                    let code = data
                        .get(4..8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(EXIT_PROTOCOL, i32::from_le_bytes);
                    let local = local_of(&data).map_or(0, |l| l as usize);
                    if let Some(e) = self.endpoint(rank, local) {
                        self.on_bye(e, code);
                    }
                }
                TAG_DIED => {
                    let died = Died::decode(&data);
                    match died.and_then(|d| Some((self.endpoint(rank, d.local as usize)?, d))) {
                        Some((e, died)) => self.on_died(e, died),
                        None => eprintln!(
                            "pool-runtime: ignoring a malformed report of a dead local worker from rank {rank}"
                        ),
                    }
                }
                TAG_START => {
                    if let Some((local, chunk, item)) = parse_start(&data)
                        && let Some(e) = self.endpoint(rank, local as usize)
                    {
                        self.on_start(e, chunk, item);
                    }
                }
                TAG_DONE => {
                    self.ranks[rank].done = true;
                    let RankInfo { first, count, .. } = self.ranks[rank];
                    for endpoint in &mut self.endpoints[first..first + count] {
                        endpoint.phase = Phase::Done;
                    }
                }
                tag => eprintln!(
                    "pool-runtime: ignoring an MPI message with tag {tag} from rank {rank}"
                ),
            }
        }
        progressed
    }

    pub(super) fn on_data(&mut self, e: usize, data: Vec<u8>) {
        if self.finalizing.is_some() {
            return; // the job is ending: late results have no reader
        }
        let max = match &self.endpoints[e].phase {
            Phase::Attached { shared, .. }
            | Phase::Releasing {
                pool: Some((shared, _)),
            } => shared.launch().max_frame,
            _ => 4096,
        };
        let mut frames = Vec::new();
        let pushed = self.endpoints[e].stream.push(data, max, &mut frames);
        for frame in frames {
            match &self.endpoints[e].phase {
                Phase::Attached { shared, slot, .. }
                | Phase::Releasing {
                    pool: Some((shared, slot)),
                } => {
                    let (shared, slot) = (Arc::clone(shared), *slot);
                    if let Err(err) = shared.deliver(slot, self.endpoints[e].pid, frame) {
                        self.lose(e, err);
                        return;
                    }
                }
                Phase::Hello { .. } | Phase::Init { .. } | Phase::Rejoin { .. }
                    if self.on_start_log(e, &frame) => {}
                Phase::Hello { .. } | Phase::Init { .. } => self.on_handshake(e, &frame),
                Phase::Rejoin { .. } => self.on_rejoin(e, &frame),
                Phase::Releasing { pool: None } => {} // e.g. a late `Ready`
                Phase::Free | Phase::Ready { .. } | Phase::Lost | Phase::Done => {
                    self.lose(
                        e,
                        ProtocolError::Unexpected("a frame from an idle MPI worker"),
                    );
                    return;
                }
            }
        }
        if let Err(err) = pushed {
            self.lose(e, err);
        }
    }

    /// Endpoint `e` broke the protocol: its pool (if any) sees a protocol
    /// error, and it gets no more work.
    pub(super) fn lose(&mut self, e: usize, err: ProtocolError) {
        let phase = std::mem::replace(&mut self.endpoints[e].phase, Phase::Lost);
        self.endpoints[e].stream.clear();
        let pid = self.endpoints[e].pid;
        match phase {
            Phase::Attached { shared, slot, .. }
            | Phase::Releasing {
                pool: Some((shared, slot)),
            } => {
                shared.mark_dying(slot);
                shared.detach(slot, pid, ExitCause::Unknown, Some(err));
            }
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } | Phase::Ready { batch, .. } => {
                self.fail_batch(batch, Error::Protocol { pid, source: err });
            }
            _ => eprintln!("pool-runtime: {}: {err}", self.endpoints[e].name()),
        }
    }

    pub(super) fn on_bye(&mut self, e: usize, code: i32) {
        self.endpoints[e].stream.clear();
        self.endpoints[e].page = None;
        let pid = self.endpoints[e].pid;
        let phase = std::mem::replace(&mut self.endpoints[e].phase, Phase::Free);
        match phase {
            Phase::Attached { shared, slot, .. }
            | Phase::Releasing {
                pool: Some((shared, slot)),
            } => {
                shared.mark_dying(slot);
                shared.detach(slot, pid, ExitCause::Code(code), None);
            }
            Phase::Hello { batch, .. } | Phase::Init { batch, .. } | Phase::Ready { batch, .. } => {
                let err = Error::Startup {
                    pid,
                    reason: format!(
                        "{} left the handshake (code {code})",
                        self.endpoints[e].name()
                    ),
                };
                self.fail_batch(batch, err);
            }
            Phase::Rejoin { .. } => tracing::warn!(
                "{}: the replacement of a local worker could not start; the pool goes on without it",
                self.endpoints[e].name()
            ),
            Phase::Done => self.endpoints[e].phase = Phase::Done,
            Phase::Lost => self.endpoints[e].phase = Phase::Lost,
            Phase::Free | Phase::Releasing { pool: None } => {}
        }
    }

    // ----- the end -----

    pub(super) fn begin_finalize(&mut self, reply: Sender<()>) {
        if self.finalizing.is_some() {
            return;
        }
        for request in self.waiting.drain(..) {
            let _ = request.reply.send(Err(Error::Terminated));
        }
        let ids: Vec<u64> = self.batches.iter().map(|b| b.id).collect();
        for id in ids {
            self.fail_batch(id, Error::Terminated);
        }
        for e in 0..self.endpoints.len() {
            if let Phase::Attached { shared, slot, .. } = &self.endpoints[e].phase {
                // A pool still alive at exit: its calls end now.
                let (shared, slot) = (Arc::clone(shared), *slot);
                shared.mark_dying(slot);
                shared.detach(slot, self.endpoints[e].pid, ExitCause::Unknown, None);
            }
            if !matches!(self.endpoints[e].phase, Phase::Done) {
                self.endpoints[e].phase = Phase::Releasing { pool: None };
            }
        }
        for rank in 1..self.ranks.len() {
            self.isend_owned(rank, Box::new([]), TAG_FINALIZE);
        }
        self.finalizing = Some((Instant::now() + FINALIZE_TIMEOUT, reply));
    }
}
