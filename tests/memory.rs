//! Workers replaced before a leak or a long life hurts:
//! `max_memory_per_child` and `max_lifetime`, alone and with the fork
//! server and `max_tasks_per_child`. Every item's result comes back once,
//! and each item runs once (it says so in a file).
//!
//! The tests run one at a time (they hold `SERIAL`): their workers hold
//! tens of MiB each, and one counts this process's descriptors.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

use common::{parent_of, process_exists, wait_for_fork_server, within};

pool_runtime::test_support!();

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const MIB: u64 = 1 << 20;

/// Waits (at most 20 s) until `done()`: for what the pool records just
/// after a worker's end, which a call may return before.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// This process's resident memory in bytes (`VmRSS`: the count
/// `/proc/self/statm` gives in pages).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(u64::MAX, |kb| kb * 1024)
}

/// What an item reports: its index, its worker, and that worker's resident
/// memory when the item started.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy)]
struct Ran {
    index: u32,
    pid: u32,
    parent: u32,
    resident_at_start: u64,
}

/// Appends `index` to the file `log` (when named), then leaks `mib` MiB it
/// has written to, so they are resident.
#[task]
fn leak(index: u32, mib: u32, log: String) -> Ran {
    let resident_at_start = resident();
    if !log.is_empty() {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("the log file exists");
        // One write of a whole line: appends never interleave.
        file.write_all(format!("{index}\n").as_bytes())
            .expect("append to the log");
    }
    if mib > 0 {
        // Kept from the optimizer: a leak nobody reads may be elided.
        std::hint::black_box(Box::leak(
            vec![1u8; (mib as usize) << 20].into_boxed_slice(),
        ));
    }
    Ran {
        index,
        pid: std::process::id(),
        parent: std::os::unix::process::parent_id(),
        resident_at_start,
    }
}

/// Sleeps `ms`, then reports its index and worker.
#[task]
fn pid_after(index: u32, ms: u64) -> (u32, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (index, std::process::id())
}

/// A fresh, empty log file.
fn log_file(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "pool-runtime-memory-{}-{name}.log",
        std::process::id()
    ));
    std::fs::write(&path, b"").expect("create the log file");
    path
}

/// Asserts the log holds each of `0..n` exactly once, and removes it.
fn assert_each_ran_once(log: &std::path::Path, n: u32) {
    let text = std::fs::read_to_string(log).expect("read the log");
    let _ = std::fs::remove_file(log);
    let mut runs: BTreeMap<u32, u32> = BTreeMap::new();
    for line in text.lines() {
        *runs.entry(line.parse().expect("an index")).or_insert(0) += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|&(_, &k)| k != 1).collect();
    assert!(twice.is_empty(), "items run more than once: {twice:?}");
    assert_eq!(runs.len(), n as usize, "items run: {}", runs.len());
    assert!(runs.keys().copied().eq(0..n));
}

/// Checks `n` results of `leak`: in order, and each started with its worker
/// at or below `bound` (plus what reading the next chunk may take).
/// Returns the distinct workers.
fn check_leak_results(ran: &[Ran], n: u32, bound: u64) -> BTreeSet<u32> {
    assert_eq!(ran.len(), n as usize);
    for (i, r) in ran.iter().enumerate() {
        assert_eq!(r.index as usize, i, "results in input order");
    }
    let worst = ran.iter().map(|r| r.resident_at_start).max().unwrap_or(0);
    assert!(
        worst <= bound + bound / 10,
        "a worker started an item holding {} MiB, above the {} MiB bound",
        worst / MIB,
        bound / MIB
    );
    ran.iter().map(|r| r.pid).collect()
}

fn memory_retirements(pool: &Pool) -> u64 {
    pool.stats()
        .workers
        .iter()
        .map(|w| w.memory_retirements)
        .sum()
}

/// Runs `n` items leaking `mib` MiB each on 2 workers bounded at `bound`
/// bytes; checks every result and that no worker started an item above the
/// bound; returns the results and the peak resident size seen.
fn leak_under_bound(n: u32, mib: u32, bound: u64) -> (Vec<Ran>, u64) {
    let pool = Pool::builder()
        .processes(2)
        .max_memory_per_child(bound)
        .build()
        .expect("pool");
    let log = log_file(&format!("leak-{mib}"));
    let args: Vec<(u32, u32, String)> = (0..n)
        .map(|i| (i, mib, log.display().to_string()))
        .collect();
    let ran = pool.starmap(task!(leak), args).expect("every item runs");
    let workers = check_leak_results(&ran, n, bound);
    assert_each_ran_once(&log, n);
    // Each worker holds at most bound / mib items' leaks: many were needed.
    let per_worker = (bound / (u64::from(mib) * MIB)) as usize + 1;
    assert!(
        workers.len() * per_worker >= n as usize,
        "{} workers for {n} items",
        workers.len()
    );
    let stats = pool.stats();
    let retired = memory_retirements(&pool);
    assert!(retired > 0, "{stats:?}");
    // Every replacement was a retirement: nothing died, nothing failed.
    let respawns: u64 = stats.workers.iter().map(|w| w.respawns).sum();
    assert_eq!(retired, respawns, "{stats:?}");
    assert!(stats.workers.iter().all(|w| w.failures == 0), "{stats:?}");
    assert_eq!(
        stats.workers.iter().map(|w| w.items).sum::<u64>(),
        u64::from(n)
    );
    let peak = ran.iter().map(|r| r.resident_at_start).max().unwrap_or(0);
    (ran, peak)
}

