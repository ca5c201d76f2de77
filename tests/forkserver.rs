//! The fork server: once a first pool is ready, later workers are forks of
//! a waiting copy of the program, and they see the environment the process
//! has when they start.
//!
//! One test in its own binary: it changes the environment, which no other
//! test thread may read meanwhile.

mod common;

use pool_runtime::prelude::*;
use pool_runtime::{ExitCause, task};

use common::{parent_of, started_with, wait_for_fork_server};

pool_runtime::test_support!();

/// The value of environment variable `name` in the worker.
#[task]
fn env_var(name: String) -> Option<String> {
    std::env::var(name).ok()
}

/// The worker's file mode creation mask.
#[task]
fn umask_now() -> u32 {
    // SAFETY: umask only swaps the mask; the old one is put back.
    unsafe {
        let mask = libc::umask(0o22);
        libc::umask(mask);
        mask as u32
    }
}

/// Whether `pid` was forked by the fork server (not started afresh).
fn forked(pid: u32) -> bool {
    started_with(pid, "POOL_RUNTIME_FORKSERVER") && !started_with(pid, "POOL_RUNTIME_WORKER")
}

fn pool() -> Pool {
    Pool::builder().processes(2).build().expect("pool")
}

/// The workers of `pool`: forked (children of a fork server) or not
/// (children of this process), and running tasks.
fn check_workers(pool: &Pool, want_forked: bool) {
    let me = std::process::id();
    // A replacement may still be starting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pids = pool.worker_pids();
    while pids.len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
        pids = pool.worker_pids();
    }
    assert_eq!(pids.len(), 2, "workers: {pids:?}");
    for &pid in &pids {
        assert_eq!(forked(pid), want_forked, "worker {pid}");
        let parent = parent_of(pid).expect("a live worker");
        if want_forked {
            assert!(
                common::is_fork_server(parent),
                "worker {pid}: parent {parent}"
            );
            assert_eq!(parent_of(parent), Some(me), "the fork server is our child");
        } else {
            assert_eq!(parent, me, "worker {pid} is our child");
        }
    }
    let squares = pool
        .map(task!(common::square), 0..1000u64)
        .expect("tasks run");
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let ran_on = pool
        .chunksize(1)
        .starmap(task!(common::worker_pid), vec![(); 20])
        .expect("tasks run");
    assert!(ran_on.iter().all(|pid| pids.contains(pid)), "{ran_on:?}");
}

/// A worker of `pool` exits with `code` inside a task: the caller gets
/// that code (the pool then starts a replacement).
fn exit_code_comes_back(pool: &Pool, code: i32) {
    let err = pool
        .chunksize(1)
        .starmap(task!(common::exit_on), [(1, 1, code)])
        .expect_err("the worker exits");
    assert!(
        matches!(
            err,
            pool_runtime::Error::WorkerDied {
                cause: ExitCause::Code(c),
                ..
            } if c == code
        ),
        "{err:?}"
    );
}

#[test]
fn later_workers_are_forked_and_see_the_current_environment() {
    // The first pool of the process starts its workers afresh, then the
    // fork server.
    let first = pool();
    check_workers(&first, false);
    let server = wait_for_fork_server(None);
    assert!(!first.worker_pids().contains(&server));
    drop(first);

    // Later pools are forked (with no limit on the startup time, too).
    let second = Pool::builder()
        .processes(2)
        .startup_timeout(std::time::Duration::MAX)
        .build()
        .expect("pool");
    check_workers(&second, true);

    // A replacement for a worker that died is forked too.
    exit_code_comes_back(&second, 3);
    check_workers(&second, true);
    drop(second);

    // The environment changed: the workers see it, and a new fork server
    // replaces the old one, which ends.
    // SAFETY: the only test of this binary; no other thread reads the
    // environment now.
    unsafe { std::env::set_var("POOL_FORKSERVER_TEST", "changed") };
    let third = pool();
    let seen = third
        .apply(task!(env_var), ("POOL_FORKSERVER_TEST".to_owned(),))
        .expect("task runs");
    assert_eq!(seen.as_deref(), Some("changed"));
    drop(third);
    let renewed = wait_for_fork_server(Some(server));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while parent_of(server).is_some() && common::process_exists(server) {
        assert!(
            std::time::Instant::now() < deadline,
            "the old fork server still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let fourth = pool();
    check_workers(&fourth, true);
    let seen = fourth
        .apply(task!(env_var), ("POOL_FORKSERVER_TEST".to_owned(),))
        .expect("task runs");
    assert_eq!(seen.as_deref(), Some("changed"));
    assert!(common::process_exists(renewed));
    drop(fourth);

    // Another process attribute changed: the same.
    // SAFETY: umask has no preconditions.
    let old_mask = unsafe { libc::umask(0o077) };
    let fifth = pool();
    assert_eq!(fifth.apply(task!(umask_now), ()).expect("task runs"), 0o077);
    drop(fifth);
    let server = wait_for_fork_server(Some(renewed));
    let sixth = pool();
    check_workers(&sixth, true);
    assert_eq!(sixth.apply(task!(umask_now), ()).expect("task runs"), 0o077);
    drop(sixth);

    // A stalled server: a pool does not wait for it beyond its startup
    // timeout, and starts its workers afresh; the fork that comes late
    // finds its channel closed, and the retired server then ends.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server as i32, libc::SIGSTOP) };
    let stalled = Pool::builder()
        .processes(2)
        .startup_timeout(std::time::Duration::from_millis(300))
        .build()
        .expect("the pool starts without the server");
    check_workers(&stalled, false);
    // SAFETY: as above.
    unsafe { libc::kill(server as i32, libc::SIGCONT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while parent_of(server).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled server still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    check_workers(&stalled, false);
    drop(stalled);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };

    // A program that ignores SIGCHLD (its children are then reaped
    // unseen): a new server starts with it, still reaps and reports its
    // workers, and a worker's exit code still comes back.
    // SAFETY: setting a disposition, put back below.
    let old = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    drop(pool());
    let seventh = pool();
    check_workers(&seventh, true);
    // Its server (the one started before the change may still be ending).
    let ignoring = parent_of(seventh.worker_pids()[0]).expect("a live worker");
    assert_ne!(ignoring, server);
    exit_code_comes_back(&seventh, 4);
    check_workers(&seventh, true);
    drop(seventh);
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGCHLD, old) };
    assert!(common::process_exists(ignoring));

    // Turned off: started afresh.
    let fresh = Pool::builder()
        .processes(2)
        .fork_server(false)
        .build()
        .expect("pool");
    check_workers(&fresh, false);
}
