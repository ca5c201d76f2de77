//! The fork server's client half, in the pool's process: starts servers,
//! sends fork requests, relays their answers and exit reports.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crossbeam_channel::Sender;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};
use rustix::process::{Resource, Signal, WaitOptions};

use super::{
    EXITED, FAILED, FORK, FORKED, KILL, READY, RETIRE, SERVER_ENV, STATUS_UNKNOWN, ServerEnv,
    message,
};
use crate::backend::child::{self, ChildProc};
use crate::backend::handshake::{Launch, worker_command};
use crate::error::ExitCause;
use crate::sys;

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

struct Servers {
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

static STATE: Mutex<Servers> = Mutex::new(Servers {
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
fn start_finished(st: &mut Servers) {
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
        Resource::As,
        Resource::Core,
        Resource::Cpu,
        Resource::Data,
        Resource::Fsize,
        Resource::Locks,
        Resource::Memlock,
        Resource::Msgqueue,
        Resource::Nice,
        Resource::Nofile,
        Resource::Nproc,
        Resource::Rss,
        Resource::Rtprio,
        Resource::Rttime,
        Resource::Sigpending,
        Resource::Stack,
    ] {
        let limit = rustix::process::getrlimit(resource);
        (limit.current, limit.maximum).hash(&mut hasher);
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
    fds: &[BorrowedFd<'_>],
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
    if let Err(err) = sys::send_msg(&server.conn, &message(FORK, id, 0), fds) {
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
            return Some(Err(
                "the pool shut down while the worker was forked".to_owned()
            ));
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
            let never = [Errno::DEADLK, Errno::NOSYS].map(Errno::raw_os_error);
            if never.contains(&errno) || !faithful {
                // It found a second thread in itself (it never will fork),
                // the kernel has no pidfds, or it is out of date.
                forget(&server);
                end(&server);
            }
            if never.contains(&errno) {
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
    if sys::send_msg(&server.conn, &message(RETIRE, 0, 0), &[]).is_err() {
        let _ = rustix::net::shutdown(&server.conn, Shutdown::Both);
    }
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
            child::exits_changed();
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
        // The server exits at its end.
        let _ = rustix::net::shutdown(&server.conn, Shutdown::Both);
    }
    if let Some(pid) = st.spawning.and_then(sys::pid) {
        // Our own child, not yet reaped (so the pid is still its own): its
        // starter thread clears `spawning` under the state lock (held
        // here) before it reaps it, or publishes it first.
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
    let pids = st.running.iter().map(|s| s.pid).chain(st.spawning);
    for pid in pids.filter_map(sys::pid) {
        // Our own child (its relay thread may reap it first: then this
        // fails, and the loop ends).
        while matches!(
            rustix::process::waitpid(Some(pid), WaitOptions::NOHANG),
            Ok(None)
        ) && std::time::Instant::now() < deadline
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
        let (mut fds, truncated) = match sys::recv_msg(&server.conn, &mut msg, 1) {
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
                    sys::kill_pidfd(&pidfd);
                }
            },
            (FORKED, None) => {
                // Its pidfd did not fit (this process is out of
                // descriptors, say): the server kills that child itself.
                let _ = sys::send_msg(&server.conn, &message(KILL, word(8), 0), &[]);
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
                    status => sys::exit_cause(status as i32),
                };
                child::report_exit(id, cause);
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
    let mut cmd = worker_command(launch)?;
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
    // rustix has no `atexit` (it is libc's, not a system call).
    // SAFETY: registering a plain `extern "C"` function taking nothing,
    // which never unwinds (a panic there aborts).
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(end_at_exit);
    });
    let ready = wait_readable(&conn, launch.startup_timeout).and_then(|()| {
        let mut msg = [0u8; 12];
        let (n, _, _) = sys::recv_msg(&conn, &mut msg, 0)?;
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
    let mut polls = [PollFd::new(fd, PollFlags::IN)];
    // At most i32::MAX ms, as poll(2) takes.
    let ms = limit.as_millis().min(i32::MAX as u128) as i64;
    let timeout = Timespec {
        tv_sec: ms / 1000,
        tv_nsec: ms % 1000 * 1_000_000,
    };
    match rustix::event::poll(&mut polls, Some(&timeout))? {
        0 => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the fork server did not start in time",
        )),
        _ => Ok(()),
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets (message boundaries kept,
/// descriptors travel with their message), close-on-exec.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}
