//! The conformance suite on diesel-async connections (feature `async`).
//!
//! The behaviours of [`super::suite`] and [`super::modes`], written once as
//! `async` tests generic over an [`AsyncBackend`] and the [`PoolKind`] that
//! hands out its connections, instantiated per backend and pool with
//! `async_conformance!` (`tests/async_backends.rs`). The functions under
//! test are `async fn`s under `#[idempotent]`, generic over the connection;
//! every count is read on a blocking [`Backend::connect`] connection.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::{Connection, Instrumentation, InstrumentationEvent, TransactionManager};
use diesel::sql_types::BigInt;
use diesel::{OptionalExtension, QueryDsl, QueryResult, QueryableByName};
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_idempotent::{
    AsyncIdempotentConnection, Call, Clock, Error, IdempotencyRecord, ManualClock, OnConflict,
    Outcome, Ttl, idempotency_records, idempotent,
};
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;

use super::async_backends::{AsyncBackend, AsyncSuiteBackend, AsyncTestConn, TestPool};
use super::functions::nonblocking::*;
use super::modes::{NAMESPACE, Payer, SHAPES, Shape, TTL};
use super::{
    Account, AppError, Backend, ClickEvent, Isolation, NewPayment, Payment, PaymentV2, TestConn,
    Then,
};

/// How long a test waits for a signal from another task before failing:
/// a generous bound that only a call blocked for good would reach.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Connections and pools.

/// A connection pool crate.
pub trait PoolKind: 'static {
    /// Its name in test output.
    const NAME: &'static str;
    /// Its pool of a backend's connections.
    type Pool<B: AsyncBackend>: TestPool<Conn = B::AsyncConn>;

    /// A pool of at most `size` connections to `db`.
    fn pool<B: AsyncBackend>(db: &B, size: usize) -> impl Future<Output = Self::Pool<B>> + Send;
}

/// diesel-async's deadpool pool.
pub struct Deadpool;

impl PoolKind for Deadpool {
    const NAME: &'static str = "deadpool";
    type Pool<B: AsyncBackend> = B::Deadpool;

    fn pool<B: AsyncBackend>(db: &B, size: usize) -> impl Future<Output = B::Deadpool> + Send {
        std::future::ready(db.deadpool(size))
    }
}

/// diesel-async's bb8 pool.
pub struct Bb8;

impl PoolKind for Bb8 {
    const NAME: &'static str = "bb8";
    type Pool<B: AsyncBackend> = B::Bb8;

    fn pool<B: AsyncBackend>(db: &B, size: usize) -> impl Future<Output = B::Bb8> + Send {
        db.bb8(u32::try_from(size).expect("a small pool"))
    }
}

/// The backend and pool in test output.
fn label<B: Backend, P: PoolKind>() -> String {
    format!("{} via {}", B::NAME, P::NAME)
}

/// The transaction depth of `conn` (0 outside a transaction).
fn depth<C: AsyncConnection>(conn: &mut C) -> u32 {
    <C::TransactionManager as diesel_async::TransactionManager<C>>::transaction_manager_status_mut(
        conn,
    )
    .transaction_depth()
    .expect("a usable transaction manager")
    .map_or(0, std::num::NonZeroU32::get)
}

/// Awaits `signal`, failing the test after [`DEADLINE`].
async fn within<T>(what: &str, signal: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, signal)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {DEADLINE:?}"))
}

/// Awaits a task that must not panic.
async fn joined<T>(task: JoinHandle<T>) -> T {
    task.await.expect("the task ran to its end")
}

// ---------------------------------------------------------------------------
// The functions under test: the blocking suite's, as `async fn`s.

/// A payment under both new options (the records of
/// [`super::modes::create_payment_optimistic_read_first`]).
#[idempotent(
    key = key,
    ttl = "1h",
    name = "tests.modes_attribute",
    clock = clock,
    mode = "optimistic",
    replay = "read_first"
)]
pub async fn create_payment_optimistic_read_first<C: AsyncTestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    req: &NewPayment,
) -> Result<Outcome<Payment>, AppError> {
    let id = conn.insert_payment(req.amount).await?;
    Ok(Payment {
        id,
        amount: req.amount,
    }
    .into())
}

/// [`Payer`] for diesel-async connections: payments once per key in one
/// [`Shape`] through [`Call::run_async`], counting how often the body
/// started.
#[derive(Debug)]
pub struct AsyncPayer {
    pub shape: Shape,
    clock: Arc<ManualClock>,
    on_conflict: OnConflict,
    runs: AtomicUsize,
}

impl AsyncPayer {
    pub fn new(shape: Shape, clock: &Arc<ManualClock>) -> Self {
        AsyncPayer {
            shape,
            clock: Arc::clone(clock),
            on_conflict: OnConflict::Wait,
            runs: AtomicUsize::new(0),
        }
    }

    /// The same payer, answering `InFlight` for a key held by an
    /// unfinished call.
    pub fn rejecting(mut self) -> Self {
        self.on_conflict = OnConflict::Reject;
        self
    }

    /// How often the body started.
    pub fn runs(&self) -> usize {
        AtomicUsize::load(&self.runs, Ordering::SeqCst)
    }

    /// The payment `req` under `key`, as [`Payer::pay`] makes it.
    pub async fn pay<C: AsyncTestConn>(
        &self,
        conn: &mut C,
        key: &str,
        req: &NewPayment,
        then: Then,
    ) -> Result<Outcome<Payment>, AppError> {
        Call::new(NAMESPACE, key)
            .ttl(Ttl::from_secs(TTL.as_secs()))
            .clock(&*self.clock)
            .request(req)
            .mode(self.shape.mode)
            .replay(self.shape.replay)
            .on_conflict(self.on_conflict)
            .run_async(conn, async |conn: &mut C| -> Result<Payment, AppError> {
                self.runs.fetch_add(1, Ordering::SeqCst);
                let id = conn.insert_payment(req.amount).await?;
                match then {
                    Then::Succeed => Ok(Payment {
                        id,
                        amount: req.amount,
                    }),
                    Then::Fail => Err(AppError::Declined),
                    Then::Panic => panic!("injected panic after the payment insert"),
                }
            })
            .await
    }
}

// ---------------------------------------------------------------------------
// Reading what happened, on a blocking connection.

fn record<C: TestConn>(conn: &mut C, namespace: &str, key: &str) -> IdempotencyRecord {
    conn.load_record(namespace, key).expect("the record")
}

fn stored_payment<C: TestConn>(conn: &mut C, namespace: &str, key: &str) -> Payment {
    let rec = record(conn, namespace, key);
    let json = rec
        .response
        .unwrap_or_else(|| panic!("{key}: no stored result"));
    serde_json::from_str(&json).expect("a stored payment")
}

fn payments<C: TestConn>(conn: &mut C) -> i64 {
    conn.count_payments().expect("count payments")
}

fn records<C: TestConn>(conn: &mut C) -> i64 {
    conn.count_records().expect("count records")
}

fn naive(at: chrono::DateTime<chrono::Utc>) -> chrono::NaiveDateTime {
    at.naive_utc()
}

fn is_mismatch<T: std::fmt::Debug>(result: &Result<T, AppError>, key: &str) -> bool {
    matches!(
        result.as_ref().err().and_then(AppError::idempotency),
        Some(Error::PayloadMismatch { key: k, .. }) if k == key
    )
}

fn is_in_flight<T: std::fmt::Debug>(result: &Result<T, AppError>, key: &str) -> bool {
    matches!(
        result.as_ref().err().and_then(AppError::idempotency),
        Some(Error::InFlight { key: k, .. }) if k == key
    )
}

// ---------------------------------------------------------------------------
// The key pattern.

pub async fn first_call_runs_body_and_stores_result<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let payment = create_payment(
        &mut *conn,
        &clock,
        "k-1",
        &NewPayment::eur(1200),
        Then::Succeed,
    )
    .await
    .expect("first call");
    assert_eq!(payment.amount, 1200);
    assert_eq!(depth(&mut *conn), 0, "the call's transaction is closed");
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 1);
    let rec = record(&mut check, "tests.create_payment", "k-1");
    assert_eq!(rec.scope, "");
    assert!(rec.fingerprint.starts_with("v2:"), "{}", rec.fingerprint);
    assert_eq!(
        stored_payment(&mut check, "tests.create_payment", "k-1"),
        payment
    );
    assert_eq!(rec.created_at, naive(clock.now()));
    assert_eq!(
        rec.expires_at,
        naive(clock.now()) + chrono::Duration::hours(1)
    );
}

pub async fn replay_returns_stored_result_without_running_body<
    B: AsyncSuiteBackend,
    P: PoolKind,
