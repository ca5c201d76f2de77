use pool_runtime::task;

struct Point {
    x: f64,
    y: f64,
}

#[task]
fn origin(scale: f64) -> Point {
    Point { x: scale, y: 0.0 }
}

fn main() {}
