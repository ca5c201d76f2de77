//! The local backend: worker processes that re-execute this very binary.

use std::io::{self, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pool_core::wire::{self, FromWorker, ToWorker};

use super::shm::Progress;
use crate::error::{Error, ExitCause};

/// The environment variable that tells a process it is a worker.
pub(crate) const WORKER_ENV: &str = "POOL_RUNTIME_WORKER";

/// A started worker process, after a successful handshake.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) stream: UnixStream,
    pub(crate) progress: Progress,
}

/// What a worker needs to know about its parent.
pub(crate) struct WorkerEnv {
    pub(crate) channel: RawFd,
    pub(crate) progress: RawFd,
    pub(crate) stdout: Option<RawFd>,
    pub(crate) parent: u32,
}

impl WorkerEnv {
    fn encode(&self) -> String {
        let stdout = self.stdout.map_or(-1, |fd| fd);
        format!(
            "v1:{}:{}:{}:{}",
            self.channel, self.progress, stdout, self.parent
        )
    }

    /// Parses the variable's value; `None` if it is not ours.
    pub(crate) fn decode(value: &str) -> Option<WorkerEnv> {
        let mut parts = value.split(':');
        if parts.next()? != "v1" {
            return None;
        }
        let channel = parts.next()?.parse().ok()?;
        let progress = parts.next()?.parse().ok()?;
        let stdout: RawFd = parts.next()?.parse().ok()?;
        let parent = parts.next()?.parse().ok()?;
        Some(WorkerEnv {
            channel,
            progress,
            stdout: (stdout >= 0).then_some(stdout),
            parent,
        })
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
    child: Child,
    pid: u32,
    stream: UnixStream,
    progress: Progress,
}

impl Pending {
    /// The started process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

/// Starts one worker process and sends it the handshake; [`finish`] reads the answer.
pub(crate) fn start(launch: &Launch) -> Result<Pending, Error> {
    let (ours, theirs) = UnixStream::pair().map_err(Error::Spawn)?;
    let progress = Progress::create().map_err(Error::Spawn)?;
    let progress_fd = progress
        .fd()
        .ok_or_else(|| Error::Spawn(io::Error::other("no progress descriptor")))?;
    let channel_fd = theirs.as_raw_fd();
    // Under a test harness the worker's stdout is /dev/null until the worker
    // entry restores this copy of ours, which hides the harness's chatter.
    let stdout_copy = match launch.harness_args {
        Some(_) => Some(dup_cloexec(1).map_err(Error::Spawn)?),
        None => None,
    };
    let stdout_fd = stdout_copy.as_ref().map(AsRawFd::as_raw_fd);
    let env = WorkerEnv {
        channel: channel_fd,
        progress: progress_fd,
        stdout: stdout_fd,
        parent: std::process::id(),
    };

    let mut cmd = Command::new(executable().map_err(Error::Spawn)?);
    if let Ok(exe) = std::env::current_exe() {
        cmd.arg0(exe);
    }
    cmd.env(WORKER_ENV, env.encode()).stdin(Stdio::null());
    if let Some(args) = &launch.harness_args {
        cmd.args(args).stdout(Stdio::null());
    }
    let inherit = [Some(channel_fd), Some(progress_fd), stdout_fd];
    // SAFETY: the closure only calls async-signal-safe functions (fcntl, prctl).
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherit.into_iter().flatten() {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            #[cfg(target_os = "linux")]
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(Error::Spawn)?;
    drop(theirs);
    drop(stdout_copy);
    let pid = child.id();
    let pending = Pending {
        child,
        pid,
        stream: ours,
        progress,
    };
    match send_hello(&pending.stream, launch) {
        Ok(()) => Ok(pending),
        Err(reason) => Err(Error::Startup {
            pid,
            reason: reap(pending.child, reason),
        }),
    }
}

/// Completes the handshake of a started worker.
pub(crate) fn finish(pending: Pending, launch: &Launch) -> Result<Spawned, Error> {
    let Pending {
        child,
        pid,
        stream,
        progress,
    } = pending;
    if let Err(reason) = read_ready(&stream, launch, pid) {
        return Err(Error::Startup {
            pid,
            reason: reap(child, reason),
        });
    }
    if let Some(init) = &launch.init
        && let Err(reason) = run_init(&stream, init, launch.max_frame)
    {
        return Err(Error::Initializer {
            task: init.name,
            pid,
            reason: reap(child, reason),
        });
    }
    Ok(Spawned {
        child,
        pid,
        stream,
        progress,
    })
}

/// Kills and reaps a worker that failed to start; the reason, with how it
/// ended when that adds something.
fn reap(mut child: Child, reason: String) -> String {
    let _ = child.kill();
    match child.wait().ok().map(exit_cause) {
        Some(ExitCause::Signal(libc::SIGKILL)) | None => reason,
        Some(cause) => format!("{reason} (the worker {cause})"),
    }
}

/// Runs the initializer in a new worker and checks its outcome.
fn run_init(stream: &UnixStream, init: &InitSpec, max_frame: usize) -> Result<(), String> {
    let header = wire::encode_header(&ToWorker::Init { task: init.task });
    let mut writer = stream;
    wire::write_frame(&mut writer, &header, &init.body, max_frame)
        .map_err(|err| err.to_string())?;
    let mut buf = Vec::new();
    match wire::read_frame(&mut BufReader::new(stream), max_frame, &mut buf) {
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
                "no handshake within {:?}: does `main` call `pool_runtime::init()` before anything slow?",
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

/// How a reaped worker ended.
pub(crate) fn exit_cause(status: std::process::ExitStatus) -> ExitCause {
    if let Some(code) = status.code() {
        ExitCause::Code(code)
    } else if let Some(sig) = status.signal() {
        ExitCause::Signal(sig)
    } else {
        ExitCause::Unknown
    }
}
