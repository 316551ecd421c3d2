//! Edge cases of optimistic mode, read-first and the PostgreSQL
//! claim-or-load statement: deadlocks inside a caller's transaction, dirty
//! reads, repeats whose own result could not be stored, panics on replay
//! paths, snapshot transactions, the statement cache.
//!
//! Written once, as async code over diesel-async connections, in
//! [`nonblocking`]; `#[dual::blocking]` derives [`blocking`], the same tests
//! over Diesel's blocking connections, threads for tasks. The test that
//! needs `modes::open_account` follows the module.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_idempotent::{IdempotentConnection, ManualClock};

use super::*;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Raw SQL on each backend's connection.
pub trait Raw: TestConn {
    fn count_sql(&mut self, sql: &str) -> i64;
    /// A statement sent as a prepared statement (as Diesel's DSL sends them).
    fn exec_sql(&mut self, sql: &str) -> QueryResult<usize>;
    /// Statements sent as text, unprepared.
    fn batch_sql(&mut self, sql: &str) -> QueryResult<()>;
}

macro_rules! raw {
    ($($(#[$m:meta])* $conn:ty),*) => {$(
        $(#[$m])*
        impl Raw for $conn {
            fn count_sql(&mut self, sql: &str) -> i64 {
                diesel::sql_query(sql).get_result::<N>(self).expect(sql).n
            }
            fn exec_sql(&mut self, sql: &str) -> QueryResult<usize> {
                diesel::sql_query(sql).execute(self)
            }
            fn batch_sql(&mut self, sql: &str) -> QueryResult<()> {
                self.batch_execute(sql)
            }
        }
    )*};
}
raw!(
    #[cfg(feature = "postgres")]
    diesel::PgConnection,
    #[cfg(feature = "mysql")]
    diesel::MysqlConnection,
    #[cfg(feature = "sqlite")]
    diesel::SqliteConnection
);

/// [`Raw`] on each backend's diesel-async connection.
#[cfg(feature = "async")]
pub trait AsyncRaw: AsyncTestConn {
    fn count_sql(&mut self, sql: &str) -> impl Future<Output = i64> + Send;
    /// A statement sent as a prepared statement (as Diesel's DSL sends them).
    fn exec_sql(&mut self, sql: &str) -> impl Future<Output = QueryResult<usize>> + Send;
    /// Statements sent as text, unprepared.
    fn batch_sql(&mut self, sql: &str) -> impl Future<Output = QueryResult<()>> + Send;
}

#[cfg(feature = "async")]
mod async_raw {
    use diesel::QueryResult;
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    use super::{AsyncRaw, N};

    macro_rules! async_raw {
        ($($(#[$m:meta])* $conn:ty),*) => {$(
            $(#[$m])*
            impl AsyncRaw for $conn {
                async fn count_sql(&mut self, sql: &str) -> i64 {
                    diesel::sql_query(sql).get_result::<N>(self).await.expect(sql).n
                }
                async fn exec_sql(&mut self, sql: &str) -> QueryResult<usize> {
                    diesel::sql_query(sql).execute(self).await
                }
                async fn batch_sql(&mut self, sql: &str) -> QueryResult<()> {
                    self.batch_execute(sql).await
                }
            }
        )*};
    }
    async_raw!(
        #[cfg(feature = "postgres")]
        diesel_async::AsyncPgConnection,
        #[cfg(feature = "mysql")]
        diesel_async::AsyncMysqlConnection,
        #[cfg(feature = "sqlite")]
        crate::common::async_backends::AsyncSqlite
    );
}

/// A backend whose connection sends [`Raw`] SQL.
pub trait RawBackend: Backend<Conn: Raw> {}

impl<B: Backend<Conn: Raw>> RawBackend for B {}

/// A backend whose diesel-async connection sends [`AsyncRaw`] SQL.
#[cfg(feature = "async")]
pub trait AsyncRawBackend: AsyncSuiteBackend<AsyncConn: AsyncRaw> {}

#[cfg(feature = "async")]
impl<B: AsyncSuiteBackend<AsyncConn: AsyncRaw>> AsyncRawBackend for B {}

/// Deletes the expired records on `conn`.
fn purge<C: IdempotentConnection>(conn: &mut C, clock: &ManualClock) {
    diesel_idempotent::purge_expired_with_clock(conn, 10, clock).unwrap();
}

/// [`purge`] on a diesel-async connection: the library's purge takes a
/// blocking connection, so there is no statement to send on this one.
#[cfg(feature = "async")]
async fn purge_async<C>(_conn: &mut C, _clock: &ManualClock) {}

thread_local! {
    static PANIC_ON_DESERIALIZE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A value whose `Deserialize` panics while the flag is set (on the
/// thread that deserializes it: the test's own, in both flavours).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Touchy(i64);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if PANIC_ON_DESERIALIZE.with(|f| f.get()) {
            panic!("Deserialize panics");
        }
        Ok(Touchy(n))
    }
}

#[dual::blocking(rename(
    AsyncRaw = Raw,
    AsyncRawBackend = RawBackend,
    purge_async = purge
))]
pub mod nonblocking {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use diesel::QueryResult;
    use diesel_idempotent::{Call, Error, ManualClock, Mode, OnConflict, Outcome, Replay, Ttl};

