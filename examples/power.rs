//! `map`, `starmap` and `apply` on `x.pow(n)`, as in the second seed's
//! `power` program (its `_async` half is `examples/power_async.rs`).
//!
//! Run: `cargo run --release --example power`

use pool_runtime::prelude::*;
use pool_runtime::task;

/// `x` to the power `n`.
#[task]
fn power(x: u64, n: u32) -> u64 {
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
    // map: one argument per call (chunksize can improve performance)
    let result_map = pool.chunksize(2).map(task!(square), [2, 3, 4])?;
    println!("Map result: {result_map:?}");
    // starmap: a tuple of arguments per call
    let args = [(2, 3), (3, 2), (4, 1)];
    let result_starmap = pool.starmap(task!(power), args)?;
    println!("Starmap result: {result_starmap:?}");
    // apply: one call, blocking
    let result_apply = pool.apply(task!(power), (2, 10))?;
    println!("Apply result: {result_apply}");
    Ok(())
}
