// A task named `args`, with a parameter named `args`: the generated `call`
// must not shadow either.
use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn args(args: u64) -> u64 {
    args + 1
}

#[task]
fn value(value: String, args: u32) -> usize {
    value.len() + args as usize
}

#[allow(dead_code)]
fn f(pool: &Pool) -> Result<(Vec<u64>, Vec<usize>), Error> {
    Ok((
        pool.map(task!(args), [1, 2])?,
        pool.starmap(task!(value), [("a".to_owned(), 1)])?,
    ))
}

fn main() {
    assert_eq!(args(1), 2);
}
