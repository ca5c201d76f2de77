//! A page shared between the pool and one worker, where the worker records
//! which item it is running and since when, with no system call.
//!
//! When the worker dies or hangs, the pool reads the page to blame exactly the
//! item that was running and to requeue the others.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the page holds.
#[repr(C)]
struct Slot {
    /// The chunk being run (0 before the first).
    chunk: AtomicU64,
    /// The index within that chunk of the item being run.
    item: AtomicU64,
    /// When that item started, in [`now_ns`] nanoseconds.
    started_ns: AtomicU64,
}

const SIZE: usize = 4096;

/// One mapping of the shared page.
pub(crate) struct Progress {
    ptr: NonNull<Slot>,
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Progress {}
// SAFETY: as above.
unsafe impl Sync for Progress {}

impl Progress {
    /// Creates a new page (parent side); its descriptor is close-on-exec.
    pub(crate) fn create() -> io::Result<Progress> {
        let fd = anonymous_file()?;
        // SAFETY: fd is a valid descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), SIZE as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ptr = map(fd.as_raw_fd())?;
        Ok(Progress { ptr, fd: Some(fd) })
    }

    /// Maps the page whose descriptor was inherited (worker side), then
    /// closes that descriptor.
    pub(crate) fn open(fd: RawFd) -> io::Result<Progress> {
        // SAFETY: the parent passed this descriptor to us; we take ownership.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let ptr = map(owned.as_raw_fd())?;
        drop(owned);
        Ok(Progress { ptr, fd: None })
    }

    /// The descriptor to hand to the worker.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn slot(&self) -> &Slot {
        // SAFETY: the mapping lives as long as self and is SIZE >= size_of::<Slot>() bytes.
        unsafe { self.ptr.as_ref() }
    }

    /// Worker: starting item `item` of chunk `chunk` at `now`.
    #[inline]
    pub(crate) fn start(&self, chunk: u64, item: u64, now: u64) {
        let slot = self.slot();
        slot.chunk.store(chunk, Ordering::Relaxed);
        slot.item.store(item, Ordering::Relaxed);
        slot.started_ns.store(now, Ordering::Release);
    }

    /// Worker: where the index of the running item is kept. Storing a
    /// later item of the same chunk there keeps the start time of the
    /// first: only for items no timeout watches.
    pub(crate) fn item_slot(&self) -> &AtomicU64 {
        &self.slot().item
    }

    /// Parent: (chunk, item, started_ns) last recorded by the worker.
    pub(crate) fn read(&self) -> (u64, u64, u64) {
        let slot = self.slot();
        let started = slot.started_ns.load(Ordering::Acquire);
        (
            slot.chunk.load(Ordering::Relaxed),
            slot.item.load(Ordering::Relaxed),
            started,
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // SAFETY: ptr came from mmap of SIZE bytes and is unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), SIZE) };
    }
}

fn map(fd: RawFd) -> io::Result<NonNull<Slot>> {
    // SAFETY: a fresh shared mapping of a descriptor sized to SIZE bytes.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

#[cfg(target_os = "linux")]
fn anonymous_file() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"pool-runtime-progress".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut path = std::env::temp_dir()
        .join("pool-runtime-progress-XXXXXX")
        .as_os_str()
        .as_bytes()
        .to_vec();
    path.push(0);
    // SAFETY: path is a writable NUL-terminated template.
    let fd = unsafe { libc::mkstemp(path.as_mut_ptr().cast()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: mkstemp returned a new descriptor we own; the name is removed at once.
    unsafe {
        libc::unlink(path.as_ptr().cast());
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A monotonic clock both processes read alike (coarse: a few ms, cheap).
#[inline]
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_MONOTONIC_COARSE;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_MONOTONIC;
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
