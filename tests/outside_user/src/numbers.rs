use pool_runtime::task;

/// Product of two numbers.
#[task]
pub fn mul(a: u64, b: u64) -> u64 {
    a * b
}

/// Returns `x`, except on `bad`: panics, or kills its own worker.
#[task]
pub fn fragile(x: u64, bad: u64, kill: bool) -> u64 {
    if x == bad {
        if kill {
            // SAFETY: signalling our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        panic!("bad item {x}");
    }
    x
}
