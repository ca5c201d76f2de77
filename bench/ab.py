"""Alternating A/B runs of examples/bench, two builds side by side (see
BENCHMARKS.md, "The scheduler rework against the code before it").

usage: python3 bench/ab.py OLD_BIN NEW_BIN ROUNDS   (ONLY=rt2,cs1 for some rows)
Prints the median of each metric per build per round, and the ratio
new/old of the medians over all rounds.
"""
import json, statistics, subprocess, sys

old, new, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
ROWS_ALL = [
    ("rt2", ["roundtrip", "--procs", "2", "--calls", "10000"]),
    ("auto1", ["tiny", "--procs", "1", "--items", "1000000"]),
    ("auto2", ["tiny", "--procs", "2", "--items", "1000000"]),
    ("cs1", ["tiny", "--procs", "2", "--items", "100000", "--chunksize", "1"]),
    ("imap1", ["lazy", "--procs", "2", "--items", "100000", "--chunksize", "1"]),
    ("payload", ["payload", "--procs", "2", "--count", "64", "--mib", "16"]),
    ("view", ["view", "--procs", "2", "--count", "64", "--mib", "16"]),
    ("results", ["results", "--procs", "2", "--count", "64", "--mib", "16"]),
]
import os
only=os.environ.get("ONLY")
ROWS=[r for r in ROWS_ALL if not only or r[0] in only.split(",")]
res = {}
for r in range(rounds):
    order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
    for row, args in ROWS:
        for name, binary in order:
            out = subprocess.run([binary] + args, capture_output=True, text=True, timeout=300)
            for line in out.stdout.splitlines():
                if not line.startswith("{"):
                    continue
                m = json.loads(line)
                key = (row, m["metric"])
                med = statistics.median(m["samples"])
                res.setdefault(key, {}).setdefault(name, []).append((med, m["higher_is_better"], m["unit"]))
            if out.returncode != 0:
                print("FAILED", name, row, out.stderr[-500:])
    print(f"round {r+1} done", flush=True)
print(f"{'row':8} {'metric':28} {'old (median of rounds)':>24} {'new':>14} {'new/old':>8}  better?")
for (row, metric), v in sorted(res.items()):
    if "old" not in v or "new" not in v:
        continue
    o = statistics.median(x[0] for x in v["old"]); n = statistics.median(x[0] for x in v["new"])
    hib = v["old"][0][1]; unit = v["old"][0][2]
    ratio = n / o if o else float("nan")
    good = (ratio >= 1) if hib else (ratio <= 1)
    olds = ",".join(f"{x[0]:.3g}" for x in v["old"]); news = ",".join(f"{x[0]:.3g}" for x in v["new"])
    print(f"{row:8} {metric:28} {o:>16.4g} {unit:7} {n:>12.4g}  {ratio:7.3f}  {'yes' if good else 'no'}   old[{olds}] new[{news}]")
