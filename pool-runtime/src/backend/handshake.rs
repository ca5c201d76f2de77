//! What every backend's workers are told first and answer: the handshake
//! (protocol version, registry fingerprint, frame and memory limits, log
//! level) and the
//! initializer, and how a worker is launched. Backend-neutral: the local
//! backend and MPI both use it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use pool_core::wire::{self, FromWorker, ToWorker};

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
    /// Workers may be forked by the fork server ([`forkserver`](super::forkserver)).
    pub(crate) fork_server: bool,
    /// A worker whose resident memory is above this many bytes after an
    /// item retires (`max_memory_per_child`).
    pub(crate) max_memory: Option<u64>,
    /// The level of log records workers forward ([`wire::LOG_OFF`] ..
    /// [`wire::LOG_TRACE`]); `None`: what this process shows when the
    /// worker starts ([`forward_level`](crate::logging::forward_level)).
    pub(crate) log_level: Option<u8>,
    /// Workers may leave large results for the pool to read from their
    /// memory ([`pull`](super::pull)): the pool reads their channels
    /// itself.
    pub(crate) pull_results: bool,
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
        max_memory: launch.max_memory,
    })
}

/// The body of the handshake: the level of log records to forward, then
/// the flags ([`wire::HELLO_PULL_RESULTS`]).
pub(crate) fn hello_body(launch: &Launch) -> Vec<u8> {
    let level = launch
        .log_level
        .unwrap_or_else(crate::logging::forward_level);
    let flags = if launch.pull_results && super::pull::available() {
        wire::HELLO_PULL_RESULTS
    } else {
        0
    };
    vec![level, flags]
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

fn executable() -> io::Result<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        // The running image itself, even if the file on disk was replaced.
        Ok("/proc/self/exe".into())
    } else {
        std::env::current_exe()
    }
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
