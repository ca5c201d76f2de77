//! The seed program on one machine or on many: the same binary runs local
//! worker processes, or under `mpirun` uses ranks 1..N-1 as its workers
//! while rank 0 runs `main`. Each task says where it ran.
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_starmap
//! target/release/examples/mpi_starmap                       # local workers
//! mpirun -n 3 --oversubscribe target/release/examples/mpi_starmap   # ranks 1 and 2
//! ```
//!
//! An argument picks another program: `tour` (every kind of call, an
//! initializer, two pools one after the other), `panic` (a task panics),
//! `abort` (a task aborts its process: under MPI that ends the job), `exit`
//! (a task calls `std::process::exit`: the same), `big`
//! (an argument above MPI's 2 GiB message limit), `bytes` (large byte
//! results, which arrive several to a message) and `idle` (the CPU time
//! an idle pool costs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Where a task runs: `rank N` under MPI, else `process PID`.
fn place() -> String {
    match pool_runtime::mpi_rank() {
        Some(rank) => format!("rank {rank}"),
        None => format!("process {}", std::process::id()),
    }
}

/// The seed's task: report, sleep, return the arguments.
#[task]
fn task(identifier: u32, value: f64) -> (u32, f64) {
    println!("Task {identifier} executing with {value} on {}", place());
    std::thread::sleep(Duration::from_secs_f64(value));
    (identifier, value)
}

/// Like `task`, but item 3 panics.
#[task]
fn fragile(identifier: u32, value: f64) -> (u32, f64) {
    if identifier == 3 {
        panic!("task {identifier} refuses to run on {}", place());
    }
    (identifier, value)
}

/// Item 2 aborts its whole process.
#[task]
fn doomed(identifier: u32) -> u32 {
    if identifier == 2 {
        eprintln!("Task {identifier} aborting on {}", place());
        std::process::abort();
    }
    std::thread::sleep(Duration::from_millis(200));
    identifier
}

