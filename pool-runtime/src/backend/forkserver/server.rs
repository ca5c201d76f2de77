//! The fork server itself: a process of its own (this binary, stopped in
//! `init()`), forking a worker per request and reporting how each ended.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

use super::{
    EXITED, FAILED, FORK, FORKED, KILL, READY, RETIRE, SERVER_ENV, STATUS_UNKNOWN, ServerEnv,
    message,
};
use crate::sys;

/// Runs the fork server in this process (started with [`SERVER_ENV`]):
/// forks a worker per request, and reports how each ended, until the
/// pool's process goes away.
pub(crate) fn serve(env: ServerEnv) -> ! {
    // SAFETY: removing our own variable before anything forks; the only
    // other thread that can exist is a test harness's main thread, blocked.
    unsafe { std::env::remove_var(SERVER_ENV) };
    crate::worker::die_with_parent(env.parent);
    // Its forks are workers of the pool of that process.
    crate::shared::set_pool_process(env.parent);
    let conn = match sys::take_stdin() {
        Ok(conn) => conn,
        Err(err) => {
            eprintln!("pool-runtime fork server: cannot take its channel: {err}");
            std::process::exit(crate::worker::EXIT_PROTOCOL);
        }
    };
    let me = std::process::id();
    // Named for `ps` and `top`; each forked worker takes back the name.
    let name = rustix::thread::name().unwrap_or_default();
    set_thread_name(c"pool-forkserver");
    let say = |kind, a, b| {
        if sys::send_msg(&conn, &message(kind, a, b), &[]).is_err() {
            std::process::exit(0);
        }
    };
    say(READY, me, 0);
    // This process reaps its children itself, whatever the program set
    // (a SIGCHLD ignored, as some daemons do, would reap them unseen);
    // each child gets the program's disposition back.
    // rustix has no safe `sigaction`.
    // SAFETY: an all-zero sigaction is valid; reading, then setting the
    // default disposition of SIGCHLD.
    let sigchld = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGCHLD, &default, &mut old);
        old
    };
    // The worker's channel input and output, progress page, stdout, stderr.
    const COUNT: usize = 5;
    // The children still running (pid, pidfd, request id), each watched
    // through its pidfd (a signal would go to another thread under a test
    // harness).
    let mut children: Vec<(Pid, OwnedFd, u32)> = Vec::new();
    let mut retired = false;
    loop {
        if retired && children.is_empty() {
            std::process::exit(0);
        }
        // Which of the channel and the children's pidfds are readable.
        let ready: Vec<bool> = {
            let mut polls: Vec<PollFd<'_>> = std::iter::once(conn.as_fd())
                .chain(children.iter().map(|(_, fd, _)| fd.as_fd()))
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
                .collect();
            match rustix::event::poll(&mut polls, None) {
                Ok(_) => polls.iter().map(|p| !p.revents().is_empty()).collect(),
                Err(Errno::INTR) => continue,
                Err(_) => std::process::exit(crate::worker::EXIT_PROTOCOL),
            }
        };
        let mut k = 0;
        children.retain(|(pid, _, id)| {
            k += 1;
            if !ready[k] {
                return true;
            }
            // Reaping our own child, which exited.
            let status = match rustix::process::waitpid(Some(*pid), WaitOptions::NOHANG) {
                Ok(None) => return true,
                Ok(Some((_, status))) => status.as_raw() as u32,
                // Reaped by someone else: how it ended is lost.
                Err(_) => STATUS_UNKNOWN,
            };
            say(EXITED, *id, status);
            false
        });
        if !ready[0] {
            continue;
        }
        // The pool's process closed the channel (or died): done; the
        // workers forked here die with this process (parent-death signal).
        let mut request = [0u8; 12];
        let received = sys::recv_msg(&conn, &mut request, COUNT);
        let id = u32::from_le_bytes([request[4], request[5], request[6], request[7]]);
        let kind = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
        let fds = match received {
            Ok((12, _, _)) if kind == RETIRE => {
                retired = true;
                continue;
            }
            Ok((12, _, _)) if kind == KILL => {
                if let Some((pid, _, _)) = children.iter().find(|(_, _, i)| *i == id) {
                    // Our own unreaped child (its pid is still its own).
                    let _ = rustix::process::kill_process(*pid, Signal::KILL);
                }
                continue;
            }
            Ok((12, fds, false)) if kind == FORK && fds.len() == COUNT && !retired => fds,
            Ok((n, _, _)) if n > 0 => {
                say(FAILED, Errno::INVAL.raw_os_error() as u32, id);
                continue;
            }
            _ => std::process::exit(0),
        };
        if !alone(env.harness) {
            say(FAILED, Errno::DEADLK.raw_os_error() as u32, id);
            continue;
        }
        // libc's fork: rustix has none for a program that uses libc (its
        // `kernel_fork` skips libc's own bookkeeping in the child).
        // SAFETY: a fork of this process, whose only other thread (if any,
        // under a test harness) waits for us (see the module docs); the
        // child only runs the worker below.
        let pid = unsafe { libc::fork() };
        // Read at once, before anything else can set errno.
        let fork_error = (pid < 0).then(io::Error::last_os_error);
        if pid == 0 {
            drop(children);
            drop(conn);
            // rustix has no safe `sigaction`.
            // SAFETY: putting back the program's disposition.
            unsafe { libc::sigaction(libc::SIGCHLD, &sigchld, std::ptr::null_mut()) };
            set_thread_name(&name);
            become_worker(fds, me);
        }
        drop(fds);
        let Some(pid) = (pid > 0).then(|| Pid::from_raw(pid)).flatten() else {
            let errno = fork_error.and_then(|err| err.raw_os_error()).unwrap_or(0);
            say(FAILED, errno as u32, id);
            continue;
        };
        // The pidfd is opened before this process can reap the child, so
        // it names that child and no later process with a recycled pid.
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(errno) => {
                // Our unreaped child, then reaped.
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                say(FAILED, errno.raw_os_error() as u32, id);
                continue;
            }
        };
        if sys::send_msg(
            &conn,
            &message(FORKED, pid.as_raw_nonzero().get() as u32, id),
            &[pidfd.as_fd()],
        )
        .is_err()
        {
            std::process::exit(0);
        }
        children.push((pid, pidfd, id));
    }
}

/// Names the calling thread (`PR_SET_NAME`: at most 15 bytes are kept).
/// A plain system call, fit for a forked child.
fn set_thread_name(name: &CStr) {
    let _ = rustix::thread::set_name(name);
}

/// Whether no other thread of this process can hold a lock when it forks:
/// it has one thread, or, under a test harness, two, the other being the
/// harness's main thread, which waits for this one's test to end.
fn alone(harness: bool) -> bool {
    let threads = std::fs::read_dir("/proc/self/task").map_or(usize::MAX, Iterator::count);
    let on_main = rustix::thread::gettid() == rustix::process::getpid();
    threads == 1 || (harness && threads == 2 && !on_main)
}

/// The forked child: a worker on the descriptors of its request, whose
/// parent is the server `server`.
fn become_worker(fds: Vec<OwnedFd>, server: u32) -> ! {
    let mut fds = fds.into_iter();
    let (Some(input), Some(output), Some(progress), Some(stdout), Some(stderr)) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        std::process::exit(crate::worker::EXIT_PROTOCOL);
    };
    crate::worker::run_forked(input, output, progress, [stdout, stderr], server)
}
