//! The wire protocol between a pool and its workers.
//!
//! Every message is a *frame*: a little-endian `u32` length `N`, then `N`
//! bytes made of a postcard-encoded header ([`ToWorker`] or [`FromWorker`])
//! followed by a raw body. The length is checked against a limit before any
//! buffer is allocated.
//!
//! Bodies carry items, so that a chunk of a thousand calls is one frame:
//!
//! - an arguments body is a sequence of `u32 length ++ postcard(Args)`;
//! - a results body is a sequence of `u8 tag ++ u32 length ++ bytes`, where
//!   tag [`ITEM_OK`] carries `postcard(Output)` and tag [`ITEM_FAILED`] a
//!   `postcard(TaskFailure)`;
//! - a log body (of [`FromWorker::Log`]) is a sequence of
//!   `u32 length ++ postcard(LogRecord)`, as an arguments body is;
//! - the body of [`ToWorker::Hello`] is one byte, the most verbose level of
//!   log records the pool wants from the worker ([`LOG_OFF`] ..
//!   [`LOG_TRACE`]; an empty body means [`LOG_OFF`]), then optionally a
//!   byte of flags ([`HELLO_PULL_RESULTS`]).

use std::io::{self, IoSlice, Read, Write};

use serde::{Deserialize, Serialize};

use crate::encode::{EncodeError, encode_into, encode_limited};
use crate::error::{ProtocolError, TaskFailure};

/// The version both sides must speak; checked in the handshake.
pub const PROTOCOL_VERSION: u32 = 4;

/// The default maximum frame size: 1 GiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// Tag of an item that succeeded.
pub const ITEM_OK: u8 = 0;
/// Tag of an item that failed.
pub const ITEM_FAILED: u8 = 1;

/// A flag of a [`ToWorker::Hello`] body's second byte: the pool reads
/// large results straight from the worker's memory ([`FromWorker::Pull`]).
pub const HELLO_PULL_RESULTS: u8 = 1;

/// The first byte of every encoded [`FromWorker::Pull`] header: a reader
/// can tell such a frame without decoding it.
pub const PULL_TAG: u8 = 5;

/// No log records: the level of a [`ToWorker::Hello`] body that wants none.
pub const LOG_OFF: u8 = 0;
/// Level of error records ([`LogRecord::level`]).
pub const LOG_ERROR: u8 = 1;
/// Level of warning records.
pub const LOG_WARN: u8 = 2;
/// Level of informational records.
pub const LOG_INFO: u8 = 3;
/// Level of debug records.
pub const LOG_DEBUG: u8 = 4;
/// Level of trace records, the most verbose.
pub const LOG_TRACE: u8 = 5;

/// Frames a pool sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// First frame: the worker answers [`FromWorker::Ready`].
    Hello {
        /// [`PROTOCOL_VERSION`] of the parent (the first field, in every version).
        protocol: u32,
        /// The parent's registry fingerprint.
        fingerprint: u64,
        /// The largest frame the worker may send or accept.
        max_frame: u64,
        /// The most resident memory, in bytes, the worker may hold after
        /// an item before it retires ([`FromWorker::Retiring`]).
        max_memory: Option<u64>,
    },
    /// Run `items` calls of task `task`; the body holds their arguments.
    Run {
        /// Chunk id, echoed in the results.
        chunk: u64,
        /// [`crate::Task::ID`].
        task: u64,
        /// Number of items in the body.
        items: u32,
        /// How many more times to run an item that panics before reporting it.
        panic_retries: u32,
        /// A timeout watches these items: record each one's start time.
        timed: bool,
    },
    /// The body of the next frame, a [`ToWorker::Run`] with an empty
    /// body, is not in it: it is `len` bytes from offset 4096 of the
    /// memfd `fd` of process `pid` (`/proc/<pid>/fd/<fd>`), whose first
    /// page names it `id`. Large chunks go so, through no socket.
    Mapped {
        /// The process holding the memfd (the pool's).
        pid: u32,
        /// Its descriptor number there.
        fd: i32,
        /// The id its first page must hold.
        id: u64,
        /// The body's length in bytes.
        len: u64,
    },
    /// Run the initializer `task` once; the body holds one item.
    Init {
        /// [`crate::Task::ID`].
        task: u64,
    },
    /// Exit cleanly.
    Exit,
}

