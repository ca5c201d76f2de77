//! Large chunk bodies through shared memory instead of the socket.
//!
//! A chunk whose encoded arguments take [`THRESHOLD`] bytes or more is
//! copied, once, into a *slab*: a memfd of the pool's process, mapped
//! there read-write. The worker is sent a [`ToWorker::Mapped`] frame
//! naming it (pid, descriptor number, id, length) before the chunk's
//! `Run` frame, which then carries no body; it opens the slab through
//! `/proc/<pid>/fd/<fd>` once it has claimed the chunk, maps it read-only,
//! decodes the items straight from the mapping, and unmaps it when the
//! chunk is done. The bytes cross no socket and are copied by no kernel.
//!
//! The pool's process owns every slab: a worker holds only a mapping, gone
//! with it. A slab lives as long as its chunk (the scheduler's copy of a
//! chunk in flight keeps it, so a worker never reads a slab the pool
//! reuses: a chunk taken back is skipped before its slab is opened), then
//! goes back to a small free list of this process, whose pages are already
//! allocated: the next large chunk is a plain `memcpy` into them. The free
//! list is emptied when a pool shuts down ([`trim`]).
//!
//! Only local workers get slabs (`/proc` of the pool's process must be
//! reachable); other backends send the same [`Body`] as bytes.
//!
//! [`ToWorker::Mapped`]: pool_core::wire::ToWorker::Mapped

use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pool_core::ProtocolError;
use pool_core::encode::{EncodeError, Output, encode_limited_to};
use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};
use serde::Serialize;

/// Bodies of at least this many bytes go through a slab.
pub(crate) const THRESHOLD: usize = 256 << 10;

/// The slab's name, as `/proc/<pid>/fd/<n>` shows it (`/memfd:` + name).
const NAME: &str = "pool-runtime-body";
const LINK: &[u8] = b"/memfd:pool-runtime-body";
/// The first page holds [`MAGIC`] and the slab's id; the body starts on
/// the second (page-aligned, so `f64`s and the like decode aligned).
const HEADER: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"poolslab");
/// The address space a slab reserves (its memfd is that long, but holds
/// pages only where it was written: shared memory is allocated on first
/// touch), so that a body can be encoded straight into it, its size
/// unknown until it is done; larger bodies get slabs of their size.
const RESERVE: usize = 1 << 30;
/// The free list keeps at most this many slabs, holding at most this many
/// bytes of written pages.
const FREE_SLABS: usize = 32;
const FREE_BYTES: usize = 512 << 20;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static FREE: Mutex<Vec<Slab>> = Mutex::new(Vec::new());

/// A memfd of this process, mapped read-write.
struct Slab {
    fd: OwnedFd,
    id: u64,
    ptr: NonNull<u8>,
    /// Bytes mapped, header included.
    mapped: usize,
    /// The most body bytes ever written to it: its pages held.
    used: usize,
}

// SAFETY: the mapping is plain memory owned by the slab; it is written
// only through `&mut Slab` (while it is not shared) and read through `&`.
unsafe impl Send for Slab {}
// SAFETY: as above.
unsafe impl Sync for Slab {}

impl Slab {
    fn capacity(&self) -> usize {
        self.mapped - HEADER
    }

    /// A new slab for at least `len` body bytes.
    fn create(len: usize) -> io::Result<Slab> {
        let mapped = HEADER + len.max(RESERVE);
        let fd = rustix::fs::memfd_create(NAME, MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, mapped as u64)?;
        // SAFETY: a fresh shared mapping at an address the kernel picks,
        // of a file exactly `mapped` bytes long that only this module
        // resizes (never, once created).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                mapped,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE,
                &fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let slab = Slab {
            fd,
            id,
            ptr,
            mapped,
            used: 0,
        };
        // SAFETY: the header page is mapped and written by nobody else.
        unsafe {
            let head = std::slice::from_raw_parts_mut(ptr.as_ptr(), 16);
            head[..8].copy_from_slice(&MAGIC.to_le_bytes());
            head[8..].copy_from_slice(&id.to_le_bytes());
        }
        Ok(slab)
    }

    /// A slab from the free list that holds `len` bytes (the one with the
    /// most pages already written, to be written again), or a new one.
    fn take(len: usize) -> io::Result<Slab> {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, s)| s.capacity() >= len)
            .max_by_key(|(_, s)| s.used)
            .map(|(at, _)| at);
        match best {
            Some(at) => Ok(free.swap_remove(at)),
            None => {
                drop(free);
                Slab::create(len)
            }
        }
    }

    /// Back to the free list, unless it is full (then the oldest go).
    fn give_back(self) {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        free.push(self);
        let mut bytes: usize = free.iter().map(|s| s.used).sum();
        let mut evicted = Vec::new();
        while free.len() > FREE_SLABS || (bytes > FREE_BYTES && !free.is_empty()) {
            let old = free.remove(0);
            bytes -= old.used;
            evicted.push(old);
        }
        drop(free);
        drop(evicted);
    }

    fn body_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.capacity());
        self.used = self.used.max(len);
        // SAFETY: `HEADER + len` bytes are mapped read-write, and `&mut
        // self` makes this the only reference into them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(HEADER), len) }
    }

    fn body(&self, len: usize) -> &[u8] {
        // SAFETY: as in `body_mut`; shared reads while nothing writes.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(HEADER), len.min(self.capacity()))
        }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: ptr and mapped came from `mmap` in `create`; no
        // reference into the mapping outlives the slab.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.mapped) };
    }
}

