//! Tasks shared by the integration tests, defined in their own module so the
//! tests also prove `task!(common::...)` across modules.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

pub mod mpi;

use pool_runtime::Pool;
use pool_runtime::task;

/// Installs, in this process, a handler that does nothing for `SIGALRM`
/// (with `SA_RESTART` if `restart`) and a timer firing it every
/// `every_us` µs: every wait that a signal interrupts is cut short.
pub fn tick_every(every_us: i64, restart: bool) {
    extern "C" fn tick(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, then a timer of this process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = tick as extern "C" fn(libc::c_int) as usize;
        if restart {
            action.sa_flags = libc::SA_RESTART;
        }
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
        let every = libc::timeval {
            tv_sec: 0,
            tv_usec: every_us,
        };
        let timer = libc::itimerval {
            it_interval: every,
            it_value: every,
        };
        libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
    }
}

/// `x` to the power `n`.
#[task]
pub fn power(x: u64, n: u32) -> u64 {
    x.pow(n)
}

/// `x` squared.
#[task]
pub fn square(x: u64) -> u64 {
    x * x
}

/// Panics on `x == bad`, otherwise returns `x`.
#[task]
pub fn panic_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("item {x} is bad");
    }
    x
}

/// Kills its own worker with `signal` on `x == bad`.
#[task]
pub fn signal_on(x: u64, bad: u64, signal: i32) -> u64 {
    if x == bad {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), signal) };
        std::thread::sleep(Duration::from_secs(10));
    }
    x
}

/// Exits its worker with `code` on `x == bad`.
#[task]
pub fn exit_on(x: u64, bad: u64, code: i32) -> u64 {
    if x == bad {
        std::process::exit(code);
    }
    x
}

/// Aborts its worker on `x == bad`.
#[task]
pub fn abort_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        std::process::abort();
    }
    x
}

/// The worker's process id.
#[task]
pub fn worker_pid() -> u32 {
    std::process::id()
}

/// Sleeps for `ms` milliseconds, then returns `x`.
#[task]
pub fn sleepy(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

/// Whether `pid` names a live process (or an unreaped zombie).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A pool of two workers, the size every test uses.
pub fn pool() -> Pool {
    Pool::builder()
        .processes(2)
        .build()
        .expect("a pool of two workers starts")
}

/// Whether process `pid` was started with environment variable `var`: its
/// original environment block, which a fork inherits. A worker started
/// afresh has `POOL_RUNTIME_WORKER`; a worker forked by the fork server
/// has the server's `POOL_RUNTIME_FORKSERVER`.
#[allow(dead_code)]
pub fn started_with(pid: u32, var: &str) -> bool {
    let prefix = format!("{var}=");
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|&b| b == 0)
            .any(|entry| entry.starts_with(prefix.as_bytes()))
    })
}

/// The parent process id of `pid`, if it is alive.
#[allow(dead_code)]
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The fork server of this process (other than `not`), once it runs:
/// waits for it (bounded). It is the live child whose thread is named
/// `pool-forkserver` (a retired server may also be one, until it ends:
/// callers exclude it with `not`).
#[allow(dead_code)]
pub fn wait_for_fork_server(not: Option<u32>) -> u32 {
    let me = std::process::id();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                Some(pid) != not
                    && parent_of(pid) == Some(me)
                    && !is_zombie(pid)
                    && is_fork_server(pid)
            });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fork server within 20 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` has exited and waits to be reaped.
#[allow(dead_code)]
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

/// Whether a thread of `pid` is named `pool-forkserver`.
#[allow(dead_code)]
pub fn is_fork_server(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks.flatten().any(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "pool-forkserver")
        })
    })
}

/// This test binary run again as a program: only the ignored test `probe`
/// runs, with environment variable `var` set to "1" (the probe does nothing
/// without it), and its stdout piped.
#[allow(dead_code)]
pub fn probe_command(probe: &str, var: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        probe,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(var, "1")
    .stdout(std::process::Stdio::piped());
    cmd
}

/// Whether every pid in `pids` is a child of `parent` (for workers: forks
/// of that fork server).
#[allow(dead_code)]
pub fn all_children_of(pids: &[u32], parent: u32) -> bool {
    pids.iter().all(|&p| parent_of(p) == Some(parent))
}

/// Runs `f` on a thread; panics with "HANG" if it takes longer than `secs`.
#[allow(dead_code)]
pub fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("HANG: no answer within {secs} s"))
}