>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let mut conn = pool.checkout().await;
    let mut other = pool.checkout().await;
    let clock = super::clock();
    let req = NewPayment::eur(500);
    let first = create_payment(&mut *conn, &clock, "k-2", &req, Then::Succeed)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(59 * 60));
    // A retry whose body would fail or panic still gets the stored success,
    // on the same connection and on another.
    let again = create_payment(&mut *conn, &clock, "k-2", &req, Then::Fail)
        .await
        .unwrap();
    let third = create_payment(&mut *other, &clock, "k-2", &req, Then::Panic)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first, third);
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 1, "the body ran once");
    assert_eq!(records(&mut check), 1);
}

pub async fn outcome_tells_replays_apart<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let req = NewPayment::eur(7);
    let first = create_payment_outcome(&mut *conn, &clock, "k-o", &req)
        .await
        .unwrap();
    let second = create_payment_outcome(&mut *conn, &clock, "k-o", &req)
        .await
        .unwrap();
    assert!(!first.is_replayed());
    assert!(second.is_replayed());
    assert_eq!(first.value(), second.value());
    assert_eq!(payments(&mut db.connect()), 1);
}

pub async fn different_payload_is_a_mismatch<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut check = db.connect();
    let clock = super::clock();
    create_payment(
        &mut *conn,
        &clock,
        "k-3",
        &NewPayment::eur(100),
        Then::Succeed,
    )
    .await
    .unwrap();
    let before = record(&mut check, "tests.create_payment", "k-3");
    for other in [
        NewPayment::eur(101),
        NewPayment {
            amount: 100,
            currency: "USD".into(),
        },
    ] {
        let result = create_payment(&mut *conn, &clock, "k-3", &other, Then::Succeed).await;
        assert!(is_mismatch(&result, "k-3"), "{result:?}");
    }
    assert_eq!(payments(&mut check), 1, "nothing changed");
    assert_eq!(record(&mut check, "tests.create_payment", "k-3"), before);
}

pub async fn body_error_leaves_no_record<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut check = db.connect();
    let clock = super::clock();
    let req = NewPayment::eur(42);
    let err = create_payment(&mut *conn, &clock, "k-4", &req, Then::Fail)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Declined),
        "the body's own error: {err:?}"
    );
    assert_eq!(depth(&mut *conn), 0, "the call's transaction is closed");
    assert_eq!(records(&mut check), 0);
    assert_eq!(payments(&mut check), 0, "the body's insert rolled back");
    // The retry runs the body again.
    create_payment(&mut *conn, &clock, "k-4", &req, Then::Succeed)
        .await
        .unwrap();
    assert_eq!(payments(&mut check), 1);
    assert_eq!(records(&mut check), 1);
}

/// The body panics: the call's future panics (its task ends with a panic),
/// nothing is stored, and the connection goes back to the pool out of any
/// transaction; the retry, on that same connection (a pool of one), runs
/// the body.
pub async fn body_panic_leaves_no_record<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let clock = Arc::new(super::clock());
    let req = NewPayment::eur(42);
    let task = tokio::spawn({
        let (pool, clock, req) = (pool.clone(), Arc::clone(&clock), req.clone());
        async move {
            let mut conn = pool.checkout().await;
            create_payment(&mut *conn, &clock, "k-5", &req, Then::Panic).await
        }
    });
    let err = task.await.expect_err("the panic ends the task");
    assert!(err.is_panic(), "{err:?}");
    let payload = err.into_panic();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("injected panic after the payment insert")
    );
    let mut check = db.connect();
    assert_eq!(records(&mut check), 0);
    assert_eq!(payments(&mut check), 0);
    let mut conn = pool.checkout().await;
    assert_eq!(depth(&mut *conn), 0, "out of any transaction");
    let retried = create_payment(&mut *conn, &clock, "k-5", &req, Then::Succeed)
        .await
        .expect("the key is free");
    assert_eq!(retried.amount, 42);
    assert_eq!(payments(&mut check), 1, "committed for others to see");
}

/// The call inside the caller's own diesel-async transaction, which then
/// returns `Err`: the record goes with the effects.
pub async fn caller_rollback_removes_record<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut conn;
    let clock = super::clock();
    let req = NewPayment::eur(9);
    let result: Result<(), AppError> = conn
        .transaction(async |conn: &mut B::AsyncConn| {
            create_payment(conn, &clock, "k-6", &req, Then::Succeed).await?;
            assert_eq!(
                conn.count_records().await?,
                1,
                "visible inside the transaction"
            );
            Err(AppError::Declined)
        })
        .await;
    assert!(matches!(result, Err(AppError::Declined)), "{result:?}");
    assert_eq!(depth(conn), 0);
    let mut check = db.connect();
    assert_eq!(
        records(&mut check),
        0,
        "the record rolled back with the caller"
    );
    assert_eq!(payments(&mut check), 0);
    let again = create_payment(conn, &clock, "k-6", &req, Then::Succeed).await;
    assert!(again.is_ok(), "the retry runs the body: {again:?}");
    assert_eq!(payments(&mut check), 1);
}

pub async fn caller_commit_keeps_record<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let mut conn = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut conn;
    let clock = super::clock();
    let req = NewPayment::eur(9);
    let first = conn
        .transaction(async |conn: &mut B::AsyncConn| {
            let p = create_payment(conn, &clock, "k-7", &req, Then::Succeed).await?;
            // A replay inside the same transaction sees the uncommitted record.
            let again = create_payment(conn, &clock, "k-7", &req, Then::Succeed).await?;
            assert_eq!(p, again);
            Ok::<_, AppError>(p)
        })
        .await
        .unwrap();
    let mut other = pool.checkout().await;
    let replay = create_payment(&mut *other, &clock, "k-7", &req, Then::Fail)
        .await
        .unwrap();
    assert_eq!(first, replay);
    assert_eq!(payments(&mut db.connect()), 1);
}

pub async fn expired_record_is_treated_as_absent<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut check = db.connect();
    let clock = super::clock();
    let first = create_payment(
        &mut *conn,
        &clock,
        "k-8",
        &NewPayment::eur(1),
        Then::Succeed,
    )
    .await
    .unwrap();
    clock.advance(Duration::from_secs(3600));
    // Expired (expires_at == now): a different payload is not a mismatch.
    let second = create_payment(
        &mut *conn,
        &clock,
        "k-8",
        &NewPayment::eur(2),
        Then::Succeed,
    )
    .await
    .unwrap();
    assert_ne!(first, second);
    assert_eq!(second.amount, 2);
    assert_eq!(payments(&mut check), 2);
    let rec = record(&mut check, "tests.create_payment", "k-8");
    assert_eq!(rec.created_at, naive(clock.now()), "the record was renewed");
    assert_eq!(records(&mut check), 1, "taken over, not added");
    // And the renewed record replays.
    let third = create_payment(
        &mut *conn,
        &clock,
        "k-8",
        &NewPayment::eur(2),
        Then::Succeed,
    )
    .await
    .unwrap();
    assert_eq!(second, third);
    assert_eq!(payments(&mut check), 2);
}

pub async fn scopes_keep_tenants_apart<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let req = NewPayment::eur(3);
    let a = create_scoped(&mut *conn, &clock, "tenant-a", "same-key", &req)
        .await
        .unwrap();
    let b = create_scoped(&mut *conn, &clock, "tenant-b", "same-key", &req)
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    let a2 = create_scoped(&mut *conn, &clock, "tenant-a", "same-key", &req)
        .await
        .unwrap();
    assert_eq!(a, a2);
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 2);
    assert_eq!(records(&mut check), 2);
    let scoped = record(&mut check, "tests.create_scoped", "same-key");
    assert!(scoped.scope.starts_with("tenant-"), "{}", scoped.scope);
}

/// The runtime builder: scope, TTL, clock and the size cap, on `run_async`.
pub async fn runtime_call_api<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut conn;
    let clock = super::clock();
    let run = async |conn: &mut B::AsyncConn, amount: i64| {
        Call::new("tests.runtime", "rt-1")
            .scope("tenant-1")
            .ttl(Ttl::parse("10m").unwrap())
            .clock(&clock)
            .request(&amount)
            .run_async(
                conn,
                async |conn: &mut B::AsyncConn| -> Result<i64, AppError> {
                    Ok(conn.insert_payment(amount).await?)
                },
            )
            .await
    };
    let first = run(&mut *conn, 70).await.unwrap();
    let second = run(&mut *conn, 70).await.unwrap();
    assert!(!first.is_replayed() && second.is_replayed());
    assert_eq!(first.into_value(), second.into_value());
    let mismatch = run(&mut *conn, 71).await;
    assert!(is_mismatch(&mismatch, "rt-1"), "{mismatch:?}");
    let mut check = db.connect();
    let rec = record(&mut check, "tests.runtime", "rt-1");
    assert_eq!(rec.scope, "tenant-1");
    assert_eq!(
        rec.expires_at - rec.created_at,
        chrono::Duration::minutes(10)
    );
    // A result over the cap is refused and nothing is stored.
    let big = async |conn: &mut B::AsyncConn, key: &str, size: usize| {
        Call::new("tests.big", key)
            .clock(&clock)
            .max_response_bytes(1024)
            .run_async(
                conn,
                async |conn: &mut B::AsyncConn| -> Result<String, AppError> {
                    conn.insert_payment(1).await?;
                    Ok("x".repeat(size))
                },
            )
            .await
    };
    let err = big(&mut *conn, "big", 4096).await.unwrap_err();
    match err.idempotency() {
        Some(Error::ResponseTooLarge {
            key, size, limit, ..
        }) => assert_eq!((key.as_str(), *size, *limit), ("big", 4098, 1024)),
        other => panic!("expected ResponseTooLarge, got {other:?}"),
    }
    assert_eq!(records(&mut check), 1, "nothing half-stored");
    assert_eq!(payments(&mut check), 1, "the body's effects rolled back");
    assert_eq!(big(&mut *conn, "small", 100).await.unwrap().len(), 100);
    assert_eq!(records(&mut check), 2);
}

