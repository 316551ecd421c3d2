//! The conformance suite: every behaviour test written once, generic over a
//! [`Backend`], and instantiated per backend with `conformance!`.
#![allow(dead_code)]

#[cfg(feature = "async")]
pub mod async_backends;
#[cfg(feature = "async")]
pub mod async_suite;
pub mod backends;
pub mod edges;
pub mod hardening;
pub mod modes;
pub mod suite;

use diesel::QueryResult;
use diesel_idempotent::{IdempotentConnection, ManualClock, Outcome, idempotent};
use serde::{Deserialize, Serialize};

pub use backends::*;

/// A database for one test: created empty, dropped at the end.
pub trait Backend: Sized + Sync + 'static {
    /// Its connection type.
    type Conn: TestConn;
    /// The backend's name in test output.
    const NAME: &'static str;
    /// The isolation levels the backend offers for the isolation test.
    const ISOLATION_LEVELS: &'static [Isolation];
    /// Whether `on_conflict = "reject"` answers at once (SQLite serializes
    /// writers before the claim, so a duplicate waits there).
    const REJECTS_AT_ONCE: bool;
    /// Which generated migrations fit it.
    const MIGRATIONS: diesel_idempotent::migrations::Backend;

    /// A new, empty database (no tables).
    fn empty() -> Self;
    /// A new connection to this database.
    fn connect(&self) -> Self::Conn;
    /// Returns once `n` connections wait on a lock (no-op where the
    /// backend cannot tell; the test's outcome is then still asserted).
    fn wait_for_lock_waiters(&self, n: usize);

    /// A new database with the record table (embedded migrations) and the
    /// side table the test functions write to.
    fn fresh() -> Self {
        let db = Self::empty();
        let mut conn = db.connect();
        let applied = diesel_idempotent::migrate(&mut conn).expect("embedded migrations");
        assert_eq!(applied, 1, "one migration creates the record table");
        conn.create_side_tables().expect("side tables");
        conn.create_account_tables().expect("account tables");
        db
    }
}

/// The clock of every test: a fixed instant, advanced by hand; nothing
/// sleeps to make time pass.
pub fn clock() -> ManualClock {
    ManualClock::at_unix_seconds(1_790_000_000)
}

