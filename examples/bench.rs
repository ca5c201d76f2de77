//! The Rust half of the side-by-side benchmark against Python's
//! `multiprocessing.Pool` (the Python half is `bench/python_pool.py`).
//!
//! Run everything, all three sides (procspawn's is `examples/bench_procspawn.rs`),
//! with `bash bench/run.sh`; see `BENCHMARKS.md`.
//! This binary runs one workload per invocation and prints one JSON line per
//! metric on stdout (a human summary goes to stderr):
//!
//! ```text
//! cargo build --release --example bench
//! target/release/examples/bench raw
//! target/release/examples/bench start
//! target/release/examples/bench start-cold --procs 2
//! target/release/examples/bench roundtrip --procs 2 [--calls 10000]
//! target/release/examples/bench tiny --procs 2 [--items 1000000] [--chunksize N]
//! target/release/examples/bench lazy --procs 2 [--items 100000] [--chunksize 1]
//! target/release/examples/bench scale --procs 2 [--items 1000000]
//! target/release/examples/bench payload [--count 64] [--mib 16]
//! target/release/examples/bench results [--count 64] [--mib 16]
//! target/release/examples/bench view [--count 64] [--mib 16]
//! target/release/examples/bench floats [--count 64] [--mib 16]
//! target/release/examples/bench share [--mib 1024]
//! target/release/examples/bench cpu [--tasks 40] [--ms 50]
//! ```
//!
//! Common options: `--reps N` (default 5) timed repetitions after
//! `--warmup N` (default 1) untimed ones at a tenth of the size.
//!
//! It is a `--release` example, never a test: nothing runs it but the
//! command above.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use pool_runtime::prelude::*;
use pool_runtime::task;

// ----- tasks (the same bodies as in bench/python_pool.py) -----

/// Does nothing: the round-trip and start-up probe.
#[task]
fn noop() {}

/// `x` to the power `n` (the tiny task).
#[task]
fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

/// The length of a payload (the payload task).
#[task]
fn length(data: Vec<u8>) -> u64 {
    data.len() as u64
}

/// The length of a payload read in place (the view workload).
#[task]
fn view_length(data: &[u8]) -> u64 {
    data.len() as u64
}

/// The length of a payload of floats (the floats workload).
#[task]
fn count_floats(data: Vec<f64>) -> u64 {
    data.len() as u64
}

/// `mib` MiB of bytes, each `seed` (the results workload).
#[task]
fn bytes(mib: usize, seed: u8) -> Vec<u8> {
    vec![seed; mib << 20]
}

/// The sum of `data[start..end]` (the share workload).
#[task]
fn sum_range(data: SharedSlice<f64>, start: usize, end: usize) -> f64 {
    data[start..end].iter().sum()
}

/// `iters` rounds of an LCG with an xor-shift: pure computation.
#[task]
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

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let workload = args
        .next()
        .ok_or("usage: bench <raw|start|roundtrip|tiny|lazy|sweep|scale|payload|view|floats|results|share|cpu> [options]")?;
    let mut opts = Opts {
        workload,
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
    };
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
    Ok(opts)
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
        "{{\"impl\":\"rust\",\"metric\":\"{metric}\",\"unit\":\"{unit}\",\"higher_is_better\":{higher_is_better},\"samples\":["
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
            "rust {metric:<28} median {:>14.3} {unit:<8} min {min:.3} max {max:.3}",
            sorted[sorted.len() / 2]
        );
    }
}

/// Runs `warmup` untimed repetitions of `f` at a tenth of the size `full`,
/// then `reps` timed ones at the full size. `f(size)` returns the duration
/// to count (it may exclude its own setup).
fn repeat(
    opts: &Opts,
    full: usize,
    mut f: impl FnMut(usize) -> Result<Duration, Error>,
) -> Result<Vec<Duration>, Error> {
    for _ in 0..opts.warmup {
        f((full / 10).max(1))?;
    }
    (0..opts.reps).map(|_| f(full)).collect()
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(broken(format!("benchmark self-check failed: {what}")))
    }
}

// ----- /proc -----

