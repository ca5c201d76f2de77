//! Large call inputs are dropped on a thread of their own once encoded.
//!
//! A call consumes its input: every argument it encodes is dropped by the
//! caller right after. For a large argument that drop is not free: the
//! allocator gives the pages back to the kernel (1 GiB of `Vec<u8>`s took
//! the caller ~40% of its time in a call, as much as copying them into
//! shared memory), and the caller is the serial stage of a call with large
//! items. So arguments of 1 MiB or more (encoded) whose drop only frees
//! memory ([`Task::DROP_FREES_ONLY`](pool_core::Task::DROP_FREES_ONLY):
//! numbers, strings and vectors of them, as `#[task]` sees the parameter
//! types) go to this module's thread, which drops them while the caller
//! encodes the next ones. An argument of a type with a `Drop` of the
//! user's is never sent here: that `Drop` runs on the caller's thread,
//! before the call returns, as it always did.
//!
//! Bounded: at most [`MAX_PENDING`] bytes wait; beyond, or if the thread
//! cannot be started, or in a process forked after it started (where it
//! does not run), the caller drops them itself. Memory not yet given back
//! when the process exits is the process's to lose.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Sender;

/// Bytes of inputs waiting to be dropped, at most.
const MAX_PENDING: usize = 256 << 20;

/// The thread's name, as a debugger or `/proc/<pid>/task` shows it.
pub(crate) const THREAD_NAME: &str = "pool-dropper";

/// Bytes of inputs waiting now.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// A value to drop and the bytes it counts for.
type Parcel = (Box<dyn Any + Send>, usize);

/// The thread's queue, and the process that started it; `None` if it
/// could not be started.
static QUEUE: OnceLock<Option<(Sender<Parcel>, u32)>> = OnceLock::new();

fn queue() -> Option<&'static Sender<Parcel>> {
    let started = QUEUE.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Parcel>();
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                for (value, bytes) in rx {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
                        let message = crate::error::panic_message(&*payload);
                        eprintln!("pool-runtime: dropping a call's argument panicked: {message}");
                    }
                    PENDING.fetch_sub(bytes, Ordering::Relaxed);
                }
            });
        spawned.ok().map(|_| (tx, std::process::id()))
    });
    match started {
        // Forked since: the thread is not in this process.
        Some((tx, pid)) if *pid == std::process::id() => Some(tx),
        _ => None,
    }
}

/// Drops `value`, which takes about `bytes` bytes, on the dropper thread,
/// or here if too much already waits there.
pub(crate) fn drop_later<T: Send + 'static>(value: T, bytes: usize) {
    if PENDING.fetch_add(bytes, Ordering::Relaxed) + bytes > MAX_PENDING {
        PENDING.fetch_sub(bytes, Ordering::Relaxed);
        drop(value);
        return;
    }
    let Some(tx) = queue() else {
        PENDING.fetch_sub(bytes, Ordering::Relaxed);
        drop(value);
        return;
    };
    if let Err(failed) = tx.send((Box::new(value), bytes)) {
        PENDING.fetch_sub(bytes, Ordering::Relaxed);
        drop(failed.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Records the name of the thread that drops it.
    struct Tracer(&'static Mutex<Vec<String>>);

    impl Drop for Tracer {
        fn drop(&mut self) {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(name);
        }
    }

    /// Panics when dropped.
    struct Grenade;

    impl Drop for Grenade {
        fn drop(&mut self) {
            panic!("a grenade went off while dropped");
        }
    }

    fn wait_for(log: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if seen.len() >= n || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn values_are_dropped_on_the_dropper_thread_and_beyond_the_bound_here() {
        static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
        drop_later(Tracer(&LOG), 1 << 20);
        // A panicking drop there does not stop the next ones.
        drop_later(Grenade, 1 << 20);
        drop_later(Tracer(&LOG), 1 << 20);
        assert_eq!(wait_for(&LOG, 2), [THREAD_NAME, THREAD_NAME]);
        // More than the bound waits: dropped by the caller, at once.
        let here = std::thread::current().name().unwrap_or("").to_owned();
        drop_later(Tracer(&LOG), MAX_PENDING + 1);
        assert_eq!(wait_for(&LOG, 3)[2], here);
    }
}
