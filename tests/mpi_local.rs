//! Worker ranks with local worker processes, under a real `mpirun`:
//! `examples/mpi_local.rs` runs with three ranks and
//! `POOL_RUNTIME_MPI_LOCAL_WORKERS=2`, so rank 0's pool has four workers,
//! two local processes of rank 1 and two of rank 2.
//!
//! Run: `cargo test --features mpi --test mpi_local` (Debian: `apt-get
//! install openmpi-bin libopenmpi-dev libclang-dev`). Without the feature
//! every test is ignored, with that command as the reason. Each run is
//! bounded in time and checks that no process of the example (rank or local
//! worker) outlives it.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::mpi::{ONE_JOB, assert_nothing_left, example, run, text};

/// The example under `mpirun -n 3` with `local` local workers per worker
/// rank; checks that nothing outlives the job.
fn mpirun(program: Option<&str>, local: &str, limit: Duration) -> Output {
    common::mpi::mpirun(
        "mpi_local",
        program,
        &[("POOL_RUNTIME_MPI_LOCAL_WORKERS", local)],
        limit,
    )
}

fn assert_success(output: &Output) -> (String, String) {
    let (stdout, stderr) = text(output);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// The `Item i: ...` outcome lines of a fault program, by item.
fn outcomes(stdout: &str) -> Vec<(usize, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (i, rest) = l.strip_prefix("Item ")?.split_once(": ")?;
            Some((i.parse().ok()?, rest.to_owned()))
        })
        .collect()
}

