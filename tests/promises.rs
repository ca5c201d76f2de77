//! Promises the scheduler keeps under interleavings a user can write:
//! timeouts at any pipeline depth, short calls beside long ones, `join`
//! while an `imap` is open, callbacks that touch the pool, `drop` while a
//! replacement is stuck, hundreds of workers under a low descriptor limit,
//! and a replacement that fails to start. Each test failed (hung, lost
//! results or panicked) before its fix; every wait is bounded.
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use common::within;
use std::time::{Duration, Instant};

use pool_runtime::prelude::*;
use pool_runtime::{TaskFailure, task};

mod common;

pool_runtime::test_support!();

/// A gate: a file path that tasks wait for (see [`gated`]); opened by
/// creating the file, removed when dropped.
struct Gate(std::path::PathBuf);

impl Gate {
    fn new(tag: &str) -> Gate {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("promise-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Gate(path)
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn open(&self) {
        std::fs::write(&self.0, b"open").expect("create the gate file");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until the file `gate` exists (at most 60 s), then returns `x`.
#[task]
fn gated(x: u64, gate: String) -> u64 {
    wait_for_gate(&gate);
    x
}

/// Returns `x`, first waiting for the file `gate` if `x == slow`.
#[task]
fn gate_on(x: u64, slow: u64, gate: String) -> u64 {
    if x == slow {
        wait_for_gate(&gate);
    }
    x
}

fn wait_for_gate(gate: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(gate).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Returns `x`, or never returns if `x == stuck`.
#[task]
fn stall_at(x: u64, stuck: u64) -> u64 {
    if x == stuck {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    x
}

// ----- 1. a timeout applies to whatever item runs, at any depth -----

/// One worker whose pipeline is deep (a warm-up call of the same task
/// gave it a fast pace): the stuck item is killed at its timeout wherever
/// it sits in the pipeline, and only it fails.
#[test]
fn a_timeout_applies_at_any_pipeline_depth() {
    let cases = [
        (Some(1), 10),
        (Some(1), 1000),
        (Some(1), 2500),
        (None, 3),
        (None, 2999),
    ];
    let outcomes = within(90, move || {
        let pool = Pool::builder().processes(1).build().expect("pool");
        let mut outcomes = Vec::new();
        for (chunksize, stuck) in cases {
            let warm = pool.starmap(task!(stall_at), (0..3000).map(|x| (x, u64::MAX)));
            assert_eq!(warm.map(|v| v.len()).ok(), Some(3000));
            let mut call = pool.timeout(Duration::from_millis(300));
            if let Some(size) = chunksize {
                call = call.chunksize(size);
            }
            let out = call.starmap(task!(stall_at), (0..3000).map(|x| (x, stuck)));
            outcomes.push((chunksize, stuck, out));
        }
        outcomes
    });
    for (chunksize, stuck, out) in outcomes {
        match out {
            Err(Error::TaskTimeout { index, timeout, .. }) => {
                assert_eq!(index, stuck as usize, "chunksize {chunksize:?}");
                assert_eq!(timeout, Duration::from_millis(300));
            }
            other => panic!("chunksize {chunksize:?}, stuck item {stuck}: {other:?}"),
        }
    }
}

/// The same through `imap`: every other item of the call comes back with
/// its value, and the stuck one with its timeout.
#[test]
fn a_timeout_deep_in_an_imap_fails_only_its_item() {
    let out = within(60, || {
        let pool = Pool::builder().processes(1).build().expect("pool");
        let warm = pool
            .chunksize(1)
            .starmap(task!(stall_at), (0..3000).map(|x| (x, u64::MAX)));
        assert_eq!(warm.map(|v| v.len()).ok(), Some(3000));
        pool.timeout(Duration::from_millis(300))
            .chunksize(1)
            .istarmap(task!(stall_at), (0..3000).map(|x| (x, 1000)))
            .collect::<Vec<_>>()
    });
    assert_eq!(out.len(), 3000);
    for (i, result) in out.into_iter().enumerate() {
        match result {
            Ok(x) => assert_eq!(x, i as u64),
            Err(Error::TaskTimeout { index, .. }) if i == 1000 => assert_eq!(index, 1000),
            Err(err) => panic!("item {i}: {err}"),
        }
    }
}

// ----- 2. a short call does not wait behind a long task -----

/// Two workers that last ran a fast task; one takes a long call (held
/// until the test opens its gate): a `map` and an `imap` of the fast task
/// complete on the other worker while the long one still runs.
#[test]
fn a_short_call_does_not_wait_behind_a_long_task() {
    let pool = Arc::new(common::pool());
    let warm = pool.map(task!(common::square), 0..2000).expect("warm-up");
    assert_eq!(warm.len(), 2000);
    let gate = Gate::new("long");
    let long = pool
        .apply_async(task!(gated), (7, gate.arg()))
        .expect("submit the long call");
    let p = Arc::clone(&pool);
    let (mapped, imapped) = within(20, move || {
        let mapped = p.map(task!(common::square), 0..10).expect("map");
        let imapped: Vec<u64> = p
            .imap(task!(common::square), 0..10)
            .map(|r| r.expect("imap item"))
            .collect();
        (mapped, imapped)
    });
    let squares: Vec<u64> = (0..10).map(|x| x * x).collect();
    assert_eq!(mapped, squares);
    assert_eq!(imapped, squares);
    assert!(!long.ready(), "the long call is still held by its gate");
    gate.open();
    assert_eq!(long.get().expect("the long call"), 7);
}

/// One slow item among fast ones of the same task: the fast items queued
/// behind it on its worker move to the idle worker, so every other
/// result arrives while the slow item still runs.
#[test]
fn fast_items_do_not_wait_behind_a_slow_item_of_the_same_call() {
    let pool = Arc::new(common::pool());
    let gate = Gate::new("same");
    let warm = pool.chunksize(1).starmap(
        task!(gate_on),
        (0..2000).map(|x| (x, u64::MAX, String::new())),
    );
    assert_eq!(warm.map(|v| v.len()).ok(), Some(2000));
    let p = Arc::clone(&pool);
    let arg = gate.arg();
    let (tx, rx) = mpsc::channel();
    let consumer = std::thread::spawn(move || {
        for result in p
            .chunksize(1)
            .istarmap_unordered(task!(gate_on), (0..400).map(move |x| (x, 50, arg.clone())))
        {
            if tx.send(result.map_err(|e| e.to_string())).is_err() {
                break;
            }
        }
    });
    // Every item but the slow one arrives with the gate still shut.
    let mut seen: Vec<u64> = (0..399)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("HANG: a fast item waits behind the slow one")
                .expect("a fast item")
        })
        .collect();
    assert!(!seen.contains(&50), "the slow item is still held");
    gate.open();
    seen.push(
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the slow item, once its gate opened")
            .expect("slow item"),
    );
    consumer.join().expect("consumer");
    seen.sort_unstable();
    assert_eq!(seen, (0..400).collect::<Vec<_>>());
    // Nothing ran twice: exactly 400 results counted across the workers.
    let counted: u64 = pool.stats().workers.iter().map(|w| w.items).sum();
    assert_eq!(counted, 2000 + 400);
}

// ----- 3. join delivers what imap already pulled -----

/// `join` with an `imap` open: every item the iterator pulled before the
/// join comes back with its value, in order, then one error says the rest
/// was not run.
#[test]
fn join_delivers_every_item_an_imap_pulled() {
    for unordered in [false, true] {
        let (results, pulled) = within(30, move || {
            let pool = common::pool();
            let pulled = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&pulled);
            let input = (1..=20u64).inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            });
            let items = input.map(|x| (x, 20));
            let mut results: Vec<Result<u64, String>> = Vec::new();
            if unordered {
                let mut it = pool.istarmap_unordered(task!(common::sleepy), items);
                results.extend(it.next().map(|r| r.map_err(|e| e.to_string())));
                pool.join();
                results.extend(it.map(|r| r.map_err(|e| e.to_string())));
            } else {
                let mut it = pool.istarmap(task!(common::sleepy), items);
                results.extend(it.next().map(|r| r.map_err(|e| e.to_string())));
                pool.join();
                results.extend(it.map(|r| r.map_err(|e| e.to_string())));
            }
            (results, pulled.load(Ordering::SeqCst))
        });
        let mut values: Vec<u64> = results.iter().filter_map(|r| r.clone().ok()).collect();
        assert_eq!(
            values.len(),
            pulled,
            "unordered {unordered}: every pulled item is delivered: {results:?}"
        );
        if !unordered {
            assert_eq!(values, (1..=pulled as u64).collect::<Vec<_>>());
        }
        values.sort_unstable();
        assert_eq!(values, (1..=pulled as u64).collect::<Vec<_>>());
        let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if pulled < 20 {
            assert_eq!(errors.len(), 1, "{results:?}");
            assert!(results.last().is_some_and(Result::is_err));
        } else {
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
}

/// `join` while another thread keeps pulling an endless `imap`: the join
/// returns, the iterator delivers what it pulled, in order, then one error
/// and its end.
#[test]
fn join_ends_an_imap_that_keeps_pulling() {
    let pool = Arc::new(common::pool());
    let p = Arc::clone(&pool);
    let (seen_tx, seen_rx) = mpsc::channel();
    let consumer = std::thread::spawn(move || {
        let mut results = Vec::new();
        for result in p.istarmap(task!(common::sleepy), (0u64..).map(|x| (x, 1))) {
            results.push(result.map_err(|e| e.to_string()));
            if results.len() == 10 {
                let _ = seen_tx.send(());
            }
        }
        results
    });
    seen_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the imap delivers");
    let p = Arc::clone(&pool);
    within(20, move || p.join());
    let results = within(20, move || consumer.join().expect("consumer"));
    let (last, values) = results.split_last().expect("results");
    assert!(last.is_err(), "{last:?}");
    let values: Vec<u64> = values
        .iter()
        .map(|r| r.clone().expect("every pulled item is delivered"))
        .collect();
    assert_eq!(values, (0..values.len() as u64).collect::<Vec<_>>());
    // Closed, then joined: new work is refused as closed.
    assert!(matches!(
        pool.map(task!(common::square), [1]),
        Err(Error::Closed)
    ));
}

/// A task whose items all take `ms` milliseconds.
#[task]
fn busy_for(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

/// After thousands of instant items of a task, items of 10 ms are given
/// one at a time as soon as one was seen (the pace does not stay fast and
/// queue several behind each other).
#[test]
fn slow_items_after_fast_ones_are_not_queued_deep() {
    let pool = Arc::new(common::pool());
    let warm = pool.starmap(task!(busy_for), (0..20_000).map(|x| (x, 0)));
    assert_eq!(warm.map(|v| v.len()).ok(), Some(20_000));
    let p = Arc::clone(&pool);
    let in_flight = within(60, move || {
        let mut seen = Vec::new();
        for (i, result) in p
            .chunksize(1)
            .istarmap(task!(busy_for), (0..60).map(|x| (x, 10)))
            .enumerate()
        {
            assert_eq!(result.expect("an item"), i as u64);
            if i >= 30 {
                seen.push(p.stats().in_flight_items);
            }
        }
        seen
    });
    // Two workers, one item each (and one more just handed out).
    assert!(in_flight.iter().all(|&n| n <= 4), "{in_flight:?}");
}

// ----- 4. callbacks that touch the pool -----

/// A callback that drops the last handle on the pool: the pool ends and
/// reaps its workers on the result thread, and the callback returns.
#[test]
fn a_callback_may_drop_the_last_handle_on_the_pool() {
    let pool = Arc::new(common::pool());
    let pids = pool.worker_pids();
    let gate = Gate::new("drop");
    let (tx, rx) = mpsc::channel();
    let handle = Arc::clone(&pool);
    let pending = pool
        .apply_async(task!(gated), (3, gate.arg()))
        .expect("submit")
        .callback(move |v| {
            let value = *v;
            drop(handle);
            let _ = tx.send(value);
        });
    drop(pool);
    gate.open();
    let value = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the callback ran to its end");
    assert_eq!(value, 3);
    assert_eq!(pending.get().expect("the result stays available"), 3);
    for pid in pids {
        assert!(!common::process_exists(pid), "worker {pid} was reaped");
    }
}

/// Submits `square(x)` on `pool` with a callback that calls `touch` on
/// the pool (from the result thread), then sends the value; returns that
/// value once the callback ran to its end.
fn callback_touching(pool: &Arc<Pool>, x: u64, touch: fn(&Pool)) -> u64 {
    let (tx, rx) = mpsc::channel();
    let handle = Arc::clone(pool);
    let _pending = pool
        .apply_async(task!(common::square), x)
        .expect("submit")
        .callback(move |v| {
            touch(&handle);
            let _ = tx.send(*v);
        });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("HANG: the callback did not run to its end")
}

/// A callback that terminates the pool: later calls fail with
/// `Terminated`, and every worker is reaped.
#[test]
fn a_callback_may_terminate_the_pool() {
    let pool = Arc::new(common::pool());
    let pids = pool.worker_pids();
    assert_eq!(callback_touching(&pool, 4, Pool::terminate), 16);
    assert!(matches!(
        pool.map(task!(common::square), [1]),
        Err(Error::Terminated)
    ));
    for pid in pids {
        assert!(!common::process_exists(pid), "worker {pid} was reaped");
    }
}

/// A callback that joins the pool: the join waits for the work submitted
/// before it (another async call completes with its value), then returns.
#[test]
fn a_callback_may_join_the_pool() {
    let pool = Arc::new(common::pool());
    let other = pool
        .apply_async(task!(common::sleepy), (9, 200))
        .expect("submit the other call");
    assert_eq!(callback_touching(&pool, 5, Pool::join), 25);
    assert_eq!(other.get().expect("work submitted before the join"), 9);
    assert!(pool.is_closed());
}

// ----- 5. drop while a replacement's fork request is stalled -----

/// The probe program of the test below.
#[test]
#[ignore = "a probe program, run by drop_ends_while_a_fork_request_is_stalled"]
fn probe_stalled_fork() {
    if std::env::var_os("POOL_PROBE_STALLED_FORK").is_none() {
        return;
    }
    let first = Pool::builder().processes(1).build().expect("first pool");
    let server = common::wait_for_fork_server(None);
    // A pool built now has forks of the server: when they end, only the
    // stopped server could say how.
    let pool = Pool::builder()
        .processes(2)
        .startup_timeout(Duration::MAX)
        .build()
        .expect("pool");
    assert!(common::all_children_of(&pool.worker_pids(), server));
    drop(first);
    // SAFETY: stopping and signalling processes of this program.
    unsafe { libc::kill(server as i32, libc::SIGSTOP) };
    let worker = pool.worker_pids()[0];
    // SAFETY: as above.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    // The replacement's thread runs once the death is seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(pool.stats().workers.iter().map(|w| w.respawns).sum::<u64>() == 1
        && (thread_named("pool-worker-0") || thread_named("pool-worker-1")))
    {
        assert!(Instant::now() < deadline, "no replacement under way");
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    drop(pool);
    println!("dropped in {} ms", start.elapsed().as_millis());
    // SAFETY: as above.
    unsafe { libc::kill(server as i32, libc::SIGCONT) };
}

fn thread_named(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| {
        tasks.flatten().any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim_end() == name)
        })
    })
}

