//! The attribute as a compiler: every supported shape compiles and runs
//! (`ui/pass`), every misuse is a pointed compile error (`ui/fail`).
//!
//! The `.stderr` files are pinned to the toolchain the README names (rustc 1.95.0);
//! after an intended change of a message, regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui` and review the diff.

#[cfg(feature = "sqlite")]
#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}

#[cfg(not(feature = "sqlite"))]
#[test]
fn ui_skipped_sqlite_feature_disabled() {
    println!("SKIPPED: ui (the cases run against SQLite; build with the `sqlite` feature)");
}
