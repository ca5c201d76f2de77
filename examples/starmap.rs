//! The first seed program: `Pool.starmap()` over ten tasks that each sleep a
//! random fraction of a second, print from their worker, and return their
//! arguments; the results come back in input order.
//!
//! Run: `cargo run --release --example starmap`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Task executed in a worker process.
#[task]
fn task(identifier: u32, value: f64) -> (u32, f64) {
    // report a message
    println!("Task {identifier} executing with {value}");
    // block for a moment
    std::thread::sleep(Duration::from_secs_f64(value));
    // return the generated value
    (identifier, value)
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    // create and configure the process pool
    let pool = Pool::new()?;
    // prepare arguments
    let items: Vec<(u32, f64)> = (0..10).map(|i| (i, fastrand::f64())).collect();
    // execute tasks and process results in order
    for result in pool.starmap(task!(task), items)? {
        println!("Got result: {result:?}");
    }
    // the pool is closed when it goes out of scope
    Ok(())
}
