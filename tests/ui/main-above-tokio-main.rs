#[pool_runtime::main]
#[tokio::main(flavor = "current_thread")]
async fn main() {}
