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
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pool_core::encode::{EncodeError, Output, encode_limited_to};
use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};
use serde::Serialize;

/// Bodies of at least this many bytes go through a slab.
pub(crate) const THRESHOLD: usize = 256 << 10;

/// The slab's name, as `/proc/<pid>/fd/<n>` shows it (`/memfd:` + name).
const NAME: &str = "pool-runtime-body";
const LINK: &[u8] = b"/memfd:pool-runtime-body";
/// The first page holds [`MAGIC`], the slab's id and, at [`DROPPED_AT`],
/// [`DROPPED`] once this process lets go of it; the body starts on the
/// second page (page-aligned, so `f64`s and the like decode aligned).
const HEADER: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"poolslab");
const DROPPED_AT: usize = 16;
const DROPPED: u64 = u64::from_le_bytes(*b"dropped!");
/// A new slab's capacity, at least; a body encoded straight into a slab
/// grows it (the memfd is lengthened and remapped) as it needs.
const INITIAL: usize = 4 << 20;
/// The free list keeps at most this many slabs, holding at most this many
/// bytes of written pages.
const FREE_SLABS: usize = 8;
const FREE_BYTES: usize = 512 << 20;
/// Slabs alive at once in this process, at most (each holds a descriptor
/// while its chunk waits): beyond, chunks go through the socket.
const MAX_LIVE: usize = 64;

/// Slabs alive now (in use or free).
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether workers can open this process's slabs: `/proc/<pid>/fd` of a
/// process that is not dumpable (set by `prctl`, setuid or capabilities)
/// is readable by root only.
fn reachable() -> bool {
    use rustix::process::{DumpableBehavior, dumpable_behavior, geteuid};
    geteuid().is_root() || matches!(dumpable_behavior(), Ok(DumpableBehavior::Dumpable))
}

