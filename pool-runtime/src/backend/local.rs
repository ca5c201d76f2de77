//! The local backend: worker processes that re-execute this very binary.

use std::io::{self, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pool_core::wire::{self, FromWorker, ToWorker};

use super::forkserver;
use super::shm::Progress;
use crate::error::{Error, ExitCause};

/// The environment variable that tells a process it is a worker.
pub(crate) const WORKER_ENV: &str = "POOL_RUNTIME_WORKER";

/// A worker process: a child of this process (started afresh, reaped
/// here), or a child of the fork server (reaped there, which reports how it
/// ended; signalled through a pidfd). Either way its pid is only signalled
/// while it cannot have been recycled.
pub(crate) struct ChildProc {
    pid: u32,
    forked: Option<Forked>,
    /// How it ended, once known.
    ended: Option<ExitCause>,
}

struct Forked {
    /// Its fork request, under which its server reports its end.
    request: u32,
    pidfd: Arc<OwnedFd>,
    /// Whether its server still runs (and so will report its end).
    server_alive: Arc<AtomicBool>,
}

impl ChildProc {
    /// A child of this process.
    pub(crate) fn new(pid: u32) -> Self {
        ChildProc {
            pid,
            forked: None,
            ended: None,
        }
    }

    /// A worker forked by the fork server.
    pub(crate) fn forked(
        pid: u32,
        request: u32,
        pidfd: Arc<OwnedFd>,
        server_alive: Arc<AtomicBool>,
    ) -> Self {
        ChildProc {
            pid,
            forked: Some(Forked {
                request,
                pidfd,
                server_alive,
            }),
            ended: None,
        }
    }

    /// What the scheduler signals it through.
    pub(crate) fn signaller(&self) -> Signaller {
        Signaller {
            pid: self.pid,
            pidfd: self.forked.as_ref().map(|f| Arc::clone(&f.pidfd)),
        }
    }

    /// Sends it SIGKILL, unless it is known to have ended.
    pub(crate) fn kill(&mut self) {
        if self.ended.is_none() {
            self.signaller().kill();
        }
    }

    /// How it ended, if it has; reaps it then (a child of ours).
    pub(crate) fn try_wait(&mut self) -> Option<ExitCause> {
        if let Some(cause) = self.ended {
            return Some(cause);
        }
        let cause = match &self.forked {
            None => self.waitpid(libc::WNOHANG)?,
            Some(forked) => match forkserver::take_exit(forked.request) {
                Some(cause) => cause,
                // Its server is gone: nobody reports its end any more
                // (unless it did just before going).
                None if !forked.server_alive.load(Ordering::Acquire)
                    && pidfd_exited(&forked.pidfd) =>
                {
                    forkserver::take_exit(forked.request).unwrap_or(ExitCause::Unknown)
                }
                None => return None,
            },
        };
        self.ended = Some(cause);
        Some(cause)
    }

    /// Waits for it to end (and reaps it, if a child of ours).
    pub(crate) fn wait(&mut self) -> ExitCause {
        if let Some(cause) = self.ended {
            return cause;
        }
        if self.forked.is_none() {
            let cause = self.waitpid(0).unwrap_or(ExitCause::Unknown);
            self.ended = Some(cause);
            return cause;
        }
        // Its server reports the end of an exited child at once; if it does
        // not (stopped, say), the end is taken as seen, cause unknown.
        let mut exited_since = None;
        loop {
            if let Some(cause) = self.try_wait() {
                return cause;
            }
            if let Some(forked) = &self.forked
                && pidfd_exited(&forked.pidfd)
            {
                let since = *exited_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    self.ended = Some(ExitCause::Unknown);
                    return ExitCause::Unknown;
                }
            }
            forkserver::wait_exit_report(Duration::from_millis(10));
        }
    }

    fn waitpid(&self, flags: libc::c_int) -> Option<ExitCause> {
        let mut status = 0;
        let rc = loop {
            // SAFETY: waitpid on our own child.
            let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, flags) };
            if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break rc;
        };
        match rc {
            0 => None,
            rc if rc < 0 => Some(ExitCause::Unknown),
            _ => Some(exit_cause(status)),
        }
    }
}

/// Signals a worker process: by pid for a child of ours (which only the
/// pool reaps, after which it signals it no more), by pidfd for a forked
/// one (reaped by the fork server at any time).
#[derive(Clone)]
pub(crate) struct Signaller {
    pub(crate) pid: u32,
    pidfd: Option<Arc<OwnedFd>>,
}

