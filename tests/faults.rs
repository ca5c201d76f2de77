//! Faults in tasks and workers: each one is an `Err` for the affected item,
//! the pool replaces the worker and stays usable, and nothing is left behind.

mod common;

use std::time::{Duration, Instant};

use common::{pool, process_exists};
use pool_runtime::prelude::*;
use pool_runtime::{ExitCause, task};

pool_runtime::test_support!();

/// The per-item results of `f(x, ...)` over 0..n via `istarmap`.
fn per_item<T>(results: impl Iterator<Item = Result<T, Error>>) -> (Vec<T>, Vec<Error>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

/// Runs `results` (20 items, item 7 faulty), checks that only item 7 failed
/// and how, that the pool still works, and that no worker outlives it.
fn check_fault(
    pool: Pool,
    results: impl Iterator<Item = Result<u64, Error>>,
    cause: impl Fn(&Error) -> bool,
) {
    let before = pool.worker_pids();
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (i, r) in results.enumerate() {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push((i, e)),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (at, err) = &errors[0];
    assert_eq!((*at, err.index()), (7, Some(7)), "{err:?}");
    assert!(cause(err), "unexpected error: {err:?} ({err})");
    assert!(err.to_string().contains("item 7"), "{err}");
    assert_eq!(ok, (0..20u64).filter(|&x| x != 7).collect::<Vec<_>>());
    assert_usable(&pool);
    let mut all = before;
    all.extend(pool.worker_pids());
    drop(pool);
    for pid in all {
        assert!(!process_exists(pid), "worker {pid} outlived the pool");
    }
}

fn assert_usable(pool: &Pool) {
    let items: Vec<(u64, u32)> = (0..100u64).map(|i| (i, 2)).collect();
    let expected: Vec<u64> = (0..100u64).map(|i| i * i).collect();
    assert_eq!(
        pool.starmap(task!(common::power), items)
            .expect("the pool still works"),
        expected
    );
}

#[test]
fn a_panic_is_an_error_naming_task_message_location_and_index() {
    let pool = pool();
    let err = pool
        .starmap(task!(common::panic_on), (0..50u64).map(|x| (x, 17)))
        .expect_err("item 17 panics");
    match &err {
        Error::TaskPanicked {
            task,
            index,
            message,
            location,
            ..
        } => {
            assert!(task.ends_with("common::panic_on"), "{task}");
            assert_eq!(*index, 17);
            assert_eq!(message, "item 17 is bad");
            assert!(location.contains("common/mod.rs"), "{location}");
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("panic_on") && text.contains("item 17") && text.contains("item 17 is bad"),
        "{text}"
    );
    assert_usable(&pool);
}

#[test]
fn a_panic_fails_only_its_item_in_istarmap() {
    let pool = pool();
    let (ok, errors) = per_item(
        pool.chunksize(4)
            .istarmap(task!(common::panic_on), (0..40u64).map(|x| (x, 9))),
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].index(), Some(9));
    assert_eq!(ok, (0..40u64).filter(|&x| x != 9).collect::<Vec<_>>());
}

#[test]
fn sigkill_fails_only_the_running_item_and_the_worker_is_replaced() {
    let pool = pool();
    let before = pool.worker_pids();
    let results = pool.chunksize(10).istarmap(
        task!(common::signal_on),
        (0..100u64).map(|x| (x, 55, libc::SIGKILL)),
    );
    let (ok, errors) = per_item(results);
    assert_eq!(errors.len(), 1, "{errors:?}");
    match &errors[0] {
        Error::WorkerDied {
            task,
            index,
            pid,
            cause,
        } => {
            assert!(task.ends_with("signal_on"));
            assert_eq!(*index, 55);
            assert_eq!(*cause, ExitCause::Signal(libc::SIGKILL));
            assert!(before.contains(pid), "{pid} not in {before:?}");
            assert!(!process_exists(*pid), "the dead worker was reaped");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(errors[0].to_string().contains("SIGKILL"), "{}", errors[0]);
    assert_eq!(ok, (0..100u64).filter(|&x| x != 55).collect::<Vec<_>>());
    assert_usable(&pool);
    // The replacement starts in the background; wait (bounded) for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.worker_pids().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the pool is not back to two workers: {:?}",
            pool.worker_pids()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        pool.worker_pids()
            .iter()
            .all(|p| !before.contains(p) || process_exists(*p))
    );
}

#[test]
fn abort_and_exit_codes_are_reported() {
    let pool = pool();
    let err = pool
        .starmap(task!(common::abort_on), (0..10u64).map(|x| (x, 3)))
        .expect_err("item 3 aborts");
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                index: 3,
                cause: ExitCause::Signal(libc::SIGABRT),
                ..
            }
        ),
        "{err:?}"
    );
    let err = pool
        .starmap(task!(common::exit_on), (0..10u64).map(|x| (x, 4, 3)))
        .expect_err("item 4 exits");
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                index: 4,
                cause: ExitCause::Code(3),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("exited with code 3"), "{err}");
    assert_usable(&pool);
}

