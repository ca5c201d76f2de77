//! Crash isolation: a worker is killed with SIGKILL in the middle of a
//! `starmap` of 1 000 items. Exactly one item fails (the one it was
//! running), the other 999 come back right, and the pool goes on. With
//! `retries(1)` the item is re-run on a fresh worker and nothing fails.
//!
//! Run: `cargo run --release --example kill_worker`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Two milliseconds of work, then `x * 2`.
#[task]
fn work(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * 2
}

/// Kills one worker with SIGKILL once it is inside a task (Linux: its
/// kernel wait channel shows the task's sleep).
fn kill_a_busy_worker(pool: &Pool) -> u32 {
    loop {
        for pid in pool.worker_pids() {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            if wchan.contains("nanosleep") {
                // SAFETY: sending a signal to one of our worker processes.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run(pool: &Pool, retries: u32) -> (usize, Vec<Error>) {
    std::thread::scope(|s| {
        let results = s.spawn(|| {
            pool.retries(retries)
                .imap(task!(work), 0..1000u64)
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(200));
        let pid = kill_a_busy_worker(pool);
        println!("killed worker {pid} with SIGKILL");
        let results = results.join().unwrap_or_default();
        let mut ok = 0;
        let mut errors = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) if v == 2 * i as u64 => ok += 1,
                Ok(v) => panic!("item {i}: wrong value {v}"),
                Err(e) => errors.push(e),
            }
        }
        (ok, errors)
    })
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::builder().processes(2).build()?;

    let (ok, errors) = run(&pool, 0);
    println!(
        "without retries: {ok} correct results, {} error(s)",
        errors.len()
    );
    for e in &errors {
        println!("  {e}");
    }

    let (ok, errors) = run(&pool, 1);
    println!(
        "with retries(1): {ok} correct results, {} error(s)",
        errors.len()
    );

    let next = pool.map(task!(work), [1, 2, 3])?;
    println!("next call: {next:?}");
    Ok(())
}
