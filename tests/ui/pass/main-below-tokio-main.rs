// `#[pool_runtime::main]` below an async runtime's attribute: `init()`
// comes first in the plain `fn main` that `#[tokio::main]` makes.
#[tokio::main(flavor = "current_thread")]
#[pool_runtime::main]
async fn main() {}
