//! The rest of Python's Pool: async results, callbacks, `imap`, initializer,
//! `max_tasks_per_child`, lifecycle. All through real worker processes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{pool, process_exists};
use pool_runtime::prelude::*;
use pool_runtime::task;

pool_runtime::test_support!();

#[test]
fn async_calls_return_at_once_and_get_their_results() {
    let pool = pool();
    let squares = pool
        .map_async(task!(common::square), 0..100u64)
        .expect("submitted");
    let powers = pool
        .starmap_async(task!(common::power), [(2, 3), (3, 2), (4, 1)])
        .expect("submitted");
    let one = pool
        .apply_async(task!(common::power), (2, 10))
        .expect("submitted");
    assert_eq!(one.get().expect("apply_async"), 1024);
    assert_eq!(powers.get().expect("starmap_async"), [8, 9, 4]);
    assert_eq!(
        squares.get().expect("map_async"),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>()
    );
}

#[test]
fn get_timeout_times_out_and_the_result_stays_retrievable() {
    let pool = pool();
    let mut slow = pool
        .apply_async(task!(common::sleepy), (7, 300))
        .expect("submitted");
    assert!(!slow.ready());
    assert_eq!(slow.successful(), None);
    let err = slow
        .get_timeout(Duration::from_millis(1))
        .expect_err("a 300 ms task is not ready after 1 ms");
    assert!(matches!(err, Error::WaitTimeout(_)), "{err:?}");
    slow.wait();
    assert!(slow.ready());
    assert_eq!(slow.successful(), Some(true));
    assert_eq!(
        slow.get_timeout(Duration::from_secs(5)).expect("ready now"),
        7
    );
    assert!(matches!(
        slow.get_timeout(Duration::from_secs(1)),
        Err(Error::AlreadyRetrieved)
    ));
}

#[test]
fn an_async_failure_is_an_error_and_successful_says_so() {
    let pool = pool();
    let failing = pool
        .starmap_async(task!(common::panic_on), (0..10u64).map(|x| (x, 6)))
        .expect("submitted");
    assert!(failing.wait_timeout(Duration::from_secs(10)));
    assert_eq!(failing.successful(), Some(false));
    assert!(matches!(
        failing.get(),
        Err(Error::TaskPanicked { index: 6, .. })
    ));
}

#[test]
fn an_async_result_is_a_future_that_does_not_block_the_executor() {
    let pool = pool();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio");
    let ticks = Arc::new(AtomicUsize::new(0));
    let value = runtime.block_on(async {
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let value = pool
            .apply_async(task!(common::sleepy), (5, 200))
            .expect("submitted")
            .await;
        let at_completion = ticks.load(Ordering::Relaxed);
        ticker.abort();
        (value, at_completion)
    });
    assert_eq!(value.0.expect("awaited"), 5);
    // On a single-threaded runtime the ticker runs only while the await yields.
    assert!(
        value.1 >= 10,
        "the executor was blocked: {} ticks during a 200 ms await",
        value.1
    );
}

#[test]
fn callbacks_run_once_off_the_callers_thread() {
    let pool = pool();
    let caller = std::thread::current().id();
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let ok = {
        let seen = Arc::clone(&seen);
        let errs = Arc::clone(&seen);
        pool.starmap_async(task!(common::power), [(2, 2), (3, 2)])
            .expect("submitted")
            .callback(move |v: &Vec<u64>| {
                seen.lock()
                    .expect("lock")
                    .push((format!("ok {v:?}"), std::thread::current().id() != caller));
            })
            .error_callback(move |e| errs.lock().expect("lock").push((format!("err {e}"), true)))
    };
    let bad = {
        let seen = Arc::clone(&seen);
        let oks = Arc::clone(&seen);
        pool.apply_async(task!(common::panic_on), (1, 1))
            .expect("submitted")
            .callback(move |v: &u64| oks.lock().expect("lock").push((format!("ok {v}"), true)))
            .error_callback(move |e| {
                seen.lock().expect("lock").push((
                    format!("err {}", e.index().unwrap_or(99)),
                    std::thread::current().id() != caller,
                ));
            })
    };
    assert_eq!(ok.get().expect("ok"), [4, 9]);
    assert!(
        matches!(bad.get(), Err(Error::TaskPanicked { index: 0, .. })),
        "apply_async of panic_on(1, 1) panics on its only item"
    );
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(
        seen,
        [("err 0".to_owned(), true), ("ok [4, 9]".to_owned(), true)]
    );
}