#[test]
fn leaking_workers_are_replaced_before_they_pass_the_bound() {
    let _serial = serial();
    // The 1 000 × 10 MiB / 100 MiB case, scaled down by 5.
    within(120, || leak_under_bound(1000, 2, 20 * MIB));
}

/// The full case: 1 000 items leaking 10 MiB each, bounded at 100 MiB
/// (about 7 s: 10 GiB of page faults).
#[test]
fn a_thousand_items_leaking_10_mib_under_100_mib() {
    let _serial = serial();
    let start = std::time::Instant::now();
    let (ran, peak) = within(600, || leak_under_bound(1000, 10, 100 * MIB));
    let workers: BTreeSet<u32> = ran.iter().map(|r| r.pid).collect();
    println!(
        "1000 items of 10 MiB under 100 MiB: {:?}, {} workers, peak resident at an item's start {:.1} MiB",
        start.elapsed(),
        workers.len(),
        peak as f64 / MIB as f64
    );
}

#[test]
fn retiring_in_the_middle_of_chunks_runs_every_item_once() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder()
            .processes(2)
            .max_memory_per_child(24 * MIB)
            .build()
            .expect("pool");
        for chunk in [1, 7, 50] {
            let log = log_file(&format!("chunk-{chunk}"));
            let n = 300;
            let args: Vec<(u32, u32, String)> =
                (0..n).map(|i| (i, 2, log.display().to_string())).collect();
            // A worker retires after ~10 items: in the middle of its chunk
            // of 50, or of 7 with more chunks queued behind it.
            let ran = pool
                .chunksize(chunk)
                .starmap(task!(leak), args)
                .expect("no item fails");
            check_leak_results(&ran, n, 24 * MIB);
            assert_each_ran_once(&log, n);
        }
        assert!(memory_retirements(&pool) > 0);
        // Nothing was blamed on a retiring worker.
        assert!(pool.stats().workers.iter().all(|w| w.failures == 0));
    });
}

#[test]
fn a_bound_no_item_reaches_replaces_no_worker() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder()
            .processes(2)
            .max_memory_per_child(1 << 40)
            .build()
            .expect("pool");
        let first = pool.worker_pids();
        let squares = pool.map(task!(common::square), 0..10_000u64).expect("map");
        assert_eq!(squares, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(pool.worker_pids(), first);
        assert_eq!(memory_retirements(&pool), 0);
    });
}

#[test]
fn max_lifetime_replaces_workers_between_chunks() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder()
            .processes(2)
            .max_lifetime(Duration::from_millis(200))
            .build()
            .expect("pool");
        let first = pool.worker_pids();
        // 150 items of 20 ms on 2 workers: about 1.5 s of work.
        let args: Vec<(u32, u64)> = (0..150).map(|i| (i, 20)).collect();
        let ran = pool
            .chunksize(1)
            .starmap(task!(pid_after), args)
            .expect("no item fails");
        assert_eq!(ran.len(), 150);
        for (i, (index, _)) in ran.iter().enumerate() {
            assert_eq!(*index as usize, i);
        }
        let pids: BTreeSet<u32> = ran.iter().map(|&(_, pid)| pid).collect();
        assert!(pids.len() > 2, "workers: {pids:?}");
        assert!(
            first
                .iter()
                .all(|pid| !pids.contains(pid) || !process_exists(*pid))
        );
        let stats = pool.stats();
        let retired: u64 = stats.workers.iter().map(|w| w.lifetime_retirements).sum();
        assert!(retired > 0, "{stats:?}");
        assert!(stats.workers.iter().all(|w| w.failures == 0), "{stats:?}");
        assert_eq!(memory_retirements(&pool), 0);
    });
}

