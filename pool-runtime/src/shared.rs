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
const NAME: &str = "pool-runtime-shared";
/// What a link to one of our memfds starts with.
const LINK_PREFIX: &[u8] = b"/memfd:pool-runtime-shared";
/// The header's first bytes.
const MAGIC: [u8; 8] = *b"poolshr\0";
/// The header's layout version.
const VERSION: u32 = 1;
/// The header's size: magic, version, kind, id, length, type.
const HEADER: usize = 48;
/// Where the payload starts: one page after the header's start, so the
/// elements of a [`SharedSlice`] are page-aligned.
const PAYLOAD: usize = 4096;
/// The seals of a finished object: nothing may write, grow or shrink it,
/// nor change its seals.
const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK)
    .union(SealFlags::SEAL);

/// What a shared object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A postcard-encoded value ([`Shared`]).
    Value = 1,
    /// Raw elements ([`SharedSlice`]).
    Slice = 2,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Kind> {
        match raw {
            1 => Some(Kind::Value),
            2 => Some(Kind::Slice),
            _ => None,
        }
    }
}

/// A type's fingerprint in a header: FNV-1a of its name (the parent and
/// its workers run one binary, so they agree).
fn type_hash<T: ?Sized>() -> u64 {
    pool_core::task_id(std::any::type_name::<T>())
}

/// What crosses the wire in place of a shared value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Handle {
    /// The process that shared it.
    pid: u32,
    /// The memfd's descriptor number in that process.
    fd: i32,
    /// The object's random id, repeated in its header.
    id: u128,
    /// The payload's length in bytes.
    len: u64,
}

/// The first [`HEADER`] bytes of a shared object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    kind: u32,
    id: u128,
    len: u64,
    ty: u64,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER] {
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
    fn parse(bytes: &[u8]) -> Option<Header> {
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
enum ShareError {
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

// ---------------------------------------------------------------------------
// The owner's side.

/// A memfd this process shared. Dropping it closes the memfd.
struct Object {
    handle: Handle,
    kind: Kind,
    ty: u64,
    fd: OwnedFd,
}

impl Drop for Object {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(id, _)| *id != self.handle.id);
        LIVE_COUNT.store(live.len(), Ordering::Relaxed);
    }
}

/// Something kept alive for as long as a call (or an object) needs it.
type Keep = Arc<dyn Any + Send + Sync>;

/// The objects this process shared and that are still alive, by id, for
/// handles that come back to it (in a task's result).
static LIVE: Mutex<Vec<(u128, Weak<dyn Any + Send + Sync>)>> = Mutex::new(Vec::new());
/// `LIVE.len()`, read without the lock: no call pays for pinning while
/// nothing is shared.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);

fn register(id: u128, owner: Keep) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.push((id, Arc::downgrade(&owner)));
    LIVE_COUNT.store(live.len(), Ordering::Relaxed);
}

/// The live owner of `handle`, if this process shared it and still holds
/// a handle to it.
fn live_owner(handle: &Handle) -> Result<Keep, ShareError> {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.iter()
        .find(|(id, _)| *id == handle.id)
        .and_then(|(_, owner)| owner.upgrade())
        .ok_or(ShareError::Freed {
            pid: handle.pid,
            id: handle.id,
        })
}

/// Handles kept alive by a call: every shared object whose handle was
/// encoded into the call's arguments.
#[derive(Default)]
pub(crate) struct Pins(Vec<Keep>);

thread_local! {
    /// Where handles encoded on this thread are kept, while [`pinning`] runs.
    static COLLECT: RefCell<Option<Vec<Keep>>> = const { RefCell::new(None) };
}

/// Runs `encode`, adding to `pins` every shared object whose handle it
/// serializes on this thread. A call encodes its arguments under this, so
/// that the objects outlive the items that name them, even if the caller
/// drops its last handle meanwhile (a `move` closure over the handle in
/// the input iterator does, once the input ends).
pub(crate) fn pinning<R>(pins: &mut Pins, encode: impl FnOnce() -> R) -> R {
    if LIVE_COUNT.load(Ordering::Relaxed) == 0 {
        return encode();
    }
    /// Puts back what was collected, even if `encode` panics.
    struct Restore<'a> {
        pins: &'a mut Pins,
        outer: Option<Vec<Keep>>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let ours = COLLECT.with(|c| c.replace(self.outer.take()));
            self.pins.0 = ours.unwrap_or_default();
        }
    }
    let ours = std::mem::take(&mut pins.0);
    let outer = COLLECT.with(|c| c.replace(Some(ours)));
    let _restore = Restore { pins, outer };
    encode()
}

