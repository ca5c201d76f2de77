//! Cancelling calls and waiting on several: `AsyncResult::cancel`,
//! dropping an unread result or an `imap`, `cancel_on_drop`,
//! `Pool::cancel_all`, `as_completed`, `wait_any`/`wait_all` and the
//! indexed `imap_unordered`. Items leave a marker file when they start, so
//! the tests count what ran instead of timing it; every wait is bounded.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{process_exists, within};
use pool_runtime::prelude::*;
use pool_runtime::task;

mod common;

pool_runtime::test_support!();

/// A fresh directory for marker files, removed when dropped.
struct Markers(PathBuf);

impl Markers {
    fn new(tag: &str) -> Markers {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cancel-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the marker directory");
        Markers(dir)
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// The items that started, sorted.
    fn started(&self) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    /// Waits (at most 30 s) until at least `n` items started.
    fn wait_started(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let started = self.started();
            if started.len() >= n || Instant::now() > deadline {
                return started;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A gate file in this directory (not a number: not counted).
    fn gate(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Leaves marker `dir/i`, then sleeps `ms`; returns `i`.
#[task]
fn mark_nap(dir: String, i: u64, ms: u64) -> u64 {
    let _ = std::fs::write(Path::new(&dir).join(i.to_string()), b"");
    std::thread::sleep(Duration::from_millis(ms));
    i
}

/// Leaves marker `dir/i`; if `i == slow`, waits for file `gate` (60 s at
/// most); returns `i`.
#[task]
fn mark_gate(dir: String, i: u64, slow: u64, gate: String) -> u64 {
    let _ = std::fs::write(Path::new(&dir).join(i.to_string()), b"");
    if i == slow {
        wait_for(&gate);
    }
    i
}

/// Waits for file `gate` (60 s at most), then returns `x`.
#[task]
fn gated(x: u64, gate: String) -> u64 {
    wait_for(&gate);
    x
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

#[task]
fn pid() -> u32 {
    std::process::id()
}

fn wait_for(gate: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(gate).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn open(gate: &str) {
    std::fs::write(gate, b"open").expect("create the gate file");
}

fn pool(n: usize) -> Pool {
    Pool::builder().processes(n).build().expect("pool")
}

/// Waits (at most 10 s) until process `pid` is gone.
fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) && !common::is_zombie(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

// ----- AsyncResult::cancel -----

/// A call of minute-long items is cancelled while both workers run it:
/// `cancel` says something was pending, the result is `Cancelled`, the two
/// workers running it are killed, and the next call runs at once on their
/// replacements (well before any of the minute-long items could end).
#[test]
fn cancel_stops_running_items_and_frees_the_workers() {
    let markers = Markers::new("running");
    let dir = markers.arg();
    let (cancelled, outcome, next, old, new, started) = within(40, move || {
        let pool = pool(2);
        let old = pool.worker_pids();
        let long = pool
            .chunksize(1)
            .starmap_async(task!(mark_nap), (0..10).map(|i| (dir.clone(), i, 60_000)))
            .expect("submit");
        markers.wait_started(2);
        let cancelled = long.cancel();
        let outcome = long.get();
        let next = pool.map(task!(square), [1, 2, 3]);
        let new = pool.worker_pids();
        (cancelled, outcome, next, old, new, markers.started())
    });
    assert!(cancelled, "the call was pending");
    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    assert_eq!(next.ok(), Some(vec![1, 4, 9]));
    assert_eq!(started, [0, 1], "only the two running items started");
    for pid in old {
        assert!(!new.contains(&pid), "worker {pid} was replaced");
        assert!(gone(pid), "worker {pid} is gone");
    }
}

/// The program: 50 calls of 200 ms items on 2 workers, 49 of them
/// cancelled: the last one's result comes, and of the cancelled ones only
/// those already running had started.
#[test]
fn cancelling_49_of_50_calls_runs_only_the_last_and_those_running() {
    let markers = Markers::new("fifty");
    let dir = markers.arg();
    let (cancelled, last, started) = within(40, move || {
        let pool = pool(2);
        let calls: Vec<_> = (0..50)
            .map(|i| pool.apply_async(task!(mark_nap), (dir.clone(), i, 200)))
            .collect::<Result<_, _>>()
            .expect("submit");
        let mut calls = calls;
        let last = calls.pop().expect("50 calls");
        let cancelled = calls.iter().filter(|c| c.cancel()).count();
        let all_cancelled = calls
            .into_iter()
            .all(|c| matches!(c.get(), Err(Error::Cancelled)));
        assert!(all_cancelled, "every cancelled call ends with Cancelled");
        (cancelled, last.get(), markers.started())
    });
    assert_eq!(last.ok(), Some(49));
    assert!(
        cancelled >= 47,
        "at most the two finished ones were not pending: {cancelled}"
    );
    // At most the two items running when the cancelling began, and the one
    // that started on a freed worker before it was cancelled, besides 49.
    let others: Vec<_> = started.iter().filter(|&&i| i != 49).collect();
    assert!(others.len() <= 4, "started: {started:?}");
    assert!(started.contains(&49));
}

/// Cancelling a call that completed changes nothing: `false`, and the
/// value is still there.
#[test]
fn cancel_after_completion_keeps_the_outcome() {
    let (cancelled, value) = within(30, || {
        let pool = pool(2);
        let done = pool.apply_async(task!(square), 9).expect("submit");
        done.wait();
        (done.cancel(), done.get())
    });
    assert!(!cancelled);
    assert_eq!(value.ok(), Some(81));
}

/// A cancelled call delivers nothing afterwards: its success callback
/// never runs, its error callback runs once with `Cancelled`, on the
/// result thread, and `get` returns after it.
#[test]
fn a_cancelled_call_calls_only_its_error_callback_with_cancelled() {
    let markers = Markers::new("callbacks");
    let dir = markers.arg();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let outcome = within(30, move || {
        let pool = pool(2);
        let (ok, err) = (Arc::clone(&log), Arc::clone(&log));
        let call = pool
            .chunksize(1)
            .starmap_async(task!(mark_nap), (0..4).map(|i| (dir.clone(), i, 60_000)))
            .expect("submit")
            .callback(move |v| ok.lock().expect("log").push(format!("ok {v:?}")))
            .error_callback(move |e| {
                let thread = std::thread::current().name().map(str::to_owned);
                err.lock()
                    .expect("log")
                    .push(format!("err {e} on {thread:?}"));
            });
        markers.wait_started(2);
        assert!(call.cancel());
        let outcome = call.get();
        // The pool keeps working, and nothing of the call comes later.
        assert_eq!(
            pool.map(task!(square), 0..100).map(|v| v.len()).ok(),
            Some(100)
        );
        outcome
    });
    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("err the call was cancelled") && seen[0].contains("pool-results"),
        "{seen:?}"
    );
}

// ----- dropping -----

/// An unread `AsyncResult` without callbacks, dropped, withdraws its
/// queued items: none of them starts once the worker is free.
#[test]
fn dropping_an_unread_async_result_withdraws_its_queued_items() {
    let markers = Markers::new("drop-async");
    let dir = markers.arg();
    let gate = markers.gate("gate");
    let (started, after) = within(60, move || {
        let pool = pool(1);
        let busy = pool
            .apply_async(task!(gated), (7, gate.clone()))
            .expect("submit");
        let queued = pool
            .chunksize(1)
            .starmap_async(task!(mark_nap), (0..20).map(|i| (dir.clone(), i, 0)))
            .expect("submit");
        drop(queued);
        open(&gate);
        assert_eq!(busy.get().ok(), Some(7));
        // Runs after anything the worker still had.
        let after = pool.apply(task!(square), 5);
        (markers.started(), after)
    });
    assert_eq!(after.ok(), Some(25));
    assert_eq!(
        started,
        Vec::<u64>::new(),
        "no item of the dropped call ran"
    );
}

/// Dropping an `imap` takes back the chunks already sent to a worker and
/// waiting behind its running item: after that item ends, none of them
/// runs. (One worker, warmed to a fast pace, so its pipeline is deep.)
#[test]
fn dropping_an_imap_takes_back_chunks_waiting_on_a_worker() {
    let markers = Markers::new("drop-imap");
    let dir = markers.arg();
    let gate = markers.gate("gate");
    let slow = 300;
    let (started, after) = within(60, move || {
        let pool = pool(1);
        let mut results = pool.chunksize(1).istarmap(
            task!(mark_gate),
            (0..3000).map(move |i| (dir.clone(), i, slow, gate.clone())),
        );
        for expected in 0..slow {
            assert_eq!(results.next().and_then(Result::ok), Some(expected));
        }
        // Item `slow` runs (waits for the gate) with chunks behind it.
        markers.wait_started(slow as usize + 1);
        drop(results);
        open(&markers.gate("gate"));
        let after = pool.apply(task!(square), 6);
        (markers.started(), after)
    });
    assert_eq!(after.ok(), Some(36));
    let last = started.last().copied();
    assert_eq!(
        last,
        Some(slow),
        "items after the running one ran: {:?}",
        &started[started.len().saturating_sub(5)..]
    );
}

/// With `cancel_on_drop(true)`, dropping an `imap` also kills the workers
/// running its items: the next call runs at once on their replacements,
/// and nothing after the running items starts.
#[test]
fn cancel_on_drop_kills_the_running_items_of_a_dropped_imap() {
    let markers = Markers::new("kill-imap");
    let dir = markers.arg();
    let (first, after, old, new, started) = within(40, move || {
        let pool = pool(2);
        let old = pool.worker_pids();
        let mut results = pool.cancel_on_drop(true).chunksize(1).istarmap(
            task!(mark_nap),
            (0..100).map(move |i| (dir.clone(), i, if i == 0 { 0 } else { 60_000 })),
        );
        let first = results.next().and_then(Result::ok);
        markers.wait_started(3);
        drop(results);
        let after = pool.apply(task!(square), 4);
        (first, after, old, pool.worker_pids(), markers.started())
    });
    assert_eq!(first, Some(0));
    assert_eq!(after.ok(), Some(16));
    assert_eq!(started, [0, 1, 2], "only the running items started");
    let killed: Vec<_> = old.iter().filter(|pid| !new.contains(pid)).collect();
    assert_eq!(
        killed.len(),
        2,
        "both workers were replaced: {old:?} -> {new:?}"
    );
    assert!(killed.iter().all(|&&pid| gone(pid)));
}

/// `cancel_all` ends every call submitted so far with `Cancelled`, a
/// blocking call in another thread included, and the pool stays open.
#[test]
fn cancel_all_ends_every_call_and_keeps_the_pool_open() {
    let markers = Markers::new("all");
    let dir = markers.arg();
    let (n, a, blocking, lazy, after) = within(60, move || {
        let pool = Arc::new(pool(2));
        let a = pool
            .chunksize(1)
            .starmap_async(task!(mark_nap), (0..4).map(|i| (dir.clone(), i, 60_000)))
            .expect("submit");
        let p = Arc::clone(&pool);
        let d = dir.clone();
        let blocking = std::thread::spawn(move || {
            p.starmap(task!(mark_nap), (100..104).map(|i| (d.clone(), i, 60_000)))
        });
        let p = Arc::clone(&pool);
        let d = dir.clone();
        let lazy = std::thread::spawn(move || {
            p.chunksize(1)
                .istarmap(task!(mark_nap), (200..204).map(|i| (d.clone(), i, 60_000)))
                .map(|r| r.err().map(|e| e.to_string()))
                .collect::<Vec<_>>()
        });
        markers.wait_started(2);
        // Wait until the three calls are registered (each has pulled input).
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.stats().queued_items + pool.stats().in_flight_items < 10
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let n = pool.cancel_all();
        let blocking = blocking.join().expect("blocking thread");
        let lazy = lazy.join().expect("imap thread");
        let after = pool.map(task!(square), [2, 3]);
        (n, a.get(), blocking, lazy, after)
    });
    assert_eq!(n, 3, "the async map, the blocking starmap and the imap");
    assert!(matches!(a, Err(Error::Cancelled)), "{a:?}");
    assert!(matches!(blocking, Err(Error::Cancelled)), "{blocking:?}");
    assert_eq!(
        lazy,
        [Some(
            "the call was cancelled before its result was in".to_owned()
        )],
        "the imap yields Cancelled once, then ends"
    );
    assert_eq!(after.ok(), Some(vec![4, 9]));
}

// ----- as_completed, wait_any, wait_all -----

/// `as_completed` yields in completion order, with positions: gates open
/// in the order 2, 0, 1.
#[test]
fn as_completed_yields_each_outcome_in_completion_order_with_its_position() {
    let markers = Markers::new("completed");
    let gates: Vec<String> = (0..3).map(|i| markers.gate(&format!("g{i}"))).collect();
    let order = within(60, move || {
        let pool = pool(3);
        let calls: Vec<_> = (0..3u64)
            .map(|i| pool.apply_async(task!(gated), (i * 10, gates[i as usize].clone())))
            .collect::<Result<_, _>>()
            .expect("submit");
        let mut done = pool_runtime::as_completed(calls);
        let mut order = Vec::new();
        for g in [2, 0, 1] {
            open(&gates[g]);
            order.push(done.next().map(|(at, r)| (at, r.ok())));
        }
        order.push(done.next().map(|(at, r)| (at, r.ok())));
        order
    });
    assert_eq!(
        order,
        [
            Some((2, Some(20))),
            Some((0, Some(0))),
            Some((1, Some(10))),
            None
        ]
    );
}

/// `next_timeout` returns `WaitTimeout` while nothing completed, and the
/// outcome later; nothing is lost.
#[test]
fn as_completed_next_timeout_loses_nothing() {
    let markers = Markers::new("next-timeout");
    let gate = markers.gate("g");
    let (early, late) = within(60, move || {
        let pool = pool(2);
        let call = pool
            .apply_async(task!(gated), (5, gate.clone()))
            .expect("submit");
        let mut done = pool_runtime::as_completed([call]);
        let early = done
            .next_timeout(Duration::from_millis(20))
            .map(|r| r.map(|(at, v)| (at, v.ok())));
        open(&gate);
        let late = done
            .next_timeout(Duration::from_secs(30))
            .map(|r| r.map(|(at, v)| (at, v.ok())));
        (early, late)
    });
    assert!(
        matches!(early, Some(Err(Error::WaitTimeout(_)))),
        "{early:?}"
    );
    assert!(matches!(late, Some(Ok((0, Some(5))))), "{late:?}");
}

/// `wait_any` names the first result ready, `None` on a limit; `wait_all`
/// waits for every one.
#[test]
fn wait_any_names_the_ready_one_and_wait_all_waits_for_all() {
    let markers = Markers::new("wait");
    let gate = markers.gate("g");
    let (none, first, all_before, all) = within(60, move || {
        let pool = pool(2);
        let calls = vec![
            pool.apply_async(task!(gated), (1, gate.clone()))
                .expect("submit"),
            pool.apply_async(task!(square), 4).expect("submit"),
        ];
        let none = pool_runtime::wait_any(&calls[..1], Some(Duration::from_millis(20)));
        let first = pool_runtime::wait_any(&calls, None);
        let all_before = pool_runtime::wait_all(&calls, Some(Duration::from_millis(20)));
        open(&gate);
        let all = pool_runtime::wait_all(&calls, Some(Duration::from_secs(30)));
        (none, first, all_before, all)
    });
    assert_eq!(none, None);
    assert_eq!(first, Some(1));
    assert!(!all_before);
    assert!(all);
}

// ----- indexed imap_unordered -----

/// `imap_unordered(..).indexed()` pairs each result with its input's
/// position (the slow input comes last); on `terminate` every input
/// pulled gets exactly one outcome.
#[test]
fn indexed_unordered_pairs_results_with_inputs_and_answers_each_once() {
    let markers = Markers::new("indexed");
    let dir = markers.arg();
    let gate = markers.gate("gate");
    let (pairs, ended) = within(60, move || {
        let pool = Arc::new(pool(2));
        let d = dir.clone();
        let g = gate.clone();
        let pairs: Vec<(usize, Option<u64>)> = pool
            .chunksize(1)
            .istarmap_unordered(
                task!(mark_gate),
                (0..6).map(move |i| (d.clone(), i, 0, g.clone())),
            )
            .indexed()
            .map(|(at, r)| (at, r.ok()))
            .take(5)
            .collect();
        open(&gate);
        // Now a call cut short by terminate.
        let stuck = markers.gate("never");
        let p = Arc::clone(&pool);
        let it = std::thread::spawn(move || {
            p.chunksize(1)
                .istarmap_unordered(task!(gated), (0..4).map(move |i| (i, stuck.clone())))
                .indexed()
                .map(|(at, r)| (at, r.err().map(|e| e.to_string())))
                .collect::<Vec<_>>()
        });
        while pool.stats().in_flight_items < 2 {
            std::thread::sleep(Duration::from_millis(2));
        }
        pool.terminate();
        (pairs, it.join().expect("iterator thread"))
    });
    // Inputs 1..6 complete first, each paired with its own value.
    let mut firsts: Vec<_> = pairs.clone();
    firsts.sort_unstable();
    assert_eq!(
        firsts,
        (1..6).map(|i| (i as usize, Some(i))).collect::<Vec<_>>(),
        "{pairs:?}"
    );
    let mut ended_at: Vec<usize> = ended.iter().map(|(at, _)| *at).collect();
    ended_at.sort_unstable();
    ended_at.dedup();
    assert_eq!(ended_at.len(), ended.len(), "each input once: {ended:?}");
    assert!(
        ended
            .iter()
            .all(|(_, e)| e.as_deref() == Some("the pool was terminated before this work finished")),
        "{ended:?}"
    );
    assert_eq!(ended_at, [0, 1, 2, 3], "every input pulled: {ended:?}");
}

// ----- what adversarial programs found -----

/// Leaves a line `tag` in file `log`, sleeps `ms`; returns `tag`.
#[task]
fn log_tag(log: String, tag: String, ms: u64) -> String {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        let _ = writeln!(f, "{tag}");
    }
    std::thread::sleep(Duration::from_millis(ms));
    tag
}

/// One worker, its pace warm: call B's chunks run, their results still
/// in the worker's buffer, while call A's long item (queued behind them)
/// starts; cancelling A must not lose those results: no item of B runs
/// twice.
#[test]
fn cancelling_a_call_never_reruns_another_calls_finished_items() {
    let markers = Markers::new("rerun");
    let log = markers.gate("log");
    let dir = markers.arg();
    let counts = within(90, move || {
        let pool = pool(1);
        let mut counts = Vec::new();
        for round in 0..3 {
            let _ = std::fs::remove_file(&log);
            let warm = (0..2000).map(|i| (format!("{dir}/warm"), format!("w{i}"), 0));
            assert!(pool.chunksize(100).starmap(task!(log_tag), warm).is_ok());
            let b_items = (0..400).map(|i| (log.clone(), format!("B{i}"), 0));
            let b = pool
                .chunksize(100)
                .starmap_async(task!(log_tag), b_items)
                .expect("submit B");
            let a_tag = format!("A{round}");
            let a = pool
                .apply_async(task!(log_tag), (log.clone(), a_tag.clone(), 60_000))
                .expect("submit A");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&log).is_ok_and(|s| s.lines().any(|l| l == a_tag))
                && Instant::now() < deadline
            {
                std::hint::spin_loop();
            }
            assert!(a.cancel());
            let b = b.get().expect("B completes");
            assert_eq!(b.len(), 400);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut seen = std::collections::HashMap::new();
            for line in text.lines().filter(|l| l.starts_with('B')) {
                *seen.entry(line.to_owned()).or_insert(0usize) += 1;
            }
            counts.push((seen.len(), seen.values().filter(|&&n| n > 1).count()));
        }
        counts
    });
    assert_eq!(counts, [(400, 0); 3], "(B items run, run twice) per round");
}

/// `get` right after `cancel`, inside another call's callback (on the
/// result thread) returns `Cancelled`, and the cancelled call's error
/// callback has run: the result thread does not wait for itself.
#[test]
fn get_after_cancel_inside_a_callback_returns_at_once() {
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = within(30, move || {
        let pool = pool(2);
        let called = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&called);
        let victim = pool
            .apply_async(task!(mark_nap), ("/nonexistent".to_owned(), 0, 60_000))
            .expect("submit")
            .error_callback(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            });
        let trigger = pool.apply_async(task!(square), 2).expect("submit");
        let _trigger = trigger.callback(move |_| {
            let cancelled = victim.cancel();
            let got = victim.get();
            let _ = tx.send((
                cancelled,
                got.err().map(|e| e.to_string()),
                called.load(Ordering::SeqCst),
            ));
        });
        rx.recv_timeout(Duration::from_secs(20)).ok()
    });
    assert_eq!(
        seen,
        Some((
            true,
            Some("the call was cancelled before its result was in".to_owned()),
            1
        ))
    );
}

/// `cancel_all` racing with a thread that keeps submitting: every call
/// ends `Ok` or `Cancelled`, never `Terminated`, and the pool stays open.
#[test]
fn cancel_all_racing_submissions_never_reports_terminated() {
    let outcomes = within(60, || {
        let pool = Arc::new(pool(2));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (Arc::clone(&pool), Arc::clone(&stop));
        let submitter = std::thread::spawn(move || {
            let mut outcomes = std::collections::BTreeMap::new();
            while !s.load(Ordering::Relaxed) {
                let key = match p.chunksize(1).map(task!(square), 0..50) {
                    Ok(v) if v.len() == 50 => "Ok".to_owned(),
                    Ok(v) => format!("short {}", v.len()),
                    Err(e) => e.to_string(),
                };
                *outcomes.entry(key).or_insert(0usize) += 1;
            }
            outcomes
        });
        for _ in 0..2000 {
            pool.cancel_all();
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        let outcomes = submitter.join().expect("submitter");
        assert!(!pool.is_closed());
        assert_eq!(pool.map(task!(square), [3]).ok(), Some(vec![9]));
        outcomes
    });
    let keys: Vec<&String> = outcomes.keys().collect();
    assert!(
        keys.iter()
            .all(|k| *k == "Ok" || *k == "the call was cancelled before its result was in"),
        "{outcomes:?}"
    );
}

/// `join` cutting an `imap_unordered(..).indexed()` short is visible:
/// every input read gets one outcome, and the cut at least one
/// `Terminated` (at the first input not read, or, for inputs pulled as
/// the join began and not run, at theirs).
#[test]
fn indexed_unordered_shows_where_join_cut_the_input() {
    let (indices, errors) = within(60, || {
        let pool = Arc::new(pool(2));
        let p = Arc::clone(&pool);
        let it = std::thread::spawn(move || {
            p.chunksize(1)
                .imap_unordered(task!(square), 0..1_000_000u64)
                .indexed()
                .collect::<Vec<_>>()
        });
        while pool.stats().workers.iter().map(|w| w.items).sum::<u64>() < 100 {
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.close();
        pool.join();
        let all = it.join().expect("iterator thread");
        let errors: Vec<String> = all
            .iter()
            .filter_map(|(_, r)| r.as_ref().err().map(ToString::to_string))
            .collect();
        let mut indices: Vec<usize> = all.iter().map(|(at, _)| *at).collect();
        indices.sort_unstable();
        (indices, errors)
    });
    assert!(indices.len() < 1_000_000, "the input was cut");
    assert_eq!(indices, (0..indices.len()).collect::<Vec<_>>());
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e == "the pool was terminated before this work finished"),
        "{errors:?}"
    );
}

/// Switching to `indexed()` after plain `next()` calls: the inputs already
/// answered are not answered again when the call is cancelled.
#[test]
fn indexed_after_plain_next_answers_each_input_once() {
    let markers = Markers::new("switch");
    let dir = markers.arg();
    let answers = within(60, move || {
        let pool = pool(2);
        let mut it = pool.chunksize(1).istarmap_unordered(
            task!(mark_nap),
            (0..10).map(move |i| (dir.clone(), i, if i < 4 { 0 } else { 60_000 })),
        );
        let mut answers: Vec<usize> = Vec::new();
        for _ in 0..4 {
            if let Some(Ok(i)) = it.next() {
                answers.push(i as usize);
            }
        }
        let mut indexed = it.indexed();
        markers.wait_started(6);
        pool.cancel_all();
        answers.extend(indexed.by_ref().map(|(at, _)| at));
        answers
    });
    // Every input read is answered once: the inputs read are a prefix
    // (at least the six that started; the rest only if the call had read
    // them ahead before the cancel).
    let mut sorted = answers.clone();
    sorted.sort_unstable();
    assert!(sorted.len() >= 6, "{answers:?}");
    assert_eq!(sorted, (0..sorted.len()).collect::<Vec<_>>(), "{answers:?}");
}