/// Checks that item `failed` failed with `kind` and every other of the
/// `count` items succeeded with its square, and that the pool went on.
fn assert_one_failure(stdout: &str, count: usize, failed: usize, kind: &str) {
    let outcomes = outcomes(stdout);
    assert_eq!(outcomes.len(), count, "{stdout}");
    for (i, (index, outcome)) in outcomes.iter().enumerate() {
        assert_eq!(*index, i, "{stdout}");
        if i == failed {
            assert!(outcome.starts_with(&format!("{kind}: ")), "{stdout}");
        } else {
            assert_eq!(outcome, &format!("ok {}", i * i), "{stdout}");
        }
    }
    assert!(
        stdout.contains("Pool still works: [0, 1, 4, 9, 16, 25]"),
        "{stdout}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn two_ranks_with_two_local_workers_each_are_four_workers() {
    let output = mpirun(None, "2", Duration::from_secs(120));
    let (stdout, stderr) = assert_success(&output);
    assert!(stdout.contains("Workers: 4\n"), "{stdout}\n{stderr}");
    assert!(stdout.contains("In order: true"), "{stdout}");
    // `Item i on rank R pid P`: every item ran once, in a local worker of
    // rank 1 or 2, and each rank's two workers both took part.
    let mut places: Vec<(u32, u32)> = stdout
        .lines()
        .filter_map(|l| {
            let (_, at) = l.strip_prefix("Item ")?.split_once(" on rank ")?;
            let (rank, pid) = at.split_once(" pid ")?;
            Some((rank.parse().ok()?, pid.parse().ok()?))
        })
        .collect();
    assert_eq!(places.len(), 12, "{stdout}");
    places.sort_unstable();
    places.dedup();
    assert_eq!(places.len(), 4, "four worker processes: {places:?}");
    assert_eq!(
        places.iter().filter(|(rank, _)| *rank == 1).count(),
        2,
        "{places:?}"
    );
    assert_eq!(
        places.iter().filter(|(rank, _)| *rank == 2).count(),
        2,
        "{places:?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn a_local_worker_killed_mid_call_is_one_err_and_the_rest_complete() {
    let output = mpirun(Some("kill"), "2", Duration::from_secs(120));
    let (stdout, _) = assert_success(&output);
    assert_one_failure(&stdout, 12, 5, "WorkerDied");
    assert!(
        stdout.contains("on item 5 was killed by signal 9 (SIGKILL)"),
        "{stdout}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn an_item_whose_local_worker_died_is_retried_when_the_call_allows_it() {
    let output = mpirun(Some("retry"), "2", Duration::from_secs(120));
    let (stdout, _) = assert_success(&output);
    assert!(
        stdout.contains("Item 4 kills its process on rank "),
        "{stdout}"
    );
    let outcomes = outcomes(&stdout);
    assert_eq!(outcomes.len(), 8, "{stdout}");
    for (i, (index, outcome)) in outcomes.iter().enumerate() {
        assert_eq!((*index, outcome.as_str()), (i, &*format!("ok {}", i * i)));
    }
    assert!(
        stdout.contains("Pool still works: [0, 1, 4, 9, 16, 25]"),
        "{stdout}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn a_panic_in_a_local_worker_is_one_err() {
    let output = mpirun(Some("panic"), "2", Duration::from_secs(120));
    let (stdout, _) = assert_success(&output);
    assert_one_failure(&stdout, 6, 2, "TaskPanicked");
    assert!(stdout.contains("item 2 refuses on rank "), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn a_timeout_kills_the_local_worker_and_the_pool_goes_on() {
    let start = Instant::now();
    let output = mpirun(Some("timeout"), "2", Duration::from_secs(120));
    let took = start.elapsed();
    let (stdout, _) = assert_success(&output);
    assert_one_failure(&stdout, 8, 3, "TaskTimeout");
    assert!(stdout.contains("exceeded its timeout of 500ms"), "{stdout}");
    // The item never ends: only the kill lets the job finish.
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn a_pool_dropped_while_busy_kills_its_local_workers_and_the_next_pool_works() {
    let start = Instant::now();
    let output = mpirun(Some("drop"), "2", Duration::from_secs(120));
    let (stdout, _) = assert_success(&output);
    assert_eq!(
        stdout,
        "Dropped a busy pool in under 5 s: true\n\
         Its call: Terminated\n\
         Next pool: [0, 1, 4, 9, 16, 25]\n"
    );
    // The items sleep for a minute: only killing them ends the job sooner.
    assert!(start.elapsed() < Duration::from_secs(50));
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn a_rank_that_dies_ends_the_job_and_leaves_no_local_worker_behind() {
    // Only a local worker's death is survived; its rank's is not.
    let output = mpirun(Some("rankkill"), "2", Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Item 2 kills its parent process"),
        "{stdout}"
    );
    assert!(stderr.contains("exited on signal 9"), "{stderr}");
    assert!(!stdout.contains("Unexpected success"), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn every_kind_of_call_works_on_local_workers() {
    let output = mpirun(Some("tour"), "2", Duration::from_secs(120));
    let (stdout, _) = assert_success(&output);
    let expected = "Workers: 4\n\
                    Map: [1, 4, 9, 16, 25]\n\
                    Starmap: [3, 7]\n\
                    Chunked map of 1000 in order: true\n\
                    Apply: 144\n\
                    Async: [11, 22]\n\
                    Imap sum: 328350\n\
                    Second pool with an initializer: [101, 102, 103]\n";
    assert_eq!(stdout, expected);
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn idle_ranks_and_local_workers_do_not_spin() {
    let output = mpirun(Some("idle"), "2", Duration::from_secs(120));
    let (stdout, _) = assert_success(&output);
    let used: Vec<(String, u64)> = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("CPU used while idle for 2 s: ")?
                .strip_suffix(" ms")
        })
        .map(|rest| {
            let (place, n) = rest.rsplit_once(' ').expect("place and number");
            (place.to_owned(), n.parse().expect("milliseconds"))
        })
        .collect();
    let ranks = used
        .iter()
        .filter(|(place, _)| place.starts_with("its rank's process"))
        .count();
    let workers = used
        .iter()
        .filter(|(place, _)| place.starts_with("worker "))
        .count();
    assert_eq!((ranks, workers), (2, 4), "{stdout}");
    // A spinning process would use about 2000 ms.
    for (place, ms) in &used {
        assert!(
            *ms < 500,
            "{place} used {ms} ms of CPU while idle\n{stdout}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn a_bad_local_worker_count_ends_the_job_with_a_message() {
    let output = mpirun(None, "lots", Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("POOL_RUNTIME_MPI_LOCAL_WORKERS=\"lots\": expected `auto` or a number"),
        "{stderr}"
    );
    assert!(!stdout.contains("Item "), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi_local"
)]
fn without_a_launcher_the_same_program_uses_local_processes() {
    let exe = example("mpi_local");
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let mut command = Command::new(&exe);
    command
        .arg("kill")
        .env("POOL_RUNTIME_MPI_LOCAL_WORKERS", "2");
    let output = run(command, Duration::from_secs(60));
    assert_nothing_left(&exe);
    let (stdout, _) = assert_success(&output);
    assert_one_failure(&stdout, 12, 5, "WorkerDied");
    assert!(!stdout.contains(" on rank "), "{stdout}");
}
