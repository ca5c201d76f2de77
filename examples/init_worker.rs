//! The first seed's initializer program: every worker loads a large array
//! once, when it starts (Python's `initializer` + `initargs`), and is
//! replaced after 100 tasks (`maxtasksperchild`); `map` then reads it.
//!
//! Run: `cargo run --release --example init_worker`

use std::sync::OnceLock;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// The worker-global data, loaded once per worker.
static LARGE_DATA: OnceLock<Vec<f64>> = OnceLock::new();

/// Runs once when each worker process starts.
#[task]
fn init_worker(len: usize) {
    println!("Worker {} initializing...", std::process::id());
    // Simulate loading data: `len` zeros.
    LARGE_DATA.get_or_init(|| vec![0.0; len]);
}

/// A task that uses the pre-loaded data.
#[task]
fn task_function(index: usize) -> f64 {
    let data = LARGE_DATA.get().map_or(&[][..], Vec::as_slice);
    data[index] * index as f64
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    // Four workers, each initializing with a dataset of 1000 values.
    let pool = Pool::builder()
        .processes(4)
        .initializer(task!(init_worker), 1000)
        .max_tasks_per_child(100)
        .build()?;
    let results = pool.map(task!(task_function), 0..10)?;
    println!("{results:?}");
    Ok(())
}
