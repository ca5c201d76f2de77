#[pool_runtime::main(threads = 4)]
fn main() {}