/// A transaction isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// What the test functions and assertions need from a connection.
pub trait TestConn: IdempotentConnection + Send {
    /// `payments (id, amount)`: one row per body execution.
    fn create_side_tables(&mut self) -> QueryResult<()>;
    /// Inserts a payment and returns its id.
    fn insert_payment(&mut self, amount: i64) -> QueryResult<i64>;
    /// Rows in `payments`.
    fn count_payments(&mut self) -> QueryResult<i64>;
    /// Rows in `idempotency_records`.
    fn count_records(&mut self) -> QueryResult<i64>;
    /// Applies migration folders the way the Diesel CLI does.
    fn run_file_migrations(&mut self, dir: &std::path::Path) -> usize;
    /// One record, read through the exported `idempotency_records` table.
    fn load_record(
        &mut self,
        namespace: &str,
        key: &str,
    ) -> QueryResult<diesel_idempotent::IdempotencyRecord>;
    /// Overwrites one record's stored fingerprint (to stage a record an
    /// earlier scheme wrote).
    fn set_record_fingerprint(
        &mut self,
        namespace: &str,
        key: &str,
        fingerprint: &str,
    ) -> QueryResult<usize>;
    /// Every record's key, sorted.
    fn record_keys(&mut self) -> QueryResult<Vec<String>>;
    /// `accounts (id, customer_id, bank_id)`, unique on (customer_id, bank_id),
    /// and `notes (customer_id)` with no unique index.
    fn create_account_tables(&mut self) -> QueryResult<()>;
    /// The account of a customer at a bank.
    fn find_account(&mut self, customer_id: i64, bank_id: i64) -> QueryResult<Option<Account>>;
    /// Inserts an account (fails with a unique violation if it exists).
    fn insert_account(&mut self, customer_id: i64, bank_id: i64) -> QueryResult<Account>;
    /// Rows in `accounts`.
    fn count_accounts(&mut self) -> QueryResult<i64>;
    /// Makes this connection fail instead of waiting long for a lock
    /// (SQLite: no busy timeout; PostgreSQL: `lock_timeout` 200 ms; MySQL:
    /// `innodb_lock_wait_timeout` 1 s).
    fn short_lock_waits(&mut self) -> QueryResult<()>;
    /// Updates one payment (takes its row lock).
    fn touch_payment(&mut self, id: i64) -> QueryResult<()>;
    /// `SELECT .. FOR UPDATE NOWAIT` of one payment (not on SQLite).
    fn lock_payment_nowait(&mut self, id: i64) -> QueryResult<()>;
    /// Tables whose unique indexes are not all guards for a lookup, and what
    /// `unique_index_covers` must answer: (table, columns, covered).
    fn create_tricky_index_tables(
        &mut self,
    ) -> QueryResult<Vec<(&'static str, &'static [&'static str], bool)>>;
    /// Runs `f` in a transaction at `level`.
    fn transaction_at<R>(
        &mut self,
        level: Isolation,
        f: impl FnOnce(&mut Self) -> Result<R, AppError>,
    ) -> Result<R, AppError>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewPayment {
    pub amount: i64,
    pub currency: String,
}

impl NewPayment {
    pub fn eur(amount: i64) -> Self {
        NewPayment {
            amount,
            currency: "EUR".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub id: i64,
    pub amount: i64,
}

/// A later version of `Payment` with a required field older records lack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentV2 {
    pub id: i64,
    pub amount: i64,
    pub settled_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error("the payment was declined")]
    Declined,
}

impl AppError {
    pub fn idempotency(&self) -> Option<&diesel_idempotent::Error> {
        match self {
            AppError::Idempotency(e) => Some(e),
            _ => None,
        }
    }
}

/// Counts the statements a connection sends while `f` runs.
pub fn statements<C: TestConn, R>(conn: &mut C, f: impl FnOnce(&mut C) -> R) -> (Vec<String>, R) {
    use diesel::connection::InstrumentationEvent;
    use std::sync::{Arc, Mutex};
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            sink.lock().unwrap().push(query.to_string());
        }
    });
    let result = f(conn);
    conn.set_instrumentation(diesel::connection::get_default_instrumentation());
    let log = log.lock().unwrap().clone();
    (log, result)
}

/// How the body ends after its insert (not part of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Succeed,
    Fail,
    Panic,
}

/// The function under test: a payment, once per key.
#[idempotent(key = key, ttl = "1h", name = "tests.create_payment", clock = clock, skip(then))]
pub fn create_payment<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    req: &NewPayment,
    then: Then,
) -> Result<Payment, AppError> {
    let id = conn.insert_payment(req.amount)?;
    match then {
        Then::Succeed => Ok(Payment {
            id,
            amount: req.amount,
        }),
        Then::Fail => Err(AppError::Declined),
        Then::Panic => panic!("injected panic after the payment insert"),
    }
}

/// The same records read back as a newer, incompatible result type.
#[idempotent(key = key, ttl = "1h", name = "tests.create_payment", clock = clock, skip(then))]
pub fn create_payment_v2<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    req: &NewPayment,
    then: Then,
) -> Result<PaymentV2, AppError> {
    let id = conn.insert_payment(req.amount)?;
    let _ = then;
    Ok(PaymentV2 {
        id,
        amount: req.amount,
        settled_at: "now".to_owned(),
    })
}

/// Tells replays apart.
#[idempotent(key = key, name = "tests.create_payment_outcome", clock = clock)]
pub fn create_payment_outcome<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    req: &NewPayment,
) -> Result<Outcome<Payment>, AppError> {
    let id = conn.insert_payment(req.amount)?;
    Ok(Payment {
        id,
        amount: req.amount,
    }
    .into())
}

/// Per-tenant keys.
#[idempotent(key = key, scope = tenant, ttl = "1h", name = "tests.create_scoped", clock = clock)]
pub fn create_scoped<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    tenant: &str,
    key: &str,
    req: &NewPayment,
) -> Result<Payment, AppError> {
    let id = conn.insert_payment(req.amount)?;
    Ok(Payment {
        id,
        amount: req.amount,
    })
}

