//! The procspawn column of the side-by-side benchmark: the same workloads
//! as `examples/bench.rs` (pool-runtime) and `bench/python_pool.py`
//! (Python's `multiprocessing.Pool`), run on `procspawn::Pool`, the crate
//! that runs functions in child processes of a re-executed binary.
//!
//! Run all three sides with `bash bench/run.sh`; see `BENCHMARKS.md`. This
//! binary speaks the same command line and prints the same JSON lines (one
//! per metric on stdout, `"impl":"procspawn"`; a summary on stderr):
//!
//! ```text
//! cargo build --release --example bench_procspawn
//! target/release/examples/bench_procspawn start --procs 2
//! target/release/examples/bench_procspawn start-cold --procs 2
//! target/release/examples/bench_procspawn roundtrip --procs 2 [--calls 10000]
//! target/release/examples/bench_procspawn tiny --procs 2 [--items 1000000] [--chunksize N]
//! target/release/examples/bench_procspawn payload [--count 64] [--mib 16]
//! target/release/examples/bench_procspawn cpu [--tasks 40] [--ms 50]
//! ```
//!
//! Common options: `--reps N` (default 5) timed repetitions after
//! `--warmup N` (default 1) untimed ones at a tenth of the size. Without
//! arguments it runs every workload once at a tiny size and checks the
//! results (a smoke test of a second or so).
//!
//! How procspawn is used, and where it differs:
//!
//! - A call is `pool.spawn(args, f)` and `handle.join()`. procspawn has no
//!   `map` and no chunking: `tiny` without `--chunksize` sends the items in
//!   chunks made here, of the size Python's `map` picks by default
//!   (`ceil(items / (4 · procs))`, 125 000 for a million items on two
//!   workers), one `Vec<(u64, u32)>` per call; `--chunksize N` sends chunks
//!   of `N`; `--chunksize 1` sends each item as its own call.
//! - Many calls are fed by a thread of their own while this one joins the
//!   handles in order, at most 64 calls ahead: a call's arguments are
//!   written when it is spawned, and a large argument blocks `spawn` until
//!   a worker reads it, while a worker's result waits for its `join`; one
//!   thread doing both would stall.
//! - `payload` sends each `Vec<u8>` as plain serde data (one element at a
//!   time through the serializer, `mb_per_s`) and as a
//!   `procspawn::serde::Shmem` (a memfd shared with the worker,
//!   `mb_per_s_shmem`); the copy of the `Vec<u8>` into the shared memory is
//!   timed. `Pool::spawn` serializes its arguments outside procspawn's "IPC
//!   mode", so a `Shmem` would travel as plain bytes and then fail to
//!   decode in the worker; the spawn is wrapped in
//!   `procspawn::serde::with_ipc_mode` here to get the shared-memory path.
//! - No `raw`, `lazy` or `sweep`: those rows have no procspawn counterpart
//!   (see `BENCHMARKS.md`).
//!
//! It is a `--release` example, never a test: nothing runs it but the
//! commands above (and CI, without arguments).

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procspawn::serde::{Shmem, with_ipc_mode};
use procspawn::{JoinHandle, Pool};

// ----- tasks (the same bodies as in examples/bench.rs) -----

/// Does nothing: the round-trip and start-up probe.
fn noop(_: ()) {}

/// `x` to the power `n` (the tiny task), one item per call.
fn power((x, n): (u64, u32)) -> u64 {
    x.pow(n)
}

/// The tiny task over a chunk of items.
fn power_chunk(items: Vec<(u64, u32)>) -> Vec<u64> {
    items.into_iter().map(|(x, n)| x.pow(n)).collect()
}

/// The length of a payload (the payload task), sent as plain serde data.
fn length(data: Vec<u8>) -> u64 {
    data.len() as u64
}

/// The length of a payload sent through shared memory.
fn length_shmem(data: Shmem) -> u64 {
    data.len() as u64
}

/// `iters` rounds of an LCG with an xor-shift: pure computation.
fn spin(iters: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..black_box(iters) {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 29;
    }
    x
}

