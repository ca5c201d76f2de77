//! Logging from tasks: `tracing` events and `log` records emitted in the
//! workers show up in this process's subscriber, with the worker's pid, the
//! task and the item's index as fields.
//!
//! Run: `RUST_LOG=info cargo run --release --example logging`
//! (`RUST_LOG=debug` shows the debug events of the tasks too.)

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Run once in every worker.
#[task]
fn connect(url: String) {
    tracing::info!(%url, "worker connected");
}

/// Squares `x`, saying so; item 5 panics.
#[task]
fn square(x: u64) -> u64 {
    tracing::info!(x, "squaring");
    tracing::debug!("shown with RUST_LOG=debug only");
    if x.is_multiple_of(3) {
        log::warn!("{x} is a multiple of 3");
    }
    assert!(x != 5, "five is not allowed");
    x * x
}

// `#[pool_runtime::main]` goes below `#[tokio::main]` in an async program:
// see the crate docs, "Logging from tasks".
#[pool_runtime::main]
fn main() -> Result<(), Error> {
    // The subscriber of this process decides what is shown, for its own
    // events and for those of the workers.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let pool = Pool::builder()
        .processes(2)
        .initializer(task!(connect), "db://example".to_owned())
        .build()?;
    let results: Vec<Result<u64, Error>> = pool.imap(task!(square), 0..8).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    println!("{ok} items ok, {} failed", results.len() - ok);
    Ok(())
}
