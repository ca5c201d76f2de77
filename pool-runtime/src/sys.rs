//! The system calls both sides of the pool make (Linux): descriptor
//! passing (`SCM_RIGHTS`), readiness, pidfds, standard descriptors.
//!
//! Every `unsafe` block of the crate that is not about a mapping (the
//! progress page) or `fork` sits here, each with its SAFETY comment.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::error::ExitCause;

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
pub(crate) fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    readable(pidfd.as_raw_fd())
}

/// Whether our child `pid` has exited (without reaping it).
pub(crate) fn child_exited(pid: u32) -> bool {
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

pub(crate) fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor of ours returns a new one we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Moves stdin (the channel from the pool) to a close-on-exec descriptor
/// and gives stdin `/dev/null`, so tasks, and programs they start, never
/// see it.
pub(crate) fn take_stdin() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain descriptor calls on fd 0 and descriptors we own.
    unsafe {
        let fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let channel = OwnedFd::from_raw_fd(fd);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(null);
        Ok(channel)
    }
}

/// Puts `fd` in place of descriptor `to` (a standard one).
pub(crate) fn dup_onto(fd: &std::os::fd::OwnedFd, to: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 of a descriptor we own onto a standard one.
    if unsafe { libc::dup2(fd.as_raw_fd(), to) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Kills and reaps our child `pid` if it is still unreaped (only then may
/// its pid be signalled: once reaped, it may name another process).
pub(crate) fn kill_and_reap_child(pid: u32) {
    // SAFETY: waitpid on our own child; WNOHANG tells whether it is still
    // unreaped.
    let unreaped =
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) } == 0;
    if unreaped {
        // SAFETY: our unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        // SAFETY: as above, now waiting for it to end.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    }
}

/// A monotonic clock both processes read alike (coarse: a few ms, cheap).
#[inline]
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_MONOTONIC_COARSE;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_MONOTONIC;
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
