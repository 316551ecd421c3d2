//! The conformance suite on PostgreSQL (the server `scripts/test.sh` starts,
//! or `DIESEL_IDEMPOTENT_PG_URL`). Without the server the tests fail; without
//! the `postgres` feature one test reports the backend as skipped.

#[cfg(feature = "postgres")]
mod common;

#[cfg(feature = "postgres")]
conformance!(common::Postgres);

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_backend_skipped_feature_disabled() {
    println!("SKIPPED: postgres backend (build with --features postgres or run ./scripts/test.sh)");
}

#[cfg(feature = "postgres")]
#[test]
fn get_or_create_under_repeatable_read_never_reports_not_found() {
    common::suite::get_or_create_under_repeatable_read();
}