pub async fn invalid_keys_are_rejected_before_the_body<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let long = "k".repeat(256);
    for key in [
        "",
        "has space",
        "line\nbreak",
        "tab\t",
        "naïve",
        long.as_str(),
    ] {
        let result =
            create_payment(&mut *conn, &clock, key, &NewPayment::eur(1), Then::Panic).await;
        assert!(
            matches!(
                result.as_ref().err().and_then(AppError::idempotency),
                Some(Error::InvalidKey { .. })
            ),
            "{key:?}: {result:?}"
        );
    }
    let max = "k".repeat(255);
    create_payment(&mut *conn, &clock, &max, &NewPayment::eur(1), Then::Succeed)
        .await
        .unwrap();
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 1, "only the valid key ran the body");
    assert_eq!(records(&mut check), 1);
}

pub async fn functions_have_separate_namespaces<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let req = NewPayment::eur(10);
    let pay = create_payment(&mut *conn, &clock, "shared", &req, Then::Succeed)
        .await
        .unwrap();
    let refund = create_refund(&mut *conn, &clock, "shared", &req)
        .await
        .unwrap();
    assert_eq!(pay.amount, 10);
    assert_eq!(refund.amount, -10);
    let namespace = format!("{}::create_refund", module_path!());
    let rec = record(&mut db.connect(), &namespace, "shared");
    assert!(
        rec.response.is_some(),
        "default namespace is module path + fn name"
    );
}

pub async fn unreadable_stored_result_is_a_typed_error<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let req = NewPayment::eur(11);
    create_payment(&mut *conn, &clock, "k-9", &req, Then::Succeed)
        .await
        .unwrap();
    let err = create_payment_v2(&mut *conn, &clock, "k-9", &req, Then::Succeed)
        .await
        .unwrap_err();
    match err.idempotency() {
        Some(e @ Error::StoredResultUnreadable { key, .. }) => {
            assert_eq!(key, "k-9");
            assert!(e.to_string().contains("settled_at"), "{e}");
        }
        other => panic!("expected StoredResultUnreadable, got {other:?}"),
    }
    assert_eq!(payments(&mut db.connect()), 1);
}

/// How a body that opens a transaction of its own ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nested {
    /// It commits its transaction and returns.
    Commit,
    /// It panics inside its transaction.
    PanicInside,
    /// It panics two transactions deep.
    PanicTwoDeep,
    /// It returns `Ok` with its transaction still open.
    LeaveOpen,
}

/// A payment whose body inserts, then works in a diesel-async transaction
/// of its own that ends as `how` says.
async fn nested_work<C: AsyncTestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    amount: i64,
    how: Nested,
) -> Result<Outcome<i64>, AppError> {
    Call::new("tests.nested", key)
        .clock(clock)
        .request(&amount)
        .run_async(conn, async |conn: &mut C| -> Result<i64, AppError> {
            let id = conn.insert_payment(amount).await?;
            match how {
                Nested::Commit => {
                    conn.transaction(async |c: &mut C| -> Result<(), AppError> {
                        c.insert_payment(amount + 1).await?;
                        Ok(())
                    })
                    .await?;
                }
                Nested::PanicInside => {
                    conn.transaction(async |c: &mut C| -> Result<(), AppError> {
                        c.insert_payment(amount + 1).await?;
                        panic!("panic inside a nested transaction")
                    })
                    .await?;
                }
                Nested::PanicTwoDeep => {
                    conn.transaction(async |c: &mut C| -> Result<(), AppError> {
                        c.transaction(async |c: &mut C| -> Result<(), AppError> {
                            c.insert_payment(amount + 1).await?;
                            panic!("panic two transactions deep")
                        })
                        .await
                    })
                    .await?;
                }
                Nested::LeaveOpen => {
                    <C::TransactionManager as diesel_async::TransactionManager<C>>::begin_transaction(
                        conn,
                    )
                    .await?;
                    conn.insert_payment(amount + 1).await?;
                }
            }
            Ok(id)
        })
        .await
}

/// A panic in a transaction the body opened (one or two levels deep): the
/// call's future panics, every level is rolled back, the pooled connection
/// is back out of any transaction and usable, and another connection
/// claims the key at once.
pub async fn panic_in_nested_transaction_releases_the_claim<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let clock = Arc::new(super::clock());
    for (i, how) in [Nested::PanicInside, Nested::PanicTwoDeep]
        .into_iter()
        .enumerate()
    {
        let key = format!("nested-{i}");
        let task = tokio::spawn({
            let (pool, clock, key) = (pool.clone(), Arc::clone(&clock), key.clone());
            async move {
                let mut conn = pool.checkout().await;
                nested_work(&mut *conn, &clock, &key, 10, how).await
            }
        });
        let err = task.await.expect_err("the panic ends the task");
        assert!(err.is_panic(), "{how:?}: {err:?}");
        let payload = err.into_panic();
        let message = payload.downcast_ref::<&str>().copied().unwrap_or_default();
        assert!(message.starts_with("panic "), "{how:?}: {message}");

        let mut other = pool.checkout().await;
        let other_conn: &mut B::AsyncConn = &mut other;
        let duplicate = within(
            "the duplicate claims at once",
            nested_work(other_conn, &clock, &key, 20, Nested::Commit),
        )
        .await
        .unwrap_or_else(|e| panic!("{how:?}: {e:?}"));
        assert!(!duplicate.is_replayed(), "{how:?}");
        drop(other);

        // Both connections of the pool, the one the panic went through
        // among them.
        let mut conn = pool.checkout().await;
        let mut also = pool.checkout().await;
        for c in [&mut *conn, &mut *also] {
            assert_eq!(depth(c), 0, "{how:?}: no transaction left open");
        }
        nested_work(
            &mut *conn,
            &clock,
            &format!("after-{i}"),
            30,
            Nested::Commit,
        )
        .await
        .expect("the connection works");
        assert_eq!(
            records(&mut db.connect()),
            2 * (i as i64 + 1),
            "{how:?}: the later calls committed for other connections"
        );
    }
    assert_eq!(payments(&mut db.connect()), 8, "nothing of the panics");
}

/// A body that returns `Ok` with a transaction of its own still open: the
/// call fails, everything is rolled back, nothing is stored, and the key is
/// free.
pub async fn body_leaving_a_transaction_open_is_rolled_back<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let clock = super::clock();
    let err = nested_work(&mut *conn, &clock, "left-open", 10, Nested::LeaveOpen)
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, AppError::Idempotency(Error::Database(e)) if e.to_string().contains("still open")),
        "{err:?}"
    );
    assert_eq!(depth(&mut *conn), 0);
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 0);
    assert_eq!(records(&mut check), 0);
    nested_work(&mut *conn, &clock, "left-open", 10, Nested::Commit)
        .await
        .expect("free");
    assert_eq!(payments(&mut check), 2);
}

// ---------------------------------------------------------------------------
// Duplicates.

/// A first call holds the key in the caller's open transaction; a duplicate
/// on another pooled connection must wait for it and then replay its
/// committed result.
pub async fn duplicate_waits_for_first_and_replays<B: AsyncSuiteBackend, P: PoolKind>() {
    held_first_call::<B, P>(true).await;
}

/// As above, but the first call rolls back: the duplicate runs the body.
pub async fn duplicate_runs_body_when_first_rolls_back<B: AsyncSuiteBackend, P: PoolKind>() {
    held_first_call::<B, P>(false).await;
}