#[test]
fn an_idle_worker_past_its_lifetime_is_replaced() {
    let _serial = serial();
    within(60, || {
        let pool = Pool::builder()
            .processes(2)
            .max_lifetime(Duration::from_millis(50))
            .build()
            .expect("pool");
        let first = pool.worker_pids();
        // No work at all: the supervisor retires them anyway.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while first.iter().any(|pid| process_exists(*pid)) {
            assert!(std::time::Instant::now() < deadline, "never retired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            pool.map(task!(common::square), [3, 4]).expect("map"),
            [9, 16]
        );
        eventually("two lifetime retirements counted", || {
            let stats = pool.stats();
            stats
                .workers
                .iter()
                .map(|w| w.lifetime_retirements)
                .sum::<u64>()
                >= 2
                && stats.workers.iter().all(|w| w.failures == 0)
        });
    });
}

#[test]
fn replacements_are_forks_of_the_fork_server_or_fresh_children() {
    let _serial = serial();
    within(120, || {
        let me = std::process::id();
        for fork_server in [true, false] {
            let pool = Pool::builder()
                .processes(2)
                .fork_server(fork_server)
                .max_memory_per_child(24 * MIB)
                .build()
                .expect("pool");
            let initial = pool.worker_pids();
            let log = log_file(&format!("fork-{fork_server}"));
            let args: Vec<(u32, u32, String)> = (0..100)
                .map(|i| (i, 2, log.display().to_string()))
                .collect();
            let ran = pool.starmap(task!(leak), args).expect("no item fails");
            check_leak_results(&ran, 100, 24 * MIB);
            assert_each_ran_once(&log, 100);
            assert!(memory_retirements(&pool) > 0);
            // Each replacement says who started it.
            let replacements: BTreeSet<u32> = ran
                .iter()
                .filter(|r| !initial.contains(&r.pid))
                .map(|r| r.parent)
                .collect();
            let expected = if fork_server {
                wait_for_fork_server(None)
            } else {
                me
            };
            assert_eq!(replacements, BTreeSet::from([expected]));
        }
    });
}

#[test]
fn memory_and_task_limits_together_each_retire_workers() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(5)
            .max_memory_per_child(24 * MIB)
            .build()
            .expect("pool");
        let log = log_file("with-max-tasks");
        // Every 8th item leaks 30 MiB: its worker retires for its memory;
        // the others retire after 5 items.
        let args: Vec<(u32, u32, String)> = (0..200)
            .map(|i| {
                (
                    i,
                    if i % 8 == 7 { 30 } else { 0 },
                    log.display().to_string(),
                )
            })
            .collect();
        let ran = pool
            .chunksize(3)
            .starmap(task!(leak), args)
            .expect("no item fails");
        assert_eq!(ran.len(), 200);
        assert_each_ran_once(&log, 200);
        let mut per_worker: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, r) in ran.iter().enumerate() {
            assert_eq!(r.index as usize, i);
            assert!(r.resident_at_start <= 24 * MIB + 24 * MIB / 10, "{r:?}");
            *per_worker.entry(r.pid).or_insert(0) += 1;
        }
        assert!(per_worker.values().all(|&k| k <= 5), "{per_worker:?}");
        // A worker that leaked ran nothing after that item.
        let mut last_of: BTreeMap<u32, u32> = BTreeMap::new();
        for r in &ran {
            last_of.insert(r.pid, r.index);
        }
        for r in ran.iter().filter(|r| r.index % 8 == 7) {
            assert_eq!(last_of[&r.pid], r.index, "worker {} ran on", r.pid);
        }
        eventually("a memory retirement per leaking item", || {
            memory_retirements(&pool) == 25
        });
        let stats = pool.stats();
        let respawns: u64 = stats.workers.iter().map(|w| w.respawns).sum();
        assert!(
            respawns > 25,
            "max_tasks_per_child also retired workers: {stats:?}"
        );
        assert!(stats.workers.iter().all(|w| w.failures == 0), "{stats:?}");
    });
}

#[test]
fn memory_and_lifetime_limits_together() {
    let _serial = serial();
    within(120, || {
        let pool = Pool::builder()
            .processes(2)
            .max_lifetime(Duration::from_millis(100))
            .max_memory_per_child(24 * MIB)
            .build()
            .expect("pool");
        let log = log_file("with-lifetime");
        let args: Vec<(u32, u32, String)> = (0..300)
            .map(|i| (i, 1, log.display().to_string()))
            .collect();
        let ran = pool
            .chunksize(2)
            .starmap(task!(leak), args)
            .expect("no item fails");
        check_leak_results(&ran, 300, 24 * MIB);
        assert_each_ran_once(&log, 300);
        let stats = pool.stats();
        assert!(memory_retirements(&pool) > 0, "{stats:?}");
        assert!(stats.workers.iter().all(|w| w.failures == 0), "{stats:?}");
    });
}

