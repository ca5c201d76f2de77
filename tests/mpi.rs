//! The MPI backend under a real `mpirun`: `examples/mpi_starmap.rs` runs
//! with three ranks (rank 0 owns the pool, ranks 1 and 2 are its workers).
//!
//! Run: `cargo test --features mpi --test mpi` (Debian: `apt-get install
//! openmpi-bin libopenmpi-dev libclang-dev`). Without the feature every test
//! is ignored, with that command as the reason, so the test summary says
//! they did not run; with it, a missing `mpirun` fails the tests that need
//! it, saying what to install.

use std::process::{Command, Output};
use std::time::Duration;

mod common;
use common::mpi::{example, run, text};

/// The example under `mpirun -n 3`; checks that no rank outlives the job.
fn mpirun(program: Option<&str>, limit: Duration) -> Output {
    common::mpi::mpirun("mpi_starmap", program, &[], limit)
}

/// Runs `program` of the example under `mpirun -n 3` within `limit`: it
/// must succeed and print exactly `expected`.
fn prints(program: &str, limit: Duration, expected: &str) {
    let output = mpirun(Some(program), limit);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(stdout, expected, "{stderr}");
}

/// `(identifier, value, rank)` of `Task {i} executing with {v} on rank {r}`.
fn executing(stdout: &str) -> Vec<(u32, f64, u32)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Task "))
        .map(|rest| {
            let (id, rest) = rest.split_once(" executing with ").expect("task line");
            let (value, rank) = rest.split_once(" on rank ").expect("a rank");
            (
                id.parse().expect("id"),
                value.parse().expect("value"),
                rank.parse().expect("rank"),
            )
        })
        .collect()
}

/// `(identifier, value)` of `Got result: ({i}, {v})`, in print order.
fn got(stdout: &str) -> Vec<(u32, f64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Got result: (")?.strip_suffix(')'))
        .map(|pair| {
            let (id, value) = pair.split_once(", ").expect("tuple");
            (id.parse().expect("id"), value.parse().expect("value"))
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn the_seed_program_runs_its_tasks_on_ranks_1_and_2() {
    let output = mpirun(None, Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    let mut ran = executing(&stdout);
    assert_eq!(ran.len(), 10, "{stdout}");
    let mut ranks: Vec<u32> = ran.iter().map(|&(_, _, rank)| rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    assert_eq!(ranks, [1, 2], "the workers are ranks 1 and 2\n{stdout}");
    ran.sort_by_key(|&(id, _, _)| id);
    let expected: Vec<(u32, f64)> = ran.iter().map(|&(id, v, _)| (id, v)).collect();
    assert_eq!(
        expected.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    // In input order, each equal to what its task printed.
    assert_eq!(got(&stdout), expected, "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn every_kind_of_call_works_across_ranks() {
    prints(
        "tour",
        Duration::from_secs(120),
        "Workers: 2\n\
         Map: [1, 4, 9, 16, 25]\n\
         Starmap: [3, 7]\n\
         Chunked map of 1000 in order: true\n\
         Apply: 144\n\
         Async: [11, 22]\n\
         Imap sum: 328350\n\
         Imap unordered: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n\
         Second pool with an initializer: [101, 102, 103]\n",
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn a_panicking_task_is_an_err_on_rank_0_and_the_job_ends_cleanly() {
    let output = mpirun(Some("panic"), Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    let error = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Got error: "))
        .unwrap_or_else(|| panic!("no error line\n{stdout}\n{stderr}"));
    assert!(
        error.starts_with(
            "task `mpi_starmap::fragile` panicked on item 3 at examples/mpi_starmap.rs:"
        ) && (error.ends_with("task 3 refuses to run on rank 1")
            || error.ends_with("task 3 refuses to run on rank 2")),
        "{error}"
    );
    assert!(stdout.contains("Pool still works: [4, 9]\n"), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn a_dead_rank_ends_the_whole_job_and_leaves_no_rank_behind() {
    // Plain MPI cannot lose a rank and go on: mpirun ends every rank.
    let output = mpirun(Some("abort"), Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("Task 2 aborting on rank"), "{stderr}");
    assert!(stderr.contains("exited on signal 6"), "{stderr}");
    assert!(!stdout.contains("Unexpected success"), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn a_task_calling_process_exit_aborts_the_job_with_a_message() {
    let output = mpirun(Some("exit"), Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("is exiting in the middle of the job"),
        "{stderr}"
    );
    assert!(!stdout.contains("Unexpected success"), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn a_frame_above_mpis_2_gib_message_limit_is_split() {
    prints(
        "big",
        Duration::from_secs(600),
        "Big argument: 2148532224 bytes, sum 2148532224, intact: true\n",
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn large_byte_results_split_from_one_message_keep_only_their_own_memory() {
    prints(
        "bytes",
        Duration::from_secs(300),
        "Byte results: 40, exact: true, snug: true\n",
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn idle_ranks_do_not_spin() {
    let output = mpirun(Some("idle"), Duration::from_secs(120));
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
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
    assert_eq!(used.len(), 3, "main and two ranks\n{stdout}");
    // A spinning rank would use about 2000 ms.
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
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn an_mpi_library_that_does_not_match_the_launcher_is_refused() {
    // MPICH's mpiexec sets PMI_RANK/PMI_SIZE; Open MPI ignores them and
    // starts a world of one, which must not run as one of three jobs.
    let exe = example("mpi_starmap");
    let mut command = Command::new(&exe);
    command
        .env("PMI_RANK", "0")
        .env("PMI_SIZE", "3")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let output = run(command, Duration::from_secs(60));
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("as rank 0 of 3, but MPI reports rank 0 of 1"),
        "{stderr}"
    );
    assert!(!stdout.contains("Task "), "{stdout}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs the mpi feature: cargo test --features mpi --test mpi"
)]
fn without_a_launcher_the_same_binary_uses_local_processes() {
    let exe = example("mpi_starmap");
    let output = run(Command::new(&exe), Duration::from_secs(60));
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    let tasks = stdout.lines().filter(|l| l.starts_with("Task ")).count();
    assert_eq!(tasks, 10, "{stdout}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("Task "))
            .all(|l| l.contains(" on process ")),
        "{stdout}"
    );
    assert_eq!(got(&stdout).len(), 10, "{stdout}");
}
