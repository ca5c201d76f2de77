//! What both sides of a `pool-runtime` pipe agree on.
//!
//! This crate holds no process or thread code. It defines:
//!
//! - [`Task`], the trait each `#[task]` function's generated handle implements,
//!   and [`IntoArgs`] / [`UnaryTask`], which let the compiler check the
//!   arguments handed to a pool;
//! - the [`registry`] of tasks that `#[task]` fills through `inventory`;
//! - the [`wire`] protocol between a pool and its workers, and the
//!   postcard [`encode`]r and [`decode`]r it uses;
//! - the [`error`] values that cross that protocol.
//!
//! Users depend on `pool-runtime`, which re-exports what they need from here.

pub mod decode;
pub mod encode;
pub mod error;
pub mod registry;
#[cfg(test)]
mod serde_shapes;
pub mod task;
pub mod wire;

pub use error::{ProtocolError, TaskFailure};
pub use registry::{Registry, RegistryError, TaskEntry};
pub use task::{InitOutput, IntoArgs, Task, UnaryTask, Wire, assert_wire, task_id};