/// Starts a first call of `create_payment` on its own pooled connection
/// inside a caller's transaction, and returns once it holds `key`; the
/// transaction commits when `finish` sends `true`, and rolls back when it
/// sends `false` or is dropped.
async fn hold<B: AsyncSuiteBackend, P: PoolKind>(
    pool: &P::Pool<B>,
    clock: &Arc<ManualClock>,
    key: &'static str,
    req: &NewPayment,
) -> (
    Payment,
    oneshot::Sender<bool>,
    JoinHandle<Result<Payment, AppError>>,
) {
    let (held_tx, held_rx) = oneshot::channel();
    let (finish_tx, finish_rx) = oneshot::channel::<bool>();
    let holder = tokio::spawn({
        let (pool, clock, req) = (pool.clone(), Arc::clone(clock), req.clone());
        async move {
            let mut conn = pool.checkout().await;
            let conn: &mut B::AsyncConn = &mut conn;
            conn.transaction(async move |conn: &mut B::AsyncConn| {
                let p = create_payment(conn, &clock, key, &req, Then::Succeed).await?;
                let _ = held_tx.send(p.clone());
                if finish_rx.await.unwrap_or(false) {
                    Ok(p)
                } else {
                    Err(AppError::Declined)
                }
            })
            .await
        }
    });
    let first = within("the first call holds the key", held_rx)
        .await
        .expect("the holder claimed the key");
    (first, finish_tx, holder)
}

async fn held_first_call<B: AsyncSuiteBackend, P: PoolKind>(commit: bool) {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let clock = Arc::new(super::clock());
    let req = NewPayment::eur(77);
    let (held, finish, holder) = hold::<B, P>(&pool, &clock, "held", &req).await;
    let duplicate = tokio::spawn({
        let (pool, clock, req) = (pool.clone(), Arc::clone(&clock), req.clone());
        async move {
            let mut conn = pool.checkout().await;
            create_payment(&mut *conn, &clock, "held", &req, Then::Succeed).await
        }
    });
    tokio::task::block_in_place(|| db.wait_for_lock_waiters(1));
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits for the first call"
    );
    finish.send(commit).unwrap();
    let first = joined(holder).await;
    let second = within("the duplicate", duplicate)
        .await
        .expect("the duplicate's task")
        .expect("the duplicate succeeds");
    if commit {
        assert_eq!(first.unwrap(), second, "the duplicate replayed the first");
        assert_eq!(held, second);
    } else {
        assert!(matches!(first, Err(AppError::Declined)), "{first:?}");
    }
    let mut check = db.connect();
    assert_eq!(
        stored_payment(&mut check, "tests.create_payment", "held"),
        second,
        "the stored result is the one the duplicate answered"
    );
    assert_eq!(payments(&mut check), 1, "exactly one execution");
    assert_eq!(records(&mut check), 1);
}

/// What each of `$tasks` tasks got per round: every task a `tokio::spawn`
/// task on the multi-threaded runtime, all calling together (a barrier per
/// round). `$call` is an `async` block on `$pool` (the task's `&` of the
/// pool, from which it checks out its connection) and `$round`; the values
/// named in `[..]` are cloned into every task. With as many connections in
/// the pool as tasks, every caller of a round has a connection of its own.
/// A failing call is recorded, not raised, so that the others are not left
/// waiting at the barrier. (A macro: the calls are spawned, so their futures
/// must be `Send`, which rustc proves for a concrete `async` block but not
/// through a closure that borrows the connection for a generic lifetime.)
macro_rules! race {
    ($pool:expr, $tasks:expr, $rounds:expr, [$($shared:ident),*], |$p:ident, $round:ident| $call:expr) => {{
        let barrier = Arc::new(Barrier::new($tasks));
        let workers: Vec<_> = (0..$tasks)
            .map(|_| {
                let pool = $pool.clone();
                let barrier = Arc::clone(&barrier);
                $(let $shared = $shared.clone();)*
                tokio::spawn(async move {
                    let $p = &pool;
                    let mut results = Vec::with_capacity($rounds);
                    for $round in 0..$rounds {
                        barrier.wait().await;
                        let result: Result<_, AppError> = $call.await;
                        results.push(result.map_err(|e| format!("round {}: {e} ({e:?})", $round)));
                    }
                    results
                })
            })
            .collect();
        let mut all = Vec::with_capacity($tasks);
        for worker in workers {
            all.push(joined(worker).await);
        }
        all
    }};
}

/// Every task got a value per round and all got the same one; returns it
/// per round.
fn agreed<T: Clone + PartialEq + std::fmt::Debug>(
    what: &str,
    results: &[Vec<Result<T, String>>],
    rounds: usize,
) -> Vec<T> {
    let failures: Vec<&String> = results
        .iter()
        .flat_map(|r| r.iter().filter_map(|r| r.as_ref().err()))
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} call(s) failed; the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    (0..rounds)
        .map(|round| {
            let first = results[0][round].as_ref().unwrap();
            for r in results {
                assert_eq!(
                    r[round].as_ref().unwrap(),
                    first,
                    "{what}: round {round}: callers disagree"
                );
            }
            first.clone()
        })
        .collect()
}

/// 64 tasks on 64 pooled connections call with one key at once, 10 rounds:
/// the body runs exactly once per round and all 64 get equal results.
pub async fn concurrent_duplicates_run_body_once<B: AsyncSuiteBackend, P: PoolKind>() {
    const TASKS: usize = 64;
    const ROUNDS: usize = 10;
    let db = B::fresh();
    let pool = P::pool(&db, TASKS).await;
    let clock = Arc::new(super::clock());
    let results = race!(pool, TASKS, ROUNDS, [clock], |pool, round| async {
        let mut conn = pool.checkout().await;
        let req = NewPayment::eur(round as i64);
        create_payment(
            &mut *conn,
            &clock,
            &format!("round-{round}"),
            &req,
            Then::Succeed,
        )
        .await
    });
    let per_round = agreed(&label::<B, P>(), &results, ROUNDS);
    for (round, payment) in per_round.iter().enumerate() {
        assert_eq!(payment.amount, round as i64);
    }
    let mut check = db.connect();
    let executions = payments(&mut check);
    println!(
        "[{}] {TASKS} tasks x {ROUNDS} rounds: {executions} body executions, {} records",
        label::<B, P>(),
        records(&mut check)
    );
    assert_eq!(executions, ROUNDS as i64, "exactly one execution per key");
}

/// An expired record, then 16 tasks on 16 pooled connections racing to
/// take its key over, 10 rounds: exactly one runs the body, the others
/// replay its result.
pub async fn concurrent_takeover_of_expired_record_runs_body_once<
    B: AsyncSuiteBackend,
    P: PoolKind,
>() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 10;
    let db = B::fresh();
    let pool = P::pool(&db, TASKS).await;
    let mut check = db.connect();
    let clock = Arc::new(super::clock());
    let key = "expiring";
    {
        let mut conn = pool.checkout().await;
        create_payment(&mut *conn, &clock, key, &NewPayment::eur(-1), Then::Succeed)
            .await
            .unwrap();
    }
    for round in 0..ROUNDS {
        clock.advance(Duration::from_secs(3600)); // the record just expired
        let results = race!(pool, TASKS, 1, [clock], |pool, _call| async {
            let mut conn = pool.checkout().await;
            let req = NewPayment::eur(round as i64);
            create_payment(&mut *conn, &clock, key, &req, Then::Succeed).await
        });
        let what = format!("{} round {round}", label::<B, P>());
        let taken = &agreed(&what, &results, 1)[0];
        assert_eq!(taken.amount, round as i64, "{what}: took the key over");
        assert_eq!(payments(&mut check), round as i64 + 2, "{what}");
    }
    assert_eq!(records(&mut check), 1);
}

/// A first call holds the key in an open transaction; a duplicate with
/// `on_conflict = "reject"` gets `InFlight` at once (where the backend can
/// tell; SQLite waits instead), and replays once the first committed.
pub async fn on_conflict_reject_answers_in_flight<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let clock = Arc::new(super::clock());
    let req = NewPayment::eur(5);
    let (held, finish, holder) = hold::<B, P>(&pool, &clock, "held", &req).await;
    let rejecting = tokio::spawn({
        let (pool, clock, req) = (pool.clone(), Arc::clone(&clock), req.clone());
        async move {
            let mut conn = pool.checkout().await;
            create_payment_or_reject(&mut *conn, &clock, "held", &req, Then::Succeed).await
        }
    });
    if B::REJECTS_AT_ONCE {
        let answer = within("reject answers while the key is held", rejecting)
            .await
            .expect("the rejected call's task");
        assert!(is_in_flight(&answer, "held"), "{answer:?}");
        finish.send(true).unwrap();
        let first = joined(holder).await.unwrap();
        assert_eq!(first, held);
        let mut conn = pool.checkout().await;
        let replay =
            create_payment_or_reject(&mut *conn, &clock, "held", &req, Then::Succeed).await;
        assert_eq!(replay.unwrap(), first, "after the commit it replays");
    } else {
        finish.send(true).unwrap();
        let first = joined(holder).await.unwrap();
        let answer = within("the waiting duplicate", rejecting)
            .await
            .expect("the duplicate's task");
        assert_eq!(answer.unwrap(), first, "it waited, then replayed");
    }
    assert_eq!(payments(&mut db.connect()), 1);
}

