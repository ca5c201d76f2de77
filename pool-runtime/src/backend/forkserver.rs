//! The fork server: a process that forks new workers on the pool's behalf.
//!
//! Starting a worker afresh re-executes this binary: `exec`, the dynamic
//! loader, libc and std start-up and `main` up to `init()`. On the 2-CPU VM
//! of `BENCHMARKS.md` that is ~1.3 ms before any of our code runs, while a
//! `fork` of a small process is ~0.15 ms. So once the first local pool of a
//! process is ready, this process starts one more copy of itself in the
//! background, the fork server, which stops in `init()` and waits. Later
//! workers (of the same pool after a crash or `max_tasks_per_child`, and of
//! every later pool) are forks of it.
//!
//! The server forks with libc's `fork` (so the child's libc and the
//! `pthread_atfork` handlers of libraries are as after any `fork`), reaps
//! its children and reports how each ended; the pool's process signals a
//! forked worker through a pidfd the server opened before anything could
//! reap it, so a recycled pid is never signalled.
//!
//! A forked worker gets the pool process's current stdout and stderr with
//! its request. What else it inherits is the server's, that is the pool
//! process's when the server started: before every request the pool
//! compares a snapshot of its environment, working directory, credentials,
//! capabilities, umask, ignored signals, CPU and memory placement, control
//! groups, namespaces, process group, session, nice value and resource
//! limits with the server's; when one changed, the worker is started afresh
//! and a new server replaces the old one, which retires: it forks no more
//! and exits once its workers have ended. What the snapshot does not cover
//! (a seccomp filter's contents, descriptors opened without close-on-exec)
//! is why [`PoolBuilder::fork_server`](crate::PoolBuilder::fork_server) can
//! turn the server off.
//!
//! A worker wanted while a server is starting waits for it (at most the
//! startup timeout): the server was exec'd earlier than a fresh worker
//! would be, so it is ready sooner.
//!
//! A server that does not answer within the startup timeout is given up:
//! that worker starts afresh on new descriptors (a fork that comes late
//! finds its channel closed and exits).
//!
//! The server is single-threaded outside a test harness (it refuses to fork
//! otherwise), so no lock is held by another thread when it forks. Under a
//! test harness its one other thread is the harness's main thread, which
//! waits for the worker entry test to end.
//!
//! Lifetimes: the server dies with the pool's process (a parent-death
//! signal tied to the thread that started it, which never ends, and the
//! end of its request channel), and the workers it forked die with the
//! server (their parent-death signal) and when their channels end. At its
//! exit the process ends and reaps every server still running, current or
//! retired, so that none is left to init as a zombie.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::local::{self, ChildProc, Launch};
use crate::error::ExitCause;

/// The environment variable that tells a process it is a fork server.
pub(crate) const SERVER_ENV: &str = "POOL_RUNTIME_FORKSERVER";

/// Messages are 12 bytes: `kind`, `a`, `b` as `u32`. To the server:
/// `FORK(id)` with the new worker's descriptors attached, `KILL(id)` (kill
/// that child: its answer could not be used), and `RETIRE` (fork no more;
/// exit once every child has ended). From it: `READY(pid)`, `FORKED(pid,
/// id)` with the child's pidfd attached, `FAILED(errno, id)` and
/// `EXITED(id, wait status)` ([`STATUS_UNKNOWN`] if it could not be read).
const FORK: u32 = 0;
const READY: u32 = 1;
const FORKED: u32 = 2;
const FAILED: u32 = 3;
const EXITED: u32 = 4;
const RETIRE: u32 = 5;
const KILL: u32 = 6;
/// The status of a child whose end was seen but whose status was lost.
const STATUS_UNKNOWN: u32 = u32::MAX;

/// A running server, as the pool's process sees it.
struct Server {
    /// Requests go here; the starter thread reads the server's messages.
    conn: OwnedFd,
    pid: u32,
    /// [`snapshot`] when it started.
    key: u64,
    /// Cleared once it is gone (then its children's ends are unreported).
    alive: Arc<AtomicBool>,
}

struct State {
    /// The process these servers belong to: a copy of it made by `fork`
    /// (without `exec`) must not use them.
    owner: u32,
    server: Option<Arc<Server>>,
    /// A start was requested and has not finished.
    starting: bool,
    /// The server could not start: not tried again.
    disabled: bool,
    /// Every server not yet gone, the current one and retired ones (which
    /// end once their workers have): all are ended at the process's exit.
    running: Vec<Arc<Server>>,
    /// The pid of a server started and not yet ready (killed at exit).
    spawning: Option<u32>,
}

