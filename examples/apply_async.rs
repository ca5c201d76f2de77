//! The first seed's `apply_async` program: three slow tasks submitted
//! without blocking, a callback printing each result as it arrives, and the
//! second result retrieved by hand.
//!
//! As in Python, leaving the pool's scope (here: the end of `main`) stops the
//! workers still busy with the first and third tasks.
//!
//! Run: `cargo run --release --example apply_async`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// A task that takes `duration` seconds.
#[task]
fn slow_task(name: String, duration: u64) -> String {
    println!("{name} starting");
    std::thread::sleep(Duration::from_secs(duration));
    format!("{name} finished after {duration}s")
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::builder().processes(2).build()?;
    // Submit several tasks asynchronously.
    let mut jobs = Vec::new();
    for (i, duration) in [2, 1, 3].into_iter().enumerate() {
        let name = format!("Task{}", i + 1);
        let job = pool
            .apply_async(task!(slow_task), (name, duration))?
            .callback(|result| println!("Callback received: {result}"));
        jobs.push(job);
    }
    println!("All tasks submitted. Main process is free.");
    // Wait for one specific job.
    let result_of_second_job = jobs.swap_remove(1).get()?;
    println!("Manually retrieved: {result_of_second_job}");
    Ok(())
}
