//! The attribute as a compiler: every supported shape compiles and runs
//! (`ui/pass`), every misuse is a pointed compile error (`ui/fail`).
//!
//! The `.stderr` files are pinned to the toolchain the README names (rustc 1.95.0);
//! after an intended change of a message, regenerate them with
//! `TRYBUILD=overwrite cargo test --all-features --test ui` (`ui/async`) and
//! `TRYBUILD=overwrite cargo test -p diesel-idempotent --test ui` (`ui/no_async`;
//! `-p`: the examples package, a default member, turns `async` on), and review the
//! diff.

#[cfg(feature = "sqlite")]
#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
    // `async fn` takes the `async` feature; its cases name the diesel-async
    // connections of every backend (and their errors list them), so they run
    // with all backends. Without the feature, the attribute says it is needed.
    if cfg!(all(
        feature = "async",
        feature = "postgres",
        feature = "mysql"
    )) {
        cases.pass("tests/ui/async/pass/*.rs");
        cases.compile_fail("tests/ui/async/fail/*.rs");
    }
    if cfg!(not(feature = "async")) {
        cases.compile_fail("tests/ui/no_async/*.rs");
    }
}

#[cfg(not(feature = "sqlite"))]
#[test]
fn ui_skipped_sqlite_feature_disabled() {
    println!("SKIPPED: ui (the cases run against SQLite; build with the `sqlite` feature)");
}
