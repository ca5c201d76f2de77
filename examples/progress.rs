//! A long `map` with a progress bar (rate and ETA) on stderr, drawn only
//! when stderr is a terminal; plus the plain progress hook, which works
//! without the feature.
//!
//! Run: `cargo run --release --features progress --example progress`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Three milliseconds of work.
#[task]
fn step(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(3));
    x + 1
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::builder().processes(2).build()?;
    let out = pool.chunksize(4).progress().map(task!(step), 0..1500)?;
    println!("bar: {} results, last {:?}", out.len(), out.last());

    static LAST: AtomicUsize = AtomicUsize::new(0);
    let out = pool
        .call()
        .on_progress(|done, total| {
            // Print every 25%.
            let total = total.unwrap_or(done).max(1);
            let quarter = done * 4 / total;
            if LAST.swap(quarter, Ordering::Relaxed) != quarter {
                println!("hook: {done}/{total}");
            }
        })
        .map(task!(step), 0..400)?;
    println!("hook: {} results", out.len());
    Ok(())
}
