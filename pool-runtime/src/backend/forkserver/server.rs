//! The fork server itself: a process of its own (this binary, stopped in
//! `init()`), forking a worker per request and reporting how each ended.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
    let conn = match sys::take_stdin() {
        Ok(conn) => conn,
        Err(err) => {
            eprintln!("pool-runtime fork server: cannot take its channel: {err}");
            std::process::exit(crate::worker::EXIT_PROTOCOL);
        }
    };
    let me = std::process::id();
    // Named for `ps` and `top`; each forked worker takes back the name.
    let name = thread_name();
    set_thread_name(c"pool-forkserver".as_ptr());
    let say = |kind, a, b| {
        if sys::send_msg(conn.as_raw_fd(), &message(kind, a, b), &[]).is_err() {
            std::process::exit(0);
        }
    };
    say(READY, me, 0);
    // This process reaps its children itself, whatever the program set
    // (a SIGCHLD ignored, as some daemons do, would reap them unseen);
    // each child gets the program's disposition back.
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
    let mut children: Vec<(libc::pid_t, OwnedFd, u32)> = Vec::new();
    let mut retired = false;
    loop {
        if retired && children.is_empty() {
            std::process::exit(0);
        }
        let mut polls: Vec<libc::pollfd> = std::iter::once(conn.as_raw_fd())
            .chain(children.iter().map(|(_, fd, _)| fd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds, as many as given.
        if unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            std::process::exit(crate::worker::EXIT_PROTOCOL);
        }
        let mut k = 0;
        children.retain(|(pid, _, id)| {
            k += 1;
            if polls[k].revents == 0 {
                return true;
            }
            let mut status = 0;
            // SAFETY: reaping our own child, which exited.
            let status = match unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) } {
                0 => return true,
                rc if rc == *pid => status as u32,
                // Reaped by someone else: how it ended is lost.
                _ => STATUS_UNKNOWN,
            };
            say(EXITED, *id, status);
            false
        });
        if polls[0].revents == 0 {
            continue;
        }
        // The pool's process closed the channel (or died): done; the
        // workers forked here die with this process (parent-death signal).
        let mut request = [0u8; 12];
        let received = sys::recv_msg(conn.as_raw_fd(), &mut request, COUNT);
        let id = u32::from_le_bytes([request[4], request[5], request[6], request[7]]);
        let kind = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
        let fds = match received {
            Ok((12, _, _)) if kind == RETIRE => {
                retired = true;
                continue;
            }
            Ok((12, _, _)) if kind == KILL => {
                if let Some((pid, _, _)) = children.iter().find(|(_, _, i)| *i == id) {
                    // SAFETY: our own unreaped child.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
                continue;
            }
            Ok((12, fds, false)) if kind == FORK && fds.len() == COUNT && !retired => fds,
            Ok((n, _, _)) if n > 0 => {
                say(FAILED, libc::EINVAL as u32, id);
                continue;
            }
            _ => std::process::exit(0),
        };
        if !alone(env.harness) {
            say(FAILED, libc::EDEADLK as u32, id);
            continue;
        }
        // SAFETY: libc's fork of this process, whose only other thread (if
        // any, under a test harness) waits for us (see the module docs);
        // the child only runs the worker below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(children);
            drop(conn);
            // SAFETY: putting back the program's disposition.
            unsafe { libc::sigaction(libc::SIGCHLD, &sigchld, std::ptr::null_mut()) };
            set_thread_name(name.as_ptr().cast());
            become_worker(fds, me);
        }
        drop(fds);
        if pid < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            say(FAILED, errno as u32, id);
            continue;
        }
        // The pidfd is opened before this process can reap the child, so
        // it names that child and no later process with a recycled pid.
        // SAFETY: pidfd_open of our own unreaped child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: our unreaped child, then reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            say(FAILED, errno as u32, id);
            continue;
        }
        // SAFETY: a new descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        if sys::send_msg(
            conn.as_raw_fd(),
            &message(FORKED, pid as u32, id),
            &[pidfd.as_raw_fd()],
        )
        .is_err()
        {
            std::process::exit(0);
        }
        children.push((pid, pidfd, id));
    }
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

/// Whether no other thread of this process can hold a lock when it forks:
/// it has one thread, or, under a test harness, two, the other being the
/// harness's main thread, which waits for this one's test to end.
fn alone(harness: bool) -> bool {
    let threads = std::fs::read_dir("/proc/self/task").map_or(usize::MAX, Iterator::count);
    // SAFETY: gettid and getpid have no preconditions.
    let on_main = unsafe { libc::gettid() == libc::getpid() };
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
