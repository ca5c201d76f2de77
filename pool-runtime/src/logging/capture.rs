//! The worker's side: a global `tracing` subscriber and `log` logger that
//! keep records in a bounded buffer, and their sending to the pool.
//!
//! Emitting a record takes one short lock and never writes: a full buffer
//! drops the record and counts it. The buffer is sent as `Log` frames by
//! the serving thread before each results frame (so the records of an item
//! reach the pool before its result), between chunks, and, in a local
//! worker, by a thread of its own a moment after records arrive, so that
//! the records of a long item (or of one that kills its worker) are not
//! held back until it ends. A send in progress holds [`SEND`], so frames
//! leave in the order their records were taken.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pool_core::ProtocolError;
use pool_core::wire::{self, FromWorker, LOG_OFF, LogRecord};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use super::{from_level, to_level, to_log_filter};
use crate::backend::shm::Progress;

/// Records a worker keeps while they wait to be sent.
const MAX_RECORDS: usize = 4096;
/// Bytes of text they may hold.
const MAX_BYTES: usize = 4 << 20;
/// The longest message kept (cut at a character boundary), at most a
/// quarter of the frame limit.
const MAX_MESSAGE: usize = 16 * 1024;
/// The longest target, module path or file name kept, at most a 32nd of
/// the frame limit: a record always fits in a frame.
const MAX_NAME: usize = 256;
/// The largest body of one `Log` frame.
const MAX_BODY: usize = 256 * 1024;
/// How long the sending thread lets records gather before it sends them.
const GATHER: Duration = Duration::from_millis(2);

/// The most verbose level forwarded (a wire number).
static LEVEL: AtomicU8 = AtomicU8::new(LOG_OFF);
/// The pool's frame limit.
static MAX_FRAME: AtomicUsize = AtomicUsize::new(4096);
/// Records pushed or dropped and not yet written to the channel.
static PENDING: AtomicUsize = AtomicUsize::new(0);
static BUFFER: Mutex<Buffer> = Mutex::new(Buffer {
    records: Vec::new(),
    bytes: 0,
    dropped: 0,
});
/// Wakes the sending thread.
static ARRIVED: Condvar = Condvar::new();
/// Held from taking records to having written them.
static SEND: Mutex<()> = Mutex::new(());
/// Where the running item is recorded.
static PAGE: OnceLock<&'static Progress> = OnceLock::new();
/// The channel the sending thread writes to, until it starts.
static SENDER: Mutex<Option<Box<dyn Write + Send>>> = Mutex::new(None);
/// The subscriber and logger were offered (once per process).
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The global `tracing` subscriber is ours (not one installed before).
static TRACING_OURS: AtomicBool = AtomicBool::new(false);
/// The `log` logger is ours.
static LOG_OURS: AtomicBool = AtomicBool::new(false);

