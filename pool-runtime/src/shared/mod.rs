//! Values shared once with every worker: [`Shared`] and [`SharedSlice`].
//!
//! [`Pool::share`](crate::Pool::share) writes a value once into a sealed,
//! read-only `memfd` of this process (postcard for [`Shared`], the raw
//! elements for [`SharedSlice`]). What crosses the wire with each item is
//! a handle of a few dozen bytes: this process's pid, the memfd's
//! descriptor number here, the payload's length and a random 128-bit id
//! that the memfd's header repeats (descriptor numbers are reused, so the
//! worker checks it opened the right object).
//!
//! A worker resolves a handle while it decodes an item's arguments: it
//! opens `/proc/<pid>/fd/<n>` read-only, checks the header and the seals,
//! maps the memfd read-only and shared, and (for [`Shared`]) decodes the
//! value. It keeps what it resolved in a small per-process cache (the
//! [`CACHE_ENTRIES`] most recently used objects), so a thousand items
//! with the same handle open and decode it once per worker. A handle that
//! cannot be resolved fails its item with
//! [`Error::Serialization`](crate::Error::Serialization) and
//! [`TaskFailure::BadArguments`](crate::TaskFailure::BadArguments), whose
//! message says why and what to do.
//!
//! In the process that shared it, a handle is an `Arc` to the object: the
//! memfd is closed when the last clone is dropped, and no call that sent a
//! handle lets it go before the call ends (every handle encoded into a
//! call's arguments is kept with the call, see [`pinning`]).

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rustix::fs::{FileType, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

mod mapping;
mod owner;
mod slice;
mod value;
mod worker;

pub(crate) use self::owner::{Pins, pinning, share, share_slice};
pub use self::slice::{Plain, SharedSlice};
pub use self::value::Shared;
pub(crate) use self::worker::set_pool_process;
use self::{mapping::*, owner::*, slice::*, value::*, worker::*};

/// How many shared objects a worker keeps resolved between items: the
/// most recently used ones. A worker reading more objects than this in
/// turn opens (and, for [`Shared`], decodes) them again. An evicted object
/// stays mapped while a handle to it lives in the worker (a task may keep
/// one in a static); a worker's copy of an object the pool's process has
/// since dropped lasts until it is evicted or the worker is replaced.
///
/// ```
/// assert_eq!(pool_runtime::CACHE_ENTRIES, 8);
/// ```
pub const CACHE_ENTRIES: usize = 8;

/// The name of every memfd this module creates (`/proc/<pid>/fd/<n>`
/// links read `/memfd:pool-runtime-shared (deleted)`).
pub(super) const NAME: &str = "pool-runtime-shared";
/// What a link to one of our memfds starts with.
pub(super) const LINK_PREFIX: &[u8] = b"/memfd:pool-runtime-shared";
/// The header's first bytes.
pub(super) const MAGIC: [u8; 8] = *b"poolshr\0";
/// The header's layout version.
pub(super) const VERSION: u32 = 1;
/// The header's size: magic, version, kind, id, length, type.
pub(super) const HEADER: usize = 48;
/// Where the payload starts: one page after the header's start, so the
/// elements of a [`SharedSlice`] are page-aligned.
pub(super) const PAYLOAD: usize = 4096;
/// The seals of a finished object: nothing may write, grow or shrink it,
/// nor change its seals.
pub(super) const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK)
    .union(SealFlags::SEAL);

/// What a shared object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A postcard-encoded value ([`Shared`]).
    Value = 1,
    /// Raw elements ([`SharedSlice`]).
    Slice = 2,
}

impl Kind {
    pub(super) fn from_raw(raw: u32) -> Option<Kind> {
        match raw {
            1 => Some(Kind::Value),
            2 => Some(Kind::Slice),
            _ => None,
        }
    }
}

/// A type's fingerprint in a header: FNV-1a of its name (the parent and
/// its workers run one binary, so they agree).
pub(super) fn type_hash<T: ?Sized>() -> u64 {
    pool_core::task_id(std::any::type_name::<T>())
}

/// What crosses the wire in place of a shared value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Handle {
    /// The process that shared it.
    pub(super) pid: u32,
    /// The memfd's descriptor number in that process.
    pub(super) fd: i32,
    /// The object's random id, repeated in its header.
    pub(super) id: u128,
    /// The payload's length in bytes.
    pub(super) len: u64,
}

