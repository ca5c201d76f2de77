// `Task` is sealed: only `#[task]` implements it.
#[derive(Clone, Copy)]
struct Square;

impl pool_runtime::Task for Square {
    const NAME: &'static str = "square";
    const ID: u64 = 1;
    type Args = u64;
    type Output = u64;
    fn call(x: u64) -> u64 {
        x * x
    }
}

fn main() {}
