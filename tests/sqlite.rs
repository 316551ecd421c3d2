//! The conformance suite on SQLite (a temporary file, WAL, busy timeout).
//! Without the `sqlite` feature one test reports it (and `tests/shapes.rs`,
//! which runs on SQLite) as skipped.

#[cfg(feature = "sqlite")]
mod common;

#[cfg(feature = "sqlite")]
conformance!(common::Sqlite);

/// The same tests on the backend's diesel-async connection.
#[cfg(all(feature = "sqlite", feature = "async"))]
mod nonblocking {
    crate::conformance!(nonblocking crate::common::Sqlite);
}

#[cfg(not(feature = "sqlite"))]
#[test]
fn sqlite_backend_skipped_feature_disabled() {
    println!("SKIPPED: sqlite backend and tests/shapes.rs (build with the `sqlite` feature)");
}

#[cfg(feature = "sqlite")]
#[test]
fn edge_optimistic_repeat_too_large() {
    common::edges::blocking::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<
        common::Sqlite,
    >(diesel_idempotent::Mode::Optimistic);
}

#[cfg(feature = "sqlite")]
#[test]
fn edge_claim_first_repeat_too_large() {
    common::edges::blocking::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<
        common::Sqlite,
    >(diesel_idempotent::Mode::ClaimFirst);
}

#[cfg(feature = "sqlite")]
#[test]
fn edge_claim_first_duplicate_in_snapshot_transaction() {
    common::edges::blocking::duplicate_in_snapshot_transaction_replays_or_is_retryable::<
        common::Sqlite,
    >(diesel_idempotent::Mode::ClaimFirst);
}

#[cfg(feature = "sqlite")]
#[test]
fn edge_panics_on_replay_paths() {
    common::edges::blocking::panics_on_replay_paths_leave_the_callers_transaction_usable::<
        common::Sqlite,
    >();
}

/// The edge cases on the backend's diesel-async connection.
#[cfg(all(feature = "sqlite", feature = "async"))]
mod nonblocking_edges {
    use crate::common::Sqlite;
    use crate::common::edges::nonblocking as edges;
    use diesel_idempotent::Mode;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_optimistic_repeat_too_large() {
        edges::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<Sqlite>(
            Mode::Optimistic,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_claim_first_repeat_too_large() {
        edges::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<Sqlite>(
            Mode::ClaimFirst,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_panics_on_replay_paths() {
        edges::panics_on_replay_paths_leave_the_callers_transaction_usable::<Sqlite>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_claim_first_duplicate_in_snapshot_transaction() {
        edges::duplicate_in_snapshot_transaction_replays_or_is_retryable::<Sqlite>(
            Mode::ClaimFirst,
        )
        .await;
    }
}
