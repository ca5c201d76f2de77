//! What the MPI tests share: the example built with the feature, a bounded
//! run, and the check that no process of the job outlives it.
#![allow(dead_code)] // each MPI test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One MPI job at a time: the machine may have two cores, and the check
/// that nothing is left running must not see another test's processes.
pub static ONE_JOB: Mutex<()> = Mutex::new(());

/// Panics, saying what to install, when `mpirun` is not on the PATH.
pub fn require_mpirun() {
    assert!(
        find_on_path("mpirun").is_some(),
        "`mpirun` is not on the PATH (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev)"
    );
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Builds example `name` with the feature, in release mode (once per test
/// binary); returns its path.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    // target/<profile>/deps/<test>-<hash> → target/release/examples/<name>
    let exe = std::env::current_exe().expect("test path");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--release",
                "--features",
                "mpi",
                "--example",
                name,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the {name} example");
        built.push(name.to_owned());
    }
    target.join("release/examples").join(name)
}

/// Runs `command` to its end, or kills it after `limit`.
pub fn run(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Processes still running the example binary: ranks, and local workers
/// (which run the same binary under the same name).
pub fn leftovers(exe: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy();
    dir.flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let first = cmdline.split(|&b| b == 0).next()?;
            (String::from_utf8_lossy(first) == exe).then(|| {
                format!(
                    "pid {}: {}",
                    entry.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
        })
        .collect()
}

/// Waits a moment for processes to be reaped, then checks none is left.
pub fn assert_nothing_left(exe: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = leftovers(exe);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = leftovers(exe);
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// Example `name` under `mpirun -n 3` (shared memory only), with `env`
/// set and passed to every rank; checks that nothing outlives the job.
pub fn mpirun(name: &str, program: Option<&str>, env: &[(&str, &str)], limit: Duration) -> Output {
    require_mpirun();
    let exe = example(name);
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let mut command = Command::new("mpirun");
    command
        .args(["-n", "3", "--oversubscribe"])
        // Shared memory only: starts in ~40 ms instead of ~300 ms.
        .args(["--mca", "pml", "ob1", "--mca", "btl", "self,vader"]);
    for (key, value) in env {
        command.args(["-x", key]).env(key, value);
    }
    command
        .arg(&exe)
        .args(program)
        // Open MPI refuses to run as root without these (CI runs as root).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let output = run(command, limit);
    // mpirun returns once every rank has ended; allow a moment for reaping.
    assert_nothing_left(&exe);
    output
}

/// Standard output and error, as text.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