// ----- the shared data: item i is (x, n) = ((i * 7919) % 1000, i % 4) -----

fn tiny_items(count: usize) -> Vec<(u64, u32)> {
    (0..count as u64)
        .map(|i| ((i * 7919) % 1000, (i % 4) as u32))
        .collect()
}

// ----- command line -----

struct Opts {
    workload: String,
    reps: usize,
    warmup: usize,
    procs: usize,
    calls: usize,
    items: usize,
    chunksize: Option<usize>,
    count: usize,
    mib: usize,
    tasks: usize,
    ms: f64,
}

impl Opts {
    fn new(workload: &str) -> Opts {
        Opts {
            workload: workload.to_owned(),
            reps: 5,
            warmup: 1,
            procs: 2,
            calls: 10_000,
            items: 1_000_000,
            chunksize: None,
            count: 64,
            mib: 16,
            tasks: 40,
            ms: 50.0,
        }
    }
}

/// The options, or `None` without arguments (the smoke test).
fn parse() -> Result<Option<Opts>, String> {
    let mut args = std::env::args().skip(1);
    let Some(workload) = args.next() else {
        return Ok(None);
    };
    let mut opts = Opts::new(&workload);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || -> Result<usize, String> {
            value
                .parse()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--reps" => opts.reps = num()?,
            "--warmup" => opts.warmup = num()?,
            "--procs" => opts.procs = num()?,
            "--calls" => opts.calls = num()?,
            "--items" => opts.items = num()?,
            "--chunksize" => opts.chunksize = Some(num()?),
            "--count" => opts.count = num()?,
            "--mib" => opts.mib = num()?,
            "--tasks" => opts.tasks = num()?,
            "--ms" => {
                opts.ms = value
                    .parse()
                    .map_err(|_| format!("--ms: not a number: {value}"))?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Some(opts))
}

// ----- output -----

/// Prints one metric as a JSON line (stdout) and a summary (stderr).
fn emit(
    metric: &str,
    unit: &str,
    higher_is_better: bool,
    samples: &[f64],
    extra: &[(&str, String)],
) {
    let mut line = format!(
        "{{\"impl\":\"procspawn\",\"metric\":\"{metric}\",\"unit\":\"{unit}\",\"higher_is_better\":{higher_is_better},\"samples\":["
    );
    for (i, s) in samples.iter().enumerate() {
        let _ = write!(line, "{}{s:.6}", if i == 0 { "" } else { "," });
    }
    line.push(']');
    for (key, value) in extra {
        let _ = write!(line, ",\"{key}\":{value}");
    }
    line.push('}');
    println!("{line}");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
        eprintln!(
            "procspawn {metric:<23} median {:>14.3} {unit:<8} min {min:.3} max {max:.3}",
            sorted[sorted.len() / 2]
        );
    }
}

/// A JSON string value for `emit`'s extra fields.
fn json_str(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `warmup` untimed repetitions of `f` at a tenth of the size `full`,
/// then `reps` timed ones at the full size. `f(size)` returns the duration
/// to count (it may exclude its own setup).
fn repeat(
    opts: &Opts,
    full: usize,
    mut f: impl FnMut(usize) -> Result<Duration, String>,
) -> Result<Vec<Duration>, String> {
    for _ in 0..opts.warmup {
        f((full / 10).max(1))?;
    }
    (0..opts.reps).map(|_| f(full)).collect()
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("benchmark self-check failed: {what}"))
    }
}

// ----- procspawn -----

fn new_pool(procs: usize) -> Result<Pool, String> {
    Pool::new(procs).map_err(|e| format!("procspawn pool of {procs}: {e}"))
}

fn join<R: serde::Serialize + serde::de::DeserializeOwned>(
    handle: JoinHandle<R>,
) -> Result<R, String> {
    handle
        .join()
        .map_err(|e| format!("procspawn call failed: {e}"))
}

/// How many calls the feeding thread may be ahead of the joins.
const AHEAD: usize = 64;

