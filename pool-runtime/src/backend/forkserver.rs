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
//! The server forks with `CLONE_PARENT`: a new worker is a child of the
//! pool's process, as a worker started afresh is, and is reaped and
//! signalled there; nothing else about a worker differs.
//!
//! What the server does not take from the pool's process when it forks:
//!
//! - Its environment, working directory and test-harness arguments are
//!   those of when the server started. The pool checks them before every
//!   request; when they changed, the worker is started afresh and a new
//!   server replaces the old one.
//! - Other process attributes (resource limits, umask, signal dispositions
//!   and the file behind stderr) are those of when the server started.
//!   [`PoolBuilder::fork_server`](crate::PoolBuilder::fork_server) turns the
//!   server off for a program that changes them between pools.
//!
//! The server is single-threaded outside a test harness (it refuses to fork
//! otherwise), so a raw `clone` copies no lock held by another thread.
//! Under a test harness its one other thread is the harness's main thread,
//! which waits for the worker entry test to end.
//!
//! Lifetimes: the server dies with the pool's process (a parent-death
//! signal tied to the thread that started it, which never ends, and the
//! end of its request channel), and so do the workers it forked (their
//! parent-death signal is tied to that same thread, their channels end).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crossbeam_channel::Sender;

use super::local::{self, Launch};

/// The environment variable that tells a process it is a fork server.
pub(crate) const SERVER_ENV: &str = "POOL_RUNTIME_FORKSERVER";

/// Reply kinds, the first 4 bytes of each 8-byte reply (then a `u32`).
const READY: u32 = 1;
const FORKED: u32 = 2;
const FAILED: u32 = 3;

/// A running server, as the pool's process sees it.
struct Server {
    /// Requests go here; replies come back on it.
    conn: UnixStream,
    pid: u32,
    /// [`snapshot`] when it started.
    key: u64,
}

#[derive(Default)]
struct State {
    server: Option<Server>,
    /// A start was requested and has not finished.
    starting: bool,
    /// The server could not start (or forks failed): not tried again.
    disabled: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    server: None,
    starting: false,
    disabled: false,
});

/// The thread that starts servers and waits for them: it never ends.
static STARTER: OnceLock<Sender<Launch>> = OnceLock::new();

fn state() -> MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a forked worker inherits from the server rather than from the
/// pool's process at the time of the fork: a hash of it.
fn snapshot(launch: &Launch) -> u64 {
    let mut hasher = DefaultHasher::new();
    launch.harness_args.hash(&mut hasher);
    for (name, value) in std::env::vars_os() {
        name.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    std::env::current_dir().ok().hash(&mut hasher);
    hasher.finish()
}

/// Forks a worker through the server, handing it `fds` (its channel input
/// and output, progress page and, under a test harness, stdout). `None`
/// when no suitable server runs (the caller starts the worker afresh).
pub(crate) fn fork_worker(launch: &Launch, fds: &[RawFd]) -> Option<u32> {
    if !launch.fork_server {
        return None;
    }
    let key = snapshot(launch);
    let mut st = state();
    let server = st.server.as_ref()?;
    if server.key != key {
        // The environment or working directory changed: this server's
        // workers would not see it. Closing its channel ends it.
        st.server = None;
        drop(st);
        prepare(launch);
        return None;
    }
    match request(server, fds) {
        Ok(Ok(pid)) => Some(pid),
        Ok(Err(errno)) => {
            // It could not fork this time (or it found a second thread in
            // itself: then it never will).
            tracing::debug!(
                errno,
                "the fork server could not fork; starting a worker afresh"
            );
            if errno == libc::EDEADLK {
                st.server = None;
                st.disabled = true;
            }
            None
        }
        Err(err) => {
            // It is gone; the starter thread reaps it, and the next pool
            // starts another.
            tracing::debug!(error = %err, "the fork server is gone; starting a worker afresh");
            st.server = None;
            None
        }
    }
}

/// Sends one fork request and reads the reply: the new worker's pid, or
/// the `errno` of a failed fork.
fn request(server: &Server, fds: &[RawFd]) -> io::Result<Result<u32, i32>> {
    local::send_fds(&server.conn, fds)?;
    match read_reply(&server.conn)? {
        (FORKED, pid) => Ok(Ok(pid)),
        (FAILED, errno) => Ok(Err(errno as i32)),
        _ => Err(io::Error::other("unexpected fork server reply")),
    }
}

fn read_reply(mut conn: &UnixStream) -> io::Result<(u32, u32)> {
    let mut reply = [0u8; 8];
    conn.read_exact(&mut reply)?;
    let [a, b, c, d, e, f, g, h] = reply;
    Ok((
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    ))
}

/// Makes sure a server for `launch` runs or is starting (in the
/// background; nothing waits for it).
pub(crate) fn prepare(launch: &Launch) {
    if !launch.fork_server {
        return;
    }
    let mut st = state();
    if st.disabled || st.starting || st.server.is_some() {
        return;
    }
    st.starting = true;
    drop(st);
    let starter = STARTER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Launch>();
        let spawned = std::thread::Builder::new()
            .name("pool-forkserver".into())
            .spawn(move || {
                for launch in rx {
                    serve_one(&launch);
                }
                // Never ends: the workers the servers forked have their
                // parent-death signal tied to this thread.
                loop {
                    std::thread::park();
                }
            });
        if spawned.is_err() {
            state().disabled = true;
        }
        tx
    });
    if starter.send(launch.clone()).is_err() {
        let mut st = state();
        st.starting = false;
        st.disabled = true;
    }
}

