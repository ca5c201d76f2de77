//! Regression tests for hangs and lost results found in review: each one
//! hung, lost an item or panicked before its fix. Every call is bounded.
use std::sync::mpsc;
use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

pool_runtime::test_support!();

/// Runs `f` on a thread; panics with "HANG" if it takes longer than `secs`.
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("HANG: no answer within {secs} s"))
}

/// A marker file path of this test process (none left from an earlier
/// run), and the same path as a task argument.
fn fresh_marker(tag: &str) -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!("review-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let text = path.to_string_lossy().into_owned();
    (path, text)
}

/// One worker and frames of at most 8 KiB: the limits are easy to reach.
fn small_frames() -> Pool {
    Pool::builder()
        .processes(1)
        .max_frame_size(8192)
        .build()
        .expect("a pool with 8 KiB frames starts")
}

#[task]
fn blob_len(blob: String) -> usize {
    blob.len()
}

/// A chunk whose encoded body exceeds max_frame_size although every item fits.
#[test]
fn a_chunk_larger_than_a_frame_is_split() {
    let out = within(20, || {
        let pool = small_frames();
        let items: Vec<String> = (0..4).map(|_| "x".repeat(3000)).collect();
        let r = pool.chunksize(4).map(task!(blob_len), items);
        let stats = pool.stats();
        (r.map_err(|e| e.to_string()), stats.workers[0].respawns)
    });
    assert_eq!(out.0, Ok(vec![3000; 4]), "respawns: {}", out.1);
}

#[task]
fn blob_of(len: usize) -> String {
    "y".repeat(len)
}

