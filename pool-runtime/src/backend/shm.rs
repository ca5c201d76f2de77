//! A page shared between the pool and one worker, where the worker records
//! which item it is running and since when, with no system call.
//!
//! When the worker dies or hangs, the pool reads the page to blame exactly the
//! item that was running and to requeue the others.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// The clock the page's times are read with.
pub(crate) use crate::sys::now_ns;

/// What the page holds.
///
/// The worker writes `chunk`, `item` and `started_ns` under a sequence
/// lock (`seq` is odd while it writes), so the pool never reads a torn
/// triple; within a batch of untimed items it updates `item` alone (one
/// atomic store: the chunk does not change). `gate` is written by both
/// sides: see [`Progress::claim`] and [`Progress::steal_after`].
#[repr(C)]
struct Layout {
    seq: AtomicU64,
    /// The chunk being run (0 before the first).
    chunk: AtomicU64,
    /// The index within that chunk of the item being run, or [`IDLE`].
    item: AtomicU64,
    /// When that item started, in [`now_ns`] nanoseconds.
    started_ns: AtomicU64,
    /// Keeps `gate`, which the pool writes, off the worker's line.
    _pad: [u64; 4],
    /// The last chunk the worker claimed, or, with [`STOLEN`], the last
    /// chunk id it must skip.
    gate: AtomicU64,
    /// Keeps `pulled` off the lines above.
    _pad2: [u64; 7],
    /// The pool's answer to the worker's last [`FromWorker::Pull`]: its
    /// `seq` once read, with [`PULL_FAILED`] if it could not be (a futex:
    /// the worker sleeps on it).
    ///
    /// [`FromWorker::Pull`]: pool_core::wire::FromWorker::Pull
    pulled: AtomicU32,
}

const SIZE: usize = 4096;

/// The item index of a worker between items.
pub(crate) const IDLE: u64 = u64::MAX;
/// Marks [`Layout::gate`] as a range of chunks taken back by the pool.
const STOLEN: u64 = 1 << 63;
/// Marks [`Layout::pulled`]: the pool could not read the frame.
const PULL_FAILED: u32 = 1 << 31;

/// What a worker's page says it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Running {
    pub(crate) chunk: u64,
    /// The item's index in the chunk, or [`IDLE`] between items.
    pub(crate) item: u64,
    pub(crate) started_ns: u64,
}

impl Running {
    /// Whether an item runs.
    pub(crate) fn busy(&self) -> bool {
        self.item != IDLE && self.chunk != 0
    }
}

/// One mapping of the shared page.
pub(crate) struct Progress {
    ptr: NonNull<Layout>,
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Progress {}
// SAFETY: as above.
unsafe impl Sync for Progress {}

impl Progress {
    /// Creates a new page (parent side); its descriptor is close-on-exec
    /// and kept only until [`Progress::forget_fd`].
    pub(crate) fn create() -> io::Result<Progress> {
        let fd = rustix::fs::memfd_create("pool-runtime-progress", MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, SIZE as u64)?;
        let ptr = map(&fd)?;
        Ok(Progress { ptr, fd: Some(fd) })
    }

    /// Maps the page whose descriptor the pool passed (worker side), then
    /// closes that descriptor.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Progress> {
        let ptr = map(&fd)?;
        drop(fd);
        Ok(Progress { ptr, fd: None })
    }

    /// The descriptor to hand to the worker.
    pub(crate) fn borrowed_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// The number of that descriptor, while it is kept (the MPI
    /// backend's tests check it is gone once the worker has it).
    #[cfg(all(test, feature = "mpi"))]
    pub(crate) fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes the descriptor once the worker has it (the mapping stays).
    pub(crate) fn forget_fd(&mut self) {
        self.fd = None;
    }

    fn slot(&self) -> &Layout {
        // SAFETY: the mapping lives as long as self and is SIZE >= size_of::<Layout>() bytes.
        unsafe { self.ptr.as_ref() }
    }