#[test]
fn a_callback_registered_after_completion_still_runs_once() {
    let pool = pool();
    let done = pool
        .apply_async(task!(common::square), 9)
        .expect("submitted");
    done.wait();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let done = done.callback(move |v| {
        assert_eq!(*v, 81);
        counter.fetch_add(1, Ordering::Relaxed);
    });
    // get() waits for the late callback, so the count is final here.
    assert_eq!(done.get().expect("value"), 81);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[test]
fn a_panicking_callback_does_not_wedge_the_pool() {
    let pool = pool();
    let first = pool
        .apply_async(task!(common::square), 3)
        .expect("submitted")
        .callback(|_| panic!("callback bug"));
    assert_eq!(first.get().expect("the value survives its callback"), 9);
    // Later calls, sync and async, still complete.
    let mut later = pool
        .map_async(task!(common::square), [1, 2, 3])
        .expect("submitted");
    assert_eq!(
        later
            .get_timeout(Duration::from_secs(10))
            .expect("not wedged"),
        [1, 4, 9]
    );
    assert_eq!(pool.map(task!(common::square), [4]).expect("sync"), [16]);
}

#[test]
fn get_after_terminate_is_an_error_not_a_hang() {
    let pool = pool();
    let mut pending = pool
        .apply_async(task!(common::sleepy), (1, 60_000))
        .expect("submitted");
    let start = Instant::now();
    pool.terminate();
    let err = pending
        .get_timeout(Duration::from_secs(10))
        .expect_err("terminated");
    assert!(matches!(err, Error::Terminated), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        pool.apply_async(task!(common::square), 1),
        Err(Error::Terminated)
    ));
}

#[test]
fn dropping_the_pool_completes_pending_async_results_with_an_error() {
    let pool = pool();
    let pending = pool
        .apply_async(task!(common::sleepy), (1, 60_000))
        .expect("submitted");
    drop(pool);
    assert!(matches!(pending.get(), Err(Error::Terminated)));
}

#[test]
fn close_and_join_wait_for_async_work() {
    let pool = pool();
    let pending = pool
        .starmap_async(task!(common::sleepy), (0..4u64).map(|x| (x, 30)))
        .expect("submitted");
    let pids = pool.worker_pids();
    pool.close();
    assert!(matches!(
        pool.map_async(task!(common::square), [1]),
        Err(Error::Closed)
    ));
    pool.join();
    assert_eq!(pending.get().expect("join waited for it"), [0, 1, 2, 3]);
    assert!(pids.iter().all(|&p| !process_exists(p)));
}