/// Results of one chunk that together outgrow a frame come back in several
/// frames; a result that alone outgrows one fails, and its neighbours in
/// the chunk still come back.
#[test]
fn results_larger_than_a_frame_are_split_or_refused() {
    let out = within(20, || {
        let pool = small_frames();
        let lens = vec![3000, 3000, 9000, 3000, 3000, 10, 3000];
        pool.chunksize(lens.len())
            .imap(task!(blob_of), lens)
            .map(|r| r.map(|s| s.len()).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    assert_eq!(out.len(), 7);
    for (i, len) in [
        (0, 3000),
        (1, 3000),
        (3, 3000),
        (4, 3000),
        (5, 10),
        (6, 3000),
    ] {
        assert_eq!(out[i], Ok(len), "item {i}");
    }
    let err = out[2].as_ref().expect_err("a result above the frame limit");
    assert!(err.contains("above the frame limit of 8192"), "{err}");
}

/// The largest result a frame limit allows is the one its refusal names:
/// a result one byte larger is refused with both sizes as the user counts
/// them (the encoded result, without the pool's 5-byte item header).
#[test]
fn the_refusal_of_a_large_result_names_the_size_a_result_may_take() {
    let out = within(20, || {
        let pool = small_frames();
        // "y" × n encodes as n bytes after a 2-byte length: 8123 and 8124.
        pool.chunksize(1)
            .imap(task!(blob_of), [8121, 8122])
            .map(|r| r.map(|s| s.len()).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    assert_eq!(out[0], Ok(8121), "the largest result that fits");
    let err = out[1].as_ref().expect_err("one byte too many");
    assert!(err.contains("takes more than 8123 bytes"), "{err}");
    assert!(err.contains("a result may take 8123 bytes"), "{err}");
    assert!(err.contains("above the frame limit of 8192"), "{err}");
}

/// Writes the start of a frame on the pool channel and dies, as a worker
/// SIGKILLed (or OOM-killed) in the middle of writing a large results frame.
#[task]
fn die_mid_frame(x: u64, bad: u64) -> u64 {
    if x == bad {
        for entry in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
            let link = std::fs::read_link(entry.path()).unwrap_or_default();
            if link.to_string_lossy().starts_with("socket:") {
                let fd: i32 = entry.file_name().to_string_lossy().parse().expect("fd");
                let partial = [100u8, 0, 0, 0, 1, 2, 3];
                // SAFETY: a write of a local buffer.
                unsafe { libc::write(fd, partial.as_ptr().cast(), partial.len()) };
            }
        }
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

/// A worker that dies while writing a frame: its item fails with
/// `WorkerDied` (the truncated frame is not a protocol error), at its place.
#[test]
fn a_worker_dying_mid_frame_fails_its_item_in_imap() {
    let out = within(20, || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.chunksize(1)
                .istarmap(task!(die_mid_frame), (0..10u64).map(|x| (x, 3)))
                .map(|r| r.map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        }));
        r.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    let items = out.expect("imap panicked");
    assert_eq!(items.len(), 10, "{items:?}");
    // Every other item comes back, in order; item 3 fails at its place
    // as what happened: its worker died (SIGKILL) in the middle of a frame,
    // which is not reported as a broken protocol.
    for (i, item) in items.iter().enumerate() {
        if i == 3 {
            let err = item.as_ref().expect_err("item 3 killed its worker");
            assert!(
                err.contains("on item 3") && err.contains("SIGKILL"),
                "{err}"
            );
        } else {
            assert_eq!(item, &Ok(i as u64), "item {i}");
        }
    }
}

/// The worker's socket towards the pool. A worker holds two sockets: its
/// input, taken from stdin first, and its output, received afterwards, so
/// the output has the higher descriptor.
fn channel_fd() -> i32 {
    let mut sockets: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|link| link.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
        .collect();
    sockets.sort_unstable();
    assert_eq!(sockets.len(), 2, "a worker holds two sockets: {sockets:?}");
    sockets[1]
}

/// Sends, for chunk 1 (the first of a fresh pool), a results frame whose
/// header is right and whose body overruns the frame.
#[task]
fn malformed_results(x: u64) -> u64 {
    if x == 0 {
        // len 9 | Results { chunk: 1, first: 0, count: 1 } | tag 0, len u32::MAX
        let frame = [9u8, 0, 0, 0, 1, 1, 0, 1, 0, 255, 255, 255, 255];
        // SAFETY: a write of a local buffer.
        unsafe { libc::write(channel_fd(), frame.as_ptr().cast(), frame.len()) };
        std::thread::sleep(Duration::from_millis(200));
    }
    x
}

/// on_results bumps `received` before count_failed fails: the item is
/// neither delivered, failed nor requeued, and `map` never returns.
#[test]
fn a_malformed_results_body_loses_no_item() {
    let out = within(15, || {
        let pool = Pool::builder().processes(1).build().expect("pool");
        pool.chunksize(1)
            .map(task!(malformed_results), 0..3u64)
            .map_err(|e| e.to_string())
    });
    let err = out.expect_err("the malformed frame is an error");
    assert!(err.starts_with("protocol error"), "{err}");
}

#[task]
fn spin_or_len(s: String) -> usize {
    if s == "spin" {
        loop {
            std::hint::spin_loop();
        }
    }
    s.len()
}

/// The writer fails on an oversized prefetched chunk and shuts the socket
/// down; the reader marks the worker dying and blocks in child.wait() while
/// the worker still runs an endless item. Dying workers are neither timed
/// out nor killed by shutdown: the call and Pool::drop hang.
#[test]
fn drop_returns_while_a_worker_spins_behind_a_large_chunk() {
    let out = within(30, || {
        let pool = small_frames();
        // Fast chunks, so the worker gets a second chunk queued behind its running one.
        for _ in 0..20 {
            pool.chunksize(1)
                .map(task!(blob_len), vec![String::new(); 4])
                .expect("warm up");
        }
        let mut items = vec!["spin".to_owned(), String::new(), String::new()];
        items.extend((0..3).map(|_| "x".repeat(3000)));
        let r = pool
            .call()
            .chunksize(3)
            .timeout(Duration::from_secs(1))
            .map(task!(spin_or_len), items);
        let t = std::time::Instant::now();
        drop(pool);
        (r.map_err(|e| e.to_string()), t.elapsed())
    });
    let (r, dropped_in) = out;
    let err = r.expect_err("the oversized chunk or the endless item fails the call");
    assert!(
        err.contains("frame limit") || err.contains("timeout") || err.contains("timed out"),
        "{err}"
    );
    assert!(
        dropped_in < Duration::from_secs(10),
        "drop took {dropped_in:?}"
    );
}

/// The task forks (no exec); the child inherits the pool channel and lives
/// on for 60 s; the worker itself then dies. The reader never sees EOF.
#[task]
fn fork_then_abort(x: u64, bad: u64) -> u64 {
    if x == bad {
        // SAFETY: the child only sleeps and _exits.
        unsafe {
            if libc::fork() == 0 {
                libc::sleep(60);
                libc::_exit(0);
            }
            libc::abort();
        }
    }
    x
}

#[test]
fn a_forked_child_holding_the_channel_does_not_hide_a_death() {
    let out = within(20, || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        pool.chunksize(1)
            .starmap(task!(fork_then_abort), (0..6u64).map(|x| (x, 2)))
    });
    match out {
        Err(Error::WorkerDied {
            index: 2,
            cause: pool_runtime::ExitCause::Signal(libc::SIGABRT),
            ..
        }) => {}
        other => panic!("expected item 2's worker to die of SIGABRT: {other:?}"),
    }
}

#[task]
fn double(x: u64) -> u64 {
    2 * x
}

/// A callback registered on a completed AsyncResult after the pool's result
/// thread stopped: `busy` is raised, the Run message is dropped, and `get`
/// waits for a callback that never runs.
#[test]
fn a_callback_added_after_terminate_still_runs() {
    let out = within(10, || {
        let pool = Pool::builder().processes(1).build().expect("pool");
        let res = pool.apply_async(task!(double), 21u64).expect("submitted");
        res.wait();
        pool.terminate();
        let (ran, seen) = mpsc::channel();
        let res = res.callback(move |v| {
            let _ = ran.send(*v);
        });
        let got = res.get().map_err(|e| e.to_string());
        (got, seen.recv_timeout(Duration::from_secs(5)))
    });
    assert_eq!(out.0, Ok(42));
    assert_eq!(out.1, Ok(42), "the callback ran, with the value");
}

/// A pool of `processes` whose initializer `init` gets the path of a fresh
/// marker file, created once the first workers are up: so only
/// replacements see it.
fn armed_pool<T>(tag: &str, processes: usize, init: T) -> (std::path::PathBuf, Pool)
where
    T: pool_runtime::Task<Output = ()>,
    String: pool_runtime::IntoArgs<T>,
{
    let (marker, m) = fresh_marker(tag);
    let pool = Pool::builder()
        .processes(processes)
        .initializer(init, m)
        .build()
        .expect("pool");
    std::fs::write(&marker, b"").expect("marker");
    (marker, pool)
}

#[task]
fn init_slow_if(marker: String) {
    if std::path::Path::new(&marker).exists() {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[task]
fn abort_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        std::process::abort();
    }
    x
}

/// A replacement worker's initializer runs on the supervisor thread with no
/// timeout; shutdown joins the supervisor, so terminate()/drop wait for it.
#[test]
fn terminate_does_not_wait_for_a_starting_workers_initializer() {
    let (marker, pool) = armed_pool("init", 1, task!(init_slow_if));
    let r = pool
        .chunksize(1)
        .starmap(task!(abort_on), (0..3u64).map(|x| (x, 1)));
    match r {
        Err(Error::WorkerDied {
            index: 1,
            cause: pool_runtime::ExitCause::Signal(libc::SIGABRT),
            ..
        }) => {}
        other => panic!("expected item 1's worker to die of SIGABRT: {other:?}"),
    }
    // The replacement's initializer sleeps for an hour.
    within(10, move || pool.terminate());
    let _ = std::fs::remove_file(&marker);
}

/// Item 1 creates `marker` and spins forever; item 0 panics once item 1
/// runs (it waits for the marker, bounded).
#[task]
fn panic_or_spin(x: u64, marker: String) -> u64 {
    let marker = std::path::Path::new(&marker);
    if x == 0 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("item 0");
    }
    let _ = std::fs::write(marker, b"");
    loop {
        std::hint::spin_loop();
    }
}

/// `map` returns at its first error and cancels its job; the timeout is
/// looked up in `jobs`, so the other worker's endless item is no longer
/// timed out: it spins forever, and `join` never returns.
#[test]
fn a_cancelled_calls_stuck_item_still_times_out() {
    let (marker, m) = fresh_marker("cancelled");
    within(15, move || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        let r = pool
            .call()
            .chunksize(1)
            .timeout(Duration::from_secs(1))
            .starmap(task!(panic_or_spin), [(0u64, m.clone()), (1, m)]);
        assert!(
            matches!(r, Err(Error::TaskPanicked { index: 0, .. })),
            "{r:?}"
        );
        pool.join();
    });
    let _ = std::fs::remove_file(&marker);
}

#[task]
fn init_fail_if(marker: String) -> Result<(), String> {
    if std::path::Path::new(&marker).exists() {
        return Err("marker present".into());
    }
    Ok(())
}

/// The pool turns broken (three failed respawns) while `join` waits for
/// queued chunks of an imap: the queue is cleared with no notify_all.
#[test]
fn join_wakes_when_the_pool_breaks() {
    let (marker, m) = fresh_marker("broken");
    let pool = Pool::builder()
        .processes(1)
        .initializer(task!(init_fail_if), m)
        .build()
        .expect("pool");
    std::fs::write(&marker, b"").expect("marker");
    let mut it = pool
        .chunksize(1)
        .istarmap(task!(abort_on), (0..100u64).map(|x| (x, 0)));
    let first = it.next();
    assert!(
        matches!(first, Some(Err(Error::WorkerDied { .. }))),
        "{first:?}"
    );
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(10, move || {
            pool.join();
            drop(it);
        })
    }));
    let _ = std::fs::remove_file(&marker);
    r.expect("join returns");
}

