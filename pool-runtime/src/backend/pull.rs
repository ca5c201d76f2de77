//! Large results read straight from a local worker's memory, instead of
//! through the socket.
//!
//! A worker whose results frame takes [`THRESHOLD`] bytes or more sends, in
//! its place, a small [`FromWorker::Pull`] frame naming where the frame's
//! header and body are in its memory, and waits. The worker's reader thread
//! here copies them with one `process_vm_readv` into the buffer the frame
//! then lives in (as if it had been read from the socket) and answers
//! through the progress page the two share; the worker goes on. One copy,
//! from the worker's buffer into this process's, where the socket makes
//! two (into the kernel and out of it) and the worker's `write` waits for
//! the reader at every socket buffer's worth.
//!
//! The worker waits for the answer, so the bytes cannot change while they
//! are read; if the worker dies meanwhile, the read fails and its end is
//! the usual death: the items whose results were not read are requeued or
//! fail with it. If this process may not read its workers' memory
//! (`process_vm_readv` refused: a seccomp filter, a Yama policy, a worker
//! made non-dumpable), the worker is told so, sends the frame through the
//! socket, and later workers are not asked to pull (see [`available`]).
//!
//! Only workers whose channel the pool reads itself pull: not an MPI rank's
//! local workers, whose frames the rank forwards as they come
//! ([`Launch::pull_results`](super::handshake::Launch)).
//!
//! [`FromWorker::Pull`]: pool_core::wire::FromWorker::Pull

use std::sync::atomic::{AtomicBool, Ordering};

use pool_core::ProtocolError;
use pool_core::wire::{self, FromWorker};

use super::shm::Progress;
use crate::logging::pool_event;

/// Results frames of at least this many bytes are pulled (as arguments of
/// that size go through shared memory, [`super::slab::THRESHOLD`]).
pub(crate) const THRESHOLD: usize = super::slab::THRESHOLD;

/// Cleared once this process was refused reading a worker's memory.
static AVAILABLE: AtomicBool = AtomicBool::new(true);

/// Whether new workers are asked to leave large results to be pulled.
pub(crate) fn available() -> bool {
    AVAILABLE.load(Ordering::Relaxed)
}

/// `frame` as the pool handles it: a [`FromWorker::Pull`] frame is replaced
/// by the frame it names, read from the worker `pid`'s memory. `None`: it
/// could not be read; the worker, told so on `page`, sends it through the
/// channel next (or is dead).
pub(crate) fn resolve(
    frame: Vec<u8>,
    pid: u32,
    page: &Progress,
    max_frame: usize,
) -> Result<Option<Vec<u8>>, ProtocolError> {
    if frame.first() != Some(&wire::PULL_TAG) {
        return Ok(Some(frame));
    }
    let (
        FromWorker::Pull {
            header_at,
            header_len,
            body_at,
            body_len,
            seq,
        },
        _,
    ) = wire::split_frame::<FromWorker>(&frame)?
    else {
        return Err(ProtocolError::Unexpected("a frame tagged as a pull"));
    };
    let size = usize::try_from(body_len)
        .ok()
        .and_then(|body| body.checked_add(header_len as usize))
        .filter(|&size| size <= max_frame)
        .ok_or(ProtocolError::TooLarge {
            size: usize::try_from(body_len).unwrap_or(usize::MAX),
            limit: max_frame,
        })?;
    let parts = [
        (header_at, header_len as usize),
        (body_at, size - header_len as usize),
    ];
    match read_from(pid, &parts, size) {
        Ok(bytes) => {
            page.answer_pull(seq, true);
            Ok(Some(bytes))
        }
        Err(err) => {
            if matches!(
                err.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
            ) {
                AVAILABLE.store(false, Ordering::Relaxed);
                let error = err.to_string();
                pool_event!(
                    DEBUG,
                    pid,
                    error,
                    "cannot read a worker's memory: large results go through the socket"
                );
            }
            page.answer_pull(seq, false);
            Ok(None)
        }
    }
}

