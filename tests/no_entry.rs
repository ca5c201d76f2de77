//! A binary that cannot serve as a worker gets an error that says what to
//! add, and never spawns anything: this test binary deliberately has no
//! `pool_runtime::test_support!()`.

use std::process::Command;

use pool_runtime::prelude::*;

#[test]
fn a_binary_without_a_worker_entry_cannot_start_a_pool() {
    let err = Pool::builder()
        .processes(2)
        .build()
        .expect_err("no worker entry in this binary");
    assert!(matches!(err, Error::NotWorkerCapable), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("pool_runtime::init()") && text.contains("test_support!"),
        "{text}"
    );
}

#[test]
#[ignore = "run by started_as_a_worker_without_reaching_the_entry"]
fn probe_pool_in_worker_context() {
    match Pool::builder().processes(2).build() {
        Ok(_) => println!("PROBE: a pool started"),
        Err(err) => println!("PROBE: {err}"),
    }
}

#[test]
fn started_as_a_worker_without_reaching_the_entry() {
    // As if a pool had started this binary as a worker: the variable is set,
    // but nothing here serves as the worker entry.
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "probe_pool_in_worker_context",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("POOL_RUNTIME_WORKER", "v2:0:1")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROBE: ").map(|(_, r)| r))
        .expect("the probe ran");
    assert!(
        line.contains("started as a pool worker but never reached the worker entry point"),
        "{line}"
    );
    assert!(line.contains("pool_runtime::init()"), "{line}");
}