/// Keeps `owner` with the encoding in progress, if one collects.
fn pin(owner: Keep) {
    COLLECT.with(|c| {
        if let Some(kept) = c.borrow_mut().as_mut()
            && !kept
                .iter()
                .any(|k| std::ptr::addr_eq(Arc::as_ptr(k), Arc::as_ptr(&owner)))
        {
            kept.push(owner);
        }
    });
}

/// A random 128-bit id.
fn random_id() -> io::Result<u128> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(u128::from_le_bytes(bytes))
}

/// Writes all of `bytes` at `offset` of `fd`.
fn write_all_at(fd: &OwnedFd, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    // One system call copies at most this much (Linux caps it near 2 GiB).
    const STEP: usize = 1 << 30;
    while !bytes.is_empty() {
        let step = bytes.len().min(STEP);
        let n = rustix::io::retry_on_intr(|| rustix::io::pwrite(fd, &bytes[..step], offset))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Creates a sealed memfd holding `payload` after its header.
fn create(kind: Kind, ty: u64, payload: &[u8]) -> Result<Object, (String, io::Error)> {
    let step = |what: &str| {
        let what = what.to_owned();
        move |err: io::Error| (what, err)
    };
    let fd = rustix::fs::memfd_create(NAME, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(io::Error::from)
        .map_err(step("creating its memfd failed"))?;
    let id = random_id().map_err(step("drawing its random id failed"))?;
    let len = payload.len() as u64;
    let header = Header {
        kind: kind as u32,
        id,
        len,
        ty,
    };
    rustix::fs::ftruncate(&fd, PAYLOAD as u64 + len)
        .map_err(io::Error::from)
        .map_err(step(
            "sizing its memfd failed (out of memory, or a memory limit?)",
        ))?;
    write_all_at(&fd, &header.to_bytes(), 0)
        .and_then(|()| write_all_at(&fd, payload, PAYLOAD as u64))
        .map_err(step(
            "writing its memfd failed (out of memory, or a memory limit?)",
        ))?;
    rustix::fs::fcntl_add_seals(&fd, SEALS)
        .map_err(io::Error::from)
        .map_err(step("sealing its memfd failed"))?;
    let handle = Handle {
        pid: std::process::id(),
        fd: fd.as_raw_fd(),
        id,
        len,
    };
    Ok(Object {
        handle,
        kind,
        ty,
        fd,
    })
}

fn share_error<T: ?Sized>(reason: String, source: Option<io::Error>) -> Error {
    Error::Share {
        ty: std::any::type_name::<T>(),
        reason,
        source,
    }
}

/// See [`Pool::share`](crate::Pool::share).
pub(crate) fn share<T>(value: T) -> Result<Shared<T>, Error>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    // Handles inside `value` need no pinning: the value kept here holds them.
    let bytes = pool_core::encode::to_vec(&value)
        .map_err(|err| share_error::<T>(format!("it could not be encoded: {err}"), None))?;
    let object = create(Kind::Value, type_hash::<T>(), &bytes)
        .map_err(|(what, err)| share_error::<T>(what, Some(err)))?;
    drop(bytes);
    let handle = object.handle;
    let owner = Arc::new(ValueOwner { value, object });
    register(handle.id, owner.clone());
    Ok(Shared {
        handle,
        source: ValueSource::Owner(owner),
    })
}

/// See [`Pool::share_slice`](crate::Pool::share_slice).
pub(crate) fn share_slice<E: Plain>(data: &[E]) -> Result<SharedSlice<E>, Error> {
    let object = create(Kind::Slice, type_hash::<E>(), as_bytes(data))
        .map_err(|(what, err)| share_error::<[E]>(what, Some(err)))?;
    let handle = object.handle;
    let map = Mapping::new(&object.fd, PAYLOAD + as_bytes(data).len())
        .map_err(|err| share_error::<[E]>("mapping its memfd failed".to_owned(), Some(err)))?;
    let owner = Arc::new(SliceOwner { map, object });
    register(handle.id, owner.clone());
    Ok(SharedSlice {
        handle,
        source: SliceSource::Owner(owner),
        _element: PhantomData,
    })
}

// ---------------------------------------------------------------------------
// Mappings.

/// A read-only shared mapping of a whole sealed object (header and
/// payload). Unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and its file sealed: no thread can
// change the bytes, so sharing references to them across threads is safe.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd`, which must be sealed with
    /// [`SEALS`] and exactly `len` bytes long (checked by the callers).
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
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
    fn payload(&self) -> &[u8] {
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

// ---------------------------------------------------------------------------
// The worker's side.

/// The pid of the pool this worker serves (0 outside workers).
static POOL_PID: AtomicU32 = AtomicU32::new(0);

/// Records, in a worker or a fork server (whose forks inherit it), the pid
/// of the pool's process.
pub(crate) fn set_pool_process(pid: u32) {
    POOL_PID.store(pid, Ordering::Relaxed);
}

/// Whether this process may open objects of process `owner`: it must be a
/// local worker of one of `owner`'s pools.
fn reachable(owner: u32, id: u128, pool: u32, mpi_rank: Option<u32>) -> Result<(), ShareError> {
    match (pool, mpi_rank) {
        (pool, _) if pool == owner && pool != 0 => Ok(()),
        (0, Some(rank)) => Err(ShareError::Remote { owner, rank }),
        (0, None) => Err(ShareError::Outside { owner, id }),
        (pool, _) => Err(ShareError::NotOwner { owner, pool, id }),
    }
}

/// What a worker resolved, by object id.
struct Entry {
    id: u128,
    kind: Kind,
    ty: u64,
    /// `Arc<T>` for a value, `Arc<Mapping>` for a slice.
    keep: Keep,
}

/// The worker's resolved objects, most recently used first, at most
/// [`CACHE_ENTRIES`].
static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The object a worker's cache holds for `handle`, else `load`s it from
/// its mapping and caches it. The cache is not locked while loading: a
/// value may hold handles to other shared values, resolved as it is
/// decoded. Tasks run on one thread, so each object is loaded once per
/// worker (threads of a task racing for one object may each load it; the
/// first loaded is kept).
fn cached(
    handle: &Handle,
    kind: Kind,
    ty: u64,
    describe: &dyn Fn() -> String,
    load: &dyn Fn(Mapping) -> Result<Keep, ShareError>,
) -> Result<Keep, ShareError> {
    if let Some(found) = cache_hit(handle.id) {
        check_type(handle.id, (found.kind, found.ty), (kind, ty), describe)?;
        return Ok(found.keep);
    }
    let keep = load(open(handle, kind, ty, describe)?)?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(at) = cache.iter().position(|e| e.id == handle.id) {
        let entry = cache.remove(at);
        let kept = entry.keep.clone();
        cache.insert(0, entry);
        return Ok(kept);
    }
    cache.insert(
        0,
        Entry {
            id: handle.id,
            kind,
            ty,
            keep: keep.clone(),
        },
    );
    let keep_len = cache.len().min(CACHE_ENTRIES);
    let evicted = cache.split_off(keep_len);
    drop(cache);
    drop(evicted);
    Ok(keep)
}

/// The cache's entry for object `id`, now the most recently used.
fn cache_hit(id: u128) -> Option<Entry> {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let at = cache.iter().position(|e| e.id == id)?;
    let entry = cache.remove(at);
    let found = Entry {
        keep: entry.keep.clone(),
        ..entry
    };
    cache.insert(0, entry);
    Some(found)
}

fn check_type(
    id: u128,
    found: (Kind, u64),
    expected: (Kind, u64),
    describe: &dyn Fn() -> String,
) -> Result<(), ShareError> {
    if found == expected {
        return Ok(());
    }
    let found = match found.0 {
        Kind::Value => "a `Shared` value of another type",
        Kind::Slice => "a `SharedSlice` of another element type",
    };
    Err(ShareError::WrongType {
        id,
        found: found.to_owned(),
        expected: describe(),
    })
}

/// Opens, checks and maps the object `handle` names, through `/proc`.
fn open(
    handle: &Handle,
    kind: Kind,
    ty: u64,
    describe: &dyn Fn() -> String,
) -> Result<Mapping, ShareError> {
    let (pid, id) = (handle.pid, handle.id);
    let path = format!("/proc/{pid}/fd/{}", handle.fd);
    let gone = |err: rustix::io::Errno| {
        if err == rustix::io::Errno::ACCESS || err == rustix::io::Errno::PERM {
            ShareError::Access {
                path: path.clone(),
                reason: io::Error::from(err).to_string(),
            }
        } else if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ShareError::Freed { pid, id }
        } else {
            ShareError::OwnerExited { pid, id }
        }
    };
    // The link first: whatever now has that number must be one of our
    // memfds before it is opened (opening a pipe or a device could block
    // or act on it).
    let link = rustix::fs::readlink(&path, Vec::new()).map_err(gone)?;
    if !link.as_bytes().starts_with(LINK_PREFIX) {
        return Err(ShareError::Freed { pid, id });
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rustix::fs::open(&path, flags, Mode::empty()).map_err(gone)?;
    let io_error = |err: rustix::io::Errno| ShareError::Io {
        id,
        reason: io::Error::from(err).to_string(),
    };
    let stat = rustix::fs::fstat(&fd).map_err(io_error)?;
    let mut header = [0u8; HEADER];
    let read = if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
        rustix::io::pread(&fd, &mut header, 0).map_err(io_error)?
    } else {
        0
    };
    let found = Header::parse(&header[..read]).filter(|h| h.id == id);
    let Some(found) = found else {
        // Another object has taken the number since.
        return Err(ShareError::Freed { pid, id });
    };
    let found_kind = Kind::from_raw(found.kind).ok_or_else(|| ShareError::Io {
        id,
        reason: format!("its header names an unknown kind {}", found.kind),
    })?;
    check_type(id, (found_kind, found.ty), (kind, ty), describe)?;
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(io_error)?;
    let size = PAYLOAD as u64 + found.len;
    if !seals.contains(SEALS) || found.len != handle.len || stat.st_size as u64 != size {
        return Err(ShareError::Io {
            id,
            reason: "it is not sealed, or its length does not match its handle".to_owned(),
        });
    }
    let size = usize::try_from(size).map_err(|_| ShareError::Io {
        id,
        reason: "it is larger than this process's address space".to_owned(),
    })?;
    Mapping::new(&fd, size).map_err(|err| ShareError::Io {
        id,
        reason: format!("mapping it failed: {err}"),
    })
}

/// What `handle` names, for a process other than its owner.
fn resolve_remote(
    handle: &Handle,
    kind: Kind,
    ty: u64,
    describe: &dyn Fn() -> String,
    load: &dyn Fn(Mapping) -> Result<Keep, ShareError>,
) -> Result<Keep, ShareError> {
    reachable(
        handle.pid,
        handle.id,
        POOL_PID.load(Ordering::Relaxed),
        crate::mpi_rank(),
    )?;
    cached(handle, kind, ty, describe, load)
}

// ---------------------------------------------------------------------------
// Shared<T>.

/// The owner's side of a [`Shared`].
struct ValueOwner<T> {
    value: T,
    object: Object,
}

enum ValueSource<T> {
    /// In the process that shared it.
    Owner(Arc<ValueOwner<T>>),
    /// In a worker: decoded from the mapping.
    Decoded(Arc<T>),
}

/// A value shared once with every worker of this process's pools: the
/// typed answer to `ray.put`.
///
/// [`Pool::share`](crate::Pool::share) encodes it once (postcard) into a
/// sealed, read-only `memfd`; passed to a task, a `Shared<T>` travels as a
/// handle of a few dozen bytes, whatever the size of `T`. Each worker
/// decodes the value once, the first time an item names it, and keeps it
/// in a small cache ([`CACHE_ENTRIES`] objects), so a thousand items cost
/// one decoding per worker. A task reads it as `&T` ([`Deref`],
/// [`Shared::get`]).
///
/// Each worker holds its own decoded copy: a `Shared<Vec<f64>>` of 1 GiB
/// costs every worker 1 GiB. For arrays of numbers or bytes use
/// [`SharedSlice`] ([`Pool::share_slice`](crate::Pool::share_slice)),
/// which workers read in place, page by page, with no copy.
///
/// Clones are cheap (an `Arc`). In the process that shared it, the value
/// and its memfd live until the last clone is dropped, and every call that
/// sends a handle keeps the value alive until that call is done. Workers
/// open the memfd through `/proc/<pid>/fd/<n>` of the pool's process: they
/// must run on the same machine as the same user (so not on the ranks of
/// the MPI backend), and a handle works only in the process that created
/// it and the workers of its pools. Otherwise, or once the value was
/// dropped, the item fails with [`Error::Serialization`] and
/// [`TaskFailure::BadArguments`](crate::TaskFailure::BadArguments), whose
/// message says which. An initializer's arguments
/// ([`PoolBuilder::initializer`](crate::PoolBuilder::initializer)) do not
/// keep a handle alive: keep one for as long as the pool may start
/// workers.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use pool_runtime::prelude::*;
/// use pool_runtime::task;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Model {
///     name: String,
///     weights: HashMap<String, f64>,
/// }
///
/// #[task]
/// fn score(model: Shared<Model>, word: String) -> f64 {
///     model.weights.get(&word).copied().unwrap_or(0.0) // `model` derefs to `&Model`
/// }
///
/// #[pool_runtime::main]
/// fn main() -> Result<(), Error> {
///     let pool = Pool::builder().processes(2).build()?;
///     let weights = HashMap::from([("a".to_owned(), 1.5), ("b".to_owned(), -2.0)]);
///     let model = pool.share(Model { name: "m".into(), weights })?;
///     let words = ["a", "b", "c"].map(|w| (model.clone(), w.to_owned()));
///     assert_eq!(pool.starmap(task!(score), words)?, [1.5, -2.0, 0.0]);
///     assert_eq!(model.name, "m"); // the parent reads it too
///     Ok(())
/// }
/// ```
pub struct Shared<T> {
    handle: Handle,
    source: ValueSource<T>,
}

impl<T> Shared<T> {
    /// The shared value.
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(1).build()?;
    /// let table = pool.share(vec![1u32, 2, 3])?;
    /// assert_eq!(table.get(), &[1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn get(&self) -> &T {
        match &self.source {
            ValueSource::Owner(owner) => &owner.value,
            ValueSource::Decoded(value) => value,
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.get()
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            handle: self.handle,
            source: match &self.source {
                ValueSource::Owner(owner) => ValueSource::Owner(Arc::clone(owner)),
                ValueSource::Decoded(value) => ValueSource::Decoded(Arc::clone(value)),
            },
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("owner", &self.handle.pid)
            .field("id", &format_args!("{:032x}", self.handle.id))
            .field("value", self.get())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let ValueSource::Owner(owner) = &self.source {
            pin(owner.clone());
        }
        self.handle.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Shared<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let handle = Handle::deserialize(deserializer)?;
        Shared::resolve(handle).map_err(D::Error::custom)
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Shared<T> {
    fn resolve(handle: Handle) -> Result<Shared<T>, ShareError> {
        let ty = type_hash::<T>();
        let describe = || format!("a `Shared<{}>`", std::any::type_name::<T>());
        let source = if handle.pid == std::process::id() {
            let owner = live_owner(&handle)?;
            let owner = owner.downcast::<ValueOwner<T>>().map_err(|owner| {
                let found = owner.downcast_ref::<SliceOwner>().map_or(
                    "a `Shared` value of another type",
                    |_| "a `SharedSlice` of another element type",
                );
                ShareError::WrongType {
                    id: handle.id,
                    found: found.to_owned(),
                    expected: describe(),
                }
            })?;
            debug_assert_eq!((owner.object.kind, owner.object.ty), (Kind::Value, ty));
            ValueSource::Owner(owner)
        } else {
            let load = |map: Mapping| -> Result<Keep, ShareError> {
                let value: T = pool_core::decode::from_bytes(map.payload()).map_err(|err| {
                    ShareError::Decode {
                        ty: std::any::type_name::<T>(),
                        reason: err.to_string(),
                    }
                })?;
                Ok(Arc::new(value))
            };
            let keep = resolve_remote(&handle, Kind::Value, ty, &describe, &load)?;
            let value = keep.downcast::<T>().map_err(|_| ShareError::WrongType {
                id: handle.id,
                found: "a `Shared` value of another type".to_owned(),
                expected: describe(),
            })?;
            ValueSource::Decoded(value)
        };
        Ok(Shared { handle, source })
    }
}

// ---------------------------------------------------------------------------
// SharedSlice<E>.

/// The element types a [`SharedSlice`] holds: plain numbers, laid out as
/// in memory, any bit pattern valid. Implemented for `u8`, `i8`, `u16`,
/// `i16`, `u32`, `i32`, `u64`, `i64`, `f32` and `f64`; sealed.
///
/// ```
/// fn takes<E: pool_runtime::Plain>() {}
/// takes::<f64>();
/// takes::<u8>();
/// ```
pub trait Plain: plain::Sealed + Copy + Send + Sync + 'static {}

mod plain {
    /// Sealing [`Plain`](super::Plain): only the types listed there
    /// (no padding, every bit pattern valid).
    pub trait Sealed {}
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl plain::Sealed for $t {}
        impl Plain for $t {}
    )*};
}

plain!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

/// `data`'s bytes.
fn as_bytes<E: Plain>(data: &[E]) -> &[u8] {
    // SAFETY: every `Plain` type is a primitive number without padding, so
    // each of its bytes is initialized; `u8` has alignment 1 and the length
    // is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}

/// `bytes` as elements: `bytes` must start at a multiple of `E`'s
/// alignment and hold a whole number of them (a payload always does: it
/// starts a page into its mapping, and its length was checked).
fn from_bytes<E: Plain>(bytes: &[u8]) -> &[E] {
    let size = std::mem::size_of::<E>();
    assert!(
        bytes.as_ptr().align_offset(std::mem::align_of::<E>()) == 0
            && bytes.len().is_multiple_of(size),
        "a shared slice's payload is misaligned or cut"
    );
    // SAFETY: aligned and whole (asserted above); every bit pattern is a
    // valid `E` (`Plain`); the bytes never change while borrowed (sealed
    // mapping, see `Mapping::new`).
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size) }
}

/// The owner's side of a [`SharedSlice`]: the memfd and this process's
/// own read-only mapping of it.
struct SliceOwner {
    map: Mapping,
    object: Object,
}

enum SliceSource {
    /// In the process that shared it.
    Owner(Arc<SliceOwner>),
    /// In a worker.
    Mapped(Arc<Mapping>),
}

/// An array of numbers or bytes shared once with every worker, read in
/// place: the typed answer to joblib's memmapping.
///
/// [`Pool::share_slice`](crate::Pool::share_slice) copies the elements
/// once, raw and page-aligned, into a sealed, read-only `memfd`; passed to
/// a task, a `SharedSlice<E>` travels as a handle of a few dozen bytes.
/// A worker maps the memfd read-only and the task reads it as `&[E]`
/// ([`Deref`], [`SharedSlice::get`]) with no decoding and no copy: all
/// processes read the same physical pages, and each worker's memory
/// (its Pss) grows only by the pages it touches. Workers keep the mapping
/// in a small cache ([`CACHE_ENTRIES`] objects) between items.
///
/// Lifetime and reach are those of [`Shared`]: clones are cheap, the
/// memfd is closed when the last clone in the sharing process is dropped
/// (calls that send a handle keep it until they are done), and workers
/// must run on the same machine as the same user.
///
/// # Examples
///
/// ```
/// use pool_runtime::prelude::*;
/// use pool_runtime::task;
///
/// #[task]
/// fn sum_range(data: SharedSlice<f64>, start: usize, end: usize) -> f64 {
///     data[start..end].iter().sum() // `data` derefs to `&[f64]`
/// }
///
/// #[pool_runtime::main]
/// fn main() -> Result<(), Error> {
///     let pool = Pool::builder().processes(2).build()?;
///     let data: Vec<f64> = (0..1000).map(f64::from).collect();
///     let shared = pool.share_slice(&data)?;
///     drop(data); // the parent no longer needs its own copy
///     let parts = (0..10).map(|i| (shared.clone(), i * 100, (i + 1) * 100));
///     let total: f64 = pool.starmap(task!(sum_range), parts)?.iter().sum();
///     assert_eq!(total, 499_500.0);
///     assert_eq!(shared.len(), 1000); // the parent reads it in place too
///     Ok(())
/// }
/// ```
pub struct SharedSlice<E> {
    handle: Handle,
    source: SliceSource,
    _element: PhantomData<E>,
}

impl<E: Plain> SharedSlice<E> {
    /// The shared elements.
    ///
    /// ```
    /// # use pool_runtime::prelude::*;
    /// # #[pool_runtime::main]
    /// # fn main() -> Result<(), Error> {
    /// let pool = Pool::builder().processes(1).build()?;
    /// let bytes = pool.share_slice(b"abc")?;
    /// assert_eq!(bytes.get(), b"abc");
    /// # Ok(()) }
    /// ```
    pub fn get(&self) -> &[E] {
        let map = match &self.source {
            SliceSource::Owner(owner) => &owner.map,
            SliceSource::Mapped(map) => map,
        };
        from_bytes(map.payload())
    }
}

impl<E: Plain> Deref for SharedSlice<E> {
    type Target = [E];

    fn deref(&self) -> &[E] {
        self.get()
    }
}

impl<E> Clone for SharedSlice<E> {
    fn clone(&self) -> Self {
        SharedSlice {
            handle: self.handle,
            source: match &self.source {
                SliceSource::Owner(owner) => SliceSource::Owner(Arc::clone(owner)),
                SliceSource::Mapped(map) => SliceSource::Mapped(Arc::clone(map)),
            },
            _element: PhantomData,
        }
    }
}

impl<E: Plain> fmt::Debug for SharedSlice<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlice")
            .field("owner", &self.handle.pid)
            .field("id", &format_args!("{:032x}", self.handle.id))
            .field("element", &std::any::type_name::<E>())
            .field("len", &self.get().len())
            .finish()
    }
}