// ---------------------------------------------------------------------------
// Isolation levels.

/// At each isolation level the backend offers, 16 tasks race for one key
/// inside their own diesel-async transactions (which read first, so their
/// snapshot predates the winner): each replays or gets a retryable error,
/// and `retry_async` converges to exactly one execution.
pub async fn isolation_levels_replay_or_retry<B: AsyncSuiteBackend, P: PoolKind>() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    let db = B::fresh();
    let pool = P::pool(&db, TASKS).await;
    let clock = Arc::new(super::clock());
    // Backoff with full jitter is what breaks repeated deadlocks between
    // the same callers (MySQL SERIALIZABLE turns reads into locking reads).
    let policy = Arc::new(
        diesel_idempotent::RetryPolicy::new()
            .max_attempts(50)
            .base_delay(Duration::from_millis(2))
            .max_delay(Duration::from_millis(100)),
    );
    for (l, &level) in B::ISOLATION_LEVELS.iter().enumerate() {
        let retries = Arc::new(AtomicUsize::new(0));
        let results = race!(
            pool,
            TASKS,
            ROUNDS,
            [clock, policy, retries],
            |pool, round| async {
                let key = &format!("iso-{l}-{round}");
                let req = &NewPayment::eur(round as i64);
                let clock = &clock;
                let mut attempts = 0;
                // Each attempt on a connection of its own: one whose transaction
                // failed to roll back is broken.
                let result = diesel_idempotent::retry_async(&policy, || {
                    attempts += 1;
                    async move {
                        let mut conn = pool.checkout().await;
                        let conn: &mut B::AsyncConn = &mut conn;
                        conn.use_isolation(level).await?;
                        conn.transaction(async |c: &mut B::AsyncConn| {
                            c.count_payments().await?;
                            create_payment(c, clock, key, req, Then::Succeed).await
                        })
                        .await
                    }
                })
                .await;
                retries.fetch_add(attempts - 1, Ordering::SeqCst);
                result
            }
        );
        println!(
            "[{}] {level:?}: {TASKS} x {ROUNDS} racing calls, {} retryable errors retried",
            label::<B, P>(),
            AtomicUsize::load(&retries, Ordering::SeqCst)
        );
        agreed(&format!("{} {level:?}", label::<B, P>()), &results, ROUNDS);
    }
    assert_eq!(
        payments(&mut db.connect()),
        (ROUNDS * B::ISOLATION_LEVELS.len()) as i64,
        "exactly one execution per key at every level"
    );
}

// ---------------------------------------------------------------------------
// Call shapes: `Mode::Optimistic` and `Replay::ReadFirst`.

/// First call: in every shape the body runs once and its result is stored
/// with the record's timestamps.
pub async fn shapes_first_call_runs_body_and_stores<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut check = db.connect();
    let clock = Arc::new(super::clock());
    for shape in SHAPES {
        let payer = AsyncPayer::new(shape, &clock);
        let key = format!("first-{}", shape.name());
        let before = payments(&mut check);
        let first = payer
            .pay(&mut *conn, &key, &NewPayment::eur(1200), Then::Succeed)
            .await
            .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
        assert!(!first.is_replayed(), "{shape:?}");
        assert_eq!(first.amount, 1200, "{shape:?}");
        assert_eq!(payer.runs(), 1, "{shape:?}");
        assert_eq!(payments(&mut check), before + 1, "{shape:?}: one effect");
        assert_eq!(
            &stored_payment(&mut check, NAMESPACE, &key),
            first.value(),
            "{shape:?}"
        );
        let rec = record(&mut check, NAMESPACE, &key);
        let now = naive(clock.now());
        assert_eq!(rec.created_at, now, "{shape:?}");
        assert_eq!(
            rec.expires_at,
            now + chrono::Duration::hours(1),
            "{shape:?}"
        );
        assert!(rec.fingerprint.starts_with("v2:"), "{shape:?}");
    }
}

/// In every shape a repeat returns the stored result, marked replayed, on
/// the same connection and another, with no second effect; where the
/// replay does not run the body, a body that would fail or panic does not
/// matter.
pub async fn shapes_replay_returns_stored_result_without_a_second_effect<
    B: AsyncSuiteBackend,
    P: PoolKind,
>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let mut conn = pool.checkout().await;
    let mut other = pool.checkout().await;
    let mut check = db.connect();
    let clock = Arc::new(super::clock());
    let req = NewPayment::eur(500);
    for shape in SHAPES {
        let payer = AsyncPayer::new(shape, &clock);
        let key = format!("replay-{}", shape.name());
        let before = payments(&mut check);
        let first = payer
            .pay(&mut *conn, &key, &req, Then::Succeed)
            .await
            .unwrap();
        let rec = record(&mut check, NAMESPACE, &key);
        clock.advance(Duration::from_secs(59 * 60));
        let mut repeats = vec![
            payer.pay(&mut *conn, &key, &req, Then::Succeed).await,
            payer.pay(&mut *other, &key, &req, Then::Succeed).await,
            // Where the replay runs the body, its failure is rolled back and
            // the call answers with the replay.
            payer.pay(&mut *conn, &key, &req, Then::Fail).await,
        ];
        if !shape.replay_runs_body() {
            repeats.push(payer.pay(&mut *other, &key, &req, Then::Panic).await);
        }
        for again in &repeats {
            let again = again
                .as_ref()
                .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert!(again.is_replayed(), "{shape:?}");
            assert_eq!(again.value(), first.value(), "{shape:?}");
        }
        let expected_runs = if shape.replay_runs_body() { 4 } else { 1 };
        assert_eq!(payer.runs(), expected_runs, "{shape:?}: body starts");
        assert_eq!(
            payments(&mut check),
            before + 1,
            "{shape:?}: the body's effect once"
        );
        assert_eq!(
            record(&mut check, NAMESPACE, &key),
            rec,
            "{shape:?}: unchanged"
        );
        assert_eq!((depth(&mut *conn), depth(&mut *other)), (0, 0), "{shape:?}");
        clock.advance(Duration::from_secs(60 * 60));
    }
}

/// In every shape the key reused with another request is
/// `PayloadMismatch`, with no second effect and the record unchanged.
pub async fn shapes_mismatch_has_no_second_effect<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut check = db.connect();
    let clock = Arc::new(super::clock());
    for shape in SHAPES {
        let payer = AsyncPayer::new(shape, &clock);
        let key = format!("mismatch-{}", shape.name());
        let before = payments(&mut check);
        payer
            .pay(&mut *conn, &key, &NewPayment::eur(100), Then::Succeed)
            .await
            .unwrap();
        let rec = record(&mut check, NAMESPACE, &key);
        for other in [
            NewPayment::eur(101),
            NewPayment {
                amount: 100,
                currency: "USD".into(),
            },
        ] {
            for then in [Then::Succeed, Then::Fail] {
                let result = payer.pay(&mut *conn, &key, &other, then).await;
                assert!(is_mismatch(&result, &key), "{shape:?}: {result:?}");
            }
        }
        assert_eq!(payments(&mut check), before + 1, "{shape:?}: one effect");
        assert_eq!(
            record(&mut check, NAMESPACE, &key),
            rec,
            "{shape:?}: unchanged"
        );
    }
}

/// In every shape, 64 tasks on 64 pooled connections call with one key at
/// once, 3 rounds: one effect and one answer per round; and the same
/// through the attribute with `mode = "optimistic", replay = "read_first"`.
pub async fn shapes_concurrent_duplicates_run_body_once<B: AsyncSuiteBackend, P: PoolKind>() {
    const TASKS: usize = 64;
    const ROUNDS: usize = 3;
    let db = B::fresh();
    let pool = P::pool(&db, TASKS).await;
    let mut check = db.connect();
    let clock = Arc::new(super::clock());
    for shape in SHAPES {
        let payer = Arc::new(AsyncPayer::new(shape, &clock));
        let before = payments(&mut check);
        let results = race!(pool, TASKS, ROUNDS, [payer], |pool, round| async {
            let mut conn = pool.checkout().await;
            let key = format!("dup-{}-{round}", shape.name());
            let req = NewPayment::eur(round as i64);
            payer
                .pay(&mut *conn, &key, &req, Then::Succeed)
                .await
                .map(Outcome::into_value)
        });
        let what = format!("{} {shape:?}", label::<B, P>());
        let per_round = agreed(&what, &results, ROUNDS);
        for (round, payment) in per_round.iter().enumerate() {
            let key = format!("dup-{}-{round}", shape.name());
            assert_eq!(
                &stored_payment(&mut check, NAMESPACE, &key),
                payment,
                "{what}"
            );
        }
        assert_eq!(
            payments(&mut check),
            before + ROUNDS as i64,
            "{what}: one effect per key ({} body starts)",
            payer.runs()
        );
    }
    let before = payments(&mut check);
    let results = race!(pool, TASKS, ROUNDS, [clock], |pool, round| async {
        let mut conn = pool.checkout().await;
        let req = NewPayment::eur(round as i64);
        create_payment_optimistic_read_first(&mut *conn, &clock, &format!("attr-{round}"), &req)
            .await
            .map(Outcome::into_value)
    });
    agreed(
        &format!("{} attribute, optimistic + read_first", label::<B, P>()),
        &results,
        ROUNDS,
    );
    assert_eq!(payments(&mut check), before + ROUNDS as i64);
}

