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
    let processes = if std::env::var_os("POOL_PROBE_GATE").is_some() {
        1
    } else {
        2
    };
    let pool = Pool::builder().processes(processes).build().expect("pool");
    let mut pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    pids.extend(server.map(|pid| pid.to_string()));
    println!("pids {}", pids.join(" "));
    if let Some(gate) = std::env::var_os("POOL_PROBE_GATE") {
        let gate = gate.to_string_lossy().into_owned();
        let alarm = std::env::var_os("POOL_PROBE_ALARM").is_some();
        let outcome = pool.apply(task!(unwatched_large_result), (gate.clone(), alarm));
        // Written where the test reads it: how the call ended, and whether
        // the pool went on.
        let first = match outcome {
            Ok(bytes) if bytes.len() == 64 << 20 => "ok".to_owned(),
            Ok(bytes) => format!("{} bytes", bytes.len()),
            Err(Error::WorkerDied { .. }) => "died".to_owned(),
            Err(other) => format!("{other}"),
        };
        let after = (0..3u64).all(|i| pool.apply(task!(common::sleepy), (i, 0)).ok() == Some(i));
        let _ = std::fs::write(
            format!("{gate}.outcome"),
            format!("{first}; went on: {after}"),
        );
        return;
    }
    // Both workers sleep in a task; this never returns before being killed.
    let _ = pool
        .chunksize(1)
        .starmap(task!(common::sleepy), [(1, 60_000), (2, 60_000)]);
}

/// Drops the parent-death signal (as a task that changes its credentials,
/// even for a moment, does), with `alarm` arms a 20 ms interval timer whose
/// signal interrupts every wait, writes the id of its thread to
/// `gate.tid`, waits (a minute at most) for the file `gate`, then returns
/// 64 MiB: a result the parent reads from this worker's memory, which
/// waits for it.
#[task]
fn unwatched_large_result(gate: String, alarm: bool) -> Vec<u8> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    if alarm {
        // A timer of this process firing every 20 ms, SA_RESTART.
        common::tick_every(20_000, true);
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    std::fs::write(format!("{gate}.tid"), tid.to_string()).expect("the tid file");
    let start = Instant::now();
    while !std::path::Path::new(&gate).exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    vec![7; 64 << 20]
}

/// Starts the parent program; returns it and its workers' pids (and its
/// fork server's, if `forked`: then the workers are forks). With `gate`,
/// it has one worker, which runs `unwatched_large_result`.
fn start_parent(own_group: bool, forked: bool) -> (Child, Vec<u32>) {
    start_parent_gated(own_group, forked, None)
}