impl<E: Plain> Serialize for SharedSlice<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let SliceSource::Owner(owner) = &self.source {
            pin(owner.clone());
        }
        self.handle.serialize(serializer)
    }
}

impl<'de, E: Plain> Deserialize<'de> for SharedSlice<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let handle = Handle::deserialize(deserializer)?;
        SharedSlice::resolve(handle).map_err(D::Error::custom)
    }
}

impl<E: Plain> SharedSlice<E> {
    fn resolve(handle: Handle) -> Result<SharedSlice<E>, ShareError> {
        let ty = type_hash::<E>();
        let describe = || format!("a `SharedSlice<{}>`", std::any::type_name::<E>());
        let source = if handle.pid == std::process::id() {
            let owner = live_owner(&handle)?;
            let owner = owner
                .downcast::<SliceOwner>()
                .ok()
                .filter(|o| (o.object.kind, o.object.ty) == (Kind::Slice, ty));
            let Some(owner) = owner else {
                return Err(ShareError::WrongType {
                    id: handle.id,
                    found: "a shared value of another type".to_owned(),
                    expected: describe(),
                });
            };
            SliceSource::Owner(owner)
        } else {
            let load = |map: Mapping| -> Result<Keep, ShareError> {
                if !map.payload().len().is_multiple_of(std::mem::size_of::<E>()) {
                    return Err(ShareError::Io {
                        id: handle.id,
                        reason: "its length is not a whole number of elements".to_owned(),
                    });
                }
                Ok(Arc::new(map))
            };
            let keep = resolve_remote(&handle, Kind::Slice, ty, &describe, &load)?;
            let map = keep
                .downcast::<Mapping>()
                .map_err(|_| ShareError::WrongType {
                    id: handle.id,
                    found: "a shared value of another type".to_owned(),
                    expected: describe(),
                })?;
            SliceSource::Mapped(map)
        };
        Ok(SharedSlice {
            handle,
            source,
            _element: PhantomData,
        })
    }
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