static STATE: Mutex<State> = Mutex::new(State {
    owner: 0,
    server: None,
    starting: false,
    disabled: false,
    running: Vec::new(),
    spawning: None,
});

/// Signalled whenever a start requested by [`prepare`] has finished (with
/// a server or without).
static START_FINISHED: Condvar = Condvar::new();

/// Marks the start under way as finished and wakes those waiting for it.
fn start_finished(st: &mut State) {
    st.starting = false;
    st.spawning = None;
    START_FINISHED.notify_all();
}

/// Answers to fork requests, from the relay thread.
enum Reply {
    Forked(u32, OwnedFd),
    /// It did not fork (nothing was handed to anyone).
    Failed(i32),
    /// The answer is unusable or will never come (the server ended, or this
    /// process could not take the pidfd): whatever was forked is being
    /// killed, and the descriptors must not be used again.
    Lost(&'static str),
}

/// A request waiting for its answer: the pid of its server, and where the
/// answer goes.
type Waiting = (u32, Sender<Reply>);

/// The requests waiting for their answer, by id (several may be under way:
/// the workers of a pool start at once).
static PENDING: std::sync::LazyLock<Mutex<HashMap<u32, Waiting>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// Requests whose fork nobody will take (given up, or answered unusably):
/// their exit reports are dropped.
static ABANDONED: std::sync::LazyLock<Mutex<std::collections::HashSet<u32>>> =
    std::sync::LazyLock::new(|| Mutex::new(std::collections::HashSet::new()));
static NEXT_REQUEST: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How forked workers ended, by request id, as their server reported,
/// until collected.
static EXITS: std::sync::LazyLock<Mutex<HashMap<u32, ExitCause>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));
static EXIT_REPORTED: Condvar = Condvar::new();