    use super::{AsyncRaw, AsyncRawBackend, PANIC_ON_DESERIALIZE, Touchy, purge_async};
    use crate::common::rt::nonblocking as rt;
    use crate::common::{AppError, AsyncSuiteBackend, AsyncTestConn, NewPayment, Payment, clock};

    async fn exec<C: AsyncRaw>(conn: &mut C, sql: &str) {
        conn.batch_sql(sql).await.expect(sql);
    }

    /// Waits until a statement starting with `prefix` waits for a lock.
    async fn wait_for_waiter<B: AsyncRawBackend>(db: &B, prefix: &str) {
        let mut conn = db.connect_async().await;
        let sql = if B::NAME == "postgres" {
            format!(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE '{prefix}%'"
            )
        } else {
            format!(
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND INFO LIKE '{prefix}%'"
            )
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while conn.count_sql(&sql).await < 1 {
            assert!(Instant::now() < deadline, "no waiter on {prefix}");
            rt::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The call of [`optimistic_body_deadlock_in_callers_transaction`].
    async fn deadlock_call<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        req: &NewPayment,
        mode: Mode,
        body: impl AsyncFnOnce(&mut C) -> Result<Payment, AppError>,
    ) -> Result<Outcome<Payment>, AppError> {
        Call::new("edges.deadlock", "k")
            .ttl(Ttl::from_secs(3600))
            .clock(clock)
            .request(req)
            .mode(mode)
            .run_async(conn, body)
            .await
    }

    /// An optimistic call, inside a caller's transaction that wrote a payment of
    /// its own first, whose body deadlocks with an unrelated transaction (and
    /// is chosen as the victim) while a finished record of the same request
    /// holds the key.
    ///
    /// Claim-first would return the deadlock error, and the caller would roll
    /// back. The promise: the caller's transaction stays atomic; either the
    /// call fails, or what the caller wrote before and after it commits with
    /// it and rolls back with it.
    pub async fn optimistic_body_deadlock_in_callers_transaction<B: AsyncRawBackend>(
        mode: Mode,
        caller_commits: bool,
    ) {
        let db = Arc::new(B::fresh());
        let clock = clock();
        let mut setup = db.connect_async().await;
        exec(
            &mut setup,
            "CREATE TABLE locks (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
        )
        .await;
        exec(
            &mut setup,
            "INSERT INTO locks (id, v) VALUES (1, 0), (2, 0)",
        )
        .await;
        exec(&mut setup, "CREATE TABLE ballast (id BIGINT PRIMARY KEY)").await;
        let req = NewPayment::eur(5);
        // The first call, committed.
        let first = deadlock_call(&mut setup, &clock, &req, mode, async |c| {
            Ok(Payment {
                id: c.insert_payment(5).await?,
                amount: 5,
            })
        })
        .await
        .expect("first call");
        assert!(!first.is_replayed());

        let (locked_tx, locked_rx) = rt::channel::<()>();
        let (go_tx, go_rx) = rt::channel::<()>();
        // The other side of the deadlock: a heavier transaction, so that
        // InnoDB picks the caller as the victim.
        let other = rt::spawn({
            let db = Arc::clone(&db);
            move || async move {
                let mut d = db.connect_async().await;
                rt::transaction(&mut d, async |d| -> QueryResult<()> {
                    let values: Vec<String> = (1..=200).map(|i| format!("({i})")).collect();
                    exec(
                        d,
                        &format!("INSERT INTO ballast (id) VALUES {}", values.join(",")),
                    )
                    .await;
                    exec(d, "UPDATE locks SET v = v + 1 WHERE id = 2").await;
                    locked_rx.recv().await.unwrap();
                    go_tx.send(()).unwrap();
                    // Waits for the caller's lock on 1.
                    let _ = d
                        .batch_sql("UPDATE locks SET v = v + 10 WHERE id = 1")
                        .await;
                    Ok(())
                })
                .await
            }
        });
        let mut c = db.connect_async().await;
        let mut after_call = None;
        let outcome = rt::transaction(&mut c, async |c| -> Result<Outcome<Payment>, AppError> {
            // The caller's own work, before the call.
            c.insert_payment(999).await?;
            let outcome = deadlock_call(c, &clock, &req, mode, async |c| {
                exec(c, "UPDATE locks SET v = v + 100 WHERE id = 1").await;
                locked_tx.send(()).unwrap();
                go_rx.recv().await.unwrap();
                wait_for_waiter(&*db, "UPDATE locks SET v = v + 10 WHERE id = 1").await;
                // Deadlock: this transaction holds 1 and wants 2.
                c.exec_sql("UPDATE locks SET v = v + 1000 WHERE id = 2")
                    .await?;
                Ok(Payment {
                    id: c.insert_payment(5).await?,
                    amount: 5,
                })
            })
            .await?;
            // The caller's own work, after the call.
            after_call = Some(c.insert_payment(1000).await);
            if caller_commits {
                Ok(outcome)
            } else {
                Err(AppError::Declined)
            }
        })
        .await;
        let _ = rt::join(other).await;
        let mut check = db.connect_async().await;
        let before_row = check
            .count_sql("SELECT COUNT(*) AS n FROM payments WHERE amount = 999")
            .await;
        let after_row = check
            .count_sql("SELECT COUNT(*) AS n FROM payments WHERE amount = 1000")
            .await;
        println!(
            "[{}] {mode:?}: call inside the caller's transaction answered {:?}; the caller's \
             transaction {}; caller's row before the call: {before_row}, after: {after_row} \
             (insert after the call: {after_call:?})",
            B::NAME,
            outcome
                .as_ref()
                .map(|o| (o.is_replayed(), o.value().clone())),
            if outcome.is_ok() && caller_commits {
                "committed"
            } else {
                "rolled back"
            }
        );
        if !caller_commits {
            assert_eq!(
                after_row, 0,
                "the caller's transaction rolled back, but the payment it inserted after the \
                 call (which answered Ok) is there: it was committed on its own"
            );
        }
        if outcome.is_ok() {
            assert_eq!(
                before_row, 1,
                "the call returned Ok(replayed) and the caller's transaction committed, but the \
                 payment the caller inserted before the call is gone"
            );
        }
    }

    /// A repeat whose body now computes a larger result (it lists the payments,
    /// which grew since the first call) must still replay the first call's
    /// stored result: the key was answered. Claim-first replays it; an
    /// optimistic call checks the size of the result it is about to roll back.
    pub async fn optimistic_repeat_replays_even_if_its_own_result_would_be_too_large<
        B: AsyncSuiteBackend,
    >(
        mode: Mode,
    ) {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(1);
        let call = async |conn: &mut B::AsyncConn| {
            Call::new("edges.big", "k")
                .clock(&clock)
                .request(&req)
                .mode(mode)
                .max_response_bytes(1024)
                .run_async(conn, async |c| -> Result<String, AppError> {
                    c.insert_payment(1).await?;
                    // The result lists what is there: it grows with the table.
                    let n = c.count_payments().await?;
                    Ok("p".repeat(n as usize * 100))
                })
                .await
        };
        let first = call(&mut conn).await.expect("first call: 100 bytes");
        assert!(!first.is_replayed());
        for _ in 0..20 {
            conn.insert_payment(7).await.unwrap();
        }
        let repeat = call(&mut conn).await;
        println!(
            "[{}] {mode:?}: repeat answered {:?}",
            B::NAME,
            repeat
                .as_ref()
                .map(|o| (o.is_replayed(), o.len()))
                .map_err(|e| e.to_string())
        );
        let repeat = repeat.expect("the repeat replays the stored result");
        assert!(repeat.is_replayed());
        assert_eq!(repeat.value(), first.value());
    }

    /// The call of [`optimistic_after_error_read_never_replays_uncommitted`].
    async fn dirty_call<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        req: &NewPayment,
        fail: bool,
    ) -> Result<Outcome<Payment>, AppError> {
        Call::new("edges.dirty", "k")
            .clock(clock)
            .request(req)
            .mode(Mode::Optimistic)
            .run_async(conn, async move |c| -> Result<Payment, AppError> {
                let id = c.insert_payment(3).await?;
                if fail {
                    Err(AppError::Declined)
                } else {
                    Ok(Payment { id, amount: 3 })
                }
            })
            .await
    }

    /// MySQL at READ UNCOMMITTED, optimistic mode WITHOUT `read_first`: a
    /// duplicate whose body fails while the first call is still uncommitted
    /// must not answer with the first call's (uncommitted) result; the first
    /// call then rolls back, so the duplicate's client would hold a result
    /// that never happened.
    pub async fn optimistic_after_error_read_never_replays_uncommitted<B: AsyncRawBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(3);
        let (held_tx, held_rx) = rt::channel::<()>();
        let (done_tx, done_rx) = rt::channel::<()>();
        let first = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut a = db.connect_async().await;
                let r: Result<(), AppError> = rt::transaction(&mut a, async |a| {
                    dirty_call(a, &clock, &req, false).await?;
                    held_tx.send(()).unwrap();
                    done_rx.recv().await.unwrap();
                    // The first call's caller rolls back.
                    Err(AppError::Declined)
                })
                .await;
                assert!(matches!(r, Err(AppError::Declined)));
            }
        });
        held_rx.recv().await.unwrap();
        let mut b = db.connect_async().await;
        exec(
            &mut b,
            "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        )
        .await;
        // The look after the body's error waits for the first call's
        // uncommitted record (a locking read), which waits for this call:
        // give up after a second rather than InnoDB's default 50.
        b.short_lock_waits().await.unwrap();
        let duplicate = dirty_call(&mut b, &clock, &req, true).await;
        done_tx.send(()).unwrap();
        rt::join(first).await;
        let mut check = db.connect_async().await;
        let records = check.count_records().await.unwrap();
        println!(
            "[{}] duplicate answered {:?}; records after the first call rolled back: {records}",
            B::NAME,
            duplicate
                .as_ref()
                .map(|o| (o.is_replayed(), o.value().clone()))
                .map_err(|e| e.to_string())
        );
        assert!(
            !matches!(&duplicate, Ok(o) if o.is_replayed()),
            "the duplicate replayed a result that was never committed: {duplicate:?}"
        );
    }

    /// The call of [`pg_claim_or_load_fallback_is_reached`].
    async fn fallback_call<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        req: &NewPayment,
        mode: Mode,
    ) -> Result<Outcome<Payment>, AppError> {
        Call::new("edges.fallback", "k")
            .clock(clock)
            .request(req)
            .mode(mode)
            .run_async(conn, async |c| -> Result<Payment, AppError> {
                Ok(Payment {
                    id: c.insert_payment(9).await?,
                    amount: 9,
                })
            })
            .await
    }

    /// PostgreSQL: a duplicate whose claim-or-load waited for a first call that
    /// then committed: the statement's snapshot predates the commit, so the
    /// fallback read must follow and the duplicate replays.
    pub async fn pg_claim_or_load_fallback_is_reached<B: AsyncSuiteBackend>(mode: Mode) {
        assert_eq!(B::NAME, "postgres");
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(9);
        let (held_tx, held_rx) = rt::channel::<Payment>();
        let (go_tx, go_rx) = rt::channel::<()>();
        let holder = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut a = db.connect_async().await;
                rt::transaction(&mut a, async |a| -> Result<(), AppError> {
                    let p = fallback_call(a, &clock, &req, mode).await?.into_value();
                    held_tx.send(p).unwrap();
                    go_rx.recv().await.unwrap();
                    Ok(())
                })
                .await
                .unwrap();
            }
        });
        let first = held_rx.recv().await.unwrap();
        let dup = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut b = db.connect_async().await;
                rt::statements(&mut b, async |b| fallback_call(b, &clock, &req, mode).await).await
            }
        });
        db.wait_for_lock_waiters_async(1).await;
        go_tx.send(()).unwrap();
        let (log, result) = rt::join(dup).await;
        let log: Vec<String> = log.iter().map(|q| q.chars().take(40).collect()).collect();
        println!("[postgres] {mode:?} duplicate sent: {log:#?}");
        let out = result.expect("the duplicate replays");
        assert!(out.is_replayed());
        assert_eq!(out.into_value(), first);
        assert!(
            log.iter()
                .any(|q| q.starts_with("SELECT fingerprint, response, expires_at")),
            "the fallback read followed"
        );
        rt::join(holder).await;
    }

    async fn cached<C: AsyncRaw>(conn: &mut C, like: &str) -> i64 {
        conn.count_sql(&format!(
            "SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE statement LIKE '{like}%'"
        ))
        .await
    }

    /// README, Backends: "Every statement of the library is a prepared
    /// statement Diesel caches per connection."
    pub async fn pg_call_statements_are_cached<B: AsyncRawBackend>() {
        assert_eq!(B::NAME, "postgres");
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        Call::new("edges.cache", "k")
            .clock(&clock)
            .run_async(&mut conn, async |c| -> Result<i64, AppError> {
                Ok(c.insert_payment(1).await?)
            })
            .await
            .unwrap();
        purge_async(&mut conn, &clock).await;
        let claim = cached(&mut conn, "WITH ins AS").await;
        let complete = cached(&mut conn, "UPDATE idempotency_records SET response").await;
        println!("[postgres] cached: claim-or-load {claim}, stored result {complete}");
        assert_eq!(claim, 1, "the claim is a cached prepared statement");
        assert_eq!(
            complete, 1,
            "the stored result is a cached prepared statement"
        );
    }

    /// A `Deserialize` panic on the paths that replay after the library's
    /// transaction ended (optimistic after a body error, read-first), inside a
    /// caller's transaction: the caller's transaction is left at its depth and
    /// usable, its commit keeps its own work, and nothing else is stored.
    pub async fn panics_on_replay_paths_leave_the_callers_transaction_usable<
        B: AsyncSuiteBackend,
    >() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let call = async |c: &mut B::AsyncConn, shape: (Mode, Replay), fail: bool| {
            Call::new("edges.touchy", "k")
                .clock(&clock)
                .mode(shape.0)
                .replay(shape.1)
                .run_async(c, async move |c| -> Result<Touchy, AppError> {
                    let id = c.insert_payment(1).await?;
                    if fail {
                        Err(AppError::Declined)
                    } else {
                        Ok(Touchy(id))
                    }
                })
                .await
        };
        call(&mut conn, (Mode::ClaimFirst, Replay::InTransaction), false)
            .await
            .unwrap();
        // (An optimistic body that fails inside a caller's transaction returns
        // its error without looking for a replay: no `Deserialize` runs.)
        for (shape, fail) in [
            ((Mode::Optimistic, Replay::InTransaction), false),
            ((Mode::ClaimFirst, Replay::ReadFirst), false),
            ((Mode::Optimistic, Replay::ReadFirst), true),
        ] {
            let before = conn.count_payments().await.unwrap();
            let r: Result<(), AppError> = rt::transaction(&mut conn, async |c| {
                c.insert_payment(500).await?;
                PANIC_ON_DESERIALIZE.with(|f| f.set(true));
                let caught = {
                    let c = &mut *c;
                    rt::catch_panic(move || async move { call(c, shape, fail).await }).await
                };
                PANIC_ON_DESERIALIZE.with(|f| f.set(false));
                assert!(
                    caught.is_err(),
                    "{shape:?}: the replay's Deserialize panicked"
                );
                assert_eq!(rt::depth(c), 1, "{shape:?}: the caller's level only");
                c.insert_payment(501).await?;
                Ok(())
            })
            .await;
            r.unwrap_or_else(|e| panic!("{shape:?}: the caller commits: {e:?}"));
            assert_eq!(rt::depth(&mut conn), 0);
            assert_eq!(
                conn.count_payments().await.unwrap(),
                before + 2,
                "{shape:?}: the caller's two rows"
            );
            assert_eq!(conn.count_records().await.unwrap(), 1);
        }
    }

    /// The call of [`read_first_reject_in_callers_transaction_answers_at_once`].
    async fn reject_call<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        req: &NewPayment,
        replay: Replay,
        on_conflict: OnConflict,
    ) -> Result<Outcome<Payment>, AppError> {
        let call = Call::new("edges.rf_reject", "k")
            .clock(clock)
            .request(req)
            .replay(replay)
            .on_conflict(on_conflict);
        call.run_async(conn, async |c| -> Result<Payment, AppError> {
            Ok(Payment {
                id: c.insert_payment(4).await?,
                amount: 4,
            })
        })
        .await
    }

    /// README: `on_conflict = "reject"` answers `InFlight` at once while the key
    /// is held; `read_first`'s read "takes no lock and waits for none".
    /// A read-first, rejecting duplicate inside a caller's transaction, at each
    /// isolation level, while a first call holds the key uncommitted.
    pub async fn read_first_reject_in_callers_transaction_answers_at_once<B: AsyncSuiteBackend>(
        replay: Replay,
    ) {
        held_key_answers_in_flight_in_callers_transaction::<B>(
            replay,
            OnConflict::Reject,
            Duration::ZERO..Duration::from_millis(500),
        )
        .await;
    }

    /// README: `wait_for` waits at most its limit, then answers `InFlight`;
    /// inside a caller's transaction too, at each isolation level, with
    /// `read_first` or not. The read of `read_first` waits for no lock
    /// (InnoDB makes it a locking read inside a SERIALIZABLE transaction):
    /// only the claim waits, so the answer comes after the limit (300 ms;
    /// MySQL rounds it up to 1 s), not twice the limit.
    pub async fn bounded_wait_in_callers_transaction_answers_in_flight<B: AsyncSuiteBackend>(
        replay: Replay,
    ) {
        let waits = if B::NAME == "mysql" {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(300)
        };
        held_key_answers_in_flight_in_callers_transaction::<B>(
            replay,
            OnConflict::WaitFor(Duration::from_millis(300)),
            waits..waits * 2,
        )
        .await;
    }

    /// A duplicate with `on_conflict` inside a caller's transaction, at each
    /// isolation level, while a first call holds the key uncommitted:
    /// `InFlight`, after a time within `answers_within`.
    async fn held_key_answers_in_flight_in_callers_transaction<B: AsyncSuiteBackend>(
        replay: Replay,
        on_conflict: OnConflict,
        answers_within: std::ops::Range<Duration>,
    ) {
        if !B::REJECTS_AT_ONCE {
            return;
        }
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(4);
        let (held_tx, held_rx) = rt::channel::<()>();
        let (go_tx, go_rx) = rt::channel::<()>();
        let mut failures = Vec::new();
        let holder = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut a = db.connect_async().await;
                let _ = rt::transaction(&mut a, async |a| -> Result<(), AppError> {
                    reject_call(a, &clock, &req, replay, OnConflict::Wait).await?;
                    held_tx.send(()).unwrap();
                    go_rx.recv().await.unwrap();
                    Err(AppError::Declined)
                })
                .await;
            }
        });
        held_rx.recv().await.unwrap();
        for level in B::ISOLATION_LEVELS {
            let mut b = db.connect_async().await;
            b.short_lock_waits().await.unwrap();
            let started = Instant::now();
            let r = rt::transaction_at(&mut b, *level, async |c| {
                reject_call(c, &clock, &req, replay, on_conflict).await
            })
            .await;
            let took = started.elapsed();
            println!(
                "[{}] {replay:?} {level:?}: {on_conflict:?} duplicate answered after {took:?}: {:?}",
                B::NAME,
                r.as_ref()
                    .map(|o| o.is_replayed())
                    .map_err(|e| e.to_string())
            );
            let in_flight = matches!(
                r.as_ref().err().and_then(AppError::idempotency),
                Some(Error::InFlight { .. })
            );
            if !in_flight || !answers_within.contains(&took) {
                failures.push(format!("{level:?}: after {took:?}: {r:?}"));
            }
        }
        go_tx.send(()).unwrap();
        rt::join(holder).await;
        assert!(
            failures.is_empty(),
            "{on_conflict:?}: not InFlight within {answers_within:?}: {failures:#?}"
        );
    }

    /// At every isolation level a duplicate replays or gets a retryable error:
    /// a duplicate inside a caller's transaction whose snapshot predates the
    /// first call's commit, whose body would insert the unique row the first
    /// call committed. (Run for claim-first; optimistic mode returns the body's
    /// own error inside a caller's snapshot transaction, as the README says.)
    pub async fn duplicate_in_snapshot_transaction_replays_or_is_retryable<B: AsyncSuiteBackend>(
        mode: Mode,
    ) {
        use crate::common::modes::nonblocking::open_account;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let mut failures = Vec::new();
        for (l, level) in B::ISOLATION_LEVELS.iter().copied().enumerate() {
            let key = format!("acct-{l}");
            let customer = 100 + l as i64;
            let (snap_tx, snap_rx) = rt::channel::<()>();
            let (go_tx, go_rx) = rt::channel::<()>();
            let dup = rt::spawn({
                let (db, clock, key) = (Arc::clone(&db), Arc::clone(&clock), key.clone());
                move || async move {
                    let mut b = db.connect_async().await;
                    rt::transaction_at(&mut b, level, async |c| {
                        c.count_payments().await?; // the snapshot
                        snap_tx.send(()).unwrap();
                        go_rx.recv().await.unwrap();
                        open_account(c, &clock, &key, customer, mode).await
                    })
                    .await
                }
            });
            snap_rx
                .recv_timeout(rt::DEADLINE)
                .await
                .expect("the duplicate took its snapshot");
            let mut conn = db.connect_async().await;
            let first = open_account(&mut conn, &clock, &key, customer, mode)
                .await
                .expect("the first call");
            assert!(!first.is_replayed());
            go_tx.send(()).unwrap();
            let duplicate = rt::join(dup).await;
            let ok = match &duplicate {
                Ok(o) => o.is_replayed(),
                Err(e) => diesel_idempotent::Retryable::is_retryable(e),
            };
            println!(
                "[{}] {mode:?} {level:?}: the duplicate answered {}",
                B::NAME,
                match &duplicate {
                    Ok(o) => format!("Ok(replayed: {})", o.is_replayed()),
                    Err(e) => format!(
                        "Err({e}) retryable: {}",
                        diesel_idempotent::Retryable::is_retryable(e)
                    ),
                }
            );
            if !ok {
                failures.push(format!("{level:?}: {duplicate:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "a duplicate neither replayed nor got a retryable error: {failures:#?}"
        );
    }
}
