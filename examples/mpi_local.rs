//! One rank per node, every core busy: under an MPI launcher with
//! `POOL_RUNTIME_MPI_LOCAL_WORKERS` set (`auto`: one per CPU the rank may
//! use, or a number), each worker rank runs that many local worker
//! processes and rank 0's pool has them all as its workers. A fault inside
//! a node (a panic, a `kill -9`, a timeout) is one item's `Err`, as with
//! local workers, and the pool goes on.
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_local
//! mpirun -n 3 --oversubscribe -x POOL_RUNTIME_MPI_LOCAL_WORKERS=2 \
//!     target/release/examples/mpi_local            # 2 ranks x 2 local workers
//! srun --mpi=pmix -N 8 --ntasks-per-node=1 --cpus-per-task=64 \
//!     --export=ALL,POOL_RUNTIME_MPI_LOCAL_WORKERS=auto target/release/examples/mpi_local
//! mpirun --map-by ppr:1:node --bind-to none -x POOL_RUNTIME_MPI_LOCAL_WORKERS=auto \
//!     --hostfile hosts target/release/examples/mpi_local
//! ```
//!
//! `auto` counts the CPUs the rank may use: a launcher that binds the rank
//! to one core (`mpirun` does for jobs of 2 ranks or fewer, unless
//! `--bind-to none`) gives it one local worker.
//!
//! An argument picks another program: `kill` (item 5 of 12 kills its own
//! process with `SIGKILL`), `retry` (item 4 kills its process once, and the
//! call retries it once on a fresh worker), `panic` (item 2 panics), `timeout` (item 3
//! never ends; the pool's timeout is 500 ms), `drop` (a pool dropped while
//! every worker is busy, then a new pool), `rankkill` (under MPI only: a task
//! kills its rank's process, which ends the job), `tour` (every kind of call, an
//! initializer, a second pool) and `idle` (the CPU time an idle pool costs,
//! ranks included). Without a launcher the same programs run on local
//! workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pool_runtime::prelude::*;
use pool_runtime::task;

/// Where a task runs: `rank R pid P` under MPI, else `pid P`.
fn place() -> String {
    match pool_runtime::mpi_rank() {
        Some(rank) => format!("rank {rank} pid {}", std::process::id()),
        None => format!("pid {}", std::process::id()),
    }
}

/// Reports where it runs, takes a moment, returns `(i, i * i)`.
#[task]
fn report(i: u64) -> (u64, u64) {
    println!("Item {i} on {}", place());
    std::thread::sleep(Duration::from_millis(50));
    (i, i * i)
}

/// Item 5 kills its own process, as `kill -9` from outside would.
#[task]
fn killed_at_5(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(30));
    if i == 5 {
        println!("Item {i} kills its process on {}", place());
        // SAFETY: signalling this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    i * i
}

