//! The conformance suite on SQLite (a temporary file, WAL, busy timeout).
//! Without the `sqlite` feature one test reports it (and `tests/shapes.rs`,
//! which runs on SQLite) as skipped.

#[cfg(feature = "sqlite")]
mod common;

#[cfg(feature = "sqlite")]
conformance!(common::Sqlite);

#[cfg(not(feature = "sqlite"))]
#[test]
fn sqlite_backend_skipped_feature_disabled() {
    println!("SKIPPED: sqlite backend and tests/shapes.rs (build with the `sqlite` feature)");
}
