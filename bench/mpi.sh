#!/usr/bin/env bash
# The MPI backend beside the local one: the bench example (examples/bench.rs)
# built with `--features mpi`, run as is (local worker processes) and under
# `mpirun -n 3` (rank 0 owns the pool, ranks 1 and 2 are its 2 workers),
# alternating, several rounds. Prints a Markdown table of medians.
#
#   bash bench/mpi.sh            # 3 rounds of 5 repetitions each
#   bash bench/mpi.sh --quick    # 1 round of 1 repetition: a smoke test
#
# Needs Open MPI (Debian: openmpi-bin libopenmpi-dev libclang-dev). Never
# part of `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --features mpi --example bench
# Open MPI refuses to run as root without these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec python3 - "$@" <<'PY'
import json, os, statistics, subprocess, sys

BENCH = os.path.join(os.getcwd(), os.environ.get("CARGO_TARGET_DIR", "target"), "release/examples/bench")
MPIRUN = ["mpirun", "-n", "3", "--oversubscribe", "--mca", "pml", "ob1", "--mca", "btl", "self,vader"]
quick = "--quick" in sys.argv[1:]
rounds = 1 if quick else 3
reps = ["--reps", "1", "--warmup", "1"] if quick else []

# (label, metric, unit, arguments)
PLAN = [
    ("Pool::new(), 2 workers", "start_ms", "ms", ["start", "--procs", "2"]),
    ("round trip (apply of a no-op)", "roundtrip_us", "µs", ["roundtrip", "--procs", "2", "--calls", "10000"]),
    ("tiny tasks, automatic chunks", "items_per_s", "items/s", ["tiny", "--procs", "2", "--items", "1000000"]),
    ("tiny tasks, chunksize 1", "items_per_s", "items/s", ["tiny", "--procs", "2", "--items", "100000", "--chunksize", "1"]),
    ("payload 64 × 16 MiB", "mb_per_s", "MB/s", ["payload", "--procs", "2", "--count", "64", "--mib", "16"]),
]

def samples(cmd, metric):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["metric"] == metric:
                return record["samples"]
    raise SystemExit(f"no {metric} in the output of {' '.join(cmd)}")

def fmt(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"

rows = []
for label, metric, unit, args in PLAN:
    local, mpi = [], []
    for _ in range(rounds):
        local += samples([BENCH, *args, *reps], metric)
        mpi += samples([*MPIRUN, BENCH, *args, *reps], metric)
    rows.append((label, unit, statistics.median(local), statistics.median(mpi)))
    print(f"{label}: local {fmt(rows[-1][2])} {unit}, mpirun -n 3 {fmt(rows[-1][3])} {unit}", file=sys.stderr)

print("| workload | local backend, 2 workers | `mpirun -n 3` (2 worker ranks) |")
print("|---|---|---|")
for label, unit, local, mpi in rows:
    print(f"| {label} | {fmt(local)} {unit} | {fmt(mpi)} {unit} |")
PY
