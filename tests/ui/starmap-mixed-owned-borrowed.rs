use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn tag(data: &[u8], label: &str) -> usize {
    data.len() + label.len()
}

// Borrowed or owned, but all of one kind: `(Vec<u8>, &str)` is neither.
fn f(pool: &Pool) -> Result<Vec<usize>, Error> {
    pool.starmap(task!(tag), [(vec![1u8], "a")])
}

fn main() {}