/// Takes 10 000 results of an `imap` of chunks of 10 over an endless input,
/// then drops it; returns how many items it had pulled when the consumer
/// stopped (nothing more is pulled after).
fn pulled_for_10_000(pool: &Pool) -> usize {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut results = pool.chunksize(10).imap(task!(common::square), endless);
    let first: Vec<u64> = results
        .by_ref()
        .take(10_000)
        .map(|r| r.expect("ok"))
        .collect();
    assert_eq!(first, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
    let at_stop = pulled.load(Ordering::Relaxed);
    drop(results);
    assert_eq!(
        pulled.load(Ordering::Relaxed),
        at_stop,
        "nothing is pulled once the iterator is dropped"
    );
    at_stop
}

#[test]
fn imap_pulls_an_endless_input_lazily_within_a_bounded_window() {
    // Stopped reading: the pulling stopped too, 8 chunks of 10 per worker
    // ahead (and one being filled) when the pipeline is shallow...
    let shallow = Pool::builder()
        .processes(2)
        .chunks_in_flight(4)
        .build()
        .expect("pool");
    let at_stop = pulled_for_10_000(&shallow);
    let bound = 10_000 + (8 * 2 + 1) * 10;
    assert!(at_stop <= bound, "pulled {at_stop} (bound {bound})");
    // ...and at most the whole pipeline for chunks this short by default:
    // 256 chunks in flight per worker and 2 more on the way.
    let deep = pool();
    let at_stop = pulled_for_10_000(&deep);
    let bound = 10_000 + ((256 + 2) * 2 + 1) * 10;
    assert!(at_stop <= bound, "pulled {at_stop} (bound {bound})");
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    let pool = pool();
    // Item 0 is slow; the others finish long before it.
    let items = (0..5u64).map(|x| (x, if x == 0 { 500 } else { 1 }));
    let order: Vec<u64> = pool
        .chunksize(1)
        .istarmap_unordered(task!(common::sleepy), items)
        .map(|r| r.expect("ok"))
        .collect();
    assert_eq!(order.len(), 5);
    assert_eq!(
        order.last(),
        Some(&0),
        "the slow item comes last: {order:?}"
    );
    let ordered: Vec<u64> = pool
        .chunksize(1)
        .istarmap(task!(common::sleepy), (0..5u64).map(|x| (x, 1)))
        .map(|r| r.expect("ok"))
        .collect();
    assert_eq!(ordered, [0, 1, 2, 3, 4]);
}

static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
static INIT_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Loads a table once per worker.
#[task]
fn load_table(len: usize, fill: u64) {
    INIT_RUNS.fetch_add(1, Ordering::Relaxed);
    TABLE.get_or_init(|| vec![fill; len]);
}

/// Reads the table: (worker pid, value, how many times this worker initialized).
#[task]
fn read_table(i: usize) -> (u32, u64, usize) {
    let value = TABLE.get().map_or(0, |t| t[i]);
    (std::process::id(), value, INIT_RUNS.load(Ordering::Relaxed))
}

/// An initializer that panics.
#[task]
fn bad_init(reason: String) {
    panic!("{reason}");
}

/// An initializer that reports a failure.
#[task]
fn failing_init(reason: String) -> Result<(), String> {
    Err(reason)
}

#[test]
fn the_initializer_runs_once_in_every_worker_before_its_tasks() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(task!(load_table), (1000, 7))
        .build()
        .expect("pool");
    let seen = pool
        .chunksize(1)
        .map(task!(read_table), (0..200).map(|i| i * 5))
        .expect("map");
    assert!(
        seen.iter().all(|&(_, value, runs)| value == 7 && runs == 1),
        "{seen:?}"
    );
    let pids: std::collections::BTreeSet<u32> = seen.iter().map(|s| s.0).collect();
    assert!(pids.iter().all(|p| pool.worker_pids().contains(p)));
    // The parent never ran it.
    assert_eq!(INIT_RUNS.load(Ordering::Relaxed), 0);
}

#[test]
fn a_failing_initializer_fails_build_with_its_reason() {
    let err = Pool::builder()
        .processes(2)
        .initializer(task!(bad_init), "no data".to_owned())
        .build()
        .expect_err("panics");
    match &err {
        Error::Initializer { task, reason, .. } => {
            assert!(task.ends_with("bad_init"));
            assert!(reason.contains("no data"), "{reason}");
        }
        other => panic!("expected Initializer, got {other:?}"),
    }
    let err = Pool::builder()
        .processes(1)
        .initializer(task!(failing_init), "disk full".to_owned())
        .build()
        .expect_err("Err");
    assert!(
        matches!(&err, Error::Initializer { reason, .. } if reason.contains("disk full")),
        "{err:?}"
    );
}

