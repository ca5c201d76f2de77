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
