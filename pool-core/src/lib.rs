//! What both sides of a `pool-runtime` pipe agree on.
//!
//! Users depend on `pool-runtime`, which re-exports what they need from
//! here: the [`Task`] trait each `#[task]` function's generated handle
//! implements, [`IntoArgs`] / [`UnaryTask`], which let the compiler check
//! the arguments handed to a pool, [`InitOutput`] for initializers, and the
//! error values that cross the process boundary ([`TaskFailure`],
//! [`ProtocolError`], [`RegistryError`]).
//!
//! This crate holds no process or thread code. Its other modules (the task
//! registry, the wire protocol, the postcard encoder and decoder) are
//! shared by `pool-runtime` and the code `#[task]` generates; they are
//! public for them only, hidden from the documentation, and may change in
//! any release.

#[doc(hidden)]
pub mod decode;
#[doc(hidden)]
pub mod encode;
pub mod error;
#[doc(hidden)]
pub mod registry;
#[cfg(test)]
mod serde_shapes;
pub mod task;
#[doc(hidden)]
pub mod wire;

pub use error::{ProtocolError, TaskFailure};
pub use registry::RegistryError;
#[doc(hidden)]
pub use registry::{Registry, TaskEntry};
pub use task::{InitOutput, IntoArgs, Task, UnaryTask};
#[doc(hidden)]
pub use task::{Wire, assert_wire, task_id};