/// Another function (default namespace) with the same keys.
#[idempotent(key = key, clock = clock)]
pub fn create_refund<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    req: &NewPayment,
) -> Result<Payment, AppError> {
    let id = conn.insert_payment(-req.amount)?;
    Ok(Payment {
        id,
        amount: -req.amount,
    })
}

/// An event delivered at least once (call-history pattern).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClickEvent {
    pub user_id: u64,
    pub url: String,
    pub occurred_at: i64,
    /// Differs between deliveries of the same event.
    pub delivery: u32,
}

/// The key is the hash of every argument (here: the event).
#[idempotent(hash, ttl = "7d", name = "tests.consume", clock = clock)]
pub fn consume<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    event: &ClickEvent,
) -> Result<i64, AppError> {
    Ok(conn.insert_payment(event.occurred_at)?)
}

/// The key is the hash of the event's identifying fields only.
#[idempotent(
    hash(event.user_id, event.url, event.occurred_at),
    ttl = "7d",
    name = "tests.consume_fields",
    clock = clock
)]
pub fn consume_fields<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    event: &ClickEvent,
) -> Result<i64, AppError> {
    Ok(conn.insert_payment(event.occurred_at)?)
}

/// A webhook receiver: the provider's id when present, else the parsed
/// body's fingerprint.
#[idempotent(
    key = diesel_idempotent::id_or_body_hash(webhook_id, body),
    name = "tests.webhook",
    clock = clock
)]
pub fn receive_webhook<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    webhook_id: Option<&str>,
    body: &serde_json::Value,
) -> Result<i64, AppError> {
    Ok(conn.insert_payment(body["amount"].as_i64().unwrap_or(0))?)
}

/// One item of a batch, under its own sub-key.
#[idempotent(key = item_key, name = "tests.batch_item", clock = clock, skip(fail))]
pub fn process_item<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    item_key: &str,
    amount: i64,
    fail: bool,
) -> Result<i64, AppError> {
    let id = conn.insert_payment(amount)?;
    if fail {
        return Err(AppError::Declined);
    }
    Ok(id)
}

/// A batch under one client key; item `fail_at` fails (once injected).
pub fn process_batch<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    batch_key: &str,
    amounts: &[i64],
    fail_at: Option<usize>,
) -> Result<Vec<i64>, AppError> {
    amounts
        .iter()
        .enumerate()
        .map(|(i, amount)| {
            let key = diesel_idempotent::sub_key(batch_key, i);
            process_item(conn, clock, &key, *amount, fail_at == Some(i))
        })
        .collect()
}

impl diesel_idempotent::Retryable for AppError {
    fn is_retryable(&self) -> bool {
        match self {
            AppError::Idempotency(e) => e.is_retryable(),
            AppError::Db(e) => diesel_idempotent::Retryable::is_retryable(e),
            AppError::Declined => false,
        }
    }
}

/// `create_payment`'s records, but a held key is an error at once.
#[idempotent(
    key = key,
    ttl = "1h",
    name = "tests.create_payment",
    clock = clock,
    skip(then),
    on_conflict = "reject"
)]
pub fn create_payment_or_reject<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    req: &NewPayment,
    then: Then,
) -> Result<Payment, AppError> {
    let _ = then;
    Ok(Payment {
        id: conn.insert_payment(req.amount)?,
        amount: req.amount,
    })
}

/// A result that may exceed the size cap.
#[idempotent(key = key, name = "tests.big", clock = clock, max_response_bytes = 1024)]
pub fn big_result<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    size: usize,
) -> Result<String, AppError> {
    conn.insert_payment(1)?;
    Ok("x".repeat(size))
}

/// A bank account, unique per (customer, bank).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Account {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub customer_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub bank_id: i64,
}

impl diesel_idempotent::UniqueViolation for AppError {
    fn is_unique_violation(&self) -> bool {
        match self {
            AppError::Db(e) => e.is_unique_violation(),
            AppError::Idempotency(e) => e.is_unique_violation(),
            AppError::Declined => false,
        }
    }
}

/// getOrCreate with a `QueryResult` body.
#[idempotent(get_or_create = conn.find_account(customer_id, bank_id))]
pub fn open_account<C: TestConn>(
    conn: &mut C,
    customer_id: i64,
    bank_id: i64,
) -> QueryResult<Account> {
    conn.insert_account(customer_id, bank_id)
}