/// Drops the free slabs of this process (called when a pool shuts down,
/// so that an idle program holds no body memory).
pub(crate) fn trim() {
    let free = std::mem::take(&mut *FREE.lock().unwrap_or_else(|p| p.into_inner()));
    drop(free);
}

/// The encoded arguments of a chunk: in this process's heap, or in a slab
/// that local workers map.
pub(crate) struct Body(Repr);

enum Repr {
    Heap(Vec<u8>),
    Slab { slab: Option<Slab>, len: usize },
}

/// Where a slab body is, as a worker is told ([`ToWorker::Mapped`]).
///
/// [`ToWorker::Mapped`]: pool_core::wire::ToWorker::Mapped
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlabRef {
    pub(crate) fd: i32,
    pub(crate) id: u64,
    pub(crate) len: u64,
}

impl Body {
    /// No bytes (the body of a frame that has none).
    pub(crate) fn empty() -> Body {
        Body::heap(Vec::new())
    }

    /// Bytes kept on the heap.
    pub(crate) fn heap(bytes: Vec<u8>) -> Body {
        Body(Repr::Heap(bytes))
    }

    /// `bytes`, moved to a slab if they are large enough (and a slab can be
    /// had: else they stay on the heap, which only costs speed).
    pub(crate) fn for_local(bytes: Vec<u8>) -> Body {
        if bytes.len() < THRESHOLD {
            return Body::heap(bytes);
        }
        match Slab::take(bytes.len()) {
            Ok(mut slab) => {
                let len = bytes.len();
                slab.body_mut(len).copy_from_slice(&bytes);
                Body::in_slab(slab, len)
            }
            Err(err) => {
                tracing::debug!(error = %err, "no shared memory for a large chunk: it goes through the socket");
                Body::heap(bytes)
            }
        }
    }

    fn in_slab(slab: Slab, len: usize) -> Body {
        Body(Repr::Slab {
            slab: Some(slab),
            len,
        })
    }

    /// Where the body is, if it is in a slab.
    pub(crate) fn slab(&self) -> Option<SlabRef> {
        match &self.0 {
            Repr::Heap(_) => None,
            Repr::Slab { slab, len } => slab.as_ref().map(|s| SlabRef {
                fd: s.fd.as_raw_fd(),
                id: s.id,
                len: *len as u64,
            }),
        }
    }
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Heap(bytes) => bytes,
            Repr::Slab { slab, len } => slab.as_ref().map_or(&[][..], |s| s.body(*len)),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Repr::Slab { slab, .. } = &mut self.0
            && let Some(slab) = slab.take()
        {
            slab.give_back();
        }
    }
}

/// A chunk body encoded straight into a slab (no copy through the heap):
/// see [`Body::write_one`].
struct Writer {
    slab: Slab,
    len: usize,
    /// Bytes past the slab's end were dropped.
    overflowed: bool,
}

impl Output for Writer {
    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    #[inline]
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= self.slab.capacity() {
            // SAFETY: `HEADER + end` bytes are mapped read-write, and the
            // writer owns the slab: nothing else reads or writes them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.slab.ptr.as_ptr().add(HEADER + self.len),
                    bytes.len(),
                );
            }
        } else {
            self.overflowed = true;
        }
        self.len = end;
    }
}