/// Creates `marker` when it starts on "spin", then spins forever;
/// otherwise returns the length of `s`.
#[task]
fn mark_then_spin_or_len(s: String, marker: String) -> usize {
    if s == "spin" {
        let _ = std::fs::write(&marker, b"");
        loop {
            std::hint::spin_loop();
        }
    }
    s.len()
}

/// Waits (bounded) until `path` exists.
fn wait_for_file(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} was not created within 20 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn terminate_returns_while_a_worker_spins_behind_a_large_chunk() {
    let pool = std::sync::Arc::new(small_frames());
    for _ in 0..20 {
        pool.chunksize(1)
            .map(task!(blob_len), vec![String::new(); 4])
            .expect("warm up");
    }
    let (spinning, m) = fresh_marker("spinning");
    let p = std::sync::Arc::clone(&pool);
    let call = std::thread::spawn(move || {
        let mut items = vec!["spin".to_owned(), String::new(), String::new()];
        items.extend((0..3).map(|_| "x".repeat(3000)));
        p.call()
            .chunksize(3)
            .starmap(
                task!(mark_then_spin_or_len),
                items.into_iter().map(|s| (s, m.clone())),
            )
            .map_err(|e| e.to_string())
    });
    // Terminate once the endless item runs, not after a guessed delay.
    wait_for_file(&spinning);
    let _ = std::fs::remove_file(&spinning);
    within(10, move || pool.terminate());
    // The call does not hang either: it failed on the oversized chunk, or
    // terminate failed it.
    let r = within(10, move || call.join().expect("the call's thread"));
    let err = r.expect_err("a terminated call cannot succeed");
    assert!(
        err.contains("terminated") || err.contains("frame limit"),
        "{err}"
    );
}

