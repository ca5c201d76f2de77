use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn count(s: &str, xs: &[u32]) -> usize {
    s.len() + xs.len()
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

// Never called: only the argument types are checked.
#[allow(dead_code)]
fn borrowed(pool: &Pool) -> Result<Vec<usize>, Error> {
    pool.starmap(task!(count), [("ab", &[1u32, 2][..])])
}

#[allow(dead_code)]
fn inferred_literals(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.map(task!(square), [1, 2, 3])
}

fn main() {}
