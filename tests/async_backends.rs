//! The async tests with no blocking twin (`tests/common/async_only.rs`):
//! calls on pooled connections, the two drivers side by side, and what
//! `abandon_after` costs; one module per backend and pool: PostgreSQL
//! through deadpool and through bb8, MySQL/MariaDB and SQLite through
//! deadpool. The conformance suite's async flavour runs from
//! `tests/{sqlite,postgres,mysql}.rs`. Without a server the tests fail;
//! without the `async` feature, or a backend's feature, a test reports what
//! was skipped.

#[cfg(feature = "async")]
mod common;

/// PostgreSQL: the `BEGIN` and the claim in one round trip.
#[cfg(all(feature = "async", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_begin_travels_with_the_claim() {
    common::round_trips::postgres_begin_travels_with_the_claim().await;
}

#[cfg(all(feature = "async", feature = "postgres"))]
mod postgres_deadpool {
    crate::async_only!(crate::common::Postgres, crate::common::async_only::Deadpool);
}

#[cfg(all(feature = "async", feature = "postgres"))]
mod postgres_bb8 {
    crate::async_only!(crate::common::Postgres, crate::common::async_only::Bb8);
}

#[cfg(all(feature = "async", feature = "mysql"))]
mod mysql_deadpool {
    crate::async_only!(crate::common::Mysql, crate::common::async_only::Deadpool);
}

#[cfg(all(feature = "async", feature = "sqlite"))]
mod sqlite_deadpool {
    crate::async_only!(crate::common::Sqlite, crate::common::async_only::Deadpool);
}

#[cfg(not(feature = "async"))]
#[test]
fn async_backends_skipped_feature_disabled() {
    println!(
        "SKIPPED: async backends (build with --features async and the backends' features, \
         or run ./scripts/test.sh)"
    );
}

#[cfg(all(feature = "async", not(feature = "postgres")))]
#[test]
fn postgres_async_backend_skipped_feature_disabled() {
    println!("SKIPPED: postgres async backend, deadpool and bb8 (build with --features postgres)");
}

#[cfg(all(feature = "async", not(feature = "mysql")))]
#[test]
fn mysql_async_backend_skipped_feature_disabled() {
    println!("SKIPPED: mysql async backend (build with --features mysql)");
}

#[cfg(all(feature = "async", not(feature = "sqlite")))]
#[test]
fn sqlite_async_backend_skipped_feature_disabled() {
    println!("SKIPPED: sqlite async backend (build with the `sqlite` feature)");
}
