"""The Python half of the side-by-side benchmark (the Rust half is
examples/bench.rs). Same workloads, same data, same options, same output:
one JSON line per metric on stdout, a human summary on stderr.

    python3 bench/python_pool.py raw
    python3 bench/python_pool.py start
    python3 bench/python_pool.py start-cold --procs 2
    python3 bench/python_pool.py roundtrip --procs 2 [--calls 10000]
    python3 bench/python_pool.py tiny --procs 2 [--items 1000000] [--chunksize N]
    python3 bench/python_pool.py lazy --procs 2 [--items 100000] [--chunksize 1]
    python3 bench/python_pool.py payload [--count 64] [--mib 16]
    python3 bench/python_pool.py results [--count 64] [--mib 16]
    python3 bench/python_pool.py floats [--count 64] [--mib 16]
    python3 bench/python_pool.py cpu [--tasks 40] [--ms 50]

Common options: --reps N (default 5) timed repetitions after --warmup N
(default 1) untimed ones at a tenth of the size. multiprocessing.Pool runs with the platform's
default start method (fork on Linux with Python 3.11). Run both sides with
`bash bench/run.sh`.
"""

import array
import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time

# ----- tasks (the same bodies as in examples/bench.rs) -----

MASK = (1 << 64) - 1


def noop():
    return None


def power(x, n):
    return x ** n


def power_pair(pair):
    return pair[0] ** pair[1]


def length(data):
    return len(data)


def count_floats(data):
    return len(data)


def make_bytes(mib, seed):
    return bytes([seed]) * (mib << 20)


def spin(iters):
    x = 0x9E3779B97F4A7C15
    for _ in range(iters):
        x = (x * 6364136223846793005 + 1442695040888963407) & MASK
        x ^= x >> 29
    return x


# ----- the shared data: item i is (x, n) = ((i * 7919) % 1000, i % 4) -----


def tiny_items(count):
    return [((i * 7919) % 1000, i % 4) for i in range(count)]


# ----- output -----


def emit(metric, unit, higher_is_better, samples, **extra):
    line = {
        "impl": "python",
        "metric": metric,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "samples": samples,
        **extra,
    }
    print(json.dumps(line), flush=True)
    print(
        f"python {metric:<26} median {statistics.median(samples):>14.3f} {unit:<8}"
        f" min {min(samples):.3f} max {max(samples):.3f}",
        file=sys.stderr,
    )


