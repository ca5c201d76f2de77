//! The example programs print what their Python originals print.
//!
//! `cargo test` builds the examples; these tests run the binaries it built.

use std::path::PathBuf;
use std::process::Command;

fn run_example(name: &str) -> String {
    // target/<profile>/deps/examples-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test path");
    let dir: PathBuf = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples");
    if !dir.join(name).exists() {
        // Built by a plain `cargo test`, not by `cargo test --test examples`.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building example {name}");
    }
    let output = Command::new(dir.join(name))
        .output()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        output.status.success(),
        "{name} failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `(identifier, value)` of `Task {i} executing with {v}` lines, in print order.
fn executing(stdout: &str) -> Vec<(u32, f64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Task "))
        .map(|rest| {
            let (id, value) = rest
                .split_once(" executing with ")
                .expect("seed line format");
            (id.parse().expect("id"), value.parse().expect("value"))
        })
        .collect()
}

/// `(identifier, value)` of `Got result: ({i}, {v})` lines, in print order.
fn got(stdout: &str) -> Vec<(u32, f64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Got result: (")?.strip_suffix(')'))
        .map(|pair| {
            let (id, value) = pair.split_once(", ").expect("tuple format");
            (id.parse().expect("id"), value.parse().expect("value"))
        })
        .collect()
}

fn check_seed_output(stdout: &str, with_results: bool) {
    let mut ran = executing(stdout);
    assert_eq!(ran.len(), 10, "{stdout}");
    ran.sort_by_key(|&(id, _)| id);
    assert_eq!(
        ran.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert!(ran.iter().all(|&(_, v)| (0.0..1.0).contains(&v)));
    let results = got(stdout);
    if with_results {
        // In input order, each equal to what its task printed.
        assert_eq!(results, ran, "{stdout}");
        // Every result comes after every task line: starmap blocks.
        let lines: Vec<&str> = stdout.lines().collect();
        let last_task = lines
            .iter()
            .rposition(|l| l.starts_with("Task "))
            .expect("task lines");
        let first_got = lines
            .iter()
            .position(|l| l.starts_with("Got result"))
            .expect("result lines");
        assert!(last_task < first_got, "{stdout}");
    } else {
        assert!(results.is_empty(), "{stdout}");
    }
}

#[test]
fn starmap_prints_like_the_seed() {
    check_seed_output(&run_example("starmap"), true);
}

#[test]
fn starmap_chunksize_prints_like_the_seed() {
    check_seed_output(&run_example("starmap_chunksize"), true);
}

#[test]
fn starmap_no_return_prints_like_the_seed() {
    check_seed_output(&run_example("starmap_no_return"), false);
}

#[test]
fn power_prints_map_starmap_apply() {
    assert_eq!(
        run_example("power"),
        "Map result: [4, 9, 16]\nStarmap result: [8, 9, 4]\nApply result: 1024\n"
    );
}
