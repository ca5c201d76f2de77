//! Observability: `tracing` events for worker start, death (with pid and
//! signal), replacement and failures, and `pool.stats()`.
//!
//! Run: `RUST_LOG=debug cargo run --release --example observe`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Sleeps `ms`, then returns `x`; item 13 panics.
#[task]
fn job(x: u64, ms: u64) -> u64 {
    assert!(x != 13, "unlucky item");
    std::thread::sleep(Duration::from_millis(ms));
    x
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    // Events go to stderr, filtered by RUST_LOG (e.g. RUST_LOG=debug).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let pool = Pool::builder().processes(2).build()?;
    let failed = pool
        .istarmap(task!(job), (0..40).map(|x| (x, 2)))
        .filter(Result::is_err)
        .count();
    println!("{failed} item failed");

    // Kill a worker from outside while it runs a long item (the other item
    // does not sleep, so the worker found sleeping is the right one).
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            pool.chunksize(1)
                .istarmap(task!(job), [(100, 5_000), (101, 0)])
                .collect::<Vec<_>>()
        });
        let victim = loop {
            let busy = pool.stats().in_flight_items > 0;
            let pid = pool.worker_pids().into_iter().find(|p| {
                std::fs::read_dir(format!("/proc/{p}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|t| {
                        std::fs::read_to_string(t.path().join("wchan"))
                            .is_ok_and(|w| w.contains("nanosleep"))
                    })
            });
            match pid {
                Some(pid) if busy => break pid,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        // SAFETY: signalling one of our worker processes.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        let results = run.join().unwrap_or_default();
        println!(
            "killed worker {victim}: {} ok, {} failed",
            results.iter().filter(|r| r.is_ok()).count(),
            results.iter().filter(|r| r.is_err()).count()
        );
    });

    // The lost worker is replaced in the background; wait for it (a few ms)
    // so that the counters below show the replacement.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.worker_pids().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }

    let stats = pool.stats();
    for (slot, w) in stats.workers.iter().enumerate() {
        println!(
            "worker {slot}: pid {:?}, {} items, {} failed, {} respawns, busy {:?}",
            w.pid, w.items, w.failures, w.respawns, w.busy
        );
    }
    println!(
        "queued {} items, {} in flight",
        stats.queued_items, stats.in_flight_items
    );
    Ok(())
}
