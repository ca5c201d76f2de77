//! The worker's side: resolving a handle (open, check, map, decode) and
//! the per-process cache of what it resolved.

#[allow(unused_imports)]
use super::*;

/// The pid of the pool this worker serves (0 outside workers).
pub(super) static POOL_PID: AtomicU32 = AtomicU32::new(0);

/// Records, in a worker or a fork server (whose forks inherit it), the pid
/// of the pool's process.
pub(crate) fn set_pool_process(pid: u32) {
    POOL_PID.store(pid, Ordering::Relaxed);
}

/// Whether this process may open objects of process `owner`: it must be a
/// local worker of one of `owner`'s pools.
pub(super) fn reachable(
    owner: u32,
    id: u128,
    pool: u32,
    mpi_rank: Option<u32>,
) -> Result<(), ShareError> {
    match (pool, mpi_rank) {
        (pool, _) if pool == owner && pool != 0 => Ok(()),
        (0, Some(rank)) => Err(ShareError::Remote { owner, rank }),
        (0, None) => Err(ShareError::Outside { owner, id }),
        (pool, _) => Err(ShareError::NotOwner { owner, pool, id }),
    }
}

/// What a worker resolved, by object id.
pub(super) struct Entry {
    pub(super) id: u128,
    pub(super) kind: Kind,
    pub(super) ty: u64,
    /// `Arc<T>` for a value, `Arc<Mapping>` for a slice.
    pub(super) keep: Keep,
}

/// The worker's resolved objects, most recently used first, at most
/// [`CACHE_ENTRIES`].
pub(super) static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The object a worker's cache holds for `handle`, else `load`s it from
/// its mapping and caches it. The cache is not locked while loading: a
/// value may hold handles to other shared values, resolved as it is
/// decoded. Tasks run on one thread, so each object is loaded once per
/// worker (threads of a task racing for one object may each load it; the
/// first loaded is kept).
pub(super) fn cached(
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
pub(super) fn cache_hit(id: u128) -> Option<Entry> {
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

pub(super) fn check_type(
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
pub(super) fn open(
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
pub(super) fn resolve_remote(
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
