//! A large read-only array shared once with every worker (joblib's
//! memmapping, `ray.put`): 1 GiB of `f64` goes into one sealed memfd, and
//! 1 000 tasks each sum a slice of it, reading the pages in place.
//!
//! It prints how long sharing took (beside two plain copies of the same
//! bytes in this process), checks the total against the parent's own sum,
//! and shows each worker's memory (Pss and Rss from
//! `/proc/<pid>/smaps_rollup`) after it read one page, after the 1 000
//! slices, and after every worker read the whole array: Pss counts a page
//! shared by k processes as 1/k, so the workers' Pss adds up to about one
//! copy, never one per worker.
//!
//! Run: `cargo run --release --example shared_data` (1 GiB), or with a
//! size in MiB: `SHARED_DATA_MIB=64 cargo run --release --example shared_data`
//! (or `... --example shared_data -- 64`).

use std::time::Instant;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// How many tasks split the array.
const TASKS: usize = 1_000;

/// The sum of `data[start..end]`.
#[task]
fn sum_slice(data: SharedSlice<f64>, start: usize, end: usize) -> f64 {
    data[start..end].iter().sum()
}

/// Reads one element (one page) of `data`.
#[task]
fn first(data: SharedSlice<f64>) -> f64 {
    data.first().copied().unwrap_or(0.0)
}

/// `(Pss, Rss)` of process `pid` in KiB, from `/proc/<pid>/smaps_rollup`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// Prints every worker's Pss and Rss growth since `base`, in MiB.
fn report(pool: &Pool, stage: &str, base: &[(u32, (u64, u64))]) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let growth: Vec<String> = pool
        .worker_pids()
        .into_iter()
        .map(|pid| {
            let (pss, rss) = memory_kib(pid);
            let (pss0, rss0) = base
                .iter()
                .find(|(p, _)| *p == pid)
                .map_or((0, 0), |&(_, m)| m);
            format!(
                "worker {pid}: Pss +{:.1} MiB, Rss +{:.1} MiB",
                mib(pss.saturating_sub(pss0)),
                mib(rss.saturating_sub(rss0))
            )
        })
        .collect();
    println!("{stage:<38} {}", growth.join("; "));
}

fn size_mib() -> usize {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SHARED_DATA_MIB").ok())
        .and_then(|s| s.parse().ok())
        .filter(|&mib| mib > 0)
        .unwrap_or(1024)
}

#[pool_runtime::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib = size_mib();
    let len = (mib << 20) / std::mem::size_of::<f64>();
    let pool = Pool::new()?;
    println!(
        "{} workers, an array of {len} f64 ({mib} MiB)",
        pool.processes()
    );
    // Small whole numbers: every partial sum is exact, in any order.
    let data: Vec<f64> = (0..len).map(|i| (i % 1024) as f64).collect();
    let expected: f64 = data.iter().sum();

    // Two plain copies of the same bytes, for scale: into fresh memory (as
    // `to_vec` does) and into memory already touched.
    let start = Instant::now();
    let copy = data.to_vec();
    let fresh_copy = start.elapsed();
    drop(copy);
    let mut warm = vec![1.0f64; len];
    let start = Instant::now();
    warm.copy_from_slice(&data);
    let warm_copy = start.elapsed();
    drop(warm);

    let start = Instant::now();
    let shared = pool.share_slice(&data)?;
    let share_time = start.elapsed();
    drop(data); // the parent's copy is no longer needed
    println!(
        "share_slice: {share_time:.2?} (a copy into fresh memory: {fresh_copy:.2?}; into touched memory: {warm_copy:.2?})"
    );

    let base: Vec<(u32, (u64, u64))> = pool
        .worker_pids()
        .into_iter()
        .map(|pid| (pid, memory_kib(pid)))
        .collect();
    // One item per worker, at least, each reading one page.
    let touches = vec![shared.clone(); 2 * pool.processes()];
    pool.chunksize(1).map(task!(first), touches)?;
    report(&pool, "after each worker read one page:", &base);

    let step = len.div_ceil(TASKS);
    let slices = (0..TASKS).map(|i| {
        let start = (i * step).min(len);
        (shared.clone(), start, (start + step).min(len))
    });
    let start = Instant::now();
    let total: f64 = pool.starmap(task!(sum_slice), slices)?.iter().sum();
    let took = start.elapsed();
    if total != expected {
        return Err(format!("the tasks summed {total}, the parent {expected}").into());
    }
    println!("{TASKS} tasks summed {total} in {took:.2?}: sum ok");
    report(&pool, "after the 1000 slices:", &base);

    // Every worker reads the whole array once more.
    let whole = vec![(shared.clone(), 0, len); pool.processes()];
    let sums = pool.chunksize(1).starmap(task!(sum_slice), whole)?;
    if sums.iter().any(|&s| s != expected) {
        return Err(format!("a whole-array sum differs: {sums:?}").into());
    }
    report(&pool, "after each worker read it all:", &base);
    Ok(())
}
