//! A user program with tasks in two modules. Prints `OK` when every check
//! holds; exits non-zero with a message otherwise.

mod geometry;
mod numbers;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// A task in the crate root too.
#[task]
fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond { Ok(()) } else { Err(format!("check failed: {what}")) }
}

fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn run() -> Result<(), String> {
    let pool = Pool::builder().processes(2).build().map_err(|e| e.to_string())?;

    let items: Vec<(u64, u64)> = (0..10_000u64).map(|i| (i, i + 1)).collect();
    let out = pool.starmap(task!(numbers::mul), items.clone()).map_err(|e| e.to_string())?;
    check(out == items.iter().map(|&(a, b)| a * b).collect::<Vec<_>>(), "10 000 products in order")?;

    let areas = pool.map(task!(geometry::area), [geometry::Rect { w: 2, h: 3 }]).map_err(|e| e.to_string())?;
    check(areas == [6], "a serde struct argument from another module")?;
    check(pool.apply(task!(greet), "you").map_err(|e| e.to_string())? == "hello you", "a borrowed &str argument")?;

    let err = pool.starmap(task!(numbers::fragile), (0..10_000u64).map(|i| (i, 1234, false))).err();
    check(matches!(err, Some(Error::TaskPanicked { index: 1234, .. })), &format!("a panic is an Err: {err:?}"))?;

    let err = pool.starmap(task!(numbers::fragile), (0..10_000u64).map(|i| (i, 4321, true))).err();
    check(
        matches!(err, Some(Error::WorkerDied { index: 4321, cause: pool_runtime::ExitCause::Signal(9), .. })),
        &format!("a SIGKILLed worker is an Err: {err:?}"),
    )?;

    let out = pool.starmap(task!(numbers::mul), items.clone()).map_err(|e| e.to_string())?;
    check(out.len() == 10_000 && out[9_999] == 9_999 * 10_000, "the same pool works afterwards")?;

    let pids = pool.worker_pids();
    drop(pool);
    check(pids.iter().all(|&p| !exists(p)), &format!("no worker left after drop: {pids:?}"))?;
    Ok(())
}

#[pool_runtime::main]
fn main() {
    match run() {
        Ok(()) => println!("OK"),
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(1);
        }
    }
}