/// Frames a worker sends to its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Answer to [`ToWorker::Hello`].
    Ready {
        /// [`PROTOCOL_VERSION`] of the worker.
        protocol: u32,
        /// The worker's registry fingerprint.
        fingerprint: u64,
        /// The worker's process id.
        pid: u32,
    },
    /// Results of items `first .. first + count` of chunk `chunk`; the body
    /// holds them. A chunk's results may come in several frames.
    Results {
        /// Chunk id.
        chunk: u64,
        /// Index within the chunk of the first result in the body.
        first: u32,
        /// Number of results in the body.
        count: u32,
    },
    /// The initializer ran; on success the body holds its encoded result.
    InitDone {
        /// Why it failed, if it did.
        failure: Option<TaskFailure>,
    },
    /// The worker runs nothing more and exits once this frame is sent: the
    /// results of every item it finished came before it, and the chunks it
    /// holds that it did not finish are the pool's to run elsewhere.
    Retiring {
        /// Why.
        reason: Retire,
    },
    /// Log records emitted in the worker; the body holds `records` of them.
    /// Sent before the results of the items that emitted them.
    Log {
        /// Number of records in the body.
        records: u32,
        /// Records the worker dropped since its previous `Log` frame, its
        /// buffer being full.
        dropped: u64,
    },
    /// A large [`FromWorker::Results`] frame is not in the channel: it is
    /// `header_len` bytes at `header_at` then `body_len` bytes at `body_at`
    /// in the worker's memory, for the pool to read there
    /// (`process_vm_readv`). Sent only to a pool whose handshake set
    /// [`HELLO_PULL_RESULTS`]. The worker then waits, touching neither, for
    /// the pool to answer through the progress page they share: `seq` once
    /// it has the frame, or `seq` with the high bit set if it could not
    /// read it (the worker then sends the frame through the channel).
    Pull {
        /// Address of the frame's header in the worker.
        header_at: u64,
        /// Its length.
        header_len: u32,
        /// Address of the frame's body in the worker.
        body_at: u64,
        /// Its length.
        body_len: u64,
        /// This pull's number (below 2^31, never 0).
        seq: u32,
    },
}

/// Why a worker retires on its own ([`FromWorker::Retiring`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retire {
    /// Its resident memory was above the bound it was given
    /// ([`ToWorker::Hello`]'s `max_memory`) after an item.
    Memory {
        /// Resident memory, in bytes, when it was measured.
        resident: u64,
        /// The bound, in bytes.
        limit: u64,
    },
}

/// One `tracing` event or `log` record emitted in a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// [`LOG_ERROR`] .. [`LOG_TRACE`].
    pub level: u8,
    /// The target it was emitted with (by default its module path).
    pub target: String,
    /// The module it was emitted in, when known.
    pub module_path: Option<String>,
    /// The source file it was emitted in, when known.
    pub file: Option<String>,
    /// The line in `file`, when known.
    pub line: Option<u32>,
    /// The message, followed by the event's other fields as ` name=value`.
    pub message: String,
    /// The chunk whose item was running when it was emitted; 0 when none
    /// was (between chunks, in the initializer).
    pub chunk: u64,
    /// The index in `chunk` of that item.
    pub item: u32,
}

/// Encodes a frame header.
pub fn encode_header<H: Serialize>(header: &H) -> Vec<u8> {
    // Headers are plain enums of integers: encoding cannot fail.
    postcard::to_stdvec(header).unwrap_or_default()
}

/// Writes one frame (header then body) with as few system calls as possible.
pub fn write_frame(
    out: &mut impl Write,
    header: &[u8],
    body: &[u8],
    max: usize,
) -> Result<(), ProtocolError> {
    let size = header.len() + body.len();
    if size > max || size > u32::MAX as usize {
        return Err(ProtocolError::TooLarge {
            size,
            limit: max.min(u32::MAX as usize),
        });
    }
    let len = (size as u32).to_le_bytes();
    let mut parts = [IoSlice::new(&len), IoSlice::new(header), IoSlice::new(body)];
    let mut parts: &mut [IoSlice<'_>] = &mut parts;
    while !parts.is_empty() {
        match out.write_vectored(parts) {
            Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ProtocolError::Io(err)),
        }
    }
    Ok(())
}

/// Frames up to this size are read into a zero-filled buffer (cheap at
/// this size); larger ones straight into spare capacity.
const SMALL_FRAME: usize = 64 * 1024;

/// Reads one frame into `buf` (replacing its contents).
///
/// The announced length is checked against `max` before `buf` grows.
pub fn read_frame(
    input: &mut impl Read,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut len = [0u8; 4];
    let got = read_full(input, &mut len)?;
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < len.len() {
        return Err(ProtocolError::Truncated {
            expected: len.len(),
            got,
        });
    }
    let size = u32::from_le_bytes(len) as usize;
    if size > max {
        return Err(ProtocolError::TooLarge { size, limit: max });
    }
    buf.clear();
    if size <= SMALL_FRAME {
        // Small frames (tiny items, one chunk of them): one plain read.
        buf.resize(size, 0);
        let got = read_full(input, buf)?;
        if got < size {
            return Err(ProtocolError::Truncated {
                expected: size,
                got,
            });
        }
        return Ok(());
    }
    // Read into the buffer's spare capacity: nothing is zero-filled first
    // (a 16 MiB frame would be written twice).
    buf.reserve_exact(size);
    let got = input
        .take(size as u64)
        .read_to_end(buf)
        .map_err(ProtocolError::Io)?;
    if got < size {
        return Err(ProtocolError::Truncated {
            expected: size,
            got,
        });
    }
    Ok(())
}

