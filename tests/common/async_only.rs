//! The async tests that have no blocking twin: calls on connections that
//! deadpool and bb8 pools hand out, the two drivers side by side (records
//! and statements), and what `abandon_after` costs. The conformance suite
//! itself runs on diesel-async connections through `conformance!`
//! (`tests/common/suite.rs` and its siblings, written once for both
//! drivers); these are instantiated per backend and pool with
//! `async_only!` (`tests/async_backends.rs`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::{Connection, Instrumentation, InstrumentationEvent, TransactionManager};
use diesel_async::AsyncConnection;
use diesel_idempotent::{Call, Error, IdempotencyRecord};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use super::async_backends::{AsyncBackend, AsyncSuiteBackend, TestPool};
use super::functions::nonblocking::*;
use super::modes::blocking::Payer;
use super::modes::nonblocking::Payer as AsyncPayer;
use super::modes::{Shape, TTL};
use super::suite::{Answer, Before, check_answer};
use super::{AppError, AsyncTestConn, Backend, NewPayment, TestConn, Then};

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

/// Awaits a task that must not panic.
async fn joined<T>(task: JoinHandle<T>) -> T {
    task.await.expect("the task ran to its end")
}

fn record<C: TestConn>(conn: &mut C, namespace: &str, key: &str) -> IdempotencyRecord {
    conn.load_record(namespace, key).expect("the record")
}

fn payments<C: TestConn>(conn: &mut C) -> i64 {
    conn.count_payments().expect("count payments")
}

fn records<C: TestConn>(conn: &mut C) -> i64 {
    conn.count_records().expect("count records")
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
// Pooled connections.

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

/// 64 tasks on 64 connections of one pool call with one key at once, 10
/// rounds: the body runs exactly once per round and all 64 get equal
/// results. (The conformance suite's concurrency tests give each task a
/// connection of its own; here each checks one out of the pool every
/// round.)
pub async fn pooled_duplicates_run_body_once<B: AsyncSuiteBackend, P: PoolKind>() {
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

/// A pool of 4 connections; a first call holds its key (its transaction
/// open on one of them); 20 duplicates with a bounded wait (`wait_for =
/// "300ms"`, on MySQL 1 s) share the other three. Each duplicate gets
/// `InFlight` and gives its connection back while the first still holds the
/// key, so an unrelated query then gets a pooled connection (all three, at
/// once, outside any transaction). With `on_conflict = "wait"` the
/// duplicates would hold those three connections until the first call
/// finished, and the query would queue behind them. Then the first commits
/// and a later call replays: one execution.
pub async fn bounded_waits_give_pooled_connections_back<B: AsyncSuiteBackend, P: PoolKind>() {
    const POOL: usize = 4;
    const DUPLICATES: usize = 20;
    let db = B::fresh();
    let pool = P::pool(&db, POOL).await;
    let clock = Arc::new(super::clock());
    let req = NewPayment::eur(20);
    let mut holder = pool.checkout().await;
    let first =
        super::rt::nonblocking::transaction(&mut *holder, async |conn: &mut B::AsyncConn| {
            let first = create_payment(conn, &clock, "held", &req, Then::Succeed).await?;
            // The key is held until this transaction ends.
            let duplicates: Vec<_> = (0..DUPLICATES)
                .map(|_| {
                    let (pool, clock, req) = (pool.clone(), Arc::clone(&clock), req.clone());
                    tokio::spawn(async move {
                        let mut conn = pool.checkout().await;
                        create_payment_waiting_briefly(
                            &mut *conn,
                            &clock,
                            "held",
                            &req,
                            Then::Succeed,
                        )
                        .await
                    })
                })
                .collect();
            for duplicate in duplicates {
                let answer = joined(duplicate).await;
                assert!(
                    is_in_flight(&answer, "held"),
                    "[{}] a duplicate answers InFlight: {answer:?}",
                    label::<B, P>()
                );
            }
            // Every duplicate's connection is back in the pool, outside any
            // transaction, while the first call still holds its key.
            let mut others = Vec::with_capacity(POOL - 1);
            for _ in 1..POOL {
                others.push(pool.checkout().await);
            }
            for other in &mut others {
                assert_eq!(super::rt::nonblocking::depth(&mut **other), 0);
                assert_eq!(
                    other.count_payments().await?,
                    0,
                    "an unrelated query runs; the first call's payment is not committed yet"
                );
            }
            Ok::<_, AppError>(first)
        })
        .await
        .expect("the first call commits");
    let replay = create_payment_waiting_briefly(&mut *holder, &clock, "held", &req, Then::Fail)
        .await
        .expect("a later call replays");
    assert_eq!(replay, first);
    let mut check = db.connect();
    assert_eq!(payments(&mut check), 1, "one execution");
    assert_eq!(records(&mut check), 1);
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
    let wait_for = Some(Duration::from_secs(2));
    let shapes = [
        ("claim-first", Shape::CLAIM_FIRST, false, None),
        ("reject", Shape::CLAIM_FIRST, true, None),
        ("wait_for", Shape::CLAIM_FIRST, false, wait_for),
        ("read-first", Shape::READ_FIRST, false, None),
        ("optimistic", Shape::OPTIMISTIC, false, None),
        (
            "optimistic + read-first",
            Shape::OPTIMISTIC_READ_FIRST,
            false,
            None,
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
        (3, "first call", Nothing, &req, Fresh),
        (3, "replay", Record, &req, Replayed),
        (3, "mismatch", Record, &other, Mismatch),
        (3, "take-over", Expired, &req, Fresh),
        (4, "first call", Nothing, &req, Fresh),
        (4, "replay", Record, &req, Replayed),
        (4, "mismatch", Record, &other, Mismatch),
        (4, "take-over", Expired, &req, Fresh),
        (4, "body error", Nothing, &req, Declined),
        (5, "first call", Nothing, &req, Fresh),
        (5, "replay", Record, &req, Replayed),
    ];
    let mut report = vec![format!(
        "| path | blocking | {} | blocking, in a transaction | {}, in a transaction |",
        P::NAME,
        P::NAME
    )];
    let mut wrong = Vec::new();
    for (n, &(s, path, before, with, answer)) in paths.iter().enumerate() {
        let (shape_label, shape, rejecting, limit) = shapes[s];
        let label = format!("{shape_label}, {path}");
        if before == Held && !B::REJECTS_AT_ONCE {
            // SQLite: the duplicate would wait for the database lock.
            continue;
        }
        let (blocking_payer, async_payer) = match (rejecting, limit) {
            (true, _) => (
                Payer::new(shape, &clock).rejecting(),
                AsyncPayer::new(shape, &clock).rejecting(),
            ),
            (false, Some(limit)) => (
                Payer::new(shape, &clock).waiting_at_most(limit),
                AsyncPayer::new(shape, &clock).waiting_at_most(limit),
            ),
            (false, None) => (Payer::new(shape, &clock), AsyncPayer::new(shape, &clock)),
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
// `abandon_after`.

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

/// Instantiates the async-only tests for one backend and pool.
#[macro_export]
macro_rules! async_only {
    ($backend:ty, $pool:ty) => {
        $crate::async_only!(@tests $backend, $pool;
            pooled_duplicates_run_body_once,
            bounded_waits_give_pooled_connections_back,
            blocking_and_async_calls_share_records,
            statements_match_the_blocking_path,
            abandon_after_round_trips,
        );
    };
    (@tests $backend:ty, $pool:ty; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $crate::common::async_only::$test::<$backend, $pool>().await;
            }
        )*
    };
}
