#!/usr/bin/env bash
# Slurm, started for real, on this one machine: installs Debian's Slurm and
# munge when missing, writes a one-node configuration into a temporary
# directory, starts munged, slurmctld and slurmd as plain processes, runs the
# mpi_starmap example with `srun --mpi=pmix -n 3` (and `--mpi=pmi2`, which may
# not work: then it says why), submits examples/slurm/mpi_starmap.sbatch with
# `sbatch --wait` as it is and as `--ntasks=5 ... tour`, checks the results,
# then stops every daemon it started and checks that no daemon, client or
# rank is left.
#
# Run as root (slurmd needs it), as CI does: `bash .ci/slurm.sh`. Uses
# $CARGO_TARGET_DIR if set, else target/. If Slurm cannot be installed it says
# so and exits 0; once installed, any failure fails the script. Every wait is
# bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[slurm] %s\n' "$*"; }
fail() {
  printf '[slurm] FAILED: %s\n' "$*" >&2
  exit 1
}
started=$SECONDS
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$(uname -s)" != Linux ]; then
  say "SKIPPED: Slurm is tested on Linux only (this is $(uname -s))"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "SKIPPED: slurmd must run as root to start tasks; run this script as root"
  exit 0
fi

# --- Install -----------------------------------------------------------------
packages=(slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev libclang-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  if ! command -v apt-get >/dev/null; then
    say "SKIPPED: Slurm is not installed and there is no apt-get to install it"
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  # The packages' scripts must not start the system's munge or Slurm
  # services: this script starts its own. (Docker-like images already have
  # such a policy; it is left alone then.)
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  log=$(mktemp)
  ok=1
  timeout 300 apt-get update -qq -o DPkg::Lock::Timeout=120 >"$log" 2>&1 || ok=
  [ -z "$ok" ] || timeout 900 apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$log" 2>&1 || ok=
  [ -z "$own_policy" ] || rm -f "$policy"
  if [ -z "$ok" ]; then
    tail -n 20 "$log" | sed 's/^/    /'
    rm -f "$log"
    say "SKIPPED: Slurm could not be installed (apt-get failed, above): no Slurm test ran"
    exit 0
  fi
  rm -f "$log"
fi
for tool in munged slurmctld slurmd srun sbatch sinfo squeue scancel mpirun; do
  command -v "$tool" >/dev/null || fail "$tool is not on the PATH after installing ${packages[*]}"
done
say "$(slurmd -V), $(munged --version 2>&1 | head -n 1), Open MPI $(mpirun --version 2>&1 | head -n 1 | awk '{print $NF}')"

# --- Build -------------------------------------------------------------------
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
target=$(cd "$target" && pwd)
exe=$target/release/examples/mpi_starmap
say "cargo build --release --features mpi --example mpi_starmap (target dir $target)"
CARGO_TARGET_DIR=$target timeout 1200 cargo build --quiet --release --features mpi --example mpi_starmap
[ -x "$exe" ] || fail "no executable at $exe"

# --- Temporary cluster -------------------------------------------------------
# Slurm, its clients and munge already running before this script (a
# system's own) are not ours: neither stopped nor counted as left behind.
daemons='slurmctld|slurmscriptd|slurmd|slurmstepd|munged|srun|sbatch'
before=$(ps -eo pid=,comm= | awk -v re="^($daemons)\$" '$2 ~ re {print $1}' | sort)

tmp=$(mktemp -d /tmp/pool-slurm.XXXXXX)
chmod 711 "$tmp" # munged wants its socket's directories searchable by all
munged_pid='' slurmctld_pid='' slurmd_pid='' seed_job='' tour_job=''

# Process ids of the example's ranks (argv[0] is its absolute path).
ranks() { ps -eo pid=,args= | awk -v exe="$exe" '$2 == exe {print $1}'; }
# Slurm, its clients and munge that were not running before this script.
new_daemons() {
  ps -eo pid=,comm= | awk -v re="^($daemons)\$" '$2 ~ re {print $1}' | sort |
    comm -13 <(printf '%s\n' "$before") -
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
# Stops one process: TERM, then KILL after `limit` seconds.
stop() {
  local pid=$1 limit=${2:-15} i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  echo "[slurm] pid $pid still running after ${limit}s: KILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}
show_logs() {
  local d f
  for d in munged slurmctld slurmd; do
    f=$tmp/$d.log
    [ -s "$f" ] || f=$tmp/$d.stderr # what it said before it opened its log
    [ -s "$f" ] || continue
    echo "--- last lines of $f"
    tail -n 30 "$f"
  done
}

cleanup() {
  local rc=$? pid left i
  trap - EXIT INT TERM
  set +e
  # Clients still waiting (when interrupted): `timeout` passes TERM on.
  stop "$seed_job" 5
  stop "$tour_job" 5
  if alive "$slurmctld_pid"; then
    # Cancel whatever is still queued or running, and wait for it to end.
    timeout 10 scancel --quiet --user=root 2>/dev/null
    for ((i = 0; i < 300; i++)); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  [ "$rc" = 0 ] || show_logs
  stop "$slurmd_pid"
  stop "$slurmctld_pid"
  stop "$munged_pid"
  # Stragglers (up to 20 s): a rank, a slurmstepd or a client that outlived
  # its job.
  for ((i = 0; i < 200; i++)); do
    left=$(ranks; new_daemons)
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -n "$left" ]; then
    echo "[slurm] FAILED: processes left behind:" >&2
    for pid in $left; do ps -o pid=,args= -p "$pid" >&2; done
    for pid in $left; do kill -KILL "$pid" 2>/dev/null; done
    rc=1
  else
    say "stopped munged, slurmctld and slurmd; no daemon or rank left running"
  fi
  rm -rf "$tmp"
  say "took $((SECONDS - started)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted (SIGINT)"; exit 130' INT
trap 'say "interrupted (SIGTERM)"; exit 143' TERM

# Whatever Slurm job this script may itself run in is not the test's.
for v in $(compgen -v SLURM_ || true); do unset "$v"; done

# Two free TCP ports for slurmctld and slurmd (not the defaults: a system's
# own Slurm may hold those).
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null || {
      echo "$p"
      return
    }
  done
  fail "no free TCP port found"
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

# munge, with a key and a socket of its own: the system's is left alone.
cluster_start=$SECONDS
mkdir -m 755 "$tmp/munge"
(umask 077 && head -c 1024 /dev/urandom >"$tmp/munge.key")
chmod 400 "$tmp/munge.key"
socket=$tmp/munge/munge.socket
munged --foreground --force --key-file="$tmp/munge.key" --socket="$socket" \
  --pid-file="$tmp/munge/munged.pid" --seed-file="$tmp/munge/munged.seed" \
  --log-file="$tmp/munged.log" </dev/null >"$tmp/munged.stderr" 2>&1 &
munged_pid=$!
for ((i = 0; i < 100; i++)); do
  [ -S "$socket" ] && break
  alive "$munged_pid" || fail "munged exited at start"
  sleep 0.1
done
[ -S "$socket" ] || fail "munged made no socket in 10 s"
if command -v munge >/dev/null && command -v unmunge >/dev/null; then
  timeout 10 munge --socket="$socket" -n | timeout 10 unmunge --socket="$socket" >/dev/null ||
    fail "munge cannot encode and decode a credential"
fi

# One node, oversubscribed: it says it has 8 CPUs (config_overrides: slurmd
# does not check them against the machine's) and shares them, so 3 to 5
# tasks fit on a 2-core machine. No cgroups: processes are tracked through
# /proc, which works in containers and sandboxes.
node=$(hostname -s)
mkdir -m 700 "$tmp/state" "$tmp/spool"
cat >"$tmp/slurm.conf" <<EOF
ClusterName=pooltest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=10 OverSubscribe=FORCE:4 State=UP
EOF
export SLURM_CONF=$tmp/slurm.conf

# In the foreground (-D), so that their ids are known; each logs to its file
# and echoes to stderr (kept apart: it also has what comes before the log).
slurmctld -D -f "$SLURM_CONF" </dev/null >"$tmp/slurmctld.stderr" 2>&1 &
slurmctld_pid=$!
slurmd -D -f "$SLURM_CONF" -N "$node" </dev/null >"$tmp/slurmd.stderr" 2>&1 &
slurmd_pid=$!

say "waiting for node $node to be idle"
state=
for ((i = 0; i < 120; i++)); do
  alive "$slurmctld_pid" || fail "slurmctld exited at start"
  alive "$slurmd_pid" || fail "slurmd exited at start"
  state=$(timeout 5 sinfo -h -n "$node" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || fail "node $node is '${state:-unknown}', not idle, after 60 s: $(timeout 5 sinfo -h -R 2>&1)"
say "node $node is idle, $((SECONDS - cluster_start)) s after starting munged"
plugins=$(timeout 10 srun --mpi=list 2>&1 || true)
say "srun --mpi=list: $(echo "$plugins" | grep -v -i 'mpi plugin types' | tr -s ' \n' ' ')"

# Open MPI refuses to run as root without these; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Checks the seed program's output (file $1, each line possibly labelled
# "N: " by srun --label): ten tasks, run on ranks 1 and 2 only, and their
# ten results printed in input order, each equal to what its task printed.
check_seed() {
  awk '
    function problem(msg) { print "    " msg; bad = 1 }
    BEGIN { tasks = 0; results = 0; bad = 0 }
    {
      label = ""
      if (match($0, /^ *[0-9]+: /)) { label = substr($0, 1, RLENGTH); gsub(/[ :]/, "", label); $0 = substr($0, RLENGTH + 1) }
    }
    /^Task / {
      if (NF != 8 || $3 != "executing" || $4 != "with" || $6 != "on" || $7 != "rank") { problem("malformed: " $0); next }
      if ($2 in value) problem("task " $2 " ran twice")
      value[$2] = $5; rank[$8]++; tasks++
      if (label != "" && label != $8) problem("task " $2 " says rank " $8 " but srun labels it " label)
      next
    }
    /^Got result: \(/ {
      pair = $0; sub(/^Got result: \(/, "", pair); sub(/\)$/, "", pair)
      split(pair, p, ", "); got_id[results] = p[1]; got_value[results] = p[2]; results++
      if (label != "" && label != "0") problem("a result printed by task " label ", not rank 0")
    }
    END {
      if (tasks != 10) problem("expected 10 Task lines, got " tasks)
      for (r in rank) if (r != 1 && r != 2) problem("a task ran on rank " r)
      if (!rank[1] || !rank[2]) problem("not both ranks 1 and 2 ran tasks")
      if (results != 10) problem("expected 10 results, got " results)
      for (i = 0; i < results; i++) {
        if (got_id[i] "" != i "") problem("result " i " is for item " got_id[i] ": out of order")
        else if (!(i in value)) problem("item " i " has a result but no task ran it")
        else if (got_value[i] + 0 != value[i] + 0) problem("item " i ": task printed " value[i] ", result is " got_value[i])
      }
      exit bad
    }' "$1"
}

# Runs the seed program under srun with the MPI plugin $1; says what went
# wrong and returns 1 if it fails (srun's stderr stays in $tmp/srun-$1.err).
srun_seed() {
  local mpi=$1 out=$tmp/srun-$1.out err=$tmp/srun-$1.err rc=0 t0=$SECONDS
  say "srun --mpi=$mpi -n 3 mpi_starmap"
  timeout -k 10 180 srun --mpi="$mpi" -n 3 --time=3 --kill-on-bad-exit=1 --label \
    "$exe" </dev/null >"$out" 2>"$err" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "    srun exited with $rc$([ "$rc" = 124 ] && echo ' (timed out after 180 s)')"
    return 1
  fi
  if ! check_seed "$out"; then
    echo "    its output:"
    sed 's/^/    /' "$out"
    return 1
  fi
  say "srun --mpi=$mpi -n 3: 10 tasks on ranks 1 and 2, 10 results in order ($((SECONDS - t0)) s)"
}

# Waits until every job and step has ended and no rank is left.
wait_idle() {
  local i
  for ((i = 0; i < 300; i++)); do
    [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)$(ranks)" ] && return 0
    sleep 0.1
  done
  fail "jobs or ranks still there 30 s after their run: $(timeout 5 squeue -h 2>&1) $(ranks)"
}

# pmix: must work.
echo "$plugins" | grep -qw pmix || fail "Slurm has no pmix MPI plugin (srun --mpi=list: $plugins)"
if ! srun_seed pmix; then
  echo "    srun's stderr:"
  tail -n 40 "$tmp/srun-pmix.err" | sed 's/^/    /'
  fail "srun --mpi=pmix -n 3 did not run the seed program right (above)"
fi
wait_idle

# pmi2: reported, not required.
if ! echo "$plugins" | grep -qw pmi2; then
  say "NOTE: --mpi=pmi2 not tested: this Slurm has no pmi2 plugin"
elif srun_seed pmi2; then
  say "--mpi=pmi2 works too"
else
  err=$tmp/srun-pmi2.err
  components=$(ompi_info 2>/dev/null | awk -F: '/MCA pmix:/ {print $2}' | awk '{print $1}' | tr '\n' ' ')
  say "NOTE: --mpi=pmi2 does not work with this Open MPI; not a failure: use --mpi=pmix."
  if grep -q "OMPI was not built with SLURM's PMI support" "$err"; then
    say "      Open MPI: \"The application appears to have been direct launched using" \
      "srun, but OMPI was not built with SLURM's PMI support\" (MPI_Init_thread aborts)."
    say "      Open MPI speaks PMI-2 only through its pmix 's1'/'s2' components, built with" \
      "--with-pmi against Slurm's libpmi2; this build has: ${components:-none}(PMIx only)."
  else
    say "      srun's stderr:"
    tail -n 40 "$err" | sed 's/^/    /'
    say "      (Open MPI's pmix components here: ${components:-none})"
  fi
fi
wait_idle

# The README's batch script, submitted as a user would, twice at once: as it
# is (3 tasks, the seed program) and as `sbatch --ntasks=5 ... tour` (4
# worker ranks, every kind of call): 8 tasks on the 2-core machine.
say "sbatch --wait examples/slurm/mpi_starmap.sbatch, and with --ntasks=5 tour, at once"
t0=$SECONDS
MPI_STARMAP=$exe timeout -k 10 240 sbatch --wait --quiet --output="$tmp/sbatch.out" \
  examples/slurm/mpi_starmap.sbatch </dev/null &
seed_job=$!
MPI_STARMAP=$exe timeout -k 10 240 sbatch --wait --quiet --ntasks=5 \
  --output="$tmp/sbatch-tour.out" --error="$tmp/sbatch-tour.err" \
  examples/slurm/mpi_starmap.sbatch tour </dev/null &
tour_job=$!
seed_rc=0 tour_rc=0
wait "$seed_job" || seed_rc=$?
wait "$tour_job" || tour_rc=$?
seed_job='' tour_job=''
if [ "$seed_rc" != 0 ] || ! check_seed "$tmp/sbatch.out"; then
  echo "    sbatch exited with $seed_rc; the job's output:"
  sed 's/^/    /' "$tmp/sbatch.out" 2>/dev/null || true
  fail "the sbatch job did not run the seed program right"
fi
say "sbatch: 10 tasks on ranks 1 and 2, 10 results in order"
# What tests/mpi.rs expects of `mpirun -n 3 ... tour`, with 4 workers.
expected='Workers: 4
Map: [1, 4, 9, 16, 25]
Starmap: [3, 7]
Chunked map of 1000 in order: true
Apply: 144
Async: [11, 22]
Imap sum: 328350
Imap unordered: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
Second pool with an initializer: [101, 102, 103]'
if [ "$tour_rc" != 0 ] || [ "$(cat "$tmp/sbatch-tour.out" 2>/dev/null)" != "$expected" ]; then
  echo "    sbatch --ntasks=5 ... tour exited with $tour_rc; the job's output:"
  sed 's/^/    /' "$tmp/sbatch-tour.out" 2>/dev/null || true
  echo "    its stderr:"
  tail -n 40 "$tmp/sbatch-tour.err" 2>/dev/null | sed 's/^/    /' || true
  fail "the sbatch --ntasks=5 tour job did not print what it should"
fi
say "sbatch --ntasks=5 tour: 4 workers, every kind of call right ($((SECONDS - t0)) s for both jobs)"
wait_idle
say "all Slurm checks passed"
