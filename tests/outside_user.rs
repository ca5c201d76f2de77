//! A program outside the workspace, depending on `pool-runtime` by path, with
//! tasks in two modules: `starmap` over 10 000 items, a panic and a SIGKILL
//! as errors, the same pool reused, no worker left after drop.
//! The program checks all of that itself and prints `OK`.

use std::path::Path;
use std::process::Command;

#[test]
fn a_user_crate_outside_the_workspace_works() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["run", "--quiet", "--manifest-path"])
        .arg(root.join("tests/outside_user/Cargo.toml"))
        .env("CARGO_TARGET_DIR", root.join("target/outside-user"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(stdout.trim(), "OK", "stderr:\n{stderr}");
}
