//! What `init()` does first in every process of this binary: become a
//! worker, a fork server or an MPI worker rank if started as one, or
//! return to the program.

use std::sync::atomic::Ordering;

use crate::backend::forkserver::{SERVER_ENV, ServerEnv, server};
use crate::worker::{self, INIT_CALLED, WORKER_ENV, WorkerEnv};

/// If this process was started as a worker, serves as one and exits;
/// otherwise records that `main` reached this point and returns.
pub(crate) fn enter() {
    // Under an MPI launcher: rank 0 returns, the other ranks serve and exit.
    #[cfg(feature = "mpi")]
    crate::backend::mpi::enter();
    if let Ok(value) = std::env::var(SERVER_ENV) {
        match ServerEnv::decode(&value) {
            Some(env) => server::serve(env),
            None => eprintln!("pool-runtime: ignoring a malformed {SERVER_ENV} variable"),
        }
    }
    match std::env::var(WORKER_ENV) {
        Ok(value) => match WorkerEnv::decode(&value) {
            Some(env) => {
                crate::shared::set_pool_process(env.parent);
                worker::run(env)
            }
            None => {
                eprintln!("pool-runtime: ignoring a malformed {WORKER_ENV} variable");
            }
        },
        Err(_) => INIT_CALLED.store(true, Ordering::Relaxed),
    }
}

/// Whether this process was started as a worker (and has not entered the loop).
pub(crate) fn spawned_as_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some() || std::env::var_os(SERVER_ENV).is_some()
}
