//! Starting a worker process on this machine: this very binary re-executed,
//! or forked by the fork server; the handshake and initializer over its
//! channel. The local backend and, on worker ranks, the MPI backend use it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::Arc;

use pool_core::wire::{self, ToWorker};
use rustix::fs::OFlags;
use rustix::io::FdFlags;

use super::child::{ChildProc, Signaller};
use super::forkserver::client as forkserver;
use super::handshake::{
    InitSpec, Launch, check_init_done, check_ready, hello_body, hello_header, worker_command,
};
use super::shm::Progress;
use crate::error::{Error, ExitCause};
use crate::sys::{self, dup_cloexec, send_fds};
use crate::worker::{WORKER_ENV, WorkerEnv};

/// A started worker process, after a successful handshake.
pub(crate) struct Spawned {
    pub(crate) child: ChildProc,
    pub(crate) pid: u32,
    /// Frames to the worker.
    pub(crate) to: Arc<UnixStream>,
    /// Frames from the worker.
    pub(crate) from: Arc<UnixStream>,
    pub(crate) progress: Progress,
}

/// A worker process that was started and sent the handshake.
pub(crate) struct Starting {
    child: ChildProc,
    pid: u32,
    to: Arc<UnixStream>,
    from: Arc<UnixStream>,
    progress: Progress,
}

impl Starting {
    /// The started process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// What to signal it through.
    pub(crate) fn signaller(&self) -> Signaller {
        self.child.signaller()
    }

    /// The channel: frames to the worker, frames from it.
    pub(crate) fn channel(&self) -> (&Arc<UnixStream>, &Arc<UnixStream>) {
        (&self.to, &self.from)
    }
}

/// Starts one worker process and sends it the handshake; [`finish`] reads the answer.
///
/// `cancelled` is asked while waiting for the fork server: once it says
/// yes (the pool is shutting down), the start ends with
/// [`Error::Terminated`].
pub(crate) fn start(launch: &Launch, cancelled: &dyn Fn() -> bool) -> Result<Starting, Error> {
    let (to, their_in) = UnixStream::pair().map_err(Error::Spawn)?;
    let (from, their_out) = UnixStream::pair().map_err(Error::Spawn)?;
    let (to, from) = (Arc::new(to), Arc::new(from));
    let mut progress = Progress::create().map_err(Error::Spawn)?;
    let progress_fd = progress
        .borrowed_fd()
        .ok_or_else(|| Error::Spawn(io::Error::other("no progress descriptor")))?;
    // Under a test harness the worker's stdout is /dev/null until the worker
    // entry restores this copy of ours, which hides the harness's chatter.
    let stdout_copy = match launch.harness_args {
        Some(_) => Some(dup_cloexec(io::stdout()).map_err(Error::Spawn)?),
        None => None,
    };
    // Through the fork server when it runs (a `fork` of a process that is
    // already past `exec` and `main`'s start); otherwise started afresh.
    // A forked worker also gets this process's current stdout and stderr.
    // What `exec` would leave as stdout and stderr (`/dev/null` for a
    // closed or close-on-exec descriptor); if that cannot be had, no fork.
    let forked = match (
        inherited(io::stdout().as_fd()),
        inherited(io::stderr().as_fd()),
    ) {
        (Ok(out), Ok(err)) => forkserver::fork_worker(
            launch,
            cancelled,
            &[
                their_in.as_fd(),
                their_out.as_fd(),
                progress_fd,
                out.as_ref().map_or(io::stdout().as_fd(), AsFd::as_fd),
                err.as_ref().map_or(io::stderr().as_fd(), AsFd::as_fd),
            ],
        ),
        _ => None,
    };
    let (child, sent) = match forked {
        Some(Ok(child)) => {
            drop(their_in);
            (child, Ok(()))
        }
        Some(Err(_)) if cancelled() => return Err(Error::Terminated),
        Some(Err(reason)) => {
            // The server took the descriptors and did not answer: they are
            // given up (a late fork finds its channel closed and exits),
            // and the worker is started afresh on new ones.
            tracing::debug!(reason, "starting a worker afresh");
            return start(launch, cancelled);
        }
        None => {
            let mut fds = vec![their_out.as_fd(), progress_fd];
            fds.extend(stdout_copy.as_ref().map(AsFd::as_fd));
            let child = spawn(launch, their_in, stdout_copy.is_some())?;
            let sent = send_fds(&to, &fds)
                .map_err(|err| format!("could not pass the worker its descriptors: {err}"));
            (child, sent)
        }
    };
    let pid = child.pid();
    // Only the worker holds these now: its exit ends the channel. The
    // page stays mapped; its descriptor is no longer needed.
    drop(their_out);
    drop(stdout_copy);
    progress.forget_fd();
    let pending = Starting {
        child,
        pid,
        to,
        from,
        progress,
    };
    match sent.and_then(|()| send_hello(&pending.to, launch)) {
        Ok(()) => Ok(pending),
        Err(reason) => Err(Error::Startup {
            pid,
            reason: reap(pending.child, reason),
        }),
    }
}

