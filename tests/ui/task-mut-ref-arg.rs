use pool_runtime::task;

#[task]
fn push_one(xs: &mut Vec<u64>) {
    xs.push(1);
}

fn main() {}