/// getOrCreate with an application error type and a validation.
#[idempotent(get_or_create = conn.find_account(customer_id, bank_id))]
pub fn open_account_checked<C: TestConn>(
    conn: &mut C,
    customer_id: i64,
    bank_id: i64,
) -> Result<Account, AppError> {
    if bank_id < 0 {
        return Err(AppError::Declined);
    }
    Ok(conn.insert_account(customer_id, bank_id)?)
}

/// Instantiates every conformance test for one backend.
#[macro_export]
macro_rules! conformance {
    ($backend:ty) => {
        $crate::conformance!(@tests $backend;
            first_call_runs_body_and_stores_result,
            replay_returns_stored_result_without_running_body,
            outcome_tells_replays_apart,
            different_payload_is_a_mismatch,
            records_of_the_v1_scheme_answer_by_key_until_they_expire,
            invalid_keys_are_rejected_before_the_body,
            body_error_leaves_no_record,
            body_panic_leaves_no_record,
            caller_rollback_removes_record,
            caller_commit_keeps_record,
            expired_record_is_treated_as_absent,
            scopes_keep_tenants_apart,
            functions_have_separate_namespaces,
            unreadable_stored_result_is_a_typed_error,
            purge_expired_deletes_in_batches,
            migrate_is_idempotent,
            generated_cli_migrations_apply,
            runtime_call_api,
            statements_added_per_call,
            duplicate_waits_for_first_and_replays,
            duplicate_runs_body_when_first_rolls_back,
            concurrent_duplicates_run_body_once,
            concurrent_takeover_of_expired_record_runs_body_once,
            hash_of_arguments_replays_repeats,
            hash_of_named_values_ignores_other_fields,
            webhook_dedup_by_id_or_body,
            retried_batch_reruns_only_missing_items,
            concurrent_redeliveries_run_hash_body_once,
            get_or_create_returns_the_existing_row,
            get_or_create_propagates_other_errors,
            get_or_create_checks_unique_indexes,
            concurrent_creators_get_one_row,
            on_conflict_reject_answers_in_flight,
            oversized_result_is_refused_and_nothing_stored,
            isolation_levels_replay_or_retry,
        );
    };
    (@tests $backend:ty; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::common::suite::$test::<$backend>();
            }
        )*
        $crate::conformance!(@hardening $backend;
            panic_in_nested_transaction_releases_the_claim,
            panic_in_nested_transaction_keeps_the_callers_transaction,
            body_leaving_a_transaction_open_is_rolled_back,
            panics_around_the_body_release_everything,
            get_or_create_panic_in_nested_transaction_releases,
            results_that_cannot_replay_are_refused,
            ordinary_results_replay_exactly,
            get_or_create_unrelated_violation_at_read_committed_is_unchanged,
            reject_answers_after_one_claim,
            lock_wait_timeout_is_retryable_and_waited_once,
            get_or_create_invisible_winner_is_retryable,
            unique_index_covers_only_plain_immediate_indexes,
            deadlocks_are_retryable,
            nowait_lock_failures_are_retryable,
        );
        $crate::conformance!(@modes $backend;
            shapes_first_call_runs_body_and_stores,
            shapes_replay_returns_stored_result_without_a_second_effect,
            shapes_mismatch_has_no_second_effect,
            shapes_expired_record_is_taken_over,
            shapes_body_error_and_panic_leave_nothing,
            shapes_caller_rollback_removes_record_and_effect,
            shapes_in_caller_transaction_commit,
            shapes_concurrent_duplicates_run_body_once,
            shapes_duplicate_waits_for_held_first_call,
            shapes_reject_answers_in_flight,
            read_first_never_replays_an_uncommitted_result,
            read_first_respects_expiry_to_the_microsecond,
            shapes_concurrent_takeover_runs_body_once,
            optimistic_duplicate_failing_on_the_first_calls_effects_replays,
        );
    };
    (@modes $backend:ty; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::common::modes::$test::<$backend>();
            }
        )*
    };
    (@hardening $backend:ty; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::common::hardening::$test::<$backend>();
            }
        )*
    };
}
