//! The example programs print what their Python originals print.
//!
//! `cargo test` builds the examples; these tests run the binaries it built.

use std::path::PathBuf;
use std::process::Command;

fn run_example(name: &str) -> String {
    run_example_with(name, &[], &[]).0
}

/// Builds the example with `features`, runs it with `env`; (stdout, stderr).
fn run_example_with(name: &str, features: &[&str], env: &[(&str, &str)]) -> (String, String) {
    // target/<profile>/deps/examples-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test path");
    let dir: PathBuf = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples");
    {
        // Up to date after a plain `cargo test`; not after `cargo test --test examples`.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--example", name])
            .args(features.iter().flat_map(|f| ["--features", f]))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building example {name}");
    }
    let output = Command::new(dir.join(name))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{name} failed: {:?}\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
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
fn power_prints_map_starmap_async_and_apply() {
    assert_eq!(
        run_example("power"),
        "Map result: [4, 9, 16]\nStarmap result: [8, 9, 4]\nMain process can do other work here...\n\
         Async result: [8, 9, 4]\nApply result: 1024\n"
    );
}

#[test]
fn shared_data_sums_slices_of_one_shared_array() {
    let (stdout, _) = run_example_with("shared_data", &[], &[("SHARED_DATA_MIB", "16")]);
    assert!(
        stdout.contains("an array of 2097152 f64 (16 MiB)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1000 tasks summed 1072693248 in") && stdout.contains("sum ok"),
        "{stdout}"
    );
    for stage in [
        "share_slice: ",
        "after each worker read one page:",
        "after the 1000 slices:",
        "after each worker read it all:",
    ] {
        assert!(stdout.contains(stage), "no {stage:?} in {stdout}");
    }
}

#[test]
fn init_worker_initializes_every_worker_once_and_maps() {
    let stdout = run_example("init_worker");
    let lines: Vec<&str> = stdout.lines().collect();
    let inits: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("Worker ") && l.ends_with(" initializing..."))
        .collect();
    // Four workers, each initialized once, all before the result.
    assert_eq!(inits.len(), 4, "{stdout}");
    let mut pids: Vec<&str> = inits
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    pids.dedup();
    assert_eq!(pids.len(), 4, "{stdout}");
    assert_eq!(
        lines.last(),
        Some(&"[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]"),
        "{stdout}"
    );
}

#[test]
fn apply_async_prints_like_the_seed() {
    let stdout = run_example("apply_async");
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |text: &str| {
        lines
            .iter()
            .position(|l| *l == text)
            .unwrap_or_else(|| panic!("no {text:?} in:\n{stdout}"))
    };
    let submitted = at("All tasks submitted. Main process is free.");
    let callback = at("Callback received: Task2 finished after 1s");
    let manual = at("Manually retrieved: Task2 finished after 1s");
    at("Task1 starting");
    at("Task2 starting");
    assert!(submitted < manual && callback < manual, "{stdout}");
    // Leaving main stops the pool before Task1 (2 s) and Task3 (3 s) end.
    assert!(
        !stdout.contains("Task1 finished") && !stdout.contains("Task3 finished"),
        "{stdout}"
    );
}