impl Body {
    /// A body of the one item `value` (`u32 length ++ postcard(value)`, as
    /// [`push_arg`](pool_core::wire::push_arg) writes it), encoded straight into a slab:
    /// `Ok(None)` if no slab could be had (encode it on the heap instead).
    /// An encoding of more than `limit` bytes is refused.
    pub(crate) fn write_one<T: Serialize>(
        value: &T,
        limit: usize,
    ) -> Result<Option<Body>, EncodeError> {
        let slab = match Slab::take(0) {
            Ok(slab) => slab,
            Err(err) => {
                tracing::debug!(error = %err, "no shared memory for a large chunk: it goes through the socket");
                return Ok(None);
            }
        };
        let mut out = Writer {
            slab,
            len: 0,
            overflowed: false,
        };
        out.extend_from_slice(&[0; 4]);
        let limit = limit.min(u32::MAX as usize);
        let room = limit.min(out.slab.capacity() - 4);
        let encoded = match encode_limited_to(&mut out, value, room) {
            Ok(()) if out.overflowed || out.len - 4 > room => {
                Err(EncodeError::TooLarge { limit: room })
            }
            other => other,
        };
        if let Err(err) = encoded {
            out.slab.give_back();
            return match err {
                // Larger than a slab, not than the limit: on the heap.
                EncodeError::TooLarge { .. } if room < limit => Ok(None),
                EncodeError::TooLarge { .. } => Err(EncodeError::TooLarge { limit }),
                err => Err(err),
            };
        }
        let len = out.len;
        let head = ((len - 4) as u32).to_le_bytes();
        let body = out.slab.body_mut(len);
        body[..4].copy_from_slice(&head);
        if len < THRESHOLD {
            // Small after all: through the socket, like any small chunk.
            let bytes = body.to_vec();
            out.slab.give_back();
            return Ok(Some(Body::heap(bytes)));
        }
        Ok(Some(Body::in_slab(out.slab, len)))
    }
}

/// A worker's read-only mapping of a slab's body; unmapped when dropped.
pub(crate) struct Mapped {
    ptr: NonNull<u8>,
    mapped: usize,
    len: usize,
}

impl Mapped {
    /// Opens and maps the slab `slab` of process `pid`, checking that it is
    /// the one named (a slab, with that id, long enough).
    pub(crate) fn open(pid: u32, slab: &SlabRef) -> Result<Mapped, ProtocolError> {
        let path = format!("/proc/{pid}/fd/{}", slab.fd);
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            ProtocolError::Malformed(format!(
                "the chunk's arguments are in shared memory the worker cannot read ({what} {path}: {err})"
            ))
        };
        // The link first: only one of our memfds is ever opened.
        let link = rustix::fs::readlink(&path, Vec::new()).map_err(|e| fail("reading", &e))?;
        if !link.as_bytes().starts_with(LINK) {
            return Err(fail("checking", &"not a chunk body"));
        }
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = rustix::fs::open(&path, flags, Mode::empty()).map_err(|e| fail("opening", &e))?;
        let len = usize::try_from(slab.len).map_err(|e| fail("sizing", &e))?;
        let mapped = HEADER + len;
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| fail("reading", &e))?
            .st_size;
        if (size as u64) < mapped as u64 {
            return Err(fail("checking", &"shorter than its body"));
        }
        // SAFETY: a fresh read-only shared mapping at an address the kernel
        // picks, within the file's length (checked above; the pool never
        // shrinks a slab while a chunk of it is in flight).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                mapped,
                ProtFlags::READ,
                MapFlags::SHARED | MapFlags::POPULATE,
                &fd,
                0,
            )
        }
        .map_err(|e| fail("mapping", &e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| fail("mapping", &"null"))?;
        let map = Mapped { ptr, mapped, len };
        // SAFETY: the first 16 bytes are mapped (HEADER > 16).
        let head = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), 16) };
        if head[..8] != MAGIC.to_le_bytes() || head[8..] != slab.id.to_le_bytes() {
            return Err(fail("checking", &"another slab has this number"));
        }
        Ok(map)
    }

    /// The body's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `HEADER + len` bytes are mapped for the life of `self`;
        // the pool does not write them while the chunk is in flight.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(HEADER), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: ptr and mapped came from `mmap` in `open`; no reference
        // into the mapping outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.mapped) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_stay_on_the_heap() {
        let body = Body::for_local(vec![7; 100]);
        assert!(body.slab().is_none());
        assert_eq!(&body[..], &[7; 100][..]);
    }

    #[test]
    fn a_large_body_is_read_back_through_its_slab_and_the_slab_is_reused() {
        let bytes: Vec<u8> = (0..THRESHOLD + 12_345).map(|i| (i % 251) as u8).collect();
        let body = Body::for_local(bytes.clone());
        let slab = body.slab().expect("a large body goes to a slab");
        assert_eq!(slab.len, bytes.len() as u64);
        assert_eq!(&body[..], &bytes[..]);
        let mapped = Mapped::open(std::process::id(), &slab).expect("maps");
        assert_eq!(mapped.bytes(), &bytes[..]);
        drop(mapped);
        drop(body);
        let again = Body::for_local(vec![1; THRESHOLD]);
        assert_eq!(
            again.slab().map(|s| s.id),
            Some(slab.id),
            "the free slab is reused"
        );
        let stale = Mapped::open(
            std::process::id(),
            &SlabRef {
                id: slab.id + 1000,
                ..slab
            },
        );
        assert!(
            matches!(&stale, Err(ProtocolError::Malformed(m)) if m.contains("another slab")),
            "a wrong id is refused"
        );
        drop(again);
        trim();
    }
}
