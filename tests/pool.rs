//! Blocking `map`, `starmap` and `apply` through real worker processes.

mod common;

use common::{pool, power, square};
use pool_runtime::prelude::*;
use pool_runtime::task;

pool_runtime::test_support!();

#[test]
fn starmap_keeps_input_order_over_100_000_items() {
    let pool = pool();
    let items: Vec<(u64, u32)> = (0..100_000u64)
        .map(|i| (i % 1000, (i % 4) as u32))
        .collect();
    let expected: Vec<u64> = items.iter().map(|&(x, n)| x.pow(n)).collect();
    assert_eq!(
        pool.starmap(task!(power), items).expect("starmap"),
        expected
    );
}

#[test]
fn map_runs_a_task_from_another_module() {
    let pool = pool();
    assert_eq!(
        pool.map(task!(common::square), 0..10u64).expect("map"),
        (0..10u64).map(|x| x * x).collect::<Vec<_>>()
    );
    // Imported with the function, the handle comes along.
    assert_eq!(pool.map(task!(square), [7]).expect("map"), [49]);
}

#[test]
fn apply_runs_one_call() {
    let pool = pool();
    assert_eq!(pool.apply(task!(power), (2, 10)).expect("apply"), 1024);
    assert_eq!(pool.apply(task!(square), 12).expect("apply"), 144);
}

#[test]
fn explicit_chunk_sizes_give_the_same_results() {
    let pool = pool();
    let items: Vec<(u64, u32)> = (0..1000u64).map(|i| (i, 2)).collect();
    let expected: Vec<u64> = (0..1000u64).map(|i| i * i).collect();
    for chunk in [1, 7, 1000, 5000] {
        assert_eq!(
            pool.chunksize(chunk)
                .starmap(task!(power), items.clone())
                .expect("starmap"),
            expected,
            "chunksize {chunk}"
        );
    }
    let err = pool
        .chunksize(0)
        .starmap(task!(power), items)
        .expect_err("chunksize 0 is refused");
    assert!(matches!(err, Error::InvalidSetting(_)), "{err}");
}

#[test]
fn empty_input_gives_empty_output() {
    let pool = pool();
    let none: Vec<(u64, u32)> = Vec::new();
    assert!(
        pool.starmap(task!(power), none)
            .expect("starmap")
            .is_empty()
    );
}

#[test]
fn workers_are_separate_processes() {
    let pool = pool();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(!pids.contains(&std::process::id()));
    let seen = pool
        .chunksize(1)
        .starmap(task!(common::worker_pid), vec![(); 20])
        .expect("starmap");
    assert!(
        seen.iter().all(|pid| pids.contains(pid)),
        "tasks ran in {seen:?}, workers are {pids:?}"
    );
}

#[test]
fn zero_processes_is_an_error() {
    let err = Pool::builder()
        .processes(0)
        .build()
        .expect_err("zero processes");
    assert!(matches!(err, Error::InvalidSetting(_)), "{err}");
}

/// A task named `args` whose parameter is also named `args`: the generated
/// code names its own argument struct hygienically, so neither is shadowed.
#[task]
fn args(args: u64) -> u64 {
    args * 3
}

#[test]
fn a_task_named_args_runs() {
    let pool = pool();
    assert_eq!(pool.map(task!(args), [1, 2, 3]).expect("map"), [3, 6, 9]);
    assert_eq!(pool.apply(task!(args), 5).expect("apply"), 15);
}

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("worker's stat");
    // Fields after the command name, which may hold spaces: state is field
    // 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("stat's command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn idle_workers_sleep_after_a_burst_of_calls() {
    // A worker out of input watches for the next frame a moment before it
    // blocks; after that moment it must use no CPU at all.
    let pool = Pool::builder().processes(2).build().expect("pool");
    for i in 0..2_000u64 {
        assert_eq!(pool.apply(task!(square), i).expect("apply"), i * i);
    }
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    for ((pid, b), a) in pids.iter().zip(&before).zip(&after) {
        // A spinning worker would use about 2 s (200 ticks at 100 Hz).
        assert!(
            a - b < 50,
            "worker {pid} used {} ticks while idle for 2 s",
            a - b
        );
    }
    assert_eq!(pool.apply(task!(square), 9).expect("apply"), 81);
}
