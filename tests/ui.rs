//! Compile-time checks: every "rejected at compile time" claim of
//! `#[task]`, `task!(...)` and the pool's typed calls has a case here.
//!
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test --test ui`
//! and review the `.stderr` diff like code.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