fn start_parent_gated(
    own_group: bool,
    forked: bool,
    gate: Option<(&str, bool)>,
) -> (Child, Vec<u32>) {
    let mut cmd = common::probe_command("probe_parent", "POOL_PROBE_PARENT");
    if forked {
        cmd.env("POOL_PROBE_FORKED", "1");
    }
    if let Some((gate, alarm)) = gate {
        cmd.env("POOL_PROBE_GATE", gate);
        if alarm {
            cmd.env("POOL_PROBE_ALARM", "1");
        }
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
    let workers = if gate.is_some() { 1 } else { 2 };
    assert_eq!(pids.len(), workers + usize::from(forked));
    if forked {
        assert!(
            pids[..workers]
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

/// A worker blocked handing over a large result (the parent reads it from
/// the worker's memory) exits when the parent dies, even after its task
/// dropped the parent-death signal, and even with a timer's signal
/// interrupting its wait every 20 ms: it watches for a new parent while it
/// waits. Here the parent is stopped, so that it never reads, then killed.
#[test]
fn a_worker_waiting_to_hand_over_a_large_result_exits_when_the_parent_dies() {
    let kill_all = |pids: &[u32]| {
        for &pid in pids {
            // SAFETY: cleaning up processes this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    };
    for (forked, alarm) in [(false, false), (true, false), (false, true), (true, true)] {
        let name = format!("pool-gate-{}-{forked}-{alarm}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&dir);
        let gate = dir.to_string_lossy().into_owned();
        let tid_file = format!("{gate}.tid");
        let _ = std::fs::remove_file(&tid_file);
        let (mut parent, pids) = start_parent_gated(false, forked, Some((&gate, alarm)));
        let worker = pids[0];
        // Once the task runs, the parent stops: it reads nothing more.
        let start = Instant::now();
        while !std::path::Path::new(&tid_file).exists() && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: signalling the program this test started.
        unsafe { libc::kill(parent.id() as i32, libc::SIGSTOP) };
        std::fs::write(&dir, b"go").expect("the gate opens");
        // The worker now builds its result, sends where it is, and waits
        // on a futex: the thread running the task, not that of a test
        // harness around it, which waits on one too.
        let start = Instant::now();
        let waiting = loop {
            let wchan = std::fs::read_to_string(&tid_file)
                .ok()
                .and_then(|tid| {
                    let path = format!("/proc/{worker}/task/{}/wchan", tid.trim());
                    std::fs::read_to_string(path).ok()
                })
                .unwrap_or_default();
            if wchan.contains("futex") {
                break true;
            }
            if start.elapsed() > Duration::from_secs(20) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        parent.kill().expect("SIGKILL the parent");
        parent.wait().expect("reap the parent");
        let _ = std::fs::remove_file(&dir);
        let _ = std::fs::remove_file(&tid_file);
        if !waiting {
            kill_all(&pids);
            panic!(
                "the worker (forked: {forked}, alarm: {alarm}) never waited for its result to be read"
            );
        }
        if std::panic::catch_unwind(|| wait_all_gone(&pids)).is_err() {
            kill_all(&pids);
            panic!("the worker (forked: {forked}, alarm: {alarm}) outlived its parent");
        }
    }
}

/// A forked worker whose fork server dies while it waits for the pool to
/// read its large result (the pool stopped meanwhile) exits, as its
/// parent-death signal would have made it had its task not dropped it;
/// the pool, once it runs again, reports that item's worker as dead (not a
/// broken protocol, and no result delivered twice) and goes on.
#[test]
fn a_forked_worker_waiting_to_hand_over_a_result_exits_with_its_fork_server() {
    let name = format!("pool-gate-{}-server", std::process::id());
    let dir = std::env::temp_dir().join(name);
    let gate = dir.to_string_lossy().into_owned();
    let (tid_file, outcome_file) = (format!("{gate}.tid"), format!("{gate}.outcome"));
    for file in [&gate, &tid_file, &outcome_file] {
        let _ = std::fs::remove_file(file);
    }
    let (mut parent, pids) = start_parent_gated(false, true, Some((&gate, false)));
    let (worker, server) = (pids[0], pids[1]);
    let start = Instant::now();
    while !std::path::Path::new(&tid_file).exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling processes this test started.
    unsafe {
        libc::kill(parent.id() as i32, libc::SIGSTOP);
        libc::kill(server as i32, libc::SIGKILL);
    }
    std::fs::write(&dir, b"go").expect("the gate opens");
    let worker_gone = std::panic::catch_unwind(|| wait_all_gone(&[worker]));
    // SAFETY: as above.
    unsafe { libc::kill(parent.id() as i32, libc::SIGCONT) };
    if worker_gone.is_err() {
        // SAFETY: cleaning up what this test started.
        unsafe { libc::kill(worker as i32, libc::SIGKILL) };
        let _ = parent.kill();
    }
    // (Its exit status says nothing: its harness's report goes to a pipe
    // this test no longer reads.)
    parent.wait().expect("the parent program ends");
    let outcome = std::fs::read_to_string(&outcome_file).unwrap_or_default();
    for file in [&gate, &tid_file, &outcome_file] {
        let _ = std::fs::remove_file(file);
    }
    assert!(worker_gone.is_ok(), "the worker outlived its fork server");
    assert_eq!(outcome, "died; went on: true");
}