/// How many slabs may be alive: [`MAX_LIVE`], and at most an eighth of
/// the descriptor limit, so that workers can still be started.
fn live_limit() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let by_fds = nofile.map_or(usize::MAX, |n| usize::try_from(n / 8).unwrap_or(usize::MAX));
    MAX_LIVE.min(by_fds)
}

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
        if LIVE.load(Ordering::Relaxed) >= live_limit() {
            return Err(io::Error::other(
                "as many slabs are alive as descriptors allow",
            ));
        }
        let mapped = HEADER + len.max(INITIAL).next_multiple_of(HEADER);
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
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(1, Ordering::Relaxed);
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
        if !reachable() {
            return Err(io::Error::other(
                "this process is not dumpable: workers cannot open its /proc/<pid>/fd",
            ));
        }
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

    /// Grows it to at least `need` body bytes (doubling), keeping what it
    /// holds; the mapping may move.
    fn grow(&mut self, need: usize) -> io::Result<()> {
        let cap = need.max(self.capacity() * 2).next_multiple_of(HEADER);
        rustix::fs::ftruncate(&self.fd, (HEADER + cap) as u64)?;
        // SAFETY: the old mapping is this slab's own, `mapped` bytes long;
        // no reference into it is alive (`&mut self`); the file is now
        // `HEADER + cap` bytes long, so every page of the new size is backed.
        let ptr = unsafe {
            rustix::mm::mremap(
                self.ptr.as_ptr().cast(),
                self.mapped,
                HEADER + cap,
                rustix::mm::MremapFlags::MAYMOVE,
            )
        }?;
        self.ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mremap: null"))?;
        self.mapped = HEADER + cap;
        Ok(())
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
        LIVE.fetch_sub(1, Ordering::Relaxed);
        // Workers that keep it mapped let go of it at their next chunk.
        // SAFETY: the first page is mapped read-write; the word is aligned
        // and accessed only atomically.
        let dropped = unsafe { &*self.ptr.as_ptr().add(DROPPED_AT).cast::<AtomicU64>() };
        dropped.store(DROPPED, Ordering::Release);
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

/// One item encoded as a chunk body of its own (`u32 length ++
/// postcard(value)`, as [`push_arg`](pool_core::wire::push_arg) writes it).
pub(crate) enum OneItem {
    /// On the heap: it stayed small, or no slab could be had.
    Heap(Vec<u8>),
    /// In a slab, written there once.
    Slab(Body),
}

/// Encodes on the heap until the encoding passes `spill_at` bytes, then
/// moves what it wrote into a slab and goes on there, growing the slab as
/// it needs: a value is serialized once, whatever its size, and a large
/// one is copied through the heap for its first `spill_at` bytes at most.
/// If no slab can be had or grown, it goes on on the heap.
struct Writer {
    heap: Vec<u8>,
    slab: Option<Slab>,
    len: usize,
    spill_at: usize,
    /// No slab could be had (or grown): the heap it is.
    heap_only: bool,
}

impl Writer {
    /// Moves the bytes written so far into a slab of at least `need` bytes.
    fn spill(&mut self, need: usize) {
        match Slab::take(need) {
            Ok(mut slab) => {
                let ok = need <= slab.capacity() || slab.grow(need).is_ok();
                if ok {
                    slab.body_mut(self.len)
                        .copy_from_slice(&self.heap[..self.len]);
                    self.heap = Vec::new();
                    self.slab = Some(slab);
                    return;
                }
                slab.give_back();
                self.heap_only = true;
            }
            Err(err) => {
                tracing::debug!(error = %err, "no shared memory for a large chunk: it goes through the socket");
                self.heap_only = true;
            }
        }
    }

    /// Back from the slab to the heap (it could not grow).
    fn unspill(&mut self) {
        if let Some(mut slab) = self.slab.take() {
            self.heap = slab.body_mut(self.len).to_vec();
            slab.give_back();
        }
        self.heap_only = true;
    }

    /// The item, its length written in front.
    fn finish(mut self) -> OneItem {
        let head = ((self.len - 4) as u32).to_le_bytes();
        match self.slab.take() {
            Some(mut slab) => {
                let len = self.len;
                let body = slab.body_mut(len);
                body[..4].copy_from_slice(&head);
                if len < THRESHOLD {
                    // Small after all: through the socket, as small chunks go.
                    let bytes = body.to_vec();
                    slab.give_back();
                    return OneItem::Heap(bytes);
                }
                OneItem::Slab(Body::in_slab(slab, len))
            }
            None => {
                self.heap[..4].copy_from_slice(&head);
                OneItem::Heap(std::mem::take(&mut self.heap))
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An encoding that failed: the pages it wrote are counted.
        if let Some(mut slab) = self.slab.take() {
            slab.used = slab.used.max(self.len.min(slab.capacity()));
            slab.give_back();
        }
    }
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
        if self.slab.is_none() && end > self.spill_at && !self.heap_only {
            self.spill(end.max(INITIAL));
        }
        if let Some(slab) = self.slab.as_mut()
            && end > slab.capacity()
            && slab.grow(end).is_err()
        {
            self.unspill();
        }
        match self.slab.as_mut() {
            Some(slab) => {
                // SAFETY: `HEADER + end` bytes are mapped read-write (the
                // slab holds `end`, checked above), and the writer owns the
                // slab: nothing else reads or writes them.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        slab.ptr.as_ptr().add(HEADER + self.len),
                        bytes.len(),
                    );
                }
            }
            None => self.heap.extend_from_slice(bytes),
        }
        self.len = end;
    }
}

impl Body {
    /// Encodes `value` as a chunk body of its own, into a slab once its
    /// encoding passes `spill_at` bytes (see [`Writer`]). An encoding of
    /// more than `limit` bytes is refused.
    pub(crate) fn encode_one<T: Serialize>(
        value: &T,
        limit: usize,
        spill_at: usize,
    ) -> Result<OneItem, EncodeError> {
        let mut out = Writer {
            heap: Vec::new(),
            slab: None,
            len: 0,
            spill_at,
            heap_only: false,
        };
        out.extend_from_slice(&[0; 4]);
        let limit = limit.min(u32::MAX as usize);
        encode_limited_to(&mut out, value, limit)?;
        Ok(out.finish())
    }
}

