//! The system calls both sides of the pool make (Linux): descriptor
//! passing (`SCM_RIGHTS`), readiness, pidfds, standard descriptors.
//!
//! All go through `rustix`'s safe wrappers, here and beside their callers.
//! The `unsafe` left in the crate is what has no safe wrapper: `fork`,
//! `sigaction` and `atexit` (libc's, in the fork server and its client),
//! the progress page's `mmap`/`munmap` (backend/shm.rs), the mappings of
//! shared values and their views as slices (shared.rs), the progress
//! line's signal handlers (progress.rs), `getrusage` (memory.rs) and std's
//! `env::remove_var`; each
//! block has its SAFETY comment. `libc` also
//! still gives signal numbers and the wait-status macros ([`exit_cause`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::retry_on_intr;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use crate::error::ExitCause;

/// Sends one message carrying `fds` (`SCM_RIGHTS`, none if empty), never
/// raising SIGPIPE; retried when interrupted.
pub(crate) fn send_msg(sock: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let room = if fds.is_empty() {
        0
    } else {
        rustix::cmsg_space!(ScmRights(fds.len()))
    };
    let mut space = vec![MaybeUninit::uninit(); room];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the descriptors to send"));
    }
    let iov = [IoSlice::new(bytes)];
    retry_on_intr(|| rustix::net::sendmsg(&sock, &iov, &mut control, SendFlags::NOSIGNAL))?;
    Ok(())
}

/// Receives one message and up to `max_fds` descriptors (close-on-exec):
/// the message's length (0 at the end of the channel), the descriptors,
/// and whether some were dropped (`MSG_CTRUNC`: no room for them, or this
/// process is out of descriptors). Retried when interrupted.
pub(crate) fn recv_msg(
    sock: impl AsFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds.max(1)))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = retry_on_intr(|| {
        let mut iov = [IoSliceMut::new(buf)];
        rustix::net::recvmsg(&sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
    })?;
    // Every descriptor in an SCM_RIGHTS message is new and ours to own.
    let fds = control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    Ok((msg.bytes, fds, msg.flags.contains(ReturnFlags::CTRUNC)))
}

/// Sends `fds` over `stream` with one marker byte (`SCM_RIGHTS`).
pub(crate) fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_msg(stream, &[FD_MARKER], fds)
}

/// The byte that carries a worker's descriptors.
const FD_MARKER: u8 = 0xFD;

/// Receives the descriptors [`send_fds`] sent (worker side): exactly
/// `count`, close-on-exec.
pub(crate) fn recv_fds(channel: impl AsFd, count: usize) -> io::Result<Vec<OwnedFd>> {
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
pub(crate) fn readable(fd: impl AsFd) -> bool {
    readable_within(fd, Duration::ZERO)
}

/// Whether `fd` has something to read (or has ended) now or within `wait`
/// (a signal cuts the wait short: then `false`).
pub(crate) fn readable_within(fd: impl AsFd, wait: Duration) -> bool {
    let mut polls = [PollFd::new(&fd, PollFlags::IN)];
    let wait = Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    rustix::event::poll(&mut polls, Some(&wait)).is_ok_and(|ready| ready > 0)
}

/// Kills the process of `pidfd` (SIGKILL; nothing happens if it has
/// already been reaped: a pidfd never names another process).
pub(crate) fn kill_pidfd(pidfd: impl AsFd) {
    let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
}

/// Whether the process of `pidfd` has exited (its pidfd is readable).
pub(crate) fn pidfd_exited(pidfd: impl AsFd) -> bool {
    readable(pidfd)
}

/// `pid` as rustix's pid (`None` for 0 or a number above `i32::MAX`,
/// which name no child).
pub(crate) fn pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Whether our child `pid` has exited (without reaping it: `WNOWAIT`
/// leaves it for its reader to reap).
pub(crate) fn child_exited(child: u32) -> bool {
    let Some(child) = pid(child) else {
        return false;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    matches!(
        rustix::process::waitid(WaitId::Pid(child), options),
        Ok(Some(_))
    )
}

/// How a reaped worker ended, from its `waitpid` status (raw, as the fork
/// server reports it).
pub(crate) fn exit_cause(status: i32) -> ExitCause {
    if libc::WIFEXITED(status) {
        ExitCause::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitCause::Signal(libc::WTERMSIG(status))
    } else {
        ExitCause::Unknown
    }
}

/// A close-on-exec copy of `fd`, numbered 3 or above.
pub(crate) fn dup_cloexec(fd: impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}

/// `/dev/null`, opened close-on-exec with `flags` (read, or read and write).
pub(crate) fn dev_null(flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Moves stdin (the channel from the pool) to a close-on-exec descriptor
/// and gives stdin `/dev/null`, so tasks, and programs they start, never
/// see it.
pub(crate) fn take_stdin() -> io::Result<OwnedFd> {
    let channel = dup_cloexec(io::stdin())?;
    let null = dev_null(OFlags::RDONLY)?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(channel)
}

/// Puts `fd` in place of descriptor `to`, a standard one (0, 1 or 2).
pub(crate) fn dup_onto(fd: &OwnedFd, to: RawFd) -> io::Result<()> {
    match to {
        0 => rustix::stdio::dup2_stdin(fd)?,
        1 => rustix::stdio::dup2_stdout(fd)?,
        2 => rustix::stdio::dup2_stderr(fd)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {to} is not a standard one"),
            ));
        }
    }
    Ok(())
}

/// Kills and reaps our child `pid` if it is still unreaped (only then may
/// its pid be signalled: once reaped, it may name another process).
pub(crate) fn kill_and_reap_child(child: u32) {
    let Some(child) = pid(child) else {
        return;
    };
    // WNOHANG tells whether it is still unreaped.
    let unreaped = matches!(
        rustix::process::waitpid(Some(child), WaitOptions::NOHANG),
        Ok(None)
    );
    if unreaped {
        let _ = rustix::process::kill_process(child, Signal::KILL);
        // Now waiting for it to end.
        let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
    }
}

/// A monotonic clock both processes read alike (coarse: a few ms, cheap;
/// read through the vDSO).
#[inline]
pub(crate) fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
