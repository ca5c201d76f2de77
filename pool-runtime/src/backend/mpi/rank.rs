//! A worker rank: serves the pool's frames over MPI messages (itself, or
//! relaying them to its local worker processes), and the framing both
//! sides use over MPI.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn run_worker_rank(launcher: &Launcher) -> ! {
    let universe = match init_mpi(launcher) {
        Ok(universe) => universe,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    };
    let world = universe.world();
    let rank = world.rank(); // the launcher's, which is not 0 (`init_mpi` checked)
    // SAFETY: registering a plain `extern "C" fn` with no arguments.
    unsafe { libc::atexit(worker_exit_hook) };
    let setting = std::env::var(LOCAL_WORKERS_ENV).ok();
    let local = match local_workers_from_env(setting.as_deref()) {
        Ok(count) => count,
        Err(message) => {
            eprintln!("{message}");
            world.abort(EXIT_PROTOCOL);
        }
    };
    if local == 1 && setting.is_some_and(|v| v.trim().eq_ignore_ascii_case("auto")) {
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if online > 1 {
            eprintln!(
                "pool-runtime: MPI rank {rank}: {LOCAL_WORKERS_ENV}=auto gives 1 local worker: this \
                 rank may use 1 of the node's {online} CPUs (bound by the launcher: mpirun binds each \
                 rank to a core when it starts 2 or fewer); start it with mpirun --bind-to none, or \
                 srun --cpus-per-task, to use more"
            );
        }
    }
    world
        .process_at_rank(0)
        .send_with_tag(&(local as u32).to_le_bytes()[..], TAG_CAPACITY);
    if local > 0 {
        // Tasks run in local worker processes; this rank relays.
        node::run(&world, local);
        FINALIZED.store(true, Ordering::SeqCst);
        drop(universe); // MPI_Finalize
        std::process::exit(0)
    }
    worker::install_panic_hook();
    // A page of this process alone, where the running item is recorded for
    // log records to name it (nobody else reads it); kept until the exit.
    let page: Option<&'static Progress> = Progress::create()
        .ok()
        .map(|page| &*Box::leak(Box::new(page)));
    if let Some(page) = page {
        crate::logging::capture::watch(page);
    }
    let mut reader = RankReader::new(&world);
    let mut writer = RankWriter::new(&world);
    // Another message from rank 0 is waiting (or buffered): results can wait.
    let more_input = |r: &RankReader<'_>| {
        r.pos < r.buf.len() || r.world.process_at_rank(0).immediate_probe().is_some()
    };
    loop {
        let outcome = worker::serve_with(&mut reader, &mut writer, page, more_input);
        if reader.finalize {
            break;
        }
        let code = match outcome {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("pool-runtime worker (MPI rank {rank}): {err}");
                EXIT_PROTOCOL
            }
        };
        // Ready for the next pool: drop whatever a broken exchange left.
        reader.reset();
        writer.buf.clear();
        let _ = io::stdout().flush();
        world
            .process_at_rank(0)
            .send_with_tag(&bye_body(0, code)[..], TAG_BYE);
    }
    let _ = io::stdout().flush();
    world.process_at_rank(0).send_with_tag(&[0u8][..], TAG_DONE);
    FINALIZED.store(true, Ordering::SeqCst);
    drop(universe); // MPI_Finalize
    std::process::exit(0)
}

/// The body of a [`TAG_BYE`] message.
pub(super) fn bye_body(local: usize, code: i32) -> [u8; 8] {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&(local as u32).to_le_bytes());
    body[4..].copy_from_slice(&code.to_le_bytes());
    body
}

/// Polls without burning a core: spins (yielding) for 1 ms after the last
/// activity, then sleeps for an eighth of the idle time so far, between
/// 10 µs and 1 ms. The spin keeps round trips short (a shorter one, 100 µs,
/// made a round trip under `mpirun -n 3` on two cores ten times slower);
/// the sleeps keep an idle rank at a few percent of a core.
pub(super) struct Backoff {
    pub(super) since: Instant,
}

impl Backoff {
    const SPIN: Duration = Duration::from_millis(1);

    pub(super) fn new() -> Self {
        Backoff {
            since: Instant::now(),
        }
    }

    pub(super) fn reset(&mut self) {
        self.since = Instant::now();
    }

    /// How long to sleep now; zero while still spinning.
    pub(super) fn next(&self) -> Duration {
        let idle = self.since.elapsed();
        if idle < Self::SPIN {
            Duration::ZERO
        } else {
            (idle / 8).clamp(Duration::from_micros(10), Duration::from_millis(1))
        }
    }