#[test]
fn a_worker_killed_from_outside_fails_only_its_item() {
    let pool = pool();
    // Item 0 sleeps long enough to be killed from here while it runs.
    let mut results = pool.chunksize(1).istarmap_unordered(
        task!(common::sleepy),
        (0..6u64).map(|x| (x, if x == 0 { 60_000 } else { 10 })),
    );
    // Wait until every other item is done, then the only busy worker holds item 0.
    let mut ok = Vec::new();
    while ok.len() < 5 {
        ok.push(results.next().expect("more results").expect("ok"));
    }
    let busy = wait_for_sleeping_worker(&pool);
    // SAFETY: killing a worker process of ours.
    unsafe { libc::kill(busy as i32, libc::SIGKILL) };
    let err = results
        .next()
        .expect("item 0's result")
        .expect_err("its worker was killed");
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                index: 0,
                cause: ExitCause::Signal(libc::SIGKILL),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(results.next().is_none());
    ok.sort_unstable();
    assert_eq!(ok, [1, 2, 3, 4, 5]);
    assert_usable(&pool);
}

/// Whether a thread of worker `pid` sleeps in `nanosleep` (inside a task)
/// rather than waiting on its channel. Under a test harness the task runs on
/// the harness's test thread, so every thread is checked.
fn sleeping_in_task(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.contains("nanosleep"))
    })
}

