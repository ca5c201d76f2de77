//! A typed process pool: Python's `multiprocessing.Pool`, checked by the
//! compiler.
//!
//! ```no_run
//! use pool_runtime::prelude::*; // Pool, Error and the task!(...) macro
//! use pool_runtime::task; // the #[task] attribute
//!
//! #[task]
//! fn power(x: u64, n: u32) -> u64 {
//!     x.pow(n)
//! }
//!
//! #[pool_runtime::main] // or: pool_runtime::init(); as the first line of main
//! fn main() -> Result<(), pool_runtime::Error> {
//!     let pool = Pool::new()?; // one worker process per CPU
//!     let out: Vec<u64> = pool.starmap(task!(power), [(2, 3), (3, 2), (4, 1)])?;
//!     assert_eq!(out, [8, 9, 4]);
//!     Ok(())
//! }
//! ```
//!
//! - [`#[task]`](macro@task) registers a function under a stable id and
//!   generates its typed argument struct; [`task!`](prelude::task) names it.
//!   Wrong argument types or counts do not compile.
//! - The pool re-executes this program's own binary as its workers, which is
//!   why `main` starts with [`init`] (or [`#[main]`](macro@main)): in a worker,
//!   `init()` serves tasks and never returns. Whatever runs before it runs in
//!   every worker too.
//! - Arguments and results travel as postcard over a private socket; the
//!   worker's stdout and stderr are the terminal's, so `println!` in a task
//!   prints as in Python.
//! - A panic in a task, or a worker that dies (abort, signal,
//!   `process::exit`), is an [`Error`] naming the task and the item; the pool
//!   replaces the worker and goes on.
//!
//! # Operations
//!
//! | Python | Rust |
//! |---|---|
//! | `Pool(processes=4)` | [`Pool::builder()`](Pool::builder)`.processes(4).build()?` |
//! | `pool.map(f, xs)` | [`pool.map(task!(f), xs)?`](Pool::map) |
//! | `pool.starmap(f, pairs)` | [`pool.starmap(task!(f), pairs)?`](Pool::starmap) |
//! | `pool.starmap(f, pairs, chunksize=2)` | [`pool.chunksize(2).starmap(task!(f), pairs)?`](Pool::chunksize) |
//! | `pool.apply(f, (a, b))` | [`pool.apply(task!(f), (a, b))?`](Pool::apply) |
//! | `pool.imap(f, xs)` | [`pool.imap(task!(f), xs)`](Pool::imap), an iterator of `Result` |
//! | `pool.imap_unordered(f, xs)` | [`pool.imap_unordered(task!(f), xs)`](Pool::imap_unordered) |
//! | `pool.close(); pool.join()` | [`pool.close()`](Pool::close); [`pool.join()`](Pool::join) |
//! | `pool.terminate()` / `with Pool() as pool:` | [`pool.terminate()`](Pool::terminate) / dropping the pool |
//! | — | [`pool.timeout(d).map(...)`](Pool::timeout): a per-item timeout |
//!
//! # Tests
//!
//! A test binary is re-executed as its workers too. Add one line at the top
//! of each integration test file (or in the crate's test module) that starts
//! pools:
//!
//! ```ignore
//! pool_runtime::test_support!();
//! ```
//!
//! It adds an ignored test, `pool_runtime_worker_entry`, that the pool runs
//! in its workers; it works under `cargo test` and `cargo nextest`.

use std::sync::atomic::Ordering;

mod async_result;
mod backend;
mod builder;
mod error;
mod pool;
mod progress;
mod run;
mod scheduler;
mod stats;
mod worker;

pub use async_result::AsyncResult;
pub use builder::PoolBuilder;
pub use error::{Error, ExitCause, ProtocolError, RegistryError, TaskFailure};
pub use pool::{Call, Imap, ImapUnordered, Pool};
pub use pool_core::{IntoArgs, Task, UnaryTask};
pub use stats::{PoolStats, WorkerStats};

/// Registers a function as a pool task.
///
/// ```no_run
/// use pool_runtime::task;
///
/// #[task]
/// pub fn power(x: u64, n: u32) -> u64 {
///     x.pow(n)
/// }
/// # fn main() {}
/// ```
///
/// expands to the function unchanged (still callable as `power(2, 3)`), plus
/// roughly:
///
/// ```ignore
/// /// The arguments of the task `power()`, as they cross the process boundary.
/// #[derive(Serialize, Deserialize)]
/// pub struct PowerArgs { pub x: u64, pub n: u32 }
///
/// #[doc(hidden)]
/// pub mod power {               // types and functions live in separate
///     pub struct PowerTask;     // namespaces: `use m::power` imports both
/// }
/// impl Task for power::PowerTask {
///     const NAME: &str = concat!(module_path!(), "::power");
///     const ID: u64 = task_id(Self::NAME);   // stable, computed at compile time
///     type Args = PowerArgs;
///     type Output = u64;
///     fn call(args: PowerArgs) -> u64 { power(args.x, args.n) }
/// }
/// impl IntoArgs<power::PowerTask> for (u64, u32) { /* .. */ }  // + From<(u64, u32)> for PowerArgs
/// impl IntoArgs<power::PowerTask> for PowerArgs { /* .. */ }
/// inventory::submit! { TaskEntry::of::<power::PowerTask>() }
/// ```
///
/// A one-argument task also accepts its bare argument (`map`), and
/// implements [`UnaryTask`]. A borrowed parameter (`&str`, `&[T]`, `&T`) is
/// stored owned (`String`, `Vec<T>`, `T`) and lent to the function; callers
/// pass the borrowed form. A `Vec<u8>` parameter travels as raw bytes.
///
/// Rejected with an error on the offending token: generic, `async` and
/// `unsafe` functions, methods (`self`), pattern and `impl Trait`
/// parameters, `&mut` parameters, references nested inside parameter types,
/// and returned references. Argument and return types must implement serde's
/// `Serialize` and `Deserialize`.
///
/// `#[task(crate = path)]` names the `pool_runtime` crate when it is
/// re-exported under another path.
pub use pool_macros::task;

