//! A long `map` with a progress bar (rate, elapsed time and ETA) on the
//! terminal's last row, drawn only when stderr is a terminal: lines the
//! tasks print scroll above it. Then the plain progress hook.
//!
//! Run: `cargo run --release --features progress --example progress`
//! (without the feature, the same numbers are drawn as a plain text line).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Three milliseconds of work; item 1000 takes 1.5 s, and every 500th item
/// prints a line from its worker, which scrolls above the bar.
#[task]
fn step(x: u64) -> u64 {
    let ms = if x == 1000 { 1500 } else { 3 };
    std::thread::sleep(Duration::from_millis(ms));
    if x.is_multiple_of(500) {
        println!("step {x} done in worker {}", std::process::id());
    }
    x + 1
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::builder().processes(2).build()?;
    let out = pool.chunksize(4).progress(true).map(task!(step), 0..1500)?;
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