impl Signaller {
    /// A child of this process, reaped here.
    pub(crate) fn own_child(pid: u32) -> Self {
        Signaller { pid, pidfd: None }
    }

    /// SIGKILL.
    pub(crate) fn kill(&self) {
        match &self.pidfd {
            Some(pidfd) => signal_pidfd(pidfd, libc::SIGKILL),
            // SAFETY: a child of ours that the caller knows is unreaped.
            None => unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            },
        }
    }

    /// Whether it has exited (without reaping it).
    pub(crate) fn has_exited(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => pidfd_exited(pidfd),
            None => child_exited(self.pid),
        }
    }

    /// Whether it is a child of this process (reaped here).
    pub(crate) fn is_own_child(&self) -> bool {
        self.pidfd.is_none()
    }
}

/// Sends `signal` to the process of `pidfd`.
pub(crate) fn signal_pidfd(pidfd: &OwnedFd, signal: libc::c_int) {
    // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Whether the process of `pidfd` has exited (its pidfd is readable).
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    readable(pidfd.as_raw_fd())
}

/// Whether our child `pid` has exited (without reaping it).
fn child_exited(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is valid; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT leaves the child for its reader to reap.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid when a child changed state (0 otherwise).
    rc == 0 && unsafe { info.si_pid() } != 0
}

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

/// What a worker needs to know about its parent.
///
/// The channel is two socket pairs, one per direction, so that a side
/// reading frames never wakes the other side's reader (a stream socket
/// wakes its peer's waiters whenever its buffer drains). The worker's stdin
/// is its end of the first; its end of the second, the descriptor of its
/// progress page and, under a test harness, of the real stdout come first
/// on it (see [`send_fds`]). Nothing but stdin is inherited, so std starts workers
/// with `posix_spawn` (no copy of the parent's page tables) and no
/// descriptor of a worker can leak into a process started meanwhile.
pub(crate) struct WorkerEnv {
    /// A copy of the real stdout comes after the progress page.
    pub(crate) stdout: bool,
    pub(crate) parent: u32,
}

impl WorkerEnv {
    fn encode(&self) -> String {
        format!("v2:{}:{}", u8::from(self.stdout), self.parent)
    }

    /// Parses the variable's value; `None` if it is not ours.
    pub(crate) fn decode(value: &str) -> Option<WorkerEnv> {
        let mut parts = value.split(':');
        if parts.next()? != "v2" {
            return None;
        }
        let stdout = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let parent = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(WorkerEnv { stdout, parent })
    }
}

/// The pool's initializer: run once in every worker before its first task.
pub(crate) struct InitSpec {
    pub(crate) task: u64,
    pub(crate) name: &'static str,
    /// One encoded argument item.
    pub(crate) body: Vec<u8>,
    /// Decodes the initializer's result; `Err` if it reports a failure.
    pub(crate) check: fn(&[u8]) -> Result<(), String>,
}

/// How to start a worker.
#[derive(Clone)]
pub(crate) struct Launch {
    pub(crate) init: Option<std::sync::Arc<InitSpec>>,
    /// Extra arguments: under a test harness, the ones that select the
    /// worker entry test.
    pub(crate) harness_args: Option<Vec<String>>,
    pub(crate) fingerprint: u64,
    pub(crate) max_frame: usize,
    pub(crate) startup_timeout: Duration,
    /// Workers may be forked by the fork server ([`forkserver`]).
    pub(crate) fork_server: bool,
}

fn executable() -> io::Result<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        // The running image itself, even if the file on disk was replaced.
        Ok("/proc/self/exe".into())
    } else {
        std::env::current_exe()
    }
}

/// A worker process that was started and sent the handshake.
pub(crate) struct Pending {
    child: ChildProc,
    pid: u32,
    to: Arc<UnixStream>,
    from: Arc<UnixStream>,
    progress: Progress,
}

