//! Backends: how worker processes are started and reached.
//!
//! The local backend re-executes the running binary; the scheduler talks to
//! every backend through the same frames.

pub(crate) mod local;
pub(crate) mod shm;