// ---------------------------------------------------------------------------
// The call-history pattern and getOrCreate.

fn click(occurred_at: i64, delivery: u32) -> ClickEvent {
    ClickEvent {
        user_id: 7,
        url: "https://sho.rt/abc".to_owned(),
        occurred_at,
        delivery,
    }
}

pub async fn hash_of_arguments_replays_repeats<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut check = db.connect();
    let clock = super::clock();
    let event = click(1_000, 1);
    let first = consume(&mut *conn, &clock, &event).await.unwrap();
    let again = consume(&mut *conn, &clock, &event.clone()).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(
        payments(&mut check),
        1,
        "a redelivery does not run the body"
    );
    // Another event, or another delivery of it (every argument counts), runs.
    consume(&mut *conn, &clock, &click(1_001, 1)).await.unwrap();
    consume(&mut *conn, &clock, &click(1_000, 2)).await.unwrap();
    assert_eq!(payments(&mut check), 3);
    // The key is the public fingerprint of the arguments.
    let key = diesel_idempotent::fingerprint(&event).unwrap();
    let rec = record(&mut check, "tests.consume", key.as_str());
    assert_eq!(rec.fingerprint, key.as_str());
    // Only the named values identify an event under `hash(..)`.
    let by_fields = consume_fields(&mut *conn, &clock, &click(2_000, 1))
        .await
        .unwrap();
    let redelivered = consume_fields(&mut *conn, &clock, &click(2_000, 9))
        .await
        .unwrap();
    assert_eq!(by_fields, redelivered);
    assert_eq!(payments(&mut check), 4);
    // The record expires like any other: after 7 days the call runs again.
    clock.advance(Duration::from_secs(7 * 24 * 3600));
    consume(&mut *conn, &clock, &event).await.unwrap();
    assert_eq!(payments(&mut check), 5);
}

/// The fingerprint as the key of a `Call`, as `#[idempotent(hash)]` uses it.
pub async fn hash_key_through_the_runtime<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut conn;
    let clock = super::clock();
    let deliver = async |conn: &mut B::AsyncConn, event: &ClickEvent| {
        let fingerprint = diesel_idempotent::fingerprint(event).unwrap();
        Call::new("tests.consume", fingerprint.as_str())
            .ttl(Ttl::parse("7d").unwrap())
            .clock(&clock)
            .fingerprint(Ok(fingerprint.clone()))
            .run_async(
                conn,
                async |conn: &mut B::AsyncConn| -> Result<i64, AppError> {
                    Ok(conn.insert_payment(event.occurred_at).await?)
                },
            )
            .await
    };
    let event = click(3_000, 1);
    let first = deliver(&mut *conn, &event).await.unwrap();
    let again = deliver(&mut *conn, &event).await.unwrap();
    assert!(!first.is_replayed() && again.is_replayed());
    assert_eq!(first.value(), again.value());
    // The attribute finds the same record.
    let through_attribute = consume(conn, &clock, &event).await.unwrap();
    assert_eq!(&through_attribute, first.value());
    assert_eq!(payments(&mut db.connect()), 1);
}

pub async fn get_or_create_returns_the_existing_row<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut conn;
    let mut check = db.connect();
    let first = open_account_checked(conn, 1, 10).await.unwrap();
    let again = open_account_checked(conn, 1, 10).await.unwrap();
    assert_eq!(first, again, "a double-click opens one account");
    let other_bank = open_account_checked(conn, 1, 11).await.unwrap();
    assert_ne!(first.id, other_bank.id);
    assert_eq!(check.count_accounts().unwrap(), 2);
    // Inside a caller's transaction too, through the runtime function.
    let inside = conn
        .transaction(async |c: &mut B::AsyncConn| {
            diesel_idempotent::get_or_create_async(
                c,
                async |c: &mut B::AsyncConn| Ok::<_, AppError>(c.find_account(1, 10).await?),
                async |c: &mut B::AsyncConn| -> Result<Account, AppError> {
                    Ok(c.insert_account(1, 10).await?)
                },
            )
            .await
        })
        .await
        .unwrap();
    assert_eq!(inside, first);
    // Another error of the body is returned as it is.
    let err = open_account_checked(conn, 2, -1).await.unwrap_err();
    assert!(matches!(err, AppError::Declined), "{err:?}");
    assert_eq!(check.count_accounts().unwrap(), 2);
    assert_eq!(records(&mut check), 0, "no idempotency record is kept");
}

/// 16 creators of the same natural key at once on 16 pooled connections,
/// 5 rounds: one row each round, every caller gets it, no error surfaces.
pub async fn concurrent_creators_get_one_row<B: AsyncSuiteBackend, P: PoolKind>() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    let db = B::fresh();
    let pool = P::pool(&db, TASKS).await;
    let results = race!(pool, TASKS, ROUNDS, [], |pool, round| async {
        let mut conn = pool.checkout().await;
        open_account_checked(&mut *conn, 100 + round as i64, 1).await
    });
    let accounts = agreed(&label::<B, P>(), &results, ROUNDS);
    for (round, account) in accounts.iter().enumerate() {
        assert_eq!(account.customer_id, 100 + round as i64);
    }
    assert_eq!(db.connect().count_accounts().unwrap(), ROUNDS as i64);
}

// ---------------------------------------------------------------------------
// One procedure for both drivers.

/// Records written by a blocking call replay for an async one, and the
/// other way round; a mismatch is one across drivers too.
pub async fn blocking_and_async_calls_share_records<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut conn = pool.checkout().await;
    let mut blocking = db.connect();
    let clock = super::clock();
    let req = NewPayment::eur(64);
    let by_blocking =
        super::create_payment(&mut blocking, &clock, "shared-1", &req, Then::Succeed).unwrap();
    let replayed = create_payment(&mut *conn, &clock, "shared-1", &req, Then::Fail)
        .await
        .unwrap();
    assert_eq!(replayed, by_blocking);
    let by_async = create_payment(&mut *conn, &clock, "shared-2", &req, Then::Succeed)
        .await
        .unwrap();
    let replayed =
        super::create_payment(&mut blocking, &clock, "shared-2", &req, Then::Fail).unwrap();
    assert_eq!(replayed, by_async);
    let mismatch = create_payment(
        &mut *conn,
        &clock,
        "shared-1",
        &NewPayment::eur(65),
        Then::Succeed,
    )
    .await;
    assert!(is_mismatch(&mismatch, "shared-1"), "{mismatch:?}");
    assert_eq!(
        record(&mut blocking, "tests.create_payment", "shared-1").fingerprint,
        record(&mut blocking, "tests.create_payment", "shared-2").fingerprint,
        "one fingerprint for one request, whichever driver computed it"
    );
    assert_eq!(payments(&mut blocking), 2);
}

/// What a connection sent while a call ran: its statements, and its
/// transaction events, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sent {
    statements: Vec<String>,
    transactions: Vec<String>,
}

impl Sent {
    /// The statements the library added: not the body's (the payment insert
    /// and, on MySQL, its id) nor the caller's BEGIN and COMMIT (ROLLBACK).
    fn library(&self, in_callers_transaction: bool) -> usize {
        let body = self
            .statements
            .iter()
            .filter(|q| q.contains("INSERT INTO payments") || q.contains("LAST_INSERT_ID"))
            .count();
        self.statements.len() - body - usize::from(in_callers_transaction) * 2
    }

    /// The SQL of each statement, without its bind values (the keys and
    /// the instants differ between the two calls compared).
    fn sql(&self) -> Vec<&str> {
        self.statements
            .iter()
            .map(|q| q.split(" -- binds:").next().unwrap_or(q).trim_end())
            .collect()
    }

    /// The statements, shortened, for messages.
    fn shapes(&self) -> String {
        let shapes: Vec<String> = self
            .statements
            .iter()
            .map(|q| q.chars().take(40).collect())
            .collect();
        shapes.join(" | ")
    }
}