def repeat(opts, full, f):
    """warmup untimed calls of f at a tenth of the size, then reps timed ones
    at the full size; f(size) returns the seconds to count."""
    for _ in range(opts.warmup):
        f(max(full // 10, 1))
    return [f(full) for _ in range(opts.reps)]


def check(ok, what):
    if not ok:
        raise SystemExit(f"benchmark self-check failed: {what}")


def proc_kb(pid, file, field):
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def mean(xs):
    return sum(xs) / max(len(xs), 1)


def close(pool):
    pool.close()
    pool.join()


# ----- workloads -----


def raw(opts):
    """One byte there and back over a socket pair, between this process and
    a fork: what the pool's own round trip is compared with."""
    trips = 5_000
    samples = []
    for rep in range(opts.warmup + opts.reps):
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            a.close()
            while True:
                byte = b.recv(1)
                if not byte:
                    os._exit(0)
                b.sendall(byte)
        b.close()
        t0 = time.perf_counter()
        for _ in range(trips):
            a.sendall(b"x")
            a.recv(1)
        elapsed = time.perf_counter() - t0
        a.close()
        os.waitpid(pid, 0)
        if rep >= opts.warmup:
            samples.append(elapsed / trips * 1e6)
    emit("raw_socketpair_rtt_us", "us", False, samples)


def start(opts):
    times, rss, pss = [], [], []
    for rep in range(opts.warmup + opts.reps):
        t0 = time.perf_counter()
        pool = multiprocessing.Pool(opts.procs)
        pool.apply(noop)
        elapsed = time.perf_counter() - t0
        time.sleep(0.05)  # let the workers settle
        pids = [p.pid for p in pool._pool]
        check(len(pids) == opts.procs, "worker pids")
        r = [v for v in (proc_kb(p, "status", "VmRSS") for p in pids) if v is not None]
        s = [v for v in (proc_kb(p, "smaps_rollup", "Pss") for p in pids) if v is not None]
        close(pool)
        if rep >= opts.warmup:
            times.append(elapsed * 1e3)
            rss.append(mean(r))
            pss.append(mean(s))
    parent = proc_kb(os.getpid(), "status", "VmRSS") or 0.0
    emit("start_ms", "ms", False, times, start_method=multiprocessing.get_start_method())
    emit("idle_worker_rss_kb", "kB", False, rss, parent_rss_kb=parent)
    emit("idle_worker_pss_kb", "kB", False, pss)


def start_cold(opts):
    """The first pool of a process: each repetition runs this script
    afresh (start-once), which times building a pool and the first result."""
    import subprocess
    times = []
    for rep in range(opts.warmup + opts.reps):
        out = subprocess.run([sys.executable, __file__, "start-once", "--procs", str(opts.procs)],
                             capture_output=True, text=True, check=True).stdout
        ms = next(float(l.split()[-1]) for l in out.splitlines() if l.startswith("start-once ms "))
        if rep >= opts.warmup:
            times.append(ms)
    emit("start_cold_ms", "ms", False, times, start_method=multiprocessing.get_start_method())


def start_once(opts):
    t0 = time.perf_counter()
    pool = multiprocessing.Pool(opts.procs)
    pool.apply(noop)
    elapsed = time.perf_counter() - t0
    close(pool)
    print(f"start-once ms {elapsed * 1e3}")


def roundtrip(opts):
    with multiprocessing.Pool(opts.procs) as pool:

        def once(calls):
            t0 = time.perf_counter()
            for _ in range(calls):
                pool.apply(noop)
            return time.perf_counter() - t0

        times = repeat(opts, opts.calls, once)
        close(pool)
    emit("roundtrip_us", "us", False, [t * 1e6 / opts.calls for t in times])


def tiny(opts):
    items = tiny_items(opts.items)
    expected = sum(x ** n for x, n in items) & MASK
    with multiprocessing.Pool(opts.procs) as pool:

        def once(n):
            data = items if n == len(items) else items[:n]
            t0 = time.perf_counter()
            out = pool.starmap(power, data, chunksize=opts.chunksize)
            elapsed = time.perf_counter() - t0
            check(len(out) == n, "result count")
            if n == len(items):
                check(sum(out) & MASK == expected, "result sum")
            return elapsed

        times = repeat(opts, len(items), once)
        close(pool)
    emit("items_per_s", "items/s", True, [opts.items / t for t in times])


def lazy(opts):
    """The tiny workload through `imap` (chunk size 1 by default, as
    Python's own), its results consumed one by one."""
    items = tiny_items(opts.items)
    expected = sum(x ** n for x, n in items) & MASK
    chunksize = opts.chunksize or 1
    with multiprocessing.Pool(opts.procs) as pool:

        def once(n):
            data = items if n == len(items) else items[:n]
            t0 = time.perf_counter()
            total = 0
            count = 0
            for r in pool.imap(power_pair, data, chunksize=chunksize):
                total += r
                count += 1
            elapsed = time.perf_counter() - t0
            check(count == n, "result count")
            if n == len(items):
                check(total & MASK == expected, "result sum")
            return elapsed

        times = repeat(opts, len(items), once)
        close(pool)
    emit("items_per_s", "items/s", True, [opts.items / t for t in times])


def payload(opts):
    size = opts.mib << 20
    source = bytes(i % 251 for i in range(251)) * (size // 251 + 1)
    source = source[:size]
    # 64 distinct objects (pickle would send one object repeated in a chunk once).
    inputs = [bytes([i % 256]) + source[1:] for i in range(opts.count)]
    with multiprocessing.Pool(opts.procs) as pool:

        def once(count):
            t0 = time.perf_counter()
            out = pool.map(length, inputs[:count])
            elapsed = time.perf_counter() - t0
            check(len(out) == count and all(n == size for n in out), "lengths")
            return elapsed

        times = repeat(opts, opts.count, once)
        close(pool)
    total = opts.count * size
    emit("mb_per_s", "MB/s", True, [total / t / 1e6 for t in times], bytes_per_call=total)


def floats(opts):
    # array('d'): the standard library's packed doubles, pickled as one
    # block (a list of floats would be far slower).
    n = (opts.mib << 20) // 8
    source = array.array("d", (i * 0.5 for i in range(n)))
    inputs = []
    for i in range(opts.count):
        a = array.array("d", source)
        a[0] = float(i)
        inputs.append(a)
    with multiprocessing.Pool(opts.procs) as pool:

        def once(count):
            t0 = time.perf_counter()
            out = pool.map(count_floats, inputs[:count])
            elapsed = time.perf_counter() - t0
            check(len(out) == count and all(k == n for k in out), "lengths")
            return elapsed

        times = repeat(opts, opts.count, once)
        close(pool)
    total = opts.count * n * 8
    emit("mb_per_s", "MB/s", True, [total / t / 1e6 for t in times], bytes_per_call=total)


def results(opts):
    size = opts.mib << 20
    with multiprocessing.Pool(opts.procs) as pool:

        def once(count):
            inputs = [(opts.mib, i % 256) for i in range(count)]
            t0 = time.perf_counter()
            out = pool.starmap(make_bytes, inputs)
            elapsed = time.perf_counter() - t0
            ok = len(out) == count and all(
                len(b) == size and b[0] == i % 256 and b[-1] == i % 256 for i, b in enumerate(out)
            )
            check(ok, "results")
            return elapsed

        times = repeat(opts, opts.count, once)
        close(pool)
    total = opts.count * size
    emit("mb_per_s", "MB/s", True, [total / t / 1e6 for t in times], bytes_per_call=total)


def cpu(opts):
    probe = 1 << 14
    best = min(_timed(spin, probe) for _ in range(5))
    iters = int(probe * opts.ms / 1e3 / best)
    t0 = time.perf_counter()
    expect = spin(iters)
    task_ms = (time.perf_counter() - t0) * 1e3
    pools = [multiprocessing.Pool(1), multiprocessing.Pool(opts.procs)]

    def run(pool, tasks):
        t0 = time.perf_counter()
        out = pool.map(spin, [iters] * tasks)
        elapsed = time.perf_counter() - t0
        check(all(x == expect for x in out), "spin results")
        return elapsed

    few = max(opts.tasks // 10, 1)
    for _ in range(opts.warmup):
        run(pools[0], few)
        run(pools[1], few)
    one, two, speedup = [], [], []
    for _ in range(opts.reps):
        a = run(pools[0], opts.tasks)
        b = run(pools[1], opts.tasks)
        one.append(a)
        two.append(b)
        speedup.append(a / b)
    for pool in pools:
        close(pool)
    extra = {"task_ms": round(task_ms, 3), "iters": iters}
    emit("cpu_time_1w_s", "s", False, one, **extra)
    emit("cpu_time_2w_s", "s", False, two, **extra)
    emit("cpu_speedup", "x", True, speedup, **extra)


def _timed(f, arg):
    t0 = time.perf_counter()
    f(arg)
    return time.perf_counter() - t0


WORKLOADS = {
    "raw": raw,
    "start": start,
    "start-cold": start_cold,
    "start-once": start_once,
    "roundtrip": roundtrip,
    "tiny": tiny,
    "lazy": lazy,
    "payload": payload,
    # No view of the argument in Python: the bytes are unpickled as in payload.
    "view": payload,
    "results": results,
    "floats": floats,
    "cpu": cpu,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunksize", type=int, default=None)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--ms", type=float, default=50.0)
    opts = parser.parse_args()
    WORKLOADS[opts.workload](opts)


if __name__ == "__main__":
    main()
