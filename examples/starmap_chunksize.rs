//! The first seed program with `chunksize = 2`: ten calls travel to the
//! workers as five chunks of two.
//!
//! Run: `cargo run --release --example starmap_chunksize`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Task executed in a worker process.
#[task]
fn task(identifier: u32, value: f64) -> (u32, f64) {
    println!("Task {identifier} executing with {value}");
    std::thread::sleep(Duration::from_secs_f64(value));
    (identifier, value)
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::new()?;
    let items: Vec<(u32, f64)> = (0..10).map(|i| (i, fastrand::f64())).collect();
    // execute tasks in chunks of two and process results in order
    for result in pool.chunksize(2).starmap(task!(task), items)? {
        println!("Got result: {result:?}");
    }
    Ok(())
}
