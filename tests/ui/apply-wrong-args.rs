use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

fn f(pool: &Pool) -> Result<u64, Error> {
    pool.apply(task!(power), (2u64, "3"))
}

fn main() {}