/// A recorder of what a connection sends, and its log.
fn recorder() -> (Arc<Mutex<Sent>>, impl Instrumentation) {
    let log = Arc::new(Mutex::new(Sent::default()));
    let sink = Arc::clone(&log);
    let instrumentation = move |event: InstrumentationEvent<'_>| {
        let mut sent = sink.lock().unwrap();
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                sent.statements.push(query.to_string());
            }
            InstrumentationEvent::BeginTransaction { depth, .. } => {
                sent.transactions.push(format!("begin {depth}"));
            }
            InstrumentationEvent::CommitTransaction { depth, .. } => {
                sent.transactions.push(format!("commit {depth}"));
            }
            InstrumentationEvent::RollbackTransaction { depth, .. } => {
                sent.transactions.push(format!("rollback {depth}"));
            }
            _ => {}
        }
    };
    (log, instrumentation)
}

fn taken(log: &Arc<Mutex<Sent>>) -> Sent {
    std::mem::take(&mut *log.lock().unwrap())
}

/// What holds a key when a measured call comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    Nothing,
    Record,
    Expired,
    /// A first call that has not committed, on another connection.
    Held,
}

/// What a measured call must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Fresh,
    Replayed,
    Mismatch,
    InFlight,
    Declined,
}

fn check_answer(what: &str, answer: Answer, result: &Result<Outcome<Payment>, AppError>) {
    use Answer::*;
    match (answer, result) {
        (Fresh, Ok(o)) => assert!(!o.is_replayed(), "{what}"),
        (Replayed, Ok(o)) => assert!(o.is_replayed(), "{what}"),
        (Mismatch, Err(AppError::Idempotency(Error::PayloadMismatch { .. })))
        | (InFlight, Err(AppError::Idempotency(Error::InFlight { .. })))
        | (Declined, Err(AppError::Declined)) => {}
        _ => panic!("{what}: expected {answer:?}, got {result:?}"),
    }
}

/// Each path of `suite::statements_added_per_call`, run through the
/// blocking driver and through the async one on the same backend, outside
/// and inside a caller's transaction: the async call sends the same
/// statements (the same SQL, as many, in the same order) and the same
/// transaction events as the blocking call.
pub async fn statements_match_the_blocking_path<B: AsyncSuiteBackend, P: PoolKind>() {
    use Answer::*;
    use Before::*;
    type BlockingManager<B> = <<B as Backend>::Conn as Connection>::TransactionManager;
    let db = B::fresh();
    let mut blocking = db.connect();
    let mut holder = db.connect();
    let pool = P::pool(&db, 1).await;
    let mut pooled = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut pooled;
    let clock = Arc::new(super::clock());
    let req = NewPayment::eur(1);
    let other = NewPayment::eur(2);
    let stage = Payer::new(Shape::CLAIM_FIRST, &clock);
    let shapes = [
        ("claim-first", Shape::CLAIM_FIRST, false),
        ("reject", Shape::CLAIM_FIRST, true),
        ("read-first", Shape::READ_FIRST, false),
        ("optimistic", Shape::OPTIMISTIC, false),
        (
            "optimistic + read-first",
            Shape::OPTIMISTIC_READ_FIRST,
            false,
        ),
    ];
    #[rustfmt::skip]
    let paths: &[(usize, &str, Before, &NewPayment, Answer)] = &[
        (0, "first call", Nothing, &req, Fresh),
        (0, "replay", Record, &req, Replayed),
        (0, "mismatch", Record, &other, Mismatch),
        (0, "take-over", Expired, &req, Fresh),
        (1, "in flight", Held, &req, InFlight),
        (1, "first call", Nothing, &req, Fresh),
        (1, "replay", Record, &req, Replayed),
        (2, "first call", Nothing, &req, Fresh),
        (2, "replay", Record, &req, Replayed),
        (2, "mismatch", Record, &other, Mismatch),
        (2, "take-over", Expired, &req, Fresh),
        (3, "first call", Nothing, &req, Fresh),
        (3, "replay", Record, &req, Replayed),
        (3, "mismatch", Record, &other, Mismatch),
        (3, "take-over", Expired, &req, Fresh),
        (3, "body error", Nothing, &req, Declined),
        (4, "first call", Nothing, &req, Fresh),
        (4, "replay", Record, &req, Replayed),
    ];
    let mut report = vec![format!(
        "| path | blocking | {} | blocking, in a transaction | {}, in a transaction |",
        P::NAME,
        P::NAME
    )];
    let mut wrong = Vec::new();
    for (n, &(s, path, before, with, answer)) in paths.iter().enumerate() {
        let (shape_label, shape, rejecting) = shapes[s];
        let label = format!("{shape_label}, {path}");
        if before == Held && !B::REJECTS_AT_ONCE {
            // SQLite: the duplicate would wait for the database lock.
            continue;
        }
        let blocking_payer = if rejecting {
            Payer::new(shape, &clock).rejecting()
        } else {
            Payer::new(shape, &clock)
        };
        let async_payer = if rejecting {
            AsyncPayer::new(shape, &clock).rejecting()
        } else {
            AsyncPayer::new(shape, &clock)
        };
        let then = if answer == Declined {
            Then::Fail
        } else {
            Then::Succeed
        };
        let mut cells = Vec::new();
        for in_tx in [false, true] {
            let keys = [format!("b-{n}-{in_tx}"), format!("a-{n}-{in_tx}")];
            if matches!(before, Record | Expired) {
                for key in &keys {
                    stage.pay(&mut blocking, key, &req, Then::Succeed).unwrap();
                }
            }
            if before == Expired {
                clock.advance(TTL);
            }
            if before == Held {
                BlockingManager::<B>::begin_transaction(&mut holder).unwrap();
                for key in &keys {
                    stage.pay(&mut holder, key, &req, Then::Succeed).unwrap();
                }
            }
            let what = format!("{label} (in a caller's transaction: {in_tx})");

            let (log, instrumentation) = recorder();
            blocking.set_instrumentation(instrumentation);
            let result = if in_tx {
                blocking.transaction(|c| blocking_payer.pay(c, &keys[0], with, then))
            } else {
                blocking_payer.pay(&mut blocking, &keys[0], with, then)
            };
            blocking.set_instrumentation(diesel::connection::get_default_instrumentation());
            check_answer(&format!("blocking: {what}"), answer, &result);
            let sync_sent = taken(&log);

            let (log, instrumentation) = recorder();
            conn.set_instrumentation(instrumentation);
            let result = if in_tx {
                conn.transaction(async |c: &mut B::AsyncConn| {
                    async_payer.pay(c, &keys[1], with, then).await
                })
                .await
            } else {
                async_payer.pay(conn, &keys[1], with, then).await
            };
            conn.set_instrumentation(diesel::connection::get_default_instrumentation());
            check_answer(&format!("{}: {what}", P::NAME), answer, &result);
            let async_sent = taken(&log);

            if before == Held {
                BlockingManager::<B>::rollback_transaction(&mut holder).unwrap();
            }
            let (sync_count, async_count) = (sync_sent.library(in_tx), async_sent.library(in_tx));
            if sync_count != async_count
                || sync_sent.transactions != async_sent.transactions
                || sync_sent.sql() != async_sent.sql()
            {
                wrong.push(format!(
                    "{what}: blocking {sync_count} statements, {:?}: {}\n    async {async_count} \
                     statements, {:?}: {}",
                    sync_sent.transactions,
                    sync_sent.shapes(),
                    async_sent.transactions,
                    async_sent.shapes()
                ));
            }
            cells.push(sync_count.to_string());
            cells.push(async_count.to_string());
        }
        report.push(format!(
            "| {label} | {} | {} | {} | {} |",
            cells[0], cells[1], cells[2], cells[3]
        ));
    }
    println!(
        "[{}] statements added by the library per call, blocking and async:\n  {}",
        label::<B, P>(),
        report.join("\n  ")
    );
    assert!(
        wrong.is_empty(),
        "[{}] the async path differs from the blocking path:\n  {}",
        label::<B, P>(),
        wrong.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Faults.

/// Whether `err` is a database error, from the library or from the body.
fn is_database_error(err: &AppError) -> bool {
    matches!(
        err,
        AppError::Idempotency(Error::Database(_)) | AppError::Db(_)
    )
}

/// A call of 300 under `key` on a connection of `pool`, in a task of its
/// own. With `signals`, the body (after its insert) reports its session and
/// waits for the go-ahead, then returns, or with `true` first sends one
/// more statement.
fn pay_in_task<B: AsyncSuiteBackend, P: PoolKind>(
    pool: &P::Pool<B>,
    clock: &Arc<ManualClock>,
    key: &'static str,
    signals: Option<(oneshot::Sender<i64>, oneshot::Receiver<()>, bool)>,
) -> JoinHandle<Result<Outcome<i64>, AppError>> {
    let (pool, clock) = (pool.clone(), Arc::clone(clock));
    tokio::spawn(async move {
        let mut conn = pool.checkout().await;
        pay_300(&mut *conn, &clock, key, signals).await
    })
}

async fn pay_300<C: AsyncTestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    signals: Option<(oneshot::Sender<i64>, oneshot::Receiver<()>, bool)>,
) -> Result<Outcome<i64>, AppError> {
    Call::new("tests.faults", key)
        .clock(clock)
        .request(&300)
        .run_async(conn, async move |c: &mut C| -> Result<i64, AppError> {
            let id = c.insert_payment(300).await?;
            if let Some((session_tx, go_rx, then_statement)) = signals {
                let _ = session_tx.send(c.session_id().await?);
                let _ = go_rx.await;
                if then_statement {
                    c.insert_payment(301).await?;
                }
            }
            Ok(id)
        })
        .await
}

/// The server ends the call's own session (from another connection) while
/// the body waits on a signal after its insert: the call returns a typed
/// database error and nothing is stored; retries on new pooled connections
/// run each body once, and repeats replay. Once with the body returning at
/// once, once with it sending one more statement on the dead connection.
pub async fn connection_killed_mid_body_stores_nothing<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 2).await;
    let mut admin = db.connect_async().await;
    let clock = Arc::new(super::clock());
    let keys = ["killed-then-ok", "killed-then-insert"];
    for (key, then_statement) in keys.into_iter().zip([false, true]) {
        let (session_tx, session_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        let call = pay_in_task::<B, P>(
            &pool,
            &clock,
            key,
            Some((session_tx, go_rx, then_statement)),
        );
        let session = within("the body reports its session", session_rx)
            .await
            .expect("the body started");
        admin
            .kill_session(session)
            .await
            .expect("end the call's session");
        go_tx.send(()).expect("the body waits");
        let result = within("the killed call", call)
            .await
            .expect("the killed call's task");
        let err = result.expect_err("a call whose connection died cannot succeed");
        println!(
            "[{}] {key}: {err:?} (retryable: {})",
            label::<B, P>(),
            diesel_idempotent::Retryable::is_retryable(&err)
        );
        assert!(is_database_error(&err), "{key}: a typed error: {err:?}");
        let mut check = db.connect();
        assert_eq!(records(&mut check), 0, "{key}: no record");
        assert_eq!(payments(&mut check), 0, "{key}: no payment");
    }
    for key in keys {
        let first = joined(pay_in_task::<B, P>(&pool, &clock, key, None))
            .await
            .unwrap_or_else(|e| panic!("{key}: the retry on a new pooled connection: {e:?}"));
        assert!(!first.is_replayed(), "{key}");
        let again = joined(pay_in_task::<B, P>(&pool, &clock, key, None))
            .await
            .expect("the repeat");
        assert!(again.is_replayed(), "{key}");
        assert_eq!(first.value(), again.value(), "{key}");
    }
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 2);
    assert_eq!(records(&mut check), 2);
}