/// Starts a server, publishes it, and waits (on the starter thread) until
/// it ends.
fn serve_one(launch: &Launch) {
    let key = snapshot(launch);
    let started = start_server(launch);
    let mut st = state();
    st.starting = false;
    let mut child = match started {
        Ok((child, conn)) => {
            let pid = child.id();
            st.server = Some(Server { conn, pid, key });
            tracing::debug!(pid, "fork server started");
            child
        }
        Err(err) => {
            tracing::debug!(error = %err, "the fork server did not start; workers start afresh");
            st.disabled = true;
            return;
        }
    };
    drop(st);
    let pid = child.id();
    let _ = child.wait();
    let mut st = state();
    if st.server.as_ref().is_some_and(|s| s.pid == pid) {
        st.server = None;
    }
}

/// Starts the server process and waits for its ready reply.
fn start_server(launch: &Launch) -> io::Result<(Child, UnixStream)> {
    let (conn, theirs) = UnixStream::pair()?;
    let mut cmd = local::worker_command(launch)?;
    let env = ServerEnv {
        stdout: launch.harness_args.is_some(),
        parent: std::process::id(),
    };
    cmd.env(SERVER_ENV, env.encode())
        .stdin(Stdio::from(OwnedFd::from(theirs)));
    let spawned = cmd.spawn();
    drop(cmd);
    let mut child = spawned?;
    conn.set_read_timeout(Some(launch.startup_timeout))?;
    match read_reply(&conn) {
        Ok((READY, pid)) if pid == child.id() => {
            conn.set_read_timeout(Some(launch.startup_timeout))?;
            Ok((child, conn))
        }
        outcome => {
            let _ = child.kill();
            let _ = child.wait();
            Err(match outcome {
                Err(err) => err,
                Ok(_) => io::Error::other("unexpected fork server handshake"),
            })
        }
    }
}

/// What a fork server needs to know: whether requests carry a stdout, and
/// the pool's process id.
pub(crate) struct ServerEnv {
    stdout: bool,
    parent: u32,
}

impl ServerEnv {
    fn encode(&self) -> String {
        format!("v1:{}:{}", u8::from(self.stdout), self.parent)
    }

    /// Parses the variable's value; `None` if it is not ours.
    pub(crate) fn decode(value: &str) -> Option<ServerEnv> {
        let rest = value.strip_prefix("v1:")?;
        let (stdout, parent) = rest.split_once(':')?;
        let stdout = match stdout {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(ServerEnv {
            stdout,
            parent: parent.parse().ok()?,
        })
    }
}

/// Runs the fork server in this process (started with [`SERVER_ENV`]):
/// forks a worker per request until the pool's process goes away.
pub(crate) fn serve(env: ServerEnv) -> ! {
    // SAFETY: removing our own variable before anything forks; the only
    // other thread that can exist is a test harness's main thread, blocked.
    unsafe { std::env::remove_var(SERVER_ENV) };
    crate::worker::die_with_parent(env.parent);
    let conn = match crate::worker::take_stdin() {
        Ok(conn) => UnixStream::from(conn),
        Err(err) => {
            eprintln!("pool-runtime fork server: cannot take its channel: {err}");
            std::process::exit(crate::worker::EXIT_PROTOCOL);
        }
    };
    let harness = env.stdout;
    // Named for `ps` and `top`; each forked worker takes back the name.
    let name = thread_name();
    set_thread_name(c"pool-forkserver".as_ptr());
    let mut out = &conn;
    if reply(&mut out, READY, std::process::id()).is_err() {
        std::process::exit(0);
    }
    let count = 3 + usize::from(env.stdout);
    loop {
        // The pool's process closed the channel (or died): done.
        let Ok(fds) = local::recv_fds(conn.as_raw_fd(), count) else {
            std::process::exit(0);
        };
        if !harness && !single_threaded() {
            let _ = reply(&mut out, FAILED, libc::EDEADLK as u32);
            continue;
        }
        // SAFETY: a fork-like clone of this single-threaded process (see
        // the module docs); the child only runs the worker below.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            drop(conn);
            set_thread_name(name.as_ptr().cast());
            become_worker(fds, env.parent);
        }
        drop(fds);
        let sent = if pid < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            reply(&mut out, FAILED, errno as u32)
        } else {
            reply(&mut out, FORKED, pid as u32)
        };
        if sent.is_err() {
            std::process::exit(0);
        }
    }
}

fn reply(out: &mut &UnixStream, kind: u32, value: u32) -> io::Result<()> {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&kind.to_le_bytes());
    bytes[4..].copy_from_slice(&value.to_le_bytes());
    out.write_all(&bytes)
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

/// Whether this process has one thread.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// The forked child: a worker on the descriptors of its request.
fn become_worker(fds: Vec<OwnedFd>, parent: u32) -> ! {
    let mut fds = fds.into_iter();
    let (Some(input), Some(output), Some(progress)) = (fds.next(), fds.next(), fds.next()) else {
        std::process::exit(crate::worker::EXIT_PROTOCOL);
    };
    let stdout = fds.next();
    crate::worker::run_forked(input, output, progress, stdout, parent)
}
