//! Logging from tasks: `tracing` events and `log` records emitted in
//! workers reach this process's subscriber with the worker's pid, the task
//! and the item; the pool's own warnings name the task and item too.
//!
//! One capturing subscriber serves every test of this binary (it must be
//! global: events are emitted on the pool's threads). It shows `INFO` and
//! above; each test tells its events apart by task and pid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pool_runtime::prelude::*;
use pool_runtime::task;
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};

mod common;
use common::{process_exists, within};

pool_runtime::test_support!();

/// One event the subscriber saw.
#[derive(Debug, Clone)]
struct Seen {
    level: tracing::Level,
    target: String,
    fields: HashMap<String, String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn message(&self) -> &str {
        self.field("message").unwrap_or("")
    }

    fn pid(&self) -> Option<u32> {
        self.field("pid")?.parse().ok()
    }

    fn item(&self) -> Option<usize> {
        self.field("item")?.parse().ok()
    }

    fn task_is(&self, name: &str) -> bool {
        self.field("task")
            .is_some_and(|t| t.rsplit("::").next() == Some(name))
    }
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Where the subscriber keeps what it saw.
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
/// The first record of item 1 of the flood test holds the pool's reader
/// until this file exists (see [`flood_holds_back_nothing`]).
static FLOOD_GATE: OnceLock<PathBuf> = OnceLock::new();
static FLOOD_HELD: AtomicBool = AtomicBool::new(false);
/// Records of the task `held` and the initializer `held_init` wait for this lock (see
/// [`a_blocked_subscriber_holds_back_only_the_results_behind_its_records`]), and say
/// so in `HELD_WAITING` first.
static HOLD: Mutex<()> = Mutex::new(());
static HELD_WAITING: AtomicBool = AtomicBool::new(false);
/// Records with the message `hanging`, `dying` or `zero hangs`, and the pool's warning
/// that a worker died running `die_unlogged`, wait for this lock (see
/// [`a_timeout_error_follows_the_records_of_its_item`]), and say so in
/// `GATE_WAITING` first.
static GATE: Mutex<()> = Mutex::new(());
static GATE_WAITING: AtomicBool = AtomicBool::new(false);
/// Held by each test using `GATE` until its records are out of the
/// subscriber, so that one test's record never waits for another's gate.
static GATED_TEST: Mutex<()> = Mutex::new(());

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let seen = Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
        };
        let flood = seen.task_is("flood") && seen.item() == Some(1);
        if flood && !FLOOD_HELD.swap(true, Ordering::SeqCst) {
            // A slow subscriber: this process reads nothing more from the
            // worker until its task has emitted all its records.
            if let Some(gate) = FLOOD_GATE.get() {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !gate.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        if seen.task_is("slow_logger") || seen.task_is("slow_flood") {
            std::thread::sleep(Duration::from_millis(1));
        }
        let gated = matches!(seen.message(), "hanging" | "dying" | "zero hangs")
            || (seen.message() == "pool worker died" && seen.task_is("die_unlogged"));
        if gated {
            GATE_WAITING.store(true, Ordering::SeqCst);
            drop(GATE.lock().unwrap_or_else(|p| p.into_inner()));
        }
        if seen.task_is("held") || seen.task_is("held_init") {
            HELD_WAITING.store(true, Ordering::SeqCst);
            drop(HOLD.lock().unwrap_or_else(|p| p.into_inner()));
        }
        lock().push(seen);
    }
}

fn lock() -> MutexGuard<'static, Vec<Seen>> {
    SEEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Installs the capturing subscriber (once), showing `INFO` and above.
fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry()
            .with(LevelFilter::INFO)
            .with(Capture);
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    });
}

/// The events seen so far that `keep` selects.
fn seen(keep: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    lock().iter().filter(|s| keep(s)).cloned().collect()
}