/// Whether `buf` starts with a whole frame: its length prefix and all the
/// bytes it announces.
pub fn holds_frame(buf: &[u8]) -> bool {
    match buf.first_chunk::<4>() {
        Some(len) => buf.len() - 4 >= u32::from_le_bytes(*len) as usize,
        None => false,
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ProtocolError::Io(err)),
        }
    }
    Ok(done)
}

/// Splits a frame into its decoded header and its body.
pub fn split_frame<'a, H: Deserialize<'a>>(
    frame: &'a [u8],
) -> Result<(H, &'a [u8]), ProtocolError> {
    postcard::take_from_bytes(frame)
        .map_err(|err| ProtocolError::Malformed(format!("bad header: {err}")))
}

/// Appends one item to an arguments body: `u32 length ++ postcard(value)`;
/// an item whose encoding would take more than `limit` bytes is refused
/// ([`EncodeError::TooLarge`]) without being encoded whole.
#[inline]
pub fn push_arg<T: Serialize>(
    body: &mut Vec<u8>,
    value: &T,
    limit: usize,
) -> Result<(), EncodeError> {
    let mark = body.len();
    body.extend_from_slice(&[0; 4]);
    match encode_limited(body, value, limit) {
        Ok(()) => {
            let len = (body.len() - mark - 4) as u32;
            body[mark..mark + 4].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        Err(err) => {
            body.truncate(mark);
            Err(err)
        }
    }
}

/// Starts a result item in a results body; returns the mark to pass to
/// [`finish_result`] once the payload was appended.
#[inline]
pub fn begin_result(body: &mut Vec<u8>) -> usize {
    let mark = body.len();
    body.extend_from_slice(&[ITEM_OK, 0, 0, 0, 0]);
    mark
}

/// Completes a result item begun at `mark` with `tag`.
#[inline]
pub fn finish_result(body: &mut [u8], mark: usize, tag: u8) {
    let len = (body.len() - mark - 5) as u32;
    body[mark] = tag;
    body[mark + 1..mark + 5].copy_from_slice(&len.to_le_bytes());
}

/// Appends a failed result item.
pub fn push_failure(body: &mut Vec<u8>, failure: &TaskFailure) {
    let mark = begin_result(body);
    // TaskFailure holds strings and options only: encoding cannot fail.
    let _ = encode_into(body, failure);
    finish_result(body, mark, ITEM_FAILED);
}

/// Counts the failed items of a results body without decoding them;
/// `None` if the body is malformed.
pub fn count_failed(body: &[u8]) -> Option<usize> {
    let mut rest = body;
    let mut failed = 0;
    while !rest.is_empty() {
        let head = rest.get(..5)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if head[0] == ITEM_FAILED {
            failed += 1;
        }
        rest = rest.get(5 + len..)?;
    }
    Some(failed)
}

/// Iterates the items of an arguments body.
pub struct Items<'a> {
    rest: &'a [u8],
}