/// Reads `parts` (address, length) of process `pid`'s memory, `size` bytes
/// in all, into a new buffer of exactly that capacity.
fn read_from(pid: u32, parts: &[(u64, usize)], size: usize) -> std::io::Result<Vec<u8>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("bad pid"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(size);
    let mut done = 0usize;
    while done < size {
        // The remote pieces not read yet.
        let mut skip = done;
        let remote: Vec<libc::iovec> = parts
            .iter()
            .filter_map(|&(at, len)| {
                let from = skip.min(len);
                skip -= from;
                (from < len).then(|| libc::iovec {
                    iov_base: (at as usize + from) as *mut libc::c_void,
                    iov_len: len - from,
                })
            })
            .collect();
        let local = libc::iovec {
            // SAFETY: within the buffer's capacity (`done < size`).
            iov_base: unsafe { buf.as_mut_ptr().add(done) }.cast(),
            iov_len: size - done,
        };
        // SAFETY: `local` is `size - done` writable bytes of `buf`'s spare
        // capacity; the remote addresses are only read by the kernel, in
        // the other process, which checks them.
        let n = unsafe {
            libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(std::io::Error::other("the worker's memory ended early")),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    // SAFETY: the kernel wrote all `size` bytes.
    unsafe { buf.set_len(size) };
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pull of `header` and `body` where they are in this process.
    fn pull_frame(header: &[u8], body: &[u8], seq: u32) -> Vec<u8> {
        let header_at = header.as_ptr() as u64;
        pull_at(
            header_at,
            header.len(),
            body.as_ptr() as u64,
            body.len(),
            seq,
        )
    }

    /// A pull of bytes at these addresses, mapped or not.
    fn pull_at(
        header_at: u64,
        header_len: usize,
        body_at: u64,
        body_len: usize,
        seq: u32,
    ) -> Vec<u8> {
        wire::encode_header(&FromWorker::Pull {
            header_at,
            header_len: header_len as u32,
            body_at,
            body_len: body_len as u64,
            seq,
        })
    }

    #[test]
    fn a_pull_becomes_the_frame_it_names_and_is_answered() {
        let page = Progress::create().expect("a page");
        let header = wire::encode_header(&FromWorker::Results {
            chunk: 4,
            first: 0,
            count: 1,
        });
        let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let frame = pull_frame(&header, &body, 7);
        let got = resolve(frame, std::process::id(), &page, 2 << 20)
            .expect("a good frame")
            .expect("read");
        assert_eq!(&got[..header.len()], &header[..]);
        assert!(got[header.len()..] == body[..]);
        assert_eq!(got.capacity(), header.len() + body.len());
        assert_eq!(page.wait_pulled(7, || false), Some(true));
    }

    #[test]
    fn other_frames_pass_unchanged() {
        let page = Progress::create().expect("a page");
        let frame = wire::encode_header(&FromWorker::InitDone { failure: None });
        let got = resolve(frame.clone(), std::process::id(), &page, 1 << 20);
        assert_eq!(got.expect("good").expect("passed"), frame);
    }

    #[test]
    fn a_pull_that_cannot_be_read_is_answered_as_failed() {
        let page = Progress::create().expect("a page");
        // An address no process maps (the first page).
        let frame = pull_at(16, 8, 4096, 300 << 10, 3);
        let got = resolve(frame, std::process::id(), &page, 1 << 20).expect("a good frame");
        assert!(got.is_none());
        assert_eq!(
            page.wait_pulled(3, || false),
            Some(false),
            "answered as failed"
        );
    }

    #[test]
    fn a_pull_above_the_frame_limit_is_a_protocol_error() {
        let page = Progress::create().expect("a page");
        let body = vec![0u8; 4096];
        let frame = pull_frame(&[1, 2], &body, 1);
        let err = resolve(frame, std::process::id(), &page, 1024).expect_err("too large");
        assert!(
            matches!(err, ProtocolError::TooLarge { limit: 1024, .. }),
            "{err:?}"
        );
    }
}