struct Buffer {
    records: Vec<LogRecord>,
    /// Text bytes of `records`.
    bytes: usize,
    /// Records dropped since the last send.
    dropped: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the page where the serving thread shows its running item, so
/// that records name it.
pub(crate) fn watch(page: &'static Progress) {
    let _ = PAGE.set(page);
}

/// Gives the channel to the pool to a sending thread, started by
/// [`install`] once records are wanted.
pub(crate) fn set_sender(out: Box<dyn Write + Send>) {
    *lock(&SENDER) = Some(out);
}

/// Forwards records up to `level` (a wire number) from now on. The first
/// call with a level other than off installs the global subscriber and
/// logger, where the process has none yet, and starts the sending thread.
pub(crate) fn install(level: u8, max_frame: usize) {
    MAX_FRAME.store(max_frame, Ordering::Relaxed);
    let before = LEVEL.swap(level, Ordering::SeqCst);
    if !INSTALLED.load(Ordering::SeqCst) {
        if level == LOG_OFF {
            return;
        }
        INSTALLED.store(true, Ordering::SeqCst);
        if tracing::subscriber::set_global_default(Forward).is_ok() {
            TRACING_OURS.store(true, Ordering::SeqCst);
        }
        if log::set_logger(&FORWARD_LOG).is_ok() {
            LOG_OURS.store(true, Ordering::SeqCst);
        }
        if let Some(out) = lock(&SENDER).take() {
            // Without it, records still go out with the results.
            let _ = std::thread::Builder::new()
                .name("pool-log".into())
                .spawn(move || send_loop(out));
        }
    } else if before != level && TRACING_OURS.load(Ordering::SeqCst) {
        // A later pool (an MPI rank serves one after another) wants another level.
        tracing_core::callsite::rebuild_interest_cache();
    }
    if LOG_OURS.load(Ordering::SeqCst) {
        log::set_max_level(to_log_filter(level));
    }
}

/// Sends the records waiting, if any, as `Log` frames on `out` (not
/// flushed).
///
/// # Errors
///
/// The channel failed.
pub(crate) fn send<W: Write + ?Sized>(out: &mut W) -> Result<(), ProtocolError> {
    if PENDING.load(Ordering::SeqCst) == 0 {
        return Ok(());
    }
    let _turn = lock(&SEND);
    let (records, dropped) = {
        let mut buffer = lock(&BUFFER);
        buffer.bytes = 0;
        (
            std::mem::take(&mut buffer.records),
            std::mem::take(&mut buffer.dropped),
        )
    };
    let taken = records.len() + dropped as usize;
    let written = write_frames(out, &records, dropped);
    PENDING.fetch_sub(taken, Ordering::SeqCst);
    written
}

fn write_frames<W: Write + ?Sized>(
    out: &mut W,
    records: &[LogRecord],
    mut dropped: u64,
) -> Result<(), ProtocolError> {
    let max_frame = MAX_FRAME.load(Ordering::Relaxed);
    let limit = MAX_BODY.min(max_frame.saturating_sub(64));
    let mut body = Vec::new();
    let mut count = 0u32;
    for record in records {
        let mark = body.len();
        wire::push_log(&mut body, record);
        if body.len() > limit && count > 0 {
            // This record opens the next frame.
            let next = body.split_off(mark);
            write_frame(out, &body, count, std::mem::take(&mut dropped), max_frame)?;
            body = next;
            count = 0;
        }
        count += 1;
    }
    if count > 0 || dropped > 0 {
        write_frame(out, &body, count, dropped, max_frame)?;
    }
    Ok(())
}

fn write_frame<W: Write + ?Sized>(
    mut out: &mut W,
    body: &[u8],
    records: u32,
    dropped: u64,
    max_frame: usize,
) -> Result<(), ProtocolError> {
    let header = wire::encode_header(&FromWorker::Log { records, dropped });
    wire::write_frame(&mut out, &header, body, max_frame)
}

/// The sending thread of a local worker.
fn send_loop(mut out: Box<dyn Write + Send>) {
    loop {
        {
            let mut buffer = lock(&BUFFER);
            while buffer.records.is_empty() && buffer.dropped == 0 {
                buffer = ARRIVED.wait(buffer).unwrap_or_else(|p| p.into_inner());
            }
        }
        // A task that logs in a loop has its records sent in batches.
        std::thread::sleep(GATHER);
        if send(&mut *out).is_err() || out.flush().is_err() {
            // The channel is gone; the serving thread sees it too.
            return;
        }
    }
}

/// The chunk and index of the item running now; `(0, 0)` if none is.
fn position() -> (u64, u32) {
    match PAGE.get() {
        Some(page) => {
            let running = page.read();
            if running.busy() {
                (running.chunk, running.item as u32)
            } else {
                (0, 0)
            }
        }
        None => (0, 0),
    }
}

fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

/// Cuts `text` to at most `max` bytes, at a character boundary, marking the cut.
fn clip(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

fn name(text: &str, max: usize) -> String {
    let mut text = text.to_owned();
    clip(&mut text, max);
    text
}

/// Keeps one record, or counts it as dropped if the buffer is full.
fn push(level: u8, meta: Origin<'_>, mut message: String) {
    let max_frame = MAX_FRAME.load(Ordering::Relaxed);
    clip(&mut message, MAX_MESSAGE.min(max_frame / 4));
    let max_name = MAX_NAME.min(max_frame / 32);
    let (chunk, item) = position();
    let record = LogRecord {
        level,
        target: name(meta.target, max_name),
        module_path: meta.module_path.map(|m| name(m, max_name)),
        file: meta.file.map(|f| name(f, max_name)),
        line: meta.line,
        message,
        chunk,
        item,
    };
    let size = record.message.len() + record.target.len();
    let wake = {
        let mut buffer = lock(&BUFFER);
        let wake = buffer.records.is_empty() && buffer.dropped == 0;
        if buffer.records.len() >= MAX_RECORDS || buffer.bytes + size > MAX_BYTES {
            buffer.dropped += 1;
        } else {
            buffer.bytes += size;
            buffer.records.push(record);
        }
        PENDING.fetch_add(1, Ordering::SeqCst);
        wake
    };
    if wake {
        ARRIVED.notify_one();
    }
}

/// Where a record was emitted.
struct Origin<'a> {
    target: &'a str,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
}

/// The worker's global `tracing` subscriber. Events only: spans are
/// disabled, so an event's spans are not forwarded.
struct Forward;

impl Subscriber for Forward {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        !meta.is_span() && enabled(from_level(*meta.level()))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(to_level(LEVEL.load(Ordering::Relaxed)).map_or(LevelFilter::OFF, LevelFilter::from))
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        // Never called: spans are disabled.
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let level = from_level(*meta.level());
        if !enabled(level) {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message;
        message.push_str(&text.fields);
        let origin = Origin {
            target: meta.target(),
            module_path: meta.module_path(),
            file: meta.file(),
            line: meta.line(),
        };
        push(level, origin, message);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// An event's message, then its other fields as ` name=value` (as
/// `tracing_subscriber::fmt` shows them).
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = if field.name() == "message" {
            write!(self.message, "{value:?}")
        } else {
            write!(self.fields, " {}={value:?}", field.name())
        };
    }
}

/// The worker's `log` logger.
struct ForwardLog;

static FORWARD_LOG: ForwardLog = ForwardLog;

impl log::Log for ForwardLog {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        // `log` numbers its levels as the wire does: Error = 1 .. Trace = 5.
        enabled(meta.level() as usize as u8)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let origin = Origin {
            target: record.target(),
            module_path: record.module_path(),
            file: record.file(),
            line: record.line(),
        };
        push(
            record.level() as usize as u8,
            origin,
            record.args().to_string(),
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        let mut text = "ééééé".to_owned(); // 10 bytes
        clip(&mut text, 6);
        assert_eq!(text, "é…");
        let mut short = "abc".to_owned();
        clip(&mut short, 6);
        assert_eq!(short, "abc");
    }

    #[test]
    fn frames_split_at_the_body_limit_and_carry_the_drop_count_once() {
        let record = LogRecord {
            level: wire::LOG_INFO,
            target: "t".into(),
            module_path: None,
            file: None,
            line: None,
            message: "x".repeat(1000),
            chunk: 1,
            item: 0,
        };
        let records = vec![record; 600]; // ~600 KB: three frames
        let mut out = Vec::new();
        write_frames(&mut out, &records, 7).expect("write to a Vec");
        let mut rest = &out[..];
        let (mut frames, mut got, mut dropped) = (0, 0, 0);
        let mut buf = Vec::new();
        while !rest.is_empty() {
            wire::read_frame(&mut rest, usize::MAX, &mut buf).expect("a frame");
            let (header, body) = wire::split_frame::<FromWorker>(&buf).expect("header");
            let FromWorker::Log {
                records,
                dropped: d,
            } = header
            else {
                panic!("not a log frame");
            };
            assert!(body.len() <= MAX_BODY);
            assert_eq!(
                wire::log_records(body).expect("body").len(),
                records as usize
            );
            frames += 1;
            got += records;
            dropped += d;
        }
        assert!(frames >= 3, "{frames}");
        assert_eq!((got, dropped), (600, 7));
    }
}