/// Makes `main` worker-capable: inserts [`init()`](init) as its first statement.
///
/// ```no_run
/// #[pool_runtime::main]
/// fn main() {
///     // ...
/// }
/// ```
pub use pool_macros::main;

/// The names most programs need: [`Pool`], [`Error`] and the `task!(...)` macro.
///
/// Import the `#[task]` attribute beside it with `use pool_runtime::task;`:
/// the explicit import and this glob import coexist.
pub mod prelude {
    pub use crate::{Error, Pool};

    /// Names the handle of a `#[task]` function: `task!(power)`,
    /// `task!(math::power)`, `task!(other_crate::power)`.
    ///
    /// It rewrites the path `a::b::power` to the handle `a::b::power::PowerTask`
    /// that `#[task]` generated beside the function, so anything that can
    /// name the function (including a `use` of it) can name its task.
    ///
    /// ```no_run
    /// use pool_runtime::prelude::*;
    /// use pool_runtime::task;
    ///
    /// mod math {
    ///     use pool_runtime::task;
    ///     #[task]
    ///     pub fn square(x: u64) -> u64 { x * x }
    /// }
    ///
    /// #[pool_runtime::main]
    /// fn main() -> Result<(), Error> {
    ///     let pool = Pool::new()?;
    ///     assert_eq!(pool.map(task!(math::square), [1, 2, 3])?, [1, 4, 9]);
    ///     Ok(())
    /// }
    /// ```
    pub use pool_macros::task_handle as task;
}

/// Makes this program worker-capable. Call it first in `main` (or mark
/// `main` with [`#[main]`](macro@main)).
///
/// In a process the pool started as a worker, it serves tasks until the pool
/// is done with it, then exits the process: it never returns, and the rest
/// of `main` never runs there. Anywhere else it returns at once. Code placed
/// before it runs in every worker as well.
pub fn init() {
    worker::enter();
}

/// Makes a test binary worker-capable: put it once at the top of an
/// integration test file (or inside the `#[cfg(test)]` module of a crate).
///
/// It defines an ignored test, `pool_runtime_worker_entry`, which the pool
/// selects (`--exact --ignored`) when it re-executes the test binary as a
/// worker. Works under `cargo test` and `cargo nextest run`.
#[macro_export]
macro_rules! test_support {
    () => {
        #[cfg(test)]
        #[test]
        #[ignore = "pool-runtime worker entry: runs inside worker processes only"]
        fn pool_runtime_worker_entry() {
            $crate::__private::worker_test_entry();
        }

        #[cfg(test)]
        $crate::__private::inventory::submit! {
            $crate::__private::HarnessEntry {
                path: ::core::concat!(::core::module_path!(), "::pool_runtime_worker_entry"),
            }
        }
    };
}

/// The arguments that make a test harness run only the worker entry.
pub(crate) fn harness_args() -> Option<Vec<String>> {
    let entry = inventory::iter::<__private::HarnessEntry>
        .into_iter()
        .next()?;
    // module_path!() starts with the crate's name, which test names omit.
    let name = entry
        .path
        .split_once("::")
        .map_or(entry.path, |(_, rest)| rest);
    Some(
        [
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
    )
}

/// Not public API: what generated code names.
#[doc(hidden)]
pub mod __private {
    pub use ::{inventory, postcard, serde};
    pub use pool_core::registry::TaskEntry;
    pub use pool_core::{IntoArgs, Task, UnaryTask, assert_wire, task_id};

    /// A test binary's worker entry test, registered by `test_support!`.
    pub struct HarnessEntry {
        /// `module_path!()::pool_runtime_worker_entry`.
        pub path: &'static str,
    }
    inventory::collect!(HarnessEntry);

    /// The body of the worker entry test.
    pub fn worker_test_entry() {
        super::worker::enter();
        // Not a worker (someone ran the ignored tests): nothing to do.
        super::worker::INIT_CALLED.store(false, super::Ordering::Relaxed);
    }

    /// `#[serde(with)]` helper that moves `Vec<u8>` as one byte string.
    pub mod bytes {
        use serde::de::{Deserializer, SeqAccess, Visitor};
        use serde::ser::Serializer;

        /// Serializes as bytes.
        pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(value)
        }

        /// Deserializes from bytes (or a sequence of `u8`).
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<u8>, D::Error> {
            struct Bytes;
            impl<'de> Visitor<'de> for Bytes {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(out)
                }
            }
            deserializer.deserialize_byte_buf(Bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_env_round_trips() {
        let env = crate::backend::local::WorkerEnv::decode("v1:5:6:-1:42").expect("valid");
        assert_eq!(
            (env.channel, env.progress, env.stdout, env.parent),
            (5, 6, None, 42)
        );
        assert!(crate::backend::local::WorkerEnv::decode("v2:5:6:-1:42").is_none());
        assert!(crate::backend::local::WorkerEnv::decode("v1:x").is_none());
    }

    #[test]
    fn init_is_a_no_op_outside_workers() {
        super::init();
        assert!(super::worker::INIT_CALLED.load(super::Ordering::Relaxed));
    }
}