#[test]
fn kill_worker_loses_exactly_the_running_item() {
    let stdout = run_example("kill_worker");
    assert!(
        stdout.contains("without retries: 999 correct results, 1 error(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("was killed by signal 9 (SIGKILL)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("with retries(1): 1000 correct results, 0 error(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("next call: [2, 4, 6]"), "{stdout}");
}

#[test]
fn progress_draws_nothing_when_redirected_and_the_hook_reports() {
    let (stdout, stderr) = run_example_with("progress", &["progress"], &[]);
    // stdout and stderr are pipes here: no bar, no escape codes.
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        stdout.contains("bar: 1500 results, last Some(1500)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hook: 400/400") && stdout.contains("hook: 400 results"),
        "{stdout}"
    );
}

#[test]
fn observe_traces_a_killed_worker_with_its_pid_and_signal() {
    let (stdout, stderr) =
        run_example_with("observe", &[], &[("RUST_LOG", "debug"), ("NO_COLOR", "1")]);
    let victim = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("killed worker ")?
                .split(':')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no kill in:\n{stdout}"));
    let event = stderr
        .lines()
        .find(|l| l.contains("pool worker died") && l.contains(&format!("pid={victim}")))
        .unwrap_or_else(|| panic!("no death event for {victim} in:\n{stderr}"));
    assert!(event.contains("signal=\"SIGKILL\""), "{event}");
    assert!(
        stderr.contains("starting a replacement pool worker"),
        "{stderr}"
    );
    assert!(
        stdout.contains("1 item failed") && stdout.contains("1 ok, 1 failed"),
        "{stdout}"
    );
}

#[test]
fn logging_shows_records_of_tasks_with_pid_task_and_item() {
    let (stdout, stderr) =
        run_example_with("logging", &[], &[("RUST_LOG", "info"), ("NO_COLOR", "1")]);
    assert!(stdout.contains("7 items ok, 1 failed"), "{stdout}");
    // One line per item, at its level, with the task's own target.
    for x in 0..8 {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("squaring x={x} ")))
            .unwrap_or_else(|| panic!("no record of item {x} in:\n{stderr}"));
        assert!(line.contains(" INFO logging: "), "{line}");
        assert!(line.contains(&format!("item={x}")), "{line}");
        assert!(line.contains("task=\"logging::square\""), "{line}");
        assert!(line.contains(" pid="), "{line}");
    }
    // `log` records, and the initializer's records (no item) in each worker.
    assert!(
        stderr.contains("WARN logging: 3 is a multiple of 3"),
        "{stderr}"
    );
    let connected = stderr
        .lines()
        .filter(|l| l.contains("worker connected"))
        .count();
    assert_eq!(connected, 2, "{stderr}");
    // Debug is below RUST_LOG=info; the panic is one warning.
    assert!(!stderr.contains("RUST_LOG=debug only"), "{stderr}");
    let panics: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("task panicked"))
        .collect();
    assert_eq!(panics.len(), 1, "{stderr}");
    assert!(
        panics[0].contains("five is not allowed") && panics[0].contains("item=5"),
        "{stderr}"
    );
}

/// A private tmux server (`tmux -L name`), killed with everything in it
/// when dropped, also when a test fails.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .status();
    }
}

/// The screen of a tmux pane, one string per row.
fn tmux_screen(socket: &str, session: &str) -> Vec<String> {
    let out = Command::new("tmux")
        .args(["-L", socket, "capture-pane", "-p", "-t", session])
        .output()
        .expect("tmux capture-pane");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Under a terminal (a tmux pane of 100 x 20), the `progress` example's bar
/// sits on the last row and ticks while items run (its elapsed time moves),
/// and the lines its tasks print scroll above it: no row ends up holding a
/// torn or stale bar. Needs tmux.
#[test]
#[ignore = "needs tmux: cargo test --test examples -- --ignored progress_bar_under_a_terminal"]
fn progress_bar_under_a_terminal() {
    for features in [&["progress"][..], &[]] {
        // Builds the example (with or without the feature); the run below
        // goes through tmux.
        run_example_with("progress", features, &[]);
        let exe = std::env::current_exe().expect("test path");
        let example = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .join("examples/progress");
        let socket = format!("pool-progress-{}", std::process::id());
        let server = TmuxServer(socket.clone());
        let session = "progress";
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "100", "-y", "20"])
            .args(["-s", session])
            .arg(format!("{}; sleep 60", example.display()))
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux new-session");
        let bar_row = |screen: &[String]| screen.last().cloned().unwrap_or_default();
        let mut elapsed_seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut screen = Vec::new();
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1000));
            screen = tmux_screen(&socket, session);
            let row = bar_row(&screen);
            if row.contains("/1500 items") {
                elapsed_seen.push(row.clone());
            }
            if screen.iter().any(|l| l.contains("hook: 400 results")) {
                break;
            }
        }
        drop(server);
        let text = screen.join("\n");
        assert!(text.contains("hook: 400 results"), "{features:?}:\n{text}");
        // The bar ticked: two captures a second apart differ.
        assert!(
            elapsed_seen.windows(2).any(|w| w[0] != w[1]),
            "{features:?}: {elapsed_seen:?}"
        );
        // Each line a task printed is alone on its row; exactly one row
        // holds the bar's final state, and it is complete.
        let steps: Vec<&String> = screen.iter().filter(|l| l.contains("step ")).collect();
        assert!(!steps.is_empty(), "{features:?}:\n{text}");
        for line in &steps {
            assert!(
                line.starts_with("step ") && !line.contains("items"),
                "{features:?}: torn line {line:?}\n{text}"
            );
        }
        let bars: Vec<&String> = screen.iter().filter(|l| l.contains(" items ")).collect();
        assert_eq!(bars.len(), 1, "{features:?}:\n{text}");
        assert!(bars[0].contains("1500/1500 items"), "{features:?}:\n{text}");
    }
}

