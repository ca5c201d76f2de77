use pool_runtime::task;

#[task(retry = 3)]
fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

fn main() {}