/// Dropping a pool whose replacement worker waits on a stopped fork
/// server (with no startup timeout), and whose other worker is a fork of
/// that server, returns within its 2 s bound: shutdown abandons the start,
/// and does not wait for the stopped server to report the kill.
#[test]
fn drop_ends_while_a_fork_request_is_stalled() {
    let mut probe = common::probe_command("probe_stalled_fork", "POOL_PROBE_STALLED_FORK")
        .spawn()
        .expect("the probe starts");
    let stdout = probe.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, so the probe never writes into a closed pipe.
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, ms)) = line.split_once("dropped in ") {
                sent = tx.send(Some(ms.to_owned())).is_ok();
            }
        }
        if !sent {
            let _ = tx.send(None);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).ok().flatten();
    if line.is_none() {
        let _ = probe.kill();
    }
    let status = probe.wait().expect("reap the probe");
    let line = line.expect("HANG: the pool's drop did not return within 30 s");
    assert!(status.success(), "{line}; {status}");
    let ms: u64 = line.trim_end_matches(" ms").parse().expect("a duration");
    assert!(ms < 2_000, "drop took {ms} ms, beyond its 2 s bound");
}

// ----- 6. descriptors per worker -----

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The probe program of the tests below.
#[test]
#[ignore = "a probe program, run by the descriptor tests"]
fn probe_descriptors() {
    let Ok(mode) = std::env::var("POOL_PROBE_FDS") else {
        return;
    };
    if mode == "count" {
        // Workers started afresh, then forked ones (the fork server runs
        // once the first pool is up).
        let first = Pool::builder().processes(2).build().expect("first pool");
        common::wait_for_fork_server(None);
        for fork_server in [false, true] {
            let before = open_fds();
            let pool = Pool::builder()
                .processes(16)
                .fork_server(fork_server)
                .build()
                .expect("pool of 16");
            let out = pool.map(task!(common::square), 0..100).expect("map");
            assert_eq!(out, (0..100).map(|x| x * x).collect::<Vec<_>>());
            let per_worker = (open_fds() - before) as f64 / 16.0;
            println!("fork_server {fork_server}: {per_worker} descriptors per worker");
        }
        drop(first);
    } else {
        // A hard limit of 1 024 that nothing can raise: 300 workers fit.
        let limit = libc::rlimit {
            rlim_cur: 1024,
            rlim_max: 1024,
        };
        // SAFETY: setrlimit with a valid struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        let pool = Pool::builder()
            .processes(300)
            .build()
            .expect("300 workers under a 1024 descriptor limit");
        let out = pool.map(task!(common::square), 0..3000).expect("map");
        assert_eq!(out, (0..3000).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(pool.worker_pids().len(), 300);
        println!("300 workers ran");
    }
}

fn run_probe_fds(mode: &str) -> String {
    let out = common::probe_command("probe_descriptors", "POOL_PROBE_FDS")
        .env("POOL_PROBE_FDS", mode)
        .output()
        .expect("the probe runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A worker costs the pool's process at most 3 descriptors, started
/// afresh or forked.
#[test]
fn a_worker_holds_at_most_three_descriptors_in_the_pool() {
    let out = run_probe_fds("count");
    let counts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{out}");
    for count in counts {
        assert!(count <= 3.0, "{out}");
    }
}

/// 300 workers build and run under a hard limit of 1 024 descriptors.
#[test]
fn three_hundred_workers_run_under_a_1024_descriptor_limit() {
    let out = run_probe_fds("300");
    assert!(out.contains("300 workers ran"), "{out}");
}

// ----- 7. a replacement that fails to start -----

/// The probe program of the test below.
#[test]
#[ignore = "a probe program, run by a_failed_replacement_is_retried"]
fn probe_failed_replacement() {
    if std::env::var_os("POOL_PROBE_RESPAWN").is_none() {
        return;
    }
    let pool = Pool::builder()
        .processes(1)
        .fork_server(false)
        .build()
        .expect("pool");
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let saved = limit;
    // No new descriptor can be opened: the replacement fails with EMFILE.
    limit.rlim_cur = 3;
    // SAFETY: setrlimit with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let worker = pool.worker_pids()[0];
    // SAFETY: killing our own worker.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().workers[0].start_failures < 2 {
        assert!(Instant::now() < deadline, "no failed start seen");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);
    let out = pool.map(task!(common::square), 0..10);
    println!("after the failures: {out:?}");
    assert_eq!(
        out.expect("the pool recovered"),
        (0..10).map(|x| x * x).collect::<Vec<_>>()
    );
    println!("recovered");
}

/// A replacement that fails to start (EMFILE) is retried with backoff:
/// once descriptors are available again, the pool works.
#[test]
fn a_failed_replacement_is_retried() {
    let out = common::probe_command("probe_failed_replacement", "POOL_PROBE_RESPAWN")
        .output()
        .expect("the probe runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("recovered"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The probe program of the test below.
#[test]
#[ignore = "a probe program, run by a_broken_pool_says_why"]
fn probe_broken_pool() {
    if std::env::var_os("POOL_PROBE_BROKEN").is_none() {
        return;
    }
    let pool = Pool::builder()
        .processes(1)
        .fork_server(false)
        .build()
        .expect("pool");
    let limit = libc::rlimit {
        rlim_cur: 3,
        rlim_max: 3,
    };
    // SAFETY: setrlimit with a valid struct (for good: nothing restores it).
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let worker = pool.worker_pids()[0];
    // SAFETY: killing our own worker.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let err = pool
        .map(task!(common::square), 0..10)
        .expect_err("no worker can start");
    match &err {
        Error::Broken { .. } => {}
        other => panic!("expected Broken, got {other:?}"),
    }
    let source = std::error::Error::source(&err).map(ToString::to_string);
    println!("broken: {err}");
    println!("source: {source:?}");
}

/// A pool whose workers can no longer start becomes broken, and its error
/// says what happened (replacements failing) and why (EMFILE), as its
/// message and as its source.
#[test]
fn a_broken_pool_says_why() {
    let out = common::probe_command("probe_broken_pool", "POOL_PROBE_BROKEN")
        .output()
        .expect("the probe runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broken = stdout
        .lines()
        .find_map(|l| l.split_once("broken: ").map(|(_, e)| e))
        .expect("the probe prints the error");
    assert!(broken.contains("Too many open files"), "{broken}");
    assert!(broken.contains("replacement"), "{broken}");
    assert!(!broken.contains("at start-up"), "{broken}");
    let source = stdout
        .lines()
        .find_map(|l| l.split_once("source: ").map(|(_, e)| e))
        .expect("the probe prints the source");
    assert!(source.contains("Too many open files"), "{source}");
}

// ----- 8. smaller promises -----

/// Panics, and panics again while unwinding (in a `Drop`).
#[task]
fn double_panic(x: u64) -> u64 {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("second panic, in drop");
        }
    }
    let _bomb = Bomb;
    if x > 0 {
        panic!("first panic, item {x}");
    }
    x
}

/// The probe program of the test below.
#[test]
#[ignore = "a probe program, run by a_double_panic_names_both_panics"]
fn probe_double_panic() {
    if std::env::var_os("POOL_PROBE_DOUBLE_PANIC").is_none() {
        return;
    }
    let pool = Pool::builder().processes(1).build().expect("pool");
    let err = pool
        .apply(task!(double_panic), 3)
        .expect_err("the worker aborts");
    println!("error: {err}");
}

/// A panic in a `Drop` while a task's panic unwinds aborts the worker
/// (SIGABRT, as the error says); its stderr names both panics.
#[test]
fn a_double_panic_names_both_panics() {
    let out = common::probe_command("probe_double_panic", "POOL_PROBE_DOUBLE_PANIC")
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("the probe runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("SIGABRT"), "{stdout}");
    assert!(stderr.contains("first panic, item 3"), "{stderr}");
    assert!(stderr.contains("second panic, in drop"), "{stderr}");
}

/// `n` bytes.
#[task]
fn big_result(n: usize) -> Vec<u8> {
    vec![1; n]
}

/// The peak resident memory of this worker, in bytes.
#[task]
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A result far above the frame limit is refused without being encoded
/// whole: the worker's peak memory stays near the value itself, not
/// twice it.
#[test]
fn an_oversized_result_is_refused_before_it_is_encoded() {
    const SIZE: usize = 300 << 20;
    let (err, peak) = within(60, || {
        let pool = Pool::builder()
            .processes(1)
            .max_frame_size(1 << 20)
            .build()
            .expect("pool");
        let err = pool
            .apply(task!(big_result), SIZE)
            .expect_err("above the frame limit");
        let peak = pool.apply(task!(peak_rss), ()).expect("peak");
        (err, peak)
    });
    match &err {
        Error::Serialization {
            failure: TaskFailure::BadOutput { message, .. },
            ..
        } => assert!(
            message.contains("above the frame limit of 1048576"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        peak < (SIZE as u64) * 3 / 2,
        "peak {peak} bytes for a {SIZE}-byte result"
    );
}

/// The length of `blob`.
#[task]
fn blob_len(blob: Vec<u8>) -> usize {
    blob.len()
}

/// An argument above the frame limit is refused in the parent, and the
/// error says so: the parent's encoder, and the limit.
#[test]
fn an_oversized_argument_names_the_parent_and_the_limit() {
    let out = within(30, || {
        let pool = Pool::builder()
            .processes(1)
            .max_frame_size(64 << 10)
            .build()
            .expect("pool");
        pool.imap(
            task!(blob_len),
            [vec![0u8; 10], vec![0u8; 1 << 20], vec![0u8; 20]],
        )
        .collect::<Vec<_>>()
    });
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_ref().ok(), Some(&10));
    assert_eq!(out[2].as_ref().ok(), Some(&20));
    match &out[1] {
        Err(Error::Serialization {
            index: 1,
            failure: TaskFailure::Unencodable { message, .. },
            ..
        }) => assert!(message.contains("frame limit of 65536"), "{message}"),
        other => panic!("{other:?}"),
    }
    let text = out[1].as_ref().expect_err("refused").to_string();
    assert!(text.contains("the parent could not encode"), "{text}");
    assert!(!text.contains("decode"), "{text}");
}
