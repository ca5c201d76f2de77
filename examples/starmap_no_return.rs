//! The first seed program without a return value: `starmap` blocks until
//! every task ran; the results (all `()`) are ignored.
//!
//! Run: `cargo run --release --example starmap_no_return`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Task executed in a worker process; returns nothing.
#[task]
fn task(identifier: u32, value: f64) {
    println!("Task {identifier} executing with {value}");
    std::thread::sleep(Duration::from_secs_f64(value));
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::new()?;
    let items: Vec<(u32, f64)> = (0..10).map(|i| (i, fastrand::f64())).collect();
    // issue tasks to the process pool and wait for them to complete
    pool.starmap(task!(task), items)?;
    Ok(())
}