#[test]
fn max_tasks_per_child_replaces_workers_and_loses_nothing() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(3)
        .build()
        .expect("pool");
    let first = pool.worker_pids();
    // A large chunk is split to respect the budget.
    let pids = pool
        .chunksize(100)
        .starmap(task!(common::worker_pid), vec![(); 20])
        .expect("starmap");
    assert_eq!(pids.len(), 20);
    let mut counts = std::collections::BTreeMap::new();
    for pid in &pids {
        *counts.entry(*pid).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&n| n <= 3), "{counts:?}");
    assert!(
        counts.len() >= 7,
        "20 items at 3 per worker need 7 workers: {counts:?}"
    );
    assert!(counts.contains_key(&first[0]));
    assert!(
        !process_exists(first[0]),
        "the first worker was replaced and reaped"
    );
}

#[test]
fn invalid_settings_are_errors() {
    assert!(matches!(
        Pool::builder().max_tasks_per_child(0).build(),
        Err(Error::InvalidSetting(_))
    ));
    assert!(matches!(
        Pool::builder().chunks_in_flight(0).build(),
        Err(Error::InvalidSetting(_))
    ));
    assert!(matches!(
        Pool::builder().chunks_in_flight(1025).build(),
        Err(Error::InvalidSetting(m)) if m.contains("between 1 and 1024")
    ));
    let deepest = Pool::builder()
        .processes(1)
        .chunks_in_flight(1024)
        .build()
        .expect("1024 chunks in flight is allowed");
    assert_eq!(
        deepest
            .chunksize(1)
            .map(task!(common::square), 0..3000u64)
            .expect("tasks run"),
        (0..3000u64).map(|x| x * x).collect::<Vec<_>>()
    );
    assert!(matches!(
        Pool::builder().max_frame_size(10).build(),
        Err(Error::InvalidSetting(_))
    ));
}

#[test]
fn stats_count_items_failures_and_respawns() {
    let pool = pool();
    let before = pool.stats();
    assert_eq!(before.workers.len(), 2);
    assert!(
        before
            .workers
            .iter()
            .all(|w| w.pid.is_some() && w.items == 0)
    );
    let results: Vec<_> = pool
        .istarmap(task!(common::panic_on), (0..50u64).map(|x| (x, 10)))
        .collect();
    let failed: Vec<usize> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.index().expect("an item's error"))
        .collect();
    assert_eq!(failed, [10]);
    let err = pool
        .apply(task!(common::signal_on), (1, 1, libc::SIGKILL))
        .expect_err("killed");
    assert!(matches!(err, Error::WorkerDied { .. }));
    let stats = pool.stats();
    let items: u64 = stats.workers.iter().map(|w| w.items).sum();
    let failures: u64 = stats.workers.iter().map(|w| w.failures).sum();
    let respawns: u64 = stats.workers.iter().map(|w| w.respawns).sum();
    assert_eq!((items, failures, respawns), (50, 2, 1), "{stats:?}");
    assert!(stats.workers.iter().any(|w| w.busy > Duration::ZERO));
    assert_eq!((stats.queued_items, stats.in_flight_items), (0, 0));
}

#[test]
fn the_progress_hook_sees_every_item_come_back() {
    let pool = pool();
    type Log = Arc<Mutex<Vec<(usize, Option<usize>)>>>;
    let seen: Log = Arc::default();
    let log = Arc::clone(&seen);
    let out = pool
        .chunksize(7)
        .on_progress(move |done, total| log.lock().expect("lock").push((done, total)))
        .map(task!(common::square), 0..100u64)
        .expect("map");
    assert_eq!(out.len(), 100);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&(100, Some(100))));
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "monotonic: {seen:?}"
    );
    // An endless input has no total.
    let log2: Arc<Mutex<Vec<Option<usize>>>> = Arc::default();
    let l2 = Arc::clone(&log2);
    let first: Vec<u64> = pool
        .call()
        .on_progress(move |_, total| l2.lock().expect("lock").push(total))
        .imap(task!(common::square), 0u64..)
        .take(10)
        .map(|r| r.expect("ok"))
        .collect();
    assert_eq!(first.len(), 10);
    assert!(log2.lock().expect("lock").iter().all(Option::is_none));
}