/// The thread that starts servers and reads their messages: it never ends.
static STARTER: OnceLock<Sender<Launch>> = OnceLock::new();

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a forked worker inherits from the server rather than from the
/// pool's process at the time of the fork: a hash of it. Read from the
/// process (its main thread's view), never from the calling thread, so
/// that every thread computes the same.
fn snapshot(launch: &Launch) -> u64 {
    let mut hasher = DefaultHasher::new();
    launch.harness_args.hash(&mut hasher);
    for (name, value) in std::env::vars_os() {
        name.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    std::env::current_dir().ok().hash(&mut hasher);
    // Credentials, capabilities, umask, seccomp, ignored signals, CPU and
    // memory placement.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let key = line.split(':').next().unwrap_or_default();
            if matches!(
                key,
                "Umask"
                    | "Uid"
                    | "Gid"
                    | "Groups"
                    | "NoNewPrivs"
                    | "Seccomp"
                    | "Seccomp_filters"
                    | "CapInh"
                    | "CapPrm"
                    | "CapEff"
                    | "CapBnd"
                    | "CapAmb"
                    | "SigIgn"
                    | "Cpus_allowed_list"
                    | "Mems_allowed_list"
            ) {
                line.hash(&mut hasher);
            }
        }
    }
    // Control groups, namespaces.
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .hash(&mut hasher);
    for ns in [
        "cgroup",
        "ipc",
        "mnt",
        "net",
        "pid",
        "pid_for_children",
        "time",
        "time_for_children",
        "user",
        "uts",
    ] {
        std::fs::read_link(format!("/proc/self/ns/{ns}"))
            .ok()
            .hash(&mut hasher);
    }
    // Process group, session and nice value (fields 5, 6 and 19 of stat).
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [2, 3, 16] {
            fields.get(i).hash(&mut hasher);
        }
    }
    // Resource limits.
    for resource in [
        libc::RLIMIT_AS,
        libc::RLIMIT_CORE,
        libc::RLIMIT_CPU,
        libc::RLIMIT_DATA,
        libc::RLIMIT_FSIZE,
        libc::RLIMIT_LOCKS,
        libc::RLIMIT_MEMLOCK,
        libc::RLIMIT_MSGQUEUE,
        libc::RLIMIT_NICE,
        libc::RLIMIT_NOFILE,
        libc::RLIMIT_NPROC,
        libc::RLIMIT_RSS,
        libc::RLIMIT_RTPRIO,
        libc::RLIMIT_RTTIME,
        libc::RLIMIT_SIGPENDING,
        libc::RLIMIT_STACK,
    ] {
        // SAFETY: an all-zero rlimit is valid; getrlimit writes into it.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrlimit(resource, &mut limit) } == 0 {
            (limit.rlim_cur, limit.rlim_max).hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// Forks a worker through the server, handing it `fds` (its channel input
/// and output, progress page and, under a test harness, stdout).
///
/// `None` when no suitable server runs or it could not fork (nothing was
/// handed over: the caller starts the worker afresh); `Some(Err)` when the
/// server took the descriptors but did not answer in time (a late fork
/// would share them, so the start fails instead). Both waits end early
/// once `cancelled()` says so (the pool is shutting down): then
/// `Some(Err)` too.
pub(crate) fn fork_worker(
    launch: &Launch,
    cancelled: &dyn Fn() -> bool,
    fds: &[RawFd],
) -> Option<Result<ChildProc, String>> {
    if !launch.fork_server {
        return None;
    }
    let server = {
        let mut st = lock(&STATE);
        if st.owner != std::process::id() {
            return None;
        }
        // A server being started is ready within the startup timeout, and
        // sooner than a worker started afresh now would be (both exec this
        // binary, the server earlier): wait for it.
        // (No deadline: a startup timeout too large to add means none.)
        let deadline = std::time::Instant::now().checked_add(launch.startup_timeout);
        while st.starting && st.server.is_none() {
            let left = deadline.map_or(Duration::from_secs(3600), |deadline| {
                deadline.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() || cancelled() {
                break;
            }
            st = match START_FINISHED.wait_timeout(st, left.min(CANCEL_POLL)) {
                Ok((st, _)) => st,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        st.server.clone()?
    };
    let id = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(1);
    lock(&PENDING).insert(id, (server.pid, tx));
    if let Err(err) = local::send_msg(server.conn.as_raw_fd(), &message(FORK, id, 0), fds) {
        // Nothing was handed over.
        lock(&PENDING).remove(&id);
        tracing::debug!(error = %err, "the fork server cannot be reached; starting a worker afresh");
        forget(&server);
        end(&server);
        return None;
    }
    // While the server forks: is it still a copy of this process as it is
    // now (environment, directory, credentials, limits...)?
    let faithful = snapshot(launch) == server.key;
    let deadline = std::time::Instant::now().checked_add(launch.startup_timeout);
    let mut reply = Err(crossbeam_channel::RecvTimeoutError::Timeout);
    while !cancelled() {
        let left = deadline.map_or(Duration::from_secs(3600), |deadline| {
            deadline.saturating_duration_since(std::time::Instant::now())
        });
        if left.is_zero() {
            break;
        }
        reply = rx.recv_timeout(left.min(CANCEL_POLL));
        if !matches!(reply, Err(crossbeam_channel::RecvTimeoutError::Timeout)) {
            break;
        }
    }
    if reply.is_err() && lock(&PENDING).remove(&id).is_none() {
        // The answer came just now, after all.
        reply = rx
            .try_recv()
            .map_err(|_| crossbeam_channel::RecvTimeoutError::Timeout);
    }
    let given_up = |why: String| {
        forget(&server);
        end(&server);
        Some(Err(why))
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(_) if cancelled() => {
            // The pool is shutting down: the server may only be slow (or
            // stopped), so it stays; a late fork is killed.
            lock(&ABANDONED).insert(id);
            return Some(Err("the pool shut down while the worker was forked".to_owned()));
        }
        Err(_) => {
            // A late answer finds no one waiting, and its fork is killed.
            lock(&ABANDONED).insert(id);
            return given_up(format!(
                "the fork server did not answer within {:?}",
                launch.startup_timeout
            ));
        }
    };
    match reply {
        Reply::Forked(pid, pidfd) => {
            let mut child = ChildProc::forked(pid, id, Arc::new(pidfd), Arc::clone(&server.alive));
            if faithful {
                return Some(Ok(child));
            }
            // Its workers would not see the change: a new server replaces
            // it, and this worker starts afresh on the same descriptors once
            // the fork, which has not been told anything yet, is gone.
            forget(&server);
            end(&server);
            child.kill();
            child.wait();
            prepare(launch);
            None
        }
        Reply::Failed(errno) => {
            tracing::debug!(
                errno,
                "the fork server could not fork; starting a worker afresh"
            );
            if errno == libc::EDEADLK || errno == libc::ENOSYS || !faithful {
                // It found a second thread in itself (it never will fork),
                // the kernel has no pidfds, or it is out of date.
                forget(&server);
                end(&server);
            }
            if errno == libc::EDEADLK || errno == libc::ENOSYS {
                // Nor will it fork usefully later (no pidfds on this kernel).
                lock(&STATE).disabled = true;
            } else if !faithful {
                prepare(launch);
            }
            None
        }
        Reply::Lost(why) => given_up(why.to_owned()),
    }
}

/// How often a wait for the server checks whether its pool shut down.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// Stops using `server` (a later pool starts another).
fn forget(server: &Arc<Server>) {
    let mut st = lock(&STATE);
    if st.server.as_ref().is_some_and(|s| Arc::ptr_eq(s, server)) {
        st.server = None;
    }
}

/// Retires `server`: it forks no more, and exits once the workers it
/// forked have ended (they go on serving their pools meanwhile). If even
/// that message cannot be sent, its channel is shut, which ends it.
fn end(server: &Server) {
    if local::send_msg(server.conn.as_raw_fd(), &message(RETIRE, 0, 0), &[]).is_err() {
        // SAFETY: shutdown of a socket we own.
        unsafe { libc::shutdown(server.conn.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// How the worker forked for request `id` ended, if its server reported
/// it; removes the report.
pub(crate) fn take_exit(id: u32) -> Option<ExitCause> {
    lock(&EXITS).remove(&id)
}

/// Waits (at most `limit`) for the next exit report.
pub(crate) fn wait_exit_report(limit: Duration) {
    let exits = lock(&EXITS);
    let _ = EXIT_REPORTED.wait_timeout(exits, limit);
}

/// Makes sure a server for `launch` runs or is starting (in the
/// background; nothing waits for it).
pub(crate) fn prepare(launch: &Launch) {
    if !launch.fork_server {
        return;
    }
    {
        let mut st = lock(&STATE);
        let me = std::process::id();
        if st.owner == 0 {
            st.owner = me;
        }
        if st.owner != me || st.disabled || st.starting || st.server.is_some() {
            return;
        }
        st.starting = true;
    }
    let starter = STARTER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Launch>();
        let spawned = std::thread::Builder::new()
            .name("pool-forkserver".into())
            .spawn(move || {
                for launch in rx {
                    // This thread must not end early (see below): a panic
                    // (a bug) only costs this server.
                    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        serve_one(&launch)
                    }));
                    if started.is_err() {
                        let mut st = lock(&STATE);
                        st.disabled = true;
                        start_finished(&mut st);
                    }
                }
                // Never ends: the servers' parent-death signal is tied to
                // this thread.
                loop {
                    std::thread::park();
                }
            });
        if spawned.is_err() {
            let mut st = lock(&STATE);
            st.disabled = true;
            start_finished(&mut st);
        }
        tx
    });
    if starter.send(launch.clone()).is_err() {
        let mut st = lock(&STATE);
        st.disabled = true;
        start_finished(&mut st);
    }
}

/// Starts a server and publishes it (on the starter thread, to which its
/// parent-death signal is tied); a relay thread reads its messages and
/// reaps it once it ends.
fn serve_one(launch: &Launch) {
    {
        let mut st = lock(&STATE);
        if st.server.is_some() {
            start_finished(&mut st);
            return;
        }
    }
    let key = snapshot(launch);
    let started = start_server(launch);
    let mut st = lock(&STATE);
    // Those waiting see the outcome once this guard is dropped.
    start_finished(&mut st);
    let (mut child, conn) = match started {
        Ok(started) => started,
        Err(err) => {
            tracing::debug!(error = %err, "the fork server did not start; workers start afresh");
            st.disabled = true;
            return;
        }
    };
    let server = Arc::new(Server {
        conn,
        pid: child.id(),
        key,
        alive: Arc::new(AtomicBool::new(true)),
    });
    let relayed = Arc::clone(&server);
    let relay_thread = std::thread::Builder::new()
        .name("pool-forkserver-relay".into())
        .spawn(move || {
            relay(&relayed);
            relayed.alive.store(false, Ordering::Release);
            forget(&relayed);
            lock(&STATE).running.retain(|s| !Arc::ptr_eq(s, &relayed));
            {
                let _exits = lock(&EXITS);
                EXIT_REPORTED.notify_all();
            }
            // It exits by itself once retired and childless, or at the end
            // of its channel; killed only if it broke the protocol.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        });
    match relay_thread {
        Ok(_) => {
            tracing::debug!(pid = server.pid, "fork server started");
            st.running.push(Arc::clone(&server));
            st.server = Some(server);
        }
        Err(_) => st.disabled = true,
    }
}

/// At the process's exit: ends every server still running (the current
/// one, retired ones, and one still starting) and reaps them, so that none
/// outlives this process as a zombie waiting for init (which reaps them
/// only later on some systems). Waits at most a second in all, for the
/// state (held only briefly by other threads) and for the servers to end.
extern "C" fn end_at_exit() {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let st = loop {
        match STATE.try_lock() {
            Ok(st) => break st,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        }
    };
    if st.owner != std::process::id() {
        return;
    }
    for server in &st.running {
        // SAFETY: shutdown of a socket we own; the server exits at its end.
        unsafe { libc::shutdown(server.conn.as_raw_fd(), libc::SHUT_RDWR) };
    }
    if let Some(pid) = st.spawning {
        // SAFETY: our own child, not yet reaped: its starter thread
        // clears `spawning` under the state lock (held here) before it
        // reaps it, or publishes it first.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let pids = st.running.iter().map(|s| s.pid).chain(st.spawning);
    for pid in pids {
        // SAFETY: waitpid on our own child (its relay thread may reap it
        // first: then this fails, and the loop ends).
        while unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) } == 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Reads the server's messages until it is gone; then answers the requests
/// it left waiting.
fn relay(server: &Server) {
    loop {
        let mut msg = [0u8; 12];
        let (mut fds, truncated) = match local::recv_msg(server.conn.as_raw_fd(), &mut msg, 1) {
            Ok((12, fds, truncated)) => (fds, truncated),
            // The end of the channel (it exited), or a broken message.
            _ => break,
        };
        let word = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        let waiting = |id: u32| lock(&PENDING).remove(&id).map(|(_, tx)| tx);
        match (word(0), fds.pop()) {
            (FORKED, Some(pidfd)) => match waiting(word(8)) {
                Some(tx) => {
                    let _ = tx.send(Reply::Forked(word(4), pidfd));
                }
                None => {
                    tracing::debug!(pid = word(4), "killing a worker forked too late");
                    lock(&ABANDONED).insert(word(8));
                    local::signal_pidfd(&pidfd, libc::SIGKILL);
                }
            },
            (FORKED, None) => {
                // Its pidfd did not fit (this process is out of
                // descriptors, say): the server kills that child itself.
                let _ = local::send_msg(server.conn.as_raw_fd(), &message(KILL, word(8), 0), &[]);
                lock(&ABANDONED).insert(word(8));
                if let Some(tx) = waiting(word(8)) {
                    let why = if truncated {
                        "the fork server's answer lost its descriptor (is this process out of descriptors?)"
                    } else {
                        "the fork server's answer had no descriptor"
                    };
                    let _ = tx.send(Reply::Lost(why));
                }
            }
            (FAILED, _) => {
                if let Some(tx) = waiting(word(8)) {
                    let _ = tx.send(Reply::Failed(word(4) as i32));
                }
            }
            (EXITED, _) => {
                let id = word(4);
                if lock(&ABANDONED).remove(&id) {
                    continue;
                }
                let cause = match word(8) {
                    STATUS_UNKNOWN => ExitCause::Unknown,
                    status => local::exit_cause(status as libc::c_int),
                };
                lock(&EXITS).insert(id, cause);
                EXIT_REPORTED.notify_all();
            }
            _ => break,
        }
    }
    // Requests it will never answer: those workers start afresh, on new
    // descriptors (it may have forked before it ended; such a fork dies
    // with it).
    let mut pending = lock(&PENDING);
    let orphans: Vec<u32> = pending
        .iter()
        .filter(|(_, (pid, _))| *pid == server.pid)
        .map(|(id, _)| *id)
        .collect();
    for id in orphans {
        if let Some((_, tx)) = pending.remove(&id) {
            let _ = tx.send(Reply::Lost("the fork server ended"));
        }
    }
}

/// Starts the server process and waits for its ready message.
fn start_server(launch: &Launch) -> io::Result<(Child, OwnedFd)> {
    let (conn, theirs) = seqpacket_pair()?;
    let mut cmd = local::worker_command(launch)?;
    let env = ServerEnv {
        harness: launch.harness_args.is_some(),
        parent: std::process::id(),
    };
    cmd.env(SERVER_ENV, env.encode()).stdin(Stdio::from(theirs));
    let spawned = cmd.spawn();
    drop(cmd);
    let mut child = spawned?;
    lock(&STATE).spawning = Some(child.id());
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a plain function.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(end_at_exit);
    });
    let ready = wait_readable(&conn, launch.startup_timeout).and_then(|()| {
        let mut msg = [0u8; 12];
        let (n, _, _) = local::recv_msg(conn.as_raw_fd(), &mut msg, 0)?;
        let pid = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
        if n == 12 && msg[..4] == READY.to_le_bytes() && pid == child.id() {
            Ok(())
        } else {
            Err(io::Error::other("unexpected fork server handshake"))
        }
    });
    match ready {
        Ok(()) => Ok((child, conn)),
        Err(err) => {
            // Forgotten before it is reaped, so that the exit handler never
            // signals a pid that may have been reused.
            lock(&STATE).spawning = None;
            let _ = child.kill();
            let _ = child.wait();
            Err(err)
        }
    }
}

fn wait_readable(fd: &OwnedFd, limit: Duration) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = limit.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut poll, 1, ms) } {
        1 => Ok(()),
        0 => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the fork server did not start in time",
        )),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets (message boundaries kept,
/// descriptors travel with their message), close-on-exec.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What a fork server needs to know: whether it runs under a test harness,
/// and the pool's process id.
pub(crate) struct ServerEnv {
    harness: bool,
    parent: u32,
}

impl ServerEnv {
    fn encode(&self) -> String {
        format!("v1:{}:{}", u8::from(self.harness), self.parent)
    }

    /// Parses the variable's value; `None` if it is not ours.
    pub(crate) fn decode(value: &str) -> Option<ServerEnv> {
        let rest = value.strip_prefix("v1:")?;
        let (stdout, parent) = rest.split_once(':')?;
        let harness = match stdout {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(ServerEnv {
            harness,
            parent: parent.parse().ok()?,
        })
    }
}

fn message(kind: u32, a: u32, b: u32) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&kind.to_le_bytes());
    bytes[4..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes
}

/// Runs the fork server in this process (started with [`SERVER_ENV`]):
/// forks a worker per request, and reports how each ended, until the
/// pool's process goes away.
pub(crate) fn serve(env: ServerEnv) -> ! {
    // SAFETY: removing our own variable before anything forks; the only
    // other thread that can exist is a test harness's main thread, blocked.
    unsafe { std::env::remove_var(SERVER_ENV) };
    crate::worker::die_with_parent(env.parent);
    let conn = match crate::worker::take_stdin() {
        Ok(conn) => conn,
        Err(err) => {
            eprintln!("pool-runtime fork server: cannot take its channel: {err}");
            std::process::exit(crate::worker::EXIT_PROTOCOL);
        }
    };
    let me = std::process::id();
    // Named for `ps` and `top`; each forked worker takes back the name.
    let name = thread_name();
    set_thread_name(c"pool-forkserver".as_ptr());
    let say = |kind, a, b| {
        if local::send_msg(conn.as_raw_fd(), &message(kind, a, b), &[]).is_err() {
            std::process::exit(0);
        }
    };
    say(READY, me, 0);
    // This process reaps its children itself, whatever the program set
    // (a SIGCHLD ignored, as some daemons do, would reap them unseen);
    // each child gets the program's disposition back.
    // SAFETY: an all-zero sigaction is valid; reading, then setting the
    // default disposition of SIGCHLD.
    let sigchld = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGCHLD, &default, &mut old);
        old
    };
    // The worker's channel input and output, progress page, stdout, stderr.
    const COUNT: usize = 5;
    // The children still running (pid, pidfd, request id), each watched
    // through its pidfd (a signal would go to another thread under a test
    // harness).
    let mut children: Vec<(libc::pid_t, OwnedFd, u32)> = Vec::new();
    let mut retired = false;
    loop {
        if retired && children.is_empty() {
            std::process::exit(0);
        }
        let mut polls: Vec<libc::pollfd> = std::iter::once(conn.as_raw_fd())
            .chain(children.iter().map(|(_, fd, _)| fd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds, as many as given.
        if unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            std::process::exit(crate::worker::EXIT_PROTOCOL);
        }
        let mut k = 0;
        children.retain(|(pid, _, id)| {
            k += 1;
            if polls[k].revents == 0 {
                return true;
            }
            let mut status = 0;
            // SAFETY: reaping our own child, which exited.
            let status = match unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) } {
                0 => return true,
                rc if rc == *pid => status as u32,
                // Reaped by someone else: how it ended is lost.
                _ => STATUS_UNKNOWN,
            };
            say(EXITED, *id, status);
            false
        });
        if polls[0].revents == 0 {
            continue;
        }
        // The pool's process closed the channel (or died): done; the
        // workers forked here die with this process (parent-death signal).
        let mut request = [0u8; 12];
        let received = local::recv_msg(conn.as_raw_fd(), &mut request, COUNT);
        let id = u32::from_le_bytes([request[4], request[5], request[6], request[7]]);
        let kind = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
        let fds = match received {
            Ok((12, _, _)) if kind == RETIRE => {
                retired = true;
                continue;
            }
            Ok((12, _, _)) if kind == KILL => {
                if let Some((pid, _, _)) = children.iter().find(|(_, _, i)| *i == id) {
                    // SAFETY: our own unreaped child.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
                continue;
            }
            Ok((12, fds, false)) if kind == FORK && fds.len() == COUNT && !retired => fds,
            Ok((n, _, _)) if n > 0 => {
                say(FAILED, libc::EINVAL as u32, id);
                continue;
            }
            _ => std::process::exit(0),
        };
        if !alone(env.harness) {
            say(FAILED, libc::EDEADLK as u32, id);
            continue;
        }
        // SAFETY: libc's fork of this process, whose only other thread (if
        // any, under a test harness) waits for us (see the module docs);
        // the child only runs the worker below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(children);
            drop(conn);
            // SAFETY: putting back the program's disposition.
            unsafe { libc::sigaction(libc::SIGCHLD, &sigchld, std::ptr::null_mut()) };
            set_thread_name(name.as_ptr().cast());
            become_worker(fds, me);
        }
        drop(fds);
        if pid < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            say(FAILED, errno as u32, id);
            continue;
        }
        // The pidfd is opened before this process can reap the child, so
        // it names that child and no later process with a recycled pid.
        // SAFETY: pidfd_open of our own unreaped child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: our unreaped child, then reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            say(FAILED, errno as u32, id);
            continue;
        }
        // SAFETY: a new descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        if local::send_msg(
            conn.as_raw_fd(),
            &message(FORKED, pid as u32, id),
            &[pidfd.as_raw_fd()],
        )
        .is_err()
        {
            std::process::exit(0);
        }
        children.push((pid, pidfd, id));
    }
}

