//! Cancelling calls: 50 calls of a 200 ms task on 2 workers, 49 of them
//! cancelled (the two running are stopped by killing their workers, which
//! are replaced); the last call's result comes at once. Then the calls
//! are waited for in completion order with `as_completed`, and the rest
//! cancelled as soon as one fails.
//!
//! Run: `cargo run --release --example cancel`

use std::time::{Duration, Instant};

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Sleeps `ms` milliseconds; returns `i`.
#[task]
fn nap(i: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    i
}

/// Fails on `bad`, after `ms` milliseconds.
#[task]
fn check(i: u64, ms: u64, bad: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(ms));
    if i == bad {
        Err(format!("input {i} is bad"))
    } else {
        Ok(i)
    }
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::builder().processes(2).build()?;
    let start = Instant::now();
    let mut calls = (0..50)
        .map(|i| pool.apply_async(task!(nap), (i, 200)))
        .collect::<Result<Vec<_>, _>>()?;
    let last = calls.pop().ok_or(Error::Terminated)?;
    let cancelled = calls.iter().filter(|call| call.cancel()).count();
    let value = last.get()?;
    let took = start.elapsed();
    println!("Cancelled {cancelled} of 50 calls; the last one returned {value}");
    println!(
        "Its result came in under a second: {} ({took:.0?}; one 200 ms item after the cancels)",
        took < Duration::from_secs(1)
    );

    // The first failure ends the rest: wait in completion order, then
    // cancel what is left (stopping the items that run).
    let calls = [(0, 300), (1, 50), (2, 60_000), (3, 60_000)]
        .map(|(i, ms)| pool.apply_async(task!(check), (i, ms, 1)));
    let mut done = pool_runtime::as_completed(calls.into_iter().collect::<Result<Vec<_>, _>>()?);
    while let Some((position, outcome)) = done.next() {
        match outcome {
            Ok(Ok(value)) => println!("Call {position} returned {value}"),
            Ok(Err(message)) => {
                println!("Call {position} failed: {message}; cancelling the rest");
                let stopped = done.cancel_remaining();
                println!("Cancelled {stopped} calls still running or queued");
            }
            Err(err) => println!("Call {position}: {err}"),
        }
    }
    Ok(())
}