    fn write(&self, chunk: u64, item: u64, now: u64) {
        let slot = self.slot();
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.chunk.store(chunk, Ordering::Relaxed);
        slot.item.store(item, Ordering::Relaxed);
        slot.started_ns.store(now, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Worker: starting item `item` of chunk `chunk` at `now`.
    #[inline]
    pub(crate) fn start(&self, chunk: u64, item: u64, now: u64) {
        self.write(chunk, item, now);
    }

    /// Worker: between items (a chunk ended), so nothing is blamed on or
    /// timed for an item that is over.
    pub(crate) fn idle(&self, chunk: u64) {
        self.write(chunk, IDLE, 0);
    }

    /// Worker: where the index of the running item is kept. Storing a
    /// later item of the same chunk there keeps the start time of the
    /// first: only for items no timeout watches.
    pub(crate) fn item_slot(&self) -> &AtomicU64 {
        &self.slot().item
    }

    /// Parent: what the worker last recorded, never torn (unless the
    /// worker died in the middle of a write: then what was there).
    pub(crate) fn read(&self) -> Running {
        let slot = self.slot();
        let mut tries = 0;
        loop {
            let before = slot.seq.load(Ordering::Acquire);
            let running = Running {
                chunk: slot.chunk.load(Ordering::Relaxed),
                item: slot.item.load(Ordering::Relaxed),
                started_ns: slot.started_ns.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            let after = slot.seq.load(Ordering::Relaxed);
            tries += 1;
            if (before == after && before.is_multiple_of(2)) || tries > 1000 {
                return running;
            }
            std::hint::spin_loop();
        }
    }

    /// Worker: may chunk `chunk` (the next one received) run? `false` if
    /// the pool took it back ([`Progress::steal_after`]): it is skipped.
    #[inline]
    pub(crate) fn claim(&self, chunk: u64) -> bool {
        let gate = &self.slot().gate;
        let mut seen = gate.load(Ordering::Acquire);
        loop {
            if seen & STOLEN != 0 && chunk <= seen & !STOLEN {
                return false;
            }
            match gate.compare_exchange_weak(seen, chunk, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }

    /// Parent: takes back every chunk after `running` up to `last` (ids of
    /// chunks sent to this worker), if the worker has claimed nothing
    /// after `running` yet; the worker then skips them. Returns `floor`:
    /// the chunks taken back now are those in `floor + 1 ..= last` (those
    /// up to `floor` were taken earlier); `None` if the worker moved on.
    pub(crate) fn steal_after(&self, running: u64, last: u64) -> Option<u64> {
        let gate = &self.slot().gate;
        let seen = gate.load(Ordering::Acquire);
        let floor = seen & !STOLEN;
        let claimed_running = seen == running;
        let stolen_before = seen & STOLEN != 0 && floor >= running;
        if !(claimed_running || stolen_before) || last <= floor {
            return None;
        }
        gate.compare_exchange(seen, last | STOLEN, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| floor)
    }
}

impl Progress {
    /// Parent: answers the worker's pull `seq`: read (`true`) or not.
    pub(crate) fn answer_pull(&self, seq: u32, read: bool) {
        let pulled = &self.slot().pulled;
        pulled.store(
            if read { seq } else { seq | PULL_FAILED },
            Ordering::Release,
        );
        // Not private: the worker waits on the same page in its process.
        let _ = futex::wake(pulled, futex::Flags::empty(), 1);
    }

    /// Worker: waits for the pool's answer to pull `seq` ([`Progress::answer_pull`]):
    /// `Some(true)` once the pool has the frame, `Some(false)` if it could
    /// not read it; `None` as soon as `gone()`, asked every 100 ms or so
    /// (however often signals interrupt the wait), says the pool is gone.
    pub(crate) fn wait_pulled(&self, seq: u32, gone: impl Fn() -> bool) -> Option<bool> {
        const RECHECK: std::time::Duration = std::time::Duration::from_millis(100);
        let pulled = &self.slot().pulled;
        let mut checked = std::time::Instant::now();
        loop {
            let now = pulled.load(Ordering::Acquire);
            if now == seq {
                return Some(true);
            }
            if now == seq | PULL_FAILED {
                return Some(false);
            }
            // The parent-death signal is not enough: a task that changes
            // its credentials, even for a moment, loses it.
            if checked.elapsed() >= RECHECK {
                if gone() {
                    return None;
                }
                checked = std::time::Instant::now();
            }
            let recheck = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: RECHECK.saturating_sub(checked.elapsed()).as_nanos() as i64,
            };
            // Woken by the answer, a signal, a spurious wake-up or the time.
            let _ = futex::wait(pulled, futex::Flags::empty(), now, Some(&recheck));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // SAFETY: ptr came from `map` (SIZE bytes), is unmapped once, here,
        // and no reference into the page outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), SIZE) };
    }
}

/// Maps `fd`, sized to SIZE bytes, shared and writable.
fn map(fd: &OwnedFd) -> io::Result<NonNull<Layout>> {
    // SAFETY: a fresh shared mapping at an address the kernel picks (no
    // existing memory is replaced) of a descriptor sized to SIZE bytes;
    // every byte of the page is read only through atomics.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            SIZE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }?;
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}