/// A worker's read-only mapping of a slab (its first `mapped` bytes);
/// unmapped when dropped.
pub(crate) struct Mapped {
    ptr: NonNull<u8>,
    mapped: usize,
}

/// A worker's mappings of the pool's slabs, kept for the next chunk that
/// comes in the same slab: the pool recycles a few slabs, and mapping one
/// of 16 MiB and unmapping it costs a worker about as much as copying it
/// (1.8 ms here). At most [`KEEP`] mappings of [`KEEP_BYTES`] in all are
/// kept, none under a memory bound (the pages mapped would count in the
/// worker's resident memory, which `max_memory_per_child` bounds). A kept
/// mapping holds the slab's memory: it is let go of once the pool has
/// dropped the slab (checked at each chunk through a slab, each time the
/// worker runs out of input, and while it idles after 0.1, 0.2, 0.4, 0.8
/// and 1.6 s), and after 2 s without input (see `worker::IDLE_UNMAP`,
/// `worker::IDLE_KEEP`).
pub(crate) struct Mappings {
    /// Pool's pid, slab id, mapping; the most recently used last.
    kept: Vec<(u32, u64, Rc<Mapped>)>,
    keep: bool,
}

/// Mappings a worker keeps at most.
const KEEP: usize = 4;
/// Bytes of mappings a worker keeps at most.
const KEEP_BYTES: usize = 128 << 20;

/// A chunk's body in a slab a worker maps.
pub(crate) struct MappedBody {
    map: Rc<Mapped>,
    len: usize,
}

impl MappedBody {
    /// The body's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `HEADER + len` bytes are mapped for the life of the map
        // (checked by `Mappings::open`); the pool does not write them while
        // the chunk is in flight.
        unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr().add(HEADER), self.len) }
    }
}

impl Mappings {
    /// `keep`: whether mappings are kept for later chunks.
    pub(crate) fn new(keep: bool) -> Mappings {
        Mappings {
            kept: Vec::new(),
            keep,
        }
    }

    /// The body `slab` of process `pid` names, mapped now or kept from an
    /// earlier chunk in the same slab. Why it cannot be read, if so.
    pub(crate) fn open(&mut self, pid: u32, slab: &SlabRef) -> Result<MappedBody, String> {
        self.prune_dropped();
        let len = usize::try_from(slab.len).map_err(|e| e.to_string())?;
        let same = |&(p, id, _): &(u32, u64, Rc<Mapped>)| p == pid && id == slab.id;
        if let Some(at) = self.kept.iter().position(same) {
            let entry = self.kept.remove(at);
            if entry.2.mapped >= HEADER + len {
                let map = Rc::clone(&entry.2);
                self.kept.push(entry);
                return Ok(MappedBody { map, len });
            }
            // Grown since: mapped again below, at its new length.
        }
        let map = Rc::new(Mapped::open(pid, slab)?);
        if self.keep && map.mapped <= KEEP_BYTES {
            self.kept.push((pid, slab.id, Rc::clone(&map)));
            let mut total: usize = self.kept.iter().map(|k| k.2.mapped).sum();
            while self.kept.len() > KEEP || total > KEEP_BYTES {
                total -= self.kept.remove(0).2.mapped;
            }
        }
        Ok(MappedBody { map, len })
    }

    /// Lets go of the mappings of slabs the pool has dropped.
    pub(crate) fn prune_dropped(&mut self) {
        self.kept.retain(|(_, _, map)| !map.dropped());
    }

    /// Whether it keeps a mapping.
    pub(crate) fn holds_any(&self) -> bool {
        !self.kept.is_empty()
    }

    /// Lets go of every kept mapping.
    pub(crate) fn clear(&mut self) {
        self.kept.clear();
    }
}

