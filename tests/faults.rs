//! Faults in tasks and workers: each one is an `Err` for the affected item,
//! the pool replaces the worker and stays usable, and nothing is left behind.

mod common;

use std::time::{Duration, Instant};

use common::process_exists;
use pool_runtime::prelude::*;
use pool_runtime::{ExitCause, task};

pool_runtime::test_support!();

fn pool() -> Pool {
    Pool::builder()
        .processes(2)
        .build()
        .expect("a pool of two workers starts")
}

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
        // join() waits for the starmap above, whichever starts first.
        std::thread::sleep(Duration::from_millis(20));
        pool.join();
        let out = worker.join().expect("no panic");
        // The call either completed or was refused as closed; never lost.
        match out {
            Ok(v) => assert_eq!(v, [0, 1, 2, 3]),
            Err(e) => assert!(matches!(e, Error::Closed), "{e:?}"),
        }
    });
    for pid in pids {
        assert!(
            !process_exists(pid),
            "worker {pid} is still there after join"
        );
    }
}
