//! [`SharedSlice<E>`](SharedSlice): plain numbers read in place.

#[allow(unused_imports)]
use super::*;

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
pub(super) fn as_bytes<E: Plain>(data: &[E]) -> &[u8] {
    // SAFETY: every `Plain` type is a primitive number without padding, so
    // each of its bytes is initialized; `u8` has alignment 1 and the length
    // is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}

/// `bytes` as elements: `bytes` must start at a multiple of `E`'s
/// alignment and hold a whole number of them (a payload always does: it
/// starts a page into its mapping, and its length was checked).
pub(super) fn from_bytes<E: Plain>(bytes: &[u8]) -> &[E] {
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
pub(super) struct SliceOwner {
    pub(super) map: Mapping,
    pub(super) object: Object,
}

pub(super) enum SliceSource {
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
    pub(super) handle: Handle,
    pub(super) source: SliceSource,
    pub(super) _element: PhantomData<E>,
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
    pub(super) fn resolve(handle: Handle) -> Result<SharedSlice<E>, ShareError> {
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