/// Waits (bounded) until `keep` selects at least `n` events; returns them.
fn wait_for(n: usize, keep: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = seen(&keep);
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pool() -> Pool {
    capture();
    Pool::builder()
        .processes(2)
        .build()
        .expect("a pool of two workers starts")
}

#[task]
fn greet(x: u64) -> u64 {
    tracing::info!(x, "hello from a task");
    x + 1
}

#[test]
fn a_tracing_event_in_a_task_reaches_the_parent_with_pid_task_and_item() {
    within(60, || {
        let pool = pool();
        let pids = pool.worker_pids();
        let out = pool
            .call()
            .chunksize(2)
            .map(task!(greet), 0..8u64)
            .expect("map");
        assert_eq!(out, (1..9).collect::<Vec<_>>());
        // The records of an item arrive before its result.
        let events = seen(|s| s.task_is("greet"));
        assert_eq!(events.len(), 8, "{events:#?}");
        for event in &events {
            assert_eq!(event.level, tracing::Level::INFO);
            assert_eq!(event.target, "logging", "the task's own target");
            let x: usize = event
                .message()
                .strip_prefix("hello from a task x=")
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("message and field: {event:?}"));
            assert_eq!(event.item(), Some(x), "item of {event:?}");
            let pid = event.pid().expect("a pid field");
            assert!(pids.contains(&pid), "{pid} is not one of {pids:?}");
        }
        let mut items: Vec<usize> = events.iter().filter_map(Seen::item).collect();
        items.sort_unstable();
        assert_eq!(items, (0..8).collect::<Vec<_>>());
    });
}

#[task]
fn careful(x: u64) -> u64 {
    log::warn!("careful with {x}");
    x
}

#[test]
fn a_log_record_in_a_task_reaches_the_parent_with_pid_task_and_item() {
    within(60, || {
        let pool = pool();
        let pids = pool.worker_pids();
        assert_eq!(
            pool.map(task!(careful), [10, 11, 12]).expect("map"),
            [10, 11, 12]
        );
        let events = seen(|s| s.task_is("careful"));
        assert_eq!(events.len(), 3, "{events:#?}");
        for event in &events {
            assert_eq!(event.level, tracing::Level::WARN);
            assert_eq!(event.target, "logging");
            let item = event.item().expect("an item field");
            assert_eq!(event.message(), format!("careful with {}", 10 + item));
            assert!(pids.contains(&event.pid().expect("a pid field")));
        }
    });
}

/// What the worker's own filters say: `tracing` debug, `log` debug,
/// `tracing` info.
#[task]
fn levels() -> (bool, bool, bool) {
    tracing::debug!("hidden from the parent");
    log::debug!("hidden from the parent too");
    tracing::info!("shown in the parent");
    (
        tracing::enabled!(tracing::Level::DEBUG),
        log::log_enabled!(log::Level::Debug),
        tracing::enabled!(tracing::Level::INFO),
    )
}

#[test]
fn a_level_the_parent_does_not_show_is_not_forwarded() {
    within(60, || {
        let pool = pool();
        // The parent shows INFO: the worker's filters turn DEBUG off at the source.
        let enabled = pool.apply(task!(levels), ()).expect("apply");
        assert_eq!(enabled, (false, false, true));
        let events = seen(|s| s.task_is("levels"));
        let messages: Vec<&str> = events.iter().map(Seen::message).collect();
        assert_eq!(messages, ["shown in the parent"]);
    });
}

#[task]
fn set_up(name: String) {
    tracing::info!(%name, "initializing");
}

#[task]
fn worker_pid() -> u32 {
    std::process::id()
}

#[test]
fn records_of_the_initializer_name_it_and_no_item() {
    within(60, || {
        capture();
        let pool = Pool::builder()
            .processes(2)
            .initializer(task!(set_up), "init-check".to_owned())
            .build()
            .expect("pool");
        let pids = pool.worker_pids();
        let _ = pool.apply(task!(worker_pid), ()).expect("apply");
        let events = wait_for(2, |s| s.task_is("set_up"));
        assert_eq!(events.len(), 2, "one per worker: {events:#?}");
        for event in &events {
            assert_eq!(event.message(), "initializing name=init-check");
            assert_eq!(event.item(), None);
            assert!(pids.contains(&event.pid().expect("pid")));
        }
    });
}

/// Emits `count` records, then creates `gate`; returns `x`.
#[task]
fn flood(x: u64, count: u64, gate: String) -> u64 {
    for i in 0..count {
        tracing::info!("flood {i}");
    }
    if !gate.is_empty() {
        let _ = std::fs::write(&gate, b"done");
    }
    x * 2
}

