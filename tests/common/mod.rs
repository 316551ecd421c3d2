//! The conformance suite: every behaviour test written once, generic over a
//! [`Backend`], and instantiated per backend with `conformance!`.
#![allow(dead_code)]

pub mod admin;
#[cfg(feature = "async")]
pub mod async_backends;
#[cfg(feature = "async")]
pub mod async_only;
pub mod backends;
pub mod edges;
pub mod functions;
pub mod hardening;
pub mod modes;
pub mod outbox;
pub mod phased;
pub mod processor;
#[cfg(all(feature = "async", feature = "postgres"))]
pub mod round_trips;
pub mod rt;
pub mod statements;
pub mod suite;
pub mod terminal;

use diesel::QueryResult;
use diesel_idempotent::{IdempotentConnection, ManualClock};
use serde::{Deserialize, Serialize};

#[cfg(feature = "async")]
pub use async_backends::{AsyncBackend, AsyncSuiteBackend, AsyncTestConn};
pub use backends::*;
pub use functions::blocking::*;

/// A database for one test: created empty, dropped at the end.
pub trait Backend: Sized + Send + Sync + 'static {
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

    /// A new database with the library's tables (embedded migrations) and the
    /// side table the test functions write to.
    fn fresh() -> Self {
        let db = Self::empty();
        let mut conn = db.connect();
        let applied = diesel_idempotent::migrate(&mut conn).expect("embedded migrations");
        assert_eq!(
            applied,
            Self::MIGRATIONS.migrations().len(),
            "the embedded migrations create the record, outbox and phased-call tables"
        );
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
    /// This connection's session on the server (PostgreSQL's backend pid,
    /// MySQL's connection id; not on SQLite).
    fn session_id(&mut self) -> QueryResult<i64>;
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

/// How the body ends after its insert (not part of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Succeed,
    Fail,
    Panic,
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

impl diesel_idempotent::Retryable for AppError {
    fn is_retryable(&self) -> bool {
        match self {
            AppError::Idempotency(e) => e.is_retryable(),
            AppError::Db(e) => diesel_idempotent::Retryable::is_retryable(e),
            AppError::Declined => false,
        }
    }
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

/// Instantiates every conformance test for one backend: its blocking tests
/// (`conformance!(Backend)`), or the same tests on its diesel-async
/// connection (`conformance!(nonblocking Backend)`, feature `async`).
#[macro_export]
macro_rules! conformance {
    ($backend:ty) => {
        $crate::conformance!(blocking $backend);
    };
    ($flavour:ident $backend:ty) => {
        $crate::suite_tests!($flavour $backend);
        $crate::hardening_tests!($flavour $backend);
        $crate::modes_tests!($flavour $backend);
        $crate::terminal_tests!($flavour $backend);
        $crate::admin_tests!($flavour $backend);
        $crate::phased_tests!($flavour $backend);
        $crate::outbox_tests!($flavour $backend);
    };
    // One test function per name, calling the test of that name in
    // `common::$module::$flavour`.
    (@each blocking $backend:ty; $module:ident; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::common::$module::blocking::$test::<$backend>();
            }
        )*
    };
    // The same for a blocking-only test at `common::$module::$test`.
    (@plain $backend:ty; $module:ident; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::common::$module::$test::<$backend>();
            }
        )*
    };
    (@each nonblocking $backend:ty; $module:ident; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $crate::common::$module::nonblocking::$test::<$backend>().await;
            }
        )*
    };
}
