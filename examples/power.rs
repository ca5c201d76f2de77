//! The first seed's `power` program: `map` (with `chunksize`), `starmap`,
//! and `starmap_async` collected with `get_timeout(2 s)`; plus `apply`.
//!
//! The seed calls `pool.map(power, [2, 3, 4])` on the two-argument `power`,
//! a `TypeError` at run time in Python; here that does not compile, so `map`
//! takes the one-argument `square`.
//!
//! Run: `cargo run --release --example power`

use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// `x` to the power `n`, after 0.1 s of simulated work.
#[task]
fn power(x: u64, n: u32) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    x.pow(n)
}

/// `x` squared: a one-argument task, so `map` accepts it.
#[task]
fn square(x: u64) -> u64 {
    power(x, 2)
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let pool = Pool::builder().processes(4).build()?;
    // Standard map (blocks); chunksize can improve performance.
    let result_map = pool.chunksize(2).map(task!(square), [2, 3, 4])?;
    println!("Map result: {result_map:?}");
    // Starmap: a tuple of arguments per call.
    let args = [(2, 3), (3, 2), (4, 1)];
    let result_starmap = pool.starmap(task!(power), args)?;
    println!("Starmap result: {result_starmap:?}");
    // Async version (returns at once).
    let mut async_result = pool.starmap_async(task!(power), args)?;
    println!("Main process can do other work here...");
    // Eventually, block until ready: wait at most 2 seconds.
    let result_async = async_result.get_timeout(Duration::from_secs(2))?;
    println!("Async result: {result_async:?}");
    // apply: one blocking call.
    let result_apply = pool.apply(task!(power), (2, 10))?;
    println!("Apply result: {result_apply}");
    Ok(())
}