/// Ctrl-C while the `progress` example's line is shown: the process ends by
/// SIGINT as usual, and the terminal gets its last row back (the lines
/// printed afterwards scroll through the whole screen; no stale line stays
/// on the last row). Needs tmux.
#[test]
#[ignore = "needs tmux: cargo test --test examples -- --ignored progress_line_is_given_back_on_ctrl_c"]
fn progress_line_is_given_back_on_ctrl_c() {
    run_example_with("progress", &["progress"], &[]);
    let exe = std::env::current_exe().expect("test path");
    let example = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples/progress");
    let socket = format!("pool-progress-int-{}", std::process::id());
    let server = TmuxServer(socket.clone());
    let session = "progress";
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .status()
            .expect("tmux runs")
    };
    let shell = "bash --norc --noprofile";
    assert!(
        tmux(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "12",
            "-s",
            session,
            shell
        ])
        .success()
    );
    let cmd = format!("{}; echo status=$?", example.display());
    tmux(&["send-keys", "-t", session, &cmd, "Enter"]);
    // Interrupt once the line is drawn.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !tmux_screen(&socket, session)
        .iter()
        .any(|l| l.contains("/1500 items"))
    {
        assert!(std::time::Instant::now() < deadline, "no progress line");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tmux(&["send-keys", "-t", session, "C-c"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    tmux(&["send-keys", "-t", session, "seq 1 30", "Enter"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let screen = tmux_screen(&socket, session);
    drop(server);
    let text = screen.join("\n");
    // The 30 lines scrolled through every row, the last one included.
    assert!(
        !screen.iter().any(|l| l.contains(" items ")),
        "a stale line:\n{text}"
    );
    assert_eq!(screen.len(), 12, "{text}");
    assert_eq!(screen[10], "30", "{text}");
    assert!(screen[11].starts_with("bash"), "{text}");
}

/// `cancel`: 49 of 50 calls cancelled, the last one's value; then the
/// first failure cancels the three calls left (the value of the time
/// line is not checked: tests do not time).
#[test]
fn cancel_example_cancels_49_calls_and_then_the_rest_after_a_failure() {
    let stdout = run_example("cancel");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "Cancelled 49 of 50 calls; the last one returned 49"
    );
    assert!(lines[1].starts_with("Its result came in under a second: "));
    assert_eq!(
        lines[2..],
        [
            "Call 1 failed: input 1 is bad; cancelling the rest",
            "Cancelled 3 calls still running or queued",
            "Call 0: the call was cancelled before its result was in",
            "Call 2: the call was cancelled before its result was in",
            "Call 3: the call was cancelled before its result was in",
        ]
    );
}
