//! Backends: how worker processes are started and reached.
//!
//! The local backend re-executes the running binary; the MPI backend
//! (feature `mpi`) uses the other ranks of an MPI job. The scheduler talks
//! to every backend through the same frames.

pub(crate) mod forkserver;
pub(crate) mod local;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;
pub(crate) mod shm;