/// This process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// This process's open descriptors once the count holds still (threads
/// of an ended pool close theirs as they finish).
fn settled_fds() -> usize {
    let mut last = open_fds();
    let mut same = 0;
    while same < 10 {
        std::thread::sleep(Duration::from_millis(10));
        let now = open_fds();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Live children of `pid` that are not fork servers.
fn workers_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid) && !common::is_fork_server(p))
        .collect()
}

#[test]
fn retired_workers_leave_no_process_or_descriptor() {
    let _serial = serial();
    within(120, || {
        let me = std::process::id();
        // A first pool starts the fork server, which stays; the second
        // one's workers are its forks.
        drop(common::pool());
        let server = wait_for_fork_server(None);
        let pool = common::pool();
        assert_eq!(pool.map(task!(common::square), [5]).expect("map"), [25]);
        drop(pool);
        let fds = settled_fds();
        let mut seen = BTreeSet::new();
        {
            let pool = Pool::builder()
                .processes(2)
                .max_memory_per_child(24 * MIB)
                .max_lifetime(Duration::from_millis(100))
                .build()
                .expect("pool");
            let args: Vec<(u32, u32, String)> = (0..200).map(|i| (i, 2, String::new())).collect();
            let ran = pool.starmap(task!(leak), args).expect("no item fails");
            seen.extend(ran.iter().map(|r| r.pid));
            assert!(memory_retirements(&pool) > 0);
        }
        assert!(seen.len() > 2);
        let left: Vec<u32> = seen
            .iter()
            .copied()
            .filter(|&p| process_exists(p))
            .collect();
        assert!(left.is_empty(), "workers left: {left:?}");
        assert!(workers_of(me).is_empty(), "children: {:?}", workers_of(me));
        assert!(
            workers_of(server).is_empty(),
            "forks: {:?}",
            workers_of(server)
        );
        eventually("as many descriptors as before the pool", || {
            open_fds() == fds
        });
    });
}

#[test]
fn limits_out_of_range_are_refused_at_build() {
    let _serial = serial();
    for bytes in [0, 1, MIB - 1] {
        match Pool::builder().max_memory_per_child(bytes).build() {
            Err(Error::InvalidSetting(m)) => {
                assert!(
                    m.contains("max_memory_per_child must be at least 1 MiB"),
                    "{m}"
                );
                assert!(m.contains(&format!("not {bytes} bytes")), "{m}");
            }
            other => panic!("{bytes} bytes: {:?}", other.map(|_| ())),
        }
    }
    for limit in [Duration::ZERO, Duration::from_millis(9)] {
        match Pool::builder().max_lifetime(limit).build() {
            Err(Error::InvalidSetting(m)) => {
                assert!(m.contains("max_lifetime must be at least 10ms"), "{m}");
            }
            other => panic!("{limit:?}: {:?}", other.map(|_| ())),
        }
    }
    // The smallest allowed, and "never" (too long to be reached), start.
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(MIB)
        .max_lifetime(Duration::MAX)
        .build()
        .expect("allowed limits");
    assert_eq!(pool.map(task!(common::square), [2]).expect("map"), [4]);
}

/// What the pool logged, once [`capture_logs`] ran.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this process's `tracing` events, debug level and up, to [`LOGS`].
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .try_init();
}

#[test]
fn retirements_are_logged_at_debug_level_not_as_deaths() {
    let _serial = serial();
    capture_logs();
    within(120, || {
        let pool = Pool::builder()
            .processes(2)
            .max_memory_per_child(24 * MIB)
            .max_lifetime(Duration::from_millis(100))
            .build()
            .expect("pool");
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let args: Vec<(u32, u32, String)> = (0..100).map(|i| (i, 2, String::new())).collect();
        let ran = pool.starmap(task!(leak), args).expect("no item fails");
        check_leak_results(&ran, 100, 24 * MIB);
        let args: Vec<(u32, u64)> = (0..30).map(|i| (i, 20)).collect();
        pool.chunksize(1)
            .starmap(task!(pid_after), args)
            .expect("no item fails");
        eventually("both kinds of retirement", || {
            let stats = pool.stats();
            stats.workers.iter().any(|w| w.memory_retirements > 0)
                && stats.workers.iter().any(|w| w.lifetime_retirements > 0)
        });
        drop(pool);
        let logs =
            String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        assert!(
            logs.contains("its resident memory is above max_memory_per_child"),
            "{logs}"
        );
        assert!(logs.contains("it reached its max_lifetime"), "{logs}");
        assert!(logs.contains("pool worker retired"), "{logs}");
        assert!(!logs.contains("pool worker died"), "{logs}");
        let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(warnings.is_empty(), "{warnings:?}");
    });
}
