//! When the parent dies (SIGKILL) or the terminal sends Ctrl-C (SIGINT to the
//! process group) mid-task, no worker survives, whether started afresh or
//! forked by the fork server (which does not survive either).
//!
//! Each test re-runs this binary as a parent program (the ignored test
//! `probe_parent`), which starts a pool, prints its worker pids and blocks
//! in a long task; then it kills that program.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::Child;
use std::time::{Duration, Instant};

use pool_runtime::prelude::*;
use pool_runtime::task;

pool_runtime::test_support!();

#[test]
#[ignore = "a parent program for the other tests of this file"]
fn probe_parent() {
    if std::env::var_os("POOL_PROBE_PARENT").is_none() {
        return;
    }
    let mut server = None;
    if std::env::var_os("POOL_PROBE_FORKED").is_some() {
        // A first pool starts the fork server; the next one's workers are
        // its forks.
        drop(Pool::builder().processes(2).build().expect("pool"));
        server = Some(common::wait_for_fork_server(None));
    }
    let pool = Pool::builder().processes(2).build().expect("pool");
    let mut pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    pids.extend(server.map(|pid| pid.to_string()));
    println!("pids {}", pids.join(" "));
    // Both workers sleep in a task; this never returns before being killed.
    let _ = pool
        .chunksize(1)
        .starmap(task!(common::sleepy), [(1, 60_000), (2, 60_000)]);
}

/// Starts the parent program; returns it and its workers' pids (and its
/// fork server's, if `forked`: then the workers are forks).
fn start_parent(own_group: bool, forked: bool) -> (Child, Vec<u32>) {
    let mut cmd = common::probe_command("probe_parent", "POOL_PROBE_PARENT");
    if forked {
        cmd.env("POOL_PROBE_FORKED", "1");
    }
    if own_group {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().expect("parent program starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let pids = loop {
        let line = lines
            .next()
            .expect("the parent prints its workers")
            .expect("utf-8");
        // The harness may print "test probe_parent ... " on the same line.
        if let Some((_, rest)) = line.split_once("pids ") {
            break rest
                .split(' ')
                .map(|p| p.parse().expect("pid"))
                .collect::<Vec<u32>>();
        }
    };
    assert_eq!(pids.len(), 2 + usize::from(forked));
    if forked {
        assert!(
            pids[..2]
                .iter()
                .all(|&p| common::started_with(p, "POOL_RUNTIME_FORKSERVER")),
            "the workers are forks"
        );
    }
    (child, pids)
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
    }
}

/// Waits (bounded) for every pid to end; returns how long it took.
fn wait_all_gone(pids: &[u32]) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "workers still alive 10 s later: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

#[test]
fn workers_exit_when_the_parent_is_killed() {
    for forked in [false, true] {
        let (mut parent, pids) = start_parent(false, forked);
        assert!(pids.iter().all(|&p| alive(p)));
        parent.kill().expect("SIGKILL the parent");
        parent.wait().expect("reap the parent");
        let took = wait_all_gone(&pids);
        eprintln!("workers (forked: {forked}) gone {took:?} after their parent was killed");
    }
}

#[test]
fn ctrl_c_leaves_no_worker_behind() {
    for forked in [false, true] {
        let (mut parent, pids) = start_parent(true, forked);
        let group = parent.id() as i32;
        // SAFETY: signalling the process group we just created.
        unsafe { libc::kill(-group, libc::SIGINT) };
        let status = parent.wait().expect("reap the parent");
        assert!(!status.success());
        wait_all_gone(&pids);
    }
}