impl<'a> Items<'a> {
    /// Reads the items of `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Items { rest: body }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            let left = self.rest.len();
            self.rest = &[];
            return Err(ProtocolError::Malformed(format!(
                "an item of {n} bytes overruns its body ({left} left)"
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next argument item.
    #[inline]
    pub fn next_arg(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }

    /// The next result item: `Ok(output bytes)` or the decoded failure.
    #[inline]
    pub fn next_result(&mut self) -> Result<Result<&'a [u8], TaskFailure>, ProtocolError> {
        let head = self.take(5)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let data = self.take(len)?;
        match head[0] {
            ITEM_OK => Ok(Ok(data)),
            tag => failed_result(tag, data),
        }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// A result item that is not a success: its decoded failure.
#[cold]
fn failed_result(tag: u8, data: &[u8]) -> Result<Result<&[u8], TaskFailure>, ProtocolError> {
    match tag {
        ITEM_FAILED => crate::decode::from_bytes(data)
            .map(Err)
            .map_err(|err| ProtocolError::Malformed(format!("bad failure record: {err}"))),
        tag => Err(ProtocolError::Malformed(format!(
            "unknown result tag {tag}"
        ))),
    }
}

/// Appends one record to a log body; returns its encoded size.
pub fn push_log(body: &mut Vec<u8>, record: &LogRecord) -> usize {
    let mark = body.len();
    body.extend_from_slice(&[0; 4]);
    // A record holds strings and integers only: encoding cannot fail.
    let _ = encode_into(body, record);
    let len = (body.len() - mark - 4) as u32;
    body[mark..mark + 4].copy_from_slice(&len.to_le_bytes());
    body.len() - mark
}

/// Decodes the records of a log body; an error if it is malformed.
pub fn log_records(body: &[u8]) -> Result<Vec<LogRecord>, ProtocolError> {
    let mut items = Items::new(body);
    let mut records = Vec::new();
    while !items.is_empty() {
        let item = items.next_arg()?;
        let record = crate::decode::from_bytes(item)
            .map_err(|err| ProtocolError::Malformed(format!("bad log record: {err}")))?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(header: &ToWorker, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, &encode_header(header), body, DEFAULT_MAX_FRAME)
            .expect("write to a Vec");
        out
    }

    #[test]
    fn a_pull_header_starts_with_its_tag() {
        let header = encode_header(&FromWorker::Pull {
            header_at: 0x7f00_0000_0000,
            header_len: 9,
            body_at: 0x7f00_0001_0000,
            body_len: 1 << 20,
            seq: 3,
        });
        assert_eq!(header.first(), Some(&PULL_TAG));
        for other in [
            FromWorker::Results {
                chunk: 1,
                first: 0,
                count: 1,
            },
            FromWorker::InitDone { failure: None },
        ] {
            assert_ne!(encode_header(&other).first(), Some(&PULL_TAG));
        }
    }

    #[test]
    fn frame_round_trip() {
        let mut body = Vec::new();
        push_arg(&mut body, &(2u64, 3u32), usize::MAX).expect("encode");
        push_arg(&mut body, &(4u64, 1u32), usize::MAX).expect("encode");
        let header = ToWorker::Run {
            chunk: 7,
            task: 9,
            items: 2,
            panic_retries: 0,
            timed: false,
        };
        let bytes = frame(&header, &body);
        let mut buf = Vec::new();
        read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME, &mut buf).expect("read");
        let (got, rest): (ToWorker, &[u8]) = split_frame(&buf).expect("split");
        assert_eq!(got, header);
        let mut items = Items::new(rest);
        let a: (u64, u32) = postcard::from_bytes(items.next_arg().expect("item")).expect("decode");
        let b: (u64, u32) = postcard::from_bytes(items.next_arg().expect("item")).expect("decode");
        assert_eq!((a, b), ((2, 3), (4, 1)));
        assert!(items.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let bytes = u32::MAX.to_le_bytes();
        let mut buf = Vec::new();
        let err = read_frame(&mut &bytes[..], 1024, &mut buf).expect_err("too large");
        assert!(
            matches!(err, ProtocolError::TooLarge { size, limit: 1024 } if size == u32::MAX as usize)
        );
        assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn truncated_and_closed_streams_are_errors() {
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut &[][..], 64, &mut buf),
            Err(ProtocolError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut &[5u8, 0][..], 64, &mut buf),
            Err(ProtocolError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        assert!(matches!(
            read_frame(&mut &[5u8, 0, 0, 0, 1][..], 64, &mut buf),
            Err(ProtocolError::Truncated {
                expected: 5,
                got: 1
            })
        ));
    }

    #[test]
    fn garbage_bodies_are_errors() {
        let mut items = Items::new(&[200, 0, 0, 0, 1]);
        assert!(items.next_arg().is_err());
        let mut results = Items::new(&[9, 0, 0, 0, 0]);
        assert!(results.next_result().is_err());
        assert!(split_frame::<ToWorker>(&[250, 250, 250]).is_err());
    }

    #[test]
    fn log_records_round_trip() {
        let record = LogRecord {
            level: LOG_WARN,
            target: "app::db".into(),
            module_path: Some("app::db".into()),
            file: Some("src/db.rs".into()),
            line: Some(12),
            message: "slow query ms=300".into(),
            chunk: 4,
            item: 2,
        };
        let mut body = Vec::new();
        let size = push_log(&mut body, &record);
        assert_eq!(size, body.len());
        push_log(
            &mut body,
            &LogRecord {
                level: LOG_TRACE,
                ..record.clone()
            },
        );
        let got = log_records(&body).expect("well formed");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], record);
        assert_eq!(got[1].level, LOG_TRACE);
        assert!(log_records(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn results_round_trip() {
        let mut body = Vec::new();
        let mark = begin_result(&mut body);
        encode_into(&mut body, &42u64).expect("encode");
        finish_result(&mut body, mark, ITEM_OK);
        let failure = TaskFailure::UnknownTask { id: 3 };
        push_failure(&mut body, &failure);
        let mut items = Items::new(&body);
        let ok = items.next_result().expect("well formed").expect("ok item");
        assert_eq!(postcard::from_bytes::<u64>(ok).expect("decode"), 42);
        assert_eq!(items.next_result().expect("well formed"), Err(failure));
        assert!(items.is_empty());
    }
}