#[test]
fn flood_holds_back_nothing() {
    within(120, || {
        let gate = std::env::temp_dir().join(format!("logging-flood-{}", std::process::id()));
        let _ = std::fs::remove_file(&gate);
        FLOOD_GATE.set(gate.clone()).expect("set once");
        let pool = pool();
        let pids = pool.worker_pids();
        let text = gate.to_string_lossy().into_owned();
        // Item 1 emits 100 000 records while this process, held by its
        // slow subscriber, reads none: emitting never waits, the worker's
        // buffer fills and the rest are dropped and counted.
        let items = [
            (0, 1, String::new()),
            (1, 100_000, text),
            (2, 1, String::new()),
            (3, 1, String::new()),
        ];
        let out = pool
            .call()
            .chunksize(1)
            .starmap(task!(flood), items)
            .expect("starmap");
        assert_eq!(out, [0, 2, 4, 6]);
        let _ = std::fs::remove_file(&gate);
        let from_pool = |s: &Seen| s.pid().is_some_and(|pid| pids.contains(&pid));
        let forwarded = seen(|s| s.task_is("flood") && from_pool(s)).len() as u64;
        let drops = seen(|s| s.message().contains(" log records dropped") && from_pool(s));
        let dropped: u64 = drops
            .iter()
            .map(|s| {
                s.field("dropped")
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        assert!(dropped > 0, "nothing dropped ({forwarded} forwarded)");
        assert!(forwarded > 3, "only {forwarded} forwarded");
        for event in &drops {
            assert_eq!(event.level, tracing::Level::WARN);
            assert!(
                event.message().starts_with(&format!(
                    "{} log records dropped",
                    event.field("dropped").unwrap_or("?")
                )),
                "{event:?}"
            );
        }
        // Every record is accounted for: shown or counted as dropped.
        assert_eq!(forwarded + dropped, 100_003);
    });
}

/// Panics on `x == bad`.
#[task]
fn panic_on(x: u64, bad: u64) -> u64 {
    assert_ne!(x, bad, "item {x} is bad");
    x
}

#[test]
fn a_task_panic_is_one_warning_with_its_message_task_and_item() {
    within(60, || {
        let pool = pool();
        let pids = pool.worker_pids();
        let err = pool
            .starmap(task!(panic_on), (0..6u64).map(|x| (x, 3)))
            .expect_err("item 3 panics");
        assert!(
            matches!(err, Error::TaskPanicked { index: 3, .. }),
            "{err:?}"
        );
        let events = seen(|s| s.task_is("panic_on"));
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!(event.level, tracing::Level::WARN);
        assert_eq!(event.item(), Some(3));
        assert!(event.message().starts_with("task panicked: "), "{event:?}");
        assert!(event.message().contains("item 3 is bad"), "{event:?}");
        assert!(
            event
                .field("location")
                .is_some_and(|l| l.contains("logging.rs"))
        );
        assert!(pids.contains(&event.pid().expect("pid")));
    });
}

/// Kills its own worker with SIGKILL on `x == bad`.
#[task]
fn kill_self_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(10));
    }
    x
}

#[test]
fn a_killed_worker_is_a_warning_naming_task_item_and_slot() {
    within(60, || {
        let pool = pool();
        let err = pool
            .call()
            .chunksize(1)
            .starmap(task!(kill_self_on), (0..5u64).map(|x| (x, 2)))
            .expect_err("item 2 kills its worker");
        let Error::WorkerDied { index: 2, pid, .. } = err else {
            panic!("{err:?}");
        };
        let events = wait_for(1, |s| {
            s.message() == "pool worker died" && s.pid() == Some(pid)
        });
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!(event.level, tracing::Level::WARN);
        assert!(event.task_is("kill_self_on"), "{event:?}");
        assert_eq!(event.item(), Some(2));
        let slot: usize = event
            .field("slot")
            .and_then(|s| s.parse().ok())
            .expect("a slot");
        assert!(slot < 2, "{event:?}");
        assert_eq!(event.field("signal"), Some("SIGKILL"), "{event:?}");
    });
}

/// An initializer emitting one record (which the subscriber holds).
#[task]
fn held_init() {
    tracing::info!("starting");
}

/// Emits one record (which this process's subscriber holds); returns `x`.
#[task]
fn held(x: u64) -> u64 {
    tracing::info!("held {x}");
    x
}

