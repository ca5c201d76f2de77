//! The owner's side: the memfds this process shared, which handles are
//! alive, and the pins that keep them alive while a call carries them.

#[allow(unused_imports)]
use super::*;

/// A memfd this process shared. Dropping it closes the memfd.
pub(super) struct Object {
    pub(super) handle: Handle,
    pub(super) kind: Kind,
    pub(super) ty: u64,
    pub(super) fd: OwnedFd,
}

impl Drop for Object {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(id, _)| *id != self.handle.id);
        LIVE_COUNT.store(live.len(), Ordering::Relaxed);
    }
}

/// Something kept alive for as long as a call (or an object) needs it.
pub(super) type Keep = Arc<dyn Any + Send + Sync>;

/// The objects this process shared and that are still alive, by id, for
/// handles that come back to it (in a task's result).
pub(super) static LIVE: Mutex<Vec<(u128, Weak<dyn Any + Send + Sync>)>> = Mutex::new(Vec::new());
/// `LIVE.len()`, read without the lock: no call pays for pinning while
/// nothing is shared.
pub(super) static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);

pub(super) fn register(id: u128, owner: Keep) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.push((id, Arc::downgrade(&owner)));
    LIVE_COUNT.store(live.len(), Ordering::Relaxed);
}

/// The live owner of `handle`, if this process shared it and still holds
/// a handle to it.
pub(super) fn live_owner(handle: &Handle) -> Result<Keep, ShareError> {
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
pub(crate) struct Pins(pub(super) Vec<Keep>);

thread_local! {
    /// Where handles encoded on this thread are kept, while [`pinning`] runs.
    pub(super) static COLLECT: RefCell<Option<Vec<Keep>>> = const { RefCell::new(None) };
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
pub(super) fn pin(owner: Keep) {
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
pub(super) fn random_id() -> io::Result<u128> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(u128::from_le_bytes(bytes))
}

/// Writes all of `bytes` at `offset` of `fd`.
pub(super) fn write_all_at(fd: &OwnedFd, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
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
pub(super) fn create(kind: Kind, ty: u64, payload: &[u8]) -> Result<Object, (String, io::Error)> {
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

pub(super) fn share_error<T: ?Sized>(reason: String, source: Option<io::Error>) -> Error {
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
    let mut bytes = Vec::new();
    pool_core::encode::encode_value_limited(&mut bytes, &value, usize::MAX)
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
