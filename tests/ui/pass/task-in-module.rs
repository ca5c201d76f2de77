use pool_runtime::prelude::*;

mod math {
    use pool_runtime::task;

    #[task]
    pub fn power(x: u64, n: u32) -> u64 {
        x.pow(n)
    }
}

use math::power;

// Never called: only name resolution and argument types are checked.
#[allow(dead_code)]
fn by_path(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.starmap(task!(math::power), [(2, 3)])
}

#[allow(dead_code)]
fn by_import(pool: &Pool) -> Result<Vec<u64>, Error> {
    pool.starmap(task!(power), [(2, 3)])
}

fn main() {}
