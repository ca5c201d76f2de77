//! [`Shared<T>`](Shared): a value decoded once per worker.

#[allow(unused_imports)]
use super::*;

/// The owner's side of a [`Shared`].
pub(super) struct ValueOwner<T> {
    pub(super) value: T,
    pub(super) object: Object,
}

pub(super) enum ValueSource<T> {
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
    pub(super) handle: Handle,
    pub(super) source: ValueSource<T>,
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
    pub(super) fn resolve(handle: Handle) -> Result<Shared<T>, ShareError> {
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
                let value: T =
                    pool_core::decode::value_from_bytes(map.payload()).map_err(|err| {
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
