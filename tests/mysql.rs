//! The conformance suite on MySQL/MariaDB (the server `scripts/test.sh`
//! starts, or `DIESEL_IDEMPOTENT_MYSQL_URL`). Without the server the tests
//! fail; without the `mysql` feature one test reports the backend as skipped.

#[cfg(feature = "mysql")]
mod common;

#[cfg(feature = "mysql")]
conformance!(common::Mysql);

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_backend_skipped_feature_disabled() {
    println!("SKIPPED: mysql backend (build with --features mysql or run ./scripts/test.sh)");
}