/// The calling thread's name (`PR_GET_NAME`: at most 15 bytes and a NUL).
fn thread_name() -> [u8; 16] {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    name[15] = 0;
    name
}

/// Names the calling thread (`PR_SET_NAME`, a NUL-terminated string).
fn set_thread_name(name: *const libc::c_char) {
    // SAFETY: `name` points to a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name, 0, 0, 0) };
}

/// Whether no other thread of this process can hold a lock when it forks:
/// it has one thread, or, under a test harness, two, the other being the
/// harness's main thread, which waits for this one's test to end.
fn alone(harness: bool) -> bool {
    let threads = std::fs::read_dir("/proc/self/task").map_or(usize::MAX, Iterator::count);
    // SAFETY: gettid and getpid have no preconditions.
    let on_main = unsafe { libc::gettid() == libc::getpid() };
    threads == 1 || (harness && threads == 2 && !on_main)
}

/// The forked child: a worker on the descriptors of its request, whose
/// parent is the server `server`.
fn become_worker(fds: Vec<OwnedFd>, server: u32) -> ! {
    let mut fds = fds.into_iter();
    let (Some(input), Some(output), Some(progress), Some(stdout), Some(stderr)) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        std::process::exit(crate::worker::EXIT_PROTOCOL);
    };
    crate::worker::run_forked(input, output, progress, [stdout, stderr], server)
}