/// A `kB` field of a /proc file (`VmRSS` of `status`, `Pss` of `smaps_rollup`).
fn proc_kb(pid: u32, file: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

// ----- workloads -----

/// A raw round trip between two processes: one byte there and back over a
/// socket pair, and over two pipes, between this process and a fork. The
/// floor every pool round trip pays.
fn raw(opts: &Opts) -> Result<(), Error> {
    const TRIPS: usize = 5_000;
    // Unpinned (as the pool runs), then both ends pinned to one CPU or to
    // two CPUs: what a wake-up across CPUs costs here. `two_socketpairs`
    // uses one socket pair per direction, as pipes do.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut kinds = vec![
        ("socketpair", Link::Socketpair, None),
        ("pipe", Link::Pipes, None),
    ];
    if cpus >= 2 {
        kinds.extend([
            ("socketpair_same_cpu", Link::Socketpair, Some((0, 0))),
            ("socketpair_cross_cpu", Link::Socketpair, Some((0, 1))),
            (
                "two_socketpairs_cross_cpu",
                Link::TwoSocketpairs,
                Some((0, 1)),
            ),
            ("pipe_cross_cpu", Link::Pipes, Some((0, 1))),
        ]);
    }
    for (kind, link, pin) in kinds {
        let mut samples = Vec::new();
        for rep in 0..opts.warmup + opts.reps {
            let per_trip =
                raw_once(link, pin, TRIPS).map_err(|e| broken(format!("raw {kind}: {e}")))?;
            if rep >= opts.warmup {
                samples.push(per_trip * 1e6);
            }
        }
        emit(&format!("raw_{kind}_rtt_us"), "us", false, &samples, &[]);
    }
    Ok(())
}

/// How the two processes of the raw round trip are connected.
#[derive(Clone, Copy)]
enum Link {
    /// One socket pair, both directions (as the pool does).
    Socketpair,
    /// One socket pair per direction.
    TwoSocketpairs,
    /// One pipe per direction.
    Pipes,
}

