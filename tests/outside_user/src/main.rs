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

    // Once the fork server runs, a second pool's workers are its forks
    // (the server is a plain single-threaded program here, not a test).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fork_server_runs() {
        check(std::time::Instant::now() < deadline, "a fork server within 20 s")?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pool = Pool::builder().processes(2).build().map_err(|e| e.to_string())?;
    let pids = pool.worker_pids();
    check(pids.iter().all(|&p| forked(p)), &format!("forked workers: {pids:?}"))?;
    let out = pool.starmap(task!(numbers::mul), items.clone()).map_err(|e| e.to_string())?;
    check(out.len() == 10_000 && out[9_999] == 9_999 * 10_000, "forked workers compute")?;
    let err = pool.starmap(task!(numbers::fragile), (0..10_000u64).map(|i| (i, 4321, true))).err();
    check(
        matches!(err, Some(Error::WorkerDied { index: 4321, cause: pool_runtime::ExitCause::Signal(9), .. })),
        &format!("a SIGKILLed forked worker is an Err with its signal: {err:?}"),
    )?;
    let pids = pool.worker_pids();
    drop(pool);
    check(pids.iter().all(|&p| !exists(p)), &format!("no forked worker left after drop: {pids:?}"))?;
    Ok(())
}

/// Whether a child of this process is the fork server (its thread is
/// named `pool-forkserver`).
fn fork_server_runs() -> bool {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
        let dir = entry.path();
        let parent = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_owned()));
        parent.as_deref() == Some(me.as_str())
            && std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == "pool-forkserver")
    })
}

/// Whether `pid` was forked by the fork server: its original environment
/// block is the server's.
fn forked(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e.starts_with(b"POOL_RUNTIME_FORKSERVER=")))
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