impl Pending {
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
pub(crate) fn start(launch: &Launch, cancelled: &dyn Fn() -> bool) -> Result<Pending, Error> {
    let (to, their_in) = UnixStream::pair().map_err(Error::Spawn)?;
    let (from, their_out) = UnixStream::pair().map_err(Error::Spawn)?;
    let (to, from) = (Arc::new(to), Arc::new(from));
    let mut progress = Progress::create().map_err(Error::Spawn)?;
    let progress_fd = progress
        .fd()
        .ok_or_else(|| Error::Spawn(io::Error::other("no progress descriptor")))?;
    // Under a test harness the worker's stdout is /dev/null until the worker
    // entry restores this copy of ours, which hides the harness's chatter.
    let stdout_copy = match launch.harness_args {
        Some(_) => Some(dup_cloexec(1).map_err(Error::Spawn)?),
        None => None,
    };
    // Through the fork server when it runs (a `fork` of a process that is
    // already past `exec` and `main`'s start); otherwise started afresh.
    // A forked worker also gets this process's current stdout and stderr.
    // What `exec` would leave as stdout and stderr (`/dev/null` for a
    // closed or close-on-exec descriptor); if that cannot be had, no fork.
    let forked = match (inherited(1), inherited(2)) {
        (Ok(out), Ok(err)) => forkserver::fork_worker(
            launch,
            cancelled,
            &[
                their_in.as_raw_fd(),
                their_out.as_raw_fd(),
                progress_fd,
                out.as_ref().map_or(1, AsRawFd::as_raw_fd),
                err.as_ref().map_or(2, AsRawFd::as_raw_fd),
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
            let mut fds = vec![their_out.as_raw_fd(), progress_fd];
            fds.extend(stdout_copy.as_ref().map(AsRawFd::as_raw_fd));
            let child = spawn(launch, their_in, stdout_copy.is_some())?;
            let sent = send_fds(&to, &fds)
                .map_err(|err| format!("could not pass the worker its descriptors: {err}"));
            (child, sent)
        }
    };
    let pid = child.pid;
    // Only the worker holds these now: its exit ends the channel. The
    // page stays mapped; its descriptor is no longer needed.
    drop(their_out);
    drop(stdout_copy);
    progress.forget_fd();
    let pending = Pending {
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
fn inherited(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: F_GETFD on any number only reads its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
        return Ok(None);
    }
    // SAFETY: opening /dev/null; the new descriptor is ours.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if null < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(null) }))
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

/// The command that re-executes this binary (with the harness's
/// arguments under a test harness, and its stdout silenced).
pub(crate) fn worker_command(launch: &Launch) -> io::Result<Command> {
    let mut cmd = Command::new(executable()?);
    if let Ok(exe) = std::env::current_exe() {
        cmd.arg0(exe);
    }
    if let Some(args) = &launch.harness_args {
        cmd.args(args).stdout(Stdio::null());
    }
    Ok(cmd)
}

/// Sends one message carrying `fds` (`SCM_RIGHTS`, none if empty).
pub(crate) fn send_msg(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE only computes a size.
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below point into
    // buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header and room for `fds`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    loop {
        // SAFETY: a valid socket and message.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one message and up to `max_fds` descriptors (close-on-exec):
/// the message's length (0 at the end of the channel), the descriptors,
/// and whether some were dropped (`MSG_CTRUNC`: no room for them, or this
/// process is out of descriptors).
pub(crate) fn recv_msg(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((max_fds.max(1) * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in `send_msg`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: a valid descriptor and message.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote; every
    // descriptor in an SCM_RIGHTS message is new and ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, fds, msg.msg_flags & libc::MSG_CTRUNC != 0))
}

/// Sends `fds` over `stream` with one marker byte (`SCM_RIGHTS`).
pub(crate) fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    send_msg(stream.as_raw_fd(), &[FD_MARKER], fds)
}

/// The byte that carries a worker's descriptors.
const FD_MARKER: u8 = 0xFD;

/// Receives the descriptors [`send_fds`] sent (worker side): exactly
/// `count`, close-on-exec.
pub(crate) fn recv_fds(channel: RawFd, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut marker = [0u8];
    let (n, fds, truncated) = recv_msg(channel, &mut marker, count)?;
    if n != 1 || marker[0] != FD_MARKER || fds.len() != count {
        return Err(io::Error::other(format!(
            "expected {count} descriptors from the pool, got {} (in {n} bytes)",
            fds.len()
        )));
    }
    if truncated {
        return Err(io::Error::other("the pool's descriptors were truncated"));
    }
    Ok(fds)
}

/// Whether `fd` has something to read (or has ended) now.
pub(crate) fn readable(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut poll, 1, 0) > 0 }
}

/// Completes the handshake of a started worker. On failure the worker is
/// killed and reaped, after `forget(pid)`: the pid must not be signalled
/// once reaped, as it may be reused.
pub(crate) fn finish(
    pending: Pending,
    launch: &Launch,
    forget: impl Fn(u32),
) -> Result<Spawned, Error> {
    let Pending {
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
        && let Err(reason) = run_init(&to, &from, init, launch.max_frame)
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

/// Runs the initializer in a new worker and checks its outcome.
fn run_init(
    to: &UnixStream,
    from: &UnixStream,
    init: &InitSpec,
    max_frame: usize,
) -> Result<(), String> {
    let header = wire::encode_header(&ToWorker::Init { task: init.task });
    let mut writer = to;
    wire::write_frame(&mut writer, &header, &init.body, max_frame)
        .map_err(|err| err.to_string())?;
    let mut buf = Vec::new();
    match wire::read_frame(&mut BufReader::new(from), max_frame, &mut buf) {
        Ok(()) => {}
        Err(pool_core::ProtocolError::Closed) => {
            return Err("the worker exited while running it".to_owned());
        }
        Err(pool_core::ProtocolError::Io(err)) if err.kind() == io::ErrorKind::ConnectionReset => {
            return Err("the worker exited while running it".to_owned());
        }
        Err(err) => return Err(err.to_string()),
    }
    check_init_done(&buf, init)
}

/// Checks a worker's answer to [`ToWorker::Init`] (a frame without its
/// length prefix).
pub(crate) fn check_init_done(frame: &[u8], init: &InitSpec) -> Result<(), String> {
    match wire::split_frame::<FromWorker>(frame).map_err(|err| err.to_string())? {
        (
            FromWorker::InitDone {
                failure: Some(failure),
            },
            _,
        ) => Err(failure.to_string()),
        (FromWorker::InitDone { failure: None }, body) => (init.check)(body),
        _ => Err("unexpected answer to the initializer".to_owned()),
    }
}

/// The encoded header of the handshake a worker gets first.
pub(crate) fn hello_header(launch: &Launch) -> Vec<u8> {
    wire::encode_header(&ToWorker::Hello {
        protocol: wire::PROTOCOL_VERSION,
        fingerprint: launch.fingerprint,
        max_frame: launch.max_frame as u64,
    })
}

fn send_hello(stream: &UnixStream, launch: &Launch) -> Result<(), String> {
    let mut writer = stream;
    wire::write_frame(&mut writer, &hello_header(launch), &[], launch.max_frame)
        .map_err(|err| format!("could not send the handshake: {err}"))
}

fn read_ready(stream: &UnixStream, launch: &Launch, pid: u32) -> Result<(), String> {
    stream
        .set_read_timeout(Some(launch.startup_timeout))
        .map_err(|err| err.to_string())?;
    let mut buf = Vec::new();
    let read = wire::read_frame(&mut BufReader::new(stream), 4096, &mut buf);
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

/// Checks a worker's answer to the handshake (a frame without its length
/// prefix): protocol version and registry fingerprint. Returns the pid the
/// worker reports.
pub(crate) fn check_ready(frame: &[u8], launch: &Launch) -> Result<u32, String> {
    match wire::split_frame::<FromWorker>(frame) {
        Ok((
            FromWorker::Ready {
                protocol,
                fingerprint,
                pid,
            },
            _,
        )) => {
            if protocol != wire::PROTOCOL_VERSION {
                return Err(pool_core::ProtocolError::Version {
                    ours: wire::PROTOCOL_VERSION,
                    theirs: protocol,
                }
                .to_string());
            }
            if fingerprint != launch.fingerprint {
                return Err(pool_core::ProtocolError::Fingerprint {
                    ours: launch.fingerprint,
                    theirs: fingerprint,
                }
                .to_string());
            }
            Ok(pid)
        }
        Ok(_) => Err("unexpected first frame".to_owned()),
        Err(err) => Err(format!("bad handshake: {err}")),
    }
}

fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor of ours returns a new one we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// How a reaped worker ended, from its `waitpid` status.
pub(crate) fn exit_cause(status: libc::c_int) -> ExitCause {
    if libc::WIFEXITED(status) {
        ExitCause::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitCause::Signal(libc::WTERMSIG(status))
    } else {
        ExitCause::Unknown
    }
}