/// Waits (bounded) until some worker sleeps inside a task; returns its pid.
fn wait_for_sleeping_worker(pool: &Pool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = pool
            .worker_pids()
            .into_iter()
            .find(|&p| sleeping_in_task(p))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no worker started the sleeping task within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn no_worker_is_left_after_drop() {
    let pool = pool();
    assert_usable(&pool);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    // Leave one worker busy in a long task, then drop the pool.
    let mut busy = pool
        .call()
        .istarmap(task!(common::sleepy), [(1u64, 60_000u64)]);
    let waiter = std::thread::spawn(move || busy.next());
    wait_for_sleeping_worker(&pool);
    drop(pool);
    let outcome = waiter.join().expect("no panic").expect("one outcome");
    assert!(matches!(outcome, Err(Error::Terminated)), "{outcome:?}");
    for pid in pids {
        assert!(
            !process_exists(pid),
            "worker {pid} is still there after drop"
        );
    }
}

#[test]
fn terminate_and_close_refuse_new_work() {
    let pool = pool();
    pool.close();
    assert!(matches!(
        pool.starmap(task!(common::power), [(2, 2)]),
        Err(Error::Closed)
    ));
    let pids = pool.worker_pids();
    pool.terminate();
    assert!(matches!(
        pool.starmap(task!(common::power), [(2, 2)]),
        Err(Error::Terminated)
    ));
    for pid in pids {
        assert!(
            !process_exists(pid),
            "worker {pid} is still there after terminate"
        );
    }
}

#[test]
fn join_waits_for_submitted_work_then_reaps() {
    let pool = pool();
    let pids = pool.worker_pids();
    std::thread::scope(|s| {
        let worker = s.spawn(|| pool.starmap(task!(common::sleepy), (0..4u64).map(|x| (x, 50))));
        // Once the call's items are submitted (the pool counts them),
        // join() must wait for all four.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let stats = pool.stats();
            if stats.queued_items + stats.in_flight_items > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the call was not submitted within 20 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.join();
        let out = worker.join().expect("no panic");
        assert_eq!(out.expect("submitted before join"), [0, 1, 2, 3]);
    });
    for pid in pids {
        assert!(
            !process_exists(pid),
            "worker {pid} is still there after join"
        );
    }
}

/// Overflows its stack on `x == bad`.
#[task]
fn overflow_on(x: u64, bad: u64) -> u64 {
    fn recurse(depth: u64) -> u64 {
        let buf = std::hint::black_box([depth; 64]);
        // Always true at run time; the compiler cannot tell.
        if std::hint::black_box(true) {
            recurse(depth + 1) + buf[0]
        } else {
            buf[0]
        }
    }
    if x == bad {
        return recurse(0);
    }
    x
}

/// Limits its worker's address space to 512 MiB, then allocates 2 GiB, on `x == bad`.
#[task]
fn alloc_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        let limit = libc::rlimit {
            rlim_cur: 512 << 20,
            rlim_max: 512 << 20,
        };
        // SAFETY: setting a resource limit of this worker process.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
        let big = std::hint::black_box(vec![1u8; 2 << 30]);
        return big.len() as u64;
    }
    x
}

/// Spins forever on `x == bad`.
#[task]
fn spin_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        // The endless loop this test is about; only the timeout ends it.
        loop {
            std::hint::spin_loop();
        }
    }
    x
}

/// A value whose serialization always fails.
#[derive(Debug)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unencodable refuses to be encoded",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

/// Returns a value that cannot be encoded on `x == bad`.
#[task]
fn bad_result_on(x: u64, bad: u64) -> Result<u64, Unencodable> {
    if x == bad { Err(Unencodable) } else { Ok(x) }
}

/// Serializes with postcard but cannot be read back (`untagged` needs a
/// self-describing format).
#[derive(serde::Serialize, serde::Deserialize, Debug)]
#[serde(untagged)]
pub enum Untagged {
    /// A number.
    Number(u64),
}

/// Takes an argument postcard writes but cannot read.
#[task]
fn untagged_arg(x: u64, extra: Option<Untagged>) -> u64 {
    let _ = extra;
    x
}

/// Serde's `flatten` cannot even be written by postcard.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Flat {
    a: u64,
    #[serde(flatten)]
    rest: Inner,
}

/// Part of [`Flat`].
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Inner {
    b: u64,
}

/// Takes an argument postcard cannot write.
#[task]
fn flat_arg(x: u64, extra: Option<Flat>) -> u64 {
    let _ = extra;
    x
}

fn items(bad: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..20u64).map(move |x| (x, bad))
}

#[test]
fn matrix_sigsegv() {
    let pool = pool();
    let results = pool.chunksize(3).istarmap(task!(segfault_on), items(7));
    check_fault(pool, results, |e| {
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Signal(libc::SIGSEGV),
                ..
            }
        ) && e.to_string().contains("SIGSEGV")
    });
}

#[test]
fn matrix_panic() {
    let pool = pool();
    let results = pool
        .chunksize(3)
        .istarmap(task!(common::panic_on), items(7));
    check_fault(
        pool,
        results,
        |e| matches!(e, Error::TaskPanicked { message, .. } if message == "item 7 is bad"),
    );
}

#[test]
fn matrix_abort() {
    let pool = pool();
    let results = pool
        .chunksize(3)
        .istarmap(task!(common::abort_on), items(7));
    check_fault(pool, results, |e| {
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Signal(libc::SIGABRT),
                ..
            }
        )
    });
}

