use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

fn f(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.map(task!(power), [2, 3])
}

fn main() {}
