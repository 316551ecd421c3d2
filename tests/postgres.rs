//! The conformance suite on PostgreSQL (the server `scripts/test.sh` starts,
//! or `DIESEL_IDEMPOTENT_PG_URL`). Without the server the tests fail; without
//! the `postgres` feature one test reports the backend as skipped.

#[cfg(feature = "postgres")]
mod common;

#[cfg(feature = "postgres")]
conformance!(common::Postgres);

/// The same tests on the backend's diesel-async connection.
#[cfg(all(feature = "postgres", feature = "async"))]
mod nonblocking {
    crate::conformance!(nonblocking crate::common::Postgres);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn get_or_create_under_repeatable_read_never_reports_not_found() {
        crate::common::suite::nonblocking::get_or_create_under_repeatable_read::<
            crate::common::Postgres,
        >()
        .await;
    }
}

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_backend_skipped_feature_disabled() {
    println!("SKIPPED: postgres backend (build with --features postgres or run ./scripts/test.sh)");
}

#[cfg(feature = "postgres")]
#[test]
fn get_or_create_under_repeatable_read_never_reports_not_found() {
    common::suite::blocking::get_or_create_under_repeatable_read::<common::Postgres>();
}

#[cfg(feature = "postgres")]
#[test]
fn edge_optimistic_repeat_too_large() {
    common::edges::blocking::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<
        common::Postgres,
    >(diesel_idempotent::Mode::Optimistic);
}

#[cfg(feature = "postgres")]
#[test]
fn edge_claim_first_repeat_too_large() {
    common::edges::blocking::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<
        common::Postgres,
    >(diesel_idempotent::Mode::ClaimFirst);
}

#[cfg(feature = "postgres")]
#[test]
fn edge_claim_first_duplicate_in_snapshot_transaction() {
    common::edges::blocking::duplicate_in_snapshot_transaction_replays_or_is_retryable::<
        common::Postgres,
    >(diesel_idempotent::Mode::ClaimFirst);
}

#[cfg(feature = "postgres")]
#[test]
fn edge_pg_claim_or_load_fallback_is_reached() {
    common::edges::blocking::pg_claim_or_load_fallback_is_reached::<common::Postgres>(
        diesel_idempotent::Mode::ClaimFirst,
    );
    common::edges::blocking::pg_claim_or_load_fallback_is_reached::<common::Postgres>(
        diesel_idempotent::Mode::Optimistic,
    );
}

#[cfg(feature = "postgres")]
#[test]
fn edge_pg_call_statements_are_cached() {
    common::edges::blocking::pg_call_statements_are_cached::<common::Postgres>();
}

#[cfg(feature = "postgres")]
#[test]
fn edge_panics_on_replay_paths() {
    common::edges::blocking::panics_on_replay_paths_leave_the_callers_transaction_usable::<
        common::Postgres,
    >();
}

#[cfg(feature = "postgres")]
#[test]
fn edge_read_first_reject_in_callers_transaction() {
    common::edges::blocking::read_first_reject_in_callers_transaction_answers_at_once::<
        common::Postgres,
    >(diesel_idempotent::Replay::ReadFirst);
}

#[cfg(feature = "postgres")]
#[test]
fn edge_in_transaction_reject_in_callers_transaction() {
    common::edges::blocking::read_first_reject_in_callers_transaction_answers_at_once::<
        common::Postgres,
    >(diesel_idempotent::Replay::InTransaction);
}

#[cfg(feature = "postgres")]
#[test]
fn edge_read_first_bounded_wait_in_callers_transaction() {
    common::edges::blocking::bounded_wait_in_callers_transaction_answers_in_flight::<
        common::Postgres,
    >(diesel_idempotent::Replay::ReadFirst);
}

#[cfg(feature = "postgres")]
#[test]
fn edge_in_transaction_bounded_wait_in_callers_transaction() {
    common::edges::blocking::bounded_wait_in_callers_transaction_answers_in_flight::<
        common::Postgres,
    >(diesel_idempotent::Replay::InTransaction);
}

/// The edge cases on the backend's diesel-async connection.
#[cfg(all(feature = "postgres", feature = "async"))]
mod nonblocking_edges {
    use crate::common::Postgres;
    use crate::common::edges::nonblocking as edges;
    use diesel_idempotent::{Mode, Replay};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_optimistic_repeat_too_large() {
        edges::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<Postgres>(
            Mode::Optimistic,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_claim_first_repeat_too_large() {
        edges::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<Postgres>(
            Mode::ClaimFirst,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_pg_claim_or_load_fallback_is_reached() {
        edges::pg_claim_or_load_fallback_is_reached::<Postgres>(Mode::ClaimFirst).await;
        edges::pg_claim_or_load_fallback_is_reached::<Postgres>(Mode::Optimistic).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_pg_call_statements_are_cached() {
        edges::pg_call_statements_are_cached::<Postgres>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_panics_on_replay_paths() {
        edges::panics_on_replay_paths_leave_the_callers_transaction_usable::<Postgres>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_read_first_reject_in_callers_transaction() {
        edges::read_first_reject_in_callers_transaction_answers_at_once::<Postgres>(
            Replay::ReadFirst,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_in_transaction_reject_in_callers_transaction() {
        edges::read_first_reject_in_callers_transaction_answers_at_once::<Postgres>(
            Replay::InTransaction,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_read_first_bounded_wait_in_callers_transaction() {
        edges::bounded_wait_in_callers_transaction_answers_in_flight::<Postgres>(Replay::ReadFirst)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_in_transaction_bounded_wait_in_callers_transaction() {
        edges::bounded_wait_in_callers_transaction_answers_in_flight::<Postgres>(
            Replay::InTransaction,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_claim_first_duplicate_in_snapshot_transaction() {
        edges::duplicate_in_snapshot_transaction_replays_or_is_retryable::<Postgres>(
            Mode::ClaimFirst,
        )
        .await;
    }
}