/// Item 4 kills its process the first time it runs (a marker file in the
/// directory `dir` remembers it), and succeeds when run again.
#[task]
fn killed_once_at_4(i: u64, dir: String) -> u64 {
    std::thread::sleep(Duration::from_millis(30));
    let marker = std::path::Path::new(&dir).join("item-4-ran");
    if i == 4 && std::fs::create_dir(&marker).is_ok() {
        println!("Item {i} kills its process on {}", place());
        // SAFETY: signalling this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    i * i
}

/// Item 2 panics.
#[task]
fn panics_at_2(i: u64) -> u64 {
    if i == 2 {
        panic!("item {i} refuses on {}", place());
    }
    i * i
}

/// Item 3 never ends.
#[task]
fn hangs_at_3(i: u64) -> u64 {
    if i == 3 {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    i * i
}

/// Item 2 kills its parent: under MPI with local workers, its rank's
/// process (which ends the whole job, as any rank's death does).
#[task]
fn kills_its_rank_at_2(i: u64) -> u64 {
    if i == 2 {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        println!("Item {i} kills its parent process {parent} on {}", place());
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // SAFETY: signalling a process.
        unsafe { libc::kill(parent, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(500));
    i
}

/// Sleeps for `ms` milliseconds.
#[task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
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

/// CPU time (user + system) of process `pid` so far, in milliseconds,
/// from `/proc` (Linux).
fn cpu_ms(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// This worker's place, its CPU time and its parent's (the rank, when it
/// is a local worker of one); sleeps so that each of a few calls lands on
/// another worker.
#[task]
fn cpu_report(_item: u32) -> (String, u64, u32, u64) {
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    (place(), cpu_ms(std::process::id()), parent, cpu_ms(parent))
}

/// Prints each item's outcome: `Item i: ok v` or `Item i: <kind>: message`.
fn print_outcomes(outcomes: &[Result<u64, Error>]) {
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(value) => println!("Item {i}: ok {value}"),
            Err(err) => {
                let kind = match err {
                    Error::WorkerDied { .. } => "WorkerDied",
                    Error::TaskTimeout { .. } => "TaskTimeout",
                    Error::TaskPanicked { .. } => "TaskPanicked",
                    _ => "other",
                };
                println!("Item {i}: {kind}: {err}");
            }
        }
    }
}

fn seed() -> Result<(), Error> {
    let pool = Pool::new()?;
    println!("Workers: {}", pool.processes());
    let out = pool.chunksize(1).map(task!(report), 0..12)?;
    for (i, square) in &out {
        println!("Got result: ({i}, {square})");
    }
    let expected: Vec<(u64, u64)> = (0..12).map(|i| (i, i * i)).collect();
    println!("In order: {}", out == expected);
    Ok(())
}

fn kill() -> Result<(), Error> {
    let pool = Pool::new()?;
    let outcomes: Vec<Result<u64, Error>> =
        pool.chunksize(1).imap(task!(killed_at_5), 0..12).collect();
    print_outcomes(&outcomes);
    // The pool replaced the worker and goes on.
    println!("Pool still works: {:?}", pool.map(task!(square), 0..6)?);
    Ok(())
}

fn retry() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("mpi_local-retry-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|err| Error::InvalidSetting(format!("cannot create {}: {err}", dir.display())))?;
    let pool = Pool::new()?;
    let items: Vec<(u64, String)> = (0..8)
        .map(|i| (i, dir.to_string_lossy().into_owned()))
        .collect();
    let outcomes: Vec<Result<u64, Error>> = pool
        .retries(1)
        .chunksize(1)
        .istarmap(task!(killed_once_at_4), items)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    print_outcomes(&outcomes);
    println!("Pool still works: {:?}", pool.map(task!(square), 0..6)?);
    Ok(())
}

fn panics() -> Result<(), Error> {
    let pool = Pool::new()?;
    let outcomes: Vec<Result<u64, Error>> =
        pool.chunksize(1).imap(task!(panics_at_2), 0..6).collect();
    print_outcomes(&outcomes);
    println!("Pool still works: {:?}", pool.map(task!(square), 0..6)?);
    Ok(())
}

fn timeout() -> Result<(), Error> {
    let pool = Pool::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let outcomes: Vec<Result<u64, Error>> =
        pool.chunksize(1).imap(task!(hangs_at_3), 0..8).collect();
    print_outcomes(&outcomes);
    println!("Pool still works: {:?}", pool.map(task!(square), 0..6)?);
    Ok(())
}

fn drop_busy() -> Result<(), Error> {
    let pool = Pool::new()?;
    let n = pool.processes();
    // Every worker busy for a minute.
    let pending = pool
        .chunksize(1)
        .map_async(task!(sleep_ms), std::iter::repeat_n(60_000, n))?;
    std::thread::sleep(Duration::from_millis(300));
    let start = std::time::Instant::now();
    drop(pool);
    println!(
        "Dropped a busy pool in under 5 s: {}",
        start.elapsed() < Duration::from_secs(5)
    );
    match pending.get() {
        Ok(out) => println!("Unexpected success: {out:?}"),
        Err(Error::Terminated) => println!("Its call: Terminated"),
        Err(err) => println!("Its call: {err}"),
    }
    // The same workers serve the next pool.
    let pool = Pool::new()?;
    println!("Next pool: {:?}", pool.map(task!(square), 0..6)?);
    Ok(())
}

fn kill_rank() -> Result<(), Error> {
    if pool_runtime::mpi_rank().is_none() {
        // Without MPI the parent would be this very program.
        eprintln!("rankkill runs only under an MPI launcher");
        std::process::exit(2);
    }
    let pool = Pool::new()?;
    match pool.chunksize(1).map(task!(kills_its_rank_at_2), 0..8) {
        Ok(results) => println!("Unexpected success: {results:?}"),
        Err(err) => println!("Got error: {err}"),
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
    drop(pool);
    let pool = Pool::builder()
        .processes(3)
        .initializer(task!(set_offset), 100)
        .build()?;
    println!(
        "Second pool with an initializer: {:?}",
        pool.map(task!(offset_by), [1, 2, 3])?
    );
    Ok(())
}

fn idle() -> Result<(), Error> {
    let pool = Pool::new()?;
    let n = pool.processes() as u32;
    let before = pool.chunksize(1).map(task!(cpu_report), 0..n)?;
    let main_before = cpu_ms(std::process::id());
    std::thread::sleep(Duration::from_secs(2));
    let main_used = cpu_ms(std::process::id()) - main_before;
    let after = pool.chunksize(1).map(task!(cpu_report), 0..n)?;
    println!("CPU used while idle for 2 s: main {main_used} ms");
    let mut parents = Vec::new();
    for start in &before {
        // One item per worker both times (least-loaded dispatch), not
        // necessarily in the same order: pair them by worker.
        let Some(end) = after.iter().find(|end| end.0 == start.0) else {
            continue;
        };
        println!(
            "CPU used while idle for 2 s: worker {} {} ms",
            start.0,
            end.1.saturating_sub(start.1)
        );
        // Under MPI a worker's parent is its rank's process.
        if pool_runtime::mpi_rank().is_some() && !parents.contains(&start.2) {
            parents.push(start.2);
            println!(
                "CPU used while idle for 2 s: its rank's process {} {} ms",
                start.2,
                end.3.saturating_sub(start.3)
            );
        }
    }
    Ok(())
}

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        None => seed(),
        Some("kill") => kill(),
        Some("retry") => retry(),
        Some("panic") => panics(),
        Some("timeout") => timeout(),
        Some("tour") => tour(),
        Some("drop") => drop_busy(),
        Some("rankkill") => kill_rank(),
        Some("idle") => idle(),
        Some(other) => {
            eprintln!(
                "unknown program {other:?}: expected kill, retry, panic, timeout, drop, rankkill, tour or idle"
            );
            std::process::exit(2);
        }
    }
}
