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

pub(crate) mod client;
pub(crate) mod server;

/// The environment variable that tells a process it is a fork server.
pub(crate) const SERVER_ENV: &str = "POOL_RUNTIME_FORKSERVER";

/// Messages are 12 bytes: `kind`, `a`, `b` as `u32`. To the server:
/// `FORK(id)` with the new worker's descriptors attached, `KILL(id)` (kill
/// that child: its answer could not be used), and `RETIRE` (fork no more;
/// exit once every child has ended). From it: `READY(pid)`, `FORKED(pid,
/// id)` with the child's pidfd attached, `FAILED(errno, id)` and
/// `EXITED(id, wait status)` ([`STATUS_UNKNOWN`] if it could not be read).
pub(crate) const FORK: u32 = 0;
pub(crate) const READY: u32 = 1;
pub(crate) const FORKED: u32 = 2;
pub(crate) const FAILED: u32 = 3;
pub(crate) const EXITED: u32 = 4;
pub(crate) const RETIRE: u32 = 5;
pub(crate) const KILL: u32 = 6;

/// The status of a child whose end was seen but whose status was lost.
pub(crate) const STATUS_UNKNOWN: u32 = u32::MAX;

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

pub(crate) fn message(kind: u32, a: u32, b: u32) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&kind.to_le_bytes());
    bytes[4..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes
}
