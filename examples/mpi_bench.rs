//! Rank 0's capacity under MPI: how fast one process can feed many
//! workers. Run without a launcher (local worker processes), or under
//! `mpirun`, with or without `POOL_RUNTIME_MPI_LOCAL_WORKERS`:
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_bench
//! target/release/examples/mpi_bench                                 # local workers
//! mpirun -n 17 --oversubscribe target/release/examples/mpi_bench    # 16 worker ranks
//! mpirun -n 17 --oversubscribe -x POOL_RUNTIME_MPI_LOCAL_WORKERS=2 \
//!     target/release/examples/mpi_bench                             # 32 local workers
//! ```
//!
//! Each workload prints one line of `key=value` fields:
//!
//! - `roundtrip`: `apply` of a no-op, one call after another (`us_per_call`);
//! - `tiny`: 200 000 squares with automatic chunks, then with chunk size 1
//!   (`items_per_s`), and what rank 0 spent per item: the CPU time of its
//!   MPI thread `pool-mpi` (`hub_us_per_item`, from the thread's
//!   `schedstat`) and of the whole process (`cpu_us_per_item`);
//! - `sleep`: items that sleep 1, 10 and 100 ms, chunk size 1, enough for
//!   five rounds of every worker: `efficiency` is the ideal time (rounds ×
//!   duration) over the time taken, 1.0 when rank 0 keeps every worker busy.
//!
//! Arguments pick workloads (`roundtrip`, `tiny`, `tiny1`, `sleep`; all by
//! default); `--quick` runs fewer items (a smoke test). With
//! `POOL_RUNTIME_MPI_STATS=1`, rank 0 prints at exit how many MPI messages
//! its MPI thread sent and received. Timings on a shared machine vary:
//! compare runs made at the same time.

use std::time::{Duration, Instant};

use pool_runtime::prelude::*;
use pool_runtime::task;

#[task]
fn noop() {}

#[task]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[task]
fn nap(micros: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(micros));
    micros
}

/// CPU time of this whole process (all threads) so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time so far of this process's thread named `pool-mpi` (rank 0's MPI
/// thread), from its `schedstat` (nanoseconds on a CPU); zero without one.
fn hub_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "pool-mpi" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        return Duration::from_nanos(ns);
    }
    Duration::ZERO
}

/// Runs `work`; returns its wall time, rank 0's MPI-thread CPU time and
/// the process's CPU time.
fn measure<T>(
    work: impl FnOnce() -> Result<T, Error>,
) -> Result<(T, Duration, Duration, Duration), Error> {
    let (hub, cpu, start) = (hub_cpu(), process_cpu(), Instant::now());
    let out = work()?;
    let wall = start.elapsed();
    Ok((out, wall, hub_cpu() - hub, process_cpu() - cpu))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn roundtrip(pool: &Pool, calls: usize) -> Result<(), Error> {
    for _ in 0..calls / 10 {
        pool.apply(task!(noop), ())?;
    }
    let ((), wall, hub, cpu) = measure(|| {
        for _ in 0..calls {
            pool.apply(task!(noop), ())?;
        }
        Ok(())
    })?;
    let n = calls as f64;
    println!(
        "workload=roundtrip calls={calls} us_per_call={:.1} hub_us_per_call={:.1} cpu_us_per_call={:.1}",
        micros(wall) / n,
        micros(hub) / n,
        micros(cpu) / n
    );
    Ok(())
}

fn tiny(pool: &Pool, items: u64, chunksize: Option<usize>) -> Result<(), Error> {
    let run = || match chunksize {
        Some(k) => pool.chunksize(k).map(task!(square), 0..items),
        None => pool.map(task!(square), 0..items),
    };
    run()?; // warm-up: chunk sizes and pace learnt
    let (out, wall, hub, cpu) = measure(run)?;
    let ok = out
        .iter()
        .enumerate()
        .all(|(i, &v)| v == (i as u64).wrapping_mul(i as u64));
    let n = items as f64;
    println!(
        "workload=tiny chunksize={} items={items} items_per_s={:.0} hub_us_per_item={:.2} cpu_us_per_item={:.2} correct={ok}",
        chunksize.map_or_else(|| "auto".to_owned(), |k| k.to_string()),
        n / wall.as_secs_f64(),
        micros(hub) / n,
        micros(cpu) / n
    );
    Ok(())
}

fn sleep(pool: &Pool, ms: u64, rounds: usize) -> Result<(), Error> {
    let workers = pool.processes();
    let items = workers * rounds;
    let (out, wall, hub, _) = measure(|| {
        pool.chunksize(1)
            .map(task!(nap), std::iter::repeat_n(ms * 1000, items))
    })?;
    let ideal = Duration::from_millis(ms) * rounds as u32;
    println!(
        "workload=sleep ms={ms} workers={workers} items={items} wall_ms={:.1} efficiency={:.3} \
         hub_us_per_item={:.1} correct={}",
        wall.as_secs_f64() * 1e3,
        ideal.as_secs_f64() / wall.as_secs_f64(),
        micros(hub) / items as f64,
        out.len() == items
    );
    Ok(())
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (calls, items, items_1, rounds) = if quick {
        (200, 20_000, 2_000, 2)
    } else {
        (2_000, 200_000, 20_000, 5)
    };
    let started = Instant::now();
    let pool = Pool::new()?;
    println!(
        "workers={} mpi_rank={:?} start_ms={:.1}",
        pool.processes(),
        pool_runtime::mpi_rank(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    if wanted("roundtrip") {
        roundtrip(&pool, calls)?;
    }
    if wanted("tiny") {
        tiny(&pool, items, None)?;
    }
    if wanted("tiny1") {
        tiny(&pool, items_1, Some(1))?;
    }
    if wanted("sleep") {
        for ms in [1, 10, 100] {
            sleep(&pool, ms, rounds)?;
        }
    }
    Ok(())
}
