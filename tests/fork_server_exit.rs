//! At its exit, a program ends and reaps its fork servers, the current one
//! and a retired one that still serves a pool's workers, so that none is
//! left to init as a zombie.
//!
//! The test re-runs this binary as a program (the ignored test
//! `probe_program`) while it is a child subreaper: whatever that program
//! leaves behind becomes the test's child, where it can be seen.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use pool_runtime::Pool;

pool_runtime::test_support!();

#[test]
#[ignore = "a program for the other test of this file"]
fn probe_program() {
    if std::env::var_os("POOL_PROBE_EXIT").is_none() {
        return;
    }
    let pool = || Pool::builder().processes(2).build().expect("pool");
    let _first = pool();
    let retired = common::wait_for_fork_server(None);
    // Forked by the first server, and kept until the exit.
    let second = pool();
    assert!(
        common::all_children_of(&second.worker_pids(), retired),
        "the second pool's workers are forks"
    );
    // A changed environment retires that server (it still serves the
    // second pool), and a new one starts.
    // SAFETY: no other thread of this program reads the environment now.
    unsafe { std::env::set_var("POOL_PROBE_CHANGED", "1") };
    let _third = pool();
    let current = common::wait_for_fork_server(Some(retired));
    // Once a pool's workers are its forks, the new server is in use.
    let fourth = pool();
    assert!(
        common::all_children_of(&fourth.worker_pids(), current),
        "the fourth pool's workers are forks of the new server"
    );
    assert!(
        common::process_exists(retired),
        "the retired server still runs"
    );
    println!("servers {retired} {current}");
    // Exits with every pool still up.
    std::process::exit(0);
}

#[test]
fn a_program_reaps_its_fork_servers_at_exit() {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    let me = std::process::id();
    let mut program = common::probe_command("probe_program", "POOL_PROBE_EXIT")
        .spawn()
        .expect("the program starts");
    let stdout = program.stdout.take().expect("piped");
    let servers: Vec<u32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let (_, rest) = line.split_once("servers ")?;
            rest.split(' ').map(|p| p.parse().ok()).collect()
        })
        .expect("the program prints its fork servers");
    assert_eq!(servers.len(), 2);
    assert!(program.wait().expect("reap the program").success());

    // What the program did not reap is now ours (alive or a zombie).
    let adopted: Vec<u32> = servers
        .iter()
        .copied()
        .filter(|&pid| common::parent_of(pid) == Some(me))
        .collect();

    // Reap everything adopted (the program's workers, which end with it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: reaping our own children.
        let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if rc < 0 {
            break;
        }
        if rc == 0 {
            assert!(Instant::now() < deadline, "an adopted process still runs");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        adopted.is_empty(),
        "fork servers left behind by the program: {adopted:?} of {servers:?}"
    );
}
