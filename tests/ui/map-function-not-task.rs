use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn square(x: u64) -> u64 {
    x * x
}

fn f(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.map(square, [2, 3])
}

fn main() {}
