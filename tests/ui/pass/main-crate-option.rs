// `#[main]` and `#[task]` take `crate = path` when pool-runtime is
// reached under another name (here a re-export in a module of this crate).
mod reexport {
    pub use pool_runtime as pool;
}

use reexport::pool::prelude::*;

#[reexport::pool::task(crate = crate::reexport::pool)]
fn square(x: u64) -> u64 {
    x * x
}

#[allow(dead_code)]
fn f(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.map(task!(square), [2, 3])
}

#[reexport::pool::main(crate = crate::reexport::pool)]
fn main() {
    assert_eq!(square(3), 9);
}
