//! A worker's resident memory against the bound of
//! [`PoolBuilder::max_memory_per_child`](crate::PoolBuilder::max_memory_per_child)
//! (worker side): measured after every item, by the thread that runs the
//! items, with no thread of its own.
//!
//! The measure is the one `/proc/self/statm` gives: resident pages
//! (anonymous, file-backed and shared) times the page size. Reading that
//! file costs about 2 µs (the kernel formats it as text), so it is read
//! only once the peak resident size (`getrusage`'s `ru_maxrss`, one system
//! call of under a microsecond) is above the bound: the resident size is
//! never above its peak, so below it nothing more needs reading.

use std::os::fd::OwnedFd;

use pool_core::wire::Retire;
use rustix::fs::{Mode, OFlags};

/// The bound of one worker, and its descriptor of `/proc/self/statm`.
pub(crate) struct MemoryBound {
    limit: u64,
    /// Opened at the first read, in the process that reads it: a forked
    /// worker must not read its fork server's.
    statm: Option<OwnedFd>,
    page: u64,
}

impl MemoryBound {
    /// A bound of `limit` bytes.
    pub(crate) fn new(limit: u64) -> MemoryBound {
        MemoryBound {
            limit,
            statm: None,
            page: rustix::param::page_size() as u64,
        }
    }

    /// Why this worker must retire, if its resident memory is above the
    /// bound now. If `/proc/self/statm` cannot be read, the peak stands in
    /// for it: the bound still holds, at the risk of retiring early.
    pub(crate) fn exceeded(&mut self) -> Option<Retire> {
        let peak = peak_resident();
        if peak <= self.limit {
            return None;
        }
        let resident = self.resident().unwrap_or(peak);
        (resident > self.limit).then_some(Retire::Memory {
            resident,
            limit: self.limit,
        })
    }

    /// Resident bytes, from `/proc/self/statm`.
    fn resident(&mut self) -> std::io::Result<u64> {
        let fd = match &self.statm {
            Some(fd) => fd,
            None => {
                let fd = rustix::fs::open(
                    "/proc/self/statm",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.statm.insert(fd)
            }
        };
        let mut buf = [0u8; 128];
        // Read from the start each time: the kernel writes it anew.
        let len = rustix::io::pread(fd, &mut buf, 0)?;
        let pages = parse_resident_pages(&buf[..len]).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected statm")
        })?;
        Ok(pages.saturating_mul(self.page))
    }
}

/// The second field of `/proc/<pid>/statm`: resident pages.
fn parse_resident_pages(statm: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(statm).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The most resident memory this process has had, in bytes (`u64::MAX` if
/// it cannot be known).
fn peak_resident() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes at most one `rusage` through the pointer,
    // which points to room for exactly that.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return u64::MAX;
    }
    // SAFETY: all integers, zeroed before and filled by the call.
    let usage = unsafe { usage.assume_init() };
    // Kilobytes on Linux.
    u64::try_from(usage.ru_maxrss).map_or(u64::MAX, |kb| kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_gives_resident_pages() {
        assert_eq!(parse_resident_pages(b"619 416 391 1 0 89 0\n"), Some(416));
        assert_eq!(parse_resident_pages(b"619"), None);
        assert_eq!(parse_resident_pages(b""), None);
    }

    #[test]
    fn this_process_is_measured_between_its_peak_and_zero() {
        let mut bound = MemoryBound::new(0);
        let resident = bound.resident().expect("/proc/self/statm");
        assert!(resident > 0);
        // The kernel sums its resident counters approximately (per CPU),
        // and other tests of this binary allocate and free meanwhile: a
        // few MiB either way.
        let peak = peak_resident();
        assert!(
            resident <= peak + (4 << 20),
            "{resident} above the peak {peak}"
        );
        // Everything is above a bound of 0; nothing is above u64::MAX.
        assert!(matches!(
            bound.exceeded(),
            Some(Retire::Memory { limit: 0, resident }) if resident > 0
        ));
        assert_eq!(MemoryBound::new(u64::MAX).exceeded(), None);
    }

    #[test]
    fn touched_memory_is_resident() {
        let mut bound = MemoryBound::new(0);
        let before = bound.resident().expect("statm");
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = bound.resident().expect("statm");
        assert!(
            after >= before + (48 << 20),
            "{before} then {after} bytes with 64 MiB touched"
        );
        drop(block);
    }
}