/// Waits while `marker` exists.
#[task]
fn init_wait_while(marker: String) {
    while std::path::Path::new(&marker).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Item 0 aborts its worker; any other item spins forever.
#[task]
fn abort_or_spin(x: u64) -> u64 {
    if x == 0 {
        std::process::abort();
    }
    loop {
        std::hint::spin_loop();
    }
}

/// The supervisor that enforces timeouts used to start replacement workers
/// itself, initializer included, so a stuck item on another worker was not
/// timed out while a replacement started. Here the replacement's
/// initializer waits until the test has both results: before the fix, the
/// second never came.
#[test]
fn timeouts_are_enforced_while_a_replacement_starts() {
    let (marker, pool) = armed_pool("respawn", 2, task!(init_wait_while));
    let outcome = std::panic::catch_unwind(|| {
        within(20, move || {
            let mut results: Vec<_> = pool
                .call()
                .chunksize(1)
                .timeout(Duration::from_secs(1))
                .imap_unordered(task!(abort_or_spin), [0u64, 1])
                .map(|r| r.map_err(|e| e.to_string()))
                .collect();
            results.sort();
            (results, pool)
        })
    });
    // Let the replacements finish starting, then end the pool.
    let _ = std::fs::remove_file(&marker);
    let (results, pool) = outcome.expect("both results arrive");
    within(20, move || drop(pool));
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.contains("timeout"))),
        "{results:?}"
    );
    assert!(
        results.iter().any(|r| r
            .as_ref()
            .is_err_and(|e| e.contains("SIGABRT") || e.contains("signal"))),
        "{results:?}"
    );
}