    pub(super) fn pause(&self) {
        match self.next() {
            Duration::ZERO => thread::yield_now(),
            nap => thread::sleep(nap),
        }
    }
}

/// Receives a probed message whole.
pub(super) fn receive(
    message: mpi::point_to_point::Message,
    status: &mpi::point_to_point::Status,
) -> Vec<u8> {
    let count = usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0);
    let mut buf = vec![0u8; count];
    message.matched_receive_into(&mut buf[..]);
    buf
}

/// The worker's side of the stream from rank 0.
pub(super) struct RankReader<'a> {
    pub(super) world: &'a SimpleCommunicator,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    /// Rank 0 said finalise: the stream has ended.
    pub(super) finalize: bool,
}

impl<'a> RankReader<'a> {
    pub(super) fn new(world: &'a SimpleCommunicator) -> Self {
        RankReader {
            world,
            buf: Vec::new(),
            pos: 0,
            finalize: false,
        }
    }

    pub(super) fn reset(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }
}

impl Read for RankReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.finalize || out.is_empty() {
                return Ok(0);
            }
            let root = self.world.process_at_rank(0);
            let backoff = Backoff::new();
            let (message, status) = loop {
                if let Some(found) = root.immediate_matched_probe() {
                    break found;
                }
                backoff.pause();
            };
            let data = receive(message, &status);
            match status.tag() {
                tag if tag == data_tag(0) => {
                    self.buf = data;
                    self.pos = 0;
                }
                TAG_FINALIZE => self.finalize = true,
                tag => {
                    return Err(io::Error::other(format!(
                        "an MPI message with unknown tag {tag} from rank 0"
                    )));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The worker's side of the stream to rank 0: keeps whole frames until
/// `flush` (which `serve_with` calls before it would wait for input) or
/// until [`BATCH`] bytes wait, then sends them as one message (several
/// above [`MAX_MESSAGE`]): a rank fed many small chunks answers in batches.
pub(super) struct RankWriter<'a> {
    pub(super) world: &'a SimpleCommunicator,
    pub(super) buf: Vec<u8>,
}

/// Bytes of finished frames a worker rank keeps before sending them anyway.
pub(super) const BATCH: usize = 256 * 1024;

impl<'a> RankWriter<'a> {
    pub(super) fn new(world: &'a SimpleCommunicator) -> Self {
        RankWriter {
            world,
            buf: Vec::new(),
        }
    }

    /// Sends the complete frames at the start of the buffer.
    pub(super) fn send_complete_frames(&mut self) {
        let mut len = 0;
        while let Some(next) = complete_frame_len(&self.buf[len..]) {
            len += next;
        }
        if len == 0 {
            return;
        }
        let root = self.world.process_at_rank(0);
        for piece in pieces(len) {
            root.send_with_tag(&self.buf[piece], data_tag(0));
        }
        self.buf.drain(..len);
    }
}

impl Write for RankWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for data in bufs {
            self.buf.extend_from_slice(data);
            total += data.len();
        }
        if self.buf.len() >= BATCH {
            self.send_complete_frames();
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_complete_frames();
        Ok(())
    }
}

/// The length (prefix included) of the complete frame at the start of `buf`.
pub(super) fn complete_frame_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = 4 + u32::from_le_bytes(prefix) as usize;
    (buf.len() >= len).then_some(len)
}

/// Splits `0..len` into message-sized ranges (at least one, even if empty).
pub(super) fn pieces(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = len.div_ceil(MAX_MESSAGE).max(1);
    (0..count).map(move |i| i * MAX_MESSAGE..((i + 1) * MAX_MESSAGE).min(len))
}

/// Reassembles frames from a worker's stream of messages.
#[derive(Default)]
pub(super) struct Assembler {
    pub(super) buf: Vec<u8>,
}

impl Assembler {
    /// Appends one message; pushes every frame it completes (without the
    /// length prefix) to `frames`.
    pub(super) fn push(
        &mut self,
        message: Vec<u8>,
        max: usize,
        frames: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            self.buf = message;
        } else {
            self.buf.extend_from_slice(&message);
        }
        loop {
            let Some(prefix) = self.buf.get(..4) else {
                return Ok(());
            };
            let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if size > max {
                return Err(ProtocolError::TooLarge { size, limit: max });
            }
            if self.buf.len() < 4 + size {
                self.buf.reserve(4 + size - self.buf.len());
                return Ok(());
            }
            let rest = self.buf.split_off(4 + size);
            let mut frame = std::mem::replace(&mut self.buf, rest);
            frame.drain(..4);
            frames.push(frame);
        }
    }

    pub(super) fn clear(&mut self) {
        self.buf = Vec::new();
    }
}
