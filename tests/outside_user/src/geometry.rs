use pool_runtime::task;

/// A rectangle: the user's own serde type as a task argument.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub w: u64,
    pub h: u64,
}

/// Area of a rectangle.
#[task]
pub fn area(r: Rect) -> u64 {
    r.w * r.h
}
