//! Worker processes of this machine, as the pool's process sees them: a
//! child of its own, or a child of the fork server (reaped there, which
//! reports how it ended), and how each is signalled so that a recycled pid
//! is never hit.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::io::retry_on_intr;
use rustix::process::{Signal, WaitOptions};

use crate::error::ExitCause;
use crate::sys;

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
    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

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
            None => self.waitpid(WaitOptions::NOHANG)?,
            Some(forked) => match take_exit(forked.request) {
                Some(cause) => cause,
                // Its server is gone: nobody reports its end any more
                // (unless it did just before going).
                None if !forked.server_alive.load(Ordering::Acquire)
                    && sys::pidfd_exited(&forked.pidfd) =>
                {
                    take_exit(forked.request).unwrap_or(ExitCause::Unknown)
                }
                None => return None,
            },
        };
        self.ended = Some(cause);
        Some(cause)
    }

    /// Waits for it to end (and reaps it, if a child of ours).
    pub(crate) fn wait(&mut self) -> ExitCause {
        self.wait_reported(Duration::from_secs(2))
    }

    /// [`ChildProc::wait`], giving the fork server at most `grace` after a
    /// forked worker is gone to report how it ended (the pool shutting
    /// down killed it, and a stopped server must not hold that up).
    pub(crate) fn wait_reported(&mut self, grace: Duration) -> ExitCause {
        if let Some(cause) = self.ended {
            return cause;
        }
        if self.forked.is_none() {
            let cause = self
                .waitpid(WaitOptions::empty())
                .unwrap_or(ExitCause::Unknown);
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
                && sys::pidfd_exited(&forked.pidfd)
            {
                let since = *exited_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > grace {
                    self.ended = Some(ExitCause::Unknown);
                    return ExitCause::Unknown;
                }
            }
            wait_exit_report(Duration::from_millis(10));
        }
    }

    /// Reaps it (our own child), retried when interrupted: `None` while
    /// it runs (with `NOHANG`), its cause once reaped, `Unknown` if it
    /// cannot be (reaped elsewhere, say).
    fn waitpid(&self, options: WaitOptions) -> Option<ExitCause> {
        let Some(pid) = sys::pid(self.pid) else {
            return Some(ExitCause::Unknown);
        };
        match retry_on_intr(|| rustix::process::waitpid(Some(pid), options)) {
            Ok(None) => None,
            Ok(Some((_, status))) => Some(sys::exit_cause(status.as_raw())),
            Err(_) => Some(ExitCause::Unknown),
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
    /// SIGKILL.
    pub(crate) fn kill(&self) {
        match &self.pidfd {
            Some(pidfd) => sys::kill_pidfd(pidfd),
            // A child of ours that the caller knows is unreaped.
            None => {
                if let Some(pid) = sys::pid(self.pid) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }

    /// Whether it has exited (without reaping it).
    pub(crate) fn has_exited(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => sys::pidfd_exited(pidfd),
            None => sys::child_exited(self.pid),
        }
    }

    /// Whether it is a child of this process (reaped here).
    pub(crate) fn is_own_child(&self) -> bool {
        self.pidfd.is_none()
    }
}

/// How forked workers ended, by request id, as their server reported,
/// until collected.
/// How forked workers ended, by request id, as their server reported,
/// until collected.
static EXITS: std::sync::LazyLock<Mutex<HashMap<u32, ExitCause>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

static EXIT_REPORTED: Condvar = Condvar::new();

/// How the worker forked for request `id` ended, if its server reported
/// it; removes the report.
pub(crate) fn take_exit(id: u32) -> Option<ExitCause> {
    lock_exits().remove(&id)
}

/// Waits (at most `limit`) for the next exit report.
pub(crate) fn wait_exit_report(limit: Duration) {
    let exits = lock_exits();
    let _ = EXIT_REPORTED.wait_timeout(exits, limit);
}

/// Records how the worker forked for request `id` ended (its server said).
pub(crate) fn report_exit(id: u32, cause: ExitCause) {
    lock_exits().insert(id, cause);
    EXIT_REPORTED.notify_all();
}

fn lock_exits() -> std::sync::MutexGuard<'static, HashMap<u32, ExitCause>> {
    EXITS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes those waiting for exit reports (a server is gone: some ends will
/// never be reported).
pub(crate) fn exits_changed() {
    let _exits = lock_exits();
    EXIT_REPORTED.notify_all();
}