/// Pins the calling process to one CPU, or unpins it (`None`).
fn pin_to(cpu: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for c in 0..cpus {
            if cpu.is_none_or(|only| only == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn raw_once(link: Link, pin: Option<(usize, usize)>, trips: usize) -> std::io::Result<f64> {
    let os = std::io::Error::last_os_error;
    let pair = || -> std::io::Result<[libc::c_int; 2]> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid out-array of two descriptors.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
            return Err(os());
        }
        Ok(fds)
    };
    let pipe = || -> std::io::Result<[libc::c_int; 2]> {
        let mut fds = [0; 2];
        // SAFETY: as above.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(os());
        }
        Ok(fds)
    };
    // (parent writes, child reads), (child writes, parent reads)
    let (p_w, c_r, c_w, p_r) = match link {
        Link::Socketpair => {
            let fds = pair()?;
            (fds[0], fds[1], fds[1], fds[0])
        }
        Link::TwoSocketpairs => {
            let (a, b) = (pair()?, pair()?);
            (a[0], a[1], b[1], b[0])
        }
        Link::Pipes => {
            let (a, b) = (pipe()?, pipe()?);
            (a[1], a[0], b[1], b[0])
        }
    };
    // SAFETY: this process has no other threads here (no pool was built), and
    // the child only calls read, write and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os());
    }
    if let Some((parent, child)) = pin {
        pin_to(Some(if pid == 0 { child } else { parent }));
    }
    let mut byte = [0u8; 1];
    if pid == 0 {
        // Child: drop the parent's ends (so that it sees EOF when the
        // parent closes them), then echo until EOF.
        // SAFETY: valid descriptors and a one-byte buffer.
        unsafe {
            for fd in [p_w, p_r] {
                if fd != c_r && fd != c_w {
                    libc::close(fd);
                }
            }
            while libc::read(c_r, byte.as_mut_ptr().cast(), 1) == 1 {
                if libc::write(c_w, byte.as_ptr().cast(), 1) != 1 {
                    break;
                }
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the child's ends, ours to close.
    unsafe {
        libc::close(c_r);
        if c_w != c_r {
            libc::close(c_w);
        }
    }
    let start = Instant::now();
    for _ in 0..trips {
        // SAFETY: valid descriptors and a one-byte buffer.
        unsafe {
            if libc::write(p_w, byte.as_ptr().cast(), 1) != 1
                || libc::read(p_r, byte.as_mut_ptr().cast(), 1) != 1
            {
                return Err(os());
            }
        }
    }
    let elapsed = start.elapsed();
    // SAFETY: closing our descriptors (the child sees EOF), then reaping it.
    unsafe {
        libc::close(p_w);
        if p_r != p_w {
            libc::close(p_r);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
    if pin.is_some() {
        pin_to(None);
    }
    Ok(elapsed.as_secs_f64() / trips as f64)
}

/// Build a pool and get the first result of a trivial task; then the
/// resident memory of its (now idle) workers.
fn start(opts: &Opts) -> Result<(), Error> {
    let (mut times, mut rss, mut pss) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..opts.warmup + opts.reps {
        let t0 = Instant::now();
        let pool = Pool::builder().processes(opts.procs).build()?;
        pool.apply(task!(noop), ())?;
        let elapsed = t0.elapsed();
        std::thread::sleep(Duration::from_millis(50)); // let the workers settle
        let pids = pool.worker_pids();
        check(pids.len() == opts.procs, "worker pids")?;
        let r: Vec<f64> = pids
            .iter()
            .filter_map(|&p| proc_kb(p, "status", "VmRSS"))
            .collect();
        let s: Vec<f64> = pids
            .iter()
            .filter_map(|&p| proc_kb(p, "smaps_rollup", "Pss"))
            .collect();
        drop(pool);
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
/// result; the fork server of earlier pools plays no part.
fn start_cold(opts: &Opts) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(Error::Spawn)?;
    let mut times = Vec::new();
    for rep in 0..opts.warmup + opts.reps {
        let out = std::process::Command::new(&exe)
            .args(["start-once", "--procs", &opts.procs.to_string()])
            .output()
            .map_err(Error::Spawn)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ms: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("start-once ms "))
            .and_then(|v| v.trim().parse().ok());
        let Some(ms) = ms.filter(|_| out.status.success()) else {
            return Err(broken(format!(
                "start-once failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        };
        if rep >= opts.warmup {
            times.push(ms);
        }
    }
    emit("start_cold_ms", "ms", false, &times, &[]);
    Ok(())
}

/// One repetition of [`start_cold`], in a fresh process.
fn start_once(opts: &Opts) -> Result<(), Error> {
    let t0 = Instant::now();
    let pool = Pool::builder().processes(opts.procs).build()?;
    pool.apply(task!(noop), ())?;
    let elapsed = t0.elapsed();
    drop(pool);
    println!("start-once ms {}", elapsed.as_secs_f64() * 1e3);
    Ok(())
}

/// `calls` sequential `apply` of a no-op.
fn roundtrip(opts: &Opts) -> Result<(), Error> {
    let pool = Pool::builder().processes(opts.procs).build()?;
    let times = repeat(opts, opts.calls, |calls| {
        let t0 = Instant::now();
        for _ in 0..calls {
            pool.apply(task!(noop), ())?;
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

/// `starmap(power)` over `items` tiny items.
/// The tiny workload's items, with the checksum of their results.
struct TinyInput {
    items: Vec<(u64, u32)>,
    expected: u64,
}

impl TinyInput {
    fn new(count: usize) -> TinyInput {
        let items = tiny_items(count);
        let expected = items
            .iter()
            .map(|&(x, n)| x.pow(n))
            .fold(0, u64::wrapping_add);
        TinyInput { items, expected }
    }

    /// One timed `starmap` of the first `n` items, checked.
    fn run(&self, pool: &Pool, chunksize: Option<usize>, n: usize) -> Result<Duration, Error> {
        let input = self.items[..n].iter().copied();
        let t0 = Instant::now();
        let out = match chunksize {
            Some(c) => pool.chunksize(c).starmap(task!(power), input)?,
            None => pool.starmap(task!(power), input)?,
        };
        let elapsed = t0.elapsed();
        let sum = out.iter().copied().fold(0, u64::wrapping_add);
        self.check(n, out.len(), sum)?;
        Ok(elapsed)
    }

    /// One timed `istarmap` of the first `n` items (Python: `imap`, whose
    /// default chunk size is 1), each result consumed as it comes, checked.
    fn run_lazy(&self, pool: &Pool, chunksize: usize, n: usize) -> Result<Duration, Error> {
        let input = self.items[..n].iter().copied();
        let t0 = Instant::now();
        let (mut count, mut sum) = (0, 0u64);
        for result in pool.chunksize(chunksize).istarmap(task!(power), input) {
            sum = sum.wrapping_add(result?);
            count += 1;
        }
        let elapsed = t0.elapsed();
        self.check(n, count, sum)?;
        Ok(elapsed)
    }

    /// `count` results of the first `n` items came back, summing to `sum`
    /// (checked on the full input).
    fn check(&self, n: usize, count: usize, sum: u64) -> Result<(), Error> {
        check(count == n, "result count")?;
        if n == self.items.len() {
            check(sum == self.expected, "result sum")?;
        }
        Ok(())
    }
}

/// The tiny workload through `starmap`, or (`lazy`) through `istarmap`
/// with chunks of 1 unless told otherwise.
fn tiny(opts: &Opts, lazy: bool) -> Result<(), Error> {
    let input = TinyInput::new(opts.items);
    let pool = Pool::builder().processes(opts.procs).build()?;
    let times = repeat(opts, opts.items, |n| {
        if lazy {
            input.run_lazy(&pool, opts.chunksize.unwrap_or(1), n)
        } else {
            input.run(&pool, opts.chunksize, n)
        }
    })?;
    let rate: Vec<f64> = times
        .iter()
        .map(|t| opts.items as f64 / t.as_secs_f64())
        .collect();
    emit("items_per_s", "items/s", true, &rate, &[]);
    Ok(())
}

/// The tiny workload with automatic chunks and with each hand-picked chunk
/// size, interleaved on one pool: every repetition runs every setting (in
/// a rotating order), so a drift of the machine affects them alike and the
/// comparison of automatic against hand-picked stays fair.
fn sweep(opts: &Opts) -> Result<(), Error> {
    const SIZES: [Option<usize>; 5] = [None, Some(1000), Some(10_000), Some(62_500), Some(125_000)];
    let input = TinyInput::new(opts.items);
    let pool = Pool::builder().processes(opts.procs).build()?;
    for _ in 0..opts.warmup {
        for size in SIZES {
            input.run(&pool, size, (opts.items / 10).max(1))?;
        }
    }
    let mut rates = vec![Vec::new(); SIZES.len()];
    for rep in 0..opts.reps {
        for k in 0..SIZES.len() {
            let i = (k + rep) % SIZES.len();
            let took = input.run(&pool, SIZES[i], opts.items)?;
            rates[i].push(opts.items as f64 / took.as_secs_f64());
        }
    }
    for (size, rate) in SIZES.iter().zip(&rates) {
        let metric = match size {
            None => "items_per_s_auto".to_owned(),
            Some(c) => format!("items_per_s_chunksize_{c}"),
        };
        emit(&metric, "items/s", true, rate, &[]);
    }
    Ok(())
}

/// The tiny workload, automatic chunks, on a pool of one worker and on one
/// of `procs` workers, interleaved: each repetition runs both (in turns
/// first), so a drift of the machine affects them alike; the speedup is
/// taken per repetition.
fn scale(opts: &Opts) -> Result<(), Error> {
    let input = TinyInput::new(opts.items);
    let pools = [
        Pool::builder().processes(1).build()?,
        Pool::builder().processes(opts.procs).build()?,
    ];
    for _ in 0..opts.warmup {
        for pool in &pools {
            input.run(pool, None, (opts.items / 10).max(1))?;
        }
    }
    let mut rates = [Vec::new(), Vec::new()];
    for rep in 0..opts.reps {
        for k in 0..2 {
            let i = (k + rep) % 2;
            let took = input.run(&pools[i], None, opts.items)?;
            rates[i].push(opts.items as f64 / took.as_secs_f64());
        }
    }
    let speedup: Vec<f64> = rates[1]
        .iter()
        .zip(&rates[0])
        .map(|(n, one)| n / one)
        .collect();
    emit("items_per_s_1w", "items/s", true, &rates[0], &[]);
    emit(
        &format!("items_per_s_{}w", opts.procs),
        "items/s",
        true,
        &rates[1],
        &[],
    );
    emit("speedup_over_1w", "x", true, &speedup, &[]);
    Ok(())
}

/// `map(length)` over `count` distinct `Vec<u8>` of `mib` MiB each.
fn payload(opts: &Opts) -> Result<(), Error> {
    payload_through(opts, |pool, inputs| pool.map(task!(length), inputs))
}

/// `payload` to a task taking `&[u8]`, which a worker reads in place.
fn view(opts: &Opts) -> Result<(), Error> {
    payload_through(opts, |pool, inputs| pool.map(task!(view_length), inputs))
}

/// Times `call` on `count` distinct `Vec<u8>` of `mib` MiB each, which
/// must return their lengths.
fn payload_through(
    opts: &Opts,
    call: impl Fn(&Pool, Vec<Vec<u8>>) -> Result<Vec<u64>, Error>,
) -> Result<(), Error> {
    let size = opts.mib << 20;
    let source: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let pool = Pool::builder().processes(opts.procs).build()?;
    let times = repeat(opts, opts.count, |count| {
        // The inputs are moved into the call: make fresh ones, untimed.
        let inputs: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut v = source.clone();
                v[0] = i as u8;
                v
            })
            .collect();
        let t0 = Instant::now();
        let out = call(&pool, inputs)?;
        let elapsed = t0.elapsed();
        let all_there = out.len() == count && out.iter().all(|&n| n == size as u64);
        check(all_there, "lengths")?;
        Ok(elapsed)
    })?;
    let total = (opts.count * size) as f64;
    let rate: Vec<f64> = times
        .iter()
        .map(|t| total / t.as_secs_f64() / 1e6)
        .collect();
    emit(
        "mb_per_s",
        "MB/s",
        true,
        &rate,
        &[("bytes_per_call", format!("{total}"))],
    );
    Ok(())
}

/// `payload` with `Vec<f64>` arguments of `mib` MiB each.
fn floats(opts: &Opts) -> Result<(), Error> {
    let len = (opts.mib << 20) / 8;
    let source: Vec<f64> = (0..len).map(|i| i as f64 * 0.5).collect();
    let pool = Pool::builder().processes(opts.procs).build()?;
    let times = repeat(opts, opts.count, |count| {
        let inputs: Vec<Vec<f64>> = (0..count)
            .map(|i| {
                let mut v = source.clone();
                v[0] = i as f64;
                v
            })
            .collect();
        let t0 = Instant::now();
        let out = pool.map(task!(count_floats), inputs)?;
        let elapsed = t0.elapsed();
        check(
            out.len() == count && out.iter().all(|&n| n == len as u64),
            "lengths",
        )?;
        Ok(elapsed)
    })?;
    let total = (opts.count * len * 8) as f64;
    let rate: Vec<f64> = times
        .iter()
        .map(|t| total / t.as_secs_f64() / 1e6)
        .collect();
    emit(
        "mb_per_s",
        "MB/s",
        true,
        &rate,
        &[("bytes_per_call", format!("{total}"))],
    );
    Ok(())
}

/// `count` results of `mib` MiB each back from the workers: the reverse
/// direction of `payload` (the workers fill each result, a memset).
fn results(opts: &Opts) -> Result<(), Error> {
    let size = opts.mib << 20;
    let pool = Pool::builder().processes(opts.procs).build()?;
    let times = repeat(opts, opts.count, |count| {
        let inputs: Vec<(usize, u8)> = (0..count).map(|i| (opts.mib, i as u8)).collect();
        let t0 = Instant::now();
        let out = pool.starmap(task!(bytes), inputs)?;
        let elapsed = t0.elapsed();
        let all_there = out.len() == count
            && out
                .iter()
                .enumerate()
                .all(|(i, v)| v.len() == size && v[0] == i as u8 && v[size - 1] == i as u8);
        check(all_there, "results")?;
        drop(black_box(out));
        Ok(elapsed)
    })?;
    let total = (opts.count * size) as f64;
    let rate: Vec<f64> = times
        .iter()
        .map(|t| total / t.as_secs_f64() / 1e6)
        .collect();
    emit(
        "mb_per_s",
        "MB/s",
        true,
        &rate,
        &[("bytes_per_call", format!("{total}"))],
    );
    Ok(())
}

/// `tasks` calls of ~`ms` ms of computation, on 1 then on 2 workers.
/// `share_slice` of `--mib` MiB of `f64` to `--procs` workers: its time
/// beside two plain copies of the same bytes (into fresh memory, as
/// `to_vec` does, and into memory already touched), and each worker's Pss
/// growth after reading one page and after reading the whole array.
fn share(opts: &Opts) -> Result<(), Error> {
    let len = (opts.mib << 20) / std::mem::size_of::<f64>();
    let data: Vec<f64> = (0..len).map(|i| (i % 1024) as f64).collect();
    let expected: f64 = data.iter().sum();
    let pool = Pool::builder().processes(opts.procs).build()?;
    let mut warm = vec![1.0f64; len];
    let (mut share_ms, mut fresh_ms, mut touched_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut one_page_kb, mut whole_kb) = (Vec::new(), Vec::new());
    for rep in 0..opts.warmup + opts.reps {
        let timed = rep >= opts.warmup;
        let t0 = Instant::now();
        let copy = black_box(data.to_vec());
        let fresh = t0.elapsed();
        drop(copy);
        let t0 = Instant::now();
        warm.copy_from_slice(black_box(&data));
        let touched = t0.elapsed();
        let t0 = Instant::now();
        let shared = pool.share_slice(&data)?;
        let took = t0.elapsed();
        let pss = |pid: u32| proc_kb(pid, "smaps_rollup", "Pss").unwrap_or(0.0);
        let base: Vec<(u32, f64)> = pool
            .worker_pids()
            .into_iter()
            .map(|p| (p, pss(p)))
            .collect();
        let growth = |base: &[(u32, f64)]| -> f64 {
            let all: Vec<f64> = base.iter().map(|&(p, b)| pss(p) - b).collect();
            mean(&all)
        };
        let firsts = vec![(shared.clone(), 0, 1); 2 * opts.procs];
        pool.chunksize(1).starmap(task!(sum_range), firsts)?;
        let one = growth(&base);
        let whole = vec![(shared.clone(), 0, len); opts.procs];
        let sums = pool.chunksize(1).starmap(task!(sum_range), whole)?;
        check(sums.iter().all(|&s| s == expected), "whole-array sums")?;
        let all = growth(&base);
        if timed {
            share_ms.push(took.as_secs_f64() * 1e3);
            fresh_ms.push(fresh.as_secs_f64() * 1e3);
            touched_ms.push(touched.as_secs_f64() * 1e3);
            one_page_kb.push(one);
            whole_kb.push(all);
        }
        // The workers drop their mappings once the handle is freed.
        drop(shared);
    }
    let bytes = [("bytes", format!("{}", len * 8))];
    emit("share_ms", "ms", false, &share_ms, &bytes);
    emit("memcpy_fresh_ms", "ms", false, &fresh_ms, &bytes);
    emit("memcpy_touched_ms", "ms", false, &touched_ms, &bytes);
    emit("worker_pss_one_page_kb", "kB", false, &one_page_kb, &bytes);
    emit("worker_pss_whole_kb", "kB", false, &whole_kb, &bytes);
    Ok(())
}

fn cpu(opts: &Opts) -> Result<(), Error> {
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
    let pools = [
        Pool::builder().processes(1).build()?,
        Pool::builder().processes(opts.procs).build()?,
    ];
    let run = |pool: &Pool, tasks: usize| -> Result<f64, Error> {
        let t0 = Instant::now();
        let out = pool.map(task!(spin), vec![iters; tasks])?;
        let elapsed = t0.elapsed().as_secs_f64();
        check(out.iter().all(|&x| x == expect), "spin results")?;
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

#[pool_runtime::main]
fn main() -> Result<(), Error> {
    let opts = match parse() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    match opts.workload.as_str() {
        "raw" => raw(&opts),
        "start" => start(&opts),
        "start-cold" => start_cold(&opts),
        "start-once" => start_once(&opts),
        "roundtrip" => roundtrip(&opts),
        "tiny" => tiny(&opts, false),
        "lazy" => tiny(&opts, true),
        "sweep" => sweep(&opts),
        "payload" => payload(&opts),
        "view" => view(&opts),
        "scale" => scale(&opts),
        "results" => results(&opts),
        "floats" => floats(&opts),
        "share" => share(&opts),
        "cpu" => cpu(&opts),
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    }
}

/// A benchmark failure, as the pool's error type.
fn broken(reason: String) -> Error {
    Error::Broken {
        reason,
        source: None,
    }
}