/// The first [`HEADER`] bytes of a shared object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: u32,
    pub(super) id: u128,
    pub(super) len: u64,
    pub(super) ty: u64,
}

impl Header {
    pub(super) fn to_bytes(self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.kind.to_le_bytes());
        out[16..32].copy_from_slice(&self.id.to_le_bytes());
        out[32..40].copy_from_slice(&self.len.to_le_bytes());
        out[40..48].copy_from_slice(&self.ty.to_le_bytes());
        out
    }

    /// `None` unless `bytes` start with our magic and version.
    pub(super) fn parse(bytes: &[u8]) -> Option<Header> {
        let field = |at: usize, n: usize| bytes.get(at..at + n);
        if field(0, 8)? != MAGIC || field(8, 4)? != VERSION.to_le_bytes() {
            return None;
        }
        Some(Header {
            kind: u32::from_le_bytes(field(12, 4)?.try_into().ok()?),
            id: u128::from_le_bytes(field(16, 16)?.try_into().ok()?),
            len: u64::from_le_bytes(field(32, 8)?.try_into().ok()?),
            ty: u64::from_le_bytes(field(40, 8)?.try_into().ok()?),
        })
    }
}

/// Why a handle could not be resolved: the message of the item's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ShareError {
    #[error(
        "the shared value {id:032x} of process {pid} is gone: every `Shared`/`SharedSlice` handle to it was dropped in that process before this process opened it; keep a handle alive in the process that shared it until the calls and pools that use it are done"
    )]
    Freed { pid: u32, id: u128 },
    #[error(
        "the shared value {id:032x} belongs to process {pid}, which has exited; share the value again from the running program"
    )]
    OwnerExited { pid: u32, id: u128 },
    #[error(
        "the shared value {id:032x} belongs to process {owner}, but this worker serves the pool of process {pool}: a handle works only in the process that created it (with `Pool::share`) and in the workers of that process's pools; share the value from process {pool} instead"
    )]
    NotOwner { owner: u32, pool: u32, id: u128 },
    #[error(
        "the shared value {id:032x} belongs to process {owner}, and this process is neither it nor one of its pool's workers: a handle works only in the process that created it (with `Pool::share`) and in the workers of that process's pools"
    )]
    Outside { owner: u32, id: u128 },
    #[error(
        "shared values need workers on the same machine as the pool's process (they are read through /proc/{owner}/fd), but this worker is MPI rank {rank}: pass the data as an ordinary argument, or load it in each rank with an initializer"
    )]
    Remote { owner: u32, rank: u32 },
    #[error(
        "this worker cannot open the shared value through {path}: {reason}; workers must run as the same user as the pool's process, and that process must stay dumpable (prctl PR_SET_DUMPABLE)"
    )]
    Access { path: String, reason: String },
    #[error("the shared value {id:032x} holds {found}, but this handle is for {expected}")]
    WrongType {
        id: u128,
        found: String,
        expected: String,
    },
    #[error("the shared value {id:032x} could not be read: {reason}")]
    Io { id: u128, reason: String },
    #[error("the shared value could not be decoded as `{ty}`: {reason}")]
    Decode { ty: &'static str, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_foreign_bytes() {
        let header = Header {
            kind: Kind::Slice as u32,
            id: u128::MAX - 7,
            len: 1 << 40,
            ty: type_hash::<f64>(),
        };
        assert_eq!(Header::parse(&header.to_bytes()), Some(header));
        assert_eq!(Header::parse(&header.to_bytes()[..HEADER - 1]), None);
        let mut other = header.to_bytes();
        other[0] = b'x';
        assert_eq!(Header::parse(&other), None);
        assert_eq!(Header::parse(&[0; HEADER]), None);
    }

    #[test]
    fn only_the_owners_local_workers_may_open_its_objects() {
        assert_eq!(reachable(10, 1, 10, None), Ok(()));
        let other = reachable(10, 1, 11, None).expect_err("another pool's worker");
        assert_eq!(
            other,
            ShareError::NotOwner {
                owner: 10,
                pool: 11,
                id: 1
            }
        );
        assert!(
            other
                .to_string()
                .contains("share the value from process 11")
        );
        let outside = reachable(10, 1, 0, None).expect_err("not a worker");
        assert!(
            outside
                .to_string()
                .contains("neither it nor one of its pool's workers")
        );
        let remote = reachable(10, 1, 0, Some(3)).expect_err("an MPI rank");
        assert!(
            remote.to_string().contains("same machine") && remote.to_string().contains("rank 3"),
            "{remote}"
        );
    }

    /// The worker's path (`open` through `/proc`) run on this very process.
    #[test]
    fn a_reused_descriptor_or_a_closed_one_reads_as_freed() {
        let object = create(Kind::Slice, type_hash::<u32>(), &[1, 0, 0, 0]).expect("create");
        let handle = object.handle;
        let describe = || "a `SharedSlice<u32>`".to_owned();
        let map = open(&handle, Kind::Slice, type_hash::<u32>(), &describe).expect("opens");
        assert_eq!(from_bytes::<u32>(map.payload()), [1]);
        // Another element type is refused by name.
        let wrong = open(&handle, Kind::Slice, type_hash::<u8>(), &|| {
            "a `SharedSlice<u8>`".into()
        });
        assert!(
            matches!(&wrong, Err(ShareError::WrongType { expected, .. }) if expected.contains("u8")),
            "{:?}",
            wrong.err()
        );
        // Another object under the same number: its id differs.
        let stale = Handle {
            id: handle.id ^ 1,
            ..handle
        };
        let err = open(&stale, Kind::Slice, type_hash::<u32>(), &describe).expect_err("stale");
        assert_eq!(
            err,
            ShareError::Freed {
                pid: handle.pid,
                id: stale.id
            }
        );
        assert!(err.to_string().contains("keep a handle alive"), "{err}");
        drop(map);
        drop(object);
        // Closed: the number names nothing, or something else.
        let err = open(&handle, Kind::Slice, type_hash::<u32>(), &describe).expect_err("closed");
        assert!(matches!(err, ShareError::Freed { .. }), "{err:?}");
    }

    #[test]
    fn objects_are_sealed_read_only_memfds() {
        let object = create(Kind::Value, 7, b"payload").expect("create");
        let fd = &object.fd;
        let seals = rustix::fs::fcntl_get_seals(fd).expect("seals");
        assert!(seals.contains(SEALS), "{seals:?}");
        assert!(
            rustix::io::pwrite(fd, b"x", 0).is_err(),
            "a sealed memfd refuses writes"
        );
        assert!(rustix::fs::ftruncate(fd, 1).is_err(), "and shrinking");
        let link = rustix::fs::readlink(format!("/proc/self/fd/{}", object.handle.fd), Vec::new())
            .expect("link");
        assert!(link.as_bytes().starts_with(LINK_PREFIX), "{link:?}");
    }

    #[test]
    fn pinning_keeps_each_encoded_object_once() {
        let shared = share(vec![1u8, 2, 3]).expect("share");
        let mut pins = Pins::default();
        let bytes = pinning(&mut pins, || {
            pool_core::encode::to_vec(&(shared.clone(), shared.clone())).expect("encode")
        });
        assert_eq!(pins.0.len(), 1);
        let id = shared.handle.id;
        drop(shared);
        // Still live: the pins hold it, and a handle decoded here finds it.
        let back: (Shared<Vec<u8>>, Shared<Vec<u8>>) =
            pool_core::decode::from_bytes(&bytes).expect("decode");
        assert_eq!(*back.0, [1, 2, 3]);
        drop((back, pins));
        let err = pool_core::decode::from_bytes::<Shared<Vec<u8>>>(&bytes).expect_err("freed");
        assert!(
            err.to_string().contains(&format!("{id:032x} of process")),
            "{err}"
        );
        // Outside `pinning`, serializing keeps nothing.
        assert!(COLLECT.with(|c| c.borrow().is_none()));
    }

    #[test]
    fn a_handle_decoded_as_another_type_is_refused() {
        let shared = share(5u64).expect("share");
        let bytes = pool_core::encode::to_vec(&shared).expect("encode");
        let err = pool_core::decode::from_bytes::<Shared<String>>(&bytes).expect_err("type");
        assert!(
            err.to_string().contains("Shared<alloc::string::String>"),
            "{err}"
        );
        let err = pool_core::decode::from_bytes::<SharedSlice<u8>>(&bytes).expect_err("kind");
        assert!(err.to_string().contains("SharedSlice<u8>"), "{err}");
    }
}