#[test]
fn matrix_exit_code() {
    let pool = pool();
    let results = pool
        .chunksize(3)
        .istarmap(task!(common::exit_on), (0..20u64).map(|x| (x, 7, 3)));
    check_fault(pool, results, |e| {
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Code(3),
                ..
            }
        )
    });
}

#[test]
fn matrix_sigkill() {
    let pool = pool();
    let results = pool.chunksize(3).istarmap(
        task!(common::signal_on),
        (0..20u64).map(|x| (x, 7, libc::SIGKILL)),
    );
    check_fault(pool, results, |e| {
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Signal(libc::SIGKILL),
                ..
            }
        )
    });
}

#[test]
fn matrix_stack_overflow() {
    let pool = pool();
    let results = pool.chunksize(3).istarmap(task!(overflow_on), items(7));
    // Rust's runtime reports the overflow on the worker's stderr and aborts.
    check_fault(pool, results, |e| {
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Signal(libc::SIGABRT),
                ..
            }
        )
    });
}

#[test]
fn matrix_memory_limit() {
    let pool = pool();
    let results = pool.chunksize(3).istarmap(task!(alloc_on), items(7));
    // A failed allocation aborts the worker ("memory allocation of N bytes failed").
    check_fault(pool, results, |e| {
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Signal(libc::SIGABRT),
                ..
            }
        )
    });
}

#[test]
fn matrix_endless_loop_stopped_by_the_timeout() {
    let pool = pool();
    let limit = Duration::from_millis(300);
    let results = pool
        .chunksize(3)
        .timeout(limit)
        .istarmap(task!(spin_on), items(7));
    check_fault(pool, results, |e| {
        matches!(e, Error::TaskTimeout { timeout, .. } if *timeout == limit)
            && e.to_string().contains("timeout")
    });
}

#[test]
fn matrix_result_that_cannot_be_encoded() {
    let pool = pool();
    let results = pool
        .chunksize(3)
        .istarmap(task!(bad_result_on), items(7))
        .map(|r| r.map(|v| v.unwrap_or(u64::MAX)));
    // The type is named, and the serde error's own text is kept.
    check_fault(pool, results, |e| {
        matches!(e, Error::Serialization { failure: pool_runtime::TaskFailure::BadOutput { ty, message }, .. }
            if ty.contains("Unencodable") && message.contains("Unencodable refuses to be encoded"))
    });
}

#[test]
fn matrix_argument_that_cannot_be_decoded() {
    let pool = pool();
    let args = (0..20u64).map(|x| (x, (x == 7).then_some(Untagged::Number(x))));
    let results = pool.chunksize(3).istarmap(task!(untagged_arg), args);
    // The type is named, and the message says why (an untagged enum needs
    // a self-describing format).
    check_fault(pool, results, |e| {
        matches!(e, Error::Serialization { failure: pool_runtime::TaskFailure::BadArguments { ty, message }, .. }
            if ty.contains("UntaggedArgArgs") && message.contains("self-describing"))
    });
}

#[test]
fn matrix_argument_that_cannot_be_encoded() {
    let pool = pool();
    let args = (0..20u64).map(|x| {
        (
            x,
            (x == 7).then_some(Flat {
                a: x,
                rest: Inner { b: x },
            }),
        )
    });
    let results = pool.chunksize(3).istarmap(task!(flat_arg), args);
    check_fault(pool, results, |e| {
        matches!(e, Error::Serialization { failure: pool_runtime::TaskFailure::Unencodable { ty, message }, .. }
            if ty.contains("FlatArgArgs") && message.contains("length up front"))
    });
}