/// What a process started now would have as descriptor `fd` (1 or 2):
/// `None` when it is `fd` itself; `/dev/null` in place of a descriptor that
/// is closed or close-on-exec (a forked worker gets the result).
fn inherited(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    // F_GETFD fails (EBADF) on a closed descriptor.
    if rustix::io::fcntl_getfd(fd).is_ok_and(|flags| !flags.contains(FdFlags::CLOEXEC)) {
        return Ok(None);
    }
    sys::dev_null(OFlags::RDWR).map(Some)
}

/// Starts a worker process afresh: this binary, with the worker variable
/// set and `their_in` as its stdin.
fn spawn(launch: &Launch, their_in: UnixStream, stdout: bool) -> Result<ChildProc, Error> {
    let env = WorkerEnv {
        stdout,
        parent: std::process::id(),
    };
    let mut cmd = worker_command(launch).map_err(Error::Spawn)?;
    cmd.env(WORKER_ENV, env.encode())
        .stdin(Stdio::from(OwnedFd::from(their_in)));
    let spawned = cmd.spawn();
    // The command holds the worker's end of the channel: close it here, or
    // the worker's exit would not end the channel.
    drop(cmd);
    // The child is reaped through its pid (`ChildProc`); std's handle
    // holds nothing else (no pipes) and does nothing when dropped.
    Ok(ChildProc::new(spawned.map_err(Error::Spawn)?.id()))
}

/// Completes the handshake of a started worker. On failure the worker is
/// killed and reaped, after `forget(pid)`: the pid must not be signalled
/// once reaped, as it may be reused.
pub(crate) fn finish(
    pending: Starting,
    launch: &Launch,
    forget: impl Fn(u32),
) -> Result<Spawned, Error> {
    let Starting {
        child,
        pid,
        to,
        from,
        progress,
    } = pending;
    if let Err(reason) = read_ready(&from, launch, pid) {
        forget(pid);
        return Err(Error::Startup {
            pid,
            reason: reap(child, reason),
        });
    }
    if let Some(init) = &launch.init
        && let Err(reason) = run_init(&to, &from, init, launch.max_frame, pid)
    {
        forget(pid);
        return Err(Error::Initializer {
            task: init.name,
            pid,
            reason: reap(child, reason),
        });
    }
    Ok(Spawned {
        child,
        pid,
        to,
        from,
        progress,
    })
}

/// Kills and reaps a worker that failed to start; the reason, with how it
/// ended when that adds something.
fn reap(mut child: ChildProc, reason: String) -> String {
    child.kill();
    match child.wait() {
        ExitCause::Signal(libc::SIGKILL) | ExitCause::Unknown => reason,
        cause => format!("{reason} (the worker {cause})"),
    }
}

/// Runs the initializer in a new worker and checks its outcome; the log
/// records it emits are emitted here.
fn run_init(
    to: &UnixStream,
    from: &UnixStream,
    init: &InitSpec,
    max_frame: usize,
    pid: u32,
) -> Result<(), String> {
    let header = wire::encode_header(&ToWorker::Init { task: init.task });
    let mut writer = to;
    wire::write_frame(&mut writer, &header, &init.body, max_frame)
        .map_err(|err| err.to_string())?;
    let mut buf = Vec::new();
    loop {
        // Unbuffered: the frames after the answer are the reader thread's.
        match wire::read_frame(&mut { from }, max_frame, &mut buf) {
            Ok(()) => {}
            Err(pool_core::ProtocolError::Closed) => {
                return Err("the worker exited while running it".to_owned());
            }
            Err(pool_core::ProtocolError::Io(err))
                if err.kind() == io::ErrorKind::ConnectionReset =>
            {
                return Err("the worker exited while running it".to_owned());
            }
            Err(err) => return Err(err.to_string()),
        }
        if !crate::logging::emit::emit_start_frame(&buf, pid, Some(init.name)) {
            return check_init_done(&buf, init);
        }
    }
}

fn send_hello(stream: &UnixStream, launch: &Launch) -> Result<(), String> {
    let mut writer = stream;
    wire::write_frame(
        &mut writer,
        &hello_header(launch),
        &hello_body(launch),
        launch.max_frame,
    )
    .map_err(|err| format!("could not send the handshake: {err}"))
}

fn read_ready(stream: &UnixStream, launch: &Launch, pid: u32) -> Result<(), String> {
    stream
        .set_read_timeout(Some(launch.startup_timeout))
        .map_err(|err| err.to_string())?;
    let mut buf = Vec::new();
    // Unbuffered: the frames after this one are the reader thread's.
    let read = wire::read_frame(&mut { stream }, 4096, &mut buf);
    stream
        .set_read_timeout(None)
        .map_err(|err| err.to_string())?;
    match read {
        Ok(()) => {}
        Err(pool_core::ProtocolError::Io(err))
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!(
                "no handshake within {:?}: does `main` call `pool_runtime::init()` first, before anything slow and before anything that reads stdin or starts programs that do?",
                launch.startup_timeout
            ));
        }
        Err(pool_core::ProtocolError::Closed) => {
            return Err("it exited before the handshake: `main` must call `pool_runtime::init()` first (or use `#[pool_runtime::main]`); in a test binary add `pool_runtime::test_support!();`".to_owned());
        }
        Err(err) => return Err(format!("bad handshake: {err}")),
    }
    let reported = check_ready(&buf, launch)?;
    if reported != pid {
        return Err(format!("the worker reports pid {reported}"));
    }
    Ok(())
}