/// Item 2 ends its process with `std::process::exit(3)`.
#[task]
fn leave(identifier: u32) -> u32 {
    if identifier == 2 {
        std::process::exit(3);
    }
    std::thread::sleep(Duration::from_millis(200));
    identifier
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

#[task]
fn add(x: u64, y: u64) -> u64 {
    x + y
}

static OFFSET: AtomicU64 = AtomicU64::new(0);

/// The initializer: run once in every worker before its first task.
#[task]
fn set_offset(offset: u64) {
    OFFSET.store(offset, Ordering::Relaxed);
}

#[task]
fn offset_by(x: u64) -> u64 {
    x + OFFSET.load(Ordering::Relaxed)
}

/// CPU time this process has used so far, in milliseconds.
fn cpu_ms() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Where this worker is and the CPU time it used so far; sleeps a little so
/// that each of a few calls lands on another worker.
#[task]
fn cpu_report(_item: u32) -> (String, u64) {
    std::thread::sleep(Duration::from_millis(100));
    (place(), cpu_ms())
}

/// Length and byte sum of a large argument.
#[task]
fn measure(data: Vec<u8>) -> (u64, u64) {
    let sum = data.iter().map(|&b| u64::from(b)).sum();
    (data.len() as u64, sum)
}

fn seed() -> Result<(), Error> {
    let pool = Pool::new()?;
    let items: Vec<(u32, f64)> = (0..10).map(|i| (i, fastrand::f64())).collect();
    for result in pool.starmap(task!(task), items)? {
        println!("Got result: {result:?}");
    }
    Ok(())
}

fn tour() -> Result<(), Error> {
    let pool = Pool::new()?;
    println!("Workers: {}", pool.processes());
    println!("Map: {:?}", pool.map(task!(square), 1..=5)?);
    println!("Starmap: {:?}", pool.starmap(task!(add), [(1, 2), (3, 4)])?);
    let squares = pool.chunksize(7).map(task!(square), 0..1000)?;
    let expected: Vec<u64> = (0..1000).map(|x| x * x).collect();
    println!("Chunked map of 1000 in order: {}", squares == expected);
    let later = pool.starmap_async(task!(add), [(10, 1), (20, 2)])?;
    println!("Apply: {}", pool.apply(task!(square), 12)?);
    println!("Async: {:?}", later.get()?);
    let sum: u64 = pool
        .imap(task!(square), 0..100)
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .sum();
    println!("Imap sum: {sum}");
    let mut unordered: Vec<u64> = pool
        .imap_unordered(task!(square), 0..10)
        .collect::<Result<_, _>>()?;
    unordered.sort_unstable();
    println!("Imap unordered: {unordered:?}");
    drop(pool);
    // A second pool after the first: the ranks serve it in turn.
    let pool = Pool::builder()
        .processes(1)
        .initializer(task!(set_offset), 100)
        .build()?;
    println!(
        "Second pool with an initializer: {:?}",
        pool.map(task!(offset_by), [1, 2, 3])?
    );
    Ok(())
}

fn panics() -> Result<(), Error> {
    let pool = Pool::new()?;
    let items: Vec<(u32, f64)> = (0..6).map(|i| (i, f64::from(i) / 10.0)).collect();
    match pool.starmap(task!(fragile), items) {
        Ok(results) => println!("Unexpected success: {results:?}"),
        Err(err) => println!("Got error: {err}"),
    }
    println!("Pool still works: {:?}", pool.map(task!(square), [2, 3])?);
    Ok(())
}

fn abort() -> Result<(), Error> {
    let pool = Pool::new()?;
    match pool.map(task!(doomed), 0..4) {
        Ok(results) => println!("Unexpected success: {results:?}"),
        Err(err) => println!("Got error: {err}"),
    }
    Ok(())
}

fn idle() -> Result<(), Error> {
    let pool = Pool::new()?;
    let n = pool.processes() as u32;
    let before = pool.map(task!(cpu_report), 0..n)?;
    let main_before = cpu_ms();
    std::thread::sleep(Duration::from_secs(2));
    let main_used = cpu_ms() - main_before;
    let after = pool.map(task!(cpu_report), 0..n)?;
    println!("CPU used while idle for 2 s: main {main_used} ms");
    for (place, start) in &before {
        // The pool's least-loaded dispatch sends one item to each worker,
        // not necessarily in the same order both times: pair them by place.
        let Some((_, end)) = after.iter().find(|(other, _)| other == place) else {
            continue;
        };
        println!(
            "CPU used while idle for 2 s: {place} {} ms",
            end.saturating_sub(*start)
        );
    }
    Ok(())
}

fn exit() -> Result<(), Error> {
    let pool = Pool::new()?;
    match pool.map(task!(leave), 0..4) {
        Ok(results) => println!("Unexpected success: {results:?}"),
        Err(err) => println!("Got error: {err}"),
    }
    Ok(())
}

fn big() -> Result<(), Error> {
    // 2 GiB + 1 MiB: above what one MPI message can carry.
    let len = (2usize << 30) + (1 << 20);
    let pool = Pool::builder()
        .processes(1)
        .max_frame_size(3 << 30)
        .build()?;
    let data = vec![1u8; len];
    let (got_len, sum) = pool.apply(task!(measure), data)?;
    println!(
        "Big argument: {got_len} bytes, sum {sum}, intact: {}",
        got_len == len as u64 && sum == len as u64
    );
    Ok(())
}

/// `len` bytes that depend on `seed` (the bytes program).
#[task]
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 ^ seed) as u8).collect()
}

fn bytes() -> Result<(), Error> {
    // Each worker rank gets small and large results in turn (two ranks,
    // one item at a time): it sends a small one and the large one after it
    // in one message, which rank 0 splits into frames.
    let items: Vec<(u64, usize)> = (0..40u64)
        .map(|i| (i, if i % 4 < 2 { 70 << 10 } else { 6 << 20 }))
        .collect();
    let out = pool_runtime::Pool::new()?
        .call()
        .chunksize(1)
        .starmap(task!(pattern), items.clone())?;
    let exact = out.len() == items.len()
        && out.iter().zip(&items).all(|(v, &(seed, len))| {
            v.len() == len
                && v.iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i as u64 ^ seed) as u8)
        });
    // A result keeps no more memory than its own bytes and a page.
    let snug = out.iter().all(|v| v.capacity() <= v.len() + 4096);
    println!("Byte results: {}, exact: {exact}, snug: {snug}", out.len());
    Ok(())
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        None => seed(),
        Some("tour") => tour(),
        Some("panic") => panics(),
        Some("abort") => abort(),
        Some("exit") => exit(),
        Some("big") => big(),
        Some("idle") => idle(),
        Some("bytes") => bytes(),
        Some(other) => {
            eprintln!(
                "unknown program {other:?}: expected tour, panic, abort, exit, big, bytes or idle"
            );
            std::process::exit(2);
        }
    }
}