impl Mapped {
    /// Opens and maps the slab `slab` of process `pid`, checking that it is
    /// the one named (a slab, with that id, long enough).
    /// Why it cannot be read, as a message, if so.
    pub(crate) fn open(pid: u32, slab: &SlabRef) -> Result<Mapped, String> {
        let path = format!("/proc/{pid}/fd/{}", slab.fd);
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            format!(
                "they are in shared memory of the pool's process that the worker cannot read ({what} {path}: {err})"
            )
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
        let map = Mapped { ptr, mapped };
        // SAFETY: the first 16 bytes are mapped (HEADER > 16).
        let head = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), 16) };
        if head[..8] != MAGIC.to_le_bytes() || head[8..] != slab.id.to_le_bytes() {
            return Err(fail("checking", &"another slab has this number"));
        }
        Ok(map)
    }

    /// Whether the pool has dropped this slab.
    fn dropped(&self) -> bool {
        // SAFETY: the first page is mapped; the word is aligned and
        // written only atomically.
        let word = unsafe { &*self.ptr.as_ptr().add(DROPPED_AT).cast::<AtomicU64>() };
        word.load(Ordering::Acquire) == DROPPED
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

    /// The tests that look at the free list run one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serializes as bytes the first time, as nothing (an error) after.
    struct Once(Mutex<Option<Vec<u8>>>);

    impl Serialize for Once {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(bytes) => s.serialize_bytes(&bytes),
                None => Err(serde::ser::Error::custom("serialized twice")),
            }
        }
    }

    /// Writes `len` bytes, then fails.
    struct FailsAfter(usize);

    impl Serialize for FailsAfter {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(2)?;
            let bytes = vec![3u8; self.0];
            t.serialize_element(&AsBytes(&bytes))?;
            t.serialize_element(&FailNow)?;
            t.end()
        }
    }

    struct FailNow;

    impl Serialize for FailNow {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }

    /// Bytes serialized with `serialize_bytes`.
    struct AsBytes<'a>(&'a [u8]);

    impl Serialize for AsBytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    #[test]
    fn a_value_is_serialized_once_whatever_its_size_and_spills_into_a_growing_slab() {
        let _serial = serial();
        for len in [10usize, THRESHOLD + 1, INITIAL + 12_345, 3 * INITIAL] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
            let once = Once(Mutex::new(Some(bytes.clone())));
            let item = Body::encode_one(&once, usize::MAX, 1 << 20).expect("encodes once");
            let mut expected = Vec::new();
            pool_core::wire::push_arg(&mut expected, &AsBytes(&bytes), usize::MAX)
                .expect("encodes");
            match item {
                OneItem::Heap(got) => {
                    assert!(len < 1 << 20, "{len} bytes stayed on the heap");
                    assert_eq!(got, expected);
                }
                OneItem::Slab(body) => {
                    assert!(len >= 1 << 20, "{len} bytes went to a slab");
                    assert!(body.slab().is_some());
                    assert!(body[..] == expected[..], "{len} bytes came back different");
                }
            }
        }
        trim();
    }

    #[test]
    fn a_failed_encoding_counts_the_pages_it_wrote_in_the_free_list() {
        let _serial = serial();
        trim();
        let failed = Body::encode_one(&FailsAfter(8 << 20), usize::MAX, 0);
        assert!(matches!(failed, Err(EncodeError::Custom(m)) if m == "no"));
        let free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        let used: usize = free.iter().map(|s| s.used).sum();
        assert!(used >= 8 << 20, "the free list counts {used} bytes");
        drop(free);
        trim();
    }

    #[test]
    fn small_bodies_stay_on_the_heap() {
        let body = Body::for_local(vec![7; 100]);
        assert!(body.slab().is_none());
        assert_eq!(&body[..], &[7; 100][..]);
    }

    #[test]
    fn a_large_body_is_read_back_through_its_slab_and_the_slab_is_reused() {
        let _serial = serial();
        let bytes: Vec<u8> = (0..THRESHOLD + 12_345).map(|i| (i % 251) as u8).collect();
        let body = Body::for_local(bytes.clone());
        let slab = body.slab().expect("a large body goes to a slab");
        assert_eq!(slab.len, bytes.len() as u64);
        assert_eq!(&body[..], &bytes[..]);
        let mut mappings = Mappings::new(true);
        let mapped = mappings.open(std::process::id(), &slab).expect("maps");
        assert_eq!(mapped.bytes(), &bytes[..]);
        drop(mapped);
        drop(body);
        let again = Body::for_local(vec![1; THRESHOLD]);
        let reused = again.slab().expect("in a slab");
        assert_eq!(reused.id, slab.id, "the free slab is reused");
        // The kept mapping shows the slab's new contents.
        let kept = mappings.open(std::process::id(), &reused).expect("kept");
        assert_eq!(mappings.kept.len(), 1, "mapped once");
        assert_eq!(kept.bytes(), &[1; THRESHOLD][..]);
        let stale = Mapped::open(
            std::process::id(),
            &SlabRef {
                id: slab.id + 1000,
                ..slab
            },
        );
        assert!(
            matches!(&stale, Err(m) if m.contains("another slab")),
            "a wrong id is refused"
        );
        drop(kept);
        drop(again);
        trim();
    }

    #[test]
    fn a_kept_mapping_of_a_slab_the_pool_dropped_is_let_go_at_the_next_chunk() {
        let _serial = serial();
        let pid = std::process::id();
        let mut mappings = Mappings::new(true);
        let first = Body::for_local(vec![1; THRESHOLD]);
        let slab = first.slab().expect("in a slab");
        drop(mappings.open(pid, &slab).expect("maps"));
        drop(first);
        // Back on the free list: still the pool's, so still kept.
        let second = Body::for_local(vec![2; THRESHOLD + 1]);
        let other = second.slab().expect("in a slab");
        assert_eq!(other.id, slab.id, "the free slab is reused");
        drop(mappings.open(pid, &other).expect("kept"));
        assert_eq!(mappings.kept.len(), 1);
        drop(second);
        trim();
        // The pool dropped it: a chunk through a new slab lets it go.
        let third = Body::for_local(vec![3; THRESHOLD]);
        let new = third.slab().expect("in a slab");
        assert_ne!(new.id, slab.id);
        let mapped = mappings.open(pid, &new).expect("maps");
        assert_eq!(mapped.bytes(), &vec![3; THRESHOLD][..]);
        let ids: Vec<u64> = mappings.kept.iter().map(|k| k.1).collect();
        assert_eq!(ids, vec![new.id], "only the slab the pool still holds");
        drop(mapped);
        drop(third);
        trim();
    }

    #[test]
    fn a_worker_keeps_few_mappings_and_none_under_a_memory_bound() {
        let _serial = serial();
        let bodies: Vec<Body> = (0..KEEP + 2)
            .map(|i| Body::for_local(vec![i as u8; THRESHOLD + i]))
            .collect();
        let pid = std::process::id();
        let mut bounded = Mappings::new(false);
        let mut mappings = Mappings::new(true);
        for (i, body) in bodies.iter().enumerate() {
            let slab = body.slab().expect("in a slab");
            let mapped = mappings.open(pid, &slab).expect("maps");
            assert_eq!(mapped.bytes(), &vec![i as u8; THRESHOLD + i][..]);
            let mapped = bounded.open(pid, &slab).expect("maps");
            assert_eq!(mapped.bytes().len(), THRESHOLD + i);
        }
        assert!(bounded.kept.is_empty());
        assert_eq!(mappings.kept.len(), KEEP);
        let last = bodies.last().and_then(Body::slab).expect("in a slab");
        assert_eq!(mappings.kept.last().map(|k| k.1), Some(last.id));
        drop(mappings);
        drop(bodies);
        trim();
    }
}