/// Spawns `f` on every input from a thread of its own, at most [`AHEAD`]
/// calls ahead, while this thread joins the handles in order and hands
/// each result to `each`. `spawn` is `Pool::spawn` or a wrapper of it.
fn pipelined<A, R>(
    inputs: impl Iterator<Item = A> + Send,
    spawn: impl Fn(A) -> JoinHandle<R> + Send,
    mut each: impl FnMut(R),
) -> Result<(), String>
where
    R: serde::Serialize + serde::de::DeserializeOwned + Send,
{
    let (tx, rx) = mpsc::sync_channel::<JoinHandle<R>>(AHEAD);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for input in inputs {
                if tx.send(spawn(input)).is_err() {
                    break; // the joins stopped on an error
                }
            }
        });
        for handle in rx {
            each(join(handle)?);
        }
        Ok(())
    })
}

// ----- /proc -----

/// A `kB` field of a /proc file (`VmRSS` of `status`, `Pss` of `smaps_rollup`).
fn proc_kb(pid: u32, file: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The child processes of this process (any of its threads): procspawn
/// does not tell its pool's worker pids.
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

// ----- workloads -----

/// Build a pool and get the first result of a trivial task; then the
/// resident memory of its (now idle) workers.
fn start(opts: &Opts) -> Result<(), String> {
    let (mut times, mut rss, mut pss) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..opts.warmup + opts.reps {
        let t0 = Instant::now();
        let pool = new_pool(opts.procs)?;
        join(pool.spawn((), noop))?;
        let elapsed = t0.elapsed();
        std::thread::sleep(Duration::from_millis(50)); // let the workers settle
        let pids = children();
        check(pids.len() == opts.procs, "worker pids")?;
        let r: Vec<f64> = pids
            .iter()
            .filter_map(|&p| proc_kb(p, "status", "VmRSS"))
            .collect();
        let s: Vec<f64> = pids
            .iter()
            .filter_map(|&p| proc_kb(p, "smaps_rollup", "Pss"))
            .collect();
        drop(pool); // kills and reaps the workers
        if rep >= opts.warmup {
            times.push(elapsed.as_secs_f64() * 1e3);
            rss.push(mean(&r));
            pss.push(mean(&s));
        }
    }
    let parent = proc_kb(std::process::id(), "status", "VmRSS").unwrap_or(0.0);
    emit("start_ms", "ms", false, &times, &[]);
    emit(
        "idle_worker_rss_kb",
        "kB",
        false,
        &rss,
        &[("parent_rss_kb", format!("{parent}"))],
    );
    emit("idle_worker_pss_kb", "kB", false, &pss, &[]);
    Ok(())
}

/// The first pool of a process: each repetition starts this binary afresh
/// (`start-once`), which times building a pool and getting the first
/// result.
fn start_cold(opts: &Opts) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut times = Vec::new();
    for rep in 0..opts.warmup + opts.reps {
        let out = std::process::Command::new(&exe)
            .args(["start-once", "--procs", &opts.procs.to_string()])
            .output()
            .map_err(|e| format!("start-once: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ms: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("start-once ms "))
            .and_then(|v| v.trim().parse().ok());
        let Some(ms) = ms.filter(|_| out.status.success()) else {
            return Err(format!(
                "start-once failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        };
        if rep >= opts.warmup {
            times.push(ms);
        }
    }
    emit("start_cold_ms", "ms", false, &times, &[]);
    Ok(())
}

/// One repetition of [`start_cold`], in a fresh process.
fn start_once(opts: &Opts) -> Result<(), String> {
    let t0 = Instant::now();
    let pool = new_pool(opts.procs)?;
    join(pool.spawn((), noop))?;
    let elapsed = t0.elapsed();
    drop(pool);
    println!("start-once ms {}", elapsed.as_secs_f64() * 1e3);
    Ok(())
}

/// `calls` sequential calls of a no-op, each joined before the next.
fn roundtrip(opts: &Opts) -> Result<(), String> {
    let pool = new_pool(opts.procs)?;
    let times = repeat(opts, opts.calls, |calls| {
        let t0 = Instant::now();
        for _ in 0..calls {
            join(pool.spawn((), noop))?;
        }
        Ok(t0.elapsed())
    })?;
    let us: Vec<f64> = times
        .iter()
        .map(|t| t.as_secs_f64() * 1e6 / opts.calls as f64)
        .collect();
    emit("roundtrip_us", "us", false, &us, &[]);
    Ok(())
}

/// The items of one call in the tiny workload: Python's default chunk
/// size for `map` without `--chunksize`.
fn tiny_chunk(opts: &Opts) -> usize {
    opts.chunksize
        .unwrap_or_else(|| opts.items.div_ceil(4 * opts.procs.max(1)))
        .max(1)
}

/// `power` over `items` tiny items: one call per item at chunk size 1,
/// else one call per chunk (procspawn has no chunking of its own).
fn tiny(opts: &Opts) -> Result<(), String> {
    let items = tiny_items(opts.items);
    let expected = items
        .iter()
        .map(|&(x, n)| x.pow(n))
        .fold(0, u64::wrapping_add);
    let chunk = tiny_chunk(opts);
    let pool = new_pool(opts.procs)?;
    let times = repeat(opts, opts.items, |n| {
        let input = &items[..n];
        let (mut count, mut sum) = (0usize, 0u64);
        let t0 = Instant::now();
        if chunk == 1 {
            pipelined(
                input.iter().copied(),
                |item| pool.spawn(item, power),
                |r| {
                    count += 1;
                    sum = sum.wrapping_add(r);
                },
            )?;
        } else {
            pipelined(
                input.chunks(chunk),
                |c| pool.spawn(c.to_vec(), power_chunk),
                |out| {
                    count += out.len();
                    sum = out.iter().copied().fold(sum, u64::wrapping_add);
                },
            )?;
        }
        let elapsed = t0.elapsed();
        check(count == n, "result count")?;
        if n == items.len() {
            check(sum == expected, "result sum")?;
        }
        Ok(elapsed)
    })?;
    let rate: Vec<f64> = times
        .iter()
        .map(|t| opts.items as f64 / t.as_secs_f64())
        .collect();
    let how = if chunk == 1 {
        "one call per item".to_owned()
    } else {
        format!("chunks of {chunk} items made by the caller, one call each")
    };
    emit(
        "items_per_s",
        "items/s",
        true,
        &rate,
        &[("calls", json_str(&how))],
    );
    Ok(())
}

/// `length` over `count` distinct `Vec<u8>` of `mib` MiB each, sent as
/// plain serde data and as `Shmem`, alternating in every repetition.
fn payload(opts: &Opts) -> Result<(), String> {
    let size = opts.mib << 20;
    let source: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let pool = new_pool(opts.procs)?;
    // The inputs are moved into the calls: make fresh ones, untimed.
    let inputs = |count: usize| -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut v = source.clone();
                v[0] = i as u8;
                v
            })
            .collect()
    };
    let run = |count: usize, shmem: bool| -> Result<Duration, String> {
        let data = inputs(count);
        let mut lengths = Vec::with_capacity(count);
        let t0 = Instant::now();
        if shmem {
            pipelined(
                data.into_iter(),
                |v| with_ipc_mode(|| pool.spawn(Shmem::from_bytes(&v), length_shmem)),
                |n| lengths.push(n),
            )?;
        } else {
            pipelined(
                data.into_iter(),
                |v| pool.spawn(v, length),
                |n| lengths.push(n),
            )?;
        }
        let elapsed = t0.elapsed();
        let all_there = lengths.len() == count && lengths.iter().all(|&n| n == size as u64);
        check(all_there, "lengths")?;
        Ok(elapsed)
    };
    for _ in 0..opts.warmup {
        run((opts.count / 10).max(1), false)?;
        run((opts.count / 10).max(1), true)?;
    }
    let total = (opts.count * size) as f64;
    let (mut serde, mut shmem) = (Vec::new(), Vec::new());
    for rep in 0..opts.reps {
        // Alternate which goes first, so that a drifting machine affects both alike.
        for second in [false, true] {
            let as_shmem = second == (rep % 2 == 0);
            let took = run(opts.count, as_shmem)?;
            let rate = total / took.as_secs_f64() / 1e6;
            if as_shmem {
                shmem.push(rate);
            } else {
                serde.push(rate);
            }
        }
    }
    let bytes = [("bytes_per_call", format!("{total}"))];
    emit("mb_per_s", "MB/s", true, &serde, &bytes);
    emit("mb_per_s_shmem", "MB/s", true, &shmem, &bytes);
    Ok(())
}

/// `tasks` calls of ~`ms` ms of computation, on 1 then on `procs` workers.
fn cpu(opts: &Opts) -> Result<(), String> {
    // Calibrate here: iterations for `ms` milliseconds.
    let probe = 1u64 << 22;
    let best = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            black_box(spin(probe));
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let iters = (probe as f64 * opts.ms / 1e3 / best) as u64;
    let t0 = Instant::now();
    let expect = spin(iters);
    let task_ms = t0.elapsed().as_secs_f64() * 1e3;
    let pools = [new_pool(1)?, new_pool(opts.procs)?];
    let run = |pool: &Pool, tasks: usize| -> Result<f64, String> {
        let mut all_right = true;
        let t0 = Instant::now();
        pipelined(
            std::iter::repeat_n(iters, tasks),
            |n| pool.spawn(n, spin),
            |x| all_right &= x == expect,
        )?;
        let elapsed = t0.elapsed().as_secs_f64();
        check(all_right, "spin results")?;
        Ok(elapsed)
    };
    let few = (opts.tasks / 10).max(1);
    for _ in 0..opts.warmup {
        run(&pools[0], few)?;
        run(&pools[1], few)?;
    }
    let (mut one, mut two, mut speedup) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        let a = run(&pools[0], opts.tasks)?;
        let b = run(&pools[1], opts.tasks)?;
        one.push(a);
        two.push(b);
        speedup.push(a / b);
    }
    let extra = [
        ("task_ms", format!("{task_ms:.3}")),
        ("iters", format!("{iters}")),
    ];
    emit("cpu_time_1w_s", "s", false, &one, &extra);
    emit("cpu_time_2w_s", "s", false, &two, &extra);
    emit("cpu_speedup", "x", true, &speedup, &extra);
    Ok(())
}

/// Without arguments: every workload once at a tiny size, results checked.
fn smoke() -> Result<(), String> {
    let once = |workload: &str, set: &dyn Fn(&mut Opts)| {
        let mut opts = Opts::new(workload);
        opts.reps = 1;
        opts.warmup = 0;
        set(&mut opts);
        run(&opts)
    };
    once("start", &|_| {})?;
    once("roundtrip", &|o| o.calls = 20)?;
    once("tiny", &|o| o.items = 2_000)?;
    once("tiny", &|o| {
        o.items = 200;
        o.chunksize = Some(1);
    })?;
    once("payload", &|o| {
        o.count = 3;
        o.mib = 1;
    })?;
    once("cpu", &|o| {
        o.tasks = 2;
        o.ms = 5.0;
    })?;
    eprintln!("bench_procspawn: smoke test passed (run it with a workload: see its docs)");
    Ok(())
}

fn run(opts: &Opts) -> Result<(), String> {
    match opts.workload.as_str() {
        "start" => start(opts),
        "start-cold" => start_cold(opts),
        "start-once" => start_once(opts),
        "roundtrip" => roundtrip(opts),
        "tiny" => tiny(opts),
        "payload" => payload(opts),
        "cpu" => cpu(opts),
        other => Err(format!(
            "unknown workload {other} (procspawn runs start, start-cold, roundtrip, tiny, payload, cpu)"
        )),
    }
}

fn main() {
    // First: a pool worker is this binary started again, and in it `init`
    // runs the worker's call loop and exits.
    procspawn::init();
    let result = match parse() {
        Ok(Some(opts)) => run(&opts),
        Ok(None) => smoke(),
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Err(msg) = result {
        eprintln!("bench_procspawn: {msg}");
        std::process::exit(1);
    }
}
