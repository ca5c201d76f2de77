//! Tasks shared by the integration tests, defined in their own module so the
//! tests also prove `task!(common::...)` across modules.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use pool_runtime::Pool;
use pool_runtime::task;

/// `x` to the power `n`.
#[task]
pub fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

/// `x` squared.
#[task]
pub fn square(x: u64) -> u64 {
    x * x
}

/// Panics on `x == bad`, otherwise returns `x`.
#[task]
pub fn panic_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("item {x} is bad");
    }
    x
}

/// Kills its own worker with `signal` on `x == bad`.
#[task]
pub fn signal_on(x: u64, bad: u64, signal: i32) -> u64 {
    if x == bad {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), signal) };
        std::thread::sleep(Duration::from_secs(10));
    }
    x
}

/// Exits its worker with `code` on `x == bad`.
#[task]
pub fn exit_on(x: u64, bad: u64, code: i32) -> u64 {
    if x == bad {
        std::process::exit(code);
    }
    x
}

/// Aborts its worker on `x == bad`.
#[task]
pub fn abort_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        std::process::abort();
    }
    x
}

/// The worker's process id.
#[task]
pub fn worker_pid() -> u32 {
    std::process::id()
}

/// Sleeps for `ms` milliseconds, then returns `x`.
#[task]
pub fn sleepy(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

/// Whether `pid` names a live process (or an unreaped zombie).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A pool of two workers, the size every test uses.
pub fn pool() -> Pool {
    Pool::builder()
        .processes(2)
        .build()
        .expect("a pool of two workers starts")
}
