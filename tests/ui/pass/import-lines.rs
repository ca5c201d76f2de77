use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

// Never called: this case checks that both macros resolve side by side.
#[allow(dead_code)]
fn run(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.starmap(task!(power), [(2, 3), (3, 2)])
}

#[pool_runtime::main]
fn main() {}
