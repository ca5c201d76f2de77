//! The [`Task`] trait and the argument conversions the compiler checks.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A function marked `#[task]`, seen through its generated handle.
///
/// `#[task] fn power(x: u64, n: u32) -> u64` generates a zero-sized handle
/// `PowerTask` implementing this trait; `task!(power)` names it. Users never
/// implement it by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task handle",
    label = "expected a task handle here",
    note = "mark the function with #[task] and pass `task!(path::to::function)`"
)]
pub trait Task: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The function's full path, `crate::module::function`.
    const NAME: &'static str;
    /// A stable 64-bit id derived at compile time from [`Task::NAME`].
    const ID: u64;
    /// The generated argument struct (`PowerArgs { x, n }`).
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// The function's return type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Runs the function on already-decoded arguments.
    fn call(args: Self::Args) -> Self::Output;
    /// Decodes the arguments from `input` and runs the function: what a
    /// worker does. `#[task]` overrides it when a parameter is `&[u8]` or
    /// `&str`, which then borrow from `input` (for a large chunk, the
    /// shared mapping it arrived in) instead of being copied out of it.
    #[doc(hidden)]
    #[inline]
    fn call_encoded(input: &[u8]) -> Result<Self::Output, crate::decode::DecodeError> {
        crate::decode::from_bytes(input).map(Self::call)
    }
}

/// Sealing [`Task`]: only `#[task]` implements it, through this hidden
/// supertrait. Not public API.
#[doc(hidden)]
pub mod sealed {
    /// Implemented by `#[task]` beside [`Task`](super::Task); implementing
    /// it by hand is not supported.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a task handle: only `#[task]` implements `Task`",
        note = "mark the function with #[task] and pass `task!(path::to::function)`"
    )]
    pub trait Sealed {}
}

/// Marks tasks that take exactly one argument, the ones `map` and `imap` accept.
///
/// Passing a function instead of its handle (`map(square, ..)` instead of
/// `map(task!(square), ..)`) is reported through this trait too, so its
/// message covers both mistakes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the handle of a one-argument task, which `map` and `imap` take",
    label = "`map` and `imap` need a one-argument task, passed as `task!(f)`",
    note = "a function is passed as its handle: wrap the function in `task!(...)`, e.g. `pool.map(task!(square), xs)`",
    note = "a task of several arguments goes to `starmap` (or `istarmap`), with one tuple of arguments per call"
)]
pub trait UnaryTask: Task {}

/// The values a call may pass as the arguments of task `T`.
///
/// `#[task] fn power(x: u64, n: u32)` implements it for `(u64, u32)` and for
/// `PowerArgs`; a one-argument task also accepts its bare argument. Borrowed
/// parameters (`&str`, `&[T]`, `&T`) accept the borrowed form, copied into
/// the owned argument struct; `&str` and `&[T]` also accept the owned form
/// (`String`, `Vec<T>`, alone or in the tuple), moved into it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid argument list for the task `{T}`",
    label = "wrong argument types or number of arguments for this task",
    note = "pass one tuple per call with the task's parameter types, in order, e.g. `(2u64, 3u32)` for `fn power(x: u64, n: u32)`",
    note = "a `&str` or `&[T]` parameter takes `&str` / `&[T]`, or `String` / `Vec<T>` when every such parameter of the tuple is passed owned"
)]
pub trait IntoArgs<T: Task> {
    /// Converts into the task's argument struct.
    fn into_args(self) -> T::Args;
}

/// Types that can cross the process boundary: serde's `Serialize` and
/// `Deserialize`. Every task argument and result must be one.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross the process boundary: it does not implement serde's `Serialize` and `Deserialize`",
    label = "task arguments and results must implement `Serialize` and `Deserialize`",
    note = "derive them on the type: `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait Wire: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> Wire for T {}

/// Compile-time check, emitted by `#[task]` on each argument and result type.
#[doc(hidden)]
pub const fn assert_wire<T: Wire>() {}

/// What an initializer task may return: `()`, or `Result<(), E>` whose
/// `Err` fails the worker's start (and so the pool's).
#[diagnostic::on_unimplemented(
    message = "an initializer must return `()` or `Result<(), E>` with `E: Display`, not `{Self}`",
    label = "this initializer's return type"
)]
pub trait InitOutput {
    /// The failure to report, if any.
    fn failure(&self) -> Option<String>;
}

impl InitOutput for () {
    fn failure(&self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display> InitOutput for Result<(), E> {
    fn failure(&self) -> Option<String> {
        self.as_ref().err().map(ToString::to_string)
    }
}

/// The stable id of a task: 64-bit FNV-1a of its full path.
///
/// Evaluated at compile time, so the parent and its workers (the same binary)
/// always agree, and no address or load order enters it.
#[doc(hidden)]
pub const fn task_id(path: &str) -> u64 {
    let bytes = path.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::task_id;

    #[test]
    fn ids_differ_by_path_and_are_stable() {
        assert_ne!(task_id("a::power"), task_id("b::power"));
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(task_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(task_id("a::power"), task_id("a::power"));
    }
}