/// A connection whose session the server ended between two calls (as a
/// database restart does): the call on it is a typed, retryable error, as
/// on a blocking connection; `retry_async` with a pooled connection per
/// attempt then succeeds, and the record committed before replays.
pub async fn connection_lost_between_calls_is_a_retryable_error<
    B: AsyncSuiteBackend,
    P: PoolKind,
>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut admin = db.connect_async().await;
    let mut conn = db.connect_async().await;
    let clock = Arc::new(super::clock());
    let before = pay_300(&mut conn, &clock, "before", None)
        .await
        .expect("first call");
    let session = conn.session_id().await.expect("the session");
    admin.kill_session(session).await.expect("end the session");

    let err = within(
        "the call on the lost connection",
        pay_300(&mut conn, &clock, "after", None),
    )
    .await
    .expect_err("the connection did not survive");
    println!("[{}] call on the lost connection: {err:?}", label::<B, P>());
    assert!(
        err.idempotency().is_some_and(Error::is_retryable),
        "a lost connection is a retryable typed error (as on a blocking connection): {err:?}"
    );

    let policy = diesel_idempotent::RetryPolicy::new().max_attempts(3);
    let after = diesel_idempotent::retry_async(&policy, || async {
        let mut conn = pool.checkout().await;
        pay_300(&mut *conn, &clock, "after", None).await
    })
    .await
    .expect("a new connection runs the call");
    assert!(!after.is_replayed());
    let mut conn = pool.checkout().await;
    let replayed = pay_300(&mut *conn, &clock, "before", None)
        .await
        .expect("the record survived");
    assert!(replayed.is_replayed());
    assert_eq!(replayed.value(), before.value());
    assert_eq!(payments(&mut db.connect()), 2);
}

/// What `abandon_after` costs in round trips: nothing on PostgreSQL, where
/// its `SET LOCAL` travels with the `BEGIN` in one query; two statements
/// on MySQL (the session's `wait_timeout` set before the call and restored
/// after it); nothing on SQLite, where it does nothing. Each query the
/// connection sends is one round trip.
pub async fn abandon_after_round_trips<B: AsyncSuiteBackend, P: PoolKind>() {
    let db = B::fresh();
    let pool = P::pool(&db, 1).await;
    let mut pooled = pool.checkout().await;
    let conn: &mut B::AsyncConn = &mut pooled;
    let req = NewPayment::eur(1);
    let first_call = async |conn: &mut B::AsyncConn, key: &str, after: Option<Duration>| {
        let call = Call::new("tests.round_trips", key).request(&req);
        let call = match after {
            Some(after) => call.abandon_after(after),
            None => call,
        };
        call.run_async(
            conn,
            async |conn: &mut B::AsyncConn| -> Result<i64, AppError> {
                Ok(conn.insert_payment(req.amount).await?)
            },
        )
        .await
        .expect("a first call")
    };
    // Every statement prepared and cached, as after a connection's first call.
    first_call(conn, "warm-up", Some(Duration::from_secs(30))).await;
    let mut sent = Vec::new();
    for (key, after) in [
        ("plain", None),
        ("abandon-after", Some(Duration::from_secs(30))),
    ] {
        let (log, instrumentation) = recorder();
        conn.set_instrumentation(instrumentation);
        first_call(conn, key, after).await;
        conn.set_instrumentation(diesel::connection::get_default_instrumentation());
        sent.push(taken(&log));
    }
    let (plain, with) = (&sent[0], &sent[1]);
    let extra = match B::NAME {
        "mysql" => 2,
        _ => 0,
    };
    assert_eq!(
        with.statements.len(),
        plain.statements.len() + extra,
        "{}: queries of a first call without and with abandon_after:\n    {}\n    {}",
        B::NAME,
        plain.shapes(),
        with.shapes()
    );
    if B::NAME == "postgres" {
        assert!(
            with.statements.iter().any(|q| q.starts_with(
                "BEGIN; SET LOCAL \
                 idle_in_transaction_session_timeout = 30000"
            )),
            "the timeout travels with the BEGIN: {}",
            with.shapes()
        );
    }
}

/// Instantiates every async conformance test for one backend and pool.
#[macro_export]
macro_rules! async_conformance {
    ($backend:ty, $pool:ty) => {
        $crate::async_conformance!(@tests $backend, $pool;
            first_call_runs_body_and_stores_result,
            replay_returns_stored_result_without_running_body,
            outcome_tells_replays_apart,
            different_payload_is_a_mismatch,
            body_error_leaves_no_record,
            body_panic_leaves_no_record,
            caller_rollback_removes_record,
            caller_commit_keeps_record,
            expired_record_is_treated_as_absent,
            scopes_keep_tenants_apart,
            runtime_call_api,
            invalid_keys_are_rejected_before_the_body,
            functions_have_separate_namespaces,
            unreadable_stored_result_is_a_typed_error,
            panic_in_nested_transaction_releases_the_claim,
            body_leaving_a_transaction_open_is_rolled_back,
            duplicate_waits_for_first_and_replays,
            duplicate_runs_body_when_first_rolls_back,
            concurrent_duplicates_run_body_once,
            concurrent_takeover_of_expired_record_runs_body_once,
            on_conflict_reject_answers_in_flight,
            isolation_levels_replay_or_retry,
            shapes_first_call_runs_body_and_stores,
            shapes_replay_returns_stored_result_without_a_second_effect,
            shapes_mismatch_has_no_second_effect,
            shapes_concurrent_duplicates_run_body_once,
            hash_of_arguments_replays_repeats,
            hash_key_through_the_runtime,
            get_or_create_returns_the_existing_row,
            concurrent_creators_get_one_row,
            blocking_and_async_calls_share_records,
            statements_match_the_blocking_path,
            abandon_after_round_trips,
        );
    };
    (@tests $backend:ty, $pool:ty; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                $crate::common::async_suite::$test::<$backend, $pool>().await;
            }
        )*
    };
}