/// Waits (bounded) until `pool` has had `n` results back from workers.
fn wait_results(pool: &Pool, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.stats().workers.iter().map(|w| w.items).sum::<u64>() < n {
        assert!(Instant::now() < deadline, "the items never came back");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_blocked_subscriber_holds_back_only_the_results_behind_its_records() {
    within(60, || {
        // The subscriber waits for a lock this thread holds, in the record
        // of a blocking call running in another thread.
        let hold = HOLD.lock().unwrap_or_else(|p| p.into_inner());
        HELD_WAITING.store(false, Ordering::SeqCst);
        // One worker: the calls below run where the record came from.
        let pool = Pool::builder().processes(1).build().expect("a pool");
        let pids = pool.worker_pids();
        let blocked = std::thread::scope(|scope| {
            let call = scope.spawn(|| pool.map(task!(held), [7]));
            let deadline = Instant::now() + Duration::from_secs(20);
            while !HELD_WAITING.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < deadline,
                    "the record never reached the subscriber"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            wait_results(&pool, 1);
            // Results without records are not held, on the worker whose
            // record waits nor in another pool.
            for _ in 0..4 {
                let pid = pool.apply(task!(worker_pid), ()).expect("apply");
                assert!(pids.contains(&pid));
            }
            let other = self::pool();
            let pid = other.apply(task!(worker_pid), ()).expect("apply");
            assert!(other.worker_pids().contains(&pid));
            other.join();
            // The blocked call is cancelled at once.
            assert_eq!(pool.cancel_all(), 1);
            call.join().expect("the call's thread")
        });
        assert!(matches!(blocked, Err(Error::Cancelled)), "{blocked:?}");
        // terminate returns, every worker reaped, while the subscriber
        // still waits; a call whose result waits behind a record ends.
        let call = pool.apply_async(task!(held), (7,)).expect("submitted");
        wait_results(&pool, 6);
        pool.terminate();
        for pid in &pids {
            assert!(!process_exists(*pid), "worker {pid} left after terminate");
        }
        assert!(matches!(call.get(), Err(Error::Terminated)));
        // Drop too (it waits a moment for records, not for a stuck
        // subscriber), and with an initializer's records waiting.
        let pool = Pool::builder()
            .processes(2)
            .initializer(task!(held_init), ())
            .build()
            .expect("a pool whose initializer logs starts");
        let pids = pool.worker_pids();
        let call = pool.apply_async(task!(held), (7,)).expect("submitted");
        wait_results(&pool, 1);
        drop(pool);
        for pid in &pids {
            assert!(!process_exists(*pid), "worker {pid} left after drop");
        }
        assert!(matches!(call.get(), Err(Error::Terminated)));
        drop(hold);
        // Released, the subscriber sees every record.
        let records = wait_for(3, |s| s.task_is("held"));
        assert!(
            records.iter().all(|s| s.message() == "held 7"),
            "{records:?}"
        );
        let records = wait_for(2, |s| s.task_is("held_init"));
        assert!(
            records.iter().all(|s| s.message() == "starting"),
            "{records:?}"
        );
    });
}

/// Emits `count` records, which this process's subscriber takes slowly.
#[task]
fn slow_logger(count: u64) -> u64 {
    for i in 0..count {
        tracing::info!("slow {i}");
    }
    count
}

#[test]
fn dropping_the_pool_waits_for_records_a_slow_subscriber_still_takes() {
    within(60, || {
        let pool = pool();
        let call = pool
            .apply_async(task!(slow_logger), (300,))
            .expect("submitted");
        wait_results(&pool, 1);
        // The subscriber takes 1 ms per record: most still wait.
        drop(pool);
        let records = seen(|s| s.task_is("slow_logger"));
        assert_eq!(records.len(), 300);
        assert!(matches!(call.get(), Ok(300)));
    });
}

/// On `x == 0`, emits a record saying `message`, then runs until its
/// timeout ends it; returns other inputs at once.
#[task]
fn hang_on_zero(x: u64, message: String) -> u64 {
    if x == 0 {
        tracing::info!("{message}");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    x
}

/// For a test whose subscriber waits on [`GATE`]: the tests of the kind
/// one at a time, the gate closed. Drop the second guard to open it.
fn close_gate() -> (MutexGuard<'static, ()>, MutexGuard<'static, ()>) {
    capture();
    let one_at_a_time = GATED_TEST.lock().unwrap_or_else(|p| p.into_inner());
    let gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
    GATE_WAITING.store(false, Ordering::SeqCst);
    (one_at_a_time, gate)
}

/// Waits (bounded) until `flag` is set.
fn wait_flag(flag: &AtomicBool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (bounded) until `pool`'s workers have had `n` items fail.
fn wait_failures(pool: &Pool, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.stats().workers.iter().map(|w| w.failures).sum::<u64>() < n {
        assert!(Instant::now() < deadline, "no item failed");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_timeout_error_follows_the_records_of_its_item() {
    within(60, || {
        // The subscriber holds the item's record while its worker is
        // killed for the timeout; the error waits for the record.
        let (_one_at_a_time, gate) = close_gate();
        let pool = Pool::builder().processes(1).build().expect("a pool");
        let pid = pool.worker_pids()[0];
        let (result, records) = std::thread::scope(|scope| {
            let call = scope.spawn(|| {
                let result = pool
                    .timeout(Duration::from_secs(3))
                    .apply(task!(hang_on_zero), (0, "hanging".to_owned()));
                (result, seen(|s| s.message() == "hanging").len())
            });
            wait_flag(&GATE_WAITING, "the record never reached the subscriber");
            // The pool has blamed the item on its timeout.
            wait_failures(&pool, 1);
            drop(gate);
            call.join().expect("the call's thread")
        });
        assert!(
            matches!(result, Err(Error::TaskTimeout { index: 0, pid: p, .. }) if p == pid),
            "{result:?}"
        );
        assert_eq!(records, 1, "the error came before the item's record");
        assert!(!process_exists(pid), "the timed-out worker {pid} is left");
        assert_eq!(wait_for(1, |s| s.message() == "hanging").len(), 1);
    });
}

/// On its first run (the marker file is new) emits a record, waits for
/// the file `die` (bounded), then kills its worker; returns its pid.
#[task]
fn die_after_record(marker: String, die: String) -> u32 {
    if std::fs::File::create_new(&marker).is_ok() {
        tracing::info!("dying");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::path::Path::new(&die).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    std::process::id()
}

#[test]
fn a_retried_result_follows_the_records_of_the_run_that_died() {
    within(60, || {
        let (_one_at_a_time, gate) = close_gate();
        let dir = std::env::temp_dir();
        let me = std::process::id();
        let marker = dir.join(format!("pool-runtime-log-retry-{me}"));
        let die = dir.join(format!("pool-runtime-log-die-{me}"));
        let _ = std::fs::remove_file(&marker);
        let _ = std::fs::remove_file(&die);
        let pool = Pool::builder().processes(1).build().expect("a pool");
        let first = pool.worker_pids()[0];
        let args = (
            marker.to_string_lossy().into_owned(),
            die.to_string_lossy().into_owned(),
        );
        let (result, records) = std::thread::scope(|scope| {
            let call = scope.spawn(|| {
                let result = pool.retries(1).apply(task!(die_after_record), args);
                (result, seen(|s| s.message() == "dying").len())
            });
            // The first run's record waits in the subscriber when its
            // worker dies; the second run's result is back in the pool.
            wait_flag(&GATE_WAITING, "the record never reached the subscriber");
            std::fs::write(&die, b"").expect("the file that ends the first run");
            wait_results(&pool, 1);
            drop(gate);
            call.join().expect("the call's thread")
        });
        let _ = std::fs::remove_file(&marker);
        let _ = std::fs::remove_file(&die);
        let second = result.expect("the item ran again");
        assert_ne!(second, first, "the item ran again on a fresh worker");
        assert_eq!(records, 1, "the result came before the first run's record");
        assert_eq!(wait_for(1, |s| s.message() == "dying").len(), 1);
    });
}

#[test]
fn items_sent_behind_a_timed_out_item_are_not_held_by_its_records() {
    within(60, || {
        let (_one_at_a_time, gate) = close_gate();
        // One worker that knows the task's pace: the items after item 0
        // are sent to it while item 0 runs, and come back from the
        // replacement after the timeout, without records.
        let pool = Pool::builder().processes(1).build().expect("a pool");
        let message = || "zero hangs".to_owned();
        pool.starmap(task!(hang_on_zero), (1..200u64).map(|x| (x, message())))
            .expect("warm-up");
        let results = pool
            .timeout(Duration::from_secs(2))
            .chunksize(1)
            .istarmap_unordered(task!(hang_on_zero), (0..6u64).map(move |x| (x, message())));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for result in results {
                    let records = seen(|s| s.message() == "zero hangs").len();
                    let _ = tx.send((result, records));
                }
            });
            wait_flag(&GATE_WAITING, "the record never reached the subscriber");
            // Items 1 to 5 end while item 0's record is still held.
            let mut done: Vec<u64> = (0..5)
                .map(|_| {
                    let (result, _) = rx
                        .recv_timeout(Duration::from_secs(20))
                        .expect("items without records wait behind another item's records");
                    result.expect("items 1 to 5 succeed")
                })
                .collect();
            done.sort_unstable();
            assert_eq!(done, [1, 2, 3, 4, 5]);
            drop(gate);
            // Item 0's timeout comes after its record.
            let (result, records) = rx.recv().expect("item 0's outcome");
            assert!(
                matches!(result, Err(Error::TaskTimeout { index: 0, .. })),
                "{result:?}"
            );
            assert_eq!(records, 1, "the error came before the item's record");
        });
    });
}

/// Kills its worker with SIGKILL on `x == bad`, without a record.
#[task]
fn die_unlogged(x: u64, bad: u64) -> u64 {
    if x == bad {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(10));
    }
    x
}

#[test]
fn a_subscriber_blocked_on_the_pools_own_warning_stops_nothing() {
    within(60, || {
        let (one_at_a_time, gate) = close_gate();
        let pool = Pool::builder().processes(2).build().expect("a pool");
        let dying = pool
            .apply_async(task!(die_unlogged), (3, 3))
            .expect("submitted");
        // The subscriber waits in the pool's "pool worker died" warning:
        // the error follows it, the pool goes on around it.
        wait_flag(&GATE_WAITING, "the warning never reached the subscriber");
        assert!(!dying.ready(), "the error came before its warning");
        assert_eq!(pool.apply(task!(die_unlogged), (1, 3)).expect("apply"), 1);
        drop(gate);
        let err = dying.get().expect_err("the item killed its worker");
        assert!(matches!(err, Error::WorkerDied { index: 0, .. }), "{err:?}");
        let warnings = seen(|s| s.message() == "pool worker died" && s.task_is("die_unlogged"));
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert_eq!(warnings[0].item(), Some(0));
        // cancel_all and terminate return while it waits there again.
        let gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
        GATE_WAITING.store(false, Ordering::SeqCst);
        let dying = pool
            .apply_async(task!(die_unlogged), (3, 3))
            .expect("submitted");
        wait_flag(&GATE_WAITING, "the warning never reached the subscriber");
        assert!(pool.cancel_all() <= 1);
        let pids = pool.worker_pids();
        pool.terminate();
        for pid in &pids {
            assert!(!process_exists(*pid), "worker {pid} left after terminate");
        }
        let ended = dying.get();
        assert!(
            matches!(ended, Err(Error::Cancelled | Error::Terminated)),
            "{ended:?}"
        );
        drop(gate);
        let warnings = wait_for(2, |s| {
            s.message() == "pool worker died" && s.task_is("die_unlogged")
        });
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        drop(one_at_a_time);
    });
}

/// Emits `count` records, which this process's subscriber takes slowly,
/// a little apart: they reach the pool in many frames.
#[task]
fn slow_flood(count: u64) -> u64 {
    for i in 0..count {
        tracing::info!("flood {i}");
        std::thread::sleep(Duration::from_micros(50));
    }
    count
}

#[test]
fn dropping_a_quiet_pool_does_not_wait_for_another_pools_records() {
    within(60, || {
        let noisy = pool();
        let flood = noisy
            .apply_async(task!(slow_flood), (2000,))
            .expect("submitted");
        // Its records, in many hand-offs, are with the subscriber, which
        // takes 1 ms each.
        wait_results(&noisy, 1);
        let quiet = pool();
        let pid = quiet.apply(task!(worker_pid), ()).expect("apply");
        assert!(quiet.worker_pids().contains(&pid));
        quiet.join();
        drop(quiet);
        let shown = seen(|s| s.task_is("slow_flood")).len();
        assert!(
            shown < 2000,
            "the quiet pool waited for all {shown} records"
        );
        assert!(matches!(flood.get(), Ok(2000)));
        assert_eq!(seen(|s| s.task_is("slow_flood")).len(), 2000);
    });
}
