//! The conformance suite on MySQL/MariaDB (the server `scripts/test.sh`
//! starts, or `DIESEL_IDEMPOTENT_MYSQL_URL`). Without the server the tests
//! fail; without the `mysql` feature one test reports the backend as skipped.

#[cfg(feature = "mysql")]
mod common;

#[cfg(feature = "mysql")]
conformance!(common::Mysql);

/// The same tests on the backend's diesel-async connection.
#[cfg(all(feature = "mysql", feature = "async"))]
mod nonblocking {
    crate::conformance!(nonblocking crate::common::Mysql);
}

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_backend_skipped_feature_disabled() {
    println!("SKIPPED: mysql backend (build with --features mysql or run ./scripts/test.sh)");
}

#[cfg(feature = "mysql")]
#[test]
fn edge_optimistic_body_deadlock_in_callers_transaction() {
    common::edges::blocking::optimistic_body_deadlock_in_callers_transaction::<common::Mysql>(
        diesel_idempotent::Mode::Optimistic,
        true,
    );
}

#[cfg(feature = "mysql")]
#[test]
fn edge_optimistic_body_deadlock_then_caller_rollback_keeps_later_writes() {
    common::edges::blocking::optimistic_body_deadlock_in_callers_transaction::<common::Mysql>(
        diesel_idempotent::Mode::Optimistic,
        false,
    );
}

#[cfg(feature = "mysql")]
#[test]
fn edge_optimistic_after_error_read_never_replays_uncommitted() {
    common::edges::blocking::optimistic_after_error_read_never_replays_uncommitted::<common::Mysql>(
    );
}

#[cfg(feature = "mysql")]
#[test]
fn edge_optimistic_repeat_too_large() {
    common::edges::blocking::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<
        common::Mysql,
    >(diesel_idempotent::Mode::Optimistic);
}

#[cfg(feature = "mysql")]
#[test]
fn edge_claim_first_repeat_too_large() {
    common::edges::blocking::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<
        common::Mysql,
    >(diesel_idempotent::Mode::ClaimFirst);
}

#[cfg(feature = "mysql")]
#[test]
fn edge_claim_first_duplicate_in_snapshot_transaction() {
    common::edges::blocking::duplicate_in_snapshot_transaction_replays_or_is_retryable::<
        common::Mysql,
    >(diesel_idempotent::Mode::ClaimFirst);
}

#[cfg(feature = "mysql")]
#[test]
fn edge_panics_on_replay_paths() {
    common::edges::blocking::panics_on_replay_paths_leave_the_callers_transaction_usable::<
        common::Mysql,
    >();
}

#[cfg(feature = "mysql")]
#[test]
fn edge_read_first_reject_in_callers_transaction() {
    common::edges::blocking::read_first_reject_in_callers_transaction_answers_at_once::<
        common::Mysql,
    >(diesel_idempotent::Replay::ReadFirst);
}

#[cfg(feature = "mysql")]
#[test]
fn edge_in_transaction_reject_in_callers_transaction() {
    common::edges::blocking::read_first_reject_in_callers_transaction_answers_at_once::<
        common::Mysql,
    >(diesel_idempotent::Replay::InTransaction);
}

#[cfg(feature = "mysql")]
#[test]
fn edge_read_first_bounded_wait_in_callers_transaction() {
    common::edges::blocking::bounded_wait_in_callers_transaction_answers_in_flight::<common::Mysql>(
        diesel_idempotent::Replay::ReadFirst,
    );
}

#[cfg(feature = "mysql")]
#[test]
fn edge_in_transaction_bounded_wait_in_callers_transaction() {
    common::edges::blocking::bounded_wait_in_callers_transaction_answers_in_flight::<common::Mysql>(
        diesel_idempotent::Replay::InTransaction,
    );
}

/// The edge cases on the backend's diesel-async connection.
#[cfg(all(feature = "mysql", feature = "async"))]
mod nonblocking_edges {
    use crate::common::Mysql;
    use crate::common::edges::nonblocking as edges;
    use diesel_idempotent::{Mode, Replay};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_optimistic_body_deadlock_in_callers_transaction() {
        edges::optimistic_body_deadlock_in_callers_transaction::<Mysql>(Mode::Optimistic, true)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_optimistic_body_deadlock_then_caller_rollback_keeps_later_writes() {
        edges::optimistic_body_deadlock_in_callers_transaction::<Mysql>(Mode::Optimistic, false)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_optimistic_after_error_read_never_replays_uncommitted() {
        edges::optimistic_after_error_read_never_replays_uncommitted::<Mysql>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_optimistic_repeat_too_large() {
        edges::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<Mysql>(
            Mode::Optimistic,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_claim_first_repeat_too_large() {
        edges::optimistic_repeat_replays_even_if_its_own_result_would_be_too_large::<Mysql>(
            Mode::ClaimFirst,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_panics_on_replay_paths() {
        edges::panics_on_replay_paths_leave_the_callers_transaction_usable::<Mysql>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_read_first_reject_in_callers_transaction() {
        edges::read_first_reject_in_callers_transaction_answers_at_once::<Mysql>(Replay::ReadFirst)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_in_transaction_reject_in_callers_transaction() {
        edges::read_first_reject_in_callers_transaction_answers_at_once::<Mysql>(
            Replay::InTransaction,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_read_first_bounded_wait_in_callers_transaction() {
        edges::bounded_wait_in_callers_transaction_answers_in_flight::<Mysql>(Replay::ReadFirst)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_in_transaction_bounded_wait_in_callers_transaction() {
        edges::bounded_wait_in_callers_transaction_answers_in_flight::<Mysql>(
            Replay::InTransaction,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn edge_claim_first_duplicate_in_snapshot_transaction() {
        edges::duplicate_in_snapshot_transaction_replays_or_is_retryable::<Mysql>(Mode::ClaimFirst)
            .await;
    }
}