/// Kills its own worker with SIGKILL the first time it sees `bad` (a
/// marker file remembers), then succeeds.
#[task]
fn die_once(x: u64, bad: u64, marker: String) -> u64 {
    if x == bad && std::fs::File::create_new(&marker).is_ok() {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

fn marker(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("pool-runtime-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

#[test]
fn retries_rerun_an_item_whose_worker_died_on_a_fresh_worker() {
    let pool = pool();
    let m = marker("retry");
    let out = pool
        .retries(1)
        .starmap(task!(die_once), (0..1000u64).map(|x| (x, 500, m.clone())))
        .expect("retried");
    assert_eq!(out, (0..1000u64).collect::<Vec<_>>());
    // Without retries the same fault is exactly one error.
    let m2 = marker("noretry");
    let results: Vec<_> = pool
        .istarmap(task!(die_once), (0..1000u64).map(|x| (x, 500, m2.clone())))
        .collect();
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].index(), Some(500));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 999);
    // An item that always kills its worker fails after its retries.
    let err = pool
        .retries(2)
        .starmap(
            task!(common::signal_on),
            (0..10u64).map(|x| (x, 4, libc::SIGKILL)),
        )
        .expect_err("dies every time");
    assert!(matches!(err, Error::WorkerDied { index: 4, .. }), "{err:?}");
    let _ = std::fs::remove_file(m);
    let _ = std::fs::remove_file(m2);
}

/// Panics on its first `fails` runs in this worker, then returns `x`.
#[task]
fn flaky(x: u64, fails: usize) -> u64 {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < fails {
        panic!("flaky run");
    }
    x
}

#[test]
fn panics_are_retried_only_when_asked() {
    let pool = Pool::builder().processes(1).build().expect("pool");
    let err = pool
        .retries(3)
        .apply(task!(flaky), (1, 2))
        .expect_err("panics are not retried by default");
    assert!(matches!(err, Error::TaskPanicked { .. }), "{err:?}");
    // One panic already happened in this worker; one more to go.
    assert_eq!(
        pool.retries(3)
            .retry_panics(true)
            .apply(task!(flaky), (2, 2))
            .expect("retried in place"),
        2
    );
}

/// Whether this worker still has the worker variable, and what a program it
/// starts sees: the variable and its open descriptors.
#[task]
fn environment_probe() -> (bool, String) {
    let inherited = std::process::Command::new("sh")
        .args([
            "-c",
            "echo \"var=${POOL_RUNTIME_WORKER:-unset}\"; for f in /proc/self/fd/*; do readlink $f; done | tr '\\n' ' '",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (std::env::var_os("POOL_RUNTIME_WORKER").is_some(), inherited)
}

#[test]
fn workers_do_not_pass_their_variable_or_channel_to_programs_they_start() {
    let pool = pool();
    let (has_var, child) = pool.apply(task!(environment_probe), ()).expect("probe");
    assert!(!has_var, "the worker variable is removed in the worker");
    let mut lines = child.lines();
    assert_eq!(lines.next(), Some("var=unset"), "{child}");
    let targets = lines.next().unwrap_or("");
    // The worker's channel is a socket and its progress page a memfd: a
    // program it starts has neither.
    assert!(
        !targets.contains("socket:") && !targets.contains("memfd:"),
        "a grandchild inherited: {targets}"
    );
    // The worker itself holds exactly two sockets (its channel, one per
    // direction).
    let own = pool.apply(task!(fd_links), ()).expect("probe");
    assert_eq!(own.matches("socket:").count(), 2, "{own}");
}

/// This worker's open descriptors and what they are.
#[task]
fn fd_links() -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{}->{} ",
            entry.file_name().to_string_lossy(),
            target
        ));
    }
    out
}

/// Writes through an invalid pointer on `x == bad`: a genuine SIGSEGV (a
/// signal sent with `raise` would be swallowed by Rust's stack-overflow
/// handler, which only acts on real faults).
#[task]
fn segfault_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        let invalid = std::hint::black_box(8usize) as *mut u8;
        // SAFETY: none; crashing the worker is the point of this task.
        unsafe { invalid.write_volatile(1) };
    }
    x
}