/// The thread that terminates the pool, once started.
type Terminator = std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>;

/// An input whose `size_hint`, asked as a call starts, has another thread
/// terminate the pool and waits until the pool says so: the call then
/// starts on a pool that is terminating.
struct TerminatesAtStart {
    pool: std::sync::Arc<Pool>,
    terminator: Terminator,
    items: std::ops::Range<u64>,
}

impl Iterator for TerminatesAtStart {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.items.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let mut terminator = self.terminator.lock().unwrap_or_else(|p| p.into_inner());
        if terminator.is_none() {
            let pool = std::sync::Arc::clone(&self.pool);
            *terminator = Some(std::thread::spawn(move || pool.terminate()));
            let since = std::time::Instant::now();
            while !self.pool.is_closed() && since.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.items.size_hint()
    }
}

/// An async call submitted while another thread terminates the pool fails
/// with `Terminated`, whatever part of its input was read: not with an
/// empty result, nor with `Broken` "an async call had no input" (seen by an
/// adversarial review when a callback terminated the pool while the main
/// thread submitted).
#[test]
fn an_async_call_submitted_while_the_pool_terminates_fails_with_terminated() {
    let pool = Pool::builder().processes(1).build().expect("a pool starts");
    let pool = std::sync::Arc::new(pool);
    // The result thread exists before, as for a pool that ran async calls.
    let warm = pool.map_async(task!(double), [1u64]).expect("submitted");
    assert_eq!(warm.get().expect("runs"), [2]);
    let terminator = Terminator::default();
    let input = TerminatesAtStart {
        pool: std::sync::Arc::clone(&pool),
        terminator: std::sync::Arc::clone(&terminator),
        items: 0..5,
    };
    let outcome = pool.map_async(task!(double), input).map(|call| call.get());
    let thread = terminator.lock().unwrap_or_else(|p| p.into_inner()).take();
    thread
        .expect("the input started it")
        .join()
        .expect("terminate returns");
    match outcome {
        Err(Error::Terminated) | Ok(Err(Error::Terminated)) => {}
        Ok(other) => panic!("the call ended with {other:?}"),
        Err(other) => panic!("the call could not be submitted: {other:?}"),
    }
}
