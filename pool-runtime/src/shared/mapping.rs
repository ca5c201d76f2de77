//! Read-only shared mappings of sealed objects.

#[allow(unused_imports)]
use super::*;

/// A read-only shared mapping of a whole sealed object (header and
/// payload). Unmapped when dropped.
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

// SAFETY: the mapping is read-only and its file sealed: no thread can
// change the bytes, so sharing references to them across threads is safe.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd`, which must be sealed with
    /// [`SEALS`] and exactly `len` bytes long (checked by the callers).
    pub(super) fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address the kernel picks (no
        // existing memory is replaced), read-only and shared, of `len`
        // bytes of a file that is `len` bytes long and sealed against
        // writes, growth and shrinking: its bytes never change and every
        // page stays backed for the mapping's life.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The payload: every byte after the header's page.
    pub(super) fn payload(&self) -> &[u8] {
        // SAFETY: the mapping is `len` (at least PAYLOAD) readable bytes
        // that never change (see `new`) and lives as long as `self`.
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        &all[PAYLOAD..]
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr and len came from `mmap` in `new`; unmapped once,
        // here, and no reference into the mapping outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
