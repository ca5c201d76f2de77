//! How a worker's frames reach the pool: its buffered channel, which a
//! flusher thread empties while a chunk runs ([`SharedOut`]), and how a
//! results frame is sent ([`ResultsOut`]): a large one left in the worker's
//! memory for the pool to read, the others through the channel.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pool_core::ProtocolError;
use pool_core::wire::{self, FromWorker};

use super::EXIT_PARENT_GONE;
use crate::backend::pull;
use crate::backend::shm::Progress;

/// How a worker sends its results frames: a large one is left in its
/// memory for the pool to read ([`pull`]) when the
/// pool asked for that, else, and if that fails, through the channel.
pub(super) struct ResultsOut {
    pub(super) max_frame: usize,
    /// Large results are pulled (until a pull fails).
    pub(super) pull: bool,
    /// The last pull's number.
    pub(super) seq: u32,
    /// This worker's parent (the pool's process, or its fork server): the
    /// worker is to die with it.
    pub(super) parent: u32,
}

impl ResultsOut {
    /// Sends one results frame.
    pub(super) fn send(
        &mut self,
        writer: &mut impl Write,
        progress: Option<&Progress>,
        header: &FromWorker,
        body: &[u8],
    ) -> Result<(), ProtocolError> {
        let header = wire::encode_header(header);
        let size = header.len() + body.len();
        if self.pull
            && size >= pull::THRESHOLD
            && size <= self.max_frame
            && let Some(progress) = progress
        {
            // Below 2^31 (the page's failure bit), never 0.
            self.seq = self.seq % (1 << 30) + 1;
            let pull = FromWorker::Pull {
                header_at: header.as_ptr() as u64,
                header_len: header.len() as u32,
                body_at: body.as_ptr() as u64,
                body_len: body.len() as u64,
                seq: self.seq,
            };
            wire::write_frame(writer, &wire::encode_header(&pull), &[], self.max_frame)?;
            writer.flush()?;
            // Neither `header` nor `body` may change until the pool is done.
            let parent = self.parent;
            let gone = || std::os::unix::process::parent_id() != parent;
            match progress.wait_pulled(self.seq, gone) {
                Some(true) => return Ok(()),
                // The pool could not read this process's memory: never again.
                Some(false) => self.pull = false,
                // Its parent died (the pool, or its fork server, which dies
                // with it): the worker does what the parent-death signal,
                // which its task may have cleared, would have done.
                None => std::process::exit(EXIT_PARENT_GONE),
            }
        }
        wire::write_frame(writer, &header, body, self.max_frame)
    }
}

/// How long results may wait in a worker's buffer while a chunk runs
/// before its flusher thread sends them: the stall limit of dispatch, so
/// results of finished chunks are in before chunks behind a long item are
/// taken back. (1 ms cost chunk-size-1 throughput about 10% in wake-ups.)
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Buffered bytes past which a write goes out at once.
const OUT_CAPACITY: usize = 256 * 1024;

/// A worker's channel to the pool, buffered, shared by the serving thread
/// (which writes frames, and flushes before it would wait for input) and a
/// flusher thread (which sends what waited longer than [`FLUSH_AFTER`]
/// while a chunk runs, once armed by [`SharedOut::arm`]).
#[derive(Clone)]
pub(super) struct SharedOut(std::sync::Arc<OutShared>);

struct OutShared {
    state: std::sync::Mutex<OutState>,
    armed: std::sync::Condvar,
    stream: UnixStream,
    /// Hints read without the lock: results are buffered; the flusher is
    /// armed. They spare [`SharedOut::arm`] the lock on the hot path.
    waiting: AtomicBool,
    watching: AtomicBool,
}

struct OutState {
    buf: Vec<u8>,
    /// When the oldest buffered byte was written.
    since: Option<std::time::Instant>,
    /// The flusher watches the buffer.
    armed: bool,
    /// A write by the flusher failed: later writes fail too.
    failed: Option<std::io::ErrorKind>,
}

impl SharedOut {
    pub(super) fn new(stream: UnixStream) -> SharedOut {
        SharedOut(std::sync::Arc::new(OutShared {
            state: std::sync::Mutex::new(OutState {
                buf: Vec::with_capacity(OUT_CAPACITY),
                since: None,
                armed: false,
                failed: None,
            }),
            armed: std::sync::Condvar::new(),
            stream,
            waiting: AtomicBool::new(false),
            watching: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn start_flusher(&self) -> std::io::Result<()> {
        let shared = std::sync::Arc::clone(&self.0);
        std::thread::Builder::new()
            .name("pool-flusher".into())
            .spawn(move || flusher(&shared))
            .map(drop)
    }

    /// Before a chunk runs: if results wait, the flusher watches them (one
    /// wake-up per period at most; none when nothing waits, as after a
    /// lone call's result).
    pub(super) fn arm(&self) {
        let out = &self.0;
        if !out.waiting.load(Ordering::Relaxed) || out.watching.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        if st.since.is_some() && !st.armed {
            st.armed = true;
            out.watching.store(true, Ordering::Relaxed);
            drop(st);
            out.armed.notify_one();
        }
    }
}

/// Writes all of `parts`.
fn write_all_vectored(
    mut stream: &UnixStream,
    parts: &[std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    let mut parts: Vec<std::io::IoSlice<'_>> = parts.to_vec();
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        match stream.write_vectored(parts) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut parts, n),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Sends buffered results that waited [`FLUSH_AFTER`], while armed.
fn flusher(out: &OutShared) {
    let mut st = out.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let waited = st.since.map(|since| since.elapsed());
        st = match waited {
            _ if !st.armed || st.failed.is_some() => {
                out.armed.wait(st).unwrap_or_else(|p| p.into_inner())
            }
            None => {
                // Nothing waits: rest until armed again.
                st.armed = false;
                out.watching.store(false, Ordering::Relaxed);
                continue;
            }
            Some(waited) if waited >= FLUSH_AFTER => {
                if let Err(err) = (&out.stream).write_all(&st.buf) {
                    st.failed = Some(err.kind());
                }
                st.buf.clear();
                st.since = None;
                out.waiting.store(false, Ordering::Relaxed);
                continue;
            }
            Some(waited) => {
                out.armed
                    .wait_timeout(st, FLUSH_AFTER - waited)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}

impl Write for SharedOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(data)])
    }

    fn write_vectored(&mut self, parts: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let out = &self.0;
        let mut st = self.lock();
        if let Some(kind) = st.failed {
            return Err(kind.into());
        }
        if st.buf.len() + size > OUT_CAPACITY {
            (&out.stream).write_all(&st.buf)?;
            st.buf.clear();
            st.since = None;
            out.waiting.store(false, Ordering::Relaxed);
            if size > OUT_CAPACITY {
                // Whole, under the lock: a frame another thread writes
                // (log records) never lands inside this one.
                write_all_vectored(&out.stream, parts)?;
                return Ok(size);
            }
        }
        if st.since.is_none() {
            st.since = Some(std::time::Instant::now());
            out.waiting.store(true, Ordering::Relaxed);
        }
        for part in parts {
            st.buf.extend_from_slice(part);
        }
        Ok(size)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut st = self.lock();
        if let Some(kind) = st.failed {
            return Err(kind.into());
        }
        if !st.buf.is_empty() {
            (&self.0.stream).write_all(&st.buf)?;
            st.buf.clear();
            st.since = None;
            self.0.waiting.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}
