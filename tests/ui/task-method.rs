use pool_runtime::task;

struct Counter {
    step: u64,
}

impl Counter {
    #[task]
    fn advance(&self, x: u64) -> u64 {
        x + self.step
    }
}

fn main() {}
