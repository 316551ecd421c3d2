//! The conformance suite on diesel-async connections
//! (`tests/common/async_suite.rs`), one module per backend and pool:
//! PostgreSQL through deadpool and through bb8, MySQL/MariaDB and SQLite
//! through deadpool. Without a server the tests fail; without the `async`
//! feature, or a backend's feature, a test reports what was skipped.

#[cfg(feature = "async")]
mod common;

#[cfg(all(feature = "async", feature = "postgres"))]
mod postgres_deadpool {
    use crate::common::Postgres;
    use crate::common::async_suite::{self, Deadpool};

    crate::async_conformance!(Postgres, Deadpool);

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_killed_mid_body_stores_nothing() {
        async_suite::connection_killed_mid_body_stores_nothing::<Postgres, Deadpool>().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_lost_between_calls_is_a_retryable_error() {
        async_suite::connection_lost_between_calls_is_a_retryable_error::<Postgres, Deadpool>()
            .await;
    }
}

/// PostgreSQL: the `BEGIN` and the claim in one round trip.
#[cfg(all(feature = "async", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_begin_travels_with_the_claim() {
    common::round_trips::postgres_begin_travels_with_the_claim().await;
}

#[cfg(all(feature = "async", feature = "postgres"))]
mod postgres_bb8 {
    use crate::common::Postgres;
    use crate::common::async_suite::{self, Bb8};

    crate::async_conformance!(Postgres, Bb8);

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_killed_mid_body_stores_nothing() {
        async_suite::connection_killed_mid_body_stores_nothing::<Postgres, Bb8>().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_lost_between_calls_is_a_retryable_error() {
        async_suite::connection_lost_between_calls_is_a_retryable_error::<Postgres, Bb8>().await;
    }
}

#[cfg(all(feature = "async", feature = "mysql"))]
mod mysql_deadpool {
    use crate::common::Mysql;
    use crate::common::async_suite::{self, Deadpool};

    crate::async_conformance!(Mysql, Deadpool);

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_killed_mid_body_stores_nothing() {
        async_suite::connection_killed_mid_body_stores_nothing::<Mysql, Deadpool>().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_lost_between_calls_is_a_retryable_error() {
        async_suite::connection_lost_between_calls_is_a_retryable_error::<Mysql, Deadpool>().await;
    }
}

#[cfg(all(feature = "async", feature = "sqlite"))]
mod sqlite_deadpool {
    use crate::common::Sqlite;
    use crate::common::async_suite::Deadpool;

    crate::async_conformance!(Sqlite, Deadpool);
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
